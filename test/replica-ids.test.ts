/**
 * One process per replica id, on the real PostgreSQL: a server started under a TASK_REPLICA_ID
 * another live server beats under is refused before it takes anything over; the row of an
 * earlier process that is gone (killed: a dead pid of this host, or this very pid in an earlier
 * life) is claimed at once, one of another host once silent past the lease; and a server whose id
 * another process claimed (it was paused past the lease) loses its leases and writes nothing more.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { hostname } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type pg from 'pg'
import { statusFor } from '../http/error-handler.js'
import { ReplicaIdInUseError, type TaskvaultError } from '../services/errors.js'
import { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { LOG_GAP, type ReplicaIdEvent } from '../services/store/store.js'
import { processPlace } from '../services/pid.js'
import { API, waitFor } from './helper.js'
import { inspector, testDatabase, type DatabaseTestContext } from './postgres.js'
import { recordingAgent, replicaSet } from './replicas.js'
import { baseEnv, call, freePort, scratch } from './server-process.js'
import { contractSession } from './store-contract.js'

const SCHEMA = 'tv_replica_ids'

/** A store under `replicaId` to open, recording what its claim of the id found (closed when the test ends). */
function replica (url: string, replicaId: string, leaseMs = 60_000): { open: () => Promise<PostgresSessionStore>, seen: ReplicaIdEvent[] } {
  const seen: ReplicaIdEvent[] = []
  return {
    seen,
    open: async () => {
      const store = new PostgresSessionStore({ settings: { url, schema: SCHEMA, max: 4, statementTimeoutMs: 5_000, connectTimeoutMs: 5_000 }, replicaId, leaseMs })
      store.events.on('replica-id', (event) => { seen.push(event) })
      t.teardown(() => store.close())
      await store.init()
      return store
    }
  }
}

/**
 * A store under `replicaId` with session `sessionId`, then what a process started while it was
 * paused (its renewal 20 s away) does: it claims the id and takes the session's lease.
 */
async function claimedWhilePaused (t: DatabaseTestContext, url: string, replicaId: string, sessionId = 's'): Promise<{ db: pg.Pool, store: PostgresSessionStore }> {
  const db = inspector(t, url, SCHEMA)
  const store = await replica(url, replicaId).open()
  await store.save(contractSession(sessionId, ['Pending']))
  await db.query('UPDATE replicas SET instance = \'newer\' WHERE replica_id = $1', [replicaId])
  await db.query('UPDATE sessions SET owner = $1, epoch = epoch + 1, lease_until = now() + interval \'60 seconds\' WHERE session_id = $2', [replicaId, sessionId])
  return { db, store }
}

/** The pid of a process of this host that has exited (and been reaped). */
async function deadPid (): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
  await once(child, 'exit')
  return child.pid as number
}

t.test('a second server under a live replica id is refused at start, within about a third of the lease, and the first keeps its leases and its row', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const first = await replica(url, 'dup', 3_000).open()
  await first.save(contractSession('s', ['Pending']))
  const { epoch } = await first.acquire('s')
  const before = (await db.query("SELECT instance FROM replicas WHERE replica_id = 'dup'")).rows[0]?.instance as string

  const second = replica(url, 'dup', 3_000)
  const started = performance.now()
  const refused = await second.open().catch((err: unknown) => err)
  const tookMs = performance.now() - started
  t.type(refused, ReplicaIdInUseError)
  t.match(refused, { code: 'REPLICA_ID_IN_USE', message: new RegExp(`TASK_REPLICA_ID 'dup' is in use by another running server \\(pid ${process.pid} on host ${hostname()}`, 'u') })
  t.equal(statusFor(refused as TaskvaultError), 500, 'it stops a boot, never answers a request')
  t.ok(tookMs < 3_000, `told as soon as the first beat again (${Math.round(tookMs)} ms), not after a whole lease`)
  t.match(second.seen, [{ type: 'waiting', holder: { pid: process.pid, host: hostname() } }], 'the wait was reported')

  const row = (await db.query("SELECT owner, epoch::text AS epoch FROM sessions WHERE session_id = 's'")).rows[0]
  t.same(row, { owner: 'dup', epoch }, 'the session was not taken over')
  t.equal((await db.query("SELECT instance FROM replicas WHERE replica_id = 'dup'")).rows[0]?.instance, before, 'the id is still the first\'s')
  // Its next renewals still land: nothing of it was lost.
  await sleep(1_500)
  t.equal(await first.holder('s'), 'dup', 'the first still holds its lease')
  t.equal(first.unwritable(), null, 'and writes')
})

t.test('the row of an earlier process of this host that is gone is claimed at once, with a gap logged: a dead pid, or this pid in an earlier life', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  // The schema made, and its first holder gone cleanly.
  await (await replica(url, 'warmup').open()).close()
  const gaps = async (): Promise<number> => Number((await db.query('SELECT count(*) FROM events WHERE name = $1', [LOG_GAP])).rows[0].count)
  const cases: Array<[string, number, string]> = [
    ['a pid that no longer runs', await deadPid(), new Date().toISOString()],
    ['this very pid, started before this process (a restarted container)', process.pid, new Date(Date.now() - 3_600_000).toISOString()]
  ]
  // Of this machine's boot and this pid namespace, where a pid can be asked whether it runs.
  const { boot, pidNamespace } = processPlace()
  t.not(boot, '', 'this machine tells its boot')
  for (const [what, pid, startedAt] of cases) {
    const id = `gone-${pid}`
    await db.query('INSERT INTO replicas (replica_id, seen_at, instance, host, pid, started_at, boot, pid_ns) VALUES ($1, now(), $2, $3, $4, $5, $6, $7)',
      [id, 'earlier', hostname(), pid, startedAt, boot, pidNamespace])
    const gapsBefore = await gaps()
    const claim = replica(url, id)
    const started = performance.now()
    const store = await claim.open()
    t.ok(performance.now() - started < 5_000, `${what}: claimed without waiting for the lease (60 s)`)
    t.match(claim.seen, [{ type: 'cleared', why: 'gone', holder: { pid } }], `${what}: reported`)
    t.equal(await gaps(), gapsBefore + 1, `${what}: a gap logged (its last events may never have gone out)`)
    const { rows } = await db.query('SELECT instance, pid FROM replicas WHERE replica_id = $1', [id])
    t.not(rows[0]?.instance, 'earlier', `${what}: the row is the new process's`)
    await store.close()
  }
})

t.test('a row of this host name whose pid does not run here, from another pid namespace or machine (a container or pod of the same name): watched, and refused when it beats', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  await (await replica(url, 'warmup').open()).close()
  const pid = await deadPid()
  const { boot } = processPlace()
  await db.query("INSERT INTO replicas (replica_id, seen_at, instance, host, pid, started_at, boot, pid_ns) VALUES ('twin', now(), 'other', $1, $2, now(), $3, 'pid:[1]')", [hostname(), pid, boot])
  const claim = replica(url, 'twin', 3_000)
  const opening = claim.open()
  await waitFor('the wait', () => claim.seen.length > 0)
  t.match(claim.seen, [{ type: 'waiting', holder: { pid } }], 'not taken for an earlier life: watched')
  await db.query("UPDATE replicas SET seen_at = now() WHERE replica_id = 'twin'")
  await t.rejects(opening, { code: 'REPLICA_ID_IN_USE' }, 'it beat again: refused')
})

t.test('a row of another host not yet silent past the lease is watched; once silent past it, it is claimed', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  await (await replica(url, 'warmup').open()).close()
  await db.query("INSERT INTO replicas (replica_id, seen_at, instance, host, pid, started_at) VALUES ('far', now(), 'other', 'another-host', 1, now())")
  // A DateStyle whose text of a time does not read back as the same time: beats are matched as numbers.
  await db.query(`ALTER DATABASE "${new URL(url).pathname.slice(1)}" SET datestyle = 'Postgres, MDY'`)
  await db.query(`ALTER DATABASE "${new URL(url).pathname.slice(1)}" SET timezone = 'Asia/Kolkata'`)
  const claim = replica(url, 'far', 2_000)
  const started = performance.now()
  const store = await claim.open()
  const tookMs = performance.now() - started
  t.ok(tookMs >= 1_500 && tookMs < 6_000, `claimed once its beat was past the lease (${Math.round(tookMs)} ms; lease 2,000)`)
  t.match(claim.seen, [{ type: 'waiting', holder: { host: 'another-host' } }, { type: 'cleared', why: 'silent' }])
  t.equal(store.unwritable(), null)
})

t.test('a server whose id another process claimed loses its leases, refuses writes (503 REPLICA_ID_TAKEN), and leaves the other\'s row alone at close', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const claim = replica(url, 'paused', 1_500)
  const store = await claim.open()
  const lost: string[] = []
  store.events.on('lease-lost', (sessionId) => { lost.push(sessionId) })
  await store.save(contractSession('s', ['Pending']))
  await store.acquire('s')
  // What a process started meanwhile does once this one was silent past the lease: it claims the id.
  await db.query("UPDATE replicas SET instance = 'newer', pid = 1, host = 'elsewhere' WHERE replica_id = 'paused'")
  const refusal = await waitFor('the refusal', () => store.unwritable() ?? false, 5_000)
  t.match(refusal, { code: 'REPLICA_ID_TAKEN', message: /another process claimed this server's TASK_REPLICA_ID 'paused'/u })
  t.equal(statusFor(refusal), 503)
  t.same(lost, ['s'], 'its lease is lost: the run stops')
  t.match(claim.seen, [{ type: 'taken' }])
  await t.rejects(store.acquire('s'), { code: 'REPLICA_ID_TAKEN' }, 'no lease is taken any more')
  t.same(await store.sweep(10, false), [], 'nor swept')
  // The other process takes the session under the same id: to this one it runs elsewhere (progress says running).
  await db.query("UPDATE sessions SET owner = 'paused', epoch = epoch + 1, lease_until = now() + interval '60 seconds' WHERE session_id = 's'")
  await store.refresh('s')
  t.equal(store.runningElsewhere('s'), 'paused', 'the other process\'s lease under the same id')
  await store.close()
  t.same((await db.query("SELECT instance FROM replicas WHERE replica_id = 'paused'")).rows, [{ instance: 'newer' }], 'its close left the other\'s row')
})

t.test('a server whose id another process claimed learns it at its next acquire, before its renewal would tell: no lease is taken from under the other', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { db, store } = await claimedWhilePaused(t, url, 'resumed')
  const before = (await db.query("SELECT epoch::text AS epoch FROM sessions WHERE session_id = 's'")).rows[0]?.epoch as string
  await t.rejects(store.acquire('s'), { code: 'REPLICA_ID_TAKEN' })
  t.match(store.unwritable(), { code: 'REPLICA_ID_TAKEN' }, 'and it writes nothing more')
  t.equal((await db.query("SELECT epoch::text AS epoch FROM sessions WHERE session_id = 's'")).rows[0]?.epoch, before, 'the other\'s lease is untouched')
  t.same(await store.sweep(10, true), [], 'nor is anything swept')
  await t.rejects(store.requestCancel('s'), { code: 'REPLICA_ID_TAKEN' })
})

t.test('a server whose id another process claimed, deleting a session that process runs before its renewal would tell: SESSION_BUSY, nothing deleted', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { db, store } = await claimedWhilePaused(t, url, 'woken')
  await t.rejects(store.remove('s'), { code: 'SESSION_BUSY' }, 'the lease under its id is the other process\'s')
  t.equal((await db.query("SELECT 1 FROM sessions WHERE session_id = 's'")).rowCount, 1, 'the session stays')
})

t.test('a server whose id another process claimed, asked who runs a session that process runs (a retry\'s check) or to cancel it, before its renewal would tell: REPLICA_ID_TAKEN, not nobody', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { store } = await claimedWhilePaused(t, url, 'asked')
  await t.rejects(store.holder('s'), { code: 'REPLICA_ID_TAKEN' }, 'the lease under its id is the other process\'s, not a stray of its own')
  t.match(store.unwritable(), { code: 'REPLICA_ID_TAKEN' }, 'and it writes nothing more')
  const cancelling = await claimedWhilePaused(t, url, 'cancelling', 'c')
  await t.rejects(cancelling.store.requestCancel('c'), { code: 'REPLICA_ID_TAKEN' }, 'nor is its cancel taken for one of nobody\'s')
})

t.test('real servers: a second under the same TASK_REPLICA_ID exits at boot; one paused past the lease is taken over, and once resumed it answers 503 and /ready 503', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  const set = await replicaSet(t, url, agent, { TASK_LEASE_MS: '2000', TASK_SWEEP_INTERVAL_MS: '300' })
  const first = await set.start('same')
  t.equal((await call(first, 'POST', `${API}/create`, { session_id: 'kept', instructions: 'one' })).status, 200)

  const { spawnRaw } = await scratch(t)
  const twin = spawnRaw(baseEnv({ TASK_STORE: 'postgres', DATABASE_URL: url, TASK_REPLICA_ID: 'same', TASK_LEASE_MS: '2000', TASK_ARCHIVE_DAYS: '0', PORT: String(await freePort()) }))
  const exit = await twin.exited
  t.equal(exit.code, 1, 'the twin exits 1')
  t.match(twin.stderr() + twin.stdout(), /REPLICA_ID_IN_USE|TASK_REPLICA_ID 'same' is in use by another running server/u, 'saying why')
  t.equal((await call(first, 'GET', '/ready')).status, 200, 'the first goes on')

  first.child.kill('SIGSTOP')
  const second = await set.start('same')
  t.ok(second.stdout().includes('Took over this replica id from a process silent past TASK_LEASE_MS'), 'the new server took the id over once the paused one was silent past the lease')
  first.child.kill('SIGCONT')
  t.ok(await first.waitForLine((line) => line.includes('REPLICA_ID_TAKEN'), 10_000), 'the resumed server logs that its id was taken')
  const ready = await call(first, 'GET', '/ready')
  t.equal(ready.status, 503)
  t.match(ready.body, { code: 'REPLICA_ID_TAKEN' })
  const refused = await call(first, 'POST', `${API}/create`, { session_id: 'late', instructions: 'one' })
  t.match(refused, { status: 503, body: { code: 'REPLICA_ID_TAKEN' } }, 'a write is refused')
  t.equal((await call(second, 'GET', `${API}/progress?session_id=late`)).status, 404, 'and nothing of it was stored')
  t.equal((await call(second, 'POST', `${API}/create`, { session_id: 'after', instructions: 'one' })).status, 200, 'the new server writes')
})
