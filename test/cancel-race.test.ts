/**
 * A cancel racing a task's start, for every agent kind: it must never leave a promise
 * unobserved (the process would die of an unhandled rejection), a cancel that lands before
 * the agent call starts must not make the call, and every answer is one a client expects.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { completion, createTasks, fakeAgent, fixture, ok, storedTasks, waitFor } from './agents-fakes.js'
import { faultFs } from './faults.js'
import type { Executor } from '../services/runner/executors.js'
import { build, post, tempDir, type TestContext } from './helper.js'

/** Counts unhandled rejections while a test runs; Node would kill a server over one. */
function watchUnhandled (t: TestContext): { count: () => number, reasons: unknown[] } {
  const reasons: unknown[] = []
  const listener = (reason: unknown): void => { reasons.push(reason) }
  process.on('unhandledRejection', listener)
  t.teardown(() => { process.off('unhandledRejection', listener) })
  return { count: () => reasons.length, reasons }
}

/** An executor that honours its signal, as a well-behaved programmatic agent does. */
const slowExecutor: Executor = (task, { signal }) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => resolve({ result: `done ${task.id}` }), 30)
  signal.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason) }, { once: true })
})

interface Kind {
  name: string
  setup: (t: TestContext) => Promise<{ agents?: Record<string, unknown>, executors?: Record<string, unknown> }>
}

const KINDS: Kind[] = [
  {
    name: 'webhook',
    setup: async (t) => {
      const agent = await fakeAgent(t, async () => { await sleep(30); return ok('hooked') })
      return { agents: { default: { kind: 'webhook', url: agent.base } } }
    }
  },
  {
    name: 'openai',
    setup: async (t) => {
      const agent = await fakeAgent(t, async () => { await sleep(30); return completion('reasoned') })
      return { agents: { default: { kind: 'openai', base_url: `${agent.base}/v1`, model: 'm' } } }
    }
  },
  {
    name: 'command',
    setup: async () => ({ agents: { default: { kind: 'command', argv: fixture('sleep.js', '30') } } })
  },
  { name: 'programmatic', setup: async () => ({ executors: { default: slowExecutor } }) },
  {
    // A synchronous throw after the signal aborted: user code that checks the signal itself.
    name: 'programmatic (throws when aborted)',
    setup: async () => ({
      executors: {
        default: ((task, context) => {
          context.signal.throwIfAborted()
          return slowExecutor(task, context)
        }) satisfies Executor
      }
    })
  }
]

const DELAYS_MS = [0, 1, 2, 3, 4, 5]

async function race (app: FastifyInstance, sessionId: string, start: () => Promise<{ statusCode: number, body: string }>, delay: number): Promise<{ started: number, cancelled: number, body: string }> {
  const started = start()
  if (delay === 0) await new Promise((resolve) => setImmediate(resolve))
  else await sleep(delay)
  const cancelled = await post(app, '/cancel', { session_id: sessionId })
  const answer = await started
  return { started: answer.statusCode, cancelled: cancelled.statusCode, body: `${answer.body} / ${cancelled.body}` }
}

for (const kind of KINDS) {
  t.test(`cancel racing the start of a task (${kind.name} agent), at 0-5 ms: no unhandled rejection, only expected answers`, async (t) => {
    const unhandled = watchUnhandled(t)
    const dir = await tempDir(t)
    const app = await build(t, { dir, ...(await kind.setup(t)) as object })
    let round = 0
    for (const delay of DELAYS_MS) {
      for (const mode of ['execute', 'background'] as const) {
        const sessionId = `race-${++round}`
        await createTasks(app, sessionId, [{ instruction: 'first' }, { instruction: 'second' }])
        const start = mode === 'execute'
          ? () => post(app, '/execute', { session_id: sessionId })
          : () => post(app, '/execute-all', { session_id: sessionId, wait: false })
        const result = await race(app, sessionId, start, delay)
        t.ok([200, 202].includes(result.started), `${mode} at ${delay} ms answers 200/202`, { body: result.body })
        t.ok([200, 409].includes(result.cancelled), `cancel at ${delay} ms answers 200 or 409 NOT_RUNNING`, { body: result.body })
        // The run lets go of the session; nothing is left InProgress by a cancel.
        const tasks = await waitFor('the run to end', async () => {
          const stored = await storedTasks(dir, sessionId)
          const progress = (await app.inject({ method: 'GET', url: `/api/v1/tasks/progress?session_id=${sessionId}` })).json()
          return progress.running === false && stored.every((task) => task.status !== 'InProgress') && stored
        })
        if (result.cancelled === 200) t.ok(tasks.some((task) => task.status === 'Failed' && task.error === 'cancelled') || tasks.every((task) => task.status !== 'Failed'), 'a cancelled task says "cancelled"')
      }
    }
    // Rejections surface a turn or two after the call they came from.
    await sleep(50)
    t.equal(unhandled.count(), 0, `no unhandled rejection: ${unhandled.reasons.map(String).join('; ')}`)
  })
}

t.test('a cancel that lands while the task\'s InProgress save is in flight: the agent is never called, the task is Failed "cancelled"', async (t) => {
  const unhandled = watchUnhandled(t)
  const fs = faultFs()
  let calls = 0
  for (const mode of ['execute', 'background'] as const) {
    const dir = await tempDir(t)
    const app = await build(t, { dir, fs, executors: { default: async (task, context) => { calls++; return slowExecutor(task, context) } } })
    const [first, second] = await createTasks(app, 'held', [{ instruction: 'a' }, { instruction: 'b' }])
    calls = 0
    // Holds a save's last step (its rename) until released. A background run saves its record
    // first; the InProgress save is the one after.
    const gate = fs.hold('rename', { skip: mode === 'execute' ? 0 : 1, times: 1 })
    const started = mode === 'execute'
      ? post(app, '/execute', { session_id: 'held' })
      : post(app, '/execute-all', { session_id: 'held', wait: false })
    await waitFor('the InProgress save to be held', () => gate.held() > 0)
    const cancelling = post(app, '/cancel', { session_id: 'held' })
    await sleep(20)
    gate.release()
    const cancelled = await cancelling
    t.equal(cancelled.statusCode, 200, `${mode}: cancel answers 200`, { body: cancelled.body })
    t.match(cancelled.json(), { cancelled_task_id: first })
    const answer = await started
    if (mode === 'execute') t.match(answer.json(), { task_id: first, status: 'Failed', error: 'cancelled' })
    else t.equal(answer.statusCode, 202)
    t.equal(calls, 0, `${mode}: the agent was never called`)
    t.match(await storedTasks(dir, 'held'), [{ id: first, status: 'Failed', error: 'cancelled', attempts: 1 }, { id: second, status: 'Pending' }])
    await app.close()
  }
  await sleep(50)
  t.equal(unhandled.count(), 0, `no unhandled rejection: ${unhandled.reasons.map(String).join('; ')}`)
})

t.test('a cancel that lands after a background run\'s last task, while its record is being cleared, announces run.finished, not run.cancelled', async (t) => {
  const fs = faultFs()
  const dir = await tempDir(t)
  const app = await build(t, { dir, fs, executors: { default: async (task) => ({ result: `done ${task.id}` }) } })
  const [only] = await createTasks(app, 'ending', [{ instruction: 'a' }])
  const events: string[] = []
  app.taskEvents.subscribe((event) => { if (event.data.session_id === 'ending') events.push(event.name) })
  // Each save is held in turn and let through until the task is Completed on disk: the save
  // held then is the run record's clearing, the run's last step.
  const ending = (path: string): boolean => path.includes('ending')
  let gate = fs.hold('rename', { path: ending, times: 1 })
  const started = post(app, '/execute-all', { session_id: 'ending', wait: false })
  for (;;) {
    await gate.reached
    const progress = (await app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=ending' })).json() as { completed: number }
    if (progress.completed === 1) break
    const held = gate
    gate = fs.hold('rename', { path: ending, times: 1 })
    held.release()
  }
  t.equal((await started).statusCode, 202)
  const cancelling = post(app, '/cancel', { session_id: 'ending' })
  // Time for the cancel to reach the run (a bound on a loaded host, not a speed claim).
  await sleep(200)
  gate.release()
  const cancelled = await cancelling
  t.equal(cancelled.statusCode, 200)
  t.match(cancelled.json(), { cancelled_task_id: null })
  await waitFor('the run to end', () => events.includes('run.finished') || events.includes('run.cancelled'))
  t.ok(events.includes('run.finished'), `every task ran: run.finished (${events.join(', ')})`)
  t.notOk(events.includes('run.cancelled'), 'no run.cancelled')
  t.match(await storedTasks(dir, 'ending'), [{ id: only, status: 'Completed' }])
})

t.test('shutdown that begins while a task\'s claim is being saved starts no agent call: the task goes back to Pending for the restart', async (t) => {
  const fs = faultFs()
  const dir = await tempDir(t)
  let calls = 0
  const app = await build(t, { dir, fs, executors: { default: async () => { calls++; return { result: 'ran' } } } })
  const [only] = await createTasks(app, 'late', [{ instruction: 'a' }])
  const gate = fs.hold('rename', { path: (path: string) => path.includes('late'), times: 1 })
  const executing = post(app, '/execute', { session_id: 'late' })
  await gate.reached
  const closing = app.close()
  // Time for the shutdown to begin (a bound on a loaded host, not a speed claim).
  await sleep(200)
  gate.release()
  const answer = await executing
  await closing
  t.equal(answer.statusCode, 503, `the execute is refused: ${answer.body}`)
  t.equal(calls, 0, 'no agent call started after shutdown began')
  t.match(await storedTasks(dir, 'late'), [{ id: only, status: 'Pending' }], 'the task is Pending again, for the restart')
})
