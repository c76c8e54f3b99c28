# dashboard/: the live dashboard (`rlhf dashboard`, `rlhf run --dashboard`): an HTTP page of a run's curves,
# rollouts and config, read from its run directory. Every dashboard/*.c goes into librlhf.a except *_cli.c.
# Public header: dashboard/dashboard.h (dashboard/dashboard_int.h is private to dashboard/ and its tests).
# The page's own files (dashboard/page/) are embedded into the binary (dashboard/assets.c, .incbin); the
# charting library (npm `uplot`, pinned in scripts/install-deps.sh) is copied from .cache/npm into
# $(BUILD)/share/rlhf/dashboard/, where the binary looks for it at start-up (dashboard_find_assets).
LIB_SRCS  += $(filter-out %_cli.c,$(wildcard dashboard/*.c))
CMD_SRCS  += $(wildcard dashboard/*_cli.c)
HEADERS   += dashboard/dashboard.h
$(BUILD)/obj/dashboard/assets.o: $(wildcard dashboard/page/*)
DASHBOARD_LIB_DIR := .cache/npm/node_modules/uplot/dist
DASHBOARD_ASSETS := $(patsubst $(DASHBOARD_LIB_DIR)/%,$(BUILD)/share/rlhf/dashboard/%,\
                      $(wildcard $(DASHBOARD_LIB_DIR)/uPlot.iife.min.js $(DASHBOARD_LIB_DIR)/uPlot.min.css))
$(BUILD)/share/rlhf/dashboard/%: $(DASHBOARD_LIB_DIR)/%
	@mkdir -p $(@D)
	cp $< $@
$(BUILD)/bin/rlhf: | $(DASHBOARD_ASSETS)
# test_dashboard: the JSON endpoints against the real server with libcurl (tests/dashboard/test_api.c) and
# the page of a running run in headless Chromium (tests/dashboard/test_browser.c)
TESTS     += test_dashboard
SAN_TESTS += test_dashboard
test_dashboard_SRCS = $(wildcard tests/dashboard/*.c)
$(BUILD)/tests/test_dashboard: | $(DASHBOARD_ASSETS)
