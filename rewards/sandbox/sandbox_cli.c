/* rewards/sandbox/sandbox_cli.c — `rlhf sandbox-run`: run one program in the code-execution sandbox. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "rewards/sandbox/sandbox.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: rlhf sandbox-run [options] PROGRAM_FILE [ARGS...]\n"
            "  runs PROGRAM_FILE with the sandbox's interpreter (default /usr/bin/python3); the program's\n"
            "  stdout/stderr are copied to ours and a summary line goes to stderr.\n"
            "options:\n"
            "  --config FILE       sandbox settings as a JSON object (keys in docs/SANDBOX.md)\n"
            "  --set JSON          the same, inline, e.g. --set '{\"wall_ms\":2000,\"memory_mb\":256}'\n"
            "  --stdin FILE        feed FILE as the program's stdin (default: empty)\n"
            "  --json              print one JSON object (verdict, exit_code, signal, wall_ms, reason,\n"
            "                      stdout, stderr) instead of copying the streams\n"
            "  --probe             only probe the host and print the layers in use\n"
            "exit status: 0 pass, 1 any other verdict, 2 usage or sandbox creation error\n");
}

int cmd_sandbox_run(int argc, char **argv) {
    rlhf_error err = {0};
    sandbox_config cfg;
    sandbox_config_default(&cfg);
    cfg.pool_size = 1;
    const char *stdin_file = NULL, *prog_file = NULL;
    int as_json = 0, only_probe = 0, argi = 1;
    json_t *settings = NULL;
    for (; argi < argc; argi++) {
        const char *a = argv[argi];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "--config") || !strcmp(a, "--set")) && argi + 1 < argc) {
            json_error_t je;
            json_t *j = NULL;
            if (!strcmp(a, "--config")) {
                j = rlhf_json_load_file(argv[argi + 1], JSON_REJECT_DUPLICATES, &err);
                if (!j) rlhf_error_print("rlhf sandbox-run", &err);
            } else {
                j = json_loads(argv[argi + 1], JSON_REJECT_DUPLICATES, &je);
                if (!j) fprintf(stderr, "rlhf sandbox-run: error: --set: column %d: %s\n", je.column, je.text);
            }
            if (!j) return 2;
            int rc = sandbox_config_parse(&cfg, j, !strcmp(a, "--config") ? argv[argi + 1] : "--set", &err);
            json_decref(j);
            if (rc) {
                rlhf_error_print("rlhf sandbox-run", &err);
                return 2;
            }
            argi++;
        } else if (!strcmp(a, "--stdin") && argi + 1 < argc) {
            stdin_file = argv[++argi];
        } else if (!strcmp(a, "--json")) {
            as_json = 1;
        } else if (!strcmp(a, "--probe")) {
            only_probe = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "rlhf sandbox-run: error: unknown option %s (see --help)\n", a);
            return 2;
        } else {
            break;
        }
    }
    (void)settings;
    if (!only_probe) {
        if (argi >= argc) {
            usage(stderr);
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
