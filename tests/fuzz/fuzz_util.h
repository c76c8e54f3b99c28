/* tests/fuzz/fuzz_util.h — what several libFuzzer targets share: splitting one input into parts,
 * writing an input to a scratch file for parsers that read paths, and a property check that aborts
 * (libFuzzer then saves the input as a crash). Header-only: each target is one program. */
#ifndef RLHF_FUZZ_UTIL_H
#define RLHF_FUZZ_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Parts of an input are separated by this marker: the seeds hold it, so mutations mostly keep the
 * parts apart while still able to merge or split them. */
#define FUZZ_SEP "\n#--#\n"
#define FUZZ_SEP_LEN 6

typedef struct fuzz_part {
    const uint8_t *p;
    size_t n;
} fuzz_part;

/* Splits data at FUZZ_SEP into at most max parts (the last part keeps any further separators).
 * Returns the number of parts (>= 1). */
static inline size_t fuzz_split(const uint8_t *data, size_t size, fuzz_part *parts, size_t max) {
    size_t n = 0, start = 0;
    for (size_t i = 0; n + 1 < max && i + FUZZ_SEP_LEN <= size; i++) {
        if (memcmp(data + i, FUZZ_SEP, FUZZ_SEP_LEN) == 0) {
            parts[n].p = data + start;
            parts[n].n = i - start;
            n++;
            start = i + FUZZ_SEP_LEN;
            i = start - 1;
        }
    }
    parts[n].p = data + start;
    parts[n].n = size - start;
    return n + 1;
}

/* A NUL-terminated copy (the parsers that take C strings). */
static inline char *fuzz_strndup(const uint8_t *p, size_t n) {
    char *s = malloc(n + 1);
    if (!s) abort();
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static inline void fuzz_remove_prefixed(const char *prefix);
static char fuzz_dir[64];
static inline void fuzz_tmpdir_remove(void) {
    fuzz_remove_prefixed("");
    rmdir(fuzz_dir);
}

/* A scratch directory per process (libFuzzer runs one input at a time in a process), removed at exit. */
static inline const char *fuzz_tmpdir(void) {
    if (!fuzz_dir[0]) {
        snprintf(fuzz_dir, sizeof fuzz_dir, "/tmp/rlhf-fuzz-XXXXXX");
        if (!mkdtemp(fuzz_dir)) abort();
        atexit(fuzz_tmpdir_remove);
    }
    return fuzz_dir;
}

/* Writes bytes to DIR/name and returns the path (static buffer). */
static inline const char *fuzz_write_file(const char *name, const uint8_t *p, size_t n) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", fuzz_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(p, 1, n, f) != n) abort();
    if (fclose(f)) abort();
    return path;
}

/* Removes the scratch files whose names start with prefix (copies a parser made beside its input). */
static inline void fuzz_remove_prefixed(const char *prefix) {
    DIR *d = opendir(fuzz_tmpdir());
    if (!d) abort();
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) {
            snprintf(path, sizeof path, "%s/%s", fuzz_tmpdir(), e->d_name);
            unlink(path);
        }
    closedir(d);
}

/* A property of the parser that must hold for every input: on failure, say which and abort so the
 * input is kept as a crash. */
#define FUZZ_ASSERT(cond, ...)                                                                         \
    do {                                                                                               \
        if (!(cond)) {                                                                                 \
            fprintf(stderr, "fuzz property failed: %s: ", #cond);                                      \
            fprintf(stderr, __VA_ARGS__);                                                              \
            fprintf(stderr, "\n");                                                                     \
            abort();                                                                                   \
        }                                                                                              \
    } while (0)

#endif
