/* tests/dashboard/dash_util.h — what both dashboard suites share: a GET with libcurl into a buffer. */
#ifndef RLHF_TEST_DASH_UTIL_H
#define RLHF_TEST_DASH_UTIL_H

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

typedef struct dash_buf {
    char *data;
    size_t len;
} dash_buf;

static inline size_t dash_buf_write(char *p, size_t size, size_t n, void *ud) {
    dash_buf *b = ud;
    size_t add = size * n;
    char *nd = realloc(b->data, b->len + add + 1);
    if (!nd) return 0;
    memcpy(nd + b->len, p, add);
    b->data = nd;
    b->len += add;
    b->data[b->len] = 0;
    return add;
}

/* GET URL (with an Authorization: Bearer header when bearer is not NULL): the HTTP status, the body in
 * *body (malloc'd, NUL-terminated; free it); -1 when the request failed. */
static inline long dash_get_host(const char *url, const char *bearer, const char *host, char **body);
static inline long dash_get(const char *url, const char *bearer, char **body) {
    return dash_get_host(url, bearer, NULL, body);
}

/* The same with a Host header of the caller's (NULL: curl's own). */
static inline long dash_get_host(const char *url, const char *bearer, const char *host, char **body) {
    dash_buf b = {calloc(1, 1), 0};
    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    char auth[512];
    if (bearer) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer);
        h = curl_slist_append(h, auth);
    }
    char hosthdr[300];
    if (host) {
        snprintf(hosthdr, sizeof hosthdr, "Host: %s", host);
        h = curl_slist_append(h, hosthdr);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, dash_buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    if (h) curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    long status = -1;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (body) *body = b.data;
    else free(b.data);
    return status;
}

#endif
