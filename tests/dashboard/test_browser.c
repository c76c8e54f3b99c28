int register_browser_suite(void); int register_browser_suite(void) { return 0; }
