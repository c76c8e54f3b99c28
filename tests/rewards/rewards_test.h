/* tests/rewards/rewards_test.h — helpers shared by the test_rewards sources. */
#ifndef RLHF_REWARDS_TEST_H
#define RLHF_REWARDS_TEST_H

#include <CUnit/CUnit.h>

#include "rewards/rewards_int.h"
#include "rewards/sandbox/sandbox.h"

/* The project root (the tests chdir there at start) and a private scratch directory. */
const char *rt_root(void);
const char *rt_scratch(void);
/* The build directory this test binary belongs to (ROOT/BUILD), for bin/rlhf. */
const char *rt_build_dir(void);
/* Builds a shared object from a source file under the root with extra cc flags; returns its path
 * (static buffer per call site is the caller's: copies into out). 0 on success. */
int rt_build_so(const char *src, const char *flags, const char *name, char *out, size_t cap);
/* A reward item with the given completion and record (group -1, no deadline). */
rlhf_reward_item rt_item(const char *completion, const char *record_json);

int rt_register_pipeline(void);
int rt_register_plugins(void);
int rt_register_exec(void);
int rt_register_cli(void);
int rt_register_isolation(void);
int rt_register_contract(void);

#endif
