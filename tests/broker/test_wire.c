/* tests/broker/test_wire.c — wire protocol: round trips of every message type, and malformed input
 * (each rejected with its reason). Also register_suites() for the test_broker binary. */
#include <CUnit/CUnit.h>
#include <float.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "broker/wire.h"
#include "tests/broker/synth_common.h"

int register_replay_suites(void);
int register_broker_suites(void);

/* frames of an encoded message, copied so tests can corrupt them */
typedef struct msgbuf {
    size_t n;
    uint8_t *data[WIRE_MAX_PAYLOADS + 2];
    wire_frame f[WIRE_MAX_PAYLOADS + 2];
} msgbuf;

static void mb_from(msgbuf *mb, const wire_out *o) {
    mb->n = wire_out_nframes(o);
    for (size_t i = 0; i < mb->n; i++) {
        wire_frame f = wire_out_frame(o, i);
        mb->data[i] = malloc(f.len + 1);
        if (f.len) memcpy(mb->data[i], f.data, f.len);
        mb->f[i].data = mb->data[i];
        mb->f[i].len = f.len;
    }
}

static void mb_free(msgbuf *mb) {
    for (size_t i = 0; i < mb->n; i++) free(mb->data[i]);
    mb->n = 0;
}

/* Replace frame 1 by new JSON text and fix the header's metadata CRC (so the JSON check is reached). */
static void mb_set_meta(msgbuf *mb, const char *json) {
    free(mb->data[1]);
    size_t n = strlen(json);
    mb->data[1] = malloc(n + 1);
    memcpy(mb->data[1], json, n);
    mb->f[1].data = mb->data[1];
    mb->f[1].len = n;
    uint32_t crc = rlhf_crc32(0, json, n);
    for (int i = 0; i < 4; i++) mb->data[0][12 + i] = (uint8_t)(crc >> (8 * i));
}

static int parse_reason(const msgbuf *mb, rlhf_error *e) {
    wire_msg m;
    int reason = -1;
    rlhf_error_clear(e);
    int rc = wire_parse(mb->f, mb->n, &m, &reason, e);
    if (rc == 0) wire_msg_free(&m);
    return rc == 0 ? WIRE_R_OK : reason;
}

/* encode -> frames -> parse -> decode */
#define ROUNDTRIP(enc_call, type_, mb)                                                                               \
    do {                                                                                                             \
        wire_out o_;                                                                                                 \
        rlhf_error e_;                                                                                               \
        CU_ASSERT_EQUAL_FATAL(enc_call, 0);                                                                          \
        mb_from(&(mb), &o_);                                                                                         \
        wire_out_free(&o_);                                                                                          \
        CU_ASSERT_EQUAL(parse_reason(&(mb), &e_), WIRE_R_OK);                                                        \
        (void)type_;                                                                                                 \
    } while (0)

static void parse_ok(const msgbuf *mb, wire_msg *m) {
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(wire_parse(mb->f, mb->n, m, NULL, &e), 0);
}

static void check_fast_matches_reference(const wire_rollout_group *g);

static void test_roundtrip_rollout_group(void) {
    wire_rollout_group g;
    synth_group_make(&g, "gen-7", 42, 3, 8, 256, "p17", "What is 2+2?");
    char *texts[8] = {"four", NULL, "4", NULL, NULL, "x", NULL, "é"};
    g.texts = texts;
    g.prompt_record = json_pack("{ssss}", "id", "p17", "answer", "4");
    g.gen_seconds = 1.25;
    g.created_at = 1700000000.5;
    g.spec_drafted = 400; /* speculative decoding's counters (the optional "spec" field) */
    g.spec_accepted = 250;
    g.spec_verifies = 120;
    g.spec_tokens = 370;
    check_fast_matches_reference(&g);
    msgbuf mb;
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_rollout_group(&g, &o, NULL), 0);
    mb_from(&mb, &o);
    wire_out_free(&o);
    wire_msg m;
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(m.type, WIRE_ROLLOUT_GROUP);
    wire_rollout_group d;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(wire_decode_rollout_group(&m, &d, NULL, &e), 0);
    CU_ASSERT_STRING_EQUAL(d.prompt_id, "p17");
    CU_ASSERT_STRING_EQUAL(d.prompt_text, "What is 2+2?");
    CU_ASSERT_STRING_EQUAL(d.generator_id, "gen-7");
    CU_ASSERT_EQUAL(d.seq, 42);
    CU_ASSERT_EQUAL(d.policy_version, 3);
    CU_ASSERT_EQUAL(d.k, 8);
    CU_ASSERT_EQUAL(d.n_prompt_tokens, 5);
    CU_ASSERT_EQUAL(memcmp(d.prompt_tokens, g.prompt_tokens, 5 * 4), 0);
    uint64_t total = wire_rollout_group_total_tokens(&g);
    CU_ASSERT_EQUAL(wire_rollout_group_total_tokens(&d), total);
    CU_ASSERT_EQUAL(memcmp(d.n_tokens, g.n_tokens, 8 * 4), 0);
    CU_ASSERT_EQUAL(memcmp(d.tokens, g.tokens, total * 4), 0);
    CU_ASSERT_EQUAL(memcmp(d.logprobs, g.logprobs, total * 4), 0);
    CU_ASSERT_EQUAL(memcmp(d.finish, g.finish, 8), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d.texts);
    CU_ASSERT_STRING_EQUAL(d.texts[0], "four");
    CU_ASSERT_PTR_NULL(d.texts[1]);
    CU_ASSERT_STRING_EQUAL(d.texts[7], "é");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d.prompt_record, "answer")), "4");
    CU_ASSERT_DOUBLE_EQUAL(d.gen_seconds, 1.25, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(d.created_at, 1700000000.5, 1e-3);
    CU_ASSERT_EQUAL(d.spec_drafted, 400);
    CU_ASSERT_EQUAL(d.spec_accepted, 250);
    CU_ASSERT_EQUAL(d.spec_verifies, 120);
    CU_ASSERT_EQUAL(d.spec_tokens, 370);
    CU_ASSERT_TRUE(synth_group_check(&d));
    wire_rollout_group_free(&d);
    /* the broker's validate-only path sees the same routing fields and copies no arrays */
    CU_ASSERT_EQUAL_FATAL(wire_validate_rollout_group(&m, &d, NULL, &e), 0);
    CU_ASSERT_STRING_EQUAL(d.generator_id, "gen-7");
    CU_ASSERT_EQUAL(d.seq, 42);
    CU_ASSERT_EQUAL(d.policy_version, 3);
    CU_ASSERT_PTR_NULL(d.tokens);
    wire_rollout_group_free(&d);
    wire_msg_free(&m);
    mb_free(&mb);
    json_decref(g.prompt_record);
    g.texts = NULL;
    synth_group_free(&g);
}

static void test_roundtrip_weights(void) {
    wire_weights w;
    wire_tensor t[2];
    synth_weights_make(&w, t, 9, 100003); /* odd size: last chunk short */
    w.chunk_bytes = 65536;
    msgbuf mb;
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_weights(&w, &o, NULL), 0);
    CU_ASSERT_EQUAL(o.n_payloads, (100003 * 4 + 65535) / 65536);
    mb_from(&mb, &o);
    wire_out_free(&o);
    wire_msg m;
    parse_ok(&mb, &m);
    wire_weights d;
    CU_ASSERT_EQUAL_FATAL(wire_decode_weights(&m, &d, NULL, NULL), 0);
    CU_ASSERT_EQUAL(d.version, 9);
    CU_ASSERT_EQUAL(d.nbytes, w.nbytes);
    CU_ASSERT_EQUAL(d.n_tensors, 2);
    CU_ASSERT_STRING_EQUAL(d.tensors[1].name, "layer1.w");
    CU_ASSERT_EQUAL(d.tensors[1].ndim, 2);
    CU_ASSERT_EQUAL(d.tensors[1].shape[1], t[1].shape[1]);
    CU_ASSERT_EQUAL(d.tensors[1].offset, t[1].offset);
    CU_ASSERT_EQUAL(memcmp(d.data, w.data, w.nbytes), 0);
    CU_ASSERT_TRUE(synth_weights_check(&d));
    wire_weights_free(&d);
    /* header-only validation leaves the blob alone */
    CU_ASSERT_EQUAL(wire_decode_weights_header(&m, &d, NULL, NULL), 0);
    CU_ASSERT_PTR_NULL(d.data);
    CU_ASSERT_EQUAL(d.version, 9);
    wire_weights_free(&d);
    wire_msg_free(&m);
    mb_free(&mb);
    free((void *)w.data);
}

/* A WEIGHTS_SHM message's metadata with one change applied: decode must refuse it with `want`. */
static void shm_meta_refused(const msgbuf *orig, const char *key, json_t *value_steal, int want, const char *where) {
    msgbuf mb;
    wire_out o;
    wire_msg m;
    parse_ok(orig, &m);
    json_t *j = json_deep_copy(m.meta);
    wire_msg_free(&m);
    json_object_del(j, "payloads"); /* rebuilt by wire_encode_raw */
    if (value_steal) json_object_set_new(j, key, value_steal);
    else json_object_del(j, key);
    CU_ASSERT_EQUAL_FATAL(wire_encode_raw(WIRE_PROTOCOL_VERSION, WIRE_WEIGHTS_SHM, j, NULL, 0, &o, NULL), 0);
    mb_from(&mb, &o);
    wire_out_free(&o);
    parse_ok(&mb, &m);
    wire_weights_shm d;
    rlhf_error e;
    rlhf_error_clear(&e);
    int reason = 0;
    CU_ASSERT_NOT_EQUAL(wire_decode_weights_shm(&m, &d, &reason, &e), 0);
    CU_ASSERT_EQUAL(reason, want);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.where, where));
    CU_ASSERT_PTR_NULL(d.chunk_crc); /* nothing half-decoded is left */
    CU_ASSERT_PTR_NULL(d.w.tensors);
    wire_msg_free(&m);
    mb_free(&mb);
}

static void test_roundtrip_weights_shm(void) {
    wire_weights w;
    wire_tensor t[2];
    synth_weights_make(&w, t, 11, 100003);
    w.chunk_bytes = 65536;
    wire_weights_shm x;
    memset(&x, 0, sizeof x);
    x.w = w;
    snprintf(x.path, sizeof x.path, "/dev/shm/rlhf-w.123.456.11");
    x.n_chunks = (uint32_t)((w.nbytes + 65535) / 65536);
    uint32_t crcs[8];
    CU_ASSERT_EQUAL_FATAL(x.n_chunks, 7);
    for (uint32_t i = 0; i < x.n_chunks; i++) { /* the oracle: each chunk's CRC over the blob itself */
        uint64_t off = (uint64_t)i * 65536, n = w.nbytes - off < 65536 ? w.nbytes - off : 65536;
        crcs[i] = rlhf_crc32(0, w.data + off, (size_t)n);
    }
    x.chunk_crc = crcs;
    msgbuf mb;
    ROUNDTRIP(wire_encode_weights_shm(&x, &o_, NULL), WIRE_WEIGHTS_SHM, mb);
    CU_ASSERT_EQUAL(mb.n, 2); /* metadata only: no bytes travel */
    wire_msg m;
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(m.type, WIRE_WEIGHTS_SHM);
    wire_weights_shm d;
    CU_ASSERT_EQUAL_FATAL(wire_decode_weights_shm(&m, &d, NULL, NULL), 0);
    CU_ASSERT_EQUAL(d.w.version, 11);
    CU_ASSERT_EQUAL(d.w.nbytes, w.nbytes);
    CU_ASSERT_EQUAL(d.w.chunk_bytes, 65536);
    CU_ASSERT_EQUAL(d.w.n_tensors, 2);
    CU_ASSERT_STRING_EQUAL(d.w.tensors[1].name, "layer1.w");
    CU_ASSERT_EQUAL(d.w.tensors[1].offset, t[1].offset);
    CU_ASSERT_PTR_NULL(d.w.data);
    CU_ASSERT_STRING_EQUAL(d.path, x.path);
    CU_ASSERT_EQUAL_FATAL(d.n_chunks, 7);
    CU_ASSERT_EQUAL(memcmp(d.chunk_crc, crcs, sizeof crcs[0] * 7), 0);
    wire_weights_shm_free(&d);
    /* the WEIGHTS decoder does not take it, nor this one a WEIGHTS */
    wire_weights wd;
    int reason = 0;
    CU_ASSERT_NOT_EQUAL(wire_decode_weights_header(&m, &wd, &reason, NULL), 0);
    CU_ASSERT_EQUAL(reason, WIRE_R_TYPE);
    wire_msg_free(&m);
    /* every field checked */
    shm_meta_refused(&mb, "path", json_string("dev/shm/x"), WIRE_R_FIELD, "WEIGHTS_SHM.path");
    shm_meta_refused(&mb, "path", json_string("/dev/shm/../etc/passwd"), WIRE_R_FIELD, "WEIGHTS_SHM.path");
    shm_meta_refused(&mb, "path", NULL, WIRE_R_FIELD, "WEIGHTS_SHM.path");
    shm_meta_refused(&mb, "chunk_crc32", json_pack("[iii]", 1, 2, 3), WIRE_R_FIELD, "WEIGHTS_SHM.chunk_crc32");
    shm_meta_refused(&mb, "chunk_crc32", json_pack("[iiiiiii]", 1, 2, 3, 4, 5, 6, -1), WIRE_R_FIELD,
                     "WEIGHTS_SHM.chunk_crc32");
    shm_meta_refused(&mb, "chunk_crc32", NULL, WIRE_R_FIELD, "WEIGHTS_SHM.chunk_crc32");
    shm_meta_refused(&mb, "nbytes", json_integer((json_int_t)WIRE_MAX_WEIGHT_BYTES + 1), WIRE_R_TOO_LARGE,
                     "WEIGHTS_SHM.nbytes");
    shm_meta_refused(&mb, "chunk_bytes", json_integer(1), WIRE_R_TOO_LARGE, "WEIGHTS_SHM.chunk_bytes");
    shm_meta_refused(&mb, "dtype", json_string("bf16"), WIRE_R_FIELD, "WEIGHTS_SHM.dtype");
    /* bytes attached to it: refused (the blob travels only in the file) */
    parse_ok(&mb, &m);
    json_t *j = json_deep_copy(m.meta);
    wire_msg_free(&m);
    mb_free(&mb);
    json_object_del(j, "payloads");
    wire_frame junk = {"abc", 3};
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_raw(WIRE_PROTOCOL_VERSION, WIRE_WEIGHTS_SHM, j, &junk, 1, &o, NULL), 0);
    mb_from(&mb, &o);
    wire_out_free(&o);
    parse_ok(&mb, &m);
    CU_ASSERT_NOT_EQUAL(wire_decode_weights_shm(&m, &d, &reason, NULL), 0);
    CU_ASSERT_EQUAL(reason, WIRE_R_FRAME_COUNT);
    wire_msg_free(&m);
    mb_free(&mb);
    /* the encoder refuses what the decoder would */
    rlhf_error e;
    snprintf(x.path, sizeof x.path, "relative/path");
    CU_ASSERT_NOT_EQUAL(wire_encode_weights_shm(&x, &o, &e), 0);
    snprintf(x.path, sizeof x.path, "/dev/shm/x");
    x.n_chunks = 6;
    CU_ASSERT_NOT_EQUAL(wire_encode_weights_shm(&x, &o, &e), 0);
    free((void *)w.data);
}

static void test_roundtrip_hello_host_and_shm_failed(void) {
    msgbuf mb;
    wire_msg m;
    wire_hello h = {"gen-2", WIRE_ROLE_GENERATOR, 77, "b00t-1d/host-a", 1}, hd;
    ROUNDTRIP(wire_encode_hello(&h, &o_, NULL), WIRE_HELLO, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_hello(&m, &hd, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(hd.host, "b00t-1d/host-a");
    CU_ASSERT_EQUAL(hd.shm, 1);
    wire_msg_free(&m);
    mb_free(&mb);
    /* without a host: neither key is sent, both decode as absent */
    wire_hello h0 = {"gen-3", WIRE_ROLE_GENERATOR, 78, "", 1};
    ROUNDTRIP(wire_encode_hello(&h0, &o_, NULL), WIRE_HELLO, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_PTR_NULL(json_object_get(m.meta, "shm"));
    CU_ASSERT_EQUAL(wire_decode_hello(&m, &hd, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(hd.host, "");
    CU_ASSERT_EQUAL(hd.shm, 0);
    wire_msg_free(&m);
    mb_free(&mb);
    /* wrong types refused */
    const char *bad[] = {"{\"peer_id\": \"g\", \"role\": \"generator\", \"pid\": 1, \"host\": \"h\", \"shm\": 1, \"payloads\": []}",
                         "{\"peer_id\": \"g\", \"role\": \"generator\", \"pid\": 1, \"host\": 5, \"payloads\": []}",
                         "{\"peer_id\": \"g\", \"role\": \"generator\", \"pid\": 1, \"shm\": true, \"payloads\": []}"};
    const char *where[] = {"HELLO.shm", "HELLO.host", "HELLO.shm"};
    for (int i = 0; i < 3; i++) {
        ROUNDTRIP(wire_encode_hello(&h, &o_, NULL), WIRE_HELLO, mb);
        mb_set_meta(&mb, bad[i]);
        parse_ok(&mb, &m);
        rlhf_error e;
        rlhf_error_clear(&e);
        int reason = 0;
        CU_ASSERT_NOT_EQUAL(wire_decode_hello(&m, &hd, &reason, &e), 0);
        CU_ASSERT_EQUAL(reason, WIRE_R_FIELD);
        CU_ASSERT_STRING_EQUAL(e.where, where[i]);
        wire_msg_free(&m);
        mb_free(&mb);
    }
    /* WEIGHTS_SHM_FAILED */
    uint64_t v = 0;
    char why[16];
    ROUNDTRIP(wire_encode_weights_shm_failed(5, "crc", &o_, NULL), WIRE_WEIGHTS_SHM_FAILED, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_weights_shm_failed(&m, &v, why, sizeof why, NULL, NULL), 0);
    CU_ASSERT_EQUAL(v, 5);
    CU_ASSERT_STRING_EQUAL(why, "crc");
    wire_msg_free(&m);
    mb_set_meta(&mb, "{\"version\": 5, \"payloads\": []}");
    parse_ok(&mb, &m);
    int reason = 0;
    CU_ASSERT_NOT_EQUAL(wire_decode_weights_shm_failed(&m, &v, why, sizeof why, &reason, NULL), 0);
    CU_ASSERT_EQUAL(reason, WIRE_R_FIELD);
    wire_msg_free(&m);
    mb_free(&mb);
    CU_ASSERT_STRING_EQUAL(wire_type_name(WIRE_WEIGHTS_SHM), "WEIGHTS_SHM");
    CU_ASSERT_STRING_EQUAL(wire_type_name(WIRE_WEIGHTS_SHM_FAILED), "WEIGHTS_SHM_FAILED");
}

static void test_roundtrip_small_types(void) {
    msgbuf mb;
    wire_msg m;
    /* HELLO */
    wire_hello h = {"gen-1", WIRE_ROLE_GENERATOR, 1234, "", 0}, hd;
    ROUNDTRIP(wire_encode_hello(&h, &o_, NULL), WIRE_HELLO, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_hello(&m, &hd, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(hd.peer_id, "gen-1");
    CU_ASSERT_EQUAL(hd.role, WIRE_ROLE_GENERATOR);
    CU_ASSERT_EQUAL(hd.pid, 1234);
    wire_msg_free(&m);
    mb_free(&mb);
    /* WELCOME */
    wire_welcome w = {17, 1, 250, 0, ""}, wd;
    ROUNDTRIP(wire_encode_welcome(&w, &o_, NULL), WIRE_WELCOME, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_welcome(&m, &wd, NULL, NULL), 0);
    CU_ASSERT_EQUAL(wd.newest_version, 17);
    CU_ASSERT_EQUAL(wd.has_weights, 1);
    CU_ASSERT_EQUAL(wd.heartbeat_interval_ms, 250);
    CU_ASSERT_EQUAL(wd.max_staleness, 0);
    CU_ASSERT_STRING_EQUAL(wd.host_files_dir, ""); /* optional, not sent */
    wire_msg_free(&m);
    mb_free(&mb);
    /* WELCOME to a generator on another host: where it writes the versions it gets as bytes */
    snprintf(w.host_files_dir, sizeof w.host_files_dir, "/dev/shm");
    ROUNDTRIP(wire_encode_welcome(&w, &o_, NULL), WIRE_WELCOME, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_welcome(&m, &wd, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(wd.host_files_dir, "/dev/shm");
    wire_msg_free(&m);
    mb_free(&mb);
    /* PROMPT_REQUEST */
    wire_prompt_request pr = {99, 4}, prd;
    ROUNDTRIP(wire_encode_prompt_request(&pr, &o_, NULL), WIRE_PROMPT_REQUEST, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_prompt_request(&m, &prd, NULL, NULL), 0);
    CU_ASSERT_EQUAL(prd.request_id, 99);
    CU_ASSERT_EQUAL(prd.n, 4);
    wire_msg_free(&m);
    mb_free(&mb);
    /* PROMPT_BATCH */
    wire_prompt ps[2] = {{"a", "first \"quoted\"", 3, NULL}, {"b", "second", 5, json_pack("{ss}", "answer", "42")}};
    wire_prompt_batch pb = {99, 4, 2, ps}, pbd;
    ROUNDTRIP(wire_encode_prompt_batch(&pb, &o_, NULL), WIRE_PROMPT_BATCH, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL_FATAL(wire_decode_prompt_batch(&m, &pbd, NULL, NULL), 0);
    CU_ASSERT_EQUAL(pbd.n, 2);
    CU_ASSERT_EQUAL(pbd.request_id, 99);
    CU_ASSERT_EQUAL(pbd.newest_version, 4);
    CU_ASSERT_STRING_EQUAL(pbd.prompts[0].text, "first \"quoted\"");
    CU_ASSERT_EQUAL(pbd.prompts[1].index, 5);
    CU_ASSERT_PTR_NULL(pbd.prompts[0].record);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(pbd.prompts[1].record, "answer")), "42");
    wire_prompt_batch_free(&pbd);
    json_decref(ps[1].record);
    wire_msg_free(&m);
    mb_free(&mb);
    /* CREDIT */
    wire_credit cr = {7}, crd;
    ROUNDTRIP(wire_encode_credit(&cr, &o_, NULL), WIRE_CREDIT, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_credit(&m, &crd, NULL, NULL), 0);
    CU_ASSERT_EQUAL(crd.n, 7);
    wire_msg_free(&m);
    mb_free(&mb);
    /* PROMPT_STATS */
    float rewards[6] = {1, 0, NAN, 0.5f, 0.25f, 1}, total[3] = {1.5f, 0.25f, 1};
    char *names[2] = {"exact", "judge"};
    wire_prompt_stats st = {"p9", 5, 3, 2, names, rewards, total}, std;
    ROUNDTRIP(wire_encode_prompt_stats(&st, &o_, NULL), WIRE_PROMPT_STATS, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL_FATAL(wire_decode_prompt_stats(&m, &std, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(std.prompt_id, "p9");
    CU_ASSERT_EQUAL(std.k, 3);
    CU_ASSERT_EQUAL(std.n_sources, 2);
    CU_ASSERT_EQUAL(std.policy_version, 5);
    CU_ASSERT_STRING_EQUAL(std.source_names[1], "judge");
    CU_ASSERT_TRUE(isnan(std.rewards[2])); /* NaN survives: rewards travel as binary, not JSON */
    CU_ASSERT_EQUAL(std.rewards[3], 0.5f);
    CU_ASSERT_EQUAL(memcmp(std.total, total, sizeof total), 0);
    wire_prompt_stats_free(&std);
    wire_msg_free(&m);
    mb_free(&mb);
    /* CONTROL */
    wire_control c = {WIRE_CONTROL_PAUSE, "maintenance"}, cd;
    ROUNDTRIP(wire_encode_control(&c, &o_, NULL), WIRE_CONTROL, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_control(&m, &cd, NULL, NULL), 0);
    CU_ASSERT_EQUAL(cd.command, WIRE_CONTROL_PAUSE);
    CU_ASSERT_STRING_EQUAL(cd.reason, "maintenance");
    wire_msg_free(&m);
    mb_free(&mb);
    /* HEARTBEAT */
    wire_heartbeat hb = {"upd-0", WIRE_ROLE_UPDATER, 77, "training"}, hbd;
    ROUNDTRIP(wire_encode_heartbeat(&hb, &o_, NULL), WIRE_HEARTBEAT, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_heartbeat(&m, &hbd, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(hbd.peer_id, "upd-0");
    CU_ASSERT_EQUAL(hbd.role, WIRE_ROLE_UPDATER);
    CU_ASSERT_EQUAL(hbd.seq, 77);
    CU_ASSERT_STRING_EQUAL(hbd.state, "training");
    wire_msg_free(&m);
    mb_free(&mb);
    /* STATS */
    json_t *s = json_pack("{sisi}", "queue/depth", 3, "groups/delivered", 10), *sd;
    ROUNDTRIP(wire_encode_stats(s, &o_, NULL), WIRE_STATS, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL_FATAL(wire_decode_stats(&m, &sd, NULL, NULL), 0);
    CU_ASSERT_TRUE(json_equal(s, sd));
    json_decref(sd);
    json_decref(s);
    wire_msg_free(&m);
    mb_free(&mb);
    /* STATS_REQUEST, ERROR, WEIGHTS_ACK */
    ROUNDTRIP(wire_encode_stats_request(&o_, NULL), WIRE_STATS_REQUEST, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(m.type, WIRE_STATS_REQUEST);
    wire_msg_free(&m);
    mb_free(&mb);
    wire_error_msg er = {"bad_crc", "payload 2", 3}, erd;
    ROUNDTRIP(wire_encode_error(&er, &o_, NULL), WIRE_ERROR, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_error(&m, &erd, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(erd.reason, "bad_crc");
    CU_ASSERT_STRING_EQUAL(erd.detail, "payload 2");
    CU_ASSERT_EQUAL(erd.peer_version, 3);
    wire_msg_free(&m);
    mb_free(&mb);
    uint64_t v = 0;
    ROUNDTRIP(wire_encode_weights_ack(12, &o_, NULL), WIRE_WEIGHTS_ACK, mb);
    parse_ok(&mb, &m);
    CU_ASSERT_EQUAL(wire_decode_weights_ack(&m, &v, NULL, NULL), 0);
    CU_ASSERT_EQUAL(v, 12);
    /* a decoder refuses a message of another type */
    int reason = 0;
    CU_ASSERT_NOT_EQUAL(wire_decode_credit(&m, &crd, &reason, NULL), 0);
    CU_ASSERT_EQUAL(reason, WIRE_R_TYPE);
    wire_msg_free(&m);
    mb_free(&mb);
}

/* ---------------------------------------------------------------- malformed input */

static void group_msg(msgbuf *mb) {
    wire_rollout_group g;
    synth_group_make(&g, "g", 1, 0, 4, 16, "p", "t");
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_rollout_group(&g, &o, NULL), 0);
    mb_from(mb, &o);
    wire_out_free(&o);
    synth_group_free(&g);
}

/* parse + decode as a rollout group; returns the reason */
static int group_reason(const msgbuf *mb, rlhf_error *e) {
    int r = parse_reason(mb, e);
    if (r != WIRE_R_OK) return r;
    wire_msg m;
    wire_parse(mb->f, mb->n, &m, NULL, NULL);
    wire_rollout_group g;
    int reason = WIRE_R_OK;
    rlhf_error_clear(e);
    if (wire_decode_rollout_group(&m, &g, &reason, e) == 0) wire_rollout_group_free(&g);
    int reason2 = WIRE_R_OK;
    if (wire_validate_rollout_group(&m, &g, &reason2, NULL) == 0) wire_rollout_group_free(&g);
    CU_ASSERT_EQUAL(reason2, reason); /* the broker's path rejects exactly what the decoder rejects */
    wire_msg_free(&m);
    return reason;
}

static void test_reject_frame_counts(void) {
    msgbuf mb;
    rlhf_error e;
    group_msg(&mb);
    size_t n = mb.n;
    mb.n = 1;
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_FRAME_COUNT);
    mb.n = n - 1; /* a payload frame missing */
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_FRAME_COUNT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "bad_frame_count"));
    mb.n = n;
    mb_free(&mb);
}

static void test_reject_declared_length(void) {
    msgbuf mb;
    rlhf_error e;
    group_msg(&mb);
    /* the frame is shorter than the metadata declares */
    mb.f[3].len -= 4;
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_LENGTH);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.where, "payloads[1]"));
    mb_free(&mb);
    /* consistent frames, but sample counts disagree with the payload size */
    group_msg(&mb);
    wire_msg m;
    parse_ok(&mb, &m);
    json_t *meta = json_deep_copy(m.meta);
    wire_msg_free(&m);
    json_t *lens = json_object_get(meta, "n_tokens");
    json_array_set_new(lens, 0, json_integer(json_integer_value(json_array_get(lens, 0)) + 1000));
    json_object_set_new(meta, "total_tokens", json_integer(json_integer_value(json_object_get(meta, "total_tokens")) + 1000));
    char *txt = json_dumps(meta, JSON_COMPACT);
    mb_set_meta(&mb, txt);
    free(txt);
    json_decref(meta);
    CU_ASSERT_EQUAL(group_reason(&mb, &e), WIRE_R_LENGTH);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.where, "ROLLOUT_GROUP.payloads[1]"));
    mb_free(&mb);
}

static void check_fast_matches_reference(const wire_rollout_group *g);

/* Per-token versions (in-flight weight updates): sent as change points per sample, decoded back to
 * one version per token; absent when every token is at policy_version (and then NULL, as in older
 * logs); malformed points refused naming the field. */
static void test_token_versions(void) {
    wire_rollout_group g;
    synth_group_make(&g, "gen", 3, 5, 3, 6, "p", "t"); /* completions of 6, 5 and 4 tokens, version 5 */
    uint64_t tv[15] = {5, 5, 5, 5, 5, 5, /**/ 5, 5, 6, 6, 7, /**/ 6, 6, 6, 6};
    g.token_versions = tv;
    check_fast_matches_reference(&g);
    wire_out o;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(wire_encode_rollout_group(&g, &o, &e), 0);
    json_t *meta = json_loadb(o.meta, o.meta_len, 0, NULL);
    json_t *want = json_loads("[[],[2,6,4,7],[0,6]]", 0, NULL);
    CU_ASSERT(json_equal(json_object_get(meta, "token_versions"), want));
    json_decref(want);
    msgbuf mb;
    mb_from(&mb, &o);
    wire_out_free(&o);
    wire_msg m;
    parse_ok(&mb, &m);
    wire_rollout_group d;
    CU_ASSERT_EQUAL_FATAL(wire_decode_rollout_group(&m, &d, NULL, &e), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d.token_versions);
    CU_ASSERT_EQUAL(memcmp(d.token_versions, tv, sizeof tv), 0);
    wire_rollout_group_free(&d);
    wire_msg_free(&m);
    /* malformed change points */
    static const char *const bad[] = {"[[],[2],[]]", "[[],[2,6,1,7],[]]", "[[],[2,7,4,6],[]]", "[[],[5,6],[]]",
                                      "[[],[0,4],[]]", "[[],[]]", "{}", "[[],[2,\"6\"],[]]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_object_set_new(meta, "token_versions", json_loads(bad[i], JSON_DECODE_ANY, NULL));
        char *txt = json_dumps(meta, JSON_COMPACT);
        mb_set_meta(&mb, txt);
        free(txt);
        CU_ASSERT_EQUAL(group_reason(&mb, &e), WIRE_R_FIELD);
        CU_ASSERT_PTR_NOT_NULL(strstr(e.where, "token_versions"));
    }
    json_decref(meta);
    mb_free(&mb);
    /* every token at policy_version: nothing sent, NULL decoded */
    for (int i = 0; i < 15; i++) tv[i] = 5;
    CU_ASSERT_EQUAL_FATAL(wire_encode_rollout_group(&g, &o, &e), 0);
    mb_from(&mb, &o);
    wire_out_free(&o);
    parse_ok(&mb, &m);
    CU_ASSERT_PTR_NULL(json_object_get(m.meta, "token_versions"));
    CU_ASSERT_EQUAL_FATAL(wire_decode_rollout_group(&m, &d, NULL, &e), 0);
    CU_ASSERT_PTR_NULL(d.token_versions);
    wire_rollout_group_free(&d);
    wire_msg_free(&m);
    mb_free(&mb);
    g.token_versions = NULL;
    synth_group_free(&g);
}

static void test_reject_huge_counts(void) {
    msgbuf mb;
    rlhf_error e;
    group_msg(&mb);
    wire_msg m;
    parse_ok(&mb, &m);
    json_t *meta = json_deep_copy(m.meta);
    wire_msg_free(&m);
    json_object_set_new(meta, "k", json_integer(1000000000LL));
    char *txt = json_dumps(meta, JSON_COMPACT);
    mb_set_meta(&mb, txt);
    free(txt);
    CU_ASSERT_EQUAL(group_reason(&mb, &e), WIRE_R_TOO_LARGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.where, "ROLLOUT_GROUP.k"));
    json_object_set_new(meta, "k", json_integer(4));
    json_object_set_new(meta, "total_tokens", json_integer(1LL << 40));
    txt = json_dumps(meta, JSON_COMPACT);
    mb_set_meta(&mb, txt);
    free(txt);
    CU_ASSERT_EQUAL(group_reason(&mb, &e), WIRE_R_TOO_LARGE);
    json_decref(meta);
    /* a header declaring a huge number of payload frames */
    uint32_t big = 1u << 30;
    memcpy(mb.data[0] + 8, &big, 4);
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_TOO_LARGE);
    mb_free(&mb);
    /* a weights table claiming a tensor larger than the blob */
    wire_weights w;
    wire_tensor t[2];
    synth_weights_make(&w, t, 1, 1000);
    t[1].shape[1] = 1ull << 39;
    t[1].nbytes = (1ull << 39) * 4;
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_weights(&w, &o, NULL), 0);
    mb_from(&mb, &o);
    wire_out_free(&o);
    parse_ok(&mb, &m);
    wire_weights d;
    int reason = 0;
    CU_ASSERT_NOT_EQUAL(wire_decode_weights(&m, &d, &reason, &e), 0);
    CU_ASSERT_EQUAL(reason, WIRE_R_LENGTH);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.where, "WEIGHTS.tensors[1]"));
    wire_msg_free(&m);
    mb_free(&mb);
    free((void *)w.data);
}

static void test_reject_invalid_json(void) {
    msgbuf mb;
    rlhf_error e;
    group_msg(&mb);
    mb_set_meta(&mb, "{\"payloads\": [1, 2");
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_JSON);
    mb_set_meta(&mb, "[1, 2, 3]");
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_JSON);
    mb_set_meta(&mb, "{\"a\": 1, \"a\": 2}"); /* duplicate keys */
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_JSON);
    mb_free(&mb);
    /* valid JSON, wrong field type */
    wire_credit c = {3};
    wire_out o;
    wire_encode_credit(&c, &o, NULL);
    mb_from(&mb, &o);
    wire_out_free(&o);
    mb_set_meta(&mb, "{\"n\": \"three\", \"payloads\": []}");
    wire_msg m;
    parse_ok(&mb, &m);
    wire_credit d;
    int reason = 0;
    CU_ASSERT_NOT_EQUAL(wire_decode_credit(&m, &d, &reason, &e), 0);
    CU_ASSERT_EQUAL(reason, WIRE_R_FIELD);
    CU_ASSERT_STRING_EQUAL(e.where, "CREDIT.n");
    wire_msg_free(&m);
    mb_free(&mb);
}

static void test_reject_unknown_type_and_version(void) {
    msgbuf mb;
    rlhf_error e;
    group_msg(&mb);
    mb.data[0][6] = 200; /* type 200 */
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_TYPE);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "200"));
    mb.data[0][6] = WIRE_ROLLOUT_GROUP;
    mb.data[0][4] = 2; /* protocol version 2 */
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_VERSION);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "version 2"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "speaks 1"));
    mb.data[0][4] = 1;
    mb.data[0][0] = 'X';
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_HEADER);
    mb.data[0][0] = 'R';
    mb.f[0].len = 15;
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_HEADER);
    mb.f[0].len = 16;
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_OK);
    mb_free(&mb);
}

static void test_reject_bad_crc(void) {
    msgbuf mb;
    rlhf_error e;
    group_msg(&mb);
    mb.data[4][5] ^= 0x40; /* a log-prob bit */
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_CRC);
    CU_ASSERT_EQUAL(e.code, RLHF_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.where, "payloads[2]"));
    mb.data[4][5] ^= 0x40;
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_OK);
    mb.data[1][3] ^= 1; /* metadata byte */
    CU_ASSERT_EQUAL(parse_reason(&mb, &e), WIRE_R_CRC);
    mb_free(&mb);
}

static void test_reject_bad_values(void) {
    msgbuf mb;
    rlhf_error e;
    /* positive log-probs cannot come from a sampler */
    wire_rollout_group g;
    synth_group_make(&g, "g", 1, 0, 2, 4, "p", "t");
    g.logprobs[3] = 0.5f;
    wire_out o;
    wire_encode_rollout_group(&g, &o, NULL);
    mb_from(&mb, &o);
    wire_out_free(&o);
    synth_group_free(&g);
    CU_ASSERT_EQUAL(group_reason(&mb, &e), WIRE_R_FIELD);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "log-prob 3"));
    mb_free(&mb);
    /* empty peer id, unknown role */
    wire_hello h = {"x", WIRE_ROLE_GENERATOR, 1, "", 0};
    wire_encode_hello(&h, &o, NULL);
    mb_from(&mb, &o);
    wire_out_free(&o);
    mb_set_meta(&mb, "{\"peer_id\":\"x\",\"role\":\"king\",\"pid\":1,\"payloads\":[]}");
    wire_msg m;
    parse_ok(&mb, &m);
    wire_hello hd;
    int reason = 0;
    CU_ASSERT_NOT_EQUAL(wire_decode_hello(&m, &hd, &reason, &e), 0);
    CU_ASSERT_EQUAL(reason, WIRE_R_FIELD);
    CU_ASSERT_STRING_EQUAL(e.where, "HELLO.role");
    wire_msg_free(&m);
    mb_free(&mb);
}

/* The fast (direct-writing) ROLLOUT_GROUP encoder against the jansson reference: the same JSON value
 * (compared as parsed JSON, reals bit for bit), the same header fields and the same payload frames. */
static void check_fast_matches_reference(const wire_rollout_group *g) {
    wire_out of, orf;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(wire_encode_rollout_group(g, &of, &e), 0);
    CU_ASSERT_EQUAL_FATAL(wire_encode_rollout_group_reference(g, &orf, &e), 0);
    json_error_t je;
    json_t *a = json_loadb(of.meta, of.meta_len, JSON_REJECT_DUPLICATES, &je);
    json_t *b = json_loadb(orf.meta, orf.meta_len, JSON_REJECT_DUPLICATES, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_TRUE(json_equal(a, b));
    CU_ASSERT_TRUE(json_is_real(json_object_get(a, "gen_seconds")));
    CU_ASSERT_TRUE(json_is_real(json_object_get(a, "created_at")));
    json_decref(a);
    json_decref(b);
    CU_ASSERT_EQUAL(memcmp(of.header, orf.header, 12), 0); /* magic, version, type, payload count */
    CU_ASSERT_EQUAL(rlhf_crc32(0, of.meta, of.meta_len),
                    (uint32_t)(of.header[12] | of.header[13] << 8 | of.header[14] << 16 | (uint32_t)of.header[15] << 24));
    CU_ASSERT_EQUAL_FATAL(of.n_payloads, orf.n_payloads);
    for (size_t i = 0; i < of.n_payloads; i++) {
        CU_ASSERT_EQUAL(of.payloads[i].len, orf.payloads[i].len);
        CU_ASSERT_PTR_EQUAL(of.payloads[i].data, orf.payloads[i].data);
    }
    /* and it parses and decodes like any message */
    msgbuf mb;
    mb_from(&mb, &of);
    wire_msg m;
    parse_ok(&mb, &m);
    wire_rollout_group d;
    CU_ASSERT_EQUAL(wire_decode_rollout_group(&m, &d, NULL, &e), 0);
    CU_ASSERT_EQUAL(d.k, g->k);
    CU_ASSERT_STRING_EQUAL(d.prompt_text, g->prompt_text ? g->prompt_text : "");
    CU_ASSERT_EQUAL(d.gen_seconds, g->gen_seconds);
    CU_ASSERT_EQUAL(d.created_at, g->created_at);
    wire_rollout_group_free(&d);
    wire_msg_free(&m);
    mb_free(&mb);
    wire_out_free(&of);
    wire_out_free(&orf);
}

static void test_fast_group_encoder_matches_reference(void) {
    static const char *const strs[] = {
        "plain", "", "quote \" backslash \\ slash /", "controls \x01\x1f\n\t\r\b\f\x7f end", "caf\xc3\xa9",
        "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "emoji \xf0\x9f\x98\x80 (4 bytes)", "\xef\xbf\xbf max BMP",
        "\xf4\x8f\xbf\xbf max code point"};
    static const double reals[] = {0.0, 0.1, 1e-300, -2.5, 1700000000.123456, 123.0, DBL_MAX, 5e-324, 1.0 / 3.0};
    size_t ns = sizeof strs / sizeof *strs, nr = sizeof reals / sizeof *reals;
    for (size_t i = 0; i < ns; i++) {
        wire_rollout_group g;
        uint32_t k = (uint32_t)(1 + i % 4);
        synth_group_make(&g, strs[(i + 1) % ns], i, i / 2, k, (uint32_t)(3 + i), strs[i], strs[(i + 2) % ns]);
        char *texts[4] = {(char *)strs[i], NULL, (char *)strs[(i + 3) % ns], (char *)strs[(i + 4) % ns]};
        if (i % 2) g.texts = texts;
        if (i % 3 == 0) g.prompt_record = json_pack("{sssis[sf]}", "answer", strs[i], "n", (int)i, "tests", strs[(i + 5) % ns], 0.5);
        g.gen_seconds = reals[i % nr];
        g.created_at = reals[(i + 4) % nr];
        check_fast_matches_reference(&g);
        json_decref(g.prompt_record);
        g.prompt_record = NULL;
        g.texts = NULL;
        synth_group_free(&g);
    }
    /* NULL strings encode as "" in both */
    wire_rollout_group g;
    synth_group_make(&g, "gen", 0, 0, 2, 4, NULL, NULL);
    g.generator_id = NULL;
    check_fast_matches_reference(&g);
    synth_group_free(&g);
}

/* Invalid UTF-8 in any string field and non-finite reals: both encoders refuse, nothing is produced. */
static void test_fast_group_encoder_rejects(void) {
    static const char *const bad[] = {"trunc \xc3", "overlong \xc0\xaf", "overlong3 \xe0\x80\xaf", "surrogate \xed\xa0\x80",
                                      "too big \xf4\x90\x80\x80", "lead \xff", "cont \x80", "short4 \xf0\x9f\x98"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        for (int field = 0; field < 4; field++) {
            wire_rollout_group g;
            synth_group_make(&g, "gen", 1, 0, 2, 4, "p", "t");
            char *texts[2] = {"ok", (char *)bad[i]};
            if (field == 0) g.prompt_id = (char *)bad[i];
            if (field == 1) g.prompt_text = (char *)bad[i];
            if (field == 2) g.generator_id = (char *)bad[i];
            if (field == 3) g.texts = texts;
            wire_out o;
            rlhf_error e;
            rlhf_error_clear(&e);
            CU_ASSERT_EQUAL(wire_encode_rollout_group(&g, &o, &e), RLHF_EINVAL);
            CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "UTF-8"));
            CU_ASSERT_PTR_NULL(o.meta);
            CU_ASSERT_NOT_EQUAL(wire_encode_rollout_group_reference(&g, &o, &e), 0);
            g.texts = NULL;
            synth_group_free(&g);
        }
    const double nonfinite[] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
        wire_rollout_group g;
        synth_group_make(&g, "gen", 1, 0, 2, 4, "p", "t");
        g.gen_seconds = nonfinite[i];
        wire_out o;
        rlhf_error e;
        rlhf_error_clear(&e);
        CU_ASSERT_EQUAL(wire_encode_rollout_group(&g, &o, &e), RLHF_EINVAL);
        CU_ASSERT_PTR_NULL(o.meta);
        CU_ASSERT_NOT_EQUAL(wire_encode_rollout_group_reference(&g, &o, &e), 0);
        synth_group_free(&g);
    }
}

/* The branch-free log-prob check: NaN, +inf, -inf and positives are rejected with their index; -0.0,
 * 0.0 and -FLT_MAX are valid. */
static void test_logprob_bounds(void) {
    const float bad[] = {NAN, INFINITY, -INFINITY, 1e-30f, FLT_MAX};
    const float good[] = {-0.0f, 0.0f, -FLT_MAX, -1e-38f};
    for (int i = 0; i < 5 + 4; i++) {
        wire_rollout_group g;
        synth_group_make(&g, "g", 1, 0, 3, 40, "p", "t");
        uint32_t at = (uint32_t)(7 * i + 3);
        g.logprobs[at] = i < 5 ? bad[i] : good[i - 5];
        wire_out o;
        CU_ASSERT_EQUAL_FATAL(wire_encode_rollout_group(&g, &o, NULL), 0);
        msgbuf mb;
        mb_from(&mb, &o);
        wire_out_free(&o);
        synth_group_free(&g);
        wire_msg m;
        parse_ok(&mb, &m);
        wire_rollout_group d;
        rlhf_error e;
        rlhf_error_clear(&e);
        int reason = 0;
        int rc = wire_validate_rollout_group(&m, &d, &reason, &e);
        if (i < 5) {
            char want[64];
            snprintf(want, sizeof want, "log-prob %u ", at);
            CU_ASSERT_NOT_EQUAL(rc, 0);
            CU_ASSERT_EQUAL(reason, WIRE_R_FIELD);
            CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, want));
        } else {
            CU_ASSERT_EQUAL(rc, 0);
            wire_rollout_group_free(&d);
        }
        wire_msg_free(&m);
        mb_free(&mb);
    }
}

int register_suites(void) {
    CU_pSuite s = CU_add_suite("wire", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "ROLLOUT_GROUP round trip", test_roundtrip_rollout_group);
    CU_add_test(s, "WEIGHTS round trip (chunked)", test_roundtrip_weights);
    CU_add_test(s, "every other type round trips", test_roundtrip_small_types);
    CU_add_test(s, "WEIGHTS_SHM round trip; path, chunk CRCs, sizes checked", test_roundtrip_weights_shm);
    CU_add_test(s, "HELLO host/shm and WEIGHTS_SHM_FAILED round trip and refusals", test_roundtrip_hello_host_and_shm_failed);
    CU_add_test(s, "wrong frame counts rejected", test_reject_frame_counts);
    CU_add_test(s, "declared lengths larger than frames rejected", test_reject_declared_length);
    CU_add_test(s, "huge counts rejected before allocating", test_reject_huge_counts);
    CU_add_test(s, "per-token versions: change points, round trip, refusals", test_token_versions);
    CU_add_test(s, "invalid JSON / wrong field types rejected", test_reject_invalid_json);
    CU_add_test(s, "unknown type, other version, bad header rejected", test_reject_unknown_type_and_version);
    CU_add_test(s, "bad CRC rejected", test_reject_bad_crc);
    CU_add_test(s, "impossible values rejected", test_reject_bad_values);
    CU_add_test(s, "fast ROLLOUT_GROUP encoder equals the jansson reference", test_fast_group_encoder_matches_reference);
    CU_add_test(s, "fast ROLLOUT_GROUP encoder rejects bad UTF-8 and non-finite reals", test_fast_group_encoder_rejects);
    CU_add_test(s, "log-prob bounds (branch-free check): NaN, inf, positive rejected", test_logprob_bounds);
    if (register_replay_suites() != 0) return -1;
    return register_broker_suites();
}
