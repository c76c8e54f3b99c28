#!/usr/bin/env python3
"""bench/bench_prompts_noisy_grader.py — a second, unreliable reward source for the prompt-selection
ablation (bench/bench_prompts_ablation.sh), speaking the `process` reward protocol
(docs/REWARD_PLUGINS.md).

It stands in for a sloppy grader (a cheap judge, a hurried human) on the countdown task: it checks
the expression itself (digits, + - * ( ) only, each given number at most once, value == target) and
then gets the verdict wrong with probability `flip` (config, default 0.15). On a share `confused`
of the prompts (config, default 0: chosen by a hash of seed and prompt) it is instead wrong with
probability `confused_flip` (default 0.5, i.e. it guesses): the prompt-dependent disagreement of
graders on subjective items. Flips are a deterministic function of (seed, prompt, completion), so the
same completion always gets the same grade, as a real grader's opinion would. Where it flips, it
disagrees with the exact `countdown` source: that is the disagreement the cohesion selector is meant
to notice. With `target_from_prompt` it takes the target from the prompt text instead of the record:
where the dataset's answer key is wrong (the ablation's `CORRUPT` share), it disagrees with the
exact checker, which trusts the key.
"""
import hashlib
import json
import re
import sys

EXPR = re.compile(r"[0-9+\-*() ]+")


TARGET_IN_PROMPT = re.compile(r"target (-?[0-9]+)")


def correct(completion, record, target):
    expr = completion.split("\n", 1)[0].strip()
    if not expr or not EXPR.fullmatch(expr) or "**" in expr:
        return False
    pool = list(record.get("numbers", []))
    for tok in re.findall(r"\d+", expr):
        v = int(tok)
        if v in pool:
            pool.remove(v)
        else:
            return False
    try:
        return eval(expr, {"__builtins__": {}}, {}) == target  # digits/operators only
    except Exception:
        return False


def main():
    flip, seed, confused, confused_flip, from_prompt = 0.15, 0, 0.0, 0.5, False
    for line in sys.stdin:
        msg = json.loads(line)
        if "init" in msg:
            cfg = msg["init"] or {}
            flip = float(cfg.get("flip", flip))
            seed = int(cfg.get("seed", seed))
            confused = float(cfg.get("confused", confused))
            confused_flip = float(cfg.get("confused_flip", confused_flip))
            from_prompt = bool(cfg.get("target_from_prompt", from_prompt))
            print(json.dumps({"ok": True}), flush=True)
            continue
        results = []
        for item in msg.get("items", []):
            rec = item.get("record") or {}
            if isinstance(rec, str):
                rec = json.loads(rec)
            target = rec.get("target")
            if from_prompt:  # the grader reads the question itself, not the dataset's answer key
                mt = TARGET_IN_PROMPT.search(item.get("prompt", ""))
                target = int(mt.group(1)) if mt else None
            ok = correct(item.get("completion", ""), rec, target)
            hp = hashlib.sha256(f"{seed}\0confused\0{item.get('prompt', '')}".encode()).digest()
            p_flip = confused_flip if int.from_bytes(hp[:8], "little") / 2.0**64 < confused else flip
            h = hashlib.sha256(f"{seed}\0{item.get('prompt', '')}\0{item.get('completion', '')}".encode()).digest()
            if int.from_bytes(h[:8], "little") / 2.0**64 < p_flip:
                ok = not ok
            results.append({"score": 1.0 if ok else 0.0})
        print(json.dumps({"id": msg.get("id"), "results": results}), flush=True)


if __name__ == "__main__":
    main()
