/**
 * taskvault as a Fastify plugin inside another service: options checked at register time,
 * the prefix, the host's own executor, one registration reachable from the host, several
 * registrations independent of each other, and the building blocks used on their own.
 */
import { randomBytes } from 'node:crypto'
import { readFile, readdir } from 'node:fs/promises'
import net, { type AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { createGunzip, gzipSync } from 'node:zlib'
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import { Gauge, Registry } from 'prom-client'
import t, { type Test } from 'tap'
import taskvault, { AgentError, InvalidOptionsError, type Executor, type TaskvaultOptions } from '../index.js'
import { DatabaseUnavailableError } from '../services/errors.js'
import { TaskvaultOptionsSchema } from '../plugins/taskvault.js'
import authPlugin from '../plugins/auth.js'
import persistencePlugin from '../plugins/persistence.js'
import taskManagerPlugin from '../plugins/task-manager.js'
import taskRoutes from '../routes/tasks.js'
import configPlugin from '../plugins/config.js'
import docsPlugin from '../plugins/docs.js'
import metricsPlugin from '../plugins/metrics.js'
import swagger from '@fastify/swagger'
import { memoryLog, tempDir, type TestContext } from './helper.js'
import { inspector, testDatabase } from './postgres.js'
import { startProxy } from './tcp-proxy.js'

/** A host service, closed at teardown. */
function host (t: TestContext): FastifyInstance {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  return app
}

async function call (app: FastifyInstance, method: 'GET' | 'POST', url: string, body?: object): Promise<{ status: number, body: any }> {
  const res = await app.inject({ method, url, ...(body !== undefined && { payload: body }) })
  return { status: res.statusCode, body: res.body === '' ? null : res.json() }
}

/** The error `register` + `ready` fail with (the host is closed either way). */
async function registerError (options: unknown, plugin: unknown = taskvault): Promise<Error> {
  const app = Fastify({ logger: false })
  try {
    await app.register(plugin as typeof taskvault, options as TaskvaultOptions)
    await app.ready()
  } catch (err) {
    return err as Error
  } finally {
    await app.close()
  }
  throw new Error('registered without an error')
}

t.test('embedded under a prefix, tasks run through the host\'s own executor and are saved in its folder', async (t) => {
  const dir = await tempDir(t)
  const app = host(t)
  const calls: string[] = []
  const reviewer: Executor = async (task, { session_id: sessionId }) => {
    calls.push(`${sessionId}:${task.instruction}`)
    return { result: `reviewed ${task.instruction}`, confidence: 0.5 }
  }
  app.get('/', async () => ({ mine: true }))
  await app.register(taskvault, { prefix: '/agents', storageDir: dir, executors: { default: reviewer } })
  await app.ready()

  const created = await call(app, 'POST', '/agents/create', { session_id: 'r1', instructions: '1. read\n2. judge' })
  t.equal(created.status, 200)
  t.equal(created.body.total_tasks, 2)
  const executed = await call(app, 'POST', '/agents/execute', { session_id: 'r1' })
  t.equal(executed.status, 200)
  t.equal(executed.body.result, 'reviewed read')
  t.equal(executed.body.confidence, 0.5)
  t.same(calls, ['r1:read'])
  t.same(await readdir(dir).then((names) => names.filter((name) => name.endsWith('.json'))), ['r1.json'], 'saved in the given folder')
  t.equal((await call(app, 'POST', '/api/v1/tasks/create', { session_id: 'r1', instructions: 'x' })).status, 404, 'nothing under the standalone prefix')
  const unknownField = await call(app, 'POST', '/agents/create', { session_id: 'r1', instructions: 'x', priority: 1 })
  t.equal(unknownField.status, 400, 'taskvault\'s strict validation holds inside any host')
  t.equal(unknownField.body.statusCode, 400)
  t.equal((await call(app, 'GET', '/agents/progress?session_id=nope')).body.code, 'SESSION_NOT_FOUND', 'domain errors keep their status and code')
  t.same((await call(app, 'GET', '/')).body, { mine: true }, 'the host\'s own routes are untouched')
})

t.test('a host that decodes compressed bodies in a preParsing hook: taskvault takes them; a body nobody decoded is refused, not stored', async (t) => {
  const dir = await tempDir(t)
  const app = host(t)
  app.addHook('preParsing', async (request, _reply, payload) => {
    if (request.headers['content-encoding'] !== 'gzip') return payload
    // Fastify checks Content-Length against the bytes received: a decoder tells it how many came in encoded.
    const gunzip = Object.assign(createGunzip(), { receivedEncodedLength: 0 })
    payload.on('data', (chunk: Buffer) => { gunzip.receivedEncodedLength += chunk.length })
    return payload.pipe(gunzip)
  })
  await app.register(taskvault, { prefix: '/agents', storageDir: dir, executors: { default: async () => ({ result: 'ok' }) } })
  await app.ready()
  const body = gzipSync(JSON.stringify({ session_id: 'zipped', instructions: '1. read' }))
  const created = await app.inject({ method: 'POST', url: '/agents/create', payload: body, headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' } })
  t.equal(created.statusCode, 200, created.body)
  const undecoded = await app.inject({ method: 'POST', url: '/agents/create', payload: gzipSync(JSON.stringify({ session_id: 'undecoded', instructions: '1. read' })), headers: { 'content-type': 'application/json', 'content-encoding': 'br' } })
  t.match(undecoded.json(), { statusCode: 400, code: 'BODY_NOT_UTF8' }, 'an encoding the host does not decode: no UTF-8 JSON')
  t.equal((await app.inject({ method: 'GET', url: '/agents/progress?session_id=undecoded' })).statusCode, 404, 'nothing stored')
})

t.test('a host that parses forms: taskvault\'s routes still take JSON only (no cross-site form posts)', async (t) => {
  const dir = await tempDir(t)
  const app = host(t)
  // What @fastify/formbody or a multipart plugin would add to the host.
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_request, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)))
  })
  app.addContentTypeParser('multipart/form-data', (_request, _payload, done) => done(null, { session_id: 'multi', instructions: 'x' }))
  app.post('/feedback', async (request) => ({ got: request.body }))
  await app.register(taskvault, { prefix: '/tv', storageDir: dir })
  await app.ready()

  const form = 'session_id=form&instructions=1.+a%0A2.+b'
  for (const [url, type] of [['/tv/create', 'application/x-www-form-urlencoded'], ['/tv/create', 'multipart/form-data; boundary=x'], ['/tv/archive', 'application/x-www-form-urlencoded']]) {
    const res = await app.inject({ method: 'POST', url, payload: form, headers: { 'content-type': type } })
    t.equal(res.statusCode, 415, `${url} ${type}: 415`)
    t.match(res.json(), { statusCode: 415, code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE', message: /send the body as JSON/ })
  }
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), [], 'nothing was created')
  t.equal((await call(app, 'POST', '/tv/create', { session_id: 'json', instructions: 'x' })).status, 200, 'JSON still works')
  const own = await app.inject({ method: 'POST', url: '/feedback', payload: 'a=1', headers: { 'content-type': 'application/x-www-form-urlencoded' } })
  t.same(own.json(), { got: { a: '1' } }, 'the host\'s own form route still parses forms')
})

t.test('an executor throws the root export\'s AgentError to be retried', async (t) => {
  const app = host(t)
  const attempts: number[] = []
  await app.register(taskvault, {
    storageDir: await tempDir(t),
    executors: {
      default: {
        max_attempts: 3,
        backoff_ms: 1,
        run: async (_task, { attempt }) => {
          attempts.push(attempt)
          if (attempt === 1) throw new AgentError('overloaded', { transient: true })
          return { result: `ok on ${attempt}` }
        }
      }
    }
  })
  await app.ready()
  await call(app, 'POST', '/create', { session_id: 'r', instructions: 'x' })
  const executed = await call(app, 'POST', '/execute', { session_id: 'r' })
  t.equal(executed.body.status, 'Completed')
  t.equal(executed.body.result, 'ok on 2')
  t.same(attempts, [1, 2], 'the transient failure was retried')
})

t.test('one registration: the host reaches taskManager, persistence and archiver', async (t) => {
  const dir = await tempDir(t)
  const app = host(t)
  await app.register(taskvault, { prefix: '/tv', storageDir: dir, archiveDays: 0 })
  app.get('/my-ready', async () => ({ ready: app.taskManager.ready }))
  await app.ready()
  t.equal(app.persistence.location, dir)
  t.equal(app.archiver.enabled, false, 'archiveDays: 0 reached the archiver')
  t.same((await call(app, 'GET', '/my-ready')).body, { ready: true })
  // The host can work with sessions without HTTP; the routes see the same state.
  await app.taskManager.create('direct', [{ instruction: 'from the host', task_type: 'General' }])
  t.equal((await call(app, 'GET', '/tv/progress?session_id=direct')).body.total, 1)
})

t.test('two registrations in one host: two folders, two prefixes, independent', async (t) => {
  const [dirA, dirB] = [await tempDir(t), await tempDir(t)]
  const app = host(t)
  await app.register(taskvault, { prefix: '/a', storageDir: dirA, executors: { default: async () => ({ result: 'from A' }) } })
  await app.register(taskvault, { prefix: '/b', storageDir: dirB, decorate: false, executors: { default: async () => ({ result: 'from B' }) } })
  await app.ready()

  t.equal((await call(app, 'POST', '/a/create', { session_id: 's', instructions: '1. one\n2. two' })).status, 200)
  t.equal((await call(app, 'POST', '/b/create', { session_id: 's', instructions: 'only' })).status, 200)
  t.equal((await call(app, 'POST', '/a/execute', { session_id: 's' })).body.result, 'from A')
  t.equal((await call(app, 'POST', '/b/execute', { session_id: 's' })).body.result, 'from B')
  t.equal((await call(app, 'GET', '/a/progress?session_id=s')).body.total, 2)
  t.equal((await call(app, 'GET', '/b/progress?session_id=s')).body.total, 1)
  t.equal((await call(app, 'POST', '/b/create', { session_id: 'only_b', instructions: 'x' })).status, 200)
  t.equal((await call(app, 'GET', '/a/progress?session_id=only_b')).status, 404, 'a session of B is unknown to A')
  t.same((await readdir(dirA)).filter((name) => name.endsWith('.json')), ['s.json'])
  t.same((await readdir(dirB)).filter((name) => name.endsWith('.json')).sort(), ['only_b.json', 's.json'])
  t.equal(app.persistence.location, dirA, 'the decorating registration is the one the host sees')

  await app.close()
  for (const dir of [dirA, dirB]) t.notOk((await readdir(dir)).includes('.taskvault.lock'), `lock of ${dir} released at close`)
})

t.test('two registrations, each in its own encapsulated context, each decorate their own context', async (t) => {
  const app = host(t)
  const seen: Record<string, string> = {}
  for (const name of ['x', 'y']) {
    const dir = await tempDir(t)
    await app.register(async (scope) => {
      await scope.register(taskvault, { prefix: `/${name}`, storageDir: dir })
      scope.get(`/${name}-where`, async () => ({ dir: scope.persistence.location }))
      seen[name] = dir
    })
  }
  await app.ready()
  t.equal((await call(app, 'GET', '/x-where')).body.dir, seen.x)
  t.equal((await call(app, 'GET', '/y-where')).body.dir, seen.y)
  t.notOk(app.hasDecorator('taskManager'), 'nothing leaks to the root')
})

t.test('README\'s two forms of a second taskvault: decorate: false, or its own encapsulated context under a decorated root', async (t) => {
  const [reviews, builds, more] = [await tempDir(t), await tempDir(t), await tempDir(t)]
  const app = host(t)
  await app.register(taskvault, { prefix: '/reviews', storageDir: reviews })
  await app.register(taskvault, { prefix: '/builds', storageDir: builds, decorate: false })
  await app.register(async (scope) => {
    await scope.register(taskvault, { prefix: '/more', storageDir: more })
    scope.get('/more-where', async () => ({ dir: scope.persistence.location }))
  })
  await app.ready()
  t.equal(app.persistence.location, reviews, 'the root keeps its own')
  t.same((await call(app, 'GET', '/more-where')).body, { dir: more }, 'the context sees its own')
  for (const [prefix, dir] of [['/reviews', reviews], ['/builds', builds], ['/more', more]] as const) {
    t.equal((await call(app, 'POST', `${prefix}/create`, { session_id: 's', instructions: 'x' })).status, 200, prefix)
    t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), ['s.json'], `${prefix}: its own folder`)
  }
})

t.test('a second decorating registration on the same instance fails with a clear error', async (t) => {
  const app = host(t)
  await app.register(taskvault, { prefix: '/a', storageDir: await tempDir(t) })
  const err = await app.register(taskvault, { prefix: '/b', storageDir: await tempDir(t) }).then(() => null, (error: Error) => error)
  t.type(err, InvalidOptionsError)
  t.match(err?.message, /taskvault: this instance already has a 'persistence' decorator .*decorate: false/)
})

t.test('every option is in the README\'s table of options', async (t) => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8')
  const table = readme.slice(readme.indexOf('**Options.**'), readme.indexOf('**Encapsulation.**'))
  t.not(table, '', 'the README has the Options paragraph')
  const missing = Object.keys(TaskvaultOptionsSchema.properties).filter((option) => !table.includes(`\`${option}\``))
  t.same(missing, [], 'none left out')
})

t.test('the decorators take changes once the restore has loaded what is stored: before it (a host\'s onReady hook runs before ours) they answer NotReadyError, and the stored session is kept', async (t) => {
  const dir = await tempDir(t)
  const boot = async (hook?: (app: FastifyInstance) => Promise<void>): Promise<FastifyInstance> => {
    const app = Fastify({ logger: false })
    await app.register(taskvault, { prefix: '/agents', storageDir: dir })
    if (hook !== undefined) app.addHook('onReady', async () => { await hook(app) })
    await app.ready()
    return app
  }
  const first = await boot()
  await first.taskManager.create('nightly', [{ instruction: 'kept', task_type: 'General' }])
  await first.close()
  const refusals: Array<string | undefined> = []
  const second = await boot(async (app) => {
    for (const change of [
      async () => app.taskManager.create('nightly', [{ instruction: 'too early', task_type: 'General' }]),
      async () => app.taskManager.executeNext('nightly'),
      async () => app.taskManager.executeAll('nightly'),
      async () => app.taskManager.startBackgroundRun('nightly'),
      async () => app.taskManager.retry('nightly'),
      async () => app.taskManager.cancel('nightly'),
      async () => app.taskManager.delete('nightly')
    ]) refusals.push(await change().then(() => undefined, (err: Error & { code?: string }) => err.code))
  })
  t.teardown(() => second.close())
  t.same(refusals, Array(7).fill('NOT_READY'), 'every change refused, none applied over an empty view')
  t.same(second.taskManager.get('nightly').session.tasks.map((task) => task.instruction), ['kept'], 'the stored session is as it was')
  await second.taskManager.create('nightly', [{ instruction: 'after', task_type: 'General' }])
  const stored = JSON.parse(await readFile(`${dir}/nightly.json`, 'utf8')) as { session: { tasks: Array<{ instruction: string }> } }
  t.same(stored.session.tasks.map((task) => task.instruction), ['kept', 'after'], 'once ready, a create adds to it')
})

t.test('options are checked at register time, naming the bad one', async (t) => {
  const dir = await tempDir(t)
  const cases: Array<[string, object, RegExp]> = [
    ['unknown option', { storagedir: dir }, /^taskvault: unknown option 'storagedir' \(known: .*storageDir/],
    ['wrong type', { storageDir: 42 }, /^taskvault: option 'storageDir': expected string \(got 42\)/],
    ['below the minimum', { storageDir: dir, archiveDays: -1 }, /^taskvault: option 'archiveDays': .*greater or equal to 0 \(got -1\)/],
    ['not finite', { storageDir: dir, shutdownGraceMs: Infinity }, /^taskvault: option 'shutdownGraceMs'/],
    ['executor not a function', { storageDir: dir, executors: { Coding: 'fast' } }, /^taskvault: option 'executors.Coding' must be a function \(got "fast"\)/],
    ['unknown task type', { storageDir: dir, executors: { Magic: async () => ({ result: '' }) } }, /^taskvault: unknown key 'Magic' in option 'executors' \(known: default, Coding/],
    ['api keys not a list', { storageDir: dir, apiKeys: 'k1' }, /^taskvault: option 'apiKeys': expected array/],
    ['bad prefix', { storageDir: dir, prefix: 'agents' }, /^taskvault: option 'prefix'/],
    ['not a registry', { storageDir: dir, metricsRegistry: {} }, /^taskvault: option 'metricsRegistry' has no 'registerMetric'/],
    // Names every object inherits are no option and no task type.
    ['an inherited name', { storageDir: dir, toString: 1 }, /^taskvault: unknown option 'toString' \(known: /],
    ['another inherited name', { storageDir: dir, constructor: 1 }, /^taskvault: unknown option 'constructor' \(known: /],
    ['an inherited name as task type', { storageDir: dir, executors: { toString: async () => ({ result: '' }) } }, /^taskvault: unknown key 'toString' in option 'executors'/],
    ['a misspelt executor policy field', { storageDir: dir, executors: { default: { run: async () => ({ result: '' }), max_attempt: 3 } } }, /^taskvault: unknown key 'max_attempt' in option 'executors\.default' \(known: run, timeout_ms, max_attempts/],
    ['not a pool', { store: 'postgres', pool: { query: async () => ({}), connect: async () => ({}) } }, /^taskvault: option 'pool' has no 'on'/],
    ['a choice', { storageDir: dir, store: 'mysql' }, /^taskvault: option 'store' must be one of 'file', 'postgres' \(got "mysql"\)/],
    ['an executor policy out of range', { storageDir: dir, executors: { default: { run: async () => ({ result: '' }), max_attempts: 0 } } }, /^taskvault: option 'executors\.default\.max_attempts': expected integer to be greater or equal to 1/]
  ]
  for (const [name, options, message] of cases) {
    const err = await registerError(options)
    t.type(err, InvalidOptionsError, name)
    t.match(err.message, message, name)
  }
  t.same(await readdir(dir), [], 'a refused registration touches no storage')
  const blockError = await registerError({ storageDir: dir, lockStaleMs: 'soon' }, persistencePlugin)
  t.match(blockError.message, /^taskvault-persistence: option 'lockStaleMs': expected integer/, 'the building blocks check their options too')
})

t.test('settings that do not fit together, found while registering, are named as options, not environment variables', async (t) => {
  const dir = await tempDir(t)
  // Never connects: a pool opens connections only when asked for one.
  const pool = new pg.Pool({ connectionString: 'postgres://127.0.0.1:1/none' })
  t.teardown(() => pool.end())
  const cases: Array<[string, object, RegExp]> = [
    ['lock timings', { storageDir: dir, lockRefreshMs: 1000, lockStaleMs: 1500 }, /^taskvault-persistence: option 'lockStaleMs' \(1500\) must be at least twice option 'lockRefreshMs' \(1000\)$/],
    ['encryption keys', { storageDir: dir, encryptionKeys: 'not-a-key' }, /^taskvault-persistence: option 'encryptionKeys': /],
    ['postgres without a URL', { store: 'postgres' }, /^taskvault-persistence: option 'databaseUrl': is required with store: 'postgres'/],
    ['a database URL without the postgres store', { storageDir: dir, databaseUrl: 'postgres://127.0.0.1:1/none' }, /^taskvault-persistence: option 'databaseUrl' is given but store is 'file'/],
    ['a pool with the file store', { storageDir: dir, store: 'file', pool }, /^taskvault-persistence: option 'pool' is given with store: 'file'/],
    ['agent specs', { storageDir: dir, agents: { default: { kind: 'magic' } } }, /^taskvault-task-manager: option 'agents\.default\.kind': must be one of/]
  ]
  for (const [name, options, message] of cases) {
    const err = await registerError(options)
    t.type(err, InvalidOptionsError, name)
    t.match(err.message, message, name)
    t.notMatch(err.message, /TASK_|DATABASE_URL/, `${name}: no environment variable named`)
  }
})

t.test('limits met at run time are named as the options the host set, not environment variables it never read', async (t) => {
  const app = host(t)
  await app.register(taskvault, { prefix: '/tv', storageDir: await tempDir(t), maxSessions: 1, maxTasksPerSession: 2, maxInstructionBytes: 10 })
  const create = async (payload: object): Promise<{ status: number, body: any }> => call(app, 'POST', '/tv/create', payload)
  t.match(await create({ session_id: 'a', instructions: 'far more than ten bytes' }), { status: 400, body: { message: "task 1 is 23 bytes; the limit is 10 (option 'maxInstructionBytes')" } })
  t.equal((await create({ session_id: 'a', instructions: '1. x\n2. y' })).status, 200)
  t.match(await create({ session_id: 'a', instructions: 'z' }), { status: 400, body: { message: "session 'a' would have 3 tasks; the limit is 2 (option 'maxTasksPerSession')" } })
  t.match(await create({ session_id: 'b', instructions: 'z' }), { status: 507, body: { message: /its maximum of 1 sessions \(option 'maxSessions'\)/u } })
})

t.test('embedded without options: the settings\' defaults, not the environment', async (t) => {
  const dir = await tempDir(t)
  const app = host(t)
  process.env.TASK_MAX_TASKS_PER_SESSION = '1'
  t.teardown(() => { delete process.env.TASK_MAX_TASKS_PER_SESSION })
  await app.register(taskvault, { storageDir: dir })
  await app.ready()
  const res = await call(app, 'POST', '/create', { session_id: 's', instructions: '1. a\n2. b\n3. c' })
  t.equal(res.status, 200, 'TASK_MAX_TASKS_PER_SESSION in the environment does not reach an embedded taskvault')
  const big = await app.inject({ method: 'POST', url: '/create', payload: { session_id: 's', instructions: 'x'.repeat(1024 * 1024 + 10) } })
  t.equal(big.statusCode, 413, 'BODY_LIMIT default (1 MiB)')
})

t.test('logLevel and logSerializers apply to taskvault\'s routes; the building blocks refuse them', async (t) => {
  const lines: Array<Record<string, any>> = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
  t.teardown(() => app.close())
  app.get('/mine', async () => 'mine')
  await app.register(taskvault, { prefix: '/tv', storageDir: await tempDir(t), logLevel: 'info', logSerializers: { req: (req: { url: string }) => `marked ${req.url}` } })
  await app.ready()
  await app.inject('/tv/stats')
  await app.inject('/mine')
  const incoming = lines.filter((line) => line.msg === 'incoming request').map((line) => line.req)
  t.same(incoming, ['marked /tv/stats'], 'taskvault\'s route logs at info with the host\'s serializer; the host\'s stays at warn')

  const err = await registerError({ storageDir: await tempDir(t), logLevel: 'loud' })
  t.match(err.message, /^taskvault: option 'logLevel'/)
  const serializer = await registerError({ storageDir: await tempDir(t), logSerializers: { req: 'x' } as never })
  t.match(serializer.message, /^taskvault: option 'logSerializers\.req' must be a function \(got/, 'a serializer that is not a function is refused at register, not at the first log line')
  const block = await registerError({ storageDir: await tempDir(t), logLevel: 'info' }, persistencePlugin)
  t.match(block.message, /^taskvault-persistence: unknown option 'logLevel'/, 'a building block has no routes of its own to apply it to')
})

t.test('an embedded taskvault without agents warns in terms of its option, not of an environment variable it never reads', async (t) => {
  const lines: Array<Record<string, any>> = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
  t.teardown(() => app.close())
  await app.register(taskvault, { storageDir: await tempDir(t) })
  await app.ready()
  t.match(lines.map((line) => line.msg), [/^option 'agents' is not set: every task goes to the echo demo agent/])
})

t.test('an embedded taskvault with executors for some task types and no agents warns, naming the types the echo demo agent answers', async (t) => {
  const coder: Executor = async () => ({ result: 'coded' })
  const warnings = async (executors: TaskvaultOptions['executors']): Promise<Array<Record<string, any>>> => {
    const lines: Array<Record<string, any>> = []
    const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
    t.teardown(() => app.close())
    await app.register(taskvault, { prefix: '/tv', storageDir: await tempDir(t), executors })
    await app.ready()
    return lines
  }
  const some = await warnings({ Coding: coder })
  t.match(some, [{ level: 40, task_types: ['Analysis', 'Research', 'Reasoning', 'General'], msg: /^option 'agents' is not set and executors has no "default" entry nor one for these task types: their tasks go to the echo demo agent/ }])
  t.equal(some.length, 1, 'one warning')
  t.match(await warnings({}), [{ msg: /^option 'agents' is not set: every task goes to the echo demo agent/ }], 'no executor at all: every task')
  t.same(await warnings({ default: coder }), [], 'a default executor leaves nothing to echo')
  t.same(await warnings({ Coding: coder, Analysis: coder, Research: coder, Reasoning: coder, General: coder }), [], 'nor do executors for every type')
})

t.test('apiKeys guard an embedded taskvault\'s routes only', async (t) => {
  const app = host(t)
  app.get('/open', async () => 'yes')
  await app.register(taskvault, { prefix: '/tv', storageDir: await tempDir(t), apiKeys: ['secret'] })
  await app.ready()
  t.equal((await app.inject({ method: 'GET', url: '/tv/stats' })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/tv/stats', headers: { authorization: 'Bearer secret' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/open' })).statusCode, 200)
})

t.test('the host reaches the key check guarding an embedded taskvault (app.verifyApiKey) for routes of its own', async (t) => {
  const app = host(t)
  await app.register(taskvault, { prefix: '/tv', storageDir: await tempDir(t), apiKeys: ['secret'] })
  app.get('/mine', { onRequest: app.verifyApiKey }, async () => 'mine')
  await app.ready()
  t.equal(typeof app.verifyApiKey, 'function', 'what the types promise is there')
  t.equal((await app.inject({ method: 'GET', url: '/mine' })).statusCode, 401, 'the host\'s route is guarded, not silently open')
  t.equal((await app.inject({ method: 'GET', url: '/mine', headers: { authorization: 'Bearer secret' } })).statusCode, 200)

  const second = host(t)
  await second.register(authPlugin, { apiKeys: ['host-key'] })
  await second.register(taskvault, { prefix: '/tv', storageDir: await tempDir(t), apiKeys: ['tv-key'] })
  second.get('/mine', { onRequest: second.verifyApiKey }, async () => 'mine')
  t.equal((await second.inject({ method: 'GET', url: '/mine', headers: { authorization: 'Bearer host-key' } })).statusCode, 200, 'a host with its own key check keeps it')
  t.equal((await second.inject({ method: 'GET', url: '/tv/stats', headers: { authorization: 'Bearer tv-key' } })).statusCode, 200)

  // Without apiKeys of its own there is no check to share: a host registering taskvault/auth afterwards starts.
  const third = host(t)
  await third.register(taskvault, { prefix: '/tv', storageDir: await tempDir(t) })
  await third.register(authPlugin, { apiKeys: ['late'] })
  third.get('/mine', { onRequest: third.verifyApiKey }, async () => 'mine')
  await third.ready()
  t.equal((await third.inject({ method: 'GET', url: '/mine' })).statusCode, 401, 'the host\'s own check, registered after')
})

t.test('a host hook answering an error in a shape of its own (its auth\'s 401, a maintenance 503) reaches the client with that status in the documented error shape, not as a 500', async (t) => {
  const app = host(t)
  app.addHook('onRequest', async (request, reply) => {
    if (request.headers['x-maintenance'] === '1') return reply.code(503).send({ maintenance: true })
    if (request.headers.authorization !== 'Bearer ok') return reply.code(401).send({ error: 'missing authorization header', code: 'HOST_AUTH' })
  })
  await app.register(taskvault, { prefix: '/tv', storageDir: await tempDir(t) })
  await app.ready()
  const denied = await app.inject({ method: 'GET', url: '/tv/stats' })
  t.equal(denied.statusCode, 401)
  t.same(denied.json(), { statusCode: 401, code: 'HOST_AUTH', error: 'Unauthorized', message: 'missing authorization header' })
  const down = await app.inject({ method: 'POST', url: '/tv/create', headers: { authorization: 'Bearer ok', 'x-maintenance': '1' }, payload: { session_id: 'x', instructions: 'a' } })
  t.equal(down.statusCode, 503)
  t.same(down.json(), { statusCode: 503, error: 'Service Unavailable', message: 'Service Unavailable' })
  const own = await app.inject({ method: 'GET', url: '/tv/progress?session_id=nope', headers: { authorization: 'Bearer ok' } })
  t.same(own.json(), { statusCode: 404, code: 'SESSION_NOT_FOUND', error: 'Not Found', message: "session 'nope' not found" }, 'taskvault\'s own errors as they were')
})

t.test('two taskvaults report into one metrics registry under two prefixes; the same prefix is refused', async (t) => {
  const registry = new Registry()
  const app = host(t)
  await app.register(taskvault, { prefix: '/a', storageDir: await tempDir(t), metricsRegistry: registry })
  await app.register(taskvault, { prefix: '/b', storageDir: await tempDir(t), decorate: false, metricsRegistry: registry, metricsPrefix: 'reviews_' })
  await app.ready()
  await call(app, 'POST', '/b/create', { session_id: 's', instructions: 'x' })
  const text = await registry.metrics()
  t.match(text, /^taskvault_tasks\{status="Pending"\} 0$/m)
  t.match(text, /^reviews_tasks\{status="Pending"\} 1$/m)

  const clash = host(t)
  const err = await clash.register(taskvault, { prefix: '/c', storageDir: await tempDir(t), decorate: false, metricsRegistry: registry }).then(() => null, (error: Error) => error)
  t.match(err?.message, /metricsRegistry already holds metrics named 'taskvault_\*'/)
  await app.close()
  t.same(registry.getMetricsAsArray(), [], 'closing removes every metric it added')
})

t.test('embedded, a client error is the host\'s own to answer and count: its clientErrorHandler answers it once, and taskvault\'s metrics count nothing for it', async (t) => {
  const handled: string[] = []
  const app = Fastify({
    logger: false,
    clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
      handled.push(err.code ?? '')
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 12\r\n\r\nhost says no')
    }
  })
  t.teardown(() => app.close())
  await app.register(metricsPlugin)
  await app.register(taskvault, { prefix: '/tasks', storageDir: await tempDir(t), metricsRegistry: app.metricsRegistry })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const socket = net.connect((app.server.address() as AddressInfo).port, '127.0.0.1').setEncoding('utf8')
  let received = ''
  socket.on('data', (chunk: string) => { received += chunk }).on('error', () => {})
  socket.end('NOT HTTP AT ALL\r\n\r\n')
  await new Promise((resolve) => socket.once('close', resolve))
  t.equal(received, 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 12\r\n\r\nhost says no', 'the host\'s own answer, alone')
  t.same(handled, ['HPE_INVALID_METHOD'], 'its handler called once')
  t.notMatch(await app.metricsRegistry.metrics(), /^http_request_duration_seconds_count\{/mu, 'no request counted')
})

t.test('the building blocks alone: auth, persistence, task manager and routes registered by the host', async (t) => {
  const dir = await tempDir(t)
  const app = host(t)
  await app.register(authPlugin, { apiKeys: [] })
  await app.register(persistencePlugin, { storageDir: dir })
  await app.register(taskManagerPlugin, { autoSave: true })
  await app.register(taskRoutes, { prefix: '/jobs' })
  await app.ready()
  t.equal((await call(app, 'POST', '/jobs/create', { session_id: 'b', instructions: 'go' })).status, 200)
  t.equal((await call(app, 'POST', '/jobs/execute', { session_id: 'b' })).body.status, 'Completed')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), ['b.json'])
  t.equal(app.taskManager.get('b').session.tasks[0]?.status, 'Completed', 'the decorators are the host\'s own')
  const unknown = await call(app, 'POST', '/jobs/create', { session_id: 'c', instructions: 'go', extra: 1 })
  t.equal(unknown.status, 400, 'an unknown field is refused, whatever the host\'s own validator does with it')
  t.match(unknown.body.message, /must NOT have additional properties/)
})

t.test('a host whose serializer compiler reads schemas of another kind (as a zod type provider\'s does): taskvault\'s routes keep their own, composite or building block', async (t) => {
  const marked = Symbol('host schema')
  // Like fastify-type-provider-zod's: it refuses any schema not of its own kind.
  const hostSerializer = ({ schema }: { schema: unknown }): ((data: unknown) => string) => {
    if (typeof schema !== 'object' || schema === null || !(marked in schema)) throw new Error('Invalid schema passed')
    return (data) => JSON.stringify({ host: data })
  }
  for (const blocks of [false, true]) {
    const app = host(t)
    app.setSerializerCompiler(hostSerializer)
    app.get('/mine', { schema: { response: { 200: { [marked]: true } } } }, async () => ({ mine: true }))
    const dir = await tempDir(t)
    if (blocks) {
      await app.register(authPlugin, { apiKeys: [] })
      await app.register(persistencePlugin, { storageDir: dir })
      await app.register(taskManagerPlugin)
      await app.register(taskRoutes, { prefix: '/jobs' })
    } else await app.register(taskvault, { prefix: '/jobs', storageDir: dir })
    await app.ready()
    const created = await call(app, 'POST', '/jobs/create', { session_id: 'z', instructions: '1. a\n2. b' })
    t.equal(created.status, 200, `${blocks ? 'building blocks' : 'composite'}: boots and answers`)
    t.match(created.body, { session_id: 'z', total_tasks: 2 }, 'in its own schema\'s shape')
    t.same((await call(app, 'GET', '/mine')).body, { host: { mine: true } }, 'the host\'s routes keep the host\'s serializer')
  }
})

t.test('the building blocks a host may misuse: config and routes check their options, config leaves the host\'s log level, a prefix with a parameter and a second OpenAPI document are refused at registration', async (t) => {
  const app = Fastify({ logger: { level: 'debug' } })
  t.teardown(() => app.close())
  await app.register(configPlugin, { readEnvironment: false, values: { TASK_STORAGE_DIR: await tempDir(t), LOG_LEVEL: 'error' } })
  await app.ready()
  t.equal(app.log.level, 'debug', 'the host\'s logger keeps its level')
  for (const [options, message] of [
    [{ value: { TASK_STORAGE_DIR: '/srv/x' }, readEnvironment: false }, /unknown option 'value'/],
    [{ values: { NOPE: 1 }, readEnvironment: false }, /values names no setting 'NOPE'/],
    [{ readEnvironment: 'no' }, /readEnvironment/]
  ] as const) {
    const err = await registerError(options, configPlugin)
    t.type(err, InvalidOptionsError, JSON.stringify(options))
    t.match(err.message, message)
  }
  const routes = Fastify({ logger: false })
  t.teardown(() => routes.close())
  await routes.register(authPlugin, { apiKeys: [] })
  await routes.register(persistencePlugin, { storageDir: await tempDir(t) })
  await routes.register(taskManagerPlugin)
  for (const [options, message] of [[{ nope: 1 }, /unknown option 'nope'/], [{ bodyLimit: 'x' }, /bodyLimit/]] as const) {
    const err = await routes.register(taskRoutes, options as never).then(() => null, (e: Error) => e)
    t.type(err, InvalidOptionsError, JSON.stringify(options))
    t.match(err?.message, message)
  }
  // Fastify's own register options apply to the routes' context, and are taken.
  const logged = Fastify({ logger: false })
  t.teardown(() => logged.close())
  await logged.register(authPlugin, { apiKeys: [] })
  await logged.register(persistencePlugin, { storageDir: await tempDir(t) })
  await logged.register(taskManagerPlugin)
  await logged.register(taskRoutes, { prefix: '/t', logLevel: 'warn', logSerializers: { req: () => ({}) } } as never)
  await logged.ready()
  t.equal((await call(logged, 'POST', '/t/create', { session_id: 'l', instructions: 'a' })).status, 200, 'logLevel and logSerializers given to the routes')
  t.type(await registerError({ prefix: '/:tenant', storageDir: await tempDir(t) }), InvalidOptionsError, 'a prefix with a parameter')
  const documented = Fastify({ logger: false })
  t.teardown(() => documented.close())
  await documented.register(swagger, { openapi: { info: { title: 'host', version: '1' } } })
  const docsError = await documented.register(docsPlugin, {}).then(() => null, (e: Error) => e)
  t.type(docsError, InvalidOptionsError, 'taskvault/docs where the host has its own OpenAPI document: an error register can catch')
  t.match(docsError?.message, /OpenAPI document already/)
})

t.test('two registrations in one OpenAPI document, each given an operationIdPrefix: every operationId unique, the prefix before each', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(docsPlugin, {})
  await app.register(taskvault, { prefix: '/reviews', storageDir: await tempDir(t), operationIdPrefix: 'reviews_' })
  await app.register(taskvault, { prefix: '/builds', storageDir: await tempDir(t), decorate: false, operationIdPrefix: 'builds_' })
  await app.ready()
  const document = app.swagger() as { paths: Record<string, Record<string, { operationId?: string }>> }
  const ids = Object.values(document.paths).flatMap((path) => Object.values(path).map((operation) => operation.operationId))
  t.equal(new Set(ids).size, ids.length, `no operationId twice (${ids.length})`)
  t.equal(document.paths['/reviews/create']?.post?.operationId, 'reviews_createTasks')
  t.equal(document.paths['/builds/create']?.post?.operationId, 'builds_createTasks')
  const bad = await Fastify({ logger: false }).register(taskvault, { storageDir: await tempDir(t), operationIdPrefix: 'no spaces' }).then(() => null, (e: Error) => e)
  t.type(bad, InvalidOptionsError, 'a prefix that is no identifier is refused')
})

t.test('registrations that differ on keys in one OpenAPI document: each route says whether it asks for one, and only those that do list a 401', async (t) => {
  type Operation = { security?: unknown[], responses: Record<string, unknown> }
  const documentOf = async (bearerAuth: boolean): Promise<{ app: FastifyInstance, paths: Record<string, Record<string, Operation>>, schemes: unknown }> => {
    const app = Fastify({ logger: false })
    t.teardown(() => app.close())
    await app.register(docsPlugin, { bearerAuth })
    await app.register(taskvault, { prefix: '/open', storageDir: await tempDir(t), operationIdPrefix: 'open_', apiKeys: [] })
    await app.register(taskvault, { prefix: '/keyed', storageDir: await tempDir(t), decorate: false, operationIdPrefix: 'keyed_', apiKeys: ['secret-key'] })
    await app.ready()
    const document = app.swagger() as unknown as { paths: Record<string, Record<string, Operation>>, components?: { securitySchemes?: unknown } }
    return { app, paths: document.paths, schemes: document.components?.securitySchemes }
  }
  for (const bearerAuth of [false, true]) {
    const { app, paths, schemes } = await documentOf(bearerAuth)
    const keyed = paths['/keyed/create']?.post
    const open = paths['/open/create']?.post
    t.same(keyed?.security, [{ apiKey: [] }], `bearerAuth ${String(bearerAuth)}: the keyed registration asks for a key`)
    t.ok(keyed?.responses['401'] !== undefined, 'and lists its 401')
    t.same(open?.security, [], 'the open one asks for none')
    t.equal(open?.responses['401'], undefined, 'and lists no 401')
    t.match(schemes, { apiKey: { type: 'http', scheme: 'bearer' } }, 'the scheme named is defined')
    t.equal((await app.inject({ method: 'POST', url: '/keyed/create', payload: { session_id: 's', instructions: 'a' } })).statusCode, 401, 'as the keyed routes answer')
    t.equal((await app.inject({ method: 'POST', url: '/open/create', payload: { session_id: 's', instructions: 'a' } })).statusCode, 200, 'and the open ones')
  }
  // A host's own document, without the scheme: the routes name none, and the document builds.
  const own = Fastify({ logger: false })
  t.teardown(() => own.close())
  await own.register(swagger, { openapi: { info: { title: 'host', version: '1' } } })
  await own.register(taskvault, { prefix: '/keyed', storageDir: await tempDir(t), apiKeys: ['secret-key'] })
  await own.ready()
  t.ok((own.swagger() as unknown as { paths: Record<string, unknown> }).paths['/keyed/create'] !== undefined, 'a host\'s own @fastify/swagger lists the keyed routes')
})

t.test('the task manager called by a host\'s own code refuses a bad session id or task (a blank instruction too, as POST /create does) with a 400, changing nothing', async (t) => {
  const app = host(t)
  const dir = await tempDir(t)
  await app.register(taskvault, { prefix: '/t', storageDir: dir })
  app.post('/mine/:id', async (request) => app.taskManager.create((request.params as { id: string }).id, (request.body as { tasks: never }).tasks))
  await app.ready()
  const escape = await call(app, 'POST', '/mine/..%2Fescape', { tasks: [{ instruction: 'hi', task_type: 'General' }] })
  t.equal(escape.status, 400)
  t.match(escape.body, { code: 'INVALID_SESSION_ID' })
  for (const tasks of [[{}], [{ instruction: 'hi', task_type: 'Cooking' }], 'hi', [{ instruction: '', task_type: 'General' }], [{ instruction: 'hi', task_type: 'General' }, { instruction: ' \u200b\n', task_type: 'General' }]]) {
    const bad = await call(app, 'POST', '/mine/ok', { tasks })
    t.equal(bad.status, 400, JSON.stringify(tasks))
    t.match(bad.body, { code: 'INVALID_INSTRUCTIONS' })
  }
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), [], 'nothing was saved')
})

t.test('the task routes registered without the task manager (or auth) before them: a clear error at registration', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  const dir = await tempDir(t)
  const err = await (async () => {
    await app.register(authPlugin, { apiKeys: [] })
    await app.register(persistencePlugin, { storageDir: dir })
    await app.register(taskRoutes)
  })().then(() => null, (e: Error) => e)
  t.type(err, InvalidOptionsError)
  t.match(err?.message, /^taskvault-routes: register taskvault\/task-manager before taskvault\/routes/)
})

t.test('the building blocks under the host\'s own routes: domain errors keep their status through Fastify\'s error handler', async (t) => {
  const app = host(t)
  await app.register(persistencePlugin, { storageDir: await tempDir(t) })
  await app.register(taskManagerPlugin)
  app.get('/mine/:id', async (request) => app.taskManager.get((request.params as { id: string }).id))
  await app.ready()
  const missing = await call(app, 'GET', '/mine/missing')
  t.equal(missing.status, 404)
  t.match(missing.body, { statusCode: 404, code: 'SESSION_NOT_FOUND', error: 'Not Found', message: "session 'missing' not found" })
})

/**
 * Listens, asks for `path` with a client that reads its first bytes only, then closes the app once
 * the answer has filled every buffer on the way: close() must end after the grace (shutdownGraceMs
 * 300 + eventsCloseMs 200), not at once and not never. The answer's first bytes come back.
 */
async function closeWithStalledReader (t: Test, app: FastifyInstance, path: string): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const socket = net.connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  const head = await new Promise<string>((resolve) => socket.once('data', (chunk: Buffer) => { socket.pause(); resolve(chunk.toString('latin1')) }))
  // Time for the answer to fill every buffer on the way and stop, waiting for a reader.
  await sleep(2000)
  const started = Date.now()
  const closed = await Promise.race([app.close().then(() => true), sleep(15_000, false)])
  t.ok(closed, `close() ended (${Date.now() - started} ms)`)
  t.ok(Date.now() - started >= 450, 'after the wait, not at once')
  return head
}

t.test('embedded, a backup download nobody reads is cut once closing has waited shutdownGraceMs + eventsCloseMs: the host\'s close() ends', async (t) => {
  const app = host(t)
  const storageDir = await tempDir(t)
  await app.register(taskvault, { prefix: '/tv', storageDir, shutdownGraceMs: 300, eventsCloseMs: 200, maxInstructionBytes: 1_000_000, bodyLimit: 2_000_000 })
  // 24 MB that does not compress: more than the socket's buffers on both sides take.
  for (let i = 0; i < 40; i++) {
    const res = await app.inject({ method: 'POST', url: '/tv/create', payload: { session_id: `big_${i}`, tasks: [{ instruction: randomBytes(450_000).toString('base64') }] } })
    t.equal(res.statusCode, 200)
  }
  await closeWithStalledReader(t, app, '/tv/backup')
})

t.test('embedded, a large session\'s streamed answer nobody reads is cut once closing has waited shutdownGraceMs + eventsCloseMs, not answerStallMs', async (t) => {
  const app = host(t)
  const storageDir = await tempDir(t)
  await app.register(taskvault, { prefix: '/tv', storageDir, shutdownGraceMs: 300, eventsCloseMs: 200, answerStallMs: 60_000, maxInstructionBytes: 1_000_000, bodyLimit: 4_000_000 })
  // 24 MB in one session, so its answer is streamed: more than the socket's buffers on both sides take.
  for (let i = 0; i < 8; i++) {
    const tasks = Array.from({ length: 5 }, () => ({ instruction: randomBytes(450_000).toString('base64') }))
    const res = await app.inject({ method: 'POST', url: '/tv/create', payload: { session_id: 'big', tasks } })
    t.equal(res.statusCode, 200)
  }
  const head = await closeWithStalledReader(t, app, '/tv/list?session_id=big')
  t.match(head, /transfer-encoding: chunked/iu, 'the answer was streamed')
})

t.test('a database down at boot, in a host with Fastify\'s pluginTimeout: the host hears DATABASE_UNAVAILABLE within it, and once it closed nothing connects later', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const target = new URL(url)
  const proxy = await startProxy(Number(target.port || 5432), target.hostname)
  t.teardown(() => proxy.close())
  proxy.drop()
  const through = new URL(url)
  through.port = String(proxy.port)
  const app = Fastify({ logger: false, pluginTimeout: 2000 })
  const started = performance.now()
  const err = await app.register(persistencePlugin, { store: 'postgres', databaseUrl: through.toString(), dbSchema: 'tv_embedded_down', replicaId: 'embedded-gone' }).then(() => null, (e: Error) => e)
  t.type(err, DatabaseUnavailableError, String(err))
  t.match(err?.message, /within the host's pluginTimeout/)
  t.ok(performance.now() - started < 2000, 'before Fastify gave up on the plugin')
  await app.close()
  // The database is back: a boot given up on must not open its store behind the host's back.
  proxy.pass()
  await sleep(1500)
  t.equal(proxy.connections(), 0, 'no connection to the database')
  const db = inspector(t, url, 'tv_embedded_down')
  const replicas = await db.query("SELECT to_regclass('tv_embedded_down.replicas') AS table").then(async ({ rows }) => rows[0]?.table === null ? 0 : (await db.query('SELECT 1 FROM replicas')).rowCount)
  t.equal(replicas, 0, 'no replica row claimed')
})

t.test('a registration that fails past the store (agents naming a variable not set) lets the store go, though the host never closes: a retry in the process opens it', async (t) => {
  const agents = { default: { kind: 'openai' as const, base_url: 'https://api.openai.com/v1', model: 'gpt-4o-mini', api_key_env: 'TV_UNSET_KEY' } }
  const attempt = async (options: TaskvaultOptions): Promise<{ app: FastifyInstance, err: Error | null }> => {
    const app = Fastify({ logger: false })
    const err = await app.register(taskvault, options).then(() => null, (e: Error) => e)
    return { app, err }
  }
  const dir = await tempDir(t)
  const failed = await attempt({ storageDir: dir, agents, env: {} })
  t.match(failed.err?.message, /api_key_env.*TV_UNSET_KEY is not set/u, 'the registration fails naming the variable')
  // Not closed, as a host that only reports a failed start does: the folder's lock was let go all the same.
  const retry = await attempt({ storageDir: dir, agents, env: { TV_UNSET_KEY: 'sk-test' } })
  t.teardown(() => retry.app.close())
  t.equal(retry.err, null, 'the folder opens again in the same process')
  t.equal((await call(retry.app, 'POST', '/create', { session_id: 's', instructions: 'a' })).status, 200)

  const url = await testDatabase(t)
  if (url === null) return
  const postgres = { store: 'postgres' as const, databaseUrl: url, dbSchema: 'tv_embedded_failed', replicaId: 'embedded-failed' }
  const onDatabase = await attempt({ ...postgres, agents, env: {} })
  t.match(onDatabase.err?.message, /TV_UNSET_KEY is not set/u)
  const db = inspector(t, url, 'tv_embedded_failed')
  t.equal((await db.query("SELECT 1 FROM replicas WHERE replica_id = 'embedded-failed'")).rowCount, 0, 'its replica id is given back')
  const again = await attempt({ ...postgres, agents, env: { TV_UNSET_KEY: 'sk-test' } })
  t.teardown(() => again.app.close())
  t.equal(again.err, null, 'the same replica id registers again at once')
})

t.test('a registration that fails on its routes (a path the host took) leaves no metrics in the host\'s registry: a retry registers them', async (t) => {
  const registry = new Registry()
  const dir = await tempDir(t)
  const failing = Fastify({ logger: false })
  failing.post('/t/create', async () => ({}))
  const err = await failing.register(taskvault, { prefix: '/t', storageDir: dir, metricsRegistry: registry }).then(() => null, (e: Error) => e)
  t.match(err?.message, /already declared|duplicated/iu, 'the registration fails on the route')
  t.notMatch(await registry.metrics(), /taskvault_/u, 'none of its metrics are left to read a store let go')
  const retry = Fastify({ logger: false })
  t.teardown(() => retry.close())
  await retry.register(taskvault, { prefix: '/t', storageDir: dir, metricsRegistry: registry })
  await retry.ready()
  t.match(await registry.metrics(), /^taskvault_ready 1$/mu, 'the retry\'s metrics, of its own store')
  await failing.close()
  t.match(await registry.metrics(), /^taskvault_ready 1$/mu, 'the failed host closing later leaves the retry\'s metrics')

  // A name of the host's own met partway (its own `app_ready`): the registration stops, and only what it made goes.
  const shared = new Registry()
  shared.registerMetric(new Gauge({ name: 'app_ready', help: 'the host\'s own', registers: [] }))
  const clash = Fastify({ logger: false })
  const clashed = await clash.register(taskvault, { storageDir: await tempDir(t), metricsRegistry: shared, metricsPrefix: 'app_' }).then(() => null, (e: Error) => e)
  t.match(clashed?.message, /app_ready/u)
  t.same(shared.getMetricsAsArray().map((metric) => metric.name), ['app_ready'], 'the host\'s metric alone is left')
})

t.test('a host closing while it starts leaves a recorded background run for the next start, logged at info, not as an error', async (t) => {
  const dir = await tempDir(t)
  const slow: Executor = async (_task, { signal }) => await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { resolve({ result: 'done' }) }, 60_000)
    signal.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason) })
  })
  const first = Fastify({ logger: false })
  await first.register(taskvault, { prefix: '/t', storageDir: dir, shutdownGraceMs: 200, executors: { default: slow } })
  t.equal((await call(first, 'POST', '/t/create', { session_id: 's', instructions: '1. a\n2. b' })).status, 200)
  t.equal((await call(first, 'POST', '/t/execute-all', { session_id: 's', wait: false })).status, 202)
  await sleep(100)
  await first.close()

  const log = memoryLog()
  const second = Fastify({ logger: log.logger })
  await second.register(taskvault, { prefix: '/t', storageDir: dir, shutdownGraceMs: 200, executors: { default: slow } })
  await Promise.allSettled([second.ready(), second.close()])
  t.same(log.lines().filter((line) => line.level >= 50).map((line) => line.msg), [], 'no error logged')
  const stored = JSON.parse(await readFile(`${dir}/s.json`, 'utf8'))
  t.ok(stored.background_run !== undefined || stored.session?.background_run !== undefined, 'the run is still recorded')
})
