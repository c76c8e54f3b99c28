/* run/chat_data.c — prompt datasets of chat messages for `rlhf run`: a task.train / task.eval /
 * broker.dataset file with `messages` lines is rendered once, at launch, through the chat template
 * (task.chat_template, else the tokenizer_config.json of model.tokenizer or of the base model's
 * directory) into RUN_DIR/prompts/, and the resolved config names the rendered file. Every process then
 * reads plain `prompt` lines, and the prompt text a run trained on stays in its directory. Rendering
 * goes to a scratch directory first so that a config refused later still leaves no run directory. */
#include <errno.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "prompts/prompts.h"
#include "run/run.h"
#include "template/template.h"

static int is_dir(const char *p) {
    struct stat st;
    return p[0] && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int load_template(const run_config *cfg, template_program **t, char **bos, char **eos, rlhf_error *err) {
    char *text = NULL, name[1200];
    int rc = 0;
    if (cfg->chat_template[0]) {
        size_t len;
        if ((rc = rlhf_read_file(cfg->chat_template, &text, &len, err))) return rc;
        snprintf(name, sizeof name, "%.1100s", cfg->chat_template);
        /* the model's bos/eos still come from its tokenizer_config.json when there is one */
        const char *dir = is_dir(cfg->tokenizer_path) ? cfg->tokenizer_path : is_dir(cfg->base_checkpoint) ? cfg->base_checkpoint : "";
        char *ignored = NULL;
        if (dir[0] && (rc = template_load_hf(dir, &ignored, bos, eos, err))) return free(text), rc;
        free(ignored);
    } else {
        const char *dirs[2] = {cfg->tokenizer_path, cfg->base_checkpoint};
        for (int k = 0; k < 2 && !text; k++) {
            if (!is_dir(dirs[k])) continue;
            free(*bos), free(*eos);
            *bos = *eos = NULL;
            if ((rc = template_load_hf(dirs[k], &text, bos, eos, err))) return rc;
            snprintf(name, sizeof name, "%.1000s/tokenizer_config.json:chat_template", dirs[k]);
        }
        if (!text) return 0;
    }
    rc = template_create(t, text, strlen(text), name, err);
    free(text);
    return rc;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

void run_chat_data_cleanup(run_chat_data *cd) {
    if (cd->scratch[0]) nftw(cd->scratch, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    memset(cd, 0, sizeof *cd);
}

int run_chat_data_render(run_config *cfg, run_chat_data *cd, rlhf_error *err) {
    memset(cd, 0, sizeof *cd);
    json_t *b = cfg->broker;
    const char *b_dataset = json_string_value(json_object_get(b, "dataset"));
    struct {
        const char *key;
        char *path; /* NULL: the broker's, in the JSON */
    } sets[3] = {{"task.train", cfg->train_path}, {"task.eval", cfg->eval_path}, {"broker.dataset", NULL}};
    int need[3] = {0}, any = 0, rc = 0;
    for (int k = 0; k < 3; k++) {
        const char *p = sets[k].path ? sets[k].path : b_dataset;
        if (!p || !p[0] || access(p, R_OK) != 0) continue; /* a missing file is reported by the dataset checks */
        if ((rc = prompt_dataset_has_messages(p, &need[k], err))) return rc;
        any |= need[k];
    }
    if (!any) return 0;
    template_program *t = NULL;
    char *bos = NULL, *eos = NULL;
    if ((rc = load_template(cfg, &t, &bos, &eos, err))) goto done;
    snprintf(cd->scratch, sizeof cd->scratch, "%s/rlhf-chat-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(cd->scratch)) {
        cd->scratch[0] = 0;
        rc = rlhf_error_set(err, RLHF_ESYS, "/tmp", "cannot create a scratch directory: %s", strerror(errno));
        goto done;
    }
    prompt_chat chat = {.tmpl = t, .bos_token = bos, .eos_token = eos};
    for (int k = 0; k < 3 && !rc; k++) {
        if (!need[k]) continue;
        const char *in = sets[k].path ? sets[k].path : b_dataset;
        char base[1024], out[2100];
        snprintf(base, sizeof base, "%s", in);
        snprintf(out, sizeof out, "%s/%d-%.1000s", cd->scratch, k, basename(base));
        size_t n = 0;
        if (!t) {
            char w[1200];
            snprintf(w, sizeof w, "%.200s: %s: %.900s", cfg->source, sets[k].key, in);
            rc = rlhf_error_set(err, RLHF_EINVAL, w,
                                "has `messages` lines and the model has no chat template (no chat_template in "
                                "tokenizer_config.json): name one with task.chat_template");
            break;
        }
        if ((rc = prompt_dataset_render_messages(in, out, &chat, &n, err))) break;
        snprintf(cd->rendered[k], sizeof cd->rendered[k], "%s", out);
        snprintf(cd->final_name[k], sizeof cd->final_name[k], "%.200s", basename(base));
        /* the config names the rendered file from now on; its final place is set by run_chat_data_commit */
        if (sets[k].path) {
            snprintf(sets[k].path, 1024, "%.1000s", out);
            json_object_set_new(json_object_get(cfg->resolved, "task"), k == 0 ? "train" : "eval", json_string(out));
        } else {
            json_object_set_new(b, "dataset", json_string(out));
        }
        /* the broker's dataset defaults to task.train's: the same file is one rendering */
        if (k == 0 && b_dataset && !strcmp(b_dataset, in)) {
            json_object_set_new(b, "dataset", json_string(out));
            need[2] = 0;
            b_dataset = NULL;
        }
    }
done:
    template_destroy(&t);
    free(bos);
    free(eos);
    if (rc) run_chat_data_cleanup(cd);
    return rc;
}

static void replace_str(json_t *obj, const char *key, const char *from, const char *to) {
    const char *v = json_string_value(json_object_get(obj, key));
    if (v && !strcmp(v, from)) json_object_set_new(obj, key, json_string(to));
}

int run_chat_data_commit(run_config *cfg, run_chat_data *cd, rlhf_error *err) {
    int rc = 0;
    if (!cd->scratch[0]) return 0;
    char dir[1100];
    snprintf(dir, sizeof dir, "%.1000s/prompts", cfg->run_dir);
    if ((rc = rlhf_mkdirs(dir, err))) goto done;
    static const char *const names[3] = {"train", "eval", "broker"};
    for (int k = 0; k < 3 && !rc; k++) {
        if (!cd->rendered[k][0]) continue;
        char final[1400], *data = NULL;
        size_t len = 0;
        snprintf(final, sizeof final, "%s/%s-%.200s", dir, names[k], cd->final_name[k]);
        if ((rc = rlhf_read_file(cd->rendered[k], &data, &len, err))) break;
        rc = rlhf_write_file_atomic(final, data, len, err);
        free(data);
        if (rc) break;
        json_t *task = json_object_get(cfg->resolved, "task"), *broker = json_object_get(cfg->resolved, "broker");
        replace_str(task, "train", cd->rendered[k], final);
        replace_str(task, "eval", cd->rendered[k], final);
        replace_str(broker, "dataset", cd->rendered[k], final);
        replace_str(cfg->broker, "dataset", cd->rendered[k], final);
        if (!strcmp(cfg->train_path, cd->rendered[k])) snprintf(cfg->train_path, sizeof cfg->train_path, "%.1000s", final);
        if (!strcmp(cfg->eval_path, cd->rendered[k])) snprintf(cfg->eval_path, sizeof cfg->eval_path, "%.1000s", final);
    }
done:
    run_chat_data_cleanup(cd);
    return rc;
}
