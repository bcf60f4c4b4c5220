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
    DWORD ERROR_NO_SYSTEM_RESOURCES

    HANDLE CreateIoCompletionPort(HANDLE file, HANDLE port, ULONG_PTR key, DWORD threads)
    BOOL GetQueuedCompletionStatusEx(HANDLE port, OVERLAPPED_ENTRY* entries, ULONG count,
                                     ULONG* removed, DWORD ms, BOOL alertable)
    BOOL PostQueuedCompletionStatus(HANDLE port, DWORD nbytes, ULONG_PTR key, OVERLAPPED* ov)
    BOOL CancelIoEx(HANDLE file, OVERLAPPED* ov)
    BOOL SetFileCompletionNotificationModes(HANDLE file, UCHAR flags)
    BOOL CloseHandle(HANDLE h)
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
