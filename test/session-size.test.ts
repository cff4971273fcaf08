/**
 * TASK_MAX_SESSION_BYTES: a session can never grow past what can be saved (and read back).
 * A change over the bound is refused whole; a result over it fails its task once, not forever.
 * Also: the sliced serializer writes exactly what JSON.stringify would, and impossible dates
 * in stored files are refused.
 */
import { existsSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { SessionFile } from '../schemas/session.js'
import { SessionTooLargeError } from '../services/errors.js'
import { FileSessionStore } from '../services/store/file-store.js'
import { serializeSessionFile } from '../services/store/session-files.js'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { createTasks, storedTasks } from './agents-fakes.js'
import { faultFs, tempOf } from './faults.js'
import { build, get, post, tempDir, waitFor } from './helper.js'

const AT = '2024-01-15T10:30:00.000Z'

function sessionWith (id: string, results: Array<string | null>): SessionFile {
  return {
    session_id: id,
    created_at: AT,
    updated_at: AT,
    session: {
      session_id: id,
      current_index: 0,
      tasks: results.map((result, i) => ({
        id: `task_${i + 1}_1705314600`,
        instruction: `step ${i} "quoted" ünï ✓\n`,
        task_type: 'General',
        status: result === null ? 'Pending' : 'Completed',
        result,
        error: null,
        confidence: result === null ? null : 0.5,
        created_at: AT,
        started_at: null,
        completed_at: null,
        attempts: 0
      }))
    },
    background_run: { started_at: AT }
  }
}

t.test('the serializer writes exactly what JSON.stringify writes, small or sliced, any indent', async (t) => {
  const controls = Array.from({ length: 32 }, (_, code) => String.fromCharCode(code)).join('')
  const cases: SessionFile[] = [
    sessionWith('empty', []),
    sessionWith('small', ['ok', null]),
    // Past a slice: made piece by piece, yielding between tasks.
    sessionWith('large', [controls.repeat(20_000), 'é✓'.repeat(300_000), null, '\u2028\u2029"\\'.repeat(100_000)])
  ]
  for (const file of cases) {
    for (const indent of [0, 2, 4]) {
      const bytes = await serializeSessionFile(file, indent, Number.POSITIVE_INFINITY)
      t.ok(bytes.equals(Buffer.from(JSON.stringify(file, null, indent) + '\n')), `${file.session_id}, indent ${indent}`)
    }
  }
})

t.test('the serializer stops at the bound, escapes counted', async (t) => {
  // 100,000 control characters take 600,000 bytes escaped.
  const file = sessionWith('escaped', ['\u0001'.repeat(100_000), '\u0001'.repeat(100_000), null])
  const exact = Buffer.byteLength(JSON.stringify(file, null, 2) + '\n')
  t.equal((await serializeSessionFile(file, 2, exact)).length, exact, 'exactly at the bound is allowed')
  await t.rejects(serializeSessionFile(file, 2, exact - 1), SessionTooLargeError)
  await t.rejects(serializeSessionFile(file, 2, 700_000), { code: 'LIMIT_EXCEEDED', message: /TASK_MAX_SESSION_BYTES/ })
})

t.test('a create that would pass TASK_MAX_SESSION_BYTES is a 400 LIMIT_EXCEEDED and changes nothing', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_MAX_SESSION_BYTES: 100 * 1024 } })
  const chunk = 'x'.repeat(40_000)
  t.equal((await post(app, '/create', { session_id: 'big', tasks: [{ instruction: chunk }] })).statusCode, 200)
  t.equal((await post(app, '/create', { session_id: 'big', tasks: [{ instruction: chunk }] })).statusCode, 200)
  const before = await readFile(join(dir, 'big.json'), 'utf8')
  const refused = await post(app, '/create', { session_id: 'big', tasks: [{ instruction: chunk }] })
  t.equal(refused.statusCode, 400)
  t.match(refused.json(), { statusCode: 400, code: 'LIMIT_EXCEEDED', error: 'Bad Request', message: /TASK_MAX_SESSION_BYTES/ })
  t.equal(await readFile(join(dir, 'big.json'), 'utf8'), before, 'the file is as it was')
  t.match((await get(app, '/progress?session_id=big')).json(), { total: 2 }, 'memory is as it was')
  t.equal((await post(app, '/create', { session_id: 'big', tasks: [{ instruction: 'small' }] })).statusCode, 200, 'a change that fits still goes through')
})

t.test('a result that would pass TASK_MAX_SESSION_BYTES fails its task once, with a clear error; the session carries on', async (t) => {
  const dir = await tempDir(t)
  let calls = 0
  const app = await build(t, {
    dir,
    config: { TASK_MAX_SESSION_BYTES: 256 * 1024 },
    // 60,000 control characters: 360,000 bytes once escaped, past the bound.
    executors: { default: async (task) => { calls++; return { result: task.instruction === 'huge' ? '\u0007'.repeat(60_000) : 'fine' } } }
  })
  const [huge, next] = await createTasks(app, 'growing', [{ instruction: 'huge' }, { instruction: 'next' }])
  const first = await post(app, '/execute', { session_id: 'growing' })
  t.equal(first.statusCode, 200, first.body)
  t.match(first.json(), { task_id: huge, status: 'Failed', result: null, error: /TASK_MAX_SESSION_BYTES/ })
  const second = await post(app, '/execute', { session_id: 'growing' })
  t.match(second.json(), { task_id: next, status: 'Completed', result: 'fine' }, 'the next execute runs the next task, not the same one again')
  t.equal(calls, 2, 'the agent was called once per task')
  t.match(await storedTasks(dir, 'growing'), [{ id: huge, status: 'Failed', result: null }, { id: next, status: 'Completed' }])
})

/** Creates `sessionId` with a first task padded so the stored file is `slack` bytes short of `bound`. */
async function fillTo (app: Awaited<ReturnType<typeof build>>, dir: string, sessionId: string, bound: number, slack: number): Promise<string[]> {
  const probe = sessionId.replace(/./g, 'p')
  await createTasks(app, probe, [{ instruction: 'x'.repeat(40_000) }, { instruction: 'second' }])
  const size = (await readFile(join(dir, `${probe}.json`))).length
  return createTasks(app, sessionId, [{ instruction: 'x'.repeat(40_000 + bound - slack - size) }, { instruction: 'second' }])
}

t.test('a session filled to TASK_MAX_SESSION_BYTES by its instructions still runs: each result that does not fit fails its task once, and retry and restart work', async (t) => {
  const dir = await tempDir(t)
  const bound = 64 * 1024
  let calls = 0
  const config = { TASK_MAX_SESSION_BYTES: bound }
  const executors = { default: async () => { calls++; return { result: 'ok' } } }
  const app = await build(t, { dir, config, executors })
  const [first, second] = await fillTo(app, dir, 'full', bound, 8)
  const size = (await readFile(join(dir, 'full.json'))).length
  t.ok(size <= bound && size > bound - 16, `the file is ${size} bytes, just under the bound`)

  // Marking the task InProgress needs room the instructions left no more of.
  const one = await post(app, '/execute', { session_id: 'full' })
  t.equal(one.statusCode, 200, one.body)
  t.match(one.json(), { task_id: first, status: 'Failed', result: null, error: /^the agent's result \(2 bytes\) would make the session larger than TASK_MAX_SESSION_BYTES \(65536 bytes stored\)/ })
  const two = await post(app, '/execute', { session_id: 'full' })
  t.match(two.json(), { task_id: second, status: 'Failed' })
  t.equal(calls, 2, 'the agent was called once per task')
  t.equal((await post(app, '/execute', { session_id: 'full' })).statusCode, 409, 'nothing left to run')
  t.match(await storedTasks(dir, 'full'), [{ id: first, status: 'Failed', attempts: 1 }, { id: second, status: 'Failed', attempts: 1 }])

  // Archived past the bound by what its runs recorded, it still comes back for a retry of one task.
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['full'])
  const back = await post(app, '/retry', { session_id: 'full', task_id: first })
  t.equal(back.statusCode, 200, back.body)
  const retried = await post(app, '/retry', { session_id: 'full' })
  t.equal(retried.statusCode, 200, retried.body)
  t.match(await storedTasks(dir, 'full'), [{ status: 'Pending' }, { status: 'Pending' }])
  t.equal((await post(app, '/create', { session_id: 'full', tasks: [{ instruction: 'y'.repeat(200) }] })).statusCode, 400, 'new instructions are still held to the bound')

  // A crash mid-task: restore sets it back to Pending and counts the interruption, past the bound if need be.
  await app.close()
  const stored = JSON.parse(await readFile(join(dir, 'full.json'), 'utf8')) as SessionFile
  Object.assign(stored.session.tasks[0] as object, { status: 'InProgress', started_at: AT })
  await writeFile(join(dir, 'full.json'), JSON.stringify(stored, null, 2) + '\n')
  const again = await build(t, { dir, config, executors })
  t.match(again.taskManager.get('full').session.tasks[0], { status: 'Pending', interruptions: 1 }, 'reset in memory')
  t.match(await storedTasks(dir, 'full'), [{ status: 'Pending', interruptions: 1 }, { status: 'Pending' }], 'and on disk')
})

t.test('a session stored past a TASK_MAX_SESSION_BYTES lowered since: an interrupted task is set back, logged once that is durable, and its tasks run (results past the bound fail them with the reason); new instructions are refused', async (t) => {
  const dir = await tempDir(t)
  const executors = { default: async () => ({ result: 'ok' }) }
  const first = await build(t, { dir, executors })
  t.equal((await post(first, '/create', { session_id: 'grown', tasks: [{ instruction: 'x'.repeat(40_000) }, { instruction: 'y'.repeat(40_000) }, { instruction: 'three' }] })).statusCode, 200)
  await first.close()
  const stored = JSON.parse(await readFile(join(dir, 'grown.json'), 'utf8')) as SessionFile
  Object.assign(stored.session.tasks[0] as object, { status: 'InProgress', attempts: 1, started_at: AT })
  await writeFile(join(dir, 'grown.json'), JSON.stringify(stored, null, 2) + '\n')

  const logs: Array<{ msg: string, task_id?: string }> = []
  const config = { TASK_MAX_SESSION_BYTES: 64 * 1024 }
  const app = await build(t, { dir, config, executors, logger: { level: 'warn', stream: { write: (line: string) => { logs.push(JSON.parse(line)) } } } })
  t.match(await storedTasks(dir, 'grown'), [{ status: 'Pending', interruptions: 1 }, { status: 'Pending' }, { status: 'Pending' }], 'set back, on disk')
  t.equal(logs.filter((entry) => entry.msg === 'Task was interrupted; set back to Pending').length, 1)
  // Each runs (it was refused with a 400 before any agent call); its result, content past the bound, fails it with the reason.
  for (let n = 0; n < 3; n++) {
    const res = await post(app, '/execute', { session_id: 'grown' })
    t.equal(res.statusCode, 200, res.body.slice(0, 200))
    t.match(res.json(), { status: 'Failed', error: /would make the session larger than TASK_MAX_SESSION_BYTES/ }, `task ${n + 1} ran`)
  }
  t.match(await storedTasks(dir, 'grown'), [{ status: 'Failed', attempts: 2 }, { status: 'Failed' }, { status: 'Failed' }])
  t.equal((await post(app, '/create', { session_id: 'grown', instructions: 'four' })).statusCode, 400, 'new instructions are held to the bound')
})

t.test('a session stored past a lowered TASK_MAX_SESSION_BYTES retries from the archive, and an archive of it in doubt is undone', async (t) => {
  const dir = await tempDir(t)
  const task = (n: number, status: 'Completed' | 'Failed', at: string): SessionFile['session']['tasks'][number] => ({
    id: `task_${n}_1705314600`,
    instruction: String(n).repeat(40_000),
    task_type: 'Coding',
    status,
    result: status === 'Completed' ? 'ok' : null,
    error: status === 'Failed' ? 'boom' : null,
    confidence: null,
    created_at: at,
    started_at: at,
    completed_at: at,
    attempts: 1
  })
  const grown = (id: string, at = AT): SessionFile => ({ session_id: id, created_at: at, updated_at: at, session: { session_id: id, current_index: 2, tasks: [task(1, 'Completed', at), task(2, 'Failed', at)] } })
  await (await build(t, { dir })).close()
  await mkdir(join(dir, 'archive'))
  await writeFile(join(dir, 'archive', 'shelved.json'), JSON.stringify(grown('shelved'), null, 2) + '\n')
  // Changed just now: the archive pass at the start leaves it, the one below takes it.
  await writeFile(join(dir, 'doubt.json'), JSON.stringify(grown('doubt', new Date().toISOString()), null, 2) + '\n')
  const fs = faultFs()
  const config = { TASK_MAX_SESSION_BYTES: 64 * 1024 }
  const app = await build(t, { dir, fs, config })
  const back = await post(app, '/retry', { session_id: 'shelved' })
  t.equal(back.statusCode, 200, back.body.slice(0, 200))
  t.match(await storedTasks(dir, 'shelved'), [{ status: 'Completed' }, { status: 'Pending' }], 'brought back, its failed task pending')

  // The archive's folder sync fails: its outcome is in doubt, and the session is put back.
  fs.fail('dirsync', 'EIO', { path: (path) => path === join(dir, 'archive'), times: 1 })
  const pass = await app.archiver.runOnce({ archiveOlderThanDays: 0 }).catch((err: Error) => err)
  t.match(pass, { archived: [] }, 'not archived')
  t.ok(existsSync(join(dir, 'doubt.json')), 'put back in the folder')
  const retried = await post(app, '/retry', { session_id: 'doubt' })
  t.equal(retried.statusCode, 200, retried.body.slice(0, 200))
  t.match(await storedTasks(dir, 'doubt'), [{ status: 'Completed' }, { status: 'Pending' }])
})

t.test('a reset of an interrupted task that is not saved logs no "set back": the task stays as stored, and the log says why', async (t) => {
  const dir = await tempDir(t)
  const first = await build(t, { dir })
  await post(first, '/create', { session_id: 'stuck', instructions: 'one' })
  await first.close()
  const stored = JSON.parse(await readFile(join(dir, 'stuck.json'), 'utf8')) as SessionFile
  Object.assign(stored.session.tasks[0] as object, { status: 'InProgress', attempts: 1, started_at: AT })
  await writeFile(join(dir, 'stuck.json'), JSON.stringify(stored, null, 2) + '\n')
  const logs: Array<{ msg: string }> = []
  const fs = faultFs()
  fs.fail('write', 'ENOSPC')
  await build(t, { dir, fs, logger: { level: 'warn', stream: { write: (line: string) => { logs.push(JSON.parse(line)) } } } })
  t.equal(logs.filter((entry) => entry.msg === 'Task was interrupted; set back to Pending').length, 0)
  t.equal(logs.filter((entry) => entry.msg.startsWith('Could not save the reset of interrupted tasks')).length, 1)
  t.match(await storedTasks(dir, 'stuck'), [{ status: 'InProgress' }])
})

t.test('a reset at restore that storage refused is owed: once storage is back, the next run counts the crash first, so a task that killed the server three times is failed, never run a fourth', async (t) => {
  const dir = await tempDir(t)
  const first = await build(t, { dir })
  for (const id of ['poison', 'once']) await post(first, '/create', { session_id: id, instructions: `1. ${id} task\n2. next` })
  await post(first, '/create', { session_id: 'last', instructions: '1. done\n2. last task' })
  t.equal((await post(first, '/execute', { session_id: 'last' })).statusCode, 200)
  await first.close()
  // Left running by crashes: 'poison' and 'last' twice before, 'once' never.
  for (const [id, at, interruptions] of [['poison', 0, 2], ['once', 0, 0], ['last', 1, 2]] as const) {
    const stored = JSON.parse(await readFile(join(dir, `${id}.json`), 'utf8')) as SessionFile
    Object.assign(stored.session.tasks[at] as object, { status: 'InProgress', attempts: interruptions + 1, started_at: AT, ...(interruptions > 0 && { interruptions }) })
    await writeFile(join(dir, `${id}.json`), JSON.stringify(stored, null, 2) + '\n')
  }
  const calls: string[] = []
  const fs = faultFs()
  fs.fail('write', 'ENOSPC')
  const app = await build(t, { dir, fs, executors: { default: async (task: { instruction: string }) => { calls.push(task.instruction); return { result: 'done' } } } })
  t.match(await storedTasks(dir, 'poison'), [{ status: 'InProgress', interruptions: 2 }], 'the reset did not land')
  fs.heal()
  const poisoned = await post(app, '/execute', { session_id: 'poison' })
  t.equal(poisoned.statusCode, 200, 'the next task runs')
  t.equal(poisoned.json().instruction, 'next')
  t.same(calls, ['next'], 'the task that crashed the server is not run again')
  t.match(await storedTasks(dir, 'poison'), [{ status: 'Failed', interruptions: 3, error: 'interrupted 3 times' }, { status: 'Completed' }], 'it is failed as interrupted 3 times')
  // The same task last of its session: failed and saved so, though nothing is left to run; the live view hears it.
  const heard: Array<[string, unknown]> = []
  app.taskManager.events.on('task-event', (name, data) => { if (data.session_id === 'last') heard.push([name, data]) })
  const last = await post(app, '/execute', { session_id: 'last' })
  t.match(heard, [['task.failed', { task_id: /^task_2_/u, status: 'Failed' }], ['progress', { failed: 1, in_progress: 0, all_done: true }]], 'task.failed, then the progress')
  t.equal(last.statusCode, 409, 'the last task failed: nothing to run')
  t.match(await storedTasks(dir, 'last'), [{ status: 'Completed' }, { status: 'Failed', interruptions: 3, error: 'interrupted 3 times' }], 'and so on disk')
  t.equal((await post(app, '/execute', { session_id: 'last' })).statusCode, 409, 'never run a fourth time')
  const once = await post(app, '/execute', { session_id: 'once' })
  t.equal(once.json().instruction, 'once task', 'a task interrupted once runs again')
  t.match(await storedTasks(dir, 'once'), [{ status: 'Completed', interruptions: 1 }, { status: 'Pending' }], 'its crash counted')
})

t.test('a change too large for the session fails alone: an agent result written in the same save still lands', async (t) => {
  const dir = await tempDir(t)
  let slow = false
  // Renames held while the agent answers: the changes that come meanwhile queue and share one save.
  const fs: FsSeam = { ...nodeFs, rename: async (from, to) => { if (slow) await sleep(100); return nodeFs.rename(from, to) } }
  const answers: Array<Promise<{ statusCode: number, body: string }>> = []
  const app = await build(t, {
    dir,
    fs,
    config: { TASK_MAX_SESSION_BYTES: 64 * 1024 },
    executors: {
      default: async (task) => {
        if (task.instruction !== 'do it') return { result: 'other' }
        slow = true
        answers.push(post(app, '/create', { session_id: 's', tasks: [{ instruction: 'small, in flight' }] }))
        await sleep(10)
        // With the 40 KB task before it, past the bound: refused only when the save is made.
        answers.push(post(app, '/create', { session_id: 's', tasks: [{ instruction: 'x'.repeat(30_000) }] }))
        await sleep(10)
        return { result: 'the agent\'s real result' }
      }
    }
  })
  const [id, later] = await createTasks(app, 's', [{ instruction: 'do it' }, { instruction: 'y'.repeat(40_000) }])
  const executed = await post(app, '/execute', { session_id: 's' })
  const [small, big] = await Promise.all(answers)
  slow = false
  t.equal(small?.statusCode, 200, 'the small create landed')
  t.equal(big?.statusCode, 400, 'the create too large for the session is refused')
  t.match(JSON.parse(big?.body ?? '{}'), { code: 'LIMIT_EXCEEDED' })
  t.match(executed.json(), { task_id: id, status: 'Completed', result: 'the agent\'s real result' }, 'the result that shared its save is kept')
  t.match(await storedTasks(dir, 's'), [{ id, status: 'Completed', result: 'the agent\'s real result' }, { id: later, status: 'Pending' }, { instruction: 'small, in flight', status: 'Pending' }])
})

t.test('stored dates that do not exist are refused at restore (2025-02-30, 2025-02-29, 24:00, +25:00)', async (t) => {
  const dir = await tempDir(t)
  const store = new FileSessionStore({ dir })
  await store.init()
  const withCreated = (id: string, createdAt: string): string => JSON.stringify({ ...sessionWith(id, []), created_at: createdAt })
  const files: Record<string, string> = {
    'feb30.json': withCreated('feb30', '2025-02-30T00:00:00.000Z'),
    'feb29.json': withCreated('feb29', '2025-02-29T12:00:00Z'),
    'apr31.json': withCreated('apr31', '2025-04-31T12:00:00Z'),
    'hour24.json': withCreated('hour24', '2025-01-01T24:00:00Z'),
    'offset.json': withCreated('offset', '2025-01-01T10:00:00+25:00'),
    'leap.json': withCreated('leap', '2024-02-29T23:59:59.999Z'),
    'dec31.json': withCreated('dec31', '2025-12-31T00:00:00+05:30')
  }
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text)
  const result = await store.loadAll({ concurrency: 1 })
  t.strictSame(result.sessions.map((s) => s.file.session_id).sort(), ['dec31', 'leap'])
  t.strictSame(result.failures.map((f) => f.name).sort(), ['apr31.json', 'feb29.json', 'feb30.json', 'hour24.json', 'offset.json'])
  for (const failure of result.failures) t.match(failure.reason, /impossible date/)
  await store.close()
})

t.test('changes bringing an archived session back, too large together, are judged each on the archived content', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs, config: { TASK_MAX_SESSION_BYTES: 64 * 1024 }, executors: { default: async () => ({ result: 'done' }) } })
  t.equal((await post(app, '/create', { session_id: 'x', tasks: [{ instruction: 'first' }, { instruction: 'second' }] })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'x' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['x'])

  // A first change's save is held, then fails on a full disk: the two after it queue and share one save.
  const gate = fs.hold('open', { path: tempOf('x'), times: 1 })
  fs.fail('open', 'ENOSPC', { path: tempOf('x'), times: 1 })
  // Creates reaching the manager, counted (and passed on): the small one must queue before the
  // large one, whose bigger body a loaded host may parse later than it sends the next request.
  const manager = app.taskManager
  const create = manager.create.bind(manager)
  let creates = 0
  manager.create = async (...args) => { creates++; return create(...args) }
  const first = post(app, '/create', { session_id: 'x', tasks: [{ instruction: 'held' }] })
  await waitFor('the first save to be held', () => gate.held() > 0)
  const small = post(app, '/create', { session_id: 'x', tasks: [{ instruction: 'small' }] })
  await waitFor('the small change to reach the manager', () => creates === 2)
  const large = post(app, '/create', { session_id: 'x', tasks: [{ instruction: 'L'.repeat(64_000) }] })
  await waitFor('the large change to reach the manager', () => creates === 3)
  await sleep(20)
  gate.release()
  t.equal((await first).statusCode, 507)
  const smallAnswer = await small
  t.equal(smallAnswer.statusCode, 200, `the small change, queued first, fits alone: ${smallAnswer.body}`)
  t.equal((await large).statusCode, 400, 'the large one is refused')
  t.same((await storedTasks(dir, 'x')).map((task) => task.instruction), ['first', 'second', 'small'], 'stored: the archived tasks and the small one, once')
})
