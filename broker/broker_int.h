/* broker/broker_int.h — broker internals shared by the broker sources (not installed). */
#ifndef RLHF_BROKER_INT_H
#define RLHF_BROKER_INT_H

#include "broker/broker.h"
#include "prompts/prompts.h"

#define BROKER_MAX_ROUTING_ID 256

/* Keeps freed memory in the process for reuse (mallopt, process-wide). ZeroMQ mallocs every received
 * frame larger than its 8 KB read batch; with glibc's defaults a 4 MiB weights chunk is mmap'ed or its
 * heap is trimmed when freed, so every 40 MB version page-faults ~10k fresh pages in each receiving
 * process (the fan-out benchmark: ~35% of its time). Called by the broker and by generator clients,
 * the processes that receive weights. */
void broker_keep_freed_memory(void);

/* ---------------------------------------------------------------- authentication (broker/auth.c) */

/* The mechanism for an endpoint: CURVE over tcp:// (encrypted, for any network), PLAIN otherwise
 * (ipc:// in a directory of mode 0700: one host, no encryption cost). */
int broker_auth_is_curve(const char *endpoint);
/* Sets a client socket's security options from a credential, for the endpoint it will connect to. */
int broker_credential_apply(void *sock, const broker_credential *c, const char *endpoint);

typedef struct broker_auth {
    int on;                    /* 0: --insecure, no authentication */
    int curve;                 /* 1: CURVE (tcp://); 0: PLAIN (ipc://, a 0700 directory) */
    char client_secret[4][41]; /* PLAIN: the roles' passwords (their secret keys) */
    void *zap;                 /* REP socket on inproc://zeromq.zap.01 */
    char server_public[41];
    char client_public[4][41]; /* by wire_role */
    uint64_t allowed, denied;  /* handshakes */
    /* keys of other hosts (broker.authorized_keys, CURVE only); points into the broker's config */
    const broker_authorized_key *authorized;
    uint32_t n_authorized;
    unsigned char authorized_seen[BROKER_MAX_AUTHORIZED_KEYS]; /* its first handshake was logged */
    /* handshakes that never reach the ZAP handler (a peer without CURVE, another mechanism, not ZMTP):
     * seen through a monitor of the router */
    void *monitor; /* PAIR on the router's monitor endpoint */
    uint64_t failed;
} broker_auth;

/* Loads DIR's keys, binds the ZAP handler in zctx and makes `router` a CURVE server (before it binds). */
int broker_auth_open(broker_auth *a, void *zctx, void *router, const char *dir, const char *endpoint, rlhf_error *err);
void broker_auth_close(broker_auth *a);
/* Admits KEYS too (CURVE only: over PLAIN they are an error naming broker.authorized_keys). */
int broker_auth_allow(broker_auth *a, const broker_authorized_key *keys, uint32_t n, rlhf_error *err);
/* A bind of ENDPOINT without authentication (--insecure) is refused on a non-loopback address unless
 * allow (broker.insecure) says so: one line naming broker.endpoint and both ways out. */
int broker_auth_check_insecure_bind(const char *endpoint, int allow, rlhf_error *err);
/* Answers the ZAP requests waiting (never blocks). */
void broker_auth_serve(broker_auth *a);
/* The role (WIRE_ROLE_*) bound to the connection a received zmq_msg_t came from; 0 when unauthenticated. */
int broker_auth_role(const broker_auth *a, void *zmsg);

/* ---------------------------------------------------------------- weights through shared memory
 * (broker/weights_shm.c; docs/BROKER.md "Weights through shared memory")
 *
 * The broker writes each version a same-host generator needs once into a file
 * DIR/rlhf-w.PID.START.VERSION (PID and START = the broker process's pid and start time in clock ticks,
 * so a file whose writer is gone, even if its pid was reused, is recognised as stale) and sends those
 * generators WEIGHTS_SHM naming it; the file is 0600, written as NAME.tmp and renamed into place. */
#define BROKER_SHM_PREFIX "rlhf-w."
/* Generators on other hosts (docs/BROKER.md "Generators on other hosts"): the first of a host to get a
 * version as bytes writes it to DIR/rlhf-h.PID.VERSION there (PID: that generator's); the broker sends
 * the others of that host WEIGHTS_SHM naming it once the writer acknowledged the version, so the bytes
 * cross the network once per host and version. */
#define BROKER_HOST_FILE_PREFIX "rlhf-h."

/* This host as HELLO.host: the kernel's boot id and the hostname ("" when neither is readable), or the
 * environment's RLHF_HOST_ID when set (containers that share a kernel but not DIR; tests that play
 * several hosts on one). Two processes with the same id share a kernel; whether they share DIR is what
 * the map then proves. */
void broker_host_id(char *buf, size_t cap);

typedef struct broker_shm_file {
    uint64_t version;
    char path[WIRE_SHM_PATH_MAX];
} broker_shm_file;

typedef struct broker_shm {
    int on;                    /* broker.weights_shm = auto and this host's id is known */
    char host[WIRE_HOST_MAX];
    char tag[64];              /* "PID.START" of this broker process */
    broker_shm_file *files;    /* written and not yet unlinked */
    size_t n_files, cap_files;
    /* the newest version: its table and chunk CRCs (from its WEIGHTS message), and, once written, the
     * WEIGHTS_SHM message naming its file */
    wire_weights_shm cur;
    int has_cur;
    int cur_written;           /* 1: file written, msg encoded; -1: writing failed (bytes for everyone) */
    wire_out msg;
    double received_at;        /* wall clock when the newest version was accepted */
    double write_ms;           /* how long writing the last file took */
    uint64_t sends, fallbacks, write_errors, bytes_written, unlinked, swept;
    uint64_t host_file_sends, host_file_fallbacks; /* generators on other hosts (BROKER_HOST_FILE_PREFIX) */
} broker_shm;

struct broker;
struct wire_msg;
/* At broker_create: sweeps stale files of dead brokers from the directory (logged). */
void broker_shm_open(struct broker *b);
/* At broker_destroy: unlinks every file this broker wrote. */
void broker_shm_close(struct broker *b);
/* A new newest version was accepted: w (its table; taken over) and the chunk CRCs of m's payloads. */
void broker_shm_new_version(struct broker *b, wire_weights *w, const wire_msg *m);
/* The WEIGHTS_SHM message of the newest version for a same-host generator, writing its file first if
 * that has not been done; NULL when it cannot be (the caller sends the bytes). */
const wire_out *broker_shm_offer(struct broker *b);
/* Unlinks the files no generator may still need: every version but the newest that no live generator
 * was sent through shared memory without acknowledging it yet. */
void broker_shm_gc(struct broker *b);
/* Adds the weights/shm_* counters to a stats object. */
void broker_shm_stats(const struct broker *b, json_t *s);

/* The WEIGHTS_SHM message of the newest version naming `path` (a file on another host); 0 or an error. */
int broker_shm_encode_at(const struct broker *b, const char *path, wire_out *o, rlhf_error *err);
/* Client side: writes `data` to DIR/rlhf-h.PID.VERSION (NAME.tmp, renamed); the path in `path`. */
int broker_host_file_write(const char *dir, uint64_t version, const uint8_t *data, uint64_t n, char *path, size_t cap,
                           rlhf_error *err);
/* Client side: removes the host files whose writer process is gone (this user's); how many. */
int broker_host_files_sweep(const char *dir);

/* Client side: reads x->path into buf (x->w.nbytes bytes) after checking it is a regular file of this
 * user holding exactly x->w.nbytes, then checks every chunk's CRC-32. 0, or a negative code with err and
 * *why ("open", "size", "read", "crc"); buf's content is unspecified after a failure. */
int broker_shm_read_verify(const wire_weights_shm *x, uint8_t *buf, const char **why, rlhf_error *err);
/* A prompt handed to a generator and not answered yet. */
typedef struct broker_lease {
    size_t index;  /* dataset record */
    double since;  /* rlhf_now() when granted */
} broker_lease;

/* One peer, keyed by its peer id (HELLO). A restarted process reuses its record with a new routing id. */
typedef struct broker_peer {
    char id[WIRE_ID_MAX];
    int role;
    int64_t pid;
    uint8_t rid[BROKER_MAX_ROUTING_ID]; /* ZeroMQ routing id of its main socket */
    size_t rid_len;
    int connected;         /* has a routing id we can send to */
    int alive;             /* heard from within heartbeat_timeout_ms */
    double last_seen;      /* rlhf_now() */
    char state[32];        /* from HEARTBEAT */
    uint32_t credit;       /* updater: groups it asked for and has not been sent */
    uint32_t outstanding;  /* generator: prompts granted, groups not yet returned */
    uint64_t sent_version; /* generator: newest weights version sent to it (0 = none) */
    uint64_t acked_version;/* generator: newest version it acknowledged holding */
    int has_sent;          /* sent_version is meaningful */
    int shm_ok;            /* generator on this host that can take weights through a shared-memory file */
    int sent_shm;          /* sent_version went as WEIGHTS_SHM (its file is needed until acknowledged) */
    int host_files;        /* generator on another host that writes the versions it gets as bytes to a file
                              there, and maps its same-host siblings' files (BROKER_HOST_FILE_PREFIX) */
    char host[WIRE_HOST_MAX]; /* HELLO.host ("" when not sent) */
    int has_acked;
    uint64_t groups_in;    /* generator: accepted groups */
    uint64_t groups_out;   /* updater: delivered groups */
    uint64_t restarts;     /* HELLOs after the first */
    broker_lease *leases;  /* generator: prompts granted, not answered (outstanding == n_leases) */
    size_t n_leases, cap_leases;
} broker_peer;

/* A prompt request the broker is holding back (queue full, or paused). */
typedef struct parked_request {
    int peer; /* index into peers */
    uint64_t request_id;
    uint32_t n;
    double since;
} parked_request;

/* An accepted group waiting for updater credit: its frames as received (zmq_msg_t). */
typedef struct queued_group {
    void *msgs; /* zmq_msg_t[n] */
    size_t n;
    uint64_t policy_version;
    uint64_t bytes;
} queued_group;

typedef struct broker_counters {
    uint64_t msgs_in, bytes_in, bytes_out;
    uint64_t groups_received, groups_accepted, groups_delivered;
    uint64_t dropped_stale_accept, dropped_stale_queued, dropped_stale_delivery;
    uint64_t rejected[WIRE_R_END];
    uint64_t rejected_future_version, rejected_no_hello, rejected_unexpected, rejected_wrong_role;
    uint64_t rejected_queue_overflow, rejected_old_weights, rejected_prompt_stats;
    uint64_t prompt_requests, prompts_served, prompt_requests_deferred, prompt_batches_expired;
    uint64_t prompt_requests_lagging; /* serve attempts held back by max_generation_lag */
    uint64_t weights_received, weights_sends, weights_send_skipped;
    uint64_t prompt_stats_received, heartbeats;
    uint64_t queue_max_depth, queue_max_bytes;
    uint64_t replay_records, replay_errors;
    uint64_t rejected_not_authorized, rejected_no_lease, rejected_bad_token, rejected_weights_version;
    uint64_t rejected_too_many_peers, rejected_prompt_mismatch, leases_expired, peers_forgotten;
    uint64_t prompts_released, prompts_reissued; /* leases of dead/expired holders; served again to others */
} broker_counters;

struct broker {
    broker_config cfg;
    char run_dir[4096];
    char replay_file[8300];
    void *zctx;
    void *router;
    prompt_dataset *ds;
    prompt_selector *sel;
    replay_writer *log;

    broker_peer *peers;
    size_t n_peers, cap_peers;
    size_t rr_updater; /* round-robin cursor */

    parked_request *parked;
    size_t n_parked, cap_parked;

    /* dataset indices of prompts whose holder died or whose lease expired unanswered: served again,
     * before the selector picks new ones (a generator that leaves takes no prompt with it) */
    size_t *reissue;
    size_t n_reissue, cap_reissue;

    queued_group *queue; /* ring */
    size_t q_head, q_len, q_cap;
    uint64_t q_bytes;

    broker_shm shm; /* weights to same-host generators through shared memory */

    /* newest weights: frames as received, forwarded with zmq_msg_copy (no byte copies) */
    void *w_msgs;
    size_t w_n;
    int has_weights;
    uint64_t newest_version;

    int paused;
    int stop_requested;
    rlhf_error log_failed; /* the first replay-log append that failed: the broker stops with it */
    double started;
    broker_counters ct;
    broker_auth auth;
    uint64_t refusals_logged_seen; /* refusals seen by rate_log */
    char stop_reason[256];         /* "CONTROL stop from ID: REASON", told to every peer */
    int cur_role;                  /* the credential role of the message being handled (0: --insecure) */

    /* Selector checkpoint (RUN_DIR/selector_state.json): the selector changes with every batch served
     * and every PROMPT_STATS; it is written when it changed and a second has passed, and at shutdown. */
    char selector_file[4200];
    uint64_t selector_changes, selector_saved_changes;
    double selector_saved_at;
    uint64_t selector_saves, selector_save_errors;
    int selector_restored; /* 1 if the state was loaded from selector_file at start */
};

#endif
