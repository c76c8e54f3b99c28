/* broker/broker.c — the broker process: one ROUTER socket, a single-threaded poll loop.
 *
 * Why one ROUTER: every peer (generator, updater, observer) connects a DEALER to one endpoint, so the
 * broker knows each peer's routing id and can address it directly: weights go only to generators that
 * have consumed the previous version (at most one version in flight per generator: bounded memory),
 * groups only to updaters that hold credit, and a prompt request can be held back (backpressure)
 * without blocking anyone else.
 *
 * Longer than the project's ~1,000 lines on purpose: the poll loop, the message handlers (dispatched
 * by the table `handlers`: type, allowed role, HELLO needed; the role is the connection's credential,
 * broker/auth.c) and the peer/lease/queue/parked-request state they share are one unit whose
 * invariants are read together; splitting it would put those invariants in two places. What does not
 * touch that state lives beside it: the "broker" config section (broker/config.c), credentials
 * (broker/auth.c), the replay log (broker/replay_log.c). */
#include "broker/broker_int.h"

#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

static void blog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void blog(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[broker %.3f] %s\n", rlhf_wall_time(), buf);
}

/* ---------------------------------------------------------------- create / destroy */

void broker_keep_freed_memory(void) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  /* frames up to 32 MiB come from the heap (glibc's cap) ... */
    mallopt(M_TRIM_THRESHOLD, 512 << 20); /* ... and freed heap stays for the next version's frames */
}

int broker_create(broker **out, const broker_config *cfg, const char *run_dir, rlhf_error *err) {
    *out = NULL;
    broker *b = calloc(1, sizeof *b);
    if (!b) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    b->cfg = *cfg;
    b->cfg.selector = cfg->selector ? json_incref(cfg->selector) : NULL;
    snprintf(b->run_dir, sizeof b->run_dir, "%s", run_dir ? run_dir : ".");
    b->newest_version = cfg->initial_version;
    b->started = rlhf_now();
    int rc;
    /* Inputs first: a bad dataset, selector or selector state fails before the broker binds its endpoint
     * or creates a replay log, so a rejected config leaves nothing behind. */
    if (cfg->dataset[0]) {
        rc = prompt_dataset_load(&b->ds, cfg->dataset, err);
        if (rc) goto fail;
        rc = prompt_selector_create(&b->sel, b->ds, cfg->selector, cfg->seed, err);
        if (rc && err && !strncmp(err->where, "selector", 8)) { /* name it as the run config does */
            char where[sizeof err->where];
            snprintf(where, sizeof where, "broker.%.240s", err->where);
            snprintf(err->where, sizeof err->where, "%s", where);
        }
        if (rc) goto fail;
        blog("dataset %s: %zu prompts", cfg->dataset, prompt_dataset_size(b->ds));
        /* A run directory that already has a selector state is a resumed run: continue its statistics.
         * A state that does not fit this dataset/policy is an error naming the file, not a silent reset. */
        snprintf(b->selector_file, sizeof b->selector_file, "%s/%s", b->run_dir, BROKER_SELECTOR_STATE);
        if (access(b->selector_file, F_OK) == 0) {
            rc = prompt_selector_load(b->sel, b->selector_file, err);
            if (rc) goto fail;
            b->selector_restored = 1;
            blog("selector state restored from %s", b->selector_file);
        }
    }
    broker_keep_freed_memory();
    b->zctx = zmq_ctx_new();
    /* Two I/O threads: a weights fan-out to several generators is sent on several connections at once. */
    zmq_ctx_set(b->zctx, ZMQ_IO_THREADS, 2);
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    if (!b->router) {
        rc = RLHF_FAIL(err, RLHF_ESYS, "zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int one = 1, hwm = 4096, linger = 1000;
    zmq_setsockopt(b->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(b->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(b->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(b->router, ZMQ_LINGER, &linger, sizeof linger);
    if (cfg->insecure) {
        rc = broker_auth_check_insecure_bind(cfg->endpoint, cfg->insecure_remote, err);
        if (rc) goto fail;
        blog("WARNING: --insecure: no authentication; any process that reaches %s can stop this run, publish "
             "weights or push groups", cfg->endpoint);
    } else {
        char dir[8300];
        if (cfg->credentials[0]) snprintf(dir, sizeof dir, "%s", cfg->credentials);
        else snprintf(dir, sizeof dir, "%s/%s", b->run_dir, BROKER_CREDENTIALS_DIR);
        rc = broker_auth_open(&b->auth, b->zctx, b->router, dir, cfg->endpoint, err);
        if (rc && err) {
            /* name the way out, once: the file is already in err->where */
            size_t l = strlen(err->msg);
            snprintf(err->msg + l, sizeof err->msg - l, "%s",
                     " (runs started by `rlhf run` have credentials; `rlhf broker --init-credentials` creates them, "
                     "--insecure runs without on a trusted host)");
        }
        if (!rc) rc = broker_auth_allow(&b->auth, b->cfg.authorized, b->cfg.n_authorized, err);
        if (rc) goto fail;
    }
    if (zmq_bind(b->router, cfg->endpoint) != 0) {
        /* a port in use may free up (a restart may help); any other refusal is the value's fault */
        int e = errno;
        rc = rlhf_error_set(err, e == EADDRINUSE ? RLHF_EIO : RLHF_EINVAL, "broker.endpoint", "cannot bind %s: %s",
                            cfg->endpoint, zmq_strerror(e));
        goto fail;
    }
    if (cfg->replay_path[0]) {
        rc = rlhf_mkdirs(b->run_dir, err);
        if (rc) goto fail;
        if (cfg->replay_path[0] == '/')
            snprintf(b->replay_file, sizeof b->replay_file, "%s", cfg->replay_path);
        else
            snprintf(b->replay_file, sizeof b->replay_file, "%s/%s", b->run_dir, cfg->replay_path);
        replay_writer_opts o = {cfg->replay_fsync, cfg->replay_fsync_every, cfg->replay_rotate_bytes};
        replay_pos torn;
        uint64_t torn_bytes = 0;
        rc = replay_writer_open(&b->log, b->replay_file, &o, &torn, &torn_bytes, err);
        if (rc) goto fail;
        if (torn_bytes)
            blog("replay log %s: cut a torn last record (%llu bytes at segment %u offset %llu)", b->replay_file,
                 (unsigned long long)torn_bytes, torn.segment, (unsigned long long)torn.offset);
        blog("replay log %s: %llu records recovered", b->replay_file,
             (unsigned long long)replay_writer_records(b->log));
    }
    broker_shm_open(b); /* removes what dead brokers left in weights_shm_dir */
    blog("listening on %s (max_staleness=%u queue_capacity=%u protocol=%d, %s)", cfg->endpoint, cfg->max_staleness,
         cfg->queue_capacity, WIRE_PROTOCOL_VERSION, !b->auth.on ? "NO authentication" : b->auth.curve ? "CURVE authentication" : "PLAIN authentication, 0700 directory");
    *out = b;
    return 0;
fail:
    broker_destroy(&b);
    return rc;
}

static void close_msgs(void *msgs, size_t n) {
    zmq_msg_t *m = msgs;
    for (size_t i = 0; i < n; i++) zmq_msg_close(&m[i]);
    free(msgs);
}

void broker_destroy(broker **bp) {
    if (!bp || !*bp) return;
    broker *b = *bp;
    if (b->log) {
        rlhf_error e;
        rlhf_error_clear(&e);
        if (replay_writer_close(&b->log, &e)) rlhf_error_print("broker", &e);
    }
    for (size_t i = 0; i < b->q_len; i++) {
        queued_group *g = &b->queue[(b->q_head + i) % b->q_cap];
        close_msgs(g->msgs, g->n);
    }
    free(b->queue);
    if (b->has_weights) close_msgs(b->w_msgs, b->w_n);
    broker_shm_close(b);
    for (size_t i = 0; i < b->n_peers; i++) free(b->peers[i].leases);
    free(b->peers);
    free(b->parked);
    free(b->reissue);
    prompt_selector_destroy(&b->sel);
    prompt_dataset_destroy(&b->ds);
    if (b->router) zmq_close(b->router);
    broker_auth_close(&b->auth);
    if (b->zctx) zmq_ctx_term(b->zctx);
    broker_config_free(&b->cfg);
    free(b);
    *bp = NULL;
}

/* ---------------------------------------------------------------- sending */

/* Sends the routing-id frame then the message; never blocks. Returns 0, or -EAGAIN (peer's pipe full),
 * -EHOSTUNREACH (gone). On failure nothing was sent. */
static int send_rid(broker *b, const broker_peer *p) {
    if (zmq_send(b->router, p->rid, p->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return -errno;
    return 0;
}

static int send_out(broker *b, broker_peer *p, const wire_out *o) {
    int rc = send_rid(b, p);
    if (rc) {
        if (rc == -EHOSTUNREACH) p->connected = 0;
        return rc;
    }
    size_t nf = wire_out_nframes(o);
    for (size_t i = 0; i < nf; i++) {
        wire_frame f = wire_out_frame(o, i);
        zmq_send(b->router, f.data, f.len, i + 1 < nf ? ZMQ_SNDMORE : 0);
        b->ct.bytes_out += f.len;
    }
    return 0;
}

/* Sends frames; copy=1 keeps the originals (zero-copy reference), copy=0 moves them out. */
static int send_msgs(broker *b, broker_peer *p, void *msgs, size_t n, int copy) {
    int rc = send_rid(b, p);
    if (rc) {
        if (rc == -EHOSTUNREACH) p->connected = 0;
        return rc;
    }
    zmq_msg_t *m = msgs;
    for (size_t i = 0; i < n; i++) {
        b->ct.bytes_out += zmq_msg_size(&m[i]);
        if (copy) {
            zmq_msg_t t;
            zmq_msg_init(&t);
            zmq_msg_copy(&t, &m[i]);
            if (zmq_msg_send(&t, b->router, i + 1 < n ? ZMQ_SNDMORE : 0) < 0) zmq_msg_close(&t);
        } else if (zmq_msg_send(&m[i], b->router, i + 1 < n ? ZMQ_SNDMORE : 0) < 0) {
            zmq_msg_close(&m[i]);
        }
    }
    return 0;
}

/* Sends frames given by view (routing id of a peer not yet registered, e.g. an ERROR reply). */
static void reply_raw(broker *b, const wire_frame *rid, const wire_out *o) {
    if (zmq_send(b->router, rid->data, rid->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return;
    size_t nf = wire_out_nframes(o);
    for (size_t i = 0; i < nf; i++) {
        wire_frame f = wire_out_frame(o, i);
        zmq_send(b->router, f.data, f.len, i + 1 < nf ? ZMQ_SNDMORE : 0);
    }
}

static void reply_error(broker *b, const wire_frame *rid, const char *reason, int peer_version, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void reply_error(broker *b, const wire_frame *rid, const char *reason, int peer_version, const char *fmt, ...) {
    wire_error_msg e;
    memset(&e, 0, sizeof e);
    snprintf(e.reason, sizeof e.reason, "%s", reason);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.detail, sizeof e.detail, fmt, ap);
    va_end(ap);
    e.peer_version = peer_version;
    wire_out o;
    if (wire_encode_error(&e, &o, NULL) == 0) {
        reply_raw(b, rid, &o);
        wire_out_free(&o);
    }
}

/* ---------------------------------------------------------------- peers */

static broker_peer *peer_by_rid(broker *b, const wire_frame *rid) {
    for (size_t i = 0; i < b->n_peers; i++) {
        broker_peer *p = &b->peers[i];
        if (p->connected && p->rid_len == rid->len && !memcmp(p->rid, rid->data, rid->len)) return p;
    }
    return NULL;
}

static broker_peer *peer_by_id(broker *b, const char *id) {
    for (size_t i = 0; i < b->n_peers; i++)
        if (!strcmp(b->peers[i].id, id)) return &b->peers[i];
    return NULL;
}

static void unpark_peer(broker *b, size_t idx) {
    size_t j = 0;
    for (size_t i = 0; i < b->n_parked; i++)
        if (b->parked[i].peer != (int)idx) b->parked[j++] = b->parked[i];
    b->n_parked = j;
}

/* Leases [0, k) of p go back to be served to another generator (in grant order). */
static void reissue_leases(broker *b, broker_peer *p, size_t k) {
    if (!k || !b->ds) return;
    if (b->n_reissue + k > b->cap_reissue) {
        size_t cap = b->cap_reissue ? b->cap_reissue : 16;
        while (cap < b->n_reissue + k) cap *= 2;
        size_t *nr = realloc(b->reissue, cap * sizeof *nr);
        if (!nr) return; /* out of memory: the selector serves new prompts instead */
        b->reissue = nr;
        b->cap_reissue = cap;
    }
    for (size_t i = 0; i < k; i++) b->reissue[b->n_reissue++] = p->leases[i].index;
    b->ct.prompts_released += k;
}

/* Serving idx[0, k) failed: they go back to the front of the reissue list. */
static void reissue_put_back(broker *b, const size_t *idx, size_t k) {
    if (!k) return;
    if (b->n_reissue + k > b->cap_reissue) {
        size_t cap = b->cap_reissue ? b->cap_reissue : 16;
        while (cap < b->n_reissue + k) cap *= 2;
        size_t *nr = realloc(b->reissue, cap * sizeof *nr);
        if (!nr) return;
        b->reissue = nr;
        b->cap_reissue = cap;
    }
    memmove(b->reissue + k, b->reissue, b->n_reissue * sizeof *b->reissue);
    memcpy(b->reissue, idx, k * sizeof *idx);
    b->n_reissue += k;
    b->ct.prompts_reissued -= k;
}

/* A peer that went silent or was replaced: its grants and credit no longer hold anything back. */
static void peer_release(broker *b, broker_peer *p) {
    reissue_leases(b, p, p->n_leases);
    p->outstanding = 0;
    p->n_leases = 0;
    p->credit = 0;
    unpark_peer(b, (size_t)(p - b->peers));
}

/* Forgets peers that have been dead longer than `dead_for_s` (their grants and credit were released
 * when they died); the table stays bounded however many ids connect over a run. */
static void forget_dead_peers(broker *b, double dead_for_s) {
    double now = rlhf_now();
    for (size_t i = 0; i < b->n_peers;) {
        broker_peer *p = &b->peers[i];
        if (p->alive || now - p->last_seen < dead_for_s) {
            i++;
            continue;
        }
        size_t last = b->n_peers - 1;
        free(p->leases);
        unpark_peer(b, i);
        if (i != last) {
            b->peers[i] = b->peers[last];
            for (size_t k = 0; k < b->n_parked; k++)
                if (b->parked[k].peer == (int)last) b->parked[k].peer = (int)i;
        }
        b->n_peers--;
        b->ct.peers_forgotten++;
    }
    if (b->rr_updater >= b->n_peers) b->rr_updater = 0;
}

static void touch(broker *b, broker_peer *p) {
    p->last_seen = rlhf_now();
    if (!p->alive) {
        p->alive = 1;
        if (p->role != WIRE_ROLE_OBSERVER) blog("peer %s (%s) is alive", p->id, wire_role_name(p->role));
    }
    (void)b;
}

/* ---------------------------------------------------------------- weights fan-out */

/* A generator on another host (p->host_files), the newest version: 1 when it was sent WEIGHTS_SHM naming
 * the file a sibling on its host wrote (the sibling got the bytes and acknowledged them), -1 when a
 * sibling is taking the bytes now (p waits for its file: the liveness loop offers again), 0 when p gets
 * the bytes itself (and becomes its host's writer of this version). */
static int offer_host_file(broker *b, broker_peer *p, int count_deferred) {
    uint64_t v = b->newest_version;
    broker_peer *writer = NULL;
    int writing = 0;
    for (size_t k = 0; k < b->n_peers && !writer; k++) {
        broker_peer *q = &b->peers[k];
        if (q == p || !q->host_files || !q->connected || !q->alive || strcmp(q->host, p->host) != 0) continue;
        if (!q->has_sent || q->sent_version != v || q->sent_shm) continue; /* not this version's writer */
        if (q->has_acked && q->acked_version >= v) writer = q;
        else writing = 1;
    }
    if (!writer) {
        if (writing && count_deferred) b->ct.weights_send_skipped++;
        return writing ? -1 : 0;
    }
    char path[WIRE_SHM_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s%lld.%llu", b->cfg.weights_shm_dir, BROKER_HOST_FILE_PREFIX,
             (long long)writer->pid, (unsigned long long)v);
    wire_out o;
    rlhf_error e = {0};
    if (broker_shm_encode_at(b, path, &o, &e) != 0) return 0;
    int rc = send_out(b, p, &o);
    wire_out_free(&o);
    if (rc != 0) return -1; /* its pipe is full: the liveness loop offers again */
    p->sent_version = v;
    p->has_sent = 1;
    p->sent_shm = 1;
    b->ct.weights_sends++;
    b->shm.host_file_sends++;
    return 1;
}

/* Sends the newest weights to a generator that holds nothing unacknowledged. */
static void offer_weights(broker *b, broker_peer *p, int count_deferred) {
    if (!b->has_weights || p->role != WIRE_ROLE_GENERATOR || !p->connected) return;
    if (p->has_sent && p->sent_version >= b->newest_version) return;
    if (p->has_sent && (!p->has_acked || p->acked_version < p->sent_version)) {
        if (count_deferred) b->ct.weights_send_skipped++; /* it gets the newest once it acknowledges */
        return;
    }
    /* a generator on another host: the file a sibling there wrote, or the bytes (then it writes one) */
    if (p->host_files && b->shm.has_cur && b->shm.cur.w.version == b->newest_version) {
        int r = offer_host_file(b, p, count_deferred);
        if (r != 0) return; /* sent, or waiting for its host's writer */
    }
    /* a generator on this host gets the file's name, the others (and any whose map failed) the bytes */
    const wire_out *shm = p->shm_ok ? broker_shm_offer(b) : NULL;
    int rc = shm ? send_out(b, p, shm) : send_msgs(b, p, b->w_msgs, b->w_n, 1);
    if (rc == 0) {
        p->sent_version = b->newest_version;
        p->has_sent = 1;
        p->sent_shm = shm != NULL;
        b->ct.weights_sends++;
        if (shm) b->shm.sends++;
    }
}

/* ---------------------------------------------------------------- queue / delivery */

static uint64_t lag_of(const broker *b, uint64_t v) { return b->newest_version > v ? b->newest_version - v : 0; }

static void queue_pop(broker *b) {
    queued_group *g = &b->queue[b->q_head];
    b->q_bytes -= g->bytes;
    b->q_head = (b->q_head + 1) % b->q_cap;
    b->q_len--;
}

/* New weights may have made queued groups too stale: drop them now so they stop holding capacity. */
static void purge_stale(broker *b) {
    size_t keep = 0, n = b->q_len;
    queued_group *tmp = malloc((n + 1) * sizeof *tmp);
    if (!tmp) return;
    for (size_t i = 0; i < n; i++) {
        queued_group g = b->queue[(b->q_head + i) % b->q_cap];
        if (lag_of(b, g.policy_version) > b->cfg.max_staleness) {
            close_msgs(g.msgs, g.n);
            b->q_bytes -= g.bytes;
            b->ct.dropped_stale_queued++;
        } else {
            tmp[keep++] = g;
        }
    }
    for (size_t i = 0; i < keep; i++) b->queue[i] = tmp[i];
    b->q_head = 0;
    b->q_len = keep;
    free(tmp);
}

static broker_peer *next_updater(broker *b, const int *skip) {
    for (size_t k = 0; k < b->n_peers; k++) {
        size_t i = (b->rr_updater + k) % b->n_peers;
        broker_peer *p = &b->peers[i];
        if (p->role == WIRE_ROLE_UPDATER && p->connected && p->alive && p->credit > 0 && !skip[i]) {
            b->rr_updater = i + 1;
            return p;
        }
    }
    return NULL;
}

static void serve_parked(broker *b);

static void deliver(broker *b) {
    int *skip = calloc(b->n_peers + 1, sizeof *skip);
    if (!skip) return;
    while (b->q_len) {
        queued_group *g = &b->queue[b->q_head];
        if (lag_of(b, g->policy_version) > b->cfg.max_staleness) {
            close_msgs(g->msgs, g->n);
            queue_pop(b);
            b->ct.dropped_stale_delivery++;
            continue;
        }
        broker_peer *u = next_updater(b, skip);
        if (!u) break;
        int rc = send_msgs(b, u, g->msgs, g->n, 0);
        if (rc) {
            skip[u - b->peers] = 1;
            if (rc == -EHOSTUNREACH) peer_release(b, u);
            continue;
        }
        free(g->msgs);
        queue_pop(b);
        u->credit--;
        u->groups_out++;
        b->ct.groups_delivered++;
    }
    free(skip);
    serve_parked(b);
}

/* ---------------------------------------------------------------- prompts */

static uint32_t grantable(const broker *b) {
    if (b->paused || b->stop_requested || !b->sel) return 0;
    uint64_t used = b->q_len;
    for (size_t i = 0; i < b->n_peers; i++) used += b->peers[i].outstanding;
    return used >= b->cfg.queue_capacity ? 0 : (uint32_t)(b->cfg.queue_capacity - used);
}

/* 1 if this generator's weights are too far behind the newest version to be given prompts now: what it
 * would generate would be that much staler by the time it is trained on. It gets them once it
 * acknowledges a fresh enough version (WEIGHTS_ACK serves parked requests). */
static int generator_lagging(const broker *b, const broker_peer *p) {
    if (b->cfg.max_generation_lag < 0 || !b->has_weights) return 0;
    uint64_t held = p->has_acked ? p->acked_version : 0;
    return lag_of(b, held) > (uint64_t)b->cfg.max_generation_lag;
}

/* Leases: each prompt handed to a generator is remembered until its group arrives, the lease times out
 * (lease_timeout_ms) or the generator is gone; a group for any other prompt is refused (no_lease), so a
 * peer cannot push made-up groups into the queue, the replay log and training. */
static void lease_add(broker_peer *p, size_t index, double now) {
    if (p->n_leases == p->cap_leases) {
        size_t cap = p->cap_leases ? p->cap_leases * 2 : 16;
        broker_lease *nl = realloc(p->leases, cap * sizeof *nl);
        if (!nl) return; /* its group will be refused; the prompt is not lost from the dataset */
        p->leases = nl;
        p->cap_leases = cap;
    }
    p->leases[p->n_leases++] = (broker_lease){index, now};
}

/* p's oldest lease of the prompt with id `prompt_id` (its index in p->leases), or -1. */
static long lease_find(const broker *b, const broker_peer *p, const char *prompt_id) {
    for (size_t i = 0; b->ds && i < p->n_leases; i++) {
        const prompt_record *r = prompt_dataset_get(b->ds, p->leases[i].index);
        if (r && r->id && !strcmp(r->id, prompt_id)) return (long)i;
    }
    return -1;
}

static void lease_remove(broker_peer *p, size_t i) {
    memmove(p->leases + i, p->leases + i + 1, (p->n_leases - i - 1) * sizeof *p->leases);
    p->n_leases--;
    p->outstanding = (uint32_t)p->n_leases;
}

/* The group's prompt_text and prompt_record (when sent) must be the dataset's: the updater scores with
 * them (an answer changed on the way would be rewarded). NULL when they are, else the field's name. */
static const char *prompt_differs(const broker *b, const broker_peer *p, size_t lease, const wire_msg *m) {
    const prompt_record *r = prompt_dataset_get(b->ds, p->leases[lease].index);
    const char *text = json_string_value(json_object_get(m->meta, "prompt_text"));
    if (!text || !r->prompt || strcmp(text, r->prompt) != 0) return "prompt_text";
    const json_t *rec = json_object_get(m->meta, "prompt_record");
    if (rec && !json_is_null(rec) && !(r->record && json_equal((json_t *)rec, r->record))) return "prompt_record";
    return NULL;
}

/* Releases leases older than lease_timeout_ms (oldest first: they are in grant order). */
static void leases_expire(broker *b, broker_peer *p, double now) {
    double limit = b->cfg.lease_timeout_ms / 1000.0;
    size_t k = 0;
    while (k < p->n_leases && now - p->leases[k].since > limit) k++;
    if (!k) return;
    reissue_leases(b, p, k);
    memmove(p->leases, p->leases + k, (p->n_leases - k) * sizeof *p->leases);
    p->n_leases -= k;
    p->outstanding = (uint32_t)p->n_leases;
    b->ct.leases_expired += k;
}

/* The first token id of a little-endian int32 payload outside [0, vocab): 1 and its position/value. */
static int token_out_of_vocab(const wire_frame *f, uint32_t vocab, size_t *at, int32_t *value) {
    const uint8_t *d = f->data;
    for (size_t i = 0; i + 4 <= f->len; i += 4) {
        int32_t t = (int32_t)((uint32_t)d[i] | (uint32_t)d[i + 1] << 8 | (uint32_t)d[i + 2] << 16 | (uint32_t)d[i + 3] << 24);
        if (t < 0 || (uint32_t)t >= vocab) {
            *at = i / 4;
            *value = t;
            return 1;
        }
    }
    return 0;
}

/* Serves up to n prompts; returns 1 if served, 0 if it must wait. */
static int serve_prompts(broker *b, broker_peer *p, uint64_t request_id, uint32_t n) {
    uint32_t g = grantable(b);
    if (g == 0) return 0;
    if (generator_lagging(b, p)) {
        b->ct.prompt_requests_lagging++;
        return 0;
    }
    if (n > g) n = g;
    size_t *idx = calloc(n, sizeof *idx);
    wire_prompt *pr = calloc(n, sizeof *pr);
    rlhf_error e;
    rlhf_error_clear(&e);
    int served = 0;
    if (!idx || !pr) goto out;
    /* prompts released by a generator that went away come first (oldest first), then the selector's */
    uint32_t again = b->n_reissue < n ? (uint32_t)b->n_reissue : n;
    if (again) {
        memcpy(idx, b->reissue, again * sizeof *idx);
        memmove(b->reissue, b->reissue + again, (b->n_reissue - again) * sizeof *b->reissue);
        b->n_reissue -= again;
        b->ct.prompts_reissued += again;
    }
    if (again < n) b->selector_changes++;
    if (again < n && prompt_selector_next(b->sel, n - again, idx + again, &e) != 0) {
        reissue_put_back(b, idx, again);
        blog("prompt selector failed: %s: %s", e.where, e.msg);
        wire_frame rid = {p->rid, p->rid_len};
        reply_error(b, &rid, "selector_failed", 0, "%s: %s", e.where, e.msg);
        served = 1; /* answered (with an error): do not park it */
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        const prompt_record *r = prompt_dataset_get(b->ds, idx[i]);
        pr[i].id = (char *)r->id;
        pr[i].text = (char *)r->prompt;
        pr[i].index = idx[i];
        pr[i].record = r->record;
    }
    wire_prompt_batch batch = {request_id, b->newest_version, n, pr};
    wire_out o;
    if (wire_encode_prompt_batch(&batch, &o, &e) != 0) {
        blog("cannot encode a prompt batch: %s", e.msg);
        reissue_put_back(b, idx, again);
        goto out;
    }
    if (send_out(b, p, &o) == 0) {
        double now = rlhf_now();
        for (uint32_t i = 0; i < n; i++) lease_add(p, idx[i], now);
        p->outstanding = (uint32_t)p->n_leases;
        b->ct.prompts_served += n;
        served = 1;
    } else {
        reissue_put_back(b, idx, again);
        served = 1; /* peer gone or its pipe is full: drop the request rather than spin on it */
        b->ct.prompt_batches_expired++;
    }
    wire_out_free(&o);
out:
    free(idx);
    free(pr);
    return served;
}

static void serve_parked(broker *b) {
    size_t j = 0;
    for (size_t i = 0; i < b->n_parked; i++) {
        parked_request *r = &b->parked[i];
        broker_peer *p = &b->peers[r->peer];
        if (!p->connected || !p->alive) continue;
        if (grantable(b) > 0 && serve_prompts(b, p, r->request_id, r->n)) continue;
        b->parked[j++] = *r;
    }
    b->n_parked = j;
}

static void park(broker *b, broker_peer *p, uint64_t request_id, uint32_t n) {
    int idx = (int)(p - b->peers);
    for (size_t i = 0; i < b->n_parked; i++)
        if (b->parked[i].peer == idx) { /* a retried request replaces the held one */
            b->parked[i].request_id = request_id;
            b->parked[i].n = n;
            return;
        }
    if (b->n_parked == b->cap_parked) {
        size_t cap = b->cap_parked ? b->cap_parked * 2 : 16;
        parked_request *np = realloc(b->parked, cap * sizeof *np);
        if (!np) return;
        b->parked = np;
        b->cap_parked = cap;
    }
    b->parked[b->n_parked++] = (parked_request){idx, request_id, n, rlhf_now()};
    b->ct.prompt_requests_deferred++;
}

/* ---------------------------------------------------------------- message handlers */

static void count_reject(broker *b, int reason, const rlhf_error *e) {
    if (reason > 0 && reason < WIRE_R_END) b->ct.rejected[reason]++;
    uint64_t total = 0;
    for (int i = 0; i < WIRE_R_END; i++) total += b->ct.rejected[i];
    if (total <= 50 || (total & (total - 1)) == 0) /* log the first ones, then sparsely */
        blog("rejected a message (%s): %s: %s", wire_reason_name(reason), e->where, e->msg);
}

/* Logs a refusal: the first 50 of all refusals, then at powers of two (a flood cannot fill the log). */
static void rate_log(broker *b, const char *reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rate_log(broker *b, const char *reason, const char *fmt, ...) {
    uint64_t n = ++b->refusals_logged_seen;
    if (n > 50 && (n & (n - 1)) != 0) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    blog("refused (%s, %llu refusals so far): %s", reason, (unsigned long long)n, buf);
}

static void on_hello(broker *b, broker_peer *sender, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)sender, (void)rx; /* the peer is found by the id it names, not by its routing id */
    wire_hello h;
    rlhf_error e;
    rlhf_error_clear(&e);
    int reason = 0;
    if (wire_decode_hello(m, &h, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        reply_error(b, rid, wire_reason_name(reason), 0, "%s: %s", e.where, e.msg);
        return;
    }
    if (rid->len > BROKER_MAX_ROUTING_ID) return;
    /* the role is the credential's, whatever a message claims */
    if (b->auth.on && h.role != b->cur_role) {
        b->ct.rejected_wrong_role++;
        rate_log(b, "wrong_role", "HELLO from %s as %s with a %s credential", h.peer_id, wire_role_name(h.role),
                 wire_role_name(b->cur_role));
        reply_error(b, rid, "wrong_role", 0, "HELLO.role: \"%s\", but this connection's credential is the %s's",
                    wire_role_name(h.role), wire_role_name(b->cur_role));
        return;
    }
    broker_peer *p = peer_by_id(b, h.peer_id);
    if (p && b->auth.on && p->role != h.role) { /* a peer id is not taken over by another role */
        b->ct.rejected_wrong_role++;
        rate_log(b, "wrong_role", "HELLO as %s for peer id %s, which is a %s", wire_role_name(h.role), h.peer_id,
                 wire_role_name(p->role));
        reply_error(b, rid, "wrong_role", 0, "HELLO.peer_id: \"%s\" is a %s", h.peer_id, wire_role_name(p->role));
        return;
    }
    if (!p && b->n_peers >= b->cfg.max_peers) forget_dead_peers(b, 0.0); /* the table is bounded */
    if (!p && b->n_peers >= b->cfg.max_peers) {
        b->ct.rejected_too_many_peers++;
        rate_log(b, "too_many_peers", "HELLO from %s: %zu live peers", h.peer_id, b->n_peers);
        reply_error(b, rid, "too_many_peers", 0, "the broker holds %zu live peers (broker.max_peers)", b->n_peers);
        return;
    }
    if (!p) {
        if (b->n_peers == b->cap_peers) {
            size_t cap = b->cap_peers ? b->cap_peers * 2 : 16;
            broker_peer *np = realloc(b->peers, cap * sizeof *np);
            if (!np) return;
            b->peers = np;
            b->cap_peers = cap;
        }
        p = &b->peers[b->n_peers++];
        memset(p, 0, sizeof *p);
        snprintf(p->id, sizeof p->id, "%s", h.peer_id);
        blog("peer %s joined as %s (pid %lld)", h.peer_id, wire_role_name(h.role), (long long)h.pid);
    } else {
        /* Same peer id again: a restarted process. What the old one held is released. */
        peer_release(b, p);
        p->restarts++;
        if (h.role != WIRE_ROLE_OBSERVER) /* observers (stats probes) reconnect all the time */
            blog("peer %s rejoined as %s (pid %lld, restart %llu)", h.peer_id, wire_role_name(h.role),
                 (long long)h.pid, (unsigned long long)p->restarts);
    }
    p->role = h.role;
    p->pid = h.pid;
    memcpy(p->rid, rid->data, rid->len);
    p->rid_len = rid->len;
    p->connected = 1;
    p->has_sent = p->has_acked = 0;
    p->sent_version = p->acked_version = 0;
    p->sent_shm = 0;
    p->shm_ok = b->shm.on && h.role == WIRE_ROLE_GENERATOR && h.shm && !strcmp(h.host, b->shm.host);
    snprintf(p->host, sizeof p->host, "%s", h.host);
    p->host_files = b->shm.on && h.role == WIRE_ROLE_GENERATOR && h.shm && h.host[0] && !p->shm_ok;
    snprintf(p->state, sizeof p->state, "joined");
    p->alive = 0;
    touch(b, p);
    wire_welcome w = {b->newest_version, b->has_weights && h.role == WIRE_ROLE_GENERATOR, b->cfg.heartbeat_interval_ms,
                      b->cfg.max_staleness, ""};
    if (p->host_files) snprintf(w.host_files_dir, sizeof w.host_files_dir, "%s", b->cfg.weights_shm_dir);
    wire_out o;
    if (wire_encode_welcome(&w, &o, NULL) == 0) {
        send_out(b, p, &o);
        wire_out_free(&o);
    }
    offer_weights(b, p, 0); /* a (re)joining generator gets the newest version at once */
    broker_shm_gc(b);       /* what its previous incarnation was sent is not needed any more */
}

static void on_rollout_group(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)rid;
    wire_rollout_group g;
    rlhf_error e;
    rlhf_error_clear(&e);
    int reason = 0;
    b->ct.groups_received++;
    if (wire_validate_rollout_group(m, &g, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        reply_error(b, &rx->views[0], wire_reason_name(reason), 0, "%s: %s", e.where, e.msg);
        return;
    }
    if (strcmp(g.generator_id, p->id) != 0) {
        b->ct.rejected_unexpected++;
        reply_error(b, &rx->views[0], "generator_id_mismatch", 0, "group says generator \"%s\", peer is \"%s\"",
                    g.generator_id, p->id);
        wire_rollout_group_free(&g);
        return;
    }
    long lease = lease_find(b, p, g.prompt_id);
    const char *differs = lease >= 0 ? prompt_differs(b, p, (size_t)lease, m) : NULL;
    if (differs) {
        b->ct.rejected_prompt_mismatch++;
        rate_log(b, "prompt_mismatch", "group for prompt %.64s from %s: %s differs from the dataset's", g.prompt_id,
                 p->id, differs);
        reply_error(b, &rx->views[0], "prompt_mismatch", 0, "ROLLOUT_GROUP.%s: not the dataset's for prompt \"%.64s\"",
                    differs, g.prompt_id);
        wire_rollout_group_free(&g);
        return;
    }
    if (lease >= 0) lease_remove(p, (size_t)lease);
    if (lease < 0) {
        b->ct.rejected_no_lease++;
        rate_log(b, "no_lease", "group for prompt %.64s from %s, which holds no lease of it", g.prompt_id, p->id);
        reply_error(b, &rx->views[0], "no_lease", 0,
                    "ROLLOUT_GROUP.prompt_id: \"%.64s\" was not handed to %s (or its lease expired after %u ms)",
                    g.prompt_id, p->id, b->cfg.lease_timeout_ms);
        wire_rollout_group_free(&g);
        return;
    }
    uint64_t pv = g.policy_version;
    wire_rollout_group_free(&g);
    size_t at = 0;
    int32_t tok = 0;
    for (int pl = 0; b->cfg.vocab_size && pl < 2 && (size_t)pl < m->n_payloads; pl++)
        if (token_out_of_vocab(&m->payloads[pl], b->cfg.vocab_size, &at, &tok)) {
            b->ct.rejected_bad_token++;
            rate_log(b, "bad_token", "group from %s: token id %d not in the vocabulary", p->id, (int)tok);
            reply_error(b, &rx->views[0], "bad_token", 0, "ROLLOUT_GROUP.payloads[%d][%zu]: token id %d outside the "
                        "vocabulary [0, %u)", pl, at, (int)tok, b->cfg.vocab_size);
            return;
        }
    if (pv > b->newest_version) {
        b->ct.rejected_future_version++;
        reply_error(b, &rx->views[0], "future_version", 0, "policy_version %llu is newer than the newest published %llu",
                    (unsigned long long)pv, (unsigned long long)b->newest_version);
        return;
    }
    if (lag_of(b, pv) > b->cfg.max_staleness) {
        b->ct.dropped_stale_accept++;
        return;
    }
    /* Hard bound against a peer that ignores grants: the queue never exceeds twice its capacity. */
    if (b->q_len >= 2 * (size_t)b->cfg.queue_capacity) {
        b->ct.rejected_queue_overflow++;
        reply_error(b, &rx->views[0], "queue_overflow", 0, "broker queue holds %zu groups (capacity %u): "
                    "send groups only for granted prompts", b->q_len, b->cfg.queue_capacity);
        return;
    }
    if (b->log) {
        rlhf_error le;
        rlhf_error_clear(&le);
        if (replay_writer_append(b->log, rx->views + 1, rx->n - 1, NULL, &le) != 0) {
            /* A group the log does not hold is not accepted (after a restart nothing could recover
             * it): the sender is told, and the broker stops with the cause (disk full: class 3). */
            b->ct.replay_errors++;
            blog("replay log append failed: %s: %s", le.where, le.msg);
            if (!b->log_failed.code) b->log_failed = le;
            reply_error(b, &rx->views[0], "replay_log", 0, "the broker cannot log the group: %s", le.msg);
            return;
        } else {
            b->ct.replay_records++;
        }
    }
    if (b->q_len == b->q_cap) {
        size_t cap = b->q_cap ? b->q_cap * 2 : 64;
        queued_group *nq = malloc(cap * sizeof *nq);
        if (!nq) {
            b->ct.rejected_queue_overflow++; /* counted, and the sender is told */
            reply_error(b, &rx->views[0], "queue_overflow", 0, "broker out of memory");
            return;
        }
        for (size_t i = 0; i < b->q_len; i++) nq[i] = b->queue[(b->q_head + i) % b->q_cap];
        free(b->queue);
        b->queue = nq;
        b->q_head = 0;
        b->q_cap = cap;
    }
    queued_group *q = &b->queue[(b->q_head + b->q_len) % b->q_cap];
    q->n = rx->n - 1;
    q->msgs = malloc(q->n * sizeof(zmq_msg_t));
    if (!q->msgs) {
        b->ct.rejected_queue_overflow++;
        reply_error(b, &rx->views[0], "queue_overflow", 0, "broker out of memory");
        return;
    }
    zmq_msg_t *src = rx->msgs, *dst = q->msgs;
    q->bytes = 0;
    for (size_t i = 0; i < q->n; i++) {
        zmq_msg_init(&dst[i]);
        zmq_msg_move(&dst[i], &src[i + 1]);
        q->bytes += zmq_msg_size(&dst[i]);
    }
    q->policy_version = pv;
    b->q_len++;
    b->q_bytes += q->bytes;
    p->groups_in++;
    b->ct.groups_accepted++;
    if (b->q_len > b->ct.queue_max_depth) b->ct.queue_max_depth = b->q_len;
    if (b->q_bytes > b->ct.queue_max_bytes) b->ct.queue_max_bytes = b->q_bytes;
    deliver(b);
}

static void on_weights(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)rid;
    wire_weights w;
    rlhf_error e;
    rlhf_error_clear(&e);
    int reason = 0;
    if (wire_decode_weights_header(m, &w, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        reply_error(b, &rx->views[0], wire_reason_name(reason), 0, "%s: %s", e.where, e.msg);
        return;
    }
    uint64_t v = w.version;
    if (b->has_weights ? v <= b->newest_version : v < b->newest_version) {
        wire_weights_free(&w);
        b->ct.rejected_old_weights++;
        reply_error(b, &rx->views[0], "weights_not_newer", 0, "weights version %llu is not newer than %llu",
                    (unsigned long long)v, (unsigned long long)b->newest_version);
        return;
    }
    /* Versions count publishes: each is the previous + 1. Only the first WEIGHTS a broker process gets
     * may start anywhere at or above initial_version: a resumed updater's checkpoint version. */
    if (b->has_weights && v != b->newest_version + 1) {
        wire_weights_free(&w);
        b->ct.rejected_weights_version++;
        rate_log(b, "weights_version_jump", "WEIGHTS version %llu from %s after %llu", (unsigned long long)v, p->id,
                 (unsigned long long)b->newest_version);
        reply_error(b, &rx->views[0], "weights_version_jump", 0, "WEIGHTS.version: %llu, expected %llu (the newest + 1)",
                    (unsigned long long)v, (unsigned long long)b->newest_version + 1);
        return;
    }
    if (b->has_weights) close_msgs(b->w_msgs, b->w_n);
    b->has_weights = 0;
    b->w_n = rx->n - 1;
    b->w_msgs = malloc(b->w_n * sizeof(zmq_msg_t));
    if (!b->w_msgs) {
        wire_weights_free(&w);
        blog("out of memory holding weights version %llu", (unsigned long long)v);
        return;
    }
    zmq_msg_t *src = rx->msgs, *dst = b->w_msgs;
    for (size_t i = 0; i < b->w_n; i++) {
        zmq_msg_init(&dst[i]);
        zmq_msg_move(&dst[i], &src[i + 1]);
    }
    b->has_weights = 1;
    b->newest_version = v;
    b->ct.weights_received++;
    broker_shm_new_version(b, &w, m); /* takes the table; the file is written when a generator needs it */
    for (size_t i = 0; i < b->n_peers; i++) offer_weights(b, &b->peers[i], 1);
    broker_shm_gc(b);
    purge_stale(b);
    deliver(b);
}

static void on_prompt_stats(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)p, (void)rx;
    wire_prompt_stats s;
    rlhf_error e;
    rlhf_error_clear(&e);
    int reason = 0;
    if (wire_decode_prompt_stats(m, &s, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        reply_error(b, rid, wire_reason_name(reason), 0, "%s: %s", e.where, e.msg);
        return;
    }
    b->ct.prompt_stats_received++;
    if (b->sel) {
        prompt_stats ps = {s.prompt_id, (int)s.k, (int)s.n_sources, s.rewards, s.total, s.policy_version};
        b->selector_changes++;
        if (prompt_selector_update(b->sel, &ps, &e) != 0) {
            b->ct.rejected_prompt_stats++;
            if (b->ct.rejected_prompt_stats <= 20) blog("prompt stats rejected by the selector: %s: %s", e.where, e.msg);
        }
    }
    wire_prompt_stats_free(&s);
}

static void on_heartbeat(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)p, (void)rx;
    wire_heartbeat h;
    rlhf_error e = {0};
    int reason = 0;
    if (wire_decode_heartbeat(m, &h, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        return;
    }
    b->ct.heartbeats++;
    broker_peer *hp = peer_by_id(b, h.peer_id);
    if (hp && b->auth.on && hp->role != b->cur_role) { /* keeps nobody alive with another role's key */
        b->ct.rejected_wrong_role++;
        return;
    }
    if (hp) {
        touch(b, hp);
        snprintf(hp->state, sizeof hp->state, "%s", h.state);
    } else if (h.role != WIRE_ROLE_OBSERVER) {
        /* a peer of a previous broker process: tell it to introduce itself */
        reply_error(b, rid, "no_hello", 0, "unknown peer %s: send HELLO", h.peer_id);
    }
}

static void on_stats_request(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)p, (void)rx, (void)m;
    json_t *s = broker_stats(b);
    wire_out o;
    if (wire_encode_stats(s, &o, NULL) == 0) {
        reply_raw(b, rid, &o);
        wire_out_free(&o);
    }
    json_decref(s);
}

static void on_control(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)rx;
    wire_control c;
    rlhf_error e = {0};
    int reason = 0;
    if (wire_decode_control(m, &c, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        return;
    }
    blog("CONTROL %s from %s: %s", c.command == WIRE_CONTROL_STOP ? "stop" : c.command == WIRE_CONTROL_PAUSE ? "pause" : "resume",
         p ? p->id : "an anonymous peer", c.reason);
    if (b->auth.on && b->cur_role != WIRE_ROLE_OBSERVER) {
        /* only the launcher's (control) credential steers the run */
        b->ct.rejected_not_authorized++;
        rate_log(b, "not_authorized", "CONTROL from %s (%s credential)", p ? p->id : "a peer without HELLO",
                 wire_role_name(b->cur_role));
        reply_error(b, rid, "not_authorized", 0, "CONTROL: only the run's control credential may send it, this "
                    "connection's is the %s's", wire_role_name(b->cur_role));
        return;
    }
    if (c.command == WIRE_CONTROL_STOP) {
        b->stop_requested = 1;
        snprintf(b->stop_reason, sizeof b->stop_reason, "CONTROL stop from %.63s: %.150s", p ? p->id : "a peer without HELLO",
                 c.reason);
    }
    else if (c.command == WIRE_CONTROL_PAUSE) b->paused = 1;
    else {
        b->paused = 0;
        serve_parked(b);
    }
}

static void on_prompt_request(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)rx;
    wire_prompt_request r;
    rlhf_error e = {0};
    int reason = 0;
    if (wire_decode_prompt_request(m, &r, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        reply_error(b, rid, wire_reason_name(reason), 0, "%s: %s", e.where, e.msg);
        return;
    }
    b->ct.prompt_requests++;
    if (!b->sel) {
        reply_error(b, rid, "no_dataset", 0, "this broker serves no prompts (broker.dataset is empty)");
        return;
    }
    if (!serve_prompts(b, p, r.request_id, r.n)) park(b, p, r.request_id, r.n);
}

static void on_credit(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)rid, (void)rx;
    wire_credit c;
    rlhf_error e = {0};
    int reason = 0;
    if (wire_decode_credit(m, &c, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        return;
    }
    p->credit += c.n;
    deliver(b);
}

static void on_weights_ack(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)rid, (void)rx;
    uint64_t v;
    rlhf_error e = {0};
    int reason = 0;
    if (wire_decode_weights_ack(m, &v, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        return;
    }
    if (!p->has_acked || v > p->acked_version) p->acked_version = v;
    p->has_acked = 1;
    offer_weights(b, p, 0);
    broker_shm_gc(b);
    if (b->cfg.max_generation_lag >= 0) serve_parked(b); /* its parked request may be fresh enough now */
}

/* A same-host generator could not use a weights file (not there, not mappable, a chunk's CRC wrong): it
 * gets the bytes over ZeroMQ from now on, starting with the newest version. */
static void on_weights_shm_failed(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m) {
    (void)rid, (void)rx;
    uint64_t v;
    char why[32];
    rlhf_error e = {0};
    int reason = 0;
    if (wire_decode_weights_shm_failed(m, &v, why, sizeof why, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        return;
    }
    if (p->host_files) b->shm.host_file_fallbacks++;
    else b->shm.fallbacks++;
    rate_log(b, "weights_shm_failed", "generator %s could not use the weights file of version %llu (%s): it gets "
             "the bytes over ZeroMQ from now on", p->id, (unsigned long long)v, why);
    p->shm_ok = 0;
    p->host_files = 0;
    if (p->has_sent && p->sent_shm && p->sent_version == v) p->has_sent = 0; /* nothing it can use in flight */
    p->sent_shm = 0;
    offer_weights(b, p, 0);
    broker_shm_gc(b);
}

/* Who may send what. A message from a peer without HELLO, when `hello` says one is needed, is
 * answered no_hello; from a peer of another role it is counted in rejected/wrong_role and dropped,
 * before its body is decoded. Anything not listed is answered unexpected_type. */
#define ANY_ROLE (-1)
typedef void (*msg_handler)(broker *b, broker_peer *p, const wire_frame *rid, wire_rx *rx, const wire_msg *m);
static const struct {
    int type;
    int role;  /* WIRE_ROLE_* or ANY_ROLE */
    int hello; /* the sender must have introduced itself */
    msg_handler fn;
} handlers[] = {
    {WIRE_HELLO, ANY_ROLE, 0, on_hello},
    {WIRE_HEARTBEAT, ANY_ROLE, 0, on_heartbeat},
    {WIRE_STATS_REQUEST, ANY_ROLE, 0, on_stats_request},
    {WIRE_CONTROL, ANY_ROLE, 0, on_control},
    {WIRE_PROMPT_REQUEST, WIRE_ROLE_GENERATOR, 1, on_prompt_request},
    {WIRE_ROLLOUT_GROUP, WIRE_ROLE_GENERATOR, 1, on_rollout_group},
    {WIRE_CREDIT, WIRE_ROLE_UPDATER, 1, on_credit},
    {WIRE_WEIGHTS, WIRE_ROLE_UPDATER, 1, on_weights},
    {WIRE_WEIGHTS_ACK, WIRE_ROLE_GENERATOR, 1, on_weights_ack},
    {WIRE_WEIGHTS_SHM_FAILED, WIRE_ROLE_GENERATOR, 1, on_weights_shm_failed},
    {WIRE_PROMPT_STATS, WIRE_ROLE_UPDATER, 1, on_prompt_stats},
};

static void handle(broker *b, wire_rx *rx) {
    if (rx->n < 2) return; /* only a routing id: nothing to say */
    const wire_frame *rid = &rx->views[0];
    b->ct.msgs_in++;
    for (size_t i = 1; i < rx->n; i++) b->ct.bytes_in += rx->views[i].len;
    wire_msg m;
    rlhf_error e;
    rlhf_error_clear(&e);
    int reason = 0;
    if (wire_parse(rx->views + 1, rx->n - 1, &m, &reason, &e) != 0) {
        count_reject(b, reason, &e);
        reply_error(b, rid, wire_reason_name(reason), reason == WIRE_R_VERSION ? m.version : 0, "%s: %s", e.where,
                    e.msg);
        return;
    }
    b->cur_role = broker_auth_role(&b->auth, &((zmq_msg_t *)rx->msgs)[1]);
    if (b->auth.on && !b->cur_role) { /* cannot happen past the ZAP handler; refuse rather than trust */
        b->ct.rejected_not_authorized++;
        wire_msg_free(&m);
        return;
    }
    broker_peer *p = peer_by_rid(b, rid);
    if (p) touch(b, p);
    size_t i = 0, n = sizeof handlers / sizeof handlers[0];
    while (i < n && handlers[i].type != m.type) i++;
    if (!p && (i == n || handlers[i].hello)) {
        b->ct.rejected_no_hello++;
        reply_error(b, rid, "no_hello", 0, "%s before HELLO", wire_type_name(m.type));
    } else if (i == n) {
        b->ct.rejected_unexpected++;
        reply_error(b, rid, "unexpected_type", 0, "the broker does not accept %s", wire_type_name(m.type));
    } else if (handlers[i].role != ANY_ROLE && p->role != handlers[i].role) {
        b->ct.rejected_wrong_role++;
        rate_log(b, "wrong_role", "%s from %s (%s)", wire_type_name(m.type), p->id, wire_role_name(p->role));
        reply_error(b, rid, "wrong_role", 0, "%s: only a %s sends it, this peer is a %s", wire_type_name(m.type),
                    wire_role_name(handlers[i].role), wire_role_name(p->role));
    } else {
        handlers[i].fn(b, p, rid, rx, &m);
    }
    wire_msg_free(&m);
}

/* ---------------------------------------------------------------- stats */

json_t *broker_stats(const broker *b) {
    const broker_counters *c = &b->ct;
    uint64_t outstanding = 0;
    for (size_t i = 0; i < b->n_peers; i++) outstanding += b->peers[i].outstanding;
    json_t *s = json_object();
    json_object_set_new(s, "uptime_s", json_real(rlhf_now() - b->started));
    json_object_set_new(s, "policy_version", json_integer((json_int_t)b->newest_version));
    json_object_set_new(s, "has_weights", json_boolean(b->has_weights));
    json_object_set_new(s, "paused", json_boolean(b->paused));
#define SETI(k, v) json_object_set_new(s, k, json_integer((json_int_t)(v)))
    SETI("queue/depth", b->q_len);
    SETI("queue/bytes", b->q_bytes);
    SETI("queue/capacity", b->cfg.queue_capacity);
    SETI("queue/max_depth", c->queue_max_depth);
    SETI("queue/max_bytes", c->queue_max_bytes);
    SETI("prompts/outstanding", outstanding);
    SETI("prompts/parked", b->n_parked);
    SETI("prompts/requests", c->prompt_requests);
    SETI("prompts/served", c->prompts_served);
    SETI("prompts/deferred", c->prompt_requests_deferred);
    SETI("prompts/deferred_generator_lag", c->prompt_requests_lagging);
    SETI("prompts/expired", c->prompt_batches_expired);
    SETI("prompts/leases_expired", c->leases_expired);
    SETI("prompts/released", c->prompts_released);
    SETI("prompts/reissued", c->prompts_reissued);
    SETI("peers/forgotten", c->peers_forgotten);
    json_object_set_new(s, "auth", json_boolean(b->auth.on));
    SETI("auth/handshakes_allowed", b->auth.allowed);
    SETI("auth/handshakes_denied", b->auth.denied);
    SETI("auth/handshakes_failed", b->auth.failed);
    SETI("auth/authorized_keys", b->auth.n_authorized);
    SETI("groups/received", c->groups_received);
    SETI("groups/accepted", c->groups_accepted);
    SETI("groups/delivered", c->groups_delivered);
    SETI("groups/dropped_stale", c->dropped_stale_accept + c->dropped_stale_queued + c->dropped_stale_delivery);
    SETI("groups/dropped_stale_accept", c->dropped_stale_accept);
    SETI("groups/dropped_stale_queued", c->dropped_stale_queued);
    SETI("groups/dropped_stale_delivery", c->dropped_stale_delivery);
    uint64_t rej = 0;
    for (int i = 1; i < WIRE_R_END; i++) {
        char k[64];
        snprintf(k, sizeof k, "rejected/%s", wire_reason_name(i));
        SETI(k, c->rejected[i]);
        rej += c->rejected[i];
    }
    SETI("rejected/future_version", c->rejected_future_version);
    SETI("rejected/no_hello", c->rejected_no_hello);
    SETI("rejected/unexpected", c->rejected_unexpected);
    SETI("rejected/wrong_role", c->rejected_wrong_role);
    SETI("rejected/queue_overflow", c->rejected_queue_overflow);
    SETI("rejected/weights_not_newer", c->rejected_old_weights);
    SETI("rejected/not_authorized", c->rejected_not_authorized);
    SETI("rejected/no_lease", c->rejected_no_lease);
    SETI("rejected/prompt_mismatch", c->rejected_prompt_mismatch);
    SETI("rejected/bad_token", c->rejected_bad_token);
    SETI("rejected/weights_version_jump", c->rejected_weights_version);
    SETI("rejected/too_many_peers", c->rejected_too_many_peers);
    rej += c->rejected_future_version + c->rejected_no_hello + c->rejected_unexpected + c->rejected_wrong_role +
           c->rejected_queue_overflow + c->rejected_old_weights + c->rejected_not_authorized + c->rejected_no_lease +
           c->rejected_bad_token + c->rejected_weights_version + c->rejected_too_many_peers +
           c->rejected_prompt_mismatch;
    SETI("rejected/total", rej);
    SETI("weights/received", c->weights_received);
    SETI("weights/sends", c->weights_sends);
    SETI("weights/sends_deferred", c->weights_send_skipped);
    broker_shm_stats(b, s);
    SETI("prompt_stats/received", c->prompt_stats_received);
    SETI("prompt_stats/rejected", c->rejected_prompt_stats);
    SETI("heartbeats", c->heartbeats);
    SETI("msgs/in", c->msgs_in);
    SETI("bytes/in", c->bytes_in);
    SETI("bytes/out", c->bytes_out);
    SETI("replay/records", c->replay_records);
    SETI("replay/errors", c->replay_errors);
    if (b->sel) {
        SETI("selector/saves", b->selector_saves);
        SETI("selector/save_errors", b->selector_save_errors);
        json_object_set_new(s, "selector/restored", json_boolean(b->selector_restored));
        /* the selector's own metrics (prompts/zero_spread_share, prompts/mean_cohesion,
         * prompts/sampling_entropy, ...), grouped so the updater can copy them into metrics.jsonl */
        json_t *sm = prompt_selector_metrics(b->sel);
        if (sm) json_object_set_new(s, "selector", sm);
    }
#undef SETI
    json_t *peers = json_array();
    double now = rlhf_now();
    for (size_t i = 0; i < b->n_peers; i++) {
        const broker_peer *p = &b->peers[i];
        json_t *jp = json_pack("{sssssbsbsssfsIsIsIsIsIsI}", "id", p->id, "role", wire_role_name(p->role), "alive",
                               p->alive, "connected", p->connected, "state", p->state, "silent_s", now - p->last_seen,
                               "pid", (json_int_t)p->pid, "credit", (json_int_t)p->credit, "outstanding",
                               (json_int_t)p->outstanding, "groups", (json_int_t)(p->groups_in + p->groups_out),
                               "weights_version", (json_int_t)(p->has_sent ? p->sent_version : 0), "restarts",
                               (json_int_t)p->restarts);
        json_array_append_new(peers, jp);
    }
    json_object_set_new(s, "peers", peers);
    return s;
}

/* ---------------------------------------------------------------- loop */

static void check_liveness(broker *b) {
    double now = rlhf_now(), timeout = b->cfg.heartbeat_timeout_ms / 1000.0;
    for (size_t i = 0; i < b->n_peers; i++) {
        broker_peer *p = &b->peers[i];
        if (p->alive && now - p->last_seen > timeout) {
            p->alive = 0;
            snprintf(p->state, sizeof p->state, "dead");
            if (p->role != WIRE_ROLE_OBSERVER)
                blog("peer %s (%s) is dead: silent for %.1f s; releasing %u granted prompts, %u credit", p->id,
                     wire_role_name(p->role), now - p->last_seen, p->outstanding, p->credit);
            peer_release(b, p);
        }
        if (p->n_leases) leases_expire(b, p, now);
    }
    /* a peer dead this long is forgotten: ids of past processes do not pile up over a long run */
    double forget = 10.0 * timeout < 60.0 ? 60.0 : 10.0 * timeout;
    forget_dead_peers(b, forget);
    broker_shm_gc(b); /* a dead generator no longer holds a weights file */
}

static void broadcast_stop(broker *b, const char *why) {
    wire_control c = {WIRE_CONTROL_STOP, ""};
    snprintf(c.reason, sizeof c.reason, "%s", why);
    wire_out o;
    if (wire_encode_control(&c, &o, NULL) != 0) return;
    for (size_t i = 0; i < b->n_peers; i++)
        if (b->peers[i].connected) send_out(b, &b->peers[i], &o);
    wire_out_free(&o);
}

/* Writes the selector state if it changed since the last write (prompt_selector_save is atomic:
 * temp file, fsync, rename). A failed write is counted and logged; the run goes on. */
static int save_selector(broker *b, rlhf_error *err) {
    if (!b->sel || b->selector_changes == b->selector_saved_changes) return 0;
    int rc = rlhf_mkdirs(b->run_dir, err); /* exists already unless the replay log is off */
    if (!rc) rc = prompt_selector_save(b->sel, b->selector_file, err);
    b->selector_saved_at = rlhf_now();
    if (rc) {
        b->selector_save_errors++;
        return rc;
    }
    b->selector_saved_changes = b->selector_changes;
    b->selector_saves++;
    return 0;
}

int broker_run(broker *b, volatile sig_atomic_t *stop, rlhf_error *err) {
    wire_rx rx = {0};
    double next_stats = rlhf_now() + b->cfg.stats_interval_ms / 1000.0, next_live = rlhf_now();
    int rc = 0;
    while (!b->stop_requested && !b->log_failed.code && !(stop && *stop)) {
        zmq_pollitem_t it[2] = {{b->router, 0, ZMQ_POLLIN, 0}, {b->auth.zap, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(it, b->auth.on ? 2 : 1, 100);
        if (n < 0 && errno != EINTR) {
            rc = RLHF_FAIL(err, RLHF_EIO, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        broker_auth_serve(&b->auth); /* handshakes first: a connecting peer waits on them */
        /* Drain what is there, but come back to housekeeping at least every 256 messages. */
        for (int i = 0; i < 256 && !b->stop_requested && !b->log_failed.code; i++) {
            int r = wire_rx_recv(b->router, &rx, ZMQ_DONTWAIT, err);
            if (r < 0) {
                rc = r;
                goto out;
            }
            if (r == 0) break;
            handle(b, &rx);
        }
        double now = rlhf_now();
        if (now >= next_live) {
            check_liveness(b);
            /* a weights send that found a generator's pipe full is retried here */
            for (size_t i = 0; i < b->n_peers; i++)
                if (b->peers[i].alive) offer_weights(b, &b->peers[i], 0);
            serve_parked(b);
            deliver(b);
            next_live = now + 0.05;
        }
        if (b->sel && now - b->selector_saved_at >= 1.0 && b->selector_changes != b->selector_saved_changes) {
            rlhf_error se;
            rlhf_error_clear(&se);
            if (save_selector(b, &se) != 0 && b->selector_save_errors <= 5)
                blog("cannot save the selector state: %s: %s", se.where, se.msg);
        }
        if (b->cfg.stats_interval_ms && now >= next_stats) {
            json_t *s = broker_stats(b);
            char *line = json_dumps(s, JSON_COMPACT);
            blog("stats %s", line ? line : "{}");
            free(line);
            json_decref(s);
            next_stats = now + b->cfg.stats_interval_ms / 1000.0;
        }
    }
out:
    wire_rx_free(&rx);
    if (!rc && b->log_failed.code)
        rc = rlhf_error_set(err, b->log_failed.code, b->log_failed.where, "%s", b->log_failed.msg);
    blog("stopping (%s): accepted %llu, delivered %llu, dropped stale %llu, queued %zu",
         b->stop_requested ? "CONTROL stop" : (stop && *stop) ? "signal" : "error",
         (unsigned long long)b->ct.groups_accepted, (unsigned long long)b->ct.groups_delivered,
         (unsigned long long)(b->ct.dropped_stale_accept + b->ct.dropped_stale_queued + b->ct.dropped_stale_delivery),
         b->q_len);
    {
        /* peers log why: a failed replay log is named in the stop they receive */
        char why[256];
        if (b->stop_requested) snprintf(why, sizeof why, "%s", b->stop_reason);
        else if (b->log_failed.code)
            snprintf(why, sizeof why, "broker shutting down: %.110s: %.110s", b->log_failed.where, b->log_failed.msg);
        else snprintf(why, sizeof why, "broker shutting down");
        broadcast_stop(b, why);
    }
    {
        /* test-only fault: a broker slow to exit after its stop, so its peers end first (the launcher must
         * still report the broker's cause) */
        const char *delay = getenv("RLHF_TEST_FAULT_BROKER_EXIT_DELAY_MS");
        if (delay && atoi(delay) > 0) usleep((useconds_t)atoi(delay) * 1000);
    }
    if (b->log) {
        rlhf_error le;
        rlhf_error_clear(&le);
        if (replay_writer_sync(b->log, &le) != 0) {
            if (!rc) rc = rlhf_error_set(err, le.code, le.where, "%s", le.msg);
        }
    }
    {
        rlhf_error se;
        rlhf_error_clear(&se);
        uint64_t saves = b->selector_saves;
        if (save_selector(b, &se) != 0) {
            if (!rc) rc = rlhf_error_set(err, se.code, se.where, "%s", se.msg);
        } else if (b->selector_saves != saves) {
            blog("selector state saved to %s", b->selector_file);
        }
    }
    return rc;
}
