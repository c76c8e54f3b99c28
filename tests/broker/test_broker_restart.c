/* tests/broker/test_broker_restart.c — processes that die and come back: kill -9 a generator and
 * restart it, SIGTERM flushing the replay log, the prompt selector's state across a broker restart, and
 * kill -9 of the broker itself with clients rejoining. Registered in the "broker" suite by
 * tests/broker/test_broker_proc.c. */
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

/* kill -9 a generator mid-stream: the broker keeps serving; a restarted one gets the newest weights. */
void test_kill_and_restart(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "kill", "\"max_staleness\": 4, \"queue_capacity\": 16"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 4 --publish-every 5 --weights-floats 100000");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t victim = start_gen(&r, "g-victim", "--groups 0 --k 4 --tokens 16 --delay-ms 10");
    pid_t g1 = start_gen(&r, "g1", "--groups 60 --k 4 --tokens 16 --delay-ms 5");
    char p[600];
    snprintf(p, sizeof p, "%s/g-victim.out", r.dir);
    for (int i = 0; i < 300; i++) {
        char **k;
        size_t n = read_keys(p, &k);
        free_keys(k, n);
        if (n >= 8) break;
        sleep_ms(20);
    }
    CU_ASSERT_EQUAL(kill(victim, SIGKILL), 0);
    CU_ASSERT_EQUAL(test_proc_wait(victim, 5), 128 + SIGKILL);
    /* the other generator finishes, every one of its groups reaches the broker */
    CU_ASSERT_EQUAL(test_proc_wait(g1, 40), 0);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(s);
        s = get_stats(&r);
        json_t *pv = s ? peer_of(s, "g-victim") : NULL;
        if (pv && !json_is_true(json_object_get(pv, "alive")) && stat_i(s, "queue/depth") == 0) break;
        sleep_ms(50);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    json_t *pv = peer_of(s, "g-victim");
    CU_ASSERT_PTR_NOT_NULL_FATAL(pv);
    CU_ASSERT_FALSE(json_is_true(json_object_get(pv, "alive"))); /* declared dead by heartbeat timeout */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(pv, "outstanding")), 0);
    json_t *p1 = peer_of(s, "g1");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(p1, "groups")), 60);
    long newest = stat_i(s, "policy_version");
    CU_ASSERT_TRUE(newest >= 2);
    json_decref(s);
    /* restart: it receives the newest version right after the handshake */
    pid_t again = start_gen(&r, "g-victim", "--check-weights");
    CU_ASSERT_EQUAL(test_proc_wait(again, 10), 0);
    FILE *f = fopen(p, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[256], last[256] = "";
    while (fgets(line, sizeof line, f)) snprintf(last, sizeof last, "%s", line);
    fclose(f);
    char want[64];
    snprintf(want, sizeof want, "weights %ld\n", newest);
    CU_ASSERT_STRING_EQUAL(last, want);
    s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    pv = peer_of(s, "g-victim");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(pv, "restarts")), 1);
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
}

/* SIGTERM: the broker stops cleanly, tells peers, and the log holds every accepted group. */
void test_sigterm_flushes(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "term", "\"replay\": {\"fsync\": \"never\"}"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 100");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t g0 = start_gen(&r, "g0", "--groups 20 --k 2 --tokens 8");
    CU_ASSERT_EQUAL(test_proc_wait(g0, 20), 0);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(s);
        s = get_stats(&r);
        if (s && stat_i(s, "groups/delivered") == 20) break;
        sleep_ms(30);
    }
    json_decref(s);
    kill(r.broker, SIGTERM);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0); /* the updater was told to stop */
    char p[600];
    snprintf(p, sizeof p, "%s/rollouts.log", r.dir);
    replay_reader *rr;
    rlhf_error e;
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&rr, p, &e), 0);
    wire_rollout_group g;
    int n = 0;
    while (replay_reader_next(rr, &g, NULL, &e) == 1) {
        n++;
        wire_rollout_group_free(&g);
    }
    CU_ASSERT_EQUAL(replay_reader_torn(rr, NULL, NULL), 0);
    replay_reader_close(&rr);
    CU_ASSERT_EQUAL(n, 20);
    /* replay-cat prints one JSON line per record */
    char cmd[5000];
    snprintf(cmd, sizeof cmd, "'%s/rlhf' replay-cat --meta '%s' 2>/dev/null | wc -l", bindir, p);
    FILE *f = popen(cmd, "r");
    int lines = -1;
    CU_ASSERT_EQUAL(fscanf(f, "%d", &lines), 1);
    pclose(f);
    CU_ASSERT_EQUAL(lines, 20);
}

/* The prompt selector's state outlives the broker process: SIGTERM saves RUN_DIR/selector_state.json,
 * a broker started on the same run dir continues from it (usage counts and fed-back groups not
 * reset); a state that does not fit the dataset stops the broker with an error naming the file. */
void test_selector_state_restart(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "selstate", NULL), 0);
    json_t *s = get_stats(&r);
    CU_ASSERT(s && json_is_false(json_object_get(s, "selector/restored")));
    json_decref(s);
    pid_t u0 = start_upd(&r, "u0", "--credit 100 --stats");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t g0 = start_gen(&r, "g0", "--groups 20 --k 2 --tokens 8");
    CU_ASSERT_EQUAL(test_proc_wait(g0, 20), 0);
    long served = -1, groups = -1;
    s = NULL;
    for (int i = 0; i < 200; i++) {
        json_decref(s);
        s = get_stats(&r);
        json_t *sel = json_object_get(s, "selector");
        served = (long)json_integer_value(json_object_get(sel, "prompts/served"));
        groups = (long)json_integer_value(json_object_get(sel, "prompts/groups"));
        if (groups == 20) break;
        sleep_ms(30);
    }
    CU_ASSERT_EQUAL(groups, 20);
    CU_ASSERT(served >= 20);
    json_t *sel = json_object_get(s, "selector");
    CU_ASSERT(json_is_number(json_object_get(sel, "prompts/zero_spread_share")));
    CU_ASSERT(json_is_number(json_object_get(sel, "prompts/mean_cohesion")));
    CU_ASSERT(json_number_value(json_object_get(sel, "prompts/sampling_entropy")) > 0);
    json_decref(s);
    kill(r.broker, SIGTERM);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
    char p[600];
    snprintf(p, sizeof p, "%s/%s", r.dir, BROKER_SELECTOR_STATE);
    json_t *st = json_load_file(p, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "served")), served);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "updates")), 20);
    json_decref(st);

    /* same run dir, new process: the counts continue */
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "selstate", NULL), 0);
    s = get_stats(&r);
    CU_ASSERT(s && json_is_true(json_object_get(s, "selector/restored")));
    sel = json_object_get(s, "selector");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(sel, "prompts/served")), served);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(sel, "prompts/groups")), 20);
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);

    /* a state naming prompts this dataset does not have: refused, file named */
    run bad;
    snprintf(bad.dir, sizeof bad.dir, "%s/selstate_bad", tmpdir);
    mkdir(bad.dir, 0755);
    snprintf(p, sizeof p, "%s/%s", bad.dir, BROKER_SELECTOR_STATE);
    FILE *f = fopen(p, "w");
    fputs("{\"version\": 1, \"policy\": \"uniform\", \"n_prompts\": 3}\n", f);
    fclose(f);
    CU_ASSERT_NOT_EQUAL(start_broker(&bad, "selstate_bad", NULL), 0);
    char log[600];
    snprintf(log, sizeof log, "%s/broker.log", bad.dir);
    char *txt = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(log, &txt, &n, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(txt, BROKER_SELECTOR_STATE));
    free(txt);
}

/* kill -9 the broker and start it again on the same endpoint: clients say HELLO again by themselves
 * (the updater re-grants its credit), the replay log is recovered and appended to. */
void test_broker_restart(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "restart", "\"max_staleness\": 10"), 0);
    broker_client *gen, *upd;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "g-rs", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&upd, r.endpoint, WIRE_ROLE_UPDATER, "u-rs", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_grant_credit(upd, 10, &e), 0);
    uint64_t seq = 0;
    wire_prompt_batch pb;
    wire_rollout_group g, rg;
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            kill(r.broker, SIGKILL);
            CU_ASSERT_EQUAL(test_proc_wait(r.broker, 5), 128 + SIGKILL);
            char cfg[600], log[600], bin[4200];
            snprintf(cfg, sizeof cfg, "%s/config.json", r.dir);
            snprintf(log, sizeof log, "%s/broker.log", r.dir);
            snprintf(bin, sizeof bin, "%s/rlhf", bindir);
            char *argv[] = {bin, "broker", "--config", cfg, "--run-dir", r.dir, NULL};
            r.broker = spawn(argv, log);
        }
        int got = 0;
        for (int attempt = 0; attempt < 20 && !got; attempt++) {
            int rc = broker_client_request_prompts(gen, 3, &pb, 500, &e);
            if (rc == 0) got = 1;
            else CU_ASSERT_EQUAL(rc, RLHF_ETIMEOUT);
        }
        CU_ASSERT_TRUE_FATAL(got);
        for (uint32_t i = 0; i < pb.n; i++) {
            synth_group_make(&g, "g-rs", seq++, 0, 2, 4, pb.prompts[i].id, pb.prompts[i].text);
            CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
            synth_group_free(&g);
        }
        for (uint32_t i = 0; i < pb.n; i++) {
            CU_ASSERT_EQUAL_FATAL(broker_client_recv_group(upd, &rg, 5000, &e), 1);
            CU_ASSERT_TRUE(synth_group_check(&rg));
            wire_rollout_group_free(&rg);
        }
        wire_prompt_batch_free(&pb);
    }
    json_t *s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "groups/delivered"), 3); /* the new broker's share */
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    broker_client_close(&gen);
    broker_client_close(&upd);
    char p[600];
    snprintf(p, sizeof p, "%s/rollouts.log", r.dir);
    replay_reader *rr;
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&rr, p, &e), 0);
    int n = 0;
    while (replay_reader_next(rr, &g, NULL, &e) == 1) {
        CU_ASSERT_EQUAL(g.seq, (uint64_t)n);
        wire_rollout_group_free(&g);
        n++;
    }
    replay_reader_close(&rr);
    CU_ASSERT_EQUAL(n, 6);
}
