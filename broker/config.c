/* broker/config.c — the "broker" section of a run config (broker_config_default/_parse/_free, see
 * broker/broker.h): defaults, validation with errors naming the JSON path. Kept out of broker.c,
 * which holds the broker's running state. */
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "broker/broker_int.h"

void broker_config_default(broker_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->endpoint, sizeof c->endpoint, "tcp://127.0.0.1:5555");
    c->max_staleness = 2;
    c->queue_capacity = 64;
    c->max_generation_lag = -1;
    snprintf(c->replay_path, sizeof c->replay_path, "rollouts.log");
    c->replay_fsync = BROKER_FSYNC_EVERY_N;
    c->replay_fsync_every = 64;
    c->replay_rotate_bytes = 256ull << 20;
    c->heartbeat_interval_ms = 500;
    c->heartbeat_timeout_ms = 5000;
    c->stats_interval_ms = 5000;
    c->seed = 1;
    c->lease_timeout_ms = 600000;
    c->max_peers = 1024;
    c->weights_shm = 1;
    snprintf(c->weights_shm_dir, sizeof c->weights_shm_dir, "/dev/shm");
}

void broker_config_free(broker_config *c) {
    if (!c) return;
    json_decref(c->selector);
    c->selector = NULL;
}

static int cfg_uint(const json_t *v, const char *path, uint64_t min, uint64_t max, uint64_t *out, rlhf_error *err) {
    if (!json_is_integer(v)) return rlhf_error_set(err, RLHF_EINVAL, path, "must be an integer");
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x < min || (uint64_t)x > max)
        return rlhf_error_set(err, RLHF_EINVAL, path, "%lld out of range [%llu, %llu]", (long long)x,
                              (unsigned long long)min, (unsigned long long)max);
    *out = (uint64_t)x;
    return 0;
}

static int cfg_str(const json_t *v, const char *path, char *buf, size_t cap, rlhf_error *err) {
    if (!json_is_string(v)) return rlhf_error_set(err, RLHF_EINVAL, path, "must be a string");
    if (json_string_length(v) >= cap) return rlhf_error_set(err, RLHF_EINVAL, path, "longer than %zu bytes", cap - 1);
    snprintf(buf, cap, "%s", json_string_value(v));
    return 0;
}

static int parse_replay(broker_config *c, const json_t *obj, const char *path, rlhf_error *err) {
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, path, "must be an object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        char p[1024];
        snprintf(p, sizeof p, "%.500s.%.500s", path, key);
        uint64_t u = 0;
        int rc = 0;
        if (!strcmp(key, "path")) {
            rc = cfg_str(v, p, c->replay_path, sizeof c->replay_path, err);
        } else if (!strcmp(key, "fsync")) {
            char s[16];
            rc = cfg_str(v, p, s, sizeof s, err);
            if (rc) return rc;
            if (!strcmp(s, "always")) c->replay_fsync = BROKER_FSYNC_ALWAYS;
            else if (!strcmp(s, "every_n")) c->replay_fsync = BROKER_FSYNC_EVERY_N;
            else if (!strcmp(s, "never")) c->replay_fsync = BROKER_FSYNC_NEVER;
            else return rlhf_error_set(err, RLHF_EINVAL, p, "\"%s\": expected \"always\", \"every_n\" or \"never\"", s);
        } else if (!strcmp(key, "fsync_every")) {
            if (!(rc = cfg_uint(v, p, 1, 1u << 30, &u, err))) c->replay_fsync_every = (uint32_t)u;
        } else if (!strcmp(key, "rotate_bytes")) {
            if (!(rc = cfg_uint(v, p, 0, INT64_MAX, &u, err))) c->replay_rotate_bytes = u;
        } else {
            return rlhf_error_set(err, RLHF_EINVAL, p, "unknown key (path, fsync, fsync_every, rotate_bytes)");
        }
        if (rc) return rc;
    }
    return 0;
}

/* "authorized_keys": [{"public": Z85, "role": "generator"|"updater", "name": "host-b"}, ...] */
static int parse_authorized_keys(broker_config *c, const json_t *arr, const char *path, rlhf_error *err) {
    if (!json_is_array(arr)) return rlhf_error_set(err, RLHF_EINVAL, path, "must be an array of {public, role, name}");
    if (json_array_size(arr) > BROKER_MAX_AUTHORIZED_KEYS)
        return rlhf_error_set(err, RLHF_EINVAL, path, "%zu keys; at most %d", json_array_size(arr),
                              BROKER_MAX_AUTHORIZED_KEYS);
    size_t i;
    json_t *e;
    json_array_foreach((json_t *)arr, i, e) {
        char p[1100];
        snprintf(p, sizeof p, "%.1000s[%zu]", path, i);
        if (!json_is_object(e)) return rlhf_error_set(err, RLHF_EINVAL, p, "must be an object {public, role, name}");
        broker_authorized_key *k = &c->authorized[i];
        memset(k, 0, sizeof *k);
        snprintf(k->name, sizeof k->name, "key-%zu", i);
        const char *key;
        json_t *v;
        json_object_foreach(e, key, v) {
            char q[1200];
            snprintf(q, sizeof q, "%s.%.60s", p, key);
            int rc = 0;
            if (!strcmp(key, "public")) {
                uint8_t raw[32];
                /* a CURVE public key is 32 bytes, 40 characters of Z85 */
                if (!json_is_string(v) || json_string_length(v) != 40 || !zmq_z85_decode(raw, json_string_value(v)))
                    return rlhf_error_set(err, RLHF_EINVAL, q,
                                          "not a CURVE public key (40 Z85 characters, the public= line of `rlhf keygen`)");
                snprintf(k->public_key, sizeof k->public_key, "%s", json_string_value(v));
            } else if (!strcmp(key, "role")) {
                const char *r = json_is_string(v) ? json_string_value(v) : "";
                if (!strcmp(r, "generator")) k->role = WIRE_ROLE_GENERATOR;
                else if (!strcmp(r, "updater")) k->role = WIRE_ROLE_UPDATER;
                else return rlhf_error_set(err, RLHF_EINVAL, q, "must be \"generator\" or \"updater\"");
            } else if (!strcmp(key, "name")) {
                rc = cfg_str(v, q, k->name, sizeof k->name, err);
                if (!rc && (!k->name[0] || strspn(k->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                           "0123456789._-") != strlen(k->name)))
                    rc = rlhf_error_set(err, RLHF_EINVAL, q, "1..63 of A-Z a-z 0-9 . _ -");
            } else {
                rc = rlhf_error_set(err, RLHF_EINVAL, q, "unknown key (public, role, name)");
            }
            if (rc) return rc;
        }
        if (!k->public_key[0]) return rlhf_error_set(err, RLHF_EINVAL, p, "missing \"public\"");
        if (!k->role) return rlhf_error_set(err, RLHF_EINVAL, p, "missing \"role\" (generator or updater)");
        for (size_t j = 0; j < i; j++)
            if (!strcmp(c->authorized[j].public_key, k->public_key))
                return rlhf_error_set(err, RLHF_EINVAL, p, "the same public key as %s[%zu]", path, j);
    }
    c->n_authorized = (uint32_t)json_array_size(arr);
    return 0;
}

int broker_config_parse(broker_config *c, const json_t *obj, const char *path, rlhf_error *err) {
    broker_config_default(c);
    if (!path) path = "broker";
    if (!obj) return 0;
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, path, "must be an object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        char p[1024];
        snprintf(p, sizeof p, "%.500s.%.500s", path, key);
        uint64_t u = 0;
        int rc = 0;
        if (!strcmp(key, "endpoint")) {
            rc = cfg_str(v, p, c->endpoint, sizeof c->endpoint, err);
            if (!rc && strncmp(c->endpoint, "tcp://", 6) && strncmp(c->endpoint, "ipc://", 6) &&
                strncmp(c->endpoint, "inproc://", 9))
                rc = rlhf_error_set(err, RLHF_EINVAL, p, "\"%s\": expected tcp://HOST:PORT or ipc://PATH", c->endpoint);
        } else if (!strcmp(key, "max_staleness")) {
            if (!(rc = cfg_uint(v, p, 0, 1u << 30, &u, err))) c->max_staleness = (uint32_t)u;
        } else if (!strcmp(key, "queue_capacity")) {
            if (!(rc = cfg_uint(v, p, 1, 1u << 20, &u, err))) c->queue_capacity = (uint32_t)u;
        } else if (!strcmp(key, "max_generation_lag")) {
            if (json_is_integer(v) && json_integer_value(v) == -1) c->max_generation_lag = -1;
            else if (!(rc = cfg_uint(v, p, 0, 1u << 30, &u, err))) c->max_generation_lag = (int64_t)u;
        } else if (!strcmp(key, "initial_version")) {
            if (!(rc = cfg_uint(v, p, 0, INT64_MAX, &u, err))) c->initial_version = u;
        } else if (!strcmp(key, "replay")) {
            rc = parse_replay(c, v, p, err);
        } else if (!strcmp(key, "heartbeat_interval_ms")) {
            if (!(rc = cfg_uint(v, p, 10, 600000, &u, err))) c->heartbeat_interval_ms = (uint32_t)u;
        } else if (!strcmp(key, "heartbeat_timeout_ms")) {
            if (!(rc = cfg_uint(v, p, 20, 3600000, &u, err))) c->heartbeat_timeout_ms = (uint32_t)u;
        } else if (!strcmp(key, "stats_interval_ms")) {
            if (!(rc = cfg_uint(v, p, 0, 3600000, &u, err))) c->stats_interval_ms = (uint32_t)u;
        } else if (!strcmp(key, "dataset")) {
            rc = cfg_str(v, p, c->dataset, sizeof c->dataset, err);
        } else if (!strcmp(key, "selector")) {
            if (!json_is_object(v)) rc = rlhf_error_set(err, RLHF_EINVAL, p, "must be an object");
            else {
                json_decref(c->selector);
                c->selector = json_deep_copy(v);
            }
        } else if (!strcmp(key, "seed")) {
            if (!(rc = cfg_uint(v, p, 0, INT64_MAX, &u, err))) c->seed = u;
        } else if (!strcmp(key, "vocab_size")) {
            if (!(rc = cfg_uint(v, p, 0, INT32_MAX, &u, err))) c->vocab_size = (uint32_t)u;
        } else if (!strcmp(key, "lease_timeout_ms")) {
            if (!(rc = cfg_uint(v, p, 100, 86400000, &u, err))) c->lease_timeout_ms = (uint32_t)u;
        } else if (!strcmp(key, "max_peers")) {
            if (!(rc = cfg_uint(v, p, 4, 1u << 20, &u, err))) c->max_peers = (uint32_t)u;
        } else if (!strcmp(key, "weights_shm")) {
            char s[16];
            if (!(rc = cfg_str(v, p, s, sizeof s, err))) {
                if (!strcmp(s, "auto")) c->weights_shm = 1;
                else if (!strcmp(s, "off")) c->weights_shm = 0;
                else rc = rlhf_error_set(err, RLHF_EINVAL, p, "\"%s\": expected \"auto\" or \"off\"", s);
            }
        } else if (!strcmp(key, "weights_shm_dir")) {
            rc = cfg_str(v, p, c->weights_shm_dir, sizeof c->weights_shm_dir, err);
            if (!rc && c->weights_shm_dir[0] != '/')
                rc = rlhf_error_set(err, RLHF_EINVAL, p, "\"%s\": must be an absolute path", c->weights_shm_dir);
        } else if (!strcmp(key, "authorized_keys")) {
            rc = parse_authorized_keys(c, v, p, err);
        } else if (!strcmp(key, "insecure")) {
            if (!json_is_boolean(v)) rc = rlhf_error_set(err, RLHF_EINVAL, p, "must be true or false");
            else c->insecure_remote = json_is_true(v);
        } else {
            rc = rlhf_error_set(err, RLHF_EINVAL, p,
                                "unknown key (endpoint, max_staleness, queue_capacity, max_generation_lag, initial_version, replay, "
                                "heartbeat_interval_ms, heartbeat_timeout_ms, stats_interval_ms, dataset, selector, seed, "
                                "vocab_size, lease_timeout_ms, max_peers, weights_shm, weights_shm_dir, authorized_keys, "
                                "insecure)");
        }
        if (rc) {
            broker_config_free(c);
            return rc;
        }
    }
    if (c->heartbeat_timeout_ms <= c->heartbeat_interval_ms) {
        broker_config_free(c);
        return rlhf_error_set(err, RLHF_EINVAL, path, "heartbeat_timeout_ms (%u) must exceed heartbeat_interval_ms (%u)",
                              c->heartbeat_timeout_ms, c->heartbeat_interval_ms);
    }
    return 0;
}

