/* iocpx's platform layer, shared by every module: the one header they include
 * (declared for Cython in _sys.pxd). Header-only.
 *
 * What each platform half provides (_sys_win.h for Windows, _sys_posix.h for
 * Linux and other POSIX systems), under the same names:
 *   iocpx_ovl_t            the head of every per-I/O context (OVERLAPPED, or nothing)
 *   iocpx_mutex_t, iocpx_cond_t and their init/destroy/lock/unlock/trylock,
 *                          signal/broadcast/wait_ms
 *   iocpx_now_ns, iocpx_sleep_ms, IOCPX_TLS (the thread-local storage class)
 *   iocpx_last_error, iocpx_sock_close, iocpx_sock_open, iocpx_sock_recv,
 *   iocpx_sock_send_now, iocpx_sock_shutdown_wr, iocpx_pipe_open
 *   IOCPX_DG_CTRL, iocpx_dgram_rxq_ovfl, iocpx_cmsg_drops, iocpx_sock_drops
 *                          (the kernel's datagram drop counter, where there is one)
 *   iocpx_thread_id, iocpx_thread_runnable (for the engine's stall watcher)
 * and below, written once for both: socket addresses (inet and AF_UNIX), the
 * socket calls that read the same everywhere, atomics (per compiler: GCC/Clang
 * or MSVC), a bytes object's buffer, the worker's thread-local engine. */
#ifndef IOCPX_SYS_H
#define IOCPX_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>

#ifdef _WIN32
#  include "_sys_win.h"
#else
#  include "_sys_posix.h"
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

/* ---- sockets: the calls that read the same on every platform ---- */
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
#  define IOCPX_LOAD_I32(p)          (*(volatile int32_t *)(p))
#else
#  define IOCPX_LOAD_ACQ_U32(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#  define IOCPX_STORE_REL_U32(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#  define IOCPX_STORE_REL_U16(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#  define IOCPX_ADD_I64(p, v)        __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
#  define IOCPX_ADD_I32(p, v)        __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)
#  define IOCPX_LOAD_I64(p)          __atomic_load_n((p), __ATOMIC_RELAXED)
#  define IOCPX_LOAD_I32(p)          __atomic_load_n((p), __ATOMIC_RELAXED)
#endif

/* ThreadSanitizer at the kernel boundary. A context one thread fills and
 * submits to io_uring comes back to another thread through the kernel (its
 * CQE's user_data), and so does a receive buffer provided to the ring: the
 * happens-before edge goes through memory the kernel writes, which TSan cannot
 * see. IOCPX_TSAN_RELEASE(p) before the hand-over to the kernel and
 * IOCPX_TSAN_ACQUIRE(p) where it comes back draw that edge for TSan. Any TSan
 * build gets them (GCC defines __SANITIZE_THREAD__, Clang has
 * __has_feature(thread_sanitizer)); every other build compiles them to nothing. */
#if defined(__SANITIZE_THREAD__)
#  define IOCPX_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define IOCPX_TSAN 1
#  endif
#endif
#ifdef IOCPX_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#  define IOCPX_TSAN_RELEASE(p) __tsan_release((void *)(p))
#  define IOCPX_TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#else
#  define IOCPX_TSAN_RELEASE(p) ((void)0)
#  define IOCPX_TSAN_ACQUIRE(p) ((void)0)
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

/* The engine whose worker runs on this thread (NULL elsewhere): lets send()
 * defer its submit to the end of the worker's batch instead of a syscall each. */
static IOCPX_TLS void *iocpx_tls_engine = NULL;
static inline void *iocpx_tls_get(void) { return iocpx_tls_engine; }
static inline void iocpx_tls_set(void *e) { iocpx_tls_engine = e; }


/* ---- failure points (docs/robustness.md) ----
 * Each allocation and system call of the engine and the backends that can
 * fail is a named point. In a build with IOCPX_FAULTS=1 (setup.py:
 * IOCPX_FAULTS=1 or IOCPX_DEBUG_BUILD=1) IOCPX_FAULT(IOCPX_F_x) asks the one
 * table (in _backend, attached by every module at import) whether this call
 * of the point must fail; the call site then fails the way the real call
 * would (NULL, -1 with errno, a short count). Elsewhere IOCPX_FAULT(id) is 0
 * and the compiler drops the failure branch: release builds pay nothing. */
#define IOCPX_FAULT_POINTS(X) \
    X(ALLOC_IOCTX,        "alloc.ioctx")        /* io_alloc: a per-I/O context (MemoryError) */ \
    X(ALLOC_EVQ,          "alloc.evq")          /* evq_grow: an event queue's ring */ \
    X(ALLOC_TIMERS,       "alloc.timers")       /* the timer heap's growth */ \
    X(ALLOC_DGRAM_CACHE,  "alloc.dgram_cache")  /* a datagram endpoint's address cache */ \
    X(ALLOC_FDTABLE,      "alloc.fdtable")      /* epoll: the descriptor table's growth */ \
    X(ALLOC_DG_SCRATCH,   "alloc.dg_scratch")   /* epoll: recvmmsg scratch blocks */ \
    X(ALLOC_DG_HEAD,      "alloc.dg_head")      /* epoll: a received datagram's block */ \
    X(ALLOC_SENDFILE,     "alloc.sendfile")     /* sendfile state (epoll FileSend, io_uring SpliceState) */ \
    X(ALLOC_POOL,         "alloc.pool")         /* io_uring: a receive pool's ring and tables */ \
    X(ALLOC_POOL_CHUNK,   "alloc.pool_chunk")   /* io_uring: a receive pool's next chunk of buffers */ \
    X(ALLOC_DG_MSG,       "alloc.dg_msg")       /* io_uring: a datagram's msghdr (receive or send) */ \
    X(ALLOC_RECV_BLOCK,   "alloc.recv_block")   /* epoll, iocp: a heap receive's block (recv_heap) */ \
    X(SYS_SOCKET,         "sys.socket")         /* socket() for connect; iocp: WSASocketW, AcceptEx's too (ENOBUFS) */ \
    X(SYS_ACCEPT,         "sys.accept4")        /* epoll: accept4 (ENOBUFS) */ \
    X(SYS_EPOLL_CTL,      "sys.epoll_ctl")      /* epoll: interest change (ENOMEM) */ \
    X(SYS_RECV,           "sys.recv")           /* epoll, iocp: recv on readiness (EAGAIN: readiness that was not) */ \
    X(SYS_SEND_SHORT,     "sys.send.short")     /* send now: half of it goes (a short write) */ \
    X(SYS_SEND_EAGAIN,    "sys.send.eagain")    /* send now: nothing fits (EAGAIN) */ \
    X(SYS_SENDFILE,       "sys.sendfile")       /* epoll: sendfile(2) (EAGAIN) */ \
    X(SYS_SENDTO,         "sys.sendto")         /* epoll: a datagram's sendto; iocp: WSASendTo (ENOBUFS) */ \
    X(SYS_URING_SUBMIT,   "sys.io_uring_enter.submit") /* io_uring: submit-only enter (EAGAIN) */ \
    X(SYS_URING_WAIT,     "sys.io_uring_enter.wait")   /* io_uring: the leader's waiting enter (EINTR) */ \
    X(SYS_URING_SQ_FULL,  "sys.io_uring.sq_full")      /* io_uring: no free SQE slot at first try */ \
    X(SYS_WSARECV,        "sys.wsarecv")        /* iocp: the zero-byte WSARecv (WSAENOBUFS) */ \
    X(SYS_WSASEND,        "sys.wsasend")        /* iocp: WSASend (WSAENOBUFS) */ \
    X(SYS_ACCEPTEX,       "sys.acceptex")       /* iocp: AcceptEx (WSAENOBUFS) */ \
    X(SYS_CONNECTEX,      "sys.connectex")      /* iocp: ConnectEx (WSAENOBUFS) */ \
    X(SYS_TRANSMITFILE,   "sys.transmitfile")   /* iocp: TransmitFile (WSAENOBUFS) */ \
    X(SYS_WSARECVFROM,    "sys.wsarecvfrom")    /* iocp: a datagram's WSARecvFrom (WSAENOBUFS) */

#define IOCPX_FAULT_ENUM(id, name) IOCPX_F_##id,
enum { IOCPX_FAULT_POINTS(IOCPX_FAULT_ENUM) IOCPX_F_COUNT };

typedef struct {
    int64_t calls[IOCPX_F_COUNT];   /* calls of each point since it was armed or reset */
    int64_t hits[IOCPX_F_COUNT];    /* calls made to fail */
    int64_t nth[IOCPX_F_COUNT];     /* fail this call (1-based) once; 0: not armed */
    uint8_t rand_on[IOCPX_F_COUNT]; /* points failing at random */
    uint64_t rate;                  /* random failures per 2^32 calls */
    uint64_t draws;                 /* random draws so far (with seed: the sequence) */
    uint64_t seed;
} iocpx_faults_t;

#define IOCPX_FAULT_NAME(id, name) name,
static const char *const iocpx_fault_names[IOCPX_F_COUNT] = { IOCPX_FAULT_POINTS(IOCPX_FAULT_NAME) };

/* The control (_backend's Python functions; iocpx._faults wraps them). */
static inline void iocpx_faults_reset(iocpx_faults_t *t) { memset(t, 0, sizeof(*t)); }
static inline void iocpx_faults_arm(iocpx_faults_t *t, int id, int64_t nth) {
    t->calls[id] = 0; t->hits[id] = 0; t->nth[id] = nth;
}
static inline void iocpx_faults_random(iocpx_faults_t *t, int id, uint64_t seed, uint64_t rate) {
    t->seed = seed; t->rate = rate; t->draws = 0; t->rand_on[id] = 1;
}
static inline int64_t iocpx_faults_calls(iocpx_faults_t *t, int id) {
    return __atomic_load_n(&t->calls[id], __ATOMIC_RELAXED);
}
static inline int64_t iocpx_faults_hits(iocpx_faults_t *t, int id) {
    return __atomic_load_n(&t->hits[id], __ATOMIC_RELAXED);
}

/* A failure point's call site fails as the call would: errno = e, -1. */
static inline int iocpx_set_errno(int e) { errno = e; return -1; }

#if defined(IOCPX_FAULTS) && IOCPX_FAULTS
static iocpx_faults_t *iocpx_faults = NULL;     /* per module: the table in _backend */
static inline void iocpx_faults_attach(iocpx_faults_t *t) { iocpx_faults = t; }
static inline uint64_t iocpx_fault_mix(uint64_t z) {     /* splitmix64 */
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline int iocpx_fault(int id) {
    iocpx_faults_t *t = iocpx_faults;
    int64_t n;
    if (t == NULL) return 0;
    n = __atomic_add_fetch(&t->calls[id], 1, __ATOMIC_RELAXED);
    if (n == __atomic_load_n(&t->nth[id], __ATOMIC_RELAXED)) {
        __atomic_add_fetch(&t->hits[id], 1, __ATOMIC_RELAXED);
        return 1;
    }
    if (__atomic_load_n(&t->rand_on[id], __ATOMIC_RELAXED)) {
        uint64_t d = __atomic_fetch_add(&t->draws, 1, __ATOMIC_RELAXED);
        if ((iocpx_fault_mix(t->seed + d) & 0xffffffffULL) < t->rate) {
            __atomic_add_fetch(&t->hits[id], 1, __ATOMIC_RELAXED);
            return 1;
        }
    }
    return 0;
}
#  define IOCPX_FAULTS_BUILT 1
#  define IOCPX_FAULT(id) iocpx_fault(id)
#else
#  define IOCPX_FAULTS_BUILT 0
#  define iocpx_faults_attach(t) ((void)(t))
#  define IOCPX_FAULT(id) 0
#endif

#endif
