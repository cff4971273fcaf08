/**
 * The webhook and openai agents against real HTTP servers on 127.0.0.1: what they send, how
 * answers become results, and how failures are retried or fail the task (checked on disk).
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { MAX_ANSWER_DEPTH } from '../services/runner/agents/http.js'
import { CODING_SYSTEM_PROMPT, THINKING_SYSTEM_PROMPT } from '../services/runner/agents/openai.js'
import { completion, createTasks, fakeAgent, ok, recordCalls, storedTasks, waitFor } from './agents-fakes.js'
import { build, get, heldBytes, post, tempDir } from './helper.js'
import { freePort } from './server-process.js'

/** Small bounds so failures and retries take milliseconds. */
const FAST = { timeout_ms: 2000, backoff_ms: 20 }

t.test('routing: Coding tasks go to the Coding agent, the others to default', async (t) => {
  const coder = await fakeAgent(t, (req) => ok(`coded: ${req.json.task.instruction}`))
  const other = await fakeAgent(t, (req) => ok(`thought: ${req.json.task.instruction}`))
  const app = await build(t, {
    agents: { Coding: { kind: 'webhook', url: `${coder.base}/run` }, default: { kind: 'webhook', url: `${other.base}/run` } }
  })
  await createTasks(app, 'routing', [
    { instruction: 'write a parser', task_type: 'Coding' },
    { instruction: 'weigh the options', task_type: 'Reasoning' },
    { instruction: 'fix the build', task_type: 'Coding' },
    { instruction: 'say hello', task_type: 'General' }
  ])
  const res = await post(app, '/execute-all', { session_id: 'routing' })
  t.equal(res.statusCode, 200)
  t.same(res.json().results.map((r: { result: string }) => r.result),
    ['coded: write a parser', 'thought: weigh the options', 'coded: fix the build', 'thought: say hello'])
  t.same(coder.requests.map((r) => r.json.task.task_type), ['Coding', 'Coding'], 'the Coding agent saw only Coding tasks')
  t.same(other.requests.map((r) => r.json.task.task_type), ['Reasoning', 'General'], 'default saw the rest')
})

t.test('webhook: a session deleted and made again within the second (same task ids) sends a new Idempotency-Key', async (t) => {
  const agent = await fakeAgent(t, (req) => ok(`answer to: ${(req.json as { task: { instruction: string } }).task.instruction}`))
  // A clock inside one second, 1 ms a call: the task ids (unix seconds) repeat.
  let ms = Date.parse('2026-03-01T10:00:00.000Z')
  const app = await build(t, { clock: () => new Date(ms++), agents: { default: { kind: 'webhook', url: `${agent.base}/run` } } })
  const [first] = await createTasks(app, 'daily', [{ instruction: 'transfer $10 to alice' }])
  t.equal((await post(app, '/execute', { session_id: 'daily' })).statusCode, 200)
  t.equal((await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/daily' })).statusCode, 204)
  const [second] = await createTasks(app, 'daily', [{ instruction: 'summarise the logs' }])
  t.equal(second, first, 'the same task id')
  t.match((await post(app, '/execute', { session_id: 'daily' })).json(), { result: 'answer to: summarise the logs' })
  const keys = agent.requests.map((r) => r.headers['idempotency-key'])
  t.equal(keys.length, 2)
  t.not(keys[0], keys[1], 'a receiver that dedupes on the key does not answer the new task with the old one\'s result')
})

t.test('webhook: a failed task put back by POST /retry is run again under a new Idempotency-Key, which a restart keeps', async (t) => {
  const dir = await tempDir(t)
  // A receiver that keeps each answer by key, as idempotent APIs do: the first run fails for good.
  const kept = new Map<string, ReturnType<typeof ok> | { status: number, body: string }>()
  let broken = true
  const agent = await fakeAgent(t, (req) => {
    const key = String(req.headers['idempotency-key'])
    const answer = kept.get(key) ?? (broken ? { status: 422, body: 'bad input upstream' } : ok('done at last'))
    kept.set(key, answer)
    return answer
  })
  const agents = { default: { kind: 'webhook' as const, url: agent.base, max_attempts: 1 } }
  let app = await build(t, { dir, agents })
  const [id] = await createTasks(app, 'again', [{ instruction: 'sync the ledger' }])
  t.match((await post(app, '/execute', { session_id: 'again' })).json(), { task_id: id, status: 'Failed' })
  broken = false
  t.equal((await post(app, '/retry', { session_id: 'again' })).statusCode, 200)
  const created = Date.parse((await storedTasks(dir, 'again'))[0]?.created_at as string)
  t.match(await storedTasks(dir, 'again'), [{ status: 'Pending', retries: 1 }], 'the retry is counted on disk')
  // A restart between the retry and the run changes nothing: the count is stored.
  await app.close()
  app = await build(t, { dir, agents })
  t.match((await post(app, '/execute', { session_id: 'again' })).json(), { task_id: id, status: 'Completed', result: 'done at last' }, 'run again, not answered with the kept failure')
  t.same(agent.requests.map((r) => r.headers['idempotency-key']), [`again:${id}:${created}`, `again:${id}:${created}:1`])
  t.equal((await get(app, '/list?session_id=again')).json().tasks[0].retries, 1, 'the count is served')
})

t.test('webhook success: exact request body, Idempotency-Key, headers from headers_env; result and confidence stored', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => ok('the answer', 0.75))
  const app = await build(t, {
    dir,
    agents: { default: { kind: 'webhook', url: `${agent.base}/hooks/run?team=blue`, headers_env: 'AGENT_HEADERS' } },
    env: { AGENT_HEADERS: JSON.stringify({ Authorization: 'Bearer hook-secret', 'x-team': 'blue', Accept: 'application/json; v=2' }) }
  })
  const [id] = await createTasks(app, 'hook-ok', [{ instruction: 'Summarise the report', task_type: 'Analysis' }])
  const res = await post(app, '/execute', { session_id: 'hook-ok' })
  t.equal(res.statusCode, 200)
  t.match(res.json(), { task_id: id, status: 'Completed', result: 'the answer', confidence: 0.75, error: null })

  t.equal(agent.requests.length, 1, 'one call')
  const req = agent.requests[0]!
  t.equal(req.method, 'POST')
  t.equal(req.path, '/hooks/run?team=blue', 'the configured url, query included')
  t.same(req.json, { session_id: 'hook-ok', task: { id, instruction: 'Summarise the report', task_type: 'Analysis', attempt: 1 } }, 'exact body')
  const created = (await storedTasks(dir, 'hook-ok'))[0]?.created_at as string
  t.equal(req.headers['idempotency-key'], `hook-ok:${id}:${Date.parse(created)}`, 'the session, the task and its creation time in ms')
  t.equal(req.headers.authorization, 'Bearer hook-secret', 'header from headers_env')
  t.equal(req.headers['x-team'], 'blue', 'header from headers_env')
  t.equal(req.headers.accept, 'application/json; v=2', 'a header of ours given in any case is replaced, not joined')
  t.match(req.headers['content-type'], /^application\/json/)

  const [stored] = await storedTasks(dir, 'hook-ok')
  t.match(stored, { status: 'Completed', result: 'the answer', confidence: 0.75, attempts: 1, error: null })
  t.type(stored!.started_at, 'string')
  t.type(stored!.completed_at, 'string')
})

t.test('webhook: confidence is optional (null), and must be 0..1 when given', async (t) => {
  const answers = [ok('no confidence'), ok('null confidence', null), { body: { result: 'too sure', confidence: 1.5 } }]
  const agent = await fakeAgent(t, (_req, i) => answers[i]!)
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, ...FAST } } })
  await createTasks(app, 'conf', [{ instruction: 'a' }, { instruction: 'b' }, { instruction: 'c' }])
  const res = await post(app, '/execute-all', { session_id: 'conf' })
  const [a, b, c] = res.json().results
  t.match(a, { status: 'Completed', result: 'no confidence', confidence: null })
  t.match(b, { status: 'Completed', result: 'null confidence', confidence: null })
  t.match(c, { status: 'Failed', result: null })
  t.match(c.error, /confidence/, 'the error says what was wrong')
  t.equal(agent.requests.length, 3, 'a bad answer is not retried')
})

t.test('openai: model, system prompt Coding vs other, Authorization from api_key_env, confidence from logprobs', async (t) => {
  const dir = await tempDir(t)
  const llm = await fakeAgent(t, (req) => req.json.messages[1].content === 'plain'
    ? completion('no logprobs here')
    : completion(`done: ${req.json.messages[1].content}`, [-0.1, -0.3, -0.2]))
  const app = await build(t, {
    dir,
    agents: { default: { kind: 'openai', base_url: `${llm.base}/v1/`, model: 'qwen-test', api_key_env: 'LLM_KEY', temperature: 0.2, max_tokens: 64 } },
    env: { LLM_KEY: 'sk-test-123' }
  })
  await createTasks(app, 'llm', [
    { instruction: 'implement quicksort', task_type: 'Coding' },
    { instruction: 'why is the sky blue', task_type: 'Analysis' },
    { instruction: 'plain', task_type: 'General' }
  ])
  const res = await post(app, '/execute-all', { session_id: 'llm' })
  t.equal(res.statusCode, 200)
  const [coding, analysis, plain] = res.json().results
  t.match(coding, { status: 'Completed', result: 'done: implement quicksort' })
  t.ok(Math.abs(coding.confidence - Math.exp(-0.2)) < 1e-9, `confidence = exp(mean logprob) (${coding.confidence})`)
  t.match(analysis, { status: 'Completed', result: 'done: why is the sky blue' })
  t.match(plain, { status: 'Completed', result: 'no logprobs here', confidence: null }, 'no logprobs: confidence null')

  t.equal(llm.requests.length, 3)
  for (const req of llm.requests) {
    t.equal(req.method, 'POST')
    t.equal(req.path, '/v1/chat/completions', 'base_url + /chat/completions, trailing slash tolerated')
    t.equal(req.headers.authorization, 'Bearer sk-test-123', 'Authorization from api_key_env')
    t.match(req.json, { model: 'qwen-test', temperature: 0.2, max_tokens: 64, logprobs: true })
  }
  const [c, a] = llm.requests.map((req) => req.json.messages)
  t.same(c, [{ role: 'system', content: CODING_SYSTEM_PROMPT }, { role: 'user', content: 'implement quicksort' }], 'Coding: the coding prompt')
  t.same(a, [{ role: 'system', content: THINKING_SYSTEM_PROMPT }, { role: 'user', content: 'why is the sky blue' }], 'others: the thinking prompt')
  t.not(CODING_SYSTEM_PROMPT, THINKING_SYSTEM_PROMPT, 'the two default prompts differ')

  const stored = await storedTasks(dir, 'llm')
  t.ok(Math.abs(stored[0]!.confidence! - Math.exp(-0.2)) < 1e-9, 'confidence on disk')
  t.equal(stored[2]!.confidence, null)
})

t.test('openai: system_prompt overrides both defaults; no api_key_env sends no Authorization; logprobs:false is not asked', async (t) => {
  const llm = await fakeAgent(t, () => completion('fine', [-0.5]))
  const app = await build(t, {
    agents: { default: { kind: 'openai', base_url: `${llm.base}/v1`, model: 'm', system_prompt: 'You are terse.', logprobs: false } }
  })
  await createTasks(app, 'llm2', [{ instruction: 'code it', task_type: 'Coding' }, { instruction: 'think', task_type: 'Reasoning' }])
  const res = await post(app, '/execute-all', { session_id: 'llm2' })
  t.same(res.json().results.map((r: { status: string }) => r.status), ['Completed', 'Completed'])
  for (const req of llm.requests) {
    t.equal(req.json.messages[0].content, 'You are terse.')
    t.equal(req.headers.authorization, undefined, 'no Authorization header')
    t.notOk('logprobs' in req.json, 'logprobs not requested')
    t.notOk('temperature' in req.json, 'temperature only when configured')
  }
})

t.test('openai: an answer without choices[0].message.content fails the task at once', async (t) => {
  const llm = await fakeAgent(t, () => ({ body: { choices: [] } }))
  const app = await build(t, { agents: { default: { kind: 'openai', base_url: llm.base, model: 'm', max_attempts: 3, ...FAST } } })
  await createTasks(app, 'llm3', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'llm3' })
  t.match(res.json(), { status: 'Failed', result: null, error: /choices\[0\]\.message\.content/ })
  t.equal(llm.requests.length, 1, 'not retried')
})

t.test('openai: 500 and 429 are retried like any agent; the answer after them completes the task', async (t) => {
  const dir = await tempDir(t)
  const replies = [{ status: 500, body: { error: { message: 'model loading' } } }, { status: 429, body: 'rate limited' }, completion('finally', [-0.05])]
  const llm = await fakeAgent(t, (_req, i) => replies[i]!)
  const app = await build(t, { dir, agents: { default: { kind: 'openai', base_url: llm.base, model: 'm', max_attempts: 3, ...FAST } } })
  await createTasks(app, 'llm-retry', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'llm-retry' })
  t.match(res.json(), { status: 'Completed', result: 'finally' })
  t.equal(llm.requests.length, 3)
  t.match((await storedTasks(dir, 'llm-retry'))[0], { status: 'Completed', attempts: 3 })
})

t.test('timeout: a call over timeout_ms fails with a timeout error; retried up to max_attempts', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => 'hang')
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base, timeout_ms: 300, max_attempts: 2, backoff_ms: 20 } } })
  const calls = recordCalls(app)
  await createTasks(app, 'slow', [{ instruction: 'never answered' }, { instruction: 'next one' }])
  const res = await post(app, '/execute', { session_id: 'slow' })
  t.equal(res.statusCode, 200)
  t.match(res.json(), { status: 'Failed', result: null, error: "webhook agent 'default' timed out after 300 ms" })
  t.equal(agent.requests.length, 2, 'a timeout is transient: called max_attempts times')
  await Promise.all(agent.requests.map((r) => r.closed))
  t.ok(agent.requests.every((r) => r.abandoned()), 'each timed-out request was aborted (connection closed by the client)')
  t.same(calls.map((c) => [c.outcome, c.attempt]), [['timeout', 1], ['timeout', 2]])
  const [first, second] = await storedTasks(dir, 'slow')
  t.match(first, { status: 'Failed', attempts: 2, error: /timed out/ })
  t.match(second, { status: 'Pending', attempts: 0 }, 'the next task is untouched')
})

t.test('503 then success: retried with backoff; attempts counted on disk, in the list and in the request', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, (_req, i) => i < 2 ? { status: 503, body: 'upstream busy' } : ok('third time lucky', 0.5))
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, backoff_ms: 50 } } })
  const calls = recordCalls(app)
  const [id] = await createTasks(app, 'retry', [{ instruction: 'flaky' }])
  const res = await post(app, '/execute', { session_id: 'retry' })
  t.match(res.json(), { task_id: id, status: 'Completed', result: 'third time lucky', confidence: 0.5, error: null })
  t.equal(agent.requests.length, 3)
  t.same(agent.requests.map((r) => r.json.task.attempt), [1, 2, 3], 'each call carries its attempt number')
  t.equal(new Set(agent.requests.map((r) => r.headers['idempotency-key'])).size, 1, 'one Idempotency-Key for all retries')
  t.match(agent.requests[0]?.headers['idempotency-key'], new RegExp(`^retry:${id}:\\d+$`, 'u'))
  t.same(calls.map((c) => c.outcome), ['error', 'error', 'ok'])
  const [stored] = await storedTasks(dir, 'retry')
  t.match(stored, { status: 'Completed', attempts: 3 }, 'attempts on disk')
  const list = (await get(app, '/list?session_id=retry')).json()
  t.equal(list.tasks[0].attempts, 3, 'attempts in the list response')
})

t.test('503 on every attempt: Failed with the last error naming the status and the body; the session moves on', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, (req, i) => req.json.task.instruction === 'fine' ? ok('ok') : { status: 503, body: `upstream busy #${i + 1}` })
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, ...FAST } } })
  await createTasks(app, 'down', [{ instruction: 'doomed' }, { instruction: 'fine' }])
  const res = await post(app, '/execute-all', { session_id: 'down' })
  const [doomed, fine] = res.json().results
  t.match(doomed, { status: 'Failed', result: null })
  t.match(doomed.error, /answered 503: upstream busy #3/, 'the last error, with status and body')
  t.match(fine, { status: 'Completed', result: 'ok' }, 'the next task ran')
  t.match((await storedTasks(dir, 'down'))[0], { status: 'Failed', attempts: 3, error: /503: upstream busy #3/ })
})

t.test('429 with Retry-After: 1 waits at least about a second before the next call', async (t) => {
  const agent = await fakeAgent(t, (_req, i) => i === 0 ? { status: 429, headers: { 'retry-after': '1' }, body: 'slow down' } : ok('thanks for waiting'))
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 2, backoff_ms: 10 } } })
  await createTasks(app, 'limited', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'limited' })
  t.match(res.json(), { status: 'Completed', result: 'thanks for waiting' })
  t.equal(agent.requests.length, 2)
  const gap = agent.requests[1]!.at - agent.requests[0]!.at
  t.ok(gap >= 900, `Retry-After honoured over backoff_ms 10 (gap ${gap} ms)`)
})

t.test('429 with a huge Retry-After waits at most max_backoff_ms', async (t) => {
  const agent = await fakeAgent(t, (_req, i) => i === 0 ? { status: 429, headers: { 'retry-after': '30' } } : ok('done'))
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 2, backoff_ms: 10, max_backoff_ms: 100 } } })
  await createTasks(app, 'capped', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'capped' })
  t.match(res.json(), { status: 'Completed', result: 'done' })
  const gap = agent.requests[1]!.at - agent.requests[0]!.at
  t.ok(gap < 20_000, `the 30 s Retry-After was capped (gap ${gap} ms)`)
})

t.test('400 fails at once: one call only, error names the status and the first 200 bytes of the body', async (t) => {
  const dir = await tempDir(t)
  const long = 'missing field: ' + 'x'.repeat(1000)
  const agent = await fakeAgent(t, () => ({ status: 400, body: long }))
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 5, ...FAST } } })
  await createTasks(app, 'bad', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'bad' })
  const { status, error } = res.json()
  t.equal(status, 'Failed')
  t.equal(agent.requests.length, 1, 'a 4xx other than 429 is not retried')
  t.match(error, /answered 400: missing field: x+/)
  t.ok(error.includes(long.slice(0, 200)), 'the first 200 bytes of the body')
  t.notOk(error.includes(long.slice(0, 201)), 'not more than 200 bytes of it')
  t.match((await storedTasks(dir, 'bad'))[0], { status: 'Failed', attempts: 1 })
})

t.test('what an agent\'s error answer quotes of the headers we sent (the key) is redacted in the task\'s error', async (t) => {
  const dir = await tempDir(t)
  // A gateway that echoes what it was sent, as some do in a 401.
  const llm = await fakeAgent(t, (req) => ({ status: 401, body: JSON.stringify({ error: { message: `Invalid key ${String(req.headers.authorization)}; you sent ${String(req.headers['x-tenant'])}` } }) }))
  const app = await build(t, {
    dir,
    agents: { default: { kind: 'openai', base_url: `${llm.base}/v1`, model: 'm', api_key_env: 'LLM_KEY', ...FAST } },
    env: { LLM_KEY: 'sk-SUPERSECRET-123' }
  })
  await createTasks(app, 'echoed', [{ instruction: 'x' }])
  const { status, error } = (await post(app, '/execute', { session_id: 'echoed' })).json()
  t.equal(status, 'Failed')
  t.match(error, /answered 401: .*Invalid key \[redacted\]/u, 'the answer is still quoted')
  t.notOk(error.includes('SUPERSECRET'), 'without the key')
  t.equal((await storedTasks(dir, 'echoed'))[0]?.error, error, 'nor on disk')
})

t.test('a short key (6 or 7 characters) is redacted too: the API key after Bearer, and a whole header value', async (t) => {
  const dir = await tempDir(t)
  // OpenAI itself names the key in a 401; some gateways echo every header.
  const peer = await fakeAgent(t, (req) => ({ status: 401, body: JSON.stringify({ error: { message: `Incorrect API key provided: ${String(req.headers.authorization).slice(7)}; unknown access key ${String(req.headers['x-pair']).split(' ')[0]}; dry run ${String(req.headers['x-dry-run'])}; sent ${JSON.stringify({ 'x-api-key': req.headers['x-api-key'] })}` } }) }))
  const app = await build(t, {
    dir,
    agents: {
      Coding: { kind: 'openai', base_url: `${peer.base}/v1`, model: 'm', api_key_env: 'LLM_KEY', ...FAST },
      default: { kind: 'webhook', url: `${peer.base}/run`, headers_env: 'HOOK_HEADERS', ...FAST }
    },
    env: { LLM_KEY: 'sk-Ab3x', HOOK_HEADERS: JSON.stringify({ 'X-Api-Key': 'Zq7#kP2', 'X-Pair': 'AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI', 'X-Dry-Run': 'true' }) }
  })
  await createTasks(app, 'short', [{ instruction: 'x', task_type: 'Coding' }, { instruction: 'y', task_type: 'General' }])
  const errors = [(await post(app, '/execute', { session_id: 'short' })).json().error, (await post(app, '/execute', { session_id: 'short' })).json().error]
  t.match(errors, [/answered 401: .*Incorrect API key provided: \[redacted\]/u, /answered 401: .*x-api-key.*\[redacted\]/u], 'both answers still quoted')
  for (const error of errors) t.notOk(/sk-Ab3x|Zq7#kP2/u.test(error), 'without the key', { error })
  t.match(errors[1], /unknown access key \[redacted\]; dry run true/u, 'a long first word of a two-word value too; a short value that is no key stays')
})

const shapes: Array<[string, string, string]> = [
  ['inside an echoed key', `Bearer ${'sk-SUPERSECRETKEY-0123456789'.slice(0, -1)}`, `9 was refused; ${'z'.repeat(2000)}`],
  ['just after an echoed key', 'Bearer sk-SUPERSECRETKEY-0123456789 was refused', 'z'.repeat(2000)]
]
for (const [shape, first, rest] of shapes) {
  t.test(`an error answer cut at max_response_bytes ${shape} quotes no part of the key`, async (t) => {
    const key = 'sk-SUPERSECRETKEY-0123456789'
    // The body's first piece ends as told; the second goes past the bound.
    const peer = createServer((req, res) => {
      req.resume()
      req.on('end', () => {
        res.writeHead(401, { 'content-type': 'text/plain' })
        res.write(' '.repeat(1024 - first.length) + first)
        setTimeout(() => { res.end(rest) }, 100).unref()
      })
    })
    await new Promise<void>((resolve) => peer.listen(0, '127.0.0.1', resolve))
    t.teardown(async () => {
      peer.closeAllConnections()
      await new Promise((resolve) => peer.close(resolve))
    })
    const dir = await tempDir(t)
    const app = await build(t, {
      dir,
      agents: { default: { kind: 'openai', base_url: `http://127.0.0.1:${(peer.address() as AddressInfo).port}/v1`, model: 'm', api_key_env: 'LLM_KEY', max_response_bytes: 1024, ...FAST } },
      env: { LLM_KEY: key }
    })
    await createTasks(app, 'cut', [{ instruction: 'x' }])
    const { status, error } = (await post(app, '/execute', { session_id: 'cut' })).json()
    t.equal(status, 'Failed')
    t.match(error, /answered 401/u, 'the status is named')
    t.notOk(error.includes('SUPERSEC'), `no part of the key: ${String(error)}`)
    t.notOk(error.includes('sk-'), 'not even its start')
    t.equal((await storedTasks(dir, 'cut'))[0]?.error, error, 'nor on disk')
  })
}

t.test('a redirect is an answer like any other non-2xx: named by its status, not retried', async (t) => {
  const agent = await fakeAgent(t, () => ({ status: 302, headers: { location: '/elsewhere' }, body: 'moved' }))
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, ...FAST } } })
  await createTasks(app, 'moved', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'moved' })
  t.equal(res.json().status, 'Failed', 'never followed to a 2xx')
  t.match(res.json().error, /answered 302/, 'the error names the status')
  t.equal(agent.requests.length, 1, 'not retried')
})

t.test('malformed answers fail at once: not JSON, no string result', async (t) => {
  const answers = [{ body: '{"result": "cut off' }, { body: { answer: 'wrong field' } }, { body: { result: 42 } }]
  const agent = await fakeAgent(t, (req) => answers[Number(req.json.task.instruction)]!)
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, ...FAST } } })
  await createTasks(app, 'garbled', [{ instruction: '0' }, { instruction: '1' }, { instruction: '2' }])
  const res = await post(app, '/execute-all', { session_id: 'garbled' })
  const [notJson, noResult, numeric] = res.json().results
  t.match(notJson, { status: 'Failed', error: /not JSON: \{"result": "cut off/ }, 'names the problem and quotes the body')
  t.match(noResult, { status: 'Failed', error: /without a string "result"/ })
  t.match(numeric, { status: 'Failed', error: /without a string "result"/ })
  t.equal(agent.requests.length, 3, 'one call per task: none retried')
})

t.test('an answer that starts with a UTF-8 byte-order mark is read as the JSON after it', async (t) => {
  const bom = (json: unknown): { headers: Record<string, string>, body: string } => ({ headers: { 'content-type': 'application/json; charset=utf-8' }, body: `\uFEFF${JSON.stringify(json)}` })
  const hook = await fakeAgent(t, () => bom({ result: 'done' }))
  const llm = await fakeAgent(t, () => bom((completion('coded') as { body: unknown }).body))
  const app = await build(t, {
    agents: {
      Coding: { kind: 'openai', base_url: llm.base, model: 'm', ...FAST },
      default: { kind: 'webhook', url: hook.base, ...FAST }
    }
  })
  await createTasks(app, 'bom', [{ instruction: 'a', task_type: 'General' }, { instruction: 'b', task_type: 'Coding' }])
  const results = (await post(app, '/execute-all', { session_id: 'bom' })).json().results
  t.match(results, [{ status: 'Completed', result: 'done' }, { status: 'Completed', result: 'coded' }])
})

t.test('a 200 without a result (webhook) or a message (openai) quotes the answer\'s first 200 bytes, the key redacted', async (t) => {
  const dir = await tempDir(t)
  // A gateway that answers a rate limit with 200 and an error object, echoing the key.
  const limited = (req: { headers: Record<string, unknown> }): { body: unknown } => ({
    body: { error: { message: `Rate limit exceeded for ${String(req.headers.authorization)}`, code: 429, detail: 'd'.repeat(500) } }
  })
  const hook = await fakeAgent(t, limited)
  const llm = await fakeAgent(t, limited)
  const app = await build(t, {
    dir,
    agents: {
      Coding: { kind: 'openai', base_url: `${llm.base}/v1`, model: 'm', api_key_env: 'LLM_KEY', max_attempts: 3, ...FAST },
      default: { kind: 'webhook', url: hook.base, headers_env: 'HOOK_HEADERS', max_attempts: 3, ...FAST }
    },
    env: { LLM_KEY: 'sk-SUPERSECRET-123', HOOK_HEADERS: JSON.stringify({ authorization: 'Bearer hook-SECRET-456' }) }
  })
  await createTasks(app, 'limited', [{ instruction: 'a', task_type: 'General' }, { instruction: 'b', task_type: 'Coding' }])
  const [webhook, openai] = (await post(app, '/execute-all', { session_id: 'limited' })).json().results
  t.match(webhook, { status: 'Failed', error: /^webhook \S+ answered 200 without a string "result": \{"error":\{"message":"Rate limit exceeded for \[redacted\]","code":429,"detail":"d+…$/u })
  t.match(openai, { status: 'Failed', error: /^openai \S+ answered 200 without choices\[0\]\.message\.content: \{"error":\{"message":"Rate limit exceeded for \[redacted\]","code":429,"detail":"d+…$/u })
  for (const { error } of [webhook, openai]) {
    t.equal(Buffer.byteLength(error.slice(error.indexOf(': {') + 2, -1)), 200, 'the first 200 bytes of the answer')
    t.notOk(/SECRET/u.test(error), 'without the key')
  }
  t.same((await storedTasks(dir, 'limited')).map((task) => task.error), [webhook.error, openai.error], 'so on disk')
  t.equal(hook.requests.length + llm.requests.length, 2, 'neither retried')
})

t.test('a key the agent echoes as a JSON encoder escapes it (\\/, \\u002B), percent-encoded, or a Basic credential decoded is redacted too, in a 2xx, an error and a cut error', async (t) => {
  const dir = await tempDir(t)
  const key = 'AKIAabc/def+ghiJKL/mnoPQR=='
  const basic = `Basic ${Buffer.from('alice:hunter22-pw').toString('base64')}`
  const sas = 'sv=2021&sig=AbCdEf%2BgHiJk%2FlMn%3D'
  const php = key.replaceAll('/', '\\/')
  const dotnet = key.replaceAll('+', '\\u002B').replaceAll('=', '\\u003D')
  const answers = [
    { body: `{"error": "quota exceeded for ${php}"}` },
    { body: `{"error": "quota exceeded for ${dotnet}"}` },
    { status: 401, body: `{"error": "bad ${encodeURIComponent(basic)} for alice:hunter22-pw (password hunter22-pw)"}` },
    { status: 503, body: `{"error": "overloaded for ${dotnet} and ${php}", "page": "${'p'.repeat(5000)}"}` },
    // Lower-case percent-hex (.NET's UrlEncode), Python's quote (keeps '/'), and PHP's escapes
    // quoted again inside another answer's JSON string.
    { status: 401, body: `{"error": "bad key ${encodeURIComponent(key).replace(/%[0-9A-F]{2}/gu, (hex) => hex.toLowerCase())}"}` },
    { status: 401, body: `{"error": "bad key ${encodeURIComponent(key).replaceAll('%2F', '/')}"}` },
    { status: 401, body: `{"upstream": "{\\"error\\": \\"bad key ${key.replaceAll('/', '\\\\\\/')}\\"}"}` },
    // A key that holds percent-escapes itself (a SAS token), echoed as sent.
    { status: 401, body: `{"error": "bad token ${sas}"}` }
  ]
  const agent = await fakeAgent(t, (req) => answers[Number(req.json.task.instruction)]!)
  const app = await build(t, {
    dir,
    agents: { default: { kind: 'webhook', url: agent.base, headers_env: 'HOOK_HEADERS', max_attempts: 1, max_response_bytes: 1024, ...FAST } },
    env: { HOOK_HEADERS: JSON.stringify({ 'x-api-key': key, authorization: basic, 'x-token': sas }) }
  })
  await createTasks(app, 'echoed', answers.map((_answer, i) => ({ instruction: String(i) })))
  const results = (await post(app, '/execute-all', { session_id: 'echoed' })).json().results as Array<{ status: string, error: string }>
  t.equal(results.length, answers.length)
  for (const [i, { status, error }] of results.entries()) {
    t.equal(status, 'Failed', `${i}: failed`)
    t.match(error, /\[redacted\]/u, `${i}: quotes the answer, redacted`, { error })
    t.notMatch(error, /AKIA|mnoPQR|hunter22|YWxpY2|AbCdEf/u, `${i}: no part of a secret`, { error })
  }
  const stored = JSON.stringify(await storedTasks(dir, 'echoed'))
  t.notMatch(stored, /AKIA|mnoPQR|hunter22|YWxpY2|AbCdEf/u, 'nor on disk')
})

t.test('quoting an error answer of max_response_bytes full of escapes works over its start only: the server is not blocked', async (t) => {
  const escapes = `{"error": "${'\\/'.repeat(2_000_000)}"}`
  const agent = await fakeAgent(t, (req) => ({ status: req.json.task.instruction === '0' ? 503 : 200, body: escapes }))
  const app = await build(t, {
    agents: { default: { kind: 'webhook', url: agent.base, headers_env: 'HOOK_HEADERS', max_attempts: 1, ...FAST } },
    env: { HOOK_HEADERS: JSON.stringify({ 'x-api-key': 'sk-abcdefghijklmnop' }) }
  })
  await createTasks(app, 'escaped', [{ instruction: '0' }, { instruction: '1' }])
  let longest = 0
  let last = performance.now()
  const probe = setInterval(() => { const now = performance.now(); longest = Math.max(longest, now - last); last = now }, 10)
  t.teardown(() => { clearInterval(probe) })
  const results = (await post(app, '/execute-all', { session_id: 'escaped' })).json().results
  clearInterval(probe)
  t.match(results, [{ status: 'Failed', error: /answered 503: \{"error": "\/+…$/u }, { status: 'Failed', error: /answered 200 without a string "result": \{"error": "\/+…$/u }], 'both quote the start')
  // Undoing 2,000,000 escapes one call each held the loop 2.7 s; reading and parsing 4 MiB takes far less.
  t.ok(longest < 1000, `the event loop was never held for a second (${Math.round(longest)} ms at most)`)
})

t.test('an answer nested deeper than MAX_ANSWER_DEPTH fails at once, unparsed; brackets inside strings do not count', async (t) => {
  // The object is one level: with its arrays, MAX_ANSWER_DEPTH in all.
  const deep = `{"result": "ok", "x": ${'['.repeat(MAX_ANSWER_DEPTH - 1)}${']'.repeat(MAX_ANSWER_DEPTH - 1)}}`
  const answers = [{ body: `{"result": "ok", "x": ${'['.repeat(200_000)}${']'.repeat(200_000)}}` }, { body: deep }, { body: { result: `[{"${'['.repeat(5000)}` } }]
  const agent = await fakeAgent(t, (req) => answers[Number(req.json.task.instruction)]!)
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, ...FAST } } })
  await createTasks(app, 'deep', [{ instruction: '0' }, { instruction: '1' }, { instruction: '2' }])
  const [tooDeep, deepest, inString] = (await post(app, '/execute-all', { session_id: 'deep' })).json().results
  t.match(tooDeep, { status: 'Failed', error: new RegExp(`^webhook \\S+ answered 200 with JSON nested more than ${MAX_ANSWER_DEPTH} levels deep$`) })
  t.match(deepest, { status: 'Completed', result: 'ok' }, `${MAX_ANSWER_DEPTH} levels is the most taken`)
  t.match(inString, { status: 'Completed', result: `[{"${'['.repeat(5000)}` })
  t.equal(agent.requests.length, 3, 'not retried')
})

t.test('an answer over max_response_bytes fails the task', async (t) => {
  const agent = await fakeAgent(t, () => ok('y'.repeat(5000)))
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_response_bytes: 1024 } } })
  await createTasks(app, 'huge', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'huge' })
  t.match(res.json(), { status: 'Failed', result: null, error: /more than 1024 bytes/ })
})

t.test('an answer sent a byte at a time costs about its size in memory while it comes, not an object per byte', async (t) => {
  const BYTES = 40_000
  let allSent = (): void => {}
  const sent = new Promise<void>((resolve) => { allSent = resolve })
  let finish = (): void => {}
  const finished = new Promise<void>((resolve) => { finish = resolve })
  // One byte a turn of the event loop: the agent reads each as a chunk of its own.
  const peer = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      res.socket?.setNoDelay(true)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.write('{"result":"')
      let left = BYTES
      const next = (): void => {
        if (left-- > 0) {
          res.write('a')
          setImmediate(next)
          return
        }
        allSent()
        void finished.then(() => res.end('"}'))
      }
      next()
    })
  })
  await new Promise<void>((resolve) => peer.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { peer.closeAllConnections(); peer.close() })
  const app = await build(t, { agents: { default: { kind: 'webhook', url: `http://127.0.0.1:${(peer.address() as AddressInfo).port}/`, timeout_ms: 120_000 } } })
  await createTasks(app, 'drip', [{ instruction: 'x' }])
  const before = heldBytes()
  const executing = post(app, '/execute', { session_id: 'drip' })
  await sent
  await new Promise((resolve) => setTimeout(resolve, 100))
  const during = heldBytes() - before
  finish()
  const res = await executing
  t.match(res.json(), { status: 'Completed' })
  t.equal(res.json().result.length, BYTES)
  t.ok(during < 6 * 1024 * 1024, `${BYTES} bytes in as many chunks held ${(during / 1024).toFixed(0)} KB while the answer came (a chunk object each would be megabytes)`)
})

t.test('an error answer over max_response_bytes is still judged by its status: a long 503 is retried', async (t) => {
  let calls = 0
  const agent = await fakeAgent(t, () => ++calls === 1 ? { status: 503, body: 'z'.repeat(5000) } : ok('fine'))
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_response_bytes: 1024, max_attempts: 2, ...FAST } } })
  await createTasks(app, 'long-503', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'long-503' })
  t.match(res.json(), { status: 'Completed', result: 'fine' })
  t.equal(agent.requests.length, 2, 'retried once')
})

t.test('an error answer whose first piece is past max_response_bytes still quotes its start', async (t) => {
  const page = `<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head><body>${'<p>upstream busy</p>'.repeat(250)}</body></html>`
  const agent = await fakeAgent(t, () => ({ status: 503, headers: { 'content-type': 'text/html' }, body: page }))
  const app = await build(t, { agents: { default: { kind: 'webhook', url: agent.base, max_response_bytes: 1024, max_attempts: 1, ...FAST } } })
  await createTasks(app, 'html-503', [{ instruction: 'x' }])
  const { status, error } = (await post(app, '/execute', { session_id: 'html-503' })).json()
  t.equal(status, 'Failed')
  t.ok(Buffer.byteLength(page) > 1024 * 4, 'the page, sent in one write, is several times the cap')
  t.equal(error, `webhook ${new URL(agent.base).host} answered 503: ${page.slice(0, 200)}…`, 'the status and the page\'s first 200 bytes')
})

t.test('an unreachable agent is a transient network error: retried, then Failed naming ECONNREFUSED', async (t) => {
  const dir = await tempDir(t)
  const port = await freePort()
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: `http://127.0.0.1:${port}/run`, max_attempts: 2, ...FAST } } })
  await createTasks(app, 'nobody', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'nobody' })
  t.match(res.json(), { status: 'Failed', error: /unreachable: ECONNREFUSED/ })
  t.match((await storedTasks(dir, 'nobody'))[0], { attempts: 2 })
})

t.test('the attempt is on disk (InProgress, attempts, started_at) before the agent is called', async (t) => {
  const dir = await tempDir(t)
  let seen: unknown
  const agent = await fakeAgent(t, async () => {
    seen = (await storedTasks(dir, 'durable'))[0]
    return ok('done')
  })
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base } } })
  await createTasks(app, 'durable', [{ instruction: 'x' }])
  await post(app, '/execute', { session_id: 'durable' })
  t.match(seen, { status: 'InProgress', attempts: 1, started_at: String, completed_at: null }, 'what the file held while the agent worked')
})

t.test('an agent that never answers, then shutdown: close finishes, the task stays InProgress, and runs again after restart', async (t) => {
  const dir = await tempDir(t)
  let answering = false
  const agent = await fakeAgent(t, () => answering ? ok('answered after restart') : 'hang')
  const agents = { default: { kind: 'webhook', url: agent.base, timeout_ms: 60_000 } }
  const app = await build(t, { dir, agents, config: { TASK_SHUTDOWN_GRACE_MS: 200 } })
  const calls = recordCalls(app)
  const [id] = await createTasks(app, 'stuck', [{ instruction: 'think forever' }])
  const running = post(app, '/execute-all', { session_id: 'stuck' })
  await agent.waitForRequests(1)
  await app.close()
  const res = await running
  t.not(res.statusCode, 200, `the interrupted execute-all is not reported as done (${res.statusCode})`)
  await agent.requests[0]!.closed
  t.ok(agent.requests[0]!.abandoned(), 'the agent call was aborted after the grace period')
  t.same(calls.map((c) => c.outcome), ['aborted'])
  t.match((await storedTasks(dir, 'stuck'))[0], { id, status: 'InProgress', attempts: 1 }, 'InProgress on disk after close')

  answering = true
  const again = await build(t, { dir, agents })
  const restored = (await storedTasks(dir, 'stuck'))[0]
  t.match(restored, { status: 'Pending', interruptions: 1, attempts: 1 }, 'restored to Pending, interruption counted')
  const res2 = await post(again, '/execute', { session_id: 'stuck' })
  t.match(res2.json(), { task_id: id, status: 'Completed', result: 'answered after restart' })
  t.equal(agent.requests.length, 2)
  t.equal(agent.requests[1]!.json.task.attempt, 2, 'attempts counts every call ever started')
  t.equal(agent.requests[1]!.headers['idempotency-key'], agent.requests[0]!.headers['idempotency-key'], 'same Idempotency-Key after the restart')
  t.match((await storedTasks(dir, 'stuck'))[0], { status: 'Completed', attempts: 2, interruptions: 1 })
})

t.test('no retry starts once shutdown begins, even when the backoff ends inside the grace period', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => ({ status: 503, body: 'busy' }))
  const app = await build(t, {
    dir,
    agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, backoff_ms: 1000 } },
    config: { TASK_SHUTDOWN_GRACE_MS: 4000 }
  })
  const calls = recordCalls(app)
  await createTasks(app, 'closing', [{ instruction: 'x' }])
  // Shutdown begins as the retry is announced, right before its backoff of 500..1000 ms: the
  // backoff ends inside the grace period, however slow this machine is.
  let closing: Promise<void> | null = null
  app.taskEvents.subscribe((event) => {
    if (event.name === 'task.retrying' && closing === null) closing = new Promise((resolve) => setImmediate(resolve)).then(() => app.close())
  })
  const running = post(app, '/execute', { session_id: 'closing' })
  await waitFor('the first call to fail and its retry to be announced', () => closing !== null)
  await closing
  await running
  t.equal(calls.length, 1, 'the first call was made and failed')
  t.equal(agent.requests.length, 1, 'no call after shutdown began (README: "no new task or retry starts")')
  t.match((await storedTasks(dir, 'closing'))[0], { status: 'Pending', attempts: 1 }, 'put back to Pending: no call was in flight')
  const again = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 1 } } })
  const restored = again.taskManager.get('closing').session.tasks[0]
  t.match(restored, { status: 'Pending', attempts: 1 })
  t.notOk(restored?.interruptions, 'a graceful shutdown between two calls is not an interruption')
})

t.test('a retry backoff longer than the grace period does not hold shutdown: close ends at once, the task runs after restart', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => ({ status: 503, body: 'busy' }))
  const app = await build(t, {
    dir,
    agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, backoff_ms: 60_000 } },
    config: { TASK_SHUTDOWN_GRACE_MS: 8000 }
  })
  await createTasks(app, 'waiting', [{ instruction: 'x' }])
  const announced = new Promise<void>((resolve) => { app.taskEvents.subscribe((event) => { if (event.name === 'task.retrying') resolve() }) })
  const running = post(app, '/execute', { session_id: 'waiting' })
  await announced
  const started = Date.now()
  await app.close()
  const closeMs = Date.now() - started
  t.equal((await running).statusCode, 503, 'the execute answers that the service is shutting down')
  t.ok(closeMs < 4000, `close took ${closeMs} ms, not the 8 s grace period`)
  t.equal(agent.requests.length, 1, 'no call after shutdown began')
  t.match((await storedTasks(dir, 'waiting'))[0], { status: 'Pending', attempts: 1 }, 'put back to Pending, to run again after restart')
  t.notOk((await storedTasks(dir, 'waiting'))[0]?.interruptions, 'not counted as an interruption')
})

t.test("'agent-call' events: ok, error, timeout, cancelled, with the routing key and attempt", async (t) => {
  const agent = await fakeAgent(t, (req) => {
    switch (req.json.task.instruction) {
      case 'good': return ok('fine')
      case 'bad': return { status: 400, body: 'no' }
      default: return 'hang'
    }
  })
  // Only Research's agent times out soon: the others' calls are never cut by a slow machine.
  const webhook = { kind: 'webhook', url: agent.base, timeout_ms: 30_000 }
  const app = await build(t, { agents: { Coding: webhook, Research: { ...webhook, timeout_ms: 300 }, default: webhook } })
  const calls = recordCalls(app)
  const ids = await createTasks(app, 'events', [
    { instruction: 'good', task_type: 'Coding' },
    { instruction: 'bad', task_type: 'General' },
    { instruction: 'slow', task_type: 'Research' }
  ])
  await post(app, '/execute-all', { session_id: 'events' })
  const [cancelId] = await createTasks(app, 'events-cancel', [{ instruction: 'wait for cancel' }])
  const running = post(app, '/execute', { session_id: 'events-cancel' })
  await agent.waitForRequests(4)
  const cancelled = await post(app, '/cancel', { session_id: 'events-cancel' })
  t.equal(cancelled.statusCode, 200)
  await running
  t.match(calls, [
    { session_id: 'events', task_id: ids[0], task_type: 'Coding', agent: 'Coding', attempt: 1, outcome: 'ok' },
    { session_id: 'events', task_id: ids[1], task_type: 'General', agent: 'default', attempt: 1, outcome: 'error' },
    { session_id: 'events', task_id: ids[2], task_type: 'Research', agent: 'Research', attempt: 1, outcome: 'timeout' },
    { session_id: 'events-cancel', task_id: cancelId, agent: 'default', attempt: 1, outcome: 'cancelled' }
  ])
  t.equal(calls.length, 4)
  t.ok(calls.every((c) => typeof c.ms === 'number' && c.ms >= 0), 'each event has its duration')
  await waitFor('the cancelled call to be aborted', () => agent.requests[3]!.abandoned())
})
