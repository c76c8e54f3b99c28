/* tests/broker/test_broker_flow.c — what flows through a running broker process: every group delivered
 * exactly once or counted stale, max_staleness 0, backpressure from a slow updater, max_generation_lag,
 * pause/resume, rejections and credit through the client API, and the weights fan-out's memory reuse.
 * Registered in the "broker" suite by tests/broker/test_broker_proc.c. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "broker/broker.h"
#include "broker/broker_int.h"
#include "tests/broker/broker_proc_test.h"
#include "tests/broker/synth_common.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static int cmpstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int contains(char **sorted, size_t n, const char *k) {
    return bsearch(&k, sorted, n, sizeof *sorted, cmpstr) != NULL;
}
/* 1 broker, 3 generators, 2 updaters: every accepted group delivered exactly once or counted stale. */
void test_exactly_once(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "exact", "\"max_staleness\": 1, \"queue_capacity\": 12"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 3 --publish-every 7 --stats");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t u1 = start_upd(&r, "u1", "--credit 3 --stats");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u1"), 0);
    pid_t g[3];
    const char *gid[3] = {"g0", "g1", "g2"};
    for (int i = 0; i < 3; i++) g[i] = start_gen(&r, gid[i], "--groups 40 --k 4 --tokens 24 --batch 2");
    for (int i = 0; i < 3; i++) CU_ASSERT_EQUAL(test_proc_wait(g[i], 40), 0);
    /* all pushed groups received by the broker, and the queue drained (delivered or dropped) */
    json_t *s = NULL;
    for (int i = 0; i < 200; i++) {
        json_decref(s);
        s = get_stats(&r);
        /* u0 publishes after its 7th group: its WEIGHTS may reach the broker after the last group */
        if (s && stat_i(s, "groups/received") == 120 && stat_i(s, "queue/depth") == 0 &&
            stat_i(s, "weights/received") >= 1)
            break;
        sleep_ms(50);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    if (stat_i(s, "groups/received") != 120 || stat_i(s, "rejected/total") != 0) {
        /* a rare failure seen once in CI: say which rejection and what the peers logged, for the next look */
        void *it = json_object_iter(s);
        printf("\n  broker stats at the failure:");
        for (; it; it = json_object_iter_next(s, it))
            if (!strncmp(json_object_iter_key(it), "rejected/", 9) || !strncmp(json_object_iter_key(it), "groups/", 7))
                printf(" %s=%lld", json_object_iter_key(it), (long long)json_integer_value(json_object_iter_value(it)));
        char cmd[700];
        snprintf(cmd, sizeof cmd, "tail -n 5 '%s'/*.log", r.dir);
        printf("\n");
        fflush(stdout);
        if (system(cmd) != 0) printf("  (no logs)\n");
    }
    CU_ASSERT_EQUAL(stat_i(s, "groups/received"), 120);
    CU_ASSERT_EQUAL(stat_i(s, "queue/depth"), 0);
    CU_ASSERT_EQUAL(stat_i(s, "rejected/total"), 0);
    CU_ASSERT_TRUE(stat_i(s, "weights/received") >= 1);
    CU_ASSERT_TRUE(stat_i(s, "prompt_stats/received") > 0);
    CU_ASSERT_EQUAL(stat_i(s, "prompt_stats/rejected"), 0);
    long dropped_accept = stat_i(s, "groups/dropped_stale_accept");
    long dropped_later = stat_i(s, "groups/dropped_stale_queued") + stat_i(s, "groups/dropped_stale_delivery");
    long delivered = stat_i(s, "groups/delivered");
    json_t *pu = peer_of(s, "u1");
    CU_ASSERT_TRUE(pu && json_is_true(json_object_get(pu, "alive")));
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u1, 10), 0);
    json_decref(s);

    char p[600];
    char **sent = NULL, **got0, **got1;
    size_t n_sent = 0;
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s.out", r.dir, gid[i]);
        char **k;
        size_t n = read_keys(p, &k);
        CU_ASSERT_EQUAL(n, 40);
        sent = realloc(sent, (n_sent + n) * sizeof *sent);
        memcpy(sent + n_sent, k, n * sizeof *k);
        n_sent += n;
        free(k);
    }
    snprintf(p, sizeof p, "%s/u0.out", r.dir);
    size_t n0 = read_keys(p, &got0);
    snprintf(p, sizeof p, "%s/u1.out", r.dir);
    size_t n1 = read_keys(p, &got1);
    /* accepted = what the replay log holds */
    snprintf(p, sizeof p, "%s/rollouts.log", r.dir);
    replay_reader *rr;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&rr, p, &e), 0);
    char **acc = NULL;
    size_t n_acc = 0;
    wire_rollout_group gg;
    while (replay_reader_next(rr, &gg, NULL, &e) == 1) {
        char k[160];
        snprintf(k, sizeof k, "%s/%llu", gg.generator_id, (unsigned long long)gg.seq);
        acc = realloc(acc, (n_acc + 1) * sizeof *acc);
        acc[n_acc++] = strdup(k);
        wire_rollout_group_free(&gg);
    }
    replay_reader_close(&rr);

    size_t n_del = n0 + n1;
    char **del = malloc((n_del + 1) * sizeof *del);
    memcpy(del, got0, n0 * sizeof *del);
    memcpy(del + n0, got1, n1 * sizeof *del);
    qsort(sent, n_sent, sizeof *sent, cmpstr);
    qsort(acc, n_acc, sizeof *acc, cmpstr);
    qsort(del, n_del, sizeof *del, cmpstr);
    CU_ASSERT_TRUE(n0 > 0 && n1 > 0); /* both updaters got work */
    CU_ASSERT_EQUAL((long)n_del, delivered);
    size_t dups = 0, not_accepted = 0, not_sent = 0;
    for (size_t i = 1; i < n_del; i++) dups += !strcmp(del[i - 1], del[i]);
    for (size_t i = 0; i < n_del; i++) not_accepted += !contains(acc, n_acc, del[i]);
    for (size_t i = 0; i < n_acc; i++) not_sent += !contains(sent, n_sent, acc[i]);
    CU_ASSERT_EQUAL(dups, 0);
    CU_ASSERT_EQUAL(not_accepted, 0);
    CU_ASSERT_EQUAL(not_sent, 0);
    /* none lost: sent = accepted + dropped at accept; accepted = delivered + dropped later */
    CU_ASSERT_EQUAL((long)n_sent, (long)n_acc + dropped_accept);
    CU_ASSERT_EQUAL((long)n_acc, (long)n_del + dropped_later);
    free_keys(sent, n_sent);
    free_keys(acc, n_acc);
    free_keys(del, n_del);
    free(got0);
    free(got1);
}

/* max_staleness = 0: only groups sampled with the newest weights get through. */
void test_staleness_zero(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "sync", "\"max_staleness\": 0, \"queue_capacity\": 8"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 2 --publish-every 3");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t g0 = start_gen(&r, "g0", "--groups 30 --k 2 --tokens 8 --batch 3");
    CU_ASSERT_EQUAL(test_proc_wait(g0, 30), 0);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(s);
        s = get_stats(&r);
        if (s && stat_i(s, "groups/received") == 30 && stat_i(s, "queue/depth") == 0) break;
        sleep_ms(50);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    long pv_newest = stat_i(s, "policy_version");
    CU_ASSERT_TRUE(pv_newest >= 1);
    CU_ASSERT_EQUAL(stat_i(s, "groups/received"),
                    stat_i(s, "groups/delivered") + stat_i(s, "groups/dropped_stale"));
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
    /* the updater only ever saw groups of the version that was newest when each was delivered:
     * versions it received never decrease and lag its own publishes by at most 0 */
    char p[600];
    snprintf(p, sizeof p, "%s/u0.out", r.dir);
    FILE *f = fopen(p, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char gen[64];
    unsigned long long seq, pv, prev = 0;
    long n = 0, published = 0;
    while (fscanf(f, "%63s %llu %llu", gen, &seq, &pv) == 3) {
        /* u0 publishes version v after its (3v)-th group. Only groups already in flight then (credit 2 < 3)
         * can carry v - 1; everything the broker delivers after seeing v carries v. */
        CU_ASSERT_TRUE(pv >= prev);
        CU_ASSERT_TRUE((long)pv >= published - 1);
        prev = pv;
        n++;
        if (n % 3 == 0) published++;
    }
    fclose(f);
    CU_ASSERT_TRUE(n > 0);
}

/* A slow updater: the queue stays within its capacity and generators are held back. */
void test_backpressure(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "slow", "\"max_staleness\": 100, \"queue_capacity\": 4"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 1 --sleep-ms 25");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t g0 = start_gen(&r, "g0", "--groups 24 --k 8 --tokens 64 --batch 2");
    pid_t g1 = start_gen(&r, "g1", "--groups 24 --k 8 --tokens 64 --batch 2");
    long max_backlog = 0, samples = 0;
    double t0 = rlhf_now();
    int done0 = 0, done1 = 0;
    while ((!done0 || !done1) && rlhf_now() - t0 < 40) {
        json_t *s = get_stats(&r);
        if (s) {
            /* groups accepted but not yet delivered, plus prompts granted but not returned */
            long backlog = stat_i(s, "queue/depth") + stat_i(s, "prompts/outstanding");
            if (backlog > max_backlog) max_backlog = backlog;
            CU_ASSERT_TRUE(stat_i(s, "groups/accepted") - stat_i(s, "groups/delivered") <= 4);
            samples++;
            json_decref(s);
        }
        int st;
        if (!done0 && waitpid(g0, &st, WNOHANG) == g0) done0 = 1;
        if (!done1 && waitpid(g1, &st, WNOHANG) == g1) done1 = 1;
        sleep_ms(30);
    }
    CU_ASSERT_TRUE(done0 && done1);
    CU_ASSERT_TRUE(samples > 5);
    CU_ASSERT_TRUE(max_backlog <= 4);
    json_t *s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_TRUE(stat_i(s, "queue/max_depth") <= 4);
    CU_ASSERT_TRUE(stat_i(s, "queue/max_depth") >= 1);
    CU_ASSERT_TRUE(stat_i(s, "prompts/deferred") > 0); /* generators had to wait */
    /* bounded memory: never more than capacity groups of this size queued */
    CU_ASSERT_TRUE(stat_i(s, "queue/max_bytes") <= 4 * (8 * 64 * 8 + 2048));
    CU_ASSERT_EQUAL(stat_i(s, "rejected/queue_overflow"), 0);
    json_decref(s);
    /* the slow updater eventually gets everything */
    for (int i = 0; i < 200; i++) {
        s = get_stats(&r);
        long d = s ? stat_i(s, "groups/delivered") : 0;
        json_decref(s);
        if (d == 48) break;
        sleep_ms(50);
    }
    s = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(s, "groups/delivered"), 48);
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
}

/* max_generation_lag 0: a generator holding older weights than the newest gets no prompts; its request
 * is parked, the arrival of the new weights ends its wait early, and once it acknowledges them the
 * parked request is served. */
void test_generation_lag(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "lag", "\"max_staleness\": 4, \"queue_capacity\": 8, "
                                                 "\"max_generation_lag\": 0"), 0);
    broker_client *gen, *upd;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "g-lag", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&upd, r.endpoint, WIRE_ROLE_UPDATER, "u-lag", r.cred, 3000, &e), 0);
    broker_client_wake_on_weights(gen, 1);
    wire_prompt_batch pb;
    /* no weights published yet: nothing to lag behind */
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 1, &pb, 3000, &e), 0);
    wire_prompt_batch_free(&pb);
    wire_weights w, got;
    wire_tensor t[2];
    synth_weights_make(&w, t, 1, 500);
    CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
    free((void *)w.data);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) { /* the two connections are not ordered: wait until the broker has v1 */
        json_decref(s);
        s = get_stats(&r);
        if (s && stat_i(s, "policy_version") == 1) break;
        sleep_ms(20);
    }
    json_decref(s);
    /* the request waits only until version 1 arrives (ends early), then stays parked: not acknowledged */
    int r1 = broker_client_request_prompts(gen, 1, &pb, 3000, &e);
    CU_ASSERT_EQUAL(r1, RLHF_ETIMEOUT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "new weights arrived"));
    CU_ASSERT_EQUAL(broker_client_request_prompts(gen, 1, &pb, 300, &e), RLHF_ETIMEOUT);
    s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "prompts/parked"), 1);
    CU_ASSERT_TRUE(stat_i(s, "prompts/deferred_generator_lag") >= 1);
    json_decref(s);
    /* taking (acknowledging) version 1 releases the parked request */
    CU_ASSERT_EQUAL_FATAL(broker_client_poll_weights(gen, &got, 3000, &e), 1);
    CU_ASSERT_EQUAL(got.version, 1);
    wire_weights_free(&got);
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 1, &pb, 3000, &e), 0);
    CU_ASSERT_EQUAL(pb.n, 1);
    wire_prompt_batch_free(&pb);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    broker_client_close(&gen);
    broker_client_close(&upd);
}

/* Client API against a broker process: pause/resume parks and answers the same request; rejections
 * (future version, old weights, unknown prompt) are counted and reported; new weights purge queued
 * groups that became too stale; credit delivers what is left. */
void test_control_and_rejections(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "ctl", "\"max_staleness\": 1, \"queue_capacity\": 8"), 0);
    broker_client *gen, *upd;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "g-ctl", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&upd, r.endpoint, WIRE_ROLE_UPDATER, "u-ctl", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_welcome(gen)->max_staleness, 1);
    CU_ASSERT_EQUAL(broker_client_welcome(gen)->has_weights, 0);
    /* paused: the request is held, not answered */
    /* CONTROL comes from the run's control credential (an observer), not from a generator or updater */
    broker_client *ctl;
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&ctl, r.endpoint, WIRE_ROLE_OBSERVER, "ctl", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_control(ctl, WIRE_CONTROL_PAUSE, "test", &e), 0);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) { /* other connections are not ordered with it: wait until it took effect */
        json_decref(s);
        s = get_stats(&r);
        if (s && json_is_true(json_object_get(s, "paused"))) break;
        sleep_ms(20);
    }
    json_decref(s);
    wire_prompt_batch pb;
    CU_ASSERT_EQUAL(broker_client_request_prompts(gen, 2, &pb, 300, &e), RLHF_ETIMEOUT);
    s = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(s, "prompts/parked"), 1);
    CU_ASSERT_TRUE(json_is_true(json_object_get(s, "paused")));
    json_decref(s);
    CU_ASSERT_EQUAL(broker_client_control(ctl, WIRE_CONTROL_RESUME, "test", &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 2, &pb, 3000, &e), 0);
    CU_ASSERT_EQUAL(pb.request_id, 1); /* the held request, not a second one */
    CU_ASSERT_EQUAL(pb.n, 2);
    CU_ASSERT_PTR_NOT_NULL(pb.prompts[0].record);
    /* a group claiming a version nobody published */
    wire_rollout_group g;
    synth_group_make(&g, "g-ctl", 0, 5, 2, 4, pb.prompts[0].id, pb.prompts[0].text);
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    /* version 0 is accepted and queued (no credit yet) */
    synth_group_make(&g, "g-ctl", 1, 0, 2, 4, pb.prompts[1].id, pb.prompts[1].text);
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    wire_prompt_batch_free(&pb);
    /* weights v1: the generator gets them; v1 again is refused */
    wire_weights w, got;
    wire_tensor t[2];
    synth_weights_make(&w, t, 1, 5000);
    CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
    /* into a caller's buffer: too small is an error and the version stays pending */
    float small[100], params[5000];
    CU_ASSERT_EQUAL(broker_client_poll_weights_into(gen, &got, small, sizeof small, 3000, &e), RLHF_EINVAL);
    CU_ASSERT_EQUAL_FATAL(broker_client_poll_weights_into(gen, &got, params, sizeof params, 0, &e), 1);
    CU_ASSERT_EQUAL(got.version, 1);
    CU_ASSERT_PTR_EQUAL(got.data, (const uint8_t *)params);
    CU_ASSERT_EQUAL(got.n_tensors, 2);
    CU_ASSERT_TRUE(synth_weights_check(&got));
    wire_weights_free(&got); /* frees the table, not the caller's buffer */
    CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
    wire_rollout_group rg;
    CU_ASSERT_EQUAL(broker_client_recv_group(upd, &rg, 500, &e), 0); /* takes in the ERROR reply, fails nothing */
    rlhf_error last;
    CU_ASSERT_EQUAL(broker_client_rejections(upd, &last), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(last.msg, "weights_not_newer"));
    /* the ERROR for the future-version group comes on the generator's connection, and the broker may
     * have served the updater's weights first (its connections are not ordered with each other): read
     * the generator's incoming messages until it is in (a weights poll takes in whatever arrives) */
    for (int i = 0; i < 60 && broker_client_rejections(gen, NULL) < 1; i++) {
        wire_weights extra;
        if (broker_client_poll_weights(gen, &extra, 50, &e) == 1) wire_weights_free(&extra);
    }
    CU_ASSERT_EQUAL(broker_client_rejections(gen, &last), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(last.msg, "future_version"));
    free((void *)w.data);
    /* v2, v3: the queued version-0 group now lags 3 > 1 and is purged */
    for (uint64_t v = 2; v <= 3; v++) {
        synth_weights_make(&w, t, v, 5000);
        CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
        free((void *)w.data);
    }
    /* stats for a prompt the dataset does not have */
    float rw[2] = {1, 0}, tot[2] = {1, 0};
    wire_prompt_stats st = {"no-such-prompt", 3, 2, 1, NULL, rw, tot};
    CU_ASSERT_EQUAL(broker_client_send_prompt_stats(upd, &st, &e), 0);
    sleep_ms(300);
    s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "rejected/future_version"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "rejected/weights_not_newer"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "groups/accepted"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "groups/dropped_stale_queued"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "queue/depth"), 0);
    CU_ASSERT_EQUAL(stat_i(s, "policy_version"), 3);
    CU_ASSERT_EQUAL(stat_i(s, "prompt_stats/received"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "prompt_stats/rejected"), 1);
    json_decref(s);
    /* a fresh group of the newest version goes to the updater once it gives credit */
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 1, &pb, 3000, &e), 0);
    wire_weights_free(&got);
    while (broker_client_poll_weights(gen, &got, 500, &e) == 1) {
        uint64_t v = got.version;
        wire_weights_free(&got);
        if (v == 3) break;
    }
    synth_group_make(&g, "g-ctl", 2, 3, 2, 4, pb.prompts[0].id, pb.prompts[0].text);
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    wire_prompt_batch_free(&pb);
    CU_ASSERT_EQUAL(broker_client_recv_group(upd, &rg, 300, &e), 0); /* no credit: nothing */
    CU_ASSERT_EQUAL(broker_client_grant_credit(upd, 1, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_recv_group(upd, &rg, 3000, &e), 1);
    CU_ASSERT_EQUAL(rg.seq, 2);
    CU_ASSERT_EQUAL(rg.policy_version, 3);
    CU_ASSERT_TRUE(synth_group_check(&rg));
    wire_rollout_group_free(&rg);
    /* stop: both clients learn it */
    CU_ASSERT_EQUAL(broker_client_control(ctl, WIRE_CONTROL_STOP, "done", &e), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(broker_client_recv_group(upd, &rg, 3000, &e), RLHF_ESTATE);
    CU_ASSERT_TRUE(broker_client_stopped(upd));
    broker_client_close(&gen);
    broker_client_close(&upd);
    broker_client_close(&ctl);
}

#ifndef __SANITIZE_ADDRESS__ /* ASan replaces malloc: mallopt does not apply there */
/* What a ZeroMQ I/O thread does with a received weights version: 10 frames of 4 MiB malloc'ed, written,
 * freed when the next version arrives. Returns the page faults of the second version. */
static void *weights_like_allocs(void *arg) {
    long *faults = arg;
    enum { CHUNKS = 10, CHUNK = 4 << 20 };
    long before = 0;
    for (int version = 0; version < 2; version++) {
        struct rusage ru;
        getrusage(RUSAGE_THREAD, &ru);
        before = ru.ru_minflt;
        char *c[CHUNKS];
        for (int i = 0; i < CHUNKS; i++) {
            c[i] = malloc(CHUNK);
            if (!c[i]) return NULL;
            memset(c[i], version + 1, CHUNK);
        }
        for (int i = 0; i < CHUNKS; i++) free(c[i]);
    }
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    *faults = ru.ru_minflt - before;
    return NULL;
}

/* in a child (mallopt is process-wide): page faults of the second version, with or without the setting */
static long second_version_faults(int keep) {
    int p[2];
    if (pipe(p) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (keep) {
            broker_keep_freed_memory();
        } else { /* glibc's default thresholds (this test process may have set others: brokers run in it) */
            mallopt(M_MMAP_THRESHOLD, 128 * 1024);
            mallopt(M_TRIM_THRESHOLD, 128 * 1024);
        }
        long faults = -1;
        pthread_t t;
        if (pthread_create(&t, NULL, weights_like_allocs, &faults) == 0) pthread_join(t, NULL);
        if (write(p[1], &faults, sizeof faults) != sizeof faults) _exit(1);
        _exit(0);
    }
    close(p[1]);
    long faults = -1;
    if (read(p[0], &faults, sizeof faults) != sizeof faults) faults = -1;
    close(p[0]);
    waitpid(pid, NULL, 0);
    return faults;
}

/* broker_keep_freed_memory: a second 40 MB version reuses the first one's pages (the fan-out's page
 * faults); without it, the same allocations fault in most of their ~10k pages again. */
void test_keep_freed_memory(void) {
    long with = second_version_faults(1), without = second_version_faults(0);
    CU_ASSERT(with >= 0);
    CU_ASSERT(with < 500);
    CU_ASSERT(without > 5000);
}
#endif
