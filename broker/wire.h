/* broker/wire.h — the wire protocol shared by broker, generators and updaters.
 *
 * A message is a ZeroMQ multipart message:
 *   frame 0      16-byte header: "RLHF", u16 protocol version, u16 message type,
 *                u32 number of payload frames, u32 CRC-32 of frame 1 (all little-endian)
 *   frame 1      JSON object (metadata); "payloads": [{"bytes": N, "crc32": C}, ...] declares frames 2..n
 *   frames 2..n  binary payloads: little-endian int32 token ids, float32 log-probs, tensor bytes
 *
 * Nothing from the wire is trusted: wire_parse() checks the frame count, header, metadata checksum,
 * JSON, and every payload's declared length and CRC before anything looks at it; each typed decoder
 * then checks every field it reads (types, ranges, counts against payload sizes). A rejected message
 * yields a reason (wire_reason, a short counter name such as "bad_crc") and a one-line error.
 * docs/BROKER.md is the full specification. */
#ifndef RLHF_BROKER_WIRE_H
#define RLHF_BROKER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define WIRE_MAGIC "RLHF"
#define WIRE_PROTOCOL_VERSION 1
#define WIRE_HEADER_BYTES 16

/* Limits a decoder enforces before allocating anything (a hostile count cannot make us allocate). */
#define WIRE_MAX_PAYLOADS 4096
#define WIRE_MAX_META_BYTES (16u << 20)
#define WIRE_MAX_K 4096                     /* samples per rollout group */
#define WIRE_MAX_GROUP_TOKENS (64u << 20)   /* completion tokens per group, all samples */
#define WIRE_MAX_PROMPT_TOKENS (16u << 20)
#define WIRE_MAX_BATCH 4096                 /* prompts per PROMPT_BATCH / request */
#define WIRE_MAX_TENSORS 65536
#define WIRE_MAX_NDIM 8
#define WIRE_MAX_WEIGHT_BYTES (16ull << 30)
#define WIRE_MAX_SOURCES 256
#define WIRE_ID_MAX 64                      /* peer ids (bytes incl. NUL) */
#define WIRE_DEFAULT_CHUNK_BYTES (4u << 20) /* WEIGHTS payload chunk size */
#define WIRE_HOST_MAX 128                   /* HELLO.host (bytes incl. NUL) */
#define WIRE_SHM_PATH_MAX 512               /* WEIGHTS_SHM.path (bytes incl. NUL) */

typedef enum wire_type {
    WIRE_HELLO = 1,          /* peer -> broker: who I am (first message on a connection) */
    WIRE_WELCOME = 2,        /* broker -> peer: handshake reply, broker settings */
    WIRE_PROMPT_REQUEST = 3, /* generator -> broker: give me up to n prompts */
    WIRE_PROMPT_BATCH = 4,   /* broker -> generator */
    WIRE_ROLLOUT_GROUP = 5,  /* generator -> broker -> updater */
    WIRE_CREDIT = 6,         /* updater -> broker: I can take n more groups */
    WIRE_WEIGHTS = 7,        /* updater -> broker -> every generator */
    WIRE_PROMPT_STATS = 8,   /* updater -> broker (-> prompt selector) */
    WIRE_CONTROL = 9,        /* any -> broker, broker -> peers: stop / pause / resume */
    WIRE_HEARTBEAT = 10,     /* peer -> broker: liveness */
    WIRE_STATS_REQUEST = 11, /* any -> broker */
    WIRE_STATS = 12,         /* broker -> requester: counters snapshot */
    WIRE_ERROR = 13,         /* broker -> peer: your message was rejected, and why */
    WIRE_WEIGHTS_ACK = 14,   /* generator -> broker: I now hold version v (one weights message in flight) */
    WIRE_WEIGHTS_SHM = 15,   /* broker -> same-host generator: version v is in a shared-memory file (no bytes) */
    WIRE_WEIGHTS_SHM_FAILED = 16, /* generator -> broker: that file could not be used: send the bytes */
    WIRE_TYPE_END
} wire_type;
const char *wire_type_name(int type); /* "ROLLOUT_GROUP", or "unknown" */

/* Why a message was rejected; wire_reason_name() gives the counter suffix (rejected/<name>). */
typedef enum wire_reason {
    WIRE_R_OK = 0,
    WIRE_R_FRAME_COUNT, /* "bad_frame_count": fewer than 2 frames, or not 2 + declared payloads */
    WIRE_R_HEADER,      /* "bad_header": frame 0 wrong size or magic */
    WIRE_R_VERSION,     /* "version_mismatch": another protocol version */
    WIRE_R_TYPE,        /* "unknown_type" */
    WIRE_R_JSON,        /* "bad_json": metadata not a JSON object */
    WIRE_R_FIELD,       /* "bad_field": a metadata field missing, of the wrong type or out of range */
    WIRE_R_LENGTH,      /* "bad_length": declared length disagrees with a frame or with counts */
    WIRE_R_CRC,         /* "bad_crc" */
    WIRE_R_TOO_LARGE,   /* "too_large": a count or size above the WIRE_MAX_* limits */
    WIRE_R_END
} wire_reason;
const char *wire_reason_name(int reason);

typedef enum wire_role { WIRE_ROLE_GENERATOR = 1, WIRE_ROLE_UPDATER = 2, WIRE_ROLE_OBSERVER = 3 } wire_role;
const char *wire_role_name(int role);

typedef enum wire_finish { WIRE_FINISH_STOP = 0, WIRE_FINISH_LENGTH = 1, WIRE_FINISH_ERROR = 2 } wire_finish;
const char *wire_finish_name(int finish);

typedef enum wire_control_cmd { WIRE_CONTROL_STOP = 1, WIRE_CONTROL_PAUSE = 2, WIRE_CONTROL_RESUME = 3 } wire_control_cmd;

/* A borrowed byte range (a received frame, or caller data to send). */
typedef struct wire_frame {
    const void *data;
    size_t len;
} wire_frame;

/* ---------------------------------------------------------------- generic layer */

/* A parsed, validated message: header fields, metadata (owned) and payload frames (borrowed from
 * the frames given to wire_parse, which must outlive it). */
typedef struct wire_msg {
    int version;
    int type;
    json_t *meta;
    size_t n_payloads;
    const wire_frame *payloads; /* (n_payloads) */
} wire_msg;

/* Validates frames[0..n) as a message of any known type. On failure returns RLHF_EPROTO (or
 * RLHF_ECORRUPT for bad_crc), sets *reason (may be NULL) and err. A version mismatch is reported
 * with both versions; m->version/type are still filled from the header when it was readable. */
int wire_parse(const wire_frame *frames, size_t n, wire_msg *m, int *reason, rlhf_error *err);
void wire_msg_free(wire_msg *m);

/* An encoded message ready to send: header + metadata (owned) + payloads (borrowed from the struct
 * that was encoded, which must outlive the send). */
typedef struct wire_out {
    uint8_t header[WIRE_HEADER_BYTES];
    char *meta;
    size_t meta_len;
    size_t n_payloads;
    wire_frame *payloads; /* (n_payloads), owned array of borrowed ranges */
} wire_out;
void wire_out_free(wire_out *o);
/* Total frames (2 + n_payloads) and a view of frame i. */
size_t wire_out_nframes(const wire_out *o);
wire_frame wire_out_frame(const wire_out *o, size_t i);
/* Sends as one multipart message on a ZeroMQ socket (copies the bytes; returns once queued). */
int wire_out_send(void *zsock, const wire_out *o, rlhf_error *err);
/* Encodes a metadata-only message with an arbitrary header version (for tests and error replies). */
int wire_encode_raw(int version, int type, json_t *meta_steal, const wire_frame *payloads, size_t n_payloads,
                    wire_out *o, rlhf_error *err);

/* Received multipart message: frames owned as zmq messages. */
typedef struct wire_rx {
    size_t n;
    size_t cap;
    void *msgs;        /* zmq_msg_t[cap] */
    wire_frame *views; /* (n) */
} wire_rx;
/* Receives one whole multipart message (flags: 0 or ZMQ_DONTWAIT). Returns 1 on a message,
 * 0 on EAGAIN/EINTR (nothing received), or a negative code. Previous contents are released. */
int wire_rx_recv(void *zsock, wire_rx *rx, int flags, rlhf_error *err);
void wire_rx_free(wire_rx *rx);

/* ---------------------------------------------------------------- typed messages
 *
 * Encoders read the caller's struct (borrowing its arrays into wire_out). Decoders fill a struct
 * whose strings and arrays they allocate; free it with the matching _free (safe on a zeroed or
 * partly filled struct). Every decoder validates before allocating. */

typedef struct wire_hello {
    char peer_id[WIRE_ID_MAX];
    int role; /* wire_role */
    int64_t pid;
    char host[WIRE_HOST_MAX]; /* optional ("" = not sent): the peer's host identity (boot id + hostname) */
    int shm;                  /* optional: 1 = this peer can take weights through a shared-memory file */
} wire_hello;

typedef struct wire_welcome {
    uint64_t newest_version; /* newest published weights version (initial version if none) */
    int has_weights;          /* 1: the broker holds a weights version and sends it next */
    uint32_t heartbeat_interval_ms;
    uint32_t max_staleness;
    /* optional ("" = not sent): a generator on another host than the broker's, which can map weights
     * files, writes every version it receives as bytes to DIR/rlhf-h.PID.VERSION on its host, so that the
     * broker sends its same-host siblings WEIGHTS_SHM naming that file instead of the bytes again */
    char host_files_dir[WIRE_SHM_PATH_MAX];
} wire_welcome;

typedef struct wire_prompt_request {
    uint64_t request_id;
    uint32_t n;
} wire_prompt_request;

typedef struct wire_prompt {
    char *id;
    char *text;
    uint64_t index;  /* dataset index */
    json_t *record;  /* the dataset record (answer, tests, ...); may be NULL */
} wire_prompt;

typedef struct wire_prompt_batch {
    uint64_t request_id;     /* echoes the request */
    uint64_t newest_version; /* the newest weights version when served */
    uint32_t n;
    wire_prompt *prompts;    /* (n) */
} wire_prompt_batch;

typedef struct wire_rollout_group {
    char *prompt_id;
    char *prompt_text;
    json_t *prompt_record;   /* may be NULL: the dataset record so an updater can score without the dataset */
    char *generator_id;
    uint64_t seq;            /* per-generator sequence number */
    uint64_t policy_version; /* weights version that sampled it (the behaviour policy) */
    uint32_t k;              /* samples */
    uint32_t n_prompt_tokens;
    int32_t *prompt_tokens;  // (n_prompt_tokens)
    uint32_t *n_tokens;      // (k) completion lengths
    int32_t *tokens;         // (sum n_tokens) completions back to back
    float *logprobs;         // (sum n_tokens) behaviour log-probs, same layout
    uint8_t *finish;         // (k) wire_finish
    char **texts;            // (k) decoded completions, or NULL (then not sent)
    /* (sum n_tokens) the weights version each token was sampled with, same layout as tokens; NULL: every
     * token at policy_version (a generator that took no new weights mid-completion, or an older log).
     * policy_version is the oldest of them. On the wire, per sample, the points where it changes. */
    uint64_t *token_versions;
    double gen_seconds;      /* time spent sampling this group */
    /* speculative decoding over this group's sampling time (0 when off; the optional "spec" field):
     * draft tokens verified, kept, verify steps, tokens those steps emitted */
    uint64_t spec_drafted, spec_accepted, spec_verifies, spec_tokens;
    double created_at;       /* wall clock when the generator finished it */
} wire_rollout_group;
uint64_t wire_rollout_group_total_tokens(const wire_rollout_group *g);

typedef struct wire_credit {
    uint32_t n;
} wire_credit;

typedef struct wire_tensor {
    char name[128];
    uint32_t ndim;
    uint64_t shape[WIRE_MAX_NDIM];
    uint64_t offset; /* byte offset in the weights blob; tensors ascending, non-overlapping */
    uint64_t nbytes; /* prod(shape) * 4 (dtype f32) */
} wire_tensor;

typedef struct wire_weights {
    uint64_t version;
    /* Optional metadata keys "kind" and "content_hash" (absent in a full-weights message of an older sender):
     * kind "lora" (lora = 1): the tensors are a LoRA adapter set, applied on the receiver's own base weights;
     * content_hash: 16 lowercase hex digits of a hash of the blob (run_weights_content_hash), "" = none. */
    int lora;
    char content_hash[17];
    uint32_t n_tensors;
    wire_tensor *tensors; /* (n_tensors) */
    uint64_t nbytes;      /* blob size */
    const uint8_t *data;  /* (nbytes) blob; decoders allocate it (owned_data) */
    uint8_t *owned_data;
    uint32_t chunk_bytes; /* encoder: payload chunk size (0 = WIRE_DEFAULT_CHUNK_BYTES) */
} wire_weights;

/* WEIGHTS_SHM: the metadata of a WEIGHTS message (version, tensor table, nbytes, chunk_bytes) without
 * its payloads, plus where the blob is (an absolute path on the receiver's host) and every chunk's
 * CRC-32, which the receiver checks on the file's bytes before using a byte of it. */
typedef struct wire_weights_shm {
    wire_weights w;            /* data/owned_data unused (NULL) */
    char path[WIRE_SHM_PATH_MAX];
    uint32_t n_chunks;         /* ceil(nbytes / chunk_bytes) */
    uint32_t *chunk_crc;       /* (n_chunks) */
} wire_weights_shm;

typedef struct wire_prompt_stats {
    char *prompt_id;
    uint64_t policy_version;
    uint32_t k;
    uint32_t n_sources;
    char **source_names; /* (n_sources) or NULL */
    float *rewards;      // (n_sources, k); NaN = that source failed
    float *total;        // (k)
} wire_prompt_stats;

typedef struct wire_control {
    int command; /* wire_control_cmd */
    char reason[256];
} wire_control;

typedef struct wire_heartbeat {
    char peer_id[WIRE_ID_MAX];
    int role;
    uint64_t seq;
    char state[32]; /* free-form: "generating", "training", "idle" */
} wire_heartbeat;

typedef struct wire_error_msg {
    char reason[64];  /* a wire_reason name or a broker reason ("not_hello", ...) */
    char detail[512];
    int peer_version; /* version of the rejected message's header, 0 if unknown */
} wire_error_msg;

int wire_encode_hello(const wire_hello *x, wire_out *o, rlhf_error *err);
int wire_encode_welcome(const wire_welcome *x, wire_out *o, rlhf_error *err);
int wire_encode_prompt_request(const wire_prompt_request *x, wire_out *o, rlhf_error *err);
int wire_encode_prompt_batch(const wire_prompt_batch *x, wire_out *o, rlhf_error *err);
/* Writes the metadata JSON directly (no jansson tree): the generator's per-group cost. */
int wire_encode_rollout_group(const wire_rollout_group *x, wire_out *o, rlhf_error *err);
/* The same message built with jansson: the reference the fast encoder is tested against. */
int wire_encode_rollout_group_reference(const wire_rollout_group *x, wire_out *o, rlhf_error *err);
int wire_encode_credit(const wire_credit *x, wire_out *o, rlhf_error *err);
int wire_encode_weights(const wire_weights *x, wire_out *o, rlhf_error *err);
int wire_encode_prompt_stats(const wire_prompt_stats *x, wire_out *o, rlhf_error *err);
int wire_encode_control(const wire_control *x, wire_out *o, rlhf_error *err);
int wire_encode_heartbeat(const wire_heartbeat *x, wire_out *o, rlhf_error *err);
int wire_encode_stats_request(wire_out *o, rlhf_error *err);
int wire_encode_stats(const json_t *stats, wire_out *o, rlhf_error *err);
int wire_encode_error(const wire_error_msg *x, wire_out *o, rlhf_error *err);

/* Decoders: m must be a parsed message of the matching type (else WIRE_R_TYPE). */
int wire_decode_hello(const wire_msg *m, wire_hello *x, int *reason, rlhf_error *err);
int wire_decode_welcome(const wire_msg *m, wire_welcome *x, int *reason, rlhf_error *err);
int wire_decode_prompt_request(const wire_msg *m, wire_prompt_request *x, int *reason, rlhf_error *err);
int wire_decode_prompt_batch(const wire_msg *m, wire_prompt_batch *x, int *reason, rlhf_error *err);
int wire_decode_rollout_group(const wire_msg *m, wire_rollout_group *x, int *reason, rlhf_error *err);
/* Validates a ROLLOUT_GROUP as completely as the decoder but fills only the scalars, k, generator_id
 * and prompt_id (free with wire_rollout_group_free): what the broker needs to route the frames. */
int wire_validate_rollout_group(const wire_msg *m, wire_rollout_group *x, int *reason, rlhf_error *err);
int wire_decode_credit(const wire_msg *m, wire_credit *x, int *reason, rlhf_error *err);
int wire_decode_weights(const wire_msg *m, wire_weights *x, int *reason, rlhf_error *err);
/* Validates a WEIGHTS message completely (tensor table, chunk sizes) without copying the blob:
 * x->data stays NULL. The broker forwards the frames it received. */
int wire_decode_weights_header(const wire_msg *m, wire_weights *x, int *reason, rlhf_error *err);
int wire_encode_weights_ack(uint64_t version, wire_out *o, rlhf_error *err);
/* WEIGHTS_SHM: x->w's table and sizes, x->path (absolute, no "..", no NUL), x->chunk_crc. */
int wire_encode_weights_shm(const wire_weights_shm *x, wire_out *o, rlhf_error *err);
int wire_decode_weights_shm(const wire_msg *m, wire_weights_shm *x, int *reason, rlhf_error *err);
void wire_weights_shm_free(wire_weights_shm *x);
/* WEIGHTS_SHM_FAILED: the version whose file failed and why (a short word: open, map, size, crc). */
int wire_encode_weights_shm_failed(uint64_t version, const char *why, wire_out *o, rlhf_error *err);
int wire_decode_weights_shm_failed(const wire_msg *m, uint64_t *version, char *why, size_t why_cap, int *reason,
                                   rlhf_error *err);
int wire_decode_weights_ack(const wire_msg *m, uint64_t *version, int *reason, rlhf_error *err);
int wire_decode_prompt_stats(const wire_msg *m, wire_prompt_stats *x, int *reason, rlhf_error *err);
int wire_decode_control(const wire_msg *m, wire_control *x, int *reason, rlhf_error *err);
int wire_decode_heartbeat(const wire_msg *m, wire_heartbeat *x, int *reason, rlhf_error *err);
int wire_decode_stats(const wire_msg *m, json_t **stats_out, int *reason, rlhf_error *err);
int wire_decode_error(const wire_msg *m, wire_error_msg *x, int *reason, rlhf_error *err);

void wire_prompt_batch_free(wire_prompt_batch *x);
void wire_rollout_group_free(wire_rollout_group *x);
void wire_weights_free(wire_weights *x);
void wire_prompt_stats_free(wire_prompt_stats *x);

/* The rollout group as a JSON object (replay-cat): metadata plus token/log-prob arrays. */
json_t *wire_rollout_group_to_json(const wire_rollout_group *g);

#ifdef __cplusplus
}
#endif
#endif
