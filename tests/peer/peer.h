/* tests/peer/peer.h — starting and stopping real server processes for the judge and serve tests and
 * the judge/serve/rm benchmarks: the fault-injecting chat server (bin/fault_http_server) and
 * `rlhf serve`, both found next to the test binary ($BUILD/tests/.. /bin). Each prints
 * "... listening on 127.0.0.1:PORT" once ready. */
#ifndef RLHF_TESTS_PEER_PEER_H
#define RLHF_TESTS_PEER_PEER_H

#include <jansson.h>
#include <sys/types.h>

typedef struct peer {
    pid_t pid;
    int port;
    int out_fd;
    char base_url[64];
} peer;

/* Path of a program in $BUILD/bin ("fault_http_server", "rlhf"). */
void peer_bin_path(const char *prog, char *out, size_t cap);
/* Starts argv (argv[0] a full path) and waits (<= timeout_s) for its "listening on 127.0.0.1:PORT" line.
 * Returns 0, or -1 (the process is reaped) when it never said so. */
int peer_start(peer *p, char *const argv[], double timeout_s);
void peer_stop(peer *p);
/* GET/POST on the peer with libcurl: returns the HTTP status (or -1), body in *body (malloc'd). */
long peer_http(const peer *p, const char *method, const char *path, const char *body, char **resp);
/* A libcurl CURLOPT_WRITEFUNCTION that appends the body to a peer_body (CURLOPT_WRITEDATA), kept
 * NUL-terminated; for callers that reuse one curl handle (the serve benchmark). Free body.p. */
typedef struct peer_body {
    char *p;
    size_t n;
} peer_body;
size_t peer_body_write(char *data, size_t size, size_t nmemb, void *body);
/* GET /stats of the fault server as JSON (new reference, NULL on failure). */
json_t *peer_stats(const peer *p);
/* A TCP port on 127.0.0.1 with nothing listening (bound, then closed). */
int peer_closed_port(void);

#endif
