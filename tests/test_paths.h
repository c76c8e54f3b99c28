/* tests/test_paths.h — where a test finds the programs it runs and the fixtures it reads, wherever
 * BUILD is (inside the tree or not) and whatever the working directory: programs are beside the test
 * binary (BUILD/tests/NAME -> BUILD/bin/PROG), fixtures are under the source tree the Makefile names
 * in RLHF_SOURCE_ROOT. Header-only so that any test binary can use it without a module.mk change. */
#ifndef RLHF_TEST_PATHS_H
#define RLHF_TEST_PATHS_H

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef RLHF_SOURCE_ROOT /* the Makefile defines it for every object */
#define RLHF_SOURCE_ROOT "."
#endif

/* BUILD: the directory whose tests/ holds this binary. 0, or -1 when it cannot be found or does not fit. */
static inline int test_build_dir(char *out, size_t cap) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    for (int up = 0; up < 2; up++) { /* drop NAME, then tests */
        char *slash = strrchr(exe, '/');
        if (!slash) return -1;
        *slash = 0;
    }
    return snprintf(out, cap, "%s", exe[0] ? exe : "/") < (int)cap ? 0 : -1;
}

/* BUILD/bin/PROG: the rlhf binary and helper programs built with this test. */
static inline int test_bin_path(const char *prog, char *out, size_t cap) {
    char build[PATH_MAX];
    if (test_build_dir(build, sizeof build)) return -1;
    return snprintf(out, cap, "%s/bin/%s", build, prog) < (int)cap ? 0 : -1;
}

/* RLHF_SOURCE_ROOT/REL: a fixture or script in the source tree. */
static inline int test_source_path(const char *rel, char *out, size_t cap) {
    return snprintf(out, cap, "%s/%s", RLHF_SOURCE_ROOT, rel) < (int)cap ? 0 : -1;
}

static inline int test_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes a test's scratch directory and everything in it (no symlinks followed). 0 on success. */
static inline int test_remove_tree(const char *dir) {
    if (!dir || !dir[0] || !strcmp(dir, "/")) return -1;
    return nftw(dir, test_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
