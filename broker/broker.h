/* broker/broker.h — the broker (ZeroMQ hub) and what other processes use to talk to it.
 *
 * Three parts:
 *   1. the broker itself (config, create/run/destroy) — the `rlhf broker` process;
 *   2. the CLIENT API used by generators and updaters, so they never touch raw sockets:
 *      blocking calls with timeouts, heartbeats sent from a background thread so a process busy
 *      with heavy compute stays alive in the broker's eyes;
 *   3. the replay log: writer (the broker) and reader (replay-cat, offline updater training).
 * docs/BROKER.md specifies the protocol, flow control, staleness and the replay log format. */
#ifndef RLHF_BROKER_H
#define RLHF_BROKER_H

#include <signal.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"
#include "broker/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- broker config */

typedef enum broker_fsync { BROKER_FSYNC_ALWAYS = 0, BROKER_FSYNC_EVERY_N = 1, BROKER_FSYNC_NEVER = 2 } broker_fsync;

/* "authorized_keys": a CURVE client key from another host (e.g. `rlhf keygen` there) the broker admits in
 * addition to the run's own credentials, with the role a connection holding it may take. */
#define BROKER_MAX_AUTHORIZED_KEYS 256
typedef struct broker_authorized_key {
    char public_key[41]; /* "public": Z85 */
    int role;            /* "role": WIRE_ROLE_GENERATOR or WIRE_ROLE_UPDATER */
    char name[64];       /* "name": shown in the broker's log when it first connects (default: "key-N") */
} broker_authorized_key;

/* The run config's "broker" object. Every key is optional (defaults in docs/BROKER.md); unknown keys
 * and wrong types are errors naming the JSON path, e.g. "broker.max_staleness". */
typedef struct broker_config {
    char endpoint[256];             /* "endpoint": ROUTER bind address, tcp://127.0.0.1:5555 */
    uint32_t max_staleness;         /* "max_staleness": lag bound in weight versions (0 = synchronous) */
    uint32_t queue_capacity;        /* "queue_capacity": groups queued + granted-but-not-returned */
    int64_t max_generation_lag;     /* "max_generation_lag": prompts go only to a generator holding a version at
                                     * most this far behind the newest (-1 = no limit) */
    uint64_t initial_version;       /* "initial_version": policy version before any WEIGHTS */
    char replay_path[4096];         /* "replay.path": relative to the run dir; "" disables the log */
    int replay_fsync;               /* "replay.fsync": "always" | "every_n" | "never" */
    uint32_t replay_fsync_every;    /* "replay.fsync_every" (every_n) */
    uint64_t replay_rotate_bytes;   /* "replay.rotate_bytes": start a new segment past this size; 0 = never */
    uint32_t heartbeat_interval_ms; /* "heartbeat_interval_ms": what clients are told to use */
    uint32_t heartbeat_timeout_ms;  /* "heartbeat_timeout_ms": silent this long = dead */
    uint32_t stats_interval_ms;     /* "stats_interval_ms": counters line on stderr; 0 = off */
    char dataset[4096];             /* "dataset": prompts JSONL (relative paths: to the cwd); "" = no prompts */
    json_t *selector;               /* "selector": prompts selector config (owned), NULL = uniform */
    uint64_t seed;                  /* "seed" for the selector */
    uint32_t vocab_size;            /* "vocab_size": token ids of a group must be < this (0 = unchecked; the
                                     * launcher sets it from the model) */
    uint32_t lease_timeout_ms;      /* "lease_timeout_ms": a granted prompt not answered this long is released and
                                     * a group for it refused */
    uint32_t max_peers;             /* "max_peers": the peer table's bound (dead peers are forgotten first) */
    int weights_shm;                /* "weights_shm": "auto" (1): generators on this host get weights through a file
                                     * in weights_shm_dir; "off" (0): every generator gets the bytes over ZeroMQ */
    char weights_shm_dir[256];      /* "weights_shm_dir": where those files go, "/dev/shm" */
    broker_authorized_key authorized[BROKER_MAX_AUTHORIZED_KEYS]; /* "authorized_keys" (tcp:// / CURVE only) */
    uint32_t n_authorized;
    int insecure_remote;            /* "insecure": true lets --insecure bind a non-loopback address */
    /* Not in the JSON (command line only): */
    char credentials[4096];         /* CURVE credentials directory; "" = RUN_DIR/credentials */
    int insecure;                   /* 1 = no authentication at all (--insecure): any local process can stop the run */
} broker_config;

void broker_config_default(broker_config *c);
/* Parses `obj` (the "broker" object; NULL = all defaults). `path` names it in errors ("broker"). */
int broker_config_parse(broker_config *c, const json_t *obj, const char *path, rlhf_error *err);
void broker_config_free(broker_config *c);

/* ---------------------------------------------------------------- the broker */

typedef struct broker broker;

/* The prompt selector's state file inside the run directory (docs/PROMPT_SELECTION.md "Checkpoints"). */
#define BROKER_SELECTOR_STATE "selector_state.json"

/* Binds the endpoint (error naming it when it cannot), opens/recovers the replay log under run_dir,
 * loads the dataset and selector; if run_dir holds BROKER_SELECTOR_STATE, the selector continues from
 * it (a state that does not fit the dataset or policy is an error naming the file). */
int broker_create(broker **out, const broker_config *cfg, const char *run_dir, rlhf_error *err);
/* Serves until *stop becomes non-zero (a signal handler sets it) or a CONTROL stop arrives; then
 * tells every peer to stop, flushes the replay log and saves the selector state. While serving, the
 * selector state is saved (atomically) at most once a second when it changed. */
int broker_run(broker *b, volatile sig_atomic_t *stop, rlhf_error *err);
/* Counters snapshot (new reference): see docs/BROKER.md "Counters". */
json_t *broker_stats(const broker *b);
void broker_destroy(broker **b);
/* Removes the weights files (broker.weights_shm_dir) that brokers of this user left behind when they died
 * without cleaning up (kill -9): every DIR/rlhf-w.* whose writing process is gone. A running broker does
 * this at start; the launcher at the end of a run. Returns how many were removed (>= 0). */
int broker_weights_shm_sweep(const char *dir);

/* ---------------------------------------------------------------- authentication (CURVE)
 *
 * A run's credentials are a directory (RUN_DIR/BROKER_CREDENTIALS_DIR, mode 0700) of CURVE key pairs,
 * one per role: broker.key, generator.key, updater.key and control.key (the launcher's: the only role
 * allowed CONTROL; it says HELLO as an observer). The broker admits only those keys and binds each
 * connection to its key's role (docs/BROKER.md "Authentication"). */
#define BROKER_CREDENTIALS_DIR "credentials"

typedef struct broker_credential {
    int role;            /* WIRE_ROLE_*: what a connection with this key may be */
    char public_key[41]; /* Z85 */
    char secret_key[41];
    char server_key[41]; /* the broker's public key */
} broker_credential;

/* Fresh key pairs for every role in DIR (files 0600 in a 0700 directory), replacing what is there:
 * written complete elsewhere, then renamed into place. */
int broker_credentials_create(const char *dir, rlhf_error *err);
/* The key pair of ROLE (WIRE_ROLE_OBSERVER: control.key) and the broker's public key from DIR. */
int broker_credential_load(broker_credential *c, const char *dir, int role, rlhf_error *err);
void broker_credential_clear(broker_credential *c); /* wipes the secret */
/* `rlhf keygen`: a fresh CURVE key pair in PATH ("public=Z85\nsecret=Z85\n", mode 0600; never replaces a
 * file: PATH must not exist) and its public line alone in PATH.pub (mode 0644, for other hosts).
 * public_key (may be NULL) receives the public key; the secret is wiped from memory. */
int broker_keygen(const char *path, char public_key[41], rlhf_error *err);
/* The key pair of a peer on another host from files: KEY_FILE (public= and secret= lines, e.g. from
 * `rlhf keygen`) and the broker's public key from the public= line of SERVER_KEY_FILE. */
int broker_credential_load_files(broker_credential *c, int role, const char *key_file, const char *server_key_file,
                                 rlhf_error *err);
/* What a peer on another host needs to join as ROLE (WIRE_ROLE_GENERATOR or _UPDATER): a new directory
 * OUT (0700) with that role's key pair and the broker's public key only. */
int broker_credentials_export(const char *dir, int role, const char *out, rlhf_error *err);

/* ---------------------------------------------------------------- client API */

typedef struct broker_client broker_client;

/* Connects and handshakes (HELLO -> WELCOME) within timeout_ms. No broker in time: RLHF_ETIMEOUT naming
 * the endpoint; a broker speaking another protocol version: RLHF_EPROTO naming both versions.
 * A GENERATOR client also makes its process keep freed heap for reuse (mallopt, process-wide; the
 * broker does the same): each weights version then reuses the previous one's pages instead of
 * page-faulting ~10k fresh ones per 40 MB (docs/BROKER.md, "Weights fan-out"). */
int broker_client_connect(broker_client **out, const char *endpoint, int role, const char *peer_id, int timeout_ms,
                          rlhf_error *err);
/* The same with the key pair of ROLE from the credentials directory CREDENTIALS (NULL: none, for a broker
 * started with --insecure). A broker that refuses the key never answers (RLHF_ETIMEOUT); one that refuses
 * the role (HELLO role != the key's role) answers ERROR wrong_role: RLHF_EPROTO. */
int broker_client_connect_with(broker_client **out, const char *endpoint, int role, const char *peer_id,
                               const char *credentials, int timeout_ms, rlhf_error *err);
/* The same with a credential already loaded (broker_credential_load_files; copied, the caller may clear it). */
int broker_client_connect_cred(broker_client **out, const char *endpoint, int role, const char *peer_id,
                               const broker_credential *cred, int timeout_ms, rlhf_error *err);
/* Flushes queued sends (up to 2 s) and closes. */
void broker_client_close(broker_client **c);
const wire_welcome *broker_client_welcome(const broker_client *c);
/* How many of this client's messages the broker rejected (ERROR replies to pushes, weights, stats:
 * future_version, weights_not_newer, bad_crc, ...) and the last one's reason. These do not fail the
 * call that happens to receive them; a protocol version mismatch or no_hello/no_dataset does. */
uint64_t broker_client_rejections(const broker_client *c, rlhf_error *last);
/* 1 once the broker said CONTROL stop (every blocking call then returns RLHF_ESTATE). */
int broker_client_stopped(const broker_client *c);
/* The reason the broker gave with its CONTROL stop ("" before one). */
const char *broker_client_stop_reason(const broker_client *c);
/* Free-form state string shown in the broker's per-peer report ("generating", "training"). */
void broker_client_set_state(broker_client *c, const char *state);

/* generator side */
/* Asks for up to n prompts; blocks until a batch arrives (the broker withholds it while its queue is
 * full: that is the backpressure) or timeout_ms passes (RLHF_ETIMEOUT). A batch may hold fewer than n. */
int broker_client_request_prompts(broker_client *c, uint32_t n, wire_prompt_batch *out, int timeout_ms,
                                  rlhf_error *err);
/* on = 1: broker_client_request_prompts also returns RLHF_ETIMEOUT as soon as a new weights version
 * arrives, so the caller can take (acknowledge) it — a broker with max_generation_lag holds the request
 * until then. Off by default. */
void broker_client_wake_on_weights(broker_client *c, int on);
int broker_client_push_group(broker_client *c, const wire_rollout_group *g, rlhf_error *err);
/* Newest weights received and not yet returned: 1 and fills *out (free with wire_weights_free), or 0
 * when none arrived within timeout_ms (0 = just check). Verified (CRC, tensor table) before returning.
 * A version that came through a weights file (WEIGHTS_SHM) is in a buffer the client keeps for the next
 * one: out->data is valid until the next poll on this client (apply or copy it before). */
int broker_client_poll_weights(broker_client *c, wire_weights *out, int timeout_ms, rlhf_error *err);
/* Same, but the blob is copied into the caller's buffer (e.g. its parameter memory, reused across
 * versions: no allocation, no page faults); out->data = dst, out->owned_data = NULL. A version larger
 * than dst_cap is an error (the version stays pending). */
int broker_client_poll_weights_into(broker_client *c, wire_weights *out, void *dst, size_t dst_cap, int timeout_ms,
                                    rlhf_error *err);

/* Weights versions this client took through a shared-memory file (WEIGHTS_SHM: a broker on the same host),
 * and in *failed how many such files it could not use (missing, unmappable, a chunk CRC wrong; the broker
 * then sends it the bytes over ZeroMQ) with the last failure in *last_failure (either may be NULL). */
uint64_t broker_client_weights_shm(const broker_client *c, uint64_t *failed, rlhf_error *last_failure);

/* updater side */
int broker_client_grant_credit(broker_client *c, uint32_t n, rlhf_error *err);
/* Next delivered group: 1 and fills *out (wire_rollout_group_free), or 0 after timeout_ms. */
int broker_client_recv_group(broker_client *c, wire_rollout_group *out, int timeout_ms, rlhf_error *err);
/* Copies the blob into the client's reused send buffer (ZeroMQ sends the chunks from there without
 * further copies) and returns; w->data may be changed right after. */
int broker_client_publish_weights(broker_client *c, const wire_weights *w, rlhf_error *err);
int broker_client_send_prompt_stats(broker_client *c, const wire_prompt_stats *st, rlhf_error *err);

/* anyone */
int broker_client_control(broker_client *c, int command, const char *reason, rlhf_error *err);
/* Counters snapshot from the broker (new reference in *out). */
int broker_client_get_stats(broker_client *c, json_t **out, int timeout_ms, rlhf_error *err);

/* ---------------------------------------------------------------- replay log */

/* Where a record starts: segment number (0 = PATH, i = PATH.i) and byte offset in it. */
typedef struct replay_pos {
    uint32_t segment;
    uint64_t offset;
} replay_pos;

typedef struct replay_writer replay_writer;
typedef struct replay_writer_opts {
    int fsync_policy;      /* broker_fsync */
    uint32_t fsync_every;  /* BROKER_FSYNC_EVERY_N */
    uint64_t rotate_bytes; /* 0 = never rotate */
} replay_writer_opts;

/* Opens PATH's newest segment for append (creating PATH). A torn last record is cut off; its
 * position and size are reported through *torn_pos / *torn_bytes (may be NULL; bytes 0 = none).
 * A damaged record there (bad marker, length or CRC that is not a torn tail): the segment is copied to
 * SEGMENT.damaged-<UTC time>, nothing is changed, RLHF_ECORRUPT names the offset, the copy and the
 * remedy (replay_log_repair, `rlhf run --resume RUN_DIR --repair`). */
int replay_writer_open(replay_writer **out, const char *path, const replay_writer_opts *opts, replay_pos *torn_pos,
                       uint64_t *torn_bytes, rlhf_error *err);
/* Appends one message (frames = header, metadata, payloads) as a record. */
int replay_writer_append(replay_writer *w, const wire_frame *frames, size_t n, replay_pos *pos, rlhf_error *err);
int replay_writer_append_group(replay_writer *w, const wire_rollout_group *g, replay_pos *pos, rlhf_error *err);
int replay_writer_sync(replay_writer *w, rlhf_error *err);
uint64_t replay_writer_records(const replay_writer *w);
/* fsync + close. */
int replay_writer_close(replay_writer **w, rlhf_error *err);

/* Rewrites every segment of PATH holding damage (after copying it to SEGMENT.damaged-<UTC time>) with
 * all its valid records in order, atomically (temp + fsync + rename); a torn tail goes too. Offsets of
 * the records after a damaged stretch change. */
typedef struct replay_repair_report {
    uint64_t records;           /* valid records in the whole log (all kept) */
    uint32_t segments_repaired; /* 0: nothing was damaged, nothing written */
    uint64_t damaged_stretches; /* unreadable byte ranges dropped (each one or more records) */
    char quarantine[4400];      /* the last copy made */
} replay_repair_report;
int replay_log_repair(const char *path, replay_repair_report *rep, rlhf_error *err);

typedef struct replay_reader replay_reader;
/* A damaged stretch of a segment: where it starts, how many bytes up to the next valid record. */
typedef struct replay_damage {
    replay_pos pos;
    uint64_t bytes;
} replay_damage;
/* A file that is not a replay log: RLHF_ECORRUPT naming the file and offset. */
int replay_reader_open(replay_reader **out, const char *path, rlhf_error *err);
/* 1: next record decoded into *g (wire_rollout_group_free) with its position; 0: end of log;
 * < 0: a damaged record (bad marker, length or CRC; error names file and offset and where the next
 * valid record starts), unless skip_corrupt is on. A torn last record of the newest segment is
 * skipped and remembered (replay_reader_torn). */
int replay_reader_next(replay_reader *r, wire_rollout_group *g, replay_pos *pos, rlhf_error *err);
/* on: next() skips damaged stretches (resyncing on the next valid record) and lists them. */
void replay_reader_skip_corrupt(replay_reader *r, int on);
/* Damaged stretches skipped so far, in log order (the list lives as long as the reader). */
size_t replay_reader_damage(const replay_reader *r, const replay_damage **list);
/* Continue from a position previously returned by next (e.g. from a checkpoint). */
int replay_reader_seek(replay_reader *r, replay_pos pos, rlhf_error *err);
/* Number of torn tails skipped so far; the last one's position and size. */
int replay_reader_torn(const replay_reader *r, replay_pos *pos, uint64_t *bytes);
void replay_reader_close(replay_reader **r);

#ifdef __cplusplus
}
#endif
#endif
