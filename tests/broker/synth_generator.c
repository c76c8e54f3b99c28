/* tests/broker/synth_generator.c — a synthetic trajectory generator: a real process that talks to the
 * broker through the client API with made-up rollout groups (tests, benchmarks).
 *
 *   synth_generator --endpoint E --id ID [--groups N] [--k K] [--tokens T] [--batch B]
 *                   [--delay-ms D] [--out FILE] [--check-weights]
 * --out gets one line per pushed group "ID SEQ POLICY_VERSION" (flushed at once) and "weights V" for
 * every weights version received and verified. --check-weights: wait up to 5 s for weights right after
 * connecting, record them, and exit. Exit codes: 0 ok, 1 error, 3 bad weights. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/broker.h"
#include "tests/broker/synth_common.h"

static const char usage[] =
    "usage: synth_generator --endpoint E --id ID [--groups N] [--k K] [--tokens T] [--batch B]\n"
    "                       [--delay-ms D] [--out FILE] [--check-weights] [--credentials DIR]\n"
    "  --groups 0 (default) pushes until the broker stops; --out gets \"ID SEQ POLICY_VERSION\" per group\n"
    "  and \"weights V\" per verified weights version. Exit codes: 0 ok, 1 error, 2 usage, 3 bad weights.\n";

int main(int argc, char **argv) {
    const char *endpoint = NULL, *id = "gen", *out_path = NULL, *credentials = NULL;
    int groups = 0, k = 8, tokens = 32, batch = 2, delay_ms = 0;
    int check_weights = 0;
    const rlhf_opt opts[] = {
        RLHF_OPT("--endpoint", RLHF_OPT_STR, &endpoint),
        RLHF_OPT("--credentials", RLHF_OPT_STR, &credentials),
        RLHF_OPT("--id", RLHF_OPT_STR, &id),
        RLHF_OPT("--out", RLHF_OPT_STR, &out_path),
        RLHF_OPT("--groups", RLHF_OPT_INT, &groups),
        RLHF_OPT("--k", RLHF_OPT_INT, &k),
        RLHF_OPT("--tokens", RLHF_OPT_INT, &tokens),
        RLHF_OPT("--batch", RLHF_OPT_INT, &batch),
        RLHF_OPT("--delay-ms", RLHF_OPT_INT, &delay_ms),
        RLHF_OPT("--check-weights", RLHF_OPT_FLAG, &check_weights),
        RLHF_OPT_END,
    };
    int prc = rlhf_opts_parse(argc, argv, "synth_generator", usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    if (!endpoint) { fprintf(stderr, "synth_generator: error: --endpoint is required\n%s", usage); return 2; }
    FILE *out = out_path ? fopen(out_path, "a") : NULL;
    rlhf_error err;
    rlhf_error_clear(&err);
    broker_client *c;
    if (broker_client_connect_with(&c, endpoint, WIRE_ROLE_GENERATOR, id, credentials, 10000, &err) != 0) {
        rlhf_error_print("synth_generator", &err);
        return 1;
    }
    uint64_t version = broker_client_welcome(c)->newest_version;
    int rc = 0;
    if (check_weights) {
        wire_weights w;
        int r = broker_client_poll_weights(c, &w, 5000, &err);
        if (r == 1) {
            if (!synth_weights_check(&w)) rc = 3;
            if (out) fprintf(out, "weights %llu\n", (unsigned long long)w.version);
            wire_weights_free(&w);
        } else {
            if (out) fprintf(out, "weights none\n");
            rc = 1;
        }
        goto done;
    }
    broker_client_set_state(c, "generating");
    uint64_t seq = 0;
    while (groups == 0 || (long)seq < groups) {
        wire_prompt_batch pb;
        long want = groups == 0 || groups - (long)seq > batch ? batch : groups - (long)seq;
        int r = broker_client_request_prompts(c, (uint32_t)want, &pb, 1000, &err);
        if (r == RLHF_ETIMEOUT) continue;
        if (r == RLHF_ESTATE) break; /* broker stopped */
        if (r) {
            rlhf_error_print("synth_generator", &err);
            rc = 1;
            break;
        }
        for (uint32_t i = 0; i < pb.n; i++) {
            wire_weights w;
            while (broker_client_poll_weights(c, &w, 0, &err) == 1) {
                if (!synth_weights_check(&w)) {
                    fprintf(stderr, "synth_generator %s: weights version %llu do not verify\n", id,
                            (unsigned long long)w.version);
                    rc = 3;
                }
                version = w.version;
                if (out) fprintf(out, "weights %llu\n", (unsigned long long)w.version);
                wire_weights_free(&w);
            }
            if (delay_ms) {
                struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
            wire_rollout_group g;
            synth_group_make(&g, id, seq, version, (uint32_t)k, (uint32_t)tokens, pb.prompts[i].id, pb.prompts[i].text);
            g.created_at = rlhf_wall_time();
            r = broker_client_push_group(c, &g, &err);
            synth_group_free(&g);
            if (r == RLHF_ESTATE) break; /* the broker stopped while this batch was generated */
            if (r) {
                rlhf_error_print("synth_generator", &err);
                rc = 1;
                break;
            }
            if (out) {
                fprintf(out, "%s %llu %llu\n", id, (unsigned long long)seq, (unsigned long long)version);
                fflush(out);
            }
            seq++;
        }
        wire_prompt_batch_free(&pb);
        if (rc || broker_client_stopped(c)) break;
    }
done:
    broker_client_close(&c);
    if (out) fclose(out);
    return rc;
}
