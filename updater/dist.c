/* updater/dist.c — data-parallel policy updaters over MPI (see updater/updater.h, "data parallelism").
 *
 * `updaters.count = U` makes the launcher start the updater under `mpirun -np U`. Rank 0 is the
 * updater the rest of the system knows (broker client, scoring, metrics, checkpoints, publishing);
 * ranks 1..U-1 are followers that hold the same policy and optimizer. Each step rank 0 broadcasts the
 * step's scored groups (what the RL step reads of them: tokens, behaviour log-probs, totals, which
 * samples were scored), every rank runs the forward/backward passes of its share of the
 * samples (an equal split), the gradients and the step's statistics are summed across ranks, and every rank takes
 * the same AdamW step on the same summed gradient — so their weights stay identical without ever
 * being sent.
 *
 * Reproducibility: the sums use a non-commutative user-defined MPI operation, which MPI must apply in
 * rank order; with the same U, the same thread counts and kernels, a run's weights are the same
 * bit for bit (a different U changes the order of the partial sums, so the last bits).
 *
 * Without mpirun (OMPI_COMM_WORLD_SIZE unset), MPI is never initialised and every call is a no-op on
 * one rank, so the single updater pays nothing. */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "updater/updater_int.h"

/* MPI counts are int, and a bucket is also the unit MPI pipelines. 16 MB (updaters.bucket_mb) is a
 * choice, not yet a measurement: bench/bench_dist_allreduce.c sweeps 1-256 MB on a quiet machine */
#define DIST_DEFAULT_BUCKET ((size_t)4 << 20)

struct updater_dist {
    int rank, size;
    int local_size;   /* ranks on this host (they share its cores) */
    size_t bucket;    /* floats per all-reduce of the gradient sum */
    int initialised; /* 1: MPI_Init was called here, MPI_Finalize is ours too */
    int thread_multiple; /* MPI_THREAD_MULTIPLE provided: scoring threads may talk to other ranks */
    int scoring_servers; /* rank 0: the followers run scoring servers (updater_scorer_serve) to stop */
    MPI_Comm score_comm; /* scoring requests and replies: a communicator of their own, so they never match
                            the step's collectives on MPI_COMM_WORLD */
    MPI_Op sum_f32, sum_f64, max_f64;
};

/* rank-ordered sums: MPI applies a non-commutative op as in[0] op in[1] op ... in rank order */
static void op_sum_f32(void *in, void *inout, int *len, MPI_Datatype *dt) {
    (void)dt;
    const float *a = in;
    float *b = inout;
    for (int i = 0; i < *len; i++) b[i] = a[i] + b[i];
}
static void op_sum_f64(void *in, void *inout, int *len, MPI_Datatype *dt) {
    (void)dt;
    const double *a = in;
    double *b = inout;
    for (int i = 0; i < *len; i++) b[i] = a[i] + b[i];
}
static void op_max_f64(void *in, void *inout, int *len, MPI_Datatype *dt) {
    (void)dt;
    const double *a = in;
    double *b = inout;
    for (int i = 0; i < *len; i++)
        if (a[i] > b[i]) b[i] = a[i];
}

int updater_dist_create(updater_dist **out, rlhf_error *err) {
    *out = NULL;
    updater_dist *d = calloc(1, sizeof *d);
    if (!d) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    d->size = 1;
    d->local_size = 1;
    d->bucket = DIST_DEFAULT_BUCKET;
    const char *world = getenv("OMPI_COMM_WORLD_SIZE");
    if (world && atoi(world) > 1) {
        int provided = 0;
        /* the trainer thread runs the step's collectives while rank 0's scoring threads exchange
         * requests with the other ranks (updater_scorer_attach_ranks): several threads call MPI */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
            free(d);
            return RLHF_FAIL(err, RLHF_EIO, "MPI_Init_thread failed (updaters.count > 1 runs under mpirun)");
        }
        d->initialised = 1;
        d->thread_multiple = provided >= MPI_THREAD_MULTIPLE;
        MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &d->size);
        /* errors come back as codes (and are then fatal for the job) rather than aborting inside MPI */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Op_create(op_sum_f32, 0, &d->sum_f32);
        MPI_Op_create(op_sum_f64, 0, &d->sum_f64);
        MPI_Op_create(op_max_f64, 0, &d->max_f64);
        if (MPI_Comm_dup(MPI_COMM_WORLD, &d->score_comm) != MPI_SUCCESS) d->thread_multiple = 0;
        else MPI_Comm_set_errhandler(d->score_comm, MPI_ERRORS_RETURN);
        MPI_Comm node;
        if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
            MPI_Comm_size(node, &d->local_size);
            MPI_Comm_free(&node);
        }
    }
    *out = d;
    return 0;
}

void updater_dist_destroy(updater_dist **dp) {
    updater_dist *d = *dp;
    if (!d) return;
    if (d->initialised) {
        if (d->score_comm != MPI_COMM_NULL && d->score_comm != 0) MPI_Comm_free(&d->score_comm);
        MPI_Op_free(&d->sum_f32);
        MPI_Op_free(&d->sum_f64);
        MPI_Op_free(&d->max_f64);
        MPI_Finalize();
    }
    free(d);
    *dp = NULL;
}

void updater_dist_describe(char *buf, size_t cap) {
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    /* one of the calls MPI allows before MPI_Init */
    MPI_Get_library_version(v, &n);
    char *nl = strchr(v, ',');
    if (nl) *nl = 0;
    snprintf(buf, cap, "%s", v);
}

void updater_dist_abort(updater_dist *d, int status) {
    if (d && d->size > 1) MPI_Abort(MPI_COMM_WORLD, status);
    exit(status);
}

int updater_dist_rank(const updater_dist *d) { return d ? d->rank : 0; }
int updater_dist_size(const updater_dist *d) { return d ? d->size : 1; }

static int mpi_fail(rlhf_error *err, const char *what, int code) {
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(code, s, &n);
    return rlhf_error_set(err, RLHF_EIO, "updater (MPI)", "%s failed: %.*s", what, n, s);
}

int updater_dist_threads(const updater_dist *d, int configured) {
    /* an explicit model.threads is per rank (the user's choice); the default (0: every core) would have
     * each rank of a host start a thread per core, so the host's cores are divided between its ranks */
    if (!d || d->size < 2 || configured > 0) return configured;
    int t = (int)sysconf(_SC_NPROCESSORS_ONLN) / (d->local_size > 0 ? d->local_size : 1);
    return t < 1 ? 1 : t;
}

void updater_dist_set_bucket(updater_dist *d, size_t floats) {
    if (d) d->bucket = floats < 1024 ? 1024 : floats > ((size_t)1 << 28) ? (size_t)1 << 28 : floats;
}

/* Buckets: each piece's sum is still in rank order, so the result does not depend on the bucket size */
int updater_dist_sum_f32(updater_dist *d, float *buf, size_t n, rlhf_error *err) {
    if (!d || d->size < 2) return 0;
    for (size_t o = 0; o < n; o += d->bucket) {
        int c = (int)(n - o < d->bucket ? n - o : d->bucket);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + o, c, MPI_FLOAT, d->sum_f32, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Allreduce (gradients)", rc);
    }
    return 0;
}

int updater_dist_sum_f64(updater_dist *d, double *buf, size_t n, rlhf_error *err) {
    if (!d || d->size < 2) return 0;
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, d->sum_f64, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Allreduce (statistics)", rc);
}

int updater_dist_max_f64(updater_dist *d, double *buf, size_t n, rlhf_error *err) {
    if (!d || d->size < 2) return 0;
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, d->max_f64, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Allreduce (statistics)", rc);
}

int updater_dist_bcast(updater_dist *d, void **buf, size_t *n, rlhf_error *err) {
    if (!d || d->size < 2) return 0;
    unsigned long long len = d->rank == 0 ? (unsigned long long)*n : 0;
    int rc = MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast", rc);
    if (d->rank != 0) {
        *buf = malloc(len ? len : 1);
        *n = (size_t)len;
        if (!*buf) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (size_t o = 0; o < len; o += INT_MAX / 2) {
        int c = (int)(len - o < INT_MAX / 2 ? len - o : INT_MAX / 2);
        rc = MPI_Bcast((char *)*buf + o, c, MPI_BYTE, 0, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Bcast", rc);
    }
    return 0;
}

/* ---------------------------------------------------------------- the step's groups on the wire */

typedef struct packer {
    unsigned char *p;
    size_t n, cap;
    int oom;
} packer;

static void put(packer *w, const void *x, size_t n) {
    if (w->oom) return;
    if (w->n + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 4096;
        while (cap < w->n + n) cap *= 2;
        unsigned char *q = realloc(w->p, cap);
        if (!q) {
            w->oom = 1;
            return;
        }
        w->p = q;
        w->cap = cap;
    }
    memcpy(w->p + w->n, x, n);
    w->n += n;
}

int updater_dist_pack_groups(scored_group **groups, int n, void **out, size_t *out_n) {
    packer w = {0};
    int32_t hdr = n;
    put(&w, &hdr, sizeof hdr);
    for (int g = 0; g < n; g++) {
        const wire_rollout_group *x = &groups[g]->g;
        uint64_t tot = wire_rollout_group_total_tokens(x);
        /* flags: 1 unscored samples follow, 2 per-token versions follow */
        uint32_t h[3] = {x->k, x->n_prompt_tokens, (groups[g]->unscored != NULL) | (x->token_versions != NULL) << 1};
        put(&w, h, sizeof h);
        put(&w, &x->policy_version, sizeof x->policy_version);
        put(&w, x->prompt_tokens, sizeof(int32_t) * x->n_prompt_tokens);
        put(&w, x->n_tokens, sizeof(uint32_t) * x->k);
        put(&w, x->tokens, sizeof(int32_t) * tot);
        put(&w, x->logprobs, sizeof(float) * tot);
        put(&w, groups[g]->total, sizeof(float) * x->k);
        if (groups[g]->unscored) put(&w, groups[g]->unscored, x->k);
        if (x->token_versions) put(&w, x->token_versions, sizeof(uint64_t) * tot);
    }
    if (w.oom) {
        free(w.p);
        return RLHF_ENOMEM;
    }
    *out = w.p;
    *out_n = w.n;
    return 0;
}

typedef struct unpacker {
    const unsigned char *p;
    size_t n, at;
    int bad;
} unpacker;

static void *take(unpacker *r, size_t n) {
    if (r->bad || r->n - r->at < n) {
        r->bad = 1;
        return NULL;
    }
    void *q = malloc(n ? n : 1);
    if (!q) {
        r->bad = 1;
        return NULL;
    }
    memcpy(q, r->p + r->at, n);
    r->at += n;
    return q;
}

static int get(unpacker *r, void *x, size_t n) {
    if (r->bad || r->n - r->at < n) return r->bad = 1, -1;
    memcpy(x, r->p + r->at, n);
    r->at += n;
    return 0;
}

int updater_dist_unpack_groups(const void *buf, size_t len, scored_group ***out, int *out_n) {
    unpacker r = {buf, len, 0, 0};
    int32_t n = 0;
    *out = NULL;
    *out_n = 0;
    if (get(&r, &n, sizeof n) || n < 0 || n > 1 << 20) return RLHF_ECORRUPT;
    scored_group **gs = calloc((size_t)(n ? n : 1), sizeof *gs);
    if (!gs) return RLHF_ENOMEM;
    int g = 0;
    for (; g < n && !r.bad; g++) {
        scored_group *s = gs[g] = calloc(1, sizeof *s);
        if (!s) {
            r.bad = 1;
            break;
        }
        uint32_t h[3];
        if (get(&r, h, sizeof h) || get(&r, &s->g.policy_version, sizeof s->g.policy_version)) break;
        s->g.k = h[0];
        s->g.n_prompt_tokens = h[1];
        s->g.prompt_tokens = take(&r, sizeof(int32_t) * h[1]);
        s->g.n_tokens = take(&r, sizeof(uint32_t) * h[0]);
        if (r.bad) break;
        uint64_t tot = wire_rollout_group_total_tokens(&s->g);
        s->g.tokens = take(&r, sizeof(int32_t) * tot);
        s->g.logprobs = take(&r, sizeof(float) * tot);
        s->total = take(&r, sizeof(float) * h[0]);
        if (h[2] & 1) s->unscored = take(&r, h[0]);
        if (h[2] & 2) s->g.token_versions = take(&r, sizeof(uint64_t) * tot);
    }
    if (r.bad || r.at != len) {
        for (int i = 0; i < n; i++)
            if (gs[i]) updater_scored_group_free(gs[i]);
        free(gs);
        return RLHF_ECORRUPT;
    }
    *out = gs;
    *out_n = n;
    return 0;
}

/* ---------------------------------------------------------------- scoring on every rank
 *
 * Rank 0 receives every group; with updaters.distributed_scoring its scorer also has one thread per
 * follower rank that sends batches of raw groups to that rank's scoring server and takes back the
 * rewards (updater/scoring.c). Messages on score_comm, tag 0:
 *   request  u8 1 (score), i64 step, i32 n, then per group: u32 frames, per frame u64 length + bytes
 *            (the group as a ROLLOUT_GROUP wire message, every field the reward sources read);
 *   stop     u8 2;
 *   reply    u8 failed, [rlhf_error when failed], then per group its rewards (pack_scores below).
 * Structs go as their bytes: every rank runs the same build (mpirun starts one binary). */

int updater_dist_scoring_possible(const updater_dist *d) { return d && d->size > 1 && d->thread_multiple; }

void updater_dist_set_scoring_servers(updater_dist *d, int on) {
    if (d) d->scoring_servers = on;
}

int updater_dist_send(updater_dist *d, int to, const void *buf, size_t n, rlhf_error *err) {
    if (n > INT_MAX) return rlhf_error_set(err, RLHF_EINVAL, "updater (MPI)", "a scoring message of %zu bytes", n);
    int rc = MPI_Send(buf, (int)n, MPI_BYTE, to, 0, d->score_comm);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Send (scoring)", rc);
}

int updater_dist_recv(updater_dist *d, int from, void **buf, size_t *n, rlhf_error *err) {
    MPI_Status st;
    int rc = MPI_Probe(from < 0 ? MPI_ANY_SOURCE : from, 0, d->score_comm, &st), count = 0;
    if (rc != MPI_SUCCESS) return mpi_fail(err, "MPI_Probe (scoring)", rc);
    MPI_Get_count(&st, MPI_BYTE, &count);
    *buf = malloc(count > 0 ? (size_t)count : 1);
    if (!*buf) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    rc = MPI_Recv(*buf, count, MPI_BYTE, st.MPI_SOURCE, 0, d->score_comm, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        free(*buf);
        *buf = NULL;
        return mpi_fail(err, "MPI_Recv (scoring)", rc);
    }
    *n = (size_t)count;
    return 0;
}

void updater_dist_stop_scoring_servers(updater_dist *d) {
    if (!d || d->rank != 0 || !d->scoring_servers) return;
    d->scoring_servers = 0;
    unsigned char stop = DIST_SCORE_STOP;
    rlhf_error err = {0};
    for (int r = 1; r < d->size; r++)
        if (updater_dist_send(d, r, &stop, 1, &err)) fprintf(stderr, "updater: %s: %s\n", err.where, err.msg);
}

int updater_dist_pack_score_request(long step, scored_group **gs, int n, void **out, size_t *out_n, rlhf_error *err) {
    packer w = {0};
    unsigned char cmd = DIST_SCORE_REQUEST;
    int64_t st = step;
    int32_t n32 = n;
    put(&w, &cmd, 1);
    put(&w, &st, 8);
    put(&w, &n32, 4);
    for (int g = 0; g < n; g++) {
        wire_out o;
        int rc = wire_encode_rollout_group(&gs[g]->g, &o, err);
        if (rc) {
            free(w.p);
            return rc;
        }
        uint32_t nf = (uint32_t)wire_out_nframes(&o);
        put(&w, &nf, 4);
        for (uint32_t f = 0; f < nf; f++) {
            wire_frame fr = wire_out_frame(&o, f);
            uint64_t len = fr.len;
            put(&w, &len, 8);
            put(&w, fr.data, fr.len);
        }
        wire_out_free(&o);
    }
    if (w.oom) {
        free(w.p);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    *out = w.p;
    *out_n = w.n;
    return 0;
}

int updater_dist_unpack_score_request(const void *buf, size_t len, long *step, scored_group ***out, int *out_n,
                                      rlhf_error *err) {
    unpacker r = {buf, len, 0, 0};
    unsigned char cmd = 0;
    int64_t st = 0;
    int32_t n = 0;
    *out = NULL;
    *out_n = 0;
    if (get(&r, &cmd, 1) || cmd != DIST_SCORE_REQUEST || get(&r, &st, 8) || get(&r, &n, 4) || n < 0 || n > 1 << 16)
        return rlhf_error_set(err, RLHF_ECORRUPT, "updater (MPI)", "a scoring request from rank 0 does not unpack");
    scored_group **gs = calloc((size_t)(n ? n : 1), sizeof *gs);
    if (!gs) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int rc = 0;
    for (int g = 0; g < n && !rc; g++) {
        uint32_t nf = 0;
        wire_frame fr[2 + 64];
        if (get(&r, &nf, 4) || nf < 2 || nf > sizeof fr / sizeof fr[0]) {
            rc = RLHF_ECORRUPT;
            break;
        }
        for (uint32_t f = 0; f < nf && !r.bad; f++) {
            uint64_t fl = 0;
            if (get(&r, &fl, 8) || r.n - r.at < fl) {
                r.bad = 1;
                break;
            }
            fr[f].data = r.p + r.at;
            fr[f].len = (size_t)fl;
            r.at += (size_t)fl;
        }
        if (r.bad) {
            rc = RLHF_ECORRUPT;
            break;
        }
        wire_msg m;
        if ((rc = wire_parse(fr, nf, &m, NULL, err))) break;
        gs[g] = calloc(1, sizeof *gs[g]);
        if (!gs[g]) rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        else {
            gs[g]->log_index = UINT64_MAX;
            rc = wire_decode_rollout_group(&m, &gs[g]->g, NULL, err);
        }
        wire_msg_free(&m);
    }
    if (!rc && r.at != len) rc = RLHF_ECORRUPT;
    if (rc) {
        for (int g = 0; g < n; g++) updater_scored_group_free(gs[g]);
        free(gs);
        if (!err->msg[0]) rlhf_error_set(err, rc, "updater (MPI)", "a scoring request from rank 0 does not unpack");
        return rc;
    }
    *step = (long)st;
    *out = gs;
    *out_n = n;
    return 0;
}

/* which of a scored group's arrays follow (a group that failed to score may lack some) */
enum { SC_SRC = 1, SC_TOTAL = 2, SC_ERRORS = 4, SC_STATUS = 8, SC_UNSCORED = 16, SC_SKIPPED = 32, SC_CLIPPED = 64,
       SC_MS = 128 };

int updater_dist_pack_scores(scored_group **gs, int n, const rlhf_error *failed, void **out, size_t *out_n) {
    packer w = {0};
    unsigned char f = failed != NULL;
    put(&w, &f, 1);
    if (failed) put(&w, failed, sizeof *failed);
    for (int g = 0; g < n; g++) {
        const scored_group *s = gs[g];
        size_t k = s->g.k, S = s->n_sources > 0 ? (size_t)s->n_sources : 0;
        uint32_t have = (s->src ? SC_SRC : 0) | (s->total ? SC_TOTAL : 0) | (s->src_errors ? SC_ERRORS : 0) |
                        (s->src_status ? SC_STATUS : 0) | (s->unscored ? SC_UNSCORED : 0) |
                        (s->src_skipped ? SC_SKIPPED : 0) | (s->src_clipped ? SC_CLIPPED : 0) | (s->src_ms ? SC_MS : 0);
        int32_t h[4] = {s->skipped, s->bad_tokens, (int32_t)S, (int32_t)have};
        uint64_t nm = s->n_metrics;
        put(&w, h, sizeof h);
        if (have & SC_SRC) put(&w, s->src, sizeof(float) * S * k);
        if (have & SC_TOTAL) put(&w, s->total, sizeof(float) * k);
        if (have & SC_ERRORS) put(&w, s->src_errors, sizeof(int) * S);
        if (have & SC_STATUS) put(&w, s->src_status, sizeof *s->src_status * S * k);
        if (have & SC_UNSCORED) put(&w, s->unscored, k);
        if (have & SC_SKIPPED) put(&w, s->src_skipped, sizeof(int) * S);
        if (have & SC_CLIPPED) put(&w, s->src_clipped, sizeof(int) * S);
        if (have & SC_MS) put(&w, s->src_ms, sizeof(double) * S);
        put(&w, &nm, 8);
        if (nm) put(&w, s->metrics, sizeof *s->metrics * nm);
        put(&w, &s->score_seconds, sizeof s->score_seconds);
    }
    if (w.oom) {
        free(w.p);
        return RLHF_ENOMEM;
    }
    *out = w.p;
    *out_n = w.n;
    return 0;
}

/* the arrays are allocated with one spare element, as score_groups allocates them (k or S may be 0) */
static void *take1(unpacker *r, size_t n, size_t elem) {
    void *q = take(r, n);
    if (!q) return NULL;
    void *big = realloc(q, n + elem);
    return big ? big : q;
}

int updater_dist_unpack_scores(const void *buf, size_t len, scored_group **gs, int n, int *failed, rlhf_error *ferr) {
    unpacker r = {buf, len, 0, 0};
    unsigned char f = 0;
    *failed = 0;
    if (get(&r, &f, 1)) return RLHF_ECORRUPT;
    if (f) {
        if (get(&r, ferr, sizeof *ferr)) return RLHF_ECORRUPT;
        ferr->where[sizeof ferr->where - 1] = ferr->msg[sizeof ferr->msg - 1] = 0;
        *failed = 1;
    }
    for (int g = 0; g < n && !r.bad; g++) {
        scored_group *s = gs[g];
        int32_t h[4];
        if (get(&r, h, sizeof h) || h[2] < 0 || h[2] > 1 << 12) return RLHF_ECORRUPT;
        size_t k = s->g.k, S = (size_t)h[2];
        uint32_t have = (uint32_t)h[3];
        s->skipped = h[0];
        s->bad_tokens = h[1];
        s->n_sources = h[2];
        if (have & SC_SRC) s->src = take1(&r, sizeof(float) * S * k, sizeof(float));
        if (have & SC_TOTAL) s->total = take1(&r, sizeof(float) * k, sizeof(float));
        if (have & SC_ERRORS) s->src_errors = take1(&r, sizeof(int) * S, sizeof(int));
        if (have & SC_STATUS) s->src_status = take(&r, sizeof *s->src_status * S * k);
        if (have & SC_UNSCORED) s->unscored = take(&r, k);
        if (have & SC_SKIPPED) s->src_skipped = take1(&r, sizeof(int) * S, sizeof(int));
        if (have & SC_CLIPPED) s->src_clipped = take1(&r, sizeof(int) * S, sizeof(int));
        if (have & SC_MS) s->src_ms = take1(&r, sizeof(double) * S, sizeof(double));
        uint64_t nm = 0;
        if (get(&r, &nm, 8) || nm > 4096) return RLHF_ECORRUPT;
        if (nm) {
            s->metrics = take(&r, sizeof *s->metrics * nm);
            s->n_metrics = s->metrics ? (size_t)nm : 0;
        }
        get(&r, &s->score_seconds, sizeof s->score_seconds);
    }
    return r.bad || r.at != len ? RLHF_ECORRUPT : 0;
}
