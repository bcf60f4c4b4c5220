/*
 * churn.c - connection-churn load generator for the iocpx benchmarks.
 *
 * What it shows: how many short connections per second a server handles, when CONCURRENCY slots
 * each run, over and over: connect, send one SIZE-byte message, read the whole echo and verify it
 * byte for byte, close. The driver (bench/run_all.py) divides the server's CPU time over the
 * measured window by the connections completed in it: server CPU microseconds per connection
 * (accept + one echo + close). Latency is per connection: from socket() to the echo's last byte.
 *
 * What it needs: Linux (epoll, IP_BIND_ADDRESS_NO_PORT), a C99 compiler, no libraries.
 * bench/run_all.py compiles it into bench/.build/ and runs it pinned to CPU 1; by hand:
 *
 *     cc -O2 -o bench/.build/churn bench/churn.c
 *     bench/.build/churn 127.0.0.1 PORT CONCURRENCY SIZE WARMUP_S DURATION_S
 *
 * Built with -DLOADGEN_TLS (and -lssl -lcrypto: bench/.build/churn-tls) each connection is a
 * new TLS connection (full handshake, no session resumption), one echo over it, then
 * close_notify and close: the handshakes-per-second benchmark.
 *
 * The client closes first, so each connection leaves a TIME_WAIT socket on the client side. To
 * never run out of (source address, port) pairs at tens of thousands of connections per second,
 * each slot connects from its own loopback source address 127.0.0.2 .. 127.0.0.251
 * (IP_BIND_ADDRESS_NO_PORT: the port is still chosen at connect time).
 * Output on stdout, each line flushed at once, as loadgen.c: "START", "END" (the driver samples
 * the server's CPU time at each) and one JSON line; "round_trips" there is the number of
 * connections completed in the window. Errors (refused, reset, EOF before the echo, a connection
 * slower than 10 s) are counted and the slot starts over. It always ends after
 * WARMUP_S + DURATION_S seconds. Exit status 0 if no error and no verify failure, 1 otherwise,
 * 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadgen_common.h"   /* histogram, clock, RNG, errors, window, JSON */
#ifdef LOADGEN_TLS
#include "loadgen_tls.h"      /* OpenSSL client: handshake, send, recv_message */
#define SLOT_SEND(s, buf, n) tls_send((s)->ssl, buf, n)
#define SLOT_RECV_MESSAGE(s, buf, got, want) tls_recv_message((s)->ssl, buf, got, want)
#else
#define SLOT_SEND(s, buf, n) send((s)->fd, buf, n, MSG_NOSIGNAL)
#define SLOT_RECV_MESSAGE(s, buf, got, want) recv_message((s)->fd, buf, got, want)
#endif

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define N_SOURCES 250           /* source addresses 127.0.0.2 .. 127.0.0.251 */

enum slot_state { S_CONNECTING, S_HANDSHAKE, S_WAITING_ECHO };

struct slot {
    int fd;
    int id;
    enum slot_state state;
    uint64_t conn_no;           /* which connection this slot is on: selects the byte pattern */
    unsigned char *msg;         /* owned by the slot (malloc in main): the message sent */
    unsigned char *echo;        /* owned by the slot: where the echo is collected */
    size_t sent, got;
    uint64_t t0;                /* CLOCK_MONOTONIC ns just before socket() */
#ifdef LOADGEN_TLS
    SSL *ssl;                   /* owned: SSL_new after the connect, SSL_free in slot_restart */
#endif
};

/* Fill the message with a pattern unique to (slot, connection number): a fresh splitmix64 every
 * 8 bytes (messages here are small; loadgen.c's message_pattern_fill is the cheap one for large
 * messages). */
static void connection_pattern_fill(unsigned char *buf, size_t len, uint32_t id, uint64_t n)
{
    uint64_t x = splitmix64(((uint64_t)id << 40) ^ n);
    for (size_t i = 0; i < len; i++) {
        if (i % 8 == 0)
            x = splitmix64(x);
        buf[i] = (unsigned char)(x >> (8 * (i % 8)));
    }
}

static struct sockaddr_in server_addr;
static size_t msg_size;
static int epfd;
static struct window win;
static uint64_t started;

/* Open the slot's next connection (nonblocking connect; EPOLLOUT says when it is done). */
static void slot_open(struct slot *s)
{
    s->conn_no++;
    s->sent = s->got = 0;
    s->t0 = now_ns();
    s->state = S_CONNECTING;
    started++;
    connection_pattern_fill(s->msg, msg_size, (uint32_t)s->id, s->conn_no);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        note_error("slot", (unsigned)s->id, "socket", errno);
        s->fd = -1;
        return;                     /* retried by the next stall check, 100 ms on */
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    uint32_t src_ip = 0x7f000002u + (uint32_t)(s->id % N_SOURCES);     /* 127.0.0.2 + id */
    struct sockaddr_in src = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(src_ip) };
    bind(fd, (struct sockaddr *)&src, sizeof src);  /* on failure: the kernel's choice */
    s->fd = fd;
    struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = s };
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0
        && errno != EINPROGRESS) {
        note_error("slot", (unsigned)s->id, "connect", errno);
        close(fd);
        s->fd = -1;                 /* retried by the next stall check, 100 ms on */
    }
}

static void slot_restart(struct slot *s)
{
#ifdef LOADGEN_TLS
    if (s->ssl) {
        if (s->state == S_WAITING_ECHO)
            SSL_shutdown(s->ssl);   /* close_notify (not waiting for the server's), then close */
        SSL_free(s->ssl);
        s->ssl = NULL;
        ERR_clear_error();
    }
#endif
    if (s->fd >= 0)
        close(s->fd);               /* also leaves the epoll set */
    slot_open(s);
}

static void slot_send_first(struct slot *s)
{
    ssize_t n = SLOT_SEND(s, s->msg, msg_size);
    if (n < 0 && errno != EAGAIN) {
        note_error("slot", (unsigned)s->id, "send", errno);
        slot_restart(s);
        return;
    }
    s->sent = n > 0 ? (size_t)n : 0;
    s->state = S_WAITING_ECHO;
    struct epoll_event ev = { .events = EPOLLIN | (s->sent < msg_size ? EPOLLOUT : 0),
                              .data.ptr = s };
    epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
}

#ifdef LOADGEN_TLS
static void slot_handshake(struct slot *s)
{
    int want_out = 0;
    int r = tls_handshake(s->ssl, &want_out);
    if (r < 0) {
        note_error("slot", (unsigned)s->id, "TLS handshake", errno);
        slot_restart(s);
        return;
    }
    if (r == 0) {
        struct epoll_event ev = { .events = want_out ? EPOLLOUT : EPOLLIN, .data.ptr = s };
        epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
        return;
    }
    slot_send_first(s);
}
#endif

static void slot_on_event(struct slot *s, uint32_t events)
{
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            note_error("slot", (unsigned)s->id, "connect", err);
            slot_restart(s);
            return;
        }
#ifdef LOADGEN_TLS
        s->ssl = tls_new(s->fd);
        if (!s->ssl) {
            note_error("slot", (unsigned)s->id, "SSL_new", ENOMEM);
            slot_restart(s);
            return;
        }
        s->state = S_HANDSHAKE;
        slot_handshake(s);
#else
        slot_send_first(s);
#endif
        return;
    }
#ifdef LOADGEN_TLS
    if (s->state == S_HANDSHAKE) {
        slot_handshake(s);
        return;
    }
#endif
    if ((events & EPOLLOUT) && s->sent < msg_size) {
        ssize_t n = SLOT_SEND(s, s->msg + s->sent, msg_size - s->sent);
        if (n < 0 && errno != EAGAIN) {
            note_error("slot", (unsigned)s->id, "send", errno);
            slot_restart(s);
            return;
        }
        if (n > 0)
            s->sent += (size_t)n;
        if (s->sent == msg_size) {
            struct epoll_event ev = { .events = EPOLLIN, .data.ptr = s };
            epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
        }
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    int r = SLOT_RECV_MESSAGE(s, s->echo, &s->got, msg_size);
    if (r < 0) {
        int err = errno;
        note_error("slot", (unsigned)s->id, err ? "recv" : "server closed before the whole echo",
                   err);
        slot_restart(s);
        return;
    }
    if (r == 0)
        return;                     /* more of the echo is to come */
    uint64_t t = now_ns();
    if (memcmp(s->echo, s->msg, msg_size) != 0)
        note_verify_failure("slot", (unsigned)s->id, "connection", (unsigned long long)s->conn_no);
    else if (win.measuring)
        hist_record(t - s->t0);
    slot_restart(s);                /* close (graceful FIN) and connect again */
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT CONCURRENCY SIZE WARMUP_S DURATION_S\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[2]);
    int nslots = atoi(argv[3]);
    long size = atol(argv[4]);
    double warmup_s = atof(argv[5]), duration_s = atof(argv[6]);
    if (port <= 0 || port > 65535 || nslots <= 0 || size <= 0 || warmup_s < 0 || duration_s <= 0)
        return 2;
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, argv[1], &server_addr.sin_addr) != 1) {
        fprintf(stderr, "churn: HOST must be an IPv4 address\n");
        return 2;
    }
    msg_size = (size_t)size;
    signal(SIGPIPE, SIG_IGN);
#ifdef LOADGEN_TLS
    tls_init();
#endif
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct slot *slots = calloc((size_t)nslots, sizeof *slots);
    if (epfd < 0 || !slots)
        return 2;
    for (int i = 0; i < nslots; i++) {
        slots[i].id = i;
        slots[i].fd = -1;
        slots[i].msg = malloc(msg_size);
        slots[i].echo = malloc(msg_size);
        if (!slots[i].msg || !slots[i].echo)
            return 2;
    }
    uint64_t t0 = now_ns();
    uint64_t next_check = t0 + 100000000ull;
    window_plan(&win, t0 + (uint64_t)(warmup_s * 1e9), duration_s);
    for (int i = 0; i < nslots; i++)
        slot_open(&slots[i]);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        uint64_t t = now_ns();
        if (window_tick(&win, t))
            break;
        if (t >= next_check) {
            next_check = t + 100000000ull;
            for (int i = 0; i < nslots; i++)
                if (slots[i].fd < 0 || older_than(t, slots[i].t0, STALL_NS)) {
                    if (slots[i].fd >= 0)
                        note_error("slot", (unsigned)slots[i].id, "connection slower than 10 s",
                                   0);
                    slot_restart(&slots[i]);
                }
        }
        uint64_t until = window_next(&win);
        if (next_check < until)
            until = next_check;
        int timeout_ms = until > t ? (int)((until - t + 999999) / 1000000) : 0;
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("churn: epoll_wait");
            return 2;
        }
        for (int i = 0; i < n; i++)
            slot_on_event(events[i].data.ptr, events[i].events);
    }
    json_begin(window_seconds(&win));
    printf("\"connections_done\":%llu,\"connections\":%d,\"ready\":%d,\"started\":%llu,"
           "\"size\":%zu,", (unsigned long long)hist_count, nslots, nslots,
           (unsigned long long)started, msg_size);
    json_end();
    return exit_status();
}
