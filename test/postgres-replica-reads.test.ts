/**
 * Replicas on one PostgreSQL schema answer from the rows, not from what each saw itself: a
 * session archived by one is archived on every other (read, listed, brought back, retried,
 * deleted there), and /stats and /metrics count sealed sessions by key the same on each,
 * `taskvault seal --database-url` included.
 * Two servers in this process (buildApp), each its own replica, as behind a load balancer.
 */
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../app.js'
import { taskvault } from './cli-run.js'
import { API, tempDir, waitFor, type TestContext } from './helper.js'
import { TaskManager } from '../services/task-manager.js'
import { inspector, openTestStore, testDatabase } from './postgres.js'

const SCHEMA = 'taskvault'

async function replica (t: TestContext, url: string, name: string, extra: Record<string, unknown> = {}): Promise<FastifyInstance> {
  const app = await buildApp({
    readEnvironment: false,
    config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_SCHEMA: SCHEMA, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_REPLICA_ID: name, ...extra }
  })
  t.teardown(() => app.close())
  await app.ready()
  return app
}

const post = async (app: FastifyInstance, path: string, payload: Record<string, unknown>): Promise<{ status: number, body: any }> => {
  const res = await app.inject({ method: 'POST', url: `${API}/${path}`, payload })
  return { status: res.statusCode, body: res.json() }
}
const get = async (app: FastifyInstance, path: string): Promise<{ status: number, body: any }> => {
  const res = await app.inject({ method: 'GET', url: `${API}/${path}` })
  return { status: res.statusCode, body: res.json() }
}
const instructions = (file: any): string[] => (file.tasks as Array<{ instruction: string }>).map((task) => task.instruction)

t.test('a session archived by one replica is archived on the others: read, listed, brought back by a create or a retry, deleted', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  // Tasks whose instruction says "fail" fail: a retry has something to put back.
  const agents = JSON.stringify({ default: { kind: 'command', argv: ['/bin/sh', '-c', 'grep -q fail && exit 3; echo done'], max_attempts: 1 } })
  const a = await replica(t, url, 'reads-a', { TASK_AGENTS: agents })
  const b = await replica(t, url, 'reads-b', { TASK_AGENTS: agents })
  const ids = ['read', 'append', 'failing', 'gone']
  for (const id of ids) {
    t.equal((await post(a, 'create', { session_id: id, instructions: id === 'failing' ? 'fail please' : 'first task' })).status, 200)
    t.equal((await post(a, 'execute', { session_id: id })).status, 200)
  }
  t.equal((await get(a, 'progress?session_id=failing')).body.failed, 1, 'one failed task')
  // A knows them as active; B archives them. Each is then used once on A, before anything there
  // (a list of archived sessions) reads the archive afresh.
  t.same((await post(b, 'archive', { older_than_days: 0 })).body.archived_ids.sort(), [...ids].sort())

  // A create on the replica that did not archive it brings the archived session back, with its tasks.
  const appended = await post(a, 'create', { session_id: 'append', instructions: 'second task' })
  t.equal(appended.status, 200)
  t.match(appended.body.task_ids, [/^task_2_/u], 'numbered after the archived task')
  for (const app of [a, b]) {
    const session = await get(app, 'list?session_id=append')
    t.same(instructions(session.body), ['first task', 'second task'], 'one session, both tasks')
    t.notOk(session.body.archived, 'active again')
  }
  const rows = await db.query<{ archived: boolean, tasks_total: number }>("SELECT archived_at IS NOT NULL AS archived, tasks_total FROM sessions WHERE session_id = 'append'")
  t.same(rows.rows, [{ archived: false, tasks_total: 2 }], 'one active row, no archived copy left behind')

  // A retry there brings back the archived session whose task failed.
  const retried = await post(a, 'retry', { session_id: 'failing' })
  t.equal(retried.status, 200)
  t.match(retried.body, { progress: { total: 1, pending: 1 } })
  t.match((await get(b, 'list?session_id=failing')).body, { tasks: [{ instruction: 'fail please', status: 'Pending' }] })

  // A delete there deletes the archived copy.
  t.equal((await a.inject({ method: 'DELETE', url: `${API}/sessions/gone` })).statusCode, 204)
  t.equal((await db.query("SELECT 1 FROM sessions WHERE session_id = 'gone'")).rowCount, 0, 'no row left')

  for (const [name, app] of [['a', a], ['b', b]] as const) {
    const progress = await get(app, 'progress?session_id=read')
    t.equal(progress.status, 200, `${name}: progress 200`)
    t.match(progress.body, { total: 1, completed: 1, archived: true }, `${name}: archived`)
    const session = await get(app, 'list?session_id=read')
    t.equal(session.status, 200, `${name}: the session 200`)
    t.match(session.body, { archived: true }, `${name}: the session, archived`)
    t.equal((await get(app, 'progress?session_id=gone')).status, 404, `${name}: the deleted one is gone`)
    t.same((await get(app, 'list?session_id=all&archived=only')).body.sessions.map((s: { session_id: string }) => s.session_id), ['read'], `${name}: listed as archived`)
    t.same((await get(app, 'list?session_id=all')).body.sessions.map((s: { session_id: string }) => s.session_id).sort(), ['append', 'failing'], `${name}: listed as active`)
    t.equal((await get(app, 'stats')).body.archived_sessions, 1, `${name}: counted as archived`)
  }
  // /metrics counts the rows as /stats does, on each replica the same, under one store label:
  // a dashboard takes one per store. What each replica holds itself differs (A read 'read' back).
  const storedGauges = async (app: FastifyInstance): Promise<string[]> =>
    (await app.inject({ method: 'GET', url: '/metrics' })).body.split('\n').filter((line) => /^taskvault_stored_(sessions|tasks)\{/u.test(line)).sort()
  const onA = await storedGauges(a)
  t.same(onA.filter((line) => line.includes('state="archived"')).map((line) => line.replace(/store="[^"]+"/u, 'store')), ['taskvault_stored_sessions{state="archived",store} 1'], 'the session B archived, on A')
  t.match(onA[0], /store="postgres:[0-9a-f]{12}"/u)
  t.same(await storedGauges(b), onA, 'B reports the same')
  // What a replica's own index has seen of the archive goes stale as others archive and delete: left out.
  for (const app of [a, b]) t.notMatch((await app.inject({ method: 'GET', url: '/metrics' })).body, /^taskvault_sessions\{state="archived"\}/mu, 'no per-replica archived count')
})

t.test('execute and cancel on a session another replica archived answer 404 saying so, on every replica; once it is brought back, a cancel through any replica reaches its run', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agents = JSON.stringify({ default: { kind: 'command', argv: ['/bin/sh', '-c', 'grep -q slow && sleep 5; echo done'], max_attempts: 1 } })
  const keys = { TASK_ENCRYPTION_KEYS: `k1:${randomBytes(32).toString('base64')}` }
  const a = await replica(t, url, 'archived-a', { TASK_AGENTS: agents, ...keys })
  const b = await replica(t, url, 'archived-b', { TASK_AGENTS: agents, ...keys })
  const c = await replica(t, url, 'archived-c', { TASK_AGENTS: agents, ...keys })
  t.equal((await post(a, 'create', { session_id: 'shelved', instructions: 'first task' })).status, 200)
  t.equal((await post(a, 'execute', { session_id: 'shelved' })).status, 200)
  t.equal((await get(b, 'progress?session_id=shelved')).status, 200, 'B holds a copy of it, active')
  t.same((await post(a, 'archive', { older_than_days: 0 })).body.archived_ids, ['shelved'])
  const message = "session 'shelved' is archived: it runs nothing until it is brought back, by a create that adds tasks to it or a retry of its failed tasks"
  for (const [name, app] of [['a (archived it)', a], ['b (held a copy)', b], ['c (never saw it)', c]] as const) {
    for (const [path, payload] of [['execute', {}], ['execute-all', {}], ['execute-all', { wait: false }], ['cancel', {}]] as const) {
      const res = await post(app, path, { session_id: 'shelved', ...payload })
      t.same([res.status, res.body.message], [404, message], `${name}: ${path} ${JSON.stringify(payload)}`)
    }
  }
  t.match((await get(b, 'progress?session_id=shelved')).body, { archived: true }, 'B reads it archived')
  // Brought back and run on A: B, which last read it archived, cancels that run.
  t.equal((await post(a, 'create', { session_id: 'shelved', instructions: 'slow task' })).status, 200)
  t.equal((await post(a, 'execute-all', { session_id: 'shelved', wait: false })).status, 202)
  const cancelled = await post(b, 'cancel', { session_id: 'shelved' })
  t.equal(cancelled.status, 200, JSON.stringify(cancelled.body))
  // Asked before A claimed the task (it stays pending) or after (it failed, and the answer names it, whether or not B had read it in progress).
  const second = (await get(b, 'list?session_id=shelved')).body.tasks[1]
  t.same([second.status, cancelled.body.cancelled_task_id], second.status === 'Pending' ? ['Pending', null] : ['Failed', second.id], 'the answer names the task the cancel failed')
  // Once B has read it in progress, the cancel fails that task.
  t.equal((await post(a, 'create', { session_id: 'shelved', instructions: 'slow again' })).status, 200)
  t.equal((await post(a, 'execute-all', { session_id: 'shelved', wait: false })).status, 202)
  const third = await waitFor('B reads the third task in progress', async () => (await get(b, 'list?session_id=shelved')).body.tasks.find((task: { status: string }) => task.status === 'InProgress'))
  const again = await post(b, 'cancel', { session_id: 'shelved' })
  t.same([again.status, again.body.cancelled_task_id], [200, third.id])
  t.match((await get(b, 'list?session_id=shelved')).body.tasks, [{}, {}, { id: third.id, status: 'Failed', error: 'cancelled' }])
  t.equal((await post(c, 'execute', { session_id: 'nobody' })).body.message, "session 'nobody' not found", 'an unknown one is not found')
  // Archived under a key a replica lacks: it is archived all the same (its document is not read to say so).
  t.equal((await post(a, 'create', { session_id: 'locked', instructions: 'first task' })).status, 200)
  t.equal((await post(a, 'execute', { session_id: 'locked' })).status, 200)
  t.ok((await post(a, 'archive', { older_than_days: 0 })).body.archived_ids.includes('locked'))
  const d = await replica(t, url, 'archived-d', { TASK_AGENTS: agents, TASK_ENCRYPTION_KEYS: `k2:${randomBytes(32).toString('base64')}` })
  t.equal((await get(d, 'progress?session_id=locked')).status, 503, 'its copy does not open there')
  const refused = await post(d, 'execute', { session_id: 'locked' })
  t.same([refused.status, refused.body.message], [404, "session 'locked' is archived: it runs nothing until it is brought back, by a create that adds tasks to it or a retry of its failed tasks"])
})

t.test('/stats and /metrics count sealed sessions from the rows: every replica the same, `taskvault seal --database-url` included', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const keys = `k1:${randomBytes(32).toString('base64')}`
  // Written in clear first.
  const clear = await replica(t, url, 'enc-clear')
  for (const id of ['s1', 's2', 's3']) t.equal((await post(clear, 'create', { session_id: id, instructions: 'x' })).status, 200)
  await clear.close()

  const a = await replica(t, url, 'enc-a', { TASK_ENCRYPTION_KEYS: keys })
  const b = await replica(t, url, 'enc-b', { TASK_ENCRYPTION_KEYS: keys })
  // A seals what it writes; B has not seen it.
  t.equal((await post(a, 'create', { session_id: 's1', instructions: 'y' })).status, 200)
  t.equal((await post(a, 'create', { session_id: 's4', instructions: 'x' })).status, 200)
  const sealedGauge = async (app: FastifyInstance): Promise<string[]> =>
    (await app.inject({ method: 'GET', url: '/metrics' })).body.split('\n').filter((line) => line.startsWith('taskvault_sealed_sessions{')).sort()
  for (const [name, app] of [['a', a], ['b', b]] as const) {
    t.match((await get(app, 'stats')).body.encryption, { enabled: true, active_kid: 'k1', sealed_sessions: { k1: 2 }, plaintext_sessions: 2 }, `${name}: from the rows`)
    t.same(await sealedGauge(app), ['taskvault_sealed_sessions{kid=""} 2', 'taskvault_sealed_sessions{kid="k1"} 2'], `${name}: /metrics the same`)
  }

  const sealed = await taskvault(['seal', '--database-url', url], { env: { TASK_ENCRYPTION_KEYS: keys } })
  t.equal(sealed.code, 0, sealed.stderr)
  for (const [name, app] of [['a', a], ['b', b]] as const) {
    t.same((await get(app, 'stats')).body.encryption, { enabled: true, active_kid: 'k1', sealed_sessions: { k1: 4 }, plaintext_sessions: 0 }, `${name}: every row sealed, as the seal left them`)
    t.same(await sealedGauge(app), ['taskvault_sealed_sessions{kid=""} 0', 'taskvault_sealed_sessions{kid="k1"} 4'], `${name}: /metrics the same`)
  }
})

t.test('a replica lets go of its copies of sessions another replica deleted or archived: no memory held, no room taken under TASK_MAX_SESSIONS, nothing in /metrics', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const settings = { TASK_MAX_SESSIONS: 5, TASK_SWEEP_INTERVAL_MS: 200, TASK_SWEEP_RECHECK: 3 }
  const a = await replica(t, url, 'held-a', settings)
  const b = await replica(t, url, 'held-b', settings)
  const ids = ['d1', 'd2', 'd3', 'r1', 'r2']
  for (const id of ids) t.equal((await post(b, 'create', { session_id: id, instructions: '1. one\n2. two' })).status, 200)
  // A reads each: it now holds a copy of all five, as many as TASK_MAX_SESSIONS allows.
  for (const id of ids) t.equal((await get(a, `progress?session_id=${id}`)).status, 200)
  t.equal(a.taskManager.registry.size, 5)
  for (const id of ['d1', 'd2', 'd3']) t.equal((await b.inject({ method: 'DELETE', url: `${API}/sessions/${id}` })).statusCode, 204)
  for (const id of ['r1', 'r2']) {
    t.equal((await post(b, 'execute-all', { session_id: id })).status, 200)
  }
  t.same((await post(b, 'archive', { older_than_days: 0 })).body.archived_ids.sort(), ['r1', 'r2'])

  // Three a sweep: within two sweeps every copy is checked and dropped.
  const deadline = Date.now() + 10_000
  while (a.taskManager.registry.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(a.taskManager.registry.size, 0, 'A holds no copy of what is gone')
  const metrics = (await a.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /^taskvault_sessions\{state="active"\} 0$/mu, 'and reports none in /metrics')
  t.equal((await post(a, 'create', { session_id: 'room', instructions: 'x' })).status, 200, 'a create on A finds room: the database holds no active session')
})

t.test('replicas list archived sessions from the rows a page at a time: each session once, newest first, as a store of one process lists them', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const a = await replica(t, url, 'pages-a')
  const b = await replica(t, url, 'pages-b')
  const pause = async (): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, 5)) }
  // Seven finished sessions (archived below), then three left pending; a few milliseconds apart, so no two share a time.
  const finished = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7']
  for (const id of finished) {
    t.equal((await post(a, 'create', { session_id: id, instructions: 'one task' })).status, 200)
    await pause()
    t.equal((await post(a, 'execute', { session_id: id })).status, 200)
    await pause()
  }
  for (const id of ['p1', 'p2', 'p3']) {
    t.equal((await post(a, 'create', { session_id: id, instructions: '1. one\n2. two' })).status, 200)
    await pause()
  }
  // B archives them (A has read none of its archive since).
  t.same((await post(b, 'archive', { older_than_days: 0 })).body.archived_ids.sort(), finished)
  // f2 comes back, on A.
  t.equal((await post(a, 'create', { session_id: 'f2', instructions: 'another task' })).status, 200)
  // Copies a list must pass over: an older archived copy of f3 (archived twice; its counts are
  // not the list's), and an archived copy of the active p1 (a bring-back cut short).
  // Older copies have lower row ids (whatever time they say: the newest copy is the last written).
  await db.query(`INSERT INTO sessions (row_id, session_id, document, created_at, updated_at, archived_at, tasks_total, tasks_pending)
    OVERRIDING SYSTEM VALUE
    SELECT -row_id, session_id, document, created_at, updated_at + interval '1 hour', now(), 5, 5 FROM sessions WHERE session_id IN ('f3', 'p1')`)

  const page = async (app: FastifyInstance, filter: string, offset: number, limit: number): Promise<{ total: number, sessions: any[] }> => {
    const res = await get(app, `list?session_id=all&archived=${filter}&offset=${offset}&limit=${limit}`)
    t.equal(res.status, 200, JSON.stringify(res.body))
    return res.body
  }
  const walk = async (app: FastifyInstance, filter: string): Promise<any[]> => {
    const seen: any[] = []
    for (let offset = 0; ; offset += 3) {
      const body = await page(app, filter, offset, 3)
      t.equal(body.total, filter === 'only' ? 6 : 10, `${filter}: the total on every page`)
      if (body.sessions.length === 0) break
      seen.push(...body.sessions)
    }
    return seen
  }
  const archivedIds = ['f1', 'f3', 'f4', 'f5', 'f6', 'f7']
  for (const [name, app] of [['a', a], ['b', b]] as const) {
    const all = await walk(app, 'include')
    const ids = all.map((s) => s.session_id)
    t.same([...ids].sort(), ['f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'p1', 'p2', 'p3'], `${name}: each session once over the pages`)
    const times = all.map((s) => Date.parse(s.updated_at))
    t.same(times, [...times].sort((x, y) => y - x), `${name}: newest updated first`)
    t.equal(ids[0], 'f2', `${name}: the session brought back is the newest`)
    for (const s of all) {
      t.equal(s.archived === true, archivedIds.includes(s.session_id), `${name}: ${s.session_id} ${archivedIds.includes(s.session_id) ? 'archived' : 'active'}`)
      t.equal(s.running, false, `${name}: ${s.session_id} not running`)
    }
    t.match(all.find((s) => s.session_id === 'f3'), { total: 1, completed: 1, pending: 0, all_done: true, percentage: 100 }, `${name}: an archived session's counts are its newest copy's`)
    t.match(all.find((s) => s.session_id === 'p1'), { total: 2, pending: 2, archived: undefined }, `${name}: an active session hides its archived copy`)
    const only = await walk(app, 'only')
    t.same(only.map((s) => s.session_id), ids.filter((id) => archivedIds.includes(id)), `${name}: archived only, in the same order`)
    t.same(await page(app, 'include', 100, 3), { total: 10, sessions: [], offset: 100, limit: 3 }, `${name}: past the end, an empty page`)
  }
  const listed = (await walk(a, 'include')).map(({ running, ...summary }) => summary)

  // A store of this process alone (no replica id, as a host embedding the store may open it)
  // lists from memory and its archive index: the same sessions in the same order.
  const store = await openTestStore(t, url, SCHEMA)
  const manager = new TaskManager({ store })
  t.teardown(() => manager.close())
  await manager.restore()
  const pages: unknown[] = []
  for (let offset = 0; offset < 12; offset += 3) {
    const { total, sessions } = await manager.listWithArchived(offset, 3, 'include')
    t.equal(total, 10)
    pages.push(...sessions.map(({ running, ...summary }: { running?: boolean }) => summary))
  }
  t.same(pages, listed, 'a store of one process lists the same, page by page')
  t.same((await manager.listWithArchived(2, 3, 'only')).sessions, listed.filter((s) => s.archived === true).slice(2, 5), 'and archived only')
  // A change between two lists: f4 comes back, the newest now.
  await manager.create('f4', [{ instruction: 'more', task_type: 'General' }])
  const after = await manager.listWithArchived(0, 100, 'include')
  t.equal(after.total, 10)
  t.match(after.sessions[0], { session_id: 'f4', total: 2, archived: undefined }, 'brought back: first, and active')
  t.same(after.sessions.slice(1).map((s) => s.session_id), listed.map((s) => s.session_id).filter((id) => id !== 'f4'), 'the others as before')
  t.equal((await manager.listWithArchived(0, 100, 'only')).total, 5)
})
