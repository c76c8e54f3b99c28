/* tests/e2e/test_remote_gen.c — a generator that joins a run from elsewhere (scale-out, issue 18):
 *
 *   joins_over_curve: a run whose broker listens on tcp:// (CURVE); `rlhf credentials RUN_DIR --role
 *                     generator --out DIR` hands out the generator key pair and the broker's public key
 *                     only; a second generator started from another directory with a copy of the config,
 *                     `--credentials DIR --endpoint tcp://...`, joins, and groups it sampled are trained on
 *                     (scores.jsonl); the exported directory holds no secret of the broker's; an export
 *                     for the control role is refused. */
#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];

static int suite_init(void) { return e2e_suite_dir("remote", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf); }

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &n) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

static void test_joins_over_curve(void) {
    char cfg[256], out[256], run[256], doc[2048], endpoint[64], cred[400], creds_out[300];
    int port = free_port();
    CU_ASSERT_FATAL(port > 0);
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(cfg, sizeof cfg, "%s/remote.json", g_dir);
    snprintf(out, sizeof out, "%s/remote.out", g_dir);
    snprintf(run, sizeof run, "%s/remote", g_dir);
    snprintf(doc, sizeof doc,
             "{\"name\":\"remote\",\"run_dir\":\"remote\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"lr\":0.01,\"steps\":400,\"checkpoint_every\":100,\"seed\":5},\n"
             " \"broker\":{\"endpoint\":\"%s\"},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":2,\"threads\":1}}\n", endpoint);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    const char *a[] = {"run", cfg, "--quiet", NULL};
    pid_t launcher = test_proc_spawn_args(g_rlhf, g_rlhf, a, &o);
    CU_ASSERT_FATAL(launcher > 0);
    /* the launch's keys, then a hand-out for a generator elsewhere */
    snprintf(cred, sizeof cred, "%s/credentials/generator.key", run);
    double t0 = rlhf_now();
    while (access(cred, F_OK) != 0 && rlhf_now() - t0 < 60) usleep(50000);
    CU_ASSERT_FATAL(access(cred, F_OK) == 0);
    snprintf(creds_out, sizeof creds_out, "%s/elsewhere-keys", g_dir);
    char cout[300];
    snprintf(cout, sizeof cout, "%s/cred.out", g_dir);
    test_proc_opts oc = {.out = cout, .err = cout};
    const char *ctl[] = {"credentials", run, "--role", "control", "--out", creds_out, NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, ctl, &oc, 30), 2); /* the control key never leaves */
    const char *c[] = {"credentials", run, "--role", "generator", "--out", creds_out, NULL};
    CU_ASSERT_EQUAL_FATAL(test_proc_run_args(g_rlhf, g_rlhf, c, &oc, 30), 0);
    char p[400];
    snprintf(p, sizeof p, "%s/broker.key", creds_out);
    char *bk = e2e_slurp(p);
    CU_ASSERT_PTR_NOT_NULL(bk);
    CU_ASSERT(bk && strstr(bk, "public=") && !strstr(bk, "secret=")); /* the broker's public key only */
    free(bk);
    struct stat st;
    CU_ASSERT(stat(creds_out, &st) == 0 && (st.st_mode & 077) == 0);
    /* "another host": its own directory, a copy of the config, the hand-out, the tcp address */
    char other[300], ocfg[400], gout[300];
    snprintf(other, sizeof other, "%s/otherhost", g_dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(other, 0755), 0);
    snprintf(ocfg, sizeof ocfg, "%s/config.json", other);
    snprintf(p, sizeof p, "%s/config.json", run);
    char *rc_txt = e2e_slurp(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc_txt);
    CU_ASSERT_EQUAL_FATAL(write_text(ocfg, rc_txt), 0);
    free(rc_txt);
    snprintf(gout, sizeof gout, "%s/gen7.out", g_dir);
    test_proc_opts og = {.out = gout, .err = gout, .die_with_parent = 1};
    const char *g[] = {"generator", "--config", ocfg, "--id", "7", "--credentials", creds_out, "--endpoint", endpoint, NULL};
    pid_t gen = test_proc_spawn_args(g_rlhf, g_rlhf, g, &og);
    CU_ASSERT_FATAL(gen > 0);
    int st_l = test_proc_wait(launcher, 240);
    CU_ASSERT_EQUAL(st_l, 0);
    if (waitpid(gen, NULL, WNOHANG) == 0) test_proc_stop(gen, 10);
    char *gl = e2e_slurp(gout);
    CU_ASSERT(gl && strstr(gl, "generator-7.") && strstr(gl, "connected to tcp://127.0.0.1:"));
    free(gl);
    /* groups of generator 7 were trained on */
    snprintf(p, sizeof p, "%s/scores.jsonl", run);
    char *sc = e2e_slurp(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sc);
    int from7 = 0, trained7 = 0;
    for (char *l = strstr(sc, "\"generator\":\"generator-7."); l; l = strstr(l + 1, "\"generator\":\"generator-7.")) {
        from7++;
        char *end = strchr(l, '\n');
        char *f = strstr(l, "\"fate\":\"trained\"");
        if (f && (!end || f < end)) trained7++;
    }
    free(sc);
    CU_ASSERT(from7 > 0);
    CU_ASSERT(trained7 > 0);
}

void e2e_register_remote_gen(void);
void e2e_register_remote_gen(void) {
    CU_pSuite s = CU_add_suite("e2e_remote_gen", suite_init, suite_cleanup);
    CU_add_test(s, "joins_over_curve", test_joins_over_curve);
}
