/* Small platform layer shared by every iocpx module: atomics, a mutex and a
 * condition variable, a monotonic clock, a thread-local slot and the head of a
 * per-I/O context (an OVERLAPPED on Windows, nothing on Linux).
 * Header-only; declarations for Cython are in _sys.pxd. */
#ifndef IOCPX_SYS_H
#define IOCPX_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _WIN32
#  include <winsock2.h>
#  include <ws2tcpip.h>
#  include <windows.h>
typedef OVERLAPPED iocpx_ovl_t;           /* must be the first member of an IoCtx */
typedef SRWLOCK iocpx_mutex_t;
typedef CONDITION_VARIABLE iocpx_cond_t;
static inline int iocpx_mutex_init(iocpx_mutex_t *m) { InitializeSRWLock(m); return 0; }
static inline void iocpx_mutex_destroy(iocpx_mutex_t *m) { (void)m; }
static inline void iocpx_mutex_lock(iocpx_mutex_t *m) { AcquireSRWLockExclusive(m); }
static inline void iocpx_mutex_unlock(iocpx_mutex_t *m) { ReleaseSRWLockExclusive(m); }
static inline int iocpx_mutex_trylock(iocpx_mutex_t *m) { return TryAcquireSRWLockExclusive(m) ? 0 : -1; }
static inline int iocpx_cond_init(iocpx_cond_t *c) { InitializeConditionVariable(c); return 0; }
static inline void iocpx_cond_destroy(iocpx_cond_t *c) { (void)c; }
static inline void iocpx_cond_signal(iocpx_cond_t *c) { WakeConditionVariable(c); }
static inline void iocpx_cond_broadcast(iocpx_cond_t *c) { WakeAllConditionVariable(c); }
/* ms < 0 waits without limit; returns 0 when woken, 1 on timeout */
static inline int iocpx_cond_wait_ms(iocpx_cond_t *c, iocpx_mutex_t *m, long ms) {
    if (SleepConditionVariableSRW(c, m, ms < 0 ? INFINITE : (DWORD)ms, 0)) return 0;
    return 1;
}
static inline uint64_t iocpx_now_ns(void) {
    LARGE_INTEGER f, t; QueryPerformanceFrequency(&f); QueryPerformanceCounter(&t);
    return (uint64_t)((double)t.QuadPart * 1e9 / (double)f.QuadPart);
}
static inline void iocpx_sleep_ms(long ms) { Sleep((DWORD)ms); }
#  if defined(__GNUC__)
#    define IOCPX_TLS __thread       /* MinGW GCC ignores __declspec(thread) */
#  else
#    define IOCPX_TLS __declspec(thread)
#  endif
#else
#  include <sys/socket.h>
#  include <netinet/in.h>
#  include <arpa/inet.h>
#  include <pthread.h>
#  include <time.h>
#  include <errno.h>
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
#  define IOCPX_TLS __thread
#endif

/* A socket address big enough for IPv4 and IPv6 (the only families iocpx serves). */
typedef union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} iocpx_addr_t;

/* Fill an address from its family, packed IP (4 or 16 bytes) and port;
 * returns its length. */
static inline int iocpx_addr_fill(iocpx_addr_t *a, int family, const char *ip,
                                  unsigned port, uint32_t flowinfo, uint32_t scope_id) {
    memset(a, 0, sizeof(*a));
    if (family == AF_INET6) {
        a->v6.sin6_family = AF_INET6;
        a->v6.sin6_port = htons((uint16_t)port);
        a->v6.sin6_flowinfo = htonl(flowinfo);
        a->v6.sin6_scope_id = scope_id;
        memcpy(&a->v6.sin6_addr, ip, 16);
        return (int)sizeof(a->v6);
    }
    a->v4.sin_family = AF_INET;
    a->v4.sin_port = htons((uint16_t)port);
    memcpy(&a->v4.sin_addr, ip, 4);
    return (int)sizeof(a->v4);
}

/* Split an address into family, packed IP (into ip, 16 bytes room) and port;
 * returns the IP length (4 or 16), or 0 for another family. */
static inline int iocpx_addr_split(const iocpx_addr_t *a, int *family, char *ip, unsigned *port) {
    *family = a->sa.sa_family;
    if (a->sa.sa_family == AF_INET6) {
        memcpy(ip, &a->v6.sin6_addr, 16); *port = ntohs(a->v6.sin6_port); return 16;
    }
    if (a->sa.sa_family == AF_INET) {
        memcpy(ip, &a->v4.sin_addr, 4); *port = ntohs(a->v4.sin_port); return 4;
    }
    return 0;
}

/* ---- sockets: the few calls the engine makes itself, per platform ---- */
#ifdef _WIN32
static inline int iocpx_last_error(void) { return WSAGetLastError(); }
static inline void iocpx_sock_close(int s) { if (s >= 0) closesocket((SOCKET)s); }
/* Linux's splice pipe for sendfile does not exist here (TransmitFile does it) */
static inline int iocpx_pipe_open(int fds[2], int want) { (void)fds; (void)want; return -1; }
#else
#  include <unistd.h>
#  include <fcntl.h>
#  include <netinet/tcp.h>
static inline int iocpx_last_error(void) { return errno; }
static inline void iocpx_sock_close(int s) { if (s >= 0) close(s); }
/* A pipe for splice-based sendfile, asked to hold `want` bytes; returns the
 * size it got, or -1 with errno set. */
static inline int iocpx_pipe_open(int fds[2], int want) {
    int n;
    if (pipe2(fds, O_CLOEXEC) < 0) return -1;
#  ifdef F_SETPIPE_SZ
    fcntl(fds[1], F_SETPIPE_SZ, want);
    n = fcntl(fds[1], F_GETPIPE_SZ);
    return n > 0 ? n : 65536;
#  else
    (void)want; return 65536;
#  endif
}
#endif
/* A non-blocking read of up to n bytes: > 0 read, 0 at EOF, -1 on error
 * (iocpx_last_error()). On Windows the socket is in non-blocking mode. */
static inline long iocpx_sock_recv(int s, char *buf, size_t n) {
#ifdef _WIN32
    return recv((SOCKET)s, buf, (int)(n > 0x7fffffff ? 0x7fffffff : n), 0);
#else
    return (long)recv(s, buf, n, MSG_DONTWAIT);
#endif
}
/* A non-blocking send of up to n bytes: the bytes sent, or -1 with
 * iocpx_last_error() (EAGAIN/WSAEWOULDBLOCK: the socket buffer is full). */
static inline long iocpx_sock_send_now(int s, const char *buf, size_t n) {
#ifdef _WIN32
    return send((SOCKET)s, buf, (int)(n > 0x7fffffff ? 0x7fffffff : n), 0);
#else
    return (long)send(s, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
#endif
}

/* Send FIN after what is queued; the socket stays open for reading. */
static inline int iocpx_sock_shutdown_wr(int s) {
#ifdef _WIN32
    return shutdown((SOCKET)s, SD_SEND);
#else
    return shutdown(s, SHUT_WR);
#endif
}
static inline int iocpx_sock_nodelay(int s, int on) {
    int v = on;
    return setsockopt(s, IPPROTO_TCP, TCP_NODELAY, (const char *)&v, sizeof(v));
}
static inline int iocpx_sock_name(int s, iocpx_addr_t *a) {
    socklen_t n = (socklen_t)sizeof(*a);
    return getsockname(s, &a->sa, &n);
}
static inline int iocpx_sock_peer(int s, iocpx_addr_t *a) {
    socklen_t n = (socklen_t)sizeof(*a);
    return getpeername(s, &a->sa, &n);
}

/* ---- Unix-domain and adopted sockets: raw addresses and socket facts ----
 * AF_UNIX addresses do not fit iocpx_addr_t (which sits in every per-I/O
 * context): they travel out of line, in a malloc'd iocpx_unaddr_t. The layout
 * is Linux's sockaddr_un and Windows' SOCKADDR_UN (afunix.h) alike. */
#ifndef AF_UNIX
#  define AF_UNIX 1
#endif
#define IOCPX_AF_UNIX AF_UNIX
#define IOCPX_UN_PATH 108
typedef struct {
    unsigned short sun_family;
    char sun_path[IOCPX_UN_PATH];
} iocpx_unaddr_t;
#define IOCPX_UN_OFF ((int)offsetof(iocpx_unaddr_t, sun_path))

/* Fill a from a path of n bytes (a leading NUL: Linux's abstract namespace,
 * taken as is, no terminator); returns the address length, or -1 when the
 * name does not fit. */
static inline int iocpx_unaddr_fill(iocpx_unaddr_t *a, const char *path, size_t n) {
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    if (n > 0 && path[0] == '\0') {
        if (n > IOCPX_UN_PATH) return -1;
        memcpy(a->sun_path, path, n);
        return IOCPX_UN_OFF + (int)n;
    }
    if (n + 1 > IOCPX_UN_PATH) return -1;
    memcpy(a->sun_path, path, n);
    return IOCPX_UN_OFF + (int)n + 1;
}

/* A plain (not yet associated, blocking) socket; -1 on error. */
static inline int iocpx_sock_open(int family, int type) {
#ifdef _WIN32
    SOCKET s = WSASocketW(family, type, 0, NULL, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
    return s == INVALID_SOCKET ? -1 : (int)s;
#else
    return socket(family, type | SOCK_CLOEXEC, 0);
#endif
}

static inline int iocpx_sock_bind(int s, const void *sa, int len) {
    return bind(s, (const struct sockaddr *)sa, (socklen_t)len);
}

static inline int iocpx_sock_listen(int s, int backlog) {
    return listen(s, backlog);
}

/* The local (peer = 0) or remote (peer = 1) address of s, any family, into
 * buf (room for *len bytes; *len becomes its length). 0, or -1 on error. */
static inline int iocpx_sock_name_raw(int s, int peer, void *buf, int *len) {
    socklen_t n = (socklen_t)*len;
    int r = peer ? getpeername(s, (struct sockaddr *)buf, &n)
                 : getsockname(s, (struct sockaddr *)buf, &n);
    *len = (int)n;
    return r;
}

/* What an adopted socket is: its type (SOCK_STREAM...), whether it listens,
 * its family (from its local address; 0 where an unbound socket has none,
 * as on Windows). 0, or -1 on error (not a socket). */
static inline int iocpx_sock_info(int s, int *type, int *listening, int *family) {
    char buf[sizeof(iocpx_unaddr_t) + sizeof(iocpx_addr_t)];
    socklen_t n = (socklen_t)sizeof(int);
    int v = 0;
    *type = 0; *listening = 0; *family = 0;
    if (getsockopt(s, SOL_SOCKET, SO_TYPE, (char *)&v, &n) != 0) return -1;
    *type = v;
    v = 0; n = (socklen_t)sizeof(int);
    if (getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, (char *)&v, &n) == 0) *listening = v != 0;
    n = (socklen_t)sizeof(buf);
    memset(buf, 0, sizeof(buf));
    if (getsockname(s, (struct sockaddr *)buf, &n) == 0)
        *family = ((struct sockaddr *)buf)->sa_family;
    return 0;
}

/* ---- datagrams: the kernel's drop counter (SO_RXQ_OVFL, Linux) ----
 * With SO_RXQ_OVFL set, each datagram received carries, in a control
 * message, how many datagrams the kernel has dropped on the socket so far
 * (its receive buffer was full). IOCPX_DG_CTRL is the control room to ask
 * for; iocpx_cmsg_drops() reads the counter (-1: none in this message, which
 * means none dropped yet). Windows has no such counter. */
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

/* Acquire/release accessors for memory shared with the kernel or other threads.
 * GCC and Clang (mingw-w64 included) have the __atomic builtins; MSVC gets the
 * documented intrinsics: on x86-64 an aligned load/store is atomic and ordered
 * (TSO), so acquire/release only need a compiler barrier (_ReadWriteBarrier);
 * the read-modify-write is _InterlockedExchangeAdd64. The MSVC branch is
 * written to Microsoft's documentation but built here with mingw-w64 only. */
#if defined(_MSC_VER) && !defined(__clang__)
#  include <intrin.h>
static __forceinline uint32_t iocpx_load_acq_u32(uint32_t *p) {
    uint32_t v = *(volatile uint32_t *)p; _ReadWriteBarrier(); return v;
}
static __forceinline void iocpx_store_rel_u32(uint32_t *p, uint32_t v) {
    _ReadWriteBarrier(); *(volatile uint32_t *)p = v;
}
static __forceinline void iocpx_store_rel_u16(uint16_t *p, uint16_t v) {
    _ReadWriteBarrier(); *(volatile uint16_t *)p = v;
}
#  define IOCPX_LOAD_ACQ_U32(p)      iocpx_load_acq_u32(p)
#  define IOCPX_STORE_REL_U32(p, v)  iocpx_store_rel_u32((p), (v))
#  define IOCPX_STORE_REL_U16(p, v)  iocpx_store_rel_u16((p), (v))
#  define IOCPX_ADD_I64(p, v)        (_InterlockedExchangeAdd64((volatile __int64 *)(p), (v)) + (v))
#  define IOCPX_ADD_I32(p, v)        (_InterlockedExchangeAdd((volatile long *)(p), (v)) + (v))
#  define IOCPX_LOAD_I64(p)          (*(volatile int64_t *)(p))
#else
#  define IOCPX_LOAD_ACQ_U32(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#  define IOCPX_STORE_REL_U32(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#  define IOCPX_STORE_REL_U16(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#  define IOCPX_ADD_I64(p, v)        __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#  define IOCPX_ADD_I32(p, v)        __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)
#  define IOCPX_LOAD_I64(p)          __atomic_load_n((p), __ATOMIC_RELAXED)
#endif

/* A bytes object's buffer and size: the macros where the full C API is there,
 * the functions in a stable-ABI (Py_LIMITED_API) build, which lacks the macros.
 * The caller has checked that o is a bytes object. */
#ifdef Py_LIMITED_API
#  define iocpx_bytes_ptr(o) PyBytes_AsString(o)
#  define iocpx_bytes_len(o) PyBytes_Size(o)
#else
#  define iocpx_bytes_ptr(o) PyBytes_AS_STRING(o)
#  define iocpx_bytes_len(o) PyBytes_GET_SIZE(o)
#endif

/* Thread identity and state, for the engine's stall watcher: a worker that
 * has been inside one callback for a while is rescued only if it is really
 * blocked (asleep in the kernel), not if it is computing or merely waiting
 * for a CPU. Linux reads /proc/self/task/TID/stat; elsewhere the state is
 * unknown (0) and every long callback counts as blocked. */
#ifdef _WIN32
static inline long iocpx_thread_id(void) { return (long)GetCurrentThreadId(); }
static inline int iocpx_thread_runnable(long tid) { (void)tid; return 0; }
#else
#  include <sys/syscall.h>
#  include <stdio.h>
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

/* The engine whose worker runs on this thread (NULL elsewhere): lets send()
 * defer its submit to the end of the worker's batch instead of a syscall each. */
static IOCPX_TLS void *iocpx_tls_engine = NULL;
static inline void *iocpx_tls_get(void) { return iocpx_tls_engine; }
static inline void iocpx_tls_set(void *e) { iocpx_tls_engine = e; }

#endif
