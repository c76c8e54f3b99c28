/* tests/dashboard/test_dashboard.c — test_dashboard's suites: dashboard_api (tests/dashboard/test_api.c)
 * and dashboard_browser (tests/dashboard/test_browser.c). */
int register_api_suite(void);
int register_browser_suite(void);

int register_suites(void);
int register_suites(void) {
    if (register_api_suite() || register_browser_suite()) return -1;
    return 0;
}
