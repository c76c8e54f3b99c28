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
        /* the scoring threads never call MPI: only the thread that created this object does */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            free(d);
            return RLHF_FAIL(err, RLHF_EIO, "MPI_Init_thread failed (updaters.count > 1 runs under mpirun)");
        }
        d->initialised = 1;
        MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &d->size);
        /* errors come back as codes (and are then fatal for the job) rather than aborting inside MPI */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Op_create(op_sum_f32, 0, &d->sum_f32);
        MPI_Op_create(op_sum_f64, 0, &d->sum_f64);
        MPI_Op_create(op_max_f64, 0, &d->max_f64);
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
