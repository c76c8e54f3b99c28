// Peer of bench_tokenizer.c: Hugging Face's `tokenizers` (node binding) encode throughput.
//   node bench_tokenizer.js NPM_DIR TOKENIZER_JSON CORPUS_JSONL [REPEATS]
// Run with RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false (bench_tokenizer.sh does, under taskset).
// Line by line: await encode(text) per text; batch: one encodeBatch over every text. One warm-up pass.
const fs = require('fs');
const path = require('path');
const [npmDir, tokFile, corpus, rep] = process.argv.slice(2);
const { Tokenizer } = require(path.resolve(npmDir, 'node_modules', 'tokenizers'));
const repeats = parseInt(rep || '5', 10);

function median(v) {
  const s = [...v].sort((a, b) => a - b), n = s.length;
  return n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

async function main() {
  const tok = Tokenizer.fromFile(tokFile);
  const texts = fs.readFileSync(corpus, 'utf8').split('\n').filter((l) => l.length).map((l) => JSON.parse(l));
  const mb = texts.reduce((a, t) => a + Buffer.byteLength(t, 'utf8'), 0) / 1e6;
  const lines = [], batch = [];
  for (let r = -1; r < repeats; r++) {
    let t0 = process.hrtime.bigint();
    for (const t of texts) await tok.encode(t, null, { addSpecialTokens: false });
    let t1 = process.hrtime.bigint();
    await tok.encodeBatch(texts, { addSpecialTokens: false });
    let t2 = process.hrtime.bigint();
    if (r < 0) continue;
    lines.push(mb / (Number(t1 - t0) / 1e9));
    batch.push(mb / (Number(t2 - t1) / 1e9));
    console.log(`tokenizers repeat ${r}: line by line ${lines[r].toFixed(2)} MB/s, batch ${batch[r].toFixed(2)} MB/s`);
  }
  console.log(`tokenizers median: line by line ${median(lines).toFixed(2)} MB/s, batch ${median(batch).toFixed(2)} MB/s`);
}
main().catch((e) => { console.error(e); process.exit(1); });
