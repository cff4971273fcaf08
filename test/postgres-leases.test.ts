/**
 * Execution leases in the PostgreSQL store (issue 14), store against store on the real
 * database: one holder at a time, SESSION_BUSY naming it; the fence refuses a save from a lease
 * that was taken over even when its holder has not noticed; one statement renews every lease a
 * replica holds; a replica that cannot renew gives its leases up before they run out; a sweep
 * claims each expired session once; refresh sends the document only when it changed.
 */
import pg from 'pg'
import t, { type Test } from 'tap'
import { statusFor } from '../http/error-handler.js'
import { LeaseLostError, SessionBusyError, type TaskvaultError } from '../services/errors.js'
import type { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { inspector as inspectorOf, openTestStore, testDatabase, throughProxy, type TestStoreOptions } from './postgres.js'
import { contractSession } from './store-contract.js'
import { waitFor } from './helper.js'

const SCHEMA = 'tv_leases'
const open = async (t: Test, url: string, replicaId: string, options: TestStoreOptions = {}): Promise<PostgresSessionStore> =>
  openTestStore(t, url, SCHEMA, { replicaId, leaseMs: 60_000, ...options })

/** The lease keeper's listening connection: by its name, or by its last statement (the SET and LISTEN it opens with) when it came from the pool. */
const LISTENER = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND (application_name = 'taskvault-leases' OR query LIKE 'SET statement_timeout%LISTEN%')"

/** The keeper's listening connection's backend pid or client port, once it is up. */
async function listening (db: pg.Pool, column: 'pid' | 'client_port'): Promise<number> {
  let found: number | undefined
  await waitFor('the listening connection', async () => {
    found = (await db.query<Record<string, number>>(LISTENER.replace('pid', column))).rows[0]?.[column]
    return found !== undefined
  }, 5000)
  return found as number
}

/**
 * Three statements of the store's (lease acquires) left waiting on rows another transaction
 * holds: a pool of three has no connection free. free() ends that transaction and resolves once
 * they went through.
 */
async function fillPool (t: Test, db: pg.Pool, store: PostgresSessionStore): Promise<{ free: () => Promise<number> }> {
  const ids = ['l1', 'l2', 'l3']
  for (const id of ids) await store.save(contractSession(id, ['Pending']))
  const locker = await db.connect()
  t.teardown(() => { locker.release() })
  await locker.query(`BEGIN; SELECT 1 FROM ${SCHEMA}.sessions WHERE session_id IN ('l1', 'l2', 'l3') FOR UPDATE`)
  const waiting = ids.map(async (id) => store.acquire(id))
  await waitFor('three statements waiting on the locks', async () =>
    (await db.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).rowCount === 3, 5000)
  return {
    free: async () => {
      await locker.query('ROLLBACK')
      return (await Promise.all(waiting)).length
    }
  }
}

/**
 * A replica (the smallest pool replicas allow, 6 s leases, no statement timeout: pooled
 * statements wait as long as a lock is held) holding session 'h', every pooled connection
 * waiting on row locks (fillPool), and its keeper's listening connection (`column`, see listening()).
 */
async function saturatedHolder (t: Test, db: pg.Pool, url: string, column: 'pid' | 'client_port'): Promise<{ lost: string[], listener: number, pool: { free: () => Promise<number> } }> {
  const a = await open(t, url, 'alpha', { leaseMs: 6000, statementTimeoutMs: 0, max: 3 })
  const lost: string[] = []
  a.events.on('lease-lost', (id) => lost.push(id))
  const listener = await listening(db, column)
  await a.save(contractSession('h', ['Pending']))
  await a.acquire('h')
  return { lost, listener, pool: await fillPool(t, db, a) }
}

/** Waits past the point where the lease on 'h' is given up (five sixths of it) when renewals stop: none was, and it was renewed meanwhile. */
async function leaseKept (t: Test, db: pg.Pool, lost: string[]): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 7000))
  t.same(lost, [], 'no lease given up')
  const { rows } = await db.query<{ left_ms: number }>("SELECT extract(epoch FROM lease_until - now()) * 1000 AS left_ms FROM sessions WHERE session_id = 'h'")
  t.ok((rows[0]?.left_ms ?? 0) > 2000, `renewed meanwhile: ${Math.round(rows[0]?.left_ms ?? 0)} ms left`)
}

async function row (db: pg.Pool, sessionId: string): Promise<{ owner: string | null, epoch: string, version: string, document: string, xmin: string, lease_ms: number | null }> {
  const { rows } = await db.query(`SELECT owner, epoch, version, document::text AS document, xmin::text AS xmin,
      extract(epoch FROM lease_until - now()) * 1000 AS lease_ms FROM sessions WHERE session_id = $1 AND archived_at IS NULL`, [sessionId])
  return rows[0]
}

t.test('one holder at a time: a second replica gets SESSION_BUSY (409) naming the holder; after release it may take it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha')
  const b = await open(t, url, 'beta')
  await a.save(contractSession('s', ['Pending']))
  await a.acquire('s')
  const busy = await b.acquire('s').catch((err: unknown) => err)
  t.type(busy, SessionBusyError)
  t.match(busy, { code: 'SESSION_BUSY', owner: 'alpha', message: /replica 'alpha'/u })
  t.equal(statusFor(busy as TaskvaultError), 409)
  t.equal(await b.holder('s'), 'alpha')
  await t.rejects(b.acquire('nope'), { code: 'SESSION_NOT_FOUND' }, 'no such session')
  await a.release('s', (await db.query("SELECT epoch::text AS epoch FROM sessions WHERE session_id = 's'")).rows[0].epoch)
  t.equal(await b.holder('s'), null, 'released')
  await b.acquire('s')
  t.equal(await a.holder('s'), 'beta')
})

t.test('the fence: a save by a holder whose lease was taken over is refused (LEASE_LOST), though it never noticed, and the new holder\'s work stays', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha')
  const b = await open(t, url, 'beta')
  const lost: string[] = []
  a.events.on('lease-lost', (id) => lost.push(id))
  await a.save(contractSession('f', ['Pending', 'Pending']))
  await a.acquire('f')
  await a.save(contractSession('f', ['InProgress', 'Pending']))
  // Alpha's lease runs out (as if it had been stopped for a minute): beta's sweep claims the session.
  await db.query("UPDATE sessions SET lease_until = now() - interval '1 second' WHERE session_id = 'f'")
  t.match(await b.sweep(10, false), [{ sessionId: 'f', cancelRequested: false }], 'claimed by beta\'s sweep')
  t.same(await a.sweep(10, false), [], 'and by no other sweep')
  const fresh = await b.refresh('f')
  t.ok(fresh !== null && fresh !== undefined, 'beta reads the session')
  const theirs = contractSession('f', ['Completed', 'Pending'], '2024-06-01T00:00:05.000Z')
  await b.save(theirs)
  const before = await row(db, 'f')

  // Alpha wakes and saves as if it still held the lease, at the version it knows.
  const refused = await a.save(contractSession('f', ['Failed', 'Pending'], '2024-06-01T00:00:09.000Z')).catch((err: unknown) => err)
  t.type(refused, LeaseLostError)
  t.match(refused, { code: 'LEASE_LOST', message: /no longer holds its lease/u })
  t.equal(statusFor(refused as TaskvaultError), 503)
  t.same(lost, ['f'], 'alpha learnt it lost the lease')
  const after = await row(db, 'f')
  t.equal(after.version, before.version, 'nothing written')
  t.equal(after.document, before.document, 'beta\'s work stays')
  t.equal(after.owner, 'beta')

  // Even after alpha re-reads at the new version, its old lease cannot write.
  await a.refresh('f')
  await t.rejects(a.save(contractSession('f', ['Failed', 'Failed'])), { code: 'LEASE_LOST' }, 'a lost lease stays lost until its run lets go')
  await a.release('f', before.epoch)
  await a.release('f', String(BigInt(before.epoch) - 1n))
  t.equal((await row(db, 'f')).owner, 'beta', 'releasing a lost lease leaves the holder alone')
  await t.rejects(a.remove('f'), { code: 'SESSION_BUSY', owner: 'beta' }, 'nor can alpha delete a session beta holds: busy, naming beta')
})

t.test('renewal: one statement renews every lease a replica holds and its heartbeat, every third of TASK_LEASE_MS', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha', { leaseMs: 3000 })
  const ids = Array.from({ length: 300 }, (_, i) => `r${i}`)
  for (const id of ids) await a.save(contractSession(id, ['Pending']))
  for (const id of ids) await a.acquire(id)
  const { rows: acquired } = await db.query<{ lease_ms: number }>("SELECT extract(epoch FROM lease_until - now()) * 1000 AS lease_ms FROM sessions WHERE owner = 'alpha'")
  t.equal(acquired.length, 300)
  await new Promise((resolve) => setTimeout(resolve, 2500))
  // One statement, one snapshot: a renewal landing between two reads would tell them apart.
  const { rows } = await db.query<{ xmin: string, n: string, min_ms: number, beat: string }>(
    "SELECT xmin::text AS xmin, count(*) AS n, min(extract(epoch FROM lease_until - now()) * 1000) AS min_ms, (SELECT xmin::text FROM replicas WHERE replica_id = 'alpha') AS beat FROM sessions WHERE owner = 'alpha' GROUP BY xmin")
  t.equal(rows.length, 1, 'all 300 leases last written by one transaction')
  t.equal(rows[0]?.xmin, rows[0]?.beat, 'the same one as the heartbeat')
  // Unrenewed, at most 500 ms would be left; the margin allows a renewal late on a loaded host.
  t.ok((rows[0]?.min_ms ?? 0) > 1000, `renewed: ${Math.round(rows[0]?.min_ms ?? 0)} ms left after 2.5 s of a 3 s lease`)
})

t.test('a clean shutdown leaves no replica row behind, even with a heartbeat on its way when it began: answered, timed out, or retried on the pool', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  // 6 s leases: a renewal attempt is given a second. The row is let go of well within it (the
  // heartbeat lands, then close() deletes the row), or well after it (the database must have
  // cancelled the heartbeat, or it would land after the delete). The keeper's own attempt is
  // cancelled first, so the next renewal is tried again on a pooled connection too: that one
  // must be bounded the same way.
  const cases = [['answered', 200, ''], ['timed out', 2500, ''], ['retried on the pool', 1500, "AND application_name = 'taskvault'"]] as const
  for (const [name, heldMs, which] of cases) {
    const a = await open(t, url, 'alpha', { leaseMs: 6000 })
    // The row deleted by a transaction not yet committed: the next heartbeat's upsert waits on it.
    const locker = await db.connect()
    await locker.query("BEGIN; DELETE FROM replicas WHERE replica_id = 'alpha'")
    await waitFor(`${name}: a heartbeat waiting on the row`, async () =>
      ((await db.query(`SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO replicas%' ${which}`)).rowCount ?? 0) >= 1, 8000)
    const closing = a.close()
    await new Promise((resolve) => setTimeout(resolve, heldMs))
    await locker.query('COMMIT')
    locker.release()
    await closing
    // Time for a heartbeat that was not cancelled to land.
    await new Promise((resolve) => setTimeout(resolve, 300))
    const { rows } = await db.query("SELECT replica_id, instance FROM replicas WHERE replica_id = 'alpha'")
    t.same(rows, [], `${name}: the row is gone`)
  }
})

t.test('cut off from the database, a holder gives its leases up (lease-lost) before they run out', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const { proxy, url: proxied } = await throughProxy(t, url)
  // A 12 s lease is given up with 2 s left, checked every second: a check up to a second late
  // (this process's timers on a loaded host) still gives it up in time.
  const a = await open(t, proxied, 'alpha', { leaseMs: 12_000, statementTimeoutMs: 1000, connectTimeoutMs: 1000 })
  await a.save(contractSession('c', ['Pending']))
  await a.acquire('c')
  const lost: Array<{ id: string, why: string, at: number }> = []
  a.events.on('lease-lost', (id, why) => lost.push({ id, why, at: Date.now() }))
  proxy.stall()
  await waitFor('the lease given up', () => lost.length > 0, 20_000)
  const { rows } = await db.query<{ left_ms: number }>("SELECT extract(epoch FROM lease_until - now()) * 1000 AS left_ms FROM sessions WHERE session_id = 'c'")
  const left = (rows[0]?.left_ms ?? 0) + (Date.now() - (lost[0]?.at ?? 0))
  t.ok(left > 0, `given up ${Math.round(left)} ms before the lease ran out`)
  t.match(lost[0], { id: 'c', why: /could not be renewed/u })
  proxy.pass()
  const before = (await db.query<{ document: string }>("SELECT document::text AS document FROM sessions WHERE session_id = 'c'")).rows[0]?.document

  // Back in touch, before any other replica took the session: the run that had it still may not write.
  await t.rejects(a.save(contractSession('c', ['Completed'])), { code: 'LEASE_LOST' }, 'a save after the lease was given up is refused')
  const after = await db.query<{ document: string, owner: string }>("SELECT document::text AS document, owner FROM sessions WHERE session_id = 'c'")
  t.equal(after.rows[0]?.document, before, 'nothing written')
  // Its own sweep does not take it back while that run has not let go (its saves stay refused).
  await waitFor('the lease to run out', async () => (await db.query("SELECT 1 FROM sessions WHERE session_id = 'c' AND lease_until < now()")).rowCount === 1, 20_000)
  t.same(await a.sweep(10, false), [], 'not taken over by the process whose run lost it')
  t.equal((await db.query("SELECT owner FROM sessions WHERE session_id = 'c'")).rows[0]?.owner, null, 'given back for another sweep')
  await t.rejects(a.save(contractSession('c', ['Completed'])), { code: 'LEASE_LOST' }, 'and the old run still cannot write')
})

t.test('a cancel asked while this replica\'s sweep holds a session reaches the run it resumes', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const a = await open(t, url, 'alpha')
  const b = await open(t, url, 'beta')
  const file = contractSession('k', ['InProgress', 'Pending'])
  file.background_run = { started_at: file.created_at }
  await a.save(file)
  const [swept] = await b.sweep(10, false)
  t.match(swept, { sessionId: 'k', cancelRequested: false }, 'an orphaned run, claimed by beta')
  t.equal(await a.requestCancel('k'), 'beta', 'cancel asked of beta meanwhile')
  const taken = await b.acquire('k')
  t.equal(taken.cancelRequested, true, 'the run beta resumes is told at once')
  t.equal(await a.cancelPending('k'), true, 'and the request stays until that run lets go')
  await b.release('k', taken.epoch)
  t.equal(await a.cancelPending('k'), false)
  await b.release('k', swept?.epoch ?? '0')
  t.equal(await a.holder('k'), null, 'both leases given back')
})

t.test('refresh: the document only when it changed; a sweep claims expired and orphaned sessions once each', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha')
  const b = await open(t, url, 'beta')
  await a.save(contractSession('x', ['Pending']))
  t.equal(await a.refresh('x'), undefined, 'unchanged: nothing sent')
  const changed = await b.refresh('x')
  t.equal(changed?.file.session_id, 'x', 'beta never read it: the document')
  await b.save(contractSession('x', ['Completed']))
  t.equal((await a.refresh('x'))?.file.session.tasks[0]?.status, 'Completed', 'changed by beta: alpha gets it')
  await b.remove('x')
  t.equal(await a.refresh('x'), null, 'deleted by beta: gone')

  // An orphan (a task left InProgress, nobody holding it) and an expired lease.
  await a.save(contractSession('orphan', ['InProgress']))
  await a.save(contractSession('expired', ['Pending']))
  // Held by a replica that died: its lease ran out a second ago.
  await db.query("UPDATE sessions SET owner = 'ghost', epoch = epoch + 1, lease_until = now() - interval '1 second' WHERE session_id = 'expired'")
  const [one, two] = await Promise.all([a.sweep(10, false), b.sweep(10, false)])
  const claimed = [...(one ?? []), ...(two ?? [])].map((s) => s.sessionId).sort()
  t.same(claimed, ['expired', 'orphan'], 'each claimed by exactly one sweep')
  t.same(await a.sweep(10, false), [], 'nothing left to claim')
})

t.test('a lease given up is given back when its run lets go, and a cancel asked of it meanwhile stays for the next sweep', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const { proxy, url: proxied } = await throughProxy(t, url)
  // Given up while the row still names alpha, live (and longer if a renewal on its way lands late).
  const a = await open(t, proxied, 'alpha', { leaseMs: 6000, statementTimeoutMs: 0, connectTimeoutMs: 1000 })
  const b = await open(t, url, 'beta')
  await a.save(contractSession('g', ['Pending']))
  const { epoch } = await a.acquire('g')
  await a.save(contractSession('g', ['InProgress']))
  const lost: string[] = []
  a.events.on('lease-lost', (id) => lost.push(id))
  proxy.stall()
  await waitFor('the lease given up', () => lost.length > 0, 20_000)
  t.equal(await b.requestCancel('g'), 'alpha', 'the row still names alpha: a cancel is asked of it')
  proxy.pass()
  // The run that had the lease lets go of it.
  await a.release('g', epoch)
  const after = (await db.query<{ owner: string | null, cancel_requested: boolean }>("SELECT owner, cancel_requested FROM sessions WHERE session_id = 'g'")).rows[0]
  t.equal(after?.owner, null, 'given back: no replica named, so nobody gets SESSION_BUSY for it')
  t.equal(after?.cancel_requested, true, 'the cancel alpha never recorded stays')
  t.match(await b.sweep(10, false), [{ sessionId: 'g', cancelRequested: true }], 'the next sweep claims it at once, and applies the cancel')
})

t.test('two acquires of one session at once in one process (a cancel and an execute): one gets it, the other SESSION_BUSY naming this replica', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha')
  await a.save(contractSession('both', ['InProgress']))
  const [first, second] = await Promise.allSettled([a.acquire('both'), a.acquire('both')])
  const taken = [first, second].filter((outcome) => outcome.status === 'fulfilled')
  t.equal(taken.length, 1, 'one acquire takes the lease')
  t.match([first, second].find((outcome) => outcome.status === 'rejected'), { reason: { code: 'SESSION_BUSY', owner: 'alpha' } }, 'the other is refused')
  const { epoch } = (taken[0] as PromiseFulfilledResult<{ epoch: string }>).value
  t.equal((await row(db, 'both')).epoch, epoch, 'the row holds the epoch the winner was given')
  await a.release('both', epoch)
  t.equal((await row(db, 'both')).owner, null)
  await a.acquire('both')
  t.pass('taken again once given back')
})

t.test('a delete of a session another replica took the lease of meanwhile is refused SESSION_BUSY naming it, and deletes nothing', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha')
  const b = await open(t, url, 'beta')
  await a.save(contractSession('taken', ['Pending']))
  // Beta takes the lease after alpha's holder check (the delete's own check before it queues).
  await b.acquire('taken')
  await t.rejects(a.remove('taken'), { code: 'SESSION_BUSY', owner: 'beta' }, 'busy, naming the holder')
  t.equal((await row(db, 'taken')).owner, 'beta', 'the session is still there, held by beta')
})

t.test('a renewal that reaches a lease past its time does not bring it back', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha', { leaseMs: 3000 })
  await a.save(contractSession('late', ['Pending']))
  await a.acquire('late')
  const lost: string[] = []
  a.events.on('lease-lost', (id) => lost.push(id))
  // As if alpha's renewals had not landed in time: the row's lease ran out, nobody claimed it yet.
  await db.query("UPDATE sessions SET lease_until = now() - interval '1 second' WHERE session_id = 'late'")
  await waitFor('the next renewal', () => lost.length > 0, 10_000)
  const { rows } = await db.query<{ expired: boolean }>("SELECT lease_until < now() AS expired FROM sessions WHERE session_id = 'late'")
  t.equal(rows[0]?.expired, true, 'still run out: a sweep may claim it')
})

t.test('a replica holding a session for a run refuses itself a second lease of it (SESSION_BUSY naming itself): that run keeps its fence', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha')
  await a.save(contractSession('twice', ['InProgress']))
  const first = await a.acquire('twice')
  await t.rejects(a.acquire('twice'), { code: 'SESSION_BUSY', owner: 'alpha' }, 'a second lease refused')
  const held = await row(db, 'twice')
  t.equal(held.epoch, first.epoch, 'the run\'s epoch stays')
  await a.save(contractSession('twice', ['Completed']))
  t.pass('and the run still saves under it')
  await a.release('twice', first.epoch)
  t.equal((await row(db, 'twice')).owner, null)
  const again = await a.acquire('twice')
  t.ok(BigInt(again.epoch) > BigInt(first.epoch), 'once given back it may be taken again')
})

t.test('a renewal stuck on a half-open listening connection is tried again on a fresh one before any lease is given up', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const { proxy, url: proxied } = await throughProxy(t, url)
  // No statement timeout (TASK_DB_STATEMENT_TIMEOUT_MS=0): nothing but the renewal's own bound ends its wait.
  const a = await open(t, proxied, 'alpha', { leaseMs: 6000, statementTimeoutMs: 0 })
  const lost: string[] = []
  a.events.on('lease-lost', (id) => lost.push(id))
  // The keeper's connection listens and renews the leases.
  const port = await listening(db, 'client_port')
  await a.save(contractSession('h', ['Pending']))
  await a.acquire('h')
  t.ok(proxy.stallUpstream(port), 'that connection alone goes half-open')
  // Past the point where the lease is given up (five sixths of it) when renewals stop.
  await new Promise((resolve) => setTimeout(resolve, 8000))
  t.same(lost, [], 'no lease given up')
  const { rows } = await db.query<{ left_ms: number }>("SELECT extract(epoch FROM lease_until - now()) * 1000 AS left_ms FROM sessions WHERE session_id = 'h'")
  t.ok((rows[0]?.left_ms ?? 0) > 1000, `renewed meanwhile: ${Math.round(rows[0]?.left_ms ?? 0)} ms left`)
  await a.save(contractSession('h', ['Completed']))
  t.pass('and the run still saves')
  // The keeper's new connection goes half-open too: closing the store does not wait on it.
  await waitFor('the new listening connection', async () => {
    const ports = (await db.query<{ client_port: number }>(LISTENER.replace('pid', 'client_port'))).rows.map((row) => row.client_port)
    const now = ports.find((other) => other !== port)
    return now !== undefined && proxy.stallUpstream(now)
  }, 5000)
  const closing = performance.now()
  await a.close()
  t.ok(performance.now() - closing < 3000, `closed in ${Math.round(performance.now() - closing)} ms`)
})

t.test('when the listening connection breaks while every pooled connection waits, the next renewal goes on a fresh connection of the keeper\'s own: no lease is given up', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const { lost, listener, pool } = await saturatedHolder(t, db, url, 'pid')
  // The listening connection is cut (its backend ended, as a failover or a network fault would).
  await db.query('SELECT pg_terminate_backend($1)', [listener])
  await leaseKept(t, db, lost)
  t.equal((await db.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'taskvault-leases'")).rowCount, 1,
    'the keeper listens again, on a connection of its own (named so in pg_stat_activity)')
  t.equal(await pool.free(), 3, 'the waiting statements go on once the locks are gone')
})

t.test('a renewal stuck on a half-open listening connection while every pooled connection waits is sent again on a fresh connection of the keeper\'s own: no lease is given up', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const { proxy, url: proxied } = await throughProxy(t, url)
  const { lost, listener: port, pool } = await saturatedHolder(t, db, proxied, 'client_port')
  t.ok(proxy.stallUpstream(port), 'the listening connection goes half-open')
  await leaseKept(t, db, lost)
  t.equal(await pool.free(), 3, 'the waiting statements go on once the locks are gone')
})

t.test('a sweep that gives back a session whose lease this process lost keeps the cancel pending on it for the next sweep', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspectorOf(t, url, SCHEMA)
  const a = await open(t, url, 'alpha', { leaseMs: 3000 })
  const b = await open(t, url, 'beta')
  await a.save(contractSession('kc', ['Pending']))
  await a.acquire('kc')
  await a.save(contractSession('kc', ['InProgress']))
  const lost: string[] = []
  a.events.on('lease-lost', (id) => lost.push(id))
  // A cancel was asked of alpha's run, then its lease ran out before the run recorded it.
  await db.query("UPDATE sessions SET cancel_requested = true, lease_until = now() - interval '1 second' WHERE session_id = 'kc'")
  await waitFor('the lease lost', () => lost.length > 0, 10_000)
  t.same(await a.sweep(10, false), [], 'alpha\'s sweep gives it straight back (its run has not let go)')
  t.match(await b.sweep(10, false), [{ sessionId: 'kc', cancelRequested: true }], 'the next sweep applies the cancel instead of resuming the run')
})
