/* The Windows half of iocpx's platform layer; included by _sys.h only (see
 * there for what each half provides). Winsock and Win32: SRW locks and
 * condition variables, QueryPerformanceCounter, the OVERLAPPED that heads
 * every per-I/O context. */
#ifndef IOCPX_SYS_WIN_H
#define IOCPX_SYS_WIN_H

#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>

/* ---- per-I/O context head, locks, clock, thread-local storage ---- */
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
#if defined(__GNUC__)
#  define IOCPX_TLS __thread       /* MinGW GCC ignores __declspec(thread) */
#else
#  define IOCPX_TLS __declspec(thread)
#endif

/* ---- sockets: the few calls the engine makes itself ---- */
static inline int iocpx_last_error(void) { return WSAGetLastError(); }
static inline void iocpx_sock_close(int s) { if (s >= 0) closesocket((SOCKET)s); }
/* Linux's splice pipe for sendfile does not exist here (TransmitFile does it) */
static inline int iocpx_pipe_open(int fds[2], int want) { (void)fds; (void)want; return -1; }
/* A non-blocking read of up to n bytes: > 0 read, 0 at EOF, -1 on error
 * (iocpx_last_error()). The socket is in non-blocking mode. */
static inline long iocpx_sock_recv(int s, char *buf, size_t n) {
    return recv((SOCKET)s, buf, (int)(n > 0x7fffffff ? 0x7fffffff : n), 0);
}
/* A non-blocking send of up to n bytes: the bytes sent, or -1 with
 * iocpx_last_error() (WSAEWOULDBLOCK: the socket buffer is full). */
static inline long iocpx_sock_send_now(int s, const char *buf, size_t n) {
    return send((SOCKET)s, buf, (int)(n > 0x7fffffff ? 0x7fffffff : n), 0);
}
/* Send FIN after what is queued; the socket stays open for reading. */
static inline int iocpx_sock_shutdown_wr(int s) { return shutdown((SOCKET)s, SD_SEND); }
/* A plain (not yet associated, blocking) socket; -1 on error. */
static inline int iocpx_sock_open(int family, int type) {
    SOCKET s = WSASocketW(family, type, 0, NULL, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
    return s == INVALID_SOCKET ? -1 : (int)s;
}

/* ---- datagrams: Windows keeps no count of the datagrams it drops ---- */
#define IOCPX_DG_CTRL 0
static inline int iocpx_dgram_rxq_ovfl(int s) { (void)s; return -1; }
static inline int64_t iocpx_cmsg_drops(void *ctrl, size_t len) { (void)ctrl; (void)len; return -1; }
static inline int64_t iocpx_sock_drops(int s) { (void)s; return -1; }

/* ---- thread identity; the state is unknown here (0: every long callback
 * counts as blocked) ---- */
static inline long iocpx_thread_id(void) { return (long)GetCurrentThreadId(); }
static inline int iocpx_thread_runnable(long tid) { (void)tid; return 0; }

#endif
