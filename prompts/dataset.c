/* prompts/dataset.c — JSONL prompt datasets: loading, validation, train/held-out split, lookup by id. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompts/prompts_int.h"

struct prompt_dataset {
    char *path;
    prompt_record *recs; /* (n) */
    char **ids;          /* (n) owned copies (integer ids are printed as strings) */
    unsigned char *heldout; /* (n) 1 = held-out split */
    size_t n, cap;
    long *index;         /* open-addressing id -> record index, -1 = empty; (index_cap) */
    size_t index_cap;
    size_t skipped;      /* bad lines skipped (opts.skip_bad) */
    size_t other_split;  /* records left out by the split */
};

/* Returns the slot holding `id`, or the empty slot where it would go. */
static size_t index_slot(const prompt_dataset *ds, const char *id) {
    size_t mask = ds->index_cap - 1;
    size_t s = (size_t)prompts_hash_str(id) & mask;
    while (ds->index[s] >= 0 && strcmp(ds->ids[ds->index[s]], id) != 0) s = (s + 1) & mask;
    return s;
}

static int index_grow(prompt_dataset *ds) {
    size_t old_cap = ds->index_cap;
    long *old = ds->index;
    size_t cap = old_cap ? old_cap * 2 : 64;
    long *idx = malloc(cap * sizeof *idx);
    if (!idx) return -1;
    for (size_t i = 0; i < cap; i++) idx[i] = -1;
    ds->index = idx;
    ds->index_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i] >= 0) ds->index[index_slot(ds, ds->ids[old[i]])] = old[i];
    free(old);
    return 0;
}

long prompt_dataset_find(const prompt_dataset *ds, const char *id) {
    if (!ds || !id || !ds->index_cap) return -1;
    return ds->index[index_slot(ds, id)];
}

size_t prompt_dataset_size(const prompt_dataset *ds) { return ds ? ds->n : 0; }
size_t prompt_dataset_skipped(const prompt_dataset *ds) { return ds ? ds->skipped : 0; }
size_t prompt_dataset_other_split(const prompt_dataset *ds) { return ds ? ds->other_split : 0; }
const char *prompt_dataset_path(const prompt_dataset *ds) { return ds ? ds->path : NULL; }

const prompt_record *prompt_dataset_get(const prompt_dataset *ds, size_t index) {
    if (!ds || index >= ds->n) return NULL;
    return &ds->recs[index];
}

int prompt_dataset_is_heldout(const prompt_dataset *ds, size_t index) {
    if (!ds || index >= ds->n) return 0;
    return ds->heldout[index];
}

void prompt_dataset_destroy(prompt_dataset **pds) {
    if (!pds || !*pds) return;
    prompt_dataset *ds = *pds;
    for (size_t i = 0; i < ds->n; i++) {
        json_decref(ds->recs[i].record);
        free(ds->ids[i]);
    }
    free(ds->recs);
    free(ds->ids);
    free(ds->heldout);
    free(ds->index);
    free(ds->path);
    free(ds);
    *pds = NULL;
}

/* Held-out by hash: the same id always lands on the same side for a given seed. */
static int hash_heldout(const char *id, uint64_t seed, double fraction) {
    if (fraction <= 0) return 0;
    uint64_t h = prompts_mix64(prompts_hash_str(id) ^ prompts_mix64(seed));
    return (double)(h >> 11) * 0x1.0p-53 < fraction;
}

static int append(prompt_dataset *ds, json_t *rec, char *id, const char *prompt, int heldout) {
    if (ds->n == ds->cap) {
        size_t cap = ds->cap ? ds->cap * 2 : 256;
        prompt_record *r = realloc(ds->recs, cap * sizeof *r);
        if (!r) return -1;
        ds->recs = r;
        char **ids = realloc(ds->ids, cap * sizeof *ids);
        if (!ids) return -1;
        ds->ids = ids;
        unsigned char *h = realloc(ds->heldout, cap);
        if (!h) return -1;
        ds->heldout = h;
        ds->cap = cap;
    }
    if ((ds->n + 1) * 2 > ds->index_cap && index_grow(ds) != 0) return -1;
    ds->recs[ds->n] = (prompt_record){.id = id, .prompt = prompt, .record = rec};
    ds->ids[ds->n] = id;
    ds->heldout[ds->n] = (unsigned char)heldout;
    ds->index[index_slot(ds, id)] = (long)ds->n;
    ds->n++;
    return 0;
}

/* Validates one parsed line. On success fills *id_out (malloc'd) and *heldout_out; returns 0, or
 * an RLHF_E* code with err set (where = FILE:LINE). */
static int check_record(prompt_dataset *ds, json_t *rec, const char *where, const prompt_dataset_opts *o,
                        char **id_out, int *heldout_out, rlhf_error *err) {
    if (!json_is_object(rec)) return rlhf_error_set(err, RLHF_ECORRUPT, where, "record is not a JSON object");
    json_t *jid = json_object_get(rec, "id");
    char buf[32];
    const char *id;
    if (json_is_string(jid)) {
        id = json_string_value(jid);
    } else if (json_is_integer(jid)) {
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(jid));
        id = buf;
    } else {
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "%s `id` (need a string or integer)",
                              jid ? "non-string" : "missing");
    }
    if (!*id) return rlhf_error_set(err, RLHF_ECORRUPT, where, "empty `id`");
    json_t *jp = json_object_get(rec, "prompt");
    if (!jp && json_object_get(rec, "messages"))
        return rlhf_error_set(err, RLHF_ECORRUPT, where,
                              "`messages` without `prompt`: rlhf run renders such lines through the model's chat "
                              "template (docs/CHAT_TEMPLATES.md); rlhf chat-template shows the text");
    if (!json_is_string(jp))
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "%s `prompt` (need a string)", jp ? "non-string" : "missing");
    if (prompt_dataset_find(ds, id) >= 0)
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "duplicate id \"%s\" (first at record %ld)", id,
                              prompt_dataset_find(ds, id) + 1);
    json_t *js = json_object_get(rec, "split");
    int heldout;
    if (!js) {
        heldout = hash_heldout(id, o->split_seed, o->heldout_fraction);
    } else if (json_is_string(js) && !strcmp(json_string_value(js), "train")) {
        heldout = 0;
    } else if (json_is_string(js) && !strcmp(json_string_value(js), "heldout")) {
        heldout = 1;
    } else {
        return rlhf_error_set(err, RLHF_ECORRUPT, where, "`split` must be \"train\" or \"heldout\"");
    }
    *id_out = strdup(id);
    if (!*id_out) return rlhf_error_set(err, RLHF_ENOMEM, where, "out of memory");
    *heldout_out = heldout;
    return 0;
}

int prompt_dataset_load_opts(prompt_dataset **out, const char *path, const prompt_dataset_opts *opts,
                             rlhf_error *err) {
    *out = NULL;
    prompt_dataset_opts o = {0};
    if (opts) o = *opts;
    if (o.heldout_fraction < 0 || o.heldout_fraction >= 1 || o.heldout_fraction != o.heldout_fraction)
        return rlhf_error_set(err, RLHF_EINVAL, path, "heldout_fraction must be in [0, 1), got %g", o.heldout_fraction);
    if (o.split < PROMPT_SPLIT_ALL || o.split > PROMPT_SPLIT_HELDOUT)
        return rlhf_error_set(err, RLHF_EINVAL, path, "unknown split selector %d", o.split);
    FILE *f = fopen(path, "r");
    if (!f) return rlhf_error_set(err, RLHF_EIO, path, "cannot open: %s", strerror(errno));
    prompt_dataset *ds = calloc(1, sizeof *ds);
    if (!ds || !(ds->path = strdup(path)) || index_grow(ds) != 0) {
        fclose(f);
        prompt_dataset_destroy(&ds);
        return rlhf_error_set(err, RLHF_ENOMEM, path, "out of memory");
    }
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    char where[sizeof err->where];
    while ((len = getline(&line, &line_cap, f)) >= 0) {
        lineno++;
        snprintf(where, sizeof where, "%s:%ld", path, lineno);
        size_t k = 0;
        while (k < (size_t)len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' || line[k] == '\n')) k++;
        if (k == (size_t)len) continue; /* blank lines separate nothing; they are not records */
        if (strlen(line) != (size_t)len) {
            rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "NUL byte in line");
        } else {
            json_error_t jerr;
            json_t *rec = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &jerr);
            if (!rec) {
                rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "invalid JSON at column %d: %s", jerr.column, jerr.text);
            } else {
                char *id = NULL;
                int heldout = 0;
                rc = check_record(ds, rec, where, &o, &id, &heldout, err);
                if (rc == 0) {
                    int keep = o.split == PROMPT_SPLIT_ALL || (o.split == PROMPT_SPLIT_HELDOUT) == heldout;
                    if (!keep) {
                        ds->other_split++;
                        free(id);
                        json_decref(rec);
                        continue;
                    }
                    const char *prompt = json_string_value(json_object_get(rec, "prompt"));
                    if (append(ds, rec, id, prompt, heldout) != 0) {
                        free(id);
                        json_decref(rec);
                        rc = rlhf_error_set(err, RLHF_ENOMEM, where, "out of memory");
                        break;
                    }
                    continue;
                }
                json_decref(rec);
                if (rc == RLHF_ENOMEM) break;
            }
        }
        if (!o.skip_bad) break;
        ds->skipped++;
        rc = 0;
    }
    if (rc == 0 && ferror(f)) rc = rlhf_error_set(err, RLHF_EIO, path, "read error: %s", strerror(errno));
    free(line);
    fclose(f);
    if (rc == 0 && ds->n == 0)
        rc = rlhf_error_set(err, RLHF_EINVAL, path,
                            "empty dataset: no %srecords (%zu lines skipped as bad, %zu in the other split)",
                            o.split == PROMPT_SPLIT_TRAIN ? "train " : o.split == PROMPT_SPLIT_HELDOUT ? "held-out " : "",
                            ds->skipped, ds->other_split);
    if (rc != 0) {
        prompt_dataset_destroy(&ds);
        return rc;
    }
    *out = ds;
    return 0;
}

int prompt_dataset_load(prompt_dataset **out, const char *path, rlhf_error *err) {
    return prompt_dataset_load_opts(out, path, NULL, err);
}
