#!/usr/bin/env python3
"""Deterministic tokenizer test corpus: one JSON string per line (texts may hold newlines).

Usage: gen_corpus.py [N_LINES] > corpus.jsonl   (default 10000; the same N gives the same bytes)

Covers ASCII prose, code, digits, CJK, emoji with ZWJ sequences and modifiers, combining marks
(decomposed text that NFC changes), whitespace runs (tabs, newlines, trailing and multiple spaces),
strings that look like invalid byte sequences, and special-token strings inside text."""
import json
import random
import sys

WORDS = ("the of and to in is was for on that with as by at from it an be this are or have not "
         "which but all were when we there can been has more if will one would no what out so up "
         "said about into than them its time only new some could these two may first then do any "
         "like my now over such our man me even most made after also did many before must through "
         "Hello World Tokenizer OpenAI Llama Qwen don't isn't they're we've I'm you'll he'd "
         "CAPS MixedCase camelCase snake_case kebab-case e.g. i.e. etc. Mr. Dr. U.S.A.").split()
CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
    "if __name__ == '__main__':\n    main()",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }",
    "const x = {a: 1, 'b': [2, 3], \"c\": null};",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>",
    "λx. x + 1  // lambda",
    "    indented    code\t\twith\ttabs   ",
    "x+=1;y-=2;z*=3;w/=4;v%=5;u**=6;",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "$ ls -la | grep '^d' > /dev/null 2>&1 && echo ok",
]
CJK = "中文分词测试我们今天天气很好日本語のテキストです한국어텍스트입니다漢字仮名交じり文"
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🧑🏿‍💻", "✨", "🤖", "👩‍❤️‍💋‍👨", "1️⃣", "🫠"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "\u1100\u1161\u11a8", "A\u030a",
             "c\u0327", "i\u0307\u0301", "\u0915\u093c", "Z\u0335\u0321\u0358", "é", "ñ", "Å"]
SCRIPTS = ["Привет мир", "Γειά σου κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
           "Tiếng Việt có dấu", "Ελληνικά", "ǅungla ǈubav", "ﬁnance ﬂow", "Ⅻ Ⅳ ½ ² ³ ①", "ß ẞ İ ı"]
WS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "    \n", "\u00a0", "\u3000", "\u2003",
      " \t \n", "\n\n\n", "        "]
INVALIDISH = ["\\xff\\xfe", "%C3%28", "\ufffd", "\ufffd\ufffd", "\\u00e9", "Ã©", "â€™", "\x00", "\x01\x02\x7f",
              "\u200b", "\ufeff", "\u2028", "\U0001d400", "\U00010348", "\x80 as text", "\\x80"]
SPECIAL = ["<|endoftext|>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
           "<|eot_id|>", "<|start_header_id|>", "<think>", "</think>", "<|end_of_text|>", "<s", "<|im_start",
           "<0x41>", "<|reserved_special_token_5|>"]
DIGITS = ["0", "7", "42", "123", "1234", "12345", "3.14159", "1,000,000", "2024-01-01", "+1 (555) 010-9999",
          "0x1F", "1e-9", "٣٤٥", "１２３", "99.9%", "$1,234.56"]


def word(r):
    return r.choice(WORDS)


def prose(r):
    n = r.randint(3, 25)
    s = " ".join(word(r) for _ in range(n))
    if r.random() < 0.5:
        s = s[0].upper() + s[1:] + r.choice([".", "!", "?", "...", ",", ";", ":"])
    return s


def mixed(r):
    parts = []
    for _ in range(r.randint(1, 8)):
        k = r.random()
        if k < 0.25:
            parts.append(prose(r))
        elif k < 0.35:
            parts.append(r.choice(CODE))
        elif k < 0.45:
            a = r.randint(0, len(CJK) - 2)
            parts.append(CJK[a:a + r.randint(1, 12)])
        elif k < 0.52:
            parts.append("".join(r.choice(EMOJI) for _ in range(r.randint(1, 4))))
        elif k < 0.59:
            parts.append(word(r) + r.choice(COMBINING) + word(r))
        elif k < 0.66:
            parts.append(r.choice(SCRIPTS))
        elif k < 0.74:
            parts.append(r.choice(WS))
        elif k < 0.80:
            parts.append(r.choice(INVALIDISH))
        elif k < 0.88:
            parts.append(r.choice(SPECIAL))
        else:
            parts.append(r.choice(DIGITS))
        parts.append(r.choice(["", " ", " ", "", "\n", "  "]))
    return "".join(parts)


def line(r, i):
    kind = i % 10
    if kind == 0:
        return prose(r)
    if kind == 1:
        return r.choice(CODE) + r.choice(["", " ", "\n"])
    if kind == 2:
        return " ".join(r.choice(DIGITS) for _ in range(r.randint(1, 6))) + str(r.randint(0, 10 ** r.randint(1, 12)))
    if kind == 3:
        return r.choice(WS) + prose(r) + r.choice(WS) * r.randint(1, 3)
    if kind == 4:
        return r.choice(SPECIAL) + r.choice(["", " ", "\n"]) + prose(r) + r.choice(SPECIAL)
    if kind == 5:
        return "".join(r.choice(COMBINING) for _ in range(r.randint(1, 6))) + " " + prose(r)
    return mixed(r)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    r = random.Random(20261205)
    out = sys.stdout
    fixed = ["", " ", "a", "  leading", "trailing  ", "\n", "\t\t\t", "   \n\n   ", "<s>", "<|endoftext|>",
             "hello<|endoftext|>world", "<s>hi</s>", "x" * 300, "ab" * 200 + " " + "🤖" * 40]
    for i in range(n):
        s = fixed[i] if i < len(fixed) else line(r, i)
        out.write(json.dumps(s, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
