/* tests/fuzz/fuzz_judge_http.c — the LLM judge's handling of server answers (rewards/judge/judge.c):
 * status, body shape (choices[0].message.content), score extraction and range, the response_format
 * fallback. A fresh judge client per input scores two items against the in-process HTTP server of
 * fuzz_http.h, which answers with the input; each input is judged on its own (no breaker, cache or
 * fallback state carried over from earlier inputs).
 *
 * Input: one flag byte, then the response body. flags & 7: HTTP status (200 x4, 400, 404, 429 with
 * Retry-After: 0, 503); flags & 8: response_format "none" (else "auto"). Properties: every item ends
 * scored or with a reason; a scored item's score is in [0, 1] and its raw score in [score_min,
 * score_max]; a non-200 answer scores nothing. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "rewards/judge/judge.h"
#include "tests/fuzz/fuzz_http.h"
#include "tests/fuzz/fuzz_util.h"

static unsigned g_port;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    g_port = fuzz_http_start();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const unsigned statuses[8] = {200, 200, 200, 200, 400, 404, 429, 503};
    unsigned status = statuses[data[0] & 7];
    fuzz_http_next = (fuzz_http_answer){status, data + 1, size - 1, status == 429 ? "Retry-After" : NULL, "0"};
    judge_config cfg;
    judge_config_default(&cfg);
    snprintf(cfg.base_url, sizeof cfg.base_url, "http://127.0.0.1:%u/v1", g_port);
    snprintf(cfg.model, sizeof cfg.model, "fuzz");
    cfg.retries = 0;
    cfg.cache_size = 0;
    cfg.call_timeout_ms = 10000;
    cfg.response_format = (data[0] & 8) ? JUDGE_RF_NONE : JUDGE_RF_AUTO;
    judge_client *jc = NULL;
    rlhf_error err;
    if (judge_client_create(&jc, &cfg, "fuzz", NULL, &err)) {
        fprintf(stderr, "fuzz_judge_http: %s: %s\n", err.where, err.msg);
        abort();
    }
    judge_item items[2] = {{.prompt = "2+2?", .completion = "4"}, {.prompt = "3+3?", .completion = "6"}};
    int rc = judge_score(jc, items, 2, &err);
    FUZZ_ASSERT(rc == 0, "judge_score failed: %s", err.msg);
    for (int i = 0; i < 2; i++) {
        judge_item *it = &items[i];
        if (it->ok) {
            FUZZ_ASSERT(status == 200, "item %d scored from an HTTP %u answer", i, status);
            FUZZ_ASSERT(it->score >= 0 && it->score <= 1 && it->raw_score >= cfg.score_min &&
                            it->raw_score <= cfg.score_max,
                        "item %d: score %g (raw %g)", i, it->score, it->raw_score);
        } else {
            FUZZ_ASSERT(it->reason > JUDGE_OK && it->reason < JUDGE_N_REASONS, "item %d failed with reason %d", i,
                        (int)it->reason);
        }
    }
    judge_client_destroy(&jc);
    judge_config_free(&cfg);
    return 0;
}
