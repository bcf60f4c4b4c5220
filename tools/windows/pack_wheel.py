"""Pack a Windows wheel from an unpacked iocpx sdist and cross-compiled .pyd files.

    python tools/windows/pack_wheel.py --src UNPACKED_SDIST --ext DIR_OF_PYD \
        --tag cp39-abi3-win_amd64 --out dist/

The package files are the sdist's src/iocpx/*.py, *.pyi, py.typed, *.pxd, *.h (the
set pyproject.toml's package-data gives the Linux wheels), the metadata is the sdist's PKG-INFO (core metadata
2.4: License-Expression, License-File, classifiers, extras), the license goes to
.dist-info/licenses/, the console script comes from the sdist's egg-info
entry_points.txt. RECORD has a sha256 of every file. Prints the wheel's path.
Runs on Python 3.9+ (no tomllib needed).
"""
import argparse
import base64
import email.parser
import glob
import hashlib
import os
import sys
import zipfile


def digest(data):
    h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={h}"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", required=True, help="the unpacked sdist (holds PKG-INFO)")
    ap.add_argument("--ext", required=True, help="folder with the compiled .pyd files")
    ap.add_argument("--tag", required=True, help="wheel tag, e.g. cp39-abi3-win_amd64")
    ap.add_argument("--out", required=True, help="output folder")
    a = ap.parse_args()

    with open(os.path.join(a.src, "PKG-INFO"), "rb") as f:
        pkg_info = f.read()
    msg = email.parser.BytesParser().parsebytes(pkg_info)
    name, version = msg["Name"], msg["Version"]
    if not name or not version:
        sys.exit("PKG-INFO has no Name or Version")
    dist_name = name.replace("-", "_")
    info = f"{dist_name}-{version}.dist-info"
    whl = os.path.join(a.out, f"{dist_name}-{version}-{a.tag}.whl")

    files = []
    pkg = os.path.join(a.src, "src", "iocpx")
    for p in sorted(os.listdir(pkg)):
        full = os.path.join(pkg, p)
        # as pyproject.toml's package-data: modules, stubs, .pxd/.h; no Cython sources
        if os.path.isfile(full) and (p.endswith((".py", ".pyi", ".pxd", ".h")) or p == "py.typed"):
            with open(full, "rb") as f:
                files.append((f"iocpx/{p}", f.read()))
    pyds = sorted(glob.glob(os.path.join(a.ext, "*.pyd")))
    if len(pyds) < 3:
        sys.exit(f"expected _backend, _core and _iocp .pyd files in {a.ext}, found {pyds}")
    for p in pyds:
        with open(p, "rb") as f:
            files.append((f"iocpx/{os.path.basename(p)}", f.read()))

    files.append((f"{info}/METADATA", pkg_info))
    for lic in msg.get_all("License-File") or []:
        with open(os.path.join(a.src, lic), "rb") as f:
            files.append((f"{info}/licenses/{lic}", f.read()))
    eps = glob.glob(os.path.join(a.src, "src", "*.egg-info", "entry_points.txt"))
    if eps:
        with open(eps[0], "rb") as f:
            files.append((f"{info}/entry_points.txt", f.read()))
    files.append((f"{info}/WHEEL", (
        "Wheel-Version: 1.0\nGenerator: iocpx tools/windows/pack_wheel.py\n"
        f"Root-Is-Purelib: false\nTag: {a.tag}\n").encode()))
    files.append((f"{info}/top_level.txt", b"iocpx\n"))

    record = "".join(f"{n},{digest(d)},{len(d)}\n" for n, d in files) + f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    os.makedirs(a.out, exist_ok=True)
    tmp = whl + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files:
            zi = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            z.writestr(zi, d)
    os.replace(tmp, whl)
    print(whl)


if __name__ == "__main__":
    main()
