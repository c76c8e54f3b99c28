// Tokenizer oracle: Hugging Face's `tokenizers` (Rust, node binding) on a corpus.
// Usage: node oracle.js NPM_DIR TOKENIZER_JSON CORPUS_JSONL OUT_JSONL
// Each output line: {"s": ids with add_special_tokens true, "n": ids with false,
//                    "d": decode(n, skip_special_tokens true), "nfc": text is already NFC}.
const fs = require('fs');
const path = require('path');
const [npmDir, tokFile, corpus, outFile] = process.argv.slice(2);
const { Tokenizer } = require(path.resolve(npmDir, 'node_modules', 'tokenizers'));

async function main() {
  const tok = Tokenizer.fromFile(tokFile);
  const texts = fs.readFileSync(corpus, 'utf8').split('\n').filter((l) => l.length).map((l) => JSON.parse(l));
  const out = [];
  const B = 256;
  for (let i = 0; i < texts.length; i += B) {
    const chunk = texts.slice(i, i + B);
    const withSp = await tok.encodeBatch(chunk, { addSpecialTokens: true });
    const noSp = await tok.encodeBatch(chunk, { addSpecialTokens: false });
    const ids = noSp.map((e) => e.getIds());
    const dec = await tok.decodeBatch(ids, true);
    for (let k = 0; k < chunk.length; k++)
      out.push(JSON.stringify({ s: withSp[k].getIds(), n: ids[k], d: dec[k], nfc: chunk[k] === chunk[k].normalize('NFC') }));
  }
  fs.writeFileSync(outFile, out.join('\n') + '\n');
}
main().catch((e) => { console.error('oracle: ' + (e && e.stack || e)); process.exit(1); });
