/**
 * Runs over HTTP (app.inject) with a real webhook agent on 127.0.0.1: cancel, background runs
 * (wait:false), and what a shutdown leaves for the next start (resume, interruption limit).
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { AgentError } from '../services/errors.js'
import { createTasks, fakeAgent, ok, readSession, recordCalls, storedTasks, waitFor } from './agents-fakes.js'
import { nodeFs } from '../services/store/fs-seam.js'
import { buildApp } from '../app.js'
import { build, get, post, tempDir } from './helper.js'

t.test('cancel during a synchronous execute-all: the call is aborted, the task Failed "cancelled", the run stops', async (t) => {
  const dir = await tempDir(t)
  let answering = false
  const agent = await fakeAgent(t, () => answering ? ok('second') : 'hang')
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base } } })
  const [first, second] = await createTasks(app, 'cancel-sync', [{ instruction: 'stuck' }, { instruction: 'later' }])
  const running = post(app, '/execute-all', { session_id: 'cancel-sync' })
  await agent.waitForRequests(1)
  t.equal((await get(app, '/progress?session_id=cancel-sync')).json().running, true, 'progress says running')

  const cancelled = await post(app, '/cancel', { session_id: 'cancel-sync' })
  t.equal(cancelled.statusCode, 200)
  t.same(cancelled.json(), {
    session_id: 'cancel-sync',
    cancelled_task_id: first,
    progress: { total: 2, completed: 0, failed: 1, pending: 1, in_progress: 0, all_done: false, percentage: 50 }
  })
  const res = await running
  t.equal(res.statusCode, 200)
  t.match(res.json(), { total_executed: 1, results: [{ task_id: first, status: 'Failed', error: 'cancelled', result: null }] }, 'the run stopped after the cancelled task')
  await agent.requests[0]!.closed
  t.ok(agent.requests[0]!.abandoned(), 'the agent call was aborted')
  t.equal(agent.requests.length, 1, 'the next task was not started')
  const stored = await storedTasks(dir, 'cancel-sync')
  t.match(stored, [{ id: first, status: 'Failed', error: 'cancelled', attempts: 1 }, { id: second, status: 'Pending', attempts: 0 }])
  t.equal((await get(app, '/progress?session_id=cancel-sync')).json().running, false)

  const again = await post(app, '/cancel', { session_id: 'cancel-sync' })
  t.equal(again.statusCode, 409)
  t.match(again.json(), { statusCode: 409, code: 'NOT_RUNNING', error: 'Conflict', message: String })

  answering = true
  const rest = await post(app, '/execute-all', { session_id: 'cancel-sync' })
  t.match(rest.json(), { total_executed: 1, results: [{ task_id: second, status: 'Completed', result: 'second' }] }, 'the session carries on')
})

t.test('TASK_MAX_AGENT_CALLS: calls past it wait their turn with their tasks Pending; a cancel ends the wait', async (t) => {
  const dir = await tempDir(t)
  const answers: Array<() => void> = []
  const agent = await fakeAgent(t, async (req) => {
    await new Promise<void>((resolve) => answers.push(resolve))
    return ok(`done ${String(req.json.task.instruction)}`)
  })
  const app = await build(t, { dir, config: { TASK_MAX_AGENT_CALLS: 2 }, agents: { default: { kind: 'webhook', url: agent.base, timeout_ms: 30_000 } } })
  for (const id of ['s1', 's2', 's3', 's4']) await createTasks(app, id, [{ instruction: id }])
  for (const id of ['s1', 's2', 's3', 's4']) t.equal((await post(app, '/execute-all', { session_id: id, wait: false })).statusCode, 202)
  await agent.waitForRequests(2)
  await sleep(300)
  t.equal(agent.requests.length, 2, 'two calls in flight, no more')
  const statuses = async (): Promise<string[]> => Promise.all(['s1', 's2', 's3', 's4'].map(async (id) => (await get(app, `/list?session_id=${id}`)).json().tasks[0].status as string))
  t.same((await statuses()).filter((status) => status === 'InProgress').length, 2, 'two tasks InProgress')
  t.same((await statuses()).filter((status) => status === 'Pending').length, 2, 'the others still Pending')
  const waiting = ['s1', 's2', 's3', 's4'].filter((id) => !agent.requests.some((req) => req.json.session_id === id))
  const cancelled = await post(app, '/cancel', { session_id: waiting[0] })
  t.equal(cancelled.statusCode, 200, 'a run waiting for a slot is cancelled at once')
  t.equal(cancelled.json().cancelled_task_id, null, 'no task was running')
  t.match((await storedTasks(dir, waiting[0] as string))[0], { status: 'Pending', attempts: 0 }, 'its task never started')
  for (const answer of answers.splice(0)) answer()
  await agent.waitForRequests(3)
  t.equal(agent.requests[2]?.json.session_id, waiting[1], 'the slot went to the run still waiting')
  await waitFor('the last call', async () => answers.length === 1)
  for (const answer of answers.splice(0)) answer()
  await waitFor('every run to end', async () => (await get(app, '/stats')).json().completed_tasks === 3)
  t.equal(agent.requests.length, 3, 'the cancelled session never called its agent')
})

t.test('TASK_MAX_AGENT_CALLS: a single execute waiting for a slot, cancelled: the cancel answers 200, the execute 409 CANCELLED, the task stays Pending', async (t) => {
  const dir = await tempDir(t)
  const answers: Array<() => void> = []
  const agent = await fakeAgent(t, async () => {
    await new Promise<void>((resolve) => answers.push(resolve))
    return ok('done')
  })
  const app = await build(t, { dir, config: { TASK_MAX_AGENT_CALLS: 1 }, agents: { default: { kind: 'webhook', url: agent.base, timeout_ms: 30_000 } } })
  for (const id of ['holder', 'waiter']) await createTasks(app, id, [{ instruction: id }])
  const holding = post(app, '/execute', { session_id: 'holder' })
  await agent.waitForRequests(1)
  const waiting = post(app, '/execute', { session_id: 'waiter' })
  await waitFor('the second execute to be running', async () => (await get(app, '/progress?session_id=waiter')).json().running === true)
  const cancelled = await post(app, '/cancel', { session_id: 'waiter' })
  t.equal(cancelled.statusCode, 200, cancelled.body)
  t.equal(cancelled.json().cancelled_task_id, null, 'no task was running')
  const answered = await waiting
  t.equal(answered.statusCode, 409, answered.body)
  t.match(answered.json(), { code: 'CANCELLED', message: /cancelled before it started a task; nothing ran/ })
  t.match((await storedTasks(dir, 'waiter'))[0], { status: 'Pending', attempts: 0 }, 'its task never started')
  for (const answer of answers.splice(0)) answer()
  t.equal((await holding).statusCode, 200)
  t.equal(agent.requests.length, 1, 'the cancelled execute never called its agent')
})

t.test('TASK_MAX_AGENT_CALLS: a shutdown ends the wait for a slot; the waiting run carries on after restart', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => ok('unused'))
  // The first call of 'first' holds the only slot until the test lets it go.
  const hold: Array<() => void> = []
  agent.handler = async (req, index) => {
    if (index === 0) await new Promise<void>((resolve) => hold.push(resolve))
    return ok(`done ${String(req.json.session_id)}`)
  }
  const agents = { default: { kind: 'webhook' as const, url: agent.base, timeout_ms: 30_000 } }
  const first = await buildApp({ readEnvironment: false, agents, config: { TASK_STORAGE_DIR: dir, TASK_SHUTDOWN_GRACE_MS: 300, TASK_MAX_AGENT_CALLS: 1 } })
  await createTasks(first, 'first', [{ instruction: 'a' }])
  await createTasks(first, 'second', [{ instruction: 'b' }])
  t.equal((await post(first, '/execute-all', { session_id: 'first', wait: false })).statusCode, 202)
  await agent.waitForRequests(1)
  t.equal((await post(first, '/execute-all', { session_id: 'second', wait: false })).statusCode, 202)
  await sleep(100)
  const started = Date.now()
  await first.close()
  t.ok(Date.now() - started < 5000, 'close does not wait on the slot')
  t.match((await storedTasks(dir, 'second'))[0], { status: 'Pending', attempts: 0 }, 'the waiting task never started')
  t.equal(agent.requests.filter((req) => req.json.session_id === 'second').length, 0)
  hold.splice(0).forEach((answer) => answer())
  const again = await build(t, { dir, agents })
  await waitFor('both runs to finish after restart', async () => (await get(again, '/stats')).json().completed_tasks === 2)
  t.match((await storedTasks(dir, 'second'))[0], { status: 'Completed', result: 'done second' })
})

t.test('cancel: 404 unknown session, 409 NOT_RUNNING when idle, 400 bad body; nothing changes', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  await createTasks(app, 'idle', [{ instruction: 'x' }])
  const before = await readSession(dir, 'idle')

  const unknown = await post(app, '/cancel', { session_id: 'nope' })
  t.equal(unknown.statusCode, 404)
  t.match(unknown.json(), { statusCode: 404, code: 'SESSION_NOT_FOUND' })
  const idle = await post(app, '/cancel', { session_id: 'idle' })
  t.equal(idle.statusCode, 409)
  t.match(idle.json(), { statusCode: 409, code: 'NOT_RUNNING' })
  t.equal((await post(app, '/cancel', { session_id: 'idle', force: true })).statusCode, 400, 'unknown fields are refused')
  t.equal((await post(app, '/cancel', {})).statusCode, 400)
  t.same(await readSession(dir, 'idle'), before, 'the session file is unchanged')
})

t.test('cancel during the backoff between retries fails the task at once', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => ({ status: 503, body: 'busy' }))
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base, max_attempts: 3, backoff_ms: 60_000 } } })
  const calls = recordCalls(app)
  const [id] = await createTasks(app, 'cancel-backoff', [{ instruction: 'x' }])
  const running = post(app, '/execute', { session_id: 'cancel-backoff' })
  await waitFor('the first call to fail', () => calls.length === 1)
  const cancelled = await post(app, '/cancel', { session_id: 'cancel-backoff' })
  t.match(cancelled.json(), { cancelled_task_id: id, progress: { failed: 1 } })
  t.match((await running).json(), { task_id: id, status: 'Failed', error: 'cancelled' })
  t.equal(agent.requests.length, 1, 'no retry after cancel')
  t.match((await storedTasks(dir, 'cancel-backoff'))[0], { status: 'Failed', error: 'cancelled', attempts: 1 })
})

t.test('cancel a background run: the task is Failed "cancelled", the run and its record end', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => 'hang')
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base } } })
  const [first, second] = await createTasks(app, 'cancel-bg', [{ instruction: 'stuck' }, { instruction: 'later' }])
  const started = await post(app, '/execute-all', { session_id: 'cancel-bg', wait: false })
  t.equal(started.statusCode, 202)
  await agent.waitForRequests(1)
  t.type((await readSession(dir, 'cancel-bg')).background_run?.started_at, 'string', 'the run is recorded')

  const cancelled = await post(app, '/cancel', { session_id: 'cancel-bg' })
  t.equal(cancelled.statusCode, 200)
  t.match(cancelled.json(), { session_id: 'cancel-bg', cancelled_task_id: first, progress: { failed: 1, pending: 1, in_progress: 0 } })
  await agent.requests[0]!.closed
  t.ok(agent.requests[0]!.abandoned(), 'the agent call was aborted')
  const progress = (await get(app, '/progress?session_id=cancel-bg')).json()
  t.match(progress, { running: false, failed: 1, pending: 1 })
  const file = await readSession(dir, 'cancel-bg')
  t.notOk('background_run' in file, 'the record is gone: a restart will not resume it')
  t.match(file.session.tasks, [{ id: first, status: 'Failed', error: 'cancelled' }, { id: second, status: 'Pending' }])
  await sleep(100)
  t.equal(agent.requests.length, 1, 'the next task was not started')
  t.equal((await post(app, '/cancel', { session_id: 'cancel-bg' })).statusCode, 409, 'nothing left to cancel')
})

t.test('wait:false answers 202 at once; the run goes on in the background until all_done', async (t) => {
  const dir = await tempDir(t)
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const agent = await fakeAgent(t, async (req) => {
    await gate
    return ok(`done: ${req.json.task.instruction}`, 0.9)
  })
  const app = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base } } })
  await createTasks(app, 'bg', [{ instruction: 'one' }, { instruction: 'two' }, { instruction: 'three' }])
  const res = await post(app, '/execute-all', { session_id: 'bg', wait: false })
  t.equal(res.statusCode, 202)
  t.match(res.json(), { session_id: 'bg', status: 'running', progress: { total: 3, completed: 0, all_done: false } })
  t.same(Object.keys(res.json()).sort(), ['progress', 'session_id', 'status'])
  t.type((await readSession(dir, 'bg')).background_run?.started_at, 'string', 'recorded in the session file before the 202')

  await agent.waitForRequests(1)
  t.match((await get(app, '/progress?session_id=bg')).json(), { running: true, in_progress: 1 })
  t.match((await post(app, '/execute-all', { session_id: 'bg', wait: false })).json(), { statusCode: 409, code: 'SESSION_BUSY' }, 'one run per session')
  t.match((await post(app, '/execute', { session_id: 'bg' })).json(), { statusCode: 409, code: 'SESSION_BUSY' })
  release()

  const seen: number[] = []
  const done = await waitFor('all_done', async () => {
    const progress = (await get(app, '/progress?session_id=bg')).json()
    seen.push(progress.completed)
    return progress.all_done === true && progress
  })
  t.match(done, { completed: 3, failed: 0, percentage: 100 })
  t.same(seen, [...seen].sort((a, b) => a - b), 'progress only moves forward')
  await waitFor('the run to end', async () => (await get(app, '/progress?session_id=bg')).json().running === false)
  const file = await readSession(dir, 'bg')
  t.notOk('background_run' in file, 'the record is cleared when the run ends')
  t.same(file.session.tasks.map((task) => [task.status, task.result]), [['Completed', 'done: one'], ['Completed', 'done: two'], ['Completed', 'done: three']])
})

t.test('wait:false: 404 for an unknown session; a session with nothing pending ends at once', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  t.match((await post(app, '/execute-all', { session_id: 'ghost', wait: false })).json(), { statusCode: 404, code: 'SESSION_NOT_FOUND' })
  await createTasks(app, 'finished', [{ instruction: 'x' }])
  await post(app, '/execute-all', { session_id: 'finished' })
  const res = await post(app, '/execute-all', { session_id: 'finished', wait: false })
  t.equal(res.statusCode, 202)
  await waitFor('the empty run to end', async () => (await get(app, '/progress?session_id=finished')).json().running === false)
  t.notOk('background_run' in await readSession(dir, 'finished'), 'no record left behind')
})

t.test('a background run cut by shutdown resumes after restart, only when TASK_RESUME_ON_START is true', async (t) => {
  const dir = await tempDir(t)
  let answering = false
  const agent = await fakeAgent(t, (req) => answering ? ok(`done: ${req.json.task.instruction}`) : 'hang')
  const agents = { default: { kind: 'webhook', url: agent.base } }
  const first = await build(t, { dir, agents, config: { TASK_SHUTDOWN_GRACE_MS: 100 } })
  const [a] = await createTasks(first, 'resume', [{ instruction: 'a' }, { instruction: 'b' }, { instruction: 'c' }])
  t.equal((await post(first, '/execute-all', { session_id: 'resume', wait: false })).statusCode, 202)
  await agent.waitForRequests(1)
  await first.close()
  let file = await readSession(dir, 'resume')
  t.type(file.background_run?.started_at, 'string', 'the record survives the shutdown')
  t.match(file.session.tasks[0], { id: a, status: 'InProgress', attempts: 1 })

  const paused = await build(t, { dir, agents, config: { TASK_RESUME_ON_START: false } })
  t.match((await get(paused, '/progress?session_id=resume')).json(), { running: false, pending: 3 }, 'TASK_RESUME_ON_START=false: not resumed')
  file = await readSession(dir, 'resume')
  t.type(file.background_run?.started_at, 'string', 'the record is kept for a later start')
  t.match(file.session.tasks[0], { status: 'Pending', interruptions: 1 })
  await paused.close()
  t.equal(agent.requests.length, 1, 'no call while not resumed')

  answering = true
  const resumed = await build(t, { dir, agents })
  await waitFor('the resumed run to finish', async () => {
    const progress = (await get(resumed, '/progress?session_id=resume')).json()
    return progress.all_done === true && progress.running === false
  })
  file = await readSession(dir, 'resume')
  t.notOk('background_run' in file, 'the record is cleared')
  t.match(file.session.tasks, [
    { id: a, status: 'Completed', result: 'done: a', attempts: 2, interruptions: 1 },
    { status: 'Completed', result: 'done: b', attempts: 1 },
    { status: 'Completed', result: 'done: c', attempts: 1 }
  ], 'finished without any client call')
  t.equal(agent.requests.length, 4)
})

t.test('shutdown during a background run: the running task may finish within the grace period, no next task starts, the run resumes after restart', async (t) => {
  const dir = await tempDir(t)
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const agent = await fakeAgent(t, async (req) => {
    if (req.json.task.instruction === 'a') await gate
    return ok(`done: ${req.json.task.instruction}`)
  })
  const agents = { default: { kind: 'webhook', url: agent.base } }
  const first = await build(t, { dir, agents, config: { TASK_SHUTDOWN_GRACE_MS: 10_000 } })
  await createTasks(first, 'graceful', [{ instruction: 'a' }, { instruction: 'b' }])
  await post(first, '/execute-all', { session_id: 'graceful', wait: false })
  await agent.waitForRequests(1)
  const closing = first.close()
  // Shutdown has begun; the running call may still finish.
  await sleep(50)
  release()
  await closing
  let file = await readSession(dir, 'graceful')
  t.match(file.session.tasks, [{ status: 'Completed', result: 'done: a', attempts: 1 }, { status: 'Pending', attempts: 0 }], 'a finished within the grace period; b not started')
  t.type(file.background_run?.started_at, 'string', 'the record stays for the restart')
  t.equal(agent.requests.length, 1)

  const second = await build(t, { dir, agents })
  await waitFor('the resumed run to finish', async () => (await get(second, '/progress?session_id=graceful')).json().running === false &&
    (await readSession(dir, 'graceful')).background_run === undefined)
  file = await readSession(dir, 'graceful')
  t.match(file.session.tasks, [{ status: 'Completed', attempts: 1 }, { status: 'Completed', result: 'done: b', attempts: 1 }])
  t.notOk(file.session.tasks[0]!.interruptions, 'a task that finished in the grace period was not interrupted')
})

t.test('TASK_MAX_INTERRUPTIONS: a task found running that many times is Failed "interrupted N times"; the run goes on', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, (req) => req.json.task.instruction === 'poison' ? 'hang' : ok('fine'))
  const agents = { default: { kind: 'webhook', url: agent.base } }
  const config = { TASK_SHUTDOWN_GRACE_MS: 50, TASK_MAX_INTERRUPTIONS: 2 }
  const first = await build(t, { dir, agents, config })
  const [poison, fine] = await createTasks(first, 'limit', [{ instruction: 'poison' }, { instruction: 'after' }])
  await post(first, '/execute-all', { session_id: 'limit', wait: false })
  await agent.waitForRequests(1)
  await first.close()

  // The background run resumes by itself and calls the agent again: the second interruption.
  const second = await build(t, { dir, agents, config })
  await agent.waitForRequests(2)
  t.match((await storedTasks(dir, 'limit'))[0], { status: 'InProgress', interruptions: 1, attempts: 2 })
  await second.close()

  const third = await build(t, { dir, agents, config })
  await waitFor('the run to finish', async () => (await get(third, '/progress?session_id=limit')).json().all_done === true)
  const tasks = await storedTasks(dir, 'limit')
  t.match(tasks, [
    { id: poison, status: 'Failed', error: 'interrupted 2 times', interruptions: 2, attempts: 2, result: null },
    { id: fine, status: 'Completed', result: 'fine' }
  ])
  t.equal(agent.requests.filter((r) => r.json.task.instruction === 'poison').length, 2, 'not called a third time')
})

t.test('a run left recorded (TASK_RESUME_ON_START=false) ends with the next execute-all that finishes the session', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => 'hang')
  const first = await build(t, { dir, agents: { default: { kind: 'webhook', url: agent.base } }, config: { TASK_SHUTDOWN_GRACE_MS: 50 } })
  await createTasks(first, 'kept', [{ instruction: 'a' }, { instruction: 'b' }])
  t.equal((await post(first, '/execute-all', { session_id: 'kept', wait: false })).statusCode, 202)
  await agent.waitForRequests(1)
  await first.close()

  const paused = await build(t, { dir, config: { TASK_RESUME_ON_START: false } })
  t.type((await readSession(dir, 'kept')).background_run?.started_at, 'string', 'kept while not resumed')
  const res = await post(paused, '/execute-all', { session_id: 'kept' })
  t.equal(res.json().total_executed, 2, 'the echo agent runs both tasks')
  t.notOk('background_run' in await readSession(dir, 'kept'), 'the record is gone, so no later start resumes a finished run')
})

t.test('a cancelled execute-all ends a run left recorded (TASK_RESUME_ON_START=false): the next start does not run the session', async (t) => {
  const dir = await tempDir(t)
  const agent = await fakeAgent(t, () => 'hang')
  const agents = { default: { kind: 'webhook', url: agent.base } }
  const first = await build(t, { dir, agents, config: { TASK_SHUTDOWN_GRACE_MS: 50 } })
  await createTasks(first, 'kept', [{ instruction: 'a' }, { instruction: 'b' }])
  t.equal((await post(first, '/execute-all', { session_id: 'kept', wait: false })).statusCode, 202)
  await agent.waitForRequests(1)
  await first.close()

  const paused = await build(t, { dir, agents, config: { TASK_RESUME_ON_START: false } })
  const running = post(paused, '/execute-all', { session_id: 'kept' })
  await agent.waitForRequests(2)
  const cancelled = await post(paused, '/cancel', { session_id: 'kept' })
  t.equal(cancelled.statusCode, 200, cancelled.body)
  t.equal((await running).statusCode, 200)
  t.notOk('background_run' in await readSession(dir, 'kept'), 'the cancel ended the recorded run')
  await paused.close()
  const later = await build(t, { dir, agents })
  t.match((await get(later, '/progress?session_id=kept')).json(), { running: false, failed: 1, pending: 1 }, 'not resumed at the next start')
  t.equal(agent.requests.length, 2, 'no call after the cancel')
})

t.test('cancel answers 503, not 200, when the cancelled task\'s failure cannot be saved', async (t) => {
  let failSaves = false
  const fs = {
    ...nodeFs,
    open: (async (path: Parameters<typeof nodeFs.open>[0], flags?: Parameters<typeof nodeFs.open>[1], mode?: Parameters<typeof nodeFs.open>[2]) => {
      if (failSaves && flags === 'wx') throw Object.assign(new Error('EIO: injected'), { code: 'EIO' })
      return nodeFs.open(path, flags, mode)
    }) as typeof nodeFs.open
  }
  let calls = 0
  const app = await build(t, {
    fs,
    executors: { default: async (_task, { signal }) => { calls++; return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason))) } }
  })
  await createTasks(app, 'unsaved', [{ instruction: 'a' }])
  const running = post(app, '/execute', { session_id: 'unsaved' })
  await waitFor('the agent call', () => calls === 1)
  failSaves = true
  const cancelled = await post(app, '/cancel', { session_id: 'unsaved' })
  t.equal(cancelled.statusCode, 503, cancelled.body)
  t.match(cancelled.json(), { code: 'STORAGE_UNAVAILABLE' })
  t.equal((await running).statusCode, 503, 'the execute fails the same way')
  failSaves = false
  t.match((await get(app, '/progress?session_id=unsaved')).json(), { in_progress: 1, failed: 0, running: false }, 'memory says what disk says: still InProgress')
})

t.test('an executor that throws a transient failure whose wait cannot be read is tried again without one, then fails its task; a background run goes on', async (t) => {
  let calls = 0
  const dir = await tempDir(t)
  const run = async (): Promise<never> => {
    calls++
    throw Object.defineProperty(new AgentError('flaky', { transient: true }), 'retryAfterMs', { get () { throw new Error('no wait') } })
  }
  const app = await build(t, { dir, executors: { default: { max_attempts: 2, backoff_ms: 10, run } } })
  await createTasks(app, 'wait', [{ instruction: 'one' }, { instruction: 'two' }])
  const first = await post(app, '/execute', { session_id: 'wait' })
  t.equal(first.statusCode, 200, first.body)
  t.match(first.json(), { status: 'Failed', error: 'flaky' })
  t.equal(calls, 2, 'tried again, as a transient failure is')
  t.equal((await post(app, '/execute-all', { session_id: 'wait', wait: false })).statusCode, 202)
  await waitFor('the run to end', async () => (await get(app, '/progress?session_id=wait')).json().running === false)
  const file = await readSession(dir, 'wait')
  t.same(file.session.tasks.map((task) => task.status), ['Failed', 'Failed'], 'none left InProgress')
  t.notOk('background_run' in file, 'the run ended')
})

t.test('an executor that throws what is no Error (a null-prototype object, an Error whose message is a number, a revoked Proxy) fails its task, and a background run goes on', async (t) => {
  const thrown: Array<() => unknown> = [
    () => Object.create(null),
    () => Object.assign(new Error('x'), { message: 42 }),
    () => { const err = new Error('x'); Object.defineProperty(err, 'message', { get () { throw new Error('no message') } }); return err },
    // instanceof throws on it.
    () => { const revocable = Proxy.revocable({}, {}); revocable.revoke(); return revocable.proxy }
  ]
  let call = 0
  const dir = await tempDir(t)
  const app = await build(t, { dir, executors: { default: async () => { throw (thrown[call++ % thrown.length] as () => unknown)() } } })
  await createTasks(app, 'odd', [{ instruction: 'one' }, { instruction: 'two' }, { instruction: 'three' }, { instruction: 'four' }])
  const first = await post(app, '/execute', { session_id: 'odd' })
  t.equal(first.statusCode, 200, first.body)
  t.match(first.json(), { status: 'Failed', error: 'the agent failed with a value that has no text' })
  t.equal((await post(app, '/execute-all', { session_id: 'odd', wait: false })).statusCode, 202)
  await waitFor('the run to end', async () => (await get(app, '/progress?session_id=odd')).json().running === false)
  const file = await readSession(dir, 'odd')
  t.same(file.session.tasks.map((task) => task.status), ['Failed', 'Failed', 'Failed', 'Failed'], 'every task failed, none left InProgress')
  t.same(file.session.tasks.map((task) => task.error), ['the agent failed with a value that has no text', '42', 'Error', 'the agent failed with a value that has no text'])
  t.notOk('background_run' in file, 'the run ended')
})
