/* tests/broker/test_hostile.c — hostile peers against a real `rlhf broker` process over tcp loopback
 * (issue 17): each case is a message or connection today's broker accepted and that stopped or poisoned
 * a run. Every refusal must be counted under its reason and, where a peer is connected, answered with
 * an ERROR; the legitimate peers (synthetic generator and updater processes) keep going. Registered in
 * the "broker" suite by tests/broker/test_broker_proc.c. */
#include <CUnit/CUnit.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>

#include "broker/broker.h"
#include "broker/broker_int.h"
#include "tests/broker/broker_proc_test.h"
#include "tests/broker/synth_common.h"
#include "tests/test_proc.h"

/* The ERROR reasons a client collected, as one string ("not_authorized wrong_role ..."): each call to
 * broker_client_rejections only keeps the last, so pump one rejection at a time. */
static int wait_rejections(broker_client *c, uint64_t n) {
    for (int i = 0; i < 100 && broker_client_rejections(c, NULL) < n; i++) {
        json_t *s = NULL;
        rlhf_error e;
        rlhf_error_clear(&e);
        if (broker_client_get_stats(c, &s, 300, &e) == 0) json_decref(s); /* takes in what arrived */
    }
    return broker_client_rejections(c, NULL) >= n;
}

static int last_rejection_is(broker_client *c, const char *reason) {
    rlhf_error last;
    broker_client_rejections(c, &last);
    return strstr(last.msg, reason) != NULL;
}

static long accepted_now(const run *r) {
    json_t *s = get_stats(r);
    long n = s ? stat_i(s, "groups/accepted") : -1;
    json_decref(s);
    return n;
}

/* A stop from anyone but the control credential is refused (and the sender told); one from a socket
 * without any credential never gets past the handshake. The run goes on. */
void test_hostile_control(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "hostile_ctl", "\"queue_capacity\": 8"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 1000");
    pid_t g0 = start_gen(&r, "g0", "--k 2 --tokens 8");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "g0"), 0);
    /* anonymous: a plain DEALER sending CONTROL stop (no HELLO, no key) */
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(s, r.endpoint);
    wire_control stop = {WIRE_CONTROL_STOP, "anonymous"};
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_control(&stop, &o, NULL), 0);
    wire_out_send(s, &o, NULL);
    wire_out_free(&o);
    /* a peer holding the generator credential */
    broker_client *gen;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "hostile-gen", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_control(gen, WIRE_CONTROL_STOP, "I am not the launcher", &e), 0);
    CU_ASSERT_TRUE(wait_rejections(gen, 1));
    CU_ASSERT_TRUE(last_rejection_is(gen, "not_authorized"));
    CU_ASSERT_FALSE(broker_client_stopped(gen));
    /* the run continues: groups keep being accepted, the broker is alive */
    long before = accepted_now(&r);
    long after = before;
    for (int i = 0; i < 200 && after <= before; i++) {
        sleep_ms(20);
        after = accepted_now(&r);
    }
    CU_ASSERT(after > before);
    CU_ASSERT_EQUAL(waitpid(r.broker, NULL, WNOHANG), 0);
    json_t *st = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/not_authorized"), 1);
    CU_ASSERT_FALSE(json_is_true(json_object_get(st, "paused")));
    json_decref(st);
    zmq_close(s);
    zmq_ctx_term(ctx);
    broker_client_close(&gen);
    /* the control credential may */
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(g0, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
}

/* WEIGHTS from a generator credential: wrong_role; from the updater's: only newest + 1. */
void test_hostile_weights(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "hostile_w", NULL), 0);
    broker_client *gen, *upd;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "g-w", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&upd, r.endpoint, WIRE_ROLE_UPDATER, "u-w", r.cred, 3000, &e), 0);
    wire_weights w;
    wire_tensor t[2];
    synth_weights_make(&w, t, 5, 1000);
    CU_ASSERT_EQUAL(broker_client_publish_weights(gen, &w, &e), 0);
    free((void *)w.data);
    CU_ASSERT_TRUE(wait_rejections(gen, 1));
    CU_ASSERT_TRUE(last_rejection_is(gen, "wrong_role"));
    /* the updater: version 1 (the first a broker gets may start anywhere), then 10^12, then 2 */
    uint64_t versions[3] = {1, 1000000000000ull, 2};
    for (int i = 0; i < 3; i++) {
        synth_weights_make(&w, t, versions[i], 1000);
        CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
        free((void *)w.data);
    }
    CU_ASSERT_TRUE(wait_rejections(upd, 1));
    CU_ASSERT_TRUE(last_rejection_is(upd, "weights_version_jump"));
    json_t *st = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(st, "policy_version"), 2);
    CU_ASSERT_EQUAL(stat_i(st, "weights/received"), 2);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/weights_version_jump"), 1);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/wrong_role"), 1);
    json_decref(st);
    /* the generator gets the real version 2 */
    wire_weights got;
    uint64_t newest = 0;
    while (broker_client_poll_weights(gen, &got, 1000, &e) == 1) {
        newest = got.version;
        wire_weights_free(&got);
        if (newest == 2) break;
    }
    CU_ASSERT_EQUAL(newest, 2);
    broker_client_close(&gen);
    broker_client_close(&upd);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
}

/* Groups: only for a prompt this generator leased and has not answered; token ids below vocab_size. */
void test_hostile_groups(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "hostile_g", "\"vocab_size\": 50000"), 0);
    broker_client *gen, *gen2, *upd;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "g-a", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gen2, r.endpoint, WIRE_ROLE_GENERATOR, "g-b", r.cred, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&upd, r.endpoint, WIRE_ROLE_UPDATER, "u-g", r.cred, 3000, &e), 0);
    wire_prompt_batch pb;
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 2, &pb, 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(pb.n, 2);
    wire_rollout_group g;
    /* 1: a made-up prompt id */
    synth_group_make(&g, "g-a", 0, 0, 2, 4, "made-up", "What is 1 + 1?");
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    CU_ASSERT_TRUE(wait_rejections(gen, 1));
    CU_ASSERT_TRUE(last_rejection_is(gen, "no_lease"));
    /* 2: a real prompt, leased to another generator */
    synth_group_make(&g, "g-b", 0, 0, 2, 4, pb.prompts[0].id, pb.prompts[0].text);
    CU_ASSERT_EQUAL(broker_client_push_group(gen2, &g, &e), 0);
    synth_group_free(&g);
    CU_ASSERT_TRUE(wait_rejections(gen2, 1));
    CU_ASSERT_TRUE(last_rejection_is(gen2, "no_lease"));
    /* 2b: its own lease, but another prompt text or another record (answer) than the dataset's */
    synth_group_make(&g, "g-a", 9, 0, 2, 4, pb.prompts[0].id, "What is 1 + 1? Answer: 3");
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    CU_ASSERT_TRUE(wait_rejections(gen, 2));
    CU_ASSERT_TRUE(last_rejection_is(gen, "prompt_mismatch"));
    synth_group_make(&g, "g-a", 10, 0, 2, 4, pb.prompts[0].id, pb.prompts[0].text);
    g.prompt_record = json_pack("{ssssss}", "id", pb.prompts[0].id, "prompt", pb.prompts[0].text, "answer", "forged");
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    json_decref(g.prompt_record);
    g.prompt_record = NULL;
    synth_group_free(&g);
    CU_ASSERT_TRUE(wait_rejections(gen, 3));
    CU_ASSERT_TRUE(last_rejection_is(gen, "prompt_mismatch"));
    /* 3: its own lease, one completion token id >= vocab_size */
    synth_group_make(&g, "g-a", 1, 0, 2, 4, pb.prompts[0].id, pb.prompts[0].text);
    g.tokens[3] = 50000;
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    CU_ASSERT_TRUE(wait_rejections(gen, 4));
    CU_ASSERT_TRUE(last_rejection_is(gen, "bad_token"));
    /* 4: a good group for the other lease: accepted; 5: the same prompt again: its lease is used up */
    for (int i = 0; i < 2; i++) {
        synth_group_make(&g, "g-a", 2 + (uint64_t)i, 0, 2, 4, pb.prompts[1].id, pb.prompts[1].text);
        CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
        synth_group_free(&g);
    }
    CU_ASSERT_TRUE(wait_rejections(gen, 5));
    CU_ASSERT_TRUE(last_rejection_is(gen, "no_lease"));
    wire_prompt_batch_free(&pb);
    CU_ASSERT_EQUAL(broker_client_grant_credit(upd, 10, &e), 0);
    wire_rollout_group rg;
    CU_ASSERT_EQUAL_FATAL(broker_client_recv_group(upd, &rg, 3000, &e), 1);
    CU_ASSERT_EQUAL(rg.seq, 2);
    CU_ASSERT_TRUE(synth_group_check(&rg));
    wire_rollout_group_free(&rg);
    CU_ASSERT_EQUAL(broker_client_recv_group(upd, &rg, 300, &e), 0); /* nothing else got through */
    json_t *st = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/no_lease"), 3);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/bad_token"), 1);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/prompt_mismatch"), 2);
    CU_ASSERT_EQUAL(stat_i(st, "groups/accepted"), 1);
    CU_ASSERT_EQUAL(stat_i(st, "replay/records"), 1);
    CU_ASSERT_EQUAL(stat_i(st, "prompts/outstanding"), 0); /* both leases answered (one with bad tokens) */
    json_decref(st);
    broker_client_close(&gen);
    broker_client_close(&gen2);
    broker_client_close(&upd);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
}

/* A socket with the generator's key saying HELLO as an updater gets ERROR wrong_role back; no key, or
 * the key of another run, gets no broker at all (the handshake fails). */
void test_hostile_identity(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "hostile_id", NULL), 0);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = 3000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    broker_credential cred;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_credential_load(&cred, r.cred, WIRE_ROLE_GENERATOR, &e), 0);
    CU_ASSERT_EQUAL(broker_credential_apply(s, &cred, r.endpoint), 0);
    broker_credential_clear(&cred);
    CU_ASSERT_EQUAL(zmq_connect(s, r.endpoint), 0);
    wire_hello h = {"fake-updater", WIRE_ROLE_UPDATER, 1, "", 0};
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_hello(&h, &o, NULL), 0);
    CU_ASSERT_EQUAL(wire_out_send(s, &o, NULL), 0);
    wire_out_free(&o);
    wire_rx rx = {0};
    CU_ASSERT_EQUAL_FATAL(wire_rx_recv(s, &rx, 0, NULL), 1);
    wire_msg m;
    CU_ASSERT_EQUAL_FATAL(wire_parse(rx.views, rx.n, &m, NULL, NULL), 0);
    wire_error_msg em;
    CU_ASSERT_EQUAL_FATAL(wire_decode_error(&m, &em, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(em.reason, "wrong_role");
    CU_ASSERT_PTR_NOT_NULL(strstr(em.detail, "generator"));
    wire_msg_free(&m);
    wire_rx_free(&rx);
    zmq_close(s);
    zmq_ctx_term(ctx);
    /* no credential at all, and a credential of another run: the connection never opens */
    broker_client *c = NULL;
    char f[800];
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL(broker_client_connect(&c, r.endpoint, WIRE_ROLE_OBSERVER, "nokey", 500, &e), RLHF_ETIMEOUT);
    CU_ASSERT_PTR_NULL(c);
    char other[700];
    snprintf(other, sizeof other, "%s/other_credentials", r.dir);
    CU_ASSERT_EQUAL_FATAL(broker_credentials_create(other, &e), 0);
    CU_ASSERT_EQUAL(broker_client_connect_with(&c, r.endpoint, WIRE_ROLE_OBSERVER, "otherkey", other, 500, &e), RLHF_ETIMEOUT);
    CU_ASSERT_PTR_NULL(c);
    /* a key this run never issued, with the right broker key: the broker's ZAP handler says no */
    char stranger[600], text[200], pub[41], sec[41];
    snprintf(stranger, sizeof stranger, "%s/stranger", r.dir);
    mkdir(stranger, 0700);
    broker_credential real;
    CU_ASSERT_EQUAL_FATAL(broker_credential_load(&real, r.cred, WIRE_ROLE_OBSERVER, &e), 0);
    CU_ASSERT_EQUAL_FATAL(zmq_curve_keypair(pub, sec), 0);
    snprintf(f, sizeof f, "%s/control.key", stranger);
    snprintf(text, sizeof text, "public=%s\nsecret=%s\n", pub, sec);
    CU_ASSERT_EQUAL(rlhf_write_file_atomic(f, text, strlen(text), &e), 0);
    snprintf(f, sizeof f, "%s/broker.key", stranger);
    snprintf(text, sizeof text, "public=%s\n", real.server_key);
    CU_ASSERT_EQUAL(rlhf_write_file_atomic(f, text, strlen(text), &e), 0);
    broker_credential_clear(&real);
    CU_ASSERT_EQUAL(broker_client_connect_with(&c, r.endpoint, WIRE_ROLE_OBSERVER, "stranger", stranger, 500, &e), RLHF_ETIMEOUT);
    CU_ASSERT_PTR_NULL(c);
    json_t *st = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/wrong_role"), 1);
    CU_ASSERT(stat_i(st, "auth/handshakes_denied") >= 1); /* the stranger (the others fail before ZAP is asked) */
    CU_ASSERT_PTR_NULL(peer_of(st, "stranger"));
    CU_ASSERT_PTR_NULL(peer_of(st, "fake-updater"));
    CU_ASSERT_PTR_NULL(peer_of(st, "nokey"));
    CU_ASSERT_PTR_NULL(peer_of(st, "otherkey"));
    json_decref(st);
    /* the credential files are the run's secret: 0600 in a 0700 directory */
    struct stat sb;
    CU_ASSERT_EQUAL(stat(r.cred, &sb), 0);
    CU_ASSERT_EQUAL(sb.st_mode & 0777, 0700);
    snprintf(f, sizeof f, "%s/updater.key", r.cred);
    CU_ASSERT_EQUAL(stat(f, &sb), 0);
    CU_ASSERT_EQUAL(sb.st_mode & 0777, 0600);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
}

/* Many ids connecting over a run: the peer table stays within max_peers, dead ones are forgotten. */
void test_hostile_peer_table(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "hostile_peers", "\"max_peers\": 8"), 0);
    int ok = 0, refused = 0;
    size_t most = 0;
    for (int i = 0; i < 40; i++) {
        char id[32];
        snprintf(id, sizeof id, "visitor-%d", i);
        broker_client *c = NULL;
        rlhf_error e;
        rlhf_error_clear(&e);
        if (broker_client_connect_with(&c, r.endpoint, WIRE_ROLE_OBSERVER, id, r.cred, 2000, &e) == 0) {
            ok++;
            json_t *s = NULL;
            if (broker_client_get_stats(c, &s, 2000, &e) == 0) {
                size_t n = json_array_size(json_object_get(s, "peers"));
                if (n > most) most = n;
            }
            json_decref(s);
            broker_client_close(&c);
        } else {
            refused++;
            CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "too_many_peers"));
            sleep_ms(200); /* the table frees up as visitors die (heartbeat_timeout_ms 800) */
        }
    }
    CU_ASSERT(ok >= 8);
    CU_ASSERT(most <= 8);
    /* the last visitors may still fill the table (alive for heartbeat_timeout_ms after they left): this
     * observer is refused like them until they are declared dead */
    json_t *st = NULL;
    int observer_refused = 0;
    for (int i = 0; i < 50 && !(st = get_stats(&r)); i++) {
        observer_refused++;
        sleep_ms(200);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT(json_array_size(json_object_get(st, "peers")) <= 8);
    fprintf(stderr, "[peers: %d connected, %d refused, at most %zu in the table, %ld forgotten] ", ok, refused, most,
            stat_i(st, "peers/forgotten"));
    /* every id ever admitted (the visitors, the start-up probe, this observer) is in the table or forgotten */
    CU_ASSERT_EQUAL(stat_i(st, "peers/forgotten") + (long)json_array_size(json_object_get(st, "peers")), ok + 2);
    CU_ASSERT(stat_i(st, "peers/forgotten") >= ok - 6);
    CU_ASSERT(stat_i(st, "rejected/too_many_peers") >= refused &&
              stat_i(st, "rejected/too_many_peers") <= refused + observer_refused);
    json_decref(st);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
}

/* One host, ipc://: PLAIN (the role as user, its secret key as password) checked by the same ZAP
 * handler; a wrong password gets no connection; a socket whose directory others can enter is refused at
 * start (exit 2, naming the directory). */
void test_hostile_ipc_plain(void) {
    char dir[600], cfg[700], log[700], bin[4200], ep[800], cred[700];
    snprintf(dir, sizeof dir, "%s/hostile_ipc", tmpdir);
    mkdir(dir, 0755);
    snprintf(cred, sizeof cred, "%s/credentials", dir);
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_credentials_create(cred, &e), 0);
    snprintf(ep, sizeof ep, "ipc://%s/b.sock", cred);
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    char text[1024];
    snprintf(text, sizeof text, "{\"broker\": {\"dataset\": \"%s/prompts.jsonl\", \"stats_interval_ms\": 0}}", tmpdir);
    CU_ASSERT_EQUAL_FATAL(rlhf_write_file_atomic(cfg, text, strlen(text), &e), 0);
    snprintf(log, sizeof log, "%s/broker.log", dir);
    snprintf(bin, sizeof bin, "%s/rlhf", bindir);
    char *argv[] = {bin, "broker", "--config", cfg, "--run-dir", dir, "--endpoint", ep, NULL};
    pid_t brk = spawn(argv, log);
    broker_client *c = NULL;
    for (int i = 0; i < 50 && !c; i++) {
        rlhf_error_clear(&e);
        if (broker_client_connect_with(&c, ep, WIRE_ROLE_OBSERVER, "ipc-observer", cred, 200, &e) != 0) c = NULL;
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    /* a generator key: role bound as over CURVE, its stop refused */
    broker_client *gen = NULL;
    CU_ASSERT_EQUAL_FATAL(broker_client_connect_with(&gen, ep, WIRE_ROLE_GENERATOR, "ipc-gen", cred, 3000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_control(gen, WIRE_CONTROL_STOP, "no", &e), 0);
    CU_ASSERT_TRUE(wait_rejections(gen, 1));
    CU_ASSERT_TRUE(last_rejection_is(gen, "not_authorized"));
    broker_client_close(&gen);
    /* no password, and another run's passwords: no connection */
    broker_client *bad = NULL;
    CU_ASSERT_EQUAL(broker_client_connect(&bad, ep, WIRE_ROLE_OBSERVER, "nopass", 500, &e), RLHF_ETIMEOUT);
    char other[700];
    snprintf(other, sizeof other, "%s/other_credentials", dir);
    CU_ASSERT_EQUAL_FATAL(broker_credentials_create(other, &e), 0);
    CU_ASSERT_EQUAL(broker_client_connect_with(&bad, ep, WIRE_ROLE_OBSERVER, "otherpass", other, 500, &e), RLHF_ETIMEOUT);
    CU_ASSERT_PTR_NULL(bad);
    json_t *st = NULL;
    CU_ASSERT_EQUAL_FATAL(broker_client_get_stats(c, &st, 3000, &e), 0);
    CU_ASSERT(stat_i(st, "auth/handshakes_denied") >= 1);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/not_authorized"), 1);
    CU_ASSERT_PTR_NULL(peer_of(st, "otherpass"));
    json_decref(st);
    CU_ASSERT_EQUAL(broker_client_control(c, WIRE_CONTROL_STOP, "done", &e), 0);
    broker_client_close(&c);
    CU_ASSERT_EQUAL(test_proc_wait(brk, 10), 0);
    /* a socket in a directory others may enter */
    char open_dir[700], ep2[800];
    snprintf(open_dir, sizeof open_dir, "%s/open", dir);
    mkdir(open_dir, 0755);
    chmod(open_dir, 0755);
    snprintf(ep2, sizeof ep2, "ipc://%s/b.sock", open_dir);
    char *argv2[] = {bin, "broker", "--config", cfg, "--run-dir", dir, "--endpoint", ep2, NULL};
    CU_ASSERT_EQUAL(test_proc_wait(spawn(argv2, log), 10), RLHF_EXIT_CONFIG);
    char *out = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(log, &out, &n, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "only this user can enter (mode 0700"));
    free(out);
}

static long rss_kb(pid_t pid) {
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

/* A peer that asks for stats replies as fast as it can and never reads them: what the broker holds for
 * it is bounded by the per-peer send queue (ZMQ_SNDHWM 4096 messages, then replies are dropped), not by
 * how much it asks; the real peers keep working meanwhile. */
void test_hostile_slow_reader(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "hostile_slow", "\"queue_capacity\": 8"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 100000");
    pid_t g0 = start_gen(&r, "g0", "--k 2 --tokens 8");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "g0"), 0);
    sleep_ms(300);
    long rss0 = rss_kb(r.broker);
    long acc0 = accepted_now(&r);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, rcvhwm = 1, sndtmo = 30000, rcvbuf = 4096; /* 30 s: a loaded machine (ASan) reads slowly */
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(s, ZMQ_RCVBUF, &rcvbuf, sizeof rcvbuf);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &sndtmo, sizeof sndtmo);
    broker_credential cred;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_credential_load(&cred, r.cred, WIRE_ROLE_OBSERVER, &e), 0);
    broker_credential_apply(s, &cred, r.endpoint);
    broker_credential_clear(&cred);
    CU_ASSERT_EQUAL(zmq_connect(s, r.endpoint), 0);
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_stats_request(&o, NULL), 0);
    int sent = 0;
    const int asks = 40000; /* replies are ~3 KB: unbounded, the broker would hold over 100 MB for it */
    for (; sent < asks; sent++)
        if (wire_out_send(s, &o, NULL) != 0) break;
    wire_out_free(&o);
    CU_ASSERT_EQUAL(sent, asks);
    /* let the broker answer everything it was sent */
    long msgs = 0;
    for (int i = 0; i < 300; i++) {
        json_t *st = get_stats(&r);
        msgs = st ? stat_i(st, "msgs/in") : 0;
        json_decref(st);
        if (msgs >= asks) break;
        sleep_ms(50);
    }
    CU_ASSERT(msgs >= asks);
    long rss1 = rss_kb(r.broker);
    long acc1 = accepted_now(&r);
    fprintf(stderr, "[slow reader: %d stats requests unread; broker RSS %ld -> %ld kB; groups accepted %ld -> %ld] ",
            sent, rss0, rss1, acc0, acc1);
    CU_ASSERT(rss0 > 0 && rss1 > 0);
#ifndef __SANITIZE_ADDRESS__ /* ASan keeps freed memory in quarantine (hundreds of MB): RSS says nothing there */
    CU_ASSERT(rss1 - rss0 < 48 * 1024);
#endif
    CU_ASSERT(acc1 > acc0); /* the real generator and updater went on */
    zmq_close(s);
    zmq_ctx_term(ctx);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(g0, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
}

/* A flood of malformed messages from an authenticated peer (regression for the classes the parsers
 * already reject): each is counted under its reason, the broker's log stays short (rate limited), the
 * real peers go on. */
void test_hostile_flood(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "hostile_flood", "\"queue_capacity\": 8"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 100000");
    pid_t g0 = start_gen(&r, "g0", "--k 2 --tokens 8");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "g0"), 0);
    json_t *st = get_stats(&r);
    long acc0 = stat_i(st, "groups/accepted"), rej0 = stat_i(st, "rejected/total");
    json_decref(st);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, sndtmo = 5000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &sndtmo, sizeof sndtmo);
    broker_credential cred;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_credential_load(&cred, r.cred, WIRE_ROLE_GENERATOR, &e), 0);
    broker_credential_apply(s, &cred, r.endpoint);
    broker_credential_clear(&cred);
    CU_ASSERT_EQUAL(zmq_connect(s, r.endpoint), 0);
    /* five classes, 2,000 each: one frame only, a short header, a bad magic, another version, bad JSON */
    enum { PER_CLASS = 2000 };
    uint8_t hdr[16] = {'R', 'L', 'H', 'F', 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    int sent = 0;
    for (int i = 0; i < PER_CLASS; i++) {
        sent += zmq_send(s, "x", 1, 0) == 1;
        sent += zmq_send(s, hdr, 7, ZMQ_SNDMORE) == 7 && zmq_send(s, "{}", 2, 0) == 2;
        uint8_t bad[16];
        memcpy(bad, hdr, 16);
        bad[0] = 'X';
        sent += zmq_send(s, bad, 16, ZMQ_SNDMORE) == 16 && zmq_send(s, "{}", 2, 0) == 2;
        memcpy(bad, hdr, 16);
        bad[4] = 9;
        sent += zmq_send(s, bad, 16, ZMQ_SNDMORE) == 16 && zmq_send(s, "{}", 2, 0) == 2;
        sent += zmq_send(s, hdr, 16, ZMQ_SNDMORE) == 16 && zmq_send(s, "{not json", 9, 0) == 9;
    }
    CU_ASSERT_EQUAL(sent, 5 * PER_CLASS);
    long rej = 0;
    for (int i = 0; i < 400 && rej - rej0 < 5 * PER_CLASS; i++) {
        st = get_stats(&r);
        rej = st ? stat_i(st, "rejected/total") : 0;
        json_decref(st);
        if (rej - rej0 < 5 * PER_CLASS) sleep_ms(50);
    }
    CU_ASSERT_EQUAL(rej - rej0, 5 * PER_CLASS);
    st = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/bad_frame_count"), PER_CLASS);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/bad_header"), 2 * PER_CLASS);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/version_mismatch"), PER_CLASS);
    CU_ASSERT(stat_i(st, "rejected/bad_crc") + stat_i(st, "rejected/bad_json") == PER_CLASS);
    long acc1 = stat_i(st, "groups/accepted");
    json_decref(st);
    for (int i = 0; i < 200 && acc1 <= acc0; i++) {
        sleep_ms(20);
        acc1 = accepted_now(&r);
    }
    CU_ASSERT(acc1 > acc0);
    zmq_close(s);
    zmq_ctx_term(ctx);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(g0, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
    /* 10,000 rejections, a few dozen log lines: the first 50, then powers of two */
    char log[700];
    snprintf(log, sizeof log, "%s/broker.log", r.dir);
    char *text = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(log, &text, &n, NULL), 0);
    int lines = 0;
    for (char *q = text; (q = strstr(q, "rejected a message")); q++) lines++;
    free(text);
    CU_ASSERT(lines >= 50 && lines <= 70);
}
