/* common/common.h — what every part of the project shares: the error struct,
 * CRC-32, atomic file writes, clocks and small JSON helpers.
 *
 * Errors follow the jansson/Redis habit: a function returns 0 on success or a
 * negative RLHF_E* code, and fills a caller-owned rlhf_error with a message and
 * a location ("runs/x/config.json: rl.k" or "model/safetensors.c:120").
 * `main` prints it once with rlhf_error_print(). */
#ifndef RLHF_COMMON_H
#define RLHF_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    RLHF_OK = 0,
    RLHF_EINVAL = -1,   /* bad argument, bad config value */
    RLHF_EIO = -2,      /* read/write/open failed */
    RLHF_ECORRUPT = -3, /* file or message fails validation */
    RLHF_ENOMEM = -4,
    RLHF_ETIMEOUT = -5,
    RLHF_EPROTO = -6,   /* wire protocol violation */
    RLHF_ESTATE = -7,   /* call not valid in the current state */
    RLHF_ESYS = -8,     /* a system call failed (errno in message) */
    RLHF_EUNSUPPORTED = -9,
    RLHF_EREWARD = -10, /* a reward source failed beyond its on_error policy (max_error_rate, "fail"): exit class 4 */
};

typedef struct rlhf_error {
    int code;           /* 0 or a negative RLHF_E* code */
    char where[256];    /* what and where: a file[:line], a JSON path, or a source location */
    char msg[768];
} rlhf_error;

#define RLHF_STR2(x) #x
#define RLHF_STR(x) RLHF_STR2(x)
#define RLHF_HERE __FILE__ ":" RLHF_STR(__LINE__)

/* Fill `err` (may be NULL) and return `code`, so callers can write
 *   return rlhf_error_set(err, RLHF_EINVAL, path, "dim must be > 0, got %d", dim); */
int rlhf_error_set(rlhf_error *err, int code, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Same, with the source location as `where`. */
#define RLHF_FAIL(err, code, ...) rlhf_error_set((err), (code), RLHF_HERE, __VA_ARGS__)
void rlhf_error_clear(rlhf_error *err);
/* Prints "PROG: error: WHERE: MSG\n" to stderr. */
void rlhf_error_print(const char *prog, const rlhf_error *err);
const char *rlhf_strerror(int code);

/* Exit status classes of every process of a run (the launcher's supervision reads them; documented in
 * docs/RUNNING.md, "When things go wrong"). A signal is its own class (the shell's 128+N). */
enum {
    RLHF_EXIT_OK = 0,
    RLHF_EXIT_TRANSIENT = 1, /* internal or transient failure: restarting may help */
    RLHF_EXIT_CONFIG = 2,    /* usage or configuration error: restarting fails the same way */
    RLHF_EXIT_ENV = 3,       /* environment: disk full, permission denied, missing file, corrupt file */
    RLHF_EXIT_PLUGIN = 4,    /* a reward plugin / reward source crashed or failed (RLHF_EREWARD) */
};
/* The exit status class of a failure: EINVAL/EUNSUPPORTED -> CONFIG; ECORRUPT -> ENV; EIO/ESYS -> ENV
 * when the message carries the text of ENOSPC, EDQUOT, EACCES, EPERM, EROFS, ENOENT or ENOTDIR (every
 * failing call site puts strerror(errno) in it), else TRANSIENT; everything else TRANSIENT. */
int rlhf_exit_status(const rlhf_error *err);
/* "transient", "config", "environment", "plugin" for 1..4; "ok" for 0; "unknown" otherwise. */
const char *rlhf_exit_class_name(int status);

/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32). Chain with crc = rlhf_crc32(crc, ...), start 0.
 * Carry-less-multiply folding (512-bit VPCLMULQDQ, else PCLMULQDQ) when the CPU has it, chosen at run
 * time, else slicing by 8 (common/crc32.c). */
uint32_t rlhf_crc32(uint32_t crc, const void *data, size_t n);
/* One kernel on purpose (tests, benchmarks); a kernel the CPU lacks falls back to the next simpler one. */
typedef enum { RLHF_CRC_TABLES = 0, RLHF_CRC_PCLMUL = 1, RLHF_CRC_VPCLMUL = 2 } rlhf_crc_kernel;
uint32_t rlhf_crc32_kernel(rlhf_crc_kernel kernel, uint32_t crc, const void *data, size_t n);
/* One table look-up per byte: the oracle the fast kernels are tested against. */
uint32_t rlhf_crc32_bytewise(uint32_t crc, const void *data, size_t n);

/* Atomic whole-file write: write to "PATH.tmp.PID", fsync, rename over PATH, fsync the directory.
 * Readers see either the old file or the complete new one, never a half-written file. */
int rlhf_write_file_atomic(const char *path, const void *data, size_t n, rlhf_error *err);
/* Streaming form for large files: open a temp file, write through `fp`, then commit or abort. */
typedef struct rlhf_atomic_file {
    FILE *fp;
    char path[4096];
    char tmp_path[4096 + 32];
} rlhf_atomic_file;
int rlhf_atomic_open(rlhf_atomic_file *af, const char *path, rlhf_error *err);
int rlhf_atomic_commit(rlhf_atomic_file *af, rlhf_error *err); /* fflush+fsync+close+rename */
void rlhf_atomic_abort(rlhf_atomic_file *af);                   /* close + unlink temp */

/* Fails early, naming PATH, when no file can be created there (missing or read-only directory), by
 * opening and discarding the temp file rlhf_atomic_open would write. Long jobs (pretrain, train-rm)
 * call it before they start, so a bad --out is reported before the work, not after it. */
int rlhf_check_writable(const char *path, rlhf_error *err);

/* Loads a JSON document from a file with jansson `flags` (e.g. JSON_REJECT_DUPLICATES). Errors name
 * the file: where = "PATH" ("cannot open: ...") or "PATH:LINE:COLUMN" (the parser's message).
 * Returns a new reference or NULL. */
struct json_t;
struct json_t *rlhf_json_load_file(const char *path, size_t flags, rlhf_error *err);

/* Reads a whole file into a malloc'd buffer (NUL-terminated for convenience). */
int rlhf_read_file(const char *path, char **data_out, size_t *len_out, rlhf_error *err);
/* mkdir -p */
int rlhf_mkdirs(const char *path, rlhf_error *err);

/* s[0..n) as a malloc'd NUL-terminated string of valid UTF-8: every byte that does not start a valid
 * sequence (stray continuation bytes, truncated or overlong forms, surrogates, > U+10FFFF, and NUL,
 * which a C string cannot carry) becomes U+FFFD. NULL when out of memory. */
char *rlhf_utf8_sanitize(const char *s, size_t n);
/* The one UTF-8 decoder: the length of the character at p, of which at most n bytes may be read.
 *   1..4  a valid character (ASCII, NUL included, is 1);
 *   0     invalid: a continuation byte where a character starts, a byte that starts nothing, a bad
 *         continuation, an overlong form, a surrogate, or a code point past U+10FFFF;
 *   -1    cut short by n: the lead byte announces more bytes than n and those present continue it.
 * Bytes are read in order and reading stops at the first one that is not a continuation, so a
 * NUL-terminated string can be passed with n = 4 without reading past its end. */
int rlhf_utf8_char_len(const char *p, size_t n);

/* Command-line options from a table: every `rlhf` subcommand parses its argv with it.
 * "--name VALUE" and "--name=VALUE"; a FLAG takes no value; anything not starting with '-' is a
 * positional argument. A number that does not parse whole is a usage error, not a silent 0. */
typedef enum {
    RLHF_OPT_STR,    /* out: const char ** (points into argv) */
    RLHF_OPT_INT,    /* out: int * */
    RLHF_OPT_U64,    /* out: uint64_t * */
    RLHF_OPT_FLOAT,  /* out: float * */
    RLHF_OPT_DOUBLE, /* out: double * */
    RLHF_OPT_FLAG,   /* out: int *, set to 1 */
    RLHF_OPT_STRS,   /* out: rlhf_opt_strs *: a repeatable option (e.g. --set a.b=c) */
} rlhf_opt_kind;
typedef struct rlhf_opt_strs {
    char **v; /* caller's array of cap entries */
    int n, cap;
} rlhf_opt_strs;
typedef struct rlhf_opt {
    const char *name; /* "--config"; a {NULL} entry ends the table */
    rlhf_opt_kind kind;
    void *out;
    double lo, hi;    /* numbers: the allowed range, inclusive, when lo < hi (else any value) */
    int *given;       /* may be NULL: set to 1 when the option appears */
} rlhf_opt;
/* Table entries: RLHF_OPT("--n", RLHF_OPT_INT, &n), RLHF_OPT_RANGE("--n", RLHF_OPT_INT, &n, 1, 100), RLHF_OPT_END. */
#define RLHF_OPT(name_, kind_, out_) {.name = (name_), .kind = (kind_), .out = (out_)}
#define RLHF_OPT_RANGE(name_, kind_, out_, lo_, hi_) {.name = (name_), .kind = (kind_), .out = (out_), .lo = (lo_), .hi = (hi_)}
#define RLHF_OPT_END {.name = NULL}
/* Parses argv[1..argc). Positional arguments go to pos[0..max_pos), their count to *n_pos; "--" ends
 * the options (every later argument is positional, even one starting with '-').
 * Returns -1 when the command should go on; otherwise the exit status to return: 0 after --help/-h
 * (USAGE printed to stdout), 2 after a usage error ("PROG: error: ..." on stderr, followed by USAGE
 * for an unknown option, a missing value or an unexpected argument; a bad value of a known option is
 * the one error line naming the option and what it takes). */
int rlhf_opts_parse(int argc, char **argv, const char *prog, const char *usage, const rlhf_opt *opts,
                    const char **pos, int max_pos, int *n_pos);
/* The same for commands that pass the rest of their arguments on (a program and its arguments):
 * options are parsed up to the first positional argument or up to "--" (which is skipped), and *rest
 * gets the index of the first argument not parsed (argc when none is left). */
int rlhf_opts_parse_leading(int argc, char **argv, const char *prog, const char *usage, const rlhf_opt *opts,
                            int *rest);

/* Installs HANDLER for each signal of SIGS (a 0-terminated list), with no SA_RESTART, so that a
 * blocking call returns EINTR and the process notices the flag its handler set. */
void rlhf_on_signals(void (*handler)(int), const int *sigs);

/* Monotonic clock in seconds. */
double rlhf_now(void);
/* Wall clock in seconds since the epoch. */
double rlhf_wall_time(void);

/* Deterministic RNG (xorshift64*), explicit state: no hidden globals. */
typedef struct { uint64_t s; } rlhf_rng;
void rlhf_rng_seed(rlhf_rng *r, uint64_t seed);
/* Large buffers that a process writes while it forks children (the updater's weights, gradients and
 * AdamW state while reward sandboxes start): an anonymous mapping left out of fork (MADV_DONTFORK), so
 * a child gets no copy-on-write view of it and the parent takes no write fault (and, threads running
 * on other CPUs, no TLB shootdown) on every page it touches after each fork. Zero-filled, page-aligned;
 * NULL when out of memory. Free with rlhf_big_free and the same size. */
void *rlhf_big_alloc(size_t bytes);
void rlhf_big_free(void *p, size_t bytes);
/* splitmix64's output function of x: a stateless hash (counter-based random numbers, seed scrambling). */
uint64_t rlhf_mix64(uint64_t x);
uint64_t rlhf_rng_u64(rlhf_rng *r);
float rlhf_rng_uniform(rlhf_rng *r);  /* [0, 1) */
float rlhf_rng_normal(rlhf_rng *r);   /* N(0, 1) */

#ifdef __cplusplus
}
#endif
#endif
