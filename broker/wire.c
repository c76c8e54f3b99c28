/* broker/wire.c — the wire protocol: framing, validation, typed encode/decode (see broker/wire.h,
 * docs/BROKER.md).
 *
 * Longer than the project's ~1,000 lines on purpose: it is one codec. Every message's decoder is
 * built from the same static field readers (dfield, get_uint, get_str, payload_len, ...) that
 * enforce the rule "nothing from the wire is trusted"; keeping them file-local means no other code
 * can decode a field without them. */
#include "broker/wire.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "wire.c assumes a little-endian host (payloads are little-endian arrays)"
#endif

/* ---------------------------------------------------------------- names */

static const char *const type_names[WIRE_TYPE_END] = {
    [WIRE_HELLO] = "HELLO",
    [WIRE_WELCOME] = "WELCOME",
    [WIRE_PROMPT_REQUEST] = "PROMPT_REQUEST",
    [WIRE_PROMPT_BATCH] = "PROMPT_BATCH",
    [WIRE_ROLLOUT_GROUP] = "ROLLOUT_GROUP",
    [WIRE_CREDIT] = "CREDIT",
    [WIRE_WEIGHTS] = "WEIGHTS",
    [WIRE_PROMPT_STATS] = "PROMPT_STATS",
    [WIRE_CONTROL] = "CONTROL",
    [WIRE_HEARTBEAT] = "HEARTBEAT",
    [WIRE_STATS_REQUEST] = "STATS_REQUEST",
    [WIRE_STATS] = "STATS",
    [WIRE_ERROR] = "ERROR",
    [WIRE_WEIGHTS_ACK] = "WEIGHTS_ACK",
    [WIRE_WEIGHTS_SHM] = "WEIGHTS_SHM",
    [WIRE_WEIGHTS_SHM_FAILED] = "WEIGHTS_SHM_FAILED",
};

const char *wire_type_name(int type) {
    if (type <= 0 || type >= WIRE_TYPE_END) return "unknown";
    return type_names[type];
}

static const char *const reason_names[WIRE_R_END] = {
    [WIRE_R_OK] = "ok",
    [WIRE_R_FRAME_COUNT] = "bad_frame_count",
    [WIRE_R_HEADER] = "bad_header",
    [WIRE_R_VERSION] = "version_mismatch",
    [WIRE_R_TYPE] = "unknown_type",
    [WIRE_R_JSON] = "bad_json",
    [WIRE_R_FIELD] = "bad_field",
    [WIRE_R_LENGTH] = "bad_length",
    [WIRE_R_CRC] = "bad_crc",
    [WIRE_R_TOO_LARGE] = "too_large",
};

const char *wire_reason_name(int reason) {
    if (reason < 0 || reason >= WIRE_R_END) return "unknown";
    return reason_names[reason];
}

const char *wire_role_name(int role) {
    switch (role) {
    case WIRE_ROLE_GENERATOR: return "generator";
    case WIRE_ROLE_UPDATER: return "updater";
    case WIRE_ROLE_OBSERVER: return "observer";
    default: return "unknown";
    }
}

static const char *const finish_names[] = {"stop", "length", "error"};
const char *wire_finish_name(int finish) {
    if (finish < 0 || finish > WIRE_FINISH_ERROR) return "unknown";
    return finish_names[finish];
}

static const char *const control_names[] = {NULL, "stop", "pause", "resume"};

/* CRC-32 of each frame into crcs[]. (Checksumming a weights message's chunks on several OpenMP threads
 * was measured slower in the fan-out benchmark: 4 generators already fill the cores and idle OpenMP
 * threads spin.) */
static void crc_frames(const wire_frame *f, size_t n, uint32_t *crcs) {
    for (size_t i = 0; i < n; i++) crcs[i] = rlhf_crc32(0, f[i].data, f[i].len);
}

/* ---------------------------------------------------------------- helpers */

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Reject: set reason + error (where = "TYPE.field" or "frame N"), return the code. */
static int rej(int *reason, int r, rlhf_error *err, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int rej(int *reason, int r, rlhf_error *err, const char *where, const char *fmt, ...) {
    if (reason) *reason = r;
    int code = r == WIRE_R_CRC ? RLHF_ECORRUPT : RLHF_EPROTO;
    if (err) {
        char msg[sizeof err->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        rlhf_error_set(err, code, where, "%s (%s)", msg, wire_reason_name(r));
    }
    return code;
}

void wire_out_free(wire_out *o) {
    if (!o) return;
    free(o->meta);
    free(o->payloads);
    memset(o, 0, sizeof *o);
}

size_t wire_out_nframes(const wire_out *o) { return 2 + o->n_payloads; }

wire_frame wire_out_frame(const wire_out *o, size_t i) {
    if (i == 0) return (wire_frame){o->header, WIRE_HEADER_BYTES};
    if (i == 1) return (wire_frame){o->meta, o->meta_len};
    return o->payloads[i - 2];
}

int wire_encode_raw(int version, int type, json_t *meta, const wire_frame *payloads, size_t n_payloads, wire_out *o,
                    rlhf_error *err) {
    memset(o, 0, sizeof *o);
    if (!meta) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory building %s metadata", wire_type_name(type));
    if (n_payloads > WIRE_MAX_PAYLOADS) {
        json_decref(meta);
        return RLHF_FAIL(err, RLHF_EINVAL, "%s: %zu payload frames > limit %d", wire_type_name(type), n_payloads,
                         WIRE_MAX_PAYLOADS);
    }
    uint32_t *crcs = malloc((n_payloads + 1) * sizeof *crcs);
    if (!crcs) {
        json_decref(meta);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    crc_frames(payloads, n_payloads, crcs);
    json_t *decl = json_array();
    for (size_t i = 0; i < n_payloads; i++)
        json_array_append_new(decl, json_pack("{sIsI}", "bytes", (json_int_t)payloads[i].len, "crc32",
                                              (json_int_t)crcs[i]));
    free(crcs);
    json_object_set_new(meta, "payloads", decl);
    o->meta = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    if (!o->meta) return RLHF_FAIL(err, RLHF_ENOMEM, "cannot serialise %s metadata", wire_type_name(type));
    o->meta_len = strlen(o->meta);
    if (o->meta_len > WIRE_MAX_META_BYTES) {
        wire_out_free(o);
        return RLHF_FAIL(err, RLHF_EINVAL, "%s metadata is %zu bytes > limit %u", wire_type_name(type), o->meta_len,
                         WIRE_MAX_META_BYTES);
    }
    if (n_payloads) {
        o->payloads = malloc(n_payloads * sizeof *o->payloads);
        if (!o->payloads) {
            wire_out_free(o);
            return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        }
        memcpy(o->payloads, payloads, n_payloads * sizeof *payloads);
    }
    o->n_payloads = n_payloads;
    memcpy(o->header, WIRE_MAGIC, 4);
    put_u16(o->header + 4, (uint16_t)version);
    put_u16(o->header + 6, (uint16_t)type);
    put_u32(o->header + 8, (uint32_t)n_payloads);
    put_u32(o->header + 12, rlhf_crc32(0, o->meta, o->meta_len));
    return 0;
}

static int encode(int type, json_t *meta, const wire_frame *payloads, size_t n, wire_out *o, rlhf_error *err) {
    return wire_encode_raw(WIRE_PROTOCOL_VERSION, type, meta, payloads, n, o, err);
}

int wire_out_send(void *zsock, const wire_out *o, rlhf_error *err) {
    size_t nf = wire_out_nframes(o);
    for (size_t i = 0; i < nf; i++) {
        wire_frame f = wire_out_frame(o, i);
        int rc;
        do rc = zmq_send(zsock, f.data, f.len, i + 1 < nf ? ZMQ_SNDMORE : 0);
        while (rc < 0 && errno == EINTR);
        if (rc < 0)
            return RLHF_FAIL(err, RLHF_EIO, "zmq_send of %s frame %zu failed: %s",
                             wire_type_name(get_u16(o->header + 6)), i, zmq_strerror(errno));
    }
    return 0;
}

/* ---------------------------------------------------------------- receive */

void wire_rx_free(wire_rx *rx) {
    if (!rx) return;
    zmq_msg_t *msgs = rx->msgs;
    for (size_t i = 0; i < rx->n; i++) zmq_msg_close(&msgs[i]);
    free(rx->msgs);
    free(rx->views);
    memset(rx, 0, sizeof *rx);
}

int wire_rx_recv(void *zsock, wire_rx *rx, int flags, rlhf_error *err) {
    zmq_msg_t *msgs = rx->msgs;
    for (size_t i = 0; i < rx->n; i++) zmq_msg_close(&msgs[i]);
    rx->n = 0;
    for (;;) {
        if (rx->n == rx->cap) {
            size_t cap = rx->cap ? rx->cap * 2 : 8;
            zmq_msg_t *nm = realloc(rx->msgs, cap * sizeof *nm);
            if (!nm) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory receiving a message");
            rx->msgs = nm;
            wire_frame *nv = realloc(rx->views, cap * sizeof *nv);
            if (!nv) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory receiving a message");
            rx->views = nv;
            rx->cap = cap;
        }
        msgs = rx->msgs;
        zmq_msg_t *m = &msgs[rx->n];
        zmq_msg_init(m);
        int rc;
        /* Later parts of a multipart message are already here: only the first may block or EAGAIN. */
        do rc = zmq_msg_recv(m, zsock, rx->n == 0 ? flags : 0);
        while (rc < 0 && errno == EINTR && rx->n > 0);
        if (rc < 0) {
            int e = errno;
            zmq_msg_close(m);
            if (rx->n == 0 && (e == EAGAIN || e == EINTR)) return 0;
            return RLHF_FAIL(err, RLHF_EIO, "zmq_msg_recv failed: %s", zmq_strerror(e));
        }
        rx->n++;
        if (!zmq_msg_more(m)) break;
        if (rx->n > WIRE_MAX_PAYLOADS + 8) {
            /* Drain the rest so the socket stays usable, keep the count for the rejection. */
            zmq_msg_t tmp;
            zmq_msg_init(&tmp);
            while (zmq_msg_more(m) && zmq_msg_recv(&tmp, zsock, 0) >= 0) {
                if (!zmq_msg_more(&tmp)) break;
            }
            zmq_msg_close(&tmp);
            break;
        }
    }
    for (size_t i = 0; i < rx->n; i++) {
        rx->views[i].data = zmq_msg_data(&msgs[i]);
        rx->views[i].len = zmq_msg_size(&msgs[i]);
    }
    return 1;
}

/* ---------------------------------------------------------------- parse */

void wire_msg_free(wire_msg *m) {
    if (!m) return;
    json_decref(m->meta);
    memset(m, 0, sizeof *m);
}

int wire_parse(const wire_frame *f, size_t n, wire_msg *m, int *reason, rlhf_error *err) {
    memset(m, 0, sizeof *m);
    if (reason) *reason = WIRE_R_OK;
    if (n < 2) return rej(reason, WIRE_R_FRAME_COUNT, err, "message", "%zu frame(s), need at least 2", n);
    if (f[0].len != WIRE_HEADER_BYTES || memcmp(f[0].data, WIRE_MAGIC, 4) != 0)
        return rej(reason, WIRE_R_HEADER, err, "frame 0", "not an rlhf wire header (%zu bytes, want %d with magic %s)",
                   f[0].len, WIRE_HEADER_BYTES, WIRE_MAGIC);
    const uint8_t *h = f[0].data;
    m->version = get_u16(h + 4);
    m->type = get_u16(h + 6);
    uint32_t npay = get_u32(h + 8), meta_crc = get_u32(h + 12);
    if (m->version != WIRE_PROTOCOL_VERSION)
        return rej(reason, WIRE_R_VERSION, err, "frame 0", "peer speaks protocol version %d, this side speaks %d",
                   m->version, WIRE_PROTOCOL_VERSION);
    if (m->type <= 0 || m->type >= WIRE_TYPE_END)
        return rej(reason, WIRE_R_TYPE, err, "frame 0", "unknown message type %d", m->type);
    const char *tn = wire_type_name(m->type);
    if (npay > WIRE_MAX_PAYLOADS)
        return rej(reason, WIRE_R_TOO_LARGE, err, tn, "header declares %u payload frames > limit %d", npay,
                   WIRE_MAX_PAYLOADS);
    if ((size_t)npay + 2 != n)
        return rej(reason, WIRE_R_FRAME_COUNT, err, tn, "header declares %u payload frames, message has %zu", npay,
                   n - 2);
    if (f[1].len > WIRE_MAX_META_BYTES)
        return rej(reason, WIRE_R_TOO_LARGE, err, tn, "metadata is %zu bytes > limit %u", f[1].len,
                   WIRE_MAX_META_BYTES);
    if (rlhf_crc32(0, f[1].data, f[1].len) != meta_crc)
        return rej(reason, WIRE_R_CRC, err, tn, "metadata CRC-32 mismatch");
    json_error_t je;
    json_t *meta = json_loadb(f[1].data, f[1].len, JSON_REJECT_DUPLICATES, &je);
    if (!meta) return rej(reason, WIRE_R_JSON, err, tn, "metadata is not valid JSON: %s at byte %d", je.text, je.position);
    if (!json_is_object(meta)) {
        json_decref(meta);
        return rej(reason, WIRE_R_JSON, err, tn, "metadata is not a JSON object");
    }
    json_t *decl = json_object_get(meta, "payloads");
    if (!json_is_array(decl) || json_array_size(decl) != npay) {
        json_decref(meta);
        return rej(reason, WIRE_R_FIELD, err, tn, "metadata \"payloads\" must be an array of %u entries", npay);
    }
    /* lengths first (cheap), then every checksum (in parallel for big messages) */
    for (size_t i = 0; i < npay; i++) {
        json_t *jb = json_object_get(json_array_get(decl, i), "bytes");
        if (json_is_integer(jb) && (uint64_t)json_integer_value(jb) != f[i + 2].len) {
            char where[64];
            snprintf(where, sizeof where, "%s.payloads[%zu]", tn, i);
            json_decref(meta);
            return rej(reason, WIRE_R_LENGTH, err, where, "declares %lld bytes, frame has %zu",
                       (long long)json_integer_value(jb), f[i + 2].len);
        }
    }
    uint32_t crcs_small[8], *crcs = npay <= 8 ? crcs_small : malloc(npay * sizeof *crcs);
    if (!crcs) {
        json_decref(meta);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    crc_frames(f + 2, npay, crcs);
    for (size_t i = 0; i < npay; i++) {
        json_t *d = json_array_get(decl, i);
        json_t *jb = json_object_get(d, "bytes"), *jc = json_object_get(d, "crc32");
        char where[64]; /* formatted only for a rejection: this loop runs for every message */
#define PAYLOAD_WHERE() snprintf(where, sizeof where, "%s.payloads[%zu]", tn, i)
        if (!json_is_integer(jb) || !json_is_integer(jc) || json_integer_value(jb) < 0 ||
            json_integer_value(jc) < 0 || json_integer_value(jc) > 0xffffffffLL) {
            if (crcs != crcs_small) free(crcs);
            json_decref(meta);
            PAYLOAD_WHERE();
            return rej(reason, WIRE_R_FIELD, err, where, "needs integer \"bytes\" and \"crc32\"");
        }
        if (crcs[i] != (uint32_t)json_integer_value(jc)) {
            if (crcs != crcs_small) free(crcs);
            json_decref(meta);
            PAYLOAD_WHERE();
            return rej(reason, WIRE_R_CRC, err, where, "payload CRC-32 mismatch");
        }
#undef PAYLOAD_WHERE
    }
    if (crcs != crcs_small) free(crcs);
    m->meta = meta;
    m->n_payloads = npay;
    m->payloads = f + 2;
    return 0;
}

/* ---------------------------------------------------------------- field readers */

typedef struct dctx {
    const wire_msg *m;
    int *reason;
    rlhf_error *err;
    const char *tn;
} dctx;

static int dfield(dctx *c, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int dfield(dctx *c, const char *key, const char *fmt, ...) {
    char where[160], msg[512];
    snprintf(where, sizeof where, "%s.%s", c->tn, key);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return rej(c->reason, WIRE_R_FIELD, c->err, where, "%s", msg);
}

static int get_uint(dctx *c, json_t *obj, const char *key, uint64_t max, uint64_t *out) {
    *out = 0;
    json_t *v = json_object_get(obj, key);
    if (!v) return dfield(c, key, "missing");
    if (!json_is_integer(v)) return dfield(c, key, "must be an integer");
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x > max) return dfield(c, key, "%lld out of range [0, %llu]", (long long)x, (unsigned long long)max);
    *out = (uint64_t)x;
    return 0;
}

static int get_u32f(dctx *c, json_t *obj, const char *key, uint32_t max, uint32_t *out) {
    uint64_t v = 0;
    int rc = get_uint(c, obj, key, max, &v);
    if (rc == 0) *out = (uint32_t)v;
    return rc;
}

static int get_real(dctx *c, json_t *obj, const char *key, double *out, int required) {
    json_t *v = json_object_get(obj, key);
    if (!v) {
        *out = 0;
        return required ? dfield(c, key, "missing") : 0;
    }
    if (!json_is_number(v)) return dfield(c, key, "must be a number");
    *out = json_number_value(v);
    return 0;
}

/* Copies a string field into buf (size cap) or strdup's it into *dup. */
static int get_str(dctx *c, json_t *obj, const char *key, char *buf, size_t cap, char **dup, int required) {
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (buf) buf[0] = 0;
        if (dup) *dup = NULL;
        return required ? dfield(c, key, "missing") : 0;
    }
    if (!json_is_string(v)) return dfield(c, key, "must be a string");
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (strlen(s) != len) return dfield(c, key, "contains a NUL byte");
    if (buf) {
        if (len >= cap) return dfield(c, key, "longer than %zu bytes", cap - 1);
        memcpy(buf, s, len + 1);
    }
    if (dup) {
        *dup = strdup(s);
        if (!*dup) return RLHF_FAIL(c->err, RLHF_ENOMEM, "out of memory");
    }
    return 0;
}

static int check_type(dctx *c, int want) {
    if (!c->m || !c->m->meta || c->m->type != want)
        return rej(c->reason, WIRE_R_TYPE, c->err, wire_type_name(want), "expected a %s message, got %s",
                   wire_type_name(want), c->m ? wire_type_name(c->m->type) : "nothing");
    if (c->reason) *c->reason = WIRE_R_OK;
    return 0;
}

static int want_payloads(dctx *c, size_t n) {
    if (c->m->n_payloads != n)
        return rej(c->reason, WIRE_R_FRAME_COUNT, c->err, c->tn, "%zu payload frames, this type has %zu",
                   c->m->n_payloads, n);
    return 0;
}

static int payload_len(dctx *c, size_t i, uint64_t count, size_t elem, const char *what) {
    if (c->m->payloads[i].len != count * elem) {
        char where[160];
        snprintf(where, sizeof where, "%s.payloads[%zu]", c->tn, i);
        return rej(c->reason, WIRE_R_LENGTH, c->err, where, "%s: %zu bytes, metadata implies %llu x %zu", what,
                   c->m->payloads[i].len, (unsigned long long)count, elem);
    }
    return 0;
}

static void *dup_bytes(const void *p, size_t n) {
    void *q = malloc(n ? n : 1);
    if (q && n) memcpy(q, p, n);
    return q;
}

#define DCTX(type_)                                                                                                   \
    dctx c_ = {m, reason, err, wire_type_name(type_)};                                                                \
    dctx *c = &c_;                                                                                                    \
    int rc_ = check_type(c, type_);                                                                                   \
    if (rc_) return rc_;
#define TRY(x)                                                                                                        \
    do {                                                                                                              \
        int rc__ = (x);                                                                                               \
        if (rc__) goto fail;                                                                                          \
    } while (0)

/* ---------------------------------------------------------------- HELLO / WELCOME */

int wire_encode_hello(const wire_hello *x, wire_out *o, rlhf_error *err) {
    json_t *meta = json_pack("{sssssI}", "peer_id", x->peer_id, "role", wire_role_name(x->role), "pid",
                             (json_int_t)x->pid);
    if (meta && x->host[0]) { /* optional: only a peer that knows its host says so */
        json_object_set_new(meta, "host", json_string(x->host));
        json_object_set_new(meta, "shm", json_boolean(x->shm));
    }
    return encode(WIRE_HELLO, meta, NULL, 0, o, err);
}

static int role_from(dctx *c, json_t *obj, const char *key, int *role) {
    char buf[32];
    int rc = get_str(c, obj, key, buf, sizeof buf, NULL, 1);
    if (rc) return rc;
    for (int r = WIRE_ROLE_GENERATOR; r <= WIRE_ROLE_OBSERVER; r++)
        if (!strcmp(buf, wire_role_name(r))) {
            *role = r;
            return 0;
        }
    return dfield(c, key, "unknown role \"%s\" (generator, updater, observer)", buf);
}

int wire_decode_hello(const wire_msg *m, wire_hello *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_HELLO);
    memset(x, 0, sizeof *x);
    uint64_t pid = 0;
    TRY(want_payloads(c, 0));
    TRY(get_str(c, m->meta, "peer_id", x->peer_id, sizeof x->peer_id, NULL, 1));
    if (!x->peer_id[0]) {
        dfield(c, "peer_id", "must not be empty");
        goto fail;
    }
    TRY(role_from(c, m->meta, "role", &x->role));
    TRY(get_uint(c, m->meta, "pid", INT64_MAX, &pid));
    x->pid = (int64_t)pid;
    TRY(get_str(c, m->meta, "host", x->host, sizeof x->host, NULL, 0));
    json_t *shm = json_object_get(m->meta, "shm");
    if (shm && !json_is_boolean(shm)) {
        dfield(c, "shm", "must be a boolean");
        goto fail;
    }
    if (shm && !x->host[0]) {
        dfield(c, "shm", "needs a non-empty \"host\"");
        goto fail;
    }
    x->shm = json_is_true(shm);
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

int wire_encode_welcome(const wire_welcome *x, wire_out *o, rlhf_error *err) {
    json_t *meta = json_pack("{sIsbsIsI}", "newest_version", (json_int_t)x->newest_version, "has_weights",
                             x->has_weights, "heartbeat_interval_ms", (json_int_t)x->heartbeat_interval_ms,
                             "max_staleness", (json_int_t)x->max_staleness);
    if (meta && x->host_files_dir[0]) json_object_set_new(meta, "host_files_dir", json_string(x->host_files_dir));
    return encode(WIRE_WELCOME, meta, NULL, 0, o, err);
}

int wire_decode_welcome(const wire_msg *m, wire_welcome *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_WELCOME);
    memset(x, 0, sizeof *x);
    TRY(want_payloads(c, 0));
    TRY(get_uint(c, m->meta, "newest_version", INT64_MAX, &x->newest_version));
    json_t *hw = json_object_get(m->meta, "has_weights");
    if (!json_is_boolean(hw)) {
        dfield(c, "has_weights", "must be a boolean");
        goto fail;
    }
    x->has_weights = json_is_true(hw);
    TRY(get_u32f(c, m->meta, "heartbeat_interval_ms", UINT32_MAX, &x->heartbeat_interval_ms));
    TRY(get_u32f(c, m->meta, "max_staleness", UINT32_MAX, &x->max_staleness));
    TRY(get_str(c, m->meta, "host_files_dir", x->host_files_dir, sizeof x->host_files_dir, NULL, 0));
    if (x->host_files_dir[0] && x->host_files_dir[0] != '/') {
        dfield(c, "host_files_dir", "must be an absolute path");
        goto fail;
    }
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

/* ---------------------------------------------------------------- PROMPT_REQUEST / PROMPT_BATCH */

int wire_encode_prompt_request(const wire_prompt_request *x, wire_out *o, rlhf_error *err) {
    return encode(WIRE_PROMPT_REQUEST, json_pack("{sIsI}", "request_id", (json_int_t)x->request_id, "n", (json_int_t)x->n),
                  NULL, 0, o, err);
}

int wire_decode_prompt_request(const wire_msg *m, wire_prompt_request *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_PROMPT_REQUEST);
    memset(x, 0, sizeof *x);
    TRY(want_payloads(c, 0));
    TRY(get_uint(c, m->meta, "request_id", INT64_MAX, &x->request_id));
    TRY(get_u32f(c, m->meta, "n", WIRE_MAX_BATCH, &x->n));
    if (x->n == 0) {
        dfield(c, "n", "must be >= 1");
        goto fail;
    }
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

int wire_encode_prompt_batch(const wire_prompt_batch *x, wire_out *o, rlhf_error *err) {
    json_t *arr = json_array();
    for (uint32_t i = 0; i < x->n; i++) {
        const wire_prompt *p = &x->prompts[i];
        json_t *jp = json_pack("{sssssI}", "id", p->id ? p->id : "", "text", p->text ? p->text : "", "index",
                               (json_int_t)p->index);
        if (p->record) json_object_set(jp, "record", p->record);
        json_array_append_new(arr, jp);
    }
    return encode(WIRE_PROMPT_BATCH,
                  json_pack("{sIsIso}", "request_id", (json_int_t)x->request_id, "newest_version",
                            (json_int_t)x->newest_version, "prompts", arr),
                  NULL, 0, o, err);
}

void wire_prompt_batch_free(wire_prompt_batch *x) {
    if (!x) return;
    if (x->prompts)
        for (uint32_t i = 0; i < x->n; i++) {
            free(x->prompts[i].id);
            free(x->prompts[i].text);
            json_decref(x->prompts[i].record);
        }
    free(x->prompts);
    memset(x, 0, sizeof *x);
}

int wire_decode_prompt_batch(const wire_msg *m, wire_prompt_batch *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_PROMPT_BATCH);
    memset(x, 0, sizeof *x);
    TRY(want_payloads(c, 0));
    TRY(get_uint(c, m->meta, "request_id", INT64_MAX, &x->request_id));
    TRY(get_uint(c, m->meta, "newest_version", INT64_MAX, &x->newest_version));
    json_t *arr = json_object_get(m->meta, "prompts");
    if (!json_is_array(arr)) {
        dfield(c, "prompts", "must be an array");
        goto fail;
    }
    if (json_array_size(arr) > WIRE_MAX_BATCH) {
        rej(reason, WIRE_R_TOO_LARGE, err, "PROMPT_BATCH.prompts", "%zu prompts > limit %d", json_array_size(arr),
            WIRE_MAX_BATCH);
        goto fail;
    }
    x->prompts = calloc(json_array_size(arr) + 1, sizeof *x->prompts);
    if (!x->prompts) {
        RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *jp = json_array_get(arr, i);
        char key[48];
        snprintf(key, sizeof key, "prompts[%zu]", i);
        if (!json_is_object(jp)) {
            dfield(c, key, "must be an object");
            goto fail;
        }
        wire_prompt *p = &x->prompts[i];
        x->n = (uint32_t)i + 1; /* so _free releases what was filled */
        TRY(get_str(c, jp, "id", NULL, 0, &p->id, 1));
        TRY(get_str(c, jp, "text", NULL, 0, &p->text, 1));
        TRY(get_uint(c, jp, "index", INT64_MAX, &p->index));
        json_t *rec = json_object_get(jp, "record");
        if (rec) {
            if (!json_is_object(rec)) {
                dfield(c, key, "record must be an object");
                goto fail;
            }
            p->record = json_incref(rec);
        }
    }
    x->n = (uint32_t)json_array_size(arr);
    return 0;
fail:
    wire_prompt_batch_free(x);
    return err ? err->code : RLHF_EPROTO;
}

/* ---------------------------------------------------------------- ROLLOUT_GROUP */

uint64_t wire_rollout_group_total_tokens(const wire_rollout_group *g) {
    uint64_t t = 0;
    for (uint32_t i = 0; i < g->k; i++) t += g->n_tokens[i];
    return t;
}

/* 1 when some token's version differs from the group's policy_version (then token_versions is sent). */
static int group_has_token_versions(const wire_rollout_group *x) {
    if (!x->token_versions) return 0;
    uint64_t total = wire_rollout_group_total_tokens(x);
    for (uint64_t t = 0; t < total; t++)
        if (x->token_versions[t] != x->policy_version) return 1;
    return 0;
}

/* "token_versions": per sample, the points where the version changes, flattened [t0, v0, t1, v1, ...]
 * (token index, its version); before the first point a sample's tokens are at policy_version. A
 * completion spans few versions, so this is a few numbers, not one per token. */
static json_t *token_versions_json(const wire_rollout_group *x) {
    json_t *all = json_array();
    uint64_t off = 0;
    for (uint32_t i = 0; i < x->k; i++) {
        json_t *pts = json_array();
        uint64_t cur = x->policy_version;
        for (uint32_t t = 0; t < x->n_tokens[i]; t++) {
            uint64_t v = x->token_versions[off + t];
            if (v != cur) {
                json_array_append_new(pts, json_integer((json_int_t)t));
                json_array_append_new(pts, json_integer((json_int_t)v));
                cur = v;
            }
        }
        off += x->n_tokens[i];
        json_array_append_new(all, pts);
    }
    return all;
}

/* The reference encoder: builds the metadata as a jansson tree and serialises it. The fast encoder below
 * writes the same JSON straight into a buffer; tests check that both decode to the same message. */
int wire_encode_rollout_group_reference(const wire_rollout_group *x, wire_out *o, rlhf_error *err) {
    memset(o, 0, sizeof *o);
    if (x->k == 0 || x->k > WIRE_MAX_K)
        return RLHF_FAIL(err, RLHF_EINVAL, "rollout group k=%u out of range [1, %d]", x->k, WIRE_MAX_K);
    /* Per-sample fields as parallel arrays, not an array of objects: a quarter of the JSON work. */
    json_t *lens = json_array(), *fins = json_array(), *texts = x->texts ? json_array() : NULL;
    int bad_text = 0;
    for (uint32_t i = 0; i < x->k; i++) {
        json_array_append_new(lens, json_integer((json_int_t)x->n_tokens[i]));
        json_array_append_new(fins, json_string(wire_finish_name(x->finish ? x->finish[i] : WIRE_FINISH_STOP)));
        if (texts) {
            json_t *t = x->texts[i] ? json_string(x->texts[i]) : json_null(); /* NULL: not valid UTF-8 */
            if (!t) bad_text = 1;
            json_array_append_new(texts, t);
        }
    }
    if (bad_text) {
        json_decref(lens);
        json_decref(fins);
        json_decref(texts);
        return RLHF_FAIL(err, RLHF_EINVAL, "rollout group: a string field is not valid UTF-8");
    }
    json_t *meta = json_pack("{sssssssIsIsIsIsIsfsfsoso}", "prompt_id", x->prompt_id ? x->prompt_id : "", "prompt_text",
                             x->prompt_text ? x->prompt_text : "", "generator_id",
                             x->generator_id ? x->generator_id : "", "seq", (json_int_t)x->seq, "policy_version",
                             (json_int_t)x->policy_version, "k", (json_int_t)x->k, "n_prompt_tokens",
                             (json_int_t)x->n_prompt_tokens, "total_tokens",
                             (json_int_t)wire_rollout_group_total_tokens(x), "gen_seconds", x->gen_seconds,
                             "created_at", x->created_at, "n_tokens", lens, "finish", fins);
    if (!meta) {
        json_decref(texts);
        return RLHF_FAIL(err, RLHF_EINVAL, "rollout group: a string field is not valid UTF-8");
    }
    if (texts) json_object_set_new(meta, "texts", texts);
    if (group_has_token_versions(x)) json_object_set_new(meta, "token_versions", token_versions_json(x));
    if (x->spec_verifies)
        json_object_set_new(meta, "spec",
                            json_pack("[IIII]", (json_int_t)x->spec_drafted, (json_int_t)x->spec_accepted,
                                      (json_int_t)x->spec_verifies, (json_int_t)x->spec_tokens));
    if (x->prompt_record) json_object_set(meta, "prompt_record", x->prompt_record);
    uint64_t total = wire_rollout_group_total_tokens(x);
    wire_frame pay[3] = {
        {x->prompt_tokens, (size_t)x->n_prompt_tokens * 4},
        {x->tokens, (size_t)total * 4},
        {x->logprobs, (size_t)total * 4},
    };
    return encode(WIRE_ROLLOUT_GROUP, meta, pay, 3, o, err);
}

/* ---------------------------------------------------------------- direct JSON writer
 *
 * Building a jansson tree for a rollout group's metadata and serialising it took most of the generator's
 * per-group encode time (about 16 us of 18 on the test machine); the group's fields are few and fixed,
 * so its metadata is written straight into a buffer. Strings are escaped as JSON requires and checked to
 * be valid UTF-8, as jansson does. */
typedef struct jw {
    char *p;
    size_t len, cap;
    int fail; /* 1 out of memory, 2 a string is not valid UTF-8, 3 a real is not finite */
} jw;

static void jw_raw(jw *w, const char *s, size_t n) {
    if (w->fail) return;
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 1024;
        while (cap < w->len + n + 1) cap *= 2;
        char *p = realloc(w->p, cap);
        if (!p) {
            w->fail = 1;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = 0;
}
#define JW_LIT(w, lit) jw_raw((w), (lit), sizeof(lit) - 1)

static void jw_u64(jw *w, uint64_t v) {
    char b[24];
    int i = (int)sizeof b;
    do b[--i] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    jw_raw(w, b + i, sizeof b - (size_t)i);
}

/* Shortest of %.15g / %.17g that reads back as the same double; always with a '.' or exponent so it
 * parses as a real. */
static void jw_real(jw *w, double v) {
    if (!isfinite(v)) {
        if (!w->fail) w->fail = 3;
        return;
    }
    char b[40];
    int n = snprintf(b, sizeof b, "%.15g", v);
    if (strtod(b, NULL) != v) n = snprintf(b, sizeof b, "%.17g", v);
    if (!strpbrk(b, ".eE")) {
        b[n++] = '.';
        b[n++] = '0';
    }
    jw_raw(w, b, (size_t)n);
}

static void jw_str(jw *w, const char *s) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    JW_LIT(w, "\"");
    for (;;) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') p++;
        jw_raw(w, (const char *)run, (size_t)(p - run));
        unsigned c = *p;
        if (!c) break;
        if (c >= 0x80) {
            int n = rlhf_utf8_char_len((const char *)p, 4); /* stops at the terminating NUL */
            if (n <= 0) {
                if (!w->fail) w->fail = 2;
                return;
            }
            jw_raw(w, (const char *)p, (size_t)n);
            p += n;
            continue;
        }
        char e[8];
        switch (c) {
        case '"': JW_LIT(w, "\\\""); break;
        case '\\': JW_LIT(w, "\\\\"); break;
        case '\n': JW_LIT(w, "\\n"); break;
        case '\t': JW_LIT(w, "\\t"); break;
        case '\r': JW_LIT(w, "\\r"); break;
        case '\b': JW_LIT(w, "\\b"); break;
        case '\f': JW_LIT(w, "\\f"); break;
        default:
            snprintf(e, sizeof e, "\\u%04x", c);
            jw_raw(w, e, 6);
        }
        p++;
    }
    JW_LIT(w, "\"");
}


/* Fills o from finished metadata text (owned, taken) and borrowed payloads: header, meta CRC. */
static void out_finish(wire_out *o, int type, char *meta, size_t meta_len, wire_frame *payloads_owned, size_t n) {
    o->meta = meta;
    o->meta_len = meta_len;
    o->payloads = payloads_owned;
    o->n_payloads = n;
    memcpy(o->header, WIRE_MAGIC, 4);
    put_u16(o->header + 4, (uint16_t)WIRE_PROTOCOL_VERSION);
    put_u16(o->header + 6, (uint16_t)type);
    put_u32(o->header + 8, (uint32_t)n);
    put_u32(o->header + 12, rlhf_crc32(0, meta, meta_len));
}

int wire_encode_rollout_group(const wire_rollout_group *x, wire_out *o, rlhf_error *err) {
    memset(o, 0, sizeof *o);
    if (x->k == 0 || x->k > WIRE_MAX_K)
        return RLHF_FAIL(err, RLHF_EINVAL, "rollout group k=%u out of range [1, %d]", x->k, WIRE_MAX_K);
    uint64_t total = wire_rollout_group_total_tokens(x);
    wire_frame pay[3] = {
        {x->prompt_tokens, (size_t)x->n_prompt_tokens * 4},
        {x->tokens, (size_t)total * 4},
        {x->logprobs, (size_t)total * 4},
    };
    jw w = {0};
    JW_LIT(&w, "{\"prompt_id\":");
    jw_str(&w, x->prompt_id);
    JW_LIT(&w, ",\"prompt_text\":");
    jw_str(&w, x->prompt_text);
    JW_LIT(&w, ",\"generator_id\":");
    jw_str(&w, x->generator_id);
    JW_LIT(&w, ",\"seq\":");
    jw_u64(&w, x->seq);
    JW_LIT(&w, ",\"policy_version\":");
    jw_u64(&w, x->policy_version);
    JW_LIT(&w, ",\"k\":");
    jw_u64(&w, x->k);
    JW_LIT(&w, ",\"n_prompt_tokens\":");
    jw_u64(&w, x->n_prompt_tokens);
    JW_LIT(&w, ",\"total_tokens\":");
    jw_u64(&w, total);
    JW_LIT(&w, ",\"gen_seconds\":");
    jw_real(&w, x->gen_seconds);
    JW_LIT(&w, ",\"created_at\":");
    jw_real(&w, x->created_at);
    /* per-sample fields as parallel arrays, not an array of objects: a quarter of the JSON */
    JW_LIT(&w, ",\"n_tokens\":[");
    for (uint32_t i = 0; i < x->k; i++) {
        if (i) JW_LIT(&w, ",");
        jw_u64(&w, x->n_tokens[i]);
    }
    JW_LIT(&w, "],\"finish\":[");
    for (uint32_t i = 0; i < x->k; i++) {
        if (i) JW_LIT(&w, ",");
        jw_str(&w, wire_finish_name(x->finish ? x->finish[i] : WIRE_FINISH_STOP));
    }
    JW_LIT(&w, "]");
    if (x->texts) {
        JW_LIT(&w, ",\"texts\":[");
        for (uint32_t i = 0; i < x->k; i++) {
            if (i) JW_LIT(&w, ",");
            if (x->texts[i])
                jw_str(&w, x->texts[i]);
            else
                JW_LIT(&w, "null");
        }
        JW_LIT(&w, "]");
    }
    if (group_has_token_versions(x)) {
        JW_LIT(&w, ",\"token_versions\":[");
        uint64_t off = 0;
        for (uint32_t i = 0; i < x->k; i++) {
            if (i) JW_LIT(&w, ",");
            JW_LIT(&w, "[");
            uint64_t cur = x->policy_version;
            int first = 1;
            for (uint32_t t = 0; t < x->n_tokens[i]; t++) {
                uint64_t v = x->token_versions[off + t];
                if (v == cur) continue;
                if (!first) JW_LIT(&w, ",");
                jw_u64(&w, t);
                JW_LIT(&w, ",");
                jw_u64(&w, v);
                cur = v;
                first = 0;
            }
            off += x->n_tokens[i];
            JW_LIT(&w, "]");
        }
        JW_LIT(&w, "]");
    }
    if (x->spec_verifies) { /* speculative decoding's counters for this group's sampling time */
        const uint64_t sv[4] = {x->spec_drafted, x->spec_accepted, x->spec_verifies, x->spec_tokens};
        JW_LIT(&w, ",\"spec\":[");
        for (int i = 0; i < 4; i++) {
            if (i) JW_LIT(&w, ",");
            jw_u64(&w, sv[i]);
        }
        JW_LIT(&w, "]");
    }
    if (x->prompt_record) {
        char *rec = json_dumps(x->prompt_record, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!rec) {
            free(w.p);
            return RLHF_FAIL(err, RLHF_ENOMEM, "cannot serialise the rollout group's prompt_record");
        }
        JW_LIT(&w, ",\"prompt_record\":");
        jw_raw(&w, rec, strlen(rec));
        free(rec);
    }
    JW_LIT(&w, ",\"payloads\":[");
    for (int i = 0; i < 3; i++) {
        if (i) JW_LIT(&w, ",");
        JW_LIT(&w, "{\"bytes\":");
        jw_u64(&w, pay[i].len);
        JW_LIT(&w, ",\"crc32\":");
        jw_u64(&w, rlhf_crc32(0, pay[i].data, pay[i].len));
        JW_LIT(&w, "}");
    }
    JW_LIT(&w, "]}");
    if (w.fail) {
        free(w.p);
        if (w.fail == 2) return RLHF_FAIL(err, RLHF_EINVAL, "rollout group: a string field is not valid UTF-8");
        if (w.fail == 3) return RLHF_FAIL(err, RLHF_EINVAL, "rollout group: gen_seconds / created_at not finite");
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory encoding a rollout group");
    }
    if (w.len > WIRE_MAX_META_BYTES) {
        free(w.p);
        return RLHF_FAIL(err, RLHF_EINVAL, "%s metadata is %zu bytes > limit %u", wire_type_name(WIRE_ROLLOUT_GROUP),
                         w.len, WIRE_MAX_META_BYTES);
    }
    wire_frame *pv = malloc(sizeof pay);
    if (!pv) {
        free(w.p);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    memcpy(pv, pay, sizeof pay);
    out_finish(o, WIRE_ROLLOUT_GROUP, w.p, w.len, pv, 3);
    return 0;
}

void wire_rollout_group_free(wire_rollout_group *x) {
    if (!x) return;
    free(x->prompt_id);
    free(x->prompt_text);
    json_decref(x->prompt_record);
    free(x->generator_id);
    free(x->prompt_tokens);
    free(x->n_tokens);
    free(x->tokens);
    free(x->logprobs);
    free(x->finish);
    if (x->texts)
        for (uint32_t i = 0; i < x->k; i++) free(x->texts[i]);
    free(x->texts);
    free(x->token_versions);
    memset(x, 0, sizeof *x);
}

/* copy = 0: validate everything but keep only the scalar fields and the two ids (the broker forwards
 * the frames it received and needs no arrays). */
static int decode_group(const wire_msg *m, wire_rollout_group *x, int copy, int *reason, rlhf_error *err) {
    DCTX(WIRE_ROLLOUT_GROUP);
    memset(x, 0, sizeof *x);
    uint64_t total = 0, declared_total = 0;
    uint32_t k = 0;
    TRY(want_payloads(c, 3));
    TRY(get_uint(c, m->meta, "seq", INT64_MAX, &x->seq));
    TRY(get_uint(c, m->meta, "policy_version", INT64_MAX, &x->policy_version));
    json_t *jk = json_object_get(m->meta, "k");
    if (json_is_integer(jk) && (json_integer_value(jk) > WIRE_MAX_K)) {
        rej(reason, WIRE_R_TOO_LARGE, err, "ROLLOUT_GROUP.k", "k=%lld > limit %d", (long long)json_integer_value(jk),
            WIRE_MAX_K);
        goto fail;
    }
    TRY(get_u32f(c, m->meta, "k", WIRE_MAX_K, &k));
    if (k == 0) {
        dfield(c, "k", "must be >= 1");
        goto fail;
    }
    json_t *jnp = json_object_get(m->meta, "n_prompt_tokens");
    if (json_is_integer(jnp) && json_integer_value(jnp) > (json_int_t)WIRE_MAX_PROMPT_TOKENS) {
        rej(reason, WIRE_R_TOO_LARGE, err, "ROLLOUT_GROUP.n_prompt_tokens", "%lld > limit %u",
            (long long)json_integer_value(jnp), WIRE_MAX_PROMPT_TOKENS);
        goto fail;
    }
    TRY(get_u32f(c, m->meta, "n_prompt_tokens", WIRE_MAX_PROMPT_TOKENS, &x->n_prompt_tokens));
    TRY(get_uint(c, m->meta, "total_tokens", INT64_MAX, &declared_total));
    if (declared_total > WIRE_MAX_GROUP_TOKENS) {
        rej(reason, WIRE_R_TOO_LARGE, err, "ROLLOUT_GROUP.total_tokens", "%llu > limit %u",
            (unsigned long long)declared_total, WIRE_MAX_GROUP_TOKENS);
        goto fail;
    }
    json_t *lens = json_object_get(m->meta, "n_tokens"), *fins = json_object_get(m->meta, "finish");
    json_t *texts = json_object_get(m->meta, "texts");
    if (!json_is_array(lens) || json_array_size(lens) != k) {
        dfield(c, "n_tokens", "must be an array of k=%u integers", k);
        goto fail;
    }
    if (!json_is_array(fins) || json_array_size(fins) != k) {
        dfield(c, "finish", "must be an array of k=%u strings", k);
        goto fail;
    }
    if (texts && (!json_is_array(texts) || json_array_size(texts) != k)) {
        dfield(c, "texts", "must be an array of k=%u strings or nulls", k);
        goto fail;
    }
    /* Check every count against the payload sizes before allocating anything. */
    for (uint32_t i = 0; i < k; i++) {
        json_t *nt = json_array_get(lens, i);
        if (!json_is_integer(nt) || json_integer_value(nt) < 0 ||
            json_integer_value(nt) > (json_int_t)WIRE_MAX_GROUP_TOKENS) {
            dfield(c, "n_tokens", "entry %u must be an integer in [0, %u]", i, WIRE_MAX_GROUP_TOKENS);
            goto fail;
        }
        total += (uint64_t)json_integer_value(nt);
    }
    if (total > WIRE_MAX_GROUP_TOKENS) {
        rej(reason, WIRE_R_TOO_LARGE, err, "ROLLOUT_GROUP.n_tokens", "token count above limit %u", WIRE_MAX_GROUP_TOKENS);
        goto fail;
    }
    if (total != declared_total) {
        rej(reason, WIRE_R_LENGTH, err, "ROLLOUT_GROUP.total_tokens", "declares %llu, n_tokens sum to %llu",
            (unsigned long long)declared_total, (unsigned long long)total);
        goto fail;
    }
    TRY(payload_len(c, 0, x->n_prompt_tokens, 4, "prompt token ids"));
    TRY(payload_len(c, 1, total, 4, "completion token ids"));
    TRY(payload_len(c, 2, total, 4, "behaviour log-probs"));
    uint8_t fin_codes[WIRE_MAX_K];
    for (uint32_t i = 0; i < k; i++) {
        const char *fs = json_string_value(json_array_get(fins, i));
        int f = -1;
        for (int j = 0; fs && j <= WIRE_FINISH_ERROR; j++)
            if (!strcmp(fs, finish_names[j])) f = j;
        if (f < 0) {
            dfield(c, "finish", "entry %u: unknown finish reason (stop, length, error)", i);
            goto fail;
        }
        fin_codes[i] = (uint8_t)f;
        if (texts) {
            json_t *t = json_array_get(texts, i);
            if (!json_is_null(t) && !json_is_string(t)) {
                dfield(c, "texts", "entry %u must be a string or null", i);
                goto fail;
            }
        }
    }
    /* Per-token versions: per sample, change points (token index strictly increasing within the sample,
     * version never below policy_version and never decreasing) */
    json_t *tvs = json_object_get(m->meta, "token_versions");
    if (tvs) {
        if (!json_is_array(tvs) || json_array_size(tvs) != k) {
            dfield(c, "token_versions", "must be an array of k=%u arrays", k);
            goto fail;
        }
        for (uint32_t i = 0; i < k; i++) {
            json_t *pts = json_array_get(tvs, i);
            size_t np = json_is_array(pts) ? json_array_size(pts) : 1;
            if (!json_is_array(pts) || np % 2) {
                dfield(c, "token_versions", "entry %u must be an array of (token index, version) pairs", i);
                goto fail;
            }
            long long prev_t = -1;
            uint64_t prev_v = x->policy_version, n_i = (uint64_t)json_integer_value(json_array_get(lens, i));
            for (size_t q = 0; q < np; q += 2) {
                json_t *jt = json_array_get(pts, q), *jv = json_array_get(pts, q + 1);
                if (!json_is_integer(jt) || json_integer_value(jt) <= prev_t || (uint64_t)json_integer_value(jt) >= n_i) {
                    dfield(c, "token_versions", "entry %u: token indices must increase within [0, %llu)", i,
                           (unsigned long long)n_i);
                    goto fail;
                }
                if (!json_is_integer(jv) || json_integer_value(jv) < 0 || (uint64_t)json_integer_value(jv) < prev_v) {
                    dfield(c, "token_versions", "entry %u: versions must not decrease nor be below policy_version %llu",
                           i, (unsigned long long)x->policy_version);
                    goto fail;
                }
                prev_t = json_integer_value(jt);
                prev_v = (uint64_t)json_integer_value(jv);
            }
        }
    }
    /* Log-probs: finite and <= 0 (read unaligned from the frame). */
    const uint8_t *lp = m->payloads[2].data;
    int lp_bad = 0; /* one branch-free (vectorised) pass; the slow loop below only finds the culprit */
    for (uint64_t t = 0; t < total; t++) {
        float v;
        memcpy(&v, lp + 4 * t, 4);
        lp_bad |= !(v <= 0.0f) | (v < -FLT_MAX); /* NaN, > 0, -inf */
    }
    for (uint64_t t = 0; lp_bad && t < total; t++) {
        float v;
        memcpy(&v, lp + 4 * t, 4);
        if (!isfinite(v) || v > 0) {
            rej(reason, WIRE_R_FIELD, err, "ROLLOUT_GROUP.payloads[2]",
                "behaviour log-prob %llu is %g (must be finite and <= 0)", (unsigned long long)t, v);
            goto fail;
        }
    }
    TRY(get_str(c, m->meta, "generator_id", NULL, 0, &x->generator_id, 1));
    TRY(get_str(c, m->meta, "prompt_id", NULL, 0, &x->prompt_id, 1));
    TRY(get_real(c, m->meta, "gen_seconds", &x->gen_seconds, 0));
    TRY(get_real(c, m->meta, "created_at", &x->created_at, 0));
    json_t *spec = json_object_get(m->meta, "spec");
    if (spec) { /* optional: [drafted, accepted, verifies, tokens] of speculative decoding */
        uint64_t *dst[4] = {&x->spec_drafted, &x->spec_accepted, &x->spec_verifies, &x->spec_tokens};
        if (!json_is_array(spec) || json_array_size(spec) != 4) {
            dfield(c, "spec", "must be an array of 4 counts");
            goto fail;
        }
        for (int i = 0; i < 4; i++) {
            json_t *v = json_array_get(spec, (size_t)i);
            if (!json_is_integer(v) || json_integer_value(v) < 0) {
                dfield(c, "spec", "must be an array of 4 non-negative integers");
                goto fail;
            }
            *dst[i] = (uint64_t)json_integer_value(v);
        }
    }
    json_t *rec = json_object_get(m->meta, "prompt_record");
    if (rec && !json_is_object(rec)) {
        dfield(c, "prompt_record", "must be an object");
        goto fail;
    }
    json_t *pt = json_object_get(m->meta, "prompt_text");
    if (!json_is_string(pt)) {
        dfield(c, "prompt_text", "must be a string");
        goto fail;
    }
    x->k = k;
    if (!copy) return 0;
    TRY(get_str(c, m->meta, "prompt_text", NULL, 0, &x->prompt_text, 1));
    if (rec) x->prompt_record = json_incref(rec);
    x->n_tokens = malloc(k * sizeof *x->n_tokens);
    x->finish = malloc(k);
    x->prompt_tokens = dup_bytes(m->payloads[0].data, m->payloads[0].len);
    x->tokens = dup_bytes(m->payloads[1].data, m->payloads[1].len);
    x->logprobs = dup_bytes(m->payloads[2].data, m->payloads[2].len);
    if (!x->n_tokens || !x->finish || !x->prompt_tokens || !x->tokens || !x->logprobs) {
        RLHF_FAIL(err, RLHF_ENOMEM, "out of memory decoding a rollout group");
        goto fail;
    }
    for (uint32_t i = 0; i < k; i++) {
        x->n_tokens[i] = (uint32_t)json_integer_value(json_array_get(lens, i));
        x->finish[i] = fin_codes[i];
    }
    if (tvs) {
        if (!(x->token_versions = malloc((total ? total : 1) * sizeof *x->token_versions))) {
            RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            goto fail;
        }
        uint64_t off = 0;
        for (uint32_t i = 0; i < k; i++) {
            json_t *pts = json_array_get(tvs, i);
            uint64_t v = x->policy_version;
            size_t q = 0, np = json_array_size(pts);
            for (uint32_t t = 0; t < x->n_tokens[i]; t++) {
                if (q < np && (uint64_t)json_integer_value(json_array_get(pts, q)) == t) {
                    v = (uint64_t)json_integer_value(json_array_get(pts, q + 1));
                    q += 2;
                }
                x->token_versions[off + t] = v;
            }
            off += x->n_tokens[i];
        }
    }
    if (texts) {
        x->texts = calloc(k, sizeof *x->texts);
        if (!x->texts) {
            RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            goto fail;
        }
        for (uint32_t i = 0; i < k; i++) {
            json_t *t = json_array_get(texts, i);
            if (json_is_string(t) && !(x->texts[i] = strdup(json_string_value(t)))) {
                RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
                goto fail;
            }
        }
    }
    return 0;
fail:
    wire_rollout_group_free(x);
    return err ? err->code : RLHF_EPROTO;
}

int wire_decode_rollout_group(const wire_msg *m, wire_rollout_group *x, int *reason, rlhf_error *err) {
    return decode_group(m, x, 1, reason, err);
}

int wire_validate_rollout_group(const wire_msg *m, wire_rollout_group *x, int *reason, rlhf_error *err) {
    return decode_group(m, x, 0, reason, err);
}

json_t *wire_rollout_group_to_json(const wire_rollout_group *g) {
    json_t *samples = json_array();
    uint64_t off = 0;
    for (uint32_t i = 0; i < g->k; i++) {
        json_t *toks = json_array(), *lps = json_array();
        for (uint32_t t = 0; t < g->n_tokens[i]; t++) {
            json_array_append_new(toks, json_integer(g->tokens[off + t]));
            json_array_append_new(lps, json_real(g->logprobs[off + t]));
        }
        off += g->n_tokens[i];
        json_t *s = json_pack("{sssoso}", "finish", wire_finish_name(g->finish[i]), "tokens", toks, "logprobs", lps);
        if (g->token_versions) {
            json_t *vs = json_array();
            for (uint32_t t = 0; t < g->n_tokens[i]; t++)
                json_array_append_new(vs, json_integer((json_int_t)g->token_versions[off - g->n_tokens[i] + t]));
            json_object_set_new(s, "versions", vs);
        }
        if (g->texts && g->texts[i]) json_object_set_new(s, "text", json_string(g->texts[i]));
        json_array_append_new(samples, s);
    }
    json_t *ptoks = json_array();
    for (uint32_t t = 0; t < g->n_prompt_tokens; t++) json_array_append_new(ptoks, json_integer(g->prompt_tokens[t]));
    json_t *o = json_pack("{sssssssIsIsIsosfsfso}", "prompt_id", g->prompt_id, "prompt_text", g->prompt_text,
                          "generator_id", g->generator_id, "seq", (json_int_t)g->seq, "policy_version",
                          (json_int_t)g->policy_version, "k", (json_int_t)g->k, "prompt_tokens", ptoks,
                          "gen_seconds", g->gen_seconds, "created_at", g->created_at, "samples", samples);
    if (o && g->prompt_record) json_object_set(o, "prompt_record", g->prompt_record);
    return o;
}

/* ---------------------------------------------------------------- CREDIT */

int wire_encode_credit(const wire_credit *x, wire_out *o, rlhf_error *err) {
    return encode(WIRE_CREDIT, json_pack("{sI}", "n", (json_int_t)x->n), NULL, 0, o, err);
}

int wire_decode_credit(const wire_msg *m, wire_credit *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_CREDIT);
    memset(x, 0, sizeof *x);
    TRY(want_payloads(c, 0));
    TRY(get_u32f(c, m->meta, "n", 1u << 20, &x->n));
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

/* ---------------------------------------------------------------- WEIGHTS */

/* The metadata WEIGHTS and WEIGHTS_SHM share: version, dtype, sizes, the tensor table. */
static json_t *weights_meta(const wire_weights *x, uint64_t chunk) {
    json_t *tensors = json_array();
    for (uint32_t i = 0; i < x->n_tensors; i++) {
        const wire_tensor *t = &x->tensors[i];
        json_t *shape = json_array();
        for (uint32_t d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_array_append_new(tensors, json_pack("{sssosIsI}", "name", t->name, "shape", shape, "offset",
                                                 (json_int_t)t->offset, "nbytes", (json_int_t)t->nbytes));
    }
    json_t *meta = json_pack("{sIsssIsIso}", "version", (json_int_t)x->version, "dtype", "f32", "nbytes",
                             (json_int_t)x->nbytes, "chunk_bytes", (json_int_t)chunk, "tensors", tensors);
    if (meta && x->lora) json_object_set_new(meta, "kind", json_string("lora"));
    if (meta && x->content_hash[0]) json_object_set_new(meta, "content_hash", json_string(x->content_hash));
    return meta;
}

int wire_encode_weights(const wire_weights *x, wire_out *o, rlhf_error *err) {
    memset(o, 0, sizeof *o);
    uint64_t chunk = x->chunk_bytes ? x->chunk_bytes : WIRE_DEFAULT_CHUNK_BYTES;
    uint64_t nchunks = (x->nbytes + chunk - 1) / chunk;
    if (nchunks > WIRE_MAX_PAYLOADS)
        return RLHF_FAIL(err, RLHF_EINVAL, "weights: %llu bytes in %llu-byte chunks needs %llu frames > limit %d",
                         (unsigned long long)x->nbytes, (unsigned long long)chunk, (unsigned long long)nchunks,
                         WIRE_MAX_PAYLOADS);
    wire_frame *pay = calloc(nchunks + 1, sizeof *pay);
    if (!pay) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < nchunks; i++) {
        uint64_t off = i * chunk;
        pay[i].data = x->data + off;
        pay[i].len = (size_t)(x->nbytes - off < chunk ? x->nbytes - off : chunk);
    }
    int rc = encode(WIRE_WEIGHTS, weights_meta(x, chunk), pay, (size_t)nchunks, o, err);
    free(pay);
    return rc;
}

void wire_weights_free(wire_weights *x) {
    if (!x) return;
    free(x->tensors);
    free(x->owned_data);
    memset(x, 0, sizeof *x);
}

/* type WIRE_WEIGHTS: the chunks are the payload frames; WIRE_WEIGHTS_SHM: no payloads (the chunks'
 * CRCs are in the metadata, read by wire_decode_weights_shm). */
static int decode_weights(const wire_msg *m, int type, wire_weights *x, int copy, int *reason, rlhf_error *err);
int wire_decode_weights(const wire_msg *m, wire_weights *x, int *reason, rlhf_error *err) {
    return decode_weights(m, WIRE_WEIGHTS, x, 1, reason, err);
}
int wire_decode_weights_header(const wire_msg *m, wire_weights *x, int *reason, rlhf_error *err) {
    return decode_weights(m, WIRE_WEIGHTS, x, 0, reason, err);
}

static int decode_weights(const wire_msg *m, int type, wire_weights *x, int copy, int *reason, rlhf_error *err) {
    DCTX(type);
    char where[64];
    memset(x, 0, sizeof *x);
    uint64_t chunk = 0;
    char dtype[8];
    TRY(get_uint(c, m->meta, "version", INT64_MAX, &x->version));
    TRY(get_str(c, m->meta, "dtype", dtype, sizeof dtype, NULL, 1));
    if (strcmp(dtype, "f32") != 0) {
        dfield(c, "dtype", "\"%s\" unsupported (only f32)", dtype);
        goto fail;
    }
    char kind[8];
    TRY(get_str(c, m->meta, "kind", kind, sizeof kind, NULL, 0));
    if (kind[0] && strcmp(kind, "full") != 0 && strcmp(kind, "lora") != 0) {
        dfield(c, "kind", "\"%s\" unknown (full or lora)", kind);
        goto fail;
    }
    x->lora = !strcmp(kind, "lora");
    TRY(get_str(c, m->meta, "content_hash", x->content_hash, sizeof x->content_hash, NULL, 0));
    for (const char *h = x->content_hash; *h; h++)
        if (!((*h >= '0' && *h <= '9') || (*h >= 'a' && *h <= 'f')) || strlen(x->content_hash) != 16) {
            dfield(c, "content_hash", "must be 16 lowercase hex digits");
            goto fail;
        }
    TRY(get_uint(c, m->meta, "nbytes", INT64_MAX, &x->nbytes));
    if (x->nbytes > WIRE_MAX_WEIGHT_BYTES) {
        snprintf(where, sizeof where, "%s.nbytes", c->tn);
        rej(reason, WIRE_R_TOO_LARGE, err, where, "%llu > limit %llu", (unsigned long long)x->nbytes,
            (unsigned long long)WIRE_MAX_WEIGHT_BYTES);
        goto fail;
    }
    TRY(get_uint(c, m->meta, "chunk_bytes", UINT32_MAX, &chunk));
    if (chunk == 0) {
        dfield(c, "chunk_bytes", "must be >= 1");
        goto fail;
    }
    /* Every chunk but the last is exactly chunk_bytes; together they are nbytes. */
    uint64_t want_chunks = (x->nbytes + chunk - 1) / chunk;
    if (type == WIRE_WEIGHTS_SHM) {
        if (want_chunks > WIRE_MAX_PAYLOADS) { /* the same bound as the frames of a WEIGHTS message */
            snprintf(where, sizeof where, "%s.chunk_bytes", c->tn);
            rej(reason, WIRE_R_TOO_LARGE, err, where, "%llu chunks > limit %d", (unsigned long long)want_chunks,
                WIRE_MAX_PAYLOADS);
            goto fail;
        }
        TRY(want_payloads(c, 0));
    } else if (m->n_payloads != want_chunks) {
        rej(reason, WIRE_R_FRAME_COUNT, err, "WEIGHTS", "%zu chunk frames, nbytes/chunk_bytes implies %llu",
            m->n_payloads, (unsigned long long)want_chunks);
        goto fail;
    }
    for (size_t i = 0; i < m->n_payloads; i++) {
        uint64_t want = i + 1 < m->n_payloads ? chunk : x->nbytes - i * chunk;
        if (m->payloads[i].len != want) {
            snprintf(where, sizeof where, "WEIGHTS.payloads[%zu]", i);
            rej(reason, WIRE_R_LENGTH, err, where, "chunk is %zu bytes, expected %llu", m->payloads[i].len,
                (unsigned long long)want);
            goto fail;
        }
    }
    json_t *jt = json_object_get(m->meta, "tensors");
    if (!json_is_array(jt)) {
        dfield(c, "tensors", "must be an array");
        goto fail;
    }
    if (json_array_size(jt) > WIRE_MAX_TENSORS) {
        snprintf(where, sizeof where, "%s.tensors", c->tn);
        rej(reason, WIRE_R_TOO_LARGE, err, where, "%zu tensors > limit %d", json_array_size(jt), WIRE_MAX_TENSORS);
        goto fail;
    }
    x->n_tensors = (uint32_t)json_array_size(jt);
    x->tensors = calloc(x->n_tensors + 1, sizeof *x->tensors);
    if (!x->tensors) {
        RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    uint64_t prev_end = 0;
    for (uint32_t i = 0; i < x->n_tensors; i++) {
        json_t *t = json_array_get(jt, i);
        char tn[64];
        snprintf(tn, sizeof tn, "%s.tensors[%u]", c->tn, i);
        dctx ct = *c;
        ct.tn = tn;
        wire_tensor *w = &x->tensors[i];
        if (!json_is_object(t)) {
            dfield(&ct, "name", "tensor entry must be an object");
            goto fail;
        }
        TRY(get_str(&ct, t, "name", w->name, sizeof w->name, NULL, 1));
        TRY(get_uint(&ct, t, "offset", INT64_MAX, &w->offset));
        TRY(get_uint(&ct, t, "nbytes", INT64_MAX, &w->nbytes));
        json_t *shape = json_object_get(t, "shape");
        if (!json_is_array(shape) || json_array_size(shape) > WIRE_MAX_NDIM) {
            dfield(&ct, "shape", "must be an array of at most %d dims", WIRE_MAX_NDIM);
            goto fail;
        }
        w->ndim = (uint32_t)json_array_size(shape);
        uint64_t numel = 1;
        for (uint32_t d = 0; d < w->ndim; d++) {
            json_t *jd = json_array_get(shape, d);
            if (!json_is_integer(jd) || json_integer_value(jd) < 0 || json_integer_value(jd) > (1LL << 40)) {
                dfield(&ct, "shape", "dim %u must be an integer in [0, 2^40]", d);
                goto fail;
            }
            w->shape[d] = (uint64_t)json_integer_value(jd);
            numel *= w->shape[d];
            if (numel > x->nbytes) break; /* also avoids overflow; caught below */
        }
        if (numel > x->nbytes / 4 + 1 || numel * 4 != w->nbytes) {
            rej(reason, WIRE_R_LENGTH, err, tn, "nbytes %llu != 4 x prod(shape)", (unsigned long long)w->nbytes);
            goto fail;
        }
        if (w->offset < prev_end || w->offset > x->nbytes || w->nbytes > x->nbytes - w->offset) {
            rej(reason, WIRE_R_LENGTH, err, tn, "bytes [%llu, %llu) overlap a previous tensor or leave the %llu-byte blob",
                (unsigned long long)w->offset, (unsigned long long)(w->offset + w->nbytes),
                (unsigned long long)x->nbytes);
            goto fail;
        }
        prev_end = w->offset + w->nbytes;
    }
    x->chunk_bytes = (uint32_t)chunk;
    if (!copy || type != WIRE_WEIGHTS) return 0;
    x->owned_data = malloc(x->nbytes ? x->nbytes : 1);
    if (!x->owned_data) {
        RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for %llu weight bytes", (unsigned long long)x->nbytes);
        goto fail;
    }
    for (size_t i = 0; i < m->n_payloads; i++)
        memcpy(x->owned_data + i * chunk, m->payloads[i].data, m->payloads[i].len);
    x->data = x->owned_data;
    return 0;
fail:
    wire_weights_free(x);
    return err ? err->code : RLHF_EPROTO;
}

/* ---------------------------------------------------------------- PROMPT_STATS */

int wire_encode_prompt_stats(const wire_prompt_stats *x, wire_out *o, rlhf_error *err) {
    json_t *meta = json_pack("{sssIsIsI}", "prompt_id", x->prompt_id ? x->prompt_id : "", "policy_version",
                             (json_int_t)x->policy_version, "k", (json_int_t)x->k, "n_sources",
                             (json_int_t)x->n_sources);
    if (meta && x->source_names) {
        json_t *names = json_array();
        for (uint32_t i = 0; i < x->n_sources; i++) json_array_append_new(names, json_string(x->source_names[i]));
        json_object_set_new(meta, "sources", names);
    }
    wire_frame pay[2] = {{x->rewards, (size_t)x->n_sources * x->k * 4}, {x->total, (size_t)x->k * 4}};
    return encode(WIRE_PROMPT_STATS, meta, pay, 2, o, err);
}

void wire_prompt_stats_free(wire_prompt_stats *x) {
    if (!x) return;
    free(x->prompt_id);
    if (x->source_names)
        for (uint32_t i = 0; i < x->n_sources; i++) free(x->source_names[i]);
    free(x->source_names);
    free(x->rewards);
    free(x->total);
    memset(x, 0, sizeof *x);
}

int wire_decode_prompt_stats(const wire_msg *m, wire_prompt_stats *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_PROMPT_STATS);
    memset(x, 0, sizeof *x);
    uint32_t k = 0, ns = 0;
    TRY(want_payloads(c, 2));
    TRY(get_str(c, m->meta, "prompt_id", NULL, 0, &x->prompt_id, 1));
    TRY(get_uint(c, m->meta, "policy_version", INT64_MAX, &x->policy_version));
    TRY(get_u32f(c, m->meta, "k", WIRE_MAX_K, &k));
    TRY(get_u32f(c, m->meta, "n_sources", WIRE_MAX_SOURCES, &ns));
    if (k == 0) {
        dfield(c, "k", "must be >= 1");
        goto fail;
    }
    TRY(payload_len(c, 0, (uint64_t)ns * k, 4, "rewards"));
    TRY(payload_len(c, 1, k, 4, "total rewards"));
    json_t *names = json_object_get(m->meta, "sources");
    if (names && (!json_is_array(names) || json_array_size(names) != ns)) {
        dfield(c, "sources", "must be an array of n_sources=%u strings", ns);
        goto fail;
    }
    x->k = k;
    if (names) {
        x->source_names = calloc(ns + 1, sizeof *x->source_names);
        if (!x->source_names) goto fail;
        x->n_sources = ns;
        for (uint32_t i = 0; i < ns; i++) {
            json_t *s = json_array_get(names, i);
            if (!json_is_string(s)) {
                dfield(c, "sources", "entry %u must be a string", i);
                goto fail;
            }
            x->source_names[i] = strdup(json_string_value(s));
        }
    }
    x->n_sources = ns;
    x->rewards = dup_bytes(m->payloads[0].data, m->payloads[0].len);
    x->total = dup_bytes(m->payloads[1].data, m->payloads[1].len);
    if (!x->rewards || !x->total) {
        RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    return 0;
fail:
    wire_prompt_stats_free(x);
    return err ? err->code : RLHF_EPROTO;
}

/* ---------------------------------------------------------------- CONTROL / HEARTBEAT / STATS / ERROR */

int wire_encode_control(const wire_control *x, wire_out *o, rlhf_error *err) {
    if (x->command < WIRE_CONTROL_STOP || x->command > WIRE_CONTROL_RESUME)
        return RLHF_FAIL(err, RLHF_EINVAL, "unknown control command %d", x->command);
    return encode(WIRE_CONTROL, json_pack("{ssss}", "command", control_names[x->command], "reason", x->reason), NULL, 0,
                  o, err);
}

int wire_decode_control(const wire_msg *m, wire_control *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_CONTROL);
    memset(x, 0, sizeof *x);
    char cmd[16];
    TRY(want_payloads(c, 0));
    TRY(get_str(c, m->meta, "command", cmd, sizeof cmd, NULL, 1));
    for (int i = WIRE_CONTROL_STOP; i <= WIRE_CONTROL_RESUME; i++)
        if (!strcmp(cmd, control_names[i])) x->command = i;
    if (!x->command) {
        dfield(c, "command", "unknown command \"%s\" (stop, pause, resume)", cmd);
        goto fail;
    }
    TRY(get_str(c, m->meta, "reason", x->reason, sizeof x->reason, NULL, 0));
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

int wire_encode_heartbeat(const wire_heartbeat *x, wire_out *o, rlhf_error *err) {
    return encode(WIRE_HEARTBEAT,
                  json_pack("{sssssIss}", "peer_id", x->peer_id, "role", wire_role_name(x->role), "seq",
                            (json_int_t)x->seq, "state", x->state),
                  NULL, 0, o, err);
}

int wire_decode_heartbeat(const wire_msg *m, wire_heartbeat *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_HEARTBEAT);
    memset(x, 0, sizeof *x);
    TRY(want_payloads(c, 0));
    TRY(get_str(c, m->meta, "peer_id", x->peer_id, sizeof x->peer_id, NULL, 1));
    TRY(role_from(c, m->meta, "role", &x->role));
    TRY(get_uint(c, m->meta, "seq", INT64_MAX, &x->seq));
    TRY(get_str(c, m->meta, "state", x->state, sizeof x->state, NULL, 0));
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

int wire_encode_stats_request(wire_out *o, rlhf_error *err) {
    return encode(WIRE_STATS_REQUEST, json_object(), NULL, 0, o, err);
}

int wire_encode_stats(const json_t *stats, wire_out *o, rlhf_error *err) {
    return encode(WIRE_STATS, json_pack("{sO}", "stats", (json_t *)stats), NULL, 0, o, err);
}

int wire_decode_stats(const wire_msg *m, json_t **out, int *reason, rlhf_error *err) {
    DCTX(WIRE_STATS);
    *out = NULL;
    TRY(want_payloads(c, 0));
    json_t *s = json_object_get(m->meta, "stats");
    if (!json_is_object(s)) {
        dfield(c, "stats", "must be an object");
        goto fail;
    }
    *out = json_incref(s);
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

int wire_encode_error(const wire_error_msg *x, wire_out *o, rlhf_error *err) {
    return encode(WIRE_ERROR,
                  json_pack("{sssssi}", "reason", x->reason, "detail", x->detail, "peer_version", x->peer_version), NULL,
                  0, o, err);
}

int wire_decode_error(const wire_msg *m, wire_error_msg *x, int *reason, rlhf_error *err) {
    DCTX(WIRE_ERROR);
    memset(x, 0, sizeof *x);
    uint64_t pv = 0;
    TRY(want_payloads(c, 0));
    TRY(get_str(c, m->meta, "reason", x->reason, sizeof x->reason, NULL, 1));
    TRY(get_str(c, m->meta, "detail", x->detail, sizeof x->detail, NULL, 0));
    TRY(get_uint(c, m->meta, "peer_version", 65535, &pv));
    x->peer_version = (int)pv;
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

int wire_encode_weights_ack(uint64_t version, wire_out *o, rlhf_error *err) {
    return encode(WIRE_WEIGHTS_ACK, json_pack("{sI}", "version", (json_int_t)version), NULL, 0, o, err);
}

int wire_decode_weights_ack(const wire_msg *m, uint64_t *version, int *reason, rlhf_error *err) {
    DCTX(WIRE_WEIGHTS_ACK);
    TRY(want_payloads(c, 0));
    TRY(get_uint(c, m->meta, "version", INT64_MAX, version));
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}

/* ---------------------------------------------------------------- WEIGHTS_SHM / WEIGHTS_SHM_FAILED */

/* An absolute path without "." or ".." components: the receiver opens exactly the file named. */
static int shm_path_ok(const char *p) {
    if (p[0] != '/') return 0;
    for (const char *s = p; *s;) {
        while (*s == '/') s++;
        size_t n = strcspn(s, "/");
        if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
        s += n;
    }
    return 1;
}

int wire_encode_weights_shm(const wire_weights_shm *x, wire_out *o, rlhf_error *err) {
    memset(o, 0, sizeof *o);
    uint64_t chunk = x->w.chunk_bytes ? x->w.chunk_bytes : WIRE_DEFAULT_CHUNK_BYTES;
    uint64_t nchunks = (x->w.nbytes + chunk - 1) / chunk;
    if (nchunks != x->n_chunks || nchunks > WIRE_MAX_PAYLOADS)
        return RLHF_FAIL(err, RLHF_EINVAL, "weights_shm: %u chunk CRCs for %llu chunks (limit %d)", x->n_chunks,
                         (unsigned long long)nchunks, WIRE_MAX_PAYLOADS);
    if (!shm_path_ok(x->path))
        return RLHF_FAIL(err, RLHF_EINVAL, "weights_shm: path \"%s\" is not absolute and canonical", x->path);
    json_t *meta = weights_meta(&x->w, chunk), *crcs = json_array();
    for (uint32_t i = 0; i < x->n_chunks; i++) json_array_append_new(crcs, json_integer((json_int_t)x->chunk_crc[i]));
    if (meta) {
        json_object_set_new(meta, "path", json_string(x->path));
        json_object_set_new(meta, "chunk_crc32", crcs);
    } else {
        json_decref(crcs);
    }
    return encode(WIRE_WEIGHTS_SHM, meta, NULL, 0, o, err);
}

void wire_weights_shm_free(wire_weights_shm *x) {
    if (!x) return;
    wire_weights_free(&x->w);
    free(x->chunk_crc);
    memset(x, 0, sizeof *x);
}

int wire_decode_weights_shm(const wire_msg *m, wire_weights_shm *x, int *reason, rlhf_error *err) {
    memset(x, 0, sizeof *x);
    int rc = decode_weights(m, WIRE_WEIGHTS_SHM, &x->w, 0, reason, err);
    if (rc) return rc;
    DCTX(WIRE_WEIGHTS_SHM);
    TRY(get_str(c, m->meta, "path", x->path, sizeof x->path, NULL, 1));
    if (!shm_path_ok(x->path)) {
        dfield(c, "path", "must be absolute, without \".\" or \"..\" components");
        goto fail;
    }
    uint64_t nchunks = (x->w.nbytes + x->w.chunk_bytes - 1) / x->w.chunk_bytes;
    json_t *jc = json_object_get(m->meta, "chunk_crc32");
    if (!json_is_array(jc) || json_array_size(jc) != nchunks) {
        dfield(c, "chunk_crc32", "must be an array of %llu CRC-32s (one per chunk)", (unsigned long long)nchunks);
        goto fail;
    }
    x->n_chunks = (uint32_t)nchunks;
    x->chunk_crc = calloc(nchunks + 1, sizeof *x->chunk_crc);
    if (!x->chunk_crc) {
        RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < x->n_chunks; i++) {
        json_t *v = json_array_get(jc, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0xffffffffLL) {
            dfield(c, "chunk_crc32", "entry %u must be an integer in [0, 2^32)", i);
            goto fail;
        }
        x->chunk_crc[i] = (uint32_t)json_integer_value(v);
    }
    return 0;
fail:
    wire_weights_shm_free(x);
    return err ? err->code : RLHF_EPROTO;
}

int wire_encode_weights_shm_failed(uint64_t version, const char *why, wire_out *o, rlhf_error *err) {
    return encode(WIRE_WEIGHTS_SHM_FAILED, json_pack("{sIss}", "version", (json_int_t)version, "why", why ? why : ""),
                  NULL, 0, o, err);
}

int wire_decode_weights_shm_failed(const wire_msg *m, uint64_t *version, char *why, size_t why_cap, int *reason,
                                   rlhf_error *err) {
    DCTX(WIRE_WEIGHTS_SHM_FAILED);
    TRY(want_payloads(c, 0));
    TRY(get_uint(c, m->meta, "version", INT64_MAX, version));
    TRY(get_str(c, m->meta, "why", why, why_cap, NULL, 1));
    return 0;
fail:
    return err ? err->code : RLHF_EPROTO;
}
