import { access, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { buildApp } from '../app.js'
import taskvaultPlugin from '../index.js'
import { API, build, memoryLog, tempDir, waitFor } from './helper.js'
import pg from 'pg'
import { openTestStore, testDatabase } from './postgres.js'
import { storedSession } from './session-fixtures.js'
import type { SessionFile } from '../schemas/session.js'
import { startProxy, type TcpProxy } from './tcp-proxy.js'
import { openStream } from './sse-client.js'
import { connectionConfig } from '../services/store/postgres/pool.js'
import { readTarGz } from '../services/backup/tar.js'
import { noop } from '../services/noop.js'
import { taskvault } from './cli-run.js'
import type { PassFailure } from '../services/errors.js'

const connected = async (client: pg.Client): Promise<pg.Client> => { await client.connect(); return client }

/** A client of the test's own on the app's schema, ended when the test ends: what the tests look at or change behind the app. */
async function inspector (t: { teardown: (fn: () => unknown) => void }, url: string): Promise<pg.Client> {
  const client = await connected(new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 0 })))
  t.teardown(() => client.end())
  return client
}

/**
 * The whole service on PostgreSQL answers exactly what it answers on the file store: one
 * script of requests runs against both, and every status and body must match once the times
 * and ids that differ by nature are masked.
 */

const CLOCK_START = Date.parse('2026-01-01T00:00:00.000Z')

/** A clock both apps share the shape of: it moves 1 ms per call from the same start. */
function steppingClock (): () => Date {
  let ms = CLOCK_START
  return () => new Date(ms++)
}

async function postgresApp (t: Parameters<typeof testDatabase>[0] & { teardown: (fn: () => unknown) => void }, url: string, extra: Record<string, string | number | boolean> = {}, logger?: FastifyServerOptions['logger']): Promise<FastifyInstance> {
  const app = await buildApp({
    readEnvironment: false,
    logger,
    clock: steppingClock(),
    config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_SHUTDOWN_GRACE_MS: 2000, TASK_ARCHIVE_DAYS: 0, ...extra }
  })
  t.teardown(() => app.close())
  // A boot that fails is closed at once, as the server does: its store must not beat on under its replica id beside the next boot's.
  try {
    await app.ready()
  } catch (err) {
    await app.close().catch(() => {})
    throw err
  }
  return app
}

/** postgresApp reaching the database through a TCP proxy the test can stall or cut. */
async function postgresAppThroughProxy (t: Parameters<typeof postgresApp>[0], url: string, extra: Record<string, string | number | boolean>, logger?: FastifyServerOptions['logger']): Promise<{ app: FastifyInstance, proxy: Awaited<ReturnType<typeof startProxy>> }> {
  const target = new URL(url)
  const proxy = await startProxy(Number(target.port || 5432), target.hostname)
  t.teardown(() => proxy.close())
  const viaProxy = new URL(url)
  viaProxy.port = String(proxy.port)
  return { app: await postgresApp(t, viaProxy.toString(), extra, logger), proxy }
}

/**
 * Replica a, publishing its events late (its answers do not wait for them: a race every time)
 * at a fixed instant, and replica b with an event stream open on it.
 */
async function latePublisher (t: Test, url: string, extra: Record<string, string | number> = {}): Promise<{ a: FastifyInstance, b: FastifyInstance, stream: Awaited<ReturnType<typeof openStream>> }> {
  const a = await buildApp({
    readEnvironment: false,
    clock: () => new Date(CLOCK_START),
    config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_REPLICA_ID: 'a', TASK_ARCHIVE_DAYS: 0, TASK_EVENTS_FLUSH_MS: 1000, TASK_EVENTS_PUBLISH_WAIT_MS: 0, ...extra }
  })
  t.teardown(() => a.close())
  await a.ready()
  const b = await postgresApp(t, url, { TASK_REPLICA_ID: 'b' })
  await b.listen({ port: 0, host: '127.0.0.1' })
  const { port } = b.server.address() as import('node:net').AddressInfo
  return { a, b, stream: await openStream(t, `http://127.0.0.1:${port}${API}/events`) }
}

type Step = [method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown]

const SCRIPT: Step[] = [
  ['POST', '/create', { session_id: 'alpha', instructions: '1. Research caching\n2. Design the cache\n3. Implement it' }],
  ['POST', '/create', { session_id: 'beta', tasks: [{ instruction: 'Explain the trade-offs', task_type: 'Reasoning' }] }],
  ['POST', '/create', { session_id: 'alpha', instructions: 'Write tests' }],
  ['GET', '/progress?session_id=alpha'],
  ['POST', '/execute', { session_id: 'alpha' }],
  ['POST', '/execute-all', { session_id: 'beta' }],
  ['GET', '/list?session_id=alpha'],
  ['GET', '/list?session_id=all'],
  ['GET', '/list?session_id=all&limit=1&offset=1'],
  ['GET', '/stats'],
  ['POST', '/execute', { session_id: 'nobody' }],
  ['POST', '/create', { session_id: '../escape', instructions: 'x' }],
  ['POST', '/execute-all', { session_id: 'beta' }],
  // Days before any date a database holds: nothing to archive, on both stores (not a 503).
  ['POST', '/archive', { older_than_days: 1e9 }],
  ['POST', '/archive', { older_than_days: 0 }],
  ['GET', '/list?session_id=all&archived=include'],
  ['GET', '/list?session_id=all&archived=only'],
  ['GET', '/list?session_id=beta'],
  ['GET', '/progress?session_id=beta'],
  ['GET', '/stats'],
  ['POST', '/create', { session_id: 'beta', instructions: 'One more thing' }],
  ['GET', '/list?session_id=all&archived=include'],
  ['POST', '/execute-all', { session_id: 'alpha' }],
  ['DELETE', '/session/beta'],
  ['GET', '/progress?session_id=beta'],
  ['GET', '/stats']
]

/** Masks what differs by nature between two runs: timestamps in ids and fields, storage location and sizes. */
function masked (value: unknown): unknown {
  return JSON.parse(JSON.stringify(value), (key, field: unknown) => {
    if (typeof field === 'string' && /^\d{4}-\d{2}-\d{2}T/.test(field)) return '<time>'
    if (typeof field === 'string' && /^task_\d+_\d+$/.test(field)) return field.replace(/_\d+$/, '_<t>')
    if (key === 'storage' || key === 'restore_ms') return '<storage>'
    return field
  })
}

async function runScript (app: FastifyInstance): Promise<Array<{ status: number, body: unknown }>> {
  const out = []
  for (const [method, path, body] of SCRIPT) {
    const res = await app.inject({ method, url: `${API}${path}`, ...(body === undefined ? {} : { payload: body as object }) })
    out.push({ status: res.statusCode, body: masked(res.json()) })
  }
  return out
}

t.test('every endpoint answers the same statuses and shapes on PostgreSQL as on the file store', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const file = await build(t, { clock: steppingClock(), config: { TASK_ARCHIVE_DAYS: 0 } })
  const fileAnswers = await runScript(file)
  const pg = await postgresApp(t, url)
  const pgAnswers = await runScript(pg)
  SCRIPT.forEach(([method, path], i) => {
    t.same(pgAnswers[i], fileAnswers[i], `${method} ${path}`)
  })
  const stats = (await pg.inject({ method: 'GET', url: `${API}/stats` })).json()
  t.match(stats.storage, { kind: 'postgres', database: /^postgres:\/\/127\.0\.0\.1:5432\//, schema: 'taskvault', rows: 2 }, 'storage names the database and schema, and counts rows')
  t.ok(stats.storage.bytes > 0, 'and the table\'s size')
  t.notOk('dir' in stats.storage, 'no folder')
})

t.test('a restart on the same database restores every session; interrupted work resumes', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const first = await postgresApp(t, url)
  await first.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'kept', instructions: '1. a\n2. b' } })
  await first.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'kept' } })
  await first.close()
  const second = await postgresApp(t, url)
  const progress = (await second.inject({ method: 'GET', url: `${API}/progress?session_id=kept` })).json()
  t.match(progress, { total: 2, completed: 1, pending: 1 })
  t.equal((await second.inject({ method: 'GET', url: '/ready' })).statusCode, 200)
})

t.test('sessions a sweep cannot take over are left out of the next claims: the dead replica\'s sessions behind them are claimed, and the boot is not held', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const first = await postgresApp(t, url, { TASK_REPLICA_ID: 'a' })
  t.equal((await first.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'victim', instructions: 'say hi' } })).statusCode, 200)
  await first.close()
  const db = await inspector(t, url)
  // A replica died holding the victim's lease.
  await db.query("UPDATE sessions SET owner = 'dead', epoch = epoch + 1, lease_until = now() - interval '1 minute' WHERE session_id = 'victim'")
  // A batch's worth of rows this version cannot read, with a background run and no owner: a
  // claim orders them first, and each takeover fails.
  for (const id of ['stuck1', 'stuck2']) {
    await db.query(`INSERT INTO sessions (session_id, document, created_at, updated_at, tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress, has_background_run)
      VALUES ($1, '{"not":"a session"}'::json, now(), now(), 1, 0, 0, 1, 0, true)`, [id])
  }
  const epochs = async (): Promise<Record<string, number>> => Object.fromEntries((await db.query('SELECT session_id, epoch FROM sessions ORDER BY session_id')).rows.map((row: { session_id: string, epoch: string }) => [row.session_id, Number(row.epoch)]))
  const before = await epochs()
  const started = Date.now()
  // One sweep only (the one at start): the interval is long.
  const second = await postgresApp(t, url, { TASK_REPLICA_ID: 'b', TASK_SWEEP_BATCH: 2, TASK_SWEEP_INTERVAL_MS: 600_000 })
  const bootMs = Date.now() - started
  const after = await epochs()
  t.same({ stuck1: (after.stuck1 ?? 0) - (before.stuck1 ?? 0), stuck2: (after.stuck2 ?? 0) - (before.stuck2 ?? 0) }, { stuck1: 1, stuck2: 1 }, 'each unreadable session claimed once by the sweep')
  t.equal((after.victim ?? 0) - (before.victim ?? 0), 1, 'the dead replica\'s session behind them claimed by the same sweep')
  t.equal((await db.query("SELECT owner FROM sessions WHERE session_id = 'victim'")).rows[0]?.owner, null, 'and given back, its run having nothing left to do')
  t.ok(bootMs < 10_000, `the boot was not held by claims going round (${bootMs} ms)`)
  await sleep(300)
  t.same(await epochs(), after, 'no claim after the sweep')
  t.equal((await second.inject({ method: 'GET', url: `${API}/progress?session_id=victim` })).statusCode, 200, 'the victim is served')
})

t.test('a shutdown while starting ends the first sweep after the batch in flight: the rest of a dead replica\'s sessions are left for the next one to claim', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const first = await postgresApp(t, url, { TASK_REPLICA_ID: 'a' })
  for (let i = 0; i < 30; i++) t.equal((await first.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: `v${i}`, instructions: 'say hi' } })).statusCode, 200)
  await first.close()
  const db = await inspector(t, url)
  // A replica died holding their leases.
  await db.query("UPDATE sessions SET owner = 'dead', epoch = epoch + 1, lease_until = now() - interval '1 minute'")
  const epochs = async (): Promise<number> => Number((await db.query('SELECT sum(epoch) AS sum FROM sessions')).rows[0]?.sum)
  const before = await epochs()
  // The signal comes as the first batch is claimed (server.ts calls stopBeforeStart on it).
  let app: FastifyInstance | null = null
  const stream = { write: (line: string) => { if (line.includes('Claimed sessions whose runs stopped elsewhere')) app?.taskManager.stopBeforeStart() } }
  app = await buildApp({ readEnvironment: false, logger: { level: 'info', stream }, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_REPLICA_ID: 'b', TASK_SWEEP_BATCH: 5, TASK_SWEEP_INTERVAL_MS: 600_000 } })
  t.teardown(() => app?.close())
  await app.ready()
  const claimed = await epochs() - before
  t.ok(claimed >= 5 && claimed <= 10, `the batch in flight claimed, not all 30 (${claimed})`)
})

t.test('TASK_RESUME_ON_START=false on PostgreSQL: a dead replica\'s background run is not resumed, its record stays, and it is not claimed over and over', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const first = await postgresApp(t, url, { TASK_REPLICA_ID: 'a' })
  t.equal((await first.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'bg', instructions: '1. a\n2. b' } })).statusCode, 200)
  await first.close()
  const db = await inspector(t, url)
  // A replica died running it in the background: its first task InProgress, its lease run out.
  await db.query(`UPDATE sessions SET owner = 'dead', epoch = epoch + 1, lease_until = now() - interval '1 minute',
      document = jsonb_set(jsonb_set(document::jsonb, '{background_run}', '{"started_at":"2026-01-01T00:00:00.000Z"}'), '{session,tasks,0,status}', '"InProgress"')::json,
      has_background_run = true, tasks_in_progress = 1, tasks_pending = 1
    WHERE session_id = 'bg'`)
  const epoch = async (): Promise<number> => Number((await db.query("SELECT epoch FROM sessions WHERE session_id = 'bg'")).rows[0]?.epoch)
  const before = await epoch()
  const second = await postgresApp(t, url, { TASK_REPLICA_ID: 'b', TASK_RESUME_ON_START: false, TASK_SWEEP_INTERVAL_MS: 100 })
  // Ten sweeps' time: a resumed run would have run both tasks by then.
  await sleep(1000)
  const progress = (await second.inject({ method: 'GET', url: `${API}/progress?session_id=bg` })).json()
  t.match(progress, { total: 2, completed: 0, in_progress: 0, pending: 2 }, 'its interrupted task back to Pending, and nothing run')
  const { rows } = await db.query<{ owner: string | null, run: boolean }>("SELECT owner, document::jsonb ? 'background_run' AS run FROM sessions WHERE session_id = 'bg'")
  t.same(rows[0], { owner: null, run: true }, 'the run\'s record stays, and the lease was given back')
  t.equal(await epoch() - before, 1, 'claimed once (the dead replica\'s lease), not by every sweep since')
})

t.test('an archived row sealed under a key this replica lacks: lists, archive passes and backups go on over it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const first = await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: `old:${randomBytes(32).toString('base64')}` })
  t.equal((await first.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'finished', instructions: 'x' } })).statusCode, 200)
  t.equal((await first.inject({ method: 'POST', url: `${API}/execute-all`, payload: { session_id: 'finished' } })).statusCode, 200)
  t.same((await first.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json().archived_ids, ['finished'])
  await first.close()
  const newKey = `new:${randomBytes(32).toString('base64')}`
  const second = await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: newKey })
  t.equal((await second.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'live', instructions: 'y' } })).statusCode, 200)
  const listed = await second.inject({ method: 'GET', url: `${API}/list?session_id=all&archived=include` })
  t.equal(listed.statusCode, 200, 'a list over the archive answers')
  // Its summary is the row's clear columns: listed like any archived session.
  t.same(listed.json().sessions.map((s: { session_id: string }) => s.session_id).sort(), ['finished', 'live'])
  t.equal((await second.inject({ method: 'GET', url: `${API}/progress?session_id=finished` })).statusCode, 503, 'its content answers that the key is missing')
  t.equal((await second.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).statusCode, 200, 'an archive pass answers')
  const backup = await second.inject({ method: 'GET', url: `${API}/backup` })
  t.equal(backup.statusCode, 200, 'a backup is made')
  const names: string[] = []
  for await (const entry of readTarGz(Readable.from([backup.rawPayload]))) names.push(entry.name)
  t.same(names.sort(), ['archive/finished.json', 'live.json'], 'holding the row as it is stored, under a name restore takes')
  await second.close()
  // The old key back, but mistyped: the key check kept for 'old' stops the boot.
  const mistyped = `${newKey},old:${randomBytes(32).toString('base64')}`
  await t.rejects(postgresApp(t, url, { TASK_ENCRYPTION_KEYS: mistyped }), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'old' is not the key/ })
  // In a database from before key checks, no active row opens under it, so the key is the suspect, not the row.
  const db = await inspector(t, url)
  await db.query("DELETE FROM key_checks WHERE kid = 'old'")
  const third = await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: mistyped })
  const wrong = await third.inject({ method: 'GET', url: `${API}/progress?session_id=finished` })
  t.equal(wrong.statusCode, 503, 'a wrong key answers 503, not 404')
  t.match(wrong.json(), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /does not open under key 'old'/ })
  const again = await third.inject({ method: 'GET', url: `${API}/backup` })
  const carried: string[] = []
  for await (const entry of readTarGz(Readable.from([again.rawPayload]))) carried.push(entry.name)
  t.ok(carried.includes('archive/finished.json'), 'and a backup still carries it')
})

t.test('a wrong key under a configured kid stops the boot, rows untouched; a damaged row under a kid an archived row proves is set aside', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const keys = `k1:${randomBytes(32).toString('base64')}`
  const first = await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: keys })
  for (const id of ['done', 'live']) t.equal((await first.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: 'x' } })).statusCode, 200)
  t.equal((await first.inject({ method: 'POST', url: `${API}/execute-all`, payload: { session_id: 'done' } })).statusCode, 200)
  t.same((await first.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json().archived_ids, ['done'])
  await first.close()
  const db = await inspector(t, url)
  const documents = async (): Promise<string[]> => (await db.query<{ d: string }>('SELECT document::text AS d FROM sessions ORDER BY row_id')).rows.map((row) => row.d)
  const before = await documents()
  // Mistyped: sessions created now would be sealed under a key the right one never opens.
  const mistyped = `k1:${randomBytes(32).toString('base64')}`
  await t.rejects(postgresApp(t, url, { TASK_ENCRYPTION_KEYS: mistyped }), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1' is not the key/ }, 'the key check refuses it')
  // A database from before key checks: the rows tell.
  await db.query('DELETE FROM key_checks')
  await t.rejects(postgresApp(t, url, { TASK_ENCRYPTION_KEYS: mistyped }),
    { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1' opens none of the 1 sessions sealed under it/ })
  t.same(await documents(), before, 'no row changed')
  t.equal((await db.query('SELECT 1 FROM key_checks')).rowCount, 0, 'and the wrong key was not kept as the check')

  // The active row damaged; the archived one opens under k1: the key is right, the row is what changed.
  await db.query("UPDATE sessions SET document = jsonb_set(document::jsonb, '{sealed,tag}', to_jsonb('AAAAAAAAAAAAAAAAAAAAAA=='::text))::json WHERE session_id = 'live' AND archived_at IS NULL")
  const log = memoryLog()
  const second = await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: keys }, log.logger)
  t.equal(log.lines().filter((line) => line.msg === 'Could not load a task session; its row is left as it is and no save of that id replaces it' && /^live@/u.test(line.file)).length, 1, 'the restore logs the row it could not read, once')
  t.equal((await second.inject({ method: 'GET', url: `${API}/progress?session_id=done` })).statusCode, 200, 'the archived session is served')
  // Not a 500: a 409 naming the row, for reads and writes alike; the id stays taken.
  const damaged = { statusCode: 409, code: 'VERSION_CONFLICT', message: /session 'live' has a stored row that does not read \(live@\d+: authentication failed\); fix or delete that row first/ }
  t.match((await second.inject({ method: 'GET', url: `${API}/progress?session_id=live` })).json(), damaged, 'the damaged one is not')
  t.match((await second.inject({ method: 'GET', url: `${API}/list?session_id=live` })).json(), damaged)
  t.match((await second.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'live', instructions: 'y' } })).json(), damaged, 'nor overwritten by a create')
  t.equal((await db.query("SELECT 1 FROM sessions WHERE session_id = 'live'")).rowCount, 1, 'and its row stays')
  // A plaintext row that does not parse, put there behind the running replica's back: the same.
  await db.query('INSERT INTO sessions (session_id, document, created_at, updated_at) VALUES (\'broken\', \'{"session_id": "broken"}\', now(), now())')
  t.match((await second.inject({ method: 'GET', url: `${API}/list?session_id=broken` })).json(), { statusCode: 409, code: 'VERSION_CONFLICT', message: /session 'broken' has a stored row that does not read \(broken@\d+: does not match the session file format/ })
  t.match((await second.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'broken', instructions: 'y' } })).json(), { statusCode: 409, code: 'VERSION_CONFLICT' })
  t.equal((await second.inject({ method: 'GET', url: `${API}/progress?session_id=done` })).statusCode, 200, 'the rest is served')
})

t.test('a damaged row under a kid whose kept key check proves its key does not stop the boot, even as the only row under it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const keys = `k1:${randomBytes(32).toString('base64')}`
  const first = await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: keys })
  t.equal((await first.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'only', instructions: 'x' } })).statusCode, 200)
  await first.close()
  const db = await inspector(t, url)
  t.equal((await db.query("SELECT 1 FROM key_checks WHERE kid = 'k1'")).rowCount, 1, 'the check of k1 is kept')
  await db.query("UPDATE sessions SET document = jsonb_set(document::jsonb, '{sealed,tag}', to_jsonb('AAAAAAAAAAAAAAAAAAAAAA=='::text))::json WHERE session_id = 'only'")
  const second = await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: keys })
  t.match((await second.inject({ method: 'GET', url: `${API}/progress?session_id=only` })).json(),
    { statusCode: 409, code: 'VERSION_CONFLICT', message: /session 'only' has a stored row that does not read \(only@\d+: authentication failed\)/ }, 'the row answers as damaged')
  t.equal((await second.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'other', instructions: 'y' } })).statusCode, 200, 'new sessions are sealed and saved')
})

t.test('an archived session none of whose copies reads answers 409 naming the row, as an unreadable active row does, not 404 while lists show it; backups and retention go on over it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  await archivedSession(t, await postgresApp(t, url), 'arch')
  await archivedSession(t, await postgresApp(t, url), 'good')
  const db = await inspector(t, url)
  // Finished first: the first of the retention pass's candidates.
  await db.query('UPDATE sessions SET document = \'{"not":"a session"}\'::json, finished_at = finished_at - interval \'1 day\' WHERE session_id = \'arch\'')
  const app = await postgresApp(t, url)
  const listed = (await app.inject({ method: 'GET', url: `${API}/list?session_id=all&archived=only` })).json()
  t.same(listed.sessions.map((s: { session_id: string }) => s.session_id).sort(), ['arch', 'good'], 'listed from its row\'s columns, as README says')
  const damaged = { statusCode: 409, code: 'VERSION_CONFLICT', message: /session 'arch' has an archived copy that does not read \(arch@\d+: does not match the session file format/ }
  t.match((await app.inject({ method: 'GET', url: `${API}/progress?session_id=arch` })).json(), damaged, 'a read says why')
  t.match((await app.inject({ method: 'DELETE', url: `${API}/sessions/arch` })).json(), damaged, 'a delete too')
  t.match((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'arch', instructions: 'y' } })).json(), damaged, 'and a create does not take the id over')
  t.equal((await db.query("SELECT 1 FROM sessions WHERE session_id = 'arch'")).rowCount, 1, 'the row stays')
  const backup = await app.inject({ method: 'GET', url: `${API}/backup` })
  t.equal(backup.statusCode, 200)
  const names: string[] = []
  for await (const entry of readTarGz(Readable.from([backup.rawPayload]))) names.push(entry.name)
  t.same(names, ['archive/good.json'], 'a backup is whole, leaving the unreadable session out')
  // Met by every read and backup since, the row is one failed load, not one per read.
  await app.inject({ method: 'GET', url: `${API}/progress?session_id=arch` })
  await app.inject({ method: 'GET', url: `${API}/backup` })
  t.equal((await app.inject({ method: 'GET', url: `${API}/stats` })).json().storage.failed_loads, 1, 'counted once')
  await app.close()
  // Both past retention: the pass goes past the one it cannot read and deletes the other.
  const later = (): Date => new Date(CLOCK_START + 200 * 86_400_000)
  const aged = await buildApp({ readEnvironment: false, clock: later, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_ARCHIVE_RETENTION_DAYS: 30 } })
  t.teardown(() => aged.close())
  await aged.ready()
  t.equal((await aged.inject({ method: 'POST', url: `${API}/archive`, payload: {} })).statusCode, 200, 'a pass is not stopped by it')
  t.same((await db.query<{ session_id: string }>('SELECT session_id FROM sessions ORDER BY session_id')).rows.map((row) => row.session_id), ['arch'], 'the readable one is deleted, the unreadable one kept')
})

t.test('replicas given different keys under one kid: the one that comes second stops at boot, even with no session yet', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const right = `k1:${randomBytes(32).toString('base64')}`
  await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: right, TASK_REPLICA_ID: 'a' })
  await t.rejects(postgresApp(t, url, { TASK_ENCRYPTION_KEYS: `k1:${randomBytes(32).toString('base64')}`, TASK_REPLICA_ID: 'b' }),
    { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1' is not the key .* was first given under that kid/ })
  const b = await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: right, TASK_REPLICA_ID: 'b' })
  t.equal((await b.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 's', instructions: 'x' } })).statusCode, 200, 'with the same key it serves')
  const db = await inspector(t, url)
  t.same((await db.query('SELECT kid FROM key_checks')).rows, [{ kid: 'k1' }], 'one check, for k1')
})

t.test('a backup carries the archived copy a read takes when the newest one is damaged, byte for byte', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const app = await postgresApp(t, url)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'arch', instructions: 'x' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute-all`, payload: { session_id: 'arch' } })).statusCode, 200)
  t.same((await app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json().archived_ids, ['arch'])
  await app.close()
  const db = await inspector(t, url)
  const good = (await db.query<{ d: string }>("SELECT document::text AS d FROM sessions WHERE session_id = 'arch'")).rows[0]?.d
  // A newer archived copy, damaged: reads take the one before it.
  await db.query(`INSERT INTO sessions (session_id, document, created_at, updated_at, finished_at, archived_at, tasks_total, tasks_completed)
    SELECT session_id, '{"not":"a session"}'::json, created_at, updated_at, finished_at, archived_at, tasks_total, tasks_completed FROM sessions WHERE session_id = 'arch'`)
  const again = await postgresApp(t, url)
  t.equal((await again.inject({ method: 'GET', url: `${API}/progress?session_id=arch` })).statusCode, 200, 'the session is read from the copy before')
  const backup = await again.inject({ method: 'GET', url: `${API}/backup` })
  t.equal(backup.statusCode, 200)
  const entries = new Map<string, Buffer>()
  for await (const entry of readTarGz(Readable.from([backup.rawPayload]))) entries.set(entry.name, entry.data)
  t.same([...entries.keys()], ['archive/arch.json'], 'the session is in the backup')
  t.equal(entries.get('archive/arch.json')?.toString('utf8'), good, 'as the readable copy is stored')
})

type TapTest = Parameters<Parameters<typeof t.test>[0]>[0]

/** Creates a one-task session on `app`, runs it, archives it, and closes the app. */
async function archivedSession (t: TapTest, app: FastifyInstance, sessionId: string): Promise<void> {
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: sessionId, instructions: 'x' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute-all`, payload: { session_id: sessionId } })).statusCode, 200)
  t.same((await app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json().archived_ids, [sessionId])
  await app.close()
}

t.test('a mistyped sealing key over a database whose sessions are all archived stops the boot; tools never pin a key', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const keys = `k1:${randomBytes(32).toString('base64')}`
  await archivedSession(t, await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: keys }), 'done')
  const db = await inspector(t, url)
  // From before key checks: nothing but the archived row can tell the key is wrong.
  await db.query('DELETE FROM key_checks')
  await t.rejects(postgresApp(t, url, { TASK_ENCRYPTION_KEYS: `k1:${randomBytes(32).toString('base64')}` }),
    { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1', which seals every write, opens none of the archived sessions sealed under it/ })
  t.equal((await db.query('SELECT 1 FROM key_checks')).rowCount, 0, 'no check kept for the wrong key')
  const stats = await taskvault(['stats', '--database-url', url], { env: { TASK_ENCRYPTION_KEYS: `k2:${randomBytes(32).toString('base64')},${keys}` } })
  t.equal(stats.code, 0, stats.stderr)
  t.equal((await db.query('SELECT 1 FROM key_checks')).rowCount, 0, 'a tool kept no check')
  await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: keys })
  t.same((await db.query('SELECT kid FROM key_checks')).rows, [{ kid: 'k1' }], 'the server keeps the proven one')
})

t.test('retention never deletes an archived row it cannot open, and judges one it can by its content', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const old = `old:${randomBytes(32).toString('base64')}`
  const fresh = `new:${randomBytes(32).toString('base64')}`
  await archivedSession(t, await postgresApp(t, url, { TASK_ENCRYPTION_KEYS: old }), 'aged')
  const db = await inspector(t, url)
  // As an import without its key leaves it: no task counted, no finish time.
  await db.query("UPDATE sessions SET tasks_total = 0, tasks_completed = 0, finished_at = NULL WHERE session_id = 'aged'")
  const later = (): Date => new Date(CLOCK_START + 200 * 86_400_000)
  const boot = async (keys: string): Promise<FastifyInstance> => {
    const app = await buildApp({ readEnvironment: false, clock: later, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_ENCRYPTION_KEYS: keys, TASK_ARCHIVE_DAYS: 0, TASK_ARCHIVE_RETENTION_DAYS: 30 } })
    t.teardown(() => app.close())
    await app.ready()
    return app
  }
  const without = await boot(fresh)
  t.same((await without.inject({ method: 'POST', url: `${API}/archive`, payload: {} })).json().deleted_ids, [], 'under a key this replica lacks: kept')
  t.equal((await db.query("SELECT 1 FROM sessions WHERE session_id = 'aged'")).rowCount, 1)
  await without.close()
  const withKey = await boot(`${fresh},${old}`)
  t.equal((await withKey.inject({ method: 'POST', url: `${API}/archive`, payload: {} })).statusCode, 200)
  t.equal((await db.query("SELECT 1 FROM sessions WHERE session_id = 'aged'")).rowCount, 0, 'opened: judged by its content (200 days old), deleted')
})

t.test('replicas: retention pages its candidates from the rows and deletes only sessions whose newest copy is past its cutoff, archived by any replica', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const DAY = 86_400_000
  const at = (days: number): string => new Date(CLOCK_START - days * DAY).toISOString()
  const session = (id: string, statuses: string[], days: number): SessionFile => JSON.parse(storedSession(id, statuses, at(days)))
  // What other replicas left: archived copies, written through a store of the test's own.
  const other = await openTestStore(t, url, 'taskvault')
  const archived = async (file: SessionFile): Promise<void> => { await other.save(file); await other.archive(file) }
  const old = ['old-1', 'old-2', 'old-3', 'old-4', 'old-5']
  for (const id of old) await archived(session(id, ['Completed', 'Completed'], 100))
  await archived(session('young', ['Completed'], 10))
  // Never finished (a task left Pending): judged by its last update.
  await archived(session('unfinished', ['Completed', 'Pending'], 150))
  await archived(session('old-failed', ['Completed', 'Failed'], 100))
  await archived(session('ancient-failed', ['Failed'], 200))
  // Archived long ago, then brought back, changed and archived again lately: its newest copy decides.
  await archived(session('rearchived', ['Completed'], 200))
  await archived(session('rearchived', ['Completed', 'Completed'], 10))
  // An old archived copy behind an active session (a bring-back cut short): retention never touches active sessions.
  await other.save(session('behind-active', ['Completed'], 300))
  const db = await inspector(t, url)
  // More than a page of candidates the check on their copies keeps, first in the pass's order:
  // their columns say finished long ago, their documents 10 days ago. The pass must go on past them.
  const misdated = ['misdated-1', 'misdated-2', 'misdated-3']
  for (const id of misdated) await archived(session(id, ['Completed'], 10))
  await db.query('UPDATE sessions SET finished_at = $1 WHERE session_id = ANY($2)', [at(1000), misdated])
  await db.query(`INSERT INTO sessions (session_id, document, created_at, updated_at, finished_at, archived_at, tasks_total, tasks_completed)
    SELECT session_id, document, created_at, updated_at, finished_at, now(), tasks_total, tasks_completed FROM sessions WHERE session_id = 'behind-active'`)
  // Nothing is past retention at boot (the pass the scheduler runs then); the test moves the clock on.
  let now = CLOCK_START - 400 * DAY
  const app = await buildApp({
    readEnvironment: false,
    clock: () => new Date(now),
    // Two candidates a page: the pass must go on past pages of sessions it keeps.
    config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_REPLICA_ID: 'a', TASK_ARCHIVE_DAYS: 0, TASK_ARCHIVE_RETENTION_DAYS: 90, TASK_ARCHIVE_FAILED_RETENTION_DAYS: 180, TASK_SWEEP_BATCH: 2 }
  })
  t.teardown(() => app.close())
  await app.ready()
  // Archived by another replica after this one read its archive at boot.
  await archived(session('late', ['Completed'], 120))
  now = CLOCK_START
  const pass = (await app.inject({ method: 'POST', url: `${API}/archive`, payload: {} })).json()
  t.same(pass.deleted_ids.sort(), ['ancient-failed', 'late', ...old, 'unfinished'].sort(), 'past retention: 90 days, 180 for sessions with a failed task')
  const left = await db.query('SELECT session_id, archived_at IS NOT NULL AS archived FROM sessions ORDER BY session_id, row_id')
  t.same(left.rows, [
    { session_id: 'behind-active', archived: false },
    { session_id: 'behind-active', archived: true },
    ...misdated.map((id) => ({ session_id: id, archived: true })),
    { session_id: 'old-failed', archived: true },
    { session_id: 'rearchived', archived: true },
    { session_id: 'rearchived', archived: true },
    { session_id: 'young', archived: true }
  ], 'the rest kept, every copy')
  t.same((await app.inject({ method: 'POST', url: `${API}/archive`, payload: {} })).json().deleted_ids, [], 'a second pass finds nothing')
  t.equal((await app.inject({ method: 'GET', url: `${API}/list?session_id=late` })).statusCode, 404, 'deleted for every replica')
  // Retention for sessions with a failed task only (TASK_ARCHIVE_RETENTION_DAYS 0): the others stay, however old.
  const failures: PassFailure[] = []
  t.same(await app.taskManager.pruneArchivedBefore({ all: null, failed: new Date(CLOCK_START - 50 * DAY) }, failures), ['old-failed'])
  t.same(failures, [], 'nothing failed')
  t.equal((await db.query('SELECT 1 FROM sessions WHERE archived_at IS NOT NULL')).rowCount, 7, 'the rest stay')
})

t.test('replicas: a retention pass announces each deletion on the event stream once it is committed, while the pass goes on to the next', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const DAY = 86_400_000
  const app = await buildApp({
    readEnvironment: false,
    clock: () => new Date(CLOCK_START),
    // A page a candidate: the pass commits one deletion, then waits on the next.
    config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_ARCHIVE_RETENTION_DAYS: 90, TASK_SWEEP_BATCH: 1 }
  })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as import('node:net').AddressInfo
  // Archived by another replica after this one's pass at boot; the older one is the pass's first.
  const other = await openTestStore(t, url, 'taskvault')
  for (const [id, days] of [['gone_1', 200], ['gone_2', 100]] as const) {
    const file: SessionFile = JSON.parse(storedSession(id, ['Completed'], new Date(CLOCK_START - days * DAY).toISOString()))
    await other.save(file)
    await other.archive(file)
  }
  const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events`)
  // gone_2's row locked by the test: the pass's delete of it waits.
  const locker = await inspector(t, url)
  await locker.query('BEGIN')
  await locker.query("SELECT 1 FROM sessions WHERE session_id = 'gone_2' FOR UPDATE")
  const pass = app.inject({ method: 'POST', url: `${API}/archive`, payload: {} })
  const deleted = (await stream.until((events) => events.some((e) => e.event === 'session.deleted'), 8000)).filter((e) => e.event === 'session.deleted')
  t.same(deleted.map((e) => e.data), [{ session_id: 'gone_1', archived: true }], 'the first deletion is on the stream while the pass waits on the second')
  await locker.query('ROLLBACK')
  t.same((await pass).json(), { archived: 0, deleted: 2, archived_ids: [], deleted_ids: ['gone_1', 'gone_2'] }, 'the pass reports both, as before')
  const all = await stream.until((events) => events.filter((e) => e.event === 'session.deleted').length === 2)
  t.same(all.filter((e) => e.event === 'session.deleted').map((e) => e.data.session_id), ['gone_1', 'gone_2'], 'then the second, each once')
})

t.test('replicas: a retention deletion logged after a create of the same id through another replica is not shown after it; streams reset instead', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const DAY = 86_400_000
  const { a, b, stream } = await latePublisher(t, url, { TASK_ARCHIVE_RETENTION_DAYS: 90 })
  // Archived by another replica after a's pass at boot.
  const other = await openTestStore(t, url, 'taskvault')
  const file: SessionFile = JSON.parse(storedSession('again', ['Completed'], new Date(CLOCK_START - 100 * DAY).toISOString()))
  await other.save(file)
  await other.archive(file)
  t.same((await a.inject({ method: 'POST', url: `${API}/archive`, payload: {} })).json().deleted_ids, ['again'], 'deleted by a\'s pass; its event waits to be published')
  t.equal((await b.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'again', instructions: 'new' } })).statusCode, 200, 'created again through b, its events logged first')
  const events = await stream.until((events) => events.some((e) => e.event === 'reset' || (e.event === 'session.deleted' && e.data.session_id === 'again')), 10_000)
  const again = events.filter((e) => e.event === 'reset' || e.data.session_id === 'again').map((e) => e.event)
  const created = again.indexOf('session.created')
  t.ok(created >= 0, 'the create is shown')
  t.equal(again.slice(created + 1).find((name) => name !== 'progress' && name !== 'tasks.added'), 'reset', `nothing of the id after its create but a reset (${again.join(', ')})`)
  t.equal((await b.inject({ method: 'GET', url: `${API}/progress?session_id=again` })).json().total, 1, 'the session is there, as a refetch shows')
})

t.test('replicas: an archive\'s event logged after a delete of the copy it made, through another replica, is not shown after it; streams reset instead', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const DAY = 86_400_000
  const { a, b, stream } = await latePublisher(t, url)
  const other = await openTestStore(t, url, 'taskvault')
  await other.save(JSON.parse(storedSession('brief', ['Completed'], new Date(CLOCK_START - 100 * DAY).toISOString())))
  t.same((await a.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 30 } })).json().archived_ids, ['brief'], 'archived by a; its event waits to be published')
  t.equal((await b.inject({ method: 'DELETE', url: `${API}/sessions/brief` })).statusCode, 204, 'its copy deleted through b, that event logged first')
  const events = await stream.until((events) => events.some((e) => e.event === 'reset' || (e.event === 'session.archived' && e.data.session_id === 'brief')), 10_000)
  const brief = events.filter((e) => e.event === 'reset' || e.data.session_id === 'brief').map((e) => e.event)
  t.equal(brief.indexOf('session.deleted'), 0, `the delete is shown (${brief.join(', ')})`)
  t.same(brief.slice(1), ['reset'], 'and after it no archive, a reset')
})

t.test('replicas: a session\'s events keep their order when its next change goes through another replica', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  // a publishes its events late, if the answer does not wait for them.
  const a = await postgresApp(t, url, { TASK_REPLICA_ID: 'a', TASK_EVENTS_FLUSH_MS: 1000 })
  const b = await postgresApp(t, url, { TASK_REPLICA_ID: 'b' })
  await b.listen({ port: 0, host: '127.0.0.1' })
  const { port } = b.server.address() as import('node:net').AddressInfo
  const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events?session_id=ord`)
  t.equal((await a.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'ord', instructions: 'x' } })).statusCode, 200)
  t.equal((await b.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'ord' } })).statusCode, 200)
  const events = await stream.until((seen) => seen.filter((event) => event.data.session_id === 'ord').length >= 6, 10_000)
  const ord = events.filter((event) => event.data.session_id === 'ord')
  t.same(ord.slice(0, 3).map((event) => event.event), ['session.created', 'tasks.added', 'progress'], 'the create\'s events first')
  t.match(ord.at(-1), { event: 'progress', data: { completed: 1, all_done: true } }, 'the last event is the session as it is now')
})

t.test('replicas: a create refused for the task limit on this replica\'s copy is judged again on the stored session, which another replica deleted or shortened', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const a = await postgresApp(t, url, { TASK_REPLICA_ID: 'a', TASK_MAX_TASKS_PER_SESSION: 3 })
  const b = await postgresApp(t, url, { TASK_REPLICA_ID: 'b', TASK_MAX_TASKS_PER_SESSION: 3 })
  const create = async (app: FastifyInstance, instructions: string): Promise<{ statusCode: number, json: () => { total_tasks?: number, code?: string } }> =>
    app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'full', instructions } })
  t.equal((await create(a, '1. a\n2. b\n3. c')).statusCode, 200, 'a fills the session to the limit')
  t.equal((await b.inject({ method: 'DELETE', url: `${API}/sessions/full` })).statusCode, 204, 'b deletes it')
  const again = await create(a, '1. fresh start')
  t.equal(again.statusCode, 200, `a creates it afresh: ${JSON.stringify(again.json())}`)
  t.equal((await b.inject({ method: 'GET', url: `${API}/progress?session_id=full` })).json().total, 1, 'one task, as b sees it')
  t.equal((await create(a, '1. x\n2. y\n3. z')).json().code, 'LIMIT_EXCEEDED', 'and past the limit on the stored session, still refused')
})

t.test('replicas: an archive pass goes past finished sessions it must leave (an unreadable one), page after page', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const first = await postgresApp(t, url, { TASK_REPLICA_ID: 'a' })
  for (const id of ['broken', 'g', 'h']) {
    t.equal((await first.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: 'x' } })).statusCode, 200)
    t.equal((await first.inject({ method: 'POST', url: `${API}/execute-all`, payload: { session_id: id } })).statusCode, 200)
  }
  await first.close()
  const db = await inspector(t, url)
  // The oldest finished one does not read: it stays put, first in every page.
  await db.query("UPDATE sessions SET document = '{\"not\":\"a session\"}'::json, finished_at = '2020-01-01' WHERE session_id = 'broken'")
  const second = await buildApp({
    readEnvironment: false,
    clock: () => new Date(CLOCK_START + 86_400_000),
    config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_REPLICA_ID: 'b', TASK_SWEEP_BATCH: 1 }
  })
  t.teardown(() => second.close())
  await second.ready()
  const pass = await second.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })
  t.same(pass.json().archived_ids.sort(), ['g', 'h'], 'the two after it are archived')
  t.equal((await db.query("SELECT 1 FROM sessions WHERE session_id = 'broken' AND archived_at IS NULL")).rowCount, 1, 'the unreadable one stays where it is')
})

t.test('bad PostgreSQL settings stop the boot naming the setting', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const boot = async (config: Record<string, string | number>): Promise<string> =>
    buildApp({ readEnvironment: false, config: { TASK_STORE: 'postgres', TASK_STORAGE_DIR: await tempDir(t), ...config } })
      .then(async (app) => app.ready().then(async () => { await app.close(); return 'started' }, async (err: Error) => { await app.close(); return err.message }), (err: Error) => err.message)
  t.match(await boot({}), /DATABASE_URL.*required/, 'no URL')
  t.match(await boot({ DATABASE_URL: 'not a url' }), /DATABASE_URL/, 'a malformed URL')
  t.match(await boot({ DATABASE_URL: 'mysql://127.0.0.1/x' }), /DATABASE_URL/, 'not postgres://')
  t.match(await boot({ DATABASE_URL: url, TASK_DB_SCHEMA: 'Bad-Name' }), /TASK_DB_SCHEMA/, 'a schema name that is not usable')
  t.match(await boot({ DATABASE_URL: url, TASK_DB_POOL_MAX: 0 }), /TASK_DB_POOL_MAX/, 'a pool of 0')
  const started = Date.now()
  const message = await boot({ DATABASE_URL: 'postgres://127.0.0.1:9/nowhere', TASK_DB_CONNECT_TIMEOUT_MS: 1500 })
  t.match(message, /TASK_DB_CONNECT_TIMEOUT_MS \(1500 ms\)/, 'an unreachable database: waited, then failed naming the bound')
  t.ok(Date.now() - started < 15_000, 'and within a few seconds of it')
  t.notMatch(message, /secret/, 'no password')
  t.match(await boot({ DATABASE_URL: 'postgres://u:secret@127.0.0.1:9/nowhere', TASK_DB_CONNECT_TIMEOUT_MS: 1000 }), /^(?!.*secret)/, 'the password is never in the message')
  // A bound no attempt can meet, on a database that is up, is refused by name rather than read
  // as "could not reach the database".
  for (const bound of [0, 300]) t.match(await boot({ DATABASE_URL: url, TASK_DB_CONNECT_TIMEOUT_MS: bound }), /TASK_DB_CONNECT_TIMEOUT_MS.*(>=|at least|minimum).*1000/i, `TASK_DB_CONNECT_TIMEOUT_MS=${bound}: refused naming the minimum`)
  t.equal(await boot({ DATABASE_URL: url, TASK_DB_CONNECT_TIMEOUT_MS: 1000 }), 'started', 'the minimum starts on a database that is up')
  // A database that takes connections and never answers (a frozen host): the bound holds too,
  // though each attempt's connection waits up to the statement timeout.
  const proxy = await startProxy(Number(new URL(url).port || 5432))
  t.teardown(() => proxy.close())
  proxy.stall()
  const stalled = new URL(url)
  stalled.port = String(proxy.port)
  const from = Date.now()
  const silent = await boot({ DATABASE_URL: stalled.href, TASK_DB_CONNECT_TIMEOUT_MS: 1500, TASK_DB_STATEMENT_TIMEOUT_MS: 6000 })
  t.match(silent, /TASK_DB_CONNECT_TIMEOUT_MS \(1500 ms\)/, 'a database that never answers: waited, then failed naming the bound')
  t.ok(Date.now() - from < 4000, `within a little of it, not a statement timeout or two later (${Date.now() - from} ms)`)
  await sleep(0)
})

t.test('a lease the row names this replica for, that none of its runs holds (its giving back failed), is nobody\'s here: retry and delete go through, not SESSION_BUSY naming itself; cancel says NOT_RUNNING at once', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const executors = { default: async () => { throw new Error('boom') } }
  const app = await buildApp({ readEnvironment: false, executors, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_REPLICA_ID: 'me' } })
  t.teardown(() => app.close())
  await app.ready()
  const db = await inspector(t, url)
  for (const id of ['kept', 'gone']) {
    t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: '1. a\n2. b' } })).statusCode, 200)
    t.match((await app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: id } })).json(), { status: 'Failed' })
  }
  // As a run's release leaves the row when the database was away at its end.
  await db.query("UPDATE sessions SET owner = 'me', lease_until = now() + interval '60 seconds' WHERE session_id IN ('kept', 'gone') AND archived_at IS NULL")
  const retried = await app.inject({ method: 'POST', url: `${API}/retry`, payload: { session_id: 'kept' } })
  t.equal(retried.statusCode, 200, 'retry', { body: retried.body })
  t.match((await app.inject({ method: 'GET', url: `${API}/progress?session_id=kept` })).json(), { pending: 2, running: false })
  const deleted = await app.inject({ method: 'DELETE', url: `${API}/sessions/gone` })
  t.ok(deleted.statusCode < 300, 'delete', { body: deleted.body })
  t.match((await app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'kept' } })).json(), { status: 'Failed' }, 'and the next execute here takes the lease over')
  // A cancel: nothing runs, so 409 NOT_RUNNING at once, not a wait for the lease to run out.
  await db.query("UPDATE sessions SET owner = 'me', lease_until = now() + interval '60 seconds' WHERE session_id = 'kept' AND archived_at IS NULL")
  const started = performance.now()
  const cancel = await app.inject({ method: 'POST', url: `${API}/cancel`, payload: { session_id: 'kept' } })
  t.match(cancel.json(), { statusCode: 409, code: 'NOT_RUNNING' }, 'cancel', { body: cancel.body })
  t.ok(performance.now() - started < 2000, 'at once')
  const { rows } = await db.query("SELECT cancel_requested FROM sessions WHERE session_id = 'kept' AND archived_at IS NULL")
  t.equal(rows[0]?.cancel_requested, false, 'no cancel left in the row for the next execute to meet')
  t.match((await app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'kept' } })).json(), { status: 'Failed', error: 'boom' }, 'which runs its task')
})

t.test('/ready goes 503 while the sessions table is locked, as requests stall behind the lock, and 200 once it is released', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const app = await postgresApp(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 500 })
  const ready = async (): Promise<number> => (await app.inject({ method: 'GET', url: '/ready' })).statusCode
  t.equal(await ready(), 200)
  const locker = await inspector(t, url)
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE')
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'locked', instructions: 'x' } })).statusCode, 503, 'a create: 503 at the statement timeout')
  const res = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(res.statusCode, 503, '/ready: 503')
  t.match(res.json(), { code: 'STORAGE_UNAVAILABLE' })
  await locker.query('COMMIT')
  t.equal(await ready(), 200, 'ready again once the lock is gone')
})

t.test('probes during a table lock: /ready answers 503 within TASK_DB_PING_TIMEOUT_MS, and they share one waiting connection, gone once they are answered', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const app = await postgresApp(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 20_000, TASK_DB_PING_TIMEOUT_MS: 400, TASK_DB_POOL_MAX: 3 })
  t.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 200)
  const locker = await inspector(t, url)
  // Not the locker: inside its transaction, pg_stat_activity stays the snapshot its first read took.
  const watcher = await inspector(t, url)
  const waiting = async (): Promise<number> => Number((await watcher.query(
    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FROM sessions WHERE false%'")).rows[0].n)
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE')
  const started = Date.now()
  const probes = Array.from({ length: 5 }, async () => app.inject({ method: 'GET', url: '/ready' }))
  await sleep(200)
  t.equal(await waiting(), 1, 'five probes at once wait on one connection')
  const answers = await Promise.all(probes)
  const ms = Date.now() - started
  t.same(answers.map((res) => res.statusCode), [503, 503, 503, 503, 503], 'each answers 503')
  t.match(answers[0]?.json(), { code: 'STORAGE_UNAVAILABLE' })
  t.ok(ms < 2000, `within the ping timeout, not the statement timeout (${ms} ms)`)
  // A scrape too: within the ping timeout, the row counts left out, the rest there (Prometheus gives up on a scrape at 10 s).
  const scraped = Date.now()
  const metrics = await app.inject({ method: 'GET', url: '/metrics' })
  t.ok(Date.now() - scraped < 2000, `/metrics within the ping timeout, not the statement timeout (${Date.now() - scraped} ms)`)
  t.equal(metrics.statusCode, 200)
  t.match(metrics.body, /^taskvault_ready 0$/mu, 'taskvault_ready 0 is there')
  t.notMatch(metrics.body, /^taskvault_stored_sessions\{/mu, 'the row counts are left out')
  await waitFor('the database to cancel the probe\'s statement', async () => await waiting() === 0, 2000)

  // The pool's connections held by its listener and two creates stalled behind the lock: the probe gives up waiting for one.
  const stalled = ['first', 'second', 'third', 'fourth'].map(async (id) => app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: 'x' } }))
  await sleep(300)
  const before = Date.now()
  const probe = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(probe.statusCode, 503, 'with every connection taken: 503')
  t.ok(Date.now() - before < 2000, `within the ping timeout (${Date.now() - before} ms)`)
  await locker.query('COMMIT')
  t.same((await Promise.all(stalled)).map((res) => res.statusCode), [200, 200, 200, 200], 'the creates go through once the lock is gone')
  t.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 200, 'ready again')
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'after', instructions: 'x' } })).statusCode, 200, 'and writes work')
  t.equal(await waiting(), 0, 'no probe\'s statement was sent late')
})

t.test('losing the database: requests fail fast with 503, /ready goes 503, and the service recovers by itself', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 1000 })
  const create = async (id: string): Promise<{ status: number, ms: number }> => {
    const started = Date.now()
    const res = await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: 'x' } })
    return { status: res.statusCode, ms: Date.now() - started }
  }
  t.equal((await create('before')).status, 200)

  proxy.drop()
  const dropped = await create('while-dropped')
  t.equal(dropped.status, 503, 'a dropped database: 503')
  t.ok(dropped.ms < 3000, `and fast (${dropped.ms} ms)`)
  t.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 503, '/ready: 503')
  const readyGauge = async (): Promise<string | undefined> => (await app.inject({ method: 'GET', url: '/metrics' })).body.split('\n').find((line) => line.startsWith('taskvault_ready '))
  t.equal(await readyGauge(), 'taskvault_ready 0', 'and taskvault_ready 0, which the not-ready alert watches')

  proxy.stall()
  const stalled = await create('while-stalled')
  t.equal(stalled.status, 503, 'a stalled database: 503')
  t.ok(stalled.ms < 1000 + 4000, `within the statement timeout and its margin (${stalled.ms} ms)`)

  proxy.pass()
  await waitFor('/ready to answer 200 again', async () => (await app.inject({ method: 'GET', url: '/ready' })).statusCode === 200, 15_000)
  t.equal((await create('after')).status, 200, 'writes work again')
  t.equal(await readyGauge(), 'taskvault_ready 1')
  const list = (await app.inject({ method: 'GET', url: `${API}/list?session_id=all` })).json()
  t.same(list.sessions.map((s: { session_id: string }) => s.session_id).sort(), ['after', 'before'], 'nothing unacknowledged was kept')
  const db = await inspector(t, url)
  const rows = (await db.query('SELECT session_id FROM taskvault.sessions WHERE archived_at IS NULL ORDER BY session_id')).rows.map((row: { session_id: string }) => row.session_id)
  t.same(rows, ['after', 'before'], 'and the database holds exactly the acknowledged sessions')
})

t.test('while the database is out of reach the live view\'s reads of the event log fail each poll: logged once, not once a poll, then once when they work again', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const log = memoryLog()
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_EVENTS_POLL_MS: 100, TASK_DB_STATEMENT_TIMEOUT_MS: 1000 }, log.logger)
  const failures = (): number => log.lines().filter((line) => line.msg?.startsWith('Could not read live-view events') === true).length
  proxy.drop()
  await waitFor('a read to fail', async () => failures() > 0, 10_000)
  // Some twenty polls fail meanwhile.
  await sleep(2000)
  t.equal(failures(), 1, 'one line for the outage')
  proxy.pass()
  const recovered = await waitFor('reads to work again', async () => log.lines().find((line) => line.msg === 'Reading live-view events again'), 15_000)
  t.ok(recovered.failures > 1, `its line counts the failed reads (${recovered.failures as number})`)
  t.equal(failures(), 1, 'and no more failures are logged')
  await app.close()
})

t.test('a bring-back answered 503 that landed all the same is undone: the session is archived again as it was, never lost, also when the database is out of reach for a while and the first archiving again fails', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 1500, TASK_RUN_RETRY_MS: 200, TASK_RUN_RETRY_MAX_MS: 400 })
  const inject = async (method: 'GET' | 'POST', path: string, payload?: object): Promise<{ status: number, body: any }> => {
    const res = await app.inject({ method, url: `${API}${path}`, ...(payload === undefined ? {} : { payload }) })
    return { status: res.statusCode, body: res.json() }
  }
  t.equal((await inject('POST', '/create', { session_id: 'kept', instructions: '1. a\n2. b' })).status, 200)
  t.equal((await inject('POST', '/execute-all', { session_id: 'kept' })).status, 200)
  t.equal((await inject('POST', '/archive', { older_than_days: 0 })).body.archived, 1)
  const db = await inspector(t, url)
  // The statement that brings it back (with task c) commits, its answer never arrives, and the
  // database stays out of reach for a while.
  const status = await landUnanswered(db, proxy, async () => await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'kept', instructions: 'c' } }),
    "SELECT 1 FROM taskvault.sessions WHERE session_id = 'kept' AND archived_at IS NULL", 'INSERT')
  t.equal(status, 503, 'the append fails, its outcome unknown')
  t.not((await inject('GET', '/list?session_id=kept')).status, 200, 'meanwhile nothing claims the session brought back')
  // Its first archiving again runs past the statement timeout, and rolls back.
  await db.query('CREATE FUNCTION taskvault.slow_rearchive() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$')
  await db.query('CREATE TRIGGER slow BEFORE UPDATE ON taskvault.sessions FOR EACH ROW EXECUTE FUNCTION taskvault.slow_rearchive()')
  proxy.pass()
  await waitFor('the archiving again to reach the server', async () => (await db.query(
    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()")).rowCount === 1, 10_000)
  await db.query('DROP TRIGGER slow ON taskvault.sessions')
  const stored = async (): Promise<Array<{ archived: boolean, document: string }>> =>
    (await db.query("SELECT archived_at IS NOT NULL AS archived, document::text AS document FROM taskvault.sessions WHERE session_id = 'kept'")).rows
  await waitFor('the bring-back to be undone', async () => (await stored()).every((row) => row.archived), 15_000)
  const rows = await stored()
  t.equal(rows.length, 1, 'the database holds one copy of the session')
  t.match(rows[0]?.document, /"status": "Completed"/u, 'with its finished work')
  t.notMatch(rows[0]?.document, /"instruction": "c"/u, 'and not the task answered as failed')
  const seen = await inject('GET', '/list?session_id=kept')
  t.equal(seen.status, 200, 'the service serves it')
  t.equal(seen.body.archived, true, 'as archived')
  t.same(seen.body.tasks.map((task: { status: string }) => task.status), ['Completed', 'Completed'])
  t.equal((await inject('GET', '/stats')).body.archived_sessions, 1, 'counted as archived')
  // The client tries again: the session comes back once, with the task once.
  t.equal((await inject('POST', '/create', { session_id: 'kept', instructions: 'c' })).status, 200)
  const back = await inject('GET', '/list?session_id=kept')
  t.equal(back.body.archived, undefined, 'brought back')
  t.same(back.body.tasks.map((task: { instruction: string }) => task.instruction), ['a', 'b', 'c'])
  t.same((await stored()).map((row) => row.archived), [false], 'one active row, no archived copy left')
})

/**
 * Sends a request whose UPDATE (INSERT, DELETE) of the sessions table commits while the proxy holds
 * the answer back (`landed`: a query that finds a row once it has), then drops every connection
 * and keeps refusing new ones: the change landed, unanswered. Resolves with the request's status.
 */
async function landUnanswered (db: pg.Client, proxy: TcpProxy, send: () => Promise<{ statusCode: number }>, landed: string, statement: 'INSERT' | 'UPDATE' | 'DELETE' = 'UPDATE'): Promise<number> {
  await db.query("CREATE FUNCTION taskvault.slow_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END; END $$")
  await db.query(`CREATE TRIGGER slow BEFORE ${statement} ON taskvault.sessions FOR EACH ROW EXECUTE FUNCTION taskvault.slow_update()`)
  const sending = send()
  await waitFor('the statement to reach the server', async () => (await db.query(
    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()")).rowCount === 1, 10_000)
  proxy.stall()
  await waitFor('the statement to commit', async () => (await db.query(landed)).rowCount === 1, 10_000)
  await db.query('DROP TRIGGER slow ON taskvault.sessions')
  await db.query('DROP FUNCTION taskvault.slow_update()')
  proxy.drop()
  return (await sending).statusCode
}

/** Appends a task "two" to session 'landed': it lands, unanswered (landUnanswered). */
async function appendLandedUnanswered (app: FastifyInstance, db: pg.Client, proxy: TcpProxy): Promise<number> {
  return await landUnanswered(db, proxy, async () => await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'landed', instructions: 'two' } }),
    "SELECT 1 FROM taskvault.sessions WHERE session_id = 'landed' AND document::text LIKE '%\"two\"%'")
}

/**
 * Session 'done' (one task, run) archived through a proxy so that the archive lands unanswered
 * (landUnanswered): its outcome unknown, the database then out of reach. Retries of the undo
 * after `retryMs`, up to `retryMaxMs`.
 */
async function archiveLandedUnanswered (t: Test, url: string, logs: ReturnType<typeof memoryLog>, retryMs: number, retryMaxMs: number): Promise<{ app: FastifyInstance, proxy: TcpProxy, db: pg.Client }> {
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 1500, TASK_RUN_RETRY_MS: retryMs, TASK_RUN_RETRY_MAX_MS: retryMaxMs }, logs.logger)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'done', instructions: 'one' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'done' } })).statusCode, 200)
  const db = await inspector(t, url)
  await landUnanswered(db, proxy, async () => await app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } }),
    "SELECT 1 FROM taskvault.sessions WHERE session_id = 'done' AND archived_at IS NOT NULL")
  return { app, proxy, db }
}

t.test('a change answered 503 that landed all the same is undone, by a write-back tried again until the database is back; meanwhile reads serve the acknowledged state; the event streams get a reset (its events never went out)', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const logs = memoryLog()
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 1500, TASK_RUN_RETRY_MS: 200, TASK_RUN_RETRY_MAX_MS: 400 }, logs.logger)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as import('node:net').AddressInfo
  const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events`)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'landed', instructions: 'one' } })).statusCode, 200)
  const created = (await stream.until((events) => events.some((event) => event.event === 'progress'))).length
  const db = await inspector(t, url)
  // Out of reach: the answer is lost, and the write-back fails too, then its retries.
  t.equal(await appendLandedUnanswered(app, db, proxy), 503, 'the append fails, its outcome unknown')
  const failures = (): number => logs.messages().filter((msg) => msg === 'Could not put back the acknowledged state after a failed save; trying again').length
  await waitFor('a retry of the write-back to fail', () => failures() >= 2, 10_000)
  // No read adopts the stored change meanwhile (that would keep it for good): reads are served
  // from the acknowledged state, while the database is out of reach and once it is back.
  const unreachable = await app.inject({ method: 'GET', url: `${API}/progress?session_id=landed` })
  t.match([unreachable.statusCode, unreachable.json().total], [200, 1], 'a read meanwhile serves the acknowledged session: one task')
  proxy.pass()
  const back = (await app.inject({ method: 'GET', url: `${API}/progress?session_id=landed` })).json()
  t.equal(back.total, 1, 'and so does one as the database is back')
  const events = await stream.until((events) => events.some((event) => event.event === 'reset'), 10_000)
  t.notOk(events.slice(created).some((event) => event.event === 'tasks.added'), 'the append\'s own events never went out')
  await waitFor('the acknowledged state to be written back', async () => (await db.query("SELECT 1 FROM taskvault.sessions WHERE session_id = 'landed' AND document::text NOT LIKE '%\"two\"%'")).rowCount === 1, 10_000)
  const progress = (await app.inject({ method: 'GET', url: `${API}/progress?session_id=landed` })).json()
  t.equal(progress.total, 1, 'the service serves the acknowledged session: one task')
  // Logged as the retry round ends, a moment after its commit.
  await waitFor('the put-back to be logged', () => logs.messages().includes('Storage holds the acknowledged states again after failed saves'), 10_000)
})

t.test('a DELETE of an archived session answered 503 that landed all the same: the session is gone (its copies were only in those rows), and the event streams get a reset', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 1500, TASK_RUN_RETRY_MS: 200, TASK_RUN_RETRY_MAX_MS: 400 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as import('node:net').AddressInfo
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'gone', instructions: 'one' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'gone' } })).statusCode, 200)
  t.match((await app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json(), { archived_ids: ['gone'] })
  const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events`)
  const db = await inspector(t, url)
  const status = await landUnanswered(db, proxy, async () => await app.inject({ method: 'DELETE', url: `${API}/sessions/gone` }),
    "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM taskvault.sessions WHERE session_id = 'gone')", 'DELETE')
  t.equal(status, 503, 'the delete fails, its outcome unknown')
  proxy.pass()
  const events = await stream.until((events) => events.some((event) => event.event === 'reset'), 10_000)
  t.notOk(events.some((event) => event.event === 'session.deleted'), 'no session.deleted went out: a reset says to refetch')
  await waitFor('the service to serve what is stored', async () => (await app.inject({ method: 'GET', url: `${API}/progress?session_id=gone` })).statusCode === 404, 10_000)
})

t.test('a write-back owed while the database was out of reach, when another replica wrote the session meanwhile: that state is adopted, with a reset', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const logs = memoryLog()
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_REPLICA_ID: 'a', TASK_DB_STATEMENT_TIMEOUT_MS: 1500, TASK_RUN_RETRY_MS: 200, TASK_RUN_RETRY_MAX_MS: 400 }, logs.logger)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as import('node:net').AddressInfo
  const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events`)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'landed', instructions: 'one' } })).statusCode, 200)
  await stream.until((events) => events.some((event) => event.event === 'progress'))
  const db = await inspector(t, url)
  // Out of reach: the answer is lost, and the write-back fails too.
  t.equal(await appendLandedUnanswered(app, db, proxy), 503, 'the append fails, its outcome unknown')
  const other = await postgresApp(t, url, { TASK_REPLICA_ID: 'b' })
  t.equal((await other.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'landed', instructions: 'three' } })).statusCode, 200, 'another replica appends to what is stored')
  const seen = (await stream.until(() => true)).length
  proxy.pass()
  // Before any request reads the session: the retry itself settles it.
  await waitFor('the retry to settle what was owed', () => logs.messages().includes('Storage holds the acknowledged states again after failed saves'), 10_000)
  await stream.until((events) => events.slice(seen).some((event) => event.event === 'reset'), 10_000)
  const progress = (await app.inject({ method: 'GET', url: `${API}/progress?session_id=landed` })).json()
  t.equal(progress.total, 3, 'the stored session is served: the other replica\'s write stands')
  t.equal((await db.query("SELECT 1 FROM taskvault.sessions WHERE session_id = 'landed' AND document::text LIKE '%\"three\"%'")).rowCount, 1, 'and nothing undid it')
})

t.test('a keyed create that landed unanswered (503) and was answered by another replica\'s replay stays: the first replica adopts it instead of putting the state before it back', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const logs = memoryLog()
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_REPLICA_ID: 'a', TASK_DB_STATEMENT_TIMEOUT_MS: 1500, TASK_RUN_RETRY_MS: 200, TASK_RUN_RETRY_MAX_MS: 400 }, logs.logger)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'landed', instructions: 'one' } })).statusCode, 200)
  const db = await inspector(t, url)
  const keyed = { 'idempotency-key': 'k-two' }
  // Out of reach: the keyed append lands, its answer lost; the write-back fails too.
  t.equal(await landUnanswered(db, proxy, async () => await app.inject({ method: 'POST', url: `${API}/create`, headers: keyed, payload: { session_id: 'landed', instructions: 'two' } }),
    "SELECT 1 FROM taskvault.sessions WHERE session_id = 'landed' AND document::text LIKE '%\"two\"%'"), 503, 'the append fails, its outcome unknown')
  // The client retries with its key through another replica: answered from what landed.
  const other = await postgresApp(t, url, { TASK_REPLICA_ID: 'b' })
  const replay = await other.inject({ method: 'POST', url: `${API}/create`, headers: keyed, payload: { session_id: 'landed', instructions: 'two' } })
  t.match([replay.statusCode, replay.headers['idempotent-replayed']], [200, 'true'], 'replayed')
  const acknowledged = (replay.json() as { task_ids: string[] }).task_ids
  proxy.pass()
  await waitFor('the first replica to settle what it owed', () => logs.messages().includes('Storage holds the acknowledged states again after failed saves'), 10_000)
  for (const [name, replica] of [['a', app], ['b', other]] as const) {
    const tasks = (await replica.inject({ method: 'GET', url: `${API}/list?session_id=landed` })).json().tasks as Array<{ id: string }>
    t.same(tasks.map((task) => task.id).slice(1), acknowledged, `replica ${name} serves the task the replay acknowledged`)
  }
  t.equal((await db.query("SELECT 1 FROM taskvault.sessions WHERE session_id = 'landed' AND document::text LIKE '%\"two\"%'")).rowCount, 1, 'and the row holds it')
  const again = await app.inject({ method: 'POST', url: `${API}/create`, headers: keyed, payload: { session_id: 'landed', instructions: 'two' } })
  t.same([again.statusCode, (again.json() as { task_ids: string[] }).task_ids], [200, acknowledged], 'the key answers the same tasks on the first replica too')
})

t.test('a keyed create replayed: through the replica that made it nothing is written; through another, the key is marked once; with no room for the mark, answered all the same', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const a = await postgresApp(t, url, { TASK_REPLICA_ID: 'a' })
  const b = await postgresApp(t, url, { TASK_REPLICA_ID: 'b' })
  // c takes sessions only this small: this one has no room left for a mark there.
  const c = await postgresApp(t, url, { TASK_REPLICA_ID: 'c', TASK_MAX_SESSION_BYTES: 65_536 })
  const db = await inspector(t, url)
  const row = async (): Promise<{ version: string, updated_at: string }> => (await db.query<{ version: string, updated_at: string }>("SELECT version::text, document->>'updated_at' AS updated_at FROM taskvault.sessions WHERE session_id = 'kept'")).rows[0] as { version: string, updated_at: string }
  const create = async (app: FastifyInstance): Promise<{ status: number, replayed: unknown, ids: string[] }> => {
    const res = await app.inject({ method: 'POST', url: `${API}/create`, headers: { 'idempotency-key': 'k1' }, payload: { session_id: 'kept', tasks: [{ instruction: 'x'.repeat(40_000) }, { instruction: 'y'.repeat(40_000) }] } })
    return { status: res.statusCode, replayed: res.headers['idempotent-replayed'], ids: (res.json() as { task_ids?: string[] }).task_ids ?? [] }
  }
  const first = await create(a)
  t.equal(first.status, 200)
  const made = await row()
  t.same(await create(a), { status: 200, replayed: 'true', ids: first.ids }, 'replayed through a')
  t.same(await row(), made, 'nothing written: the replica that made it knows it was acknowledged')
  t.same(await create(c), { status: 200, replayed: 'true', ids: first.ids }, 'through a replica where the session has no room for a mark')
  t.same(await row(), made, 'answered unmarked')
  t.same(await create(b), { status: 200, replayed: 'true', ids: first.ids }, 'replayed through b')
  const marked = await row()
  t.not(marked.version, made.version, 'the key marked once')
  t.same(await create(b), { status: 200, replayed: 'true', ids: first.ids }, 'and again')
  t.same(await row(), marked, 'not written twice')
})

t.test('an archive that landed unanswered is undone once the database is back: the session is active, with no archived row', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const logs = memoryLog()
  const { app, proxy, db } = await archiveLandedUnanswered(t, url, logs, 200, 400)
  t.ok(logs.messages().includes('Could not archive session'), 'the archive failed, its outcome unknown')
  proxy.pass()
  await waitFor('the undo to land', () => logs.messages().includes('Storage holds the acknowledged states again after failed saves'), 10_000)
  const { rows } = await db.query<{ archived: boolean }>("SELECT archived_at IS NOT NULL AS archived FROM taskvault.sessions WHERE session_id = 'done'")
  t.same(rows, [{ archived: false }], 'one row, active: no archived copy beside it')
  const progress = await app.inject({ method: 'GET', url: `${API}/progress?session_id=done` })
  t.match([progress.statusCode, progress.json().archived], [200, undefined], 'served as active')
  t.same((await app.inject({ method: 'GET', url: `${API}/list?session_id=all&archived=only` })).json().sessions, [], 'the archive lists nothing')
})

t.test('a DELETE answered 503 that landed while an archive undo was owed: the session is put back, as after any delete answered 503', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const logs = memoryLog()
  // Retries far apart: the DELETE comes while the undo is still owed.
  const { app, proxy, db } = await archiveLandedUnanswered(t, url, logs, 4000, 4000)
  t.ok(logs.messages().includes('Could not put back the acknowledged state after a failed save; trying again'), 'the archive landed unanswered, its undo owed')
  proxy.pass()
  const deleting = async (): Promise<{ statusCode: number }> => await app.inject({ method: 'DELETE', url: `${API}/sessions/done` })
  t.equal(await landUnanswered(db, proxy, deleting, "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM taskvault.sessions WHERE session_id = 'done')", 'DELETE'), 503, 'the delete removed the archived row, unanswered')
  proxy.pass()
  await waitFor('the write-back to settle', () => logs.messages().includes('Storage holds the acknowledged states again after failed saves'), 20_000)
  const { rows } = await db.query<{ archived: boolean }>("SELECT archived_at IS NOT NULL AS archived FROM taskvault.sessions WHERE session_id = 'done'")
  t.same(rows, [{ archived: false }], 'the session is stored again, active')
  t.equal((await app.inject({ method: 'GET', url: `${API}/progress?session_id=done` })).statusCode, 200, 'and served')
})

t.test('a DELETE refused after it removed the archived copy of a session owing an archive undo: the undo stays owed, and puts the session back', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const logs = memoryLog()
  const { app, proxy, db } = await archiveLandedUnanswered(t, url, logs, 3000, 3000)
  t.ok(logs.messages().includes('Could not put back the acknowledged state after a failed save; trying again'), 'the archive landed unanswered, its undo owed')
  proxy.pass()
  // Any DELETE on the table once the archived copy is gone fails: the delete's own step after it.
  await db.query(`CREATE FUNCTION taskvault.refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM taskvault.sessions WHERE session_id = 'done' AND archived_at IS NOT NULL) THEN RAISE EXCEPTION 'refused by the test'; END IF;
    RETURN NULL; END $$`)
  await db.query('CREATE TRIGGER refuse BEFORE DELETE ON taskvault.sessions FOR EACH STATEMENT EXECUTE FUNCTION taskvault.refuse_delete()')
  const deleted = await app.inject({ method: 'DELETE', url: `${API}/sessions/done` })
  await db.query('DROP TRIGGER refuse ON taskvault.sessions')
  await db.query('DROP FUNCTION taskvault.refuse_delete()')
  t.ok(deleted.statusCode >= 500, `the delete fails (${deleted.statusCode})`)
  t.equal((await db.query("SELECT 1 FROM taskvault.sessions WHERE session_id = 'done'")).rowCount, 0, 'having removed the only stored copy')
  await waitFor('the owed undo to land', () => logs.messages().includes('Storage holds the acknowledged states again after failed saves'), 15_000)
  const { rows } = await db.query<{ archived: boolean }>("SELECT archived_at IS NOT NULL AS archived FROM taskvault.sessions WHERE session_id = 'done'")
  t.same(rows, [{ archived: false }], 'the session is stored again, active')
  t.equal((await app.inject({ method: 'GET', url: `${API}/progress?session_id=done` })).statusCode, 200, 'and served')
})

t.test('an archive in doubt that never landed, whose row another replica then changed and archived: the undo leaves that replica\'s archived copy alone', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const logs = memoryLog()
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_REPLICA_ID: 'a', TASK_DB_STATEMENT_TIMEOUT_MS: 1500, TASK_RUN_RETRY_MS: 200, TASK_RUN_RETRY_MAX_MS: 400 }, logs.logger)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'done', instructions: 'one' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'done' } })).statusCode, 200)
  const db = await inspector(t, url)
  // The archive waits on a row lock; cancelled there (rolled back) while its answer cannot get
  // through, then its connection cut: a failure of unknown outcome, of a statement that did not land.
  const locker = await inspector(t, url)
  await locker.query('BEGIN')
  await locker.query("SELECT 1 FROM taskvault.sessions WHERE session_id = 'done' FOR UPDATE")
  const archiving = app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })
  const pid = await waitFor('the archive to wait on the lock', async () => (await db.query<{ pid: number }>(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'UPDATE sessions SET archived_at%'")).rows[0]?.pid, 10_000)
  proxy.stall()
  await db.query('SELECT pg_cancel_backend($1)', [pid])
  await locker.query('ROLLBACK')
  proxy.drop()
  await archiving
  t.ok(logs.messages().includes('Could not archive session'), 'the archive failed, its outcome unknown')
  // Meanwhile another replica appends to the session, runs it and archives it.
  const other = await postgresApp(t, url, { TASK_REPLICA_ID: 'b' })
  t.equal((await other.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'done', instructions: 'two' } })).statusCode, 200)
  t.equal((await other.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'done' } })).statusCode, 200)
  t.same((await other.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json().archived_ids, ['done'])
  proxy.pass()
  await waitFor('the undo to be settled', () => logs.messages().includes('Storage holds the acknowledged states again after failed saves'), 10_000)
  const { rows } = await db.query<{ archived: boolean, tasks: number }>("SELECT archived_at IS NOT NULL AS archived, tasks_total AS tasks FROM taskvault.sessions WHERE session_id = 'done'")
  t.same(rows, [{ archived: true, tasks: 2 }], 'the other replica\'s archived copy stands, and nothing active beside it')
  t.equal((await app.inject({ method: 'GET', url: `${API}/progress?session_id=done` })).json().archived, true, 'served as archived')
})

t.test('shutdown with the database not answering ends the event streams after TASK_EVENTS_CLOSE_MS, not after the statement timeout', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 10_000, TASK_EVENTS_CLOSE_MS: 500 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as import('node:net').AddressInfo
  const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events`)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'seen', instructions: 'x' } })).statusCode, 200)
  await stream.until((events) => events.some((event) => event.event === 'session.created'))

  // The relay's last read of the event log now waits on a database that does not answer.
  proxy.stall()
  const started = Date.now()
  const closing = app.close()
  await stream.ended
  const ms = Date.now() - started
  t.ok(ms < 500 + 3000, `the stream ended ${ms} ms into the shutdown (the statement timeout is 10 s)`)
  proxy.pass()
  await closing
})

t.test('live events the database could not take wait and go later, in order; past TASK_EVENTS_BUFFER of them the streams get a reset', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const app = await postgresApp(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: 500, TASK_EVENTS_POLL_MS: 200, TASK_EVENTS_BUFFER: 5 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as import('node:net').AddressInfo
  const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events`)
  const create = async (id: string): Promise<void> => {
    t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: 'x' } })).statusCode, 200, `${id} created`)
  }
  // The event log locked by another client: publishing (and reading) it fails by the statement timeout, saves do not.
  const locker = await inspector(t, url)
  const lockLog = async (): Promise<void> => { await locker.query('BEGIN'); await locker.query('LOCK TABLE events IN ACCESS EXCLUSIVE MODE') }

  await lockLog()
  await create('late')
  await sleep(1500) // two failed tries at least
  t.notOk(stream.events.some((event) => event.data.session_id === 'late'), 'nothing shown while the log cannot take it')
  await locker.query('COMMIT')
  const late = await stream.until((events) => events.filter((event) => event.data.session_id === 'late').length === 3, 10_000)
  t.same(names(late, 'late'), ['session.created', 'tasks.added', 'progress'], 'shown once the log takes them, in order')
  t.notOk(late.some((event) => event.event === 'reset'), 'no reset: nothing was lost')

  // Six events wait for a log that keeps five: the oldest is dropped, and once the log takes
  // events again the stream is told to refetch.
  await lockLog()
  await create('lost1')
  await create('lost2')
  await sleep(1500)
  t.notOk(stream.events.some((event) => event.event === 'reset'), 'no reset while nothing can be fetched either')
  await locker.query('COMMIT')
  const reset = await stream.until((events) => events.some((event) => event.event === 'reset'), 10_000)
  t.same(reset.find((event) => event.event === 'reset')?.data, { reason: 'missed-events' })
  const after = await stream.until((events) => events.some((event) => event.data.session_id === 'lost2' && event.event === 'progress'), 10_000)
  t.same(names(after, 'lost2'), ['session.created', 'tasks.added', 'progress'], 'the newer events follow once the log takes them')
  t.equal(names(after, 'lost1').length, 2, 'of the first create\'s three, the oldest was dropped')
})

t.test('a host\'s pool that is not this copy\'s pg.Pool (another copy of pg, a wrapper) boots the plugin, which then serves from it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const real = new pg.Pool(connectionConfig({ url, schema: 'taskvault', max: 4, statementTimeoutMs: 5_000 }))
  // end() resolves before its idle connections have closed: the database's drop (the next
  // teardown) can end one first, and the pool reports that as its 'error', fatal unheard.
  real.on('error', noop)
  t.teardown(() => real.end())
  // What the \`pool\` option asks for, delegated: nothing of it is an instance of pg.Pool.
  const pool = {
    query: async (...args: unknown[]) => (real.query as (...a: unknown[]) => Promise<unknown>)(...args),
    connect: async () => real.connect(),
    end: async () => real.end(),
    on: (...args: Parameters<pg.Pool['on']>) => real.on(...args)
  }
  const app = Fastify()
  t.teardown(() => app.close())
  // Short: without the fix the boot took the failure for a database that is down and waited this long.
  await app.register(taskvaultPlugin, { prefix: '/tv', pool: pool as unknown as pg.Pool, dbConnectTimeoutMs: 2_000 })
  await app.ready()
  const created = await app.inject({ method: 'POST', url: '/tv/create', payload: { session_id: 'hosted', instructions: '1. a\n2. b' } })
  t.equal(created.statusCode, 200, 'a session is created')
  const { rows } = await real.query('SELECT session_id FROM sessions WHERE archived_at IS NULL')
  t.same(rows, [{ session_id: 'hosted' }], 'stored through the host\'s pool')

  // A pool that is not usable (connect() only takes a callback) is a fault of the host's code:
  // the boot stops at once and says what failed, not after TASK_DB_CONNECT_TIMEOUT_MS as "could not reach the database".
  const callbackOnly = { ...pool, connect: (callback?: Parameters<pg.Pool['connect']>[0]) => { if (callback !== undefined) real.connect(callback) } }
  const other = Fastify()
  t.teardown(() => other.close())
  const started = performance.now()
  const failed = await other.register(taskvaultPlugin, { prefix: '/tv', pool: callbackOnly as unknown as pg.Pool, dbConnectTimeoutMs: 5_000 }).ready().then(() => null, (err: Error) => err)
  t.type(failed, TypeError, `the boot fails with the TypeError: ${String(failed)}`)
  t.ok(performance.now() - started < 4_000, 'at once, not retried as a database that is down')
})

const names = (events: Array<{ event: string, data: Record<string, unknown> }>, sessionId: string): string[] =>
  events.filter((event) => event.data.session_id === sessionId).map((event) => event.event)

t.test('after the schema is restored from a pg_dump, a client resuming with an id from before gets a reset: restored ids are handed out again for other events', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const dump = `${await tempDir(t)}/taskvault.dump`
  const create = async (app: FastifyInstance, id: string): Promise<void> => {
    t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: 'x' } })).statusCode, 200, `${id} created`)
  }
  const first = await postgresApp(t, url)
  await create(first, 'dumped')
  const run = async (command: string, args: string[]): Promise<void> => {
    const { execFile } = await import('node:child_process')
    await new Promise<void>((resolve, reject) => { execFile(command, args, (err) => { if (err === null) resolve(); else reject(err) }) })
  }
  // The README's backup: the schema dumped while the service runs.
  await run('pg_dump', ['-d', url, '-n', 'taskvault', '-Fc', '-f', dump])
  const dumpedId = first.taskEvents.currentId()
  for (const id of ['after_1', 'after_2']) await create(first, id)
  const lastId = first.taskEvents.currentId()
  await first.close()
  // Restored: the schema as the dump has it.
  const admin = await inspector(t, url)
  await admin.query('DROP SCHEMA taskvault CASCADE')
  await run('pg_restore', ['-d', url, dump])

  // Another replica id: the dump holds the first server's row, which names this very process,
  // so under the same id the boot would wait out a lease (TASK_LEASE_MS) before claiming it.
  const second = await postgresApp(t, url, { TASK_REPLICA_ID: 'after-restore' })
  await second.listen({ port: 0, host: '127.0.0.1' })
  const { port } = second.server.address() as import('node:net').AddressInfo
  for (const [id, what] of [[lastId, 'an id past the restored log'], [dumpedId, 'the id the dump ended at']] as const) {
    const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events`, { 'last-event-id': id })
    await create(second, `new_${what.length}`)
    const events = await stream.until((list) => list.length > 0)
    t.equal(events[0]?.event, 'reset', `${what} (${id}): a reset first`)
    stream.close()
  }
})

t.test('replicas: while the event log is held up, reads answer at once; a replica shutting down with events it could not publish leaves its row to run out, and the gap is logged', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const quick = { TASK_LEASE_MS: 1000, TASK_SWEEP_INTERVAL_MS: 200 }
  const a = await postgresApp(t, url, { TASK_REPLICA_ID: 'a', ...quick })
  const b = await postgresApp(t, url, { TASK_REPLICA_ID: 'b', ...quick, TASK_EVENTS_PUBLISH_WAIT_MS: 20_000, TASK_EVENTS_CLOSE_MS: 200, TASK_DB_STATEMENT_TIMEOUT_MS: 4000 })
  t.equal((await b.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'read-me', instructions: 'x' } })).statusCode, 200)
  // Publishing takes the log's lock: held here, b's events wait.
  const locker = await inspector(t, url)
  await locker.query("BEGIN; SELECT pg_advisory_xact_lock(hashtext('taskvault.events'))")
  const creating = b.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'unpublished', instructions: 'y' } })
  await waitFor('b\'s events to wait', async () => (await locker.query<{ n: string }>("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).rows[0]?.n !== '0')
  const read = await Promise.race([
    b.inject({ method: 'GET', url: `${API}/progress?session_id=read-me` }).then((res) => res.statusCode),
    // Less than the publish's statement timeout, after which events go with a retry and nothing waits for them.
    sleep(2000, 'still waiting', { ref: false })
  ])
  t.equal(read, 200, 'a read does not wait for events it did not make')
  await b.close()
  t.equal((await creating).statusCode, 200, 'the create committed (its events did not make it)')
  const db = await inspector(t, url)
  t.equal((await db.query("SELECT 1 FROM replicas WHERE replica_id = 'b'")).rowCount, 1, 'b did not leave: its row runs out')
  await locker.query('COMMIT')
  await waitFor('a to clear b\'s row and log a gap', async () => (await db.query("SELECT 1 FROM events WHERE name = 'log.gap' AND data::jsonb->'replicas' ? 'b'")).rowCount === 1, 10_000)
  t.equal((await db.query("SELECT 1 FROM replicas WHERE replica_id = 'b'")).rowCount, 0)
  t.equal((await a.inject({ method: 'GET', url: `${API}/progress?session_id=unpublished` })).statusCode, 200)
})

t.test('an execute whose save fails on a database gone silent answers 503 without waiting to give its lease back, which would hold it a connect timeout more', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const gate = await tempDir(t)
  // The agent says it started, then waits for the test's word.
  const argv = ['sh', '-c', `touch '${gate}/started'; while [ ! -f '${gate}/go' ]; do sleep 0.02; done; cat`]
  const timeoutMs = 2000
  const log = memoryLog()
  const gaveUp = (): boolean => log.messages().some((message) => message.startsWith('Could not give the lease back'))
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_DB_STATEMENT_TIMEOUT_MS: timeoutMs, TASK_AGENTS: JSON.stringify({ default: { kind: 'command', argv, timeout_ms: 60_000 } }) }, log.logger)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'silent', instructions: '1. a\n2. b' } })).statusCode, 200)
  const answer = app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'silent' } })
  await waitFor('the agent to start', async () => await access(join(gate, 'started')).then(() => true, () => false), 10_000)
  proxy.stall()
  const from = Date.now()
  await writeFile(join(gate, 'go'), '')
  const res = await answer
  const ms = Date.now() - from
  t.equal(res.statusCode, 503, 'the save failed: 503')
  // The save, and putting back the acknowledged state (its outcome unknown): each a connection's
  // wait or a statement's, up to the timeout. The lease's give-back fails a timeout later still.
  t.notOk(gaveUp(), `answered before the lease's give-back gave up (${ms} ms, timeout ${timeoutMs} ms)`)
  await waitFor('the give-back to give up on its own', async () => gaveUp(), 4 * timeoutMs + 10_000)
  t.ok(ms < 6 * timeoutMs, `within a few statement timeouts (${ms} ms)`)
  proxy.pass()
})

t.test('lists with archived sessions, both stores: sessions of one millisecond keep their places when one is archived, so pages by offset neither repeat nor skip one; ids in byte order, on a database that orders text as people read too', async (t) => {
  const url = await testDatabase(t, { linguistic: true })
  const stores: Array<[string, Record<string, string | number>]> = [['file', {}]]
  if (url !== null) stores.push(['postgres', { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_REPLICA_ID: 'lists' }])
  for (const [name, config] of stores) {
    // Every change at one instant: all sessions share one updated_at. Archiving (of sessions
    // finished before now) happens a second later.
    let now = CLOCK_START
    const app = await buildApp({ readEnvironment: false, clock: () => new Date(now), config: { TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, ...config } })
    const archive = async (): Promise<number> => {
      now = CLOCK_START + 1000
      const { archived } = await inject('POST', '/archive', { older_than_days: 0 })
      now = CLOCK_START
      return archived
    }
    await app.ready()
    const inject = async (method: 'GET' | 'POST', path: string, payload?: object): Promise<any> =>
      (await app.inject({ method, url: `${API}${path}`, ...(payload === undefined ? {} : { payload }) })).json()
    // In byte order, as the file store sorts ids: people read `_a` before `B` (en-US), bytes after it.
    const ids = ['d', 'B', 'e', '_a', 'c']
    for (const id of ids) await inject('POST', '/create', { session_id: id, instructions: 'x' })
    // '_a' and 'e' finish and are archived; the rest stay active.
    for (const id of ['_a', 'e']) await inject('POST', '/execute-all', { session_id: id })
    t.equal(await archive(), 2, `${name}: two archived`)
    const page = async (offset: number): Promise<string> => (await inject('GET', `/list?session_id=all&archived=include&limit=1&offset=${offset}`)).sessions[0]?.session_id
    const walked = [await page(0), await page(1)]
    // 'c' finishes and is archived between pages: the pages after it must still show each once.
    await inject('POST', '/execute-all', { session_id: 'c' })
    t.equal(await archive(), 1, `${name}: one more archived between pages`)
    for (let offset = 2; offset < ids.length; offset++) walked.push(await page(offset))
    t.same(walked, ['B', '_a', 'c', 'd', 'e'], `${name}: by id among one millisecond, whether archived or not`)
    t.same((await inject('GET', '/list?session_id=all&archived=include')).sessions.map((s: { session_id: string }) => s.session_id), ['B', '_a', 'c', 'd', 'e'], `${name}: one page says the same`)
    t.same((await inject('GET', '/list?session_id=all')).sessions.map((s: { session_id: string }) => s.session_id), ['B', 'd'], `${name}: the active ones by id too`)
    t.same((await inject('GET', '/list?session_id=all&archived=only')).sessions.map((s: { session_id: string }) => s.session_id), ['_a', 'c', 'e'], `${name}: the archived ones by id too`)
    await app.close()
  }
})

t.test('a replica whose database goes silent shuts down within its bounds (a sweep, leaving and the pool each wait TASK_DB_PING_TIMEOUT_MS at most), not a statement timeout per step', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const log = memoryLog()
  const { app, proxy } = await postgresAppThroughProxy(t, url, { TASK_SWEEP_INTERVAL_MS: 500, TASK_DB_PING_TIMEOUT_MS: 1000, TASK_LEASE_MS: 6000, TASK_EVENTS_CLOSE_MS: 1000, TASK_DB_STATEMENT_TIMEOUT_MS: 15_000 }, log.logger)
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'quiet', instructions: '1. a' } })).statusCode, 200)
  proxy.stall()
  // A sweep starts against the silent database, and waits.
  await sleep(1200)
  const from = Date.now()
  await app.close()
  const ms = Date.now() - from
  // A sweep's wait, the events' close, a lease renewal's time (TASK_LEASE_MS / 6) and the last steps': about 4 s.
  t.ok(ms < 8000, `closed in ${ms} ms, not a statement timeout (15 s) per step`)
  t.ok(log.messages().includes('A sweep under way got no answer from the database in time; stopping without it (what it claimed is taken over elsewhere once the leases run out)'), 'the sweep left behind is logged')
  proxy.pass()
})
