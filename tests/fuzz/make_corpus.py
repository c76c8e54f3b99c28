#!/usr/bin/env python3
"""tests/fuzz/make_corpus.py — writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

Binary seeds (wire messages of every type, safetensors files, Hugging Face directories, replay-log
segments) are real encodings written by BUILD/bin/fuzz_seeds (tests/fuzz/fuzz_seeds.c); text seeds
(configs, overrides, datasets, judge replies, tokenizer texts and tokenizer.json files) are written here,
the configs from examples/configs. Run after `make` (for fuzz_seeds):

    python3 tests/fuzz/make_corpus.py [BUILD]
"""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests/fuzz/corpus")
SEP = b"\n#--#\n"


def put(target, name, data, flag=None):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    if flag is not None:
        data = bytes([flag]) + data
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def join(*parts):
    return SEP.join(p.encode() if isinstance(p, str) else p for p in parts)


def run_config():
    for name in ("countdown.json", "arith.json", "hf-model.json", "countdown-bpe.json"):
        with open(os.path.join(ROOT, "examples/configs", name), "rb") as f:
            text = f.read()
        put("fuzz_run_config", name, text)
    with open(os.path.join(ROOT, "examples/configs/countdown.json"), "rb") as f:
        base = f.read()
    put("fuzz_run_config", "overrides", join(base, "rl.k=4", "generators.count=2", "task.stop=[\"\\n\", \"END\"]",
                                             "rewards=[{\"type\":\"length\",\"name\":\"len\"}]"))
    put("fuzz_run_config", "override_string", join(base, "name=other run", "broker.endpoint=tcp://127.0.0.1:5555"))
    put("fuzz_run_config", "minimal", "{}")


def prompts():
    lines = [
        {"id": "p0", "prompt": "Add 2 and 3.", "answer": "5"},
        {"id": "p1", "prompt": "q1", "split": "heldout", "metadata": {"level": 2}},
        {"id": "p2", "prompt": "\u00e9t\u00e9 \u20ac", "tests": ["assert f(1) == 2"], "split": "train"},
    ]
    text = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n"
    put("fuzz_prompts", "three", text, 0)
    put("fuzz_prompts", "three_train", text, 1)
    put("fuzz_prompts", "three_heldout_fraction", text, 2 | 8 | 0x30)
    put("fuzz_prompts", "bad_lines_skipped", text + "not json\n{\"id\": \"p0\", \"prompt\": \"dup\"}\n\n{\"prompt\": 3}\n", 4)
    with open(os.path.join(ROOT, "examples/configs/tiny-prompts.jsonl"), "rb") as f:
        put("fuzz_prompts", "tiny_prompts", f.read()[:4000], 0)


def judge():
    put("fuzz_judge", "schema", '{"score": 7}')
    put("fuzz_judge", "fenced", '```json\n{"score": 0.5, "why": "ok"}\n```')
    put("fuzz_judge", "pattern", "The answer is right.\n**Score**: 9/10\n")
    put("fuzz_judge", "pattern_eq", "score = -1.5e2 and later score: 3")
    put("fuzz_judge", "render", join("Score: 4", "Prompt: {prompt}\nAnswer: {completion}\nReference: {answer}",
                                     '{"answer": "42", "tests": [1, 2]}'))
    put("fuzz_judge", "render_missing", join("nothing", "{prompt} {missing_field} {{literal}}", '{"a": 1}'))


def judge_http():
    # flag: status (0-3: 200, 4: 400, 5: 404, 6: 429, 7: 503) | 8: response_format none
    ok = lambda content: json.dumps({"id": "c1", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                       "content": content}}]})
    put("fuzz_judge_http", "schema", ok('{"score": 7}'), 0)
    put("fuzz_judge_http", "pattern", ok("Fine.\nScore: 4"), 8)
    put("fuzz_judge_http", "out_of_range", ok("score = 11"), 8)
    put("fuzz_judge_http", "no_score", ok("no number here"), 0)
    put("fuzz_judge_http", "bad_shape", '{"choices": []}', 0)
    put("fuzz_judge_http", "not_json", "<html>busy</html>", 0)
    put("fuzz_judge_http", "schema_refused", '{"error": {"message": "response_format unsupported"}}', 4)
    put("fuzz_judge_http", "rate_limited", '{"error": {"message": "slow down"}}', 6)
    put("fuzz_judge_http", "server_error", "oops", 7)


def remote_rm():
    # flag: status (0/1: 200, 2: 422, 3: 503) | (items - 1) << 2
    put("fuzz_remote_rm", "one", '{"rewards": [0.5]}', 0)
    put("fuzz_remote_rm", "three_mixed", '{"rewards": [[1.0], -2, 3e5]}', 2 << 2)
    put("fuzz_remote_rm", "wrong_count", '{"rewards": [1, 2]}', 0)
    put("fuzz_remote_rm", "not_finite_shape", '{"rewards": ["1", null, [1, 2]]}', 2 << 2)
    put("fuzz_remote_rm", "http_422", '{"error": {"message": "bad"}}', 2)
    put("fuzz_remote_rm", "http_503", "busy", 3)
    put("fuzz_remote_rm", "eight", '{"rewards": [1, 2, 3, 4, 5, 6, 7, 8], "extra": {}}', 7 << 2)


def process():
    # flag: items - 1; the batch reply, then the init reply of the next start
    put("fuzz_process", "one", '{"id": @ID@, "results": [{"score": 0.5}]}', 0)
    put("fuzz_process", "mixed", '{"id": @ID@, "results": [{"score": 1, "note": "pass 3/3"}, {"error": "boom"}, '
                                 '{"skip": "no answer"}, {"score": NaN}], "metrics": {"cpu": 0.25, "x": "y"}}', 3)
    put("fuzz_process", "infinity", '{"id": @ID@, "results": [{"score": -Infinity}, {"score": "NaN"}]}', 1)
    put("fuzz_process", "wrong_id", '{"id": 0, "results": [{"score": 1}]}', 0)
    put("fuzz_process", "init_range", join('{"id": @ID@, "results": [{"score": 2}, {"score": -1}]}',
                                           '{"ok": true, "range": [0, 1]}'), 1)
    put("fuzz_process", "init_error", join('garbage', '{"error": "no model", "code": -3}'), 0)


def serve():
    # flag: route (0 completions, 1 chat, 2 get_reward, 3 unknown)
    put("fuzz_serve", "completion", '{"model": "m", "prompt": "ab", "max_tokens": 4, "temperature": 0}', 0)
    put("fuzz_serve", "completion_sampling", '{"prompt": "x", "max_tokens": 6, "temperature": 0.7, "top_p": 0.9, '
                                             '"top_k": 5, "min_p": 0.05, "seed": 3, "stop": ["a", "bc"], '
                                             '"logprobs": 0}', 0)
    put("fuzz_serve", "completion_stream", '{"prompt": "hello", "max_tokens": 3, "stream": true, "stop": "z"}', 0)
    put("fuzz_serve", "chat", '{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", '
                              '"content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 3, '
                              '"logprobs": true, "top_logprobs": 0, "n": 1}', 1)
    put("fuzz_serve", "chat_stream", '{"messages": [{"role": "user", "content": "2+2?"}], "stream": true, '
                                     '"response_format": {"type": "text"}}', 1)
    put("fuzz_serve", "chat_schema", '{"messages": [], "response_format": {"type": "json_schema"}}', 1)
    put("fuzz_serve", "get_reward", '{"query": ["a", "b"]}', 2)
    put("fuzz_serve", "unknown", '{}', 3)


def tokenizer():
    for i, t in enumerate(["Hello, world!", "  indented\n\tcode()  ", "\u00e9t\u00e9 \u20ac 123456 \U0001F600",
                           "it's they're I'll", "<|begin_of_text|>hi<|eot_id|>", "\xff\xfe bytes"]):
        put("fuzz_tokenizer", f"text{i}", t.encode("utf-8", "surrogateescape") if i < 5 else b"\xff\xfe bytes \xc3", 0)
    # tokenizer.json files: the fixture cut down further (a few tokens, merges and one special token)
    with open(os.path.join(ROOT, "tests/fuzz/fixtures/llama3-small/tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    vocab = j["model"]["vocab"]
    keep = {t: i for t, i in vocab.items() if len(t) == 1 or i < 300}
    ids = {t: n for n, t in enumerate(sorted(keep, key=lambda t: keep[t]))}
    merges = []
    for m in j["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in ids and b in ids and a + b in ids:
            merges.append(m)
    small = dict(j)
    small["model"] = dict(j["model"], vocab=ids, merges=merges)
    small["added_tokens"] = [dict(j["added_tokens"][0], id=len(ids))]
    put("fuzz_tokenizer", "json_small", json.dumps(small, ensure_ascii=False), 1)
    # the same as a SentencePiece-style (Llama-2 layout) byte-fallback model
    sp = dict(small)
    sp["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                            {"type": "Replace", "pattern": {"String": " "},
                                                             "content": "\u2581"}]}
    sp["pre_tokenizer"] = None
    sp["decoder"] = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"},
                                                       "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
                                                      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    sp["model"] = dict(small["model"], byte_fallback=True)
    put("fuzz_tokenizer", "json_sentencepiece", json.dumps(sp, ensure_ascii=False), 1)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build")
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    subprocess.run([os.path.join(build, "bin/fuzz_seeds"), CORPUS], check=True)
    run_config()
    prompts()
    judge()
    judge_http()
    remote_rm()
    process()
    serve()
    tokenizer()
    total = 0
    for d, _, files in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print(f"{CORPUS}: {total} bytes")


if __name__ == "__main__":
    main()
