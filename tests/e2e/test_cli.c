/* tests/e2e/test_cli.c — the rlhf command line as a user meets it, on the built binary:
 *
 *   help_every_command: every command of cli/rlhf.c's table (read from the source, the oracle for
 *                     what `rlhf --help` must list) is listed by `rlhf --help`, and `rlhf CMD --help`
 *                     and `-h` exit 0 with its usage on stdout ("usage: rlhf CMD") and nothing on
 *                     stderr; an unknown option exits 2 naming it; `rlhf` alone exits 2;
 *   bad_numbers:      a number flag given "abc" (or "1.5" for an integer) exits 2 with one line
 *                     naming the flag, for every command that takes numbers;
 *   version:          `rlhf --version` names the build's features: bf16 kernels, CURVE as libzmq
 *                     reports it (zmq_has in this process), MPI;
 *   make_install:     `make install PREFIX=DIR` installs the binary (and its aliases) beside the
 *                     library, and the installed rlhf runs;
 *   directory_for_a_file: a directory given where a file is read (--data, --prompts, --arch, or a
 *                     --model that is no Hugging Face directory) is one line naming it, not
 *                     "cannot allocate 9223372036854775807 bytes" or "no prompts". */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "common/common.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];
static char g_out[256], g_err[256];

static char *slurp(const char *path) {
    char *d = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &d, &n, NULL)) return NULL;
    return d;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; s && *s; s++) n += *s == '\n';
    return n;
}

/* `rlhf ARGS`: exit status; stdout and stderr in *out / *err (malloc'd, "" when empty). */
static int rlhf(const char *const *args, char **out, char **err) {
    test_proc_opts o = {.out = g_out, .err = g_err};
    int rc = test_proc_run_args(g_rlhf, g_rlhf, args, &o, 60);
    *out = slurp(g_out);
    *err = slurp(g_err);
    if (!*out) *out = calloc(1, 1);
    if (!*err) *err = calloc(1, 1);
    return rc;
}

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_cli_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_out, sizeof g_out, "%s/out", g_dir);
    snprintf(g_err, sizeof g_err, "%s/err", g_dir);
    if (test_bin_path("rlhf", g_rlhf, sizeof g_rlhf) || access(g_rlhf, X_OK) != 0) return -1;
    return 0;
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* The command names of cli/rlhf.c's CMDS table ("X(name, ..." lines), '_' as '-'. */
static int table_commands(char names[][32], int cap) {
    char p[1024];
    test_source_path("cli/rlhf.c", p, sizeof p);
    char *src = slurp(p);
    int n = 0;
    for (char *l = src; l && *l && n < cap;) {
        char *nl = strchr(l, '\n');
        while (*l == ' ') l++;
        char name[32];
        if (!strncmp(l, "X(", 2) && sscanf(l + 2, "%31[a-z_],", name) == 1 && l[2 + strlen(name)] == ',') {
            for (char *c = name; *c; c++)
                if (*c == '_') *c = '-';
            snprintf(names[n++], 32, "%s", name);
        }
        if (!nl) break;
        l = nl + 1;
    }
    free(src);
    return n;
}

static void test_help_every_command(void) {
    char names[64][32];
    int n = table_commands(names, 64);
    CU_ASSERT_FATAL(n >= 15); /* the table as of this test: init ... prompts */
    char *out, *err;
    const char *top[] = {"--help", NULL};
    CU_ASSERT_EQUAL(rlhf(top, &out, &err), 0);
    for (int i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof want, "\n  %.31s ", names[i]);
        CU_ASSERT(strstr(out, want) != NULL);
        if (!strstr(out, want)) fprintf(stderr, "rlhf --help does not list %s\n", names[i]);
    }
    free(out);
    free(err);
    const char *none[] = {NULL};
    CU_ASSERT_EQUAL(rlhf(none, &out, &err), 2); /* no command: a usage error */
    CU_ASSERT(strstr(err, "usage: rlhf COMMAND") != NULL);
    free(out);
    free(err);
    for (int i = 0; i < n; i++) {
        const char *flags[] = {"--help", "-h"};
        for (int f = 0; f < 2; f++) {
            const char *args[] = {names[i], flags[f], NULL};
            int rc = rlhf(args, &out, &err);
            char want[64];
            snprintf(want, sizeof want, "usage: rlhf %.31s", names[i]);
            int ok = rc == 0 && !strncmp(out, want, strlen(want)) && !err[0];
            CU_ASSERT(ok);
            if (!ok) fprintf(stderr, "rlhf %s %s: exit %d, stdout '%.80s', stderr '%.200s'\n", names[i], flags[f], rc, out, err);
            free(out);
            free(err);
        }
        const char *bad[] = {names[i], "--no-such-option", NULL};
        int rc = rlhf(bad, &out, &err);
        int ok = rc == 2 && strstr(err, "--no-such-option") && !out[0];
        CU_ASSERT(ok);
        if (!ok) fprintf(stderr, "rlhf %s --no-such-option: exit %d, stderr '%.200s'\n", names[i], rc, err);
        free(out);
        free(err);
    }
}

static void test_bad_numbers(void) {
    /* one number flag of each command that takes numbers, before anything else is checked */
    static const char *const cases[][5] = {
        {"init", "--seed", "abc"},           {"pretrain", "--steps", "abc"},   {"pretrain", "--lr", "abc"},
        {"sample", "--temperature", "abc"},  {"sample", "--top-k", "1.5"},     {"score", "--batch", "abc"},
        {"generator", "--id", "abc"},        {"replay", "--threads", "2x"},     {"eval", "--temperature", "abc"},
        {"eval", "--n", "1e3"},              {"reward-test", "--batch", "abc"}, {"serve", "--port", "abc"},
        {"train-rm", "--steps", "abc"},      {"train-rm", "--lr", "nan"},       {"prompts", "gen", "--n", "abc"},
        {"prompts", "corpus", "--p-three", "abc"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *const *c = cases[i];
        const char *flag = c[1][0] == '-' ? c[1] : c[2];
        char *out, *err;
        int rc = rlhf(c, &out, &err);
        int ok = rc == 2 && count_lines(err) == 1 && strstr(err, flag) && !out[0];
        CU_ASSERT(ok);
        if (!ok) fprintf(stderr, "rlhf %s %s %s: exit %d, stderr '%.300s'\n", c[0], c[1], c[2], rc, err);
        free(out);
        free(err);
    }
}

static void test_version(void) {
    char *out, *err;
    const char *args[] = {"--version", NULL};
    CU_ASSERT_EQUAL(rlhf(args, &out, &err), 0);
    CU_ASSERT(!strncmp(out, "rlhf ", 5));
    CU_ASSERT(strstr(out, "sampling kernels: ") != NULL);
    CU_ASSERT(strstr(out, "bf16 sampling weights: yes") != NULL);
    CU_ASSERT(strstr(out, zmq_has("curve") ? "CURVE: yes" : "CURVE: no") != NULL);
    CU_ASSERT(strstr(out, "MPI: Open MPI") != NULL);
    free(out);
    free(err);
}

static void test_make_install(void) {
    char build[1024], prefix[256], make_out[256], bin[512];
    CU_ASSERT_FATAL(test_build_dir(build, sizeof build) == 0);
    snprintf(prefix, sizeof prefix, "%s/prefix", g_dir);
    snprintf(make_out, sizeof make_out, "%s/make.out", g_dir);
    char pre_arg[300], build_arg[1100];
    snprintf(pre_arg, sizeof pre_arg, "PREFIX=%s", prefix);
    snprintf(build_arg, sizeof build_arg, "BUILD=%s", build);
    /* the make running `make test` passes its jobserver in MAKEFLAGS: this make is on its own */
    /* the same flags as the build it installs from: under `make sanitize` a make without SAN=1 would
     * relink the sanitized objects without the sanitizer runtime (and break every later test's binary) */
#if defined(__SANITIZE_ADDRESS__)
    const char *san_arg = "SAN=1";
#else
    const char *san_arg = NULL;
#endif
    const char *args[] = {"-u", "MAKEFLAGS", "-u", "MAKELEVEL", "-u", "MFLAGS", "make", "--no-print-directory", "-C",
                          RLHF_SOURCE_ROOT, "install", pre_arg, build_arg, san_arg, NULL};
    test_proc_opts o = {.out = make_out, .err = make_out};
    int rc = test_proc_run_args("/usr/bin/env", "env", args, &o, 300);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc) {
        char *m = slurp(make_out);
        fprintf(stderr, "make install said: %s\n", m ? m : "");
        free(m);
    }
    snprintf(bin, sizeof bin, "%s/bin/rlhf", prefix);
    CU_ASSERT(access(bin, X_OK) == 0);
    char p[512];
    snprintf(p, sizeof p, "%s/lib/librlhf.a", prefix);
    CU_ASSERT(access(p, R_OK) == 0);
    /* the installed binary runs, from elsewhere than the build */
    const char *v[] = {"--version", NULL};
    test_proc_opts vo = {.out = g_out, .err = g_err};
    CU_ASSERT_EQUAL(test_proc_run_args(bin, bin, v, &vo, 60), 0);
    char *out = slurp(g_out);
    CU_ASSERT(out && !strncmp(out, "rlhf ", 5));
    free(out);
    /* and so do its per-process names */
    snprintf(p, sizeof p, "%s/bin/rlhf-updater", prefix);
    const char *h[] = {"--help", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(p, p, h, &vo, 60), 0);
    out = slurp(g_out);
    CU_ASSERT(out && !strncmp(out, "usage: rlhf updater", 19));
    free(out);
}

static void test_directory_for_a_file(void) {
    /* a model to get past --model, and a directory where each command wants a file */
    char arch[256], model[256], dir[256], p[256];
    snprintf(arch, sizeof arch, "%s/arch.json", g_dir);
    snprintf(model, sizeof model, "%s/m.safetensors", g_dir);
    snprintf(dir, sizeof dir, "%s/adir", g_dir);
    snprintf(p, sizeof p, "%s/out.safetensors", g_dir);
    FILE *f = fopen(arch, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs("{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,\"max_seq_len\":16}", f);
    fclose(f);
    CU_ASSERT_FATAL(mkdir(dir, 0755) == 0);
    char *out, *err;
    const char *init[] = {"init", "--arch", arch, "--out", model, NULL};
    CU_ASSERT_FATAL(rlhf(init, &out, &err) == 0);
    free(out);
    free(err);
    const char *const cases[][16] = {
        {"score", "--model", model, "--data", dir, NULL},
        {"pretrain", "--model", model, "--data", dir, "--out", p, "--steps", "1", "--batch", "1", "--seq", "8", "--lr",
         "1e-3", NULL},
        {"sample", "--model", model, "--prompts", dir, NULL},
        {"init", "--arch", dir, "--out", p, NULL},
        {"score", "--model", dir, "--data", dir, NULL}, /* a directory that is no Hugging Face model */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = rlhf(cases[i], &out, &err);
        int ok = rc == 1 && count_lines(err) == 1 && strstr(err, dir) && !strstr(err, "allocate") &&
                 (strstr(err, "is a directory, not a file") || strstr(err, "a model directory needs config.json"));
        CU_ASSERT(ok);
        if (!ok) fprintf(stderr, "rlhf %s ... (case %zu): exit %d, stderr '%.300s'\n", cases[i][0], i, rc, err);
        free(out);
        free(err);
    }
}

void e2e_register_cli(void);
void e2e_register_cli(void) {
    CU_pSuite s = CU_add_suite("cli", suite_init, suite_cleanup);
    CU_add_test(s, "help_every_command", test_help_every_command);
    CU_add_test(s, "bad_numbers", test_bad_numbers);
    CU_add_test(s, "version", test_version);
    CU_add_test(s, "make_install", test_make_install);
    CU_add_test(s, "directory_for_a_file", test_directory_for_a_file);
}
