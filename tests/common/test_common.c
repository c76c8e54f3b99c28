#include <CUnit/CUnit.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>

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
    return 0;
}
