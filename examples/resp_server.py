"""A small Redis-protocol (RESP2) key/value server on iocpx, with the same protocol code on asyncio.

What it shows: how a request/response protocol sits on iocpx's public API. `RespHandler` is the
whole protocol, written once and independent of any transport: it is fed the bytes a connection
received and returns the reply bytes for every complete command in them (pipelined commands give
one reply buffer, in order). The iocpx runner keeps one handler per connection (on_accept creates
it, on_recv feeds it and sends what it returns, on_close drops it); the asyncio/uvloop runner is a
Protocol that does the same with data_received and transport.write. So a benchmark of the two
runners (bench/real_clients.py) compares transports, not parsers.

Commands: GET, SET (with EX/PX/NX/XX/GET), DEL, EXISTS, INCR, DECR, INCRBY, MGET, MSET, PING,
ECHO, DBSIZE, FLUSHDB/FLUSHALL, QUIT, plus what real clients send while connecting: CONFIG GET
(the `save`/`appendonly` that redis-benchmark asks for), COMMAND (and COMMAND DOCS, empty), HELLO
(protocol 2 only; HELLO 3 gets NOPROTO, as from a RESP2 server), CLIENT SETNAME/SETINFO/GETNAME/ID,
SELECT 0, INFO. Inline commands (`PING\\r\\n`, as telnet sends; split on spaces, no quoting)
work too. Keys expire lazily (checked on access); there is no persistence. A malformed request
gets `-ERR Protocol error` and the connection is closed, as redis-server does.

Threads: iocpx runs the callbacks of different connections on its worker threads (one
connection's callbacks never overlap). The store is one dict shared by every connection: single
dict operations are atomic under the GIL; read-modify-write commands (INCR, MSET, SET NX/XX,
DEL of several keys) take the store's lock.

What it needs: Python 3.9+ and iocpx (or `--loop uvloop`: `pip install uvloop`; `--loop asyncio`:
nothing else).

How to run it, from the repo root (after `python setup.py build_ext --inplace`):

    PYTHONPATH=src python examples/resp_server.py --port 6380 [--workers N] [--backend io_uring]
    python examples/resp_server.py --port 6380 --loop uvloop       # the same handler on uvloop
    redis-cli -p 6380 set greeting hello && redis-cli -p 6380 get greeting
    redis-benchmark -p 6380 -t get,set -c 50 -P 16 -q

It prints one line `serving RESP on HOST:PORT (...)` once listening, and stops on Ctrl-C or
SIGTERM. `--port 0` lets the kernel pick the port.
"""

import argparse
import fnmatch
import sys
import threading
import time

from transports import add_common_arguments, serve_main   # examples/transports.py

MAX_INLINE = 64 * 1024          # longest inline command / header line before a protocol error
MAX_BULK = 512 * 1024 * 1024    # redis's proto-max-bulk-len
MAX_ARGS = 1024 * 1024

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
PONG = b"+PONG\r\n"
EMPTY_ARRAY = b"*0\r\n"
ERR_SYNTAX = b"-ERR syntax error\r\n"
ERR_NOT_INT = b"-ERR value is not an integer or out of range\r\n"


class ProtocolError(Exception):
    """The bytes are not RESP: reply with an error and close the connection."""


def bulk(value):
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items):
    """A RESP array of bulk strings (None -> nil)."""
    out = [b"*%d\r\n" % len(items)]
    for v in items:
        out.append(NIL if v is None else b"$%d\r\n%s\r\n" % (len(v), v))
    return b"".join(out)


def integer(n):
    return b":%d\r\n" % n


def error(msg):
    return b"-" + msg.encode() + b"\r\n"


def wrong_args(name):
    return error(f"ERR wrong number of arguments for '{name.decode(errors='replace').lower()}' "
                 "command")


def to_int(b):
    """bytes -> int as redis parses it (optional sign, digits only), or None."""
    if not b or len(b) > 20:
        return None
    digits = b[1:] if b[:1] == b"-" else b
    if not digits.isdigit():
        return None
    return int(b)


class Store:
    """The key space: key -> value bytes, key -> expiry deadline (time.monotonic())."""

    def __init__(self):
        self.data = {}
        self.expires = {}
        self.lock = threading.Lock()

    def get(self, key):
        if self.expires and key in self.expires and self._expired(key):
            return None
        return self.data.get(key)

    def _expired(self, key):
        with self.lock:
            deadline = self.expires.get(key)
            if deadline is not None and time.monotonic() >= deadline:
                self.data.pop(key, None)
                del self.expires[key]
                return True
        return False

    def contains(self, key):
        return self.get(key) is not None


class RespHandler:
    """One connection's RESP2 state: feed(data) -> reply bytes. Not thread-safe by itself (a
    connection's callbacks never overlap); the Store it shares is."""

    __slots__ = ("store", "buf", "closing")

    def __init__(self, store):
        self.store = store
        self.buf = b""
        self.closing = False        # set by QUIT or a protocol error: close after sending

    def feed(self, data):
        """Every complete command in the bytes received so far -> the concatenated replies
        (b"" when the last command is still incomplete)."""
        buf = self.buf + data if self.buf else data
        out = []
        pos, n = 0, len(buf)
        try:
            while pos < n and not self.closing:
                if buf[pos] == 42:                              # b"*": an array of bulk strings
                    parsed = self._parse_array(buf, pos, n)
                else:
                    parsed = self._parse_inline(buf, pos, n)
                if parsed is None:
                    break                                       # wait for more bytes
                args, pos = parsed
                if args:
                    out.append(self.execute(args))
        except ProtocolError as exc:
            out.append(error(f"ERR Protocol error: {exc}"))
            self.closing = True
            pos = n
        self.buf = buf[pos:] if pos < n else b""
        return b"".join(out)

    @staticmethod
    def _parse_array(buf, pos, n):
        """(args, next position) or None if incomplete. `buf[pos]` is b"*"."""
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if n - pos > MAX_INLINE:
                raise ProtocolError("too big mbulk count string")
            return None
        try:
            count = int(buf[pos + 1:eol])
        except ValueError:
            raise ProtocolError("invalid multibulk length") from None
        if count > MAX_ARGS:
            raise ProtocolError("invalid multibulk length")
        pos = eol + 2
        args = []
        for _ in range(count):
            if pos >= n:
                return None
            if buf[pos] != 36:                                  # b"$"
                raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > MAX_INLINE:
                    raise ProtocolError("too big bulk count string")
                return None
            try:
                size = int(buf[pos + 1:eol])
            except ValueError:
                raise ProtocolError("invalid bulk length") from None
            if size < 0 or size > MAX_BULK:
                raise ProtocolError("invalid bulk length")
            start = eol + 2
            end = start + size
            if end + 2 > n:
                return None
            if buf[end:end + 2] != b"\r\n":
                raise ProtocolError("bulk string not terminated by CRLF")
            args.append(buf[start:end])
            pos = end + 2
        return args, pos

    @staticmethod
    def _parse_inline(buf, pos, n):
        eol = buf.find(b"\n", pos)
        if eol < 0:
            if n - pos > MAX_INLINE:
                raise ProtocolError("too big inline request")
            return None
        return buf[pos:eol].split(), eol + 1        # no quoting: arguments split on spaces

    # ---- commands ----

    def execute(self, args):
        name = args[0].upper()
        handler = COMMANDS.get(name)
        if handler is None:
            shown = args[0][:64].decode(errors="replace")
            return error(f"ERR unknown command '{shown}', with args beginning with: "
                         + " ".join(f"'{a[:32].decode(errors='replace')}'" for a in args[1:4]))
        arity = ARITY[name]
        if (arity >= 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
            return wrong_args(name)
        return handler(self, args)

    def cmd_get(self, args):
        store = self.store
        v = store.data.get(args[1])
        if v is not None and store.expires and args[1] in store.expires:
            v = store.get(args[1])
        return NIL if v is None else b"$%d\r\n%s\r\n" % (len(v), v)

    def cmd_set(self, args):
        store = self.store
        key, value = args[1], args[2]
        if len(args) == 3:                                      # the common case: plain SET
            store.data[key] = value
            if store.expires:
                store.expires.pop(key, None)
            return OK
        ttl, nx, xx, get, i = None, False, False, False, 3
        while i < len(args):
            opt = args[i].upper()
            if opt in (b"EX", b"PX") and i + 1 < len(args):
                t = to_int(args[i + 1])
                if t is None or t <= 0:
                    return error("ERR invalid expire time in 'set' command")
                ttl = t if opt == b"EX" else t / 1000.0
                i += 2
            elif opt == b"NX":
                nx, i = True, i + 1
            elif opt == b"XX":
                xx, i = True, i + 1
            elif opt == b"GET":
                get, i = True, i + 1
            else:
                return ERR_SYNTAX
        if nx and xx:
            return ERR_SYNTAX
        with store.lock:
            old = store.data.get(key)
            deadline = store.expires.get(key)
            if old is not None and deadline is not None and time.monotonic() >= deadline:
                old = None
            if (nx and old is not None) or (xx and old is None):
                return (NIL if old is None else bulk(old)) if get else NIL
            store.data[key] = value
            if ttl is None:
                store.expires.pop(key, None)
            else:
                store.expires[key] = time.monotonic() + ttl
        if get:
            return NIL if old is None else bulk(old)
        return OK

    def cmd_del(self, args):
        store = self.store
        n = 0
        with store.lock:
            for key in args[1:]:
                if store.data.pop(key, None) is not None:
                    n += 1
                store.expires.pop(key, None)
        return integer(n)

    def cmd_exists(self, args):
        contains = self.store.contains
        return integer(sum(1 for key in args[1:] if contains(key)))

    def _incr(self, key, delta):
        store = self.store
        with store.lock:
            old = store.data.get(key)
            if old is not None and key in store.expires and \
                    time.monotonic() >= store.expires[key]:
                old = None
                del store.expires[key]
            cur = 0 if old is None else to_int(old)
            if cur is None:
                return ERR_NOT_INT
            new = cur + delta
            if not -(1 << 63) <= new < (1 << 63):
                return error("ERR increment or decrement would overflow")
            store.data[key] = b"%d" % new
        return integer(new)

    def cmd_incr(self, args):
        return self._incr(args[1], 1)

    def cmd_decr(self, args):
        return self._incr(args[1], -1)

    def cmd_incrby(self, args):
        delta = to_int(args[2])
        return ERR_NOT_INT if delta is None else self._incr(args[1], delta)

    def cmd_mget(self, args):
        get = self.store.get
        return array([get(key) for key in args[1:]])

    def cmd_mset(self, args):
        if len(args) % 2 != 1:
            return wrong_args(b"mset")
        store = self.store
        with store.lock:
            for i in range(1, len(args), 2):
                store.data[args[i]] = args[i + 1]
                store.expires.pop(args[i], None)
        return OK

    def cmd_ping(self, args):
        if len(args) == 1:
            return PONG
        if len(args) == 2:
            return bulk(args[1])
        return wrong_args(b"ping")

    def cmd_echo(self, args):
        return bulk(args[1])

    def cmd_dbsize(self, args):
        return integer(len(self.store.data))

    def cmd_flushdb(self, args):
        with self.store.lock:
            self.store.data.clear()
            self.store.expires.clear()
        return OK

    def cmd_quit(self, args):
        self.closing = True
        return OK

    def cmd_select(self, args):
        return OK if args[1] == b"0" else error("ERR DB index is out of range")

    def cmd_config(self, args):
        sub = args[1].upper()
        if sub == b"GET" and len(args) >= 3:
            pairs = []
            for pattern in args[2:]:
                pat = pattern.decode(errors="replace").lower()
                for name, value in CONFIG.items():
                    if fnmatch.fnmatchcase(name, pat):
                        pairs += [name.encode(), value]
            return array(pairs)
        if sub in (b"SET", b"RESETSTAT", b"REWRITE"):
            return OK
        return error(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'")

    def cmd_command(self, args):
        if len(args) >= 2 and args[1].upper() == b"COUNT":
            return integer(len(COMMANDS))
        return EMPTY_ARRAY              # COMMAND, COMMAND DOCS, COMMAND INFO: nothing to tell

    def cmd_hello(self, args):
        if len(args) >= 2:
            ver = to_int(args[1])
            if ver != 2:
                return error("NOPROTO unsupported protocol version")
        info = [b"server", b"redis", b"version", b"7.0.0", b"proto", 2, b"id", 1,
                b"mode", b"standalone", b"role", b"master", b"modules", []]
        out = [b"*%d\r\n" % len(info)]
        for v in info:
            out.append(integer(v) if isinstance(v, int) else
                       EMPTY_ARRAY if isinstance(v, list) else bulk(v))
        return b"".join(out)

    def cmd_client(self, args):
        sub = args[1].upper()
        if sub in (b"SETNAME", b"SETINFO", b"NO-EVICT", b"NO-TOUCH", b"REPLY"):
            return OK
        if sub == b"GETNAME":
            return NIL
        if sub == b"ID":
            return integer(id(self) & 0xFFFFFFFF)
        return error(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'")

    def cmd_info(self, args):
        text = (b"# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n"
                b"server_name:iocpx-example\r\n# Keyspace\r\ndb0:keys=%d,expires=%d\r\n"
                % (len(self.store.data), len(self.store.expires)))
        return bulk(text)


# name -> (method, arity): redis's convention, N exact, -N at least N (the name included)
_TABLE = {
    b"GET": (RespHandler.cmd_get, 2), b"SET": (RespHandler.cmd_set, -3),
    b"DEL": (RespHandler.cmd_del, -2), b"EXISTS": (RespHandler.cmd_exists, -2),
    b"INCR": (RespHandler.cmd_incr, 2), b"DECR": (RespHandler.cmd_decr, 2),
    b"INCRBY": (RespHandler.cmd_incrby, 3), b"MGET": (RespHandler.cmd_mget, -2),
    b"MSET": (RespHandler.cmd_mset, -3), b"PING": (RespHandler.cmd_ping, -1),
    b"ECHO": (RespHandler.cmd_echo, 2), b"DBSIZE": (RespHandler.cmd_dbsize, 1),
    b"FLUSHDB": (RespHandler.cmd_flushdb, -1), b"FLUSHALL": (RespHandler.cmd_flushdb, -1),
    b"QUIT": (RespHandler.cmd_quit, -1), b"SELECT": (RespHandler.cmd_select, 2),
    b"CONFIG": (RespHandler.cmd_config, -2), b"COMMAND": (RespHandler.cmd_command, -1),
    b"HELLO": (RespHandler.cmd_hello, -1), b"CLIENT": (RespHandler.cmd_client, -2),
    b"INFO": (RespHandler.cmd_info, -1),
}
COMMANDS = {name: fn for name, (fn, _) in _TABLE.items()}
ARITY = {name: arity for name, (_, arity) in _TABLE.items()}
CONFIG = {"save": b"", "appendonly": b"no", "databases": b"1", "maxmemory": b"0"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(ap, default_port=6380)
    args = ap.parse_args(argv)
    store = Store()
    return serve_main(args, "RESP", lambda: RespHandler(store))


if __name__ == "__main__":
    sys.exit(main())
