/* broker/replay_log.c — append-only replay log of accepted rollout groups.
 *
 * Segment file (PATH, then PATH.1, PATH.2, ... after rotation):
 *   16-byte header: "RLHFRLOG", u32 format version (1), u32 segment number
 *   records: u32 marker "RREC", u32 body length, u32 CRC-32 of the body, body
 *   body:    u32 frame count, then per frame u32 length + bytes (the wire encoding of the message)
 * All integers little-endian. A record is written with one writev(2) of the whole record, so a crash
 * leaves at most one torn record at the end of the newest segment: a prefix of a record (its length
 * runs past the end of the file) or zeros. The writer cuts it off on reopen; readers skip it (reporting
 * it). Anything else that fails validation is damage: readers find the next valid record by scanning
 * for the marker with a matching CRC (resync), so one bad byte costs one record, never the ones after
 * it. Damage is never cut or rewritten silently: the writer keeps a copy and refuses to open the log;
 * replay_log_repair rewrites it with every valid record (after the same copy). */
#include "broker/broker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <limits.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define LOG_MAGIC "RLHFRLOG"
#define LOG_FORMAT 1
#define LOG_HEADER_BYTES 16
#define REC_MARKER 0x43455252u /* "RREC" little-endian */
#define REC_HEADER_BYTES 12
#define REC_MAX_BODY (1u << 31)

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void segment_path(char *out, size_t cap, const char *base, uint32_t seg) {
    if (seg == 0)
        snprintf(out, cap, "%s", base);
    else
        snprintf(out, cap, "%s.%u", base, seg);
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* pread everything or fail. */
static int pread_full(int fd, void *buf, size_t n, uint64_t off) {
    uint8_t *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int check_log_header(int fd, const char *fname, uint64_t size, uint32_t want_seg, rlhf_error *err) {
    uint8_t h[LOG_HEADER_BYTES];
    if (size < LOG_HEADER_BYTES || pread_full(fd, h, sizeof h, 0) != 0 || memcmp(h, LOG_MAGIC, 8) != 0)
        return rlhf_error_set(err, RLHF_ECORRUPT, fname, "not a replay log: no \"%s\" header at offset 0", LOG_MAGIC);
    if (get32(h + 8) != LOG_FORMAT)
        return rlhf_error_set(err, RLHF_ECORRUPT, fname, "replay log format %u at offset 8, this build reads %u",
                              get32(h + 8), LOG_FORMAT);
    if (get32(h + 12) != want_seg)
        return rlhf_error_set(err, RLHF_ECORRUPT, fname, "segment number %u at offset 12, expected %u", get32(h + 12),
                              want_seg);
    return 0;
}

static int all_zero(int fd, uint64_t off, uint64_t size) {
    uint8_t buf[4096];
    while (off < size) {
        size_t n = size - off < sizeof buf ? (size_t)(size - off) : sizeof buf;
        if (pread_full(fd, buf, n, off) != 0) return 0;
        for (size_t i = 0; i < n; i++)
            if (buf[i]) return 0;
        off += n;
    }
    return 1;
}

/* A complete, valid record at `off` (marker, a length inside the file, matching CRC)? Returns 1 with
 * the body (malloc'd) and its length when body != NULL, 0 when the bytes there are not one, < 0 on a
 * read or allocation failure. */
static int record_at(int fd, const char *fname, uint64_t off, uint64_t size, uint8_t **body, uint32_t *body_len,
                     rlhf_error *err) {
    if (body) *body = NULL;
    if (size - off < REC_HEADER_BYTES) return 0;
    uint8_t h[REC_HEADER_BYTES];
    if (pread_full(fd, h, sizeof h, off) != 0)
        return rlhf_error_set(err, RLHF_EIO, fname, "read failed at offset %llu: %s", (unsigned long long)off,
                              strerror(errno));
    uint32_t len = get32(h + 4), crc = get32(h + 8);
    if (get32(h) != REC_MARKER || len > REC_MAX_BODY || (uint64_t)len > size - off - REC_HEADER_BYTES) return 0;
    if (!body) { /* a candidate found while resyncing: check its CRC in pieces, no allocation */
        uint8_t buf[65536];
        uint32_t c = 0;
        for (uint64_t done = 0; done < len;) {
            size_t n = len - done < sizeof buf ? (size_t)(len - done) : sizeof buf;
            if (pread_full(fd, buf, n, off + REC_HEADER_BYTES + done) != 0)
                return rlhf_error_set(err, RLHF_EIO, fname, "read failed: %s", strerror(errno));
            c = rlhf_crc32(c, buf, n);
            done += n;
        }
        return c == crc;
    }
    uint8_t *b = malloc(len ? len : 1);
    if (!b) return rlhf_error_set(err, RLHF_ENOMEM, fname, "out of memory for a %u-byte record", len);
    if (pread_full(fd, b, len, off + REC_HEADER_BYTES) != 0) {
        free(b);
        return rlhf_error_set(err, RLHF_EIO, fname, "read failed: %s", strerror(errno));
    }
    if (rlhf_crc32(0, b, len) != crc) {
        free(b);
        return 0;
    }
    *body = b;
    *body_len = len;
    return 1;
}

/* The first offset >= from where a valid record starts (the record marker, a length inside the file
 * and a matching CRC), or `size` when there is none. */
static int resync(int fd, const char *fname, uint64_t from, uint64_t size, uint64_t *found, rlhf_error *err) {
    static const uint8_t marker[4] = {'R', 'R', 'E', 'C'};
    uint8_t buf[65536];
    uint64_t at = from;
    *found = size;
    while (at + REC_HEADER_BYTES <= size) {
        size_t n = size - at < sizeof buf ? (size_t)(size - at) : sizeof buf;
        if (pread_full(fd, buf, n, at) != 0)
            return rlhf_error_set(err, RLHF_EIO, fname, "read failed: %s", strerror(errno));
        for (size_t i = 0; i + 4 <= n; i++) {
            if (memcmp(buf + i, marker, 4) != 0) continue;
            int v = record_at(fd, fname, at + i, size, NULL, NULL, err);
            if (v < 0) return v;
            if (v) {
                *found = at + i;
                return 0;
            }
        }
        if (n < 4) break;
        at += n - 3; /* a marker across the chunk edge is seen in the next chunk */
    }
    return 0;
}

/* Bytes [off, size) hold no valid record: are they what a crash mid-append leaves (a torn tail)? That is
 * a prefix of one record: the marker (or a prefix of it) with a length that runs past the end of the
 * file, or nothing but zeros after the marker or after the header (the size grew before the data
 * reached the disk). A complete-length
 * record with a wrong CRC, or a wrong marker, is damage, not a torn write. */
static int tail_is_torn(int fd, uint64_t off, uint64_t size) {
    if (all_zero(fd, off, size)) return 1;
    uint8_t h[REC_HEADER_BYTES];
    uint64_t have = size - off < REC_HEADER_BYTES ? size - off : REC_HEADER_BYTES;
    if (pread_full(fd, h, (size_t)have, off) != 0) return 0;
    static const uint8_t marker[4] = {'R', 'R', 'E', 'C'};
    if (memcmp(h, marker, have < 4 ? (size_t)have : 4) != 0) return 0;
    if (have < REC_HEADER_BYTES) return 1;
    /* the header reached the disk and nothing after it did (a body is never all zeros: it starts with
     * its frame count) */
    if (all_zero(fd, off + REC_HEADER_BYTES, size)) return 1;
    return (uint64_t)get32(h + 4) > size - off - REC_HEADER_BYTES;
}

enum { ITEM_END = 0, ITEM_RECORD = 1, ITEM_TORN = 2, ITEM_DAMAGE = 3 };

/* What starts at `off`: a record (*body malloc'd, *next = the following offset), the end, a torn tail
 * (only in the newest segment: *next = size), or a damaged stretch (*next = the next valid record or
 * the end). < 0: a read failure. */
static int read_item(int fd, const char *fname, uint64_t off, uint64_t size, int newest, uint8_t **body,
                     uint32_t *body_len, uint64_t *next, rlhf_error *err) {
    *body = NULL;
    if (off >= size) return ITEM_END;
    int v = record_at(fd, fname, off, size, body, body_len, err);
    if (v < 0) return v;
    if (v) {
        *next = off + REC_HEADER_BYTES + *body_len;
        return ITEM_RECORD;
    }
    int rc = resync(fd, fname, off + 1, size, next, err);
    if (rc) return rc;
    if (*next == size && newest && tail_is_torn(fd, off, size)) return ITEM_TORN;
    return ITEM_DAMAGE;
}

/* Splits a record body into frames (views into body). */
static int body_frames(const uint8_t *b, uint32_t len, wire_frame **frames, size_t *n, const char *where,
                       rlhf_error *err) {
    if (len < 4) return rlhf_error_set(err, RLHF_ECORRUPT, where, "record body too short");
    uint32_t nf = get32(b);
    if (nf > WIRE_MAX_PAYLOADS + 2 || nf < 2)
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "record declares %u frames", nf);
    wire_frame *f = calloc(nf, sizeof *f);
    if (!f) return rlhf_error_set(err, RLHF_ENOMEM, where, "out of memory");
    uint64_t off = 4;
    for (uint32_t i = 0; i < nf; i++) {
        if (len - off < 4) goto bad;
        uint32_t fl = get32(b + off);
        off += 4;
        if (fl > len - off) goto bad;
        f[i].data = b + off;
        f[i].len = fl;
        off += fl;
    }
    if (off != len) goto bad;
    *frames = f;
    *n = nf;
    return 0;
bad:
    free(f);
    return rlhf_error_set(err, RLHF_ECORRUPT, where, "record frame lengths disagree with the record length");
}

/* What one segment holds: records, the end of the last one, a torn tail, damaged stretches. */
typedef struct seg_scan {
    uint64_t records, valid_end;
    uint64_t torn_off, torn_bytes;     /* torn_bytes 0: none */
    uint64_t n_damage, damage_off, damage_bytes; /* the first damaged stretch */
    uint64_t records_after_damage;
} seg_scan;

static int scan_segment(int fd, const char *fname, uint64_t size, int newest, seg_scan *s, rlhf_error *err) {
    memset(s, 0, sizeof *s);
    uint64_t off = LOG_HEADER_BYTES, next = 0;
    s->valid_end = off;
    for (;;) {
        uint8_t *body;
        uint32_t len;
        int k = read_item(fd, fname, off, size, newest, &body, &len, &next, err);
        free(body);
        if (k < 0) return k;
        if (k == ITEM_END) return 0;
        if (k == ITEM_TORN) {
            s->torn_off = off;
            s->torn_bytes = size - off;
            return 0;
        }
        if (k == ITEM_DAMAGE) {
            if (!s->n_damage) {
                s->damage_off = off;
                s->damage_bytes = next - off;
            }
            s->n_damage++;
        } else {
            s->records++;
            if (s->n_damage) s->records_after_damage++;
            s->valid_end = next;
        }
        off = next;
    }
}

static int copy_fd_to(int fd, uint64_t from, uint64_t n, int out, const char *oname, rlhf_error *err) {
    uint8_t buf[65536];
    while (n) {
        size_t k = n < sizeof buf ? (size_t)n : sizeof buf;
        if (pread_full(fd, buf, k, from) != 0)
            return rlhf_error_set(err, RLHF_EIO, oname, "read failed while copying: %s", strerror(errno));
        for (size_t w = 0; w < k;) {
            ssize_t r = write(out, buf + w, k - w);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) return rlhf_error_set(err, RLHF_EIO, oname, "write failed: %s", strerror(errno));
            w += (size_t)r;
        }
        from += k;
        n -= k;
    }
    return 0;
}

static int fsync_parent(const char *path) {
    char d[4200];
    snprintf(d, sizeof d, "%s", path);
    char *slash = strrchr(d, '/');
    if (slash) *slash = 0;
    else snprintf(d, sizeof d, ".");
    int dfd = open(slash && !d[0] ? "/" : d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
    int rc = fsync(dfd);
    close(dfd);
    return rc;
}

/* Copies a damaged segment to FNAME.damaged-<UTC time> (fsync'd), the evidence kept before anything
 * refuses or repairs; the name goes to q. */
static int quarantine_copy(int fd, const char *fname, char *q, size_t qcap, rlhf_error *err) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    int out = -1;
    for (int i = 0; i < 100 && out < 0; i++) {
        if (i) snprintf(q, qcap, "%s.damaged-%s.%d", fname, stamp, i);
        else snprintf(q, qcap, "%s.damaged-%s", fname, stamp);
        out = open(q, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (out < 0 && errno != EEXIST) break;
    }
    if (out < 0) return rlhf_error_set(err, RLHF_EIO, q, "cannot create the quarantine copy: %s", strerror(errno));
    struct stat st;
    fstat(fd, &st);
    int rc = copy_fd_to(fd, 0, (uint64_t)st.st_size, out, q, err);
    if (!rc && fsync(out) != 0) rc = rlhf_error_set(err, RLHF_EIO, q, "fsync failed: %s", strerror(errno));
    close(out);
    if (rc) unlink(q); /* half a copy is no evidence */
    else fsync_parent(q);
    return rc;
}

/* Rewrites one damaged segment with every valid record, in order (temp + fsync + rename). */
static int repair_segment(int fd, const char *fname, uint64_t size, int newest, rlhf_error *err) {
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.repair.tmp", fname);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) return rlhf_error_set(err, RLHF_EIO, tmp, "cannot create: %s", strerror(errno));
    int rc = copy_fd_to(fd, 0, LOG_HEADER_BYTES, out, tmp, err);
    uint64_t off = LOG_HEADER_BYTES, next = 0;
    while (!rc) {
        uint8_t *body;
        uint32_t len;
        int k = read_item(fd, fname, off, size, newest, &body, &len, &next, err);
        free(body);
        if (k < 0) rc = k;
        if (k <= 0 || k == ITEM_TORN) break;
        if (k == ITEM_RECORD) rc = copy_fd_to(fd, off, next - off, out, tmp, err);
        off = next;
    }
    if (!rc && fsync(out) != 0) rc = rlhf_error_set(err, RLHF_EIO, tmp, "fsync failed: %s", strerror(errno));
    close(out);
    if (!rc && rename(tmp, fname) != 0)
        rc = rlhf_error_set(err, RLHF_EIO, fname, "cannot replace with the repaired copy: %s", strerror(errno));
    if (rc) unlink(tmp);
    else fsync_parent(fname);
    return rc;
}

int replay_log_repair(const char *path, replay_repair_report *rep, rlhf_error *err) {
    memset(rep, 0, sizeof *rep);
    if (strlen(path) >= 4000) return rlhf_error_set(err, RLHF_EINVAL, path, "replay log path too long");
    char p[4200], nextp[4200];
    for (uint32_t seg = 0;; seg++) {
        segment_path(p, sizeof p, path, seg);
        if (!file_exists(p)) return 0;
        segment_path(nextp, sizeof nextp, path, seg + 1);
        int newest = !file_exists(nextp);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return rlhf_error_set(err, RLHF_EIO, p, "cannot open replay log: %s", strerror(errno));
        struct stat st;
        fstat(fd, &st);
        uint64_t size = (uint64_t)st.st_size;
        seg_scan sc;
        int rc = check_log_header(fd, p, size, seg, err);
        if (!rc) rc = scan_segment(fd, p, size, newest, &sc, err);
        if (!rc && sc.n_damage) {
            rc = quarantine_copy(fd, p, rep->quarantine, sizeof rep->quarantine, err);
            if (!rc) rc = repair_segment(fd, p, size, newest, err);
            if (!rc) {
                rep->segments_repaired++;
                rep->damaged_stretches += sc.n_damage;
            }
        }
        close(fd);
        if (rc) return rc;
        rep->records += sc.records;
    }
}

/* ---------------------------------------------------------------- writer */

struct replay_writer {
    char base[4096];
    char cur[4200];
    uint32_t segment;
    int fd;
    uint64_t size;
    uint64_t records;
    uint32_t since_sync;
    replay_writer_opts opts;
};

static int open_new_segment(replay_writer *w, uint32_t seg, rlhf_error *err) {
    segment_path(w->cur, sizeof w->cur, w->base, seg);
    int fd = open(w->cur, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, w->cur, "cannot create replay log segment: %s", strerror(errno));
    uint8_t h[LOG_HEADER_BYTES];
    memcpy(h, LOG_MAGIC, 8);
    put32(h + 8, LOG_FORMAT);
    put32(h + 12, seg);
    if (write(fd, h, sizeof h) != (ssize_t)sizeof h || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return rlhf_error_set(err, RLHF_EIO, w->cur, "cannot write replay log header: %s", strerror(e));
    }
    w->fd = fd;
    w->segment = seg;
    w->size = LOG_HEADER_BYTES;
    return 0;
}

int replay_writer_open(replay_writer **out, const char *path, const replay_writer_opts *opts, replay_pos *torn_pos,
                       uint64_t *torn_bytes, rlhf_error *err) {
    *out = NULL;
    if (torn_bytes) *torn_bytes = 0;
    if (strlen(path) >= 4000) return rlhf_error_set(err, RLHF_EINVAL, path, "replay log path too long");
    replay_writer *w = calloc(1, sizeof *w);
    if (!w) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    snprintf(w->base, sizeof w->base, "%s", path);
    w->fd = -1;
    if (opts) w->opts = *opts;
    int rc;
    if (!file_exists(path)) {
        rc = open_new_segment(w, 0, err);
        if (rc) goto fail;
        *out = w;
        return 0;
    }
    uint32_t seg = 0;
    char p[4200];
    for (;;) {
        segment_path(p, sizeof p, path, seg + 1);
        if (!file_exists(p)) break;
        seg++;
    }
    segment_path(w->cur, sizeof w->cur, path, seg);
    int fd = open(w->cur, O_RDWR | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
        rc = rlhf_error_set(err, RLHF_EIO, w->cur, "cannot open replay log: %s", strerror(errno));
        goto fail;
    }
    w->fd = fd;
    w->segment = seg;
    struct stat st;
    fstat(fd, &st);
    uint64_t size = (uint64_t)st.st_size;
    rc = check_log_header(fd, w->cur, size, seg, err);
    if (rc) goto fail;
    seg_scan sc;
    rc = scan_segment(fd, w->cur, size, 1, &sc, err);
    if (rc) goto fail;
    if (sc.n_damage) {
        /* Records after the damage are valid: cutting or rewriting would destroy them. Keep a copy,
         * change nothing, and say how to repair. */
        char q[4400], copy[4600];
        rlhf_error qe;
        rlhf_error_clear(&qe);
        if (quarantine_copy(fd, w->cur, q, sizeof q, &qe) == 0)
            snprintf(copy, sizeof copy, "a copy is in %s", q);
        else /* a full disk, say: the damage is still the news, and nothing was touched */
            snprintf(copy, sizeof copy, "no copy could be made (%s: %s)", qe.where, qe.msg);
        rc = rlhf_error_set(err, RLHF_ECORRUPT, w->cur,
                            "damaged record at offset %llu (%llu bytes unreadable, %llu valid records after it); "
                            "nothing was changed, %s; to rewrite the log keeping every valid record: "
                            "rlhf run --resume RUN_DIR --repair",
                            (unsigned long long)sc.damage_off, (unsigned long long)sc.damage_bytes,
                            (unsigned long long)sc.records_after_damage, copy);
        goto fail;
    }
    uint64_t off = sc.valid_end;
    if (sc.torn_bytes) {
        if (torn_pos) *torn_pos = (replay_pos){seg, sc.torn_off};
        if (torn_bytes) *torn_bytes = sc.torn_bytes;
        if (ftruncate(fd, (off_t)off) != 0 || fsync(fd) != 0) {
            rc = rlhf_error_set(err, RLHF_EIO, w->cur, "cannot cut torn record at offset %llu: %s",
                                (unsigned long long)off, strerror(errno));
            goto fail;
        }
    }
    w->records = sc.records;
    w->size = off;
    *out = w;
    return 0;
fail:
    if (w->fd >= 0) close(w->fd);
    free(w);
    return rc;
}

static int writer_sync(replay_writer *w, rlhf_error *err) {
    if (fdatasync(w->fd) != 0) return rlhf_error_set(err, RLHF_EIO, w->cur, "fdatasync failed: %s", strerror(errno));
    w->since_sync = 0;
    return 0;
}

int replay_writer_sync(replay_writer *w, rlhf_error *err) { return writer_sync(w, err); }
uint64_t replay_writer_records(const replay_writer *w) { return w->records; }

int replay_writer_append(replay_writer *w, const wire_frame *frames, size_t n, replay_pos *pos, rlhf_error *err) {
    if (n < 2 || n > WIRE_MAX_PAYLOADS + 2) return RLHF_FAIL(err, RLHF_EINVAL, "replay record of %zu frames", n);
    uint64_t body = 4;
    for (size_t i = 0; i < n; i++) body += 4 + frames[i].len;
    if (body > REC_MAX_BODY) return rlhf_error_set(err, RLHF_EINVAL, w->cur, "record of %llu bytes too large", (unsigned long long)body);
    if (w->opts.rotate_bytes && w->size > LOG_HEADER_BYTES && w->size + REC_HEADER_BYTES + body > w->opts.rotate_bytes) {
        int rc = writer_sync(w, err);
        if (rc) return rc;
        close(w->fd);
        w->fd = -1;
        rc = open_new_segment(w, w->segment + 1, err);
        if (rc) return rc;
    }
    /* One writev per record (the header, then each frame behind its length): a crash leaves a prefix of
     * this record, never an interleaving; no copy of the payload bytes. */
    uint8_t head[REC_HEADER_BYTES + 4];
    uint8_t *lens = malloc(4 * n);
    struct iovec *iov = malloc((2 * n + 1) * sizeof *iov);
    if (!lens || !iov) {
        free(lens);
        free(iov);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    put32(head + REC_HEADER_BYTES, (uint32_t)n);
    uint32_t crc = rlhf_crc32(0, head + REC_HEADER_BYTES, 4);
    size_t niov = 0;
    iov[niov++] = (struct iovec){head, sizeof head};
    for (size_t i = 0; i < n; i++) {
        put32(lens + 4 * i, (uint32_t)frames[i].len);
        crc = rlhf_crc32(crc, lens + 4 * i, 4);
        crc = rlhf_crc32(crc, frames[i].data, frames[i].len);
        iov[niov++] = (struct iovec){lens + 4 * i, 4};
        if (frames[i].len) iov[niov++] = (struct iovec){(void *)frames[i].data, frames[i].len};
    }
    put32(head, REC_MARKER);
    put32(head + 4, (uint32_t)body);
    put32(head + 8, crc);
    size_t total = REC_HEADER_BYTES + body, done = 0;
    struct iovec *cur = iov;
    int left = (int)niov;
    while (done < total) {
        ssize_t r = writev(w->fd, cur, left > IOV_MAX ? IOV_MAX : left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(lens);
            free(iov);
            /* Cut the partial record so the next append starts on a record boundary. */
            if (ftruncate(w->fd, (off_t)w->size) != 0) { /* nothing more to do: reopen will cut it */
            }
            return rlhf_error_set(err, RLHF_EIO, w->cur, "append failed at offset %llu: %s", (unsigned long long)w->size,
                                  strerror(e));
        }
        done += (size_t)r;
        /* short write: skip what went out */
        size_t adv = (size_t)r;
        while (left && adv >= cur->iov_len) {
            adv -= cur->iov_len;
            cur++;
            left--;
        }
        if (left && adv) {
            cur->iov_base = (uint8_t *)cur->iov_base + adv;
            cur->iov_len -= adv;
        }
    }
    free(lens);
    free(iov);
    if (pos) *pos = (replay_pos){w->segment, w->size};
    w->size += total;
    w->records++;
    w->since_sync++;
    if (w->opts.fsync_policy == BROKER_FSYNC_ALWAYS ||
        (w->opts.fsync_policy == BROKER_FSYNC_EVERY_N && w->since_sync >= (w->opts.fsync_every ? w->opts.fsync_every : 1)))
        return writer_sync(w, err);
    return 0;
}

int replay_writer_append_group(replay_writer *w, const wire_rollout_group *g, replay_pos *pos, rlhf_error *err) {
    wire_out o;
    int rc = wire_encode_rollout_group(g, &o, err);
    if (rc) return rc;
    size_t n = wire_out_nframes(&o);
    wire_frame *f = malloc(n * sizeof *f);
    if (!f) {
        wire_out_free(&o);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) f[i] = wire_out_frame(&o, i);
    rc = replay_writer_append(w, f, n, pos, err);
    free(f);
    wire_out_free(&o);
    return rc;
}

int replay_writer_close(replay_writer **wp, rlhf_error *err) {
    if (!wp || !*wp) return 0;
    replay_writer *w = *wp;
    int rc = 0;
    if (w->fd >= 0) {
        rc = writer_sync(w, err);
        close(w->fd);
    }
    free(w);
    *wp = NULL;
    return rc;
}

/* ---------------------------------------------------------------- reader */

struct replay_reader {
    char base[4096];
    char cur[4200];
    uint32_t segment;
    int fd;
    int newest;       /* no later segment exists: only here can a tail be torn */
    int skip_corrupt; /* damaged stretches are skipped and listed instead of failing next() */
    uint64_t size;
    uint64_t off;
    int torn_count;
    replay_pos torn_pos;
    uint64_t torn_bytes;
    replay_damage *damage;
    size_t n_damage, cap_damage;
};

static int reader_open_segment(replay_reader *r, uint32_t seg, rlhf_error *err) {
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
    segment_path(r->cur, sizeof r->cur, r->base, seg);
    int fd = open(r->cur, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, r->cur, "cannot open replay log: %s", strerror(errno));
    struct stat st;
    fstat(fd, &st);
    r->fd = fd;
    r->segment = seg;
    r->size = (uint64_t)st.st_size;
    r->off = LOG_HEADER_BYTES;
    char p[4200];
    segment_path(p, sizeof p, r->base, seg + 1);
    r->newest = !file_exists(p);
    return check_log_header(fd, r->cur, r->size, seg, err);
}

int replay_reader_open(replay_reader **out, const char *path, rlhf_error *err) {
    *out = NULL;
    if (strlen(path) >= 4000) return rlhf_error_set(err, RLHF_EINVAL, path, "replay log path too long");
    replay_reader *r = calloc(1, sizeof *r);
    if (!r) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    snprintf(r->base, sizeof r->base, "%s", path);
    r->fd = -1;
    int rc = reader_open_segment(r, 0, err);
    if (rc) {
        replay_reader_close(&r);
        return rc;
    }
    *out = r;
    return 0;
}

void replay_reader_skip_corrupt(replay_reader *r, int on) { r->skip_corrupt = on; }

size_t replay_reader_damage(const replay_reader *r, const replay_damage **list) {
    if (list) *list = r->damage;
    return r->n_damage;
}

/* Lists a skipped stretch of the current segment. */
static int add_damage(replay_reader *r, uint64_t at, uint64_t bytes, rlhf_error *err) {
    if (r->n_damage == r->cap_damage) {
        size_t cap = r->cap_damage ? 2 * r->cap_damage : 8;
        replay_damage *d = realloc(r->damage, cap * sizeof *d);
        if (!d) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        r->damage = d;
        r->cap_damage = cap;
    }
    r->damage[r->n_damage++] = (replay_damage){{r->segment, at}, bytes};
    return 0;
}

int replay_reader_next(replay_reader *r, wire_rollout_group *g, replay_pos *pos, rlhf_error *err) {
    memset(g, 0, sizeof *g);
    for (;;) {
        if (r->fd < 0) return 0;
        uint8_t *body = NULL;
        uint32_t len = 0;
        uint64_t next = 0, at = r->off;
        char where[4300];
        snprintf(where, sizeof where, "%s: offset %llu", r->cur, (unsigned long long)at);
        int k = read_item(r->fd, r->cur, at, r->size, r->newest, &body, &len, &next, err);
        if (k < 0) return k;
        if (k == ITEM_TORN) {
            r->torn_count++;
            r->torn_pos = (replay_pos){r->segment, at};
            r->torn_bytes = r->size - at;
            r->off = r->size;
            continue;
        }
        if (k == ITEM_DAMAGE) {
            if (!r->skip_corrupt) {
                if (next < r->size)
                    return rlhf_error_set(err, RLHF_ECORRUPT, where,
                                          "damaged record (%llu bytes unreadable); the next valid record is at "
                                          "offset %llu", (unsigned long long)(next - at), (unsigned long long)next);
                return rlhf_error_set(err, RLHF_ECORRUPT, where,
                                      "damaged record (%llu bytes unreadable, to the end of the segment)",
                                      (unsigned long long)(next - at));
            }
            if (add_damage(r, at, next - at, err)) return RLHF_ENOMEM;
            r->off = next;
            continue;
        }
        if (k == ITEM_END) {
            char p[4200];
            segment_path(p, sizeof p, r->base, r->segment + 1);
            if (!file_exists(p)) return 0;
            int rc = reader_open_segment(r, r->segment + 1, err);
            if (rc) return rc;
            continue;
        }
        wire_frame *frames = NULL;
        size_t nf = 0;
        int rc = body_frames(body, len, &frames, &nf, where, err);
        if (rc == 0) {
            wire_msg m;
            rlhf_error e2;
            rlhf_error_clear(&e2);
            rc = wire_parse(frames, nf, &m, NULL, &e2);
            if (rc == 0) {
                rc = wire_decode_rollout_group(&m, g, NULL, &e2);
                wire_msg_free(&m);
            }
            if (rc) rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "record is not a valid ROLLOUT_GROUP: %s: %s", e2.where, e2.msg);
        }
        free(frames);
        free(body);
        if (rc && r->skip_corrupt && rc != RLHF_ENOMEM) {
            /* intact framing (its CRC matches) around a body that is no group: damage like any other,
             * else a reader told to skip damage would stop here for good (found by tests/fuzz) */
            if (add_damage(r, at, next - at, err)) return RLHF_ENOMEM;
            r->off = next;
            continue;
        }
        if (rc) return rc;
        if (pos) *pos = (replay_pos){r->segment, at};
        r->off = next;
        return 1;
    }
}

int replay_reader_seek(replay_reader *r, replay_pos pos, rlhf_error *err) {
    if (pos.segment != r->segment || r->fd < 0) {
        int rc = reader_open_segment(r, pos.segment, err);
        if (rc) return rc;
    }
    if (pos.offset < LOG_HEADER_BYTES || pos.offset > r->size)
        return rlhf_error_set(err, RLHF_EINVAL, r->cur, "seek offset %llu outside the segment (%llu bytes)",
                              (unsigned long long)pos.offset, (unsigned long long)r->size);
    r->off = pos.offset;
    return 0;
}

int replay_reader_torn(const replay_reader *r, replay_pos *pos, uint64_t *bytes) {
    if (pos) *pos = r->torn_pos;
    if (bytes) *bytes = r->torn_bytes;
    return r->torn_count;
}

void replay_reader_close(replay_reader **rp) {
    if (!rp || !*rp) return;
    if ((*rp)->fd >= 0) close((*rp)->fd);
    free((*rp)->damage);
    free(*rp);
    *rp = NULL;
}
