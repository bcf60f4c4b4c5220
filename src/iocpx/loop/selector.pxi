# Readiness on the completion port: the selector that asyncio's own code
# (add_reader/add_writer, sock_recv & co., pipes, subprocesses, signals'
# self-pipe) talks to, backed by one-shot OP_POLL operations instead of a
# second poller. register/modify/unregister keep asyncio's selectors
# interface and its SelectorKey; there is no select(): the loop's wait
# already reports the polls among the other completions.
#
# Level-triggered, as asyncio's selectors are. A poll that fired runs its
# reader/writer callback at once, among the iteration's other I/O callbacks
# (asyncio's selector loop runs them in the iteration of the select that
# saw them, too). Where the backend keeps a poll armed (POLL_KEEP: epoll,
# whose registration stays), that is all: the next wait reports the
# descriptor again if the callback left it ready. Elsewhere the poll is
# one-shot, and it is armed again (if the descriptor is still registered)
# right after the callbacks ran; if the descriptor is still ready the new
# poll completes at once. One poll per descriptor at a time, for both
# directions; a modify that changes the events cancels the armed poll and
# arms one for the new set.

import selectors as _selectors
import stat as _stat

cdef object _SelectorKey = _selectors.SelectorKey
cdef object _fileobj_to_fd = _selectors._fileobj_to_fd
cdef int EVENT_READ = _selectors.EVENT_READ
cdef int EVENT_WRITE = _selectors.EVENT_WRITE


@cython.final
@cython.no_gc_clear
cdef class PollReg:
    """One registered descriptor's poll (owner of its OP_POLL contexts)."""

    def __repr__(self):
        return f"<iocpx.PollReg fd={self.fd} events={self.events}>"


cdef int poll_arm(EngineSelector sel, PollReg reg) except -1:
    """Arm a poll for reg's current events (none armed)."""
    cdef Engine eng = sel.loop.eng
    cdef IoCtx* io = io_alloc(OP_POLL, reg, NULL)
    io.fd = reg.fd
    io.group = POLL_KEEP            # stays armed where the backend can (epoll)
    io.len = ((PL_IN if reg.events & EVENT_READ else 0) |
              (PL_OUT if reg.events & EVENT_WRITE else 0))
    try:
        eng.be.submit_poll(io)
    except BaseException:
        io_free(io)
        raise
    eng.inflight += 1
    reg.io = io
    reg.armed = reg.events
    return 0


cdef int poll_cancel(EngineSelector sel, PollReg reg) except -1:
    """Cancel reg's armed poll; its completion (or the cancel's) is dropped."""
    cdef Engine eng = sel.loop.eng
    cdef IoCtx* target = reg.io
    if target == NULL:
        return 0
    reg.io = NULL
    reg.armed = 0
    cdef IoCtx* io = io_alloc_wait(OP_CANCEL, reg, NULL)    # a cancel must exist
    try:
        eng.be.submit_cancel_op(io, target)
    except BaseException:
        io_free(io)
        raise
    eng.inflight += 1
    return 0


cdef void poll_on_done(PollReg reg, Event* ev) except *:
    """A poll (or a cancel of one) completed (handle_event): the reader and
    writer callbacks it made ready run now. EV_MORE: the poll stays armed
    (POLL_KEEP), its context lives on until the completion that ends it."""
    cdef EngineSelector sel = reg.sel
    cdef Engine eng = sel.loop.eng if sel is not None and sel.loop is not None else None
    cdef IoCtx* io = ev.io
    cdef int res = ev.res
    cdef bint current = reg.io == io
    cdef uint8_t op = io.op
    cdef bint more = op == OP_POLL and (ev.flags & EV_MORE) != 0
    if not more:
        io_free(io)
        if eng is not None:
            eng.inflight -= 1
    if op != OP_POLL or not current:
        return                      # a cancel, or a poll replaced since
    if not more:
        reg.io = NULL
        reg.armed = 0
    if reg.closed or sel.closed:
        return
    key = sel.keys.get(reg.fd)
    if key is None:
        return
    if res < 0:
        if res == -_errno.ECANCELED:
            sel.rearm.append(reg)
            return
        res = PL_IN | PL_OUT | PL_ERR     # let the callbacks meet the error themselves
    loop = sel.loop
    if res & (PL_IN | PL_ERR | PL_HUP) and key.events & EVENT_READ:
        reader = key.data[0]
        if reader is not None:
            if reader._cancelled:
                loop._remove_reader(reg.fd)
            else:
                poll_run(sel.loop, reader)
        key = sel.keys.get(reg.fd)  # the reader may have changed what is registered
    if key is not None and res & (PL_OUT | PL_ERR | PL_HUP) and key.events & EVENT_WRITE:
        writer = key.data[1]
        if writer is not None:
            if writer._cancelled:
                loop._remove_writer(reg.fd)
            else:
                poll_run(sel.loop, writer)
    if not more and not reg.closed and reg.io == NULL and reg.events and not sel.closed:
        try:                        # the callbacks ran: a one-shot poll is armed again now
            poll_arm(sel, reg)
        except Exception:           # noqa: BLE001 - tried again before the loop waits
            sel.rearm.append(reg)


cdef int poll_run(LoopCore loop, object h) except -1:
    """Run a reader/writer callback now. asyncio's Handle reports what it
    raises; SystemExit and KeyboardInterrupt leave the loop after this
    iteration's I/O, as a protocol callback's do."""
    try:
        if loop._debug:
            loop_run_ready_debug(loop, h)
        else:
            loop_run_ready(loop, h)
    except (SystemExit, KeyboardInterrupt) as e:
        if loop.pending_exc is None:
            loop.pending_exc = e
    return 0


cdef int selector_rearm(EngineSelector sel) except -1:
    """Before the loop waits: arm again the polls that fired, for what is
    still registered."""
    cdef PollReg reg
    if not sel.rearm:
        return 0
    todo = sel.rearm
    sel.rearm = []
    for r in todo:
        reg = <PollReg>r
        if reg.closed or reg.io != NULL or reg.events == 0:
            continue
        poll_arm(sel, reg)
    return 0


cdef int _check_pollable(int fd) except -1:
    """What epoll would refuse, refused the same way on every backend: a
    closed descriptor (EBADF) and a regular file or directory (EPERM)."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise OSError(e.errno, f"descriptor {fd} cannot be polled: {e.strerror}") from None
    if _stat.S_ISREG(st.st_mode) or _stat.S_ISDIR(st.st_mode):
        raise PermissionError(_errno.EPERM, f"descriptor {fd} is a regular file or directory: "
                                            "it cannot be polled for readiness")
    return 0


@cython.final
cdef class EngineSelector:
    """selectors.BaseSelector's interface on the engine's OP_POLL (asyncio's
    selector event loop code drives it; the loop's wait does the selecting)."""

    def register(self, fileobj, events, data=None):
        cdef PollReg reg
        if self.closed:
            raise RuntimeError("the selector is closed")
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = _fileobj_to_fd(fileobj)
        if fd in self.keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        if not ON_WINDOWS:
            _check_pollable(fd)
        key = _SelectorKey(fileobj, fd, events, data)
        reg = PollReg.__new__(PollReg)
        reg.sel = self
        reg.fd = fd
        reg.events = events
        poll_arm(self, reg)
        self.keys[fd] = key
        self.regs[fd] = reg
        return key

    def unregister(self, fileobj):
        cdef PollReg reg
        fd = _fileobj_to_fd(fileobj) if not isinstance(fileobj, int) else fileobj
        try:
            key = self.keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        reg = <PollReg>self.regs.pop(fd)
        reg.events = 0
        reg.closed = 1
        try:
            poll_cancel(self, reg)
        except OSError:
            pass
        return key

    def modify(self, fileobj, events, data=None):
        cdef PollReg reg
        fd = _fileobj_to_fd(fileobj) if not isinstance(fileobj, int) else fileobj
        try:
            key = self.keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if not events or events & ~(EVENT_READ | EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        reg = <PollReg>self.regs[fd]
        if events != key.events:
            reg.events = events
            if reg.io != NULL and reg.armed != events:
                poll_cancel(self, reg)
            if reg.io == NULL:
                poll_arm(self, reg)
        key = key._replace(events=events, data=data)
        self.keys[fd] = key
        return key

    def get_key(self, fileobj):
        fd = _fileobj_to_fd(fileobj) if not isinstance(fileobj, int) else fileobj
        try:
            return self.keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self):
        return _KeyMap(self.keys)

    def select(self, timeout=None):
        raise RuntimeError("the iocpx loop selects in its own wait (_run_once)")

    def close(self):
        cdef PollReg reg
        if self.closed:
            return
        self.closed = 1
        for r in list(self.regs.values()):
            reg = <PollReg>r
            reg.events = 0
            reg.closed = 1
            try:
                poll_cancel(self, reg)
            except OSError:
                pass
        self.regs.clear()
        self.keys.clear()
        self.rearm = []

    def __enter__(self):
        return self

    def __exit__(self, *args):
        self.close()


class _KeyMap(__import__("collections.abc").abc.Mapping):
    """A read-only view of the registered keys (selectors' get_map())."""

    def __init__(self, keys):
        self._keys = keys

    def __len__(self):
        return len(self._keys)

    def __getitem__(self, fileobj):
        fd = fileobj if isinstance(fileobj, int) else _fileobj_to_fd(fileobj)
        return self._keys[fd]

    def __iter__(self):
        return iter(self._keys)
