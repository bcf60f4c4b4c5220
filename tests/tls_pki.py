"""Certificates for tests/test_tls.py, made fresh for each run and never checked in.

write_pki(folder) makes, with trustme (the `test` extra), a CA, a server certificate for
localhost / 127.0.0.1, a client certificate from the same CA and one from a CA nobody trusts,
as PEM files. Where trustme cannot run (the embeddable CPython under Wine: cryptography's
compiled module does not load there), tools/windows/run-tests.sh runs this file on the Linux
side first (`python tests/tls_pki.py FOLDER`) and names the folder in IOCPX_TEST_PKI.
"""
import os
import sys

FILES = ("ca.pem", "server.pem", "server-cert.pem", "server-key.pem", "client.pem",
         "rogue-client.pem")


def write_pki(folder):
    import trustme
    os.makedirs(folder, exist_ok=True)
    ca, rogue = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(os.path.join(folder, "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(os.path.join(folder, "server.pem"))
    server.cert_chain_pems[0].write_to_path(os.path.join(folder, "server-cert.pem"))
    server.private_key_pem.write_to_path(os.path.join(folder, "server-key.pem"))
    ca.issue_cert("client@example.test").private_key_and_cert_chain_pem.write_to_path(
        os.path.join(folder, "client.pem"))
    rogue.issue_cert("intruder@example.test").private_key_and_cert_chain_pem.write_to_path(
        os.path.join(folder, "rogue-client.pem"))
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tls_pki.py FOLDER")
    print(write_pki(sys.argv[1]))
