/* rewards/registry.c — the table mapping a source's "type" string to its constructor, and the
 * helpers constructors use to read their JSON config (each error names the JSON path). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rewards/rewards_int.h"

/* One line per source type; the constructors are declared in rewards/rewards_int.h. */
static const reward_source_type source_types[] = {
    {"exact_match", reward_source_exact_match_create, "completion's answer equals the record's \"answer\""},
    {"numeric_match", reward_source_numeric_match_create, "last number in the completion equals \"answer\" within tolerance"},
    {"regex", reward_source_regex_create, "completion matches (or must not match) a POSIX extended regex"},
    {"length_penalty", reward_source_length_penalty_create, "penalty for completion tokens beyond a budget"},
    {"countdown", reward_source_countdown_create, "arithmetic expression over \"numbers\" reaching \"target\" (sandboxed python)"},
    {"exec", reward_source_exec_create, "run the completion's program in the sandbox against expected output / tests"},
    {"plugin", reward_source_plugin_create, "shared-object plugin (dlopen, ABI-checked)"},
    {"process", reward_source_process_create, "long-lived child process speaking JSON lines"},
    {"judge", reward_source_judge_create, "LLM judge over HTTP"},
    {"rm", reward_source_rm_create, "local reward model"},
    {"remote_rm", reward_source_remote_rm_create, "reward model behind an HTTP server"},
    {"capitals", reward_source_capitals_create, "ground truth of the synthetic RM task: share of upper-case letters"},
};

#define N_SOURCE_TYPES (sizeof source_types / sizeof source_types[0])

const reward_source_type *reward_source_type_find(const char *type) {
    for (size_t i = 0; i < N_SOURCE_TYPES; i++)
        if (!strcmp(source_types[i].type, type)) return &source_types[i];
    return NULL;
}

const reward_source_type *reward_source_type_table(size_t *n) {
    *n = N_SOURCE_TYPES;
    return source_types;
}

const char *const *reward_source_types(void) {
    /* filled per thread on each call: the table is tiny and callers only print it */
    static __thread const char *names[N_SOURCE_TYPES + 1];
    for (size_t i = 0; i < N_SOURCE_TYPES; i++) names[i] = source_types[i].type;
    names[N_SOURCE_TYPES] = NULL;
    return names;
}

static const char *const common_keys[] = {"type",     "name",           "weight",       "normalize", "timeout_ms",
                                          "on_error", "max_error_rate", "error_window", "range",     "out_of_range",
                                          "concurrency", NULL};

static int in_list(const char *k, const char *const *list) {
    for (; list && *list; list++)
        if (!strcmp(*list, k)) return 1;
    return 0;
}

int reward_check_keys(const json_t *obj, const char *where, const char *const *allowed, rlhf_error *err) {
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, where, "expected a JSON object");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        (void)v;
        if (in_list(k, common_keys) || in_list(k, allowed)) continue;
        char w[256];
        snprintf(w, sizeof w, "%s.%s", where, k);
        char known[512] = "";
        size_t off = 0;
        for (const char *const *a = allowed; a && *a; a++)
            off += (size_t)snprintf(known + off, off < sizeof known ? sizeof known - off : 0, "%s%s", off ? ", " : "", *a);
        return rlhf_error_set(err, RLHF_EINVAL, w, "unknown key (common keys: type, name, weight, normalize, "
                              "timeout_ms, on_error, max_error_rate, error_window, range, out_of_range, concurrency%s%s)", known[0] ? "; this type's: " : "", known);
    }
    return 0;
}

static int key_where(char *w, size_t n, const char *where, const char *key) {
    snprintf(w, n, "%s.%s", where, key);
    return 0;
}

int reward_get_string(const json_t *obj, const char *key, const char *where, int required, const char **out,
                      rlhf_error *err) {
    char w[256];
    key_where(w, sizeof w, where, key);
    json_t *v = json_object_get(obj, key);
    if (!v) return required ? rlhf_error_set(err, RLHF_EINVAL, w, "required key missing") : 0;
    if (!json_is_string(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected a string");
    *out = json_string_value(v);
    return 0;
}

int reward_get_number(const json_t *obj, const char *key, const char *where, int required, double *out,
                      rlhf_error *err) {
    char w[256];
    key_where(w, sizeof w, where, key);
    json_t *v = json_object_get(obj, key);
    if (!v) return required ? rlhf_error_set(err, RLHF_EINVAL, w, "required key missing") : 0;
    if (!json_is_number(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected a number");
    *out = json_number_value(v);
    return 0;
}

int reward_get_int(const json_t *obj, const char *key, const char *where, int required, int64_t *out,
                   rlhf_error *err) {
    char w[256];
    key_where(w, sizeof w, where, key);
    json_t *v = json_object_get(obj, key);
    if (!v) return required ? rlhf_error_set(err, RLHF_EINVAL, w, "required key missing") : 0;
    if (!json_is_integer(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected an integer");
    *out = (int64_t)json_integer_value(v);
    return 0;
}

int reward_get_bool(const json_t *obj, const char *key, const char *where, int required, int *out,
                    rlhf_error *err) {
    char w[256];
    key_where(w, sizeof w, where, key);
    json_t *v = json_object_get(obj, key);
    if (!v) return required ? rlhf_error_set(err, RLHF_EINVAL, w, "required key missing") : 0;
    if (!json_is_boolean(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected true or false");
    *out = json_is_true(v);
    return 0;
}

json_t *reward_item_record(const rlhf_reward_item *item, rlhf_reward_status *st) {
    const char *txt = item->record_json ? item->record_json : "{}";
    json_error_t je;
    json_t *r = json_loads(txt, JSON_REJECT_DUPLICATES, &je);
    if (!r || !json_is_object(r)) {
        json_decref(r);
        rlhf_reward_status_set(st, RLHF_REWARD_ERROR, "record_json is not a JSON object (%s)", r ? "wrong type" : je.text);
        return NULL;
    }
    return r;
}

json_t *reward_json_string_lossy(const char *s) {
    json_t *j = json_string(s ? s : "");
    if (j) return j;
    /* not valid UTF-8: keep the valid sequences, replace each bad byte with U+FFFD */
    char *clean = rlhf_utf8_sanitize(s, strlen(s));
    j = clean ? json_string(clean) : NULL;
    free(clean);
    return j;
}

int reward_sources_resolve_paths(json_t *sources, const char *base, rlhf_error *err) {
    size_t i;
    json_t *src;
    json_array_foreach(sources, i, src) {
        if (!json_is_object(src)) continue;
        const char *path = json_string_value(json_object_get(src, "path"));
        char abs[8192];
        if (path && path[0] && path[0] != '/') {
            if (snprintf(abs, sizeof abs, "%s/%s", base, path) >= (int)sizeof abs)
                return rlhf_error_set(err, RLHF_EINVAL, path, "path too long");
            json_string_set(json_object_get(src, "path"), abs);
        }
        size_t j;
        json_t *a;
        json_array_foreach(json_object_get(src, "command"), j, a) {
            const char *s = json_string_value(a);
            if (!s || !s[0] || s[0] == '/' || s[0] == '-') continue;
            if (snprintf(abs, sizeof abs, "%s/%s", base, s) >= (int)sizeof abs) continue;
            /* the program when it names a path (a bare name is looked up in PATH); an argument only
             * when it names an existing file: arguments need not be paths */
            if (j == 0 ? strchr(s, '/') != NULL : access(abs, F_OK) == 0) json_string_set(a, abs);
        }
    }
    return 0;
}
