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

static const char usage[] =
    "usage: synth_updater --endpoint E --id ID [--credit C] [--sleep-ms S] [--publish-every P]\n"
    "                     [--weights-floats F] [--first-version V] [--out FILE] [--stats] [--credentials DIR]\n"
    "  --out gets \"GENERATOR SEQ POLICY_VERSION\" per received group; runs until the broker stops.\n"
    "  Exit codes: 0 ok, 1 error, 2 usage, 4 a group's payload did not verify.\n";

int main(int argc, char **argv) {
    const char *endpoint = NULL, *id = "upd", *out_path = NULL, *credentials = NULL;
    int credit = 4, sleep_ms = 0, publish_every = 0, floats = 1000, first_version = 1;
    int send_stats = 0;
    const rlhf_opt opts[] = {
        RLHF_OPT("--endpoint", RLHF_OPT_STR, &endpoint),
        RLHF_OPT("--credentials", RLHF_OPT_STR, &credentials),
        RLHF_OPT("--id", RLHF_OPT_STR, &id),
        RLHF_OPT("--out", RLHF_OPT_STR, &out_path),
        RLHF_OPT("--credit", RLHF_OPT_INT, &credit),
        RLHF_OPT("--sleep-ms", RLHF_OPT_INT, &sleep_ms),
        RLHF_OPT("--publish-every", RLHF_OPT_INT, &publish_every),
        RLHF_OPT("--weights-floats", RLHF_OPT_INT, &floats),
        RLHF_OPT("--first-version", RLHF_OPT_INT, &first_version),
        RLHF_OPT("--stats", RLHF_OPT_FLAG, &send_stats),
        RLHF_OPT_END,
    };
    int prc = rlhf_opts_parse(argc, argv, "synth_updater", usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    if (!endpoint) { fprintf(stderr, "synth_updater: error: --endpoint is required\n%s", usage); return 2; }
    FILE *out = out_path ? fopen(out_path, "a") : NULL;
    rlhf_error err;
    rlhf_error_clear(&err);
    broker_client *c;
    if (broker_client_connect_with(&c, endpoint, WIRE_ROLE_UPDATER, id, credentials, 10000, &err) != 0) {
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
