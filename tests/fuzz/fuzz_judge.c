/* tests/fuzz/fuzz_judge.c — the LLM judge's score extraction and prompt rendering (rewards/judge/).
 *
 * Input: the judge's message content, then optionally a prompt template and a dataset record (JSON),
 * separated by FUZZ_SEP. judge_extract_score reads the content as a server would send it (any bytes up
 * to a NUL; a non-finite score such as "score: -nan" is returned, and the client's range check refuses
 * it). judge_render fills the template from the
 * record. The HTTP exchange itself (choices[0].message.content, status codes) is covered by
 * tests/judge against a scripted server, not here. */
#include <stdint.h>
#include <stdlib.h>

#include "rewards/judge/judge.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_part parts[3];
    size_t np = fuzz_split(data, size, parts, 3);
    char *content = fuzz_strndup(parts[0].p, parts[0].n);
    double score;
    int rc = judge_extract_score(content, &score);
    FUZZ_ASSERT(rc == 0 || rc == -1, "judge_extract_score returned %d", rc);
    if (np >= 2) {
        char *tmpl = fuzz_strndup(parts[1].p, parts[1].n);
        json_t *rec = np >= 3 ? json_loadb((const char *)parts[2].p, parts[2].n, 0, NULL) : NULL;
        char *missing = NULL;
        char *out = judge_render(tmpl, content, "a completion", rec, &missing);
        FUZZ_ASSERT(out || missing, "render failed without naming a missing field");
        free(out);
        free(missing);
        json_decref(rec);
        free(tmpl);
    }
    free(content);
    return 0;
}
