/* tests/fuzz/fuzz_seeds.c — writes the binary seed inputs of the fuzz targets from real encodings: one
 * wire message of every type (in fuzz_wire's input layout), project and Hugging Face safetensors files, a
 * Hugging Face directory of a tiny model, and replay-log segments. tests/fuzz/make_corpus.py runs it
 * (and writes the text seeds itself); the output is committed under tests/fuzz/corpus/.
 *
 *   fuzz_seeds CORPUS_DIR */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/broker.h"
#include "broker/wire.h"
#include "model/model.h"
#include "model/model_infer.h"
#include "tests/fuzz/fuzz_util.h"

static const char *g_root;

static void die(const char *what, const rlhf_error *err) {
    fprintf(stderr, "fuzz_seeds: %s: %s: %s\n", what, err ? err->where : "", err ? err->msg : strerror(errno));
    exit(1);
}

/* CORPUS/target/name := parts joined by FUZZ_SEP, after an optional flag byte (flag < 0: none). */
static void seed(const char *target, const char *name, int flag, const void *const *parts, const size_t *lens,
                 size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_root, target);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", g_root, target, name);
    FILE *f = fopen(path, "wb");
    if (!f) die(path, NULL);
    if (flag >= 0) fputc(flag, f);
    for (size_t i = 0; i < n; i++) {
        if (i) fwrite(FUZZ_SEP, 1, FUZZ_SEP_LEN, f);
        fwrite(parts[i], 1, lens[i], f);
    }
    if (fclose(f)) die(path, NULL);
}

static void seed1(const char *target, const char *name, int flag, const void *p, size_t n) {
    seed(target, name, flag, &p, &n, 1);
}

static void read_all(const char *path, char **buf, size_t *len) {
    rlhf_error err;
    if (rlhf_read_file(path, buf, len, &err)) die(path, &err);
}

/* ------------------------------------------------------------------ wire */

static void wire_seed(const char *name, const wire_out *o) {
    size_t n = 1 + o->n_payloads;
    const void *parts[64];
    size_t lens[64];
    if (n > 64) n = 64;
    parts[0] = o->meta;
    lens[0] = o->meta_len;
    for (size_t i = 1; i < n; i++) {
        parts[i] = o->payloads[i - 1].data;
        lens[i] = o->payloads[i - 1].len;
    }
    int type = o->header[6] | (o->header[7] << 8);
    seed("fuzz_wire", name, type - 1, parts, lens, n);
}

static void make_group(wire_rollout_group *g, uint32_t k, int with_texts) {
    static int32_t prompt[4] = {1, 2, 3, 4};
    static uint32_t ntok[3] = {3, 1, 2};
    static int32_t tokens[6] = {10, 11, 12, 13, 14, 15};
    static float lps[6] = {-0.5f, -1.0f, -0.25f, -2.0f, -0.125f, -3.0f};
    static uint8_t finish[3] = {0, 1, 2};
    static char *texts[3] = {"four", NULL, "\xc3\xa9t\xc3\xa9"};
    memset(g, 0, sizeof *g);
    g->prompt_id = "p17";
    g->prompt_text = "What is 2+2?";
    g->prompt_record = with_texts ? json_pack("{s:s, s:[i]}", "answer", "4", "tests", 1) : NULL;
    g->generator_id = "generator-0.123";
    g->seq = 42;
    g->policy_version = 7;
    g->k = k;
    g->n_prompt_tokens = 4;
    g->prompt_tokens = prompt;
    g->n_tokens = ntok;
    g->tokens = tokens;
    g->logprobs = lps;
    g->finish = finish;
    g->texts = with_texts ? texts : NULL;
    g->gen_seconds = 0.25;
    g->created_at = 1.7e9;
}

static void wire_seeds(void) {
    rlhf_error err;
    wire_out o;
#define EMIT(name, call)                                                                                       \
    do {                                                                                                       \
        if (call) die(name, &err);                                                                             \
        wire_seed(name, &o);                                                                                   \
        wire_out_free(&o);                                                                                     \
    } while (0)
    wire_hello h = {.peer_id = "generator-0.123", .role = WIRE_ROLE_GENERATOR, .pid = 123};
    EMIT("hello", wire_encode_hello(&h, &o, &err));
    wire_welcome w = {.newest_version = 3, .has_weights = 1, .heartbeat_interval_ms = 1000, .max_staleness = 2,
                      .host_files_dir = "/dev/shm"};
    EMIT("welcome", wire_encode_welcome(&w, &o, &err));
    wire_prompt_request pr = {.request_id = 9, .n = 4};
    EMIT("prompt_request", wire_encode_prompt_request(&pr, &o, &err));
    wire_prompt ps[2] = {{.id = "p1", .text = "Add 2 and 3.", .index = 0, .record = json_pack("{s:s}", "answer", "5")},
                         {.id = "p2", .text = "\xe2\x82\xac?", .index = 5, .record = NULL}};
    wire_prompt_batch pb = {.request_id = 9, .newest_version = 3, .n = 2, .prompts = ps};
    EMIT("prompt_batch", wire_encode_prompt_batch(&pb, &o, &err));
    json_decref(ps[0].record);
    wire_rollout_group g;
    make_group(&g, 3, 1);
    EMIT("rollout_group", wire_encode_rollout_group(&g, &o, &err));
    EMIT("rollout_group_reference", wire_encode_rollout_group_reference(&g, &o, &err));
    json_decref(g.prompt_record);
    make_group(&g, 1, 0);
    EMIT("rollout_group_k1", wire_encode_rollout_group(&g, &o, &err));
    wire_credit c = {.n = 4};
    EMIT("credit", wire_encode_credit(&c, &o, &err));
    static float blob[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    wire_tensor ts[2] = {{.name = "embed", .ndim = 2, .shape = {2, 3}, .offset = 0, .nbytes = 24},
                         {.name = "norm", .ndim = 1, .shape = {4}, .offset = 24, .nbytes = 16}};
    wire_weights wt = {.version = 4, .n_tensors = 2, .tensors = ts, .nbytes = sizeof blob, .data = (uint8_t *)blob,
                       .chunk_bytes = 16};
    EMIT("weights", wire_encode_weights(&wt, &o, &err));
    static char *srcs[2] = {"correct", "length"};
    static float rw[6] = {1, 0, 1, 0.5f, 0.25f, -1};
    static float tot[3] = {1.5f, 0.25f, 0};
    wire_prompt_stats st = {.prompt_id = "p1", .policy_version = 3, .k = 3, .n_sources = 2, .source_names = srcs,
                            .rewards = rw, .total = tot};
    EMIT("prompt_stats", wire_encode_prompt_stats(&st, &o, &err));
    wire_control ctl = {.command = WIRE_CONTROL_PAUSE, .reason = "operator"};
    EMIT("control", wire_encode_control(&ctl, &o, &err));
    wire_heartbeat hb = {.peer_id = "updater-0.9", .role = WIRE_ROLE_UPDATER, .seq = 12, .state = "training"};
    EMIT("heartbeat", wire_encode_heartbeat(&hb, &o, &err));
    EMIT("stats_request", wire_encode_stats_request(&o, &err));
    json_t *stats = json_pack("{s:{s:i, s:f}}", "counters", "groups/accepted", 12, "rate", 1.5);
    EMIT("stats", wire_encode_stats(stats, &o, &err));
    json_decref(stats);
    wire_error_msg em = {.reason = "bad_crc", .detail = "payload CRC-32 mismatch", .peer_version = 1};
    EMIT("error", wire_encode_error(&em, &o, &err));
    EMIT("weights_ack", wire_encode_weights_ack(5, &o, &err));
#undef EMIT
}

/* ------------------------------------------------------------------ safetensors, HF directory */

static void safetensors_seeds(const char *tmp) {
    static float a[6] = {1, -2, 3.5f, 0, 1e-3f, 65504};
    static float b[3] = {0.5f, 0.25f, -8};
    safetensors_tensor ts[2] = {{.name = "a", .ndim = 2, .shape = {2, 3}, .data = a},
                                {.name = "b", .ndim = 1, .shape = {3}, .data = b}};
    json_t *meta = json_pack("{s:s}", "format", "pt");
    static const struct {
        safetensors_dtype dt;
        const char *name;
    } kinds[] = {{SAFETENSORS_F32, "f32"}, {SAFETENSORS_BF16, "bf16"}, {SAFETENSORS_F16, "f16"}};
    rlhf_error err;
    for (int i = 0; i < 3; i++) {
        char path[1024], name[64];
        snprintf(path, sizeof path, "%s/t.safetensors", tmp);
        /* F16 is read, not written: a BF16 file relabelled (same element size; the header keeps its length) */
        safetensors_dtype dt = kinds[i].dt == SAFETENSORS_F16 ? SAFETENSORS_BF16 : kinds[i].dt;
        if (safetensors_write_as(path, ts, 2, meta, dt, &err)) die(path, &err);
        char *buf;
        size_t len;
        read_all(path, &buf, &len);
        for (char *p; kinds[i].dt == SAFETENSORS_F16 && (p = memmem(buf, len, "\"dtype\":\"BF16\"", 14));)
            memcpy(p, "\"dtype\": \"F16\"", 14);
        snprintf(name, sizeof name, "%s_memory", kinds[i].name);
        seed1("fuzz_safetensors", name, 0, buf, len);
        snprintf(name, sizeof name, "%s_file", kinds[i].name);
        seed1("fuzz_safetensors", name, 1, buf, len);
        free(buf);
    }
    json_decref(meta);
}

static void hf_seeds(const char *tmp) {
    model_config cfg = {.dim = 8, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .ffn_dim = 16, .vocab_size = 16,
                        .max_seq_len = 32, .rope_theta = 10000, .norm_eps = 1e-5f, .tie_embeddings = 1};
    static const struct {
        const char *name;
        int qk_norm, attn_bias, tie;
    } kinds[] = {{"llama", 0, 0, 1}, {"qwen2", 0, 1, 0}, {"qwen3", 1, 0, 1}};
    rlhf_error err;
    for (int k = 0; k < 3; k++) {
        cfg.qk_norm = kinds[k].qk_norm;
        cfg.attn_bias = kinds[k].attn_bias;
        cfg.tie_embeddings = kinds[k].tie;
        model *m = NULL;
        if (model_create(&m, &cfg, &err)) die("model_create", &err);
        char dir[1024], p[1100];
        snprintf(dir, sizeof dir, "%s/hf_%s", tmp, kinds[k].name);
        if (model_export_hf(m, dir, NULL, &err)) die(dir, &err);
        model_destroy(&m);
        char *c, *st;
        size_t cl, sl;
        snprintf(p, sizeof p, "%s/config.json", dir);
        read_all(p, &c, &cl);
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        read_all(p, &st, &sl);
        const void *parts[3] = {c, st, NULL};
        size_t lens[3] = {cl, sl, 0};
        char name[64];
        snprintf(name, sizeof name, "%s_single", kinds[k].name);
        seed("fuzz_hf", name, -1, parts, lens, 2);
        /* the same weights as one shard named by an index */
        safetensors_file *f = NULL;
        if (safetensors_open(&f, p, &err)) die(p, &err);
        json_t *wm = json_object();
        for (int i = 0; i < f->n_tensors; i++)
            json_object_set_new(wm, f->tensors[i].name, json_string("model-00001-of-00001.safetensors"));
        safetensors_close(&f);
        json_t *idx = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", (int)sl, "weight_map", wm);
        char *it = json_dumps(idx, JSON_INDENT(1) | JSON_SORT_KEYS);
        json_decref(idx);
        parts[1] = it;
        lens[1] = strlen(it);
        parts[2] = st;
        lens[2] = sl;
        snprintf(name, sizeof name, "%s_sharded", kinds[k].name);
        seed("fuzz_hf", name, -1, parts, lens, 3);
        free(it);
        free(c);
        free(st);
    }
}

/* ------------------------------------------------------------------ replay log */

static void replay_seeds(const char *tmp) {
    char path[1024];
    snprintf(path, sizeof path, "%s/rollouts.log", tmp);
    unlink(path);
    rlhf_error err;
    replay_writer *w = NULL;
    replay_writer_opts o = {0};
    if (replay_writer_open(&w, path, &o, NULL, NULL, &err)) die(path, &err);
    wire_rollout_group g;
    for (int i = 0; i < 3; i++) {
        make_group(&g, i == 1 ? 1 : 3, i != 2);
        g.seq = (uint64_t)i;
        if (replay_writer_append_group(w, &g, NULL, &err)) die(path, &err);
        json_decref(g.prompt_record);
    }
    if (replay_writer_close(&w, &err)) die(path, &err);
    char *buf;
    size_t len;
    read_all(path, &buf, &len);
    static const int flags[] = {0, 1, 2, 3, 5, 7};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "three_groups_flags%d", flags[i]);
        seed1("fuzz_replay_log", name, flags[i], buf, len);
    }
    /* torn: the last record cut in half */
    seed1("fuzz_replay_log", "torn_tail", 3, buf, len - 40);
    free(buf);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seeds CORPUS_DIR\n");
        return 2;
    }
    g_root = argv[1];
    mkdir(g_root, 0755);
    char tmp[] = "/tmp/fuzz-seeds-XXXXXX";
    if (!mkdtemp(tmp)) die("mkdtemp", NULL);
    wire_seeds();
    safetensors_seeds(tmp);
    hf_seeds(tmp);
    replay_seeds(tmp);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : 1;
}
