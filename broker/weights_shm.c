/* broker/weights_shm.c — weights to same-host generators through a shared-memory file.
 *
 * Why a file in a directory (default /dev/shm) and not a memfd: a memfd can only reach another process
 * by passing the descriptor over a Unix socket (ZeroMQ cannot) or through /proc/PID/fd (needs ptrace
 * rights over the broker), and it disappears with the broker, so a crash leaks nothing but also nothing
 * can be named. A 0600 file under a name carrying the broker's pid and start time is opened by path,
 * and whoever finds it after the broker died (the next broker, the launcher) can tell that it is stale.
 *
 * The broker writes a version only when a same-host generator needs it, at most once per version
 * (NAME.tmp, then renamed), from the frames it received; the chunk CRCs are the ones the updater sent
 * (the broker verified them on arrival), so it computes none. Generators map the file, check every
 * chunk's CRC and use the mapping directly (or copy it into their parameter memory); the file is
 * unlinked when no generator can still need it (mappings outlive the name). */
#include "broker/broker_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <zmq.h>

static void slog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void slog(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[broker %.3f] weights_shm: %s\n", rlhf_wall_time(), buf);
}

/* ---------------------------------------------------------------- identities */

static void read_line(const char *path, char *buf, size_t cap) {
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fgets(buf, (int)cap, f)) buf[strcspn(buf, "\r\n")] = 0;
    fclose(f);
}

void broker_host_id(char *buf, size_t cap) {
    const char *forced = getenv("RLHF_HOST_ID");
    if (forced && forced[0]) {
        snprintf(buf, cap, "%s", forced);
        return;
    }
    char boot[64], host[HOST_NAME_MAX + 1];
    read_line("/proc/sys/kernel/random/boot_id", boot, sizeof boot);
    if (gethostname(host, sizeof host) != 0) host[0] = 0;
    host[sizeof host - 1] = 0;
    if (!boot[0] && !host[0]) {
        buf[0] = 0;
        return;
    }
    snprintf(buf, cap, "%.63s/%.60s", boot, host);
}

/* Start time of process PID in clock ticks since boot (field 22 of /proc/PID/stat); 0 when it is gone. */
static unsigned long long proc_start(long pid) {
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    char *p = strrchr(line, ')'); /* the command name may hold spaces and parentheses */
    if (!p) return 0;
    unsigned long long start = 0;
    /* after ")": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
     * cutime cstime priority nice num_threads itrealvalue starttime(22) */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &start) != 1)
        return 0;
    return start;
}

/* ---------------------------------------------------------------- sweeping stale files */

/* Removes DIR's regular files of this user named PREFIX... whose writer `gone` says is gone (it reads the
 * rest of the name after PREFIX: 1 gone, 0 alive or not a name of ours). How many were removed. */
static int sweep(const char *dir, const char *prefix, int (*gone)(const char *rest)) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    uid_t me = geteuid();
    size_t pl = strlen(prefix);
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, pl) != 0 || !gone(e->d_name + pl)) continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) || st.st_uid != me)
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0) removed++;
    }
    closedir(d);
    return removed;
}

/* PID.START.VERSION: gone unless process PID is alive with that start time (a reused pid does not count) */
static int broker_gone(const char *rest) {
    long pid = 0;
    unsigned long long start = 0;
    if (sscanf(rest, "%ld.%llu.", &pid, &start) != 2 || pid <= 0) return 0;
    return proc_start(pid) != start;
}

int broker_weights_shm_sweep(const char *dir) { return sweep(dir, BROKER_SHM_PREFIX, broker_gone); }

/* ---------------------------------------------------------------- broker side */

void broker_shm_open(broker *b) {
    broker_shm *s = &b->shm;
    memset(s, 0, sizeof *s);
    if (!b->cfg.weights_shm) return;
    broker_host_id(s->host, sizeof s->host);
    if (!s->host[0]) {
        slog("this host has no boot id or hostname: every generator gets the bytes over ZeroMQ");
        return;
    }
    snprintf(s->tag, sizeof s->tag, "%ld.%llu", (long)getpid(), proc_start(getpid()));
    s->on = 1;
    s->swept = (uint64_t)broker_weights_shm_sweep(b->cfg.weights_shm_dir);
    if (s->swept) slog("removed %llu stale weights files of dead brokers from %s", (unsigned long long)s->swept,
                       b->cfg.weights_shm_dir);
}

static void drop_file(broker_shm *s, size_t i) {
    if (unlink(s->files[i].path) == 0) s->unlinked++;
    s->files[i] = s->files[--s->n_files];
}

static void cur_reset(broker_shm *s) {
    wire_weights_shm_free(&s->cur);
    if (s->cur_written == 1) wire_out_free(&s->msg);
    s->has_cur = 0;
    s->cur_written = 0;
}

void broker_shm_close(broker *b) {
    broker_shm *s = &b->shm;
    while (s->n_files) drop_file(s, s->n_files - 1);
    free(s->files);
    s->files = NULL;
    s->cap_files = 0;
    cur_reset(s);
}

void broker_shm_new_version(broker *b, wire_weights *w, const wire_msg *m) {
    broker_shm *s = &b->shm;
    s->received_at = rlhf_wall_time();
    cur_reset(s);
    if (!s->on) {
        wire_weights_free(w);
        return;
    }
    s->cur.w = *w;
    memset(w, 0, sizeof *w);
    s->cur.n_chunks = (uint32_t)m->n_payloads;
    s->cur.chunk_crc = calloc(m->n_payloads + 1, sizeof *s->cur.chunk_crc);
    if (!s->cur.chunk_crc) {
        wire_weights_shm_free(&s->cur);
        return;
    }
    /* wire_parse checked these against the frames: the updater's CRCs are the blob's */
    json_t *decl = json_object_get(m->meta, "payloads");
    for (size_t i = 0; i < m->n_payloads; i++)
        s->cur.chunk_crc[i] = (uint32_t)json_integer_value(json_object_get(json_array_get(decl, i), "crc32"));
    s->has_cur = 1;
}

/* Writes the newest version's chunks (frames 2.. of b->w_msgs) to DIR/NAME.tmp and renames it to NAME. */
static int write_version(broker *b, rlhf_error *err) {
    broker_shm *s = &b->shm;
    char tmp[WIRE_SHM_PATH_MAX + 8];
    int n = snprintf(s->cur.path, sizeof s->cur.path, "%s/%s%s.%llu", b->cfg.weights_shm_dir, BROKER_SHM_PREFIX,
                     s->tag, (unsigned long long)s->cur.w.version);
    if (n < 0 || (size_t)n >= sizeof s->cur.path)
        return rlhf_error_set(err, RLHF_EINVAL, "broker.weights_shm_dir", "%s: path too long", b->cfg.weights_shm_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", s->cur.path);
    unlink(tmp); /* ours from a failed attempt: the name carries this process's pid and start time */
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, "broker.weights_shm_dir", "%s: %s", tmp, strerror(errno));
    zmq_msg_t *f = b->w_msgs;
    uint64_t off = 0;
    int rc = 0;
    for (size_t i = 2; i < b->w_n && !rc; i++) {
        const uint8_t *p = zmq_msg_data(&f[i]);
        size_t len = zmq_msg_size(&f[i]), done = 0;
        while (done < len) {
            ssize_t w = pwrite(fd, p + done, len - done, (off_t)(off + done));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                rc = rlhf_error_set(err, RLHF_EIO, "broker.weights_shm_dir", "%s: %s", tmp,
                                    w < 0 ? strerror(errno) : "short write");
                break;
            }
            done += (size_t)w;
        }
        off += len;
    }
    /* On tmpfs fsync is free; on a disk directory it makes the rename publish complete bytes. */
    if (!rc && fsync(fd) != 0)
        rc = rlhf_error_set(err, RLHF_EIO, "broker.weights_shm_dir", "%s: fsync: %s", tmp, strerror(errno));
    /* Test-only fault injection (tests/broker/test_weights_shm.c): flip one byte after the CRCs were taken,
     * as a torn or tampered file would be, so the generator's check and its fallback can be exercised. */
    if (!rc && getenv("RLHF_TEST_FAULT_SHM_CORRUPT") && off > 0) {
        uint8_t byte = 0;
        if (pread(fd, &byte, 1, (off_t)(off / 2)) != 1 || (byte ^= 0x5a, pwrite(fd, &byte, 1, (off_t)(off / 2)) != 1))
            rc = RLHF_FAIL(err, RLHF_EIO, "the test-only corruption hook could not change the file");
    }
    close(fd);
    if (!rc && rename(tmp, s->cur.path) != 0)
        rc = rlhf_error_set(err, RLHF_EIO, "broker.weights_shm_dir", "%s: rename: %s", s->cur.path, strerror(errno));
    if (rc) {
        unlink(tmp);
        return rc;
    }
    s->bytes_written += off;
    return 0;
}

const wire_out *broker_shm_offer(broker *b) {
    broker_shm *s = &b->shm;
    if (!s->on || !s->has_cur || s->cur_written < 0) return NULL;
    if (s->cur_written == 1) return &s->msg;
    if (s->n_files == s->cap_files) {
        size_t cap = s->cap_files ? 2 * s->cap_files : 4;
        broker_shm_file *nf = realloc(s->files, cap * sizeof *nf);
        if (!nf) return NULL;
        s->files = nf;
        s->cap_files = cap;
    }
    rlhf_error e;
    rlhf_error_clear(&e);
    double t0 = rlhf_now();
    int rc = write_version(b, &e);
    s->write_ms = (rlhf_now() - t0) * 1e3;
    if (!rc) {
        broker_shm_file *f = &s->files[s->n_files++]; /* from here on, close/gc unlink it */
        f->version = s->cur.w.version;
        snprintf(f->path, sizeof f->path, "%s", s->cur.path);
        rc = wire_encode_weights_shm(&s->cur, &s->msg, &e);
    }
    if (rc) {
        s->write_errors++;
        s->cur_written = -1;
        if (s->write_errors <= 5 || (s->write_errors & (s->write_errors - 1)) == 0)
            slog("version %llu goes to same-host generators as bytes over ZeroMQ: %s: %s",
                 (unsigned long long)s->cur.w.version, e.where, e.msg);
        return NULL;
    }
    s->cur_written = 1;
    return &s->msg;
}

void broker_shm_gc(broker *b) {
    broker_shm *s = &b->shm;
    for (size_t i = 0; i < s->n_files;) {
        uint64_t v = s->files[i].version;
        int needed = s->has_cur && s->cur_written == 1 && v == s->cur.w.version;
        for (size_t k = 0; !needed && k < b->n_peers; k++) {
            const broker_peer *p = &b->peers[k];
            needed = p->connected && p->alive && p->sent_shm && p->has_sent && p->sent_version == v &&
                     !(p->has_acked && p->acked_version >= v);
        }
        if (needed) i++;
        else drop_file(s, i);
    }
}

int broker_shm_encode_at(const broker *b, const char *path, wire_out *o, rlhf_error *err) {
    const broker_shm *s = &b->shm;
    if (!s->on || !s->has_cur) return rlhf_error_set(err, RLHF_ESTATE, "weights_shm", "no version's table to offer");
    wire_weights_shm x = s->cur; /* borrowed: the encoder copies what it sends */
    if (snprintf(x.path, sizeof x.path, "%s", path) >= (int)sizeof x.path)
        return rlhf_error_set(err, RLHF_EINVAL, path, "path too long");
    return wire_encode_weights_shm(&x, o, err);
}

void broker_shm_stats(const broker *b, json_t *st) {
    const broker_shm *s = &b->shm;
    json_object_set_new(st, "weights/host_file_sends", json_integer((json_int_t)s->host_file_sends));
    json_object_set_new(st, "weights/host_file_fallbacks", json_integer((json_int_t)s->host_file_fallbacks));
    json_object_set_new(st, "weights/shm", json_boolean(s->on));
    json_object_set_new(st, "weights/shm_sends", json_integer((json_int_t)s->sends));
    json_object_set_new(st, "weights/shm_fallbacks", json_integer((json_int_t)s->fallbacks));
    json_object_set_new(st, "weights/shm_write_errors", json_integer((json_int_t)s->write_errors));
    json_object_set_new(st, "weights/shm_bytes_written", json_integer((json_int_t)s->bytes_written));
    json_object_set_new(st, "weights/shm_files", json_integer((json_int_t)s->n_files));
    json_object_set_new(st, "weights/shm_unlinked", json_integer((json_int_t)s->unlinked));
    json_object_set_new(st, "weights/shm_swept", json_integer((json_int_t)s->swept));
    json_object_set_new(st, "weights/received_at", json_real(s->received_at));
    json_object_set_new(st, "weights/shm_write_ms", json_real(s->write_ms));
}

/* ---------------------------------------------------------------- client side */

int broker_shm_read_verify(const wire_weights_shm *x, uint8_t *buf, const char **why, rlhf_error *err) {
    *why = "open";
    int fd = open(x->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, x->path, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (uint64_t)st.st_size != x->w.nbytes) {
        *why = "size";
        close(fd);
        return rlhf_error_set(err, RLHF_EPROTO, x->path, "not a regular file of this user holding %llu bytes",
                              (unsigned long long)x->w.nbytes);
    }
    /* the kernel copies from the file's pages into buf: no new mapping, so none of the first-touch page
     * faults a fresh mapping of every version costs (docs/PERFORMANCE.md "Weights through shared memory") */
    uint64_t done = 0;
    while (done < x->w.nbytes) {
        size_t part = x->w.nbytes - done > ((uint64_t)8 << 20) ? (size_t)8 << 20 : (size_t)(x->w.nbytes - done);
        ssize_t r = pread(fd, buf + done, part, (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            *why = "read";
            close(fd);
            return rlhf_error_set(err, RLHF_EIO, x->path, "read: %s", r < 0 ? strerror(errno) : "short file");
        }
        done += (uint64_t)r;
    }
    close(fd);
    for (uint32_t i = 0; i < x->n_chunks; i++) {
        uint64_t off = (uint64_t)i * x->w.chunk_bytes;
        size_t n = (size_t)(x->w.nbytes - off < x->w.chunk_bytes ? x->w.nbytes - off : x->w.chunk_bytes);
        if (rlhf_crc32(0, buf + off, n) != x->chunk_crc[i]) {
            *why = "crc";
            return rlhf_error_set(err, RLHF_ECORRUPT, x->path, "chunk %u (bytes %llu..%llu): CRC-32 mismatch", i,
                                  (unsigned long long)off, (unsigned long long)(off + n));
        }
    }
    *why = "";
    return 0;
}

/* ---------------------------------------------------------------- host files (generators on other hosts) */

int broker_host_file_write(const char *dir, uint64_t version, const uint8_t *data, uint64_t n, char *path, size_t cap,
                           rlhf_error *err) {
    char tmp[WIRE_SHM_PATH_MAX + 8];
    int k = snprintf(path, cap, "%s/%s%ld.%llu", dir, BROKER_HOST_FILE_PREFIX, (long)getpid(), (unsigned long long)version);
    if (k < 0 || (size_t)k >= cap || (size_t)k + 5 > sizeof tmp)
        return rlhf_error_set(err, RLHF_EINVAL, dir, "weights file path too long");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unlink(tmp); /* ours from a failed attempt: the name carries this process's pid */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, tmp, "%s", strerror(errno));
    uint64_t done = 0;
    int rc = 0;
    while (done < n) {
        size_t part = n - done > ((size_t)4 << 20) ? (size_t)4 << 20 : (size_t)(n - done);
        ssize_t w = pwrite(fd, data + done, part, (off_t)done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            rc = rlhf_error_set(err, RLHF_EIO, tmp, "%s", w < 0 ? strerror(errno) : "short write");
            break;
        }
        done += (uint64_t)w;
    }
    if (!rc && fsync(fd) != 0) rc = rlhf_error_set(err, RLHF_EIO, tmp, "fsync: %s", strerror(errno));
    close(fd);
    if (!rc && rename(tmp, path) != 0) rc = rlhf_error_set(err, RLHF_EIO, path, "rename: %s", strerror(errno));
    if (rc) unlink(tmp);
    return rc;
}

/* PID.VERSION: gone when no process has that pid (a live process that reused it keeps the file until a
 * later sweep: better than a live generator's file gone) */
static int generator_gone(const char *rest) {
    long pid = 0;
    if (sscanf(rest, "%ld.", &pid) != 1 || pid <= 0) return 0;
    return kill((pid_t)pid, 0) != 0 && errno != EPERM;
}

int broker_host_files_sweep(const char *dir) { return sweep(dir, BROKER_HOST_FILE_PREFIX, generator_gone); }
