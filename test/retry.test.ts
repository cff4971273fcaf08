/**
 * POST /api/v1/tasks/retry: failed tasks back to Pending (one or all), attempts and
 * interruptions kept, current_index moved back so they run next; 404 and 409 rules; durable
 * like every change (a failed save changes nothing), across a restart, and from the archive.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { readSession, storedTasks, waitFor } from './agents-fakes.js'
import { build, createSession, get, post, tempDir } from './helper.js'
import { heldArchiveMove } from './faults.js'

/** Fails tasks whose instruction starts with "bad" until `healed` is set. */
function flaky () {
  const state = { healed: false }
  return {
    state,
    executors: {
      default: async (task: { instruction: string }) => {
        if (task.instruction.startsWith('bad') && !state.healed) throw new Error(`failed: ${task.instruction}`)
        return { result: `done ${task.instruction}` }
      }
    }
  }
}

t.test('one failed task back to Pending: attempts kept, it runs next, on disk before the answer', async (t) => {
  const dir = await tempDir(t)
  const agent = flaky()
  const app = await build(t, { dir, executors: agent.executors })
  const { task_ids: ids } = await createSession(app, 'r', '1. bad one\n2. good\n3. bad two')
  t.equal((await post(app, '/execute-all', { session_id: 'r' })).statusCode, 200)
  t.same((await storedTasks(dir, 'r')).map((x) => x.status), ['Failed', 'Completed', 'Failed'])

  const retried = await post(app, '/retry', { session_id: 'r', task_id: ids[2] })
  t.equal(retried.statusCode, 200, retried.body)
  t.match(retried.json(), { session_id: 'r', task_ids: [ids[2]], progress: { failed: 1, pending: 1, completed: 1 } })
  const stored = await readSession(dir, 'r')
  const task = stored.session.tasks[2]
  t.match(task, { status: 'Pending', error: null, result: null, started_at: null, completed_at: null, attempts: 1 }, 'on disk when answered')
  t.equal(stored.session.current_index, 2, 'current_index moves back to it')

  agent.state.healed = true
  const run = await post(app, '/execute', { session_id: 'r' })
  t.match(run.json(), { task_id: ids[2], status: 'Completed' }, 'it runs next')
  t.equal((await storedTasks(dir, 'r'))[2]?.attempts, 2, 'attempts count on from where they were')
  t.equal((await storedTasks(dir, 'r'))[0]?.status, 'Failed', 'the other failed task is left alone')
})

t.test('every failed task at once, ahead of later pending tasks', async (t) => {
  const dir = await tempDir(t)
  const agent = flaky()
  const app = await build(t, { dir, executors: agent.executors })
  const { task_ids: ids } = await createSession(app, 'every', '1. bad a\n2. bad b\n3. later')
  await post(app, '/execute', { session_id: 'every' })
  await post(app, '/execute', { session_id: 'every' })
  const res = await post(app, '/retry', { session_id: 'every' })
  t.equal(res.statusCode, 200)
  t.same(res.json().task_ids, [ids[0], ids[1]])
  const stored = await readSession(dir, 'every')
  t.same(stored.session.tasks.map((x) => x.status), ['Pending', 'Pending', 'Pending'])
  t.equal(stored.session.current_index, 0)
})

t.test('404 for an unknown session or task; 409 while executing, for a task not Failed, or with none failed', async (t) => {
  let release: () => void = () => {}
  const app = await build(t, {
    executors: {
      default: async (task) => {
        if (task.instruction === 'slow') await new Promise<void>((resolve) => { release = resolve })
        if (task.instruction.startsWith('bad')) throw new Error('no')
        return { result: 'ok' }
      }
    }
  })
  t.match((await post(app, '/retry', { session_id: 'nope' })).json(), { statusCode: 404, code: 'SESSION_NOT_FOUND' })
  const { task_ids: ids } = await createSession(app, 'c', '1. bad\n2. fine\n3. slow')
  await post(app, '/execute', { session_id: 'c' })
  await post(app, '/execute', { session_id: 'c' })
  t.match((await post(app, '/retry', { session_id: 'c', task_id: 'task_9_1' })).json(), { statusCode: 404, code: 'TASK_NOT_FOUND' })
  t.match((await post(app, '/retry', { session_id: 'c', task_id: ids[1] })).json(), { statusCode: 409, code: 'TASK_NOT_FAILED', message: /is Completed, not Failed/ })
  t.match((await post(app, '/retry', { session_id: 'c', task_id: ids[2] })).json(), { statusCode: 409, code: 'TASK_NOT_FAILED', message: /is Pending/ })

  t.equal((await post(app, '/execute-all', { session_id: 'c', wait: false })).statusCode, 202)
  await waitFor('the slow task to start', async () => (await get(app, '/progress?session_id=c')).json().in_progress === 1)
  t.match((await post(app, '/retry', { session_id: 'c', task_id: ids[0] })).json(), { statusCode: 409, code: 'SESSION_BUSY' })
  release()
  await waitFor('the run to end', async () => (await get(app, '/progress?session_id=c')).json().running === false)

  await createSession(app, 'clean', 'fine')
  await post(app, '/execute', { session_id: 'clean' })
  t.match((await post(app, '/retry', { session_id: 'clean' })).json(), { statusCode: 409, code: 'TASK_NOT_FAILED', message: 'session \'clean\' has no failed task' })
  t.equal((await post(app, '/retry', { session_id: 'c', extra: 1 })).statusCode, 400, 'unknown fields are a 400')
})

t.test('a failed save: 503, and the task stays Failed in memory and on disk', async (t) => {
  const dir = await tempDir(t)
  let failRenames = false
  const fs: FsSeam = {
    ...nodeFs,
    rename: async (...args: Parameters<typeof nodeFs.rename>) => {
      if (failRenames) throw Object.assign(new Error('EIO: i/o error'), { code: 'EIO' })
      return nodeFs.rename(...args)
    }
  }
  const agent = flaky()
  const app = await build(t, { dir, fs, executors: agent.executors })
  await createSession(app, 'd', 'bad')
  await post(app, '/execute', { session_id: 'd' })
  failRenames = true
  const res = await post(app, '/retry', { session_id: 'd' })
  t.equal(res.statusCode, 503)
  failRenames = false
  t.equal((await get(app, '/list?session_id=d')).json().tasks[0].status, 'Failed', 'memory unchanged')
  t.equal((await storedTasks(dir, 'd'))[0]?.status, 'Failed', 'disk unchanged')
  t.equal((await post(app, '/retry', { session_id: 'd' })).statusCode, 200, 'works once saves do')
})

t.test('after a restart: a retried task is still Pending with its counts, and a failed one can be retried', async (t) => {
  const dir = await tempDir(t)
  const agent = flaky()
  const first = await build(t, { dir, executors: agent.executors })
  const { task_ids: ids } = await createSession(first, 'p', '1. bad x\n2. bad y')
  await post(first, '/execute-all', { session_id: 'p' })
  t.equal((await post(first, '/retry', { session_id: 'p', task_id: ids[0] })).statusCode, 200)
  await first.close()
  // An interruption count, as a crash mid-task leaves it, is kept by a retry too.
  const stored = await readSession(dir, 'p')
  ;(stored.session.tasks[1] as { interruptions?: number }).interruptions = 2
  await writeFile(join(dir, 'p.json'), JSON.stringify(stored))

  const second = await build(t, { dir, executors: agent.executors })
  const tasks = (await get(second, '/list?session_id=p')).json().tasks
  t.match(tasks[0], { status: 'Pending', attempts: 1 })
  t.equal((await post(second, '/retry', { session_id: 'p', task_id: ids[1] })).statusCode, 200)
  t.match((await storedTasks(dir, 'p'))[1], { status: 'Pending', attempts: 1, interruptions: 2 })
})

t.test('an archived session comes back to active to have its failed tasks retried', async (t) => {
  const dir = await tempDir(t)
  const agent = flaky()
  const app = await build(t, { dir, executors: agent.executors })
  await createSession(app, 'old', 'bad z')
  await post(app, '/execute', { session_id: 'old' })
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['old'])
  const res = await post(app, '/retry', { session_id: 'old' })
  t.equal(res.statusCode, 200, res.body)
  const progress = (await get(app, '/progress?session_id=old')).json()
  t.match(progress, { pending: 1, failed: 0 })
  t.notOk('archived' in progress, 'active again')
})

t.test('a retry that brings a session back from the archive counts against TASK_MAX_SESSIONS', async (t) => {
  const dir = await tempDir(t)
  const agent = flaky()
  const app = await build(t, { dir, executors: agent.executors, config: { TASK_MAX_SESSIONS: 1 } })
  await createSession(app, 'old', 'bad z')
  await post(app, '/execute', { session_id: 'old' })
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['old'])
  t.equal((await post(app, '/create', { session_id: 'new', instructions: 'a' })).statusCode, 200)
  const refused = await post(app, '/retry', { session_id: 'old' })
  t.equal(refused.statusCode, 507, refused.body)
  t.match(refused.json(), { code: 'SESSION_LIMIT', message: /TASK_MAX_SESSIONS/ })
  t.match((await get(app, '/progress?session_id=old')).json(), { archived: true, failed: 1 }, 'still archived, still failed')
  t.equal((await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/new' })).statusCode, 204)
  t.equal((await post(app, '/retry', { session_id: 'old' })).statusCode, 200, 'once there is room')
})

t.test('a retry that arrives while an archive pass moves the session brings it back from the archive (not a 404)', async (t) => {
  const agent = flaky()
  const { fs, held, release } = heldArchiveMove()
  const app = await build(t, { dir: await tempDir(t), fs, executors: agent.executors })
  const { task_ids: ids } = await createSession(app, 'moving', '1. bad one')
  t.equal((await post(app, '/execute-all', { session_id: 'moving' })).statusCode, 200)
  const pass = post(app, '/archive', { older_than_days: 0 })
  await waitFor('the archive pass to be moving the session', held)
  // Read while the session is still active; changed once the pass has archived it.
  const retry = post(app, '/retry', { session_id: 'moving' })
  await new Promise((resolve) => setTimeout(resolve, 50))
  release()
  t.same((await pass).json().archived_ids, ['moving'], 'the pass archived it')
  const retried = await retry
  t.equal(retried.statusCode, 200, retried.body)
  t.same(retried.json().task_ids, ids)
  const progress = (await get(app, '/progress?session_id=moving')).json()
  t.match(progress, { pending: 1, failed: 0 })
  t.not(progress.archived, true, 'active again')
})
