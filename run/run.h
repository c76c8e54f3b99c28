/* run/run.h — what every process of a training run shares (run/'s public header).
 *
 *   - the run configuration: one JSON document for a whole training run (model, task, rewards, RL
 *     hyper-parameters, process counts, broker, prompt selection, run directory), validated up front
 *     with errors naming the JSON path, `--set a.b=c` overrides, the resolved copy in the run dir;
 *     every key is in the one table of run/config.c;
 *   - preparation: everything a run needs checked before any process starts, and the base model
 *     (created from model.arch when no checkpoint is named) loaded the same way by every process;
 *   - the policy's weights to and from WEIGHTS messages (the updater publishes, generators apply);
 *   - one run per directory: the run directory's lock (run_dir_lock_*);
 *   - run_process_open: the start-up that the generator and the updater processes share (config,
 *     thread count, broker section).
 *
 * Generators, updaters and the `rlhf` commands (cli/) are built on it; it knows nothing of them. */
#ifndef RLHF_RUN_RUN_H
#define RLHF_RUN_RUN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "broker/broker.h"
#include "broker/wire.h"
#include "common/common.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- run configuration */

enum { RL_LOSS_TIS = 0, RL_LOSS_PPO_CLIP = 1, RL_LOSS_DECOUPLED_PPO = 2, RL_LOSS_GSPO = 3, RL_LOSS_CISPO = 4 };
/* rl.advantage: the advantage estimator */
enum { RL_ADV_RLOO = 0, RL_ADV_GRPO = 1, RL_ADV_DR_GRPO = 2, RL_ADV_REINFORCE_PP = 3 };
/* rl.scale_rewards (grpo): what the centred rewards are divided by */
enum { RL_SCALE_GROUP = 0, RL_SCALE_BATCH = 1, RL_SCALE_NONE = 2 };
/* rl.loss_agg: how per-token terms become the loss */
enum { RL_AGG_TOKEN_MEAN = 0, RL_AGG_SEQ_MEAN_TOKEN_SUM = 1, RL_AGG_SEQ_MEAN_TOKEN_MEAN = 2, RL_AGG_SEQ_MEAN_TOKEN_SUM_NORM = 3 };
/* rl.prox: how decoupled PPO gets the proximal policy's log-probs */
enum { RL_PROX_RECOMPUTE = 0, RL_PROX_INTERPOLATE = 1 };
enum { RUN_MODE_ASYNC = 0, RUN_MODE_SYNC = 1 };
enum { RUN_EXPORT_HF_NONE = 0, RUN_EXPORT_HF_BF16 = 1, RUN_EXPORT_HF_F32 = 2 };
/* generators.behaviour_logprobs: which log-prob of each sampled token a rollout group carries as
 * log mu, the behaviour policy of the updater's importance ratio pi_theta / mu (docs/ARCHITECTURE.md) */
enum {
    RUN_BEHAVIOUR_SAMPLING = 0, /* log q: the distribution actually sampled from (temperature and filters) */
    RUN_BEHAVIOUR_POLICY = 1,   /* log pi at temperature 1, unfiltered: the ratio then measures policy lag only */
};
enum { RUN_MAX_STOPS = 16 };
enum { RUN_CHECKPOINT_KEEP_DEFAULT = 5 }; /* checkpoint.keep's default */

typedef struct run_config {
    char name[128];          /* "name": run name; run_dir defaults to runs/<name> */
    char run_dir[1024];      /* "run_dir" */
    int mode;                /* "mode": RUN_MODE_ASYNC | RUN_MODE_SYNC */

    /* "model" */
    char base_checkpoint[1024]; /* "model.base_checkpoint": safetensors file of the base policy */
    json_t *arch;               /* "model.arch": model_config JSON (used to create a base when no checkpoint) */
    int train_threads;          /* "model.threads": OpenMP threads of the updater (0 = all cores) */
    char tokenizer_path[1024];  /* "model.tokenizer": "" = the base model's own (the tokenizer.json of an HF
                                 * directory, else byte-level); "bytes"; or a directory holding tokenizer.json */
    model_lora_config lora;     /* "model.lora": LoRA adapters (model.h), rank 0 = none (full fine-tuning) */
    int max_seq_len;            /* "model.max_seq_len": 0 = the model's; else caps it (an HF model's
                                 * max_position_embeddings sizes every KV cache and activation buffer) */
    int export_hf;              /* "rl.export_hf": "none" | "bf16" | "f32": each checkpoint also as a
                                 * Hugging Face directory, checkpoints/step_N/hf (RUN_EXPORT_HF_*) */

    /* "task" */
    char task_name[64];        /* "task.name": countdown | arith | custom */
    char train_path[1024];     /* "task.train": prompt JSONL */
    char eval_path[1024];      /* "task.eval": held-out prompt JSONL (optional) */
    char chat_template[1024];  /* "task.chat_template": a Jinja file for `messages` datasets; "" = the model's
                                * own (tokenizer_config.json), docs/CHAT_TEMPLATES.md */
    int eval_prompts;          /* "task.eval_prompts": how many held-out prompts to score (0 = all) */
    char *stop[RUN_MAX_STOPS]; /* "task.stop": stop strings of a completion (owned; default one: "\n") */
    int n_stop;
    int include_stop;          /* "task.include_stop": the matched stop string stays in the completion */
    json_t *guided;            /* "task.guided": {"schema": {...}} | {"regex": "..."} (docs/GUIDED.md), or NULL */

    json_t *rewards;           /* "rewards": array given to the reward pipeline */
    json_t *broker;            /* "broker": object given to the broker's own parser */
    json_t *selector;          /* "prompts.selector": object given to prompt_selector_create */

    /* "rl" */
    int k;                     /* rl.k: samples per prompt (>= 2 for RLOO) */
    int prompts_per_step;      /* rl.prompts_per_step: groups per optimizer step */
    float lr;                  /* rl.lr */
    float lr_min_ratio;        /* rl.lr_min_ratio: cosine schedule floor as a fraction of lr */
    int warmup_steps;          /* rl.warmup_steps */
    float weight_decay;        /* rl.weight_decay */
    float grad_clip;           /* rl.grad_clip: global L2 norm, 0 = off */
    int max_staleness;         /* rl.max_staleness (sync mode forces 0) */
    float is_cap;              /* rl.is_cap: truncation c of the IS ratio */
    int loss;                  /* rl.loss: RL_LOSS_TIS | RL_LOSS_PPO_CLIP | RL_LOSS_DECOUPLED_PPO */
    float clip_eps;            /* rl.clip_eps: PPO clip epsilon */
    float behav_weight_cap;    /* rl.behav_weight_cap: decoupled PPO drops tokens whose pi_prox/mu exceeds it */
    float clip_eps_low, clip_eps_high; /* rl.clip_eps_low / rl.clip_eps_high (default: clip_eps): [1-low, 1+high] */
    float clip_ratio_c;        /* rl.clip_ratio_c: PPO dual clip for negative advantages (0: off, else > 1) */
    int advantage;             /* rl.advantage: RL_ADV_* */
    int scale_rewards;         /* rl.scale_rewards: RL_SCALE_* (grpo) */
    int loss_agg;              /* rl.loss_agg: RL_AGG_* */
    int prox;                  /* rl.prox: RL_PROX_RECOMPUTE | RL_PROX_INTERPOLATE */
    int ppo_epochs;            /* rl.ppo_epochs: passes over each step's batch */
    int mini_batches;          /* rl.mini_batches: optimizer updates per pass (the batch split by sample) */
    float kl_beta;             /* rl.kl_beta: weight of the KL-to-reference term */
    int kl_estimator;          /* rl.kl.estimator: 1, 2 or 3 (k1, k2, k3) */
    int kl_in_loss;            /* rl.kl.in: 0 "reward" (a penalty before the baseline), 1 "loss" (a loss term) */
    float entropy_coef;        /* rl.entropy_coef: an entropy bonus in the loss (aggregated like the policy term) */
    int overlong_buffer;       /* rl.overlong.buffer: DAPO's soft overlong zone, tokens before generators.max_tokens */
    float overlong_penalty;    /* rl.overlong.penalty: the reward taken at max_tokens (linear over the buffer) */
    int ref_reset_every;       /* rl.ref_reset_every: the reference model becomes the policy every N steps (0: never) */
    int publish_every;         /* rl.publish_every: steps between weight versions */
    int steps;                 /* rl.steps: optimizer steps in the run */
    int checkpoint_every;      /* rl.checkpoint_every */
    int checkpoint_keep;       /* checkpoint.keep: the newest N checkpoints stay, older ones are removed */
    int checkpoint_keep_best;  /* checkpoint.keep_best: the N best by held-out pass rate also stay (eval.every) */
    int eval_every;            /* eval.every: steps between held-out evaluations of a checkpoint (0 = none);
                                * a multiple of checkpoint_every; needs task.eval */
    int eval_samples;          /* eval.samples: completions per held-out prompt */
    float eval_temperature;    /* eval.temperature: 0 = greedy */
    int eval_sampled_samples;  /* eval.sampled_samples: completions per prompt of the sampled figure beside the
                                * greedy one (eval/pass_rate_sampled; 0 = none) */
    float eval_sampled_temperature; /* eval.sampled_temperature: its temperature (> 0) */
    int weights_hash;          /* log.weights_hash: each published version's content hash in metrics.jsonl */
    int samples_every;         /* log.samples_every: steps between sample records in samples.jsonl (0 = none) */
    uint64_t seed;             /* rl.seed */

    /* "generators" */
    int gen_count;             /* generators.count */
    float temperature;         /* generators.temperature */
    float top_p;               /* generators.top_p */
    int top_k;                 /* generators.top_k (0 = off) */
    float min_p;               /* generators.min_p (0 = off) */
    int behaviour_logprobs;    /* generators.behaviour_logprobs: RUN_BEHAVIOUR_* */
    int max_tokens;            /* generators.max_tokens */
    int gen_batch;             /* generators.batch: prompts per sampling batch */
    int gen_inflight_updates;  /* generators.inflight_updates: async generators take new weights between decode
                                * steps of running sequences (1), or only once the sequences in flight end (0) */
    int gen_inflight_recompute; /* generators.inflight_kv: 0 "keep" the KV cache across new weights, 1 "recompute" it */
    int gen_threads;           /* generators.threads: OpenMP threads per generator */
    sampler_weights gen_weights; /* generators.weights: "fp32" | "bf16" copy of the policy to sample with */
    /* generators.speculative: {drafter "off" | "ngram" | "draft", gamma, ngram_max, ngram_min, history,
     * adaptive}; .draft is left NULL (the generator loads draft_checkpoint and makes its sampler) */
    sampler_spec_options gen_spec;
    char gen_draft_checkpoint[1024]; /* generators.speculative.draft_checkpoint ("" unless drafter "draft") */

    /* "updaters" */
    int upd_count;             /* updaters.count: data-parallel updater ranks, started under mpirun when > 1 */
    int reward_threads;        /* updaters.reward_threads: scoring threads beside the optimizer */
    int upd_bucket_mb;         /* updaters.bucket_mb: MB of gradient per all-reduce between updater ranks */
    int upd_distributed_scoring; /* updaters.distributed_scoring: every updater rank scores a share of the groups */
    char upd_hostfile[1024];   /* updaters.hostfile: an Open MPI hostfile placing the updater ranks ("": this host) */

    json_t *resolved;          /* the whole resolved document (owned) */
    char source[1024];         /* where the config came from (file name), for error messages */
} run_config;

/* Parses and validates a config document. `where` names the source (file name) for messages;
 * errors name the JSON path, e.g. "cfg.json: rl.max_staleness: must be an integer >= 0".
 * Takes its own reference to `doc`. */
int run_config_parse(run_config *cfg, json_t *doc, const char *where, rlhf_error *err);
/* Loads FILE, applies overrides ("a.b=VALUE": VALUE parsed as JSON, else taken as a string),
 * then parses. */
int run_config_load(run_config *cfg, const char *path, char *const *overrides, int n_overrides, rlhf_error *err);
/* Applies one "a.b.c=VALUE" override to a document (creating objects on the way). */
int run_config_apply_override(json_t *doc, const char *assignment, rlhf_error *err);
/* Writes the resolved document (pretty JSON) atomically to PATH. */
int run_config_write(const run_config *cfg, const char *path, rlhf_error *err);
void run_config_free(run_config *cfg);

/* ---------------------------------------------------------------- preparation and the base model */

/* The identity of a run's base model (run/identity.c): content hashes of its config, weights and
 * tokenizer, and of the three together — {"model","config","weights","tokenizer","n_params"}, hex
 * strings ("tokenizer" is "bytes" for the byte-level one). The live updater writes it to
 * RUN_DIR/model_identity.json (RUN_MODEL_IDENTITY_FILE); `rlhf replay` compares. */
#define RUN_MODEL_IDENTITY_FILE "model_identity.json"
int run_model_identity(const model *m, const tokenizer *tok, json_t **out, rlhf_error *err);
/* 0 when two identities name the same model; else 1 and `what` says which parts differ and how
 * ("weights 1a2b... vs 3c4d..."). */
int run_model_identity_compare(const json_t *recorded, const json_t *mine, char *what, size_t cap);
/* The content hash of a model's weights alone (the "weights" part of its identity), 16 hex digits. */
void run_weights_hash(const model *m, char out[17]);
/* The same hash of any bytes: a WEIGHTS message's content_hash (for a full model, equal to run_weights_hash). */
void run_weights_content_hash(const void *data, size_t n, char out[17]);


/* Checks everything the processes of a run will need (datasets, selector config, reward sources,
 * broker config, base checkpoint vs arch) and creates the run directory layout. A config with
 * "model.arch" and no checkpoint gets a freshly initialised base at RUN_DIR/base.safetensors and
 * cfg->base_checkpoint is set to it. */
int run_prepare(run_config *cfg, rlhf_error *err);
/* Only the run directory and the base checkpoint part of run_prepare. */
int run_prepare_base(run_config *cfg, rlhf_error *err);
/* A base model allowing more positions than this needs model.max_seq_len (its buffers would not fit). */
enum { RUN_MAX_SEQ_LEN_UNCAPPED = 8192 };
/* Loads the base policy named by the config (checking it against model.arch when both are given). */
int run_load_base(const run_config *cfg, model **out, rlhf_error *err);
/* The same; keep_bf16: a base whose matrices are all BF16 stays so (model.bf16_mem, frozen: LoRA training). */
int run_load_base_keep_bf16(const run_config *cfg, int keep_bf16, model **out, rlhf_error *err);
/* The run's tokenizer for its base model m (model.tokenizer above); the same in every process. Its ids
 * must fit m's vocabulary. */
int run_load_tokenizer(const run_config *cfg, const model *m, tokenizer **out, rlhf_error *err);

/* ---------------------------------------------------------------- weights */

/* Applies a WEIGHTS message to m: the tensor table must match m's tensors (names, sizes) exactly. */
int run_weights_apply(model *m, const wire_weights *w, rlhf_error *err);
/* Builds a WEIGHTS message body from m (borrowing m's parameter memory; tensors owned by *w:
 * free with free(w->tensors)). */
int run_weights_from_model(const model *m, wire_weights *w, rlhf_error *err);
/* LoRA runs send the adapters alone: a WEIGHTS message of kind "lora" whose tensors are l's table
 * ("lora_a.wq", ...) and whose content_hash is the adapters' bytes' (borrowing l->mem). */
int run_weights_from_lora(const model_lora *l, uint64_t version, wire_weights *w, rlhf_error *err);
/* Applies a WEIGHTS message of kind "lora" on the receiver's side: the table must match l's, the
 * blob's hash its content_hash; l takes the adapters and m becomes base + the adapters (model_lora_merge),
 * at w's version. A full-weights message here, or adapters for a run without LoRA, is an error. */
int run_weights_apply_lora(model *m, const model *base, model_lora *l, const wire_weights *w, rlhf_error *err);

/* ---------------------------------------------------------------- one run per directory */

/* An exclusive flock(2) on RUN_DIR/.lock, held by `rlhf run` (and shared by the processes it starts)
 * or `rlhf replay` for the life of the run, so that a second run, resume or replay into the same
 * directory is refused at once instead of interleaving its writes. The kernel drops the lock when
 * the last process holding it ends, so a kill -9 leaves nothing that blocks the next start. */
typedef struct run_dir_lock {
    int fd;              /* the locked file (-1: not held); inherited by the processes the holder starts */
    char dir[1024];
    char path[1100];     /* RUN_DIR/.lock: "pid N started YYYY-MM-DDTHH:MM:SSZ by COMMAND" */
    char created[1024];  /* the highest folder acquire created ("" when run_dir existed) */
} run_dir_lock;
/* Creates run_dir if needed and locks it. COMMAND says who holds it ("rlhf run --resume"). When
 * another process holds it: RLHF_ESTATE, one line naming the directory and the holder's command, pid
 * and start time; nothing is written. */
int run_dir_lock_acquire(run_dir_lock *l, const char *run_dir, const char *command, rlhf_error *err);
/* Unlocks (the lock file stays: its inode is the lock). Process exit does the same. */
void run_dir_lock_release(run_dir_lock *l);
/* For a start that failed before it wrote anything: also removes the lock file and the folders
 * acquire created when they are empty, so a refused config leaves no run directory behind. */
void run_dir_lock_release_unused(run_dir_lock *l);

/* ---------------------------------------------------------------- process start-up */

/* What a generator or updater process starts from. */
typedef struct run_process {
    run_config cfg;           /* the run's resolved config.json */
    broker_config broker;     /* its "broker" section: endpoint, replay log, initial version */
} run_process;

/* Loads CONFIG_PATH, sets this thread's OpenMP thread count for ROLE (WIRE_ROLE_GENERATOR:
 * generators.threads; WIRE_ROLE_UPDATER: model.threads) and parses the broker section. On error
 * nothing is left to free. */
int run_process_open(run_process *p, const char *config_path, int role, rlhf_error *err);
void run_process_close(run_process *p);

/* Data-parallel updaters: the environment mpirun and its ranks need (root allowed, shared memory between
 * the ranks of a host, oversubscription, no core binding); multi_host adds TCP between hosts. */
void run_mpirun_env(int multi_host);
/* Replaces this process with `mpirun -np NP --quiet THIS_BINARY ARGS...` (ARGS NULL-terminated, without
 * argv[0]) in that environment; returns -1 with errno only when mpirun cannot be started. */
int run_mpirun_exec(int np, char *const *args);

#ifdef __cplusplus
}
#endif
/* Datasets of chat messages (run/chat_data.c). run_prepare renders every dataset of the config with
 * `messages` lines through the chat template into a scratch directory (the config then names those
 * files), and after its checks moves them to RUN_DIR/prompts/ (the resolved config names them there). */
typedef struct run_chat_data {
    char scratch[1024];        /* "" = nothing rendered */
    char rendered[3][2100];    /* task.train, task.eval, broker.dataset: the scratch file or "" */
    char final_name[3][256];
} run_chat_data;
int run_chat_data_render(run_config *cfg, run_chat_data *cd, rlhf_error *err);
int run_chat_data_commit(run_config *cfg, run_chat_data *cd, rlhf_error *err);
void run_chat_data_cleanup(run_chat_data *cd);

#endif
