/*
 * loadgen.c - closed-loop TCP echo load generator for the iocpx benchmarks.
 *
 * What it shows: how many echo round trips a server completes, and their latency, when N
 * connections each keep exactly one message of B bytes in flight (send, wait for the whole
 * echo, verify it byte for byte, send the next one). Every message carries a different
 * pattern (derived from the connection and message numbers), so a server that mixes up
 * buffers or connections is caught as a verify failure.
 *
 * What it needs: Linux (epoll), a C99 compiler. One thread, nonblocking sockets, no libraries.
 * bench/echo.py compiles it into bench/.build/ and runs it pinned to CPU 1; by hand:
 *
 *     cc -O2 -o bench/.build/loadgen bench/loadgen.c
 *     bench/.build/loadgen 127.0.0.1 PORT CONNECTIONS SIZE WARMUP_S DURATION_S [CONNECT_TIMEOUT_S]
 *
 * Built with -DLOADGEN_TLS (and -lssl -lcrypto: bench/.build/loadgen-tls) every connection
 * speaks TLS (bench/loadgen_tls.h): the handshake runs after the connect, as part of ramp-up.
 *
 * Phases: ramp-up, then WARMUP_S seconds unmeasured, then DURATION_S measured. Ramp-up: each
 * connection sends one message as soon as it is connected and, once that echo is verified (so
 * the server has accepted it), waits; at most RAMP_INFLIGHT connections are "pending"
 * (connecting, or without their first echo) at once, so the server never gets a burst of
 * accepts. Ramp-up ends when every connection is through (or after CONNECT_TIMEOUT_S: the rest
 * count as errors); then all of them start the ping-pong.
 * Output on stdout, each line flushed at once:
 *     START                     the measured window begins (the driver samples server CPU now)
 *     END                       the measured window ends (and samples again)
 *     {"round_trips":...}       one line of JSON with the results
 * A round trip is counted when its echo completes inside the window; its latency runs from
 * just before the first write of the message to the read of its last echoed byte.
 * Errors (refused/reset/EOF/stalled connections, failed connects) are counted, the connection
 * is dropped, and the run goes on; it always ends after at most
 * CONNECT_TIMEOUT_S + WARMUP_S + DURATION_S seconds. Exit status: 0 if no error and no
 * verify failure, 1 otherwise, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadgen_common.h"   /* histogram, clock, RNG, errors, window, JSON */
#ifdef LOADGEN_TLS
#include "loadgen_tls.h"      /* OpenSSL client: handshake, send, recv_message */
#endif

#define RAMP_INFLIGHT 64        /* connects in progress at once: stays under any listen backlog */
#define STALL_AT_END_NS (2ull * 1000000000ull)  /* unanswered this long at the end: an error */

enum conn_state { CONN_IDLE, CONN_CONNECTING, CONN_HANDSHAKE, CONN_RUNNING, CONN_DEAD };

struct conn {
    int fd;
    enum conn_state state;
    uint32_t id;
    uint64_t msg_no;            /* which message is in flight; selects its byte pattern */
    unsigned char *sendbuf;     /* owned by this conn (malloc in main, freed at exit): a message */
    unsigned char *recvbuf;     /* owned by this conn: where its echo is collected */
    size_t sent;                /* bytes of sendbuf written so far */
    size_t got;                 /* bytes of the echo read so far */
    uint64_t t_send;            /* CLOCK_MONOTONIC ns just before the first write of this message */
    int want_out;               /* EPOLLOUT currently registered */
    int ready;                  /* had its first verified echo: the server has accepted it */
    int idle;                   /* ready, no message in flight: waits for the ramp to end */
#ifdef LOADGEN_TLS
    SSL *ssl;                   /* owned: SSL_new after the connect, SSL_free in conn_kill */
#endif
};

#ifdef LOADGEN_TLS
#define CONN_SEND(c, buf, n) tls_send((c)->ssl, buf, n)
#define CONN_RECV_MESSAGE(c, buf, got, want) tls_recv_message((c)->ssl, buf, got, want)
#else
#define CONN_SEND(c, buf, n) send((c)->fd, buf, n, MSG_NOSIGNAL)
#define CONN_RECV_MESSAGE(c, buf, got, want) recv_message((c)->fd, buf, got, want)
#endif

/* ---- run state ---- */
static struct conn *conns;
static int nconns;
static size_t msg_size;
static int epfd;
static int alive;               /* connections not dead */
static struct window win = { .start = UINT64_MAX };  /* planned once the ramp-up is over */
static uint64_t connect_retries;
static int pending;             /* connecting, or connected without a first echo yet */
static int ready;               /* connections through their first echo */
static int ramping = 1;         /* ramp-up: a connection stops after its first echo */
static void conn_kill(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
#ifdef LOADGEN_TLS
    SSL_free(c->ssl);
    c->ssl = NULL;
#endif
    if (c->state != CONN_DEAD) {
        alive--;
        if (c->state != CONN_IDLE && !c->ready)
            pending--;
    }
    c->state = CONN_DEAD;
}

static void conn_set_out(struct conn *c, int want)
{
    if (c->want_out == want)
        return;
    struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c };
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        note_error("conn", c->id, "epoll_ctl", errno);
        conn_kill(c);
        return;
    }
    c->want_out = want;
}

/* Write what is left of the message; 0 on success (possibly partial, then EPOLLOUT is armed). */
static int conn_flush(struct conn *c)
{
    while (c->sent < msg_size) {
        ssize_t n = CONN_SEND(c, c->sendbuf + c->sent, msg_size - c->sent);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_set_out(c, 1);
            return 0;
        }
        note_error("conn", c->id, "send", n < 0 ? errno : 0);
        conn_kill(c);
        return -1;
    }
    if (c->want_out)
        conn_set_out(c, 0);
    return 0;
}

static void conn_start_message(struct conn *c, uint64_t t)
{
    c->msg_no++;
    message_pattern_fill(c->sendbuf, msg_size, c->id, c->msg_no);
    c->sent = 0;
    c->got = 0;
    c->t_send = t;
    conn_flush(c);
}

static void conn_on_readable(struct conn *c)
{
    int r = CONN_RECV_MESSAGE(c, c->recvbuf, &c->got, msg_size);
    if (r < 0) {
        int err = errno;
        note_error("conn", c->id, err ? "recv" : "server closed the connection", err);
        conn_kill(c);
        return;
    }
    if (r == 0)
        return;                 /* more of the echo is to come */
    uint64_t t = now_ns();
    if (memcmp(c->recvbuf, c->sendbuf, msg_size) != 0) {
        note_verify_failure("conn", c->id, "message", (unsigned long long)c->msg_no);
        conn_kill(c);           /* the stream is out of step: every later message would differ */
        return;
    }
    if (!c->ready) {
        c->ready = 1;
        ready++;
        pending--;
    }
    if (win.measuring)
        hist_record(t - c->t_send);
    if (ramping) {
        c->idle = 1;            /* waits, so the ramp's first echoes queue behind no traffic */
        return;
    }
    conn_start_message(c, t);   /* level-triggered: anything extra is read on the next wakeup */
}

/* Start one nonblocking connect. Returns 1 if started (or failed for good), 0 to retry later. */
static int conn_connect(struct conn *c, const struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->state = CONN_CONNECTING;
    pending++;
    if (fd < 0) {
        note_error("conn", c->id, "socket", errno);
        conn_kill(c);
        return 1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->want_out = 1;
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        note_error("conn", c->id, "epoll_ctl", errno);
        conn_kill(c);
        return 1;
    }
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0 || errno == EINPROGRESS)
        return 1;                      /* EPOLLOUT reports the outcome, even if already done */
    if (errno == EAGAIN) {             /* no local port free right now: try again shortly */
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        c->fd = -1;
        c->state = CONN_IDLE;
        pending--;
        connect_retries++;
        return 0;
    }
    note_error("conn", c->id, "connect", errno);
    conn_kill(c);
    return 1;
}

#ifdef LOADGEN_TLS
/* The TLS handshake advances on each event; once done the ping-pong starts. */
static void conn_on_handshake_event(struct conn *c)
{
    int want_out = 0;
    int r = tls_handshake(c->ssl, &want_out);
    if (r < 0) {
        note_error("conn", c->id, "TLS handshake", errno);
        conn_kill(c);
        return;
    }
    if (r == 0) {
        conn_set_out(c, want_out);
        return;
    }
    c->state = CONN_RUNNING;
    conn_start_message(c, now_ns());
}
#endif

/* The connect finished (EPOLLOUT/EPOLLERR): check how, and start the ping-pong at once. */
static void conn_on_connect_event(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        note_error("conn", c->id, "connect", err);
        conn_kill(c);
        return;
    }
#ifdef LOADGEN_TLS
    c->ssl = tls_new(c->fd);
    if (!c->ssl) {
        note_error("conn", c->id, "SSL_new", ENOMEM);
        conn_kill(c);
        return;
    }
    c->state = CONN_HANDSHAKE;
    conn_on_handshake_event(c);
#else
    c->state = CONN_RUNNING;
    conn_start_message(c, now_ns());
#endif
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s HOST PORT CONNECTIONS SIZE WARMUP_S DURATION_S [CONNECT_TIMEOUT_S]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 8)
        usage(argv[0]);
    const char *host = argv[1];
    int port = atoi(argv[2]);
    nconns = atoi(argv[3]);
    long size = atol(argv[4]);
    double warmup_s = atof(argv[5]);
    double duration_s = atof(argv[6]);
    double connect_timeout_s = argc > 7 ? atof(argv[7]) : 10.0 + nconns / 1000.0;
    if (port <= 0 || port > 65535 || nconns <= 0 || size <= 0 || warmup_s < 0 || duration_s <= 0
        || connect_timeout_s <= 0)
        usage(argv[0]);
    msg_size = (size_t)size;
    signal(SIGPIPE, SIG_IGN);
#ifdef LOADGEN_TLS
    tls_init();
#endif

    if (raise_nofile((unsigned long)nconns + 16) < 0) {   /* one descriptor per connection */
        fprintf(stderr, "loadgen: %d connections need more than the open-files limit\n", nconns);
        return 2;
    }

    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *res;
        if (getaddrinfo(host, NULL, &hints, &res) != 0) {
            fprintf(stderr, "loadgen: cannot resolve %s\n", host);
            return 2;
        }
        addr.sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
        freeaddrinfo(res);
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)nconns, sizeof *conns);
    if (epfd < 0 || !conns) {
        perror("loadgen: setup");
        return 2;
    }
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].id = (uint32_t)i;
        conns[i].sendbuf = malloc(msg_size);
        conns[i].recvbuf = malloc(msg_size);
        if (!conns[i].sendbuf || !conns[i].recvbuf) {
            fprintf(stderr, "loadgen: out of memory\n");
            return 2;
        }
    }
    alive = nconns;

    struct epoll_event events[MAX_EVENTS];

    uint64_t t0 = now_ns();
    uint64_t ramp_deadline = t0 + (uint64_t)(connect_timeout_s * 1e9);
    uint64_t next_stall_check = t0 + 100000000ull;
    double ramp_s = 0;
    int next = 0;

    for (;;) {
        uint64_t t = now_ns();
        if (ramping) {
            while (pending < RAMP_INFLIGHT && next < nconns) {
                if (!conn_connect(&conns[next], &addr))
                    break;                    /* EAGAIN: retry this one after the next wait */
                next++;
            }
            int done = next == nconns && pending == 0;
            if (!done && t >= ramp_deadline) {
                for (int i = 0; i < nconns; i++) {
                    struct conn *c = &conns[i];
                    if (c->state == CONN_IDLE || (c->state != CONN_DEAD && !c->ready)) {
                        note_error("conn", c->id, c->state == CONN_RUNNING
                                          ? "no echo before the connect timeout"
                                          : "connect timed out", 0);
                        if (c->state == CONN_IDLE)
                            c->state = CONN_CONNECTING, pending++;  /* conn_kill counts it once */
                        conn_kill(c);
                    }
                }
                done = 1;
            }
            if (done) {
                ramp_s = (double)(t - t0) / 1e9;
                ramping = 0;
                for (int i = 0; i < nconns; i++) {   /* now everyone starts the ping-pong */
                    struct conn *c = &conns[i];
                    if (c->state == CONN_RUNNING && c->idle) {
                        c->idle = 0;
                        conn_start_message(c, now_ns());
                    }
                }
                window_plan(&win, t + (uint64_t)(warmup_s * 1e9), duration_s);
            }
        }
        if (alive == 0 && !ramping) {                 /* nothing left to measure: end now */
            if (win.start > t)
                win.start = t;
            win.end = t;
        }
        if (window_tick(&win, t))
            break;
        if (t >= next_stall_check) {
            next_stall_check = t + 100000000ull;
            for (int i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (c->state == CONN_RUNNING && !c->idle && older_than(t, c->t_send, STALL_NS)) {
                    note_error("conn", c->id, "no complete echo within 10 s", 0);
                    conn_kill(c);
                }
            }
        }
        uint64_t until = ramping ? ramp_deadline : window_next(&win);
        if (next_stall_check < until)
            until = next_stall_check;
        int timeout_ms = until > t ? (int)((until - t + 999999) / 1000000) : 0;
        if (ramping && next < nconns && pending < RAMP_INFLIGHT)
            timeout_ms = 1;                   /* a connect waits for a free local port */
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("loadgen: epoll_wait");
            return 2;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->state == CONN_CONNECTING) {
                conn_on_connect_event(c);
                continue;
            }
#ifdef LOADGEN_TLS
            if (c->state == CONN_HANDSHAKE) {
                conn_on_handshake_event(c);
                continue;
            }
#endif
            if (c->state != CONN_RUNNING)
                continue;
            if (events[i].events & EPOLLOUT) {
                if (conn_flush(c) < 0)
                    continue;
            }
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                conn_on_readable(c);
        }
    }


    /* A connection the server starves for the whole window must not go unnoticed. */
    int running = 0;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->state == CONN_RUNNING && older_than(win.t_end, c->t_send, STALL_AT_END_NS))
            note_error("conn", c->id, "no echo for over 2 s at the end of the run", 0);
        else
            running += c->state == CONN_RUNNING;
    }
    json_begin(window_seconds(&win));
    printf("\"connections\":%d,\"ready\":%d,\"running_at_end\":%d,\"ramp_seconds\":%.3f,"
           "\"connect_retries\":%llu,\"size\":%zu,", nconns, ready, running, ramp_s,
           (unsigned long long)connect_retries, msg_size);
    json_end();
    return exit_status();
}
