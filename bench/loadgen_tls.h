/*
 * loadgen_tls.h - the TLS side of the bench load generators (loadgen.c, churn.c), compiled in
 * with -DLOADGEN_TLS and linked with -lssl -lcrypto (Debian: libssl-dev). bench/harness.py
 * builds bench/.build/loadgen-tls and churn-tls that way for bench/tls.py.
 *
 * The client speaks TLS through OpenSSL on its nonblocking socket: SSL_do_handshake until done,
 * then SSL_write / SSL_read in place of send / recv, with the same return conventions as the
 * plain helpers (a would-block is -1 with errno EAGAIN; the peer's end is -1 with errno 0). The
 * server certificate is not verified: these are throwaway benchmark certificates and the cost
 * being measured is the server's. Every server of a run gets the same certificate, and OpenSSL
 * negotiates the same protocol and cipher with each (TLS 1.3, the client's first choice).
 */
#ifndef LOADGEN_TLS_H
#define LOADGEN_TLS_H
#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_CTX *tls_ctx;        /* one client context for the process, never freed */

static void tls_init(void)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) {
        fprintf(stderr, "loadgen: SSL_CTX_new failed\n");
        exit(2);
    }
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);   /* full handshakes only */
}

/* A client SSL on a connected socket; NULL if out of memory. The caller SSL_free()s it. */
static SSL *tls_new(int fd)
{
    SSL *ssl = SSL_new(tls_ctx);
    if (ssl) {
        SSL_set_fd(ssl, fd);
        SSL_set_connect_state(ssl);
    }
    return ssl;
}

/* Advance the handshake: 1 done, 0 in progress (*want_out: wait for writability, else for
 * readability), -1 failed. */
static int tls_handshake(SSL *ssl, int *want_out)
{
    int r = SSL_do_handshake(ssl);
    if (r == 1)
        return 1;
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want_out = e == SSL_ERROR_WANT_WRITE;
        return 0;
    }
    ERR_clear_error();
    errno = errno ? errno : EPROTO;
    return -1;
}

/* As send(2): bytes written, or -1 with errno (EAGAIN: try again when writable). */
static ssize_t tls_send(SSL *ssl, const void *buf, size_t n)
{
    int r = SSL_write(ssl, buf, (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        errno = EAGAIN;
        return -1;
    }
    ERR_clear_error();
    errno = e == SSL_ERROR_SYSCALL && errno ? errno : EPIPE;
    return -1;
}

/* As recv_message (loadgen_common.h): 1 the whole message is in, 0 more to come, -1 error
 * (errno 0: the server ended the stream). */
static int tls_recv_message(SSL *ssl, unsigned char *buf, size_t *got, size_t want)
{
    for (;;) {
        int r = SSL_read(ssl, buf + *got, (int)(want - *got));
        if (r > 0) {
            *got += (size_t)r;
            if (*got == want)
                return 1;
            continue;
        }
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return 0;
        ERR_clear_error();
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) {
            errno = 0;
            return -1;
        }
        errno = errno ? errno : EPROTO;
        return -1;
    }
}
#endif
