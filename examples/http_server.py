"""A small HTTP/1.1 keep-alive server on iocpx (files go out by conn.sendfile), with the same
protocol code on asyncio.

What it shows: an HTTP/1.1 server on iocpx's public API, and files sent by the kernel.
`HttpHandler` is the whole protocol, written once and independent of any transport: it is fed
the bytes a connection received and returns what to send for every complete request in them, in
order (pipelined requests: their responses back to back); a file is returned as a FileRegion,
which the iocpx runner hands to conn.sendfile (splice on Linux, TransmitFile on Windows) and the
asyncio/uvloop runner reads and writes. examples/transports.py is the glue to either transport.

Routes: `GET /` (and HEAD) -> a fixed small body ("Hello, World!\\n", text/plain);
`GET /files/NAME` -> the file NAME from --dir (regular files only, never outside it; 404 if
missing); anything else 404; a method other than GET/HEAD 405 (with `Allow: GET, HEAD`).
HTTP/1.1 connections stay open unless the request says `Connection: close`; HTTP/1.0 ones close
unless it says `Connection: keep-alive`. Every response has Content-Length. A malformed request
(bad request line or header, no Host in HTTP/1.1, a header block over 16 KiB, a bad
Content-Length) gets 400 and the connection is closed; an unknown HTTP version 505; a request
body with Transfer-Encoding 501 (closed: its length is unknown); a Content-Length body is read
and skipped.

What it needs: Python 3.9+ and iocpx (or `--loop uvloop`: `pip install uvloop`; `--loop asyncio`:
nothing else).

How to run it, from the repo root (after `python setup.py build_ext --inplace`):

    PYTHONPATH=src python examples/http_server.py --port 8080 --dir /tmp [--workers N] \
        [--backend epoll]
    python examples/http_server.py --port 8080 --loop uvloop       # the same handler on uvloop
    curl -v http://127.0.0.1:8080/ http://127.0.0.1:8080/files/hosts
    wrk -t1 -c100 -d5s --latency http://127.0.0.1:8080/

Over TLS (HTTPS), with a certificate and key in PEM files (files are then read and encrypted):

    PYTHONPATH=src python examples/http_server.py --port 8443 --tls-cert cert.pem --tls-key key.pem
    curl --cacert ca.pem https://localhost:8443/

It prints one line `serving HTTP on HOST:PORT (...)` once listening, and stops on Ctrl-C or
SIGTERM. `--port 0` lets the kernel pick the port.
"""

import argparse
import email.utils
import mimetypes
import os
import stat
import sys
import time
from urllib.parse import unquote

from transports import FileRegion, add_common_arguments, serve_main   # examples/transports.py

BODY = b"Hello, World!\n"
MAX_HEADER = 16 * 1024          # request line + headers; more without the blank line: 400
SERVER = b"iocpx-example"

REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           501: b"Not Implemented", 505: b"HTTP Version Not Supported"}

_heads: dict = {}               # response heads of the current second (they carry its Date)
_heads_second = [0]


def response_head(status, length, content_type=b"text/plain", close=False, extra=b""):
    """The status line and headers; made once a second per distinct response (Date changes)."""
    now = int(time.time())
    if _heads_second[0] != now:
        _heads.clear()
        _heads_second[0] = now
    key = (status, length, content_type, close, extra)
    head = _heads.get(key)
    if head is None:
        head = _heads[key] = (
            b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n%s%s\r\n"
            % (status, REASONS[status], SERVER,
               email.utils.formatdate(now, usegmt=True).encode(), content_type, length,
               b"Connection: close\r\n" if close else b"", extra))
    return head


class HttpHandler:
    """One connection's HTTP/1.1 state: feed(data) -> [bytes | FileRegion, ...]."""

    __slots__ = ("root", "buf", "skip", "closing")

    def __init__(self, root=None):
        self.root = os.path.realpath(root) if root else None
        self.buf = b""
        self.skip = 0               # bytes of a request body still to discard
        self.closing = False        # set once a response says Connection: close

    def feed(self, data):
        buf = self.buf + data if self.buf else data
        if self.skip:
            taken = min(self.skip, len(buf))
            self.skip -= taken
            buf = buf[taken:]
        out = []
        pos, n = 0, len(buf)
        while pos < n and not self.closing:
            while buf.startswith(b"\r\n", pos):         # RFC 9112 2.2: ignore a leading CRLF
                pos += 2
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > MAX_HEADER:
                    out.append(self.error(400, b"request header too large\n"))
                    pos = n
                break
            if end - pos > MAX_HEADER:
                out.append(self.error(400, b"request header too large\n"))
                pos = n
                break
            pos = self.request(buf, pos, end, out)
            if self.skip:                               # a body to skip, maybe beyond buf
                taken = min(self.skip, n - pos)
                self.skip -= taken
                pos += taken
        self.buf = buf[pos:] if pos < n and not self.closing else b""
        # Back-to-back bytes become one send (pipelined responses in one write).
        if len(out) > 1 and all(x.__class__ is bytes for x in out):
            return [b"".join(out)]
        return out

    def error(self, status, text, extra=b""):
        self.closing = status in (400, 501, 505)
        return response_head(status, len(text), close=self.closing, extra=extra) + text

    def request(self, buf, start, end, out):
        """Handle the request whose head is buf[start:end]; append its response; return the
        position after the head."""
        head = buf[start:end]
        nxt = end + 4
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper() or not parts[1]:
            out.append(self.error(400, b"malformed request line\n"))
            return nxt
        method, target, version = parts
        if version == b"HTTP/1.1":
            keep_alive = True
        elif version == b"HTTP/1.0":
            keep_alive = False
        elif version.startswith(b"HTTP/") and len(version) == 8 and version[5:6].isdigit() \
                and version[6:7] == b"." and version[7:8].isdigit():
            out.append(self.error(505, b"HTTP/1.0 and HTTP/1.1 only\n"))
            return nxt
        else:
            out.append(self.error(400, b"malformed HTTP version\n"))
            return nxt
        host = length = None
        chunked = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name or b"\t" in name:
                out.append(self.error(400, b"malformed header line\n"))
                return nxt
            name = name.lower()
            value = value.strip()
            if name == b"host":
                if host is not None:
                    out.append(self.error(400, b"more than one Host header\n"))
                    return nxt
                host = value
            elif name == b"connection":
                tokens = [t.strip().lower() for t in value.split(b",")]
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            elif name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    out.append(self.error(400, b"bad Content-Length\n"))
                    return nxt
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if version == b"HTTP/1.1" and host is None:
            out.append(self.error(400, b"HTTP/1.1 request without Host\n"))
            return nxt
        if chunked:
            out.append(self.error(501, b"request bodies with Transfer-Encoding are not "
                                       b"supported\n"))
            return nxt
        if length:
            self.skip = length                          # no route takes a body: discard it
        close = not keep_alive
        extra = b"Connection: keep-alive\r\n" if keep_alive and version == b"HTTP/1.0" else b""
        if method != b"GET" and method != b"HEAD":
            text = b"method not allowed\n"
            out.append(response_head(405, len(text), close=close,
                                     extra=extra + b"Allow: GET, HEAD\r\n") + text)
        else:
            out.extend(self.route(method == b"HEAD", target, close, extra))
        if close:
            self.closing = True
        return nxt

    def route(self, head_only, target, close, extra):
        if target.startswith((b"http://", b"https://")):      # absolute-form: keep the path
            slash = target.find(b"/", target.index(b"//") + 2)
            target = target[slash:] if slash >= 0 else b"/"
        path = target.split(b"?", 1)[0]
        if path == b"/":
            h = response_head(200, len(BODY), close=close, extra=extra)
            return [h if head_only else h + BODY]
        if path.startswith(b"/files/") and self.root:
            region = self.find_file(path[len(b"/files/"):])
            if region is not None:
                ctype = (mimetypes.guess_type(region.path)[0] or "application/octet-stream")
                h = response_head(200, region.count, ctype.encode(), close=close, extra=extra)
                return [h] if head_only or not region.count else [h, region]
        text = b"not found\n"
        h = response_head(404, len(text), close=close, extra=extra)
        return [h if head_only else h + text]

    def find_file(self, name):
        """FileRegion of the regular file `name` below the root, or None."""
        try:
            rel = unquote(name.decode("ascii"), errors="strict")
        except (UnicodeError, ValueError):
            return None
        if not rel or "\x00" in rel:
            return None
        full = os.path.realpath(os.path.join(self.root, rel))
        if os.path.commonpath([full, self.root]) != self.root:
            return None                                 # ../ or a link out of the root
        try:
            st = os.stat(full)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return FileRegion(full, 0, st.st_size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(ap, default_port=8080)
    ap.add_argument("--dir", default=None, help="serve the files of this directory at /files/")
    args = ap.parse_args(argv)
    root = args.dir
    if root and not os.path.isdir(root):
        ap.error(f"--dir {root}: not a directory")
    return serve_main(args, "HTTP", lambda: HttpHandler(root))


if __name__ == "__main__":
    sys.exit(main())
