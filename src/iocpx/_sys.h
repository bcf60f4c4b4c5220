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

/* The engine whose worker runs on this thread (NULL elsewhere): lets send()
 * defer its submit to the end of the worker's batch instead of a syscall each. */
static IOCPX_TLS void *iocpx_tls_engine = NULL;
static inline void *iocpx_tls_get(void) { return iocpx_tls_engine; }
static inline void iocpx_tls_set(void *e) { iocpx_tls_engine = e; }

#endif
