/*
 * udp_loadgen.c - closed-loop UDP echo load generator for the iocpx benchmarks.
 *
 * What it shows: how many datagram round trips a UDP echo server completes, and their latency,
 * when N client sockets each keep exactly one datagram of B bytes in flight (send, wait for the
 * echo, verify it byte for byte, send the next one). Each client socket is connected to the
 * server (so the kernel hands it only the server's datagrams); every datagram carries a pattern
 * unique to (socket, message number), its first 8 bytes being the message number, so a server
 * that mixes up buffers or peers is caught as a verify failure, and a late echo of a datagram
 * already given up on is recognised and ignored.
 *
 * UDP may lose datagrams: one not echoed within LOSS_NS is counted in "lost" and sent again as
 * a new message (a server that drops under this closed-loop load shows it there, not as a
 * stall). The driver reports lost > 0 next to the row.
 *
 * What it needs: Linux (epoll), a
 * C99 compiler. One thread, nonblocking sockets, no libraries. bench/udp_echo.py compiles it
 * into bench/.build/ and runs it pinned to CPU 1; by hand:
 *
 *     cc -O2 -o bench/.build/udp_loadgen bench/udp_loadgen.c
 *     bench/.build/udp_loadgen 127.0.0.1 PORT SOCKETS SIZE WARMUP_S DURATION_S
 *
 * Output on stdout, each line flushed at once (the protocol of loadgen.c, shared through
 * loadgen_common.h): START, END, then one line of JSON with round_trips, seconds, p50/p99/max
 * latency, errors, verify_failures, lost. Exit status 0 if no error and no verify failure,
 * 1 otherwise, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadgen_common.h"   /* histogram, clock, RNG, message pattern, errors, window, JSON */

#define LOSS_NS (200ull * 1000000ull)   /* no echo this long: the datagram counts as lost */
#define MAX_DGRAM 65507

struct sock {
    int fd;
    uint32_t id;
    uint64_t msg_no;            /* the datagram in flight */
    unsigned char *sendbuf;     /* owned (malloc in main, freed at exit): the datagram */
    uint64_t t_send;            /* CLOCK_MONOTONIC ns just before its send */
    int dead;
};

static struct sock *socks;
static int nsocks;
static size_t msg_size;
static unsigned char recvbuf[MAX_DGRAM + 1];
static uint64_t lost;           /* datagrams given up on after LOSS_NS (and sent again) */
static struct window win = { .start = UINT64_MAX };

static void sock_send(struct sock *s, uint64_t t)
{
    s->msg_no++;
    message_pattern_fill(s->sendbuf, msg_size, s->id, s->msg_no);
    if (msg_size >= 8)
        memcpy(s->sendbuf, &s->msg_no, 8);  /* tells a late echo from the one awaited */
    s->t_send = t;
    for (;;) {
        ssize_t n = send(s->fd, s->sendbuf, msg_size, 0);
        if (n == (ssize_t)msg_size)
            return;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == ENOBUFS || errno == ECONNREFUSED)) {
            /* dropped on the way out (or an ICMP report about an earlier one): the loss
             * timer sends it again */
            return;
        }
        note_error("socket", s->id, "send", n < 0 ? errno : 0);
        s->dead = 1;
        return;
    }
}

static void sock_on_readable(struct sock *s)
{
    for (;;) {
        ssize_t n = recv(s->fd, recvbuf, sizeof recvbuf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ECONNREFUSED) {
                note_error("socket", s->id, "the server's port is unreachable", errno);
                s->dead = 1;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                note_error("socket", s->id, "recv", errno);
                s->dead = 1;
            }
            return;
        }
        uint64_t no = 0;
        if (msg_size >= 8 && n >= 8)
            memcpy(&no, recvbuf, 8);
        if (msg_size >= 8 && no != s->msg_no)
            continue;                       /* a late echo of a datagram counted lost */
        if ((size_t)n != msg_size || memcmp(recvbuf, s->sendbuf, msg_size) != 0) {
            note_verify_failure("socket", s->id, "datagram", (unsigned long long)s->msg_no);
            s->dead = 1;
            return;
        }
        uint64_t t = now_ns();
        if (win.measuring)
            hist_record(t - s->t_send);
        sock_send(s, t);
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s HOST PORT SOCKETS SIZE WARMUP_S DURATION_S\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc != 7)
        usage(argv[0]);
    const char *host = argv[1];
    int port = atoi(argv[2]);
    nsocks = atoi(argv[3]);
    long size = atol(argv[4]);
    double warmup_s = atof(argv[5]);
    double duration_s = atof(argv[6]);
    if (port <= 0 || port > 65535 || nsocks <= 0 || size <= 0 || size > MAX_DGRAM
        || warmup_s < 0 || duration_s <= 0)
        usage(argv[0]);
    msg_size = (size_t)size;
    signal(SIGPIPE, SIG_IGN);
    if (raise_nofile((unsigned long)nsocks + 16) < 0) {
        fprintf(stderr, "udp_loadgen: %d sockets need more than the open-files limit\n", nsocks);
        return 2;
    }
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "udp_loadgen: %s is not an IPv4 address\n", host);
        return 2;
    }
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    socks = calloc((size_t)nsocks, sizeof *socks);
    if (epfd < 0 || !socks) {
        perror("udp_loadgen: setup");
        return 2;
    }
    for (int i = 0; i < nsocks; i++) {
        struct sock *s = &socks[i];
        s->id = (uint32_t)i;
        s->sendbuf = malloc(msg_size);
        s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (!s->sendbuf || s->fd < 0
            || connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("udp_loadgen: socket");
            return 2;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = s };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0) {
            perror("udp_loadgen: epoll_ctl");
            return 2;
        }
    }

    uint64_t t0 = now_ns();
    window_plan(&win, t0 + (uint64_t)(warmup_s * 1e9), duration_s);
    for (int i = 0; i < nsocks; i++)
        sock_send(&socks[i], now_ns());
    uint64_t next_loss_check = t0 + LOSS_NS / 4;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        uint64_t t = now_ns();
        if (window_tick(&win, t))
            break;
        if (t >= next_loss_check) {
            next_loss_check = t + LOSS_NS / 4;
            for (int i = 0; i < nsocks; i++) {
                struct sock *s = &socks[i];
                if (!s->dead && older_than(t, s->t_send, LOSS_NS)) {
                    lost++;
                    sock_send(s, t);        /* a new message: a late echo of the old is ignored */
                }
            }
        }
        uint64_t until = window_next(&win);
        if (next_loss_check < until)
            until = next_loss_check;
        int timeout_ms = until > t ? (int)((until - t + 999999) / 1000000) : 0;
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("udp_loadgen: epoll_wait");
            return 2;
        }
        for (int i = 0; i < n; i++) {
            struct sock *s = events[i].data.ptr;
            if (!s->dead)
                sock_on_readable(s);
        }
    }
    int alive = 0;
    for (int i = 0; i < nsocks; i++)
        alive += !socks[i].dead;
    json_begin(window_seconds(&win));
    printf("\"sockets\":%d,\"alive_at_end\":%d,\"lost\":%llu,\"size\":%zu,", nsocks, alive,
           (unsigned long long)lost, msg_size);
    json_end();
    return exit_status();
}
