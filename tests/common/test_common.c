#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>

#include <jansson.h>
#include <dirent.h>

#include "common/common.h"

static void test_crc32_known_vector(void) {
    /* The standard check value of CRC-32/ISO-HDLC. */
    CU_ASSERT_EQUAL(rlhf_crc32(0, "123456789", 9), 0xCBF43926u);
    uint32_t c = rlhf_crc32(0, "1234", 4);
    CU_ASSERT_EQUAL(rlhf_crc32(c, "56789", 5), 0xCBF43926u);
    CU_ASSERT_EQUAL(rlhf_crc32_bytewise(0, "123456789", 9), 0xCBF43926u);
}

static void test_crc_kernels_match_bytewise(void) {
    rlhf_rng r;
    rlhf_rng_seed(&r, 7);
    uint8_t buf[4099];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)rlhf_rng_u64(&r);
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n < 300; n += 7)
            CU_ASSERT_EQUAL(rlhf_crc32(0, buf + off, n), rlhf_crc32_bytewise(0, buf + off, n));
    CU_ASSERT_EQUAL(rlhf_crc32(0, buf, sizeof buf), rlhf_crc32_bytewise(0, buf, sizeof buf));
    /* chaining */
    CU_ASSERT_EQUAL(rlhf_crc32(rlhf_crc32(0, buf, 1000), buf + 1000, 3099), rlhf_crc32_bytewise(0, buf, 4099));
    CU_ASSERT_EQUAL(rlhf_crc32(0, "123456789", 9), 0xCBF43926u); /* the standard check value */
    /* the folding path (n >= 256) at every alignment and tail length, against both references */
    for (size_t off = 0; off < 17; off++)
        for (size_t n = 256; n < 4099 - off; n += 61) {
            uint32_t want = rlhf_crc32_bytewise(0, buf + off, n);
            CU_ASSERT_EQUAL(rlhf_crc32(0, buf + off, n), want);
            CU_ASSERT_EQUAL(rlhf_crc32_kernel(RLHF_CRC_TABLES, 0, buf + off, n), want);
            CU_ASSERT_EQUAL(rlhf_crc32(0x12345678u, buf + off, n), rlhf_crc32_bytewise(0x12345678u, buf + off, n));
        }
    /* each kernel on its own (the dispatcher picks one by size), every length 0..1100 at several
     * alignments, with a chained start value */
    for (int k = RLHF_CRC_TABLES; k <= RLHF_CRC_VPCLMUL; k++)
        for (size_t off = 0; off < 5; off++)
            for (size_t n = 0; n <= 1100; n++) {
                uint32_t want = rlhf_crc32_bytewise(0xdeadbeefu, buf + off, n);
                uint32_t got = rlhf_crc32_kernel((rlhf_crc_kernel)k, 0xdeadbeefu, buf + off, n);
                if (got != want) {
                    CU_FAIL("kernel CRC differs from the bitwise reference");
                    printf("\n  kernel %d off %zu n %zu: %08x != %08x\n", k, off, n, got, want);
                    return;
                }
            }
    /* large buffer through the vector kernel in pieces of odd sizes = in one piece */
    size_t big = 1 << 20;
    uint8_t *b = malloc(big);
    for (size_t i = 0; i < big; i++) b[i] = (uint8_t)rlhf_rng_u64(&r);
    uint32_t whole = rlhf_crc32_bytewise(0, b, big), chained = 0;
    for (size_t o = 0, step = 1; o < big; o += step, step = step * 3 + 1)
        chained = rlhf_crc32_kernel(RLHF_CRC_VPCLMUL, chained, b + o, (o + step > big ? big - o : step));
    CU_ASSERT_EQUAL(chained, whole);
    CU_ASSERT_EQUAL(rlhf_crc32_kernel(RLHF_CRC_VPCLMUL, 0, b, big), whole);
    CU_ASSERT_EQUAL(rlhf_crc32_kernel(RLHF_CRC_PCLMUL, 0, b, big), whole);
    free(b);
}

static void test_utf8_char_len(void) {
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("a", 1), 1);
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("", 1), 1);                  /* NUL is a character */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xC3\xA9", 2), 2);          /* U+00E9 */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xE2\x82\xAC", 3), 3);      /* U+20AC */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xF0\x9F\x98\x80", 4), 4);  /* U+1F600 */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xE2\x82", 2), -1);         /* cut short */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xF0\x9F\x98", 3), -1);
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xE2\x82", 4), 0);          /* the NUL after it is no continuation */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\x80", 1), 0);               /* stray continuation */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xC0\x80", 2), 0);          /* overlong NUL */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xE0\x80\x80", 3), 0);      /* overlong */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xED\xA0\x80", 3), 0);      /* surrogate U+D800 */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xF4\x90\x80\x80", 4), 0);  /* U+110000 */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("\xF8\x88\x80\x80", 4), 0);  /* no such lead byte */
    CU_ASSERT_EQUAL(rlhf_utf8_char_len("x", 0), -1);
    char *s = rlhf_utf8_sanitize("a\xC3\xA9\x80" "b\0c\xE2\x82", 9);
    CU_ASSERT_STRING_EQUAL(s, "a\xC3\xA9\xEF\xBF\xBD" "b\xEF\xBF\xBD" "c\xEF\xBF\xBD\xEF\xBF\xBD");
    free(s);
}

/* argv from a string literal list; rlhf_opts_parse does not modify it */
#define ARGV(...) ((char *[]){"prog", __VA_ARGS__, NULL})
static int ARGC(char **v) {
    int n = 0;
    while (v[n]) n++;
    return n;
}

static void test_opts_parse(void) {
    const char *config = NULL, *pos[2];
    int n = 7, quiet = 0, npos = -1;
    float t = 0;
    char *sets[2];
    rlhf_opt_strs set = {sets, 0, 2};
    rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &config), RLHF_OPT("--n", RLHF_OPT_INT, &n),
                       RLHF_OPT("--temperature", RLHF_OPT_FLOAT, &t), RLHF_OPT("--quiet", RLHF_OPT_FLAG, &quiet),
                       RLHF_OPT("--set", RLHF_OPT_STRS, &set), RLHF_OPT_END};
    char **a = ARGV("LOG", "--config", "c.json", "--n=12", "--set", "x=1", "--quiet", "--temperature", "0.5",
                    "--set=y.z=2", "OUT");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(a), a, "prog", "usage\n", opts, pos, 2, &npos), -1);
    CU_ASSERT_STRING_EQUAL(config, "c.json");
    CU_ASSERT_EQUAL(n, 12);
    CU_ASSERT_EQUAL(quiet, 1);
    CU_ASSERT_DOUBLE_EQUAL(t, 0.5, 1e-9);
    CU_ASSERT_EQUAL(set.n, 2);
    CU_ASSERT_STRING_EQUAL(sets[1], "y.z=2");
    CU_ASSERT_EQUAL(npos, 2);
    CU_ASSERT_STRING_EQUAL(pos[0], "LOG");
    CU_ASSERT_STRING_EQUAL(pos[1], "OUT");
    /* usage errors: exit status 2, nothing silently defaulted */
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    char **bad_int = ARGV("--n", "12x");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(bad_int), bad_int, "prog", "", opts, pos, 2, &npos), 2);
    char **missing = ARGV("--config");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(missing), missing, "prog", "", opts, pos, 2, &npos), 2);
    char **unknown = ARGV("--nope=3");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(unknown), unknown, "prog", "", opts, pos, 2, &npos), 2);
    char **extra = ARGV("a", "b", "c");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(extra), extra, "prog", "", opts, pos, 2, &npos), 2);
    char **flag_value = ARGV("--quiet=1");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(flag_value), flag_value, "prog", "", opts, pos, 2, &npos), 2);
    set.n = 0;
    char **too_many = ARGV("--set", "a=1", "--set", "b=2", "--set", "c=3");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(too_many), too_many, "prog", "", opts, pos, 2, &npos), 2);
    rlhf_opt ranged[] = {RLHF_OPT_RANGE("--n", RLHF_OPT_INT, &n, 1, 10), RLHF_OPT_END};
    char **out_of_range = ARGV("--n", "11");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(out_of_range), out_of_range, "prog", "", ranged, pos, 2, &npos), 2);
    char **in_range = ARGV("--n", "10");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(in_range), in_range, "prog", "", ranged, pos, 2, &npos), -1);
    CU_ASSERT_EQUAL(n, 10);
    char **bad_float = ARGV("--temperature", "nan");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(bad_float), bad_float, "prog", "", opts, pos, 2, &npos), 2);
    fclose(stderr);
    stderr = saved;
    FILE *saved_out = stdout;
    stdout = fopen("/dev/null", "w");
    char **help = ARGV("--config", "x", "--help");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(help), help, "prog", "", opts, pos, 2, &npos), 0);
    fclose(stdout);
    stdout = saved_out;
}

/* "--" ends the options; rlhf_opts_parse_leading stops at the first positional argument so that a
 * program's own arguments (which may start with '-') are passed on untouched. */
static void test_opts_parse_rest(void) {
    const char *pos[3];
    int n = 0, quiet = 0, npos = -1, rest = -1;
    rlhf_opt opts[] = {RLHF_OPT("--n", RLHF_OPT_INT, &n), RLHF_OPT("--quiet", RLHF_OPT_FLAG, &quiet), RLHF_OPT_END};
    char **dashes = ARGV("--n", "3", "--", "--quiet", "-x");
    CU_ASSERT_EQUAL(rlhf_opts_parse(ARGC(dashes), dashes, "prog", "", opts, pos, 3, &npos), -1);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_EQUAL(quiet, 0);
    CU_ASSERT_EQUAL(npos, 2);
    CU_ASSERT_STRING_EQUAL(pos[0], "--quiet");
    CU_ASSERT_STRING_EQUAL(pos[1], "-x");
    char **prog_args = ARGV("--quiet", "prog.py", "--n", "x", "--");
    CU_ASSERT_EQUAL(rlhf_opts_parse_leading(ARGC(prog_args), prog_args, "prog", "", opts, &rest), -1);
    CU_ASSERT_EQUAL(quiet, 1);
    CU_ASSERT_EQUAL(rest, 2);
    n = 0;
    char **after_dashes = ARGV("--n=5", "--", "--help", "a");
    CU_ASSERT_EQUAL(rlhf_opts_parse_leading(ARGC(after_dashes), after_dashes, "prog", "", opts, &rest), -1);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_EQUAL(rest, 3);
    char **none = ARGV("--n", "1");
    CU_ASSERT_EQUAL(rlhf_opts_parse_leading(ARGC(none), none, "prog", "", opts, &rest), -1);
    CU_ASSERT_EQUAL(rest, 3);
    /* a bad value is one error line (no usage after it); an unknown option is followed by the usage */
    FILE *saved = stderr;
    stderr = tmpfile();
    CU_ASSERT_PTR_NOT_NULL_FATAL(stderr);
    char **bad = ARGV("--n", "x", "prog.py");
    CU_ASSERT_EQUAL(rlhf_opts_parse_leading(ARGC(bad), bad, "prog", "USAGE\n", opts, &rest), 2);
    char **unknown = ARGV("--m", "prog.py");
    CU_ASSERT_EQUAL(rlhf_opts_parse_leading(ARGC(unknown), unknown, "prog", "USAGE\n", opts, &rest), 2);
    char text[512] = {0};
    rewind(stderr);
    size_t len = fread(text, 1, sizeof text - 1, stderr);
    fclose(stderr);
    stderr = saved;
    CU_ASSERT_STRING_EQUAL(text, "prog: error: --n: expected an integer, got 'x'\n"
                                 "prog: error: unknown option '--m'\nUSAGE\n");
    CU_ASSERT(len > 0);
}

static void test_atomic_write_and_read(void) {
    char dir[] = "/tmp/rlhf_common_XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/a/b/file.bin", dir);
    rlhf_error err = {0};
    char sub[512];
    snprintf(sub, sizeof sub, "%s/a/b", dir);
    CU_ASSERT_EQUAL(rlhf_mkdirs(sub, &err), 0);
    CU_ASSERT_EQUAL(rlhf_write_file_atomic(path, "hello", 5, &err), 0);
    char *data = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(rlhf_read_file(path, &data, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_STRING_EQUAL(data, "hello");
    free(data);
    /* aborting leaves the old content and no temp file */
    rlhf_atomic_file af;
    CU_ASSERT_EQUAL(rlhf_atomic_open(&af, path, &err), 0);
    fputs("partial", af.fp);
    rlhf_atomic_abort(&af);
    CU_ASSERT_EQUAL(access(af.tmp_path, F_OK), -1);
    CU_ASSERT_EQUAL(rlhf_read_file(path, &data, &n, &err), 0);
    CU_ASSERT_STRING_EQUAL(data, "hello");
    free(data);
    /* a missing file names the path */
    snprintf(sub, sizeof sub, "%s/missing", dir);
    CU_ASSERT_EQUAL(rlhf_read_file(sub, &data, &n, &err), RLHF_EIO);
    CU_ASSERT_STRING_EQUAL(err.where, sub);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

/* Output paths are checked before long jobs: a missing directory is an error naming the destination
 * (not the temp file), and a good directory is left exactly as it was. */
static void test_check_writable(void) {
    char dir[] = "/tmp/rlhf_common_XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char path[512];
    rlhf_error err;
    rlhf_error_clear(&err);
    snprintf(path, sizeof path, "%s/missing/out.bin", dir);
    CU_ASSERT_EQUAL(rlhf_check_writable(path, &err), RLHF_EIO);
    CU_ASSERT_STRING_EQUAL(err.where, path);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "No such file or directory"));
    snprintf(path, sizeof path, "%s/out.bin", dir);
    CU_ASSERT_EQUAL(rlhf_check_writable(path, &err), 0);
    DIR *d = opendir(dir);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) entries++;
    closedir(d);
    CU_ASSERT_EQUAL(entries, 0);
    rmdir(dir);
}

/* JSON files: a missing file and a syntax error both name the file (the latter with line and column). */
static void test_json_load_file(void) {
    char dir[] = "/tmp/rlhf_common_XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char path[512], want[600];
    rlhf_error err;
    rlhf_error_clear(&err);
    snprintf(path, sizeof path, "%s/none.json", dir);
    CU_ASSERT_PTR_NULL(rlhf_json_load_file(path, 0, &err));
    CU_ASSERT_EQUAL(err.code, RLHF_EIO);
    CU_ASSERT_STRING_EQUAL(err.where, path);
    CU_ASSERT_STRING_EQUAL(err.msg, "cannot open: No such file or directory");
    snprintf(path, sizeof path, "%s/bad.json", dir);
    CU_ASSERT_EQUAL(rlhf_write_file_atomic(path, "{\"a\": 1,\n \"a\": 2}", 17, &err), 0);
    CU_ASSERT_PTR_NULL(rlhf_json_load_file(path, JSON_REJECT_DUPLICATES, &err));
    CU_ASSERT_EQUAL(err.code, RLHF_EINVAL);
    snprintf(want, sizeof want, "%s:2:", path);
    CU_ASSERT_EQUAL(strncmp(err.where, want, strlen(want)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "duplicate"));
    json_t *j = rlhf_json_load_file(path, 0, &err); /* duplicates allowed: the last wins */
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "a")), 2);
    json_decref(j);
    unlink(path);
    rmdir(dir);
}

static void test_rng_deterministic(void) {
    rlhf_rng a, b;
    rlhf_rng_seed(&a, 42);
    rlhf_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) CU_ASSERT_EQUAL(rlhf_rng_u64(&a), rlhf_rng_u64(&b));
    double sum = 0, sq = 0;
    for (int i = 0; i < 20000; i++) {
        float x = rlhf_rng_normal(&a);
        sum += x;
        sq += x * x;
    }
    CU_ASSERT(fabs(sum / 20000) < 0.05);
    CU_ASSERT(fabs(sq / 20000 - 1.0) < 0.05);
}

/* The status classes the launcher acts on, from errors real calls produce where possible. */
static void test_exit_status(void) {
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_OK);
    char *d = NULL;
    size_t n = 0;
    CU_ASSERT_NOT_EQUAL(rlhf_read_file("/nonexistent-dir-rlhf/x.json", &d, &n, &err), 0);
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_ENV); /* ENOENT */
    CU_ASSERT_NOT_EQUAL(rlhf_check_writable("/nonexistent-dir-rlhf/out.bin", &err), 0);
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_ENV);
    /* a write to a full device: /dev/full fails every write with ENOSPC */
    FILE *f = fopen("/dev/full", "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("x", f);
    int wrc = fflush(f);
    int saved = errno;
    fclose(f);
    CU_ASSERT_EQUAL(wrc, EOF);
    rlhf_error_set(&err, RLHF_EIO, "/dev/full", "write failed: %s", strerror(saved));
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_ENV);
    rlhf_error_set(&err, RLHF_EIO, "x", "write failed: %s", strerror(EACCES));
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_ENV);
    rlhf_error_set(&err, RLHF_EIO, "tcp://127.0.0.1:1", "connect: %s", strerror(ECONNREFUSED));
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_TRANSIENT);
    rlhf_error_set(&err, RLHF_EINVAL, "cfg.json: broker.max_staleness", "must be >= 0");
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_CONFIG);
    rlhf_error_set(&err, RLHF_ECORRUPT, "step_2/model.safetensors", "bad header");
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_ENV);
    rlhf_error_set(&err, RLHF_ETIMEOUT, "broker", "no answer");
    CU_ASSERT_EQUAL(rlhf_exit_status(&err), RLHF_EXIT_TRANSIENT);
    CU_ASSERT_EQUAL(rlhf_exit_status(NULL), RLHF_EXIT_TRANSIENT);
    CU_ASSERT_STRING_EQUAL(rlhf_exit_class_name(RLHF_EXIT_PLUGIN), "plugin");
    CU_ASSERT_STRING_EQUAL(rlhf_exit_class_name(RLHF_EXIT_ENV), "environment");
}

int register_suites(void) {
    CU_pSuite s = CU_add_suite("common", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "crc32 known vector", test_crc32_known_vector);
    CU_add_test(s, "crc32 kernels (VPCLMULQDQ, PCLMULQDQ folding, slicing by 8) equal the bytewise one", test_crc_kernels_match_bytewise);
    CU_add_test(s, "utf8 decoder: valid, cut short, invalid; sanitize", test_utf8_char_len);
    CU_add_test(s, "opts: values, =values, flags, repeats, positionals; usage errors exit 2", test_opts_parse);
    CU_add_test(s, "opts: \"--\" ends the options; leading options before a program's arguments", test_opts_parse_rest);
    CU_add_test(s, "atomic write and read", test_atomic_write_and_read);
    CU_add_test(s, "rng deterministic", test_rng_deterministic);
    CU_add_test(s, "check_writable: missing dir names the destination, good dir untouched", test_check_writable);
    CU_add_test(s, "json_load_file: errors name the file (and line:column)", test_json_load_file);
    CU_add_test(s, "exit status classes: config, environment (ENOENT, ENOSPC, EACCES), transient", test_exit_status);
    return 0;
}
