#!/usr/bin/env python3
"""scripts/check_includes.py — the include rule and the symbol prefixes of the tree, checked by `make test`.

Layout is the data flow: each folder is on a floor, and a file includes only headers of its own
folder and of folders on LOWER floors. A folder never reaches into another folder's private
`*_int.h`. Every project include names its folder ("broker/wire.h", never "wire.h").

    python3 scripts/check_includes.py [ROOT]      check the tree (default: this checkout); exit 1 on a violation
    python3 scripts/check_includes.py --self-test plant violations in a scratch copy and check each is caught
    python3 scripts/check_includes.py --symbols BUILD   every external symbol of BUILD/obj/FOLDER/*.o carries
                                                        one of FOLDER's prefixes (PREFIXES below)

An exception goes in ALLOWED with the reason it is right; there are none today.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

# floor of each folder of the library and the binary; a sub-package is its own folder
FLOORS = {
    "common": 0,
    "template": 0.5,  # chat templates: below model/ and prompts/, which both render messages
    "tfevents": 0.5,  # TensorBoard event files: the updater writes its metrics there too
    "model": 1,
    "prompts": 1,
    "guided": 1.5,  # guided generation: needs model/'s tokenizer; serve/ and generator/ mask with it
    "rewards/sandbox": 2,
    "rewards/judge": 2,
    "rewards/rm": 2,
    "rewards": 3,
    "broker": 3,
    "serve": 4,
    "dashboard": 4,  # reads a run directory (the replay log through broker/), beside serve/
    "run": 4,
    "generator": 5,
    "updater": 5,
    "cli": 6,
}

# tests/ and bench/ may include every folder's public header; a private *_int.h only of the folder
# they test, named here by their own folder (tests/NAME) or file-name prefix (bench/bench_NAME).
TESTED = {
    "tests/common": "common",
    "tests/model_train": "model",
    "tests/model_infer": "model",
    "tests/guided": "guided",
    "bench/bench_guided": "guided",
    "tests/model_spec": "model",
    "tests/model": "model",
    "tests/prompts": "prompts",
    "tests/template": "template",
    "tests/tfevents": "tfevents",
    "tests/rewards": "rewards",
    "tests/sandbox": "rewards/sandbox",
    "tests/judge": "rewards/judge",
    "tests/rm": "rewards/rm",
    "tests/broker": "broker",
    "tests/serve": "serve",
    "tests/dashboard": "dashboard",
    "tests/run": "run",
    "tests/generator": "generator",
    "tests/updater": "updater",
    "tests/e2e": "cli",
    "tests/fuzz/fuzz_hf": "model",  # reaches config.json parsing through model/checkpoint_int.h
    "bench/bench_model": "model",
    "bench/bench_prompts": "prompts",
    "bench/bench_sandbox": "rewards/sandbox",
    "bench/bench_judge": "rewards/judge",
    "bench/bench_rm": "rewards/rm",
    "bench/bench_broker": "broker",
    "bench/bench_serve": "serve",
}

# The prefixes of each folder's external symbols (functions and globals; types are not linked).
# A folder has one name; a second prefix is a family the folder owns, named for what it is.
PREFIXES = {
    "common": ["rlhf_"],
    # the op pairs of model/ops.h keep llm.c's names: x_forward / x_backward, and their plain
    # reference kernels x_forward_ref / x_backward_ref (a regex: "re:...")
    "model": ["model_", "sampler_", "sample_", "tokenizer_", "adamw_", "safetensors_", "ops_",
              r"re:^[a-z0-9]+_(forward|backward)(_ref|_pair)?$"],
    "prompts": ["prompt_"],
    "guided": ["guided_"],
    "template": ["template_"],
    "tfevents": ["tfevents_"],
    "rewards": ["reward_"],
    "rewards/sandbox": ["sandbox_"],
    "rewards/judge": ["judge_"],
    "rewards/rm": ["rm_", "reward_model_"],
    "broker": ["broker_", "wire_", "replay_"],  # the broker, its wire protocol, its replay log
    "serve": ["serve_"],
    "dashboard": ["dashboard_"],
    "run": ["run_"],
    "generator": ["generator_"],
    "updater": ["updater_", "rl_"],  # rl_: the RL math of one update (updater/rl.c)
    "cli": ["re:^main$"],
}
# *_cli.c files (and cli/) define the subcommands cmd_NAME that cli/rlhf.c's table links.
CMD_PREFIX = "cmd_"

# (including file, included header): reason. Every entry must say why the rule does not fit.
ALLOWED = {}

# folders whose C files are not part of the layout: fixtures compiled on their own, plugin examples
OUTSIDE = ("examples/", "build", ".git/", "node_modules/")

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_of(path):
    """The longest FLOORS folder that contains path, or None."""
    best = None
    for f in FLOORS:
        if path.startswith(f + "/") and (best is None or len(f) > len(best)):
            best = f
    return best


def tested_by(path):
    best = None
    for prefix, f in TESTED.items():
        if path.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, f)
    return best[1] if best else None


def check(root):
    problems = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not (rel_dir + d + "/").startswith(OUTSIDE) and not d.startswith(".")
                       and not d.startswith("build")]
        for name in filenames:
            if not name.endswith((".c", ".h")):
                continue
            rel = rel_dir + name
            if rel.startswith(OUTSIDE):
                continue
            src = folder_of(rel)
            in_tests = rel.startswith(("tests/", "bench/"))
            if src is None and not in_tests:
                top = rel.split("/")[0]
                problems.append(f"{rel}: folder '{top}/' has no floor in scripts/check_includes.py (FLOORS)")
                continue
            with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            for m in INCLUDE.finditer(text):
                inc = m.group(1)
                line = text.count("\n", 0, m.start()) + 1
                where = f"{rel}:{line}"
                if (rel, inc) in ALLOWED:
                    continue
                if "/" not in inc:
                    problems.append(f'{where}: #include "{inc}" names no folder (write "{rel.rsplit("/", 1)[0]}/{inc}")')
                    continue
                if inc.startswith(("tests/", "bench/")):
                    if not in_tests:
                        problems.append(f'{where}: the library includes test code "{inc}"')
                    continue
                dst = folder_of(inc)
                if dst is None:
                    problems.append(f'{where}: #include "{inc}" is in no folder of the layout')
                    continue
                private = os.path.basename(inc).endswith("_int.h")
                if in_tests:
                    if private and tested_by(rel) != dst:
                        problems.append(f'{where}: includes {dst}/\'s private header "{inc}" '
                                        f"(tests and benchmarks may use only the private headers of what they test)")
                    continue
                if dst == src:
                    continue
                if private:
                    problems.append(f'{where}: {src}/ includes {dst}/\'s private header "{inc}"')
                elif FLOORS[dst] >= FLOORS[src]:
                    rel_word = "beside" if FLOORS[dst] == FLOORS[src] else "above"
                    problems.append(f'{where}: {src}/ (floor {FLOORS[src]}) includes "{inc}" from {dst}/ '
                                    f"(floor {FLOORS[dst]}), a folder {rel_word} it; move the shared thing down")
    return problems


def check_symbols(build, source_root):
    problems = []
    for folder, prefixes in PREFIXES.items():
        objdir = os.path.join(build, "obj", folder)
        if not os.path.isdir(objdir):  # a build restricted with MODULES=...
            continue
        for name in sorted(os.listdir(objdir)):
            # objects of sources that no longer exist (an old build directory) are not the tree's
            if not name.endswith(".o") or not os.path.exists(os.path.join(source_root, folder, name[:-2] + ".c")):
                continue
            out = subprocess.run(["nm", "-g", "--defined-only", os.path.join(objdir, name)], capture_output=True,
                                 text=True, check=True).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) != 3:
                    continue
                sym = parts[2]
                ok = any(re.search(p[3:], sym) if p.startswith("re:") else sym.startswith(p) for p in prefixes)
                if sym.startswith(CMD_PREFIX) and (name.endswith("_cli.o") or folder == "cli"):
                    ok = True
                if not ok:
                    want = ", ".join(prefixes) or CMD_PREFIX
                    problems.append(f"{folder}/{name[:-2]}.c: external symbol {sym} has none of {folder}/'s prefixes ({want})")
    return problems


def self_test():
    """Plants one violation of each kind in a scratch copy of the tree; each must be reported."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    plants = [
        ("model/model.c", '#include "updater/updater.h"\n', "includes \"updater/updater.h\" from updater/"),
        ("broker/broker.c", '#include "rewards/rewards.h"\n', "a folder beside it"),
        ("run/process.c", '#include "broker/broker_int.h"\n', "private header"),
        ("common/common.c", '#include "common.h"\n', "names no folder"),
        ("generator/generator.c", '#include "tests/test_paths.h"\n', "includes test code"),
    ]
    failures, checks = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for d in list(FLOORS) + ["tests", "bench"]:
            top = d.split("/")[0]
            if os.path.isdir(os.path.join(here, top)) and not os.path.exists(os.path.join(tmp, top)):
                shutil.copytree(os.path.join(here, top), os.path.join(tmp, top),
                                ignore=shutil.ignore_patterns("*.o", "*.d", "build*"))
        clean = check(tmp)
        if clean:
            print("self-test: the unplanted copy already fails:\n  " + "\n  ".join(clean))
            return 1
        for path, line, expect in plants:
            full = os.path.join(tmp, path)
            with open(full) as fh:
                orig = fh.read()
            with open(full, "w") as fh:
                fh.write(line + orig)
            got = check(tmp)
            with open(full, "w") as fh:
                fh.write(orig)
            hit = [p for p in got if p.startswith(path + ":1:") and expect in p]
            checks += 1
            status = "caught" if hit and len(got) == 1 else "MISSED"
            if status == "MISSED":
                failures += 1
            print(f"self-test: {line.strip()} planted in {path}: {status}" + (f" ({hit[0]})" if hit else f" {got}"))
    # symbols: a good and a bad object compiled into a scratch build directory
    with tempfile.TemporaryDirectory() as tmp:
        src_root, build = os.path.join(tmp, "src"), os.path.join(tmp, "build")
        cases = [("updater", "good", "int updater_fine(void) { return 0; }", None),
                 ("updater", "bad", "int policy_stray(void) { return 0; }", "policy_stray"),
                 ("model", "ops", "void matmul_forward(void) {} void matmul_forward_ref(void) {} void ops_x(void) {}", None),
                 ("model", "shadow", "void scratch_floats(void) {}", "scratch_floats")]
        for folder, name, code, _ in cases:
            os.makedirs(os.path.join(src_root, folder), exist_ok=True)
            os.makedirs(os.path.join(build, "obj", folder), exist_ok=True)
            c = os.path.join(src_root, folder, name + ".c")
            with open(c, "w") as fh:
                fh.write(code + "\n")
            subprocess.run(["cc", "-c", "-o", os.path.join(build, "obj", folder, name + ".o"), c], check=True)
        got = check_symbols(build, src_root)
        for folder, name, _, bad in cases:
            hit = [g for g in got if g.startswith(f"{folder}/{name}.c:")]
            ok = (bad is None and not hit) or (bad is not None and len(hit) == 1 and bad in hit[0])
            failures += 0 if ok else 1
            checks += 1
            print(f"self-test: symbols of {folder}/{name}.c: {'as expected' if ok else 'WRONG ' + str(hit)}")
    print(f"check_includes self-test: {checks - failures} passed, {failures} failed")
    return 1 if failures else 0


def main(argv):
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if len(argv) > 1 and argv[1] == "--self-test":
        return self_test()
    if len(argv) == 3 and argv[1] == "--symbols":
        problems = check_symbols(argv[2], os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for p in problems:
            print(p)
        print(f"check_symbols: {len(problems)} symbol(s) without their folder's prefix" if problems
              else "check_symbols: every external symbol carries its folder's prefix")
        return 1 if problems else 0
    if len(argv) > 2:
        print("usage: check_includes.py [ROOT] | --self-test", file=sys.stderr)
        return 2
    root = argv[1] if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problems = check(root)
    for p in problems:
        print(p)
    print(f"check_includes: {len(problems)} violation(s) of the include rule" if problems
          else "check_includes: every include follows the floors")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
