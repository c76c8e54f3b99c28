/* broker/auth.c — who may talk to the broker: per-run CURVE credentials and the broker's ZAP handler.
 *
 * Every process of a run proves a role at the connection handshake (ZeroMQ CURVE): the launcher writes
 * one key pair per role into RUN_DIR/credentials/ (mode 0700, files 0600, never printed), every process
 * it starts loads the pair of its role, and the broker's ZAP handler (ZeroMQ's authentication protocol,
 * answered on inproc://zeromq.zap.01 in the broker's own poll loop) admits only those public keys and
 * names the role as the connection's User-Id. The broker then reads the role off every message it
 * receives (zmq_msg_gets "User-Id"): a role is bound to the connection, not to what a message claims.
 * The same files serve peers on other hosts (scale-out): copy the role's .key file and broker.key's
 * public line; CURVE encrypts and authenticates over any tcp:// network.
 *
 * On one host over ipc:// the mechanism is PLAIN instead (user name = the role, password = the role's
 * secret key), checked by the same ZAP handler: CURVE's encryption of every byte costs a 40 MB weights
 * fan-out several times its unencrypted time (docs/PERFORMANCE.md "Broker: authentication"), and a
 * Unix socket in a directory only this user can enter (mode 0700, checked by the broker) is not
 * readable by anyone the encryption would keep out.
 *
 * Files: broker.key, generator.key, updater.key, control.key (the launcher's / an operator's: the only
 * one allowed CONTROL; it says HELLO as an observer). Each holds two lines "public=Z85" and "secret=Z85"
 * (40 characters each). */
#include "broker/broker_int.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#define AUTH_DOMAIN "rlhf"
#define AUTH_ZAP_ENDPOINT "inproc://zeromq.zap.01"

/* The file of each credential role (wire_role), and the broker's own. */
static const char *role_file(int role) {
    switch (role) {
    case WIRE_ROLE_GENERATOR: return "generator.key";
    case WIRE_ROLE_UPDATER: return "updater.key";
    case WIRE_ROLE_OBSERVER: return "control.key";
    default: return NULL;
    }
}
#define SERVER_FILE "broker.key"

static int write_key_file(const char *dir, const char *name, rlhf_error *err) {
    char pub[41], sec[41], path[4200], text[128];
    if (zmq_curve_keypair(pub, sec) != 0)
        return RLHF_FAIL(err, RLHF_EUNSUPPORTED, "zmq_curve_keypair: %s (libzmq without CURVE?)", zmq_strerror(errno));
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int n = snprintf(text, sizeof text, "public=%s\nsecret=%s\n", pub, sec);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, path, "cannot create: %s", strerror(errno));
    int ok = write(fd, text, (size_t)n) == n && fsync(fd) == 0;
    int e = errno;
    close(fd);
    memset(sec, 0, sizeof sec);
    memset(text, 0, sizeof text);
    if (!ok) return rlhf_error_set(err, RLHF_EIO, path, "cannot write: %s", strerror(e));
    return 0;
}

static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[4400];
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

int broker_credentials_create(const char *dir, rlhf_error *err) {
    if (strlen(dir) > 4000) return rlhf_error_set(err, RLHF_EINVAL, dir, "path too long");
    /* written complete into a fresh 0700 directory, then renamed into place: a reader never sees half */
    char tmp[4100], old[4100];
    snprintf(tmp, sizeof tmp, "%s.new.XXXXXX", dir);
    if (!mkdtemp(tmp)) return rlhf_error_set(err, RLHF_EIO, dir, "cannot create the credentials: %s", strerror(errno));
    static const char *files[] = {SERVER_FILE, "generator.key", "updater.key", "control.key"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        int rc = write_key_file(tmp, files[i], err);
        if (rc) {
            remove_dir(tmp);
            return rc;
        }
    }
    old[0] = 0;
    struct stat st;
    if (lstat(dir, &st) == 0) { /* the previous launch's keys: replaced, so copies of them stop working */
        snprintf(old, sizeof old, "%s.old.XXXXXX", dir);
        if (!mkdtemp(old) || rmdir(old) != 0 || rename(dir, old) != 0) {
            int e = errno;
            remove_dir(tmp);
            return rlhf_error_set(err, RLHF_EIO, dir, "cannot replace the credentials: %s", strerror(e));
        }
    }
    if (rename(tmp, dir) != 0) {
        int e = errno;
        remove_dir(tmp);
        return rlhf_error_set(err, RLHF_EIO, dir, "cannot install the credentials: %s", strerror(e));
    }
    if (old[0]) remove_dir(old);
    return 0;
}

/* Writes NAME in DIR (0600, fsync'd). */
static int write_text_file(const char *dir, const char *name, const char *text, rlhf_error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, path, "cannot create: %s", strerror(errno));
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
    int e = errno;
    close(fd);
    if (!ok) return rlhf_error_set(err, RLHF_EIO, path, "cannot write: %s", strerror(e));
    return 0;
}

static int read_key_file(const char *dir, const char *name, char pub[41], char *sec, rlhf_error *err);

int broker_credentials_export(const char *dir, int role, const char *out, rlhf_error *err) {
    const char *f = role_file(role);
    if (!f || role == WIRE_ROLE_OBSERVER)
        return rlhf_error_set(err, RLHF_EINVAL, "role", "only generator and updater credentials are handed out");
    struct stat st;
    if (lstat(out, &st) == 0) return rlhf_error_set(err, RLHF_EINVAL, out, "exists; choose a new directory");
    char pub[41], sec[41], server[41], tmp[4200], text[160];
    int rc = read_key_file(dir, f, pub, sec, err);
    if (!rc) rc = read_key_file(dir, SERVER_FILE, server, NULL, err);
    if (rc) return rc;
    /* the role's own pair and only the broker's PUBLIC key: a holder can be that role, not the broker */
    snprintf(tmp, sizeof tmp, "%s.new.XXXXXX", out);
    if (!mkdtemp(tmp)) rc = rlhf_error_set(err, RLHF_EIO, out, "cannot create: %s", strerror(errno));
    if (!rc) {
        snprintf(text, sizeof text, "public=%s\nsecret=%s\n", pub, sec);
        rc = write_text_file(tmp, f, text, err);
    }
    if (!rc) {
        snprintf(text, sizeof text, "public=%s\n", server);
        rc = write_text_file(tmp, SERVER_FILE, text, err);
    }
    memset(sec, 0, sizeof sec);
    memset(text, 0, sizeof text);
    if (!rc && rename(tmp, out) != 0) rc = rlhf_error_set(err, RLHF_EIO, out, "cannot install: %s", strerror(errno));
    if (rc) remove_dir(tmp);
    return rc;
}

static int read_key_path(const char *path, char pub[41], char *sec, rlhf_error *err);

/* Reads "public=" and (when sec != NULL) "secret=" of DIR/NAME. */
static int read_key_file(const char *dir, const char *name, char pub[41], char *sec, rlhf_error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return read_key_path(path, pub, sec, err);
}

static int read_key_path(const char *path, char pub[41], char *sec, rlhf_error *err) {
    char *text = NULL;
    size_t n = 0;
    int rc = rlhf_read_file(path, &text, &n, err);
    if (rc) return rc;
    rc = -1;
    const char *p = strstr(text, "public="), *s = strstr(text, "secret=");
    if (p && strspn(p + 7, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#") >= 40 &&
        (!sec || s)) {
        memcpy(pub, p + 7, 40);
        pub[40] = 0;
        if (sec) {
            memcpy(sec, s + 7, 40);
            sec[40] = 0;
        }
        /* the two halves must belong together (a file pieced from two runs would fail every handshake) */
        char check[41];
        rc = 0;
        if (sec && (zmq_curve_public(check, sec) != 0 || strcmp(check, pub) != 0)) rc = -1;
    }
    memset(text, 0, n);
    free(text);
    if (rc) return rlhf_error_set(err, RLHF_ECORRUPT, path, "not a credential file (expected public=/secret= Z85 lines)");
    return 0;
}

int broker_credential_load(broker_credential *c, const char *dir, int role, rlhf_error *err) {
    memset(c, 0, sizeof *c);
    const char *f = role_file(role);
    if (!f) return rlhf_error_set(err, RLHF_EINVAL, "role", "no credential for role %d", role);
    c->role = role;
    int rc = read_key_file(dir, f, c->public_key, c->secret_key, err);
    if (!rc) rc = read_key_file(dir, SERVER_FILE, c->server_key, NULL, err);
    if (rc) memset(c, 0, sizeof *c);
    return rc;
}

int broker_credential_load_files(broker_credential *c, int role, const char *key_file, const char *server_key_file,
                                 rlhf_error *err) {
    memset(c, 0, sizeof *c);
    if (role != WIRE_ROLE_GENERATOR && role != WIRE_ROLE_UPDATER)
        return rlhf_error_set(err, RLHF_EINVAL, "role", "a key file serves a generator or an updater");
    c->role = role;
    /* a secret others can read is no longer this host's alone: refused, as ssh refuses such a key */
    struct stat st;
    if (stat(key_file, &st) == 0 && (st.st_mode & 077))
        return rlhf_error_set(err, RLHF_EINVAL, key_file,
                              "a secret key readable by others (mode %03o); chmod 600 it, or make a new one with "
                              "`rlhf keygen`",
                              (unsigned)(st.st_mode & 0777));
    int rc = read_key_path(key_file, c->public_key, c->secret_key, err);
    if (!rc) rc = read_key_path(server_key_file, c->server_key, NULL, err);
    if (rc) memset(c, 0, sizeof *c);
    return rc;
}

/* Writes `text` to a fresh temporary file beside PATH with `mode`, fsync'd, then links it to PATH, which
 * fails when PATH exists (a key file is never replaced); the directory is fsync'd. */
static int write_new_file(const char *path, const char *text, mode_t mode, rlhf_error *err) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp)
        return rlhf_error_set(err, RLHF_EINVAL, path, "path too long");
    int fd = mkstemp(tmp); /* O_EXCL, mode 0600 */
    if (fd < 0) return rlhf_error_set(err, RLHF_EIO, path, "cannot create: %s", strerror(errno));
    size_t n = strlen(text);
    int ok = fchmod(fd, mode) == 0 && write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
    int e = errno;
    close(fd);
    if (ok && link(tmp, path) != 0) {
        ok = 0;
        e = errno;
    }
    unlink(tmp);
    if (!ok) return rlhf_error_set(err, RLHF_EIO, path, "cannot write: %s", e == EEXIST ? "exists (keys are never "
                                                                                      "overwritten; choose a new path)"
                                                                                    : strerror(e));
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

int broker_keygen(const char *path, char public_key[41], rlhf_error *err) {
    char pub[41], sec[41], text[128], pubpath[4200];
    if (snprintf(pubpath, sizeof pubpath, "%s.pub", path) >= (int)sizeof pubpath)
        return rlhf_error_set(err, RLHF_EINVAL, path, "path too long");
    struct stat st;
    if (lstat(path, &st) == 0 || lstat(pubpath, &st) == 0)
        return rlhf_error_set(err, RLHF_EINVAL, lstat(path, &st) == 0 ? path : pubpath,
                              "exists (keys are never overwritten; choose a new path)");
    if (zmq_curve_keypair(pub, sec) != 0)
        return RLHF_FAIL(err, RLHF_EUNSUPPORTED, "zmq_curve_keypair: %s (libzmq without CURVE?)", zmq_strerror(errno));
    snprintf(text, sizeof text, "public=%s\nsecret=%s\n", pub, sec);
    int rc = write_new_file(path, text, 0600, err);
    memset(sec, 0, sizeof sec);
    memset(text, 0, sizeof text);
    if (rc) return rc;
    snprintf(text, sizeof text, "public=%s\n", pub);
    rc = write_new_file(pubpath, text, 0644, err);
    if (rc) {
        unlink(path); /* both files or neither */
        return rc;
    }
    if (public_key) memcpy(public_key, pub, 41);
    return 0;
}

void broker_credential_clear(broker_credential *c) { memset(c, 0, sizeof *c); }

int broker_auth_is_curve(const char *endpoint) { return strncmp(endpoint, "tcp://", 6) == 0; }

int broker_credential_apply(void *sock, const broker_credential *c, const char *endpoint) {
    if (!broker_auth_is_curve(endpoint)) {
        const char *user = wire_role_name(c->role);
        if (zmq_setsockopt(sock, ZMQ_PLAIN_USERNAME, user, strlen(user)) != 0) return -1;
        return zmq_setsockopt(sock, ZMQ_PLAIN_PASSWORD, c->secret_key, 40);
    }
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, c->server_key, 40) != 0) return -1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, c->public_key, 40) != 0) return -1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, c->secret_key, 40) != 0) return -1;
    return 0;
}

/* ---------------------------------------------------------------- the broker side */

/* ipc://PATH: PATH's directory must be this user's alone (PLAIN sends the password over the socket). */
static int check_ipc_dir(const char *endpoint, rlhf_error *err) {
    if (strncmp(endpoint, "ipc://", 6) != 0) return 0; /* inproc: inside this process */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", endpoint + 6);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    struct stat st;
    if (stat(dir, &st) != 0) return rlhf_error_set(err, RLHF_EIO, "broker.endpoint", "%s: %s", dir, strerror(errno));
    if (st.st_uid != geteuid() || (st.st_mode & 077))
        return rlhf_error_set(err, RLHF_EINVAL, "broker.endpoint",
                              "%s: an ipc:// socket with credentials must be in a directory only this user can enter "
                              "(mode 0700, owned by uid %d; it is %03o, uid %d), or use tcp:// (CURVE)",
                              dir, (int)geteuid(), (unsigned)(st.st_mode & 0777), (int)st.st_uid);
    return 0;
}

int broker_auth_open(broker_auth *a, void *zctx, void *router, const char *dir, const char *endpoint, rlhf_error *err) {
    memset(a, 0, sizeof a[0]);
    a->curve = broker_auth_is_curve(endpoint);
    if (!a->curve) {
        int rc = check_ipc_dir(endpoint, err);
        if (rc) return rc;
    }
    if (a->curve && !zmq_has("curve"))
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, "broker", "this libzmq has no CURVE: run with --insecure on a trusted host only");
    char sec[41];
    int rc = read_key_file(dir, SERVER_FILE, a->server_public, sec, err);
    for (int r = WIRE_ROLE_GENERATOR; !rc && r <= WIRE_ROLE_OBSERVER; r++)
        rc = read_key_file(dir, role_file(r), a->client_public[r], a->curve ? NULL : a->client_secret[r], err);
    if (rc) {
        memset(sec, 0, sizeof sec);
        return rc;
    }
    /* The handler must listen before the router binds: a CURVE server without one admits every key. */
    a->zap = zmq_socket(zctx, ZMQ_REP);
    int one = 1, l0 = 0;
    if (!a->zap || zmq_bind(a->zap, AUTH_ZAP_ENDPOINT) != 0) {
        rc = RLHF_FAIL(err, RLHF_ESYS, "ZAP handler %s: %s", AUTH_ZAP_ENDPOINT, zmq_strerror(errno));
        goto out;
    }
    zmq_setsockopt(a->zap, ZMQ_LINGER, &l0, sizeof l0);
    if (a->curve ? zmq_setsockopt(router, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
                       zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, sec, 40) != 0
                 : zmq_setsockopt(router, ZMQ_PLAIN_SERVER, &one, sizeof one) != 0) {
        rc = RLHF_FAIL(err, RLHF_ESYS, "%s server options: %s", a->curve ? "CURVE" : "PLAIN", zmq_strerror(errno));
        goto out;
    }
    if (zmq_setsockopt(router, ZMQ_ZAP_DOMAIN, AUTH_DOMAIN, strlen(AUTH_DOMAIN)) != 0) {
        rc = RLHF_FAIL(err, RLHF_ESYS, "ZAP domain: %s", zmq_strerror(errno));
        goto out;
    }
    /* a peer without CURVE (or not speaking ZMTP at all) fails before ZAP: counted from the router's events */
    char mon[64];
    snprintf(mon, sizeof mon, "inproc://rlhf-broker-monitor-%p", (void *)a);
    if (zmq_socket_monitor(router, mon, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) ==
        0) {
        a->monitor = zmq_socket(zctx, ZMQ_PAIR);
        if (a->monitor) {
            zmq_setsockopt(a->monitor, ZMQ_LINGER, &l0, sizeof l0);
            if (zmq_connect(a->monitor, mon) != 0) {
                zmq_close(a->monitor);
                a->monitor = NULL;
            }
        }
    }
    a->on = 1;
out:
    memset(sec, 0, sizeof sec);
    if (rc) broker_auth_close(a);
    return rc;
}

int broker_auth_allow(broker_auth *a, const broker_authorized_key *keys, uint32_t n, rlhf_error *err) {
    if (n == 0) return 0;
    if (a->on && !a->curve)
        return rlhf_error_set(err, RLHF_EINVAL, "broker.authorized_keys",
                              "keys of other hosts need a tcp:// broker.endpoint (CURVE); this broker listens on ipc://");
    a->authorized = keys;
    a->n_authorized = n;
    memset(a->authorized_seen, 0, sizeof a->authorized_seen);
    return 0;
}

/* 1 when a tcp:// bind address is the loopback interface only (127.0.0.0/8, ::1, localhost, lo). */
static int tcp_bind_is_loopback(const char *endpoint) {
    char host[256];
    snprintf(host, sizeof host, "%s", endpoint + 6);
    char *colon = strrchr(host, ':');
    if (colon) *colon = 0;
    if (!strcmp(host, "localhost") || !strcmp(host, "lo") || !strcmp(host, "[::1]") || !strcmp(host, "::1")) return 1;
    struct in_addr v4;
    return inet_pton(AF_INET, host, &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127;
}

int broker_auth_check_insecure_bind(const char *endpoint, int allow, rlhf_error *err) {
    if (allow || strncmp(endpoint, "tcp://", 6) != 0 || tcp_bind_is_loopback(endpoint)) return 0;
    return rlhf_error_set(err, RLHF_EINVAL, "broker.endpoint",
                          "%s is not a loopback address and --insecure turns authentication off: anyone who reaches "
                          "it could stop the run or push groups; use the run's credentials (CURVE), or set "
                          "\"broker\": {\"insecure\": true} to allow it",
                          endpoint);
}

void broker_auth_close(broker_auth *a) {
    if (a->zap) zmq_close(a->zap);
    a->zap = NULL;
    if (a->monitor) zmq_close(a->monitor);
    a->monitor = NULL;
    a->on = 0;
    memset(a->client_secret, 0, sizeof a->client_secret);
}

/* Equal strings of equal length, in time independent of where they differ. */
static int same_secret(const void *x, size_t n, const char *secret) {
    if (n != strlen(secret)) return 0;
    const unsigned char *p = x;
    unsigned diff = 0;
    for (size_t i = 0; i < n; i++) diff |= p[i] ^ (unsigned char)secret[i];
    return diff == 0;
}

/* Answers one ZAP request (RFC 27): frames version, request id, domain, address, identity, mechanism,
 * credentials...; reply version, request id, status, text, user id (the role's name), metadata. */
static void zap_answer(broker_auth *a) {
    zmq_msg_t f[8];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, a->zap, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            if (n == 0) return; /* nothing waiting */
            break;
        }
        more = zmq_msg_more(&m);
        if (n < 8) f[n++] = m;
        else zmq_msg_close(&m);
    }
    const char *status = "400", *text = "unknown key", *user = "";
    int role = 0;
    int v10 = n >= 7 && zmq_msg_size(&f[0]) == 3 && !memcmp(zmq_msg_data(&f[0]), "1.0", 3);
    if (v10 && a->curve && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) &&
        zmq_msg_size(&f[6]) == 32) {
        char z[41];
        zmq_z85_encode(z, zmq_msg_data(&f[6]), 32);
        for (int r = WIRE_ROLE_GENERATOR; r <= WIRE_ROLE_OBSERVER; r++)
            if (!strcmp(z, a->client_public[r])) role = r;
        for (uint32_t i = 0; !role && i < a->n_authorized; i++)
            if (!strcmp(z, a->authorized[i].public_key)) {
                role = a->authorized[i].role;
                if (!a->authorized_seen[i]) { /* once per key: a busy host's reconnects do not flood the log */
                    a->authorized_seen[i] = 1;
                    fprintf(stderr, "[broker %.3f] admitted authorized key \"%s\" (%s) at the handshake\n",
                            rlhf_wall_time(), a->authorized[i].name, wire_role_name(role));
                }
            }
    } else if (v10 && !a->curve && n >= 8 && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "PLAIN", 5)) {
        text = "unknown user or wrong password";
        for (int r = WIRE_ROLE_GENERATOR; r <= WIRE_ROLE_OBSERVER; r++) {
            const char *user = wire_role_name(r);
            if (zmq_msg_size(&f[6]) == strlen(user) && !memcmp(zmq_msg_data(&f[6]), user, strlen(user)) &&
                same_secret(zmq_msg_data(&f[7]), zmq_msg_size(&f[7]), a->client_secret[r]))
                role = r;
        }
    } else {
        text = a->curve ? "expected a CURVE handshake" : "expected a PLAIN handshake";
    }
    if (role) {
        status = "200";
        text = "OK";
        user = wire_role_name(role);
        a->allowed++;
    } else {
        a->denied++;
        /* rate limited: the first ones, then at powers of two */
        if (a->denied <= 10 || (a->denied & (a->denied - 1)) == 0)
            fprintf(stderr, "[broker %.3f] refused a connection at the handshake (%s; %llu so far)\n", rlhf_wall_time(),
                    text, (unsigned long long)a->denied);
    }
    zmq_send(a->zap, "1.0", 3, ZMQ_SNDMORE);
    if (n >= 2) zmq_send(a->zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    else zmq_send(a->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(a->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(a->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(a->zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(a->zap, "", 0, 0);
    for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
}

/* Counts the monitor's handshake failures waiting (each event: 6 bytes of event and value, then the
 * endpoint). */
static void count_failed_handshakes(broker_auth *a) {
    for (int i = 0; a->monitor && i < 256; i++) {
        uint8_t ev[6];
        int n = zmq_recv(a->monitor, ev, sizeof ev, ZMQ_DONTWAIT);
        if (n < 0) return;
        int more = 0;
        size_t ml = sizeof more;
        zmq_getsockopt(a->monitor, ZMQ_RCVMORE, &more, &ml);
        while (more) { /* the endpoint frame */
            char skip[256];
            if (zmq_recv(a->monitor, skip, sizeof skip, 0) < 0) break;
            zmq_getsockopt(a->monitor, ZMQ_RCVMORE, &more, &ml);
        }
        a->failed++;
        if (a->failed <= 10 || (a->failed & (a->failed - 1)) == 0)
            fprintf(stderr, "[broker %.3f] refused a connection at the handshake (no %s key, another mechanism or "
                            "not ZeroMQ; %llu so far)\n",
                    rlhf_wall_time(), a->curve ? "CURVE" : "PLAIN", (unsigned long long)a->failed);
    }
}

void broker_auth_serve(broker_auth *a) {
    if (!a->on) return;
    count_failed_handshakes(a);
    for (int i = 0; i < 64; i++) {
        uint64_t before = a->allowed + a->denied;
        zap_answer(a);
        if (a->allowed + a->denied == before) break;
    }
}

int broker_auth_role(const broker_auth *a, void *zmsg) {
    if (!a->on) return 0;
    const char *u = zmq_msg_gets((zmq_msg_t *)zmsg, "User-Id");
    if (!u) return 0;
    for (int r = WIRE_ROLE_GENERATOR; r <= WIRE_ROLE_OBSERVER; r++)
        if (!strcmp(u, wire_role_name(r))) return r;
    return 0;
}
