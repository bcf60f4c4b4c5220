"""The servers the iocpx benchmarks compare, as harness.Peer factories: the echo servers of
bench/servers.py (iocpx, uvloop, asyncio, a thread per client), the C io_uring echo server
bench/uring_echo.c (the practical limit), the examples (examples/resp_server.py and
http_server.py on iocpx or uvloop), and the C references redis-server and nginx, configured here
in a temporary directory.

What it shows: nothing by itself; the scenario files pick their peers here.
What it needs: what each server needs (its scenario says); ensure_tools() installs the Debian
packages of the outside programs when they are missing (as root).
How to run it: not by itself.
"""

import os
import re
import resource
import shutil
import subprocess
import sys

import harness as H

EXAMPLES = os.path.join(H.REPO_ROOT, "examples")
HELLO = b"Hello, World!\n"          # examples/http_server.py's BODY; nginx returns the same


def echo(kind, label=None, args=(), id=None, **extra):
    """A bench/servers.py server: kind asyncio, uvloop, iocpx, threads, *-udp."""
    return H.Peer(id or kind, label or kind, [sys.executable, H.SERVERS_PY, kind, "{port}"]
                  + list(args), kind=kind.replace("-udp", ""), **extra)


def uring_c(args=()):
    return H.Peer("uring-c", "C io_uring (limit)", [H.tool("uring_echo"), "{port}"] + list(args))


def unavailable_uvloop(peers):
    """Mark the uvloop peers unavailable (with the reason) when uvloop does not import."""
    if any(p.kind == "uvloop" for p in peers):
        ok, why = H.probe_import("import uvloop")
        for p in peers:
            if p.kind == "uvloop" and not ok:
                p.error = f"not available: {why} (pip install uvloop)"
    return peers


def echo_suite(kinds, meta, workers=None, backends=None, udp=False):
    """The echo peers in report order: iocpx with workers=1 on each available backend (or
    `backends`), or with each of `workers`, and iocpx with its defaults; then uvloop, asyncio,
    a thread per client, the C io_uring server; only the kinds asked for."""
    info, peers = meta.get("iocpx_info"), []
    sfx = "-udp" if udp else ""
    if "iocpx" in kinds:
        if not info:
            peers.append(H.Peer("iocpx", "iocpx", [], error=f"not available: {meta['iocpx']}"))
        else:
            for b in backends or info["backends"]:
                for w in workers or [1]:
                    wl = f"w={w}" if w else f"w={info['default_workers']} (default)"
                    peers.append(echo("iocpx" + sfx, f"iocpx {b} {wl}", id=f"iocpx-{b}-w{w}",
                                      args=["--workers", str(w), "--backend", b]))
            if not workers and not backends:
                peers.append(echo("iocpx" + sfx, f"iocpx {info['default_backend']} "
                                  f"w={info['default_workers']} (default)", id="iocpx-default",
                                  args=["--workers", "0"]))
    labels = {"uvloop": "uvloop", "asyncio": "asyncio", "threads": "thread per client"}
    for k in ("uvloop", "asyncio", "threads"):
        if k in kinds:
            peers.append(echo(k + (sfx if k != "threads" else ""), labels[k], id=k))
    if "uring-c" in kinds and not udp:
        peers.append(uring_c())
    return unavailable_uvloop(peers)


# ---- the examples and the C references ----

TOOLS = {"redis-server": "redis-server", "redis-benchmark": "redis-tools", "wrk": "wrk",
         "nginx": "nginx"}


def which(t):
    return shutil.which(t) or next((p for p in (f"/usr/sbin/{t}", f"/usr/bin/{t}")
                                    if os.access(p, os.X_OK)), None)


def ensure_tools(install):
    """{tool: path or None}; installs the missing Debian packages (and uvloop) first if asked."""
    missing = [t for t in TOOLS if not which(t)]
    if missing and install:
        pkgs = sorted({TOOLS[t] for t in missing})
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            H.log(f"missing {', '.join(missing)}: install {' '.join(pkgs)} (not root or no apt-get)")
        else:
            H.log(f"installing {' '.join(pkgs)} (apt-get) ...")
            cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q"] + pkgs
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:       # an old package list: update once and try again
                subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"],
                               env=env, capture_output=True, timeout=600)
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                H.log(f"apt-get failed: {r.stderr.strip()[-300:]}")
    if install and not H.probe_import("import uvloop")[0]:
        H.log("installing uvloop (pip) ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uvloop"],
                       capture_output=True, timeout=600)
    return {t: which(t) for t in TOOLS}


def version(tool):
    """The first version-looking word of `tool --version` (nginx: -v)."""
    try:
        r = subprocess.run([tool, "-v" if tool.endswith("nginx") else "--version"],
                           capture_output=True, text=True, timeout=10)
        m = re.search(r"(\d+\.\d+(?:\.\d+)?(?:[-+~][\w.+~-]*)?)", r.stdout + r.stderr)
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def example(workload, variant):
    """examples/{resp,http}_server.py (https: http with --tls-cert) on iocpx (variant
    iocpx-default or iocpx-w1) or uvloop; each start on a new 127.0.0.N."""
    script = os.path.join(EXAMPLES, "resp_server.py" if workload == "resp" else "http_server.py")
    argv = [sys.executable, script, "--host", "{host}", "--port", "{port}"]
    if workload == "https":
        argv += ["--tls-cert", H.tls_files()[0]]
    argv += {"iocpx-default": [], "iocpx-w1": ["--workers", "1"],
             "uvloop": ["--loop", "uvloop"]}[variant]

    def relabel(m):             # "serving resp on HOST:PORT (iocpx io_uring, 4 workers, pid N)"
        detail = re.sub(r", pid \d+", "", m.group(2))
        return {"iocpx-default": f"iocpx default ({detail.replace('iocpx ', '')})",
                "iocpx-w1": f"iocpx workers=1 ({detail.split(',')[0].replace('iocpx ', '')})",
                "uvloop": "uvloop (same handler)"}[variant]
    label = {"iocpx-default": "iocpx (default options)", "iocpx-w1": "iocpx workers=1",
             "uvloop": "uvloop (same handler)"}[variant]
    return H.Peer(variant, label, argv, kind="uvloop" if variant == "uvloop" else "iocpx",
                  ready=r"^serving \w+ on [\d.]+:(\d+) \((.*)\)", host="next", cwd=H.REPO_ROOT,
                  relabel=relabel)


def redis_server(tools):
    if not tools.get("redis-server"):
        return H.Peer("c-ref", "redis-server", [], error="redis-server is not installed "
                      "(apt-get install redis-server)")

    def setup(host, port, tmp):
        with open(os.path.join(tmp, "redis.conf"), "w") as f:
            f.write(f"port {port}\nbind {host}\nprotected-mode no\ndaemonize no\nsave \"\"\n"
                    f"appendonly no\ndir {tmp}\nlogfile {os.path.join(tmp, 'redis.log')}\n"
                    "databases 1\nio-threads 1\nmaxclients 10000\n")
    return H.Peer("c-ref", "redis-server " + version(tools["redis-server"]),
                  [tools["redis-server"], "{tmp}/redis.conf"], kind="c-ref", ready=None,
                  host="next", setup=setup)


def nginx(tools, tls=False):
    if not tools.get("nginx"):
        return H.Peer("c-ref", "nginx", [], error="nginx is not installed (apt-get install nginx)")

    def setup(host, port, tmp):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
        body = HELLO.decode().replace("\n", "\\n")
        ssl_conf = ""
        if tls:
            _, cert, key = H.tls_files()
            ssl_conf = (f"ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols "
                        "TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;")
        temp = "".join(f"    {k}_temp_path {tmp}/{k};\n"
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{'user root;' if os.geteuid() == 0 else ''}
worker_rlimit_nofile {nofile};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 65;
{temp}    server {{
        listen {host}:{port} backlog=4096{' ssl' if tls else ''};
        {ssl_conf}
        location = / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
""")
    label = f"nginx {version(tools['nginx'])} (1 worker{', TLS' if tls else ''})"
    return H.Peer("c-ref", label, [tools["nginx"], "-p", "{tmp}", "-e", "{tmp}/error.log", "-c",
                                   "{tmp}/nginx.conf"], kind="c-ref", ready=None, host="next",
                  setup=setup)
