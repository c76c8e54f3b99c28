/* bench/bench_rm.c — reward-model scoring throughput (sequences/s): the in-process "rm" source vs the
 * "remote_rm" source talking to `rlhf serve --reward-model` on loopback, both through the reward pipeline
 * on the same texts, same RM, same batch size. Also checks they agree.
 *
 *   bench_rm [--n 512] [--batch 32] [--reps 3]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "common/common.h"
#include "model/model.h"
#include "prompts/prompts.h"
#include "rewards/rewards.h"
#include "rewards/rm/rm.h"
#include "tests/peer/peer.h"

static double run(reward_pipeline *p, const rlhf_reward_item *items, int n, double *scores) {
    reward_scores sc = {0};
    rlhf_error err = {0};
    double t0 = rlhf_now();
    if (reward_pipeline_score(p, items, (size_t)n, &sc, &err) != 0) {
        rlhf_error_print("bench_rm", &err);
        exit(1);
    }
    double dt = rlhf_now() - t0;
    for (int i = 0; i < n; i++) {
        if (sc.status[i].code != RLHF_REWARD_OK) {
            fprintf(stderr, "bench_rm: error: item %d: %s\n", i, sc.status[i].reason);
            exit(1);
        }
        scores[i] = sc.raw[i];
    }
    reward_scores_free(&sc);
    return dt;
}

int main(int argc, char **argv) {
    int n = 512, batch = 32, reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n")) n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench_rm [--n 512] [--batch 32] [--reps 3]\n");
            return 2;
        }
    }
    if (n < 1 || batch < 1 || reps < 1 || reps > 20) return 2;
    char dir[] = "/tmp/bench-rm-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char base[128], rmp[128], prefs[128];
    snprintf(base, sizeof base, "%s/base.safetensors", dir);
    snprintf(rmp, sizeof rmp, "%s/rm.safetensors", dir);
    snprintf(prefs, sizeof prefs, "%s/prefs.jsonl", dir);
    rlhf_error err = {0};
    model_config cfg = {.dim = 128, .n_layers = 4, .n_heads = 4, .n_kv_heads = 4, .ffn_dim = 384, .vocab_size = 259,
                        .max_seq_len = 128, .rope_theta = 10000, .norm_eps = 1e-5f};
    model *m = NULL;
    reward_model *rm = NULL;
    if (model_create(&m, &cfg, &err) || (model_init_random(m, 1), model_save(m, base, &err)) ||
        reward_model_from_base(&rm, base, batch, 1, &err) || reward_model_save(rm, rmp, &err) ||
        prompt_capitals_write(prefs, n, 3, &err)) {
        rlhf_error_print("bench_rm", &err);
        return 1;
    }
    model_destroy(&m);
    reward_model_destroy(&rm);
    rm_pair *pr = NULL;
    int np = 0;
    if (rm_pairs_load(prefs, &pr, &np, &err)) return 1;
    rlhf_reward_item *items = calloc((size_t)n, sizeof *items);
    for (int i = 0; i < n; i++)
        items[i] = (rlhf_reward_item){.prompt = pr[i].prompt, .completion = i % 2 ? pr[i].chosen : pr[i].rejected,
                                      .record_json = "{}", .group_id = -1};

    char bin[4096], bs[16];
    peer_bin_path("rlhf", bin, sizeof bin);
    snprintf(bs, sizeof bs, "%d", batch);
    char *sargv[] = {bin, "serve", "--port", "0", "--reward-model", rmp, "--max-batch", bs, NULL};
    peer srv;
    if (peer_start(&srv, sargv, 30.0) != 0) {
        fprintf(stderr, "bench_rm: error: cannot start rlhf serve\n");
        return 1;
    }
    char local_cfg[512], remote_cfg[512];
    snprintf(local_cfg, sizeof local_cfg, "[{\"type\":\"rm\",\"path\":\"%s\",\"batch_size\":%d,\"timeout_ms\":600000}]",
             rmp, batch);
    snprintf(remote_cfg, sizeof remote_cfg,
             "[{\"type\":\"remote_rm\",\"url\":\"%s\",\"batch_size\":%d,\"timeout_ms\":600000}]", srv.base_url, batch);
    reward_pipeline *pl = NULL, *pr_remote = NULL;
    if (reward_pipeline_create_str(&pl, local_cfg, "local", &err) ||
        reward_pipeline_create_str(&pr_remote, remote_cfg, "remote", &err)) {
        rlhf_error_print("bench_rm", &err);
        return 1;
    }
    double *s_local = malloc((size_t)n * sizeof *s_local), *s_remote = malloc((size_t)n * sizeof *s_remote);
    double t_local[20], t_remote[20];
    for (int r = 0; r < reps; r++) { /* interleaved so machine noise hits both */
        t_local[r] = run(pl, items, n, s_local);
        t_remote[r] = run(pr_remote, items, n, s_remote);
    }
    double maxdiff = 0;
    for (int i = 0; i < n; i++) maxdiff = fmax(maxdiff, fabs(s_local[i] - s_remote[i]));
    qsort(t_local, (size_t)reps, sizeof t_local[0], cmp_double);
    qsort(t_remote, (size_t)reps, sizeof t_remote[0], cmp_double);
    double ql = n / t_local[reps / 2], qr = n / t_remote[reps / 2];
    printf("RM scoring, %d sequences (synthetic prompt + completion), batch %d, RM dim=128 L=4, median of %d runs\n",
           n, batch, reps);
    printf("%-28s %12.1f seq/s\n", "in-process (rm)", ql);
    printf("%-28s %12.1f seq/s   (%.2fx of in-process)\n", "remote (remote_rm + serve)", qr, qr / ql);
    printf("max |in-process - remote| = %.3g\n", maxdiff);
    reward_pipeline_destroy(&pl);
    reward_pipeline_destroy(&pr_remote);
    peer_stop(&srv);
    rm_pairs_free(pr, np);
    free(items);
    free(s_local);
    free(s_remote);
    unlink(base);
    unlink(rmp);
    unlink(prefs);
    rmdir(dir);
    return 0;
}
