# Winsock 2, mswsock and the Win32 completion-port API, as the Windows `iocp`
# backend (_iocp.pyx) calls them: declarations only, names exactly as
# Microsoft spells them, only the fields used. Only cimported when building
# for win32; the Linux build never reads it. AcceptEx, ConnectEx,
# GetAcceptExSockAddrs and TransmitFile are not called by name: their
# pointers are resolved once per process through
# WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER) (the LPFN_* types below).
from libc.stddef cimport wchar_t
from libc.stdint cimport int32_t

cdef extern from "<winsock2.h>" nogil:
    ctypedef size_t SOCKET
    ctypedef unsigned long DWORD
    ctypedef unsigned short WORD
    ctypedef void* HANDLE
    ctypedef int BOOL
    ctypedef unsigned char UCHAR
    ctypedef unsigned long ULONG
    ctypedef unsigned long u_long
    ctypedef size_t ULONG_PTR
    ctypedef unsigned int GROUP

    ctypedef struct GUID:
        pass

    ctypedef struct OVERLAPPED:
        ULONG_PTR Internal          # NTSTATUS of the finished operation
        ULONG_PTR InternalHigh      # bytes transferred
        DWORD Offset                # file offset (TransmitFile), low half
        DWORD OffsetHigh
        HANDLE hEvent

    ctypedef struct OVERLAPPED_ENTRY:
        ULONG_PTR lpCompletionKey
        OVERLAPPED* lpOverlapped
        ULONG_PTR Internal
        DWORD dwNumberOfBytesTransferred

    ctypedef struct WSABUF:
        ULONG len
        char* buf

    ctypedef struct WSADATA:
        WORD wVersion

    ctypedef struct WSAPROTOCOL_INFOW:
        DWORD dwServiceFlags1

    cdef struct sockaddr:
        unsigned short sa_family

    SOCKET INVALID_SOCKET
    int SOCKET_ERROR
    int AF_INET, AF_INET6, AF_UNIX, SOCK_STREAM, IPPROTO_TCP, SOL_SOCKET
    int SO_PROTOCOL_INFOW
    DWORD XP1_IFS_HANDLES
    long FIONBIO
    DWORD SIO_GET_EXTENSION_FUNCTION_POINTER
    DWORD WSA_FLAG_OVERLAPPED
    DWORD WSA_FLAG_NO_HANDLE_INHERIT

    # errors (WSAGetLastError)
    int WSA_IO_PENDING
    int WSA_OPERATION_ABORTED
    int WSAEINTR, WSAEBADF, WSAEACCES, WSAEFAULT, WSAEINVAL, WSAEMFILE
    int WSAEWOULDBLOCK, WSAENOTSOCK, WSAEADDRINUSE, WSAEADDRNOTAVAIL
    int WSAENETDOWN, WSAENETUNREACH, WSAENETRESET, WSAECONNABORTED
    int WSAECONNRESET, WSAENOBUFS, WSAENOTCONN, WSAESHUTDOWN, WSAETIMEDOUT
    int WSAECONNREFUSED, WSAEHOSTUNREACH, WSAEDISCON, WSAEMSGSIZE

    WORD MAKEWORD(int lo, int hi)
    int WSAStartup(WORD version, WSADATA* data)
    int WSAGetLastError()
    SOCKET WSASocketW(int af, int type, int protocol, WSAPROTOCOL_INFOW* info,
                      GROUP g, DWORD flags)
    int closesocket(SOCKET s)
    int bind(SOCKET s, const sockaddr* name, int namelen)
    int connect(SOCKET s, const sockaddr* name, int namelen)
    int getsockname(SOCKET s, sockaddr* name, int* namelen)
    int getsockopt(SOCKET s, int level, int optname, char* optval, int* optlen)
    int setsockopt(SOCKET s, int level, int optname, const char* optval, int optlen)
    int ioctlsocket(SOCKET s, long cmd, u_long* argp)
    int recv(SOCKET s, char* buf, int len, int flags)
    int WSAIoctl(SOCKET s, DWORD code, void* inbuf, DWORD inlen, void* outbuf,
                 DWORD outlen, DWORD* returned, OVERLAPPED* ov, void* routine)
    int WSARecv(SOCKET s, WSABUF* bufs, DWORD nbufs, DWORD* nrecv, DWORD* flags,
                OVERLAPPED* ov, void* routine)
    int WSARecvFrom(SOCKET s, WSABUF* bufs, DWORD nbufs, DWORD* nrecv, DWORD* flags,
                    sockaddr* src, int* srclen, OVERLAPPED* ov, void* routine)
    int WSASendTo(SOCKET s, WSABUF* bufs, DWORD nbufs, DWORD* nsent, DWORD flags,
                  const sockaddr* dst, int dstlen, OVERLAPPED* ov, void* routine)
    int WSASend(SOCKET s, WSABUF* bufs, DWORD nbufs, DWORD* nsent, DWORD flags,
                OVERLAPPED* ov, void* routine)
    BOOL WSAGetOverlappedResult(SOCKET s, OVERLAPPED* ov, DWORD* transferred,
                                BOOL wait, DWORD* flags)

cdef extern from "<mswsock.h>" nogil:
    int SO_UPDATE_ACCEPT_CONTEXT
    int SO_UPDATE_CONNECT_CONTEXT
    int SO_CONNECT_TIME
    DWORD SIO_UDP_CONNRESET         # a UDP socket's WSARecvFrom fails on ICMP port unreachable
    ctypedef struct TRANSMIT_FILE_BUFFERS:
        pass
    ctypedef BOOL (*LPFN_ACCEPTEX)(SOCKET listen, SOCKET accept, void* buf, DWORD rcvlen,
                                   DWORD locallen, DWORD remotelen, DWORD* received,
                                   OVERLAPPED* ov)
    ctypedef void (*LPFN_GETACCEPTEXSOCKADDRS)(void* buf, DWORD rcvlen, DWORD locallen,
                                               DWORD remotelen, sockaddr** local,
                                               int* locallen_out, sockaddr** remote,
                                               int* remotelen_out)
    ctypedef BOOL (*LPFN_CONNECTEX)(SOCKET s, const sockaddr* name, int namelen,
                                    void* sendbuf, DWORD sendlen, DWORD* sent,
                                    OVERLAPPED* ov)
    ctypedef BOOL (*LPFN_TRANSMITFILE)(SOCKET s, HANDLE file, DWORD nbytes,
                                       DWORD per_send, OVERLAPPED* ov,
                                       TRANSMIT_FILE_BUFFERS* bufs, DWORD flags)

cdef extern from "<windows.h>" nogil:
    HANDLE INVALID_HANDLE_VALUE
    DWORD INFINITE
    DWORD WAIT_TIMEOUT
    UCHAR FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
    UCHAR FILE_SKIP_SET_EVENT_ON_HANDLE
    DWORD FORMAT_MESSAGE_FROM_SYSTEM
    DWORD FORMAT_MESSAGE_IGNORE_INSERTS

    # errors (GetLastError)
    DWORD ERROR_IO_PENDING, ERROR_OPERATION_ABORTED, ERROR_NETNAME_DELETED
    DWORD ERROR_CONNECTION_REFUSED, ERROR_CONNECTION_ABORTED, ERROR_REQUEST_ABORTED
    DWORD ERROR_SEM_TIMEOUT, ERROR_NETWORK_UNREACHABLE, ERROR_HOST_UNREACHABLE
    DWORD ERROR_PORT_UNREACHABLE, ERROR_NOT_FOUND, ERROR_INVALID_HANDLE
    DWORD ERROR_INVALID_PARAMETER, ERROR_BROKEN_PIPE, ERROR_NOT_ENOUGH_MEMORY
    DWORD ERROR_TOO_MANY_OPEN_FILES, ERROR_ACCESS_DENIED, ERROR_ABANDONED_WAIT_0
    DWORD ERROR_NO_SYSTEM_RESOURCES, ERROR_HANDLE_EOF, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED

    HANDLE CreateIoCompletionPort(HANDLE file, HANDLE port, ULONG_PTR key, DWORD threads)
    BOOL GetQueuedCompletionStatusEx(HANDLE port, OVERLAPPED_ENTRY* entries, ULONG count,
                                     ULONG* removed, DWORD ms, BOOL alertable)
    BOOL PostQueuedCompletionStatus(HANDLE port, DWORD nbytes, ULONG_PTR key, OVERLAPPED* ov)
    BOOL CancelIoEx(HANDLE file, OVERLAPPED* ov)
    BOOL SetFileCompletionNotificationModes(HANDLE file, UCHAR flags)
    BOOL CloseHandle(HANDLE h)
    BOOL ReadFile(HANDLE file, void* buf, DWORD n, DWORD* got, OVERLAPPED* ov)
    BOOL WriteFile(HANDLE file, const void* buf, DWORD n, DWORD* put, OVERLAPPED* ov)
    BOOL GetOverlappedResult(HANDLE file, OVERLAPPED* ov, DWORD* transferred, BOOL wait)
    DWORD GetLastError()
    DWORD FormatMessageW(DWORD flags, const void* source, DWORD msgid, DWORD langid,
                         wchar_t* buf, DWORD size, void* args)

# iocpx's few additions in C, next to what they wrap:
#  * SIO_UDP_NETRESET: a UDP socket's WSARecvFrom fails with WSAENETRESET on ICMP
#    "time exceeded" (mingw-w64's mswsock.h lacks the name; the value is Windows
#    SDK's _WSAIOW(IOC_VENDOR, 15));
#  * the extension functions' ids as variables, for
#    WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER) (the WSAID_* macros are
#    initializers, not objects one can take the address of);
#  * a socket as the HANDLE that CreateIoCompletionPort and CancelIoEx take;
#  * iocpx_claim(): a finished receive is claimed once, by the read after it or
#    by abort_by_close() (1 if the caller won it).
cdef extern from * nogil:
    """
    #include <mswsock.h>
    #ifndef SIO_UDP_NETRESET
    #define SIO_UDP_NETRESET _WSAIOW(IOC_VENDOR, 15)
    #endif
    static GUID iocpx_WSAID_ACCEPTEX = WSAID_ACCEPTEX;
    static GUID iocpx_WSAID_CONNECTEX = WSAID_CONNECTEX;
    static GUID iocpx_WSAID_GETACCEPTEXSOCKADDRS = WSAID_GETACCEPTEXSOCKADDRS;
    static GUID iocpx_WSAID_TRANSMITFILE = WSAID_TRANSMITFILE;
    #define iocpx_sock_handle(s) ((HANDLE)(SOCKET)(s))
    static inline int iocpx_claim(int32_t* claim, int32_t who) {
        return InterlockedCompareExchange((volatile LONG*)claim, who, 0) == 0;
    }
    """
    DWORD SIO_UDP_NETRESET
    GUID iocpx_WSAID_ACCEPTEX
    GUID iocpx_WSAID_CONNECTEX
    GUID iocpx_WSAID_GETACCEPTEXSOCKADDRS
    GUID iocpx_WSAID_TRANSMITFILE
    HANDLE iocpx_sock_handle(SOCKET s)
    int iocpx_claim(int32_t* claim, int32_t who)


# The AFD driver's poll (IOCTL_AFD_POLL), the readiness the asyncio loop's
# add_reader/add_writer needs on Windows (iocp/poll.pxi), as libuv, mio and
# wepoll use it: a helper handle on \Device\Afd associated with the port, one
# NtDeviceIoControlFile per poll with the OVERLAPPED as its IO_STATUS_BLOCK,
# NtCancelIoFileEx to cancel. The NT calls are resolved once per process from
# ntdll (no import library); AFD's structures are declared under our names
# (they are in no public SDK header).
cdef extern from * nogil:
    """
    #include <winternl.h>
    #ifndef STATUS_PENDING
    #define STATUS_PENDING ((NTSTATUS)0x00000103L)
    #endif
    #ifndef STATUS_CANCELLED
    #define STATUS_CANCELLED ((NTSTATUS)0xC0000120L)
    #endif
    #define IOCPX_IOCTL_AFD_POLL 0x00012024
    #define IOCPX_AFD_POLL_RECEIVE 0x0001
    #define IOCPX_AFD_POLL_RECEIVE_EXPEDITED 0x0002
    #define IOCPX_AFD_POLL_SEND 0x0004
    #define IOCPX_AFD_POLL_DISCONNECT 0x0008
    #define IOCPX_AFD_POLL_ABORT 0x0010
    #define IOCPX_AFD_POLL_LOCAL_CLOSE 0x0020
    #define IOCPX_AFD_POLL_ACCEPT 0x0080
    #define IOCPX_AFD_POLL_CONNECT_FAIL 0x0100
    #ifndef SIO_BASE_HANDLE
    #define SIO_BASE_HANDLE 0x48000022
    #endif
    typedef struct { HANDLE Handle; ULONG Events; NTSTATUS Status; } iocpx_afd_handle_t;
    typedef struct {
        LARGE_INTEGER Timeout; ULONG NumberOfHandles; ULONG Exclusive;
        iocpx_afd_handle_t Handles[1];
    } iocpx_afd_poll_t;
    typedef NTSTATUS (NTAPI *iocpx_NtCreateFile_t)(PHANDLE, ACCESS_MASK, POBJECT_ATTRIBUTES,
        PIO_STATUS_BLOCK, PLARGE_INTEGER, ULONG, ULONG, ULONG, ULONG, PVOID, ULONG);
    typedef NTSTATUS (NTAPI *iocpx_NtDeviceIoControlFile_t)(HANDLE, HANDLE, PVOID, PVOID,
        PIO_STATUS_BLOCK, ULONG, PVOID, ULONG, PVOID, ULONG);
    typedef NTSTATUS (NTAPI *iocpx_NtCancelIoFileEx_t)(HANDLE, PIO_STATUS_BLOCK, PIO_STATUS_BLOCK);
    typedef ULONG (NTAPI *iocpx_RtlNtStatusToDosError_t)(NTSTATUS);
    static iocpx_NtCreateFile_t iocpx_pNtCreateFile;
    static iocpx_NtDeviceIoControlFile_t iocpx_pNtDeviceIoControlFile;
    static iocpx_NtCancelIoFileEx_t iocpx_pNtCancelIoFileEx;
    static iocpx_RtlNtStatusToDosError_t iocpx_pRtlNtStatusToDosError;

    /* ntdll's entry points, once per process; 0, or a Windows error code. */
    static DWORD iocpx_afd_resolve(void) {
        HMODULE nt;
        if (iocpx_pNtDeviceIoControlFile) return 0;
        nt = GetModuleHandleW(L"ntdll.dll");
        if (nt == NULL) return GetLastError();
        iocpx_pNtCreateFile = (iocpx_NtCreateFile_t)(void*)GetProcAddress(nt, "NtCreateFile");
        iocpx_pNtCancelIoFileEx = (iocpx_NtCancelIoFileEx_t)(void*)GetProcAddress(nt, "NtCancelIoFileEx");
        iocpx_pRtlNtStatusToDosError =
            (iocpx_RtlNtStatusToDosError_t)(void*)GetProcAddress(nt, "RtlNtStatusToDosError");
        iocpx_pNtDeviceIoControlFile =
            (iocpx_NtDeviceIoControlFile_t)(void*)GetProcAddress(nt, "NtDeviceIoControlFile");
        if (!iocpx_pNtCreateFile || !iocpx_pNtCancelIoFileEx || !iocpx_pRtlNtStatusToDosError
                || !iocpx_pNtDeviceIoControlFile) {
            iocpx_pNtDeviceIoControlFile = NULL;
            return ERROR_PROC_NOT_FOUND;
        }
        return 0;
    }

    /* The helper handle: \\Device\\Afd\\Iocpx, associated with port under key.
       NULL and *err set on failure. */
    static HANDLE iocpx_afd_open(HANDLE port, ULONG_PTR key, DWORD *err) {
        static WCHAR name_buf[] = L"\\\\Device\\\\Afd\\\\Iocpx";
        UNICODE_STRING name;
        OBJECT_ATTRIBUTES attrs;
        IO_STATUS_BLOCK iosb;
        HANDLE h = NULL;
        NTSTATUS st;
        *err = iocpx_afd_resolve();
        if (*err) return NULL;
        name.Buffer = name_buf;
        name.Length = (USHORT)(sizeof(name_buf) - sizeof(WCHAR));
        name.MaximumLength = (USHORT)sizeof(name_buf);
        InitializeObjectAttributes(&attrs, &name, 0, NULL, NULL);
        st = iocpx_pNtCreateFile(&h, SYNCHRONIZE, &attrs, &iosb, NULL, 0,
                                 FILE_SHARE_READ | FILE_SHARE_WRITE, FILE_OPEN, 0, NULL, 0);
        if (st != 0) { *err = iocpx_pRtlNtStatusToDosError(st); return NULL; }
        if (CreateIoCompletionPort(h, port, key, 0) == NULL) {
            *err = GetLastError(); CloseHandle(h); return NULL;
        }
        return h;
    }

    /* The base (provider) handle of a socket, as AFD wants it; 0 on error
       with *err set (WSAENOTSOCK for a closed or foreign handle). */
    static SOCKET iocpx_base_socket(SOCKET s, DWORD *err) {
        SOCKET base = INVALID_SOCKET;
        DWORD got = 0;
        if (WSAIoctl(s, SIO_BASE_HANDLE, NULL, 0, &base, sizeof(base), &got, NULL, NULL) != 0
                || base == INVALID_SOCKET) {
            *err = (DWORD)WSAGetLastError();
            return 0;
        }
        return base;
    }

    /* PL_* (iocpx) <-> AFD_POLL_* */
    static ULONG iocpx_afd_events(int pl) {
        ULONG e = IOCPX_AFD_POLL_ABORT | IOCPX_AFD_POLL_CONNECT_FAIL | IOCPX_AFD_POLL_LOCAL_CLOSE;
        if (pl & 0x001) e |= IOCPX_AFD_POLL_RECEIVE | IOCPX_AFD_POLL_ACCEPT | IOCPX_AFD_POLL_DISCONNECT;
        if (pl & 0x004) e |= IOCPX_AFD_POLL_SEND;
        return e;
    }
    static int iocpx_afd_result(ULONG e) {
        int pl = 0;
        if (e & (IOCPX_AFD_POLL_RECEIVE | IOCPX_AFD_POLL_ACCEPT | IOCPX_AFD_POLL_DISCONNECT
                 | IOCPX_AFD_POLL_RECEIVE_EXPEDITED)) pl |= 0x001;
        if (e & IOCPX_AFD_POLL_SEND) pl |= 0x004;
        if (e & (IOCPX_AFD_POLL_ABORT | IOCPX_AFD_POLL_CONNECT_FAIL)) pl |= 0x008 | 0x001 | 0x004;
        if (e & IOCPX_AFD_POLL_LOCAL_CLOSE) pl |= 0x010;
        return pl;
    }

    /* Issue the poll: STATUS_PENDING or 0 (done at once: the completion is still
       queued, the helper handle does not skip it), else an NTSTATUS error. */
    static NTSTATUS iocpx_afd_poll(HANDLE afd, OVERLAPPED *ov, iocpx_afd_poll_t *info) {
        IO_STATUS_BLOCK *iosb = (IO_STATUS_BLOCK *)(void *)ov;
        iosb->Status = STATUS_PENDING;
        return iocpx_pNtDeviceIoControlFile(afd, NULL, NULL, ov, iosb, IOCPX_IOCTL_AFD_POLL,
                                            info, sizeof(*info), info, sizeof(*info));
    }
    static void iocpx_afd_cancel(HANDLE afd, OVERLAPPED *ov) {
        IO_STATUS_BLOCK done;
        iocpx_pNtCancelIoFileEx(afd, (IO_STATUS_BLOCK *)(void *)ov, &done);
    }
    static DWORD iocpx_afd_status_error(NTSTATUS st) {
        return iocpx_pRtlNtStatusToDosError ? iocpx_pRtlNtStatusToDosError(st) : ERROR_GEN_FAILURE;
    }
    #define IOCPX_STATUS_PENDING STATUS_PENDING
    #define IOCPX_STATUS_CANCELLED STATUS_CANCELLED
    """
    ctypedef long NTSTATUS
    ctypedef struct iocpx_afd_handle_t:
        HANDLE Handle
        ULONG Events
        NTSTATUS Status
    ctypedef struct LARGE_INTEGER_q "LARGE_INTEGER":
        long long QuadPart
    ctypedef struct iocpx_afd_poll_t:
        LARGE_INTEGER_q Timeout
        ULONG NumberOfHandles
        ULONG Exclusive
        iocpx_afd_handle_t Handles[1]
    HANDLE iocpx_afd_open(HANDLE port, ULONG_PTR key, DWORD* err)
    SOCKET iocpx_base_socket(SOCKET s, DWORD* err)
    ULONG iocpx_afd_events(int pl)
    int iocpx_afd_result(ULONG e)
    NTSTATUS iocpx_afd_poll(HANDLE afd, OVERLAPPED* ov, iocpx_afd_poll_t* info)
    void iocpx_afd_cancel(HANDLE afd, OVERLAPPED* ov)
    DWORD iocpx_afd_status_error(NTSTATUS st)
    NTSTATUS IOCPX_STATUS_PENDING
    NTSTATUS IOCPX_STATUS_CANCELLED


# Waiting for a process (or any waitable object) through the port: the asyncio
# loop's subprocess exit on Windows (iocp/pipes.pxi). RegisterWaitForSingleObject
# runs iocpx_wait_fired on a thread-pool thread once the object is signalled;
# it posts the wait's OVERLAPPED to the port. A cancel and the firing race for
# `claimed` (InterlockedCompareExchange): whichever wins posts the one packet
# (nbytes 1: signalled, 0: cancelled), so the context completes exactly once.
cdef extern from * nogil:
    """
    typedef struct {
        HANDLE wait;            /* RegisterWaitForSingleObject's handle, or NULL */
        HANDLE port;
        OVERLAPPED* ov;         /* the IoCtx's (its first member) */
        volatile LONG claimed;
    } iocpx_wait_t;
    static VOID CALLBACK iocpx_wait_fired(PVOID arg, BOOLEAN timed_out) {
        iocpx_wait_t* w = (iocpx_wait_t*)arg;
        (void)timed_out;
        if (InterlockedCompareExchange(&w->claimed, 1, 0) == 0)
            PostQueuedCompletionStatus(w->port, 1, 2 /* KEY_POST */, w->ov);
    }
    static BOOL iocpx_wait_register(iocpx_wait_t* w, HANDLE obj) {
        return RegisterWaitForSingleObject(&w->wait, obj, iocpx_wait_fired, w, INFINITE,
                                           WT_EXECUTEONLYONCE);
    }
    /* 1 if the cancel won (no firing will post): the caller posts the packet. Blocks
       until a running callback has returned. */
    static int iocpx_wait_cancel(iocpx_wait_t* w) {
        if (InterlockedCompareExchange(&w->claimed, 1, 0) != 0)
            return 0;
        if (w->wait != NULL) {
            UnregisterWaitEx(w->wait, INVALID_HANDLE_VALUE);
            w->wait = NULL;
        }
        return 1;
    }
    static void iocpx_wait_release(iocpx_wait_t* w) {     /* after its packet arrived */
        if (w->wait != NULL) {
            UnregisterWaitEx(w->wait, NULL);     /* the callback has run: does not block */
            w->wait = NULL;
        }
    }
    """
    ctypedef struct iocpx_wait_t:
        HANDLE wait
        HANDLE port
        OVERLAPPED* ov
    bint iocpx_wait_register(iocpx_wait_t* w, HANDLE obj)
    int iocpx_wait_cancel(iocpx_wait_t* w)
    void iocpx_wait_release(iocpx_wait_t* w)
