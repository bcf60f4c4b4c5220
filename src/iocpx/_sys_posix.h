/* The POSIX (Linux) half of iocpx's platform layer; included by _sys.h only
 * (see there for what each half provides). pthreads, CLOCK_MONOTONIC, BSD
 * sockets, and the Linux extras: pipe sizes for splice, the kernel's
 * datagram drop counter, a thread's state from /proc. */
#ifndef IOCPX_SYS_POSIX_H
#define IOCPX_SYS_POSIX_H

#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <stdio.h>

/* ---- per-I/O context head, locks, clock, thread-local storage ---- */
typedef struct { char _unused; } iocpx_ovl_t;   /* no OVERLAPPED on Linux */
typedef pthread_mutex_t iocpx_mutex_t;
typedef pthread_cond_t iocpx_cond_t;
static inline int iocpx_mutex_init(iocpx_mutex_t *m) { return pthread_mutex_init(m, NULL); }
static inline void iocpx_mutex_destroy(iocpx_mutex_t *m) { pthread_mutex_destroy(m); }
static inline void iocpx_mutex_lock(iocpx_mutex_t *m) { pthread_mutex_lock(m); }
static inline void iocpx_mutex_unlock(iocpx_mutex_t *m) { pthread_mutex_unlock(m); }
static inline int iocpx_mutex_trylock(iocpx_mutex_t *m) { return pthread_mutex_trylock(m) == 0 ? 0 : -1; }
static inline int iocpx_cond_init(iocpx_cond_t *c) {
    pthread_condattr_t a; int r;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    r = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return r;
}
static inline void iocpx_cond_destroy(iocpx_cond_t *c) { pthread_cond_destroy(c); }
static inline void iocpx_cond_signal(iocpx_cond_t *c) { pthread_cond_signal(c); }
static inline void iocpx_cond_broadcast(iocpx_cond_t *c) { pthread_cond_broadcast(c); }
static inline uint64_t iocpx_now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
/* ms < 0 waits without limit; returns 0 when woken (or spuriously), 1 on timeout */
static inline int iocpx_cond_wait_ms(iocpx_cond_t *c, iocpx_mutex_t *m, long ms) {
    struct timespec ts;
    if (ms < 0) { pthread_cond_wait(c, m); return 0; }
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
    return pthread_cond_timedwait(c, m, &ts) == ETIMEDOUT;
}
static inline void iocpx_sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}
#define IOCPX_TLS __thread

/* ---- sockets: the few calls the engine makes itself ---- */
static inline int iocpx_last_error(void) { return errno; }
static inline void iocpx_sock_close(int s) { if (s >= 0) close(s); }
/* A pipe for splice-based sendfile, asked to hold `want` bytes; returns the
 * size it got, or -1 with errno set. */
static inline int iocpx_pipe_open(int fds[2], int want) {
    int n;
    if (pipe2(fds, O_CLOEXEC) < 0) return -1;
#ifdef F_SETPIPE_SZ
    fcntl(fds[1], F_SETPIPE_SZ, want);
    n = fcntl(fds[1], F_GETPIPE_SZ);
    return n > 0 ? n : 65536;
#else
    (void)want; return 65536;
#endif
}
/* A non-blocking read of up to n bytes: > 0 read, 0 at EOF, -1 on error
 * (iocpx_last_error()). */
static inline long iocpx_sock_recv(int s, char *buf, size_t n) {
    return (long)recv(s, buf, n, MSG_DONTWAIT);
}
/* A non-blocking send of up to n bytes: the bytes sent, or -1 with
 * iocpx_last_error() (EAGAIN: the socket buffer is full). */
static inline long iocpx_sock_send_now(int s, const char *buf, size_t n) {
    return (long)send(s, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
}
/* Send FIN after what is queued; the socket stays open for reading. */
static inline int iocpx_sock_shutdown_wr(int s) { return shutdown(s, SHUT_WR); }
/* A plain (blocking) socket; -1 on error. */
static inline int iocpx_sock_open(int family, int type) {
    return socket(family, type | SOCK_CLOEXEC, 0);
}

/* ---- datagrams: the kernel's drop counter (SO_RXQ_OVFL, Linux) ----
 * With SO_RXQ_OVFL set, each datagram received carries, in a control
 * message, how many datagrams the kernel has dropped on the socket so far
 * (its receive buffer was full). IOCPX_DG_CTRL is the control room to ask
 * for; iocpx_cmsg_drops() reads the counter (-1: none in this message, which
 * means none dropped yet). */
#if defined(__linux__) && defined(SO_RXQ_OVFL)
#  define IOCPX_DG_CTRL ((int)CMSG_SPACE(sizeof(uint32_t)))
static inline int iocpx_dgram_rxq_ovfl(int s) {
    int one = 1;
    return setsockopt(s, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one));
}
static inline int64_t iocpx_cmsg_drops(void *ctrl, size_t len) {
    struct msghdr m;
    struct cmsghdr *c;
    uint32_t v;
    if (ctrl == NULL || len < sizeof(struct cmsghdr)) return -1;
    memset(&m, 0, sizeof(m));
    m.msg_control = ctrl;
    m.msg_controllen = len;
    for (c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
            memcpy(&v, CMSG_DATA(c), sizeof(v));
            return (int64_t)v;
        }
    }
    return -1;
}
#else
#  define IOCPX_DG_CTRL 0
static inline int iocpx_dgram_rxq_ovfl(int s) { (void)s; return -1; }
static inline int64_t iocpx_cmsg_drops(void *ctrl, size_t len) { (void)ctrl; (void)len; return -1; }
#endif

/* The same counter read at any time (SO_MEMINFO's SK_MEMINFO_DROPS, Linux
 * 4.14+), so drops show in stats() before the next datagram carries them;
 * -1 where there is none. */
#if defined(__linux__) && defined(SO_MEMINFO)
static inline int64_t iocpx_sock_drops(int s) {
    uint32_t mem[16];
    socklen_t len = sizeof(mem);
    if (getsockopt(s, SOL_SOCKET, SO_MEMINFO, mem, &len) < 0 || len < 9 * sizeof(uint32_t))
        return -1;
    return (int64_t)mem[8];             /* SK_MEMINFO_DROPS */
}
#else
static inline int64_t iocpx_sock_drops(int s) { (void)s; return -1; }
#endif

/* ---- thread identity and state: Linux reads /proc/self/task/TID/stat ---- */
static inline long iocpx_thread_id(void) { return (long)syscall(SYS_gettid); }
static inline int iocpx_thread_runnable(long tid) {
    char path[64], buf[256];
    char *p;
    int fd;
    ssize_t n;
    snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    p = strrchr(buf, ')');          /* "pid (comm) S ...": comm may hold spaces */
    return p != NULL && p[1] == ' ' && p[2] == 'R';
}

#endif
