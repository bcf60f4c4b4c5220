/*
 * loadgen_common.h - what the C load generators of the iocpx benchmarks (loadgen.c, churn.c,
 * udp_loadgen.c) share: the latency histogram, the clock, the RNG, the message pattern, the
 * error notes, the measured window (the START/END lines the driver samples the server's CPU at)
 * and the JSON result line.
 *
 * What it shows: nothing by itself; it is included by loadgen.c, churn.c and udp_loadgen.c,
 * which each compile as one file (`cc -O2 -o bench/.build/loadgen bench/loadgen.c`: this header
 * is found beside them). Everything here is static: one copy per program, no library to link.
 *
 * What it needs: a C99 compiler with __builtin_clzll (gcc, clang), POSIX clock_gettime.
 */
#ifndef IOCPX_BENCH_LOADGEN_COMMON_H
#define IOCPX_BENCH_LOADGEN_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#define STALL_NS (10ull * 1000000000ull)  /* an exchange this slow is dropped as an error */
#define MAX_EVENTS 512

/* ---- latency histogram, HDR style: exact below 1024 ns, then 512 sub-buckets per power of two
 * (0.2% precision) up to 2^63 ns ---- */
#define HIST_SUB 512
#define HIST_BUCKETS (64 * HIST_SUB)
static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_count;     /* samples recorded */
static uint64_t hist_max_ns;    /* the largest sample */

static inline int hist_index(uint64_t ns)
{
    if (ns < 2 * HIST_SUB)
        return (int)ns;
    int msb = 63 - __builtin_clzll(ns);
    int shift = msb - 9;                      /* 2^9 == HIST_SUB */
    return (shift + 1) * HIST_SUB + (int)((ns >> shift) & (HIST_SUB - 1));
}

/* Middle of the bucket's value range, in ns. */
static inline double hist_value(int idx)
{
    if (idx < 2 * HIST_SUB)
        return (double)idx;
    int shift = idx / HIST_SUB - 1;
    uint64_t lo = ((uint64_t)HIST_SUB + (uint64_t)(idx % HIST_SUB)) << shift;
    return (double)lo + (double)(1ull << shift) / 2.0;
}

static inline void hist_record(uint64_t ns)
{
    hist[hist_index(ns)]++;
    hist_count++;
    if (ns > hist_max_ns)
        hist_max_ns = ns;
}

static inline double hist_percentile(double p)
{
    if (hist_count == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(p * (double)hist_count + 0.999999);
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

/* ---- clock and RNG ---- */
static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Fill the message with a pattern unique to (connection, message number): one splitmix64 per
 * message, then a cheap stride, so a 1 MiB message costs the client little. */
static inline void message_pattern_fill(unsigned char *buf, size_t len, uint32_t id, uint64_t msg_no)
{
    uint64_t x = splitmix64(((uint64_t)id << 40) ^ msg_no);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = x + (uint64_t)i * 0x9E3779B97F4A7C15ull;
        memcpy(buf + i, &w, 8);
    }
    uint64_t w = x + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    for (; i < len; i++, w >>= 8)
        buf[i] = (unsigned char)w;
}

/* Whether `since` lies more than `ns` before `t`. Timestamps taken later than `t` (a message
 * started after the loop read its clock) are never "older": unsigned t - since would wrap. */
static inline int older_than(uint64_t t, uint64_t since, uint64_t ns)
{
    return t > since && t - since > ns;
}

/* ---- errors: every one counted, the first one's text kept for the JSON line ---- */
static uint64_t errors;          /* failed connects, resets, EOFs, stalls */
static uint64_t verify_failures; /* echoes that differ from what was sent */
static char first_error[160];

static inline void note_first(const char *fmt, ...)
{
    if (first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error, sizeof first_error, fmt, ap);
    va_end(ap);
}

/* One error on connection/slot `id` (`who` says which): `what`, and errno's text if err != 0. */
static inline void note_error(const char *who, unsigned id, const char *what, int err)
{
    errors++;
    note_first("%s %u: %s%s%s", who, id, what, err ? ": " : "", err ? strerror(err) : "");
}

static inline void note_verify_failure(const char *who, unsigned id, const char *which,
                                unsigned long long n)
{
    verify_failures++;
    note_first("%s %u: echo of %s %llu differs from what was sent", who, id, which, n);
}

/* ---- the measured window ----
 * The driver samples the server's CPU time when it reads START and END, so each line is flushed
 * the moment the window begins or ends. Until it is planned, `start` is UINT64_MAX. */
struct window {
    uint64_t start, end;        /* planned: CLOCK_MONOTONIC ns */
    uint64_t t_start, t_end;    /* when START and END were printed */
    int measuring;              /* inside the window: results count */
};

static inline void window_plan(struct window *w, uint64_t start, double duration_s)
{
    w->start = start;
    w->end = start + (uint64_t)(duration_s * 1e9);
}

/* Print START or END when `t` crosses the window's edges; 1 once END has been printed. */
static inline int window_tick(struct window *w, uint64_t t)
{
    if (!w->measuring && !w->t_start && t >= w->start) {
        w->measuring = 1;
        w->t_start = t;
        fputs("START\n", stdout);
        fflush(stdout);
    }
    if (w->measuring && t >= w->end) {
        w->measuring = 0;
        w->t_end = t;
        fputs("END\n", stdout);
        fflush(stdout);
        return 1;
    }
    return 0;
}

/* The next moment window_tick() has something to do. */
static inline uint64_t window_next(const struct window *w)
{
    return w->measuring || w->t_start ? w->end : w->start;
}

static inline double window_seconds(const struct window *w)
{
    return (double)(w->t_end - w->t_start) / 1e9;
}

/* ---- reading an echo ---- */

/* Read what has arrived into buf[*got .. want) of a nonblocking socket: 1 once all `want` bytes
 * are in, 0 when more is to come (EAGAIN), -1 on EOF (errno 0) or an error (errno set). */
static inline int recv_message(int fd, unsigned char *buf, size_t *got, size_t want)
{
    for (;;) {
        ssize_t n = recv(fd, buf + *got, want - *got, 0);
        if (n > 0) {
            *got += (size_t)n;
            if (*got == want)
                return 1;
            continue;
        }
        if (n == 0) {
            errno = 0;
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -1;
    }
}

/* ---- the JSON result line ---- */

/* Open the line with the figures both tools report (round_trips: the samples recorded in the
 * window); the caller adds its own fields, each followed by a comma, then calls json_end(). */
static inline void json_begin(double seconds)
{
    printf("{\"round_trips\":%llu,\"seconds\":%.6f,\"p50_us\":%.2f,\"p99_us\":%.2f,"
           "\"max_us\":%.2f,\"errors\":%llu,\"verify_failures\":%llu,",
           (unsigned long long)hist_count, seconds, hist_percentile(0.50) / 1000.0,
           hist_percentile(0.99) / 1000.0, (double)hist_max_ns / 1000.0,
           (unsigned long long)errors, (unsigned long long)verify_failures);
}

/* Close the line with the first error's text (escaped) and flush it. */
static inline void json_end(void)
{
    fputs("\"first_error\":\"", stdout);
    for (const char *p = first_error; *p; p++)    /* strerror text is plain ASCII; escape anyway */
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
            putchar(*p);
    fputs("\"}\n", stdout);
    fflush(stdout);
}

/* The exit status: 0 if no error and no verify failure, else 1. The sockets and buffers go with
 * the process (the kernel closes every descriptor: the server sees a FIN per connection). */
static inline int exit_status(void)
{
    return (errors || verify_failures) ? 1 : 0;
}

/* Raise the open-files soft limit to the hard one; 0 if `need` descriptors then fit. */
static inline int raise_nofile(unsigned long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY || (rlim_t)need <= rl.rlim_cur ? 0 : -1;
}

#endif
