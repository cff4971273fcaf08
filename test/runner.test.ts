/**
 * TaskRunner at its own API: retries, failures, cancel, shutdown grace and one execution per
 * session, over a real SessionRegistry and FileSessionStore on a temp folder, with
 * programmatic executors (real functions, steered by promises).
 */
import { EventEmitter } from 'node:events'
import { readFileSync } from 'node:fs'
import t from 'tap'
import type { SessionFile } from '../schemas/session.js'
import { AgentError, CancelledError, NoPendingTaskError, NotRunningError, SessionBusyError, ShuttingDownError } from '../services/errors.js'
import { resolveAgents, type ExecutionContext, type Executor, type Executors } from '../services/runner/executors.js'
import { TaskRunner } from '../services/runner/task-runner.js'
import { SessionRegistry } from '../services/session/registry.js'
import { appendTasks, newSessionFile } from '../services/session/session.js'
import type { FileSessionStore } from '../services/store/file-store.js'
import type { Logger, TaskManagerEvents } from '../services/types.js'
import { noop } from '../services/noop.js'
import { deferred, openStore, waitFor, type TestContext } from './helper.js'

interface RunnerOptions {
  shutdownGraceMs?: number
  log?: Logger
}

/** The one place a runner is built: a real registry over a real store on a temp folder. */
async function makeRunner (t: TestContext, executors: Executors, options: RunnerOptions = {}): Promise<{ runner: TaskRunner, registry: SessionRegistry, store: FileSessionStore }> {
  const store = await openStore(t)
  const registry = new SessionRegistry({ store, autoSave: true, clock: () => new Date() })
  const runner = new TaskRunner({
    registry,
    agents: resolveAgents(executors),
    events: new EventEmitter<TaskManagerEvents>(),
    log: options.log ?? { info: noop, warn: noop, error: noop },
    maxResultBytes: 64 * 1024,
    shutdownGraceMs: options.shutdownGraceMs ?? 2000,
    runRetryMs: 10,
    runRetryMaxMs: 50,
    maxAgentCalls: 64
  })
  t.teardown(() => runner.shutdown())
  return { runner, registry, store }
}

/** A session holding one Pending task per instruction; resolves with the task ids. */
async function createSession (registry: SessionRegistry, sessionId: string, instructions: string[]): Promise<string[]> {
  return registry.change(sessionId, (draft) => {
    const file = newSessionFile(sessionId, draft.now)
    draft.file = file
    return appendTasks(file, instructions.map((instruction) => ({ instruction, task_type: 'General' as const })), draft.now).map((task) => task.id)
  })
}

const storedTasks = (store: FileSessionStore, sessionId: string): SessionFile['session']['tasks'] =>
  (JSON.parse(readFileSync(store.pathFor(sessionId), 'utf8')) as SessionFile).session.tasks

/** An executor that runs until released or aborted (it honours its signal), recording each call's context. */
function gatedExecutor (): { run: Executor, calls: ExecutionContext[], started: Promise<void>, finish: (result: string) => void } {
  const calls: ExecutionContext[] = []
  const started = deferred()
  const done = deferred<string>()
  const run: Executor = (_task, context) => new Promise((resolve, reject) => {
    calls.push(context)
    started.resolve()
    context.signal.addEventListener('abort', () => reject(context.signal.reason), { once: true })
    done.promise.then((result) => resolve({ result }), reject)
  })
  return { run, calls, started: started.promise, finish: done.resolve }
}

t.test('a transient AgentError is retried with backoff: two failures then success complete the task at attempt 3', async (t) => {
  const attempts: number[] = []
  const run: Executor = async (task, context) => {
    attempts.push(context.attempt)
    if (attempts.length < 3) throw new AgentError(`flaky ${attempts.length}`, { transient: true })
    return { result: `done ${task.instruction}`, confidence: 0.5 }
  }
  const { runner, registry, store } = await makeRunner(t, { default: { run, max_attempts: 3, backoff_ms: 1, max_backoff_ms: 5 } })
  const [id] = await createSession(registry, 's', ['work'])
  const { task, progress } = await runner.executeNext('s')
  t.match(task, { task_id: id, status: 'Completed', result: 'done work', error: null, confidence: 0.5 })
  t.match(progress, { completed: 1, pending: 0, all_done: true })
  t.same(attempts, [1, 2, 3], 'three calls, each told its attempt')
  t.match(storedTasks(store, 's')[0], { status: 'Completed', attempts: 3, result: 'done work' }, 'on disk when answered')

  // The budget is max_attempts: with 2, the second transient failure fails the task.
  const again: number[] = []
  const budget = await makeRunner(t, {
    default: { run: async (_task, context) => { again.push(context.attempt); throw new AgentError('still down', { transient: true }) }, max_attempts: 2, backoff_ms: 1, max_backoff_ms: 5 }
  })
  await createSession(budget.registry, 'b', ['work'])
  t.match((await budget.runner.executeNext('b')).task, { status: 'Failed', error: 'still down' })
  t.same(again, [1, 2])
  t.match(storedTasks(budget.store, 'b')[0], { status: 'Failed', attempts: 2, error: 'still down' })
})

t.test('a retry\'s log line carries the error cut as the task\'s error is (TASK_MAX_RESULT_BYTES), not a huge message whole', async (t) => {
  const warnings: Array<{ obj: Record<string, unknown>, msg?: string }> = []
  let calls = 0
  const huge = 'upstream said: ' + 'x'.repeat(1024 * 1024)
  const { runner, registry } = await makeRunner(t, {
    default: { run: async () => { if (++calls === 1) throw new AgentError(huge, { transient: true }); return { result: 'done' } }, max_attempts: 2, backoff_ms: 1, max_backoff_ms: 5 }
  }, { log: { info: noop, error: noop, warn: (obj: object, msg?: string) => { warnings.push({ obj: obj as Record<string, unknown>, msg }) } } })
  await createSession(registry, 'r', ['work'])
  t.match((await runner.executeNext('r')).task, { status: 'Completed', result: 'done' })
  const retry = warnings.find((line) => line.msg === 'Agent call failed; retrying')
  t.ok(retry !== undefined, 'the retry is logged')
  const logged = String(retry?.obj.err)
  t.ok(Buffer.byteLength(logged) <= 64 * 1024 && logged.startsWith('upstream said: x'), `the logged error is cut to 64 KB (${Buffer.byteLength(logged)} bytes)`)
})

t.test('a non-transient error fails the task at once, with the error recorded', async (t) => {
  for (const error of [new AgentError('bad request'), new Error('bad request')]) {
    let calls = 0
    const { runner, registry, store } = await makeRunner(t, {
      default: { run: async () => { calls++; throw error }, max_attempts: 5, backoff_ms: 1, max_backoff_ms: 5 }
    })
    const [first, second] = await createSession(registry, 's', ['a', 'b'])
    const { task, progress } = await runner.executeNext('s')
    t.match(task, { task_id: first, status: 'Failed', result: null, error: 'bad request' }, error.constructor.name)
    t.equal(calls, 1, `${error.constructor.name}: no retry`)
    t.match(progress, { failed: 1, pending: 1 })
    t.match(storedTasks(store, 's'), [{ id: first, status: 'Failed', error: 'bad request', attempts: 1 }, { id: second, status: 'Pending', attempts: 0 }])
  }
})

t.test('cancel during a call: the signal fires, the task fails "cancelled", the session is free, and a later execute works', async (t) => {
  const gate = gatedExecutor()
  let later = false
  const { runner, registry, store } = await makeRunner(t, {
    default: async (task, context) => later ? { result: `later ${task.instruction}` } : gate.run(task, context)
  })
  const [first, second] = await createSession(registry, 's', ['a', 'b'])
  const running = runner.executeNext('s')
  await gate.started
  t.ok(runner.isRunning('s'))
  const cancelled = await runner.cancel('s')
  t.match(cancelled, { cancelled_task_id: first, progress: { failed: 1, pending: 1 } })
  t.ok(gate.calls[0]?.signal.aborted, 'the executor\'s signal fired')
  t.type(gate.calls[0]?.signal.reason, CancelledError)
  t.match((await running).task, { task_id: first, status: 'Failed', error: 'cancelled' })
  t.notOk(runner.isRunning('s'), 'no run holds the session')
  t.equal(registry.existing('s').executing, false, 'the session is released')
  t.match(storedTasks(store, 's')[0], { status: 'Failed', error: 'cancelled' })
  await t.rejects(runner.cancel('s'), NotRunningError, 'nothing left to cancel')

  later = true
  t.match((await runner.executeNext('s')).task, { task_id: second, status: 'Completed', result: 'later b' }, 'a later execute runs the next task')
  await t.rejects(runner.executeNext('s'), NoPendingTaskError)
})

t.test('shutdown: a call that ends within the grace period finishes and is recorded Completed', async (t) => {
  const gate = gatedExecutor()
  const { runner, registry, store } = await makeRunner(t, { default: gate.run }, { shutdownGraceMs: 5000 })
  const [id] = await createSession(registry, 's', ['a', 'b'])
  const running = runner.executeNext('s')
  await gate.started
  const started = Date.now()
  setTimeout(() => gate.finish('finished'), 100)
  await runner.shutdown()
  t.ok(Date.now() - started < 4000, 'shutdown did not wait out the grace period')
  t.match((await running).task, { task_id: id, status: 'Completed', result: 'finished' })
  t.notOk(gate.calls[0]?.signal.aborted, 'the call was never aborted')
  t.same(storedTasks(store, 's').map((task) => task.status), ['Completed', 'Pending'], 'the finished task is on disk; no new one started')
  await t.rejects(runner.executeNext('s'), ShuttingDownError, 'no execution starts once shutdown began')
})

t.test('shutdown: a call that outlives the grace period is aborted; its task stays InProgress on disk (runs again after restart)', async (t) => {
  const grace = 150
  const gate = gatedExecutor()
  const { runner, registry, store } = await makeRunner(t, { default: gate.run }, { shutdownGraceMs: grace })
  const [id] = await createSession(registry, 's', ['slow'])
  const running = runner.executeNext('s')
  await gate.started
  const started = Date.now()
  await runner.shutdown()
  const took = Date.now() - started
  t.ok(took >= grace - 10 && took < grace + 1000, `shutdown resolved after about the grace period (${took} ms)`)
  t.ok(gate.calls[0]?.signal.aborted, 'the executor\'s signal was aborted')
  t.type(gate.calls[0]?.signal.reason, ShuttingDownError)
  await t.rejects(running, ShuttingDownError)
  t.match(storedTasks(store, 's')[0], { id, status: 'InProgress', attempts: 1, result: null }, 'not marked done, not failed')
  t.match(registry.find('s')?.session.tasks[0], { status: 'InProgress' }, 'memory agrees with disk')
  t.equal(registry.existing('s').executing, false, 'the session is released')
})

t.test('shutdown does not wait for an executor that ignores its signal', async (t) => {
  const grace = 100
  const started = deferred()
  const { runner, registry, store } = await makeRunner(t, { default: () => { started.resolve(); return new Promise(() => {}) } }, { shutdownGraceMs: grace })
  await createSession(registry, 's', ['stuck'])
  const running = runner.executeNext('s')
  await started.promise
  const before = Date.now()
  await runner.shutdown()
  const took = Date.now() - before
  t.ok(took < grace + 1000, `shutdown resolved after ${took} ms`)
  await t.rejects(running, ShuttingDownError)
  t.equal(storedTasks(store, 's')[0]?.status, 'InProgress')
})

t.test('no retry starts once shutdown began: the task goes back to Pending (no call in flight) to run again after restart', async (t) => {
  const failing = deferred()
  let calls = 0
  const run: Executor = async () => {
    calls++
    await failing.promise
    throw new AgentError('upstream 503', { transient: true })
  }
  const { runner, registry, store } = await makeRunner(t, { default: { run, max_attempts: 5, backoff_ms: 1, max_backoff_ms: 5 } })
  await createSession(registry, 's', ['a'])
  const running = runner.executeNext('s')
  await waitFor('the first call', () => calls === 1)
  const closing = runner.shutdown()
  failing.resolve()
  await t.rejects(running, ShuttingDownError)
  await closing
  t.equal(calls, 1, 'the agent was not called again')
  t.match(storedTasks(store, 's')[0], { status: 'Pending', attempts: 1 })
})

t.test('one execution per session: a second one on a busy session is refused with SessionBusyError', async (t) => {
  const gate = gatedExecutor()
  const { runner, registry, store } = await makeRunner(t, { default: gate.run })
  const [first, second] = await createSession(registry, 's', ['a', 'b'])
  const running = runner.executeNext('s')
  await gate.started
  await t.rejects(runner.executeNext('s'), SessionBusyError)
  await t.rejects(runner.executeAll('s'), SessionBusyError)
  await t.rejects(runner.startBackgroundRun('s'), SessionBusyError)
  t.equal(gate.calls.length, 1, 'the agent was called once')
  t.match(storedTasks(store, 's'), [{ id: first, status: 'InProgress' }, { id: second, status: 'Pending', attempts: 0 }], 'the refused executions changed nothing')
  gate.finish('ok')
  t.match((await running).task, { task_id: first, status: 'Completed' })
  t.match(await runner.executeAll('s'), { results: [{ task_id: second, status: 'Completed' }], progress: { all_done: true } }, 'once free, the session runs again')
})
