#!/usr/bin/env python3
"""tests/guided/oracle.py — the independent side of tests/guided.

  oracle.py gen SEED N_SCHEMAS OUT.jsonl   random JSON Schemas of guided/'s subset, then the regex set
  oracle.py check IN.jsonl                 every completion against its schema (Debian's python3-jsonschema,
                                           after json.loads) or its regex (re.fullmatch, ASCII classes)

Lines of gen: {"kind": "schema"|"regex", "spec": ...}. Lines of check's input add "text" (the completion)
and "finish". check prints "checked N: V valid, I invalid" and one line per invalid completion; exit 1
when any is invalid or N is 0.
"""
import json
import random
import re
import sys

import jsonschema

NAMES = ["id", "name", "age", "tags", "x", "a\"b", "ünï", "with space", "k", "v", "list", "nested", "flag", "n"]
STRINGS = ["red", "green", "blue", "a\"quote", "back\\slash", "ünïcode", "", "tab\there", "日本"]
# anchored: a random-weight model rarely ends free text (the search semantics of an unanchored pattern is
# checked on hand-written strings in test_guided.c)
PATTERNS = [r"^[a-z]{1,5}$", r"^\d{3}-\d{4}$", r"^(foo|bar)[0-9]?$", r"^[A-Z][a-z]{0,6}$", r"^ab+c$",
            r"^x+$", r"^(\d+\.)?\d+$", r"^[a-f0-9]{4,8}$", r"^\"q\"$", r"^a\\b$"]
REGEXES = [r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)", r"\d{1,3}(\.\d{1,3}){3}", r"(yes|no|maybe)",
           r"[A-Z][a-z]{0,8}( [A-Z][a-z]{0,8})?", r"-?\d+(\.\d+)?", r"(ab|cd)*e", r"[^\n]{0,10}x",
           r"\w{1,6}\s\w{1,6}", r"(?:0x)?[0-9a-fA-F]{2,6}", r"héllo|wörld", r"a.{3}b", r"[\[\]]+\\",
           r"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", r"\{\"k\":\d\}"]


def gen_schema(r, depth):
    kinds = ["string", "number", "integer", "boolean", "null", "enum", "const", "anyof", "typelist"]
    if depth < 3:
        kinds += ["object"] * 4 + ["array"] * 2
    k = r.choice(kinds)
    if k == "object":
        names = r.sample(NAMES, r.randint(1, 5))
        s = {"type": "object", "properties": {n: gen_schema(r, depth + 1) for n in names}}
        req = [n for n in names if r.random() < 0.6]
        if req:
            s["required"] = req
        ap = r.choice([None, False, False, True])
        if ap is not None:
            s["additionalProperties"] = ap
        if r.random() < 0.2:
            s["description"] = "an object"
        return s
    if k == "array":
        s = {"type": "array", "items": gen_schema(r, depth + 1)}
        if r.random() < 0.7:
            lo = r.randint(0, 2)
            s["minItems"] = lo
            s["maxItems"] = lo + r.randint(0, 3)
        return s
    if k == "string":
        s = {"type": "string"}
        u = r.random()
        if u < 0.55:  # free text is always bounded: a random-weight model rarely closes a string
            lo = r.randint(0, 3)
            s["minLength"] = lo
            s["maxLength"] = lo + r.randint(0, 12)
        elif u < 0.75:
            s["pattern"] = r.choice(PATTERNS)
        else:
            s["enum"] = r.sample(STRINGS, r.randint(1, 4))
        return s
    if k == "enum":
        return {"enum": r.sample([1, 2.5, -3, "x", None, True, False, "a\"b", [1, 2], {"k": "v"}], r.randint(1, 4))}
    if k == "const":
        return {"const": r.choice(["fixed", 42, None, {"a": [1]}])}
    if k == "anyof":
        return {"anyOf": [gen_schema(r, depth + 1), gen_schema(r, depth + 1)]}
    if k == "typelist":
        return {"type": r.sample(["string", "integer", "null", "boolean"], 2), "maxLength": 4}
    return {"type": k}


def gen(seed, n, out):
    r = random.Random(seed)
    with open(out, "w") as f:
        for _ in range(n):
            s = gen_schema(r, 0) if r.random() < 0.3 else gen_schema(r, 2 if r.random() < 0.3 else 0)
            if r.random() < 0.7:  # most top levels are objects, as structured outputs are
                s = {"type": "object", "properties": {"answer": s, "ok": {"type": "boolean"}},
                     "required": ["answer"], "additionalProperties": False}
            f.write(json.dumps({"kind": "schema", "spec": s}, ensure_ascii=False) + "\n")
        for rx in REGEXES:
            f.write(json.dumps({"kind": "regex", "spec": rx}, ensure_ascii=False) + "\n")
    return 0


def check(path):
    n = valid = 0
    bad = []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            n += 1
            text = rec["text"]
            ok, why = True, ""
            if rec["kind"] == "schema":
                try:
                    doc = json.loads(text)
                    jsonschema.Draft7Validator(rec["spec"]).validate(doc)
                except (ValueError, jsonschema.ValidationError) as e:
                    ok, why = False, str(e).splitlines()[0]
            else:
                if re.fullmatch(rec["spec"], text, re.ASCII) is None:
                    ok, why = False, "no re.fullmatch"
            if ok:
                valid += 1
            else:
                bad.append(f"INVALID ({why}): spec {json.dumps(rec['spec'])[:200]} text {text[:200]!r} "
                           f"finish {rec.get('finish')}")
    for b in bad:
        print(b)
    print(f"checked {n}: {valid} valid, {n - valid} invalid")
    return 0 if n > 0 and valid == n else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "gen":
        sys.exit(gen(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
