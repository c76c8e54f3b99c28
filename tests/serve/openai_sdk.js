// Drives `rlhf serve` with OpenAI's own node SDK (the `openai` package in .cache/npm), the way a user's
// program would, and prints what it got as one JSON object (tests/serve/test_serve.c checks it).
// Usage: node openai_sdk.js NPM_DIR BASE_URL MODEL_ID API_KEY
const path = require('path');
const [npmDir, baseURL, model, apiKey] = process.argv.slice(2);
const { OpenAI } = require(path.resolve(npmDir, 'node_modules', 'openai'));

function errInfo(e) {
  return { status: e.status ?? null, code: e.code ?? null, param: e.param ?? null, type: e.type ?? null,
           message: String(e.message || e), kind: e.constructor && e.constructor.name };
}
async function attempt(f) {
  try { return { ok: await f() }; } catch (e) { return { err: errInfo(e) }; }
}

async function main() {
  const client = new OpenAI({ apiKey, baseURL: `${baseURL}/v1`, maxRetries: 0, timeout: 60000 });
  const out = {};
  out.list = (await client.models.list()).data.map((m) => m.id);
  out.retrieve = (await client.models.retrieve(model)).id;
  out.retrieve_missing = await attempt(() => client.models.retrieve('no-such-model'));
  const q = [{ role: 'user', content: 'Q: p\nA: 12' }];
  // explicit nulls everywhere the API allows them
  const c = await client.chat.completions.create({
    model, messages: q, max_tokens: 12, temperature: 0, top_p: null, seed: null, n: null, stop: null,
    response_format: null, max_completion_tokens: null, stream: null, presence_penalty: null, user: 'sdk-test',
  });
  out.chat = { content: c.choices[0].message.content, role: c.choices[0].message.role,
               finish: c.choices[0].finish_reason, fp: c.system_fingerprint, usage: c.usage, object: c.object };
  // a history with an assistant turn whose content is null (a tool-call turn)
  out.null_content = await attempt(async () => (await client.chat.completions.create({
    model, max_tokens: 4, temperature: 0,
    messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: null }, { role: 'user', content: 'Q: p\nA: 12' }],
  })).choices[0].finish_reason);
  // streaming, with and without the usage chunk
  for (const withUsage of [true, false]) {
    const stream = await client.chat.completions.create({
      model, messages: q, max_tokens: 12, temperature: 0, stream: true,
      ...(withUsage ? { stream_options: { include_usage: true } } : {}),
    });
    let text = '', usageChunks = 0, usage = null, lastChoices = -1, chunks = 0, fps = new Set();
    for await (const ch of stream) {
      chunks++;
      fps.add(ch.system_fingerprint);
      if (ch.usage) { usageChunks++; usage = ch.usage; lastChoices = ch.choices.length; }
      for (const choice of ch.choices) if (choice.delta && choice.delta.content) text += choice.delta.content;
    }
    out[withUsage ? 'stream_usage' : 'stream_plain'] = { text, usageChunks, usage, usageChunkChoices: lastChoices, chunks,
                                                          fps: [...fps] };
  }
  // log-probs in OpenAI's shape
  const lp = await client.chat.completions.create({ model, messages: q, max_tokens: 6, temperature: 0, logprobs: true,
                                                   top_logprobs: 2 });
  out.logprobs = lp.choices[0].logprobs.content.map((t) => ({
    token: t.token, logprob: t.logprob, bytes: t.bytes,
    top: Array.isArray(t.top_logprobs) && t.top_logprobs.length === 2 && t.top_logprobs[0].token === t.token &&
         Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6 && t.top_logprobs[1].logprob <= t.top_logprobs[0].logprob,
  }));
  out.logprobs_text = lp.choices[0].message.content;
  // n > 1: the samples of one prompt, decoded together
  const nc = await client.chat.completions.create({ model, messages: q, max_tokens: 12, temperature: 1, seed: 5, n: 3 });
  out.n3 = { indexes: nc.choices.map((ch) => ch.index), texts: nc.choices.map((ch) => ch.message.content),
             usage: nc.usage };
  out.n_stream = await attempt(() => client.chat.completions.create({ model, messages: q, n: 2, stream: true }));
  // the legacy completions route
  const lc = await client.completions.create({ model, prompt: '<|user|>\nQ: p\nA: 12\n<|assistant|>\n', max_tokens: 12,
                                                temperature: 0 });
  out.completion = lc.choices[0].text;
  // structured output (guided decoding): the SDK's response_format json_schema
  const schema = { type: 'object', properties: { score: { enum: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] },
                                                 ok: { type: 'boolean' } },
                   required: ['score', 'ok'], additionalProperties: false };
  const js = await client.chat.completions.create({ model, messages: q, max_tokens: 40, temperature: 1, seed: 3,
    response_format: { type: 'json_schema', json_schema: { name: 'grade', schema, strict: true } } });
  out.json_schema = { content: js.choices[0].message.content, finish: js.choices[0].finish_reason };
  out.bad_schema = await attempt(() => client.chat.completions.create({ model, messages: q,
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'integer', minimum: 0 } } } }));
  // refusals, as the SDK raises them
  out.bad_temperature = await attempt(() => client.chat.completions.create({ model, messages: q, temperature: 2.5 }));
  out.bad_max_tokens = await attempt(() => client.chat.completions.create({ model, messages: q, max_tokens: 0 }));
  out.bad_model = await attempt(() => client.chat.completions.create({ model: 'gpt-4o', messages: q }));
  const wrong = new OpenAI({ apiKey: 'sk-wrong-key-0123456789', baseURL: `${baseURL}/v1`, maxRetries: 0 });
  out.bad_key = await attempt(() => wrong.chat.completions.create({ model, messages: q }));
  console.log(JSON.stringify(out));
}
main().catch((e) => { console.error('openai_sdk.js: ' + (e && e.stack || e)); process.exit(1); });
