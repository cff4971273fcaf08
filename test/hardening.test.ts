/**
 * Hardening (issue 5): API keys, input limits and result truncation, the single-writer lock
 * of the storage folder, and symlinks or hostile ids that must never lead outside it.
 * In-process through `app.inject`, except one real second server process for the lock.
 */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import http from 'node:http'
import { lstat, lutimes, mkdir, readFile, readdir, readlink, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { hostname, tmpdir } from 'node:os'
import { join, sep } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseEnv } from 'node:util'
import Fastify, { type FastifyInstance, type FastifyServerOptions, type InjectOptions, type LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { buildApp } from '../app.js'
import taskvault from '../index.js'
import { FileSessionStore } from '../services/store/file-store.js'
import { LOCK_FILE, releaseHeldSync } from '../services/store/storage-lock.js'
import { AgentError, StorageLockedError } from '../services/errors.js'
import { processSlot } from '../services/pid.js'
import type { SessionFile } from '../services/session/session.js'
import { MARKER_FILE } from '../services/store/storage-folder.js'
import { MAX_SESSION_FILE_BYTES } from '../services/store/read-batch.js'
import { droppedEnvLines } from '../services/setting-file.js'
import { storedSession } from './session-fixtures.js'
import { API, build, get, markAsTaskvault, memoryLog, post, tempDir, waitFor, type LogLine, type TestContext } from './helper.js'
import { faultFs } from './faults.js'
import { EXIT_TIMEOUT_MS, exitWithin, freePort, spawnServer } from './server-process.js'

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/** The logger production uses (server.ts), writing to memory. */
function productionLogger (stream: { write: (chunk: string) => void }, level = 'trace'): FastifyServerOptions['logger'] {
  return { level, stream, redact: ['req.headers.authorization'] } as FastifyServerOptions['logger']
}

/** Builds and readies an app on `dir` without a teardown (for apps expected to fail or closed by hand). */
async function open (dir: string, config: Record<string, string | number | boolean> = {}, logger?: FastifyServerOptions['logger']): Promise<FastifyInstance> {
  const app = await buildApp({ readEnvironment: false, logger, config: { TASK_STORAGE_DIR: dir, TASK_SHUTDOWN_GRACE_MS: 2000, ...config } })
  await app.ready()
  return app
}

/** The error `open` fails with, or null (the app, if it opened, is closed again). */
async function openError (dir: string, config: Record<string, string | number | boolean> = {}): Promise<unknown> {
  try {
    const app = await open(dir, config)
    await app.close()
    return null
  } catch (err) {
    return err
  }
}

/** Checks Fastify's error shape and returns the parsed body. */
function errorShape (t: TapTest, res: { statusCode: number, body: string }, status: number, name: string): { statusCode: number, code?: string, error: string, message: string } {
  t.equal(res.statusCode, status, `${name}: status ${status}`)
  let body: { statusCode: number, code?: string, error: string, message: string }
  try {
    body = JSON.parse(res.body)
  } catch {
    t.fail(`${name}: body is not JSON: ${res.body}`)
    return { statusCode: 0, error: '', message: '' }
  }
  t.equal(body.statusCode, status, `${name}: body.statusCode`)
  t.type(body.error, 'string', `${name}: body.error`)
  t.type(body.message, 'string', `${name}: body.message`)
  t.not(body.message, '', `${name}: a message is given`)
  return body
}

/** A request over real HTTP with the path sent byte for byte (inject resolves dot segments first). */
async function rawRequest (port: number, method: string, path: string): Promise<{ statusCode: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ statusCode: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** A pid that is certainly not running: a child that has already exited. */
function deadPid (): number {
  const child = spawnSync(process.execPath, ['-e', ''])
  if (typeof child.pid !== 'number') throw new Error('could not spawn a short-lived child')
  return child.pid
}

async function readSession (dir: string, id: string): Promise<SessionFile> {
  return JSON.parse(await readFile(join(dir, `${id}.json`), 'utf8')) as SessionFile
}

/** Names in a folder, sorted, but for the `.taskvault` marker a storage folder always has. */
async function names (dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name !== MARKER_FILE).sort()
}

function bearer (key: string): Record<string, string> {
  return { authorization: `Bearer ${key}` }
}

/** A subtest's type (the last overload of t.test takes only the callback). */
type TapTest = Parameters<Parameters<typeof t.test>[0]>[0]

// ---------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------

/** Every /api route, in an order where each succeeds with a valid key. */
function apiRoutes (id: string): Array<InjectOptions & { name: string, ok: number }> {
  return [
    { name: 'create', method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: '1. a\n2. b' }, ok: 200 },
    { name: 'execute', method: 'POST', url: `${API}/execute`, payload: { session_id: id }, ok: 200 },
    { name: 'execute-all', method: 'POST', url: `${API}/execute-all`, payload: { session_id: id }, ok: 200 },
    { name: 'progress', method: 'GET', url: `${API}/progress?session_id=${id}`, ok: 200 },
    { name: 'list one', method: 'GET', url: `${API}/list?session_id=${id}`, ok: 200 },
    { name: 'list all', method: 'GET', url: `${API}/list?session_id=all`, ok: 200 },
    { name: 'stats', method: 'GET', url: `${API}/stats`, ok: 200 },
    { name: 'delete', method: 'DELETE', url: `${API}/sessions/${id}`, ok: 204 }
  ]
}

t.test('auth: every /api route answers 401 in the error shape without a valid key', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_API_KEYS: 'k1,k2' } })
  const bad: Array<[string, Record<string, string>]> = [
    ['no header', {}],
    ['wrong key', bearer('k3')],
    ['a prefix of a key', bearer('k')],
    ['both keys as one', bearer('k1,k2')],
    ['wrong scheme (Basic)', { authorization: `Basic ${Buffer.from('k1:').toString('base64')}` }],
    ['Basic with the key itself', { authorization: 'Basic k1' }],
    ['empty Bearer', { authorization: 'Bearer ' }],
    ['bare Bearer', { authorization: 'Bearer' }],
    ['key without scheme', { authorization: 'k1' }],
    ['two tokens', { authorization: 'Bearer k1 k2' }]
  ]
  for (const route of apiRoutes('guarded')) {
    for (const [label, headers] of bad) {
      const { name, ok: _ok, ...request } = route
      const res = await app.inject({ ...request, headers })
      const body = errorShape(t, res, 401, `${name} / ${label}`)
      t.equal(body.error, 'Unauthorized', `${name} / ${label}: error`)
      t.equal(res.headers['www-authenticate'], 'Bearer', `${name} / ${label}: www-authenticate`)
    }
  }
  // Auth runs before the body is read: no parse or size answer leaks to a caller without a key.
  const malformed = await app.inject({ method: 'POST', url: `${API}/create`, headers: { 'content-type': 'application/json' }, payload: '{"session_id":' })
  errorShape(t, malformed, 401, 'malformed JSON without a key')
  const huge = await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'x', instructions: 'x'.repeat(2 * 1024 * 1024) } })
  errorShape(t, huge, 401, 'oversized body without a key')
  const head = await app.inject({ method: 'HEAD', url: `${API}/stats` })
  t.equal(head.statusCode, 401, 'HEAD on a GET route needs the key too')
  const unknownId = await app.inject({ method: 'DELETE', url: `${API}/sessions/nope` })
  t.equal(unknownId.statusCode, 401, 'an unknown session is not revealed without a key')

  t.same(await names(dir), [LOCK_FILE], 'a refused create wrote nothing to the storage folder')
  const stats = await app.inject({ method: 'GET', url: `${API}/stats`, headers: bearer('k1') })
  t.equal(stats.statusCode, 200)
  t.equal(stats.json().total_sessions, 0, 'a refused create changed nothing in memory')
})

t.test('auth: both configured keys work on every route; /health and /ready need none', async (t) => {
  const app = await build(t, { config: { TASK_API_KEYS: 'k1,k2' } })
  for (const key of ['k1', 'k2']) {
    for (const route of apiRoutes(`with_${key}`)) {
      const { name, ok, ...request } = route
      const res = await app.inject({ ...request, headers: bearer(key) })
      t.equal(res.statusCode, ok, `${name} with ${key}: ${res.body}`)
    }
  }
  const lower = await app.inject({ method: 'GET', url: `${API}/stats`, headers: { authorization: 'bearer k2' } })
  t.equal(lower.statusCode, 200, 'the scheme is case-insensitive (RFC 7235)')
  for (const url of ['/health', '/ready']) {
    const res = await app.inject({ method: 'GET', url })
    t.equal(res.statusCode, 200, `${url} without a key`)
    const wrong = await app.inject({ method: 'GET', url, headers: bearer('nope') })
    t.equal(wrong.statusCode, 200, `${url} with a wrong key`)
  }
})

t.test('auth: with no keys configured the API is open', async (t) => {
  const app = await build(t)
  for (const route of apiRoutes('open')) {
    const { name, ok, ...request } = route
    t.equal((await app.inject(request)).statusCode, ok, `${name} without a key`)
  }
  t.equal((await app.inject({ method: 'GET', url: `${API}/stats`, headers: bearer('anything') })).statusCode, 200, 'any header is ignored')
})

t.test('auth: a TASK_API_KEYS that names no key, or a key no header can carry, stops the boot without printing it', async (t) => {
  const dir = await tempDir(t)
  for (const [value, why] of [[',', 'only a comma'], [' , ', 'commas and spaces']] as const) {
    const err = await openError(dir, { TASK_API_KEYS: value })
    t.match(err, { code: 'INVALID_API_KEYS', message: /^TASK_API_KEYS: names no key/ }, `${why}: not an open API`)
  }
  for (const [key, why] of [['two words', 'a space'], ['caf\u00e9-key', 'a character outside ASCII'], ['zero\u200bwidth', 'a zero-width space'], ['tab\tkey', 'a tab']] as const) {
    const err = await openError(dir, { TASK_API_KEYS: `good-key,${key}` }) as Error | null
    t.match(err, { code: 'INVALID_API_KEYS', message: /^TASK_API_KEYS: key 2 holds a space, a control character or a character outside ASCII/ }, why)
    t.notOk(err?.message.includes(key), `${why}: the key is not in the message`)
  }
  t.equal(await openError(dir, { TASK_API_KEYS: ' k1 , k2 ' }), null, 'spaces around keys are trimmed')
  t.equal(await openError(dir, { TASK_API_KEYS: '  ' }), null, 'a blank setting leaves the API open, as documented')
  // Embedded, the option is named.
  const { default: Fastify } = await import('fastify')
  const { taskvault } = await import('../index.js')
  const host = Fastify()
  t.teardown(() => host.close())
  await t.rejects(async () => { await host.register(taskvault, { storageDir: dir, apiKeys: [' '] }).ready() }, { code: 'INVALID_OPTIONS', message: /option 'apiKeys': names no key/ }, 'the apiKeys option')
})

t.test('auth: keys never appear in the log, even at trace level', async (t) => {
  const key = `sk-live-${Date.now().toString(36)}-secret`
  const wrong = `sk-wrong-${Date.now().toString(36)}-guess`
  const log = memoryLog()
  const app = await build(t, { logger: productionLogger(log.stream), config: { TASK_API_KEYS: `other,${key}`, LOG_LEVEL: 'trace' } })
  const requests: InjectOptions[] = [
    { method: 'POST', url: `${API}/create`, headers: bearer(key), payload: { session_id: 'visible_marker', instructions: 'a' } },
    { method: 'POST', url: `${API}/execute`, headers: bearer(key), payload: { session_id: 'visible_marker' } },
    { method: 'GET', url: `${API}/list?session_id=visible_marker`, headers: bearer(key) },
    { method: 'GET', url: `${API}/progress?session_id=missing`, headers: bearer(key) },
    { method: 'POST', url: `${API}/create`, headers: bearer(key), payload: { session_id: '../bad', instructions: 'a' } },
    { method: 'POST', url: `${API}/create`, headers: { ...bearer(key), 'content-type': 'application/json' }, payload: '{"broken":' },
    { method: 'GET', url: `${API}/stats`, headers: bearer(wrong) },
    { method: 'GET', url: `${API}/stats`, headers: { authorization: `Basic ${key}` } },
    { method: 'GET', url: '/health', headers: bearer(key) }
  ]
  for (const request of requests) await app.inject(request)
  await app.close()
  const text = log.raw.join('')
  t.ok(text.includes('visible_marker'), 'the log does capture request details (so this test can see a leak)')
  t.ok(log.lines().some((line) => line.msg === 'incoming request'), 'requests are logged')
  t.notOk(text.includes(key), 'the valid key is in no log line')
  t.notOk(text.includes(wrong), 'a wrong key is in no log line')
  t.notOk(text.includes(Buffer.from(key).toString('base64')), 'nor its base64 form')
})

t.test('auth: a non-loopback HOST without keys logs a warning naming TASK_API_KEYS', async (t) => {
  const warnings = async (config: Record<string, string>): Promise<LogLine[]> => {
    const log = memoryLog()
    const app = await build(t, { logger: productionLogger(log.stream, 'info'), config })
    await app.close()
    return log.lines().filter((line) => line.level >= 40 && /TASK_API_KEYS/.test(line.msg ?? ''))
  }
  const open = await warnings({ HOST: '0.0.0.0' })
  t.equal(open.length, 1, 'HOST 0.0.0.0 with no keys: one warning')
  t.equal(open[0]?.level, 40, 'at warn level')
  t.equal(open[0]?.host, '0.0.0.0', 'naming the host')
  t.equal((await warnings({ HOST: '::' })).length, 1, 'HOST :: with no keys warns too')
  t.equal((await warnings({ HOST: '10.1.2.3' })).length, 1, 'a private address warns too')
  t.equal((await warnings({ HOST: '127.0.0.1' })).length, 0, 'HOST 127.0.0.1: no warning')
  t.equal((await warnings({ HOST: 'localhost' })).length, 0, 'HOST localhost: no warning')
  t.equal((await warnings({ HOST: '::1' })).length, 0, 'HOST ::1: no warning')
  t.equal((await warnings({ HOST: '::ffff:127.0.0.1' })).length, 0, 'HOST ::ffff:127.0.0.1 (IPv4-mapped loopback): no warning')
  t.equal((await warnings({ HOST: '0:0:0:0:0:0:0:1' })).length, 0, 'HOST ::1 written out: no warning')
  t.equal((await warnings({ HOST: '::ffff:10.1.2.3' })).length, 1, 'an IPv4-mapped private address warns')
  t.equal((await warnings({ HOST: '0.0.0.0', TASK_API_KEYS: 'k1' })).length, 0, 'HOST 0.0.0.0 with a key: no warning')
})

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

t.test('URLs the router refuses answer in the error shape, without echoing the URL, before and after auth', async (t) => {
  for (const keys of ['', 'k-1']) {
    const app = await build(t, { config: { TASK_API_KEYS: keys } })
    const long = await app.inject({ method: 'DELETE', url: `${API}/sessions/${'a'.repeat(4097)}` })
    t.equal(long.statusCode, 414)
    t.same(long.json(), { statusCode: 414, error: 'URI Too Long', message: 'a part of the path is longer than 4096 characters', code: 'FST_ERR_MAX_PARAM_LENGTH' })
    const bad = await app.inject({ method: 'DELETE', url: `${API}/sessions/%zz` })
    t.equal(bad.statusCode, 400)
    t.match(bad.json(), { statusCode: 400, error: 'Bad Request', message: /not valid/, code: 'FST_ERR_BAD_URL' })
    t.notMatch(bad.body, /%zz/, 'the URL is not echoed')
  }
})

t.test('a path out of the dashboard\'s folder answers 403 with a code, like every other error', async (t) => {
  const app = await build(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  // Real HTTP: inject would resolve the dots before the router saw them.
  const res = await new Promise<{ status: number, body: string }>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/dashboard/../package.json' }, (response) => {
      let body = ''
      response.setEncoding('utf8').on('data', (chunk: string) => { body += chunk }).on('end', () => resolve({ status: response.statusCode ?? 0, body }))
    }).on('error', reject)
  })
  t.equal(res.status, 403)
  t.same(JSON.parse(res.body), { statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: 'Forbidden' }, 'the error shape with a code')
})

t.test('limits: TASK_MAX_INSTRUCTION_BYTES counts UTF-8 bytes', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_MAX_INSTRUCTION_BYTES: 10 } })
  const create = (instruction: string): Promise<LightMyRequestResponse> => post(app, '/create', { session_id: 'lim', tasks: [{ instruction }] })

  t.equal((await create('a'.repeat(10))).statusCode, 200, 'exactly at the limit: 200')
  const over = errorShape(t, await create('a'.repeat(11)), 400, 'one byte over')
  t.equal(over.code, 'LIMIT_EXCEEDED')
  t.match(over.message, /TASK_MAX_INSTRUCTION_BYTES/, 'the message names the setting')
  t.equal((await create('€€€a')).statusCode, 200, '4 characters, 10 bytes: 200')
  t.equal(errorShape(t, await create('€€€€'), 400, '4 characters, 12 bytes').code, 'LIMIT_EXCEEDED')
  t.equal(errorShape(t, await create('aaaaaaa🚀'), 400, '8 characters (9 UTF-16 units), 11 bytes').code, 'LIMIT_EXCEEDED')
  t.equal((await create('aaaaaa🚀')).statusCode, 200, 'an emoji at the limit: 10 bytes')
  // Free text is limited per parsed task.
  t.equal((await post(app, '/create', { session_id: 'lim', instructions: '1. aaaaaaaaaa\n2. bbbbbbbbbbb' })).statusCode, 400, 'a parsed task over the limit')
  // A request with one task over the limit adds none of its tasks.
  t.equal((await post(app, '/create', { session_id: 'lim', tasks: [{ instruction: 'ok' }, { instruction: 'x'.repeat(11) }] })).statusCode, 400)
  const list = (await get(app, '/list?session_id=lim')).json()
  t.same(list.tasks.map((task: { instruction: string }) => task.instruction), ['a'.repeat(10), '€€€a', 'aaaaaa🚀'], 'only accepted tasks are stored')
  t.equal((await readSession(dir, 'lim')).session.tasks.length, 3, 'and only they are on disk')
  t.equal((await post(app, '/create', { session_id: 'fresh', tasks: [{ instruction: 'x'.repeat(11) }] })).statusCode, 400)
  t.notOk(existsSync(join(dir, 'fresh.json')), 'a refused new session leaves no file')
})

t.test('limits: TASK_MAX_TASKS_PER_SESSION', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_MAX_TASKS_PER_SESSION: 3 } })
  t.equal((await post(app, '/create', { session_id: 'cap', instructions: '1. a\n2. b' })).statusCode, 200)
  const over = errorShape(t, await post(app, '/create', { session_id: 'cap', instructions: '1. c\n2. d' }), 400, 'appending past the limit')
  t.equal(over.code, 'LIMIT_EXCEEDED')
  t.match(over.message, /TASK_MAX_TASKS_PER_SESSION/)
  t.equal((await get(app, '/progress?session_id=cap')).json().total, 2, 'nothing added in memory')
  t.equal((await readSession(dir, 'cap')).session.tasks.length, 2, 'nothing added on disk')
  t.equal((await post(app, '/create', { session_id: 'cap', instructions: 'c' })).statusCode, 200, 'up to the limit is fine')
  t.equal((await post(app, '/create', { session_id: 'cap', instructions: 'd' })).statusCode, 400, 'one more is not')
  t.equal((await readSession(dir, 'cap')).session.tasks.length, 3)
  t.equal((await post(app, '/create', { session_id: 'big', tasks: [{ instruction: 'a' }, { instruction: 'b' }, { instruction: 'c' }, { instruction: 'd' }] })).statusCode, 400, 'a new session over the limit')
  t.equal((await get(app, '/progress?session_id=big')).statusCode, 404, 'is not created')
  t.notOk(existsSync(join(dir, 'big.json')))
})

t.test('limits: a task list is held to TASK_MAX_TASKS_PER_SESSION like free text, past 1,000 when it is set higher', async (t) => {
  const app = await build(t, { config: { TASK_MAX_TASKS_PER_SESSION: 1500 } })
  const list = (n: number): Array<{ instruction: string }> => Array.from({ length: n }, (_, i) => ({ instruction: `step ${i}` }))
  const res = await post(app, '/create', { session_id: 'long', tasks: list(1200) })
  t.equal(res.statusCode, 200, '1,200 tasks as a list, as free text would be')
  t.equal(res.json().total_tasks, 1200)
  const over = errorShape(t, await post(app, '/create', { session_id: 'longer', tasks: list(1501) }), 400, 'one past the setting')
  t.equal(over.code, 'LIMIT_EXCEEDED')
  t.match(over.message, /the limit is 1500 \(TASK_MAX_TASKS_PER_SESSION\)/)
})

t.test('limits: a create replayed with its Idempotency-Key after the limits were lowered is answered as the first time; a new one is refused', async (t) => {
  const dir = await tempDir(t)
  const before = await build(t, { dir, config: { TASK_MAX_TASKS_PER_SESSION: 10, TASK_MAX_INSTRUCTION_BYTES: 100 } })
  const send = async (app: typeof before, key: string | undefined, instructions: string): Promise<Awaited<ReturnType<typeof app.inject>>> =>
    app.inject({ method: 'POST', url: `${API}/create`, headers: key === undefined ? {} : { 'idempotency-key': key }, payload: { session_id: 'keyed', instructions } })
  const five = '- a\n- b\n- c\n- d\n- ' + 'e'.repeat(60)
  t.equal((await send(before, 'k1', five)).statusCode, 200)
  await before.close()
  // Restarted with lower limits (or reached through a replica that runs them): the stored tasks stand.
  const after = await build(t, { dir, config: { TASK_MAX_TASKS_PER_SESSION: 3, TASK_MAX_INSTRUCTION_BYTES: 50 } })
  const replay = await send(after, 'k1', five)
  t.equal(replay.statusCode, 200, replay.body)
  t.equal(replay.headers['idempotent-replayed'], 'true')
  t.equal(replay.json().total_tasks, 5, 'the first answer')
  // Both limits passed: the count is named first, key or not.
  t.match(errorShape(t, await send(after, 'k2', five), 400, 'the same tasks under a new key'), { code: 'LIMIT_EXCEEDED', message: /TASK_MAX_TASKS_PER_SESSION/u })
  t.match(errorShape(t, await send(after, undefined, five), 400, 'without a key'), { code: 'LIMIT_EXCEEDED', message: /TASK_MAX_TASKS_PER_SESSION/u })
  t.equal((await readSession(dir, 'keyed')).session.tasks.length, 5, 'nothing added')
})

t.test('limits: more tasks than a session may hold are refused before any is typed, naming the count given', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_MAX_TASKS_PER_SESSION: 3 } })
  t.equal((await post(app, '/create', { session_id: 'cap', instructions: 'a' })).statusCode, 200)
  for (const body of [{ instructions: '- w\n- x\n- y\n- z' }, { tasks: [{ instruction: 'w' }, { instruction: 'x' }, { instruction: 'y' }, { instruction: 'z' }] }]) {
    const over = errorShape(t, await post(app, '/create', { session_id: 'cap', ...body }), 400, 'four given')
    t.equal(over.code, 'LIMIT_EXCEEDED')
    t.equal(over.message, "session 'cap' would have 4 tasks or more; the limit is 3 (TASK_MAX_TASKS_PER_SESSION)")
  }
  t.equal((await readSession(dir, 'cap')).session.tasks.length, 1, 'nothing added')
})

t.test('validation: a value outside a list of choices is answered with the choices', async (t) => {
  const app = await build(t)
  const type = errorShape(t, await post(app, '/create', { session_id: 'u', tasks: [{ instruction: 'a', task_type: 'coding' }] }), 400, 'a task type in the wrong case')
  t.equal(type.message, 'body/tasks/0/task_type must be one of "Coding", "Analysis", "Research", "Reasoning", "General"')
  const filter = errorShape(t, await get(app, '/list?session_id=all&archived=nope'), 400, 'an unknown archived filter')
  t.equal(filter.message, 'querystring/archived must be one of "exclude", "include", "only"')
  t.equal((await get(app, '/progress?session_id=u')).statusCode, 404, 'nothing was created')
})

t.test('validation: a body with a __proto__ or constructor.prototype key is refused by name, not called invalid JSON', async (t) => {
  const app = await build(t)
  for (const payload of ['{"__proto__":{"x":1},"session_id":"s1","instructions":"a"}', '{"session_id":"s1","instructions":"a","constructor":{"prototype":{"x":1}}}']) {
    const res = await app.inject({ method: 'POST', url: `${API}/create`, headers: { 'content-type': 'application/json' }, payload })
    const body = errorShape(t, res, 400, payload)
    t.equal(body.code, 'FORBIDDEN_BODY_KEY')
    t.match(body.message, /"__proto__" key, or a "constructor" key with "prototype"/)
  }
  const archive = await app.inject({ method: 'POST', url: `${API}/archive`, headers: { 'content-type': 'application/json' }, payload: '{"__proto__":{}}' })
  t.equal(archive.json().code, 'FORBIDDEN_BODY_KEY', 'POST /archive too')
  const broken = await app.inject({ method: 'POST', url: `${API}/create`, headers: { 'content-type': 'application/json' }, payload: '{"session_id":"s1",' })
  t.equal(broken.json().code, 'FST_ERR_CTP_INVALID_JSON_BODY', 'broken JSON is still called so')
  t.equal((await get(app, '/progress?session_id=s1')).statusCode, 404, 'nothing was created')
  t.equal(({} as Record<string, unknown>).x, undefined, 'no prototype changed')
})

t.test('limits: TASK_MAX_SESSIONS answers 507, appends still work, a delete makes room', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_MAX_SESSIONS: 2, TASK_MAX_INSTRUCTION_BYTES: 100 } })
  t.equal((await post(app, '/create', { session_id: 's1', instructions: 'a' })).statusCode, 200)
  t.equal((await post(app, '/create', { session_id: 's2', instructions: 'a' })).statusCode, 200)
  const full = errorShape(t, await post(app, '/create', { session_id: 's3', instructions: 'a' }), 507, 'one session too many')
  t.equal(full.code, 'SESSION_LIMIT')
  t.match(full.message, /TASK_MAX_SESSIONS/, 'the message names the setting')
  t.match(full.message, /\b2\b/, 'and the limit')
  t.notOk(existsSync(join(dir, 's3.json')), 'no file for the refused session')
  t.equal(errorShape(t, await post(app, '/create', { session_id: 's4', instructions: 'a' }), 507, 'still full').code, 'SESSION_LIMIT')
  t.equal((await post(app, '/create', { session_id: 's1', instructions: 'more' })).statusCode, 200, 'appending to an existing session still works')
  t.equal((await post(app, '/execute', { session_id: 's1' })).statusCode, 200, 'executing still works')
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/s2` })).statusCode, 204)
  // A refused create of a new session must not keep its place.
  t.equal((await post(app, '/create', { session_id: 'bad', tasks: [{ instruction: 'x'.repeat(101) }] })).statusCode, 400)
  t.equal((await post(app, '/create', { session_id: 's3', instructions: 'a' })).statusCode, 200, 'after a delete a new session fits')
  t.equal(errorShape(t, await post(app, '/create', { session_id: 's5', instructions: 'a' }), 507, 'full again').code, 'SESSION_LIMIT')
  // A burst of new sessions never overshoots the cap.
  await app.inject({ method: 'DELETE', url: `${API}/sessions/s3` })
  const burst = await Promise.all(Array.from({ length: 6 }, (_, i) => post(app, '/create', { session_id: `b${i}`, instructions: 'a' })))
  t.ok(burst.every((res) => res.statusCode === 200 || res.statusCode === 507), 'each answer is 200 or 507')
  t.ok(burst.filter((res) => res.statusCode === 200).length <= 1, 'at most one of the burst got in')
  t.ok((await get(app, '/stats')).json().total_sessions <= 2, 'the cap holds')
  t.ok((await names(dir)).filter((name) => name.endsWith('.json')).length <= 2, 'and on disk')
})

t.test('limits: a restore that reaches TASK_MAX_SESSIONS (the bound lowered since) serves every session and says so in the log; new ones answer 507', async (t) => {
  const dir = await tempDir(t)
  const first = await build(t, { dir })
  for (const id of ['r1', 'r2', 'r3']) t.equal((await post(first, '/create', { session_id: id, instructions: 'a' })).statusCode, 200)
  await first.close()
  const log = memoryLog('warn')
  const app = await build(t, { dir, logger: log.logger, config: { TASK_MAX_SESSIONS: 2 } })
  t.match(log.lines().filter((line) => /TASK_MAX_SESSIONS is reached/.test(String(line.msg))), [{ sessions: 3, max_sessions: 2 }])
  t.equal((await get(app, '/progress?session_id=r3')).statusCode, 200, 'every session served')
  t.equal((await post(app, '/create', { session_id: 'r4', instructions: 'a' })).statusCode, 507)
  await app.close()
  const roomy = memoryLog('warn')
  await build(t, { dir, logger: roomy.logger, config: { TASK_MAX_SESSIONS: 4 } })
  t.same(roomy.lines().filter((line) => /TASK_MAX_SESSIONS/.test(String(line.msg))), [], 'no warning with room left')
})

t.test('limits: work on ids that hold no active session takes no room under TASK_MAX_SESSIONS', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs, config: { TASK_MAX_SESSIONS: 2 } })
  t.equal((await post(app, '/create', { session_id: 'a', instructions: 'a' })).statusCode, 200)
  t.equal((await post(app, '/create', { session_id: 'z', instructions: 'a' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'z' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['z'])
  // The archived session's delete is under way (its unlink held) while a new session is created.
  const gate = fs.hold('unlink', { path: (path) => path.includes(`${sep}archive${sep}`) })
  const deleting = app.inject({ method: 'DELETE', url: `${API}/sessions/z` })
  await waitFor('the delete to be held', () => gate.held() > 0)
  const created = await post(app, '/create', { session_id: 'b', instructions: 'a' })
  t.equal(created.statusCode, 200, `one active session of two: room for another (${created.body})`)
  t.equal(errorShape(t, await post(app, '/create', { session_id: 'c', instructions: 'a' }), 507, 'now full').code, 'SESSION_LIMIT')
  gate.release()
  t.equal((await deleting).statusCode, 204)
})

t.test('limits: TASK_MAX_RESULT_BYTES cuts a long agent result on a character boundary and flags it', async (t) => {
  const dir = await tempDir(t)
  const results: Record<string, string> = {
    short: 'ok',
    exact: 'abcdefghij', // 10 bytes
    ascii: 'abcdefghijklmnop',
    euro: 'aaaaaaaa€€', // the limit falls inside the first €
    emoji: 'aaaaaaa🚀', // the limit falls inside the emoji
    lone: 'aaaaaaaa\ud800z' // a lone surrogate is 3 bytes (U+FFFD) once encoded
  }
  const expected: Record<string, { result: string, truncated: boolean }> = {
    short: { result: 'ok', truncated: false },
    exact: { result: 'abcdefghij', truncated: false },
    ascii: { result: 'abcdefghij', truncated: true },
    euro: { result: 'aaaaaaaa', truncated: true },
    emoji: { result: 'aaaaaaa', truncated: true },
    lone: { result: 'aaaaaaaa', truncated: true }
  }
  const executors = { default: async (task: { instruction: string }) => ({ result: results[task.instruction] ?? '' }) }
  let app = await build(t, { dir, executors, config: { TASK_MAX_RESULT_BYTES: 10 } })
  const instructions = Object.keys(results)
  t.equal((await post(app, '/create', { session_id: 'r', tasks: instructions.map((instruction) => ({ instruction, task_type: 'General' })) })).statusCode, 200)

  // The first three through /execute, the rest through /execute-all.
  const answers: Array<Record<string, unknown>> = []
  for (let i = 0; i < 3; i++) answers.push((await post(app, '/execute', { session_id: 'r' })).json())
  const all = await post(app, '/execute-all', { session_id: 'r' })
  t.equal(all.statusCode, 200)
  answers.push(...all.json().results)
  t.equal(answers.length, instructions.length)

  const check = (where: string, task: Record<string, unknown>): void => {
    const name = String(task.instruction)
    const want = expected[name]!
    t.equal(task.result, want.result, `${where} ${name}: result`)
    t.ok(Buffer.byteLength(String(task.result), 'utf8') <= 10, `${where} ${name}: at most the limit in bytes`)
    t.notOk(String(task.result).includes('\ufffd'), `${where} ${name}: no character split into U+FFFD`)
    if (want.truncated) t.equal(task.result_truncated, true, `${where} ${name}: result_truncated`)
    else t.notOk('result_truncated' in task, `${where} ${name}: no result_truncated`)
  }
  for (const answer of answers) check('execute answer', answer)
  for (const task of (await get(app, '/list?session_id=r')).json().tasks) check('list', task)
  for (const task of (await readSession(dir, 'r')).session.tasks) check('on disk', task as unknown as Record<string, unknown>)

  await app.close()
  app = await build(t, { dir })
  for (const task of (await get(app, '/list?session_id=r')).json().tasks) check('after restart', task)
})

t.test('limits: TASK_MAX_RESULT_BYTES cuts a long agent error and flags the failed task; a run that then succeeds whole clears the flag', async (t) => {
  const dir = await tempDir(t)
  let failing = true
  const executors = {
    // Fails for good with a long message while `failing`, then answers.
    General: async () => {
      if (failing) throw new Error('upstream said: ' + 'e'.repeat(100))
      return { result: 'ok' }
    },
    // A long transient failure, then an answer within the same execute.
    Coding: {
      run: async (_task: unknown, context: { attempt: number }) => {
        if (context.attempt === 1) throw new AgentError('busy: ' + 'b'.repeat(100), { transient: true })
        return { result: 'coded' }
      },
      max_attempts: 2,
      backoff_ms: 0
    }
  }
  let app = await build(t, { dir, executors, config: { TASK_MAX_RESULT_BYTES: 10 } })
  t.equal((await post(app, '/create', { session_id: 'e', tasks: [{ instruction: 'a', task_type: 'General' }, { instruction: 'b', task_type: 'Coding' }] })).statusCode, 200)
  const failed = (await post(app, '/execute', { session_id: 'e' })).json()
  t.match(failed, { status: 'Failed', error: 'upstream s', result_truncated: true }, 'the execute answer')
  t.match((await get(app, '/list?session_id=e')).json().tasks[0], { status: 'Failed', error: 'upstream s', result_truncated: true }, 'the list')
  t.match((await readSession(dir, 'e')).session.tasks[0], { status: 'Failed', error: 'upstream s', result_truncated: true }, 'on disk')
  await app.close()
  app = await build(t, { dir, executors, config: { TASK_MAX_RESULT_BYTES: 10 } })
  t.match((await get(app, '/list?session_id=e')).json().tasks[0], { status: 'Failed', result_truncated: true }, 'after restart')

  const retried = (await post(app, '/execute', { session_id: 'e' })).json()
  t.match(retried, { status: 'Completed', result: 'coded' })
  t.notOk('result_truncated' in retried, 'a long transient error before the answer leaves no flag')

  failing = false
  t.equal((await post(app, '/retry', { session_id: 'e' })).statusCode, 200)
  const done = (await post(app, '/execute', { session_id: 'e' })).json()
  t.match(done, { status: 'Completed', result: 'ok' })
  t.notOk('result_truncated' in done, 'the answer of the run after POST /retry is not flagged')
  for (const task of (await get(app, '/list?session_id=e')).json().tasks) t.notOk('result_truncated' in task, `list ${String(task.instruction)}: no flag`)
  for (const task of (await readSession(dir, 'e')).session.tasks) t.notOk('result_truncated' in task, `on disk ${task.instruction}: no flag`)
})

t.test('limits: TASK_MAX_WRITES bounds the session files written at once: a restart resetting many interrupted sessions saves every reset, a few at a time', async (t) => {
  const dir = await tempDir(t)
  await markAsTaskvault(dir)
  const ids = Array.from({ length: 40 }, (_, i) => `cut-${i}`)
  for (const id of ids) await writeFile(join(dir, `${id}.json`), storedSession(id, ['Completed', 'InProgress', 'Pending'], '2025-01-02T00:00:00.000Z'))
  const fs = faultFs()
  // Each reset's temp file is held open at its fsync: how many are open at once is what the bound counts.
  const gate = fs.hold('sync')
  const starting = build(t, { dir, fs, config: { TASK_MAX_WRITES: 4, TASK_RESUME_ON_START: false } })
  await gate.reached
  await sleep(200)
  t.equal(gate.held(), 4, 'four files open for writing, the others waiting their turn')
  gate.release()
  const app = await starting
  for (const id of ids) {
    const stored = JSON.parse(await readFile(join(dir, `${id}.json`), 'utf8')) as SessionFile
    if (stored.session.tasks[1]?.status !== 'Pending' || stored.session.tasks[1].interruptions !== 1) t.fail(`${id}: the reset is not saved`)
  }
  t.match((await get(app, '/stats')).json(), { in_progress_tasks: 0, pending_tasks: 80 }, 'none left in progress')
})

t.test('limits: BODY_LIMIT answers 413 on every POST route, and on DELETE', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { BODY_LIMIT: 1024 } })
  const padding = 'x'.repeat(1100)
  for (const path of ['/create', '/execute', '/execute-all']) {
    const res = await post(app, path, { session_id: 'b', instructions: padding })
    t.equal(errorShape(t, res, 413, `${path} over BODY_LIMIT`).code, 'FST_ERR_CTP_BODY_TOO_LARGE')
  }
  t.equal((await post(app, '/create', { session_id: 'b', instructions: 'x'.repeat(900) })).statusCode, 200, 'just under the limit is fine')
  // DELETE takes no body, but one sent is bounded the same (not by Fastify's 1 MiB default).
  const deleted = await app.inject({ method: 'DELETE', url: `${API}/sessions/b`, headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ padding }) })
  t.equal(errorShape(t, deleted, 413, 'DELETE over BODY_LIMIT').code, 'FST_ERR_CTP_BODY_TOO_LARGE')
  t.same((await names(dir)).filter((name) => name.endsWith('.json')), ['b.json'])
})

// ---------------------------------------------------------------------------------------
// Single-writer lock
// ---------------------------------------------------------------------------------------

interface Holder { pid: number, host: string, since: string }

/** The lock is a symlink whose target is the holder as JSON (services/storage-lock.ts). */
async function readLock (dir: string): Promise<Holder> {
  return JSON.parse(await readlink(join(dir, LOCK_FILE))) as Holder
}

async function writeLock (dir: string, holder: Holder): Promise<void> {
  await mkdir(dir, { recursive: true })
  await symlink(JSON.stringify(holder), join(dir, LOCK_FILE))
}

/** Whether anything is at the lock's path (existsSync would follow the link and say no). */
async function lockExists (dir: string): Promise<boolean> {
  return lstat(join(dir, LOCK_FILE)).then(() => true, () => false)
}

t.test('lock: the holder is recorded, and the lock is removed on close', async (t) => {
  const dir = await tempDir(t)
  const app = await open(dir)
  const holder = await readLock(dir)
  t.equal(holder.pid, process.pid, 'pid')
  t.equal(holder.host, hostname(), 'host')
  t.ok(Math.abs(Date.parse(holder.since) - Date.now()) < 60_000, 'since is a recent timestamp')
  t.ok((await lstat(join(dir, LOCK_FILE))).isSymbolicLink(), 'the lock is a symlink naming the holder')
  await app.close()
  t.notOk(await lockExists(dir), 'removed on close')
})

t.test('lock: a second app on the same folder is refused while the first is open', async (t) => {
  const dir = await tempDir(t)
  const first = await open(dir)
  t.teardown(() => first.close())
  t.equal((await post(first, '/create', { session_id: 'one', instructions: 'a' })).statusCode, 200)
  const held = await readLock(dir)
  const err = await openError(dir)
  t.ok(err instanceof StorageLockedError, 'StorageLockedError')
  t.match(String((err as Error | null)?.message), `pid ${process.pid}`, 'names the pid')
  t.match(String((err as Error | null)?.message), `host ${hostname()}`, 'names the host')
  t.same(await readLock(dir).catch(() => null), held, 'the first app keeps its lock')
  // Whatever happened above, the first app keeps working.
  t.equal((await post(first, '/create', { session_id: 'one', instructions: 'b' })).statusCode, 200, 'the first app still writes')
  await first.close()
  const next = await open(dir)
  t.equal((await readLock(dir)).pid, process.pid)
  t.equal((await get(next, '/progress?session_id=one')).json().total, 2, 'after the first closes a new one starts and sees its data')
  await next.close()
  t.notOk(await lockExists(dir), 'lock removed on close')
})

t.test('lock: held by another live process on this host is refused', async (t) => {
  const dir = await tempDir(t)
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGKILL') })
  const pid = child.pid!
  const holder = { pid, host: hostname(), since: '2026-01-01T00:00:00.000Z' }
  await writeLock(dir, holder)
  const err = await openError(dir)
  t.ok(err instanceof StorageLockedError, 'StorageLockedError')
  t.match(String((err as Error | null)?.message), `pid ${pid} on host ${hostname()} since ${holder.since}`, 'names pid, host and since')
  t.same(await readLock(dir), holder, 'the lock is left as it was')
})

t.test('lock: a lock whose pid another process took since its holder died is taken over; the holder\'s own process keeps it', { skip: process.platform !== 'linux' ? 'process start times are read from /proc' : false }, async (t) => {
  const dir = await tempDir(t)
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGKILL') })
  const pid = child.pid!
  const proc = processSlot(pid) ?? ''
  t.not(proc, '', 'the child\'s process slot is known')
  // The child is the holder: its start matches.
  const holder = { pid, host: hostname(), since: new Date().toISOString(), proc }
  await writeLock(dir, holder)
  t.ok(await openError(dir) instanceof StorageLockedError, 'the holder\'s own live process: refused')
  t.same(await readLock(dir), holder, 'the lock is left as it was')
  // The holder died and the child took its pid: another start.
  const [namespace, start] = proc.split('.')
  const reused = { ...holder, proc: `${namespace}.${Number(start) - 1}` }
  await rm(join(dir, LOCK_FILE))
  await writeLock(dir, reused)
  const app = await open(dir)
  t.teardown(() => app.close())
  const now = await readLock(dir)
  t.equal(now.pid, process.pid, 'a pid taken by another process: the lock is ours at once')
  t.equal((now as Holder & { proc?: string }).proc, processSlot(process.pid), 'and records our own process slot')
  // The host name is the machine's own (CI's is long): what the lock adds to it must leave a
  // 32-character host name room in tmpfs's 128 bytes, at the largest pid and a long uptime too.
  t.ok(JSON.stringify(now).length - hostname().length < 128 - 32, 'short enough for a tmpfs inode with a 32-character host name')
})

t.test('lock: a lock of this host name from another pid namespace (another container of the same name, or an earlier life of this one) is judged by its age alone: refused while its holder touches it, taken over once stale', { skip: process.platform !== 'linux' ? 'pid namespaces are read from /proc' : false }, async (t) => {
  const lock = { TASK_LOCK_REFRESH_MS: 200, TASK_LOCK_STALE_MS: 1500 }
  const [namespace] = (processSlot(process.pid) ?? '').split('.')
  const other = `${Number(namespace) + 1}.4242`
  // Its pid names no process here, whether it is ours (pid 1 under tini in both containers) or one that is not running.
  for (const pid of [process.pid, deadPid()]) {
    const dir = await tempDir(t)
    const holder = { pid, host: hostname(), since: '2026-01-01T00:00:00.000Z', proc: other }
    await writeLock(dir, holder)
    // A live holder touches its lock every TASK_LOCK_REFRESH_MS.
    const touching = setInterval(() => { lutimes(join(dir, LOCK_FILE), new Date(), new Date()).catch(() => {}) }, 200)
    const err = await openError(dir, lock)
    clearInterval(touching)
    t.ok(err instanceof StorageLockedError, `pid ${pid === process.pid ? 'ours' : 'not running here'}, its holder alive: refused (${String(err)})`)
    t.same(await readLock(dir), holder, 'the lock is left as it was')
  }
  // Its holder is gone (the container was killed): taken over once nobody touched it for TASK_LOCK_STALE_MS.
  const dir = await tempDir(t)
  const holder = { pid: process.pid, host: hostname(), since: '2026-01-01T00:00:00.000Z', proc: other }
  await writeLock(dir, holder)
  const log = memoryLog()
  const started = performance.now()
  const app = await open(dir, lock, productionLogger(log.stream, 'info'))
  t.teardown(() => app.close())
  t.ok(performance.now() - started >= 1000, `not at once, but once stale (${Math.round(performance.now() - started)} ms)`)
  t.equal((await readLock(dir) as Holder & { proc?: string }).proc, processSlot(process.pid), 'the lock is ours')
  const waiting = log.lines().find((line) => line.msg?.startsWith(`The storage lock (${join(dir, LOCK_FILE)}) names pid`) === true)
  t.match(waiting, { level: 40, holder, stale_in_ms: Number }, 'the wait is logged, naming the holder')
})

/** A folder holding a fresh lock of this host name from another pid namespace (a container beside ours), going stale in 4 s. */
async function foreignFreshLock (t: TestContext): Promise<{ dir: string, holder: Holder & { proc: string }, lock: { lockRefreshMs: number, lockStaleMs: number } }> {
  const [namespace] = (processSlot(process.pid) ?? '').split('.')
  const holder = { pid: process.pid, host: hostname(), since: new Date().toISOString(), proc: `${Number(namespace) + 1}.4242` }
  const dir = await tempDir(t)
  await writeLock(dir, holder)
  return { dir, holder, lock: { lockRefreshMs: 200, lockStaleMs: 4000 } }
}

t.test('lock: embedded in a host with a pluginTimeout, a fresh lock of another pid namespace is waited for within it: the host hears STORAGE_LOCKED naming the settings, and nothing takes the lock after it gave up', { skip: process.platform !== 'linux' ? 'pid namespaces are read from /proc' : false }, async (t) => {
  const { dir, holder, lock } = await foreignFreshLock(t)
  const app = Fastify({ logger: false, pluginTimeout: 2000 })
  const started = performance.now()
  const err = await app.register(taskvault, { storageDir: dir, ...lock }).ready().then(() => null, (e: unknown) => e)
  const waited = performance.now() - started
  t.type(err, StorageLockedError, String(err))
  t.match((err as Error).message, /another pid namespace.*not stale yet.*option 'lockStaleMs'.*pluginTimeout \(taskvault waited 1000 ms of its 2000 ms\)/u)
  t.ok(waited >= 900 && waited < 2000, `within the host's pluginTimeout (${Math.round(waited)} ms)`)
  await app.close()
  t.same(await readLock(dir), holder, 'the other holder\'s lock is left as it was')
  // Past the time the lock goes stale: the wait given up on takes nothing.
  await sleep(lock.lockStaleMs + 1000 - (performance.now() - started))
  t.same(await readLock(dir), holder, 'still theirs once stale: nothing of the closed host took it')
})

t.test('lock: a host that gives up on its boot and closes while the store waits for a lock of another pid namespace stops the wait: close returns at once, and the lock is never taken', { skip: process.platform !== 'linux' ? 'pid namespaces are read from /proc' : false }, async (t) => {
  const { dir, holder, lock } = await foreignFreshLock(t)
  // The host's own plugin took most of its pluginTimeout before registering taskvault: the host gives up before taskvault's bound.
  const app = Fastify({ logger: false, pluginTimeout: 2000 })
  const started = performance.now()
  app.register(async (host) => {
    await sleep(1200)
    await host.register(taskvault, { storageDir: dir, ...lock })
  })
  const err = await app.ready().then(() => null, (e: unknown) => e)
  t.match(err, { code: 'FST_ERR_PLUGIN_TIMEOUT' }, 'the host gave up first')
  const closing = performance.now()
  await app.close()
  t.ok(performance.now() - closing < 500, `close returns at once (${Math.round(performance.now() - closing)} ms), not once the lock is stale`)
  t.same(await readLock(dir), holder, 'the other holder\'s lock is left as it was')
  await sleep(lock.lockStaleMs + 1000 - (performance.now() - started))
  t.same(await readLock(dir), holder, 'still theirs once stale: the wait stopped when the host closed')
})

t.test('lock: a store whose owner gave up while it opened lets the lock go and fails, even when it took the lock', async (t) => {
  const dir = await tempDir(t)
  const store = new FileSessionStore({ dir, lock: { refreshMs: 200, staleMs: 1000 } })
  await t.rejects(store.init({ signal: AbortSignal.abort() }), { code: 'SHUTTING_DOWN' })
  t.notOk(await lockExists(dir), 'no lock left behind')
})

t.test('lock: a takeover guard of this host name from another pid namespace (a container killed mid-takeover) is waited for until stale, then the lock taken over', { skip: process.platform !== 'linux' ? 'pid namespaces are read from /proc' : false }, async (t) => {
  const [namespace] = (processSlot(process.pid) ?? '').split('.')
  const holder = { pid: process.pid, host: hostname(), since: '2026-01-01T00:00:00.000Z', proc: `${Number(namespace) + 1}.4242` }
  const dir = await tempDir(t)
  await writeLock(dir, holder)
  const old = new Date(Date.now() - 300_000)
  await lutimes(join(dir, LOCK_FILE), old, old)
  await symlink(JSON.stringify(holder), join(dir, `${LOCK_FILE}.takeover`))
  const started = performance.now()
  const log = memoryLog()
  const app = await open(dir, { TASK_LOCK_REFRESH_MS: 200, TASK_LOCK_STALE_MS: 1500 }, productionLogger(log.stream, 'info'))
  t.teardown(() => app.close())
  t.ok(performance.now() - started >= 1000, `once the guard is stale (${Math.round(performance.now() - started)} ms)`)
  t.equal(log.lines().filter((line) => line.msg?.startsWith(`The storage lock (${join(dir, LOCK_FILE)}.takeover) names pid`) === true).length, 1, 'the wait is logged, once')
  t.equal((await readLock(dir)).pid, process.pid)
  t.equal((await readLock(dir) as Holder & { proc?: string }).proc, processSlot(process.pid), 'the lock is ours')
  t.notOk(await lstat(join(dir, `${LOCK_FILE}.takeover`)).then(() => true, () => false), 'the guard is gone')
})

t.test('lock: exiting before the store closes removes only this process\'s own lock, not one of the same pid and host name from another pid namespace', { skip: process.platform !== 'linux' ? 'pid namespaces are read from /proc' : false }, async (t) => {
  const [namespace] = (processSlot(process.pid) ?? '').split('.')
  const dir = await tempDir(t)
  const other = { pid: process.pid, host: hostname(), since: new Date().toISOString(), proc: `${Number(namespace) + 1}.4242` }
  await writeLock(dir, other)
  releaseHeldSync(dir)
  t.same(await readLock(dir), other, 'another container\'s lock stays')
  await rm(join(dir, LOCK_FILE))
  const mine = { pid: process.pid, host: hostname(), since: new Date().toISOString(), proc: processSlot(process.pid) ?? '' }
  await writeLock(dir, mine)
  releaseHeldSync(dir)
  t.notOk(await lockExists(dir), 'this process\'s own is removed')
})

t.test('lock: a lock left by a dead pid on this host is taken over', async (t) => {
  const dir = await tempDir(t)
  const pid = deadPid()
  const stale = { pid, host: hostname(), since: '2026-01-01T00:00:00.000Z' }
  await writeLock(dir, stale)
  const log = memoryLog()
  const app = await open(dir, {}, productionLogger(log.stream, 'info'))
  t.teardown(() => app.close())
  const now = await readLock(dir)
  t.equal(now.pid, process.pid, 'the lock is ours')
  t.not(now.since, stale.since)
  const warning = log.lines().find((line) => line.level === 40 && /lock/i.test(line.msg ?? ''))
  t.ok(warning, 'the takeover is logged')
  t.match(warning?.holder, stale, 'naming the old holder')
  t.equal((await post(app, '/create', { session_id: 'x', instructions: 'a' })).statusCode, 200)
})

t.test('lock: a lock left by a killed process its parent has not reaped (a zombie) is taken over', { skip: process.platform !== 'linux' ? 'zombies are read from /proc' : false }, async (t) => {
  // The shell starts a sleep, prints its pid and becomes another sleep, which never reaps the
  // first: killed, the first stays a zombie until the shell's sleep ends.
  const shell = spawn('/bin/sh', ['-c', 'sleep 600 & echo $!; exec sleep 600'], { stdio: ['ignore', 'pipe', 'ignore'] })
  t.teardown(() => { shell.kill('SIGKILL') })
  const pid = Number(await new Promise<string>((resolve) => shell.stdout.once('data', (chunk: Buffer) => { resolve(chunk.toString()) })))
  // Killed while the shell is still a shell, the first sleep would be reaped by it: wait for the exec.
  await waitFor('the shell to become a sleep', async () => (await readFile(`/proc/${shell.pid ?? 0}/comm`, 'latin1')).trim() === 'sleep')
  process.kill(pid, 'SIGKILL')
  await waitFor('the sleep is a zombie', async () => (await readFile(`/proc/${pid}/stat`, 'latin1')).split(') ')[1]?.startsWith('Z') === true)
  const dir = await tempDir(t)
  await writeLock(dir, { pid, host: hostname(), since: new Date().toISOString() })
  const app = await open(dir, {})
  t.teardown(() => app.close())
  t.equal((await readLock(dir)).pid, process.pid, 'the lock is ours')
})

const FAST_LOCK = { TASK_LOCK_STALE_MS: 1000, TASK_LOCK_REFRESH_MS: 400 }
/** Stale after 30 s: a lock written by the test is still fresh when a slow boot reaches it. */
const SHORT_LOCK = { TASK_LOCK_STALE_MS: 30_000, TASK_LOCK_REFRESH_MS: 400 }

t.test('lock: a live holder on another host is refused until the lock goes stale', async (t) => {
  const dir = await tempDir(t)
  const elsewhere = { pid: process.pid, host: 'elsewhere', since: '2026-01-01T00:00:00.000Z' }
  await writeLock(dir, elsewhere)
  const err = await openError(dir, SHORT_LOCK)
  t.ok(err instanceof StorageLockedError, 'a fresh lock from another host: StorageLockedError')
  t.match(String((err as Error | null)?.message), `pid ${process.pid} on host elsewhere`, 'names pid and host')
  t.same(await readLock(dir), elsewhere, 'the lock is left as it was')

  const old = new Date(Date.now() - 10 * 60_000)
  await lutimes(join(dir, LOCK_FILE), old, old)
  const app = await open(dir, SHORT_LOCK)
  t.teardown(() => app.close())
  t.same(await readLock(dir).then((holder) => [holder.pid, holder.host]), [process.pid, hostname()], 'an untouched lock is taken over')
  t.equal((await post(app, '/create', { session_id: 'x', instructions: 'a' })).statusCode, 200)
})

t.test('lock: the holder keeps its lock fresh, so it is never taken for stale', async (t) => {
  const dir = await tempDir(t)
  // Touched every 400 ms, stale after 3 s: a heartbeat may run seconds late on a loaded host.
  const app = await open(dir, { TASK_LOCK_STALE_MS: 3000, TASK_LOCK_REFRESH_MS: 400 })
  t.teardown(() => app.close())
  const started = (await lstat(join(dir, LOCK_FILE))).mtimeMs
  await sleep(3500)
  t.ok((await lstat(join(dir, LOCK_FILE))).mtimeMs > started, 'the lock was touched since')
  t.ok(Date.now() - (await lstat(join(dir, LOCK_FILE))).mtimeMs < 3000, 'and is younger than TASK_LOCK_STALE_MS')
})

t.test('lock: a lock path that names no holder (a regular file, garbage) is taken over', async (t) => {
  for (const [label, plant] of [
    ['a half-written regular file', (dir: string) => writeFile(join(dir, LOCK_FILE), '{"pid": 12')],
    ['a symlink to garbage', (dir: string) => symlink('{"pid": 12', join(dir, LOCK_FILE))],
    ['a symlink missing fields', (dir: string) => symlink('{"pid": 12, "host": "x"}', join(dir, LOCK_FILE))]
  ] as const) {
    const dir = await tempDir(t)
    await plant(dir)
    const app = await open(dir)
    t.equal((await readLock(dir)).pid, process.pid, label)
    await app.close()
  }
})

t.test('lock: a takeover guard left by a server that died mid-takeover does not block forever', async (t) => {
  const dir = await tempDir(t)
  await writeLock(dir, { pid: deadPid(), host: hostname(), since: '2026-01-01T00:00:00.000Z' })
  const guard = join(dir, `${LOCK_FILE}.takeover`)
  await symlink(JSON.stringify({ pid: deadPid(), host: hostname(), since: '2026-01-01T00:00:00.000Z' }), guard)
  const old = new Date(Date.now() - 10_000)
  await lutimes(guard, old, old)
  const app = await open(dir, FAST_LOCK)
  t.teardown(() => app.close())
  t.equal((await readLock(dir)).pid, process.pid, 'the lock is taken')
  t.notOk(await lstat(guard).then(() => true, () => false), 'the old guard is gone')
})

t.test('lock: a fresh takeover guard of a dead pid on this host (a server killed mid-takeover) is freed at once', async (t) => {
  const dir = await tempDir(t)
  await writeLock(dir, { pid: deadPid(), host: hostname(), since: '2026-01-01T00:00:00.000Z' })
  const guard = join(dir, `${LOCK_FILE}.takeover`)
  await symlink(JSON.stringify({ pid: deadPid(), host: hostname(), since: '2026-01-01T00:00:00.000Z' }), guard)
  // Default TASK_LOCK_STALE_MS (60 s): the guard is seconds old, so only its dead pid frees it.
  const app = await open(dir)
  t.teardown(() => app.close())
  t.equal((await readLock(dir)).pid, process.pid, 'the lock is taken')
  t.notOk(await lstat(guard).then(() => true, () => false), 'the dead server\'s guard is gone')
})

t.test('lock: a dead guard is removed by one reaper at a time; a reaper file left by a kill holds takeovers back until it is stale', async (t) => {
  const dir = await tempDir(t)
  const stale = { pid: deadPid(), host: hostname(), since: '2026-01-01T00:00:00.000Z' }
  await writeLock(dir, stale)
  const guard = join(dir, `${LOCK_FILE}.takeover`)
  const reaper = `${guard}.reap`
  await symlink(JSON.stringify({ pid: deadPid(), host: hostname(), since: '2026-01-01T00:00:00.000Z' }), guard)
  await symlink(JSON.stringify({ pid: deadPid(), host: hostname(), since: '2026-01-01T00:00:00.000Z' }), reaper)
  t.ok(await openError(dir, SHORT_LOCK) instanceof StorageLockedError, 'a fresh reaper file: nobody else removes the guard')
  t.same(await readLock(dir), stale, 'the lock is untouched')
  const old = new Date(Date.now() - 10 * 60_000)
  await lutimes(reaper, old, old)
  const app = await open(dir, SHORT_LOCK)
  t.teardown(() => app.close())
  t.equal((await readLock(dir)).pid, process.pid, 'once it is stale, the guard is reaped and the lock taken')
  t.notOk(await lstat(reaper).then(() => true, () => false), 'no reaper file left')
  t.notOk(await lstat(guard).then(() => true, () => false), 'no guard left')
})

t.test('lock: a takeover guard held by a live server is left alone, and the lock it guards with it', async (t) => {
  const dir = await tempDir(t)
  // A live pid on this host: another server taking over right now, which this one must wait for.
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGKILL') })
  const stale = { pid: deadPid(), host: hostname(), since: '2026-01-01T00:00:00.000Z' }
  await writeLock(dir, stale)
  const guard = join(dir, `${LOCK_FILE}.takeover`)
  const live = JSON.stringify({ pid: child.pid, host: hostname(), since: new Date().toISOString() })
  await symlink(live, guard)
  const err = await openError(dir)
  t.ok(err instanceof StorageLockedError, 'no takeover while another server holds the guard')
  t.equal(await readlink(guard), live, 'the live guard is untouched')
  t.same(await readLock(dir), stale, 'and so is the lock it guards')
})

t.test('lock: a .taskvault.lock planted as a link to a real file is not written through', async (t) => {
  const { dir, outside } = await layout(t)
  const target = join(outside, 'precious.txt')
  await writeFile(target, 'do not touch\n')
  const before = await stat(target)
  await symlink(target, join(dir, LOCK_FILE))
  const app = await open(dir, FAST_LOCK)
  t.teardown(() => app.close())
  await sleep(500) // a heartbeat or two
  t.equal(await readFile(target, 'utf8'), 'do not touch\n', 'the target keeps its content')
  t.equal((await stat(target)).mtimeMs, before.mtimeMs, 'and its mtime')
  t.equal((await readLock(dir)).pid, process.pid, 'the lock is our own')
})

t.test('lock: non-finite numeric settings, and an archive interval that would start a pass every millisecond, are refused at boot', async (t) => {
  for (const [name, value] of [['TASK_LOCK_STALE_MS', '1e400'], ['TASK_SHUTDOWN_GRACE_MS', '1e400'], ['TASK_ARCHIVE_INTERVAL_MINUTES', '1e400'], ['TASK_ARCHIVE_INTERVAL_MINUTES', '0.000001']] as const) {
    const dir = await tempDir(t)
    const err = await openError(dir, { [name]: value })
    t.ok(err instanceof Error, `${name}=${value}: boot fails`)
    t.match(String((err as Error | null)?.message), name, `${name}=${value}: naming the setting`)
  }
  // A stale lock from another host must still be taken over: with TASK_LOCK_STALE_MS=Infinity it never is.
  const dir = await tempDir(t)
  await writeLock(dir, { pid: 1, host: 'elsewhere', since: '2020-01-01T00:00:00.000Z' })
  const old = new Date(Date.now() - 365 * 24 * 3600 * 1000)
  await lutimes(join(dir, LOCK_FILE), old, old)
  const err = await openError(dir, { TASK_LOCK_STALE_MS: '1e400' })
  t.notOk(err instanceof StorageLockedError, 'a year-old lock is not held against us')
})

t.test('settings: a number or boolean given as blank text, or a number not in decimal digits, is refused at boot, not read as 0 or as JavaScript reads it', async (t) => {
  for (const [name, value] of [['PORT', ' '], ['TASK_IDEMPOTENCY_KEYS', '\t'], ['TASK_ARCHIVE_DAYS', '  '], ['TASK_SHUTDOWN_GRACE_MS', ' '], ['TASK_DISK_WARN_RATIO', ' '], ['TASK_AUTO_SAVE', ' ']] as const) {
    const err = await openError(await tempDir(t), { [name]: value })
    t.match(String((err as Error | null)?.message), new RegExp(`^${name} must be (integer|number|boolean), not blank$`), `${name}=${JSON.stringify(value)}: boot fails naming it`)
  }
  t.equal(await openError(await tempDir(t), { PORT: ' 0 ' }), null, 'a number padded with spaces still reads')
  // Not in decimal digits: read as JavaScript reads it (16, 1000, 5), which nobody writing a setting means.
  for (const [name, value] of [['PORT', '0x10'], ['TASK_LOCK_REFRESH_MS', '1e3'], ['TASK_IDEMPOTENCY_KEYS', '+5'], ['TASK_DISK_WARN_RATIO', '.5'], ['TASK_SHUTDOWN_GRACE_MS', '1_000']] as const) {
    const err = await openError(await tempDir(t), { [name]: value })
    t.match(String((err as Error | null)?.message), new RegExp(`^${name} must be a (whole )?number in decimal digits, not '`), `${name}=${value}: boot fails naming it`)
  }
  t.equal(await openError(await tempDir(t), { TASK_DISK_WARN_RATIO: '0.95' }), null, 'a decimal point is fine where a fraction is meant')

  // From the environment and from .env, as a real server reads them: exit 1, one line naming it.
  const root = await tempDir(t)
  const base = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOST: '127.0.0.1', TASK_STORAGE_DIR: join(root, 'tasks'), LOG_LEVEL: 'info' }
  const fromEnv = spawnServer({ ...base, PORT: ' ' }, root)
  t.equal((await exitWithin(fromEnv, EXIT_TIMEOUT_MS))?.code, 1, `PORT=" " in the environment: exit 1 (${fromEnv.stderr()})`)
  t.match(fromEnv.stderr(), 'PORT must be integer, not blank')
  await writeFile(join(root, '.env'), 'TASK_IDEMPOTENCY_KEYS=" "\n')
  const fromFile = spawnServer({ ...base, PORT: String(await freePort()) }, root)
  t.equal((await exitWithin(fromFile, EXIT_TIMEOUT_MS))?.code, 1, `TASK_IDEMPOTENCY_KEYS=" " in .env: exit 1 (${fromFile.stderr()})`)
  t.match(fromFile.stderr(), 'TASK_IDEMPOTENCY_KEYS must be integer, not blank')
})

t.test('settings: a TASK_ name that is no setting (TASK_API_KEY for TASK_API_KEYS) is logged at start with the one it likely meant, from the environment and .env; those a command agent is given (the server may run inside one) are not', async (t) => {
  const root = await tempDir(t)
  await writeFile(join(root, '.env'), 'TASK_AUTOSAVE=false\n')
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOST: '127.0.0.1', PORT: String(await freePort()), TASK_STORAGE_DIR: join(root, 'tasks'), LOG_LEVEL: 'info', TASK_API_KEY: 's3cret', TASK_PORT: '1', TASK_SOMETHING_ELSE_ENTIRELY: 'x', TASK_TYPE: 'Coding', TASK_RETRIES: '0' }
  const server = spawnServer(env, root)
  t.teardown(() => server.child.kill('SIGKILL'))
  t.ok(await server.waitForLine((line) => line.includes('Server listening'), EXIT_TIMEOUT_MS), 'it starts', { output: server.stderr() })
  const warnings = server.stdout().split('\n').filter((line) => line.includes('names no setting')).map((line) => (JSON.parse(line) as LogLine).msg)
  t.same(warnings, [
    'TASK_API_KEY is set but names no setting, so it is ignored; did you mean TASK_API_KEYS?',
    'TASK_AUTOSAVE is set but names no setting, so it is ignored; did you mean TASK_AUTO_SAVE?',
    'TASK_PORT is set but names no setting, so it is ignored; did you mean PORT?',
    'TASK_SOMETHING_ELSE_ENTIRELY is set but names no setting, so it is ignored'
  ])
  server.child.kill('SIGTERM')
  t.equal((await exitWithin(server, EXIT_TIMEOUT_MS))?.code, 0)
})

t.test('lock: a real second server on a held folder exits 1 at once naming the holder', async (t) => {
  const root = await tempDir(t)
  const dir = join(root, 'tasks')
  const app = await open(dir)
  t.teardown(() => app.close())
  const holder = await readLock(dir)
  const port = await freePort()
  const started = Date.now()
  const server = spawnServer({ PATH: process.env.PATH ?? '/usr/bin:/bin', HOST: '127.0.0.1', PORT: String(port), TASK_STORAGE_DIR: dir, LOG_LEVEL: 'info' }, root)
  // Well before the lock could go stale (TASK_LOCK_STALE_MS, 60 s): it never waits for the holder.
  const exit = await exitWithin(server, EXIT_TIMEOUT_MS)
  const elapsed = Date.now() - started
  const code = exit === null ? 'timeout' : exit.code
  const stderr = server.stderr()
  t.equal(code, 1, `exit code 1 within ${EXIT_TIMEOUT_MS} ms (${elapsed} ms; stderr: ${stderr} stdout: ${server.stdout().slice(-2000)})`)
  t.match(stderr, `pid ${holder.pid}`, 'stderr names the pid')
  t.match(stderr, `host ${holder.host}`, 'stderr names the host')
  t.match(stderr, holder.since, 'stderr names since when')
  t.same(await readLock(dir), holder, 'the holder keeps its lock')
  t.equal((await post(app, '/create', { session_id: 'still', instructions: 'a' })).statusCode, 200, 'and keeps working')
})

// ---------------------------------------------------------------------------------------
// Symlinks and hostile ids
// ---------------------------------------------------------------------------------------

/** A parent folder holding the storage folder and an `outside` folder next to it. */
async function layout (t: TestContext): Promise<{ parent: string, dir: string, outside: string }> {
  const parent = await tempDir(t, 'taskvault-harden-')
  const dir = join(parent, 'store')
  const outside = join(parent, 'outside')
  await mkdir(dir, { mode: 0o700 })
  await mkdir(outside)
  return { parent, dir, outside }
}

/** Writes a valid session file for `id` in `folder` by running a real app there. */
async function plantSession (folder: string, id: string): Promise<void> {
  const app = await open(folder)
  await post(app, '/create', { session_id: id, instructions: '1. secret a\n2. secret b' })
  await app.close()
}

t.test('symlinks: a planted evil.json link to a valid session outside is never loaded, followed or changed', async (t) => {
  const { dir, outside } = await layout(t)
  await plantSession(outside, 'evil')
  const target = join(outside, 'evil.json')
  const before = await readFile(target)
  const beforeStat = await stat(target)
  await symlink(target, join(dir, 'evil.json'))

  const app = await build(t, { dir })
  const stats = (await get(app, '/stats')).json()
  t.match(stats, { total_sessions: 0, total_tasks: 0, storage: { files: 0, bytes: 0, failed_loads: 0 } }, 'stats unchanged by the link')
  t.same((await get(app, '/list?session_id=all')).json().sessions, [], 'not in the list')
  t.equal((await get(app, '/progress?session_id=evil')).statusCode, 404, 'not a session')
  t.equal((await post(app, '/execute', { session_id: 'evil' })).statusCode, 404, 'cannot be executed')
  t.ok((await lstat(join(dir, 'evil.json'))).isSymbolicLink(), 'the link is left where it is (not moved to corrupt/)')
  t.notOk(existsSync(join(dir, 'corrupt')), 'nothing set aside')

  t.equal((await post(app, '/create', { session_id: 'evil', instructions: 'overwrite?' })).statusCode, 200, 'creating that id works')
  t.equal((await post(app, '/execute', { session_id: 'evil' })).statusCode, 200)
  t.equal((await post(app, '/create', { session_id: 'other', instructions: 'x' })).statusCode, 200)
  t.same(await readFile(target), before, 'the target outside is unchanged after creates and executes')
  t.equal((await stat(target)).mtimeMs, beforeStat.mtimeMs, 'not even touched')
  const replaced = await lstat(join(dir, 'evil.json'))
  t.ok(replaced.isFile() && !replaced.isSymbolicLink(), 'the link was replaced by a regular file, not written through')
  t.equal((await readSession(dir, 'evil')).session.tasks.length, 1, 'holding only the new task')
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/evil` })).statusCode, 204)
  t.same(await readFile(target), before, 'the target outside survives a delete')
})

t.test('symlinks: a link to /etc/passwd is ignored at restore; writes to such an id never go through a link', async (t) => {
  const { dir, outside } = await layout(t)
  const passwd = await readFile('/etc/passwd')
  await symlink('/etc/passwd', join(dir, 'passwd.json'))
  await symlink('/etc/passwd', join(dir, 'root'))
  await symlink('/nonexistent/dangling', join(dir, 'dangling.json'))
  const app = await build(t, { dir })
  t.match((await get(app, '/stats')).json(), { total_sessions: 0, storage: { files: 0, failed_loads: 0 } }, 'no link is loaded or counted as a failure')
  t.equal((await get(app, '/progress?session_id=passwd')).statusCode, 404, 'passwd is not a session')
  t.ok((await lstat(join(dir, 'passwd.json'))).isSymbolicLink(), 'the link is left where it is')
  t.ok((await lstat(join(dir, 'root'))).isSymbolicLink(), 'other links left alone')
  t.notOk(existsSync(join(dir, 'corrupt')), 'nothing set aside')
  t.same(await readFile('/etc/passwd'), passwd, '/etc/passwd unchanged')
  // Writes are tested against a copy: a regression that wrote through links must not be able
  // to clobber the real /etc/passwd of a machine running the tests as root.
  await rm(join(dir, 'passwd.json'))
  await rm(join(dir, 'root'))
  const decoy = join(outside, 'passwd')
  await writeFile(decoy, passwd)
  await symlink(decoy, join(dir, 'passwd.json'))
  t.equal((await post(app, '/create', { session_id: 'passwd', instructions: 'a' })).statusCode, 200)
  t.equal((await post(app, '/execute', { session_id: 'passwd' })).statusCode, 200)
  t.same(await readFile(decoy), passwd, 'the link target is unchanged by create and execute')
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/passwd` })).statusCode, 204)
  t.same(await readFile(decoy), passwd, 'and by delete')
  t.same(await readFile('/etc/passwd'), passwd, '/etc/passwd unchanged')
})

t.test('non-regular files: a FIFO and a folder named *.json are skipped, not opened', async (t) => {
  const { dir } = await layout(t)
  const fifo = spawnSync('mkfifo', [join(dir, 'pipe.json')])
  if (fifo.status !== 0) {
    t.pass('FIFO case', { skip: 'mkfifo is not available here' })
    return
  }
  await mkdir(join(dir, 'folder.json'))
  // Reading a FIFO with no writer would block restore forever: bound it.
  const timer = new AbortController()
  const app = await Promise.race([open(dir), sleep(10_000, null, { signal: timer.signal })])
  timer.abort()
  t.ok(app, 'the app starts (restore did not block on the FIFO)')
  if (app === null) return
  t.teardown(() => app.close())
  t.match((await get(app, '/stats')).json(), { total_sessions: 0, storage: { files: 0, failed_loads: 0 } })
  t.ok((await lstat(join(dir, 'pipe.json'))).isFIFO(), 'the FIFO is left alone')
  t.ok((await lstat(join(dir, 'folder.json'))).isDirectory(), 'the folder is left alone')
  t.notOk(existsSync(join(dir, 'corrupt')), 'nothing set aside')
})

t.test('symlinks: a planted corrupt/ link does not move files outside the folder', async (t) => {
  const { dir, outside } = await layout(t)
  await symlink(outside, join(dir, 'corrupt'))
  await markAsTaskvault(dir)
  await writeFile(join(dir, 'broken.json'), '{ not json', { mode: 0o600 })
  const app = await build(t, { dir })
  t.equal((await get(app, '/stats')).json().storage.failed_loads, 1, 'the broken file is counted')
  t.same(await names(outside), [], 'nothing lands outside the storage folder')
})

t.test('symlinks: a planted archive/ link does not move sessions outside the folder', async (t) => {
  const { dir, outside } = await layout(t)
  let now = Date.parse('2026-01-01T00:00:00Z')
  const clock = (): Date => new Date(now)
  let app = await build(t, { dir, clock })
  await post(app, '/create', { session_id: 'old', instructions: 'a' })
  await post(app, '/execute', { session_id: 'old' })
  await app.close()
  await symlink(outside, join(dir, 'archive'))
  now += 40 * 24 * 3600 * 1000
  app = await build(t, { dir, clock })
  // The archiver runs once after restore; wait for it to settle.
  for (let i = 0; i < 100 && existsSync(join(dir, 'old.json')); i++) await sleep(20)
  t.same(await names(outside), [], 'nothing lands outside the storage folder')
})

t.test('hostile ids: 400 on every route, and nothing is created outside the folder', async (t) => {
  const { parent, dir } = await layout(t)
  const app = await build(t, { dir })
  // DELETE goes over real HTTP: inject would resolve `..` and `%2e%2e` before routing.
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const encoded = ['..%2F..%2Fetc%2Fpasswd', '%2e%2e', '..', '%2E%2E%2Fx', '%2e%2e%2f%2e%2e%2fetc%2fpasswd', 'a%00b', '..%5C..%5Cx', '%2e', '.', 'a.json', '%2Fetc%2Fpasswd', 'x%0Ay', '%C3%A9t%C3%A9']
  for (const id of encoded) {
    errorShape(t, await rawRequest(port, 'DELETE', `${API}/sessions/${id}`), 400, `DELETE ${id}`)
    errorShape(t, await get(app, `/progress?session_id=${id}`), 400, `progress ${id}`)
    errorShape(t, await get(app, `/list?session_id=${id}`), 400, `list ${id}`)
  }
  const raw = ['../../etc/passwd', '..', '.', 'a\u0000b', '/etc/passwd', 'a/../../b', '..\\..\\x', 'C:\\x', '', ' ', 'a b', 'été', 'a'.repeat(129), 'x.json']
  for (const id of raw) {
    const label = JSON.stringify(id)
    errorShape(t, await post(app, '/create', { session_id: id, instructions: 'a' }), 400, `create ${label}`)
    errorShape(t, await post(app, '/create', { session_id: id, tasks: [{ instruction: 'a' }] }), 400, `create tasks ${label}`)
    errorShape(t, await post(app, '/execute', { session_id: id }), 400, `execute ${label}`)
    errorShape(t, await post(app, '/execute-all', { session_id: id }), 400, `execute-all ${label}`)
  }
  t.same(await names(parent), ['outside', 'store'], 'the parent holds nothing new')
  t.same(await names(join(parent, 'outside')), [], 'nothing outside')
  t.same(await names(dir), [LOCK_FILE], 'nothing in the storage folder either')
  t.notOk(existsSync('/etc/passwd.json'), 'no /etc/passwd.json')
  t.notOk(existsSync(join(tmpdir(), 'passwd.json')), 'nothing in the temp folder')
  t.equal((await get(app, '/stats')).json().total_sessions, 0)
})

t.test('an unreadable file that cannot be moved to corrupt/ is left in place and never overwritten: a save of its id answers 503 until it can be moved', async (t) => {
  const dir = await tempDir(t)
  const elsewhere = await tempDir(t)
  await markAsTaskvault(dir)
  const damaged = '{"session_id": "precious", "created_at": "2026-01-01T00:00:00.000Z" ... three tasks of work'
  await writeFile(join(dir, 'precious.json'), damaged)
  // corrupt/ on another volume through a symlink: the store never follows one out of the folder.
  await symlink(elsewhere, join(dir, 'corrupt'))
  const log = memoryLog()
  const app = await build(t, { dir, logger: productionLogger(log.stream, 'info') })
  const line = log.lines().find((entry) => entry.file === 'precious.json')
  t.match(line, { moved_to: null, msg: /left where it is/ }, 'the log says it stayed')
  const refused = await post(app, '/create', { session_id: 'precious', instructions: '1. new' })
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), { code: 'STORAGE_UNAVAILABLE', message: /precious\.json could not be read at restore nor moved to corrupt\/, and is never overwritten/ })
  t.equal(await readFile(join(dir, 'precious.json'), 'utf8'), damaged, 'the file is as it was')
  t.equal((await get(app, '/progress?session_id=precious')).statusCode, 404, 'nothing in memory claims the session')
  // The operator makes corrupt/ a real folder: the next save sets the file aside first.
  await rm(join(dir, 'corrupt'))
  t.equal((await post(app, '/create', { session_id: 'precious', instructions: '1. new' })).statusCode, 200)
  const setAside = await readdir(join(dir, 'corrupt'))
  t.equal(setAside.length, 1)
  t.equal(await readFile(join(dir, 'corrupt', setAside[0] as string), 'utf8'), damaged, 'kept in corrupt/')
})

t.test('a session file too large to be read as text (a foreign one; taskvault writes none) is set aside unread, active or archived; the rest loads', async (t) => {
  const dir = await tempDir(t)
  await markAsTaskvault(dir)
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  await writeFile(join(dir, 'small.json'), storedSession('small', ['Pending'], '2026-01-01T00:00:00.000Z'))
  // Sparse: no disk is used, and nothing of it is read.
  const huge = MAX_SESSION_FILE_BYTES + 1
  await writeFile(join(dir, 'huge.json'), '')
  await truncate(join(dir, 'huge.json'), huge)
  await writeFile(join(dir, 'archive', 'old.json'), '')
  await truncate(join(dir, 'archive', 'old.json'), huge)
  const log = memoryLog()
  const app = await build(t, { dir, logger: productionLogger(log.stream, 'info') })
  t.equal((await get(app, '/progress?session_id=small')).statusCode, 200, 'the rest loads')
  t.match(log.lines().find((line) => line.file === 'huge.json'), { reason: /larger than any session file can be/ })
  const list = await get(app, '/list?session_id=all&archived=include')
  t.equal(list.statusCode, 200, list.body)
  t.same(list.json().sessions.map((s: { session_id: string }) => s.session_id), ['small'])
  const setAside = await readdir(join(dir, 'corrupt'))
  t.equal(setAside.length, 2, 'both set aside')
  t.equal((await get(app, '/stats')).json().storage.failed_loads, 2)
})

t.test('validation: POST /archive takes no body or an object; a JSON null is a 400 and runs no pass', async (t) => {
  const dir = await tempDir(t)
  // Finished sessions are archived 0.1 s after they finish: a pass with the defaults would take this one.
  const app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0.1 / 86_400 } })
  await post(app, '/create', { session_id: 'done', instructions: '1. one' })
  await post(app, '/execute', { session_id: 'done' })
  await sleep(300)
  const refused = await app.inject({ method: 'POST', url: `${API}/archive`, headers: { 'content-type': 'application/json' }, payload: 'null' })
  t.equal(errorShape(t, refused, 400, 'null').message, 'body must be object')
  t.equal((await get(app, '/progress?session_id=done')).json().archived, undefined, 'no pass ran: the finished session is still active')
  // What any web page may send cross-site without a preflight (fetch with mode 'no-cors'): a bare POST.
  for (const headers of [{ origin: 'https://evil.example' }, { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors' }]) {
    const forged = await app.inject({ method: 'POST', url: `${API}/archive`, headers })
    errorShape(t, forged, 415, `a browser's bare POST (${Object.keys(headers).join(', ')})`)
  }
  t.equal((await get(app, '/progress?session_id=done')).json().archived, undefined, 'no pass ran for a web page')
  const page = await app.inject({ method: 'POST', url: `${API}/archive`, headers: { 'content-type': 'application/json', origin: 'http://127.0.0.1', 'sec-fetch-site': 'same-origin' }, payload: '{"older_than_days": 30}' })
  t.same(page.json().archived_ids, [], 'the dashboard\'s call (JSON, same origin) is answered')
  // Node's fetch names a mode (Sec-Fetch-Mode: cors) but no page: a server-side client.
  const bare = await app.inject({ method: 'POST', url: `${API}/archive`, headers: { 'sec-fetch-mode': 'cors', 'user-agent': 'node' } })
  t.same(bare.json().archived_ids, ['done'], 'no body: a pass with the defaults')
})

t.test('.env lines the parser would drop or misread are found by number, on this Node as its parser reads them', async (t) => {
  const valid = [
    "TASK_AGENTS='{\n  \"default\": {\"kind\": \"echo\"}\n}' # the demo agent\nB=2", 'A="one\ntwo\\nthree\nfour"', "A='{\n inner\n}'\nA=plain",
    'export FOO=1', 'A=x # c', 'A=1\r\nB=2\r\n', 'A = 1', 'A=', '  # c\nA=1', ' A=1', 'A=1\n \n', 'A="x\n# not a comment\ny"\nB=2', 'FOO="unterminated\nBAR=2'
  ]
  for (const text of valid) t.same(droppedEnvLines(text), [], JSON.stringify(text))
  const dropped: Array<[string, number[]]> = [
    ['TASK_STORE postgres\nTASK_ARCHIVE_DAYS=5', [1]], ['TASK_STORE postgres # was=file', [1]], ['TASK STORE=postgres', [1]], ['=postgres', [1]],
    ['DATABASE_URL=postgres://x/y\npostgres', [2]], ['KEY: value', [1]], ['export FOO', [1]], ['\uFEFFTASK_STORE=postgres\nX=1', [1]]
  ]
  for (const [text, lines] of dropped) t.same(droppedEnvLines(text), lines, JSON.stringify(text))
  // Node 20's parser joins these to the next line's name; later ones read them right.
  const quirks: Array<[string, number[]]> = [['FOO=1\n   \nBAR=2', [2]], ['FOO=1\n\t\nBAR=2', [2]], ['\uFEFF# c\nA=1', [1]], ['export  FOO=1', [1]], ['\tA=1', [1]], ['\t# c\nA=1', [1]], ['A\t=1', [1]]]
  for (const [text, lines] of quirks) {
    const misread = Object.keys(parseEnv(text)).some((name) => !/^[\w.-]+$/u.test(name))
    t.same(droppedEnvLines(text), misread ? lines : [], `${JSON.stringify(text)}: ${misread ? 'misread' : 'read right'} by this Node`)
  }
})

t.test('.json files whose names are no session id are left alone at restore, and the log says so, naming them: a session put there by hand is not silently missing', async (t) => {
  const dir = await tempDir(t)
  await markAsTaskvault(dir)
  await writeFile(join(dir, 'kept.json'), storedSession('kept', ['Pending'], '2026-01-01T00:00:00.000Z'))
  const strays = ['project.v2.json', 'my notes.json']
  for (const name of strays) await writeFile(join(dir, name), storedSession('project_v2', ['Pending'], '2026-01-01T00:00:00.000Z'))
  await writeFile(join(dir, 'notes.txt'), 'not json')
  const log = memoryLog()
  const app = await build(t, { dir, logger: productionLogger(log.stream, 'info') })
  const line = log.lines().find((entry) => /no session id/u.test(String(entry.msg)))
  t.match(line, { level: 40, count: 2 }, 'one warning counting them')
  t.same([...(line?.files as string[] ?? [])].sort(), [...strays].sort(), 'naming them (not other kinds of file)')
  t.same((await get(app, '/list?session_id=all')).json().sessions.map((s: { session_id: string }) => s.session_id), ['kept'], 'the sessions load')
  for (const name of strays) t.ok(await readFile(join(dir, name), 'utf8'), `${name} is where it was`)
  t.same((await readdir(join(dir, 'corrupt')).catch(() => [])), [], 'nothing set aside')
})
