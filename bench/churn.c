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

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define STALL_NS (10ull * 1000000000ull)
#define MAX_EVENTS 512
#define N_SOURCES 250           /* source addresses 127.0.0.2 .. 127.0.0.251 */

enum slot_state { S_CONNECTING, S_WAITING_ECHO };

struct slot {
    int fd;
    int id;
    enum slot_state state;
    uint64_t conn_no;           /* which connection this slot is on: selects the byte pattern */
    unsigned char *msg;         /* owned by the slot (malloc in main): the message sent */
    unsigned char *echo;        /* owned by the slot: where the echo is collected */
    size_t sent, got;
    uint64_t t0;                /* CLOCK_MONOTONIC ns just before socket() */
};

#define HIST_SUB 512
#define HIST_BUCKETS (64 * HIST_SUB)
static uint64_t hist[HIST_BUCKETS];

static int hist_index(uint64_t ns)
{
    if (ns < 2 * HIST_SUB)
        return (int)ns;
    int msb = 63 - __builtin_clzll(ns);
    int shift = msb - 9;
    return (shift + 1) * HIST_SUB + (int)((ns >> shift) & (HIST_SUB - 1));
}

static double hist_value(int idx)
{
    if (idx < 2 * HIST_SUB)
        return (double)idx;
    int shift = idx / HIST_SUB - 1;
    uint64_t lo = ((uint64_t)HIST_SUB + (uint64_t)(idx % HIST_SUB)) << shift;
    return (double)lo + (double)(1ull << shift) / 2.0;
}

static double hist_percentile(uint64_t total, double p)
{
    if (total == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(p * (double)total + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank)
            return hist_value(i);
    }
    return hist_value(HIST_BUCKETS - 1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void pattern_fill(unsigned char *buf, size_t len, uint32_t id, uint64_t n)
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
static int measuring;
static uint64_t done_conns, max_ns, errors, verify_failures, started;
static char last_error[160];

static void note_error(const struct slot *s, const char *what, int err)
{
    errors++;
    if (!last_error[0])
        snprintf(last_error, sizeof last_error, "slot %d: %s%s%s", s->id, what,
                 err ? ": " : "", err ? strerror(err) : "");
}

/* Open the slot's next connection (nonblocking connect; EPOLLOUT says when it is done). */
static void slot_open(struct slot *s)
{
    s->conn_no++;
    s->sent = s->got = 0;
    s->t0 = now_ns();
    s->state = S_CONNECTING;
    started++;
    pattern_fill(s->msg, msg_size, (uint32_t)s->id, s->conn_no);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        note_error(s, "socket", errno);
        s->fd = -1;
        return;                     /* retried by the next stall check, 100 ms on */
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = { .sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(s->id % N_SOURCES)) };
    bind(fd, (struct sockaddr *)&src, sizeof src);  /* on failure: the kernel's choice */
    s->fd = fd;
    struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = s };
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0
        && errno != EINPROGRESS) {
        note_error(s, "connect", errno);
        close(fd);
        s->fd = -1;                 /* retried by the next stall check, 100 ms on */
    }
}

static void slot_restart(struct slot *s)
{
    if (s->fd >= 0)
        close(s->fd);               /* also leaves the epoll set */
    slot_open(s);
}

static void slot_on_event(struct slot *s, uint32_t events)
{
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            note_error(s, "connect", err);
            slot_restart(s);
            return;
        }
        ssize_t n = send(s->fd, s->msg, msg_size, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            note_error(s, "send", errno);
            slot_restart(s);
            return;
        }
        s->sent = n > 0 ? (size_t)n : 0;
        s->state = S_WAITING_ECHO;
        struct epoll_event ev = { .events = EPOLLIN | (s->sent < msg_size ? EPOLLOUT : 0),
                                  .data.ptr = s };
        epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
        return;
    }
    if ((events & EPOLLOUT) && s->sent < msg_size) {
        ssize_t n = send(s->fd, s->msg + s->sent, msg_size - s->sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            note_error(s, "send", errno);
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
    for (;;) {
        ssize_t n = recv(s->fd, s->echo + s->got, msg_size - s->got, 0);
        if (n > 0) {
            s->got += (size_t)n;
            if (s->got < msg_size)
                continue;
            uint64_t t = now_ns();
            if (memcmp(s->echo, s->msg, msg_size) != 0) {
                verify_failures++;
                if (!last_error[0])
                    snprintf(last_error, sizeof last_error,
                             "slot %d: echo of connection %llu differs from what was sent",
                             s->id, (unsigned long long)s->conn_no);
            } else if (measuring) {
                uint64_t d = t - s->t0;
                done_conns++;
                hist[hist_index(d)]++;
                if (d > max_ns)
                    max_ns = d;
            }
            slot_restart(s);        /* close (graceful FIN) and connect again */
            return;
        }
        if (n == 0) {
            note_error(s, "server closed before the whole echo", 0);
            slot_restart(s);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return;
        note_error(s, "recv", errno);
        slot_restart(s);
        return;
    }
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
    uint64_t t_start = t0 + (uint64_t)(warmup_s * 1e9);
    uint64_t t_end = t_start + (uint64_t)(duration_s * 1e9);
    uint64_t t_measure_start = 0, t_measure_end = 0, next_check = t0 + 100000000ull;
    for (int i = 0; i < nslots; i++)
        slot_open(&slots[i]);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && !t_measure_start && t >= t_start) {
            measuring = 1;
            t_measure_start = t;
            fputs("START\n", stdout);
            fflush(stdout);
        }
        if (measuring && t >= t_end) {
            measuring = 0;
            t_measure_end = t;
            fputs("END\n", stdout);
            fflush(stdout);
            break;
        }
        if (t >= next_check) {
            next_check = t + 100000000ull;
            for (int i = 0; i < nslots; i++)
                if (slots[i].fd < 0 || t - slots[i].t0 > STALL_NS) {
                    if (slots[i].fd >= 0)
                        note_error(&slots[i], "connection slower than 10 s", 0);
                    slot_restart(&slots[i]);
                }
        }
        uint64_t until = measuring ? t_end : t_start;
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
    double seconds = (double)(t_measure_end - t_measure_start) / 1e9;
    printf("{\"round_trips\":%llu,\"connections_done\":%llu,\"seconds\":%.6f,\"p50_us\":%.2f,"
           "\"p99_us\":%.2f,\"max_us\":%.2f,\"errors\":%llu,\"verify_failures\":%llu,"
           "\"connections\":%d,\"ready\":%d,\"started\":%llu,\"size\":%zu,\"first_error\":\"",
           (unsigned long long)done_conns, (unsigned long long)done_conns, seconds,
           hist_percentile(done_conns, 0.50) / 1000.0, hist_percentile(done_conns, 0.99) / 1000.0,
           (double)max_ns / 1000.0, (unsigned long long)errors,
           (unsigned long long)verify_failures, nslots, nslots, (unsigned long long)started,
           msg_size);
    for (const char *p = last_error; *p; p++)
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
            putchar(*p);
    printf("\"}\n");
    fflush(stdout);
    for (int i = 0; i < nslots; i++) {
        if (slots[i].fd >= 0)
            close(slots[i].fd);
        free(slots[i].msg);
        free(slots[i].echo);
    }
    free(slots);
    return (errors || verify_failures) ? 1 : 0;
}
