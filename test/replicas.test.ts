/**
 * Several replicas on one PostgreSQL (issue 14), as real `node dist/server.js` processes: any
 * replica answers any request and shows every change acknowledged anywhere; one replica at a
 * time executes a session, so every task's agent is called exactly once under 1,000 concurrent
 * executes spread over three replicas; cancel and delete from any replica; live events from
 * every replica on every replica, resumable anywhere. The failover tests
 * (kill -9, SIGSTOP, a cut-off replica, rounds of kills) are in replicas-failover.test.ts.
 */
import t from 'tap'
import { API, waitFor } from './helper.js'
import { testDatabase } from './postgres.js'
import { recordingAgent, replicaSet, storedRows } from './replicas.js'
import { call, caller, logMessages, type ServerProcess } from './server-process.js'
import { openStream } from './sse-client.js'

// Nothing here waits for a lease to run out: leases long enough that no load on a slow machine
// could make a live replica miss its renewals.
const SETTINGS = { TASK_LEASE_MS: '10000', TASK_SWEEP_INTERVAL_MS: '300' }

t.test('read-your-writes: a change acknowledged by one replica is what every other one answers next; list and stats agree', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  const set = await replicaSet(t, url, agent, SETTINGS)
  const [a, b, c] = await Promise.all(['ra', 'rb', 'rc'].map(async (name) => set.start(name))) as [ServerProcess, ServerProcess, ServerProcess]

  const created = await call(a, 'POST', `${API}/create`, { session_id: 's1', instructions: '1. Research\n2. Design' })
  t.equal(created.status, 200)
  const seen = await call(b, 'GET', `${API}/list?session_id=s1`)
  t.equal(seen.status, 200, 'created on a, found on b at once')
  t.equal(seen.body.total, 2)

  const more = await call(c, 'POST', `${API}/create`, { session_id: 's1', instructions: '3. Implement' })
  t.equal(more.status, 200, 'appended on c to a session c never read')
  t.equal((await call(a, 'GET', `${API}/progress?session_id=s1`)).body.total, 3, 'a shows c\'s append')

  const executed = await call(b, 'POST', `${API}/execute`, { session_id: 's1' })
  t.equal(executed.status, 200, 'executed on b')
  t.equal(executed.body.result, 'by rb', 'b called the agent')
  const progress = await call(c, 'GET', `${API}/progress?session_id=s1`)
  t.match(progress.body, { completed: 1, pending: 2, running: false }, 'c shows b\'s execute')
  const all = await call(a, 'POST', `${API}/execute-all`, { session_id: 's1' })
  t.equal(all.status, 200)
  t.same(all.body.results.map((r: { result: string }) => r.result), ['by ra', 'by ra'])

  for (const id of ['s2', 's3']) t.equal((await call(c, 'POST', `${API}/create`, { session_id: id, instructions: 'x' })).status, 200)
  const lists = await Promise.all([a, b, c].map(async (server) => (await call(server, 'GET', `${API}/list?session_id=all`)).body))
  t.same(lists[1], lists[0], 'b lists what a lists')
  t.same(lists[2], lists[0], 'c lists what a lists')
  t.same(lists[0].sessions.map((s: { session_id: string }) => s.session_id).sort(), ['s1', 's2', 's3'])
  const counts = await Promise.all([a, b, c].map(async (server) => {
    const { storage, ...rest } = (await call(server, 'GET', `${API}/stats`)).body
    return { ...rest, replicas: storage.replicas }
  }))
  t.same(counts[1], counts[0], 'b counts what a counts')
  t.same(counts[2], counts[0], 'c counts what a counts')
  t.match(counts[0], { total_sessions: 3, total_tasks: 5, completed_tasks: 3, replicas: ['ra', 'rb', 'rc'] })

  t.equal((await call(b, 'DELETE', `${API}/sessions/s2`)).status, 204, 'deleted on b')
  t.equal((await call(a, 'GET', `${API}/progress?session_id=s2`)).status, 404, 'gone on a at once')
  t.equal((await call(c, 'POST', `${API}/execute`, { session_id: 's2' })).status, 404, 'and on c')
  const recreated = await call(a, 'POST', `${API}/create`, { session_id: 's2', instructions: 'again' })
  t.equal(recreated.status, 200, 'a creates it again, though its memory held the old one')
  t.equal((await call(c, 'GET', `${API}/progress?session_id=s2`)).body.total, 1, 'as a new session of one task')
})

t.test('exactly once: 50 sessions × 20 tasks, 1,000 concurrent execute and execute-all over 3 replicas: one agent call per task, 409s only as documented', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  agent.behave(() => ({ delayMs: 1 + Math.floor(Math.random() * 4) }))
  const set = await replicaSet(t, url, agent, SETTINGS)
  const servers = await Promise.all(['r0', 'r1', 'r2'].map(async (name) => set.start(name)))
  const sessions = Array.from({ length: 50 }, (_, i) => `x${i}`)
  const instructions = Array.from({ length: 20 }, (_, i) => `${i + 1}. step ${i + 1}`).join('\n')
  await Promise.all(sessions.map(async (id, i) => {
    const res = await call(servers[i % 3] as ServerProcess, 'POST', `${API}/create`, { session_id: id, instructions })
    t.equal(res.status, 200)
  }))

  const slow = caller(120_000)
  const statuses = new Map<string, number>()
  const unexpected: string[] = []
  await Promise.all(Array.from({ length: 1000 }, async (_, i) => {
    const server = servers[i % 3] as ServerProcess
    const session = sessions[Math.floor(Math.random() * sessions.length)] as string
    const kind = Math.random() < 0.7 ? 'execute' : 'execute-all'
    const res = await slow(server, 'POST', `${API}/${kind}`, { session_id: session })
    const key = `${kind} ${res.status}${res.status === 409 ? ` ${res.body.code as string}` : ''}`
    statuses.set(key, (statuses.get(key) ?? 0) + 1)
    const documented = res.status === 200 || (res.status === 409 && (res.body.code === 'SESSION_BUSY' || res.body.code === 'NO_PENDING_TASK'))
    if (!documented) unexpected.push(`${kind} ${session} on ${server.base}: ${res.status} ${JSON.stringify(res.body)}`)
  }))
  t.same(unexpected, [], 'every answer is 200, or 409 SESSION_BUSY / NO_PENDING_TASK')
  t.ok((statuses.get('execute 200') ?? 0) > 0 && (statuses.get('execute-all 200') ?? 0) > 0, `both kinds ran: ${JSON.stringify(Object.fromEntries(statuses))}`)
  // What the burst left pending is run now, one execute-all per session, on any replica.
  for (const [i, id] of sessions.entries()) {
    const res = await slow(servers[i % 3] as ServerProcess, 'POST', `${API}/execute-all`, { session_id: id })
    t.equal(res.status, 200, `${id}: the rest ran`)
  }

  const stored = await storedRows(url)
  const tasks = [...stored].flatMap(([session, row]) => row.tasks.map((task) => ({ session, ...task })))
  t.equal(tasks.length, 1000, '1,000 tasks stored')
  t.same(tasks.filter((task) => task.status !== 'Completed').map((task) => `${task.session}/${task.id} ${task.status}`), [], 'every task Completed')
  const perTask = new Map<string, string[]>()
  for (const c of agent.calls) perTask.set(`${c.session}/${c.task}`, [...(perTask.get(`${c.session}/${c.task}`) ?? []), c.replica])
  t.equal(agent.calls.length, 1000, 'exactly 1,000 agent calls')
  t.same([...perTask].filter(([, callers]) => callers.length !== 1), [], 'one agent call per task')
  const wrong = tasks.filter((task) => task.attempts !== 1 || task.result !== `by ${(perTask.get(`${task.session}/${task.id}`) ?? [])[0] ?? ''}`)
  t.same(wrong.map((task) => `${task.session}/${task.id}`), [], 'each task completed once, with the result of its one call')
  t.ok(new Set(agent.calls.map((c) => c.replica)).size === 3, 'every replica executed some')
  t.same([...stored].filter(([, row]) => row.owner !== null).map(([id]) => id), [], 'no lease left held')
})

t.test('cancel and delete from any replica while another runs the session', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  agent.behave((c) => (c.session === 'busy' ? { hold: true } : {}))
  const set = await replicaSet(t, url, agent, SETTINGS)
  const [a, b, c] = await Promise.all(['ca', 'cb', 'cc'].map(async (name) => set.start(name))) as [ServerProcess, ServerProcess, ServerProcess]
  t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'busy', instructions: '1. a\n2. b\n3. c' })).status, 200)
  const started = await call(a, 'POST', `${API}/execute-all`, { session_id: 'busy', wait: false })
  t.equal(started.status, 202, 'a background run on a')
  const first = await agent.waitForCall((x) => x.session === 'busy', 10_000)
  t.equal(first.replica, 'ca')

  const execute = await call(b, 'POST', `${API}/execute`, { session_id: 'busy' })
  t.equal(execute.status, 409, 'execute on b: busy')
  t.match(execute.body, { code: 'SESSION_BUSY', message: /replica 'ca'/u }, 'naming the replica that runs it')
  const removed = await call(c, 'DELETE', `${API}/sessions/busy`)
  t.equal(removed.status, 409, 'delete on c: busy')
  t.match(removed.body, { code: 'SESSION_BUSY', message: /replica 'ca'/u })
  const retried = await call(c, 'POST', `${API}/retry`, { session_id: 'busy' })
  t.equal(retried.status, 409, 'retry on c: busy')
  t.match((await call(c, 'GET', `${API}/progress?session_id=busy`)).body, { running: true, in_progress: 1 }, 'c says it runs')
  t.match((await call(b, 'GET', `${API}/list?session_id=all`)).body.sessions, [{ session_id: 'busy', running: true }], 'b lists it running')

  const cancelled = await call(b, 'POST', `${API}/cancel`, { session_id: 'busy' })
  t.equal(cancelled.status, 200, 'cancel on b')
  t.equal(cancelled.body.cancelled_task_id, first.task, 'names the task a was running')
  t.match(cancelled.body.progress, { failed: 1, pending: 2, in_progress: 0 })
  t.match((await call(c, 'GET', `${API}/progress?session_id=busy`)).body, { running: false, failed: 1, pending: 2 }, 'c sees it stopped')
  await waitFor('the cancel in a\'s log', () => logMessages(a.stdout()).includes('Cancel asked on another replica'))
  t.equal(agent.calls.filter((x) => x.session === 'busy').length, 1, 'no further agent call')
  t.equal((await call(b, 'POST', `${API}/cancel`, { session_id: 'busy' })).status, 409, 'a second cancel: nothing runs')

  t.equal((await call(c, 'DELETE', `${API}/sessions/busy`)).status, 204, 'delete on c once it stopped')
  t.equal((await call(a, 'GET', `${API}/progress?session_id=busy`)).status, 404, 'gone on a')
  const stored = await storedRows(url)
  t.notOk(stored.has('busy'), 'and in the database')
})

t.test('live events: a stream on any replica shows every replica\'s events, and resumes by id on another replica', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  const set = await replicaSet(t, url, agent, SETTINGS)
  const [a, b] = await Promise.all(['ea', 'eb'].map(async (name) => set.start(name))) as [ServerProcess, ServerProcess]
  const onB = await openStream(t, `${b.base}${API}/events?session_id=ev`)
  t.equal(onB.status, 200)
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'ev', instructions: '1. one\n2. two\n3. three' })).status, 200)
  t.equal((await call(a, 'POST', `${API}/execute`, { session_id: 'ev' })).status, 200, 'executed on a')
  const seen = await onB.until((events) => events.some((e) => e.event === 'task.completed'), 10_000)
  t.same(seen.filter((e) => e.event !== 'progress').map((e) => e.event), ['session.created', 'tasks.added', 'task.started', 'task.completed'], 'b\'s client saw a\'s events, in order')
  const resumeFrom = seen.at(-1)?.id as string
  onB.close()

  // Missed while disconnected: a second task run on b, then resumed on a from b's last id.
  t.equal((await call(b, 'POST', `${API}/execute`, { session_id: 'ev' })).status, 200, 'executed on b')
  const onA = await openStream(t, `${a.base}${API}/events?session_id=ev`, { 'last-event-id': resumeFrom })
  const replayed = await onA.until((events) => events.filter((e) => e.event === 'task.completed').length >= 1, 10_000)
  t.notOk(replayed.some((e) => e.event === 'reset'), 'no reset: the id means the same on a')
  t.same(replayed.filter((e) => e.event !== 'progress').map((e) => e.event), ['task.started', 'task.completed'], 'a replays exactly what was missed')
  const ids = [...seen, ...replayed].map((e) => Number((e.id ?? '').split('-').at(-1)))
  t.ok(ids.every((id, i) => i === 0 || id > (ids[i - 1] as number)), 'ids grow across replicas')
  onA.close()

  // A replica started after all of it (a rolling deploy) holds the log's latest events: the same id resumes there too.
  const c = await set.start('ec')
  const onC = await openStream(t, `${c.base}${API}/events?session_id=ev`, { 'last-event-id': resumeFrom })
  const late = await onC.until((events) => events.filter((e) => e.event === 'task.completed').length >= 1 || events.some((e) => e.event === 'reset'), 10_000)
  t.notOk(late.some((e) => e.event === 'reset'), 'no reset on a replica that started after the events')
  t.same(late.filter((e) => e.event !== 'progress').map((e) => e.event), ['task.started', 'task.completed'], 'it replays what was missed')
  onC.close()
})

t.test('many idle runs, sweeps every 100 ms: no sweep takes a live run, on its own replica or another (one call per task, no lost lease)', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  agent.behave(() => ({ hold: true }))
  // Every run's call in flight at once: room past TASK_MAX_AGENT_CALLS' default (64 a replica).
  const set = await replicaSet(t, url, agent, { TASK_LEASE_MS: '6000', TASK_SWEEP_INTERVAL_MS: '100', TASK_MAX_AGENT_CALLS: '200' })
  const servers = await Promise.all(['i0', 'i1', 'i2'].map(async (name) => set.start(name)))
  const sessions = Array.from({ length: 200 }, (_, i) => `idle${i}`)
  await Promise.all(sessions.map(async (id, i) => {
    const server = servers[i % 3] as ServerProcess
    t.equal((await call(server, 'POST', `${API}/create`, { session_id: id, instructions: 'wait' })).status, 200)
    t.equal((await call(servers[(i + 1) % 3] as ServerProcess, 'POST', `${API}/execute-all`, { session_id: id, wait: false })).status, 202)
  }))
  await waitFor('every run calling its agent', () => new Set(agent.calls.map((c) => c.session)).size === sessions.length, 20_000)
  // Several lease periods of renewals and sweeps while every run waits on its agent.
  await new Promise((resolve) => setTimeout(resolve, 5000))
  const perSession = new Map<string, string[]>()
  for (const c of agent.calls) perSession.set(c.session, [...(perSession.get(c.session) ?? []), c.replica])
  t.same([...perSession].filter(([, callers]) => callers.length !== 1).map(([id, callers]) => `${id}: ${callers.join(',')}`), [], 'one call per session while they wait')
  const stored = await storedRows(url)
  t.same(sessions.filter((id) => stored.get(id)?.owner !== perSession.get(id)?.[0]), [], 'each held by the replica that called')
  agent.release()
  await waitFor('every run to end', async () => [...(await storedRows(url)).values()].every((row) => !row.background && row.owner === null), 20_000)
  t.equal(agent.calls.length, sessions.length, 'still one call per task')
  const lost = servers.flatMap((server) => logMessages(server.stdout()).filter((msg) => /lease|interrupted/iu.test(msg)))
  t.same(lost, [], 'no lease lost, no task interrupted')
})
