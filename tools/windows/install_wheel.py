"""Install a wheel the way an installer does, into a plain folder: check every
file against the wheel's RECORD (sha256 and size), check that the wheel's tags
accept the target CPython version, then unpack.

    python tools/windows/install_wheel.py WHEEL SITE_DIR PY_VERSION    (e.g. 3.12)
"""
import base64
import hashlib
import sys
import zipfile


def accepts(tag, ver):
    """Does a wheel tag like cp39-abi3-win_amd64 or cp311-cp311-win_amd64 fit CPython `ver`?"""
    major, minor = (int(x) for x in ver.split("."))
    interp, abi, plat = tag.split("-")
    if plat != "win_amd64":
        return False
    for py in interp.split("."):
        if not py.startswith("cp"):
            continue
        want = int(py[3:]) if py[2] == "3" else None
        if want is None:
            continue
        if abi == "abi3" and minor >= want:
            return True
        if abi == f"cp3{want}" and minor == want:
            return True
    return False


def main():
    whl, site, ver = sys.argv[1:4]
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        wheel_meta = next(n for n in names if n.endswith(".dist-info/WHEEL"))
        tags = [line.split(":", 1)[1].strip() for line in z.read(wheel_meta).decode().splitlines()
                if line.startswith("Tag:")]
        if not any(accepts(t, ver) for t in tags):
            sys.exit(f"{whl}: tags {tags} do not fit CPython {ver} on win_amd64")
        rec = next(n for n in names if n.endswith(".dist-info/RECORD"))
        listed = set()
        for line in z.read(rec).decode().splitlines():
            name, digest, size = line.rsplit(",", 2)
            listed.add(name)
            if not digest:
                continue
            data = z.read(name)
            algo, want = digest.split("=", 1)
            got = base64.urlsafe_b64encode(hashlib.new(algo, data).digest()).rstrip(b"=").decode()
            if got != want or int(size) != len(data):
                sys.exit(f"{whl}: RECORD mismatch for {name}")
        unlisted = [n for n in names if n not in listed and not n.endswith("/")]
        if unlisted:
            sys.exit(f"{whl}: files not in RECORD: {unlisted}")
        z.extractall(site)
    print(f"installed {whl} ({', '.join(tags)}) into {site}")


if __name__ == "__main__":
    main()
