/* dashboard/dashboard.h — the live dashboard: a page of a run's curves, recent rollouts and resolved config,
 * served over HTTP (libmicrohttpd) from the files of one or more run directories.
 *
 * It only reads a run directory (metrics.jsonl, eval.jsonl, restarts.jsonl, scores.jsonl, rollouts.log,
 * config.json), so it sits beside serve/ above broker/ (whose replay-log reader it uses). `rlhf dashboard
 * RUN_DIR...` runs it on finished or running runs; `rlhf run --dashboard [ADDR:PORT]` starts it in the
 * launcher for the live run (docs/RUNNING.md "Live dashboard").
 *
 * Endpoints (JSON; every one that reads a run answers a `missing` list naming what is not there yet):
 *   GET /                                   the page (dashboard/page/, embedded in the binary)
 *   GET /uPlot.iife.min.js, /uPlot.min.css  the charting library (npm `uplot`, found at start-up)
 *   GET /api/runs                           [{run, name, dir, missing}]
 *   GET /api/metrics?run=I&since=N          metrics.jsonl rows from row N: {rows, next, torn, missing}
 *   GET /api/eval?run=I&since=N             eval.jsonl rows, the same way
 *   GET /api/restarts?run=I                 restarts.jsonl rows
 *   GET /api/rollouts?run=I&limit=N&filter=S the newest groups of rollouts.log (prompt, completions, policy
 *                                           version, generator) with their rewards, advantages, step and fate
 *                                           from scores.jsonl (the updater's record); S filters on the text
 *   GET /api/config?run=I                   config.json with secret-looking values masked
 *   GET /api/processes?run=I                the run's processes on this host (CPU, memory from /proc) and
 *                                           per process its supervision events (restarts.jsonl)
 * A non-loopback listen address needs a token (Authorization: Bearer T, or ?token=T on the page's URL). */
#ifndef RLHF_DASHBOARD_H
#define RLHF_DASHBOARD_H

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DASHBOARD_DEFAULT_LISTEN "127.0.0.1:8420"
#define DASHBOARD_DEFAULT_TOKEN_ENV "RLHF_DASHBOARD_TOKEN"
#define DASHBOARD_MAX_RUNS 16

typedef struct dashboard_config {
    char listen[128];          /* "ADDR:PORT" (IPv4; port 0 = any free port, see dashboard_port) */
    char token_env[128];       /* environment variable holding the token (default RLHF_DASHBOARD_TOKEN): when set,
                                * every request needs it; a non-loopback address refuses to start without it */
    char assets_dir[4096];     /* where uPlot.iife.min.js is; "" = search (dashboard_find_assets) */
    const char *run_dirs[DASHBOARD_MAX_RUNS];
    int n_runs;
    int quiet;                 /* no request log on stderr (the default: quiet) */
} dashboard_config;

void dashboard_config_default(dashboard_config *c);

/* "ADDR:PORT" -> host and port; "PORT" alone means 127.0.0.1:PORT. */
int dashboard_parse_listen(const char *s, char host[64], int *port, rlhf_error *err);

/* The directory holding the charting library: $RLHF_DASHBOARD_ASSETS, then EXE_DIR/../share/rlhf/dashboard
 * (make and make install copy it there), then the source tree's .cache/npm/node_modules/uplot/dist. An
 * error naming every place looked at and the remedy (scripts/install-deps.sh) when none has it. */
int dashboard_find_assets(char *dir, size_t cap, rlhf_error *err);

typedef struct dashboard dashboard;
/* Checks every run directory (an unknown one: RLHF_EINVAL naming it), finds the charting library, reads
 * the token when the address is not loopback (none: an error saying how to give one) and starts listening
 * (its own thread). */
int dashboard_create(dashboard **out, const dashboard_config *cfg, rlhf_error *err);
int dashboard_port(const dashboard *d);
/* Stops the server and frees it (wipes the token). */
void dashboard_destroy(dashboard **d);

#ifdef __cplusplus
}
#endif
#endif
