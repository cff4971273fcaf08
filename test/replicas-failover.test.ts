/**
 * Replicas that die, stop or lose the database (issue 14), as real processes on the real
 * PostgreSQL: after kill -9 of the busiest replica its runs go on elsewhere within
 * TASK_LEASE_MS + TASK_SWEEP_INTERVAL_MS (+ 1 s); a replica stopped (SIGSTOP) past its lease and
 * woken can never overwrite the new owner's work (fencing); a replica cut off from the database
 * (a TCP proxy) goes unready, stops, and its runs move on; and rounds of kills keep torture.test's
 * invariants: nothing acknowledged lost or duplicated.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { connectionConfig } from '../services/store/postgres/pool.js'
import { API, waitFor } from './helper.js'
import { testDatabase, throughProxy } from './postgres.js'
import { recordingAgent, replicaSet, storedRows, type StoredRow } from './replicas.js'
import { call, caller, logLines, type ServerProcess } from './server-process.js'

const LEASE_MS = 2000
const SWEEP_MS = 300
const SETTINGS = { TASK_LEASE_MS: String(LEASE_MS), TASK_SWEEP_INTERVAL_MS: String(SWEEP_MS) }
/** The bound on a run moving on after its replica died. */
const FAILOVER_BOUND_MS = LEASE_MS + SWEEP_MS + 1000

/** Every run of these sessions (all when none named) has ended. */
const done = (rows: Map<string, StoredRow>, only?: readonly string[]): boolean => [...rows].filter(([id]) => only === undefined || only.includes(id)).every(([, row]) => row.tasks.every((task) => task.status === 'Completed' || task.status === 'Failed') && !row.background)

t.test('failover: kill -9 of the replica running the most: acknowledged work survives, its runs resume elsewhere within the bound, nothing left InProgress or leased by it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  // Every first call is held until all runs are under way: on a slow host the first runs would
  // otherwise end while the last are still being created, and the kill would find nothing in flight.
  agent.behave(() => ({ hold: true }))
  const set = await replicaSet(t, url, agent, SETTINGS)
  const servers = await Promise.all(['f0', 'f1', 'f2'].map(async (name) => set.start(name)))
  const sessions = Array.from({ length: 24 }, (_, i) => `run${i}`)
  for (const [i, id] of sessions.entries()) {
    t.equal((await call(servers[i % 3] as ServerProcess, 'POST', `${API}/create`, { session_id: id, instructions: Array.from({ length: 8 }, (_, k) => `${k + 1}. t${k}`).join('\n') })).status, 200)
    t.equal((await call(servers[(i + 1) % 3] as ServerProcess, 'POST', `${API}/execute-all`, { session_id: id, wait: false })).status, 202)
  }
  // Creates keep coming while the replica dies: each acknowledged one must survive.
  const acked: Array<{ session: string, ids: string[] }> = []
  let stop = false
  // A failed wait ends the test early: the writer stops with it rather than keep the file running until tap's timeout.
  t.teardown(() => { stop = true })
  const writer = (async () => {
    for (let n = 0; !stop; n++) {
      const server = servers.filter((s) => s.exit() === null)[n % 2] as ServerProcess
      const res = await call(server, 'POST', `${API}/create`, { session_id: `extra${n % 5}`, instructions: `w${n}` }).catch(() => null)
      if (res?.status === 200) acked.push({ session: `extra${n % 5}`, ids: res.body.task_ids as string[] })
      // A steady trickle, not a flood: the point is writes in flight at the kill.
      await sleep(5)
    }
  })()
  await waitFor('every run under way', () => new Set(agent.calls.map((c) => c.session)).size === sessions.length, 30_000)
  await waitFor('writes under way', () => acked.length >= 3, 10_000)
  // One reading of the leases while every run waits on its first call: who runs what is exact.
  const rows = await storedRows(url)
  const owners = new Map<string, number>()
  for (const row of rows.values()) if (row.owner !== null) owners.set(row.owner, (owners.get(row.owner) ?? 0) + 1)
  const [victim] = [...owners].sort((x, y) => y[1] - x[1])[0] ?? ['f0']
  const dead = servers.find((_, i) => `f${i}` === victim) as ServerProcess
  const theirs = new Set([...rows].filter(([, row]) => row.owner === victim).map(([id]) => id))
  // The runs go on, and the busiest replica dies as its answers arrive: results in flight at the kill.
  agent.behave(() => ({ delayMs: 40 }))
  agent.release()
  const killedAt = Date.now()
  dead.child.kill('SIGKILL')
  await dead.exited
  t.ok(theirs.size > 0, `${victim} ran ${theirs.size} sessions when killed`)

  const resumed = await agent.waitForCall((c) => c.at > killedAt && c.replica !== victim && theirs.has(c.session), 30_000)
  const failover = resumed.at - killedAt
  t.ok(failover <= FAILOVER_BOUND_MS, `a run of ${victim} resumed on ${resumed.replica} ${failover} ms after the kill (bound ${FAILOVER_BOUND_MS} ms)`)
  await waitFor('every run to end', async () => done(await storedRows(url), sessions), 60_000)
  stop = true
  await writer

  const stored = await storedRows(url)
  const missing = acked.filter(({ session, ids }) => ids.some((id) => !(stored.get(session)?.tasks ?? []).some((task) => task.id === id)))
  t.same(missing, [], `every acknowledged create survived (${acked.length})`)
  const runTasks = sessions.flatMap((session) => (stored.get(session)?.tasks ?? []).map((task) => ({ session, ...task })))
  t.same(runTasks.filter((task) => task.status !== 'Completed').map((task) => `${task.session}/${task.id} ${task.status}`), [], 'every task of every run Completed')
  t.same([...stored].filter(([, row]) => row.owner !== null).map(([id, row]) => `${id}: ${row.owner ?? ''}`), [], 'no lease held, by the dead replica or any')
  const interrupted = runTasks.filter((task) => (task.interruptions ?? 0) > 0)
  t.ok(interrupted.every((task) => task.interruptions === 1 && theirs.has(task.session)), 'an interruption counted once, only on the dead replica\'s sessions')
  // A task may be called twice only when its call was in flight on the dead replica.
  const calls = new Map<string, number>()
  for (const c of agent.calls) calls.set(`${c.session}/${c.task}`, (calls.get(`${c.session}/${c.task}`) ?? 0) + 1)
  const twice = [...calls].filter(([, n]) => n > 1).map(([key]) => key)
  t.ok(twice.every((key) => theirs.has(key.split('/')[0] as string)), `tasks called twice (${twice.length}) are the dead replica's in-flight ones`)
  t.ok(twice.length <= theirs.size, 'at most one per session it ran')
  t.same(runTasks.filter((task) => task.result !== null && !task.result.startsWith('by f')).map((task) => `${task.session}/${task.id}`), [], 'results are agent results')
})

t.test('fencing: a replica stopped (SIGSTOP) past its lease, then woken, never overwrites the new owner\'s work and logs the lost lease', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  // The stopped replica's first call is held; every other call is answered at once.
  agent.behave((c) => (c.replica === 'p0' ? { hold: true } : {}))
  const set = await replicaSet(t, url, agent, SETTINGS)
  const p0 = await set.start('p0')
  const p1 = await set.start('p1')
  t.equal((await call(p1, 'POST', `${API}/create`, { session_id: 'fenced', instructions: '1. a\n2. b\n3. c' })).status, 200)
  t.equal((await call(p0, 'POST', `${API}/execute-all`, { session_id: 'fenced', wait: false })).status, 202)
  const held = await agent.waitForCall((c) => c.replica === 'p0', 10_000)
  p0.child.kill('SIGSTOP')
  t.teardown(() => { p0.child.kill('SIGCONT') })
  await waitFor('p1 to take the session over and finish it', async () => {
    const row = (await storedRows(url)).get('fenced')
    return row !== undefined && row.tasks.every((task) => task.status === 'Completed') && row.owner === null
  }, 20_000)
  const before = (await storedRows(url)).get('fenced') as StoredRow
  t.same(before.tasks.map((task) => task.result), ['by p1', 'by p1', 'by p1'], 'p1 did the work')
  t.equal(before.tasks[0]?.interruptions, 1, 'the interrupted task counted once')

  // p0 wakes with its agent's answer waiting: a late result for a session that is no longer its.
  agent.release(() => 'late from p0')
  p0.child.kill('SIGCONT')
  await waitFor('p0 to log the lost lease', () => logLines(p0.stdout()).some((line) => line.msg === 'Lost the lease of a running session; its execution stops here and goes on where the lease is' && line.session_id === 'fenced'), 10_000)
  await sleep(LEASE_MS)
  const after = (await storedRows(url)).get('fenced') as StoredRow
  t.equal(after.version, before.version, 'not one write from p0 since')
  t.same(after.tasks.map((task) => task.result), ['by p1', 'by p1', 'by p1'], 'the late result was refused')
  t.equal(held.task, after.tasks[0]?.id, 'the held call was the first task\'s')
  t.equal(agent.calls.filter((c) => c.replica === 'p0').length, 1, 'p0 called no agent again')
  t.match((await call(p0, 'GET', `${API}/progress?session_id=fenced`)).body, { completed: 3, all_done: true, running: false }, 'p0 serves the new owner\'s state')
  t.equal(p0.exit(), null, 'p0 is still up')
})

t.test('a replica cut off from the database: unready, stops its runs before its lease runs out, they move on, and it recovers without a double write', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { proxy, url: proxied } = await throughProxy(t, url)
  const agent = await recordingAgent(t)
  agent.behave(() => ({ delayMs: 100 }))
  const set = await replicaSet(t, url, agent, SETTINGS)
  // Its write-backs owed from the cut are tried again within a second once the database is back (the backoff would otherwise have grown over the cut).
  const cut = await set.start('cut', { DATABASE_URL: proxied, TASK_DB_STATEMENT_TIMEOUT_MS: '1000', TASK_RUN_RETRY_MAX_MS: '1000' })
  const other = await set.start('other')
  t.equal((await call(other, 'POST', `${API}/create`, { session_id: 'far', instructions: Array.from({ length: 30 }, (_, i) => `${i + 1}. t${i}`).join('\n') })).status, 200)
  t.equal((await call(cut, 'POST', `${API}/execute-all`, { session_id: 'far', wait: false })).status, 202)
  await waitFor('the run under way on the cut-off replica', () => agent.calls.filter((c) => c.replica === 'cut').length >= 3, 10_000)

  proxy.stall()
  const cutAt = Date.now()
  await waitFor('/ready 503 on the cut-off replica', async () => (await caller(3000)(cut, 'GET', '/ready').catch(() => ({ status: 0 }))).status === 503, 10_000)
  t.pass('it went unready')
  const moved = await agent.waitForCall((c) => c.replica === 'other' && c.session === 'far', 20_000)
  t.ok(moved.at - cutAt <= FAILOVER_BOUND_MS + 1000, `the run moved to the other replica ${moved.at - cutAt} ms after the cut`)
  const lastCut = Math.max(...agent.calls.filter((c) => c.replica === 'cut').map((c) => c.at))
  t.ok(lastCut < moved.at, 'the cut-off replica made no agent call once the other one had the session')
  await waitFor('the run to finish on the other replica', async () => done(await storedRows(url)), 30_000)

  proxy.pass()
  await waitFor('/ready 200 again', async () => (await call(cut, 'GET', '/ready').catch(() => ({ status: 0 }))).status === 200, 20_000)
  t.pass('it recovered once the database was back')
  await sleep(LEASE_MS)
  const row = (await storedRows(url)).get('far') as StoredRow
  t.same(row.tasks.filter((task) => task.status !== 'Completed').map((task) => task.id), [], 'every task Completed')
  const callers = new Map(agent.calls.filter((c) => c.answered).map((c) => [c.task, c.replica]))
  const wrong = row.tasks.filter((task) => task.result !== `by ${callers.get(task.id) ?? '?'}` && !(task.result === 'by cut' && (task.interruptions ?? 0) === 0))
  t.same(wrong.map((task) => `${task.id}: ${task.result ?? ''}`), [], 'each result is that of a call made while its replica held the session')
  const byCut = row.tasks.filter((task) => task.result === 'by cut')
  t.ok(byCut.every((task) => Date.parse(task.completed_at ?? '') <= cutAt + LEASE_MS), 'the cut-off replica wrote nothing after its lease ran out')
  t.equal(row.owner, null, 'no lease left held')
  // Until its owed write-back is settled (refused by the fence: the stored state is adopted), it serves what it acknowledged.
  const served = await waitFor('the recovered replica to serve the finished session', async () => {
    const progress = (await call(cut, 'GET', `${API}/progress?session_id=far`)).body
    return progress.all_done === true && progress
  }, 10_000)
  t.match(served, { all_done: true, completed: 30 }, 'the recovered replica serves the finished session')
})

t.test('torture with replicas: rounds of kill -9 and restart under concurrent creates and executes: nothing acknowledged lost or duplicated', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  agent.behave(() => ({ delayMs: 5 }))
  const set = await replicaSet(t, url, agent, SETTINGS)
  const names = ['k0', 'k1', 'k2']
  const servers = new Map<string, ServerProcess>()
  for (const name of names) servers.set(name, await set.start(name))
  const sessions = ['q0', 'q1', 'q2', 'q3', 'q4', 'q5']
  const ackedCreates: Array<{ session: string, ids: string[] }> = []
  const ackedExecutes: Array<{ session: string, id: string }> = []
  const unexpected: string[] = []
  const worker = async (w: number, until: () => boolean): Promise<void> => {
    for (let n = 0; !until(); n++) {
      const live = [...servers.values()].filter((server) => server.exit() === null)
      const server = live[Math.floor(Math.random() * live.length)]
      if (server === undefined) return
      const session = sessions[Math.floor(Math.random() * sessions.length)] as string
      try {
        if (Math.random() < 0.5) {
          const res = await call(server, 'POST', `${API}/create`, { session_id: session, tasks: [{ instruction: `w${w} n${n} a` }, { instruction: `w${w} n${n} b` }] })
          if (res.status === 200) ackedCreates.push({ session, ids: res.body.task_ids as string[] })
          else if (server.exit() === null && res.status !== 503) unexpected.push(`create: ${res.status} ${JSON.stringify(res.body)}`)
        } else {
          const res = await call(server, 'POST', `${API}/execute`, { session_id: session })
          if (res.status === 200) ackedExecutes.push({ session, id: res.body.task_id as string })
          else if (server.exit() === null && ![404, 409, 503].includes(res.status)) unexpected.push(`execute: ${res.status} ${JSON.stringify(res.body)}`)
        }
      } catch {
        // Cut off by a kill: not acknowledged.
      }
    }
  }
  for (let round = 0; round < 3; round++) {
    const victim = names[round % names.length] as string
    let killed = false
    const workers = Array.from({ length: 6 }, async (_, w) => worker(w, () => killed))
    await sleep(400 + Math.floor(Math.random() * 400))
    const server = servers.get(victim) as ServerProcess
    server.child.kill('SIGKILL')
    await server.exited
    await sleep(100)
    killed = true
    await Promise.all(workers)
    servers.set(victim, await set.start(victim))
  }
  // Every run the kills interrupted is taken over (the restarted replica keeps its id).
  await waitFor('no task left InProgress', async () => [...(await storedRows(url)).values()].every((row) => row.owner === null && row.tasks.every((task) => task.status !== 'InProgress')), LEASE_MS * 5)
  const stored = await storedRows(url)
  const missing = ackedCreates.filter(({ session, ids }) => ids.some((id) => !(stored.get(session)?.tasks ?? []).some((task) => task.id === id)))
  const notDone = ackedExecutes.filter(({ session, id }) => stored.get(session)?.tasks.find((task) => task.id === id)?.status !== 'Completed')
  const duplicated = [...stored].filter(([, row]) => new Set(row.tasks.map((task) => task.id)).size !== row.tasks.length).map(([id]) => id)
  t.ok(ackedCreates.length > 0 && ackedExecutes.length > 0, `acknowledged: ${ackedCreates.length} creates, ${ackedExecutes.length} executes`)
  t.same(missing, [], 'every acknowledged create is in the database')
  t.same(notDone, [], 'every acknowledged execute\'s task is Completed there')
  t.same(duplicated, [], 'no task id twice within a session')
  const completedTwice = [...stored].flatMap(([id, row]) => row.tasks.filter((task) => task.status === 'Completed' && task.attempts > 1 + (task.interruptions ?? 0)).map((task) => `${id}/${task.id}`))
  t.same(completedTwice, [], 'no task run more often than its interruptions explain')
  t.same(unexpected, [], 'no request failed for another reason than a kill')
})

t.test('a cancel asked while the replica running the session is dead is applied by the replica that claims it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  agent.behave((c) => (c.replica === 'd0' ? { hold: true } : {}))
  const set = await replicaSet(t, url, agent, SETTINGS)
  const d0 = await set.start('d0')
  const d1 = await set.start('d1')
  t.equal((await call(d1, 'POST', `${API}/create`, { session_id: 'orphan', instructions: '1. a\n2. b\n3. c' })).status, 200)
  t.equal((await call(d0, 'POST', `${API}/execute-all`, { session_id: 'orphan', wait: false })).status, 202)
  const held = await agent.waitForCall((c) => c.session === 'orphan', 10_000)
  d0.child.kill('SIGKILL')
  await d0.exited
  const started = Date.now()
  const cancelled = await call(d1, 'POST', `${API}/cancel`, { session_id: 'orphan' })
  t.equal(cancelled.status, 200, `cancel answered after ${Date.now() - started} ms`)
  t.equal(cancelled.body.cancelled_task_id, held.task, 'naming the task the dead replica was running')
  t.match(cancelled.body.progress, { failed: 1, pending: 2, in_progress: 0 })
  await sleep(LEASE_MS)
  const row = (await storedRows(url)).get('orphan') as StoredRow
  t.equal(row.background, false, 'the background run ended rather than resumed')
  t.equal(row.owner, null, 'no lease held')
  t.equal(agent.calls.filter((c) => c.session === 'orphan').length, 1, 'no agent called again')
  t.match(row.tasks[0], { status: 'Failed', error: 'cancelled' })
})

t.test('a cancel whose save fails is not answered 200 and stays asked: once saves work, the claiming replica applies it rather than resuming the run', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  agent.behave((c) => (c.replica === 'f0' ? { hold: true } : {}))
  const set = await replicaSet(t, url, agent, SETTINGS)
  const f0 = await set.start('f0')
  const f1 = await set.start('f1')
  t.equal((await call(f1, 'POST', `${API}/create`, { session_id: 'orphan', instructions: '1. a\n2. b\n3. c' })).status, 200)
  t.equal((await call(f0, 'POST', `${API}/execute-all`, { session_id: 'orphan', wait: false })).status, 202)
  const held = await agent.waitForCall((c) => c.session === 'orphan', 10_000)
  // Every save of the session's document is refused from now on (its lease still changes).
  const db = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 0 }))
  await db.connect()
  t.teardown(() => db.end())
  await db.query(`CREATE FUNCTION taskvault.refuse_save() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refusing this save'; END $$;
    CREATE TRIGGER refuse_save BEFORE UPDATE ON taskvault.sessions FOR EACH ROW
      WHEN (NEW.session_id = 'orphan' AND NEW.version IS DISTINCT FROM OLD.version) EXECUTE FUNCTION taskvault.refuse_save()`)
  f0.child.kill('SIGKILL')
  await f0.exited
  const cancelled = await call(f1, 'POST', `${API}/cancel`, { session_id: 'orphan' })
  t.not(cancelled.status, 200, `the cancel was not applied, and is not answered as if it were: ${cancelled.status} ${JSON.stringify(cancelled.body)}`)
  t.ok(cancelled.status === 503 || cancelled.status === 409, 'a 503 (its save failed) or a 409 (still asked, not yet applied)')
  await sleep(LEASE_MS + SWEEP_MS)
  t.equal((await db.query<{ asked: boolean }>("SELECT cancel_requested AS asked FROM taskvault.sessions WHERE session_id = 'orphan' AND archived_at IS NULL")).rows[0]?.asked, true, 'the cancel stays asked in the row while saves fail')
  await db.query('DROP TRIGGER refuse_save ON taskvault.sessions')
  await waitFor('the cancel to be applied', async () => ((await storedRows(url)).get('orphan') as StoredRow).tasks[0]?.status === 'Failed', 15_000)
  await sleep(LEASE_MS)
  const row = (await storedRows(url)).get('orphan') as StoredRow
  t.match(row.tasks[0], { id: held.task, status: 'Failed', error: 'cancelled' }, 'the task it ran is cancelled')
  t.equal(row.background, false, 'the background run ended rather than resumed')
  t.equal(agent.calls.filter((c) => c.session === 'orphan').length, 1, 'no agent called again')
})
