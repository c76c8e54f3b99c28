/* tests/fuzz/fuzz_replay_log.c — the replay-log reader, repair and writer reopen (broker/replay_log.c)
 * over torn, truncated, flipped and oversized records.
 *
 * Input: one flag byte, then the segment file.
 *   flags & 1   fix record CRCs: every record whose marker and length fit gets the CRC of its body, so
 *               the bodies (the wire messages inside) are fuzzed, not only the framing
 *   flags & 2   the reader skips damage (resync) instead of stopping at it
 *   flags & 4   also run replay_log_repair and then reopen the log for append (replay_writer_open)
 * Properties: a reader that skips damage reads to the end of the log; after a repair, a reader (skipping
 * damage) reads to the end and finds at least as many records as before. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "tests/fuzz/fuzz_util.h"

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Reads the whole log; returns records read (-1: not a log). *damage: stretches skipped (skip on);
 * *stopped: next() failed. */
static long read_all(const char *path, int skip, size_t *damage, int *stopped) {
    rlhf_error err;
    replay_reader *r = NULL;
    *damage = 0;
    *stopped = 0;
    if (replay_reader_open(&r, path, &err)) return -1;
    replay_reader_skip_corrupt(r, skip);
    long n = 0;
    for (int i = 0; i < 10000; i++) {
        wire_rollout_group g;
        replay_pos pos;
        int rc = replay_reader_next(r, &g, &pos, &err);
        if (rc == 1) {
            wire_rollout_group_free(&g);
            n++;
            continue;
        }
        *stopped = rc < 0;
        break;
    }
    const replay_damage *list;
    *damage = replay_reader_damage(r, &list);
    replay_reader_close(&r);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t flags = data[0];
    size_t n = size - 1;
    uint8_t *seg = malloc(n ? n : 1);
    if (!seg) abort();
    memcpy(seg, data + 1, n);
    if (flags & 1) {
        for (size_t off = 16; off + 12 <= n;) {
            if (get32(seg + off) != 0x43455252u) break;
            uint32_t len = get32(seg + off + 4);
            if (len > n - off - 12) break;
            put32(seg + off + 8, rlhf_crc32(0, seg + off + 12, len));
            off += 12 + (size_t)len;
        }
    }
    const char *path = fuzz_write_file("rollouts.log", seg, n);
    size_t damage;
    int stopped;
    long before = read_all(path, flags & 2, &damage, &stopped);
    FUZZ_ASSERT(!(flags & 2) || !stopped, "a reader that skips damage stopped after %ld records", before);
    if ((flags & 4) && before >= 0) {
        replay_repair_report rep;
        rlhf_error err;
        if (replay_log_repair(path, &rep, &err) == 0) {
            long after = read_all(path, 1, &damage, &stopped);
            FUZZ_ASSERT(!stopped && after >= before, "after repair: %ld records (before %ld), stopped %d", after,
                        before, stopped);
            replay_writer *w = NULL;
            replay_writer_opts o = {0};
            if (replay_writer_open(&w, path, &o, NULL, NULL, &err) == 0) replay_writer_close(&w, &err);
        }
        /* repair keeps quarantine copies beside the log: remove them so the scratch dir stays small */
        fuzz_remove_prefixed("rollouts.log.");
    }
    free(seg);
    return 0;
}
