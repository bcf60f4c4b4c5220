# The Linux io_uring kernel ABI, declared straight from <linux/io_uring.h>:
# the rings, the SQE and CQE layouts, the opcodes and flags. Declarations only;
# no liburing: a built wheel needs nothing at run time but the kernel. The
# three io_uring system calls are made with syscall(2) and the rings mapped
# with mmap(2): their headers are declared in _linux.pxd.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef extern from "<linux/time_types.h>" nogil:
    struct __kernel_timespec:
        long long tv_sec
        long long tv_nsec

cdef extern from "<linux/io_uring.h>" nogil:
    struct io_uring_sqe:
        uint8_t opcode
        uint8_t flags
        uint16_t ioprio
        int32_t fd
        uint64_t off             # union: off / addr2
        uint64_t addr2
        uint64_t addr            # union: addr / splice_off_in
        uint64_t splice_off_in
        uint32_t len
        uint32_t rw_flags        # union of the per-op flag words
        uint32_t poll32_events
        uint32_t msg_flags
        uint32_t timeout_flags
        uint32_t accept_flags
        uint32_t cancel_flags
        uint32_t splice_flags
        uint64_t user_data
        uint16_t buf_group
        uint16_t personality
        int32_t splice_fd_in
        uint64_t addr3

    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    struct io_sqring_offsets:
        uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array

    struct io_cqring_offsets:
        uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags

    struct io_uring_params:
        uint32_t sq_entries
        uint32_t cq_entries
        uint32_t flags
        uint32_t sq_thread_cpu
        uint32_t sq_thread_idle
        uint32_t features
        uint32_t wq_fd
        io_sqring_offsets sq_off
        io_cqring_offsets cq_off

    struct io_uring_buf:
        uint64_t addr
        uint32_t len
        uint16_t bid
        uint16_t resv


    struct io_uring_recvmsg_out:        # heads each buffer a multishot RECVMSG fills
        uint32_t namelen
        uint32_t controllen
        uint32_t payloadlen
        uint32_t flags

    struct io_uring_getevents_arg:
        uint64_t sigmask
        uint32_t sigmask_sz
        uint32_t pad
        uint64_t ts

    enum:
        IORING_OP_NOP
        IORING_OP_POLL_ADD
        IORING_OP_SENDMSG
        IORING_OP_RECVMSG
        IORING_OP_TIMEOUT
        IORING_OP_ACCEPT
        IORING_OP_ASYNC_CANCEL
        IORING_OP_CONNECT
        IORING_OP_SEND
        IORING_OP_RECV
        IORING_OP_SPLICE
        IORING_OP_SHUTDOWN
        IORING_OP_READ
        IORING_REGISTER_PBUF_RING
        IORING_UNREGISTER_PBUF_RING

    unsigned IORING_SETUP_CQSIZE
    unsigned IORING_SETUP_SUBMIT_ALL
    unsigned IORING_SETUP_CLAMP
    unsigned IORING_SETUP_COOP_TASKRUN
    unsigned IORING_SETUP_TASKRUN_FLAG
    unsigned IORING_FEAT_SINGLE_MMAP
    unsigned IORING_FEAT_NODROP
    unsigned IORING_FEAT_EXT_ARG
    unsigned IORING_SQ_CQ_OVERFLOW
    unsigned IORING_SQ_TASKRUN
    unsigned IORING_ENTER_GETEVENTS
    unsigned IORING_ENTER_EXT_ARG
    unsigned IOSQE_BUFFER_SELECT
    unsigned IOSQE_IO_LINK
    unsigned IORING_CQE_F_BUFFER
    unsigned IORING_CQE_F_MORE
    unsigned IORING_CQE_BUFFER_SHIFT
    unsigned IORING_RECV_MULTISHOT
    unsigned IORING_ASYNC_CANCEL_ALL
    unsigned IORING_ASYNC_CANCEL_FD
    unsigned IORING_ASYNC_CANCEL_ANY
    long long IORING_OFF_SQ_RING
    long long IORING_OFF_CQ_RING
    long long IORING_OFF_SQES


# The engine's Event flags are io_uring's cqe flags, passed through as they
# are: checked when the io_uring backend is compiled.
cdef extern from *:
    """
    _Static_assert(IORING_CQE_F_BUFFER == 1 && IORING_CQE_F_MORE == 2 && IORING_CQE_BUFFER_SHIFT == 16,
                   "EV_BUFFER, EV_MORE, EV_BUFFER_SHIFT in _backend.pxd must equal io_uring's");
    #include <poll.h>
    /* OP_POLL's PL_* bits go to IORING_OP_POLL_ADD as they are (io_uring/poll.pxi). */
    _Static_assert(POLLIN == 0x001 && POLLOUT == 0x004 && POLLERR == 0x008 && POLLHUP == 0x010,
                   "PL_IN, PL_OUT, PL_ERR, PL_HUP in _backend.pxd must equal poll(2)'s");
    """

# struct io_uring_buf_reg under a name of our own: its u16 after bgid is `pad`
# in older kernel headers and `flags` in newer ones (6.12+, zig's bundled
# headers), so the project declares the layout itself; same size and offsets.
cdef extern from *:
    """
    #include <linux/types.h>
    struct iocpx_buf_reg {
        __u64 ring_addr;
        __u32 ring_entries;
        __u16 bgid;
        __u16 flags;
        __u64 resv[3];
    };
    _Static_assert(sizeof(struct iocpx_buf_reg) == sizeof(struct io_uring_buf_reg),
                   "iocpx_buf_reg must match the kernel's io_uring_buf_reg");
    """
    struct iocpx_buf_reg:
        uint64_t ring_addr
        uint32_t ring_entries
        uint16_t bgid
        uint16_t flags
