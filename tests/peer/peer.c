/* tests/peer/peer.c — real server processes for tests and benchmarks (see tests/peer/peer.h). */
#include "tests/peer/peer.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include "common/common.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

void peer_bin_path(const char *prog, char *out, size_t cap) {
    if (test_bin_path(prog, out, cap)) snprintf(out, cap, "%s", prog); /* not found: exec fails, naming it */
}

int peer_start(peer *p, char *const argv[], double timeout_s) {
    memset(p, 0, sizeof *p);
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s failed\n", argv[0]);
        _exit(127);
    }
    close(fds[1]);
    char buf[512];
    size_t len = 0;
    double end = rlhf_now() + timeout_s;
    while (rlhf_now() < end && len < sizeof buf - 1) {
        struct pollfd pf = {fds[0], POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0) continue;
        ssize_t r = read(fds[0], buf + len, sizeof buf - 1 - len);
        if (r <= 0) break;
        len += (size_t)r;
        buf[len] = 0;
        const char *at = strstr(buf, "listening on 127.0.0.1:");
        if (at && strchr(at, '\n')) {
            p->pid = pid;
            p->port = atoi(at + strlen("listening on 127.0.0.1:"));
            snprintf(p->base_url, sizeof p->base_url, "http://127.0.0.1:%d", p->port);
            p->out_fd = fds[0]; /* kept open (unread) until peer_stop: peers print nothing more on stdout */
            return 0;
        }
    }
    close(fds[0]);
    test_proc_kill(pid);
    return -1;
}

void peer_stop(peer *p) {
    if (p->out_fd > 0) close(p->out_fd);
    p->out_fd = 0;
    if (p->pid <= 0) return;
    test_proc_stop(p->pid, 2.0); /* SIGTERM; SIGKILL after 2 s */
    p->pid = 0;
}

size_t peer_body_write(char *d, size_t s, size_t m, void *ud) {
    peer_body *g = ud;
    char *q = realloc(g->p, g->n + s * m + 1);
    if (!q) return 0;
    g->p = q;
    memcpy(g->p + g->n, d, s * m);
    g->n += s * m;
    g->p[g->n] = 0;
    return s * m;
}

long peer_http(const peer *p, const char *method, const char *path, const char *body, char **resp) {
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "%s%s", p->base_url, path);
    peer_body g = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, peer_body_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &g);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    long status = -1;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (resp) *resp = g.p ? g.p : strdup("");
    else free(g.p);
    return status;
}

json_t *peer_stats(const peer *p) {
    char *b = NULL;
    long st = peer_http(p, "GET", "/stats", NULL, &b);
    json_t *j = st == 200 ? json_loads(b, 0, NULL) : NULL;
    free(b);
    return j;
}

int peer_closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}
