/* rewards/plugin_host_cli.c — `rlhf reward-plugin-host PLUGIN.so`: serves a shared-object reward
 * plugin over the process-plugin protocol (docs/REWARD_PLUGINS.md) on stdin/stdout. A "plugin"
 * source runs its plugin here (isolate "process", the default; under "none", after a score_batch
 * overran timeout_ms; rewards/plugin.c), so a plugin that crashes or hangs takes this process down
 * instead of the updater. Not meant to be started by hand. The protocol goes to the stdout this
 * process was given, kept on a private descriptor; fd 1 is pointed at stderr, so a plugin's printf
 * lands in the log instead of corrupting the protocol. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "rewards/rewards_int.h"

static FILE *proto_out; /* the protocol channel (the original stdout) */

static int reply(json_t *j) {
    char *t = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!t) return -1;
    int rc = fprintf(proto_out, "%s\n", t) < 0 || fflush(proto_out) ? -1 : 0;
    free(t);
    return rc;
}

/* Scores one request {"id", "items": [...]} and writes its reply. */
static int serve_request(const reward_source_impl *impl, json_t *req) {
    json_t *arr = json_object_get(req, "items");
    size_t n = json_array_size(arr);
    rlhf_reward_item *items = calloc(n ? n : 1, sizeof *items);
    char **recs = calloc(n ? n : 1, sizeof *recs);
    int32_t **ids = calloc(n ? n : 1, sizeof *ids);
    double *scores = calloc(n ? n : 1, sizeof *scores);
    rlhf_reward_status *st = calloc(n ? n : 1, sizeof *st);
    int64_t *versions = calloc(n ? n : 1, sizeof *versions);
    if (!items || !recs || !ids || !scores || !st || !versions) return -1;
    /* the batch's deadline on this process's clock (CLOCK_MONOTONIC is system-wide, but the budget
     * is what the protocol carries) */
    json_t *budget = json_object_get(req, "budget_ms");
    double deadline = json_is_integer(budget) ? rlhf_now() + (double)json_integer_value(budget) / 1000.0 : 0;
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(arr, i);
        items[i].prompt = json_string_value(json_object_get(it, "prompt"));
        items[i].completion = json_string_value(json_object_get(it, "completion"));
        if (!items[i].prompt) items[i].prompt = "";
        if (!items[i].completion) items[i].completion = "";
        json_t *rec = json_object_get(it, "record");
        recs[i] = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
        items[i].record_json = recs[i] ? recs[i] : "{}";
        json_t *jids = json_object_get(it, "completion_ids");
        size_t m = json_array_size(jids);
        if (m && (ids[i] = malloc(m * sizeof(int32_t)))) {
            for (size_t k = 0; k < m; k++) ids[i][k] = (int32_t)json_integer_value(json_array_get(jids, k));
            items[i].completion_ids = ids[i];
            items[i].n_completion_ids = (int64_t)m;
        }
        json_t *gid = json_object_get(it, "group_id");
        items[i].group_id = json_is_integer(gid) ? (int64_t)json_integer_value(gid) : -1;
        items[i].deadline = deadline;
        json_t *pv = json_object_get(it, "policy_version");
        versions[i] = json_is_integer(pv) ? (int64_t)json_integer_value(pv) : -1;
    }
    /* the training state and metrics of ABI v2 travel as "step", "policy_version" and "metrics" */
    json_t *jstep = json_object_get(req, "step");
    rlhf_reward_metric met[32];
    size_t n_met = 0;
    rlhf_reward_batch b = {.struct_size = sizeof b, .items = items, .n = n,
                           .step = json_is_integer(jstep) ? (int64_t)json_integer_value(jstep) : -1,
                           .policy_version = versions, .metrics = met, .max_metrics = 32, .n_metrics = &n_met};
    int rc = n ? reward_plugin_score_direct(impl, &b, scores, st) : 0;
    json_t *res = json_array();
    for (size_t i = 0; i < n; i++) {
        st[i].reason[RLHF_REWARD_REASON_MAX - 1] = 0;
        if (rc != 0)
            json_array_append_new(res, json_pack("{s:s}", "error", st[0].reason[0] ? st[0].reason : "score_batch failed"));
        else if (st[i].code == RLHF_REWARD_ERROR)
            json_array_append_new(res, json_pack("{s:s}", "error", st[i].reason));
        else if (st[i].code == RLHF_REWARD_SKIP)
            json_array_append_new(res, json_pack("{s:s}", "skip", st[i].reason));
        else if (st[i].code != RLHF_REWARD_OK)
            json_array_append_new(res, json_pack("{s:s}", "error", "invalid status code"));
        else if (!isfinite(scores[i]))
            json_array_append_new(res, json_pack("{s:s}", "error", "non-finite score"));
        else if (st[i].reason[0]) /* an OK item's note (e.g. a verdict) travels too */
            json_array_append_new(res, json_pack("{s:f,s:s}", "score", scores[i], "note", st[i].reason));
        else
            json_array_append_new(res, json_pack("{s:f}", "score", scores[i]));
    }
    for (size_t i = 0; i < n; i++) {
        free(recs[i]);
        free(ids[i]);
    }
    free(items);
    free(recs);
    free(ids);
    free(scores);
    free(st);
    free(versions);
    json_t *out = json_pack("{s:O,s:o}", "id", json_object_get(req, "id"), "results", res);
    if (out && rc == 0 && n_met) {
        json_t *mo = json_object();
        for (size_t k = 0; k < n_met && k < 32; k++) {
            met[k].name[sizeof met[k].name - 1] = 0;
            if (isfinite(met[k].value)) json_object_set_new(mo, met[k].name, json_real(met[k].value));
        }
        json_object_set_new(out, "metrics", mo);
    }
    return reply(out);
}

int cmd_reward_plugin_host(int argc, char **argv);
int cmd_reward_plugin_host(int argc, char **argv) {
    static const char usage[] = "usage: rlhf reward-plugin-host PLUGIN.so   (started by the reward pipeline; speaks the "
                                "process-plugin protocol on stdin/stdout)\n";
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc == 2 && argv[1][0] == '-') {
        fprintf(stderr, "rlhf reward-plugin-host: error: unknown option '%s'\n%s", argv[1], usage);
        return 2;
    }
    if (argc != 2) {
        fputs(usage, stderr);
        return 2;
    }
    /* a hung plugin would not notice its host's death on stdin: die with the host instead */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int proto_fd = dup(1);
    proto_out = proto_fd >= 0 ? fdopen(proto_fd, "w") : NULL;
    if (!proto_out || dup2(2, 1) < 0) {
        fprintf(stderr, "rlhf reward-plugin-host: error: cannot set up the protocol channel\n");
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    if (getline(&line, &cap, stdin) < 0) return 1;
    json_error_t je;
    json_t *init = json_loads(line, 0, &je);
    json_t *cfg = json_object_get(init, "init");
    char *cfg_txt = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    reward_source_impl impl = {0};
    rlhf_error err = {0};
    if (reward_plugin_load(argv[1], cfg_txt ? cfg_txt : "{}", "reward-plugin-host", &impl, &err)) {
        free(cfg_txt);
        json_decref(init);
        free(line);
        reply(json_pack("{s:s,s:i}", "error", err.msg, "code", err.code));
        return 1;
    }
    free(cfg_txt);
    json_decref(init);
    /* a v2 plugin's declared range, for the caller's out_of_range handling */
    json_t *ok = json_pack("{s:b}", "ok", 1);
    if (ok && impl.has_range) json_object_set_new(ok, "range", json_pack("[f,f]", impl.range_lo, impl.range_hi));
    if (reply(ok)) return 1;
    int rc = 0;
    while (getline(&line, &cap, stdin) >= 0) {
        json_t *req = json_loads(line, 0, &je);
        if (!req || serve_request(&impl, req)) rc = 1;
        json_decref(req);
        if (rc) break;
    }
    free(line);
    if (impl.plugin->destroy && impl.ctx) impl.plugin->destroy(impl.ctx);
    return rc;
}
