/* tests/tfevents/test_tfevents.c — TensorBoard event files (tfevents/), checked by an independent reader:
 * tests/oracle/tfevents_check.py parses every record with Google's protobuf runtime and recomputes both
 * masked CRC-32Cs in Python.
 *
 *   crc32c vector:    the standard check value of CRC-32C, and the mask of a known CRC;
 *   metrics records:  records with numbers, booleans, strings and nested values become exactly the
 *                     scalars the reader expects (tags, steps, float32 values); the eval/ keys are left
 *                     out when asked (the updater's case), and the reader sees them when not;
 *   torn and corrupt: a record cut short is refused by the reader, accepted with --allow-torn (the
 *                     prefix holds); one flipped data byte is a data CRC failure; a flipped length byte
 *                     a length CRC failure;
 *   two writers:      a second writer in the same directory (a resume) makes a second file, both read;
 *                     its restart event at step 3 drops what the first file held from step 3 on (the
 *                     steps a crashed run trained after its last checkpoint);
 *   bad directory:    a missing directory is an error naming the file, and nothing is left behind. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "common/common.h"
#include "tests/test_paths.h"
#include "tfevents/tfevents.h"

static char g_dir[64];

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/tfevents_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* Runs the oracle: its exit status; its output in *out (caller frees). */
static int oracle(const char *expect, const char *files, const char *flags, char **out) {
    char script[1200], log[256], cmd[4096];
    test_source_path("tests/oracle/tfevents_check.py", script, sizeof script);
    snprintf(log, sizeof log, "%s/oracle.out", g_dir);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %s %s > %s 2>&1", script, expect, files, flags ? flags : "", log);
    int st = system(cmd);
    size_t n = 0;
    *out = NULL;
    rlhf_read_file(log, out, &n, NULL);
    if (!*out) *out = strdup("");
    printf("\n  oracle: %s", *out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

static void test_crc32c_vector(void) {
    CU_ASSERT_EQUAL(tfevents_crc32c(0, "123456789", 9), 0xE3069283u);
    uint32_t c = tfevents_crc32c(0, "1234", 4);
    CU_ASSERT_EQUAL(tfevents_crc32c(c, "56789", 5), 0xE3069283u);
    CU_ASSERT_EQUAL(tfevents_crc32c(0, "", 0), 0u);
    /* the mask by its definition, on a value whose rotation is easy to follow */
    CU_ASSERT_EQUAL(tfevents_masked_crc(0x00008000u), 0x00000001u + 0xa282ead8u);
    uint8_t rec[32];
    CU_ASSERT_EQUAL(tfevents_frame(rec, (const uint8_t *)"abc", 3), 19u);
    CU_ASSERT_EQUAL(rec[0], 3);
    CU_ASSERT_EQUAL(memcmp(rec + 12, "abc", 3), 0);
}

/* Metrics-like records: the expectation file and the event file from the same lines. */
static const char *const g_lines[] = {
    "{\"step\":1,\"reward/mean\":0.3671875,\"loss\":-0.03831753,\"groups/kept\":6,\"name\":\"x\",\"ok\":true,"
    "\"nested\":{\"a\":1},\"lr\":0.0003}",
    "{\"step\":2,\"reward/mean\":0.25,\"loss\":1e-9,\"groups/kept\":0,\"big\":123456789012,"
    "\"eval/step\":1,\"eval/pass_rate_greedy\":0.5,\"eval/pass_rate_sampled\":0.375}",
    "{\"step\":3,\"reward/mean\":-2.5,\"loss\":3.4e38,\"groups/kept\":8}",
    "{\"step\":4,\"reward/mean\":0.1,\"eval/step\":4,\"eval/pass_rate_greedy\":0.75}",
};

static void write_events_skipping(tfevents_writer *w, int from, int to, const char *skip) {
    for (int i = from; i < to; i++) {
        json_error_t je;
        json_t *rec = json_loads(g_lines[i], 0, &je);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
        rlhf_error err = {0};
        CU_ASSERT_EQUAL(tfevents_writer_metrics(w, rec, rlhf_wall_time(), skip, &err), 0);
        json_decref(rec);
    }
}

static void write_events(tfevents_writer *w, int from, int to) { write_events_skipping(w, from, to, "eval/"); }

/* The expectation: the lines without their eval/ keys. */
static void write_expect(const char *path, int from, int to) {
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (int i = from; i < to; i++) {
        json_t *rec = json_loads(g_lines[i], 0, NULL), *v;
        const char *key;
        void *tmp;
        json_object_foreach_safe(rec, tmp, key, v) if (!strncmp(key, "eval/", 5)) json_object_del(rec, key);
        char *t = json_dumps(rec, JSON_COMPACT);
        fprintf(f, "%s\n", t);
        free(t);
        json_decref(rec);
    }
    fclose(f);
}

static void test_metrics_records(void) {
    char sub[256], expect[300], files[1024];
    snprintf(sub, sizeof sub, "%s/one", g_dir);
    mkdir(sub, 0755);
    tfevents_writer *w = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tfevents_writer_create(&w, sub, &err), 0);
    CU_ASSERT(strstr(tfevents_writer_path(w), "/events.out.tfevents.") != NULL);
    write_events(w, 0, 4);
    snprintf(files, sizeof files, "%s", tfevents_writer_path(w));
    tfevents_writer_destroy(&w);
    CU_ASSERT_PTR_NULL(w);
    snprintf(expect, sizeof expect, "%s/expect.jsonl", sub);
    write_expect(expect, 0, 4);
    char *out;
    CU_ASSERT_EQUAL(oracle(expect, files, NULL, &out), 0);
    CU_ASSERT(strstr(out, "tfevents_check: ok 5 records, 12 scalars over 4 steps") != NULL);
    free(out);
    /* the same records with their eval/ keys: the reader sees scalars its expectation does not hold */
    CU_ASSERT_EQUAL_FATAL(tfevents_writer_create(&w, sub, &err), 0);
    write_events_skipping(w, 0, 4, NULL);
    snprintf(files, sizeof files, "%s", tfevents_writer_path(w));
    tfevents_writer_destroy(&w);
    CU_ASSERT_EQUAL(oracle(expect, files, NULL, &out), 1);
    CU_ASSERT(strstr(out, "step 2 tag eval/pass_rate_sampled: in the event files") != NULL);
    free(out);
    /* and --side places a record's eval/ keys at its eval/step, as the evaluation writes them */
    snprintf(expect, sizeof expect, "%s/side.jsonl", sub);
    write_text(expect, "{\"step\":5,\"loss\":1,\"eval/step\":4,\"eval/pass_rate_greedy\":0.5}\n");
    CU_ASSERT_EQUAL_FATAL(tfevents_writer_create(&w, sub, &err), 0);
    const char *tags[] = {"loss", "eval/pass_rate_greedy"};
    const float values[] = {1.0f, 0.5f};
    CU_ASSERT_EQUAL(tfevents_writer_scalars(w, 5, rlhf_wall_time(), tags, values, 1, &err), 0);
    CU_ASSERT_EQUAL(tfevents_writer_scalars(w, 4, rlhf_wall_time(), tags + 1, values + 1, 1, &err), 0);
    snprintf(files, sizeof files, "%s", tfevents_writer_path(w));
    tfevents_writer_destroy(&w);
    CU_ASSERT_EQUAL(oracle(expect, files, "--side eval/ eval/step", &out), 0);
    free(out);
}

static void flip_byte(const char *path, long at) {
    int fd = open(path, O_RDWR);
    CU_ASSERT_FATAL(fd >= 0);
    unsigned char c;
    CU_ASSERT_EQUAL(pread(fd, &c, 1, at), 1);
    c ^= 0x20;
    CU_ASSERT_EQUAL(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

static void test_torn_and_corrupt(void) {
    char sub[256], expect[300], path[1024], copy[1100], cmd[2400];
    snprintf(sub, sizeof sub, "%s/torn", g_dir);
    mkdir(sub, 0755);
    tfevents_writer *w = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tfevents_writer_create(&w, sub, &err), 0);
    snprintf(path, sizeof path, "%s", tfevents_writer_path(w));
    write_events(w, 0, 1);
    struct stat st;
    stat(path, &st);
    off_t whole = st.st_size;
    write_events(w, 2, 3);
    tfevents_writer_destroy(&w);
    snprintf(copy, sizeof copy, "%s.copy", path);
    snprintf(cmd, sizeof cmd, "cp %s %s.orig", path, path);
    CU_ASSERT_EQUAL(system(cmd), 0);
    /* the last record cut in its data: a crash mid-write */
    stat(path, &st);
    CU_ASSERT_EQUAL(truncate(path, whole + (st.st_size - whole) / 2), 0);
    snprintf(expect, sizeof expect, "%s/expect.jsonl", sub);
    write_expect(expect, 0, 1);
    char *out;
    CU_ASSERT_EQUAL(oracle(expect, path, NULL, &out), 1);
    free(out);
    CU_ASSERT_EQUAL(oracle(expect, path, "--allow-torn", &out), 0);
    CU_ASSERT(strstr(out, "torn record") != NULL);
    free(out);
    /* one data byte of the first scalar event flipped (the file_version event is 16 + its data long) */
    snprintf(cmd, sizeof cmd, "cp %s.orig %s", path, path);
    CU_ASSERT_EQUAL(system(cmd), 0);
    write_expect(expect, 0, 1);
    FILE *f = fopen(path, "rb");
    unsigned char head[8];
    CU_ASSERT_EQUAL_FATAL(fread(head, 1, 8, f), 8u);
    fclose(f);
    long first = 16 + head[0]; /* the version event is short: its length fits one byte */
    flip_byte(path, first + 12 + 20);
    CU_ASSERT_EQUAL(oracle(expect, path, "--allow-torn", &out), 1);
    CU_ASSERT(strstr(out, "data CRC") != NULL);
    free(out);
    /* a length byte flipped: the length CRC says so */
    snprintf(cmd, sizeof cmd, "cp %s.orig %s", path, path);
    CU_ASSERT_EQUAL(system(cmd), 0);
    flip_byte(path, first + 1);
    CU_ASSERT_EQUAL(oracle(expect, path, NULL, &out), 1);
    CU_ASSERT(strstr(out, "length CRC") != NULL);
    free(out);
}

static void test_two_writers(void) {
    char sub[256], expect[300], files[2100];
    snprintf(sub, sizeof sub, "%s/two", g_dir);
    mkdir(sub, 0755);
    tfevents_writer *a = NULL, *b = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tfevents_writer_create(&a, sub, &err), 0);
    write_events(a, 0, 3); /* steps 1-3; the resumed writer trains 3 again */
    /* the second writer of the same second and process still gets a file of its own */
    CU_ASSERT_EQUAL_FATAL(tfevents_writer_create(&b, sub, &err), 0);
    CU_ASSERT_EQUAL(tfevents_writer_restart(b, 3, rlhf_wall_time(), &err), 0);
    CU_ASSERT(strcmp(tfevents_writer_path(a), tfevents_writer_path(b)) != 0);
    write_events(b, 2, 4);
    snprintf(files, sizeof files, "%s %s", tfevents_writer_path(a), tfevents_writer_path(b));
    tfevents_writer_destroy(&a);
    tfevents_writer_destroy(&b);
    snprintf(expect, sizeof expect, "%s/expect.jsonl", sub);
    write_expect(expect, 0, 4);
    char *out;
    CU_ASSERT_EQUAL(oracle(expect, files, NULL, &out), 0);
    CU_ASSERT(strstr(out, "in 2 files") != NULL);
    CU_ASSERT(strstr(out, "restart at step 3: 3 scalars of earlier writes dropped") != NULL);
    free(out);
}

static void test_bad_directory(void) {
    char sub[256];
    snprintf(sub, sizeof sub, "%s/missing/dir", g_dir);
    tfevents_writer *w = NULL;
    rlhf_error err = {0};
    CU_ASSERT(tfevents_writer_create(&w, sub, &err) < 0);
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT(strstr(err.where, "/missing/dir/events.out.tfevents.") != NULL);
    CU_ASSERT(strstr(err.msg, "cannot create") != NULL);
    /* a record that is not an object, or has no step, is refused without writing */
    snprintf(sub, sizeof sub, "%s/refuse", g_dir);
    mkdir(sub, 0755);
    CU_ASSERT_EQUAL_FATAL(tfevents_writer_create(&w, sub, &err), 0);
    struct stat before, after;
    stat(tfevents_writer_path(w), &before);
    json_t *rec = json_pack("{s:f}", "loss", 1.0);
    CU_ASSERT(tfevents_writer_metrics(w, rec, rlhf_wall_time(), NULL, &err) < 0);
    CU_ASSERT(strstr(err.msg, "step") != NULL);
    json_decref(rec);
    stat(tfevents_writer_path(w), &after);
    CU_ASSERT_EQUAL(before.st_size, after.st_size);
    tfevents_writer_destroy(&w);
}

int register_suites(void) {
    CU_pSuite s = CU_add_suite("tfevents", suite_init, suite_cleanup);
    if (!s) return -1;
    CU_add_test(s, "crc32c check value, mask, frame layout", test_crc32c_vector);
    CU_add_test(s, "metrics records become the scalars an independent protobuf reader expects", test_metrics_records);
    CU_add_test(s, "torn last record tolerated only when asked; flipped bytes fail their CRC", test_torn_and_corrupt);
    CU_add_test(s, "a second writer (resume) makes a second file; both read", test_two_writers);
    CU_add_test(s, "missing directory: error naming the file; bad records refused unwritten", test_bad_directory);
    return 0;
}
