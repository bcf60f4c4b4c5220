# Winsock 2, mswsock and the Win32 completion-port API, as the Windows `iocp`
# backend will call them (declarations only, names exactly as Microsoft spells
# them). Only cimported when building for win32; the Linux build never reads it.
# The Windows-backend issue fills in the rest (AcceptEx & co. are resolved at
# run time through WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)).

cdef extern from "<winsock2.h>" nogil:
    ctypedef size_t SOCKET
    ctypedef unsigned long DWORD
    ctypedef void* HANDLE
    ctypedef int BOOL
    ctypedef unsigned long ULONG
    ctypedef size_t ULONG_PTR

    ctypedef struct OVERLAPPED:
        ULONG_PTR Internal
        ULONG_PTR InternalHigh
        HANDLE hEvent

    ctypedef struct OVERLAPPED_ENTRY:
        ULONG_PTR lpCompletionKey
        OVERLAPPED* lpOverlapped
        ULONG_PTR Internal
        DWORD dwNumberOfBytesTransferred

    ctypedef struct WSABUF:
        ULONG len
        char* buf

    SOCKET INVALID_SOCKET
    int SOCKET_ERROR
    int WSA_IO_PENDING
    int WSAGetLastError()
    int closesocket(SOCKET s)
    int WSARecv(SOCKET s, WSABUF* bufs, DWORD nbufs, DWORD* nrecv, DWORD* flags,
                OVERLAPPED* ov, void* routine)
    int WSASend(SOCKET s, WSABUF* bufs, DWORD nbufs, DWORD* nsent, DWORD flags,
                OVERLAPPED* ov, void* routine)

cdef extern from "<windows.h>" nogil:
    HANDLE INVALID_HANDLE_VALUE
    DWORD INFINITE
    HANDLE CreateIoCompletionPort(HANDLE file, HANDLE port, ULONG_PTR key, DWORD threads)
    BOOL GetQueuedCompletionStatusEx(HANDLE port, OVERLAPPED_ENTRY* entries, ULONG count,
                                     ULONG* removed, DWORD ms, BOOL alertable)
    BOOL PostQueuedCompletionStatus(HANDLE port, DWORD nbytes, ULONG_PTR key, OVERLAPPED* ov)
    BOOL CancelIoEx(HANDLE file, OVERLAPPED* ov)
    BOOL CloseHandle(HANDLE h)
    DWORD GetLastError()
