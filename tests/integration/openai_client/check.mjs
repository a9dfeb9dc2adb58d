// tests/integration/openai_client/check.mjs -- drives a running dragond with the official `openai`
// npm client: model list, non-streamed and streamed completions (greedy: the stream's text must
// equal the non-streamed text; include_usage gives a final usage chunk), the error envelope for a
// bad parameter and an unknown model, and aborting a stream mid-way.
//
// Environment: DRAGOND_BASE_URL (e.g. http://127.0.0.1:8077/v1), DRAGOND_MODEL, optional
// DRAGOND_TOKEN, DRAGOND_PROMPT (default "To be"), DRAGOND_EXPECT (greedy text the daemon must
// produce for the prompt with max_tokens DRAGOND_MAX_TOKENS, default 24).
// Exit status 0 when every check passed, 1 otherwise (the failing check is printed).
import OpenAI from 'openai';

const base = process.env.DRAGOND_BASE_URL;
const model = process.env.DRAGOND_MODEL;
const prompt = process.env.DRAGOND_PROMPT ?? 'To be';
const maxTokens = Number(process.env.DRAGOND_MAX_TOKENS ?? 24);
if (!base || !model) {
  console.error('check.mjs: set DRAGOND_BASE_URL and DRAGOND_MODEL');
  process.exit(2);
}
const client = new OpenAI({ baseURL: base, apiKey: process.env.DRAGOND_TOKEN || 'none',
                            maxRetries: 0, timeout: 60000 });

let failures = 0;
function check(cond, what) {
  if (cond) { console.log(`ok   ${what}`); return; }
  console.log(`FAIL ${what}`);
  failures++;
}

async function main() {
  // models
  const models = await client.models.list();
  const ids = models.data.map((m) => m.id);
  check(ids.includes(model), `models.list() includes ${model} (got ${ids.join(', ')})`);

  // non-streamed, greedy
  const c = await client.completions.create({ model, prompt, max_tokens: maxTokens,
                                              temperature: 0, seed: 1 });
  check(c.object === 'text_completion', `non-streamed object is text_completion (${c.object})`);
  check(typeof c.id === 'string' && c.id.startsWith('cmpl-'), `id starts with cmpl- (${c.id})`);
  check(c.choices.length === 1 && typeof c.choices[0].text === 'string', 'one choice with text');
  const fr = c.choices[0].finish_reason;
  check(fr === 'stop' || fr === 'length', `finish_reason is stop|length (${fr})`);
  check(c.usage && c.usage.completion_tokens > 0 && c.usage.completion_tokens <= maxTokens &&
        c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens,
        `usage adds up (${JSON.stringify(c.usage)})`);
  if (process.env.DRAGOND_EXPECT !== undefined)
    check(c.choices[0].text === process.env.DRAGOND_EXPECT,
          `greedy text equals dragond generate (${JSON.stringify(c.choices[0].text)} vs ` +
          `${JSON.stringify(process.env.DRAGOND_EXPECT)})`);

  // streamed, greedy, with usage
  const stream = await client.completions.create({ model, prompt, max_tokens: maxTokens,
                                                   temperature: 0, seed: 1, stream: true,
                                                   stream_options: { include_usage: true } });
  let text = '', chunks = 0, finish = null, usage = null, afterUsage = 0, badShape = 0;
  for await (const chunk of stream) {
    chunks++;
    if (usage) afterUsage++;
    if (chunk.choices.length === 0) { usage = chunk.usage; continue; }
    if (chunk.object !== 'text_completion' || chunk.usage !== null) badShape++;
    text += chunk.choices[0].text;
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  }
  check(badShape === 0, `every chunk is a text_completion with usage null (${badShape} bad)`);
  check(chunks >= 2, `stream had several chunks (${chunks})`);
  check(text === c.choices[0].text, `streamed text equals non-streamed text (${JSON.stringify(text)})`);
  check(finish === fr, `stream finish_reason ${finish} equals ${fr}`);
  check(usage && usage.completion_tokens === c.usage.completion_tokens &&
        usage.prompt_tokens === c.usage.prompt_tokens, `usage chunk (${JSON.stringify(usage)})`);
  check(afterUsage === 0, 'usage chunk is the last one');

  // sampled with a seed is reproducible
  const s1 = await client.completions.create({ model, prompt, max_tokens: maxTokens,
                                               temperature: 0.9, top_p: 0.95, seed: 7 });
  const s2 = await client.completions.create({ model, prompt, max_tokens: maxTokens,
                                               temperature: 0.9, top_p: 0.95, seed: 7 });
  check(s1.choices[0].text === s2.choices[0].text, 'same seed, same sampled text');

  // errors come back as APIError with the envelope
  try {
    await client.completions.create({ model, prompt, max_tokens: -1 });
    check(false, 'max_tokens -1 is rejected');
  } catch (e) {
    check(e.status === 400 && e.param === 'max_tokens', `max_tokens -1 -> 400 param max_tokens (${e.status} ${e.param})`);
  }
  try {
    await client.completions.create({ model, prompt, n: 3 });
    check(false, 'n=3 is rejected');
  } catch (e) {
    check(e.status === 400 && e.param === 'n', `n=3 -> 400 param n (${e.status} ${e.param})`);
  }
  try {
    await client.completions.create({ model: 'no-such-model', prompt });
    check(false, 'unknown model is rejected');
  } catch (e) {
    check(e.status === 404, `unknown model -> 404 (${e.status})`);
  }

  // abort a long stream after two chunks: the client must not hang
  // (ignore_eos, a dragond extra sent as is by the client: only the abort can end it; the C test
  // then checks that the daemon counted the cancellation)
  const long = await client.completions.create({ model, prompt, max_tokens: 1000000,
                                                 temperature: 0.8, stream: true,
                                                 ignore_eos: true });
  let n = 0;
  for await (const chunk of long) {
    if (++n === 2) { long.controller.abort(); break; }
  }
  check(n === 2, 'aborted a stream after two chunks');
}

main().then(() => {
  console.log(failures ? `${failures} check(s) failed` : 'all openai client checks passed');
  process.exit(failures ? 1 : 0);
}).catch((e) => {
  console.log(`FAIL unexpected error: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
