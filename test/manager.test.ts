import { readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import type { Executor } from '../services/runner/executors.js'
import { API, build, createSession, deferred, get, post, tempDir, withoutFreeSpace } from './helper.js'
import { faultFs } from './faults.js'

const jsonFiles = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((name) => name.endsWith('.json')).sort()
const tempFiles = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((name) => name.endsWith('.tmp'))

t.test('concurrent executes on one session: one run, the rest 409', async (t) => {
  const gate = deferred()
  let calls = 0
  const app = await build(t, { executors: { default: async () => { calls++; await gate.promise; return { result: 'ok' } } } })
  await createSession(app, 'busy', '1. a\n2. b')
  const requests = Array.from({ length: 5 }, () => post(app, '/execute', { session_id: 'busy' }))
  await new Promise((resolve) => setTimeout(resolve, 50))
  const del = await app.inject({ method: 'DELETE', url: `${API}/sessions/busy` })
  t.equal(del.statusCode, 409, 'a running session cannot be deleted')
  const all = await post(app, '/execute-all', { session_id: 'busy' })
  t.equal(all.statusCode, 409)
  gate.resolve()
  const results = await Promise.all(requests)
  const codes = results.map((res) => res.statusCode).sort()
  t.same(codes, [200, 409, 409, 409, 409])
  t.ok(results.filter((res) => res.statusCode === 409).every((res) => res.json().code === 'SESSION_BUSY'))
  t.equal(calls, 1, 'the agent ran once')
  t.match((await get(app, '/progress?session_id=busy')).json(), { completed: 1, pending: 1 })
})

t.test('different sessions execute concurrently', async (t) => {
  const gate = deferred()
  let running = 0
  let peak = 0
  const app = await build(t, { executors: { default: async () => { running++; peak = Math.max(peak, running); await gate.promise; running--; return { result: 'ok' } } } })
  await createSession(app, 'one', 'x')
  await createSession(app, 'two', 'y')
  const both = Promise.all([post(app, '/execute', { session_id: 'one' }), post(app, '/execute', { session_id: 'two' })])
  // Both calls are under way at once (polled: a loaded machine may take a while to get there).
  for (let waited = 0; running < 2 && waited < 5000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10))
  gate.resolve()
  t.same((await both).map((res) => res.statusCode), [200, 200])
  t.equal(peak, 2)
})

t.test('a burst of creates on one session is coalesced into few writes and loses nothing', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs })
  const before = fs.calls.rename
  const burst = 200
  const results = await Promise.all(Array.from({ length: burst }, (_, i) => post(app, '/create', { session_id: 'burst', instructions: `task number ${i}` })))
  t.ok(results.every((res) => res.statusCode === 200))
  const writes = fs.calls.rename - before
  t.ok(writes < burst / 4, `${burst} creates took ${writes} writes`)
  const onDisk = JSON.parse(await readFile(join(dir, 'burst.json'), 'utf8'))
  t.equal(onDisk.session.tasks.length, burst, 'every acknowledged task is on disk')
  t.equal(new Set(onDisk.session.tasks.map((task: { id: string }) => task.id)).size, burst, 'ids are unique')
  const acknowledged = results.flatMap((res) => res.json().task_ids as string[])
  t.same(new Set(acknowledged), new Set(onDisk.session.tasks.map((task: { id: string }) => task.id)))
})

t.test('a failed save fails the request and leaves memory and disk as they were', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs })
  await createSession(app, 'keep', '1. a\n2. b')
  const file = join(dir, 'keep.json')
  const bytes = await readFile(file)
  const listBefore = (await get(app, '/list?session_id=keep')).json()
  const statsBefore = withoutFreeSpace((await get(app, '/stats')).json())

  for (const [code, status] of [['ENOSPC', 507], ['EIO', 503], ['EACCES', 503]] as const) {
    fs.fail('open', code)
    const create = await post(app, '/create', { session_id: 'keep', instructions: 'more' })
    t.equal(create.statusCode, status, `${code}: create answers ${status}`)
    t.equal(create.json().statusCode, status)
    const execute = await post(app, '/execute', { session_id: 'keep' })
    t.equal(execute.statusCode, status, `${code}: execute answers ${status}`)
    const fresh = await post(app, '/create', { session_id: 'fresh', instructions: 'x' })
    t.equal(fresh.statusCode, status)
  }
  t.same(await readFile(file), bytes, 'the file is unchanged')
  t.same(await tempFiles(dir), [], 'no temp file is left')
  t.same((await get(app, '/list?session_id=keep')).json(), listBefore, 'memory is unchanged')
  t.same(withoutFreeSpace((await get(app, '/stats')).json()), statsBefore, 'stats are unchanged')
  t.equal((await get(app, '/progress?session_id=fresh')).statusCode, 404, 'a session whose first save failed does not exist')
  t.same(await jsonFiles(dir), ['keep.json'])

  fs.heal()
  t.equal((await post(app, '/execute', { session_id: 'keep' })).json().status, 'Completed', 'writes work again once the fault is gone')
})

t.test('a batch of coalesced changes fails together', async (t) => {
  const fs = faultFs()
  const app = await build(t, { fs })
  await createSession(app, 'batch', 'a')
  fs.fail('open', 'ENOSPC')
  const results = await Promise.all(Array.from({ length: 20 }, () => post(app, '/create', { session_id: 'batch', instructions: 'b' })))
  t.ok(results.every((res) => res.statusCode === 507))
  t.equal((await get(app, '/progress?session_id=batch')).json().total, 1)
})

t.test('when the save of a finished task fails, the task stays InProgress and runs again', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  let calls = 0
  const app = await build(t, {
    dir,
    fs,
    executors: { default: async () => { calls++; if (calls === 1) fs.fail('open', 'EIO'); return { result: `run ${calls}` } } }
  })
  await createSession(app, 'retry', 'x')
  const first = await post(app, '/execute', { session_id: 'retry' })
  t.equal(first.statusCode, 503)
  const task = (await get(app, '/list?session_id=retry')).json().tasks[0]
  t.match(task, { status: 'InProgress', attempts: 1, result: null }, 'memory holds what disk holds')
  t.equal(JSON.parse(await readFile(join(dir, 'retry.json'), 'utf8')).session.tasks[0].status, 'InProgress')
  fs.heal()
  const second = await post(app, '/execute', { session_id: 'retry' })
  t.match(second.json(), { status: 'Completed', result: 'run 2' })
  t.equal((await get(app, '/list?session_id=retry')).json().tasks[0].attempts, 2)
})

t.test('shutdown: a task that outlives the grace period is aborted and resumes after restart', async (t) => {
  const dir = await tempDir(t)
  let sawAbort = false
  const started = deferred()
  const hang: Executor = (_task, { signal }) => new Promise((_resolve, reject) => {
    signal.addEventListener('abort', () => { sawAbort = true; reject(new Error('aborted')) })
    started.resolve()
  })
  const app = await build(t, { dir, executors: { default: hang }, config: { TASK_SHUTDOWN_GRACE_MS: 100 } })
  await createSession(app, 'long', '1. slow\n2. next')
  const running = post(app, '/execute', { session_id: 'long' })
  // Closed once the agent runs (its InProgress save is durable), however slow the disk.
  await started.promise
  await app.close()
  const res = await running
  t.equal(res.statusCode, 503)
  t.ok(sawAbort, 'the agent saw the abort signal')
  const stored = JSON.parse(await readFile(join(dir, 'long.json'), 'utf8')).session.tasks[0]
  t.match(stored, { status: 'InProgress', attempts: 1 }, 'the start was durable; the task was not marked done')

  const again = await build(t, { dir })
  t.match((await get(again, '/list?session_id=long')).json().tasks[0], { status: 'Pending', attempts: 1 })
  const resumed = await post(again, '/execute', { session_id: 'long' })
  t.match(resumed.json(), { status: 'Completed', result: 'slow' })
  t.equal((await get(again, '/list?session_id=long')).json().tasks[0].attempts, 2)
})

t.test('shutdown lets a running task finish within the grace period', async (t) => {
  const dir = await tempDir(t)
  const started = deferred()
  const app = await build(t, {
    dir,
    executors: { default: async () => { started.resolve(); await new Promise((resolve) => setTimeout(resolve, 150)); return { result: 'finished' } } },
    config: { TASK_SHUTDOWN_GRACE_MS: 5000 }
  })
  await createSession(app, 'graceful', 'x')
  const running = post(app, '/execute', { session_id: 'graceful' })
  await started.promise
  await app.close()
  t.equal((await running).json().status, 'Completed')
  t.equal(JSON.parse(await readFile(join(dir, 'graceful.json'), 'utf8')).session.tasks[0].status, 'Completed')
})

t.test('TASK_AUTO_SAVE=false keeps changes in memory and saves them at shutdown', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_AUTO_SAVE: false } })
  await createSession(app, 'lazy', '1. a\n2. b')
  await post(app, '/execute', { session_id: 'lazy' })
  t.same(await jsonFiles(dir), [], 'nothing written while running')
  await app.close()
  const stored = JSON.parse(await readFile(join(dir, 'lazy.json'), 'utf8'))
  t.same(stored.session.tasks.map((task: { status: string }) => task.status), ['Completed', 'Pending'])
})

t.test('TASK_AUTO_SAVE=false: the shutdown\'s save keeps each session\'s updated_at, the time of its last change; a restart answers the list as before it', async (t) => {
  const dir = await tempDir(t)
  let now = Date.parse('2026-03-01T10:00:00.000Z')
  const clock = (): Date => new Date(now)
  const app = await build(t, { dir, clock, config: { TASK_AUTO_SAVE: false } })
  await createSession(app, 'older', 'a')
  now += 60_000
  await createSession(app, 'newer', 'b')
  const before = (await get(app, '/list?session_id=all')).json()
  t.same(before.sessions.map((s: { session_id: string, updated_at: string }) => `${s.session_id}@${s.updated_at}`), ['newer@2026-03-01T10:01:00.000Z', 'older@2026-03-01T10:00:00.000Z'])
  now += 3_600_000
  await app.close()
  t.equal(JSON.parse(await readFile(join(dir, 'older.json'), 'utf8')).updated_at, '2026-03-01T10:00:00.000Z', 'stored with the time of its change, not of the shutdown')
  const again = await build(t, { dir, clock, config: { TASK_AUTO_SAVE: false } })
  t.same((await get(again, '/list?session_id=all')).json(), before, 'the restart answers what was served before it')
})

t.test('restore: a seed-format file loads, a corrupt one is set aside, InProgress resets', async (t) => {
  const dir = await tempDir(t)
  const seed = {
    session_id: 'demo_session_123',
    created_at: '2025-11-04T08:00:00Z',
    updated_at: '2025-11-04T08:15:30Z',
    session: {
      session_id: 'demo_session_123',
      tasks: [
        { id: 'task_1_1730727480', instruction: 'Write binary search', task_type: 'Coding', status: 'Completed', result: 'fn binary_search...', confidence: 0.95, created_at: '2025-11-04T08:00:00Z', started_at: '2025-11-04T08:00:05Z', completed_at: '2025-11-04T08:00:15Z' },
        { id: 'task_2_1730727480', instruction: 'Test it', task_type: 'General', status: 'InProgress', created_at: '2025-11-04T08:00:00Z', attempts: 2 }
      ],
      current_index: 1
    }
  }
  await writeFile(join(dir, 'demo_session_123.json'), JSON.stringify(seed, null, 2))
  await writeFile(join(dir, 'broken.json'), '{"session_id": "broken", ')
  const app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  const list = (await get(app, '/list?session_id=demo_session_123')).json()
  t.match(list.tasks[0], { id: 'task_1_1730727480', status: 'Completed', result: 'fn binary_search...', confidence: 0.95, completed_at: '2025-11-04T08:00:15Z', error: null, attempts: 0 })
  t.match(list.tasks[1], { status: 'Pending', attempts: 2 }, 'interrupted task back to Pending, attempts kept')
  t.equal(list.created_at, '2025-11-04T08:00:00Z')
  const stats = (await get(app, '/stats')).json()
  t.equal(stats.total_sessions, 1)
  t.equal(stats.storage.failed_loads, 1)
  t.same(await jsonFiles(dir), ['demo_session_123.json'])
  t.equal((await readdir(join(dir, 'corrupt'))).length, 1, 'the corrupt file is kept in corrupt/')
  const next = (await post(app, '/execute', { session_id: 'demo_session_123' })).json()
  t.equal(next.task_id, 'task_2_1730727480', 'execution resumes with the interrupted task')
})

t.test('archiver moves sessions finished longer ago than TASK_ARCHIVE_DAYS', async (t) => {
  const dir = await tempDir(t)
  let now = Date.parse('2026-01-01T00:00:00Z')
  const app = await build(t, { dir, clock: () => new Date(now), config: { TASK_ARCHIVE_DAYS: 30 } })
  await createSession(app, 'finished', 'x')
  await post(app, '/execute', { session_id: 'finished' })
  await createSession(app, 'waiting', 'y')
  now += 29 * 86_400_000
  t.same((await app.archiver.runOnce()).archived, [], 'not yet 30 days')
  now += 2 * 86_400_000
  t.same((await app.archiver.runOnce()).archived, ['finished'])
  t.same(await jsonFiles(dir), ['waiting.json'])
  t.same(await readdir(join(dir, 'archive')), ['finished.json'])
  t.match((await get(app, '/progress?session_id=finished')).json(), { session_id: 'finished', all_done: true, archived: true }, 'still readable, from the archive')
  t.equal((await get(app, '/stats')).json().total_sessions, 1)
})
