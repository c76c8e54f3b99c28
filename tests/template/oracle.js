// Chat-template oracle: Hugging Face's @huggingface/jinja renders each case.
// Usage: node oracle.js NPM_DIR CASES_JSON OUT_JSONL
// CASES_JSON: {"templates": {name: text}, "cases": [{t, messages, tools?, add_generation_prompt, bos_token?, eos_token?, vars?}]}
// Each output line: {"ok": rendered text} or {"err": message}.
const fs = require('fs');
const path = require('path');
const [npmDir, casesFile, outFile] = process.argv.slice(2);
const { Template } = require(path.resolve(npmDir, 'node_modules', '@huggingface', 'jinja'));

const spec = JSON.parse(fs.readFileSync(casesFile, 'utf8'));
const compiled = {};
for (const [name, text] of Object.entries(spec.templates)) compiled[name] = new Template(text);
const out = [];
for (const c of spec.cases) {
  const vars = Object.assign({}, c.vars || {}, { messages: c.messages, add_generation_prompt: c.add_generation_prompt });
  if (c.tools) vars.tools = c.tools;
  if (c.bos_token !== undefined) vars.bos_token = c.bos_token;
  if (c.eos_token !== undefined) vars.eos_token = c.eos_token;
  try {
    out.push(JSON.stringify({ ok: compiled[c.t].render(vars) }));
  } catch (e) {
    out.push(JSON.stringify({ err: String(e && e.message || e) }));
  }
}
fs.writeFileSync(outFile, out.join('\n') + '\n');
