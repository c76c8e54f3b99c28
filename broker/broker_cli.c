/* broker/broker_cli.c — `rlhf broker` (also rlhf-broker) and `rlhf replay-cat`. */
#include "broker/broker.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop_signal; /* set by the signal handler only */

static void on_signal(int sig) {
    (void)sig;
    g_stop_signal = 1;
}

/* The exit status class of a failed broker (docs/RUNNING.md): an endpoint it cannot bind is a config
 * error (broker.c), a full disk under the replay log an environment error; 1 (transient) otherwise. */
static int broker_exit_status(const rlhf_error *err) {
    int st = rlhf_exit_status(err);
    return st == RLHF_EXIT_OK ? RLHF_EXIT_TRANSIENT : st;
}

static const char broker_usage[] =
    "usage: rlhf broker --config RUN_CONFIG.json [--run-dir DIR] [--endpoint URL] [--credentials DIR]\n"
    "                   [--init-credentials | --insecure] [--repair]\n"
    "  Runs the broker with the run config's \"broker\" section (docs/BROKER.md).\n"
    "  --run-dir DIR       where the replay log goes (default: .)\n"
    "  --endpoint URL      overrides broker.endpoint\n"
    "  --credentials DIR   the run's CURVE credentials (default: RUN_DIR/credentials; `rlhf run` creates them)\n"
    "  --init-credentials  create fresh credentials there first (peers then need a copy of their role's key)\n"
    "  --insecure          no authentication: any process that reaches the endpoint can stop the run\n"
    "  --repair            a replay log with damaged records is rewritten keeping every valid record\n"
    "                      (after a copy to LOG.damaged-<time>); without it such a log is refused\n"
    "  Stops cleanly on SIGINT/SIGTERM or a CONTROL stop, flushing the replay log.\n";

/* --repair: before the broker opens the log (which refuses damage), rewrite it keeping every valid
 * record; says what it did in one line. */
static int repair_replay_log(const broker_config *cfg, const char *run_dir, rlhf_error *err) {
    char path[8300];
    if (cfg->replay_path[0] == '/') snprintf(path, sizeof path, "%s", cfg->replay_path);
    else snprintf(path, sizeof path, "%s/%s", run_dir, cfg->replay_path);
    if (access(path, F_OK) != 0) return 0;
    replay_repair_report rep;
    int rc = replay_log_repair(path, &rep, err);
    if (rc) return rc;
    if (rep.segments_repaired)
        fprintf(stderr, "[broker] replay log %s: repaired %u segment(s): dropped %llu damaged stretch(es), kept all "
                        "%llu valid records; the damaged copy is %s\n",
                path, rep.segments_repaired, (unsigned long long)rep.damaged_stretches,
                (unsigned long long)rep.records, rep.quarantine);
    else
        fprintf(stderr, "[broker] replay log %s: no damage, nothing to repair (%llu records)\n", path,
                (unsigned long long)rep.records);
    return 0;
}

int cmd_broker(int argc, char **argv) {
    const char *config = NULL, *run_dir = ".", *endpoint = NULL, *credentials = NULL;
    int insecure = 0, init_credentials = 0, repair = 0;
    const rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &config), RLHF_OPT("--run-dir", RLHF_OPT_STR, &run_dir),
                             RLHF_OPT("--endpoint", RLHF_OPT_STR, &endpoint),
                             RLHF_OPT("--credentials", RLHF_OPT_STR, &credentials),
                             RLHF_OPT("--insecure", RLHF_OPT_FLAG, &insecure),
                             RLHF_OPT("--init-credentials", RLHF_OPT_FLAG, &init_credentials),
                             RLHF_OPT("--repair", RLHF_OPT_FLAG, &repair), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf broker", broker_usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    rlhf_error err;
    rlhf_error_clear(&err);
    broker_config cfg;
    broker_config_default(&cfg);
    if (config) {
        json_t *root = rlhf_json_load_file(config, JSON_REJECT_DUPLICATES, &err);
        if (!root) {
            rlhf_error_print("rlhf broker", &err);
            return err.code == RLHF_EIO ? rlhf_exit_status(&err) : RLHF_EXIT_CONFIG;
        }
        if (!json_is_object(root)) {
            fprintf(stderr, "rlhf broker: error: %s: the run config must be a JSON object\n", config);
            json_decref(root);
            return RLHF_EXIT_CONFIG;
        }
        int rc = broker_config_parse(&cfg, json_object_get(root, "broker"), "broker", &err);
        json_decref(root);
        if (rc) {
            char where[sizeof err.where];
            snprintf(where, sizeof where, "%s", err.where);
            snprintf(err.where, sizeof err.where, "%.*s: %.*s", 120, config, 120, where);
            rlhf_error_print("rlhf broker", &err);
            return RLHF_EXIT_CONFIG;
        }
    }
    if (endpoint) snprintf(cfg.endpoint, sizeof cfg.endpoint, "%s", endpoint);
    if (insecure && (credentials || init_credentials)) {
        fprintf(stderr, "rlhf broker: error: --insecure does not go with --credentials or --init-credentials\n");
        broker_config_free(&cfg);
        return RLHF_EXIT_CONFIG;
    }
    cfg.insecure = insecure;
    if (credentials) snprintf(cfg.credentials, sizeof cfg.credentials, "%s", credentials);
    if (init_credentials) {
        char dir[8300];
        if (credentials) snprintf(dir, sizeof dir, "%s", credentials);
        else snprintf(dir, sizeof dir, "%s/%s", run_dir, BROKER_CREDENTIALS_DIR);
        if (rlhf_mkdirs(run_dir, &err) || broker_credentials_create(dir, &err)) {
            rlhf_error_print("rlhf broker", &err);
            broker_config_free(&cfg);
            return broker_exit_status(&err);
        }
        fprintf(stderr, "[broker] new credentials in %s\n", dir); /* the directory, never a key */
    }
    if (repair && cfg.replay_path[0] && repair_replay_log(&cfg, run_dir, &err)) {
        broker_config_free(&cfg);
        rlhf_error_print("rlhf broker", &err);
        return broker_exit_status(&err);
    }
    rlhf_on_signals(on_signal, (const int[]){SIGINT, SIGTERM, 0});
    signal(SIGPIPE, SIG_IGN);
    broker *b = NULL;
    int rc = broker_create(&b, &cfg, run_dir, &err);
    broker_config_free(&cfg);
    if (rc) {
        /* the exit status tells the launcher whether a restart can help (docs/RUNNING.md) */
        rlhf_error_print("rlhf broker", &err);
        return broker_exit_status(&err);
    }
    rc = broker_run(b, &g_stop_signal, &err);
    json_t *s = broker_stats(b);
    char *line = json_dumps(s, JSON_COMPACT);
    fprintf(stderr, "[broker] final stats %s\n", line ? line : "{}");
    free(line);
    json_decref(s);
    broker_destroy(&b);
    if (rc) {
        rlhf_error_print("rlhf broker", &err);
        return broker_exit_status(&err);
    }
    return 0;
}

static const char replay_cat_usage[] =
    "usage: rlhf replay-cat [--meta] [--skip-corrupt] LOG\n"
    "  Prints every rollout group of a replay log (and its later segments LOG.1, LOG.2, ...)\n"
    "  as one JSON object per line. --meta leaves out token ids and log-probs.\n"
    "  A damaged record is an error (exit 1) unless --skip-corrupt: then it is skipped and listed.\n";

int cmd_replay_cat(int argc, char **argv) {
    const char *path = NULL;
    int meta_only = 0, npos = 0, skip_corrupt = 0;
    const rlhf_opt opts[] = {RLHF_OPT("--meta", RLHF_OPT_FLAG, &meta_only),
                             RLHF_OPT("--skip-corrupt", RLHF_OPT_FLAG, &skip_corrupt), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf replay-cat", replay_cat_usage, opts, &path, 1, &npos);
    if (prc >= 0) return prc;
    if (!path) {
        fprintf(stderr, "rlhf replay-cat: error: missing LOG (rlhf replay-cat --help)\n");
        return 2;
    }
    rlhf_error err;
    rlhf_error_clear(&err);
    replay_reader *r;
    if (replay_reader_open(&r, path, &err) != 0) {
        rlhf_error_print("rlhf replay-cat", &err);
        return 1;
    }
    replay_reader_skip_corrupt(r, skip_corrupt);
    wire_rollout_group g;
    replay_pos pos;
    int rc;
    uint64_t n = 0;
    while ((rc = replay_reader_next(r, &g, &pos, &err)) == 1) {
        json_t *o = wire_rollout_group_to_json(&g);
        if (meta_only) {
            json_t *samples = json_object_get(o, "samples");
            size_t i;
            json_t *s;
            json_array_foreach(samples, i, s) {
                json_object_set_new(s, "n_tokens", json_integer((json_int_t)json_array_size(json_object_get(s, "tokens"))));
                json_object_del(s, "tokens");
                json_object_del(s, "logprobs");
            }
            json_object_del(o, "prompt_tokens");
        }
        json_object_set_new(o, "log_segment", json_integer(pos.segment));
        json_object_set_new(o, "log_offset", json_integer((json_int_t)pos.offset));
        char *line = json_dumps(o, JSON_COMPACT);
        if (line) puts(line);
        free(line);
        json_decref(o);
        wire_rollout_group_free(&g);
        n++;
    }
    replay_pos tp;
    uint64_t tb;
    int torn = replay_reader_torn(r, &tp, &tb);
    const replay_damage *d;
    size_t nd = replay_reader_damage(r, &d);
    for (size_t i = 0; i < nd; i++)
        fprintf(stderr, "rlhf replay-cat: warning: %s: skipped a damaged stretch of %llu bytes at segment %u offset %llu\n",
                path, (unsigned long long)d[i].bytes, d[i].pos.segment, (unsigned long long)d[i].pos.offset);
    replay_reader_close(&r);
    if (torn)
        fprintf(stderr, "rlhf replay-cat: warning: %s: skipped a torn last record (%llu bytes at segment %u offset %llu)\n",
                path, (unsigned long long)tb, tp.segment, (unsigned long long)tp.offset);
    if (rc < 0) {
        rlhf_error_print("rlhf replay-cat", &err);
        return 1;
    }
    fprintf(stderr, "rlhf replay-cat: %llu records\n", (unsigned long long)n);
    return 0;
}

static const char credentials_usage[] =
    "usage: rlhf credentials RUN_DIR --role generator|updater --out DIR\n"
    "  Writes DIR (mode 0700): the role's key pair from RUN_DIR/credentials and the broker's public key,\n"
    "  all a process on another host needs to join the run as that role (rlhf generator --credentials DIR\n"
    "  --endpoint tcp://HOST:PORT). The broker's secret and the launcher's control key never leave\n"
    "  RUN_DIR. Keys are made afresh at every launch unless launcher.keep_credentials is true.\n";

int cmd_credentials(int argc, char **argv) {
    const char *run_dir = NULL, *role_name = NULL, *out = NULL;
    int npos = 0;
    const rlhf_opt opts[] = {RLHF_OPT("--role", RLHF_OPT_STR, &role_name), RLHF_OPT("--out", RLHF_OPT_STR, &out),
                             RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf credentials", credentials_usage, opts, &run_dir, 1, &npos);
    if (prc >= 0) return prc;
    int role = !role_name ? -1 : !strcmp(role_name, "generator") ? WIRE_ROLE_GENERATOR
                               : !strcmp(role_name, "updater")   ? WIRE_ROLE_UPDATER
                                                                 : -1;
    if (!run_dir || !out || role < 0) {
        fprintf(stderr, "rlhf credentials: error: %s\n%s",
                !run_dir ? "missing RUN_DIR" : !out ? "missing --out DIR" : "--role must be generator or updater",
                credentials_usage);
        return 2;
    }
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/%s", run_dir, BROKER_CREDENTIALS_DIR);
    rlhf_error err = {0};
    if (broker_credentials_export(dir, role, out, &err)) {
        rlhf_error_print("rlhf credentials", &err);
        return 1;
    }
    fprintf(stderr, "rlhf credentials: %s: the %s key pair and the broker's public key (keep it private)\n", out,
            role_name);
    return 0;
}

static const char keygen_usage[] =
    "usage: rlhf keygen --out FILE\n"
    "  Writes a fresh CURVE key pair to FILE (mode 0600: public= and secret= lines; it never replaces a file)\n"
    "  and its public line alone to FILE.pub. Prints the public key and the paths, never the secret.\n"
    "  A generator on another host: `rlhf generator --key FILE --server-key BROKER.pub --connect tcp://...`,\n"
    "  with FILE's public key in the run's broker.authorized_keys (docs/MULTI_HOST.md).\n";

int cmd_keygen(int argc, char **argv) {
    const char *out = NULL;
    const rlhf_opt opts[] = {RLHF_OPT("--out", RLHF_OPT_STR, &out), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf keygen", keygen_usage, opts, NULL, 0, NULL);
    if (prc >= 0) return prc;
    if (!out || !out[0]) {
        fprintf(stderr, "rlhf keygen: error: missing --out FILE\n%s", keygen_usage);
        return 2;
    }
    rlhf_error err = {0};
    char pub[41];
    if (broker_keygen(out, pub, &err)) {
        rlhf_error_print("rlhf keygen", &err);
        return err.code == RLHF_EINVAL ? RLHF_EXIT_CONFIG : rlhf_exit_status(&err);
    }
    printf("public=%s\n", pub);
    fprintf(stderr, "rlhf keygen: key pair in %s (mode 0600, keep it on this host), public key in %s.pub\n", out, out);
    return 0;
}
