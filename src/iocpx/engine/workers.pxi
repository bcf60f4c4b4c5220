# The worker pool: who waits in the kernel, who runs callbacks, and how a
# callback that blocks stalls only its own connection. (docs/how-it-works.md)
#
# One worker, the *home* worker, does the whole loop by itself while callbacks
# are quick: it waits in the kernel (the leader role, GIL released), moves the
# completions to the run queue, runs them with the GIL held (the dispatcher
# role), and enters the kernel again, submitting what the callbacks queued in
# the same call. That is the one-worker engine exactly: no hand-offs between
# threads, and every long-lived operation is submitted by the same thread,
# which on io_uring is the thread the kernel runs completion work on.
#
# The other workers are *helpers*. One of them is the watcher: while the home
# worker dispatches, it looks every STALL_MS whether the run queue has made
# progress. If the home worker has been inside one event for that long (a
# callback that sleeps, waits on a lock or a database), the watcher declares
# a rescue and itself leads and dispatches; another helper becomes the watcher,
# so a second blocked callback is rescued too. The stuck connection's further
# events wait in its SchedNode backlog; every other connection goes on. When
# the home worker comes back it ends the rescue: helpers finish the event in
# hand and stand by, and a helper waiting in the kernel hands the leader role
# back with the next completion. The watcher sleeps untimed while the engine
# is idle, and the home worker wakes it on the next dispatch.
#
# All role changes happen under eng.mu; events of one connection are
# serialized by its SchedNode (running + backlog), also under eng.mu.
# Lock order: a thread may take mu while it holds the GIL, but never waits
# for the GIL while it holds mu (so `with gil` only after unlocking, and no
# `with nogil: lock(mu)` that would take the GIL back with mu held).

cdef enum:
    BATCH = 256             # completions a leader takes per wait
    STALL_MS = 2            # one event running this long: the watcher starts a rescue
    QUIET_CHECKS = 250      # watcher checks without progress before it sleeps untimed
    FLUSH_EVERY = 64        # submit queued sends at least every this many events
    MERGE_MAX = 64          # receive events merged into one callback, at most
    MERGE_BYTES = 262144    # ... and bytes (a merged callback stops once it has this many)

cdef enum DispatchEnd:
    D_DONE = 0              # nothing left for this worker; it submitted what the run queued
    D_EXIT = 1              # it took an exit packet
    D_LEAD = 2              # it reserved the leader role: its next wait submits the run's sends


cdef inline bint _may_act(Engine eng, bint home) noexcept nogil:
    """May this worker lead or dispatch? The home worker always; helpers
    during a rescue, and everyone once exit packets are posted."""
    return home or eng.rescue or eng.exiting


cdef inline bint _work_ready(Engine eng, uint64_t now) noexcept nogil:
    return eng.rq.len > 0 or (eng.heap_len > 0 and eng.heap[0].due_ns <= now)


cdef void workers_run(Engine eng, bint home) noexcept nogil:
    """A worker thread's life: dispatch, lead, watch or stand by, until it
    takes an exit packet. mu is held except inside the kernel and callbacks."""
    cdef Event batch[BATCH]
    cdef int n, i, r
    cdef long tmo
    cdef uint64_t now
    cdef bint lead = 0              # dispatch_run reserved the leader role for us
    iocpx_tls_set(<void*>eng)
    iocpx_mutex_lock(&eng.mu)
    if home:
        eng.home_tid = iocpx_thread_id()
    while True:
        now = iocpx_now_ns()
        if _may_act(eng, home) and _work_ready(eng, now):
            if eng.watcher_idle:    # activity after a quiet spell: the watcher watches again
                eng.watcher_idle = 0
                iocpx_cond_signal(&eng.watch_cv)
            eng.dispatchers += 1
            if home:
                eng.home_dispatching = 1
            iocpx_mutex_unlock(&eng.mu)
            with gil:
                r = dispatch_run(eng, home)
            iocpx_mutex_lock(&eng.mu)
            eng.dispatchers -= 1
            if home:
                eng.home_dispatching = 0
            if r == D_EXIT:
                break
            if r == D_LEAD:
                lead = 1
            continue
        if lead or (not eng.leader and _may_act(eng, home)):
            lead = 0
            eng.leader = 1
            tmo = timers_wait_ms(eng, now)
            eng.leader_until = now + <uint64_t>tmo * 1000000 if tmo >= 0 else <uint64_t>-1
            iocpx_mutex_unlock(&eng.mu)
            n = eng.be.wait(batch, BATCH, tmo)      # also submits what is queued
            iocpx_mutex_lock(&eng.mu)
            eng.leader = 0
            eng.leader_until = 0
            for i in range(n):
                while evq_push(&eng.rq, &batch[i]) < 0:     # never drop a completion
                    iocpx_mutex_unlock(&eng.mu)
                    iocpx_sleep_ms(1)
                    iocpx_mutex_lock(&eng.mu)
            if n < 0:
                iocpx_mutex_unlock(&eng.mu)
                with gil:
                    log.error("iocpx: waiting for completions failed: %s", strerror(-n))
                    time.sleep(0.01)
                iocpx_mutex_lock(&eng.mu)
            if eng.exiting:
                _wake_all(eng)
            elif not home and not eng.rescue:
                iocpx_cond_signal(&eng.home_cv)     # the rescue is over: hand back
            continue
        if home:
            # a helper still holds the leader role after a rescue; it hands
            # the role back with its next completion
            iocpx_cond_wait_ms(&eng.home_cv, &eng.mu, -1)
            continue
        if not eng.watcher and eng.workers > 1 and not eng.exiting:
            workers_watch(eng)
            continue
        iocpx_cond_wait_ms(&eng.standby_cv, &eng.mu, -1)
    _wake_all(eng)                  # the others take their exit packets
    iocpx_mutex_unlock(&eng.mu)
    iocpx_tls_set(NULL)


cdef inline void _wake_all(Engine eng) noexcept nogil:
    iocpx_cond_broadcast(&eng.home_cv)
    iocpx_cond_broadcast(&eng.standby_cv)
    iocpx_cond_broadcast(&eng.watch_cv)


cdef void workers_watch(Engine eng) noexcept nogil:
    """The watcher role (mu held on entry and on return). Returns when this
    helper starts a rescue, or when the engine exits."""
    cdef uint64_t seen = eng.progress
    cdef int quiet = 0
    cdef bint busy
    eng.watcher = 1
    while not eng.exiting:
        busy = eng.dispatchers > 0
        if busy or quiet < QUIET_CHECKS:
            iocpx_cond_wait_ms(&eng.watch_cv, &eng.mu, STALL_MS)
        else:
            eng.watcher_idle = 1            # the next dispatch signals us
            iocpx_cond_wait_ms(&eng.watch_cv, &eng.mu, -1)
            eng.watcher_idle = 0
            seen = eng.progress
            quiet = 0
            continue
        if eng.progress != seen:
            seen = eng.progress
            quiet = 0
            continue
        quiet += 1
        # A dispatcher has been inside one event for STALL_MS, and work is
        # waiting: events queued, or a kernel nobody waits in. The home worker
        # is rescued only if it is blocked: one that computes (it holds the
        # GIL, so no helper could run anyway) or waits for a CPU is left alone.
        if busy and eng.dispatchers > 0 and (eng.rq.len > 0 or not eng.leader):
            if eng.home_dispatching and eng.dispatchers == 1 and eng.home_tid \
                    and iocpx_thread_runnable(eng.home_tid):
                continue
            eng.rescue = 1
            IOCPX_ADD_I64(&eng.n_rescues, 1)    # stats() reads it without mu
            break
    eng.watcher = 0
    iocpx_cond_signal(&eng.standby_cv)      # another helper becomes the watcher


cdef int dispatch_run(Engine eng, bint home) noexcept:
    """Run due timers and queued events until there are none (GIL held).
    A helper stops as soon as the home worker is back. After an event of a
    connection, the events that queued behind it (its SchedNode backlog) run
    next; the node is released in the same critical section that takes the
    next event, one lock round per event."""
    cdef Event run[MERGE_MAX]      # run[0]: the event; more: receives of one op merged into it
    cdef Event* nx
    cdef SchedNode* s
    cdef SchedNode* cur = NULL      # the node we run events of (running = 1), owner held
    cdef PyObject* tp
    cdef int count = 0, k, r = D_DONE
    cdef bint timer_turn = 1        # due timers and queued events take turns
    cdef Py_ssize_t total
    owner = None                    # keeps cur's object alive
    while True:
        iocpx_mutex_lock(&eng.mu)
        if cur != NULL:
            if cur.backlog.len > 0:     # what arrived for it meanwhile, in order
                run[0] = evq_peek(&cur.backlog)[0]
                evq_drop(&cur.backlog)
                eng.progress += 1
                iocpx_mutex_unlock(&eng.mu)
                handle_event(eng, run, 1)
                continue
            cur.running = 0
            cur = NULL
        if home:
            eng.rescue = 0              # back from whatever we ran: helpers step aside
        elif not eng.rescue and not eng.exiting:
            iocpx_mutex_unlock(&eng.mu)
            break
        if (timer_turn or eng.rq.len == 0) and eng.heap_len > 0 \
                and eng.heap[0].due_ns <= iocpx_now_ns():
            tp = timers_pop(eng)
            eng.progress += 1
            timer_turn = 0
            iocpx_mutex_unlock(&eng.mu)
            owner = None
            timer_fire(eng, <Timer>tp)
            Py_DECREF(<object>tp)       # the heap's reference
            continue
        timer_turn = 1
        if eng.rq.len == 0:
            if not eng.leader and _may_act(eng, home):
                eng.leader = 1          # reserved: nobody else enters the kernel first
                r = D_LEAD
            iocpx_mutex_unlock(&eng.mu)
            break
        run[0] = evq_peek(&eng.rq)[0]
        evq_drop(&eng.rq)
        eng.progress += 1
        s = run[0].io.sched
        k = 1
        if s != NULL:
            if s.running:               # another worker runs this connection: queue behind it
                while evq_push(&s.backlog, &run[0]) < 0:    # out of memory: never drop it
                    iocpx_mutex_unlock(&eng.mu)
                    with nogil:
                        iocpx_sleep_ms(1)
                    iocpx_mutex_lock(&eng.mu)
                iocpx_mutex_unlock(&eng.mu)
                continue
            s.running = 1
            # Receives of one op that follow each other in the queue (a big
            # message in buffer-sized pieces) become one callback.
            if run[0].io.op == OP_RECV and run[0].res > 0 and (run[0].flags & EV_MORE):
                total = run[0].res
                while k < MERGE_MAX and eng.rq.len > 0 and total < MERGE_BYTES:
                    nx = evq_peek(&eng.rq)
                    if nx.io != run[0].io or nx.res <= 0:
                        break
                    run[k] = nx[0]
                    k += 1
                    total += nx.res
                    evq_drop(&eng.rq)
                    eng.progress += 1
                    if not (run[k - 1].flags & EV_MORE):
                        break
        iocpx_mutex_unlock(&eng.mu)
        if run[0].io.op == OP_EXIT:
            io_free(run[0].io)
            r = D_EXIT
            break
        if s != NULL:
            owner = <object>run[0].io.owner     # keeps the SchedNode's object alive
            cur = s
            handle_event(eng, run, k)
        else:
            owner = None
            handle_event(eng, run, 1)
        count += 1
        if count >= FLUSH_EVERY:
            eng._flush()
            count = 0
    owner = None
    if r != D_LEAD:                 # the leader's next wait submits what the run queued
        eng._flush()
    return r


cdef void drain_node(Engine eng, SchedNode* s) noexcept:
    """Run the events that queued up for s while it was running, then
    release it. The caller holds a reference to s's owner."""
    cdef Event ev
    while True:
        iocpx_mutex_lock(&eng.mu)
        if s.backlog.len == 0:
            s.running = 0
            iocpx_mutex_unlock(&eng.mu)
            return
        ev = evq_peek(&s.backlog)[0]
        evq_drop(&s.backlog)
        eng.progress += 1
        iocpx_mutex_unlock(&eng.mu)
        handle_event(eng, &ev, 1)


cdef void handle_event(Engine eng, Event* ev, int k) noexcept:
    """Run one completion (k > 1: k receives of one op, merged): the model's
    switch on the operation type."""
    cdef uint8_t op = ev.io.op
    try:
        if op == OP_RECV:
            conn_on_recv(<Connection>ev.io.owner, ev, k)
        elif op == OP_SEND:
            conn_on_send(<Connection>ev.io.owner, ev)
        elif op == OP_SENDFILE:
            conn_on_sendfile(<Connection>ev.io.owner, ev)
        elif op == OP_CONNECT:
            conn_on_connect(<Connection>ev.io.owner, ev)
        elif op == OP_ACCEPT:
            listener_on_accept(<Listener>ev.io.owner, ev)
        elif op == OP_RECVFROM:
            dgram_on_recv(<Endpoint>ev.io.owner, ev)        # datagram.pxi
        elif op == OP_SENDTO:
            dgram_on_send(<Endpoint>ev.io.owner, ev)
        elif op == OP_POLL:
            poll_on_done(<PollReg>ev.io.owner, ev)          # loop/selector.pxi
        elif op == OP_READ or op == OP_WRITE or op == OP_WAIT:
            ovop_on_done(<OvOp>ev.io.owner, ev)             # loop/overlapped.pxi
        elif op == OP_CANCEL or op == OP_NOP:
            if ev.io.owner == NULL:
                io_free(ev.io)          # a wake-up (timers, close)
            elif type(<object>ev.io.owner) is PollReg:
                poll_on_done(<PollReg>ev.io.owner, ev)
            elif type(<object>ev.io.owner) is OvOp:
                ovop_on_done(<OvOp>ev.io.owner, ev)
            elif type(<object>ev.io.owner) is Connection:
                conn_on_aux(<Connection>ev.io.owner, ev)
            elif type(<object>ev.io.owner) is Endpoint:
                dgram_on_aux(<Endpoint>ev.io.owner, ev)
            else:
                listener_on_aux(<Listener>ev.io.owner, ev)
        else:
            log.error("iocpx: completion with unknown op %d dropped", op)
    except BaseException:
        engine_fault(eng)
        log.exception("iocpx: internal error while handling a completion (op %d)", op)
