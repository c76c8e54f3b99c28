/* tests/fuzz/fuzz_wire.c — every wire message decoder (broker/wire.c), reached behind the checksums.
 *
 * Input: one flag byte, then the metadata JSON and the payload frames separated by FUZZ_SEP.
 *   flags & 0x0f   message type 1..16 (15 and 16 are unknown types)
 *   flags & 0x40   header version 2 (a version mismatch)
 *   flags & 0x80   raw: send the bytes as they are (header CRC 0, payload CRCs as written), so the checks in
 *                  wire_parse themselves are fuzzed too
 * Otherwise the harness does what an honest sender does over mutated content: it sets every declared
 * payload's "bytes" and "crc32" to the frame's, and the header's CRC to the metadata's — random bytes
 * would otherwise almost never pass the CRCs and the decoders behind them would go unfuzzed.
 *
 * Properties: wire_validate_rollout_group accepts exactly what wire_decode_rollout_group accepts, and
 * wire_decode_weights_header what wire_decode_weights accepts; a decoded ROLLOUT_GROUP re-encodes (fast
 * encoder) into a message that parses and decodes to the same tokens. */
#include <stdint.h>
#include <string.h>

#include "broker/wire.h"
#include "tests/fuzz/fuzz_util.h"

#define MAX_FRAMES 64

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void roundtrip_group(const wire_rollout_group *g) {
    wire_out o;
    rlhf_error err;
    int rc = wire_encode_rollout_group(g, &o, &err);
    FUZZ_ASSERT(rc == 0, "re-encoding a decoded group failed: %s", err.msg);
    size_t nf = wire_out_nframes(&o);
    wire_frame *fr = malloc(nf * sizeof *fr);
    if (!fr) abort();
    for (size_t i = 0; i < nf; i++) fr[i] = wire_out_frame(&o, i);
    wire_msg m;
    rc = wire_parse(fr, nf, &m, NULL, &err);
    FUZZ_ASSERT(rc == 0, "re-encoded group does not parse: %s", err.msg);
    wire_rollout_group d;
    rc = wire_decode_rollout_group(&m, &d, NULL, &err);
    FUZZ_ASSERT(rc == 0, "re-encoded group does not decode: %s: %s", err.where, err.msg);
    uint64_t nt = wire_rollout_group_total_tokens(g);
    FUZZ_ASSERT(d.k == g->k && wire_rollout_group_total_tokens(&d) == nt && d.seq == g->seq &&
                    d.policy_version == g->policy_version,
                "re-decoded group differs in k/tokens/seq/version");
    FUZZ_ASSERT(memcmp(d.tokens, g->tokens, nt * sizeof *d.tokens) == 0, "re-decoded tokens differ");
    FUZZ_ASSERT(strcmp(d.prompt_id, g->prompt_id) == 0 && strcmp(d.generator_id, g->generator_id) == 0,
                "re-decoded ids differ");
    wire_rollout_group_free(&d);
    wire_msg_free(&m);
    free(fr);
    wire_out_free(&o);
}

static void decode(const wire_msg *m) {
    rlhf_error err;
    int reason;
    switch (m->type) {
    case WIRE_HELLO: {
        wire_hello x;
        wire_decode_hello(m, &x, &reason, &err);
        break;
    }
    case WIRE_WELCOME: {
        wire_welcome x;
        wire_decode_welcome(m, &x, &reason, &err);
        break;
    }
    case WIRE_PROMPT_REQUEST: {
        wire_prompt_request x;
        wire_decode_prompt_request(m, &x, &reason, &err);
        break;
    }
    case WIRE_PROMPT_BATCH: {
        wire_prompt_batch x;
        if (wire_decode_prompt_batch(m, &x, &reason, &err) == 0) wire_prompt_batch_free(&x);
        break;
    }
    case WIRE_ROLLOUT_GROUP: {
        wire_rollout_group v, d;
        int rv = wire_validate_rollout_group(m, &v, &reason, &err);
        if (rv == 0) wire_rollout_group_free(&v);
        int rd = wire_decode_rollout_group(m, &d, &reason, &err);
        FUZZ_ASSERT((rv == 0) == (rd == 0), "validate says %d, decode says %d (%s)", rv, rd, err.msg);
        if (rd == 0) {
            json_t *j = wire_rollout_group_to_json(&d);
            json_decref(j);
            roundtrip_group(&d);
            wire_rollout_group_free(&d);
        }
        break;
    }
    case WIRE_CREDIT: {
        wire_credit x;
        wire_decode_credit(m, &x, &reason, &err);
        break;
    }
    case WIRE_WEIGHTS: {
        wire_weights h, w;
        int rh = wire_decode_weights_header(m, &h, &reason, &err);
        wire_weights_free(&h);
        int rw = wire_decode_weights(m, &w, &reason, &err);
        wire_weights_free(&w);
        FUZZ_ASSERT((rh == 0) == (rw == 0), "header decode says %d, full decode says %d (%s)", rh, rw, err.msg);
        break;
    }
    case WIRE_PROMPT_STATS: {
        wire_prompt_stats x;
        if (wire_decode_prompt_stats(m, &x, &reason, &err) == 0) wire_prompt_stats_free(&x);
        break;
    }
    case WIRE_CONTROL: {
        wire_control x;
        wire_decode_control(m, &x, &reason, &err);
        break;
    }
    case WIRE_HEARTBEAT: {
        wire_heartbeat x;
        wire_decode_heartbeat(m, &x, &reason, &err);
        break;
    }
    case WIRE_STATS: {
        json_t *s = NULL;
        if (wire_decode_stats(m, &s, &reason, &err) == 0) json_decref(s);
        break;
    }
    case WIRE_ERROR: {
        wire_error_msg x;
        wire_decode_error(m, &x, &reason, &err);
        break;
    }
    case WIRE_WEIGHTS_ACK: {
        uint64_t v;
        wire_decode_weights_ack(m, &v, &reason, &err);
        break;
    }
    default: /* STATS_REQUEST has no body; a decoder of the wrong type must refuse */ {
        wire_credit x;
        int rc = wire_decode_credit(m, &x, &reason, &err);
        FUZZ_ASSERT(rc != 0 && reason == WIRE_R_TYPE, "CREDIT decoder accepted a %s", wire_type_name(m->type));
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t flags = data[0];
    fuzz_part parts[MAX_FRAMES];
    size_t np = fuzz_split(data + 1, size - 1, parts, MAX_FRAMES);
    size_t npay = np - 1;
    int raw = flags & 0x80;

    char *meta = NULL;
    size_t meta_len = parts[0].n;
    const void *meta_bytes = parts[0].p;
    if (!raw) {
        json_t *j = json_loadb((const char *)parts[0].p, parts[0].n, JSON_REJECT_DUPLICATES, NULL);
        json_t *decl = json_object_get(j, "payloads");
        for (size_t i = 0; json_is_array(decl) && i < json_array_size(decl) && i < npay; i++) {
            json_t *d = json_array_get(decl, i);
            if (!json_is_object(d)) continue;
            json_object_set_new(d, "bytes", json_integer((json_int_t)parts[i + 1].n));
            json_object_set_new(d, "crc32", json_integer(rlhf_crc32(0, parts[i + 1].p, parts[i + 1].n)));
        }
        if (j) {
            meta = json_dumps(j, JSON_COMPACT);
            json_decref(j);
            if (meta) {
                meta_bytes = meta;
                meta_len = strlen(meta);
            }
        }
    }
    uint8_t header[WIRE_HEADER_BYTES];
    memcpy(header, WIRE_MAGIC, 4);
    put_u16(header + 4, (flags & 0x40) ? 2 : WIRE_PROTOCOL_VERSION);
    put_u16(header + 6, (uint16_t)((flags & 0x0f) + 1));
    put_u32(header + 8, (uint32_t)npay);
    put_u32(header + 12, raw ? 0 : rlhf_crc32(0, meta_bytes, meta_len));

    wire_frame frames[MAX_FRAMES + 1];
    frames[0] = (wire_frame){header, sizeof header};
    frames[1] = (wire_frame){meta_bytes, meta_len};
    for (size_t i = 0; i < npay; i++) frames[i + 2] = (wire_frame){parts[i + 1].p, parts[i + 1].n};

    wire_msg m;
    int reason;
    rlhf_error err;
    if (wire_parse(frames, npay + 2, &m, &reason, &err) == 0) {
        decode(&m);
        wire_msg_free(&m);
    }
    free(meta);
    return 0;
}
