/*
 * uring_echo.c - minimal C io_uring TCP echo server: the practical limit the iocpx benchmarks
 * compare against (the "C io_uring (limit)" rows of bench/echo.py; docs/performance.md).
 *
 * What it shows: the least CPU per echo round trip a single thread can spend on this kernel, with
 * the layout the feasibility probe found fastest: one multishot accept; per connection one
 * multishot recv into a ring of provided buffers (IORING_REGISTER_PBUF_RING); each received
 * buffer is sent back as it is (no copy) and returned to the ring when its send completes; every
 * SQE queued while draining the completion queue is submitted with the next wait, so one
 * io_uring_enter per batch. Ring flags SINGLE_ISSUER | DEFER_TASKRUN when the kernel has them.
 * No application logic, no Python: iocpx's per-message cost sits on top of this.
 *
 * What it needs: Linux 6.1+ (multishot recv, provided-buffer rings, DEFER_TASKRUN), a C compiler
 * and the kernel UAPI header <linux/io_uring.h> (Debian: linux-libc-dev). No liburing: the three
 * io_uring system calls are made directly. bench/harness.py (tool "uring_echo") compiles it into
 * bench/.build/; by hand:
 *
 *     cc -O2 -o bench/.build/uring_echo bench/uring_echo.c
 *     taskset -c 0 bench/.build/uring_echo 0          # port 0: the kernel picks one
 *
 * It listens on 127.0.0.1:PORT, prints "READY <port>" (flushed), serves until SIGTERM or SIGINT,
 * then prints one "STATS {...}" line on stderr and exits 0 (the kernel frees the ring and the
 * sockets). Exit status 2 on a setup failure, with the reason on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SQ_ENTRIES 4096
#define CQ_ENTRIES 32768
/* A fixed 64 MiB pool, not per connection. 64 KiB buffers: a 64 KiB message then takes one or
 * two receives instead of four or more (16 KiB buffers cost ~35% more CPU at 64 KiB). */
#ifndef NBUF
#define NBUF 1024               /* provided buffers, a power of two */
#endif
#ifndef BUFSZ
#define BUFSZ 65536
#endif
#define BGID 0

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };
#define UD(op, fd) (((uint64_t)(op) << 32) | (uint32_t)(fd))

/* One per file descriptor, indexed by fd; the fd is closed only when no request holds it,
 * so a completion never refers to a reused descriptor. */
struct conn {
    int32_t head, tail;         /* queue of buffer ids waiting to be sent, -1 when empty */
    uint8_t open;
    uint8_t recv_armed;         /* a multishot recv is pending */
    uint8_t send_inflight;      /* the head of the queue is being sent */
    uint8_t eof;                /* recv ended: close once the queue is empty */
    uint8_t failed;             /* send or recv failed: drop what is queued, send nothing more */
    uint8_t starved;            /* recv stopped for want of buffers: re-arm when some return */
};

static struct conn *conns;      /* calloc'd once, nfiles entries, freed by the exit */
static int nfiles;
static int32_t send_next[NBUF]; /* per buffer id: next buffer in its connection's send queue */
static uint32_t send_off[NBUF], send_len[NBUF];
static unsigned char *bufs;     /* NBUF * BUFSZ, mmap'd once: the provided-buffer pool */

static int ring_fd, listen_fd;
static int enter_fd;            /* ring_fd, or its registered index (IORING_REGISTER_RING_FDS) */
static unsigned enter_flags;    /* IORING_ENTER_REGISTERED_RING when enter_fd is an index */
static unsigned *sq_head, *sq_tail, sq_mask, *sq_array;
static unsigned *cq_head, *cq_tail, cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;
static unsigned sq_local_tail, to_submit;
static struct io_uring_buf_ring *br;   /* mmap'd: the provided-buffer ring shared with the kernel */
static uint16_t br_tail;
static int buffers_returned;
static int *starved_list, n_starved;   /* fds waiting for buffers, nfiles entries */
static volatile sig_atomic_t stop;
static unsigned long long n_accepted, n_recv, n_bytes, n_enter, n_enobufs;

static int sys_io_uring_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_io_uring_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, 0);
}

static int sys_io_uring_register(int fd, unsigned op, void *arg, unsigned nr)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

static void die(const char *what)
{
    fprintf(stderr, "uring_echo: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* A zeroed SQE to fill; submits what is queued first if the SQ is full. */
static struct io_uring_sqe *sqe_get(void)
{
    unsigned head = __atomic_load_n(sq_head, __ATOMIC_ACQUIRE);
    if (sq_local_tail - head > sq_mask) {
        __atomic_store_n(sq_tail, sq_local_tail, __ATOMIC_RELEASE);
        if (sys_io_uring_enter(enter_fd, to_submit, 0, enter_flags) < 0 && errno != EINTR)
            die("io_uring_enter (submit)");
        to_submit = 0;
    }
    struct io_uring_sqe *sqe = &sqes[sq_local_tail & sq_mask];
    memset(sqe, 0, sizeof *sqe);
    sq_local_tail++;
    to_submit++;
    return sqe;
}

static void accept_arm(void)
{
    struct io_uring_sqe *sqe = sqe_get();
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = listen_fd;
    sqe->ioprio = IORING_ACCEPT_MULTISHOT;
    sqe->accept_flags = SOCK_CLOEXEC;
    sqe->user_data = UD(OP_ACCEPT, listen_fd);
}

static void recv_arm(int fd)
{
    struct io_uring_sqe *sqe = sqe_get();
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = fd;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    sqe->user_data = UD(OP_RECV, fd);
    conns[fd].recv_armed = 1;
    conns[fd].starved = 0;
}

/* Send what is left of the buffer at the head of fd's queue. */
static void send_head(int fd)
{
    int32_t bid = conns[fd].head;
    struct io_uring_sqe *sqe = sqe_get();
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)(bufs + (size_t)bid * BUFSZ + send_off[bid]);
    sqe->len = send_len[bid] - send_off[bid];
    sqe->msg_flags = MSG_NOSIGNAL;
    sqe->user_data = UD(OP_SEND, fd);
    conns[fd].send_inflight = 1;
}

/* Hand buffer bid back to the kernel (published with the next wait). */
static void buf_return(int32_t bid)
{
    struct io_uring_buf *b = &br->bufs[br_tail & (NBUF - 1)];
    b->addr = (uint64_t)(uintptr_t)(bufs + (size_t)bid * BUFSZ);
    b->len = BUFSZ;
    b->bid = (uint16_t)bid;
    br_tail++;
    buffers_returned = 1;
}

static void conn_maybe_close(int fd)
{
    struct conn *c = &conns[fd];
    if (c->eof && !c->recv_armed && !c->send_inflight && c->head < 0 && !c->starved) {
        close(fd);
        c->open = 0;
    }
}

/* The connection failed: drop its queued data; shutdown wakes a pending recv so it ends. */
static void conn_fail(int fd)
{
    struct conn *c = &conns[fd];
    c->failed = 1;
    if (!c->send_inflight) {        /* an in-flight send's completion comes back here */
        while (c->head >= 0) {
            int32_t bid = c->head;
            c->head = send_next[bid];
            buf_return(bid);
        }
        c->tail = -1;
    }
    if (c->starved) {
        c->starved = 0;             /* its entry in starved_list is skipped */
        c->eof = 1;
    }
    if (c->recv_armed)
        shutdown(fd, SHUT_RDWR);
    conn_maybe_close(fd);
}

static void on_accept(struct io_uring_cqe *cqe)
{
    if (cqe->res >= 0) {
        int fd = cqe->res;
        if (fd >= nfiles) {         /* cannot happen under RLIMIT_NOFILE; be safe */
            close(fd);
        } else {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            conns[fd] = (struct conn){ .head = -1, .tail = -1, .open = 1 };
            n_accepted++;
            recv_arm(fd);
        }
    }
    if (!(cqe->flags & IORING_CQE_F_MORE))
        accept_arm();
}

static void on_recv(int fd, struct io_uring_cqe *cqe)
{
    struct conn *c = &conns[fd];
    if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
        int32_t bid = (int32_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        n_recv++;
        n_bytes += (unsigned)cqe->res;
        if (c->failed) {
            buf_return(bid);        /* failed connection: nothing more is sent */
        } else {
            send_off[bid] = 0;
            send_len[bid] = (uint32_t)cqe->res;
            send_next[bid] = -1;
            if (c->tail >= 0)
                send_next[c->tail] = bid;
            else
                c->head = bid;
            c->tail = bid;
            if (!c->send_inflight)
                send_head(fd);
        }
    }
    if (cqe->flags & IORING_CQE_F_MORE)
        return;
    c->recv_armed = 0;
    if (cqe->res == -ENOBUFS && !c->failed) {
        c->starved = 1;             /* re-armed once buffers come back */
        starved_list[n_starved++] = fd;
        n_enobufs++;
    } else if (cqe->res > 0 && !c->failed) {
        recv_arm(fd);               /* ended early (e.g. CQ overflow): keep reading */
    } else {
        c->eof = 1;                 /* EOF: what is queued is still sent; an error drops it */
        if (cqe->res < 0 && cqe->res != -ENOBUFS)
            conn_fail(fd);
        else
            conn_maybe_close(fd);
    }
}

static void on_send(int fd, struct io_uring_cqe *cqe)
{
    struct conn *c = &conns[fd];
    int32_t bid = c->head;
    c->send_inflight = 0;
    if (cqe->res < 0) {
        conn_fail(fd);
        return;
    }
    send_off[bid] += (uint32_t)cqe->res;
    if (send_off[bid] < send_len[bid] && !c->failed) {
        send_head(fd);              /* short send: the rest, in order */
        return;
    }
    c->head = send_next[bid];
    if (c->head < 0)
        c->tail = -1;
    buf_return(bid);
    if (c->failed)
        conn_fail(fd);              /* drop the rest */
    else if (c->head >= 0)
        send_head(fd);
    else
        conn_maybe_close(fd);
}

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s PORT [BACKLOG]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    int backlog = argc > 2 ? atoi(argv[2]) : 4096;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    nfiles = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 1048576 ? 1048576 : (int)rl.rlim_cur;
    conns = calloc((size_t)nfiles, sizeof *conns);
    starved_list = calloc((size_t)nfiles, sizeof *starved_list);
    if (!conns || !starved_list)
        die("calloc");

    struct sigaction sa = { .sa_handler = on_signal };   /* no SA_RESTART: the wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0
        || listen(listen_fd, backlog) < 0)
        die("listen");
    socklen_t alen = sizeof addr;
    getsockname(listen_fd, (struct sockaddr *)&addr, &alen);

    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    p.cq_entries = CQ_ENTRIES;
    const char *mode = "single_issuer+defer_taskrun";
    ring_fd = sys_io_uring_setup(SQ_ENTRIES, &p);
    if (ring_fd < 0 && errno == EINVAL) {           /* older kernel: plain ring */
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = CQ_ENTRIES;
        mode = "plain";
        ring_fd = sys_io_uring_setup(SQ_ENTRIES, &p);
    }
    if (ring_fd < 0)
        die("io_uring_setup");
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
        errno = ENOSYS;
        die("kernel without IORING_FEAT_SINGLE_MMAP");
    }
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t ring_sz = sq_sz > cq_sz ? sq_sz : cq_sz;
    unsigned char *ring = mmap(NULL, ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                               ring_fd, IORING_OFF_SQ_RING);
    sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
    if (ring == MAP_FAILED || sqes == MAP_FAILED)
        die("mmap ring");
    sq_head = (unsigned *)(ring + p.sq_off.head);
    sq_tail = (unsigned *)(ring + p.sq_off.tail);
    sq_mask = *(unsigned *)(ring + p.sq_off.ring_mask);
    sq_array = (unsigned *)(ring + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++)
        sq_array[i] = i;            /* identity: SQE i sits in slot i */
    sq_local_tail = *sq_tail;
    cq_head = (unsigned *)(ring + p.cq_off.head);
    cq_tail = (unsigned *)(ring + p.cq_off.tail);
    cq_mask = *(unsigned *)(ring + p.cq_off.ring_mask);
    cqes = (struct io_uring_cqe *)(ring + p.cq_off.cqes);

    /* The provided-buffer ring (entries shared with the kernel) and the buffers themselves. */
    br = mmap(NULL, NBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* MAP_POPULATE: the ring hands buffers out in FIFO order, so a lazily touched pool would
     * grow RSS with every new connection until all of it had been used once. */
    bufs = mmap(NULL, (size_t)NBUF * BUFSZ, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (br == MAP_FAILED || bufs == MAP_FAILED)
        die("mmap buffers");
    struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)br, .ring_entries = NBUF,
                                    .bgid = BGID };
    if (sys_io_uring_register(ring_fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0)
        die("IORING_REGISTER_PBUF_RING");
    br_tail = 0;
    for (int32_t i = 0; i < NBUF; i++)
        buf_return(i);
    __atomic_store_n(&br->tail, br_tail, __ATOMIC_RELEASE);

    /* A registered ring fd spares io_uring_enter the file-table lookup; optional. */
    enter_fd = ring_fd;
    struct io_uring_rsrc_update up = { .offset = -1U, .data = (uint64_t)ring_fd };
    if (!getenv("URING_ECHO_NO_REGRING")
        && sys_io_uring_register(ring_fd, IORING_REGISTER_RING_FDS, &up, 1) == 1) {
        enter_fd = (int)up.offset;
        enter_flags = IORING_ENTER_REGISTERED_RING;
    }

    accept_arm();
    printf("READY %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    while (!stop) {
        if (buffers_returned) {
            __atomic_store_n(&br->tail, br_tail, __ATOMIC_RELEASE);
            buffers_returned = 0;
            /* Connections that ran dry get their recv back now that buffers exist. */
            int n = n_starved;
            n_starved = 0;
            for (int i = 0; i < n; i++) {
                int fd = starved_list[i];
                if (conns[fd].open && conns[fd].starved)
                    recv_arm(fd);
                else if (conns[fd].open)
                    conn_maybe_close(fd);
            }
        }
        __atomic_store_n(sq_tail, sq_local_tail, __ATOMIC_RELEASE);
        int ret = sys_io_uring_enter(enter_fd, to_submit, 1, IORING_ENTER_GETEVENTS | enter_flags);
        n_enter++;
        if (ret < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EBUSY && errno != EAGAIN)
                die("io_uring_enter");
        } else {
            to_submit -= (unsigned)ret < to_submit ? (unsigned)ret : to_submit;
        }
        unsigned head = *cq_head;
        unsigned tail = __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &cqes[head & cq_mask];
            int op = (int)(cqe->user_data >> 32);
            int fd = (int)(uint32_t)cqe->user_data;
            if (op == OP_ACCEPT)
                on_accept(cqe);
            else if (op == OP_RECV)
                on_recv(fd, cqe);
            else if (op == OP_SEND)
                on_send(fd, cqe);
        }
        __atomic_store_n(cq_head, head, __ATOMIC_RELEASE);
    }
    fprintf(stderr, "STATS {\"kind\": \"uring-c\", \"mode\": \"%s\", \"accepted\": %llu, "
            "\"recvs\": %llu, \"bytes\": %llu, \"enters\": %llu, \"enobufs\": %llu, "
            "\"pid\": %d}\n", mode, n_accepted, n_recv, n_bytes, n_enter, n_enobufs, getpid());
    return 0;
}
