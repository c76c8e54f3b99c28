/* tests/broker/test_weights_shm.c — weights to same-host generators through a shared-memory file
 * (broker/weights_shm.c), against a real `rlhf broker` process: the test is the updater (it publishes
 * synthetic versions whose every float it knows) and the generators (client API; plus a synth_generator
 * process). Each test points broker.weights_shm_dir at a directory of its own, so what the broker leaves
 * there is exactly what it wrote. Registered in the "weights_shm" suite by test_broker_proc.c. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker/broker.h"
#include "tests/broker/broker_proc_test.h"
#include "tests/broker/synth_common.h"
#include "tests/test_proc.h"

#define FLOATS 300007 /* 1.2 MB in 64 KiB chunks (publish): 19 chunk CRCs to check */

/* Names in DIR starting with "rlhf-w." (count; the first in first[] when given). */
static int shm_files(const char *dir, char *first, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "rlhf-w.", 7)) {
            if (!n && first) snprintf(first, cap, "%s", e->d_name);
            n++;
        }
    closedir(d);
    return n;
}

static broker_client *connect_as(const run *r, int role, const char *id) {
    broker_client *c = NULL;
    rlhf_error e;
    rlhf_error_clear(&e);
    if (broker_client_connect_with(&c, r->endpoint, role, id, r->cred, 5000, &e) != 0) rlhf_error_print(id, &e);
    return c;
}

static int publish(broker_client *u, uint64_t version) {
    wire_weights w;
    wire_tensor t[2];
    synth_weights_make(&w, t, version, FLOATS);
    w.chunk_bytes = 65536; /* 19 chunks: a CRC mismatch in one of them is what the check must find */
    rlhf_error e;
    rlhf_error_clear(&e);
    int rc = broker_client_publish_weights(u, &w, &e);
    if (rc) rlhf_error_print("publish", &e);
    free((void *)w.data);
    return rc;
}

/* Takes the next version (as returned: the file's mapping or a fresh copy; or, with `into`, into a
 * buffer of the caller's) and returns a hash of its bytes, or 0 when it is not the version's floats. */
static uint64_t take_hash_ex(broker_client *g, uint64_t want_version, void *into) {
    wire_weights w;
    rlhf_error e;
    rlhf_error_clear(&e);
    int r = into ? broker_client_poll_weights_into(g, &w, into, (size_t)FLOATS * 4, 30000, &e)
                 : broker_client_poll_weights(g, &w, 30000, &e);
    if (r != 1) {
        rlhf_error_print("poll_weights", &e);
        return 0;
    }
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the bytes: the ZeroMQ copy must hash the same */
    for (uint64_t i = 0; i < w.nbytes; i++) h = (h ^ w.data[i]) * 1099511628211ull;
    int ok = w.version == want_version && w.nbytes == (uint64_t)FLOATS * 4 && synth_weights_check(&w);
    if (into && w.data != into) ok = 0;
    wire_weights_free(&w);
    return ok ? h : 0;
}

static uint64_t take_hash(broker_client *g, uint64_t want_version) { return take_hash_ex(g, want_version, NULL); }

static json_t *stats_when(const run *r, const char *key, long at_least) {
    json_t *s = NULL;
    for (int i = 0; i < 200; i++) {
        json_decref(s);
        s = get_stats(r);
        if (s && stat_i(s, key) >= at_least) break;
        sleep_ms(25);
    }
    return s;
}

static int stop_broker(run *r) {
    if (send_stop(r) != 0) return -1;
    return test_proc_wait(r->broker, 10);
}

/* Three versions through the file; each hashes as the same versions over ZeroMQ (a second broker with
 * weights_shm off); a version's file is gone once the generator acknowledged a newer one; nothing is
 * left after the broker stops. */
void test_shm_versions_verified(void) {
    run r, rz;
    char dir[600], extra[800];
    snprintf(dir, sizeof dir, "%s/shm-ok", tmpdir);
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    snprintf(extra, sizeof extra, "\"weights_shm_dir\": \"%s\"", dir);
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "shm_ok", extra), 0);
    CU_ASSERT_EQUAL_FATAL(start_broker(&rz, "shm_off", "\"weights_shm\": \"off\""), 0);
    broker_client *u = connect_as(&r, WIRE_ROLE_UPDATER, "u"), *uz = connect_as(&rz, WIRE_ROLE_UPDATER, "u");
    broker_client *g = connect_as(&r, WIRE_ROLE_GENERATOR, "g"), *gz = connect_as(&rz, WIRE_ROLE_GENERATOR, "g");
    CU_ASSERT_FATAL(u && uz && g && gz);
    char first[256] = "";
    for (uint64_t v = 1; v <= 3; v++) {
        CU_ASSERT_EQUAL(publish(u, v), 0);
        CU_ASSERT_EQUAL(publish(uz, v), 0);
        /* version 2 into a buffer of the caller's (poll_weights_into), the others as mapped / copied */
        void *buf = v == 2 ? malloc((size_t)FLOATS * 4) : NULL;
        uint64_t h = take_hash_ex(g, v, buf), hz = take_hash(gz, v);
        free(buf);
        CU_ASSERT_NOT_EQUAL(h, 0);
        CU_ASSERT_EQUAL(h, hz);
        if (v == 1) CU_ASSERT_EQUAL(shm_files(dir, first, sizeof first), 1);
    }
    uint64_t failed = 9;
    CU_ASSERT_EQUAL(broker_client_weights_shm(g, &failed, NULL), 3); /* all three through the file */
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(broker_client_weights_shm(gz, &failed, NULL), 0);
    /* a real generator process joining now gets version 3 through the file and checks every float */
    pid_t sg = start_gen(&r, "sg", "--check-weights");
    CU_ASSERT_EQUAL(test_proc_wait(sg, 15), 0);
    json_t *s = stats_when(&r, "weights/shm_sends", 4);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_sends"), 4);
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_fallbacks"), 0);
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_bytes_written"), 3L * FLOATS * 4); /* once per version */
    /* the bytes never went over ZeroMQ to the generators: far less out than one version */
    CU_ASSERT_TRUE(stat_i(s, "bytes/out") < (long)FLOATS * 4);
    json_decref(s);
    s = get_stats(&rz);
    CU_ASSERT_TRUE(s && stat_i(s, "bytes/out") > 3L * FLOATS * 4 && stat_i(s, "weights/shm_sends") == 0);
    json_decref(s);
    char out[700], line[128] = "";
    snprintf(out, sizeof out, "%s/sg.out", r.dir);
    FILE *f = fopen(out, "r");
    CU_ASSERT_TRUE(f && fgets(line, sizeof line, f));
    if (f) fclose(f);
    CU_ASSERT_STRING_EQUAL(line, "weights 3\n");
    /* versions 1 and 2 were acknowledged past: only the newest file is there, and it is 0600 */
    char left[256] = "";
    CU_ASSERT_EQUAL(shm_files(dir, left, sizeof left), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(left, ".3"));
    CU_ASSERT_STRING_NOT_EQUAL(left, first);
    char p[1000];
    snprintf(p, sizeof p, "%s/%s", dir, left);
    struct stat st;
    CU_ASSERT_TRUE(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600);
    broker_client_close(&g);
    broker_client_close(&gz);
    broker_client_close(&u);
    broker_client_close(&uz);
    CU_ASSERT_EQUAL(stop_broker(&r), 0);
    CU_ASSERT_EQUAL(stop_broker(&rz), 0);
    CU_ASSERT_EQUAL(shm_files(dir, NULL, 0), 0); /* a broker that stops removes its files */
}

/* The broker cannot write the file (its directory does not exist): the generator gets the bytes. */
void test_shm_fallback_unwritable(void) {
    run r;
    char extra[800];
    snprintf(extra, sizeof extra, "\"weights_shm_dir\": \"%s/no/such/dir\"", tmpdir);
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "shm_nodir", extra), 0);
    broker_client *u = connect_as(&r, WIRE_ROLE_UPDATER, "u"), *g = connect_as(&r, WIRE_ROLE_GENERATOR, "g");
    CU_ASSERT_FATAL(u && g);
    for (uint64_t v = 1; v <= 2; v++) {
        CU_ASSERT_EQUAL(publish(u, v), 0);
        CU_ASSERT_NOT_EQUAL(take_hash(g, v), 0);
    }
    CU_ASSERT_EQUAL(broker_client_weights_shm(g, NULL, NULL), 0);
    json_t *s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_TRUE(json_is_true(json_object_get(s, "weights/shm")));
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_write_errors"), 2); /* tried once per version */
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_sends"), 0);
    CU_ASSERT_TRUE(stat_i(s, "bytes/out") > 2L * FLOATS * 4);
    json_decref(s);
    broker_client_close(&g);
    broker_client_close(&u);
    CU_ASSERT_EQUAL(stop_broker(&r), 0);
}

/* A file whose bytes do not match the chunk CRCs (the broker's test-only corruption hook flips one byte
 * after the CRCs were taken): the generator refuses it, says so, and gets the right bytes over ZeroMQ;
 * later versions come as bytes too. */
void test_shm_fallback_crc(void) {
    run r;
    char dir[600], extra[800];
    snprintf(dir, sizeof dir, "%s/shm-crc", tmpdir);
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    snprintf(extra, sizeof extra, "\"weights_shm_dir\": \"%s\"", dir);
    setenv("RLHF_TEST_FAULT_SHM_CORRUPT", "1", 1);
    int started = start_broker(&r, "shm_crc", extra);
    unsetenv("RLHF_TEST_FAULT_SHM_CORRUPT");
    CU_ASSERT_EQUAL_FATAL(started, 0);
    broker_client *u = connect_as(&r, WIRE_ROLE_UPDATER, "u"), *g = connect_as(&r, WIRE_ROLE_GENERATOR, "g");
    CU_ASSERT_FATAL(u && g);
    CU_ASSERT_EQUAL(publish(u, 1), 0);
    CU_ASSERT_NOT_EQUAL(take_hash(g, 1), 0); /* every float right: the bytes, not the file */
    uint64_t failed = 0;
    rlhf_error last;
    CU_ASSERT_EQUAL(broker_client_weights_shm(g, &failed, &last), 0);
    CU_ASSERT_EQUAL(failed, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(last.msg, "CRC-32 mismatch"));
    CU_ASSERT_PTR_NOT_NULL(strstr(last.where, dir));
    CU_ASSERT_EQUAL(publish(u, 2), 0);
    CU_ASSERT_NOT_EQUAL(take_hash(g, 2), 0);
    json_t *s = stats_when(&r, "weights/shm_fallbacks", 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_fallbacks"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_sends"), 1); /* version 2 went as bytes */
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_files"), 0); /* nobody needs version 1's file, and 2's was never written */
    json_decref(s);
    CU_ASSERT_EQUAL(shm_files(dir, NULL, 0), 0);
    broker_client_close(&g);
    broker_client_close(&u);
    CU_ASSERT_EQUAL(stop_broker(&r), 0);
}

/* kill -9 of the broker leaves its file; the next broker on the directory removes it at start, and
 * broker_weights_shm_sweep (what the launcher calls at a run's end) removes only files of dead brokers. */
void test_shm_no_leftovers_after_kill(void) {
    run r;
    char dir[600], extra[800];
    snprintf(dir, sizeof dir, "%s/shm-kill", tmpdir);
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    snprintf(extra, sizeof extra, "\"weights_shm_dir\": \"%s\"", dir);
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "shm_kill", extra), 0);
    broker_client *u = connect_as(&r, WIRE_ROLE_UPDATER, "u"), *g = connect_as(&r, WIRE_ROLE_GENERATOR, "g");
    CU_ASSERT_FATAL(u && g);
    CU_ASSERT_EQUAL(publish(u, 1), 0);
    CU_ASSERT_NOT_EQUAL(take_hash(g, 1), 0);
    broker_client_close(&g);
    broker_client_close(&u);
    CU_ASSERT_EQUAL(shm_files(dir, NULL, 0), 1);
    CU_ASSERT_EQUAL(kill(r.broker, SIGKILL), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 5), 128 + SIGKILL);
    CU_ASSERT_EQUAL(shm_files(dir, NULL, 0), 1); /* what a crash leaves ... */
    /* ... a file of a live process is not touched by a sweep (this test process's pid and start time) */
    char live[700], fake_dead[700], other[700];
    FILE *f = fopen("/proc/self/stat", "r");
    char st[1024] = "";
    CU_ASSERT_TRUE(f && fread(st, 1, sizeof st - 1, f) > 0);
    if (f) fclose(f);
    unsigned long long start = 0;
    char *rp = strrchr(st, ')');
    CU_ASSERT_TRUE(rp && sscanf(rp + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                                &start) == 1);
    snprintf(live, sizeof live, "%s/rlhf-w.%d.%llu.7", dir, (int)getpid(), start);
    snprintf(fake_dead, sizeof fake_dead, "%s/rlhf-w.%d.%llu.7", dir, (int)getpid(), start + 1); /* pid reused */
    snprintf(other, sizeof other, "%s/unrelated-file", dir);
    const char *mk[] = {live, fake_dead, other};
    for (int i = 0; i < 3; i++) {
        FILE *x = fopen(mk[i], "w");
        CU_ASSERT_PTR_NOT_NULL(x);
        if (x) fclose(x);
    }
    CU_ASSERT_EQUAL(broker_weights_shm_sweep(dir), 2); /* the killed broker's file and the reused-pid one */
    CU_ASSERT_EQUAL(access(live, F_OK), 0);
    CU_ASSERT_EQUAL(access(other, F_OK), 0);
    CU_ASSERT_NOT_EQUAL(access(fake_dead, F_OK), 0);
    unlink(live);
    unlink(other);
    /* the same through a restarted broker: kill -9 again, then start one on the directory */
    run r2;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r2, "shm_kill2", extra), 0);
    u = connect_as(&r2, WIRE_ROLE_UPDATER, "u");
    g = connect_as(&r2, WIRE_ROLE_GENERATOR, "g");
    CU_ASSERT_FATAL(u && g);
    CU_ASSERT_EQUAL(publish(u, 1), 0);
    CU_ASSERT_NOT_EQUAL(take_hash(g, 1), 0);
    broker_client_close(&g);
    broker_client_close(&u);
    CU_ASSERT_EQUAL(kill(r2.broker, SIGKILL), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r2.broker, 5), 128 + SIGKILL);
    CU_ASSERT_EQUAL(shm_files(dir, NULL, 0), 1);
    run r3;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r3, "shm_kill3", extra), 0);
    CU_ASSERT_EQUAL(shm_files(dir, NULL, 0), 0);
    json_t *s = get_stats(&r3);
    CU_ASSERT_EQUAL(s ? stat_i(s, "weights/shm_swept") : -1, 1);
    json_decref(s);
    CU_ASSERT_EQUAL(stop_broker(&r3), 0);
}

/* Names in DIR starting with "rlhf-h." (the files generators on another host write for each other). */
static int host_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += !strncmp(e->d_name, "rlhf-h.", 7);
    closedir(d);
    return n;
}

/* Three generators on "another host" (RLHF_HOST_ID differs from the broker's): per version one of them gets
 * the bytes and writes the host file, the other two get WEIGHTS_SHM naming it, and every one of them
 * holds the version's exact floats; bytes sent to that host: one version's worth per version. A file a
 * dead generator of that host left is swept when a generator joins; nothing is left after they close. */
void test_shm_other_host_once(void) {
    run r;
    char dir[600], extra[800], stale[700];
    snprintf(dir, sizeof dir, "%s/shm-host", tmpdir);
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    /* a file of a generator that is gone: a child that exited */
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    snprintf(stale, sizeof stale, "%s/rlhf-h.%d.7", dir, (int)dead);
    FILE *f = fopen(stale, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs("stale", f);
    fclose(f);
    snprintf(extra, sizeof extra, "\"weights_shm_dir\": \"%s\"", dir);
    setenv("RLHF_HOST_ID", "test-host-A", 1);
    int started = start_broker(&r, "shm_host", extra);
    setenv("RLHF_HOST_ID", "test-host-B", 1); /* the generators below say they are on another host */
    CU_ASSERT_EQUAL_FATAL(started, 0);
    broker_client *u = connect_as(&r, WIRE_ROLE_UPDATER, "u");
    broker_client *g[3];
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "g%d", i);
        g[i] = connect_as(&r, WIRE_ROLE_GENERATOR, id);
    }
    unsetenv("RLHF_HOST_ID");
    CU_ASSERT_FATAL(u && g[0] && g[1] && g[2]);
    CU_ASSERT_EQUAL(access(stale, F_OK), -1); /* swept at the first WELCOME naming the directory */
    json_t *s0 = get_stats(&r);
    long out0 = stat_i(s0, "bytes/out");
    json_decref(s0);
    for (uint64_t v = 1; v <= 3; v++) {
        CU_ASSERT_EQUAL(publish(u, v), 0);
        for (int i = 0; i < 3; i++) CU_ASSERT_NOT_EQUAL(take_hash(g[i], v), 0);
    }
    uint64_t mapped = 0;
    for (int i = 0; i < 3; i++) mapped += broker_client_weights_shm(g[i], NULL, NULL);
    CU_ASSERT_EQUAL(mapped, 6); /* two of three per version */
    json_t *s = stats_when(&r, "weights/host_file_sends", 6);
    CU_ASSERT_EQUAL(stat_i(s, "weights/host_file_sends"), 6);
    CU_ASSERT_EQUAL(stat_i(s, "weights/host_file_fallbacks"), 0);
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_sends"), 0);         /* none is on the broker's host */
    CU_ASSERT_EQUAL(stat_i(s, "weights/shm_bytes_written"), 0); /* so the broker wrote no file */
    long sent = stat_i(s, "bytes/out") - out0;
    printf("[bytes out to the other host: %ld for 3 versions of %d]", sent, FLOATS * 4);
    CU_ASSERT(sent >= 3L * FLOATS * 4 && sent < 4L * FLOATS * 4); /* once per version, not three times */
    json_decref(s);
    CU_ASSERT(host_files(dir) >= 1 && host_files(dir) <= 2);
    for (int i = 0; i < 3; i++) broker_client_close(&g[i]);
    CU_ASSERT_EQUAL(host_files(dir), 0);
    broker_client_close(&u);
    CU_ASSERT_EQUAL(stop_broker(&r), 0);
}
