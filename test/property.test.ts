/**
 * Property-based tests (issue 5): random bodies, ids, query strings and headers at every
 * route through `app.inject`. Whatever arrives, the service never answers 5xx, every error
 * is in Fastify's error shape, no file appears outside the storage folder, every file in
 * the folder is a valid session file that matches what the API serves, and the service is
 * still healthy afterwards. Bounded: each property runs a fixed number of cases.
 */
import assert from 'node:assert/strict'
import { STATUS_CODES } from 'node:http'
import { existsSync } from 'node:fs'
import { lstat, mkdir, readFile, readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import fc from 'fast-check'
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { SessionFile } from '../schemas/session.js'
import { MARKER_FILE } from '../services/store/storage-folder.js'
import { LOCK_FILE } from '../services/store/storage-lock.js'
import { API, build, tempDir, type TestContext } from './helper.js'

const RUNS = Number(process.env.FC_RUNS ?? 200)
/** A fixed seed would hide new cases; print it so a failure can be replayed with FC_SEED. */
const SEED = process.env.FC_SEED === undefined ? Date.now() ^ (Math.random() * 0x7fffffff) : Number(process.env.FC_SEED)
const checkSessionFile = TypeCompiler.Compile(SessionFile)
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD'] as const
type Method = (typeof METHODS)[number]

interface Request {
  method: Method
  url: string
  headers: Record<string, string>
  payload?: string
}

// ---------------------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------------------

const isSurrogate = (code: number): boolean => code >= 0xd800 && code <= 0xdfff
/** One "character" of hostile text: ASCII, any code point, lone surrogates, NUL, separators. */
const hostileUnit = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code)) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 0x10ffff }).filter((code) => !isSurrogate(code)).map((code) => String.fromCodePoint(code)) },
  { weight: 1, arbitrary: fc.constantFrom('\ud800', '\udfff', '\u0000', '\n', '\r', '\t', '\u2028', '\ufeff', '🚀', 'é', '€', '/', '\\', '.', '%') }
)
const hostileText = (maxLength: number): fc.Arbitrary<string> => fc.string({ unit: hostileUnit, maxLength })

const VALID_IDS = ['s1', 's2', 'p_3', 'x-y', 'Z9', 'a'.repeat(128)]
const validId = fc.constantFrom(...VALID_IDS)
/** An escape probe's name: if a regression ever let an id climb out, this is what would appear. */
const PROBE = 'tv-escape-probe'
const pathLikeId = fc.oneof(
  // Climbing one to three levels (at most up to the temp folder) to a plain name.
  { weight: 2, arbitrary: fc.tuple(fc.integer({ min: 1, max: 3 }), fc.constantFrom('/', '/', '\\', '%2F'), fc.constantFrom(PROBE, 's1')).map(([levels, sep, name]) => [...Array<string>(levels).fill('..'), name].join(sep)) },
  {
    weight: 1,
    arbitrary: fc.tuple(
      fc.array(fc.constantFrom('..', '.', '', PROBE, 'tmp', '%2e%2e', '%2f', 'x.json', '\u0000', '~', 's1'), { minLength: 1, maxLength: 6 }),
      fc.constantFrom('/', '\\', '', '%2F', '%5C')
    ).map(([parts, sep]) => parts.join(sep))
  }
)

/** Session ids as a client might send them: valid, reserved, path-like, or any text. */
const anyId: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: validId },
  { weight: 1, arbitrary: fc.constant('all') },
  { weight: 3, arbitrary: pathLikeId },
  { weight: 2, arbitrary: fc.string({ maxLength: 140 }) },
  { weight: 2, arbitrary: hostileText(40) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }) },
  { weight: 1, arbitrary: fc.stringMatching(/^[A-Za-z0-9_-]{120,135}$/) }
)

/** Raw JSON text fragments, including nested prototype-poisoning objects. */
const poisonJson = fc.constantFrom(
  '{"__proto__":{"polluted":true}}',
  '{"constructor":{"prototype":{"polluted":true}}}',
  '[{"__proto__":{"polluted":true}}]',
  '{"a":{"__proto__":{"polluted":true}}}',
  '{"toString":"x","valueOf":1,"hasOwnProperty":null}'
)
const jsonText = (value: fc.Arbitrary<unknown>): fc.Arbitrary<string> => value.map((v) => JSON.stringify(v) ?? 'null')
const anyJsonText = fc.oneof({ weight: 4, arbitrary: jsonText(fc.jsonValue({ maxDepth: 3 })) }, { weight: 1, arbitrary: poisonJson })

const freeText = fc.oneof(
  hostileText(200),
  fc.array(hostileText(30), { minLength: 1, maxLength: 8 }).chain((items) => fc.constantFrom('1. ', '2) ', '- ', '* ', '• ', 'Task 1: ').map((marker) => items.map((item) => marker + item).join('\n'))),
  fc.constantFrom('', '   ', '\u0000', '\ud800', 'Steps:', 'First, research, then design, and finally implement it', 'Task 1: a Task 2: b')
)
const taskType = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('Coding', 'Analysis', 'Research', 'Reasoning', 'General') },
  { weight: 1, arbitrary: fc.constantFrom('Magic', 'coding', '', '__proto__') }
)

/** An object's JSON text built by hand, so keys like `__proto__` really are in the text. */
function objectText (entries: ReadonlyArray<readonly [string, string]>): string {
  return '{' + entries.map(([key, value]) => `${JSON.stringify(key)}:${value}`).join(',') + '}'
}

const extraKey = fc.oneof(fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'extra', 'session_id'), fc.string({ maxLength: 12 }))
const extraEntries = fc.array(fc.tuple(extraKey, anyJsonText), { maxLength: 3 })

const taskText: fc.Arbitrary<string> = fc.tuple(
  fc.record({
    instruction: fc.oneof({ weight: 5, arbitrary: jsonText(hostileText(80)) }, { weight: 1, arbitrary: anyJsonText }),
    task_type: fc.oneof({ weight: 5, arbitrary: jsonText(taskType) }, { weight: 1, arbitrary: anyJsonText })
  }, { requiredKeys: ['instruction'] }),
  fc.oneof({ weight: 6, arbitrary: fc.constant([] as Array<[string, string]>) }, { weight: 1, arbitrary: extraEntries })
).map(([fields, extra]) => objectText([...Object.entries(fields), ...extra]))

/** Create bodies near the valid shape, with random extra keys. */
const nearCreateBody: fc.Arbitrary<string> = fc.tuple(
  fc.record({
    session_id: fc.oneof({ weight: 6, arbitrary: jsonText(anyId) }, { weight: 1, arbitrary: anyJsonText }),
    instructions: fc.oneof({ weight: 6, arbitrary: jsonText(freeText) }, { weight: 1, arbitrary: anyJsonText }),
    tasks: fc.oneof({ weight: 6, arbitrary: fc.array(taskText, { maxLength: 5 }).map((items) => `[${items.join(',')}]`) }, { weight: 1, arbitrary: anyJsonText })
  }, { requiredKeys: [] }),
  fc.oneof({ weight: 4, arbitrary: fc.constant([] as Array<[string, string]>) }, { weight: 1, arbitrary: extraEntries })
).map(([fields, extra]) => objectText([...Object.entries(fields), ...extra]))

/** Create bodies of the valid shape (a valid id and exactly one of instructions or tasks), often accepted. */
const validShapeCreateBody: fc.Arbitrary<string> = fc.tuple(
  validId,
  fc.oneof(
    jsonText(freeText).map((text) => ['instructions', text] as const),
    fc.array(taskText, { minLength: 1, maxLength: 5 }).map((items) => ['tasks', `[${items.join(',')}]`] as const)
  )
).map(([id, [key, value]]) => objectText([['session_id', JSON.stringify(id)], [key, value]]))

const createBody = fc.oneof(validShapeCreateBody, nearCreateBody)

/** `{session_id}` bodies for execute and execute-all, sometimes with extras. */
const sessionBody: fc.Arbitrary<string> = fc.tuple(
  fc.oneof({ weight: 6, arbitrary: jsonText(anyId) }, { weight: 1, arbitrary: anyJsonText }),
  fc.oneof({ weight: 4, arbitrary: fc.constant([] as Array<[string, string]>) }, { weight: 1, arbitrary: extraEntries })
).map(([id, extra]) => objectText([['session_id', id], ...extra]))

/** Any body at all: shaped ones, any JSON value, fc.anything, garbage, truncated JSON. */
const anyBody = (shaped: fc.Arbitrary<string>): fc.Arbitrary<string | undefined> => fc.oneof(
  { weight: 6, arbitrary: shaped },
  { weight: 2, arbitrary: anyJsonText },
  { weight: 1, arbitrary: fc.anything({ maxDepth: 3 }).map((value) => { try { return JSON.stringify(value) } catch { return 'null' } }) },
  { weight: 1, arbitrary: fc.dictionary(extraKey, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 5 }).map((value) => JSON.stringify(value)) },
  { weight: 1, arbitrary: hostileText(60) },
  { weight: 1, arbitrary: shaped.chain((text) => fc.nat({ max: Math.max(0, text.length - 1) }).map((cut) => text.slice(0, cut))) },
  { weight: 1, arbitrary: fc.constant(undefined) }
)

const contentType = fc.oneof(
  { weight: 8, arbitrary: fc.constant('application/json') },
  { weight: 3, arbitrary: fc.constantFrom('application/json; charset=utf-8', 'APPLICATION/JSON', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/octet-stream', 'application/json; charset=latin1', '') },
  { weight: 1, arbitrary: fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code)), maxLength: 30 }) },
  { weight: 1, arbitrary: fc.constant(undefined) }
)

const printable = (maxLength: number): fc.Arbitrary<string> => fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code)), maxLength })
const headerName = fc.oneof(
  fc.constantFrom('authorization', 'accept', 'accept-encoding', 'accept-language', 'content-encoding', 'x-forwarded-for', 'x-forwarded-proto',
    'x-request-id', 'connection', 'expect', 'if-none-match', 'cookie', 'user-agent', 'origin', 'referer', 'range', 'te', 'upgrade', 'host', 'accept-version'),
  fc.stringMatching(/^[a-z][a-z0-9-]{0,15}$/)
)
const headerValue = fc.oneof(printable(60), fc.constantFrom('Bearer ', 'Bearer x', 'gzip', 'br', 'keep-alive', 'close', '100-continue', 'bytes=0-1', '*/*', 'websocket'))
const headers = fc.dictionary(headerName, headerValue, { maxKeys: 6 })

/** Text that must survive encodeURIComponent (lone surrogates become U+FFFD). */
const encode = (text: string): string => encodeURIComponent(Buffer.from(text, 'utf8').toString('utf8'))
const queryKey = fc.oneof({ weight: 4, arbitrary: fc.constantFrom('session_id', 'limit', 'offset') }, { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'session_id[]', 'limit[0]', '') }, { weight: 1, arbitrary: hostileText(10) })
const queryValue = fc.oneof(anyId, fc.integer({ min: -5, max: 2000 }).map(String),
  fc.constantFrom('', '-1', '0', '1001', '1e3', '1.5', 'NaN', 'Infinity', '-Infinity', '1e400', '1e308', '9007199254740993', '0x10', 'true', '[]', '{}', 'null'), hostileText(20))
/** A query string: encoded pairs (often valid), or raw printable text. */
const queryString = fc.oneof(
  { weight: 4, arbitrary: fc.array(fc.tuple(queryKey, queryValue), { maxLength: 5 }).map((pairs) => pairs.map(([key, value]) => `${encode(key)}=${encode(value)}`).join('&')) },
  { weight: 1, arbitrary: printable(40).map((text) => text.replace(/#/gu, '%23')) }
)

const jsonHeaders = (type: string | undefined, extra: Record<string, string> = {}): Record<string, string> => ({ ...extra, ...(type === undefined ? {} : { 'content-type': type }) })

const postRequest = (path: string, body: fc.Arbitrary<string>): fc.Arbitrary<Request> =>
  fc.tuple(anyBody(body), contentType).map(([payload, type]) => ({ method: 'POST' as const, url: `${API}${path}`, headers: jsonHeaders(type), payload }))

/** One request at any route, with the route's own kind of input randomised. */
const routeRequest: fc.Arbitrary<Request> = fc.oneof(
  { weight: 4, arbitrary: postRequest('/create', createBody) },
  { weight: 2, arbitrary: postRequest('/execute', sessionBody) },
  { weight: 2, arbitrary: postRequest('/execute-all', sessionBody) },
  { weight: 1, arbitrary: anyId.map((id) => ({ method: 'GET' as const, url: `${API}/progress?session_id=${encode(id)}`, headers: {} })) },
  { weight: 1, arbitrary: fc.tuple(anyId, queryString).map(([id, query]) => ({ method: 'GET' as const, url: `${API}/list?session_id=${encode(id)}&${query}`, headers: {} })) },
  { weight: 1, arbitrary: fc.constant({ method: 'GET' as const, url: `${API}/stats`, headers: {} }) },
  { weight: 2, arbitrary: fc.tuple(anyId, fc.boolean()).map(([id, raw]) => ({ method: 'DELETE' as const, url: `${API}/sessions/${raw ? id.replace(/[^\x21-\x7e]/gu, encode) : encode(id)}`, headers: {} })) },
  { weight: 1, arbitrary: fc.constantFrom('/health', '/ready').map((url) => ({ method: 'GET' as const, url, headers: {} })) }
)

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

interface Fixture {
  /** parent/deep/store: ids that climb one or two levels land in deep/ or parent/. */
  parent: string
  deep: string
  dir: string
  app: FastifyInstance
  /** How many answers of each status class were seen (to prove cases were not all rejected). */
  seen: Map<number, number>
}

async function fixture (t: TestContext): Promise<Fixture> {
  const parent = await tempDir(t, 'taskvault-prop-')
  const deep = join(parent, 'deep')
  const dir = join(deep, 'store')
  await mkdir(deep)
  const app = await build(t, {
    dir,
    // A deterministic agent that fails on some inputs, so both outcomes are written.
    executors: { default: async (task) => { if (task.instruction.includes('!')) throw new Error(`refused: ${task.instruction}`); return { result: `done: ${task.instruction}`, confidence: 0.5 } } }
  })
  return { parent, deep, dir, app, seen: new Map() }
}

function describe (request: Request, res?: LightMyRequestResponse): string {
  return `${request.method} ${request.url} headers=${JSON.stringify(request.headers)} payload=${JSON.stringify(request.payload)}` +
    (res === undefined ? '' : ` -> ${res.statusCode} ${res.body.slice(0, 500)}`)
}

/** Sends one request and checks the answer: never 5xx, errors in Fastify's shape. */
async function send (f: Fixture, request: Request): Promise<LightMyRequestResponse> {
  const options: InjectOptions = { method: request.method, url: request.url, headers: request.headers }
  if (request.payload !== undefined) options.payload = request.payload
  const res = await f.app.inject(options)
  const status = res.statusCode
  f.seen.set(Math.floor(status / 100), (f.seen.get(Math.floor(status / 100)) ?? 0) + 1)
  assert.ok(status >= 200 && status < 500, `never a 5xx (nor a non-HTTP status): ${describe(request, res)}`)
  if (status >= 400 && request.method !== 'HEAD') {
    let body: Record<string, unknown>
    try {
      body = JSON.parse(res.body) as Record<string, unknown>
    } catch {
      assert.fail(`an error answer is JSON: ${describe(request, res)}`)
    }
    assert.equal(body.statusCode, status, `body.statusCode matches: ${describe(request, res)}`)
    assert.equal(body.error, STATUS_CODES[status], `body.error is the status text: ${describe(request, res)}`)
    assert.equal(typeof body.message, 'string', `body.message: ${describe(request, res)}`)
    assert.match(String(res.headers['content-type']), /^application\/json/u, `error content-type: ${describe(request, res)}`)
  }
  return res
}

/** Nothing ever appears next to the storage folder, one or two levels up. */
async function assertNothingOutside (f: Fixture): Promise<void> {
  assert.deepEqual(await readdir(f.parent), ['deep'], 'the parent folder holds only deep/')
  assert.deepEqual(await readdir(f.deep), ['store'], 'deep/ holds only the storage folder')
  assert.ok(!existsSync(join(tmpdir(), `${PROBE}.json`)) && !existsSync(join(tmpdir(), PROBE)), 'no escape probe in the temp folder')
}

/**
 * Every entry of the storage folder is the lock file, the `.taskvault` marker or a regular `<id>.json` file, 0600,
 * valid against the session file schema, named after its session, and identical to what
 * the API serves for that session; their number is what stats reports.
 */
async function assertStorageValid (t: Tap, f: Fixture): Promise<void> {
  await assertNothingOutside(f)
  const entries = (await readdir(f.dir)).sort()
  const sessions = entries.filter((name) => name !== LOCK_FILE && name !== MARKER_FILE)
  t.ok(entries.includes(LOCK_FILE), 'the lock file is held')
  t.ok(entries.includes(MARKER_FILE), 'the folder is marked as taskvault\'s')
  for (const name of sessions) {
    const path = join(f.dir, name)
    const info = await lstat(path)
    t.ok(info.isFile(), `${name} is a regular file`)
    t.equal(info.mode & 0o777, 0o600, `${name} is 0600`)
    t.match(name, /^[A-Za-z0-9_-]{1,128}\.json$/u, `${name}: a session file name (no temp, corrupt/ or archive/ entries)`)
    let parsed: unknown
    try {
      parsed = JSON.parse(await readFile(path, 'utf8'))
    } catch (err) {
      t.fail(`${name} parses: ${(err as Error).message}`)
      continue
    }
    const file = parsed
    const valid = checkSessionFile.Check(file)
    t.ok(valid, `${name} matches the session file schema: ${valid ? '' : JSON.stringify(checkSessionFile.Errors(file).First())}`)
    if (!valid) continue
    t.equal(`${file.session_id}.json`, name, `${name} is named after its session`)
    t.equal(file.session.session_id, file.session_id, `${name}: inner session id`)
    const served = await f.app.inject({ method: 'GET', url: `${API}/list?session_id=${file.session_id}` })
    t.equal(served.statusCode, 200, `${name} is a session the API knows`)
    t.same(served.json().tasks, file.session.tasks, `${name}: the API serves exactly what is on disk`)
  }
  const stats = (await f.app.inject({ method: 'GET', url: `${API}/stats` })).json()
  t.equal(stats.total_sessions, sessions.length, 'stats count the files on disk')
  t.equal(stats.storage.files, sessions.length)
  t.equal(stats.storage.failed_loads, 0)
}

type Tap = Parameters<Parameters<typeof t.test>[0]>[0]

/** /health and /ready still 200, and no prototype was polluted. */
async function assertHealthy (t: Tap, f: Fixture): Promise<void> {
  t.comment(`answers by status class: ${JSON.stringify(Object.fromEntries([...f.seen].map(([k, v]) => [`${k}xx`, v])))}`)
  t.equal((await f.app.inject({ method: 'GET', url: '/health' })).statusCode, 200, '/health is still 200')
  t.equal((await f.app.inject({ method: 'GET', url: '/ready' })).statusCode, 200, '/ready is still 200')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is not polluted')
  t.equal(Object.keys(Object.prototype).length, 0, 'Object.prototype gained no enumerable keys')
}

async function run<Ts extends unknown[]> (property: fc.IAsyncPropertyWithHooks<Ts>): Promise<void> {
  await fc.assert(property, { numRuns: RUNS, seed: SEED, endOnFailure: true })
}

t.comment(`fast-check seed ${SEED} (replay with FC_SEED=${SEED})`)

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

t.test('random bodies and content types at the POST routes', async (t) => {
  const f = await fixture(t)
  await run(fc.asyncProperty(fc.array(fc.oneof(
    { weight: 4, arbitrary: postRequest('/create', createBody) },
    { weight: 1, arbitrary: postRequest('/execute', sessionBody) },
    { weight: 1, arbitrary: postRequest('/execute-all', sessionBody) }
  ), { minLength: 1, maxLength: 4 }), async (requests) => {
    for (const request of requests) await send(f, request)
    await assertNothingOutside(f)
  }))
  t.ok((f.seen.get(2) ?? 0) > 0, `some requests succeeded (${JSON.stringify([...f.seen])})`)
  t.ok((f.seen.get(4) ?? 0) > 0, 'some were refused')
  await assertStorageValid(t, f)
  await assertHealthy(t, f)
})

t.test('an accepted create stores each explicit task exactly as sent (trimmed), on disk and in the API', async (t) => {
  const f = await fixture(t)
  let accepted = 0
  const tasks = fc.array(fc.record({ instruction: hostileText(80), task_type: fc.option(taskType, { nil: undefined }) }, { requiredKeys: ['instruction'] }), { minLength: 1, maxLength: 5 })
  const VALID_TYPES = new Set(['Coding', 'Analysis', 'Research', 'Reasoning', 'General'])
  await run(fc.asyncProperty(fc.tuple(validId, tasks), async ([id, specs]) => {
    const body = { session_id: id, tasks: specs.map((spec) => spec.task_type === undefined ? { instruction: spec.instruction } : spec) }
    const request: Request = { method: 'POST', url: `${API}/create`, headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) }
    const res = await send(f, request)
    await assertNothingOutside(f)
    // The oracle: accepted exactly when every task has a known (or no) type and a non-blank instruction.
    const acceptable = specs.every((spec) => spec.instruction.trim() !== '' && (spec.task_type === undefined || VALID_TYPES.has(spec.task_type)))
    assert.equal(res.statusCode, acceptable ? 200 : 400, `accepted exactly when valid: ${describe(request, res)}`)
    if (!acceptable) return
    accepted++
    const created = res.json().tasks as Array<{ id: string, instruction: string, task_type: string }>
    assert.deepEqual(created.map((task) => task.instruction), specs.map((spec) => spec.instruction.trim()), 'the answer holds the instructions as sent')
    for (const [index, spec] of specs.entries()) {
      if (spec.task_type !== undefined) assert.equal(created[index]?.task_type, spec.task_type, 'an explicit type is kept')
    }
    const listed = (await f.app.inject({ method: 'GET', url: `${API}/list?session_id=${id}` })).json().tasks as typeof created
    const onDisk = (JSON.parse(await readFile(join(f.dir, `${id}.json`), 'utf8')) as SessionFile).session.tasks
    for (const task of created) {
      assert.equal(listed.find((other) => other.id === task.id)?.instruction, task.instruction, `the list serves ${task.id} as created`)
      assert.equal(onDisk.find((other) => other.id === task.id)?.instruction, task.instruction, `the file holds ${task.id} as created`)
    }
  }))
  t.ok(accepted > RUNS / 5, `many of these creates are accepted (${accepted}/${RUNS})`)
  await assertStorageValid(t, f)
  await assertHealthy(t, f)
})

t.test('random session ids at every route', async (t) => {
  const f = await fixture(t)
  await run(fc.asyncProperty(anyId, fc.constantFrom('create', 'execute', 'execute-all', 'progress', 'list', 'delete'), async (id, route) => {
    const body = (fields: object): string => JSON.stringify(fields)
    const requests: Record<string, Request> = {
      create: { method: 'POST', url: `${API}/create`, headers: { 'content-type': 'application/json' }, payload: body({ session_id: id, instructions: '1. a\n2. b!' }) },
      execute: { method: 'POST', url: `${API}/execute`, headers: { 'content-type': 'application/json' }, payload: body({ session_id: id }) },
      'execute-all': { method: 'POST', url: `${API}/execute-all`, headers: { 'content-type': 'application/json' }, payload: body({ session_id: id }) },
      progress: { method: 'GET', url: `${API}/progress?session_id=${encode(id)}`, headers: {} },
      list: { method: 'GET', url: `${API}/list?session_id=${encode(id)}`, headers: {} },
      delete: { method: 'DELETE', url: `${API}/sessions/${encode(id)}`, headers: {} }
    }
    const res = await send(f, requests[route]!)
    if (route === 'delete' && (id === '.' || id === '..')) {
      // inject resolves dot segments before routing (real HTTP gives 400: see hardening.test.ts).
      assert.ok(res.statusCode === 400 || res.statusCode === 404, `a dot-segment id is refused: ${describe(requests[route]!, res)}`)
    } else if (!/^[A-Za-z0-9_-]{1,128}$/u.test(id)) {
      assert.equal(res.statusCode, 400, `an id outside the pattern is a 400: ${describe(requests[route]!, res)}`)
    } else if (route === 'create' && id !== 'all') {
      assert.equal(res.statusCode, 200, `a valid id can be created: ${describe(requests[route]!, res)}`)
    }
    await assertNothingOutside(f)
  }))
  await assertStorageValid(t, f)
  await assertHealthy(t, f)
})

t.test('random query strings at every route', async (t) => {
  const f = await fixture(t)
  await send(f, { method: 'POST', url: `${API}/create`, headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ session_id: 's1', instructions: '1. a\n2. b' }) })
  const path = fc.constantFrom('/progress', '/list', '/stats', '/create', '/execute', '/execute-all', '/sessions/s2').map((p) => `${API}${p}`)
  const listAll = fc.tuple(fc.constantFrom('limit', 'offset'), queryValue).map(([key, value]) => `${API}/list?session_id=all&${key}=${encode(value)}`)
  await run(fc.asyncProperty(fc.oneof(path, listAll, fc.constantFrom('/health', '/ready')), queryString, async (url, query) => {
    const post = /\/(create|execute|execute-all)$/u.test(url)
    const request: Request = post
      ? { method: 'POST', url: `${url}?${query}`, headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ session_id: 's2', instructions: 'x' }) }
      : { method: url.includes('/sessions/') ? 'DELETE' : 'GET', url: `${url}${url.includes('?') ? '&' : '?'}${query}`, headers: {} }
    const res = await send(f, request)
    if (url === '/health') assert.equal(res.statusCode, 200, `/health ignores its query: ${describe(request, res)}`)
    await assertNothingOutside(f)
  }))
  await assertStorageValid(t, f)
  await assertHealthy(t, f)
})

t.test('random headers at every route', async (t) => {
  const f = await fixture(t)
  await run(fc.asyncProperty(routeRequest, headers, async (request, extra) => {
    // The route's content type stays unless the random headers replace it.
    await send(f, { ...request, headers: { ...request.headers, ...extra } })
    await assertNothingOutside(f)
  }))
  t.ok((f.seen.get(2) ?? 0) > 0, `some requests succeeded (${JSON.stringify([...f.seen])})`)
  await assertStorageValid(t, f)
  await assertHealthy(t, f)
})

t.test('random sequences of requests, any method, at every route', async (t) => {
  const f = await fixture(t)
  const anyMethod = fc.tuple(routeRequest, fc.constantFrom(...METHODS), fc.nat({ max: 4 }))
    .map(([request, method, keep]) => (keep === 0 ? { ...request, method } : request))
  await run(fc.asyncProperty(fc.array(anyMethod, { minLength: 1, maxLength: 6 }), async (requests) => {
    for (const request of requests) await send(f, request)
    await assertNothingOutside(f)
  }))
  t.ok((f.seen.get(2) ?? 0) > 0, `some requests succeeded (${JSON.stringify([...f.seen])})`)
  await assertStorageValid(t, f)
  await assertHealthy(t, f)
})

t.test('GET /list with a non-finite limit or offset, or one not in decimal digits, is a 400, not a 500', async (t) => {
  const f = await fixture(t)
  for (const query of ['offset=Infinity', 'offset=-Infinity', 'offset=1e400', 'offset=-1e400', 'limit=Infinity', 'limit=1e400']) {
    const res = await f.app.inject({ method: 'GET', url: `${API}/list?session_id=all&${query}` })
    t.equal(res.statusCode, 400, query)
    t.equal(res.json().statusCode, res.statusCode, `${query}: error shape`)
  }
  for (const query of ['offset=1.5', 'offset=-1', 'limit=1001', 'limit=NaN']) {
    t.equal((await f.app.inject({ method: 'GET', url: `${API}/list?session_id=all&${query}` })).statusCode, 400, `${query} is a 400`)
  }
  // Number() reads these as 16, 10, 3, 5, 1 and 0: a typo would page from another place.
  for (const query of ['offset=0x10', 'offset=1e1', 'limit=0b11', 'limit=%2B5', 'offset=1.0', 'offset=%20', 'offset=']) {
    const res = await f.app.inject({ method: 'GET', url: `${API}/list?session_id=all&${query}` })
    t.match(res.json(), { statusCode: 400, code: 'FST_ERR_VALIDATION', message: /^querystring\/(offset|limit) must be an integer in decimal digits$/ }, query)
  }
  t.match((await f.app.inject({ method: 'GET', url: `${API}/list?session_id=all&offset=007&limit=10` })).json(), { offset: 7, limit: 10 }, 'decimal digits pass')
  await assertHealthy(t, f)
})
