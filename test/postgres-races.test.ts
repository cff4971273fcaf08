/**
 * Changes through two replicas at the same moment, each ordered by the test: a DELETE and a
 * bring-back of one archived session (whichever reaches the database first, a 204 leaves no
 * trace of the deleted session); a task added while a background run ends (the run runs it).
 * Each replica runs on a pool that can hold one statement until released, so that the order is
 * the test's, not the scheduler's.
 */
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import pg from 'pg'
import t, { type Test } from 'tap'
import taskvaultPlugin from '../index.js'
import { noop } from '../services/noop.js'
import { connectionConfig } from '../services/store/postgres/pool.js'
import { exclusively } from '../services/store/postgres/pass-lock.js'
import { API, memoryLog, waitFor } from './helper.js'
import { storedSession } from './session-fixtures.js'
import { inspector, testDatabase } from './postgres.js'

const SCHEMA = 'taskvault'

interface Held {
  /** Resolves once a statement matching was sent, and is held. */
  reached: Promise<void>
  release: () => void
}

interface HoldingPool {
  pool: pg.Pool
  /** Holds the next statement whose text matches (and whose values, when `values` is given), once; several may be armed. */
  hold: (match: RegExp, values?: (values: string[]) => boolean) => Held
}

/**
 * A host's pool (the plugin's `pool` option) that holds a statement on demand. `max`, when
 * given, is advertised as the pool's size, which sets the store's save lanes (one fewer).
 */
function holdingPool (t: Test, url: string, statementTimeoutMs = 10_000, max?: number): HoldingPool {
  const real = new pg.Pool(connectionConfig({ url, schema: SCHEMA, max: 6, statementTimeoutMs }))
  real.on('error', noop)
  t.teardown(() => real.end())
  const armed: Array<{ match: RegExp, values?: (values: string[]) => boolean, gate: Promise<void>, reached: () => void }> = []
  const guard = async (config: unknown): Promise<void> => {
    const text = typeof config === 'string' ? config : (config as { text?: string } | null)?.text ?? ''
    const values = ((config as { values?: unknown[] } | null)?.values ?? []).flat().map((value) => Buffer.isBuffer(value) ? value.toString('utf8') : String(value))
    const index = armed.findIndex((hold) => hold.match.test(text) && (hold.values === undefined || hold.values(values)))
    const [hold] = index < 0 ? [] : armed.splice(index, 1)
    if (hold === undefined) return
    hold.reached()
    await hold.gate
  }
  const wrapped = new WeakSet<pg.PoolClient>()
  const pool = {
    query: async (...args: unknown[]) => {
      await guard(args[0])
      return (real.query as (...a: unknown[]) => Promise<unknown>)(...args)
    },
    connect: async () => {
      const client = await real.connect()
      if (!wrapped.has(client)) {
        wrapped.add(client)
        const query = client.query.bind(client) as (...a: unknown[]) => Promise<unknown>
        Object.assign(client, { query: async (...args: unknown[]) => { await guard(args[0]); return query(...args) } })
      }
      return client
    },
    end: async () => real.end(),
    on: (...args: Parameters<pg.Pool['on']>) => real.on(...args),
    ...(max !== undefined && { options: { max } })
  }
  return {
    pool: pool as unknown as pg.Pool,
    hold: (match, values) => {
      let reached!: () => void
      let release!: () => void
      const gate = new Promise<void>((resolve) => { release = resolve })
      const held = new Promise<void>((resolve) => { reached = resolve })
      armed.push({ match, values, gate, reached })
      return { reached: held, release }
    }
  }
}

async function replica (t: Test, url: string, replicaId: string, options: { agents?: Record<string, unknown>, sweepIntervalMs?: number, sweepBatch?: number, archiveRetentionDays?: number, statementTimeoutMs?: number, poolMax?: number, logger?: FastifyServerOptions['logger'] } = {}): Promise<{ app: FastifyInstance, hold: HoldingPool['hold'] }> {
  const { statementTimeoutMs, poolMax, logger, ...plugin } = options
  const { pool, hold } = holdingPool(t, url, statementTimeoutMs, poolMax)
  const app = Fastify({ logger })
  t.teardown(() => app.close())
  await app.register(taskvaultPlugin, { prefix: API, pool, replicaId, archiveDays: 0, ...plugin })
  await app.ready()
  return { app, hold }
}

const call = async (app: FastifyInstance, method: 'GET' | 'POST' | 'DELETE', path: string, payload?: object): Promise<{ status: number, body: any }> => {
  const res = await app.inject({ method, url: `${API}/${path}`, ...(payload === undefined ? {} : { payload }) })
  return { status: res.statusCode, body: res.body === '' ? null : res.json() }
}

/** An archived session 'alpha' (one task done), read as archived by both replicas. */
async function archivedAlpha (t: Test, b: FastifyInstance, c: FastifyInstance): Promise<void> {
  t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'alpha' })).status, 200)
  t.equal((await call(b, 'POST', 'execute', { session_id: 'alpha' })).status, 200)
  t.same((await call(b, 'POST', 'archive', { older_than_days: 0 })).body.archived_ids, ['alpha'])
  for (const app of [b, c]) t.match((await call(app, 'GET', 'progress?session_id=alpha')).body, { archived: true })
}

const instructions = async (app: FastifyInstance): Promise<string[] | number> => {
  const res = await call(app, 'GET', 'list?session_id=alpha')
  return res.status === 200 ? (res.body.tasks as Array<{ instruction: string }>).map((task) => task.instruction) : res.status
}

t.test('a DELETE decided on an archived copy that another replica brings back before the delete lands deletes the session brought back', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app: b } = await replica(t, url, 'races-b')
  const { app: c, hold } = await replica(t, url, 'races-c')
  await archivedAlpha(t, b, c)
  const held = hold(/^DELETE FROM sessions WHERE session_id = \$1 AND archived_at IS NOT NULL/u)
  const deleting = call(c, 'DELETE', 'sessions/alpha')
  await held.reached
  t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'delta' })).status, 200, 'brought back, with a task added')
  held.release()
  t.equal((await deleting).status, 204)
  t.same([await instructions(b), await instructions(c)], [404, 404], 'deleted after it came back: gone everywhere')
})

t.test('a bring-back that read the archived copy before another replica deleted it starts a new session: the deleted one does not come back', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app: b, hold } = await replica(t, url, 'races-b')
  const { app: c } = await replica(t, url, 'races-c')
  await archivedAlpha(t, b, c)
  const held = hold(/revived AS \(/u)
  const creating = call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'delta' })
  await held.reached
  t.equal((await call(c, 'DELETE', 'sessions/alpha')).status, 204, 'deleted while the bring-back waits')
  held.release()
  const created = await creating
  t.equal(created.status, 200, JSON.stringify(created.body))
  t.same([await instructions(b), await instructions(c)], [['delta'], ['delta']], 'a new session holding only the new task')
})

t.test('a create through a replica that looked for an archived copy just before another replica archived the session brings it back: no second session beside the archived one', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app: b } = await replica(t, url, 'races-b')
  const { app: c, hold } = await replica(t, url, 'races-c')
  t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'alpha' })).status, 200)
  t.equal((await call(b, 'POST', 'execute', { session_id: 'alpha' })).status, 200)
  // c has never read alpha: its create looks for an archived copy first (none yet), then is held writing a new row.
  const held = hold(/^INSERT INTO sessions \(session_id, document/u, (values) => values[0] === 'alpha')
  const creating = call(c, 'POST', 'create', { session_id: 'alpha', instructions: 'delta' })
  await held.reached
  t.same((await call(b, 'POST', 'archive', { older_than_days: 0 })).body.archived_ids, ['alpha'], 'archived meanwhile')
  held.release()
  const created = await creating
  t.equal(created.status, 200, JSON.stringify(created.body))
  t.same([await instructions(b), await instructions(c)], [['alpha', 'delta'], ['alpha', 'delta']], 'brought back with its task, the new one added')
  t.same((await inspector(t, url, SCHEMA).query<{ archived: boolean }>("SELECT archived_at IS NOT NULL AS archived FROM sessions WHERE session_id = 'alpha'")).rows, [{ archived: false }], 'one row: the active session')
  t.equal((await call(c, 'DELETE', 'sessions/alpha')).status, 204)
  t.same([await instructions(b), await instructions(c)], [404, 404], 'and a delete leaves nothing to come back')
})

t.test('a create whose save waits for a lane while another replica archives the session, and a second create then reads the archived copy: both tasks join the session brought back', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app: b } = await replica(t, url, 'races-b')
  // Two save lanes on c, both taken by held inserts of other sessions (a replica under load).
  const { app: c, hold } = await replica(t, url, 'races-c', { poolMax: 3 })
  t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'alpha' })).status, 200)
  t.equal((await call(b, 'POST', 'execute', { session_id: 'alpha' })).status, 200)
  const busy = ['beta1', 'beta2'].map((id) => hold(/^INSERT INTO sessions \(session_id, document/u, (values) => values[0] === id))
  const betas = ['beta1', 'beta2'].map(async (id) => call(c, 'POST', 'create', { session_id: id, instructions: 'b' }))
  await Promise.all(busy.map(async (held) => held.reached))
  // c has never read alpha and finds no archived copy: a new session, whose save waits for a lane.
  const saves = (c.persistence as unknown as { batcher: { waiting: number } }).batcher
  const first = call(c, 'POST', 'create', { session_id: 'alpha', instructions: 'delta' })
  await waitFor('the new session\'s save to wait for a lane', () => saves.waiting === 1)
  t.same((await call(b, 'POST', 'archive', { older_than_days: 0 })).body.archived_ids, ['alpha'], 'archived meanwhile')
  // A second create reads the copy b archived: c's index now knows it, though the waiting save was decided without it.
  const second = call(c, 'POST', 'create', { session_id: 'alpha', instructions: 'echo' })
  await waitFor('the second create to wait behind the first', () => saves.waiting === 1 && c.persistence.archivedName('alpha') !== null)
  for (const held of busy) held.release()
  t.same((await Promise.all([...betas, first, second])).map((res) => res.status), [200, 200, 200, 200])
  t.same((await inspector(t, url, SCHEMA).query("SELECT archived_at IS NOT NULL AS archived, tasks_total FROM sessions WHERE session_id = 'alpha'")).rows, [{ archived: false, tasks_total: 3 }], 'one row: the session brought back, holding all three tasks')
  t.same((await instructions(c) as string[]).sort(), ['alpha', 'delta', 'echo'])
})

t.test('a DELETE of an active session takes the archived copies an import left beside it, which no replica had read: nothing comes back', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app: b } = await replica(t, url, 'races-b')
  t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'alpha' })).status, 200)
  t.equal((await call(b, 'POST', 'execute', { session_id: 'alpha' })).status, 200)
  const inspect = inspector(t, url, SCHEMA)
  // What `taskvault import` of an archived copy leaves: a row archived beside the active one.
  await inspect.query(`INSERT INTO sessions (session_id, document, created_at, updated_at, finished_at, tasks_total, tasks_completed, archived_at)
    SELECT session_id, document, created_at, updated_at, finished_at, tasks_total, tasks_completed, now() FROM sessions WHERE session_id = 'alpha'`)
  t.equal((await call(b, 'DELETE', 'sessions/alpha')).status, 204)
  t.same((await inspect.query("SELECT row_id FROM sessions WHERE session_id = 'alpha'")).rows, [], 'no row left')
  t.equal(await instructions(b), 404)
})

t.test('a task added through another replica while a background run ends, after it found nothing left to run, is run by it; a cancel then is the run\'s end', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agents = { default: { kind: 'command', argv: ['/bin/sh', '-c', 'grep -q slow && sleep 5; echo done'], max_attempts: 1 } }
  const { app: a, hold } = await replica(t, url, 'races-a', { agents })
  const { app: b } = await replica(t, url, 'races-b', { agents })
  const ends: string[] = []
  a.taskManager.events.on('task-event', (name) => { if (name.startsWith('run.')) ends.push(name) })
  for (const [late, status] of [['late', 'Completed'], ['slow late', 'Failed']] as const) {
    t.equal((await call(a, 'POST', 'create', { session_id: 'alpha', instructions: 'first' })).status, 200)
    // The save that clears the run's record: the tasks done, no background run left.
    const held = hold(/^UPDATE sessions|save_batch|WITH v AS/u, (values) => values.some((value) => value.includes('"alpha"') && !value.includes('Pending') && !value.includes('InProgress') && !value.includes('background_run')))
    ends.length = 0
    t.equal((await call(a, 'POST', 'execute-all', { session_id: 'alpha', wait: false })).status, 202)
    await held.reached
    t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: late })).status, 200, `${late}: added while the run ends`)
    held.release()
    if (status === 'Failed') {
      await waitFor('the late task to run', async () => (await call(b, 'GET', 'list?session_id=alpha')).body.tasks.at(-1).status === 'InProgress')
      t.match((await call(b, 'POST', 'cancel', { session_id: 'alpha' })).body, { cancelled_task_id: /^task_/u })
    }
    const tasks = await waitFor('the run to end', async () => {
      const res = await call(b, 'GET', 'list?session_id=alpha')
      const progress = await call(b, 'GET', 'progress?session_id=alpha')
      return progress.body.running === false && res.body.tasks.every((task: { status: string }) => task.status !== 'InProgress') ? res.body.tasks : undefined
    })
    t.same(tasks.slice(-2).map((task: { instruction: string, status: string }) => [task.instruction, task.status]), [['first', 'Completed'], [late, status]], `${late}: the late task ran too`)
    await waitFor('the run\'s end', () => ends.length >= 2)
    t.same(ends, ['run.started', status === 'Failed' ? 'run.cancelled' : 'run.finished'], `${late}: announced as it ended`)
  }
})

t.test('a shutdown while a background run ends, with a task added through another replica meanwhile, leaves the run recorded: another replica carries it on', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agents = { default: { kind: 'command', argv: ['/bin/sh', '-c', 'cat >/dev/null; echo done'], max_attempts: 1 } }
  const { app: a, hold } = await replica(t, url, 'races-a', { agents })
  const { app: b } = await replica(t, url, 'races-b', { agents, sweepIntervalMs: 200 })
  t.equal((await call(a, 'POST', 'create', { session_id: 'alpha', instructions: 'first' })).status, 200)
  const held = hold(/^UPDATE sessions|save_batch|WITH v AS/u, (values) => values.some((value) => value.includes('"alpha"') && value.includes('Completed') && !value.includes('background_run')))
  t.equal((await call(a, 'POST', 'execute-all', { session_id: 'alpha', wait: false })).status, 202)
  await held.reached
  t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'late' })).status, 200, 'added while the run ends')
  const closing = a.close()
  await new Promise((resolve) => setTimeout(resolve, 100))
  held.release()
  await closing
  const tasks = await waitFor('the other replica to run it', async () => {
    const res = await call(b, 'GET', 'list?session_id=alpha')
    return res.body.tasks.at(-1).status === 'Completed' ? res.body.tasks : undefined
  })
  t.same(tasks.map((task: { instruction: string, status: string }) => [task.instruction, task.status]), [['first', 'Completed'], ['late', 'Completed']])
})

t.test('a retry of an archived session whose bring-back another replica wins retries the session brought back (not a 404)', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agents = { default: { kind: 'command', argv: ['/bin/sh', '-c', 'cat >/dev/null; exit 1'], max_attempts: 1 } }
  const { app: b } = await replica(t, url, 'races-b', { agents })
  const { app: c, hold } = await replica(t, url, 'races-c', { agents })
  t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'alpha' })).status, 200)
  t.match((await call(b, 'POST', 'execute', { session_id: 'alpha' })).body, { status: 'Failed' })
  t.same((await call(b, 'POST', 'archive', { older_than_days: 0 })).body.archived_ids, ['alpha'])
  const held = hold(/revived AS \(/u)
  const retrying = call(c, 'POST', 'retry', { session_id: 'alpha' })
  await held.reached
  t.equal((await call(b, 'POST', 'create', { session_id: 'alpha', instructions: 'delta' })).status, 200, 'brought back through the other replica')
  held.release()
  const retried = await retrying
  t.equal(retried.status, 200, JSON.stringify(retried.body))
  t.same(await instructions(b), ['alpha', 'delta'])
  t.match((await call(b, 'GET', 'list?session_id=alpha')).body.tasks, [{ status: 'Pending' }, { status: 'Pending' }], 'its failed task retried')
})

t.test('POST /archive whose pass loses its lock midway (the lock\'s connection broke) answers 503 saying so, with what it did', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const admin = inspector(t, url, SCHEMA)
  const { app: a, hold } = await replica(t, url, 'races-a')
  for (const id of ['one', 'two']) {
    t.equal((await call(a, 'POST', 'create', { session_id: id, instructions: id })).status, 200)
    t.equal((await call(a, 'POST', 'execute', { session_id: id })).status, 200)
  }
  const held = hold(/^UPDATE sessions SET archived_at = now\(\)/u)
  const pass = call(a, 'POST', 'archive', { older_than_days: 0 })
  await held.reached
  // The pass's lock is an advisory lock held by a connection of its own: a failover ends it.
  await admin.query("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND pid <> pg_backend_pid()")
  held.release()
  const answer = await pass
  t.match([answer.status, answer.body], [503, { code: 'DATABASE_UNAVAILABLE', message: /^the archive pass stopped early \(the archive pass stopped: its lock's connection to the database broke\); 1 archived and 0 deleted meanwhile, durably$/u }])
  t.same((await call(a, 'POST', 'archive', { older_than_days: 0 })).body.archived_ids, ['two'], 'the next pass goes on')
})

t.test('POST /archive whose next page of candidates the database fails answers 503 saying so, with what it archived before', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const admin = inspector(t, url, SCHEMA)
  // A page is one session; statements give up after a second. Retention is on: a pass whose archive part stopped skips it.
  const log = memoryLog()
  const { app: a, hold } = await replica(t, url, 'races-a', { sweepBatch: 1, statementTimeoutMs: 1000, archiveRetentionDays: 90, logger: log.logger })
  for (const id of ['one', 'two']) {
    t.equal((await call(a, 'POST', 'create', { session_id: id, instructions: id })).status, 200)
    t.equal((await call(a, 'POST', 'execute', { session_id: id })).status, 200)
  }
  // The second page's read (it names a cursor) waits on a table lock past the statement timeout.
  const held = hold(/^SELECT session_id, to_json\(finished_at\)/u, (values) => values.length > 2)
  const pass = call(a, 'POST', 'archive', { older_than_days: 0 })
  await held.reached
  const locker = await admin.connect()
  t.teardown(() => { locker.release() })
  await locker.query('BEGIN; LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE')
  held.release()
  const answer = await pass
  await locker.query('ROLLBACK')
  t.equal(answer.status, 503, JSON.stringify(answer.body))
  t.match(answer.body, { code: 'STORAGE_UNAVAILABLE', message: /^the archive pass stopped early \(.*finding sessions to archive.*\); 1 archived and 0 deleted meanwhile, durably$/u })
  t.same(log.messages().filter((message) => message.endsWith('pass stopped: storage failed')), ['The archive pass stopped: storage failed'], 'retention did not run after it, to fail again')
  t.match((await call(a, 'GET', 'progress?session_id=one')).body, { archived: true }, 'the one it counted is archived')
  t.same((await call(a, 'POST', 'archive', { older_than_days: 0 })).body.archived_ids, ['two'], 'the next pass goes on')
})

t.test('POST /archive during which a shutdown begins once its last session moved answers 200: nothing was left to do', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { app: a, hold } = await replica(t, url, 'races-a')
  t.equal((await call(a, 'POST', 'create', { session_id: 'last', instructions: 'last' })).status, 200)
  t.equal((await call(a, 'POST', 'execute', { session_id: 'last' })).status, 200)
  const held = hold(/^UPDATE sessions SET archived_at = now\(\)/u)
  const pass = call(a, 'POST', 'archive', { older_than_days: 0 })
  await held.reached
  const closing = a.close()
  await waitFor('the shutdown to begin', () => a.taskManager.shuttingDown)
  held.release()
  const answer = await pass
  t.match([answer.status, answer.body], [200, { archived: 1, archived_ids: ['last'] }])
  await closing
})

t.test('a defect inside a pass holding its lock is thrown as it is, not taken for storage failing', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const pool = new pg.Pool(connectionConfig({ url, schema: SCHEMA, max: 2, statementTimeoutMs: 10_000 }))
  t.teardown(() => pool.end())
  const defect = new TypeError('a defect')
  await t.rejects(exclusively(pool, SCHEMA, 'archive', { idleMs: 30_000, waitMs: 0 }, async () => { throw defect }), defect)
  t.equal(await exclusively(pool, SCHEMA, 'archive', { idleMs: 30_000, waitMs: 0 }, async (lock) => lock.held()), true, 'the lock is free again')
})

t.test('a pass that asks whether it still holds its lock while the lock\'s own beat pings never sends two statements at once on the lock\'s connection', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const pool = new pg.Pool(connectionConfig({ url, schema: SCHEMA, max: 2, statementTimeoutMs: 10_000 }))
  t.teardown(() => pool.end())
  // pg warns (and pg 9 throws) when a client is given a statement while another runs on it.
  const warnings: string[] = []
  const onWarning = (warning: Error): void => { warnings.push(warning.message) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  // A beat every 100 ms, and the pass asking all the while, twice at once.
  const answers = await exclusively(pool, SCHEMA, 'archive', { idleMs: 300, waitMs: 0 }, async (lock) => {
    const held: boolean[] = []
    const until = performance.now() + 500
    while (performance.now() < until) held.push(...await Promise.all([lock.held(), lock.held()]))
    return held
  })
  t.ok(answers !== null && answers.length > 10 && answers.every((held) => held), `held all along (${answers?.length} answers)`)
  await new Promise((resolve) => setImmediate(resolve))
  t.same(warnings.filter((message) => /already executing a query/u.test(message)), [], 'no statement sent over another')
})

t.test('cancels of a run left behind through two replicas at once: the one whose claim finds the other\'s lease answers with the cancelled task too (not 409)', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const admin = inspector(t, url, SCHEMA)
  const slow = { sweepIntervalMs: 3_600_000 }
  const { app: b, hold: holdB } = await replica(t, url, 'races-b', slow)
  const { app: c, hold: holdC } = await replica(t, url, 'races-c', slow)
  // What a replica that died mid-task leaves once its lease ran out, before any sweep claims it.
  await admin.query(`INSERT INTO sessions (session_id, document, created_at, updated_at, tasks_total, tasks_in_progress)
    VALUES ('left', $1::json, now(), now(), 1, 1)`, [storedSession('left', ['InProgress'], new Date().toISOString())])
  const acquiring = holdC(/^WITH taken AS \(\s+UPDATE sessions SET owner/u)
  const fromC = call(c, 'POST', 'cancel', { session_id: 'left' })
  await acquiring.reached
  // B's cancel claims it and applies the cancel; its lease is still held when C's claim comes.
  const releasing = holdB(/^UPDATE sessions SET owner = NULL, lease_until = NULL/u)
  const fromB = call(b, 'POST', 'cancel', { session_id: 'left' })
  await releasing.reached
  acquiring.release()
  const answerC = await fromC
  releasing.release()
  const answerB = await fromB
  t.same([answerB.status, answerB.body.cancelled_task_id], [200, 'task_1'])
  t.same([answerC.status, answerC.body.cancelled_task_id], [200, 'task_1'], JSON.stringify(answerC.body))
  t.match(await call(b, 'GET', 'list?session_id=left'), { body: { tasks: [{ status: 'Failed', error: 'cancelled' }] } })
})
