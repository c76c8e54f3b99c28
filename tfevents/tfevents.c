/* tfevents/tfevents.c — TensorBoard event files (tfevents/tfevents.h): TFRecord framing with masked
 * CRC-32C around hand-encoded Event / Summary protocol buffers. */
#include "tfevents/tfevents.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct tfevents_writer {
    int fd;
    char path[4096];
};

/* ---------------------------------------------------------------- CRC-32C and framing */

uint32_t tfevents_crc32c(uint32_t crc, const void *data, size_t n) {
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
}

uint32_t tfevents_masked_crc(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

static void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

size_t tfevents_frame(uint8_t *out, const uint8_t *data, size_t n) {
    put_le64(out, (uint64_t)n);
    put_le32(out + 8, tfevents_masked_crc(tfevents_crc32c(0, out, 8)));
    memcpy(out + 12, data, n);
    put_le32(out + 12 + n, tfevents_masked_crc(tfevents_crc32c(0, data, n)));
    return n + 16;
}

/* ---------------------------------------------------------------- protocol buffer encoding */

/* A growing byte buffer; `failed` once an allocation failed (then every later put is a no-op). */
typedef struct pb_buf {
    uint8_t *p;
    size_t len, cap;
    int failed;
} pb_buf;

static void pb_reserve(pb_buf *b, size_t more) {
    if (b->failed || b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    uint8_t *q = realloc(b->p, cap);
    if (!q) {
        b->failed = 1;
        return;
    }
    b->p = q;
    b->cap = cap;
}

static void pb_bytes(pb_buf *b, const void *data, size_t n) {
    pb_reserve(b, n);
    if (b->failed) return;
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void pb_varint(pb_buf *b, uint64_t v) {
    uint8_t t[10];
    size_t n = 0;
    do {
        t[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) t[n] |= 0x80;
        n++;
    } while (v);
    pb_bytes(b, t, n);
}

/* Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. */
static void pb_key(pb_buf *b, unsigned field, unsigned wire_type) { pb_varint(b, ((uint64_t)field << 3) | wire_type); }

static void pb_double(pb_buf *b, unsigned field, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint8_t t[8];
    put_le64(t, bits);
    pb_key(b, field, 1);
    pb_bytes(b, t, 8);
}

static void pb_float(pb_buf *b, unsigned field, float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint8_t t[4];
    put_le32(t, bits);
    pb_key(b, field, 5);
    pb_bytes(b, t, 4);
}

static void pb_len_delimited(pb_buf *b, unsigned field, const void *data, size_t n) {
    pb_key(b, field, 2);
    pb_varint(b, n);
    pb_bytes(b, data, n);
}

/* Event fields */
enum { EVENT_WALL_TIME = 1, EVENT_STEP = 2, EVENT_FILE_VERSION = 3, EVENT_SUMMARY = 5, EVENT_SESSION_LOG = 7 };
enum { SESSION_LOG_STATUS = 1, SESSION_STATUS_START = 1 };
enum { SUMMARY_VALUE = 1 };
enum { VALUE_TAG = 1, VALUE_SIMPLE_VALUE = 2 };

/* One Event (step, wall_time, and the scalars, or with n == 0: file_version when version != NULL, a
 * SessionLog START when start), framed, appended to out. */
static void encode_event(pb_buf *out, int64_t step, double wall_time, const char *version, int start,
                         const char *const *tags, const float *values, size_t n) {
    pb_buf ev = {0}, summary = {0}, value = {0};
    pb_double(&ev, EVENT_WALL_TIME, wall_time);
    pb_key(&ev, EVENT_STEP, 0);
    pb_varint(&ev, (uint64_t)step); /* int64: two's complement as a 10-byte varint when negative */
    if (version) pb_len_delimited(&ev, EVENT_FILE_VERSION, version, strlen(version));
    if (start) {
        const uint8_t session_log[2] = {(SESSION_LOG_STATUS << 3) | 0, SESSION_STATUS_START};
        pb_len_delimited(&ev, EVENT_SESSION_LOG, session_log, sizeof session_log);
    }
    for (size_t i = 0; i < n; i++) {
        value.len = 0;
        pb_len_delimited(&value, VALUE_TAG, tags[i], strlen(tags[i]));
        pb_float(&value, VALUE_SIMPLE_VALUE, values[i]);
        if (value.failed) break;
        pb_len_delimited(&summary, SUMMARY_VALUE, value.p, value.len);
    }
    if (n) pb_len_delimited(&ev, EVENT_SUMMARY, summary.p, summary.len);
    if (ev.failed || summary.failed || value.failed) {
        out->failed = 1;
    } else {
        pb_reserve(out, ev.len + 16);
        if (!out->failed) out->len += tfevents_frame(out->p + out->len, ev.p, ev.len);
    }
    free(ev.p);
    free(summary.p);
    free(value.p);
}

/* ---------------------------------------------------------------- the writer */

/* Appends buf whole, fsync'd; on failure the file goes back to its length before. */
static int append_records(tfevents_writer *w, const pb_buf *buf, rlhf_error *err) {
    if (buf->failed) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory encoding events");
    struct stat st;
    off_t before = fstat(w->fd, &st) == 0 ? st.st_size : -1;
    int bad = 0;
    for (size_t done = 0; done < buf->len && !bad;) {
        ssize_t n = write(w->fd, buf->p + done, buf->len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) bad = n < 0 ? errno : EIO;
        else done += (size_t)n;
    }
    if (!bad && fsync(w->fd) != 0) bad = errno;
    if (bad) {
        if (before >= 0 && ftruncate(w->fd, before) != 0) { /* the write error is what is reported */
        }
        return rlhf_error_set(err, RLHF_EIO, w->path, "write failed: %s", strerror(bad));
    }
    return 0;
}

int tfevents_writer_create(tfevents_writer **out, const char *dir, rlhf_error *err) {
    *out = NULL;
    tfevents_writer *w = calloc(1, sizeof *w);
    if (!w) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    char host[256] = "localhost";
    if (gethostname(host, sizeof host) != 0 || !host[0]) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = 0;
    for (char *c = host; *c; c++)
        if (*c == '/') *c = '_';
    double now = rlhf_wall_time();
    int n = snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%010lld.%s.%ld", dir, (long long)now, host,
                     (long)getpid());
    if (n < 0 || (size_t)n >= sizeof w->path) {
        free(w);
        return rlhf_error_set(err, RLHF_EINVAL, dir, "directory name too long for an event file");
    }
    /* a second writer of the same second and process (tests, replay's restarts) gets .1, .2, ... */
    size_t base = strlen(w->path);
    for (int k = 1; (w->fd = open(w->path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0 &&
                    errno == EEXIST && k < 1000 && base + 8 < sizeof w->path;
         k++)
        snprintf(w->path + base, sizeof w->path - base, ".%d", k);
    if (w->fd < 0) {
        int e = errno;
        int rc = rlhf_error_set(err, RLHF_EIO, w->path, "cannot create: %s", strerror(e));
        free(w);
        return rc;
    }
    pb_buf b = {0};
    encode_event(&b, 0, now, TFEVENTS_FILE_VERSION, 0, NULL, NULL, 0);
    int rc = append_records(w, &b, err);
    free(b.p);
    if (rc) {
        close(w->fd);
        unlink(w->path);
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}

void tfevents_writer_destroy(tfevents_writer **w) {
    if (!w || !*w) return;
    close((*w)->fd);
    free(*w);
    *w = NULL;
}

const char *tfevents_writer_path(const tfevents_writer *w) { return w->path; }

int tfevents_writer_scalars(tfevents_writer *w, int64_t step, double wall_time, const char *const *tags,
                            const float *values, size_t n, rlhf_error *err) {
    pb_buf b = {0};
    encode_event(&b, step, wall_time, NULL, 0, tags, values, n);
    int rc = append_records(w, &b, err);
    free(b.p);
    return rc;
}

int tfevents_writer_restart(tfevents_writer *w, int64_t step, double wall_time, rlhf_error *err) {
    pb_buf b = {0};
    encode_event(&b, step, wall_time, NULL, 1, NULL, NULL, 0);
    int rc = append_records(w, &b, err);
    free(b.p);
    return rc;
}

int tfevents_writer_metrics(tfevents_writer *w, const json_t *rec, double wall_time, const char *skip_prefix,
                            rlhf_error *err) {
    if (!json_is_object(rec)) return RLHF_FAIL(err, RLHF_EINVAL, "a metrics record must be a JSON object");
    json_t *step_v = json_object_get(rec, "step");
    if (!json_is_integer(step_v)) return RLHF_FAIL(err, RLHF_EINVAL, "a metrics record without an integer \"step\"");
    size_t cap = json_object_size(rec) + 1;
    const char **tags = calloc(cap, sizeof *tags);
    float *values = calloc(cap, sizeof *values);
    int rc = 0;
    if (!tags || !values) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    } else {
        size_t n = 0, plen = skip_prefix ? strlen(skip_prefix) : 0;
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)rec, key, v) {
            if (!json_is_number(v) || !strcmp(key, "step")) continue;
            if (plen && !strncmp(key, skip_prefix, plen)) continue;
            tags[n] = key;
            values[n++] = (float)json_number_value(v);
        }
        rc = tfevents_writer_scalars(w, (int64_t)json_integer_value(step_v), wall_time, tags, values, n, err);
    }
    free(tags);
    free(values);
    return rc;
}
