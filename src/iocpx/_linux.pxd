# The Linux system interface the two Linux backends (_io_uring.pyx, _epoll.pyx)
# call directly: one block per system header, each header declared here only,
# declarations only. What Cython ships already is cimported from it instead
# (libc.errno for errno and most codes, posix.unistd for close/read/write); the
# io_uring kernel ABI is in _io_uring_abi.pxd, iocpx's own platform layer
# (sockaddr, socklen_t, mutexes, atomics) in _sys.pxd.
from libc.stdint cimport uint32_t, uint64_t
from iocpx._sys cimport sockaddr, socklen_t

cdef extern from "<errno.h>" nogil:     # the codes Cython's libc.errno lacks
    int ECANCELED, EWOULDBLOCK

cdef extern from "<unistd.h>" nogil:    # (close, read, write: posix.unistd)
    long syscall(long number, ...)

cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    int F_GETFL, F_SETFL, O_NONBLOCK
    unsigned SPLICE_F_MOVE

cdef extern from "<sys/syscall.h>" nogil:
    long __NR_io_uring_setup
    long __NR_io_uring_enter
    long __NR_io_uring_register

cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    void* MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_SHARED, MAP_POPULATE, MAP_PRIVATE, MAP_ANONYMOUS

cdef extern from "<sys/socket.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int c_socket "socket"(int domain, int type, int protocol)
    int accept4(int fd, sockaddr* addr, socklen_t* addrlen, int flags)
    int connect(int fd, const sockaddr* addr, socklen_t len)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* to, socklen_t tolen)
    int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags, void* timeout)
    int getsockopt(int fd, int level, int name, void* val, socklen_t* len)
    int SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR
    int MSG_NOSIGNAL, MSG_DONTWAIT, MSG_WAITALL, MSG_TRUNC

cdef extern from "<sys/uio.h>" nogil:
    ssize_t readv(int fd, const iovec* iov, int iovcnt)

cdef extern from "<sys/sendfile.h>" nogil:
    ssize_t c_sendfile "sendfile"(int out_fd, int in_fd, long* offset, size_t count)

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* ev)
    int epoll_wait(int epfd, epoll_event* evs, int maxevents, int timeout)
    int EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL
    uint32_t EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_CLOEXEC, EFD_NONBLOCK
