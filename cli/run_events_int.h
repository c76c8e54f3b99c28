/* cli/run_events_int.h — the launcher's TensorBoard event file (cli/run_events.c): `rlhf run` mirrors
 * each new whole line of RUN_DIR/metrics.jsonl, and each held-out evaluation of eval.jsonl, into
 * RUN_DIR/events.out.tfevents.<time>.<host>.<pid> (tfevents/tfevents.h), so `tensorboard --logdir`
 * shows a run while it goes. One file per launch: a resumed run adds a file. Internal to cli/. */
#ifndef RLHF_CLI_RUN_EVENTS_INT_H
#define RLHF_CLI_RUN_EVENTS_INT_H

#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>

#include "tfevents/tfevents.h"

typedef struct cmd_run_events {
    tfevents_writer *w;       /* NULL until the first event; NULL for good after a failure */
    char run_dir[2048];
    long from_step;           /* the checkpoint the launch resumed from (0: a new run) */
    long last_step;           /* the newest training step mirrored */
    off_t offset;             /* bytes of metrics.jsonl read */
    ino_t inode;              /* of metrics.jsonl when offset was taken (a rewrite starts it over) */
    int checking;             /* after a rewrite: lines are compared with the mirrored ones until one differs */
    uint32_t *line_crc;       /* [step]: CRC-32 of the line mirrored for each step after from_step (0: none) */
    long n_line_crc;
    int failed;               /* a write failed: said once, nothing more is written */
} cmd_run_events;

/* Starts mirroring RUN_DIR: steps after from_step, lines after the metrics.jsonl there is now (a resumed
 * run's updater cuts the lines after its checkpoint and writes them again). No file until an event;
 * a resumed run's file starts with a restart event at from_step + 1, so that TensorBoard drops what
 * older files hold of the steps trained again. */
void cmd_run_events_init(cmd_run_events *e, const char *run_dir, long from_step);
/* Mirrors the whole lines metrics.jsonl gained since the last call (their eval/ keys are left out:
 * cmd_run_events_eval writes those at the step they scored). When the updater restarted during the
 * launch and cut metrics.jsonl back to its checkpoint (a rewrite of the file), the first step whose
 * line differs from the one mirrored gets a restart event, and the steps from there are mirrored again. */
void cmd_run_events_poll(cmd_run_events *e);
/* A record of eval.jsonl: eval/pass_rate, eval/reward_mean, eval/pass_rate_greedy, eval/pass_rate_sampled
 * at its "step". */
void cmd_run_events_eval(cmd_run_events *e, const json_t *eval_record);
void cmd_run_events_fini(cmd_run_events *e);

#endif
