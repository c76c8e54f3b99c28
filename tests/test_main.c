/* tests/test_main.c — the main() of every CUnit test binary.
 * Each binary defines register_suites(); `BIN [SUITE ...]` runs only the named suites.
 * Prints CUnit's summary and one closing line "NAME: N passed, N failed". */
#include <CUnit/Basic.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>

int register_suites(void);

int main(int argc, char **argv) {
    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "cannot initialise CUnit registry\n");
        return 2;
    }
    if (register_suites() != 0 || CU_get_error() != CUE_SUCCESS) {
        fprintf(stderr, "suite registration failed: %s\n", CU_get_error_msg());
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    int rc = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            CU_pSuite s = CU_get_suite(argv[i]);
            if (!s) {
                fprintf(stderr, "no suite named %s\n", argv[i]);
                rc = 2;
                continue;
            }
            CU_basic_run_suite(s);
        }
    } else {
        CU_basic_run_tests();
    }
    unsigned run = CU_get_number_of_tests_run();
    unsigned failed = CU_get_number_of_tests_failed();
    unsigned suites_failed = CU_get_number_of_suites_failed();
    printf("\n%s: %u passed, %u failed\n", basename(argv[0]), run - failed, failed + suites_failed);
    if (failed || suites_failed) rc = 1;
    CU_cleanup_registry();
    return rc;
}
