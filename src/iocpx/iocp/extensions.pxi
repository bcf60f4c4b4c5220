# The iocp backend's process-wide state: the Winsock extension functions
# (AcceptEx, ConnectEx, GetAcceptExSockAddrs, TransmitFile: not called by name,
# resolved once per process through WSAIoctl), and whether skipping the
# completion packet of an operation that succeeds at once is safe here
# (FILE_SKIP_COMPLETION_PORT_ON_SUCCESS; IOCPX_IOCP_SKIP_ON_SUCCESS=0 turns it off).

cdef LPFN_ACCEPTEX pAcceptEx = NULL
cdef LPFN_CONNECTEX pConnectEx = NULL
cdef LPFN_GETACCEPTEXSOCKADDRS pGetAcceptExSockAddrs = NULL
cdef LPFN_TRANSMITFILE pTransmitFile = NULL
cdef int g_skip_ok = -1         # FILE_SKIP_COMPLETION_PORT_ON_SUCCESS safe (-1: not checked)


cdef int resolve_extensions() except -1:
    """Resolve AcceptEx, ConnectEx, GetAcceptExSockAddrs and TransmitFile once
    per process, and decide whether skipping completions on success is safe."""
    global pAcceptEx, pConnectEx, pGetAcceptExSockAddrs, pTransmitFile, g_skip_ok
    if pAcceptEx != NULL and pConnectEx != NULL and pGetAcceptExSockAddrs != NULL \
            and pTransmitFile != NULL and g_skip_ok >= 0:
        return 0
    cdef WSADATA wsa
    if WSAStartup(MAKEWORD(2, 2), &wsa) != 0:
        raise win_error(WSAGetLastError(), "WSAStartup")
    cdef SOCKET s = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED)
    if s == INVALID_SOCKET:
        raise win_error(WSAGetLastError(), "WSASocketW")
    cdef DWORD got = 0
    cdef WSAPROTOCOL_INFOW info
    cdef int ilen = sizeof(info)
    try:
        if WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &iocpx_WSAID_ACCEPTEX, sizeof(GUID),
                    &pAcceptEx, sizeof(pAcceptEx), &got, NULL, NULL) != 0:
            raise win_error(WSAGetLastError(), "WSAIoctl(AcceptEx)")
        if WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &iocpx_WSAID_CONNECTEX, sizeof(GUID),
                    &pConnectEx, sizeof(pConnectEx), &got, NULL, NULL) != 0:
            raise win_error(WSAGetLastError(), "WSAIoctl(ConnectEx)")
        if WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &iocpx_WSAID_GETACCEPTEXSOCKADDRS,
                    sizeof(GUID), &pGetAcceptExSockAddrs, sizeof(pGetAcceptExSockAddrs),
                    &got, NULL, NULL) != 0:
            raise win_error(WSAGetLastError(), "WSAIoctl(GetAcceptExSockAddrs)")
        if WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &iocpx_WSAID_TRANSMITFILE, sizeof(GUID),
                    &pTransmitFile, sizeof(pTransmitFile), &got, NULL, NULL) != 0:
            raise win_error(WSAGetLastError(), "WSAIoctl(TransmitFile)")
        # Skipping the completion packet on immediate success is only safe
        # when the base provider hands out IFS handles (no layered provider).
        memset(&info, 0, sizeof(info))
        if getsockopt(s, SOL_SOCKET, SO_PROTOCOL_INFOW, <char*>&info, &ilen) == 0:
            g_skip_ok = 1 if (info.dwServiceFlags1 & XP1_IFS_HANDLES) else 0
        else:
            g_skip_ok = 0
        if _os.environ.get("IOCPX_IOCP_SKIP_ON_SUCCESS") == "0":
            g_skip_ok = 0
    finally:
        closesocket(s)
    return 0
