/* tests/broker/synth_updater.c — a synthetic policy updater: a real process that takes rollout groups
 * from the broker with credit-based flow control, checks every byte, and publishes made-up weights.
 *
 *   synth_updater --endpoint E --id ID [--credit C] [--sleep-ms S] [--publish-every P]
 *                 [--weights-floats F] [--first-version V] [--out FILE] [--stats]
 * --out gets one line per received group "GENERATOR SEQ POLICY_VERSION". Runs until the broker stops.
 * Exit codes: 0 ok, 1 error, 4 a group's payload did not verify. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/broker.h"
#include "tests/broker/synth_common.h"

int main(int argc, char **argv) {
    const char *endpoint = NULL, *id = "upd", *out_path = NULL;
    long credit = 4, sleep_ms = 0, publish_every = 0, floats = 1000, first_version = 1;
    int send_stats = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--stats")) { send_stats = 1; continue; }
        if (!v) { fprintf(stderr, "synth_updater: %s needs a value\n", a); return 2; }
        i++;
        if (!strcmp(a, "--endpoint")) endpoint = v;
        else if (!strcmp(a, "--id")) id = v;
        else if (!strcmp(a, "--out")) out_path = v;
        else if (!strcmp(a, "--credit")) credit = atol(v);
        else if (!strcmp(a, "--sleep-ms")) sleep_ms = atol(v);
        else if (!strcmp(a, "--publish-every")) publish_every = atol(v);
        else if (!strcmp(a, "--weights-floats")) floats = atol(v);
        else if (!strcmp(a, "--first-version")) first_version = atol(v);
        else { fprintf(stderr, "synth_updater: unknown option %s\n", a); return 2; }
    }
    if (!endpoint) { fprintf(stderr, "synth_updater: --endpoint is required\n"); return 2; }
    FILE *out = out_path ? fopen(out_path, "a") : NULL;
    rlhf_error err;
    rlhf_error_clear(&err);
    broker_client *c;
    if (broker_client_connect(&c, endpoint, WIRE_ROLE_UPDATER, id, 10000, &err) != 0) {
        rlhf_error_print("synth_updater", &err);
        return 1;
    }
    broker_client_set_state(c, "training");
    uint64_t next_version = (uint64_t)first_version, received = 0;
    int rc = 0;
    if (broker_client_grant_credit(c, (uint32_t)credit, &err) != 0) {
        rlhf_error_print("synth_updater", &err);
        rc = 1;
    }
    while (!rc) {
        wire_rollout_group g;
        int r = broker_client_recv_group(c, &g, 1000, &err);
        if (r == 0) continue;
        if (r == RLHF_ESTATE) break;
        if (r < 0) {
            rlhf_error_print("synth_updater", &err);
            rc = 1;
            break;
        }
        if (!synth_group_check(&g)) {
            fprintf(stderr, "synth_updater %s: group %s/%llu payload does not verify\n", id, g.generator_id,
                    (unsigned long long)g.seq);
            rc = 4;
        }
        if (out) {
            fprintf(out, "%s %llu %llu\n", g.generator_id, (unsigned long long)g.seq,
                    (unsigned long long)g.policy_version);
            fflush(out);
        }
        if (send_stats) {
            float rewards[WIRE_MAX_K], total[WIRE_MAX_K];
            for (uint32_t s = 0; s < g.k; s++) rewards[s] = total[s] = (float)(s % 2);
            wire_prompt_stats st = {g.prompt_id, g.policy_version, g.k, 1, NULL, rewards, total};
            if (broker_client_send_prompt_stats(c, &st, &err) != 0) rlhf_error_print("synth_updater", &err);
        }
        wire_rollout_group_free(&g);
        received++;
        if (sleep_ms) {
            struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (publish_every && received % (uint64_t)publish_every == 0) {
            wire_weights w;
            wire_tensor t[2];
            synth_weights_make(&w, t, next_version++, (uint64_t)floats);
            if (broker_client_publish_weights(c, &w, &err) != 0) {
                rlhf_error_print("synth_updater", &err);
                rc = 1;
            }
            free((void *)w.data);
        }
        if (broker_client_grant_credit(c, 1, &err) != 0 && !broker_client_stopped(c)) {
            rlhf_error_print("synth_updater", &err);
            rc = 1;
        }
    }
    broker_client_close(&c);
    if (out) fclose(out);
    return rc;
}
