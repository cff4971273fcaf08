/**
 * Real server processes (dist/server.js) with TASK_AGENTS pointing at a webhook agent served by
 * this test over a real socket: a background run SIGKILLed half way resumes by itself after a
 * restart, and a task that kills the server every time ends Failed "interrupted 3 times".
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import type { SessionFile } from '../schemas/session.js'
import { alive, fakeAgent, ok, readSession, waitFor, type Received } from './agents-fakes.js'
import { baseEnv, call, describe, exitWithin, freePort, logLines, scratch, type ServerProcess } from './server-process.js'

const API = '/api/v1/tasks'

/** Waits until the session file says the run is over: every task done, no background_run left. */
async function finishedOnDisk (storage: string, sessionId: string, ms = 20_000): Promise<SessionFile> {
  return waitFor(`session ${sessionId} to finish on disk`, async () => {
    const file = await readSession(storage, sessionId).catch(() => null)
    if (file === null || file.background_run !== undefined) return undefined
    return file.session.tasks.every((task) => task.status === 'Completed' || task.status === 'Failed') && file
  }, ms)
}

const instructionOf = (req: Received): string => req.json?.task?.instruction

t.test('a background run SIGKILLed half way resumes after restart and finishes without any client call', async (t) => {
  const { dir, start } = await scratch(t)
  const storage = join(dir, 'tasks')
  let current: ServerProcess | null = null
  const agent = await fakeAgent(t, (req, index) => {
    if (index === 1) {
      // Task b is in flight: the server dies now, mid-call.
      current?.child.kill('SIGKILL')
      return 'hang'
    }
    return ok(`done: ${instructionOf(req)}`)
  })
  const env = { TASK_STORAGE_DIR: storage, TASK_AGENTS: JSON.stringify({ default: { kind: 'webhook', url: `${agent.base}/run`, timeout_ms: 30_000 } }) }

  current = await start(env)
  const first = current
  const created = await call(first, 'POST', `${API}/create`, { session_id: 'long-run', tasks: ['a', 'b', 'c', 'd'].map((instruction) => ({ instruction })) })
  t.equal(created.status, 200)
  const ids: string[] = created.body.task_ids
  const started = await call(first, 'POST', `${API}/execute-all`, { session_id: 'long-run', wait: false })
  t.equal(started.status, 202)
  t.match(started.body, { session_id: 'long-run', status: 'running' })
  const exit = await exitWithin(first, 20_000)
  t.same(exit, { code: null, signal: 'SIGKILL' }, 'the first server died of SIGKILL mid-run')

  const left = await readSession(storage, 'long-run')
  t.type(left.background_run?.started_at, 'string', 'the run is recorded on disk')
  t.match(left.session.tasks, [{ status: 'Completed', result: 'done: a' }, { status: 'InProgress', attempts: 1 }, { status: 'Pending' }, { status: 'Pending' }])

  current = await start(env)
  const file = await finishedOnDisk(storage, 'long-run')
  t.match(file.session.tasks, [
    { id: ids[0], status: 'Completed', result: 'done: a', attempts: 1 },
    { id: ids[1], status: 'Completed', result: 'done: b', attempts: 2, interruptions: 1 },
    { id: ids[2], status: 'Completed', result: 'done: c', attempts: 1 },
    { id: ids[3], status: 'Completed', result: 'done: d', attempts: 1 }
  ], 'every task done, b run again', { server: describe(current) })
  t.same(agent.requests.map(instructionOf), ['a', 'b', 'b', 'c', 'd'], 'b called again, a not')
  t.equal(agent.requests[2]!.headers['idempotency-key'], agent.requests[1]!.headers['idempotency-key'], 'same Idempotency-Key for the resumed call')
  t.equal(agent.requests[2]!.json.task.attempt, 2)
  t.ok(logLines(current.stdout()).some((line) => line.msg === 'Resuming background run' && line.session_id === 'long-run'), 'the restart logs the resume')
  const list = await call(current, 'GET', `${API}/list?session_id=long-run`)
  t.same(list.body.tasks.map((task: { status: string }) => task.status), ['Completed', 'Completed', 'Completed', 'Completed'])
})

t.test('a task that kills the server every time: Failed "interrupted 3 times" after TASK_MAX_INTERRUPTIONS restarts; the run goes on', async (t) => {
  const { dir, spawnRaw, start } = await scratch(t)
  const storage = join(dir, 'tasks')
  let current: ServerProcess | null = null
  let acknowledged!: () => void
  const accepted = new Promise<void>((resolve) => { acknowledged = resolve })
  const agent = await fakeAgent(t, async (req) => {
    if (instructionOf(req) !== 'poison') return ok('survived')
    // The first time, let the 202 reach the client before the server dies.
    await accepted
    current?.child.kill('SIGKILL')
    return 'hang'
  })
  const env = { TASK_STORAGE_DIR: storage, TASK_AGENTS: JSON.stringify({ default: { kind: 'webhook', url: agent.base, timeout_ms: 30_000 } }) }

  current = await start(env)
  const created = await call(current, 'POST', `${API}/create`, { session_id: 'poisoned', tasks: [{ instruction: 'poison' }, { instruction: 'after' }] })
  const [poison, after] = created.body.task_ids as string[]
  t.equal((await call(current, 'POST', `${API}/execute-all`, { session_id: 'poisoned', wait: false })).status, 202)
  acknowledged()
  t.match(await exitWithin(current, 20_000), { signal: 'SIGKILL' }, 'run 1: killed by its task')

  // Restarts 1 and 2: restore sets the task back to Pending, the resumed run calls it again, and it kills again.
  // The kill can come before the server listens, so these are not waited for /ready.
  for (const restart of [1, 2]) {
    current = spawnRaw(baseEnv({ ...env, PORT: String(await freePort()) }))
    const exit = await exitWithin(current, 20_000)
    t.match(exit, { signal: 'SIGKILL' }, `restart ${restart}: resumed by itself and killed again`, { server: describe(current) })
    t.match((await readSession(storage, 'poisoned')).session.tasks[0], { status: 'InProgress', interruptions: restart, attempts: restart + 1 })
  }

  current = await start(env)
  const file = await finishedOnDisk(storage, 'poisoned')
  t.match(file.session.tasks, [
    { id: poison, status: 'Failed', error: 'interrupted 3 times', interruptions: 3, attempts: 3, result: null },
    { id: after, status: 'Completed', result: 'survived' }
  ], 'failed instead of run a fourth time; the next task ran', { server: describe(current) })
  t.equal(agent.requests.filter((req) => instructionOf(req) === 'poison').length, 3, 'the poison task was called 3 times')
  t.ok(logLines(current.stdout()).some((line) => line.msg === 'Task interrupted too often; failed' && line.task_id === poison), 'logged as an error')
  // The run ends (and lets go of the session) just after its last task is on disk.
  const progress = await waitFor('the run to end', async () => {
    const answer = await call(current as ServerProcess, 'GET', `${API}/progress?session_id=poisoned`)
    return answer.body.running === false && answer
  })
  t.match(progress.body, { failed: 1, completed: 1, all_done: true, running: false })
})

t.test('a second signal during shutdown exits at once (status 1), and the command agent\'s program is killed on the way out, not left running beside the task\'s retry', async (t) => {
  const { dir, start } = await scratch(t)
  const storage = join(dir, 'tasks')
  const pidfile = join(dir, 'agent.pid')
  // The program records its pid, then runs far past the test; its task stays InProgress.
  const argv = ['/bin/sh', '-c', 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 300', pidfile]
  const server = await start({ TASK_STORAGE_DIR: storage, TASK_COMMAND_CGROUP: 'off', TASK_SHUTDOWN_GRACE_MS: '30000', TASK_AGENTS: JSON.stringify({ default: { kind: 'command', argv, timeout_ms: 600_000 } }) })
  t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'slow', instructions: 'wait' })).status, 200)
  t.equal((await call(server, 'POST', `${API}/execute-all`, { session_id: 'slow', wait: false })).status, 202)
  const pid = await waitFor('the program\'s pid', async () => Number((await readFile(pidfile, 'utf8').catch(() => '')).trim()) || undefined, 10_000)
  t.teardown(() => { if (alive(pid)) process.kill(pid, 'SIGKILL') })
  server.child.kill('SIGTERM')
  await server.waitForLine((line) => /shutting down/u.test(line), 10_000)
  server.child.kill('SIGINT')
  t.same(await exitWithin(server, 10_000), { code: 1, signal: null }, 'the second signal ends the wait for the running task: exit 1')
  await waitFor('the program to be gone', () => !alive(pid), 5000)
  t.pass('no program outlives the server')
  t.match((await readSession(storage, 'slow')).session.tasks, [{ status: 'InProgress' }], 'its task runs again after a restart')
})
