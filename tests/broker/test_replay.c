/* tests/broker/test_replay.c — replay log: write/reopen/read identical, torn tails, corruption,
 * rotation, not-a-log files. */
#include <CUnit/CUnit.h>
#include <dirent.h>
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

/* ---------------------------------------------------------------- damage, byte by byte */

static uint8_t *slurp(const char *p, size_t *n) {
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = 0;
    if (b) *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void spit(const char *p, const uint8_t *b, size_t n) {
    FILE *f = fopen(p, "wb");
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_EQUAL(fwrite(b, 1, n, f), n);
    fclose(f);
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Reads p in skip_corrupt mode; *seqs gets the seq of each record; returns the count. */
static int read_skipping(const char *p, uint64_t *seqs, size_t *n_damage, replay_damage *first, int *torn) {
    replay_reader *r;
    rlhf_error e;
    rlhf_error_clear(&e);
    if (replay_reader_open(&r, p, &e) != 0) return -1;
    replay_reader_skip_corrupt(r, 1);
    int n = 0, rc;
    wire_rollout_group g;
    while ((rc = replay_reader_next(r, &g, NULL, &e)) == 1) {
        seqs[n++] = g.seq;
        if (!synth_group_check(&g)) n = -1000;
        wire_rollout_group_free(&g);
    }
    const replay_damage *d;
    *n_damage = replay_reader_damage(r, &d);
    if (*n_damage) *first = d[0];
    *torn = replay_reader_torn(r, NULL, NULL);
    replay_reader_close(&r);
    return rc == 0 ? n : -2;
}

/* Removes the quarantine copies next to p; returns how many there were, checking each holds `want`. */
static int quarantine_count(const char *p, const uint8_t *want, size_t n) {
    DIR *dir = opendir(tmpdir);
    const char *base = strrchr(p, '/') + 1;
    char prefix[600], q[1200];
    snprintf(prefix, sizeof prefix, "%s.damaged-", base);
    int count = 0;
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
        if (strncmp(de->d_name, prefix, strlen(prefix)) != 0) continue;
        snprintf(q, sizeof q, "%s/%s", tmpdir, de->d_name);
        size_t qn;
        uint8_t *b = slurp(q, &qn);
        CU_ASSERT(b && qn == n && memcmp(b, want, n) == 0);
        free(b);
        unlink(q);
        count++;
    }
    if (dir) closedir(dir);
    return count;
}

/* A small log written by the project's writer; every byte after the file header flipped in turn. The
 * oracle: a flip inside record k costs record k and nothing else. It is a torn tail only when k is the
 * last record and the flip makes its length run past the end of the file (what a crash leaves); every
 * other case is damage: the default reader fails at record k's offset after the records before it, the
 * writer refuses (file untouched, a byte-identical quarantine copy), a skipping reader lists one stretch
 * [offset of k, offset of k+1) and returns all other records, and repair keeps all of them. */
static void test_flip_every_byte(void) {
    enum { N = 5 };
    char p[512], orig[512];
    path_of(orig, sizeof orig, "flip.orig");
    path_of(p, sizeof p, "flip.log");
    replay_pos pos[N];
    replay_writer_opts o = {BROKER_FSYNC_NEVER, 0, 0};
    write_groups(orig, N, pos, &o);
    size_t size = 0;
    uint8_t *clean = slurp(orig, &size);
    CU_ASSERT_FATAL(clean != NULL);
    uint64_t bound[N + 1];
    for (int k = 0; k < N; k++) bound[k] = pos[k].offset;
    bound[N] = size;
    uint8_t *bad = malloc(size);
    int cases = 0, torn_cases = 0, failures = 0;
    for (size_t at = 16; at < size; at++) {
        int k = 0;
        while (bound[k + 1] <= at) k++;
        memcpy(bad, clean, size);
        bad[at] ^= 0xff;
        int expect_torn = 0;
        if (k == N - 1 && at >= bound[k] + 4 && at < bound[k] + 8)
            expect_torn = (uint64_t)le32(bad + bound[k] + 4) > size - bound[k] - 12;
        cases++;
        torn_cases += expect_torn;
        int fail_before = (int)CU_get_number_of_failures();
        /* skipping reader */
        spit(p, bad, size);
        uint64_t seqs[N];
        size_t nd = 0;
        replay_damage d = {{0, 0}, 0};
        int torn = 0;
        int n = read_skipping(p, seqs, &nd, &d, &torn);
        CU_ASSERT_EQUAL(n, N - 1);
        for (int i = 0, s = 0; i < n && i < N - 1; i++, s++) {
            if (s == k) s++;
            CU_ASSERT_EQUAL(seqs[i], (uint64_t)s);
        }
        if (expect_torn) {
            CU_ASSERT_EQUAL(nd, 0);
            CU_ASSERT_EQUAL(torn, 1);
        } else {
            CU_ASSERT_EQUAL(nd, 1);
            CU_ASSERT_EQUAL(torn, 0);
            CU_ASSERT_EQUAL(d.pos.offset, bound[k]);
            CU_ASSERT_EQUAL(d.bytes, bound[k + 1] - bound[k]);
        }
        /* default reader: the records before k, then an error at k's offset (or the torn tail skipped) */
        int code, ntorn;
        replay_pos tp;
        rlhf_error e;
        rlhf_error_clear(&e);
        replay_reader *r;
        CU_ASSERT_EQUAL_FATAL(replay_reader_open(&r, p, &e), 0);
        wire_rollout_group g;
        int got = 0;
        while ((code = replay_reader_next(r, &g, NULL, &e)) == 1) {
            wire_rollout_group_free(&g);
            got++;
        }
        ntorn = replay_reader_torn(r, &tp, NULL);
        replay_reader_close(&r);
        CU_ASSERT_EQUAL(got, k);
        if (expect_torn) {
            CU_ASSERT_EQUAL(code, 0);
            CU_ASSERT_EQUAL(ntorn, 1);
        } else {
            char want[600];
            snprintf(want, sizeof want, "%s: offset %llu", p, (unsigned long long)bound[k]);
            CU_ASSERT_EQUAL(code, RLHF_ECORRUPT);
            CU_ASSERT_STRING_EQUAL(e.where, want);
        }
        /* writer: cuts a torn tail; refuses damage, changing nothing, keeping a copy */
        replay_writer *w = NULL;
        rlhf_error_clear(&e);
        int wrc = replay_writer_open(&w, p, &o, NULL, NULL, &e);
        if (expect_torn) {
            CU_ASSERT_EQUAL(wrc, 0);
            if (w) CU_ASSERT_EQUAL(replay_writer_records(w), N - 1);
            replay_writer_close(&w, &e);
            CU_ASSERT_EQUAL(file_size(p), bound[N - 1]);
            CU_ASSERT_EQUAL(quarantine_count(p, bad, size), 0);
        } else {
            CU_ASSERT_EQUAL(wrc, RLHF_ECORRUPT);
            CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "--repair"));
            size_t now_n;
            uint8_t *now = slurp(p, &now_n);
            CU_ASSERT(now_n == size && memcmp(now, bad, size) == 0);
            free(now);
            CU_ASSERT_EQUAL(quarantine_count(p, bad, size), 1);
            /* repair: every valid record kept, nothing damaged left, a copy made */
            replay_repair_report rep;
            CU_ASSERT_EQUAL(replay_log_repair(p, &rep, &e), 0);
            CU_ASSERT_EQUAL(rep.records, N - 1);
            CU_ASSERT_EQUAL(rep.segments_repaired, 1);
            CU_ASSERT_EQUAL(quarantine_count(p, bad, size), 1);
            n = read_skipping(p, seqs, &nd, &d, &torn);
            CU_ASSERT_EQUAL(n, N - 1);
            CU_ASSERT_EQUAL(nd, 0);
            CU_ASSERT_EQUAL(torn, 0);
            CU_ASSERT_EQUAL(file_size(p), size - (bound[k + 1] - bound[k]));
            CU_ASSERT_EQUAL(replay_writer_open(&w, p, &o, NULL, NULL, &e), 0);
            replay_writer_close(&w, &e);
        }
        if ((int)CU_get_number_of_failures() != fail_before && failures++ < 5)
            fprintf(stderr, "\n  flip at byte %zu (record %d, %s) failed\n", at, k, expect_torn ? "torn" : "damage");
    }
    /* the oracle covered both classes */
    CU_ASSERT(torn_cases >= 1 && torn_cases < cases);
    fprintf(stderr, " (%d bytes flipped in a %zu-byte log of %d records: %d torn tail, %d damage) ", cases, size, N,
            torn_cases, cases - torn_cases);
    /* a flip in the 16-byte file header: not a replay log */
    for (size_t at = 0; at < 16; at++) {
        memcpy(bad, clean, size);
        bad[at] ^= 0xff;
        spit(p, bad, size);
        replay_reader *r;
        rlhf_error e;
        CU_ASSERT_EQUAL(replay_reader_open(&r, p, &e), RLHF_ECORRUPT);
    }
    /* two damaged records and a repair keep the other three; a clean log is left alone by repair */
    memcpy(bad, clean, size);
    bad[bound[1] + 20] ^= 0x01;
    bad[bound[3] + 4] ^= 0x40; /* record 3's length */
    spit(p, bad, size);
    uint64_t seqs[N];
    size_t nd;
    replay_damage d;
    int torn;
    CU_ASSERT_EQUAL(read_skipping(p, seqs, &nd, &d, &torn), N - 2);
    CU_ASSERT_EQUAL(nd, 2);
    replay_repair_report rep;
    rlhf_error e;
    CU_ASSERT_EQUAL(replay_log_repair(p, &rep, &e), 0);
    CU_ASSERT_EQUAL(rep.records, N - 2);
    CU_ASSERT_EQUAL(rep.damaged_stretches, 2);
    CU_ASSERT_EQUAL(quarantine_count(p, bad, size), 1);
    spit(p, clean, size);
    CU_ASSERT_EQUAL(replay_log_repair(p, &rep, &e), 0);
    CU_ASSERT_EQUAL(rep.segments_repaired, 0);
    CU_ASSERT_EQUAL(rep.records, N);
    CU_ASSERT_EQUAL(quarantine_count(p, clean, size), 0);
    free(bad);
    free(clean);
}

/* Damage in an older segment: the records of later segments still come back. */
static void test_damage_in_rotated_segment(void) {
    char p[512];
    path_of(p, sizeof p, "rotdmg.log");
    replay_pos pos[30];
    replay_writer_opts o = {BROKER_FSYNC_NEVER, 0, 3000};
    write_groups(p, 30, pos, &o);
    CU_ASSERT_FATAL(pos[29].segment >= 2 && pos[0].segment == 0 && pos[1].segment == 0);
    int fd = open(p, O_RDWR);
    uint8_t b = 0x55;
    CU_ASSERT_EQUAL(pwrite(fd, &b, 1, (off_t)pos[1].offset + 4), 1); /* record 1's length */
    close(fd);
    uint64_t seqs[30];
    size_t nd;
    replay_damage d;
    int torn;
    CU_ASSERT_EQUAL(read_skipping(p, seqs, &nd, &d, &torn), 29);
    CU_ASSERT_EQUAL(nd, 1);
    CU_ASSERT_EQUAL(d.pos.segment, 0);
    CU_ASSERT_EQUAL(d.pos.offset, pos[1].offset);
    CU_ASSERT_EQUAL(seqs[28], 29);
    replay_repair_report rep;
    rlhf_error e;
    CU_ASSERT_EQUAL(replay_log_repair(p, &rep, &e), 0);
    CU_ASSERT_EQUAL(rep.records, 29);
    CU_ASSERT_EQUAL(rep.segments_repaired, 1);
    CU_ASSERT_EQUAL(read_skipping(p, seqs, &nd, &d, &torn), 29);
    CU_ASSERT_EQUAL(nd, 0);
}

/* A record whose CRC is intact but whose body is not a ROLLOUT_GROUP (a writer bug, a hand-edited log):
 * a reader that skips damage lists it and reads on; one that does not stops there with an error naming
 * it. Found by tests/fuzz/fuzz_replay_log: the skipping reader used to stop there for good. */
static void test_intact_crc_bad_body(void) {
    char p[512];
    path_of(p, sizeof p, "badbody.log");
    replay_pos pos[3];
    write_groups(p, 3, pos, NULL);
    size_t n = 0;
    uint8_t *b = slurp(p, &n);
    CU_ASSERT_FATAL(b != NULL);
    uint64_t off = pos[1].offset;
    uint32_t len = le32(b + off + 4);
    uint8_t *body = b + off + 12;
    uint8_t *magic = memmem(body, len, "RLHF", 4); /* frame 0 of the message inside: its wire header */
    CU_ASSERT_FATAL(magic != NULL);
    magic[0] = 'X';
    uint32_t crc = rlhf_crc32(0, body, len);
    for (int i = 0; i < 4; i++) b[off + 8 + i] = (uint8_t)(crc >> (8 * i));
    spit(p, b, n);
    free(b);
    uint64_t seqs[3];
    size_t nd;
    replay_damage d;
    int torn;
    CU_ASSERT_EQUAL(read_skipping(p, seqs, &nd, &d, &torn), 2);
    CU_ASSERT_EQUAL(nd, 1);
    CU_ASSERT_EQUAL(d.pos.offset, pos[1].offset);
    CU_ASSERT_EQUAL(seqs[1], 2);
    int torn_n, code;
    rlhf_error e;
    CU_ASSERT_EQUAL(read_all(p, &torn_n, NULL, &code, &e), 1);
    CU_ASSERT(code < 0);
    CU_ASSERT(strstr(e.msg, "not a valid ROLLOUT_GROUP") != NULL);
}

int register_replay_suites(void) {
    CU_pSuite s = CU_add_suite("replay_log", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "write, reopen, append, read back identical, seek", test_write_reopen_read);
    CU_add_test(s, "torn last record skipped and reported, cut by the writer", test_torn_last_record);
    CU_add_test(s, "corrupt middle record and non-log files: errors with file and offset",
                test_corrupt_middle_and_not_a_log);
    CU_add_test(s, "rotation by size into numbered segments", test_rotation);
    CU_add_test(s, "every byte flipped: torn tail or damage, no valid record lost, writer refuses, repair keeps all",
                test_flip_every_byte);
    CU_add_test(s, "damage in a rotated segment: later segments still read, repair", test_damage_in_rotated_segment);
    CU_add_test(s, "intact CRC around a body that is no group: skipped as damage, else an error", test_intact_crc_bad_body);
    return 0;
}
