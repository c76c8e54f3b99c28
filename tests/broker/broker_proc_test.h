/* tests/broker/broker_proc_test.h — what the broker-process tests share: the suite's scratch and
 * binary directories, starting `rlhf broker` and the synthetic peers, reading its stats (all defined in
 * tests/broker/test_broker_proc.c), and the test cases of tests/broker/test_broker_flow.c and
 * tests/broker/test_broker_restart.c, which test_broker_proc.c registers in the "broker" suite. */
#ifndef RLHF_TESTS_BROKER_PROC_TEST_H
#define RLHF_TESTS_BROKER_PROC_TEST_H

#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

extern char tmpdir[256];  /* the suite's scratch directory (dataset prompts.jsonl, one dir per run) */
extern char bindir[4096]; /* BUILD/bin: rlhf, synth_generator, synth_updater */

typedef struct run {
    char dir[512];
    char endpoint[64];
    char cred[600]; /* DIR/credentials: made by start_broker */
    pid_t broker;
} run;

void sleep_ms(long ms);
/* fork + exec with stdout/stderr appended to LOG; a test that aborts leaves no broker or peer behind */
pid_t spawn(char *const argv[], const char *log);
/* Writes a config and starts `rlhf broker` in TMPDIR/NAME; waits until it answers. extra: more JSON
 * keys for "broker". 0 when it runs. */
int start_broker(run *r, const char *name, const char *extra);
/* The synthetic peers with --id ID, output and log in the run's directory, EXTRA_ARGS space-separated. */
pid_t start_gen(const run *r, const char *id, const char *extra_args);
pid_t start_upd(const run *r, const char *id, const char *extra_args);
json_t *get_stats(const run *r);
long stat_i(json_t *s, const char *k);
json_t *peer_of(json_t *s, const char *id);
/* Waits until the broker knows peer `id`; 0 when it does. */
int wait_peer(const run *r, const char *id);
int send_stop(const run *r);
/* Lines "GEN SEQ PV" from FILE into keys "GEN/SEQ" (malloc'd array); returns count. */
size_t read_keys(const char *path, char ***keys);
void free_keys(char **k, size_t n);

/* tests/broker/test_broker_flow.c */
void test_exactly_once(void);
void test_staleness_zero(void);
void test_backpressure(void);
void test_control_and_rejections(void);
void test_generation_lag(void);
#ifndef __SANITIZE_ADDRESS__
void test_keep_freed_memory(void);
#endif

/* tests/broker/test_hostile.c */
void test_hostile_control(void);
void test_hostile_weights(void);
void test_hostile_groups(void);
void test_hostile_identity(void);
void test_hostile_peer_table(void);
void test_hostile_ipc_plain(void);
void test_hostile_slow_reader(void);
void test_hostile_flood(void);

/* tests/broker/test_weights_shm.c */
void test_shm_versions_verified(void);
void test_shm_fallback_unwritable(void);
void test_shm_fallback_crc(void);
void test_shm_no_leftovers_after_kill(void);
void test_shm_other_host_once(void);
/* tests/broker/test_elastic.c */
void test_elastic_reissue(void);

/* tests/broker/test_broker_restart.c */
void test_kill_and_restart(void);
void test_sigterm_flushes(void);
void test_broker_restart(void);
void test_selector_state_restart(void);

#endif
