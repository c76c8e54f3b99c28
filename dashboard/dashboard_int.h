/* dashboard/dashboard_int.h — private to dashboard/ (and tests/dashboard): the run readers behind the
 * JSON endpoints (dashboard/data.c) and the page's embedded files (dashboard/assets.c). */
#ifndef RLHF_DASHBOARD_INT_H
#define RLHF_DASHBOARD_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "broker/broker.h"
#include "dashboard/dashboard.h"

/* A JSONL file read incrementally: complete lines are parsed once and kept; a last line without its
 * newline (a writer mid-line, or a torn tail) is left for the next refresh and reported. The file
 * shrinking or being replaced (a resumed run cuts metrics.jsonl) starts it over. */
typedef struct dashboard_jsonl {
    char path[4200];
    json_t *rows;     /* array of parsed rows */
    off_t offset;     /* bytes consumed */
    ino_t ino;
    long bad_lines;   /* complete lines that are not a JSON object (skipped) */
    long first_bad;   /* 1-based line number of the first one, 0 = none */
    long lines;       /* complete lines consumed */
    size_t torn;      /* bytes of an unterminated last line, 0 = none */
    int exists;
    unsigned generation; /* bumped when the file started over (clients then read from 0) */
    /* NULL: every row is kept in rows. Else each row goes to on_row with the byte offset of its line,
     * and is not kept (a file too large to hold parsed, like scores.jsonl); on_row(ctx, NULL, 0) says
     * that the file started over */
    void (*on_row)(void *ctx, json_t *row, off_t offset);
    void *ctx;
} dashboard_jsonl;

void dashboard_jsonl_init(dashboard_jsonl *j, const char *dir, const char *name);
void dashboard_jsonl_refresh(dashboard_jsonl *j);
void dashboard_jsonl_fini(dashboard_jsonl *j);

#define DASHBOARD_MAX_PROCS 64
typedef struct dashboard_cpu_sample {
    int pid;
    double cpu_s, t; /* CPU seconds at monotonic time t */
} dashboard_cpu_sample;

typedef struct dashboard_score_ref {
    uint64_t key; /* 0 = empty slot */
    off_t offset;
} dashboard_score_ref;

/* One run directory. */
typedef struct dashboard_run {
    char dir[4096];
    char name[256];
    dashboard_jsonl metrics, eval, restarts, scores;
    /* scores.jsonl: an open-addressing table of (hash of "generator#seq", byte offset of the line), 16 bytes
     * a group; the line is read again when a group is shown */
    struct dashboard_score_ref *score_refs;
    size_t n_score_refs, cap_score_refs; /* cap: a power of 2 (0 = none yet) */
    replay_pos *pos; /* start of every record of rollouts.log read so far */
    size_t n_pos, cap_pos;
    char log_note[1024]; /* the last problem reading rollouts.log, "" = none */
    struct tokenizer *tok; /* the run's tokenizer, loaded when a group without texts is shown */
    int tok_tried;
    char tok_note[600];
    dashboard_cpu_sample cpu[DASHBOARD_MAX_PROCS]; /* the previous /api/processes sample */
    int n_cpu;
} dashboard_run;

/* 0, or RLHF_EINVAL when DIR is not a directory or holds none of a run's files. */
int dashboard_run_init(dashboard_run *r, const char *dir, rlhf_error *err);
void dashboard_run_fini(dashboard_run *r);

/* The endpoints' bodies (new references). */
json_t *dashboard_api_run_info(dashboard_run *r, int index);
json_t *dashboard_api_rows(dashboard_run *r, dashboard_jsonl *j, long since, unsigned generation);
json_t *dashboard_api_rollouts(dashboard_run *r, int limit, const char *filter);
json_t *dashboard_api_config(dashboard_run *r);
json_t *dashboard_api_processes(dashboard_run *r); /* dashboard/procs.c */

/* Masks secret-looking values of a config in place (keys naming keys, tokens, passwords, secrets,
 * authorization; values that look like API keys; passwords in URLs), then cuts strings longer than
 * max_chars. Returns the number of values masked. */
int dashboard_mask_secrets(json_t *j, size_t max_chars);

/* The page's own files, embedded at build time (dashboard/assets.c). */
typedef struct dashboard_asset {
    const char *path; /* "/", "/dashboard.js", ... */
    const char *type;
    const unsigned char *data;
    size_t size;
} dashboard_asset;
size_t dashboard_assets(const dashboard_asset **list);

#endif
