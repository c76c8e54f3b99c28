#include <CUnit/CUnit.h>
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

int register_suites(void) {
    CU_pSuite s = CU_add_suite("common", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "crc32 known vector", test_crc32_known_vector);
    CU_add_test(s, "atomic write and read", test_atomic_write_and_read);
    CU_add_test(s, "rng deterministic", test_rng_deterministic);
    CU_add_test(s, "check_writable: missing dir names the destination, good dir untouched", test_check_writable);
    CU_add_test(s, "json_load_file: errors name the file (and line:column)", test_json_load_file);
    return 0;
}
