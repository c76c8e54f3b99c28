/* cli/rlhf.c — the `rlhf` binary: one program, many subcommands.
 *
 * Each subcommand is `int cmd_NAME(int argc, char **argv)` (argv[0] is the subcommand name),
 * implemented in the folder that owns it and linked in through CMD_SRCS. Invoked as
 * `rlhf-broker`, `rlhf-generator` or `rlhf-updater` (symlinks), the binary runs that subcommand. */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "model/model.h"
#include "updater/updater.h"

#ifndef RLHF_GIT_VERSION
#define RLHF_GIT_VERSION "unknown"
#endif
#ifndef RLHF_BUILD_MARCH
#define RLHF_BUILD_MARCH "" /* the -march of the build's OPT (cli/module.mk), "" when none */
#endif

/* 1 unless the build targeted an x86-64 level (the Makefile's default: x86-64-v3) that this CPU lacks:
 * then say so instead of dying on an illegal instruction. Any other -march is the builder's choice. */
static int cpu_runs_build(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!strcmp(RLHF_BUILD_MARCH, "x86-64-v2")) return __builtin_cpu_supports("x86-64-v2");
    if (!strcmp(RLHF_BUILD_MARCH, "x86-64-v3")) return __builtin_cpu_supports("x86-64-v3");
    if (!strcmp(RLHF_BUILD_MARCH, "x86-64-v4")) return __builtin_cpu_supports("x86-64-v4");
#endif
    return 1;
}

typedef int (*cmd_fn)(int argc, char **argv);

/* Weak so that rlhf links when only some folders are built (make MODULES="..."): a subcommand whose
 * folder is left out says so when run instead of failing the link. */
#define CMDS(X)                                                                                       \
    X(init, "model", "create a model checkpoint from an architecture JSON")                          \
    X(pretrain, "model", "pretrain a model on a text/JSONL corpus")                                 \
    X(sample, "model", "sample completions from a checkpoint (JSONL out)")                          \
    X(score, "model", "log-probabilities of completions given prompts (JSONL out)")                 \
    X(export, "model", "write a checkpoint as a Hugging Face model directory")                      \
    X(broker, "broker", "run the broker (prompts, rollouts, weights, replay log)")                  \
    X(replay_cat, "broker", "print a replay log as JSONL")                                           \
    X(credentials, "broker", "hand a generator or updater key to a process on another host")        \
    X(keygen, "broker", "write a CURVE key pair for a peer on another host (secret never printed)")  \
    X(generator, "generator", "run a trajectory generator process")                                 \
    X(updater, "updater", "run a policy updater process")                                           \
    X(run, "cli", "launch a training run from a config (broker + generators + updaters)")       \
    X(replay, "cli", "train an updater offline from a recorded replay log")                     \
    X(replay_info, "cli", "summarise a replay log: records, versions, staleness, rewards, model")   \
    X(replay_export, "cli", "a replay log as one JSON line per completion (for pandas)")            \
    X(replay_merge, "cli", "several replay logs as one, policy versions rebased")                 \
    X(eval, "cli", "held-out pass rate of a checkpoint (sample + reward)")                      \
    X(plot, "cli", "overlay runs' curves (metrics.jsonl, eval.jsonl) in a PNG or SVG (gnuplot)")   \
    X(reward_test, "rewards", "score a JSONL of samples with a reward config")                       \
    X(reward_plugin_host, "rewards", "internal: the worker process of a .so reward plugin (isolate \"process\")")   \
    X(sandbox_run, "rewards/sandbox", "run a program in the code-execution sandbox")                 \
    X(serve, "serve", "OpenAI-compatible HTTP server for a checkpoint / reward model")              \
    X(dashboard, "dashboard", "a live page of runs' curves, rollouts and config (HTTP)")            \
    X(train_rm, "rewards/rm", "train a reward model from preference pairs")                          \
    X(prompts, "prompts", "prompt datasets and task generators: rlhf prompts gen|stats ...")             \
    X(chat_template, "template", "render a message list through a chat template (Jinja)")

#define DECL(name, mod, help) int cmd_##name(int argc, char **argv) __attribute__((weak));
CMDS(DECL)

struct command {
    const char *name;
    cmd_fn fn;
    const char *module;
    const char *help;
};

static void dashes(char *s) {
    for (; *s; s++)
        if (*s == '_') *s = '-';
}

int main(int argc, char **argv) {
    if (!cpu_runs_build()) {
        fprintf(stderr, "rlhf: error: this binary was built with -march=%s and this CPU lacks that level's "
                        "instructions; rebuild with: make OPT=-O3\n", RLHF_BUILD_MARCH);
        return 1;
    }
#define ENTRY(name, mod, help) {#name, cmd_##name, mod, help},
    struct command cmds[] = {CMDS(ENTRY)};
    size_t ncmds = sizeof cmds / sizeof cmds[0];
    char names[sizeof cmds / sizeof cmds[0]][32];
    for (size_t i = 0; i < ncmds; i++) {
        snprintf(names[i], sizeof names[i], "%s", cmds[i].name);
        dashes(names[i]);
    }

    const char *self = basename(argv[0]);
    const char *sub = NULL;
    int shift = 1;
    if (strncmp(self, "rlhf-", 5) == 0) {
        sub = self + 5;
        shift = 0;
    } else if (argc > 1) {
        sub = argv[1];
    }
    if (sub && (!strcmp(sub, "--version") || !strcmp(sub, "version"))) {
        /* the build, then the kernels sampling runs on this machine (chosen at run time) */
        char kernels[512];
        rlhf_error err = {0};
        printf("rlhf %s (gcc %s)\n", RLHF_GIT_VERSION, __VERSION__);
        if (model_kernels_describe(kernels, sizeof kernels, &err)) {
            rlhf_error_print("rlhf", &err);
            return 1;
        }
        printf("sampling kernels: %s\n", kernels);
        /* what this build can do, for bug reports and for choosing a config */
        int zmaj, zmin, zpatch;
        zmq_version(&zmaj, &zmin, &zpatch);
        char mpi[256];
        updater_dist_describe(mpi, sizeof mpi);
        printf("features: bf16 sampling weights: yes (every kernel set; generators.weights); libzmq %d.%d.%d "
               "CURVE: %s; MPI: %s (data-parallel updaters, updaters.count)\n",
               zmaj, zmin, zpatch, zmq_has("curve") ? "yes" : "no", mpi);
        return 0;
    }
    if (!sub || !strcmp(sub, "-h") || !strcmp(sub, "--help") || !strcmp(sub, "help")) {
        FILE *o = sub ? stdout : stderr; /* no command is a usage error: exit 2, usage on stderr */
        fprintf(o, "usage: rlhf COMMAND [ARGS...]   (rlhf COMMAND --help for a command's options)\n"
               "       rlhf --version         (the build, the kernels chosen for this CPU, the build's features)\n\ncommands:\n");
        for (size_t i = 0; i < ncmds; i++)
            fprintf(o, "  %-12s %s%s\n", names[i], cmds[i].help, cmds[i].fn ? "" : " [not built]");
        return sub ? 0 : 2;
    }
    /* A run puts a broker, generators and updaters on few cores. With OpenMP's default waiting, idle
     * worker threads spin and steal the cores the other processes need: a training step measured
     * 1332 ms spinning vs 135 ms passive under that contention. A lone process on a quiet machine
     * is the opposite case (single-stream sampling: 732 tokens/s spinning vs 299 passive), so only
     * the processes of a run default to passive. libgomp reads the setting before main(): set it
     * and re-execute once. An explicit OMP_WAIT_POLICY always wins. */
    static const char *const run_processes[] = {"run", "broker", "generator", "updater", NULL};
    for (int i = 0; run_processes[i]; i++) {
        if (strcmp(sub, run_processes[i]) != 0 || getenv("OMP_WAIT_POLICY")) continue;
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);
        break; /* re-exec failed: carry on with the default policy */
    }
    for (size_t i = 0; i < ncmds; i++) {
        if (strcmp(sub, names[i]) != 0) continue;
        if (!cmds[i].fn) {
            fprintf(stderr, "rlhf: error: command '%s' is not built into this binary (%s/)\n", sub, cmds[i].module);
            return 2;
        }
        argv[shift] = (char *)names[i];
        return cmds[i].fn(argc - shift, argv + shift);
    }
    fprintf(stderr, "rlhf: error: unknown command '%s' (rlhf --help lists them)\n", sub);
    return 2;
}
