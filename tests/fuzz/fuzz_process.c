/* tests/fuzz/fuzz_process.c — process-plugin JSON lines (rewards/process.c): the replies of a child to
 * its init line and to each batch.
 *
 * The plugin is a real child process (fuzz_plugin_echo.c) that answers each line from the host with a line
 * the harness wrote for it (its init reply or its batch reply, the batch's "id" put where the reply says
 * @ID@), so the host's whole path runs — socket, line framing, NaN marking, restarts after bad output.
 * Input: the batch reply, then optionally the init reply used at the next (re)start, separated by
 * FUZZ_SEP; newlines in them become spaces (one reply is one line). The first byte's low 3 bits + 1 are
 * the batch size. Properties: every item gets a status; an OK item's score is finite. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/common.h"
#include "rewards/rewards.h"
#include "tests/fuzz/fuzz_util.h"

static reward_pipeline *g_pipe;

static void write_line(const char *name, const uint8_t *p, size_t n) {
    char *s = malloc(n + 2);
    if (!s) abort();
    for (size_t i = 0; i < n; i++) s[i] = (p[i] == '\n' || p[i] == '\r') ? ' ' : (char)p[i];
    s[n] = '\n';
    fuzz_write_file(name, (const uint8_t *)s, n + 1);
    free(s);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    static const char ok[] = "{\"ok\": true}";
    write_line("init.txt", (const uint8_t *)ok, sizeof ok - 1);
    char helper[4096];
    ssize_t len = readlink("/proc/self/exe", helper, sizeof helper - 32);
    if (len <= 0) abort();
    helper[len] = 0;
    strcpy(strrchr(helper, '/') + 1, "fuzz_plugin_echo");
    json_t *src = json_pack("[{s:s, s:s, s:[s, s], s:i}]", "type", "process", "name", "plugin", "command", helper,
                            fuzz_tmpdir(), "timeout_ms", 1000);
    rlhf_error err;
    if (!src || reward_pipeline_create(&g_pipe, src, "fuzz", &err)) {
        fprintf(stderr, "fuzz_process: %s: %s\n", err.where, err.msg);
        abort();
    }
    json_decref(src);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t n = 1 + (data[0] & 7);
    fuzz_part parts[2];
    size_t np = fuzz_split(data + 1, size - 1, parts, 2);
    write_line("reply.txt", parts[0].p, parts[0].n);
    static const char ok[] = "{\"ok\": true}";
    if (np > 1) write_line("init.txt", parts[1].p, parts[1].n);
    else write_line("init.txt", (const uint8_t *)ok, sizeof ok - 1);
    rlhf_reward_item items[8];
    for (size_t i = 0; i < n; i++)
        items[i] = (rlhf_reward_item){.prompt = "2+2?", .completion = "4", .record_json = "{\"answer\": \"4\"}",
                                      .group_id = (int64_t)(i / 2)};
    reward_scores s = {0};
    rlhf_error err;
    reward_pipeline_score(g_pipe, items, n, &s, &err);
    FUZZ_ASSERT(s.n_items == n && s.n_sources == 1, "scores for %zu items, %zu sources", s.n_items, s.n_sources);
    for (size_t i = 0; i < n; i++)
        if (s.status[i].code == RLHF_REWARD_OK) FUZZ_ASSERT(isfinite(s.raw[i]), "item %zu OK with score %g", i, s.raw[i]);
    reward_scores_free(&s);
    return 0;
}
