/* dashboard/server.c — the dashboard's HTTP server (libmicrohttpd, one internal thread: requests are
 * answered one at a time, so the run readers of dashboard/data.c need no lock). */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <microhttpd.h>

#include "dashboard/dashboard_int.h"

struct dashboard {
    struct MHD_Daemon *daemon;
    int port;
    int quiet;
    char *token; /* NULL on a loopback address without a token */
    dashboard_run runs[DASHBOARD_MAX_RUNS];
    int n_runs;
    char *uplot_js, *uplot_css;
    size_t uplot_js_len, uplot_css_len;
};

void dashboard_config_default(dashboard_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "%s", DASHBOARD_DEFAULT_LISTEN);
    snprintf(c->token_env, sizeof c->token_env, "%s", DASHBOARD_DEFAULT_TOKEN_ENV);
    c->quiet = 1;
}

int dashboard_parse_listen(const char *s, char host[64], int *port, rlhf_error *err) {
    const char *colon = strrchr(s, ':');
    const char *num = colon ? colon + 1 : s;
    size_t hl = colon ? (size_t)(colon - s) : 0;
    if (hl >= 64) return rlhf_error_set(err, RLHF_EINVAL, s, "address too long (ADDR:PORT, e.g. 127.0.0.1:8420)");
    char *end = NULL;
    errno = 0;
    long p = strtol(num, &end, 10);
    if (!num[0] || *end || errno || p < 0 || p > 65535)
        return rlhf_error_set(err, RLHF_EINVAL, s, "not ADDR:PORT with a port in 0..65535 (e.g. 127.0.0.1:8420)");
    if (colon) {
        memcpy(host, s, hl);
        host[hl] = 0;
        if (!strcmp(host, "localhost")) snprintf(host, 64, "127.0.0.1");
    } else {
        snprintf(host, 64, "127.0.0.1");
    }
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1)
        return rlhf_error_set(err, RLHF_EINVAL, s, "'%s' is not an IPv4 address", host);
    *port = (int)p;
    return 0;
}

static int has_uplot(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%.4100s/uPlot.iife.min.js", dir);
    return access(p, R_OK) == 0;
}

int dashboard_find_assets(char *dir, size_t cap, rlhf_error *err) {
    char tried[3][4200];
    int n = 0;
    const char *env = getenv("RLHF_DASHBOARD_ASSETS");
    if (env && env[0]) snprintf(tried[n++], sizeof tried[0], "%s", env);
    char exe[PATH_MAX];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el > 0) {
        exe[el] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        snprintf(tried[n++], sizeof tried[0], "%s/../share/rlhf/dashboard", exe);
    }
#ifdef RLHF_SOURCE_ROOT
    snprintf(tried[n++], sizeof tried[0], "%s/.cache/npm/node_modules/uplot/dist", RLHF_SOURCE_ROOT);
#endif
    for (int i = 0; i < n; i++) {
        if (!has_uplot(tried[i])) continue;
        char *real = realpath(tried[i], NULL);
        snprintf(dir, cap, "%s", real ? real : tried[i]);
        free(real);
        return 0;
    }
    char list[3 * 4200 + 16] = "";
    for (int i = 0; i < n; i++) {
        if (i) strcat(list, ", ");
        strcat(list, tried[i]);
    }
    return rlhf_error_set(err, RLHF_EIO, "dashboard",
                          "the charting library uPlot.iife.min.js (npm package uplot) is missing: looked in %.600s; "
                          "install it with scripts/install-deps.sh and rebuild (or set RLHF_DASHBOARD_ASSETS)",
                          list);
}

/* ---------------------------------------------------------------- replies */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type, const void *data, size_t n,
                             int copy) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(n, (void *)data, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(s);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *msg) {
    return reply_json(c, status, json_pack("{s:s}", "error", msg));
}

/* The token, compared in constant time over its whole length; never echoed or logged. */
static int token_ok(const char *want, const char *got) {
    if (!got) return 0;
    size_t wl = strlen(want), gl = strlen(got);
    unsigned char diff = (unsigned char)(wl != gl);
    for (size_t i = 0; i < wl; i++) diff |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return diff == 0;
}

static int authorized(const dashboard *d, struct MHD_Connection *c) {
    if (!d->token) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (h && !strncasecmp(h, "Bearer ", 7) && token_ok(d->token, h + 7)) return 1;
    return token_ok(d->token, MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "token"));
}

/* Without a token the server trusts whoever reaches it, which on a loopback address is this machine's
 * users, but a web page in this machine's browser could reach it too through a name of its own that
 * resolves to 127.0.0.1 (DNS rebinding). So the Host header must name the server by an address literal
 * or "localhost". */
static int host_ok(struct MHD_Connection *c) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    if (!h) return 1; /* HTTP/1.0 */
    char host[300];
    snprintf(host, sizeof host, "%s", h);
    if (host[0] == '[') return strchr(host, ']') != NULL; /* an IPv6 literal */
    char *colon = strchr(host, ':');
    if (colon) *colon = 0;
    struct in_addr a;
    return !strcasecmp(host, "localhost") || inet_pton(AF_INET, host, &a) == 1;
}

static int arg_long(struct MHD_Connection *c, const char *name, long dflt, long lo, long hi, long *out) {
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    if (!v || !v[0]) {
        *out = dflt;
        return 0;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*end || errno || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *data, size_t *data_size, void **con_cls) {
    (void)version, (void)data, (void)data_size, (void)con_cls;
    dashboard *d = cls;
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) return reply_error(c, 405, "only GET");
    if (!d->quiet) fprintf(stderr, "dashboard: GET %s\n", url);
    if (!d->token && !host_ok(c))
        return reply_error(c, 403, "the Host header names this server by a name, not its address: open it by its "
                                   "address (http://127.0.0.1:PORT/), or give it a token");
    if (!authorized(d, c))
        return reply_error(c, 401, "this dashboard needs its token: open it as http://ADDR:PORT/?token=TOKEN "
                                   "(or send Authorization: Bearer TOKEN)");
    if (!strcmp(url, "/uPlot.iife.min.js"))
        return reply(c, 200, "text/javascript; charset=utf-8", d->uplot_js, d->uplot_js_len, 0);
    if (!strcmp(url, "/uPlot.min.css")) {
        if (!d->uplot_css) return reply_error(c, 404, "uPlot.min.css is not installed");
        return reply(c, 200, "text/css; charset=utf-8", d->uplot_css, d->uplot_css_len, 0);
    }
    if (strncmp(url, "/api/", 5) != 0) {
        const dashboard_asset *assets;
        size_t n = dashboard_assets(&assets);
        const char *want = !strcmp(url, "/index.html") ? "/" : url;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(assets[i].path, want)) return reply(c, 200, assets[i].type, assets[i].data, assets[i].size, 0);
        return reply_error(c, 404, "no such page");
    }
    const char *api = url + 5;
    if (!strcmp(api, "runs")) {
        json_t *arr = json_array();
        for (int i = 0; i < d->n_runs; i++) json_array_append_new(arr, dashboard_api_run_info(&d->runs[i], i));
        return reply_json(c, 200, json_pack("{s:o}", "runs", arr));
    }
    long run, since, limit, gen;
    if (arg_long(c, "run", 0, 0, d->n_runs - 1, &run))
        return reply_error(c, 400, "run: not the index of a run of this dashboard (see /api/runs)");
    dashboard_run *r = &d->runs[run];
    if (!strcmp(api, "metrics") || !strcmp(api, "eval") || !strcmp(api, "restarts")) {
        if (arg_long(c, "since", 0, 0, LONG_MAX, &since)) return reply_error(c, 400, "since: not a row number >= 0");
        dashboard_jsonl *j = !strcmp(api, "metrics") ? &r->metrics : !strcmp(api, "eval") ? &r->eval : &r->restarts;
        if (arg_long(c, "generation", (long)j->generation, 0, LONG_MAX, &gen))
            return reply_error(c, 400, "generation: not a number >= 0");
        json_t *o = dashboard_api_rows(r, j, since, (unsigned)gen);
        json_object_set_new(o, "run", json_integer(run));
        return reply_json(c, 200, o);
    }
    if (!strcmp(api, "rollouts")) {
        if (arg_long(c, "limit", 20, 1, 500, &limit)) return reply_error(c, 400, "limit: not a number in 1..500");
        const char *filter = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "filter");
        json_t *o = dashboard_api_rollouts(r, (int)limit, filter);
        json_object_set_new(o, "run", json_integer(run));
        return reply_json(c, 200, o);
    }
    if (!strcmp(api, "processes")) {
        json_t *o = dashboard_api_processes(r);
        json_object_set_new(o, "run", json_integer(run));
        return reply_json(c, 200, o);
    }
    if (!strcmp(api, "config")) {
        json_t *o = dashboard_api_config(r);
        json_object_set_new(o, "run", json_integer(run));
        return reply_json(c, 200, o);
    }
    return reply_error(c, 404, "no such endpoint (runs, metrics, eval, restarts, rollouts, config, processes)");
}

static void free_fields(dashboard *d) {
    for (int i = 0; i < d->n_runs; i++) dashboard_run_fini(&d->runs[i]);
    if (d->token) explicit_bzero(d->token, strlen(d->token));
    free(d->token);
    free(d->uplot_js);
    free(d->uplot_css);
}

int dashboard_create(dashboard **out, const dashboard_config *cfg, rlhf_error *err) {
    *out = NULL;
    char host[64];
    int port, rc;
    if ((rc = dashboard_parse_listen(cfg->listen, host, &port, err))) return rc;
    if (cfg->n_runs < 1 || cfg->n_runs > DASHBOARD_MAX_RUNS)
        return rlhf_error_set(err, RLHF_EINVAL, "dashboard", "give 1 to %d run directories", DASHBOARD_MAX_RUNS);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &addr.sin_addr);
    int loopback = (ntohl(addr.sin_addr.s_addr) >> 24) == 127;
    const char *tok = cfg->token_env[0] ? getenv(cfg->token_env) : NULL;
    if (cfg->token_env[0] && (!tok || !tok[0]) && !loopback)
        return rlhf_error_set(err, RLHF_EINVAL, cfg->listen,
                              "%s is not a loopback address and the environment variable %s holding the dashboard's "
                              "token is not set (or empty)", host, cfg->token_env);
    if (tok && !tok[0]) tok = NULL;
    if (!loopback && !tok)
        return rlhf_error_set(err, RLHF_EINVAL, cfg->listen,
                              "%s is not a loopback address: anyone who reaches it could read the run; put a token "
                              "in an environment variable and name it (--token-env NAME)", host);
    dashboard *d = calloc(1, sizeof *d);
    if (!d) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    d->quiet = cfg->quiet;
    for (int i = 0; i < cfg->n_runs; i++) {
        if ((rc = dashboard_run_init(&d->runs[i], cfg->run_dirs[i], err))) {
            free_fields(d);
            free(d);
            return rc;
        }
        d->n_runs++;
    }
    /* runs of the same name (two runs of one config) are told apart by their directories */
    int dup[DASHBOARD_MAX_RUNS] = {0};
    for (int i = 0; i < d->n_runs; i++)
        for (int j = 0; j < d->n_runs; j++) dup[i] |= j != i && !strcmp(d->runs[i].name, d->runs[j].name);
    for (int i = 0; i < d->n_runs; i++) {
        if (!dup[i]) continue;
        const char *base = strrchr(d->runs[i].dir, '/');
        char named[sizeof d->runs[i].name];
        snprintf(named, sizeof named, "%.120s (%.120s)", d->runs[i].name, base && base[1] ? base + 1 : d->runs[i].dir);
        memcpy(d->runs[i].name, named, sizeof named);
    }
    char dir[4096];
    if (cfg->assets_dir[0]) {
        snprintf(dir, sizeof dir, "%s", cfg->assets_dir);
        if (!has_uplot(dir))
            rc = rlhf_error_set(err, RLHF_EIO, dir, "the charting library uPlot.iife.min.js is not here (npm package "
                                "uplot; scripts/install-deps.sh installs it)");
    } else {
        rc = dashboard_find_assets(dir, sizeof dir, err);
    }
    char path[4200];
    if (!rc) {
        snprintf(path, sizeof path, "%s/uPlot.iife.min.js", dir);
        rc = rlhf_read_file(path, &d->uplot_js, &d->uplot_js_len, err);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/uPlot.min.css", dir);
        rlhf_error ignore = {0};
        if (rlhf_read_file(path, &d->uplot_css, &d->uplot_css_len, &ignore)) d->uplot_css = NULL;
    }
    if (!rc && tok && !(d->token = strdup(tok))) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    if (!rc) {
        d->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL, handler, d,
                                     MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
                                     (unsigned)64, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
        if (!d->daemon) rc = rlhf_error_set(err, RLHF_ESYS, cfg->listen, "cannot listen there (in use?)");
    }
    if (rc) {
        free_fields(d);
        free(d);
        return rc;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d->daemon, MHD_DAEMON_INFO_BIND_PORT);
    d->port = info ? info->port : port;
    *out = d;
    return 0;
}

int dashboard_port(const dashboard *d) { return d->port; }

void dashboard_destroy(dashboard **pd) {
    if (!pd || !*pd) return;
    dashboard *d = *pd;
    if (d->daemon) MHD_stop_daemon(d->daemon);
    free_fields(d);
    free(d);
    *pd = NULL;
}
