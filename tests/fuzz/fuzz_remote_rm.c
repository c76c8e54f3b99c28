/* tests/fuzz/fuzz_remote_rm.c — the remote reward model's responses (rewards/rm_source.c, "remote_rm").
 *
 * A "remote_rm" reward source scores against an HTTP server in this process (fuzz_http.h) that answers
 * every POST /get_reward with the fuzz input: the whole client path runs, curl included, as it does
 * against `rlhf serve --reward-model` or an OpenRLHF server.
 * Input: one flag byte, then the response body. flags & 3: HTTP status (200, 200, 422, 503); (flags >> 2)
 * & 7: items in the batch - 1. Properties: every item gets a status; an OK item's score is finite; a
 * non-200 answer makes every item an ERROR. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "rewards/rewards.h"
#include "tests/fuzz/fuzz_http.h"
#include "tests/fuzz/fuzz_util.h"

static reward_pipeline *g_pipe;
static unsigned g_status;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    unsigned port = fuzz_http_start();
    char src[256];
    snprintf(src, sizeof src,
             "[{\"type\": \"remote_rm\", \"name\": \"rm\", \"url\": \"http://127.0.0.1:%u/get_reward\", "
             "\"retries\": 0, \"call_timeout_ms\": 10000, \"batch_size\": 8}]",
             port);
    rlhf_error err;
    if (reward_pipeline_create_str(&g_pipe, src, "fuzz", &err)) {
        fprintf(stderr, "fuzz_remote_rm: %s: %s\n", err.where, err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const unsigned statuses[4] = {200, 200, 422, 503};
    g_status = statuses[data[0] & 3];
    size_t n = 1 + ((data[0] >> 2) & 7);
    fuzz_http_next = (fuzz_http_answer){g_status, data + 1, size - 1, NULL, NULL};
    rlhf_reward_item items[8];
    for (size_t i = 0; i < n; i++)
        items[i] = (rlhf_reward_item){.prompt = "What is 2+2?", .completion = "4", .record_json = "{\"answer\": \"4\"}",
                                      .group_id = 0};
    reward_scores s = {0};
    rlhf_error err;
    reward_pipeline_score(g_pipe, items, n, &s, &err);
    FUZZ_ASSERT(s.n_items == n && s.n_sources == 1, "scores for %zu items, %zu sources", s.n_items, s.n_sources);
    for (size_t i = 0; i < n; i++) {
        if (s.status[i].code == RLHF_REWARD_OK)
            FUZZ_ASSERT(isfinite(s.raw[i]), "item %zu OK with score %g", i, s.raw[i]);
        if (g_status != 200)
            FUZZ_ASSERT(s.status[i].code == RLHF_REWARD_ERROR, "HTTP %u but item %zu is not an ERROR", g_status, i);
    }
    reward_scores_free(&s);
    return 0;
}
