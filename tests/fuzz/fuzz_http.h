/* tests/fuzz/fuzz_http.h — an HTTP server in the fuzz target's process (libmicrohttpd, loopback, a free
 * port) that answers every request with the status, body and one optional header the harness set last:
 * HTTP clients (remote reward model, LLM judge) then run their whole path, curl included, on fuzz input. */
#ifndef RLHF_FUZZ_HTTP_H
#define RLHF_FUZZ_HTTP_H

#include <arpa/inet.h>
#include <microhttpd.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct fuzz_http_answer {
    unsigned status;
    const uint8_t *body;
    size_t len;
    const char *header, *value; /* NULL: none */
} fuzz_http_answer;

/* Read by the server's thread while the harness waits on the client: set before each call. */
static fuzz_http_answer fuzz_http_next;

static enum MHD_Result fuzz_http_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                         const char *version, const char *upload, size_t *upload_size,
                                         void **con_cls) {
    (void)cls, (void)url, (void)method, (void)version, (void)upload;
    static int started;
    if (!*con_cls) { /* first call: headers only */
        *con_cls = &started;
        return MHD_YES;
    }
    if (*upload_size) { /* the request body: read and dropped */
        *upload_size = 0;
        return MHD_YES;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(fuzz_http_next.len, (void *)fuzz_http_next.body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (fuzz_http_next.header) MHD_add_response_header(r, fuzz_http_next.header, fuzz_http_next.value);
    enum MHD_Result ok = MHD_queue_response(c, fuzz_http_next.status, r);
    MHD_destroy_response(r);
    return ok;
}

/* Starts the server; returns its port (aborts when it cannot start). The server lives until exit. */
static inline unsigned fuzz_http_start(void) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    /* epoll + turbo: without them each request waited tens of ms in the server's poll loop */
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL_LINUX_ONLY |
                                                MHD_USE_TURBO | MHD_USE_ERROR_LOG,
                                            0, NULL, NULL, fuzz_http_handler, NULL, MHD_OPTION_SOCK_ADDR,
                                            (struct sockaddr *)&a, MHD_OPTION_END);
    if (!d) abort();
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    return info->port;
}

#endif
