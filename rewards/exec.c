/* rewards/exec.c — execution rewards in the sandbox:
 *   "exec":      run the completion's program (python3 by default) against the record's tests;
 *   "countdown": check an arithmetic expression over the record's "numbers" reaching "target" with a
 *                python checker that runs in the sandbox (the completion never runs as code there:
 *                the checker parses it with ast and evaluates only + - * / on integer literals).
 * A sandbox failure makes the item a reward ERROR (reason "sandbox_error: ..."), never a score of 0. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "rewards/rewards_int.h"
#include "rewards/sandbox/sandbox.h"

/* ---- shared: the source's sandbox pool ---- */
/* The source's sandbox pool from its "sandbox" settings; *wall_ms is the per-run wall limit they set. */
static int make_pool(const json_t *src, const char *where, sandbox_pool **pool, int64_t *wall_ms, rlhf_error *err) {
    sandbox_config cfg;
    sandbox_config_default(&cfg);
    char w[300];
    snprintf(w, sizeof w, "%s.%s", where, "sandbox");
    int rc = sandbox_config_parse(&cfg, json_object_get(src, "sandbox"), w, err);
    if (rc) return rc;
    *wall_ms = cfg.wall_ms;
    rc = sandbox_pool_create(pool, &cfg, err);
    if (rc && err && !strstr(err->where, where)) {
        char msg[768];
        snprintf(msg, sizeof msg, "%.200s: %.500s", err->where, err->msg);
        rlhf_error_set(err, rc, where, "%s", msg);
    }
    return rc;
}

static int64_t wall_for(const rlhf_reward_item *it, int64_t cap_ms) {
    if (it->deadline <= 0) return cap_ms;
    double left = (it->deadline - rlhf_now()) * 1000.0;
    if (left < 1) return 0;
    return left < (double)cap_ms ? (int64_t)left : cap_ms;
}

/* ---- exec ---- */
enum { EXTRACT_CODE_BLOCK, EXTRACT_FULL };

typedef struct exec_ctx {
    sandbox_pool *pool;
    int64_t wall_ms;
    int extract;
    int partial_credit;
} exec_ctx;

/* The program: the last fenced ``` block (any language tag) when there is one, else everything.
 * Returns a malloc'd string. */
static char *extract_program(const char *text, int mode) {
    if (mode == EXTRACT_CODE_BLOCK) {
        const char *best = NULL, *best_end = NULL;
        const char *p = text;
        for (;;) {
            const char *open = strstr(p, "```");
            if (!open) break;
            const char *body = strchr(open + 3, '\n');
            if (!body) break;
            body++;
            const char *close = strstr(body, "```");
            if (!close) break;
            best = body;
            best_end = close;
            p = close + 3;
        }
        if (best) return strndup(best, (size_t)(best_end - best));
    }
    return strdup(text);
}

/* Compares outputs ignoring trailing whitespace on each line and trailing blank lines. */
static int outputs_equal(const char *a, size_t na, const char *b, size_t nb) {
    size_t i = 0, j = 0;
    for (;;) {
        /* skip trailing blanks of the current line in both */
        size_t ea = i, eb = j;
        while (ea < na && a[ea] != '\n') ea++;
        while (eb < nb && b[eb] != '\n') eb++;
        size_t la = ea, lb = eb;
        while (la > i && isspace((unsigned char)a[la - 1])) la--;
        while (lb > j && isspace((unsigned char)b[lb - 1])) lb--;
        if (la - i != lb - j || memcmp(a + i, b + j, la - i)) {
            /* allow the rest of either side to be blank */
            int blank_a = 1, blank_b = 1;
            for (size_t k = i; k < na; k++) blank_a &= isspace((unsigned char)a[k]) != 0;
            for (size_t k = j; k < nb; k++) blank_b &= isspace((unsigned char)b[k]) != 0;
            return blank_a && blank_b;
        }
        i = ea < na ? ea + 1 : na;
        j = eb < nb ? eb + 1 : nb;
        if (i >= na && j >= nb) return 1;
        if (i >= na || j >= nb) {
            int blank = 1;
            for (size_t k = i; k < na; k++) blank &= isspace((unsigned char)a[k]) != 0;
            for (size_t k = j; k < nb; k++) blank &= isspace((unsigned char)b[k]) != 0;
            return blank;
        }
    }
}

typedef struct exec_case {
    size_t item;
    char *program;        /* owned */
    const char *stdin_s;  /* borrowed from the record, or stdin_owned */
    const char *expect;   /* expected stdout, or NULL: pass = exit 0 */
    char *stdin_owned;    /* test_code: the nonce line, then the record's stdin */
    char marker[64];      /* test_code: the line the harness prints after the last test ("" otherwise) */
} exec_case;

/* test_code runs under this harness (docs/SANDBOX.md, "exec with test_code"). The program and the tests
 * come as hex, so no quoting can break out of the literals; the nonce comes as stdin's first line and
 * is read before any of the program's code runs. Program and tests share one fresh __main__ module
 * (so unittest.main() finds the tests' classes); fd 0 is then /dev/null (the memfd that held it is
 * gone) and the rest of stdin is sys.stdin. The program runs, the builtins module is restored to what
 * it was before (a program patching len or isinstance cannot steer the tests), the tests run, and only
 * then the marker with the nonce is written to fd 1 and the process leaves with os._exit(0) (no atexit
 * hook of the program runs). Leaving early (os._exit, sys.exit, a hook) leaves no marker; a marker the
 * program prints itself lacks the nonce. A SystemExit in the tests counts only with status 0 and when
 * no frame of the program's code raised it (unittest.main() ends that way; a program function raising
 * SystemExit(0) does not). */
static const char test_code_harness_py[] =
    "import os, sys\n"
    "def _rlhf_harness(program, tests):\n"
    "    data = b''\n"
    "    while True:\n"
    "        chunk = os.read(0, 1 << 16)\n"
    "        if not chunk:\n"
    "            break\n"
    "        data += chunk\n"
    "    nonce, _, rest = data.partition(b'\\n')\n"
    "    del data\n"
    "    null = os.open('/dev/null', os.O_RDONLY)\n"
    "    os.dup2(null, 0)\n"
    "    os.close(null)\n"
    "    import builtins, io, traceback\n"
    "    sys.stdin = io.TextIOWrapper(io.BytesIO(rest), encoding='utf-8')\n"
    "    del rest\n"
    "    write, leave, saved = os.write, os._exit, dict(builtins.__dict__)\n"
    "    import types\n"
    "    main = types.ModuleType('__main__')\n"
    "    main.__builtins__ = builtins\n"
    "    sys.modules['__main__'] = main\n"
    "    g = main.__dict__\n"
    "    def fail(what):\n"
    "        try:\n"
    "            traceback.print_exc()\n"
    "            sys.stderr.flush()\n"
    "        except BaseException:\n"
    "            pass\n"
    "        write(2, ('rlhf harness: ' + what + '\\n').encode())\n"
    "        leave(1)\n"
    "    try:\n"
    "        exec(compile(program, '<solution>', 'exec'), g)\n"
    "    except BaseException:\n"
    "        fail('the program stopped before the tests ran')\n"
    "    builtins.__dict__.clear()\n"
    "    builtins.__dict__.update(saved)\n"
    "    try:\n"
    "        exec(compile(tests, '<tests>', 'exec'), g)\n"
    "    except SystemExit as e:\n"
    "        tb, own = e.__traceback__, False\n"
    "        while tb is not None:\n"
    "            own = own or tb.tb_frame.f_code.co_filename == '<solution>'\n"
    "            tb = tb.tb_next\n"
    "        if e.code not in (None, 0) or own:\n"
    "            fail('the tests ended with SystemExit(%r)%s' % (e.code, ' from the program' if own else ''))\n"
    "    except BaseException:\n"
    "        fail('a test failed')\n"
    "    for f in (sys.stdout, sys.__stdout__):\n"
    "        try:\n"
    "            f.flush()\n"
    "        except BaseException:\n"
    "            pass\n"
    "    write(1, b'\\n' + b'rlhf-tests-passed ' + nonce + b'\\n')\n"
    "    leave(0)\n";

/* Hex of s (NUL-terminated), malloc'd. */
static char *hex_of(const char *s) {
    size_t n = strlen(s);
    char *h = malloc(2 * n + 1);
    if (!h) return NULL;
    for (size_t i = 0; i < n; i++) snprintf(h + 2 * i, 3, "%02x", (unsigned char)s[i]);
    h[2 * n] = 0;
    return h;
}

/* The harness program for `prog` + `tests`, and its stdin (a fresh nonce line, then `stdin_s`); the
 * marker the harness prints when every test ran goes to c->marker. 0, or -1 (out of memory or no
 * randomness). */
static int build_test_harness(exec_case *c, const char *prog, const char *tests, const char *stdin_s) {
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) return -1;
    char nonce[33];
    for (int i = 0; i < 16; i++) snprintf(nonce + 2 * i, 3, "%02x", rnd[i]);
    snprintf(c->marker, sizeof c->marker, "rlhf-tests-passed %s\n", nonce);
    char *hp = hex_of(prog), *ht = hex_of(tests);
    size_t l = sizeof test_code_harness_py + (hp ? strlen(hp) : 0) + (ht ? strlen(ht) : 0) + 128;
    c->program = hp && ht ? malloc(l) : NULL;
    if (c->program)
        snprintf(c->program, l, "%s_rlhf_harness(bytes.fromhex('%s'), bytes.fromhex('%s'))\n", test_code_harness_py,
                 hp, ht);
    free(hp);
    free(ht);
    size_t sl = 34 + (stdin_s ? strlen(stdin_s) : 0);
    c->stdin_owned = malloc(sl);
    if (c->stdin_owned) snprintf(c->stdin_owned, sl, "%s\n%s", nonce, stdin_s ? stdin_s : "");
    c->stdin_s = c->stdin_owned;
    return c->program && c->stdin_owned ? 0 : -1;
}

/* A test_code run passes only when its stdout ends with the harness's marker (then removed). */
static void check_test_marker(exec_case *c, sandbox_result *r) {
    size_t ml = strlen(c->marker);
    if (r->verdict != SANDBOX_PASS) return;
    if (r->out && r->out_len >= ml && !memcmp(r->out + r->out_len - ml, c->marker, ml)) {
        r->out_len -= ml;
        r->out[r->out_len] = 0;
        if (r->out_len && r->out[r->out_len - 1] == '\n') r->out[--r->out_len] = 0; /* the harness's own newline */
        return;
    }
    r->verdict = SANDBOX_FAIL;
    snprintf(r->reason, sizeof r->reason, "exited 0 but the tests did not run to their end");
}

static const char *json_str2(const json_t *o, const char *a, const char *b) {
    const char *s = json_string_value(json_object_get(o, a));
    return s ? s : json_string_value(json_object_get(o, b));
}

static int exec_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores, rlhf_reward_status *status) {
    exec_ctx *c = vctx;
    json_t **recs = calloc(n ? n : 1, sizeof *recs);
    size_t cap = 0, nc = 0;
    exec_case *cases = NULL;
    int rc = 0;
    if (!recs) {
        rlhf_reward_status_set(&status[0], RLHF_REWARD_ERROR, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        recs[i] = reward_item_record(&items[i], &status[i]);
        if (!recs[i]) continue;
        json_t *tests = json_object_get(recs[i], "tests");
        const char *test_code = json_string_value(json_object_get(recs[i], "test_code"));
        const char *expect = json_str2(recs[i], "expected_stdout", "output");
        size_t ntests = json_is_array(tests) ? json_array_size(tests) : 0;
        if (!ntests && !test_code && !expect) {
            rlhf_reward_status_set(&status[i], RLHF_REWARD_SKIP, "record has no \"tests\", \"test_code\" or \"expected_stdout\"");
            continue;
        }
        char *prog = extract_program(items[i].completion, c->extract);
        if (!prog) rc = -1;
        size_t want = ntests ? ntests : 1;
        if (nc + want > cap) {
            size_t ncap = (nc + want) * 2;
            exec_case *nb = realloc(cases, ncap * sizeof *nb);
            if (!nb) {
                free(prog);
                rc = -1;
                break;
            }
            cases = nb;
            cap = ncap;
        }
        if (ntests) {
            for (size_t t = 0; t < ntests; t++) {
                json_t *tc = json_array_get(tests, t);
                cases[nc++] = (exec_case){.item = i, .program = t == 0 ? prog : strdup(prog),
                                          .stdin_s = json_str2(tc, "stdin", "input"), .expect = json_str2(tc, "stdout", "output")};
            }
        } else if (test_code) {
            exec_case *c = &cases[nc++];
            *c = (exec_case){.item = i};
            if (build_test_harness(c, prog, test_code, json_str2(recs[i], "stdin", "input"))) rc = -1;
            free(prog);
        } else {
            cases[nc++] = (exec_case){.item = i, .program = prog, .stdin_s = json_str2(recs[i], "stdin", "input"),
                                      .expect = expect};
        }
    }
    sandbox_request *req = calloc(nc ? nc : 1, sizeof *req);
    sandbox_result *res = calloc(nc ? nc : 1, sizeof *res);
    if (rc || !req || !res) {
        rlhf_reward_status_set(&status[0], RLHF_REWARD_ERROR, "out of memory");
        rc = -1;
    } else {
        for (size_t k = 0; k < nc; k++) {
            req[k].program = cases[k].program ? cases[k].program : "";
            req[k].stdin_data = cases[k].stdin_s;
            req[k].stdin_len = cases[k].stdin_s ? strlen(cases[k].stdin_s) : 0;
            req[k].wall_ms = wall_for(&items[cases[k].item], c->wall_ms);
        }
        /* requests whose item is already past its deadline do not run */
        sandbox_request *live = malloc((nc ? nc : 1) * sizeof *live);
        size_t *map = malloc((nc ? nc : 1) * sizeof *map);
        sandbox_result *lres = calloc(nc ? nc : 1, sizeof *lres);
        size_t nl = 0;
        if (!live || !map || !lres) rc = -1;
        for (size_t k = 0; k < nc && !rc; k++) {
            if (req[k].wall_ms <= 0) {
                res[k].verdict = SANDBOX_TIMEOUT;
                snprintf(res[k].reason, sizeof res[k].reason, "deadline passed before the run");
                continue;
            }
            map[nl] = k;
            live[nl++] = req[k];
        }
        if (!rc) sandbox_pool_run_batch(c->pool, live, nl, lres);
        for (size_t k = 0; k < nl && !rc; k++) res[map[k]] = lres[k];
        free(live);
        free(map);
        free(lres);
        if (rc) rlhf_reward_status_set(&status[0], RLHF_REWARD_ERROR, "out of memory");
    }
    if (!rc) {
        /* per item: passes / runs; first non-pass verdict as the note */
        size_t k = 0;
        while (k < nc) {
            size_t i = cases[k].item, passed = 0, total = 0;
            int sandbox_err = 0;
            const char *note = NULL;
            char why[RLHF_REWARD_REASON_MAX] = "";
            for (; k < nc && cases[k].item == i; k++) {
                sandbox_result *r = &res[k];
                if (cases[k].marker[0]) check_test_marker(&cases[k], r);
                if (r->verdict == SANDBOX_PASS && cases[k].expect &&
                    !outputs_equal(r->out ? r->out : "", r->out_len, cases[k].expect, strlen(cases[k].expect)))
                    r->verdict = SANDBOX_FAIL;
                total++;
                if (r->verdict == SANDBOX_PASS) passed++;
                else if (r->verdict == SANDBOX_SANDBOX_ERROR && !sandbox_err) {
                    sandbox_err = 1;
                    snprintf(why, sizeof why, "sandbox_error: %s", r->reason);
                } else if (!note) note = sandbox_verdict_name(r->verdict);
            }
            if (sandbox_err) {
                rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "%s", why);
                continue;
            }
            scores[i] = passed == total ? 1.0 : c->partial_credit ? (double)passed / (double)total : 0.0;
            rlhf_reward_status_set(&status[i], RLHF_REWARD_OK, "%s %zu/%zu", note ? note : "pass", passed, total);
        }
    }
    for (size_t k = 0; k < nc; k++) {
        free(cases[k].program);
        free(cases[k].stdin_owned);
        sandbox_result_free(&res[k]);
    }
    for (size_t i = 0; i < n; i++) json_decref(recs[i]);
    free(cases);
    free(req);
    free(res);
    free(recs);
    return rc ? -1 : 0;
}

static void exec_destroy(void *vctx) {
    exec_ctx *c = vctx;
    if (!c) return;
    sandbox_pool_destroy(&c->pool);
    free(c);
}

static const rlhf_reward_plugin_v1 exec_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "exec", NULL, exec_score, exec_destroy};

int reward_source_exec_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"sandbox", "extract", "partial_credit", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    exec_ctx *c = calloc(1, sizeof *c);
    if (!c) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    const char *ex = "code_block";
    if ((rc = reward_get_string(src, "extract", where, 0, &ex, err)) ||
        (rc = reward_get_bool(src, "partial_credit", where, 0, &c->partial_credit, err))) {
        free(c);
        return rc;
    }
    if (!strcmp(ex, "code_block")) c->extract = EXTRACT_CODE_BLOCK;
    else if (!strcmp(ex, "full")) c->extract = EXTRACT_FULL;
    else {
        free(c);
        char w[300];
        snprintf(w, sizeof w, "%s.%s", where, "extract");
        return rlhf_error_set(err, RLHF_EINVAL, w, "expected \"code_block\" or \"full\", got \"%s\"", ex);
    }
    if ((rc = make_pool(src, where, &c->pool, &c->wall_ms, err))) {
        free(c);
        return rc;
    }
    impl->plugin = &exec_plugin;
    impl->ctx = c;
    return 0;
}

/* ---- countdown ----
 * The checker reads one JSON object per line {"completion", "numbers", "target"} and writes one
 * verdict per line: correct | wrong_value (well-formed, valid numbers, wrong value) |
 * invalid_numbers | malformed | no_expression. Expression extraction (docs/REWARD_PLUGINS.md):
 * the last <answer>...</answer> if present, else the first non-empty line; of its "="-separated
 * parts the first holding a digit and an operator (else the first holding a digit), after the
 * last ':' (so "Answer: (3+5)*3 = 24" gives "(3+5)*3"). */
static const char countdown_checker_py[] =
    "import ast, json, re, sys\n"
    "from collections import Counter\n"
    "from fractions import Fraction\n"
    "\n"
    "MAX_CHARS = int(sys.argv[1]) if len(sys.argv) > 1 else 200\n"
    "EXACT = len(sys.argv) > 2 and sys.argv[2] == \"exact\"\n"
    "\n"
    "def extract(text):\n"
    "    m = re.findall(r\"<answer>(.*?)</answer>\", text, re.S)\n"
    "    if m:\n"
    "        cand = m[-1]\n"
    "    else:\n"
    "        lines = [l for l in text.splitlines() if l.strip()]\n"
    "        if not lines:\n"
    "            return None\n"
    "        cand = lines[0]\n"
    "    cand = cand.replace(\"\\u00d7\", \"*\").replace(\"\\u00f7\", \"/\").strip()\n"
    "    parts = cand.split(\"=\")\n"
    "    pick = None\n"
    "    for p in parts:\n"
    "        p2 = p.split(\":\")[-1]\n"
    "        if re.search(r\"\\d\", p2) and re.search(r\"[-+*/]\", p2):\n"
    "            pick = p2\n"
    "            break\n"
    "    if pick is None:\n"
    "        for p in parts:\n"
    "            p2 = p.split(\":\")[-1]\n"
    "            if re.search(r\"\\d\", p2):\n"
    "                pick = p2\n"
    "                break\n"
    "    if pick is None:\n"
    "        return None\n"
    "    return pick.strip().rstrip(\".\").strip()\n"
    "\n"
    "OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,\n"
    "       ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}\n"
    "\n"
    "def evaluate(node, used):\n"
    "    if isinstance(node, ast.Expression):\n"
    "        return evaluate(node.body, used)\n"
    "    if isinstance(node, ast.BinOp) and type(node.op) in OPS:\n"
    "        return OPS[type(node.op)](evaluate(node.left, used), evaluate(node.right, used))\n"
    "    if isinstance(node, ast.Constant) and type(node.value) is int:\n"
    "        used.append(node.value)\n"
    "        return Fraction(node.value)\n"
    "    raise ValueError(\"only integers, + - * / and parentheses are allowed\")\n"
    "\n"
    "def check(item):\n"
    "    expr = extract(item.get(\"completion\", \"\"))\n"
    "    if not expr:\n"
    "        return {\"verdict\": \"no_expression\"}\n"
    "    out = {\"expr\": expr}\n"
    "    if len(expr) > MAX_CHARS or not re.fullmatch(r\"[0-9+\\-*/() \\t]+\", expr):\n"
    "        out[\"verdict\"] = \"malformed\"\n"
    "        return out\n"
    "    try:\n"
    "        tree = ast.parse(expr, mode=\"eval\")\n"
    "        used = []\n"
    "        value = evaluate(tree, used)\n"
    "    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):\n"
    "        out[\"verdict\"] = \"malformed\"\n"
    "        return out\n"
    "    have, want = Counter(used), Counter(item[\"numbers\"])\n"
    "    ok = have == want if EXACT else all(have[k] <= want[k] for k in have)\n"
    "    out[\"value\"] = str(value)\n"
    "    if not ok:\n"
    "        out[\"verdict\"] = \"invalid_numbers\"\n"
    "    elif value == item[\"target\"]:\n"
    "        out[\"verdict\"] = \"correct\"\n"
    "    else:\n"
    "        out[\"verdict\"] = \"wrong_value\"\n"
    "    return out\n"
    "\n"
    "for line in sys.stdin:\n"
    "    try:\n"
    "        res = check(json.loads(line))\n"
    "    except Exception as e:\n"
    "        res = {\"verdict\": \"checker_error\", \"error\": type(e).__name__}\n"
    "    sys.stdout.write(json.dumps(res) + \"\\n\")\n";

typedef struct countdown_ctx {
    sandbox_pool *pool;
    int64_t wall_ms;
    double format_score;
    int exact;
    int64_t max_chars;
    int64_t items_per_run; /* items one checker process takes before a batch is split over slots */
} countdown_ctx;

static int countdown_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores,
                           rlhf_reward_status *status) {
    countdown_ctx *c = vctx;
    int nslots = sandbox_pool_size(c->pool);
    size_t *idx = malloc((n ? n : 1) * sizeof *idx); /* items that go to the checker */
    char **lines = calloc(n ? n : 1, sizeof *lines);
    size_t m = 0;
    if (!idx || !lines) {
        free(idx);
        free(lines);
        rlhf_reward_status_set(&status[0], RLHF_REWARD_ERROR, "out of memory");
        return -1;
    }
    int64_t wall = c->wall_ms;
    for (size_t i = 0; i < n; i++) {
        json_t *rec = reward_item_record(&items[i], &status[i]);
        if (!rec) continue;
        json_t *nums = json_object_get(rec, "numbers"), *target = json_object_get(rec, "target");
        int ok = json_is_array(nums) && json_is_integer(target);
        for (size_t k = 0; ok && k < json_array_size(nums); k++) ok = json_is_integer(json_array_get(nums, k));
        if (!ok) {
            rlhf_reward_status_set(&status[i], RLHF_REWARD_SKIP, "record needs integer list \"numbers\" and integer \"target\"");
            json_decref(rec);
            continue;
        }
        json_t *o = json_object();
        json_object_set_new(o, "completion", reward_json_string_lossy(items[i].completion));
        json_object_set(o, "numbers", nums);
        json_object_set(o, "target", target);
        lines[m] = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        json_decref(rec);
        if (!lines[m]) {
            rlhf_reward_status_set(&status[i], RLHF_REWARD_ERROR, "completion is not valid UTF-8");
            continue;
        }
        int64_t w = wall_for(&items[i], c->wall_ms);
        if (w < wall) wall = w;
        idx[m++] = i;
    }
    /* Split the checked items over the pool's slots only when each chunk gets items_per_run of them:
     * checking one expression takes microseconds and starting the interpreter ~15 ms, so splitting a
     * small batch buys no latency and doubles the CPU, which an asynchronous run needs for training
     * and generation. */
    size_t want_chunks = (m + (size_t)c->items_per_run - 1) / (size_t)c->items_per_run;
    size_t nchunks = want_chunks < (size_t)nslots ? want_chunks : (size_t)nslots;
    if (nchunks > m) nchunks = m;
    sandbox_request req[256];
    sandbox_result res[256];
    char *inputs[256];
    size_t lo[257];
    char argbuf[32];
    snprintf(argbuf, sizeof argbuf, "%lld", (long long)c->max_chars);
    const char *args[] = {"-I", "-S", "{file}", argbuf, c->exact ? "exact" : "at_most", NULL};
    if (nchunks > 256) nchunks = 256;
    for (size_t k = 0; k <= nchunks; k++) lo[k] = nchunks ? m * k / nchunks : 0;
    int oom = 0;
    for (size_t k = 0; k < nchunks; k++) {
        size_t len = 0;
        for (size_t j = lo[k]; j < lo[k + 1]; j++) len += strlen(lines[j]) + 1;
        inputs[k] = malloc(len + 1);
        if (!inputs[k]) {
            oom = 1;
            len = 0;
        } else {
            size_t off = 0;
            for (size_t j = lo[k]; j < lo[k + 1]; j++) {
                size_t l = strlen(lines[j]);
                memcpy(inputs[k] + off, lines[j], l);
                inputs[k][off + l] = '\n';
                off += l + 1;
            }
            inputs[k][off] = 0;
        }
        req[k] = (sandbox_request){.program = countdown_checker_py, .file_name = "countdown_check.py", .args = args,
                                   .stdin_data = inputs[k] ? inputs[k] : "", .stdin_len = len, .wall_ms = wall};
    }
    if (wall <= 0) {
        for (size_t j = 0; j < m; j++) rlhf_reward_status_set(&status[idx[j]], RLHF_REWARD_ERROR, "timeout: deadline passed");
        nchunks = 0;
    } else if (!oom) {
        sandbox_pool_run_batch(c->pool, req, nchunks, res);
    }
    for (size_t k = 0; k < nchunks; k++) {
        if (oom) {
            for (size_t j = lo[k]; j < lo[k + 1]; j++)
                rlhf_reward_status_set(&status[idx[j]], RLHF_REWARD_ERROR, "out of memory");
            free(inputs[k]);
            continue;
        }
        sandbox_result *r = &res[k];
        const char *p = r->out ? r->out : "";
        for (size_t j = lo[k]; j < lo[k + 1]; j++) {
            rlhf_reward_status *st = &status[idx[j]];
            const char *nl = r->verdict == SANDBOX_PASS ? strchr(p, '\n') : NULL;
            json_t *v = nl ? json_loadb(p, (size_t)(nl - p), 0, NULL) : NULL;
            const char *verdict = json_string_value(json_object_get(v, "verdict"));
            if (!verdict) {
                if (r->verdict == SANDBOX_SANDBOX_ERROR) rlhf_reward_status_set(st, RLHF_REWARD_ERROR, "sandbox_error: %s", r->reason);
                else rlhf_reward_status_set(st, RLHF_REWARD_ERROR, "countdown checker %s: %s", sandbox_verdict_name(r->verdict),
                                            r->reason[0] ? r->reason : "bad output");
            } else if (!strcmp(verdict, "correct")) {
                scores[idx[j]] = 1.0;
                rlhf_reward_status_set(st, RLHF_REWARD_OK, "correct");
            } else if (!strcmp(verdict, "wrong_value")) {
                scores[idx[j]] = c->format_score;
                rlhf_reward_status_set(st, RLHF_REWARD_OK, "wrong_value");
            } else if (!strcmp(verdict, "checker_error")) {
                rlhf_reward_status_set(st, RLHF_REWARD_ERROR, "countdown checker failed on this item");
            } else {
                scores[idx[j]] = 0.0;
                rlhf_reward_status_set(st, RLHF_REWARD_OK, "%s", verdict);
            }
            json_decref(v);
            if (nl) p = nl + 1;
        }
        sandbox_result_free(r);
        free(inputs[k]);
    }
    for (size_t j = 0; j < m; j++) free(lines[j]);
    free(lines);
    free(idx);
    return 0;
}

static void countdown_destroy(void *vctx) {
    countdown_ctx *c = vctx;
    if (!c) return;
    sandbox_pool_destroy(&c->pool);
    free(c);
}

static const rlhf_reward_plugin_v1 countdown_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "countdown", NULL, countdown_score, countdown_destroy};

int reward_source_countdown_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"sandbox", "format_score", "use_all_numbers", "max_expression_chars",
                                       "items_per_run", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    countdown_ctx *c = calloc(1, sizeof *c);
    if (!c) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    c->format_score = 0.1;
    c->max_chars = 200;
    c->items_per_run = 256;
    if ((rc = reward_get_number(src, "format_score", where, 0, &c->format_score, err)) ||
        (rc = reward_get_int(src, "items_per_run", where, 0, &c->items_per_run, err)) ||
        (rc = reward_get_bool(src, "use_all_numbers", where, 0, &c->exact, err)) ||
        (rc = reward_get_int(src, "max_expression_chars", where, 0, &c->max_chars, err))) {
        free(c);
        return rc;
    }
    char w[300];
    if (!(c->format_score >= 0 && c->format_score <= 1)) {
        free(c);
        snprintf(w, sizeof w, "%s.%s", where, "format_score");
        return rlhf_error_set(err, RLHF_EINVAL, w, "must be in [0, 1]");
    }
    if (c->items_per_run < 1 || c->items_per_run > 1000000) {
        free(c);
        snprintf(w, sizeof w, "%s.%s", where, "items_per_run");
        return rlhf_error_set(err, RLHF_EINVAL, w, "must be in 1..1000000");
    }
    if (c->max_chars < 1 || c->max_chars > 10000) {
        free(c);
        snprintf(w, sizeof w, "%s.%s", where, "max_expression_chars");
        return rlhf_error_set(err, RLHF_EINVAL, w, "must be in 1..10000");
    }
    if ((rc = make_pool(src, where, &c->pool, &c->wall_ms, err))) {
        free(c);
        return rc;
    }
    impl->plugin = &countdown_plugin;
    impl->ctx = c;
    return 0;
}
