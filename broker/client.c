/* broker/client.c — the client API generators and updaters use (broker/broker.h).
 *
 * One DEALER socket carries everything; messages that arrive while the caller waits for something else
 * are kept: the newest weights (older ones are superseded), delivered groups and prompt batches in
 * order, the last STATS reply. Heartbeats go out from a background thread on a second socket of its
 * own (ZeroMQ sockets are single-threaded), so a process busy sampling or training for longer than the
 * heartbeat timeout is not declared dead. */
#include "broker/broker.h"
#include "broker/broker_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <zmq.h>

typedef struct group_fifo {
    wire_rollout_group *items;
    size_t head, len, cap;
} group_fifo;

struct broker_client {
    void *zctx;
    void *sock;
    char endpoint[256];
    char id[WIRE_ID_MAX];
    int role;
    wire_welcome welcome;
    int has_welcome;
    int stopped;
    char stop_reason[256];
    int secure;              /* cred holds this process's key pair */
    broker_credential cred;

    wire_rx rx;
    wire_weights pending_weights; /* newest received, not yet returned: validated table, no blob */
    wire_rx pending_rx;           /* its frames (header, metadata, chunks) */
    wire_weights_shm pending_shm; /* or: the newest came as WEIGHTS_SHM (a file on this host) */
    int pending_is_shm;
    int has_pending_weights;
    uint64_t shm_taken, shm_failed; /* versions taken through a shared-memory file; files that failed */
    rlhf_error shm_last_error;
    /* welcome.host_files_dir set (a generator on another host than the broker's): the versions taken as
     * bytes are written there for this host's other generators; the newest two files are kept (a
     * sibling may still be about to open the older), older ones and all at close are unlinked */
    char host_files[2][WIRE_SHM_PATH_MAX];
    uint64_t host_files_written, host_file_errors;
    uint8_t *shm_buf;            /* versions from a weights file are read here (kept: its pages stay faulted in) */
    size_t shm_buf_cap;
    int host_files_swept;
    uint64_t weights_arrivals;   /* WEIGHTS messages accepted so far: wakes a waiting prompt request */
    int wake_on_weights;         /* broker_client_wake_on_weights */
    group_fifo groups;
    wire_prompt_batch *batches;
    size_t n_batches, cap_batches;
    json_t *stats_reply;
    uint64_t next_request_id;
    int request_in_flight;
    uint64_t errors_received;
    uint64_t rehellos; /* HELLOs resent after a broker restart */
    uint32_t credit_outstanding; /* credit granted minus groups received */
    int need_rehello;            /* set by the heartbeat thread (atomic): the broker does not know us */
    struct pub_buf *pub;         /* weights send buffer, reused across publishes */
    rlhf_error last_rejection;

    /* heartbeat thread */
    pthread_t hb_thread;
    int hb_running;
    void *hb_pipe; /* inproc PAIR: closing signal */
    void *hb_thread_pipe; /* the thread's end */
    void *hb_sock;        /* the thread's DEALER */
    char hb_pipe_name[64];
    pthread_mutex_t mu;
    char state[32];
    uint32_t hb_interval_ms;
};

/* ---------------------------------------------------------------- stash */

static int fifo_push(group_fifo *f, wire_rollout_group *g) {
    if (f->len == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        wire_rollout_group *n = malloc(cap * sizeof *n);
        if (!n) return -1;
        for (size_t i = 0; i < f->len; i++) n[i] = f->items[(f->head + i) % f->cap];
        free(f->items);
        f->items = n;
        f->head = 0;
        f->cap = cap;
    }
    f->items[(f->head + f->len) % f->cap] = *g;
    f->len++;
    return 0;
}

static void fifo_pop(group_fifo *f, wire_rollout_group *out) {
    *out = f->items[f->head];
    f->head = (f->head + 1) % f->cap;
    f->len--;
}

static int have(const broker_client *c, int type) {
    switch (type) {
    case WIRE_WELCOME: return c->has_welcome;
    case WIRE_WEIGHTS: return c->has_pending_weights;
    case WIRE_ROLLOUT_GROUP: return c->groups.len > 0;
    case WIRE_PROMPT_BATCH: return c->n_batches > 0;
    case WIRE_STATS: return c->stats_reply != NULL;
    default: return 0;
    }
}

static int send_out(broker_client *c, wire_out *o, rlhf_error *err);
static void pub_buf_unref(void *data, void *hint);

/* HELLO: a generator also says which host it is on and that it can map weights files, so that a broker
 * on the same host sends it WEIGHTS_SHM instead of the bytes. */
static void hello_fill(const broker_client *c, wire_hello *h) {
    memset(h, 0, sizeof *h);
    h->role = c->role;
    h->pid = (int64_t)getpid();
    snprintf(h->peer_id, sizeof h->peer_id, "%s", c->id);
    if (c->role == WIRE_ROLE_GENERATOR) {
        broker_host_id(h->host, sizeof h->host);
        h->shm = h->host[0] != 0;
    }
}

/* The broker restarted (our DEALER reconnected by itself) and does not know us: introduce ourselves
 * again, re-grant the credit it lost; a prompt request it never saw is sent again by the next call. */
static void rehello(broker_client *c) {
    wire_hello h;
    hello_fill(c, &h);
    wire_out o;
    if (wire_encode_hello(&h, &o, NULL) == 0) send_out(c, &o, NULL);
    c->request_in_flight = 0;
    c->rehellos++;
    if (c->role == WIRE_ROLE_UPDATER && c->credit_outstanding) {
        wire_credit cr = {c->credit_outstanding};
        if (wire_encode_credit(&cr, &o, NULL) == 0) send_out(c, &o, NULL);
    }
}

static uint64_t pending_version(const broker_client *c) {
    return c->pending_is_shm ? c->pending_shm.w.version : c->pending_weights.version;
}

/* Handles one received message. Returns 0, or an error that the waiting call should report. */
static int dispatch(broker_client *c, rlhf_error *err) {
    wire_msg m;
    int reason = 0, rc;
    rc = wire_parse(c->rx.views, c->rx.n, &m, &reason, err);
    if (rc) {
        if (reason == WIRE_R_VERSION)
            return rlhf_error_set(err, RLHF_EPROTO, c->endpoint,
                                  "broker speaks protocol version %d, this client speaks %d", m.version,
                                  WIRE_PROTOCOL_VERSION);
        return rc;
    }
    switch (m.type) {
    case WIRE_WELCOME:
        rc = wire_decode_welcome(&m, &c->welcome, &reason, err);
        if (!rc) c->has_welcome = 1;
        if (!rc && c->welcome.host_files_dir[0] && !c->host_files_swept) {
            /* what generators of this host that died left there */
            broker_host_files_sweep(c->welcome.host_files_dir);
            c->host_files_swept = 1;
        }
        break;
    case WIRE_WEIGHTS: {
        /* Checksums were verified by wire_parse; validate the table now, copy the blob only when the
         * caller takes it (into its own buffer if it has one). The frames are kept by swapping rx. */
        wire_weights w;
        rc = wire_decode_weights_header(&m, &w, &reason, err);
        if (rc) break;
        if (c->has_pending_weights && pending_version(c) >= w.version) {
            wire_weights_free(&w);
            break;
        }
        wire_weights_free(&c->pending_weights);
        wire_weights_shm_free(&c->pending_shm);
        c->pending_is_shm = 0;
        c->pending_weights = w;
        c->has_pending_weights = 1;
        c->weights_arrivals++;
        wire_rx t = c->pending_rx;
        c->pending_rx = c->rx;
        c->rx = t;
        break;
    }
    case WIRE_WEIGHTS_SHM: {
        /* the same, naming a file on this host: it is mapped and checked when the caller takes it */
        wire_weights_shm x;
        rc = wire_decode_weights_shm(&m, &x, &reason, err);
        if (rc) break;
        if (c->has_pending_weights && pending_version(c) >= x.w.version) {
            wire_weights_shm_free(&x);
            break;
        }
        wire_weights_free(&c->pending_weights);
        wire_rx_free(&c->pending_rx);
        wire_weights_shm_free(&c->pending_shm);
        c->pending_shm = x;
        c->pending_is_shm = 1;
        c->has_pending_weights = 1;
        c->weights_arrivals++;
        break;
    }
    case WIRE_ROLLOUT_GROUP: {
        wire_rollout_group g;
        rc = wire_decode_rollout_group(&m, &g, &reason, err);
        if (rc) break;
        if (c->credit_outstanding) c->credit_outstanding--;
        if (fifo_push(&c->groups, &g) != 0) {
            wire_rollout_group_free(&g);
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        }
        break;
    }
    case WIRE_PROMPT_BATCH: {
        wire_prompt_batch pb;
        rc = wire_decode_prompt_batch(&m, &pb, &reason, err);
        if (rc) break;
        if (c->n_batches == c->cap_batches) {
            size_t cap = c->cap_batches ? c->cap_batches * 2 : 4;
            wire_prompt_batch *nb = realloc(c->batches, cap * sizeof *nb);
            if (!nb) {
                wire_prompt_batch_free(&pb);
                rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
                break;
            }
            c->batches = nb;
            c->cap_batches = cap;
        }
        c->batches[c->n_batches++] = pb;
        c->request_in_flight = 0;
        break;
    }
    case WIRE_STATS: {
        json_t *s;
        rc = wire_decode_stats(&m, &s, &reason, err);
        if (!rc) {
            json_decref(c->stats_reply);
            c->stats_reply = s;
        }
        break;
    }
    case WIRE_CONTROL: {
        wire_control ctl;
        rc = wire_decode_control(&m, &ctl, &reason, err);
        if (!rc && ctl.command == WIRE_CONTROL_STOP) {
            c->stopped = 1;
            snprintf(c->stop_reason, sizeof c->stop_reason, "%s", ctl.reason);
        }
        break;
    }
    case WIRE_ERROR: {
        wire_error_msg e;
        rc = wire_decode_error(&m, &e, &reason, err);
        if (rc) break;
        c->errors_received++;
        rlhf_error_set(&c->last_rejection, RLHF_EPROTO, c->endpoint, "broker rejected a message (%s): %s", e.reason,
                       e.detail);
        /* Rejections of fire-and-forget sends (a group, weights, stats) are kept for the caller to ask
         * about; only the ones that mean this session cannot work end the current call. */
        if (!strcmp(e.reason, "version_mismatch"))
            rc = rlhf_error_set(err, RLHF_EPROTO, c->endpoint, "broker rejected protocol version %d: %s",
                                e.peer_version, e.detail);
        else if (!strcmp(e.reason, "no_hello") && c->has_welcome)
            rehello(c);
        else if (!strcmp(e.reason, "no_hello") || !strcmp(e.reason, "no_dataset") ||
                   !strcmp(e.reason, "selector_failed") ||
                   (!c->has_welcome && (!strcmp(e.reason, "wrong_role") || !strcmp(e.reason, "too_many_peers")))) {
            /* (a refused HELLO: the broker will never say WELCOME) */
            c->request_in_flight = 0; /* that request was answered, with an error */
            rc = rlhf_error_set(err, RLHF_EPROTO, c->endpoint, "broker rejected a message (%s): %s", e.reason,
                                e.detail);
        }
        break;
    }
    default:
        rc = rlhf_error_set(err, RLHF_EPROTO, c->endpoint, "unexpected %s from the broker", wire_type_name(m.type));
    }
    wire_msg_free(&m);
    return rc;
}

/* Receives until something of `want` is stashed (1), timeout (0), or an error (< 0). */
/* Receives until a message of type `want` is available (1), the timeout passes (0) or an error. With
 * wake_after != NULL it also returns 0 as soon as a WEIGHTS message beyond *wake_after arrives. */
static int pump_ex(broker_client *c, int want, int timeout_ms, const uint64_t *wake_after, rlhf_error *err) {
    double deadline = rlhf_now() + (timeout_ms < 0 ? 1e9 : timeout_ms / 1000.0);
    for (;;) {
        if (__atomic_exchange_n(&c->need_rehello, 0, __ATOMIC_ACQ_REL) && c->has_welcome) rehello(c);
        if (want && have(c, want)) return 1;
        if (wake_after && c->weights_arrivals != *wake_after) return 0;
        if (c->stopped) return rlhf_error_set(err, RLHF_ESTATE, c->endpoint, "the broker stopped");
        double left = deadline - rlhf_now();
        int r = wire_rx_recv(c->sock, &c->rx, ZMQ_DONTWAIT, err);
        if (r < 0) return r;
        if (r == 0) {
            if (left <= 0) return 0;
            zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
            long ms = (long)(left * 1000.0) + 1;
            if (zmq_poll(&it, 1, ms > 200 ? 200 : ms) < 0 && errno != EINTR)
                return rlhf_error_set(err, RLHF_EIO, c->endpoint, "zmq_poll: %s", zmq_strerror(errno));
            continue;
        }
        int rc = dispatch(c, err);
        if (rc) return rc;
        if (!want) return 1;
    }
}

static int pump(broker_client *c, int want, int timeout_ms, rlhf_error *err) {
    return pump_ex(c, want, timeout_ms, NULL, err);
}

static int send_out(broker_client *c, wire_out *o, rlhf_error *err) {
    int rc = wire_out_send(c->sock, o, err);
    wire_out_free(o);
    if (rc && err) snprintf(err->where, sizeof err->where, "%s", c->endpoint);
    return rc;
}

/* ---------------------------------------------------------------- heartbeat thread */

static void *hb_main(void *arg) {
    broker_client *c = arg;
    /* Both sockets were created and connected by the main thread (handed over by pthread_create's
     * memory barrier), so closing can never race with the thread still setting up. */
    void *pipe = c->hb_thread_pipe;
    void *hs = c->hb_sock;
    wire_heartbeat h;
    memset(&h, 0, sizeof h);
    snprintf(h.peer_id, sizeof h.peer_id, "%s", c->id);
    h.role = c->role;
    wire_rx rx = {0};
    for (;;) {
        pthread_mutex_lock(&c->mu);
        snprintf(h.state, sizeof h.state, "%s", c->state);
        pthread_mutex_unlock(&c->mu);
        h.seq++;
        wire_out o;
        if (wire_encode_heartbeat(&h, &o, NULL) == 0) {
            size_t nf = wire_out_nframes(&o);
            for (size_t i = 0; i < nf; i++) {
                wire_frame f = wire_out_frame(&o, i);
                zmq_send(hs, f.data, f.len, (i + 1 < nf ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
            }
            wire_out_free(&o);
        }
        zmq_pollitem_t it[2] = {{pipe, 0, ZMQ_POLLIN, 0}, {hs, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(it, 2, c->hb_interval_ms);
        if (n > 0 && (it[0].revents & ZMQ_POLLIN)) break;
        if (n > 0 && (it[1].revents & ZMQ_POLLIN)) /* replies to heartbeats: only errors */
            while (wire_rx_recv(hs, &rx, ZMQ_DONTWAIT, NULL) == 1) {
                wire_msg m;
                wire_error_msg em;
                if (wire_parse(rx.views, rx.n, &m, NULL, NULL) != 0) continue;
                if (wire_decode_error(&m, &em, NULL, NULL) == 0 && !strcmp(em.reason, "no_hello"))
                    __atomic_store_n(&c->need_rehello, 1, __ATOMIC_RELEASE); /* a restarted broker */
                wire_msg_free(&m);
            }
    }
    wire_rx_free(&rx);
    return NULL;
}

/* ---------------------------------------------------------------- connect / close */

int broker_client_connect(broker_client **out, const char *endpoint, int role, const char *peer_id, int timeout_ms,
                          rlhf_error *err) {
    return broker_client_connect_with(out, endpoint, role, peer_id, NULL, timeout_ms, err);
}

static int client_connect(broker_client **out, const char *endpoint, int role, const char *peer_id,
                          const char *credentials, const broker_credential *cred, int timeout_ms, rlhf_error *err);

int broker_client_connect_with(broker_client **out, const char *endpoint, int role, const char *peer_id,
                               const char *credentials, int timeout_ms, rlhf_error *err) {
    return client_connect(out, endpoint, role, peer_id, credentials, NULL, timeout_ms, err);
}

int broker_client_connect_cred(broker_client **out, const char *endpoint, int role, const char *peer_id,
                               const broker_credential *cred, int timeout_ms, rlhf_error *err) {
    return client_connect(out, endpoint, role, peer_id, NULL, cred, timeout_ms, err);
}

/* credentials: a directory to load ROLE's pair from; cred: a pair already loaded; neither: no security. */
static int client_connect(broker_client **out, const char *endpoint, int role, const char *peer_id,
                          const char *credentials, const broker_credential *cred, int timeout_ms, rlhf_error *err) {
    *out = NULL;
    if (!peer_id || !peer_id[0] || strlen(peer_id) >= WIRE_ID_MAX)
        return rlhf_error_set(err, RLHF_EINVAL, "peer_id", "must be 1..%d bytes", WIRE_ID_MAX - 1);
    if (strlen(endpoint) >= 256) return rlhf_error_set(err, RLHF_EINVAL, "endpoint", "too long");
    broker_client *c = calloc(1, sizeof *c);
    if (!c) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    snprintf(c->id, sizeof c->id, "%s", peer_id);
    snprintf(c->state, sizeof c->state, "idle");
    c->role = role;
    c->next_request_id = 1;
    pthread_mutex_init(&c->mu, NULL);
    int rc;
    if (credentials) {
        if ((rc = broker_credential_load(&c->cred, credentials, role, err))) {
            pthread_mutex_destroy(&c->mu);
            free(c);
            return rc;
        }
        c->secure = 1;
    } else if (cred) {
        c->cred = *cred;
        c->secure = 1;
    }
    if (role == WIRE_ROLE_GENERATOR) broker_keep_freed_memory(); /* weights arrive here: no page faults per version */
    c->zctx = zmq_ctx_new();
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (!c->sock) {
        rc = RLHF_FAIL(err, RLHF_ESYS, "zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int linger = 2000, hwm = 4096;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (c->secure && broker_credential_apply(c->sock, &c->cred, endpoint) != 0) {
        rc = RLHF_FAIL(err, RLHF_ESYS, "security options: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_connect(c->sock, endpoint) != 0) {
        rc = rlhf_error_set(err, RLHF_EINVAL, endpoint, "cannot connect: %s", zmq_strerror(errno));
        goto fail;
    }
    wire_hello h;
    hello_fill(c, &h);
    wire_out o;
    rc = wire_encode_hello(&h, &o, err);
    if (rc) goto fail;
    rc = send_out(c, &o, err);
    if (rc) goto fail;
    rc = pump(c, WIRE_WELCOME, timeout_ms, err);
    if (rc < 0) goto fail;
    if (rc == 0) {
        rc = rlhf_error_set(err, RLHF_ETIMEOUT, endpoint, "no broker answered HELLO within %d ms%s", timeout_ms,
                            c->secure ? " (or it refused this process's credential)"
                                      : " (a broker that requires credentials does not answer a peer without)");
        goto fail;
    }
    c->hb_interval_ms = c->welcome.heartbeat_interval_ms ? c->welcome.heartbeat_interval_ms : 500;
    snprintf(c->hb_pipe_name, sizeof c->hb_pipe_name, "inproc://hb-%p", (void *)c);
    int l0 = 0;
    c->hb_pipe = zmq_socket(c->zctx, ZMQ_PAIR);
    c->hb_thread_pipe = zmq_socket(c->zctx, ZMQ_PAIR);
    c->hb_sock = zmq_socket(c->zctx, ZMQ_DEALER);
    zmq_setsockopt(c->hb_pipe, ZMQ_LINGER, &l0, sizeof l0);
    zmq_setsockopt(c->hb_thread_pipe, ZMQ_LINGER, &l0, sizeof l0);
    zmq_setsockopt(c->hb_sock, ZMQ_LINGER, &l0, sizeof l0);
    if (c->secure) broker_credential_apply(c->hb_sock, &c->cred, endpoint);
    if (zmq_bind(c->hb_pipe, c->hb_pipe_name) != 0 || zmq_connect(c->hb_thread_pipe, c->hb_pipe_name) != 0 ||
        zmq_connect(c->hb_sock, endpoint) != 0) {
        rc = RLHF_FAIL(err, RLHF_ESYS, "heartbeat sockets: %s", zmq_strerror(errno));
        goto fail;
    }
    if (pthread_create(&c->hb_thread, NULL, hb_main, c) != 0) {
        rc = RLHF_FAIL(err, RLHF_ESYS, "cannot start the heartbeat thread");
        goto fail;
    }
    c->hb_running = 1;
    *out = c;
    return 0;
fail:
    {
        int l0 = 0;
        if (c->sock) zmq_setsockopt(c->sock, ZMQ_LINGER, &l0, sizeof l0);
    }
    broker_client_close(&c);
    return rc;
}

void broker_client_close(broker_client **cp) {
    if (!cp || !*cp) return;
    broker_client *c = *cp;
    if (c->hb_running) {
        zmq_send(c->hb_pipe, "x", 1, 0);
        pthread_join(c->hb_thread, NULL);
    }
    if (c->hb_pipe) zmq_close(c->hb_pipe);
    if (c->hb_thread_pipe) zmq_close(c->hb_thread_pipe);
    if (c->hb_sock) zmq_close(c->hb_sock);
    if (c->sock) zmq_close(c->sock);
    if (c->pub) pub_buf_unref(NULL, c->pub); /* queued chunks keep it alive until sent (linger) */
    if (c->zctx) zmq_ctx_term(c->zctx);
    wire_rx_free(&c->rx);
    wire_weights_free(&c->pending_weights);
    wire_rx_free(&c->pending_rx);
    wire_weights_shm_free(&c->pending_shm);
    for (int i = 0; i < 2; i++)
        if (c->host_files[i][0]) unlink(c->host_files[i]);
    if (c->shm_buf) munmap(c->shm_buf, c->shm_buf_cap);
    while (c->groups.len) {
        wire_rollout_group g;
        fifo_pop(&c->groups, &g);
        wire_rollout_group_free(&g);
    }
    free(c->groups.items);
    for (size_t i = 0; i < c->n_batches; i++) wire_prompt_batch_free(&c->batches[i]);
    free(c->batches);
    json_decref(c->stats_reply);
    pthread_mutex_destroy(&c->mu);
    broker_credential_clear(&c->cred);
    free(c);
    *cp = NULL;
}

const wire_welcome *broker_client_welcome(const broker_client *c) { return &c->welcome; }

uint64_t broker_client_rejections(const broker_client *c, rlhf_error *last) {
    if (last) *last = c->last_rejection;
    return c->errors_received;
}
int broker_client_stopped(const broker_client *c) { return c->stopped; }
const char *broker_client_stop_reason(const broker_client *c) { return c->stop_reason; }

void broker_client_set_state(broker_client *c, const char *state) {
    pthread_mutex_lock(&c->mu);
    snprintf(c->state, sizeof c->state, "%s", state);
    pthread_mutex_unlock(&c->mu);
}

/* ---------------------------------------------------------------- generator side */

int broker_client_request_prompts(broker_client *c, uint32_t n, wire_prompt_batch *out, int timeout_ms,
                                  rlhf_error *err) {
    memset(out, 0, sizeof *out);
    if (n == 0 || n > WIRE_MAX_BATCH) return rlhf_error_set(err, RLHF_EINVAL, "n", "must be 1..%d", WIRE_MAX_BATCH);
    /* One request in flight at a time: after a timeout the broker still holds it, so wait on, don't resend. */
    if (!c->n_batches && !c->request_in_flight) {
        wire_prompt_request r = {c->next_request_id++, n};
        wire_out o;
        int rc = wire_encode_prompt_request(&r, &o, err);
        if (rc) return rc;
        rc = send_out(c, &o, err);
        if (rc) return rc;
        c->request_in_flight = 1;
    }
    /* New weights end the wait early: a broker with max_generation_lag holds the request until this
     * generator acknowledges fresh enough weights, which the caller does between calls. */
    uint64_t arrivals = c->weights_arrivals;
    int rc = pump_ex(c, WIRE_PROMPT_BATCH, timeout_ms, c->wake_on_weights ? &arrivals : NULL, err);
    if (rc < 0) return rc;
    if (rc == 0 && c->weights_arrivals != arrivals)
        return rlhf_error_set(err, RLHF_ETIMEOUT, c->endpoint, "new weights arrived before the prompt batch");
    if (rc == 0) return rlhf_error_set(err, RLHF_ETIMEOUT, c->endpoint, "no prompt batch within %d ms", timeout_ms);
    *out = c->batches[0];
    memmove(c->batches, c->batches + 1, (c->n_batches - 1) * sizeof *c->batches);
    c->n_batches--;
    return 0;
}

void broker_client_wake_on_weights(broker_client *c, int on) { c->wake_on_weights = on; }

uint64_t broker_client_weights_shm(const broker_client *c, uint64_t *failed, rlhf_error *last_failure) {
    if (failed) *failed = c->shm_failed;
    if (last_failure) *last_failure = c->shm_last_error;
    return c->shm_taken;
}

int broker_client_push_group(broker_client *c, const wire_rollout_group *g, rlhf_error *err) {
    if (c->stopped) return rlhf_error_set(err, RLHF_ESTATE, c->endpoint, "the broker stopped");
    wire_out o;
    int rc = wire_encode_rollout_group(g, &o, err);
    if (rc) return rc;
    return send_out(c, &o, err);
}

/* The pending version is a WEIGHTS_SHM: map the file and check it. 1: taken (out->data is the mapping, or
 * dst holding a copy); 0: the file failed, the broker was told (WEIGHTS_SHM_FAILED) and sends the bytes;
 * < 0: the caller's error (dst too small: the version stays pending). */
static int take_shm(broker_client *c, wire_weights *out, uint8_t *dst, size_t dst_cap, rlhf_error *err) {
    wire_weights_shm *x = &c->pending_shm;
    if (dst && dst_cap < x->w.nbytes)
        return rlhf_error_set(err, RLHF_EINVAL, c->endpoint, "weights version %llu has %llu bytes, buffer holds %zu",
                              (unsigned long long)x->w.version, (unsigned long long)x->w.nbytes, dst_cap);
    const char *why = "";
    rlhf_error e;
    rlhf_error_clear(&e);
    int rc = 0;
    if (c->shm_buf_cap < x->w.nbytes) {
        /* one buffer for every version, its pages faulted in once (huge pages where the kernel gives them):
         * a fresh mapping of each version's file cost a page fault per 4 KiB, most of the fan-out time */
        if (c->shm_buf) munmap(c->shm_buf, c->shm_buf_cap);
        c->shm_buf_cap = (size_t)x->w.nbytes;
        c->shm_buf = mmap(NULL, c->shm_buf_cap ? c->shm_buf_cap : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
        if (c->shm_buf == MAP_FAILED) {
            c->shm_buf = NULL;
            c->shm_buf_cap = 0;
            why = "memory";
            rc = rlhf_error_set(&e, RLHF_ENOMEM, x->path, "no memory for a %llu-byte weights buffer",
                                (unsigned long long)x->w.nbytes);
        } else {
            madvise(c->shm_buf, c->shm_buf_cap, MADV_HUGEPAGE);
        }
    }
    if (!rc) rc = broker_shm_read_verify(x, c->shm_buf, &why, &e);
    if (rc) {
        c->shm_failed++;
        c->shm_last_error = e;
        wire_out o;
        if (!c->stopped && wire_encode_weights_shm_failed(x->w.version, why, &o, NULL) == 0) send_out(c, &o, NULL);
        wire_weights_shm_free(x);
        c->pending_is_shm = 0;
        c->has_pending_weights = 0;
        return 0;
    }
    *out = x->w;
    memset(&x->w, 0, sizeof x->w);
    if (dst) { /* into the caller's parameter memory */
        if (out->nbytes) memcpy(dst, c->shm_buf, out->nbytes);
        out->data = dst;
    } else { /* the client's buffer: valid until the next take on this client */
        out->data = c->shm_buf;
    }
    c->shm_taken++;
    wire_weights_shm_free(x);
    c->pending_is_shm = 0;
    c->has_pending_weights = 0;
    return 1;
}

/* A version taken as bytes on a host other than the broker's: written for this host's other generators
 * before it is acknowledged (the broker names the file to them only after the acknowledgement). A
 * failure is reported once in a while and costs only that: a sibling that cannot open the file says so
 * and gets the bytes. */
static void write_host_file(broker_client *c, const wire_weights *w) {
    char path[WIRE_SHM_PATH_MAX];
    rlhf_error e;
    rlhf_error_clear(&e);
    if (broker_host_file_write(c->welcome.host_files_dir, w->version, w->data, w->nbytes, path, sizeof path, &e)) {
        c->host_file_errors++;
        if ((c->host_file_errors & (c->host_file_errors - 1)) == 0)
            fprintf(stderr, "broker client %s: weights file for this host's generators (error %llu): %s: %s\n", c->id,
                    (unsigned long long)c->host_file_errors, e.where, e.msg);
        return;
    }
    if (c->host_files[0][0] && strcmp(c->host_files[0], path) != 0) unlink(c->host_files[0]);
    memcpy(c->host_files[0], c->host_files[1], sizeof c->host_files[0]);
    snprintf(c->host_files[1], sizeof c->host_files[1], "%s", path);
    c->host_files_written++;
}

static int take_weights(broker_client *c, wire_weights *out, uint8_t *dst, size_t dst_cap, int timeout_ms,
                        rlhf_error *err) {
    memset(out, 0, sizeof *out);
    double deadline = rlhf_now() + (timeout_ms < 0 ? 1e9 : timeout_ms / 1000.0);
again:;
    int rc = pump(c, WIRE_WEIGHTS, timeout_ms, err);
    if (rc < 0 && !(rc == RLHF_ESTATE && c->has_pending_weights)) return rc;
    if (!c->has_pending_weights) return 0;
    if (c->pending_is_shm) {
        rc = take_shm(c, out, dst, dst_cap, err);
        if (rc < 0) return rc;
        if (rc == 1) goto ack;
        /* the file could not be used: the broker sends the bytes; wait for them in what is left */
        double left = deadline - rlhf_now();
        timeout_ms = left > 0 ? (int)(left * 1000.0) : 0;
        goto again;
    }
    wire_weights *w = &c->pending_weights;
    if (dst && dst_cap < w->nbytes)
        return rlhf_error_set(err, RLHF_EINVAL, c->endpoint, "weights version %llu has %llu bytes, buffer holds %zu",
                              (unsigned long long)w->version, (unsigned long long)w->nbytes, dst_cap);
    uint8_t *buf = dst;
    if (!buf && !(buf = malloc(w->nbytes ? w->nbytes : 1)))
        return rlhf_error_set(err, RLHF_ENOMEM, c->endpoint, "out of memory for %llu weight bytes",
                              (unsigned long long)w->nbytes);
    /* frames: [0] header, [1] metadata, [2..] chunks of chunk_bytes */
    for (size_t i = 2; i < c->pending_rx.n; i++)
        memcpy(buf + (i - 2) * (size_t)w->chunk_bytes, c->pending_rx.views[i].data, c->pending_rx.views[i].len);
    *out = *w;
    out->data = buf;
    out->owned_data = dst ? NULL : buf;
    memset(w, 0, sizeof *w);
    c->has_pending_weights = 0;
    if (c->has_welcome && c->welcome.host_files_dir[0]) write_host_file(c, out);
ack:;
    /* Tell the broker this version is consumed: it sends the next only then (one version in flight). */
    wire_out o;
    if (!c->stopped && wire_encode_weights_ack(out->version, &o, NULL) == 0) send_out(c, &o, NULL);
    return 1;
}

int broker_client_poll_weights(broker_client *c, wire_weights *out, int timeout_ms, rlhf_error *err) {
    return take_weights(c, out, NULL, 0, timeout_ms, err);
}

int broker_client_poll_weights_into(broker_client *c, wire_weights *out, void *dst, size_t dst_cap, int timeout_ms,
                                    rlhf_error *err) {
    if (!dst) return rlhf_error_set(err, RLHF_EINVAL, c->endpoint, "poll_weights_into: no buffer");
    return take_weights(c, out, dst, dst_cap, timeout_ms, err);
}

/* ---------------------------------------------------------------- updater side */

int broker_client_grant_credit(broker_client *c, uint32_t n, rlhf_error *err) {
    wire_credit cr = {n};
    wire_out o;
    int rc = wire_encode_credit(&cr, &o, err);
    if (rc) return rc;
    rc = send_out(c, &o, err);
    if (!rc) c->credit_outstanding += n;
    return rc;
}

int broker_client_recv_group(broker_client *c, wire_rollout_group *out, int timeout_ms, rlhf_error *err) {
    memset(out, 0, sizeof *out);
    if (!c->groups.len) {
        int rc = pump(c, WIRE_ROLLOUT_GROUP, timeout_ms, err);
        if (rc <= 0) return rc;
    }
    fifo_pop(&c->groups, out);
    return 1;
}

/* The send buffer for weights: ZeroMQ sends the chunks straight from it (no copy into fresh 4 MiB
 * messages, no page faults) and drops one reference per chunk when the bytes are out; the client holds
 * one more. It is reused by the next publish once only the client's reference is left. */
typedef struct pub_buf {
    uint8_t *data;
    size_t cap;
    int refs; /* atomic */
} pub_buf;

static void pub_buf_unref(void *data, void *hint) {
    (void)data;
    pub_buf *b = hint;
    if (__atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(b->data);
        free(b);
    }
}

int broker_client_publish_weights(broker_client *c, const wire_weights *w, rlhf_error *err) {
    pub_buf *b = c->pub;
    if (b && (__atomic_load_n(&b->refs, __ATOMIC_ACQUIRE) != 1 || b->cap < w->nbytes)) {
        pub_buf_unref(NULL, b); /* still being sent, or too small: let the last chunk free it */
        b = c->pub = NULL;
    }
    if (!b) {
        b = calloc(1, sizeof *b);
        if (!b || !(b->data = malloc(w->nbytes ? w->nbytes : 1))) {
            free(b);
            return rlhf_error_set(err, RLHF_ENOMEM, c->endpoint, "out of memory for a %llu-byte weights buffer",
                                  (unsigned long long)w->nbytes);
        }
        b->cap = w->nbytes;
        b->refs = 1;
        c->pub = b;
    }
    if (w->nbytes) memcpy(b->data, w->data, w->nbytes);
    wire_weights copy = *w;
    copy.data = b->data;
    wire_out o;
    int rc = wire_encode_weights(&copy, &o, err);
    if (rc) return rc;
    size_t nf = wire_out_nframes(&o);
    for (size_t i = 0; i < nf && !rc; i++) {
        wire_frame f = wire_out_frame(&o, i);
        int flags = i + 1 < nf ? ZMQ_SNDMORE : 0;
        if (i < 2) { /* header and metadata: small, copied */
            if (zmq_send(c->sock, f.data, f.len, flags) < 0) rc = -1;
            continue;
        }
        zmq_msg_t m;
        __atomic_add_fetch(&b->refs, 1, __ATOMIC_ACQ_REL);
        zmq_msg_init_data(&m, (void *)f.data, f.len, pub_buf_unref, b);
        if (zmq_msg_send(&m, c->sock, flags) < 0) {
            zmq_msg_close(&m); /* drops the reference */
            rc = -1;
        }
    }
    wire_out_free(&o);
    if (rc) return rlhf_error_set(err, RLHF_EIO, c->endpoint, "sending weights: %s", zmq_strerror(errno));
    return 0;
}

int broker_client_send_prompt_stats(broker_client *c, const wire_prompt_stats *st, rlhf_error *err) {
    wire_out o;
    int rc = wire_encode_prompt_stats(st, &o, err);
    if (rc) return rc;
    return send_out(c, &o, err);
}

/* ---------------------------------------------------------------- anyone */

int broker_client_control(broker_client *c, int command, const char *reason, rlhf_error *err) {
    wire_control ctl = {command, ""};
    snprintf(ctl.reason, sizeof ctl.reason, "%s", reason ? reason : "");
    wire_out o;
    int rc = wire_encode_control(&ctl, &o, err);
    if (rc) return rc;
    return send_out(c, &o, err);
}

int broker_client_get_stats(broker_client *c, json_t **out, int timeout_ms, rlhf_error *err) {
    *out = NULL;
    json_decref(c->stats_reply);
    c->stats_reply = NULL;
    wire_out o;
    int rc = wire_encode_stats_request(&o, err);
    if (rc) return rc;
    rc = send_out(c, &o, err);
    if (rc) return rc;
    rc = pump(c, WIRE_STATS, timeout_ms, err);
    if (rc < 0) return rc;
    if (rc == 0) return rlhf_error_set(err, RLHF_ETIMEOUT, c->endpoint, "no STATS reply within %d ms", timeout_ms);
    *out = c->stats_reply;
    c->stats_reply = NULL;
    return 0;
}
