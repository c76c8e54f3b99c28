/* rewards/sandbox/sandbox_cli.c — `rlhf sandbox-run`: run one program in the code-execution sandbox. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "rewards/sandbox/sandbox.h"

static const char usage[] =
    "usage: rlhf sandbox-run [options] [--] PROGRAM_FILE [ARGS...]\n"
    "  runs PROGRAM_FILE with the sandbox's interpreter (default /usr/bin/python3); the program's\n"
    "  stdout/stderr are copied to ours and a summary line goes to stderr. Options end at\n"
    "  PROGRAM_FILE (or at \"--\"): ARGS are the program's, whatever they look like.\n"
    "options:\n"
    "  --config FILE       sandbox settings as a JSON object (keys in docs/SANDBOX.md)\n"
    "  --set JSON          the same, inline, e.g. --set '{\"wall_ms\":2000,\"memory_mb\":256}'\n"
    "                      (applied after the --config files, so --set wins)\n"
    "  --stdin FILE        feed FILE as the program's stdin (default: empty)\n"
    "  --json              print one JSON object (verdict, exit_code, signal, wall_ms, reason,\n"
    "                      stdout, stderr) instead of copying the streams\n"
    "  --probe             only probe the host and print the layers in use\n"
    "exit status: 0 pass, 1 any other verdict, 2 usage or sandbox creation error\n";

/* Applies the sandbox settings in JSON object j (from WHERE) to cfg; prints the error. 0 or 2. */
static int apply_settings(sandbox_config *cfg, json_t *j, const char *where) {
    rlhf_error err = {0};
    int rc = sandbox_config_parse(cfg, j, where, &err);
    json_decref(j);
    if (rc) rlhf_error_print("rlhf sandbox-run", &err);
    return rc ? 2 : 0;
}

int cmd_sandbox_run(int argc, char **argv) {
    rlhf_error err = {0};
    sandbox_config cfg;
    sandbox_config_default(&cfg);
    cfg.pool_size = 1;
    const char *stdin_file = NULL, *prog_file = NULL;
    int as_json = 0, only_probe = 0, argi = argc;
    char **configs = calloc((size_t)argc + 1, sizeof *configs), **sets = calloc((size_t)argc + 1, sizeof *sets);
    rlhf_opt_strs config = {configs, 0, argc}, set = {sets, 0, argc};
    const rlhf_opt opts[] = {
        RLHF_OPT("--config", RLHF_OPT_STRS, &config), RLHF_OPT("--set", RLHF_OPT_STRS, &set),
        RLHF_OPT("--stdin", RLHF_OPT_STR, &stdin_file), RLHF_OPT("--json", RLHF_OPT_FLAG, &as_json),
        RLHF_OPT("--probe", RLHF_OPT_FLAG, &only_probe), RLHF_OPT_END,
    };
    int prc = configs && sets ? rlhf_opts_parse_leading(argc, argv, "rlhf sandbox-run", usage, opts, &argi) : 1;
    for (int i = 0; prc < 0 && i < config.n; i++) {
        json_t *j = rlhf_json_load_file(configs[i], JSON_REJECT_DUPLICATES, &err);
        if (!j) rlhf_error_print("rlhf sandbox-run", &err);
        prc = j ? apply_settings(&cfg, j, configs[i]) : 2;
        if (!prc) prc = -1;
    }
    for (int i = 0; prc < 0 && i < set.n; i++) {
        json_error_t je;
        json_t *j = json_loads(sets[i], JSON_REJECT_DUPLICATES, &je);
        if (!j) fprintf(stderr, "rlhf sandbox-run: error: --set: column %d: %s\n", je.column, je.text);
        prc = j ? apply_settings(&cfg, j, "--set") : 2;
        if (!prc) prc = -1;
    }
    free(configs);
    free(sets);
    if (prc >= 0) return prc;
    if (!only_probe) {
        if (argi >= argc) {
            fprintf(stderr, "rlhf sandbox-run: error: missing PROGRAM_FILE\n%s", usage);
            return 2;
        }
        prog_file = argv[argi++];
    }
    char *program = NULL, *input = NULL;
    size_t plen = 0, ilen = 0;
    if (prog_file && rlhf_read_file(prog_file, &program, &plen, &err)) {
        rlhf_error_print("rlhf sandbox-run", &err);
        return 2;
    }
    if (stdin_file && rlhf_read_file(stdin_file, &input, &ilen, &err)) {
        rlhf_error_print("rlhf sandbox-run", &err);
        free(program);
        return 2;
    }
    if (program && strlen(program) != plen) {
        fprintf(stderr, "rlhf sandbox-run: error: %s: program contains a NUL byte\n", prog_file);
        free(program);
        free(input);
        return 2;
    }
    sandbox_pool *pool = NULL;
    if (sandbox_pool_create(&pool, &cfg, &err)) {
        rlhf_error_print("rlhf sandbox-run", &err);
        free(program);
        free(input);
        return 2;
    }
    if (only_probe) {
        printf("sandbox layers: %s\n", sandbox_pool_features(pool));
        sandbox_pool_destroy(&pool);
        return 0;
    }
    const char *args[34];
    int na = 0;
    args[na++] = "{file}";
    for (; argi < argc && na < 33; argi++) args[na++] = argv[argi];
    args[na] = NULL;
    sandbox_request req = {.program = program, .args = args, .stdin_data = input, .stdin_len = ilen};
    sandbox_result res;
    sandbox_pool_run(pool, &req, &res);
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "verdict", json_string(sandbox_verdict_name(res.verdict)));
        json_object_set_new(o, "exit_code", json_integer(res.exit_code));
        json_object_set_new(o, "signal", json_integer(res.term_signal));
        json_object_set_new(o, "wall_ms", json_real(res.wall_ms));
        json_object_set_new(o, "reason", json_string(res.reason));
        json_object_set_new(o, "stdout", json_stringn_nocheck(res.out, res.out_len));
        json_object_set_new(o, "stderr", json_stringn_nocheck(res.err, res.err_len));
        char *t = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        printf("%s\n", t ? t : "{}");
        free(t);
        json_decref(o);
    } else {
        fwrite(res.out, 1, res.out_len, stdout);
        fflush(stdout);
        fwrite(res.err, 1, res.err_len, stderr);
        fprintf(stderr, "sandbox-run: verdict=%s exit=%d signal=%d wall_ms=%.1f%s%s\n", sandbox_verdict_name(res.verdict),
                res.exit_code, res.term_signal, res.wall_ms, res.reason[0] ? " reason=" : "", res.reason);
    }
    int rc = res.verdict == SANDBOX_PASS ? 0 : 1;
    sandbox_result_free(&res);
    sandbox_pool_destroy(&pool);
    free(program);
    free(input);
    return rc;
}
