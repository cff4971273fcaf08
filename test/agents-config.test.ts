/**
 * TASK_AGENTS: parsing and validation (unit), boot failures naming the key (in process and as a
 * real process exiting 1), the echo fallback warning, `@file` specs, programmatic executors
 * taking precedence key by key, and the retry arithmetic.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { confidenceFrom } from '../services/runner/agents/openai.js'
import { parseRetryAfter } from '../services/runner/agents/http.js'
import { parseAgentsConfig } from '../services/runner/agents/spec.js'
import { AgentError, InvalidAgentConfigError } from '../services/errors.js'
import { DEFAULT_POLICY, resolveAgents, retryDelay, type Executor } from '../services/runner/executors.js'
import { buildApp } from '../app.js'
import { createTasks, fakeAgent, fixture, ok, recordCalls, storedTasks } from './agents-fakes.js'
import { build, post, tempDir } from './helper.js'
import { baseEnv, call, exitWithin, freePort, logLines, scratch } from './server-process.js'

const API = '/api/v1/tasks'

/** Throws InvalidAgentConfigError whose message matches `message`. */
function rejects (t: Test, source: string | object, message: RegExp, env: NodeJS.ProcessEnv = {}): void {
  let error: unknown
  try {
    parseAgentsConfig(source, env)
  } catch (err) {
    error = err
  }
  t.ok(error instanceof InvalidAgentConfigError, `${typeof source === 'string' ? source : JSON.stringify(source)} is refused`)
  t.match((error as InvalidAgentConfigError | undefined)?.code, 'INVALID_AGENT_CONFIG')
  t.match((error as Error | undefined)?.message, message)
}

t.test('parseAgentsConfig: defaults filled in; inline JSON or an object', async (t) => {
  const parsed = parseAgentsConfig('{"default": {"kind": "webhook", "url": "http://127.0.0.1:9/run"}, "Coding": {"kind": "command", "argv": ["sh"], "max_attempts": 4}}', {})
  t.same(parsed.default, {
    kind: 'webhook', url: 'http://127.0.0.1:9/run', timeout_ms: 120_000, max_attempts: 1, backoff_ms: 1000, max_backoff_ms: 60_000, max_response_bytes: 4 * 1024 * 1024
  })
  t.match(parsed.Coding, { kind: 'command', argv: ['sh'], timeout_ms: 120_000, max_attempts: 4, backoff_ms: 1000, max_output_bytes: 1024 * 1024 })
  const openai = parseAgentsConfig({ Research: { kind: 'openai', base_url: 'https://api.example/v1', model: 'm' } }, {})
  t.match(openai.Research, { kind: 'openai', logprobs: true, timeout_ms: 120_000 })
  t.same(Object.keys(parseAgentsConfig({ General: { kind: 'echo' } }, {})), ['General'])
})

t.test('parseAgentsConfig: `@path` reads the specs from a file', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, 'agents.json')
  await writeFile(file, JSON.stringify({ Analysis: { kind: 'echo', timeout_ms: 5 } }))
  t.match(parseAgentsConfig(`@${file}`, {}).Analysis, { kind: 'echo', timeout_ms: 5 })
  // As a Windows editor saves UTF-8: a byte-order mark first.
  await writeFile(file, '\uFEFF{"Analysis": {"kind": "echo", "timeout_ms": 7}}\r\n')
  t.match(parseAgentsConfig(`@${file}`, {}).Analysis, { kind: 'echo', timeout_ms: 7 }, 'a byte-order mark is no part of the JSON')
  await writeFile(file, '{"Analysis": {"kind": "echo", "timeout_ms": -5}}')
  rejects(t, `@${file}`, /^TASK_AGENTS\.Analysis\.timeout_ms: /)
  rejects(t, `@${join(dir, 'missing.json')}`, /^TASK_AGENTS: cannot read .*missing\.json/)
  // Something endless is refused past a bound, not read until memory runs out (the process aborted).
  rejects(t, '@/dev/zero', /^TASK_AGENTS: cannot read \/dev\/zero: more than 1048576 bytes/)
})

t.test('parseAgentsConfig: every bad spec is refused with the key (and field) named', async (t) => {
  const cases: Array<[string | object, RegExp]> = [
    ['{bad', /^TASK_AGENTS: not valid JSON/],
    ['', /^TASK_AGENTS: not valid JSON/],
    ['[]', /^TASK_AGENTS: must be a JSON object/],
    ['null', /^TASK_AGENTS: must be a JSON object/],
    ['"echo"', /^TASK_AGENTS: must be a JSON object/],
    ['{}', /^TASK_AGENTS: names no agent/],
    ['{"coding": {"kind": "echo"}}', /^TASK_AGENTS\.coding: unknown key; use one of default, Coding, Analysis, Research, Reasoning, General/],
    ['{"__proto__": {"kind": "echo"}}', /^TASK_AGENTS\.__proto__: unknown key/],
    ['{"default": null}', /^TASK_AGENTS\.default: must be an object/],
    ['{"default": ["echo"]}', /^TASK_AGENTS\.default: must be an object/],
    ['{"default": {"url": "http://x"}}', /^TASK_AGENTS\.default\.kind: must be one of echo, webhook, openai, command/],
    ['{"default": {"kind": "Webhook", "url": "http://x"}}', /^TASK_AGENTS\.default\.kind: /],
    ['{"Coding": {"kind": "webhook"}}', /^TASK_AGENTS\.Coding\.url: /],
    ['{"Coding": {"kind": "webhook", "url": "ftp://x"}}', /^TASK_AGENTS\.Coding\.url: /],
    ['{"Coding": {"kind": "webhook", "url": "http://x", "max_response_bytes": 10}}', /^TASK_AGENTS\.Coding\.max_response_bytes: /],
    // One string holds the answer: past 256 MiB it could not be made (V8's strings end near 512 M characters).
    ['{"Coding": {"kind": "webhook", "url": "http://x", "max_response_bytes": 268435457}}', /^TASK_AGENTS\.Coding\.max_response_bytes: Expected integer to be less or equal to 268435456/],
    ['{"default": {"kind": "command", "argv": ["x"], "max_output_bytes": 1073741824}}', /^TASK_AGENTS\.default\.max_output_bytes: Expected integer to be less or equal to 268435456/],
    ['{"Coding": {"kind": "webhook", "url": "http://x", "headers_env": "not a name"}}', /^TASK_AGENTS\.Coding\.headers_env: /],
    ['{"default": {"kind": "echo", "retries": 3}}', /^TASK_AGENTS\.default\.retries: Unexpected property/],
    ['{"default": {"kind": "echo", "timeout_ms": "5"}}', /^TASK_AGENTS\.default\.timeout_ms: Expected integer/],
    ['{"default": {"kind": "echo", "timeout_ms": 1.5}}', /^TASK_AGENTS\.default\.timeout_ms: Expected integer/],
    ['{"default": {"kind": "echo", "timeout_ms": 0}}', /^TASK_AGENTS\.default\.timeout_ms: /],
    ['{"default": {"kind": "echo", "timeout_ms": 99999999999}}', /^TASK_AGENTS\.default\.timeout_ms: /],
    ['{"default": {"kind": "echo", "max_attempts": 0}}', /^TASK_AGENTS\.default\.max_attempts: /],
    ['{"default": {"kind": "echo", "backoff_ms": -1}}', /^TASK_AGENTS\.default\.backoff_ms: /],
    ['{"default": {"kind": "echo", "max_backoff_ms": null}}', /^TASK_AGENTS\.default\.max_backoff_ms: /],
    ['{"Analysis": {"kind": "openai", "base_url": "http://x"}}', /^TASK_AGENTS\.Analysis\.model: /],
    ['{"Analysis": {"kind": "openai", "model": "m"}}', /^TASK_AGENTS\.Analysis\.base_url: /],
    ['{"Analysis": {"kind": "openai", "base_url": "http://x", "model": ""}}', /^TASK_AGENTS\.Analysis\.model: /],
    ['{"Analysis": {"kind": "openai", "base_url": "http://x", "model": "m", "temperature": 3}}', /^TASK_AGENTS\.Analysis\.temperature: /],
    ['{"Analysis": {"kind": "openai", "base_url": "http://x", "model": "m", "api_key_env": "bad-name"}}', /^TASK_AGENTS\.Analysis\.api_key_env: /],
    ['{"Analysis": {"kind": "openai", "base_url": "http://x", "model": "m", "api_key": "sk-inline"}}', /^TASK_AGENTS\.Analysis\.api_key: Unexpected property/],
    ['{"Research": {"kind": "command"}}', /^TASK_AGENTS\.Research\.argv: /],
    ['{"Research": {"kind": "command", "argv": []}}', /^TASK_AGENTS\.Research\.argv: /],
    ['{"Research": {"kind": "command", "argv": [""]}}', /^TASK_AGENTS\.Research\.argv\.0: /],
    ['{"Research": {"kind": "command", "argv": "node agent.js"}}', /^TASK_AGENTS\.Research\.argv: /],
    ['{"Research": {"kind": "command", "argv": ["x"], "env": {"A": 1}}}', /^TASK_AGENTS\.Research\.env\.A: /],
    ['{"Research": {"kind": "command", "argv": ["x"], "max_output_bytes": 0}}', /^TASK_AGENTS\.Research\.max_output_bytes: /],
    ['{"Reasoning": {"kind": "echo"}, "General": {"kind": "echo", "timeout_ms": -1}}', /^TASK_AGENTS\.General\.timeout_ms: /]
  ]
  for (const [source, message] of cases) rejects(t, source, message)
})

t.test('parseAgentsConfig: a command env name that is not a variable name is refused', async (t) => {
  let error: unknown
  try {
    parseAgentsConfig('{"Research": {"kind": "command", "argv": ["x"], "env": {"NOT-A-NAME": "1"}}}', {})
  } catch (err) {
    error = err
  }
  t.match((error as Error | undefined)?.message, /^TASK_AGENTS\.Research\.env/, 'the env key pattern of the spec schema is enforced')
})

t.test('parseAgentsConfig: an agent URL holding a user name or password is refused, without echoing it', async (t) => {
  for (const [spec, field] of [
    [{ default: { kind: 'webhook', url: 'http://user:WHPASS@127.0.0.1:9/run' } }, 'default.url'],
    [{ Coding: { kind: 'openai', base_url: 'https://key:SKPASS@api.example/v1', model: 'm' } }, 'Coding.base_url']
  ] as const) {
    const error = (() => { try { parseAgentsConfig(JSON.stringify(spec), {}) } catch (err) { return err as Error } })()
    t.match(error?.message, new RegExp(`^TASK_AGENTS\\.${field.replace('.', '\\.')}: must not hold a user name or password`, 'u'))
    t.notMatch(error?.message, /PASS/u, 'the password is not in the message')
  }
  t.doesNotThrow(() => parseAgentsConfig('{"default": {"kind": "webhook", "url": "http://127.0.0.1:9/run?team=blue"}}', {}), 'a plain URL with a query is fine')
})

t.test('parseAgentsConfig: api_key_env and headers_env must name variables that are set (in the env given)', async (t) => {
  const openai = (name: string): object => ({ Coding: { kind: 'openai', base_url: 'http://x', model: 'm', api_key_env: name } })
  rejects(t, openai('LLM_KEY'), /^TASK_AGENTS\.Coding\.api_key_env: environment variable LLM_KEY is not set/)
  rejects(t, openai('LLM_KEY'), /^TASK_AGENTS\.Coding\.api_key_env: environment variable LLM_KEY is not set/, { LLM_KEY: '' })
  t.match(parseAgentsConfig(openai('LLM_KEY'), { LLM_KEY: 'sk-1' }).Coding, { api_key_env: 'LLM_KEY' })
  const webhook = { default: { kind: 'webhook', url: 'http://x', headers_env: 'HOOK_HEADERS' } }
  rejects(t, webhook, /^TASK_AGENTS\.default\.headers_env: environment variable HOOK_HEADERS is not set/)
  t.match(parseAgentsConfig(webhook, { HOOK_HEADERS: '{}' }).default, { headers_env: 'HOOK_HEADERS' })
})

t.test('boot (in process): a bad spec, an unset api_key_env or headers_env that is not a JSON object fail the build, naming the key', async (t) => {
  const attempts: Array<[Parameters<typeof buildApp>[0], RegExp]> = [
    [{ agents: { Coding: { kind: 'webhook' } } }, /TASK_AGENTS\.Coding\.url/],
    [{ config: { TASK_AGENTS: '{"Analysis": {"kind": "echo", "timeout_ms": 0}}' } }, /TASK_AGENTS\.Analysis\.timeout_ms/],
    [{ agents: { default: { kind: 'openai', base_url: 'http://x', model: 'm', api_key_env: 'UNSET_KEY' } }, env: {} }, /TASK_AGENTS\.default\.api_key_env: environment variable UNSET_KEY is not set/],
    [{ agents: { default: { kind: 'webhook', url: 'http://x', headers_env: 'H' } }, env: { H: 'Bearer not-json' } }, /TASK_AGENTS\.default\.headers_env: .*JSON object/],
    [{ agents: { default: { kind: 'webhook', url: 'http://x', headers_env: 'H' } }, env: { H: '{"x-n": 1}' } }, /TASK_AGENTS\.default\.headers_env: .*string headers/]
  ]
  for (const [options, message] of attempts) {
    const dir = await tempDir(t)
    await t.rejects(buildApp({ readEnvironment: false, ...options, config: { TASK_STORAGE_DIR: dir, ...options?.config } }), message)
  }
})

t.test('boot (in process): a header fetch could not send fails the build without showing its value, which would otherwise be in every task\'s error', async (t) => {
  const secret = 'sk-secret-4711'
  const attempts: Array<[Parameters<typeof buildApp>[0], RegExp]> = [
    [{ agents: { default: { kind: 'webhook', url: 'http://x', headers_env: 'H' } }, env: { H: JSON.stringify({ authorization: `Bearer ${secret}\nx-injected: 1` }) } }, /TASK_AGENTS\.default\.headers_env: environment variable H: the value of header 'authorization' holds a character a header cannot carry/],
    [{ agents: { default: { kind: 'webhook', url: 'http://x', headers_env: 'H' } }, env: { H: JSON.stringify({ [`x ${secret}`]: 'v' }) } }, /TASK_AGENTS\.default\.headers_env: environment variable H: a header name is not a valid token/],
    [{ agents: { Coding: { kind: 'openai', base_url: 'http://x', model: 'm', api_key_env: 'K' } }, env: { K: `${secret}\r\nx-injected: 1` } }, /TASK_AGENTS\.Coding\.api_key_env: environment variable K holds a character a header cannot carry/],
    [{ agents: { Coding: { kind: 'openai', base_url: 'http://x', model: 'm', api_key_env: 'K' } }, env: { K: `${secret}€` } }, /TASK_AGENTS\.Coding\.api_key_env: environment variable K holds/],
    // Headers the client frames the request with: refused at every call, or (host) dropped, or (content-length) misframing the body.
    ...['Keep-Alive', 'Expect', 'Upgrade', 'Transfer-Encoding', 'Connection', 'Content-Length', 'Host'].map((name): [Parameters<typeof buildApp>[0], RegExp] =>
      [{ agents: { default: { kind: 'webhook', url: 'http://x', headers_env: 'H' } }, env: { H: JSON.stringify({ [name]: secret }) } }, new RegExp(`TASK_AGENTS\\.default\\.headers_env: environment variable H: header '${name}' is set by the HTTP client itself`)])
  ]
  for (const [options, message] of attempts) {
    const dir = await tempDir(t)
    const error = await buildApp({ readEnvironment: false, ...options, config: { TASK_STORAGE_DIR: dir } }).then(async (app) => { await app.close(); return null }, (err: Error) => err)
    t.match(error?.message, message)
    t.notMatch(error?.message, secret, 'the value is not shown')
  }
  // A value fetch accepts boots (Latin-1, tabs, and whitespace around it, which fetch trims: a key file's last newline).
  const dir = await tempDir(t)
  const app = await buildApp({ readEnvironment: false, agents: { default: { kind: 'webhook', url: 'http://x', headers_env: 'H' } }, env: { H: JSON.stringify({ 'x-team': ' caf\u00e9\tbar \n' }) }, config: { TASK_STORAGE_DIR: dir } })
  await app.close()
})

t.test('boot (in process): after a refused agent config, the same folder can be used again in the same process', async (t) => {
  const dir = await tempDir(t)
  await t.rejects(buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir }, agents: { default: { kind: 'nope' } } }), /TASK_AGENTS\.default\.kind/)
  let error: unknown = null
  try {
    await build(t, { dir })
  } catch (err) {
    error = err
  }
  t.equal((error as { code?: string } | null)?.code, undefined, 'no storage lock left behind by the failed build')
})

t.test('boot (real process): a bad TASK_AGENTS or an unset api_key_env exits 1 naming the key; unset TASK_AGENTS warns and uses echo', async (t) => {
  const { dir, spawnRaw, start } = await scratch(t)
  const storage = join(dir, 'tasks')

  const bad = spawnRaw(baseEnv({ TASK_STORAGE_DIR: storage, PORT: String(await freePort()), TASK_AGENTS: '{"Coding": {"kind": "webhook", "url": "http://x", "timeout_ms": "soon"}}' }))
  t.same(await exitWithin(bad, 20_000), { code: 1, signal: null }, 'exit code 1')
  t.match(bad.stderr(), /TASK_AGENTS\.Coding\.timeout_ms/, 'stderr names the key and field')

  const noKey = spawnRaw(baseEnv({ TASK_STORAGE_DIR: storage, PORT: String(await freePort()), TASK_AGENTS: '{"default": {"kind": "openai", "base_url": "http://x", "model": "m", "api_key_env": "TASKVAULT_TEST_UNSET_KEY"}}' }))
  t.same(await exitWithin(noKey, 20_000), { code: 1, signal: null }, 'exit code 1')
  t.match(noKey.stderr(), /TASK_AGENTS\.default\.api_key_env: environment variable TASKVAULT_TEST_UNSET_KEY is not set/)

  const plain = await start({ TASK_STORAGE_DIR: storage })
  const warning = logLines(plain.stdout()).find((line) => /TASK_AGENTS is not set/.test(String(line.msg)))
  t.match(warning, { level: 40 }, 'a startup warning (level warn) says the echo demo agent answers')
  await call(plain, 'POST', `${API}/create`, { session_id: 'echoed', tasks: [{ instruction: 'repeat me' }] })
  t.match((await call(plain, 'POST', `${API}/execute`, { session_id: 'echoed' })).body, { status: 'Completed', result: 'repeat me' })
})

t.test('boot (real process): TASK_AGENTS without a "default" warns, and a task of a type it leaves out fails naming the missing agent (never echoed as done)', async (t) => {
  const { dir, start } = await scratch(t)
  const server = await start({ TASK_STORAGE_DIR: join(dir, 'tasks'), TASK_AGENTS: JSON.stringify({ Coding: { kind: 'command', argv: fixture('report.js') } }) })
  const warning = logLines(server.stdout()).find((line) => /TASK_AGENTS has no "default"/.test(String(line.msg)))
  t.match(warning, { level: 40, task_types: ['Analysis', 'Research', 'Reasoning', 'General'] }, 'a startup warning names the types sent nowhere')
  t.match(logLines(server.stdout()).find((line) => line.msg === 'Agents by task type'), { agents: { Coding: 'command', default: 'none' } })
  await call(server, 'POST', `${API}/create`, { session_id: 'unrouted', tasks: [{ instruction: 'write code', task_type: 'Coding' }, { instruction: 'look it up', task_type: 'Research' }] })
  t.equal((await call(server, 'POST', `${API}/execute`, { session_id: 'unrouted' })).body.status, 'Completed', 'the configured type runs')
  t.match((await call(server, 'POST', `${API}/execute`, { session_id: 'unrouted' })).body, {
    status: 'Failed', error: 'no agent for Research tasks: TASK_AGENTS has no "Research" and no "default" entry'
  })
})

t.test('boot (real process): TASK_AGENTS=@agents.json is read relative to the working folder', async (t) => {
  const { dir, start } = await scratch(t)
  await writeFile(join(dir, 'agents.json'), JSON.stringify({ default: { kind: 'command', argv: fixture('report.js') } }))
  const server = await start({ TASK_STORAGE_DIR: join(dir, 'tasks'), TASK_AGENTS: '@agents.json' })
  t.notOk(logLines(server.stdout()).some((line) => /TASK_AGENTS is not set/.test(String(line.msg))), 'no echo warning')
  t.match(logLines(server.stdout()).find((line) => line.msg === 'Agents by task type'), { agents: { default: 'command' } }, 'the routing is logged')
  await call(server, 'POST', `${API}/create`, { session_id: 'from-file', tasks: [{ instruction: 'hello file' }] })
  const res = await call(server, 'POST', `${API}/execute`, { session_id: 'from-file' })
  t.equal(res.body.status, 'Completed')
  t.match(JSON.parse(res.body.result), { stdin: 'hello file', env: { SESSION_ID: 'from-file', TASK_TYPE: 'General' } })
})

t.test('programmatic executors take precedence over TASK_AGENTS, key by key', async (t) => {
  const coder = await fakeAgent(t, () => ok('from the Coding webhook'))
  const fallback = await fakeAgent(t, () => ok('from the default webhook'))
  const app = await build(t, {
    agents: { Coding: { kind: 'webhook', url: coder.base }, Analysis: { kind: 'webhook', url: coder.base }, default: { kind: 'webhook', url: fallback.base } },
    executors: {
      Coding: async (task) => ({ result: `function: ${task.instruction}`, confidence: 0.6 }),
      Research: { run: async () => ({ result: 'research function' }) }
    }
  })
  t.match(app.taskManager.agents, { Coding: { kind: 'function' }, Analysis: { kind: 'webhook' }, Research: { kind: 'function' }, default: { kind: 'webhook' } })
  await createTasks(app, 'mixed', [
    { instruction: 'code', task_type: 'Coding' },
    { instruction: 'analyse', task_type: 'Analysis' },
    { instruction: 'look up', task_type: 'Research' },
    { instruction: 'other', task_type: 'General' }
  ])
  const res = await post(app, '/execute-all', { session_id: 'mixed' })
  t.same(res.json().results.map((r: { result: string }) => r.result),
    ['function: code', 'from the Coding webhook', 'research function', 'from the default webhook'])
  t.equal(coder.requests.length, 1, 'the Coding webhook only got the Analysis task')
  t.equal(coder.requests[0]!.json.task.task_type, 'Analysis')
  t.equal(fallback.requests.length, 1)

  const onlyDefault = await build(t, { agents: { Coding: { kind: 'webhook', url: coder.base } }, executors: { default: async () => ({ result: 'default function' }) } })
  t.match(onlyDefault.taskManager.agents, { Coding: { kind: 'webhook' }, default: { kind: 'function' } })
})

t.test('executor definitions carry their own call policy; a plain function gets one attempt', async (t) => {
  const dir = await tempDir(t)
  let flakyCalls = 0
  let plainCalls = 0
  const flaky: Executor = async () => {
    flakyCalls++
    if (flakyCalls < 3) throw new AgentError('overloaded', { transient: true })
    return { result: 'third call', confidence: 0.4 }
  }
  const app = await build(t, {
    dir,
    executors: {
      Coding: { run: flaky, max_attempts: 3, backoff_ms: 5 },
      Research: { run: (_task, { signal }) => new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason))), timeout_ms: 100 },
      Analysis: async () => ({ result: 'x', confidence: 2 }),
      default: async () => { plainCalls++; throw new AgentError('overloaded', { transient: true }) }
    }
  })
  const calls = recordCalls(app)
  await createTasks(app, 'policy', [
    { instruction: 'a', task_type: 'Coding' },
    { instruction: 'b', task_type: 'Research' },
    { instruction: 'c', task_type: 'Analysis' },
    { instruction: 'd', task_type: 'General' }
  ])
  const [retried, timedOut, invalid, once] = (await post(app, '/execute-all', { session_id: 'policy' })).json().results
  t.match(retried, { status: 'Completed', result: 'third call', confidence: 0.4 })
  t.match(timedOut, { status: 'Failed', error: /timed out after 100 ms/ })
  t.match(invalid, { status: 'Failed', error: /confidence/ }, 'a result outside the contract fails the call')
  t.match(once, { status: 'Failed', error: 'overloaded' })
  t.equal(plainCalls, 1, 'a plain function has max_attempts 1')
  t.same((await storedTasks(dir, 'policy')).map((task) => task.attempts), [3, 1, 1, 1])
  t.same(calls.map((c) => `${c.agent}:${c.outcome}`), ['Coding:error', 'Coding:error', 'Coding:ok', 'Research:timeout', 'Analysis:error', 'default:error'])
})

t.test('resolveAgents: echo by default; a definition without run is refused', async (t) => {
  const routes = resolveAgents()
  t.match(routes.default, { key: 'default', kind: 'echo', policy: DEFAULT_POLICY })
  t.same(DEFAULT_POLICY, { timeout_ms: 120_000, max_attempts: 1, backoff_ms: 1000, max_backoff_ms: 60_000 })
  t.throws(() => resolveAgents({ Coding: { max_attempts: 2 } as never }), TypeError)
})

t.test('retryDelay: doubling backoff with equal jitter, Retry-After when longer, capped by max_backoff_ms', async (t) => {
  const policy = { timeout_ms: 1000, max_attempts: 5, backoff_ms: 1000, max_backoff_ms: 60_000 }
  t.equal(retryDelay(policy, 1, null, () => 0), 500, 'half fixed')
  t.equal(retryDelay(policy, 1, null, () => 1), 1000, 'up to the full backoff')
  t.equal(retryDelay(policy, 2, null, () => 1), 2000, 'doubles')
  t.equal(retryDelay(policy, 3, null, () => 0), 2000)
  t.equal(retryDelay(policy, 20, null, () => 1), 60_000, 'capped')
  t.equal(retryDelay(policy, 1, 5000, () => 0), 5000, 'Retry-After longer than the backoff wins')
  t.equal(retryDelay(policy, 1, 10, () => 1), 1000, 'a shorter Retry-After does not shorten the backoff')
  t.equal(retryDelay({ ...policy, max_backoff_ms: 3000 }, 1, 3_600_000, () => 0), 3000, 'Retry-After capped too')
  t.equal(retryDelay({ ...policy, backoff_ms: 0 }, 1, null), 0)
})

t.test('AgentError: an executor\'s retryAfterMs that is no wait (NaN, Infinity, negative) is taken as none, so the backoff applies', async (t) => {
  const policy = { timeout_ms: 1000, max_attempts: 5, backoff_ms: 1000, max_backoff_ms: 60_000 }
  for (const value of [Number.NaN, Number.POSITIVE_INFINITY, -5]) {
    const err = new AgentError('busy', { transient: true, retryAfterMs: value })
    t.equal(err.retryAfterMs, null, String(value))
    t.equal(retryDelay(policy, 1, err.retryAfterMs, () => 1), 1000, `${String(value)}: the backoff`)
  }
  t.equal(new AgentError('busy', { transient: true, retryAfterMs: 2500 }).retryAfterMs, 2500, 'a real wait is kept')
})

t.test('parseRetryAfter: seconds or an HTTP date; null when absent or unreadable', async (t) => {
  const now = Date.parse('2026-01-01T00:00:00Z')
  t.equal(parseRetryAfter('1', now), 1000)
  t.equal(parseRetryAfter(' 120 ', now), 120_000)
  t.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now), 30_000)
  t.equal(parseRetryAfter('Wed, 31 Dec 2025 23:00:00 GMT', now), 0, 'a date in the past: no wait')
  t.equal(parseRetryAfter(null, now), null)
  t.equal(parseRetryAfter('', now), null)
  t.equal(parseRetryAfter('soon', now), null)
  t.equal(parseRetryAfter('9'.repeat(400), now), Number.MAX_SAFE_INTEGER, 'more seconds than a number holds: the longest wait, not none')
})

t.test('confidenceFrom: exp(mean logprob); null without usable logprobs', async (t) => {
  t.equal(confidenceFrom([{ logprob: 0 }, { logprob: 0 }]), 1)
  t.ok(Math.abs(confidenceFrom([{ logprob: Math.log(0.5) }, { logprob: Math.log(0.125) }])! - 0.25) < 1e-12, 'geometric mean of probabilities')
  t.equal(confidenceFrom([]), null)
  t.equal(confidenceFrom(null), null)
  t.equal(confidenceFrom(undefined), null)
  t.equal(confidenceFrom([{ logprob: -1 }, { logprob: 'x' }]), null)
  t.equal(confidenceFrom([{ logprob: -Infinity }]), null)
})

t.test('a programmatic executor\'s call policy is held to the same bounds as TASK_AGENTS; undefined fields take the defaults', async (t) => {
  const run = async (): Promise<{ result: string }> => ({ result: 'x' })
  t.match(resolveAgents({ default: { run, timeout_ms: undefined, max_attempts: 3 } }, undefined, {}).default.policy, { timeout_ms: 120_000, max_attempts: 3 })
  for (const [policy, message] of [
    [{ timeout_ms: Infinity }, /^executors\.default\.timeout_ms: Expected integer/u],
    [{ timeout_ms: 2 ** 31 }, /^executors\.default\.timeout_ms: Expected integer to be less or equal to 2147483647/u],
    [{ max_attempts: 0 }, /^executors\.default\.max_attempts: Expected integer to be greater or equal to 1/u],
    [{ backoff_ms: -1 }, /^executors\.default\.backoff_ms/u],
    // A misspelt field is refused, not passed over for the default.
    [{ max_attempt: 3 }, /^executors\.default\.max_attempt: Unexpected property/u]
  ] as const) {
    t.throws(() => resolveAgents({ default: { run, ...policy } }, undefined, {}), { code: 'INVALID_AGENT_CONFIG', message }, JSON.stringify(policy))
  }
  await t.rejects(build(t, { executors: { Coding: { run, max_attempts: 0 } } }), /executors\.Coding\.max_attempts/u, 'the boot fails naming it')
})
