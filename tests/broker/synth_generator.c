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

int main(int argc, char **argv) {
    const char *endpoint = NULL, *id = "gen", *out_path = NULL;
    long groups = 0, k = 8, tokens = 32, batch = 2, delay_ms = 0;
    int check_weights = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--check-weights")) { check_weights = 1; continue; }
        if (!v) { fprintf(stderr, "synth_generator: %s needs a value\n", a); return 2; }
        i++;
        if (!strcmp(a, "--endpoint")) endpoint = v;
        else if (!strcmp(a, "--id")) id = v;
        else if (!strcmp(a, "--out")) out_path = v;
        else if (!strcmp(a, "--groups")) groups = atol(v);
        else if (!strcmp(a, "--k")) k = atol(v);
        else if (!strcmp(a, "--tokens")) tokens = atol(v);
        else if (!strcmp(a, "--batch")) batch = atol(v);
        else if (!strcmp(a, "--delay-ms")) delay_ms = atol(v);
        else { fprintf(stderr, "synth_generator: unknown option %s\n", a); return 2; }
    }
    if (!endpoint) { fprintf(stderr, "synth_generator: --endpoint is required\n"); return 2; }
    FILE *out = out_path ? fopen(out_path, "a") : NULL;
    rlhf_error err;
    rlhf_error_clear(&err);
    broker_client *c;
    if (broker_client_connect(&c, endpoint, WIRE_ROLE_GENERATOR, id, 10000, &err) != 0) {
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
        if (rc) break;
    }
done:
    broker_client_close(&c);
    if (out) fclose(out);
    return rc;
}
