/* common/common.c — errors, atomic writes, files, UTF-8, clocks, RNG (CRC-32 is in common/crc32.c). */
#include "common/common.h"

#include <signal.h>

#include <errno.h>
#include <jansson.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int rlhf_error_set(rlhf_error *err, int code, const char *where, const char *fmt, ...) {
    if (!err) return code;
    err->code = code;
    snprintf(err->where, sizeof err->where, "%s", where ? where : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

void rlhf_error_clear(rlhf_error *err) {
    if (!err) return;
    err->code = 0;
    err->where[0] = 0;
    err->msg[0] = 0;
}

void rlhf_error_print(const char *prog, const rlhf_error *err) {
    if (!err) return;
    if (err->where[0])
        fprintf(stderr, "%s: error: %s: %s\n", prog, err->where, err->msg[0] ? err->msg : rlhf_strerror(err->code));
    else
        fprintf(stderr, "%s: error: %s\n", prog, err->msg[0] ? err->msg : rlhf_strerror(err->code));
}

const char *rlhf_strerror(int code) {
    switch (code) {
    case RLHF_OK: return "ok";
    case RLHF_EINVAL: return "invalid argument";
    case RLHF_EIO: return "I/O error";
    case RLHF_ECORRUPT: return "corrupt data";
    case RLHF_ENOMEM: return "out of memory";
    case RLHF_ETIMEOUT: return "timed out";
    case RLHF_EPROTO: return "protocol error";
    case RLHF_ESTATE: return "invalid state";
    case RLHF_ESYS: return "system call failed";
    case RLHF_EUNSUPPORTED: return "unsupported";
    default: return "unknown error";
    }
}

int rlhf_exit_status(const rlhf_error *err) {
    if (!err) return RLHF_EXIT_TRANSIENT;
    switch (err->code) {
    case RLHF_OK: return RLHF_EXIT_OK;
    case RLHF_EINVAL:
    case RLHF_EUNSUPPORTED: return RLHF_EXIT_CONFIG;
    case RLHF_ECORRUPT: return RLHF_EXIT_ENV;
    case RLHF_EREWARD: return RLHF_EXIT_PLUGIN;
    case RLHF_EIO:
    case RLHF_ESYS: {
        /* the errno is only in the message (strerror text): these say the machine, not chance, is at fault */
        static const int env_errnos[] = {ENOSPC, EDQUOT, EACCES, EPERM, EROFS, ENOENT, ENOTDIR};
        for (size_t i = 0; i < sizeof env_errnos / sizeof env_errnos[0]; i++)
            if (strstr(err->msg, strerror(env_errnos[i]))) return RLHF_EXIT_ENV;
        return RLHF_EXIT_TRANSIENT;
    }
    default: return RLHF_EXIT_TRANSIENT;
    }
}

const char *rlhf_exit_class_name(int status) {
    switch (status) {
    case RLHF_EXIT_OK: return "ok";
    case RLHF_EXIT_TRANSIENT: return "transient";
    case RLHF_EXIT_CONFIG: return "config";
    case RLHF_EXIT_ENV: return "environment";
    case RLHF_EXIT_PLUGIN: return "plugin";
    default: return "unknown";
    }
}

static int fsync_dir_of(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    char *dir = dirname(buf);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int rlhf_atomic_open(rlhf_atomic_file *af, const char *path, rlhf_error *err) {
    memset(af, 0, sizeof *af);
    if (strlen(path) >= sizeof af->path) return rlhf_error_set(err, RLHF_EINVAL, path, "path too long");
    snprintf(af->path, sizeof af->path, "%s", path);
    snprintf(af->tmp_path, sizeof af->tmp_path, "%s.tmp.%d", path, (int)getpid());
    af->fp = fopen(af->tmp_path, "wb");
    if (!af->fp) return rlhf_error_set(err, RLHF_EIO, af->path, "cannot create %s: %s", af->tmp_path, strerror(errno));
    return 0;
}

int rlhf_check_writable(const char *path, rlhf_error *err) {
    rlhf_atomic_file af;
    int rc = rlhf_atomic_open(&af, path, err);
    if (rc) return rc;
    rlhf_atomic_abort(&af);
    return 0;
}

json_t *rlhf_json_load_file(const char *path, size_t flags, rlhf_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        rlhf_error_set(err, RLHF_EIO, path, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) { /* it opens, and parses as an empty document */
        fclose(f);
        rlhf_error_set(err, RLHF_EIO, path, "is a directory, not a file");
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadf(f, flags, &je);
    fclose(f);
    if (!j) {
        char where[sizeof err->where];
        snprintf(where, sizeof where, "%.200s:%d:%d", path, je.line, je.column);
        rlhf_error_set(err, RLHF_EINVAL, where, "%s", je.text);
    }
    return j;
}

int rlhf_atomic_commit(rlhf_atomic_file *af, rlhf_error *err) {
    if (!af->fp) return rlhf_error_set(err, RLHF_ESTATE, af->path, "atomic file not open");
    int bad = ferror(af->fp);
    if (fflush(af->fp) != 0) bad = 1;
    if (!bad && fsync(fileno(af->fp)) != 0) bad = 1;
    int saved = errno;
    if (fclose(af->fp) != 0) bad = 1;
    af->fp = NULL;
    if (bad) {
        unlink(af->tmp_path);
        return rlhf_error_set(err, RLHF_EIO, af->path, "write failed: %s", strerror(saved ? saved : EIO));
    }
    if (rename(af->tmp_path, af->path) != 0) {
        saved = errno;
        unlink(af->tmp_path);
        return rlhf_error_set(err, RLHF_EIO, af->path, "rename failed: %s", strerror(saved));
    }
    fsync_dir_of(af->path);
    return 0;
}

void rlhf_atomic_abort(rlhf_atomic_file *af) {
    if (af->fp) {
        fclose(af->fp);
        af->fp = NULL;
    }
    if (af->tmp_path[0]) unlink(af->tmp_path);
}

int rlhf_write_file_atomic(const char *path, const void *data, size_t n, rlhf_error *err) {
    rlhf_atomic_file af;
    int rc = rlhf_atomic_open(&af, path, err);
    if (rc) return rc;
    if (n && fwrite(data, 1, n, af.fp) != n) {
        int saved = errno;
        rlhf_atomic_abort(&af);
        return rlhf_error_set(err, RLHF_EIO, path, "write failed: %s", strerror(saved));
    }
    return rlhf_atomic_commit(&af, err);
}

int rlhf_read_file(const char *path, char **data_out, size_t *len_out, rlhf_error *err) {
    *data_out = NULL;
    if (len_out) *len_out = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return rlhf_error_set(err, RLHF_EIO, path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) { /* its "size" would be LONG_MAX */
        fclose(f);
        return rlhf_error_set(err, RLHF_EIO, path, "is a directory, not a file");
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return rlhf_error_set(err, RLHF_EIO, path, "cannot seek: %s", strerror(errno));
    }
    long sz = ftell(f);
    if (sz < 0) {
        fclose(f);
        return rlhf_error_set(err, RLHF_EIO, path, "not a regular file");
    }
    rewind(f);
    char *buf = malloc((size_t)sz + 1);
    if (!buf) {
        fclose(f);
        return rlhf_error_set(err, RLHF_ENOMEM, path, "cannot allocate %ld bytes", sz);
    }
    if (sz && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        free(buf);
        fclose(f);
        return rlhf_error_set(err, RLHF_EIO, path, "short read");
    }
    fclose(f);
    buf[sz] = 0;
    *data_out = buf;
    if (len_out) *len_out = (size_t)sz;
    return 0;
}

int rlhf_mkdirs(const char *path, rlhf_error *err) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) return rlhf_error_set(err, RLHF_EINVAL, path, "path too long");
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return rlhf_error_set(err, RLHF_EIO, buf, "mkdir failed: %s", strerror(errno));
            *p = '/';
        }
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return rlhf_error_set(err, RLHF_EIO, buf, "mkdir failed: %s", strerror(errno));
    return 0;
}

double rlhf_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double rlhf_wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void *rlhf_big_alloc(size_t bytes) {
    bytes = bytes ? bytes : 64;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    madvise(p, bytes, MADV_DONTFORK); /* an optimisation: failure leaves an ordinary mapping */
    return p;
}

void rlhf_big_free(void *p, size_t bytes) {
    if (p) munmap(p, bytes ? bytes : 64);
}

uint64_t rlhf_mix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ull; /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void rlhf_rng_seed(rlhf_rng *r, uint64_t seed) {
    /* scrambled so that small seeds give unrelated streams; never 0 state */
    uint64_t z = rlhf_mix64(seed);
    r->s = z ? z : 0x2545F4914F6CDD1Dull;
}

uint64_t rlhf_rng_u64(rlhf_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

float rlhf_rng_uniform(rlhf_rng *r) { return (float)(rlhf_rng_u64(r) >> 40) / 16777216.0f; }

float rlhf_rng_normal(rlhf_rng *r) {
    float u1 = rlhf_rng_uniform(r), u2 = rlhf_rng_uniform(r);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* ---------------------------------------------------------------- UTF-8 */

int rlhf_utf8_char_len(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    if (n == 0) return -1;
    unsigned c = p[0];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len <= 1) return len;
    uint32_t cp = len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= n) return -1;
        if ((p[k] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
        return 0;
    return len;
}

char *rlhf_utf8_sanitize(const char *s, size_t n) {
    char *out = malloc(n * 3 + 1); /* each bad byte becomes 3 bytes of U+FFFD at most */
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int len = s[i] ? rlhf_utf8_char_len(s + i, n - i) : 0; /* NUL: a C string cannot carry it */
        if (len > 0) {
            memcpy(out + o, s + i, (size_t)len);
            o += (size_t)len;
            i += (size_t)len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return out;
}

void rlhf_on_signals(void (*handler)(int), const int *sigs) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    for (; *sigs; sigs++) sigaction(*sigs, &sa, NULL);
}
