/* tests/broker/test_replay.c — replay log: write/reopen/read identical, torn tails, corruption,
 * rotation, not-a-log files. */
#include <CUnit/CUnit.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/broker.h"
#include "tests/broker/synth_common.h"

static char tmpdir[256];

static int suite_init(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_broker_replay.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int suite_clean(void) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_of(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmpdir, name); }

static uint64_t file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* Writes n synthetic groups; fills pos[] with their positions. */
static void write_groups(const char *path, int n, replay_pos *pos, const replay_writer_opts *opts) {
    replay_writer *w;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(replay_writer_open(&w, path, opts, NULL, NULL, &e), 0);
    for (int i = 0; i < n; i++) {
        wire_rollout_group g;
        synth_group_make(&g, "gen-a", (uint64_t)i, (uint64_t)i / 3, 4, 8 + (uint32_t)i, "pid", "ptext");
        CU_ASSERT_EQUAL(replay_writer_append_group(w, &g, pos ? &pos[i] : NULL, &e), 0);
        synth_group_free(&g);
    }
    CU_ASSERT_EQUAL(replay_writer_close(&w, &e), 0);
}

/* Reads everything; returns the record count, checks each against what write_groups wrote. */
static int read_all(const char *path, int *torn, replay_pos *torn_pos, int *err_code, rlhf_error *e) {
    replay_reader *r;
    rlhf_error_clear(e);
    *err_code = replay_reader_open(&r, path, e);
    if (*err_code) return -1;
    int n = 0, rc;
    wire_rollout_group g;
    replay_pos p;
    while ((rc = replay_reader_next(r, &g, &p, e)) == 1) {
        CU_ASSERT_EQUAL(g.seq, (uint64_t)n);
        CU_ASSERT_EQUAL(g.policy_version, (uint64_t)n / 3);
        CU_ASSERT_EQUAL(g.n_tokens[0], 8 + (uint32_t)n);
        CU_ASSERT_STRING_EQUAL(g.prompt_id, "pid");
        CU_ASSERT_TRUE(synth_group_check(&g));
        wire_rollout_group_free(&g);
        n++;
    }
    *err_code = rc;
    *torn = replay_reader_torn(r, torn_pos, NULL);
    replay_reader_close(&r);
    return n;
}

static void test_write_reopen_read(void) {
    char p[512];
    path_of(p, sizeof p, "a.log");
    replay_pos pos[20];
    replay_writer_opts o = {BROKER_FSYNC_ALWAYS, 0, 0};
    write_groups(p, 12, pos, &o);
    /* reopen for append: records continue after the existing ones */
    replay_writer *w;
    rlhf_error e;
    rlhf_error_clear(&e);
    uint64_t torn = 99;
    CU_ASSERT_EQUAL_FATAL(replay_writer_open(&w, p, &o, NULL, &torn, &e), 0);
    CU_ASSERT_EQUAL(torn, 0);
    CU_ASSERT_EQUAL(replay_writer_records(w), 12);
    for (int i = 12; i < 20; i++) {
        wire_rollout_group g;
        synth_group_make(&g, "gen-a", (uint64_t)i, (uint64_t)i / 3, 4, 8 + (uint32_t)i, "pid", "ptext");
        CU_ASSERT_EQUAL(replay_writer_append_group(w, &g, &pos[i], &e), 0);
        synth_group_free(&g);
    }
    replay_writer_close(&w, &e);
    int ntorn, code;
    replay_pos tp;
    CU_ASSERT_EQUAL(read_all(p, &ntorn, &tp, &code, &e), 20);
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_EQUAL(ntorn, 0);
    /* seek to a recorded position and read from there */
    replay_reader *r;
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&r, p, &e), 0);
    CU_ASSERT_EQUAL(replay_reader_seek(r, pos[15], &e), 0);
    wire_rollout_group g;
    replay_pos got;
    CU_ASSERT_EQUAL(replay_reader_next(r, &g, &got, &e), 1);
    CU_ASSERT_EQUAL(g.seq, 15);
    CU_ASSERT_EQUAL(got.offset, pos[15].offset);
    wire_rollout_group_free(&g);
    replay_reader_close(&r);
}

static void test_torn_last_record(void) {
    char p[512];
    path_of(p, sizeof p, "torn.log");
    replay_pos pos[10];
    replay_writer_opts o = {BROKER_FSYNC_NEVER, 0, 0};
    write_groups(p, 10, pos, &o);
    uint64_t full = file_size(p);
    /* cut the last record in the middle */
    uint64_t cut = pos[9].offset + (full - pos[9].offset) / 2;
    CU_ASSERT_EQUAL_FATAL(truncate(p, (off_t)cut), 0);
    int ntorn, code;
    replay_pos tp;
    rlhf_error e;
    CU_ASSERT_EQUAL(read_all(p, &ntorn, &tp, &code, &e), 9);
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_EQUAL(ntorn, 1);
    CU_ASSERT_EQUAL(tp.offset, pos[9].offset);
    /* cut inside the 12-byte record header */
    CU_ASSERT_EQUAL_FATAL(truncate(p, (off_t)(pos[9].offset + 5)), 0);
    CU_ASSERT_EQUAL(read_all(p, &ntorn, &tp, &code, &e), 9);
    CU_ASSERT_EQUAL(ntorn, 1);
    /* whole length present but garbage bytes (a crash before the data reached the disk) */
    CU_ASSERT_EQUAL_FATAL(truncate(p, (off_t)full), 0); /* zero-filled tail */
    CU_ASSERT_EQUAL(read_all(p, &ntorn, &tp, &code, &e), 9);
    CU_ASSERT_EQUAL(ntorn, 1);
    /* the writer cuts the torn tail on reopen and appends after record 8 */
    replay_writer *w;
    uint64_t torn_bytes = 0;
    replay_pos twp;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(replay_writer_open(&w, p, &o, &twp, &torn_bytes, &e), 0);
    CU_ASSERT_EQUAL(torn_bytes, full - pos[9].offset);
    CU_ASSERT_EQUAL(twp.offset, pos[9].offset);
    CU_ASSERT_EQUAL(replay_writer_records(w), 9);
    wire_rollout_group g;
    synth_group_make(&g, "gen-a", 9, 3, 4, 17, "pid", "ptext");
    CU_ASSERT_EQUAL(replay_writer_append_group(w, &g, NULL, &e), 0);
    synth_group_free(&g);
    replay_writer_close(&w, &e);
    CU_ASSERT_EQUAL(read_all(p, &ntorn, &tp, &code, &e), 10);
    CU_ASSERT_EQUAL(ntorn, 0);
    CU_ASSERT_EQUAL(file_size(p), full);
}

static void test_corrupt_middle_and_not_a_log(void) {
    char p[512];
    path_of(p, sizeof p, "corrupt.log");
    replay_pos pos[6];
    replay_writer_opts o = {BROKER_FSYNC_NEVER, 0, 0};
    write_groups(p, 6, pos, &o);
    /* flip a byte inside record 2: not the last record, so it is corruption, not a torn tail */
    int fd = open(p, O_RDWR);
    uint8_t b;
    CU_ASSERT_EQUAL(pread(fd, &b, 1, (off_t)pos[2].offset + 40), 1);
    b ^= 0xff;
    CU_ASSERT_EQUAL(pwrite(fd, &b, 1, (off_t)pos[2].offset + 40), 1);
    close(fd);
    int ntorn, code;
    replay_pos tp;
    rlhf_error e;
    CU_ASSERT_EQUAL(read_all(p, &ntorn, &tp, &code, &e), 2);
    CU_ASSERT_EQUAL(code, RLHF_ECORRUPT);
    char want[600];
    snprintf(want, sizeof want, "%s: offset %llu", p, (unsigned long long)pos[2].offset);
    CU_ASSERT_STRING_EQUAL(e.where, want);
    /* a writer refuses to append to it too */
    replay_writer *w;
    CU_ASSERT_EQUAL(replay_writer_open(&w, p, &o, NULL, NULL, &e), RLHF_ECORRUPT);
    /* a file that is not a replay log */
    char q[512];
    path_of(q, sizeof q, "notalog.jsonl");
    FILE *f = fopen(q, "w");
    fputs("{\"id\": \"x\", \"prompt\": \"hello\"}\n", f);
    fclose(f);
    replay_reader *r;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL(replay_reader_open(&r, q, &e), RLHF_ECORRUPT);
    CU_ASSERT_STRING_EQUAL(e.where, q);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "offset 0"));
    CU_ASSERT_EQUAL(replay_writer_open(&w, q, &o, NULL, NULL, &e), RLHF_ECORRUPT);
}

static void test_rotation(void) {
    char p[512];
    path_of(p, sizeof p, "rot.log");
    replay_pos pos[30];
    replay_writer_opts o = {BROKER_FSYNC_EVERY_N, 4, 3000}; /* a few records per segment */
    write_groups(p, 30, pos, &o);
    CU_ASSERT_TRUE(pos[29].segment >= 3);
    char seg[600];
    for (uint32_t s = 1; s <= pos[29].segment; s++) {
        snprintf(seg, sizeof seg, "%s.%u", p, s);
        CU_ASSERT_TRUE(file_size(seg) > 16);
        CU_ASSERT_TRUE(file_size(seg) <= 3000 + 600); /* one record may be bigger than what is left */
    }
    int ntorn, code;
    replay_pos tp;
    rlhf_error e;
    CU_ASSERT_EQUAL(read_all(p, &ntorn, &tp, &code, &e), 30);
    CU_ASSERT_EQUAL(code, 0);
    /* reopening appends to the newest segment */
    replay_writer *w;
    CU_ASSERT_EQUAL_FATAL(replay_writer_open(&w, p, &o, NULL, NULL, &e), 0);
    wire_rollout_group g;
    replay_pos np;
    synth_group_make(&g, "gen-a", 30, 10, 4, 38, "pid", "ptext");
    CU_ASSERT_EQUAL(replay_writer_append_group(w, &g, &np, &e), 0);
    synth_group_free(&g);
    replay_writer_close(&w, &e);
    CU_ASSERT_TRUE(np.segment >= pos[29].segment);
    CU_ASSERT_EQUAL(read_all(p, &ntorn, &tp, &code, &e), 31);
}

int register_replay_suites(void) {
    CU_pSuite s = CU_add_suite("replay_log", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "write, reopen, append, read back identical, seek", test_write_reopen_read);
    CU_add_test(s, "torn last record skipped and reported, cut by the writer", test_torn_last_record);
    CU_add_test(s, "corrupt middle record and non-log files: errors with file and offset",
                test_corrupt_middle_and_not_a_log);
    CU_add_test(s, "rotation by size into numbered segments", test_rotation);
    return 0;
}
