# Declarations of iocpx/_sys.h: the small platform layer every module shares
# (its Windows and POSIX halves, _sys_win.h and _sys_posix.h, sit behind it).
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int32_t, int64_t

cdef extern from "_sys.h" nogil:
    ctypedef struct iocpx_ovl_t:
        pass
    ctypedef struct iocpx_mutex_t:
        pass
    ctypedef struct iocpx_cond_t:
        pass
    int iocpx_mutex_init(iocpx_mutex_t* m)
    void iocpx_mutex_destroy(iocpx_mutex_t* m)
    void iocpx_mutex_lock(iocpx_mutex_t* m)
    void iocpx_mutex_unlock(iocpx_mutex_t* m)
    int iocpx_mutex_trylock(iocpx_mutex_t* m)      # 0: taken; -1: held by someone
    int iocpx_cond_init(iocpx_cond_t* c)
    void iocpx_cond_destroy(iocpx_cond_t* c)
    void iocpx_cond_signal(iocpx_cond_t* c)
    void iocpx_cond_broadcast(iocpx_cond_t* c)
    int iocpx_cond_wait_ms(iocpx_cond_t* c, iocpx_mutex_t* m, long ms)
    uint64_t iocpx_now_ns()
    void iocpx_sleep_ms(long ms)
    uint32_t IOCPX_LOAD_ACQ_U32(uint32_t* p)
    void IOCPX_STORE_REL_U32(uint32_t* p, uint32_t v)
    void IOCPX_STORE_REL_U16(uint16_t* p, uint16_t v)
    int64_t IOCPX_ADD_I64(int64_t* p, int64_t v)
    int32_t IOCPX_ADD_I32(int32_t* p, int32_t v)
    int64_t IOCPX_LOAD_I64(int64_t* p)
    int32_t IOCPX_LOAD_I32(int32_t* p)
    void IOCPX_TSAN_RELEASE(void* p)    # ThreadSanitizer: hand-over to the kernel (else nothing)
    void IOCPX_TSAN_ACQUIRE(void* p)    # ThreadSanitizer: back from the kernel (else nothing)
    void* iocpx_tls_get()
    long iocpx_thread_id()
    int iocpx_thread_runnable(long tid)
    void iocpx_tls_set(void* e)
    char* iocpx_bytes_ptr(object o)
    Py_ssize_t iocpx_bytes_len(object o)

cdef extern from "_sys.h":
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_in:
        unsigned short sin_family
    struct sockaddr_in6:
        unsigned short sin6_family
        uint32_t sin6_flowinfo
        uint32_t sin6_scope_id
    ctypedef struct iocpx_addr_t:
        sockaddr sa
        sockaddr_in v4
        sockaddr_in6 v6
    int AF_INET, AF_INET6
    ctypedef unsigned int socklen_t
    int iocpx_addr_fill(iocpx_addr_t* a, int family, const char* ip, unsigned port,
                        uint32_t flowinfo, uint32_t scope_id) nogil
    int iocpx_addr_split(const iocpx_addr_t* a, int* family, char* ip, unsigned* port) nogil
    int iocpx_last_error() nogil
    void iocpx_sock_close(int s) nogil
    int iocpx_pipe_open(int* fds, int want) nogil
    int iocpx_sock_nodelay(int s, int on) nogil
    int iocpx_sock_shutdown_wr(int s) nogil
    long iocpx_sock_recv(int s, char* buf, size_t n) nogil
    long iocpx_sock_send_now(int s, const char* buf, size_t n) nogil
    int iocpx_sock_name(int s, iocpx_addr_t* a) nogil
    int iocpx_sock_peer(int s, iocpx_addr_t* a) nogil

    # AF_UNIX addresses (out of line: they do not fit iocpx_addr_t) and the
    # facts the engine checks about a socket it adopts
    int IOCPX_AF_UNIX
    int IOCPX_UN_OFF
    ctypedef struct iocpx_unaddr_t:
        unsigned short sun_family
        char sun_path[108]
    int iocpx_unaddr_fill(iocpx_unaddr_t* a, const char* path, size_t n) nogil
    int iocpx_sock_open(int family, int type) nogil
    int iocpx_sock_bind(int s, const void* sa, int len) nogil
    int iocpx_sock_listen(int s, int backlog) nogil
    int iocpx_sock_name_raw(int s, int peer, void* buf, int* len) nogil
    int iocpx_sock_info(int s, int* type, int* listening, int* family) nogil
    # datagrams: the kernel's drop counter (SO_RXQ_OVFL; Linux only)
    int IOCPX_DG_CTRL
    int iocpx_dgram_rxq_ovfl(int s) nogil
    int64_t iocpx_cmsg_drops(void* ctrl, size_t len) nogil
    int64_t iocpx_sock_drops(int s) nogil

# Failure points (_sys.h: IOCPX_FAULT_POINTS; docs/robustness.md). IOCPX_FAULT(id)
# is 0 outside an IOCPX_FAULTS=1 build.
cdef extern from "_sys.h" nogil:
    enum:
        IOCPX_F_ALLOC_IOCTX
        IOCPX_F_ALLOC_EVQ
        IOCPX_F_ALLOC_TIMERS
        IOCPX_F_ALLOC_DGRAM_CACHE
        IOCPX_F_ALLOC_FDTABLE
        IOCPX_F_ALLOC_DG_SCRATCH
        IOCPX_F_ALLOC_DG_HEAD
        IOCPX_F_ALLOC_SENDFILE
        IOCPX_F_ALLOC_POOL
        IOCPX_F_ALLOC_POOL_CHUNK
        IOCPX_F_ALLOC_DG_MSG
        IOCPX_F_ALLOC_RECV_BLOCK
        IOCPX_F_SYS_SOCKET
        IOCPX_F_SYS_ACCEPT
        IOCPX_F_SYS_EPOLL_CTL
        IOCPX_F_SYS_RECV
        IOCPX_F_SYS_SEND_SHORT
        IOCPX_F_SYS_SEND_EAGAIN
        IOCPX_F_SYS_SENDFILE
        IOCPX_F_SYS_SENDTO
        IOCPX_F_SYS_URING_SUBMIT
        IOCPX_F_SYS_URING_WAIT
        IOCPX_F_SYS_URING_SQ_FULL
        IOCPX_F_SYS_WSARECV
        IOCPX_F_SYS_WSASEND
        IOCPX_F_SYS_ACCEPTEX
        IOCPX_F_SYS_CONNECTEX
        IOCPX_F_SYS_TRANSMITFILE
        IOCPX_F_SYS_WSARECVFROM
        IOCPX_F_COUNT
        IOCPX_FAULTS_BUILT
    ctypedef struct iocpx_faults_t:
        pass
    const char* const* iocpx_fault_names
    bint IOCPX_FAULT(int id)
    int iocpx_set_errno(int e)
    void iocpx_faults_attach(iocpx_faults_t* t)
    void iocpx_faults_reset(iocpx_faults_t* t)
    void iocpx_faults_arm(iocpx_faults_t* t, int id, int64_t nth)
    void iocpx_faults_random(iocpx_faults_t* t, int id, uint64_t seed, uint64_t rate)
    int64_t iocpx_faults_calls(iocpx_faults_t* t, int id)
    int64_t iocpx_faults_hits(iocpx_faults_t* t, int id)
