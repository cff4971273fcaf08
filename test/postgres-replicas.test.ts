/**
 * Servers on one PostgreSQL schema know of each other (issue 14): each keeps
 * a heartbeat row fresh (TASK_REPLICA_ID, every third of TASK_LEASE_MS), /stats lists the
 * replicas heard from within TASK_LEASE_MS, and a clean shutdown leaves the list at once; archive
 * passes run on one replica at a time and never archive a leased session.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildApp } from '../app.js'
import { EventRelay } from '../services/events/event-relay.js'
import { TaskEventBuffer } from '../services/events/task-events.js'
import { API, tempDir, waitFor } from './helper.js'
import { LOG_GAP } from '../services/store/store.js'
import { inspector, openTestStore, testDatabase, throughProxy } from './postgres.js'
import { contractSession } from './store-contract.js'

const SCHEMA = 'tv_replicas'

const listed = async (store: { totals: () => Promise<{ storage: { replicas: string[] } }> }): Promise<string[]> => (await store.totals()).storage.replicas

t.test('each store on the schema is listed while it beats, and leaves the list when it closes', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  // Heartbeats every second: a loaded host may run one late by most of a second and the test still holds.
  const a = await openTestStore(t, url, SCHEMA, { replicaId: 'pod-a', leaseMs: 3_000 })
  const b = await openTestStore(t, url, SCHEMA, { replicaId: 'pod-b', leaseMs: 3_000 })
  t.same(await listed(a), ['pod-a', 'pod-b'], 'both, from either')
  t.same(await listed(b), ['pod-a', 'pod-b'])

  await sleep(6_500)
  t.same(await listed(a), ['pod-a', 'pod-b'], 'still listed after twice the lease: the heartbeats keep them fresh')

  // A replica that died without a word: its row stops moving.
  await db.query("INSERT INTO replicas (replica_id, seen_at) VALUES ('pod-dead', now() - interval '10 seconds')")
  await db.query("INSERT INTO replicas (replica_id, seen_at) VALUES ('pod-long-gone', now() - interval '1 hour')")
  t.same(await listed(a), ['pod-a', 'pod-b'], 'silent longer than the lease: not listed')
  const rows = (await db.query<{ replica_id: string }>('SELECT replica_id FROM replicas ORDER BY replica_id')).rows.map((row) => row.replica_id)
  t.same(rows, ['pod-a', 'pod-b', 'pod-dead'], 'rows silent for ten leases are cleared on the way')

  await b.close()
  t.same(await listed(a), ['pod-a'], 'a clean close leaves the list at once')
})

t.test('an event published after the live view closed (a change that landed late in a shutdown), or a change found landed then, leaves the replica\'s row to run out, so a gap is logged for it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const store = await openTestStore(t, url, SCHEMA, { replicaId: 'pod-late', leaseMs: 3_000 })
  const warnings: string[] = []
  const log = { info: () => {}, error: () => {}, warn: (_fields: object, message?: string) => { warnings.push(message ?? '') } }
  const relay = new EventRelay({ shared: store, notices: store.events, buffer: new TaskEventBuffer(100), flushMs: 5, pollMs: 1_000, log })
  await relay.start()
  await relay.close()
  t.notOk(relay.unpublished, 'nothing was left at close')
  relay.publish('session.created', { session_id: 'late' })
  relay.publish('tasks.added', { session_id: 'late' })
  t.equal(warnings.length, 1, 'said once')
  await store.close()
  t.equal((await db.query("SELECT 1 FROM replicas WHERE replica_id = 'pod-late'")).rowCount, 1, 'the row stays, for the replica that clears it to log a gap')

  // So too for a change answered as failed found to have landed after the close: its events never went out.
  const other = await openTestStore(t, url, SCHEMA, { replicaId: 'pod-unannounced', leaseMs: 3_000 })
  const otherRelay = new EventRelay({ shared: other, notices: other.events, buffer: new TaskEventBuffer(100), flushMs: 5, pollMs: 1_000, log })
  await otherRelay.start()
  await otherRelay.close()
  other.events.emit('unannounced', 'late')
  await other.close()
  t.equal((await db.query("SELECT 1 FROM replicas WHERE replica_id = 'pod-unannounced'")).rowCount, 1, 'an unannounced change after the close keeps the row too')
})

t.test('events that waited while a buffer\'s worth of other events were logged (a paused replica, no failure to tell) are followed by a gap; a few do not make one, nor its own', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const log = { info: () => {}, warn: () => {}, error: () => {} }
  const buffers: TaskEventBuffer[] = []
  const relay = async (replicaId: string, flushMs: number): Promise<EventRelay> => {
    const store = await openTestStore(t, url, SCHEMA, { replicaId, leaseMs: 60_000 })
    const buffer = new TaskEventBuffer(20)
    buffers.push(buffer)
    const relay = new EventRelay({ shared: store, notices: store.events, buffer, flushMs, pollMs: 60_000, log })
    await relay.start()
    t.teardown(() => relay.close())
    return relay
  }
  // The slow one's events wait (a minute's flush) until settled(): its pause.
  const slow = await relay('pod-slow', 60_000)
  const busy = await relay('pod-busy', 1)
  const gaps = async (): Promise<number> => (await db.query('SELECT 1 FROM events WHERE name = $1', [LOG_GAP])).rowCount ?? 0
  // Both have read the whole log: what each publishes next comes after all of it.
  const caughtUp = async (): Promise<void> => {
    const newest = Number((await db.query('SELECT max(id) AS id FROM events')).rows[0]?.id ?? 0)
    await waitFor('both replicas read the log', () => buffers.every((buffer) => buffer.latest >= newest))
  }
  // Only its own events in between make none: a queue longer than a statement takes (1,000)
  // logs its first 1,000 before the rest, which all came before any of them was logged.
  for (let i = 0; i < 1_015; i++) busy.publish('session.created', { session_id: `own${i}` })
  await busy.settled()
  t.equal(await gaps(), 0, 'a buffer\'s worth of the replica\'s own events before its batch: no gap')
  await caughtUp()
  const round = async (others: number): Promise<void> => {
    slow.publish('tasks.added', { session_id: 's' })
    // In batches of 5, well within the buffer (20), as changes come in normal use.
    for (let i = 0; i < others; i++) {
      busy.publish('session.created', { session_id: `other${i}` })
      if (i % 5 === 4) await busy.settled()
    }
    await busy.settled()
    await slow.settled()
  }
  await round(5)
  t.equal(await gaps(), 0, 'a few others\' events in between: no gap')
  await round(25)
  t.equal(await gaps(), 1, 'past the buffer: a gap follows, so every stream resets')
})

t.test('an own batch read back before its reply came (a slow answer) is not taken for events logged after: another replica\'s newer change in between still makes a gap', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const log = { info: () => {}, warn: () => {}, error: () => {} }
  const open = async (replicaId: string, flushMs: number): Promise<{ store: Awaited<ReturnType<typeof openTestStore>>, buffer: TaskEventBuffer, relay: EventRelay }> => {
    const store = await openTestStore(t, url, SCHEMA, { replicaId, leaseMs: 60_000 })
    const buffer = new TaskEventBuffer(20)
    const relay = new EventRelay({ shared: store, notices: store.events, buffer, flushMs, pollMs: 60_000, log })
    await relay.start()
    t.teardown(() => relay.close())
    return { store, buffer, relay }
  }
  const p = await open('pod-p', 60_000)
  const q = await open('pod-q', 1)
  const newestId = async (): Promise<number> => Number((await db.query('SELECT max(id) AS id FROM events')).rows[0]?.id ?? 0)

  // P's statement commits, and its answer is held until released (a slow network).
  const publish = p.store.publishEvents.bind(p.store)
  let hold = false
  let committed!: () => void
  let release!: () => void
  const landed = new Promise<void>((resolve) => { committed = resolve })
  const released = new Promise<void>((resolve) => { release = resolve })
  p.store.publishEvents = async (events, keep) => {
    const newest = await publish(events, keep)
    if (hold) {
      hold = false
      committed()
      await released
    }
    return newest
  }
  await p.store.save(contractSession('s', ['Pending', 'Pending']))
  await q.store.refresh('s')

  // P's own batch lands, and P reads it back (NOTIFY) while the answer is still on its way.
  hold = true
  for (let i = 0; i < 30; i++) p.relay.publish('session.created', { session_id: `own${i}` })
  const flushing = p.relay.settled()
  await landed
  const own = await newestId()
  await waitFor('P read its own batch back', () => p.buffer.latest >= own)
  // P changes s and its event waits behind the answer; Q changes s after it, then 24 other sessions.
  await p.store.save(contractSession('s', ['Completed', 'Pending'], '2024-06-01T00:00:01.000Z'))
  p.relay.publish('task.completed', { session_id: 's', task_id: 'older' })
  await q.store.refresh('s')
  await q.store.save(contractSession('s', ['Completed', 'Completed'], '2024-06-01T00:00:02.000Z'))
  q.relay.publish('task.completed', { session_id: 's', task_id: 'newer' })
  for (let i = 0; i < 24; i++) {
    await q.store.save(contractSession(`other${i}`))
    q.relay.publish('session.created', { session_id: `other${i}` })
    if (i % 5 === 4) await q.relay.settled()
  }
  await q.relay.settled()
  release()
  await flushing
  await p.relay.settled()
  const rows = (await db.query("SELECT id, name, data->>'task_id' AS task FROM events WHERE data->>'session_id' = 's' OR name = $1 ORDER BY id", [LOG_GAP])).rows
  t.same(rows.map((row) => row.task ?? row.name), ['newer', 'older', LOG_GAP], 's\'s older change is logged after its newer one, and a gap follows it, so every stream resets')
})

t.test('a store without a replica id (the command-line tool) writes no heartbeat', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const tool = await openTestStore(t, url, SCHEMA)
  t.same(await listed(tool), [])
  t.equal((await db.query('SELECT 1 FROM replicas')).rowCount, 0)
})

t.test('the server: /stats lists TASK_REPLICA_ID (hostname-pid by default); a malformed one stops the boot naming it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const boot = async (extra: Record<string, string>): Promise<Awaited<ReturnType<typeof buildApp>>> => {
    const app = await buildApp({ readEnvironment: false, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_SCHEMA: SCHEMA, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, ...extra } })
    t.teardown(() => app.close())
    await app.ready()
    return app
  }
  const named = await boot({ TASK_REPLICA_ID: 'taskvault-0' })
  const unnamed = await boot({})
  const res = await named.inject({ method: 'GET', url: `${API}/stats` })
  t.equal(res.statusCode, 200)
  const replicas = res.json().storage.replicas as string[]
  t.equal(replicas.length, 2)
  t.ok(replicas.includes('taskvault-0'), 'the one named')
  t.ok(replicas.some((id) => id.endsWith(`-${process.pid}`)), 'the other as hostname-pid')
  await unnamed.close()
  t.same((await named.inject({ method: 'GET', url: `${API}/stats` })).json().storage.replicas, ['taskvault-0'], 'gone once it shut down')

  await t.rejects(boot({ TASK_REPLICA_ID: 'not a name!' }), /TASK_REPLICA_ID/u)
})

t.test('archive passes: one replica\'s at a time (the other finds the lock taken or nothing left), never a leased session', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const boot = async (replica: string): Promise<Awaited<ReturnType<typeof buildApp>>> => {
    const app = await buildApp({ readEnvironment: false, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_SCHEMA: SCHEMA, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_REPLICA_ID: replica } })
    t.teardown(() => app.close())
    await app.ready()
    return app
  }
  const a = await boot('arch-a')
  const b = await boot('arch-b')
  const ids = [...Array.from({ length: 30 }, (_, i) => `done${i}`), 'leased']
  for (const [i, id] of ids.entries()) {
    const app = i % 2 === 0 ? a : b
    t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: 'only step' } })).statusCode, 200)
    t.equal((await app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: id } })).statusCode, 200)
  }
  // Another replica runs 'leased' now (a lease taken by hand, as its run would).
  const other = await openTestStore(t, url, SCHEMA, { replicaId: 'arch-other' })
  await other.acquire('leased')
  await sleep(5)
  const [fromA, fromB] = await Promise.all([a, b].map(async (app) => app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })))
  t.equal(fromA?.statusCode, 200)
  t.equal(fromB?.statusCode, 200)
  const archivedA = fromA?.json().archived_ids as string[]
  const archivedB = fromB?.json().archived_ids as string[]
  t.same(archivedA.filter((id) => archivedB.includes(id)), [], 'no session archived by both')
  t.same([...archivedA, ...archivedB].sort(), ids.filter((id) => id !== 'leased').sort(), 'every finished session nobody runs, once')
  const { rows } = await db.query<{ session_id: string, n: string }>('SELECT session_id, count(*) AS n FROM sessions WHERE archived_at IS NOT NULL GROUP BY session_id HAVING count(*) > 1')
  t.same(rows, [], 'one archived copy each')
  const leased = await db.query('SELECT 1 FROM sessions WHERE session_id = \'leased\' AND archived_at IS NULL')
  t.equal(leased.rowCount, 1, 'the leased one stays active')
  t.equal((await b.inject({ method: 'GET', url: `${API}/list?session_id=all&archived=only` })).json().total, 30, 'b lists a\'s archived sessions too')
})

t.test('POST /archive while another replica\'s pass holds the lock past the wait answers 503 PASS_BUSY, archiving nothing; once it ends, the pass runs', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const app = await buildApp({ readEnvironment: false, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_SCHEMA: SCHEMA, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_REPLICA_ID: 'busy-b', TASK_LEASE_MS: 1000 } })
  t.teardown(() => app.close())
  await app.ready()
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'finished', instructions: 'only step' } })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'finished' } })).statusCode, 200)
  const other = await openTestStore(t, url, SCHEMA, { replicaId: 'busy-a', leaseMs: 1000 })
  const started = Date.now()
  const busy = await other.exclusively('archive', { ms: 0 }, async () => app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } }))
  const waited = Date.now() - started
  t.match(busy?.json(), { statusCode: 503, code: 'PASS_BUSY', message: /the archive pass of another replica held its lock for the 6000 ms this one waited; nothing was done by this one, try again/ })
  t.ok(waited >= 6000 && waited < 9000, `waited TASK_LEASE_MS and 5 s (${waited} ms)`)
  t.match((await app.inject({ method: 'GET', url: `${API}/list?session_id=finished` })).json(), { session_id: 'finished' })
  t.notOk((await app.inject({ method: 'GET', url: `${API}/list?session_id=finished` })).json().archived, 'still active')
  t.same((await app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json().archived_ids, ['finished'], 'the lock free, the pass runs')
})

t.test('a shutdown ends a POST /archive waiting for another replica\'s pass at once: 503 SHUTTING_DOWN, and the close is not held', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const app = await buildApp({ readEnvironment: false, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_SCHEMA: SCHEMA, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_REPLICA_ID: 'wait-b', TASK_LEASE_MS: 30_000 } })
  await app.ready()
  const other = await openTestStore(t, url, SCHEMA, { replicaId: 'wait-a' })
  let closedIn = -1
  const answer = await other.exclusively('archive', { ms: 0 }, async () => {
    const asked = app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })
    await sleep(500)
    const started = Date.now()
    await app.close()
    closedIn = Date.now() - started
    return asked
  })
  t.match(answer?.json(), { statusCode: 503, code: 'SHUTTING_DOWN' })
  t.ok(closedIn >= 0 && closedIn < 3000, `closed in ${closedIn} ms, not after the 35 s wait`)
})

const OUR_ADVISORY_LOCKS = "locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"

t.test('a maintenance pass whose lock connection breaks learns it between steps (lock.held() false), while another replica\'s pass may take the lock', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const a = await openTestStore(t, url, SCHEMA, { replicaId: 'pass-a' })
  const b = await openTestStore(t, url, SCHEMA, { replicaId: 'pass-b' })
  const steps: boolean[] = []
  const result = await a.exclusively('archive', { ms: 0 }, async (lock) => {
    steps.push(await lock.held())
    t.equal(await b.exclusively('archive', { ms: 0 }, async () => 'b ran'), null, 'b finds the lock taken')
    // The lock's connection dies (a failover, a server-side kill): the lock goes with it.
    // pg_locks spans the cluster: only this test's database, not tests running beside it.
    await db.query(`SELECT pg_terminate_backend(pid) FROM pg_locks WHERE ${OUR_ADVISORY_LOCKS} AND pid <> pg_backend_pid()`)
    await waitFor('the lock gone', async () => (await db.query(`SELECT 1 FROM pg_locks WHERE ${OUR_ADVISORY_LOCKS}`)).rowCount === 0, 5000)
    t.equal(await b.exclusively('archive', { ms: 0 }, async () => 'b ran'), 'b ran', 'b\'s pass may run now')
    steps.push(await lock.held())
    return 'a done'
  }).catch((err: unknown) => err)
  t.same(steps, [true, false], 'a\'s pass is told its lock is gone, and stops')
  t.equal(result, 'a done', 'a stopping pass ends normally: what it did stays')
})

t.test('a pass lock held by a replica gone silent (paused, frozen, cut off) is freed within TASK_LEASE_MS, and a pass asked for on another replica waits for it and runs', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { proxy, url: proxied } = await throughProxy(t, url)
  const a = await openTestStore(t, proxied, SCHEMA, { replicaId: 'silent-a', leaseMs: 1500 })
  const b = await openTestStore(t, url, SCHEMA, { replicaId: 'silent-b', leaseMs: 1500 })
  const result = await a.exclusively('archive', { ms: 0 }, async (lock) => {
    t.equal(await lock.held(), true)
    // A live holder keeps the lock however long a step takes: its beat says something every third of the lease.
    await sleep(4000)
    t.equal(await lock.held(), true, 'held after a 4 s step with a 1.5 s lease')
    t.equal(await b.exclusively('archive', { ms: 800 }, async () => 'b ran'), null, 'b waited 800 ms: a\'s pass still runs')
    // a falls silent, as a stopped process's connection does: nothing more reaches the database.
    proxy.stall()
    const started = Date.now()
    t.equal(await b.exclusively('archive', { ms: b.passWaitMs }, async () => 'b ran'), 'b ran', 'b\'s pass runs once the database ended a\'s idle transaction')
    t.ok(Date.now() - started < 1500 + 2000, `within the lease and a margin (${Date.now() - started} ms)`)
    proxy.pass()
    t.equal(await lock.held(), false, 'a, awake again, learns the lock is gone, and stops')
    return 'a done'
  }).catch((err: unknown) => err)
  t.equal(result, 'a done')
})

t.test('a delete that follows another replica\'s archive of the session it read deletes the archived row: no 2xx with the session left behind', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const a = await openTestStore(t, url, SCHEMA, { replicaId: 'del-a' })
  const b = await openTestStore(t, url, SCHEMA, { replicaId: 'del-b' })
  const done = contractSession('raced', ['Completed'])
  // An older lifetime's archived copy, and the session made again: both are the session.
  await a.save(contractSession('raced', ['Completed']))
  await a.archive(contractSession('raced', ['Completed']))
  await a.save(done)
  t.ok(await b.refresh('raced'), 'b reads the session as a does')
  // b's archive pass lands between a's read of the session and a's delete.
  await b.archive(done)
  await a.remove('raced')
  t.same((await db.query("SELECT row_id FROM sessions WHERE session_id = 'raced'")).rows, [], 'no copy of the session is left')

  // A copy archived after the one a knew (the session made again and archived once more) is left alone: that is not what a deleted.
  await a.save(contractSession('later', ['Completed']))
  t.ok(await b.refresh('later'))
  await b.archive(contractSession('later', ['Completed']))
  await b.unarchive(contractSession('later', ['Completed']), b.archivedName('later') as string)
  await b.archive(contractSession('later', ['Completed']))
  await a.remove('later')
  t.equal((await db.query("SELECT 1 FROM sessions WHERE session_id = 'later' AND archived_at IS NOT NULL")).rowCount, 1, 'the newer archived copy stays')
})

t.test('a retry on one replica while another takes the session\'s lease after its check (a run starting) is refused 409 SESSION_BUSY naming it: nothing lands in the run, on the rows or in memory', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  let release = (): void => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  let running = false
  const boot = async (replica: string, executor: () => Promise<{ result: string }>): Promise<Awaited<ReturnType<typeof buildApp>>> => {
    const app = await buildApp({ readEnvironment: false, executors: { default: executor }, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_SCHEMA: SCHEMA, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_REPLICA_ID: replica } })
    t.teardown(() => app.close())
    await app.ready()
    return app
  }
  // a's run holds its task until released; b's agent fails every task.
  const a = await boot('race-a', async () => { running = true; await gate; return { result: 'done' } })
  const b = await boot('race-b', async () => { throw new Error('boom') })
  t.equal((await b.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'raced', instructions: '1. first\n2. second' } })).statusCode, 200)
  t.match((await b.inject({ method: 'POST', url: `${API}/execute`, payload: { session_id: 'raced' } })).json(), { status: 'Failed' })
  const statuses = async (): Promise<{ owner: string | null, tasks: string[] }> => {
    const { rows } = await db.query<{ owner: string | null, document: string }>("SELECT owner, document::text AS document FROM sessions WHERE session_id = 'raced' AND archived_at IS NULL")
    return { owner: rows[0]?.owner ?? null, tasks: (JSON.parse(rows[0]?.document ?? '{}') as { session: { tasks: Array<{ status: string }> } }).session.tasks.map((task) => task.status) }
  }
  // b's check that nobody runs the session passes; a's run takes the lease and starts before b's write.
  const shared = b.persistence.shared
  if (shared === undefined) throw new Error('a shared store')
  const holder = shared.holder.bind(shared)
  const race: { run?: Promise<{ statusCode: number }>, checked?: string | null } = {}
  shared.holder = async (sessionId) => {
    const found = await holder(sessionId)
    if (race.run === undefined) {
      race.checked = found
      race.run = a.inject({ method: 'POST', url: `${API}/execute-all`, payload: { session_id: 'raced' } })
      await waitFor('a\'s run holds the lease, its task InProgress', async () => running && (await statuses()).owner === 'race-a')
    }
    return found
  }
  const retried = await b.inject({ method: 'POST', url: `${API}/retry`, payload: { session_id: 'raced' } })
  t.equal(race.checked, null, 'b\'s check found nobody running it, then a\'s run started')
  t.equal(retried.statusCode, 409, 'refused', { body: retried.body })
  t.match(retried.json(), { code: 'SESSION_BUSY', message: /replica 'race-a'/u }, 'busy, naming the replica that runs it')
  t.same(await statuses(), { owner: 'race-a', tasks: ['Failed', 'InProgress'] }, 'the rows as a\'s run left them: the failed task still Failed')
  t.match((await b.inject({ method: 'GET', url: `${API}/progress?session_id=raced` })).json(), { failed: 1, pending: 0 }, 'b\'s copy too')
  release()
  t.equal((await race.run)?.statusCode, 200, 'a\'s run ends')
  t.same((await statuses()).tasks, ['Failed', 'Completed'], 'its task done; the failed one left for a retry')
})
