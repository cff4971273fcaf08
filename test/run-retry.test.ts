/**
 * A background run that meets a storage fault (a full disk, a failing one) waits with backoff
 * and goes on by itself once saves succeed: progress says `running: true, waiting: "storage"`
 * meanwhile, and the log says so. On a real full tmpfs where mounting is permitted, and always
 * through the fs seam.
 */
import { rm, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { readSession, storedTasks, waitFor } from './agents-fakes.js'
import { build, get, memoryLog, post, tempDir } from './helper.js'
import { fill, mountedFolder } from './tmpfs.js'

/** An fs seam whose storage, once armed, takes one more write and fails every later one (EIO) until mended. */
function lastWrite (): { fs: FsSeam, arm: () => void, broken: () => boolean, mend: () => void } {
  let armed = false
  let broken = false
  const fs: FsSeam = {
    ...nodeFs,
    open: (async (...args: Parameters<typeof nodeFs.open>) => {
      if (args[1] === 'wx') {
        if (broken) throw Object.assign(new Error('EIO: injected fault'), { code: 'EIO' })
        if (armed) broken = true
      }
      return nodeFs.open(...args)
    }) as typeof nodeFs.open
  }
  return { fs, arm: () => { armed = true }, broken: () => broken, mend: () => { armed = false; broken = false } }
}

const progressOf = async (app: Awaited<ReturnType<typeof build>>, sessionId: string): Promise<Record<string, unknown>> =>
  (await get(app, `/progress?session_id=${sessionId}`)).json()

t.test('on a real full disk: the background run waits for storage, then finishes by itself once space is freed', async (t) => {
  const dir = await mountedFolder(t, '256k', 'the fs-seam test below covers the same behaviour')
  if (dir === null) return
  const log = memoryLog()
  let fillNow: (() => Promise<void>) | null = null
  const filler = join(dir, 'filler')
  const app = await build(t, {
    dir,
    logger: log.logger,
    config: { TASK_RUN_RETRY_MS: 50, TASK_RUN_RETRY_MAX_MS: 200 },
    executors: {
      default: async (task) => {
        // The disk fills while the second task runs: its result cannot be saved.
        if (task.instruction === 'second' && fillNow !== null) { await fillNow(); fillNow = null }
        return { result: `${task.instruction} done `.repeat(200) }
      }
    }
  })
  fillNow = async () => { await fill(filler) }
  const created = await post(app, '/create', { session_id: 'full', instructions: '1. first\n2. second\n3. third' })
  t.equal(created.statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'full', wait: false })).statusCode, 202)

  const waiting = await waitFor('the run to wait for storage', async () => {
    const progress = await progressOf(app, 'full')
    return progress.waiting === 'storage' && progress
  })
  t.match(waiting, { running: true, waiting: 'storage', all_done: false })
  t.ok(log.lines().some((line) => line.msg === 'Background run waiting for storage; it goes on by itself once saves succeed' && line.session_id === 'full'), 'the log says the run waits for storage')
  t.notOk(log.lines().some((line) => line.msg === 'Background run stopped'), 'the run did not stop for good')

  await unlink(filler)
  const done = await waitFor('the run to finish by itself', async () => {
    const progress = await progressOf(app, 'full')
    return progress.running === false && progress
  })
  t.match(done, { all_done: true, completed: 3, failed: 0 })
  t.notOk('waiting' in done, 'nothing is waited for any more')
  t.match(await storedTasks(dir, 'full'), [{ status: 'Completed' }, { status: 'Completed' }, { status: 'Completed' }])
  t.equal((await readSession(dir, 'full')).background_run, undefined, 'the run\'s record is cleared on disk')
  await app.close()
  await rm(join(dir, 'full.json'), { force: true })
})

t.test('through the fs seam: EIO on saves; cancel during the wait ends the run; shutdown during the wait keeps the record', async (t) => {
  let failing = false
  let refused = 0
  // What progress said while each refused try was under way, once the run had been marked.
  const marks: unknown[] = []
  let watched: Awaited<ReturnType<typeof build>> | null = null
  // The first call for a task named 'b' in each session breaks the disk: its ending cannot be saved.
  const broke = new Set<string>()
  const calls = new Map<string, number>()
  const fs: FsSeam = {
    ...nodeFs,
    open: (async (...args: Parameters<typeof nodeFs.open>) => {
      if (failing && args[1] === 'wx' && ++refused > 0) {
        if (watched !== null && refused > 1) marks.push((await progressOf(watched, 'eio')).waiting)
        throw Object.assign(new Error('EIO: injected fault'), { code: 'EIO' })
      }
      return nodeFs.open(...args)
    }) as typeof nodeFs.open
  }
  const executors = {
    default: async (task: { instruction: string }, { session_id: sessionId }: { session_id: string }) => {
      calls.set(`${sessionId}/${task.instruction}`, (calls.get(`${sessionId}/${task.instruction}`) ?? 0) + 1)
      if (task.instruction === 'b' && !broke.has(sessionId)) { broke.add(sessionId); failing = true }
      return { result: task.instruction }
    }
  }
  const dir = await tempDir(t)
  const app = await build(t, { dir, fs, config: { TASK_RUN_RETRY_MS: 20, TASK_RUN_RETRY_MAX_MS: 50 }, executors })
  watched = app
  t.equal((await post(app, '/create', { session_id: 'eio', instructions: '1. a\n2. b\n3. c' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'eio', wait: false })).statusCode, 202)
  await waitFor('the run to wait', async () => (await progressOf(app, 'eio')).waiting === 'storage')
  // Several tries go by while the disk fails; none gives up.
  const before = refused
  await waitFor('more tries', async () => refused >= before + 2)
  t.match(await progressOf(app, 'eio'), { running: true })
  // The mark holds through each try that storage refuses again: no moment says the run went on.
  t.ok(marks.length >= 2, 'tries were watched')
  t.same(marks, marks.map(() => 'storage'), 'progress says "waiting: storage" during every later try')
  // Lists say so too, as the dashboard's overview reads them.
  for (const archived of ['exclude', 'include']) {
    const sessions = (await get(app, `/list?session_id=all&archived=${archived}`)).json().sessions
    t.match(sessions, [{ session_id: 'eio', running: true, waiting: 'storage' }], `GET /list (archived=${archived}) says the run waits for storage`)
  }
  failing = false
  watched = null
  await waitFor('the run to finish', async () => (await progressOf(app, 'eio')).running === false)
  t.match(await progressOf(app, 'eio'), { all_done: true, completed: 3 })
  t.equal(calls.get('eio/b'), 1, 'the task whose ending storage refused is saved later, not run again')
  t.match(await storedTasks(dir, 'eio'), [{ status: 'Completed', result: 'a' }, { status: 'Completed', result: 'b', attempts: 1 }, { status: 'Completed', result: 'c' }])

  await app.close()
  // Cancel and shutdown while waiting: a wait long enough that storage is back before it ends.
  const waiting = await build(t, { dir, fs, config: { TASK_RUN_RETRY_MS: 10_000, TASK_RUN_RETRY_MAX_MS: 10_000 }, executors })

  // Cancel while waiting: the run ends, its record is cleared.
  t.equal((await post(waiting, '/create', { session_id: 'cancel', instructions: '1. b\n2. c' })).statusCode, 200)
  t.equal((await post(waiting, '/execute-all', { session_id: 'cancel', wait: false })).statusCode, 202)
  await waitFor('the run to wait', async () => (await progressOf(waiting, 'cancel')).waiting === 'storage')
  failing = false
  const cancelled = await post(waiting, '/cancel', { session_id: 'cancel' })
  t.equal(cancelled.statusCode, 200, cancelled.body)
  const [b, c] = await storedTasks(dir, 'cancel')
  t.equal(cancelled.json().cancelled_task_id, b?.id, 'the cancel names the task whose ending was waiting')
  t.match([b, c], [{ status: 'Failed', error: 'cancelled' }, { status: 'Pending' }], 'nothing is left InProgress')
  t.match(await progressOf(waiting, 'cancel'), { running: false, in_progress: 0 })
  t.equal((await readSession(dir, 'cancel')).background_run, undefined, 'a cancelled run leaves no record')

  // Shutdown while waiting: close is prompt, the record stays for the next start.
  t.equal((await post(waiting, '/create', { session_id: 'shut', instructions: '1. b\n2. c' })).statusCode, 200)
  t.equal((await post(waiting, '/execute-all', { session_id: 'shut', wait: false })).statusCode, 202)
  await waitFor('the run to wait', async () => (await progressOf(waiting, 'shut')).waiting === 'storage')
  const started = Date.now()
  await waiting.close()
  t.ok(Date.now() - started < 1500, `close did not wait out the backoff (${Date.now() - started} ms)`)
  failing = false
  t.ok((await readSession(dir, 'shut')).background_run !== undefined, 'the run is still recorded, so it resumes after restart')
})

t.test('TASK_RUN_RETRY_MAX_MS bounds the first wait too, when TASK_RUN_RETRY_MS is set above it', async (t) => {
  let failing = false
  const fs: FsSeam = {
    ...nodeFs,
    open: (async (...args: Parameters<typeof nodeFs.open>) => {
      if (failing && args[1] === 'wx') throw Object.assign(new Error('EIO: injected fault'), { code: 'EIO' })
      return nodeFs.open(...args)
    }) as typeof nodeFs.open
  }
  const dir = await tempDir(t)
  const app = await build(t, {
    dir,
    fs,
    // A first wait of ten minutes, were the bound not applied to it.
    config: { TASK_RUN_RETRY_MS: 600_000, TASK_RUN_RETRY_MAX_MS: 50 },
    executors: { default: async (task) => { if (task.instruction === 'b') failing = true; return { result: task.instruction } } }
  })
  t.equal((await post(app, '/create', { session_id: 'capped', instructions: '1. a\n2. b' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'capped', wait: false })).statusCode, 202)
  await waitFor('the run to wait for storage', async () => (await progressOf(app, 'capped')).waiting === 'storage')
  failing = false
  await waitFor('the run to finish within seconds', async () => (await progressOf(app, 'capped')).running === false, 10_000)
  t.match(await progressOf(app, 'capped'), { all_done: true, completed: 2 })
})

t.test('through the fs seam: a run whose only refused save is its end (clearing its record) says "waiting: storage" through every try', async (t) => {
  const disk = lastWrite()
  const marks: unknown[] = []
  let watched: Awaited<ReturnType<typeof build>> | null = null
  let refused = 0
  const fs: FsSeam = {
    ...disk.fs,
    open: (async (...args: Parameters<typeof nodeFs.open>) => {
      if (disk.broken() && args[1] === 'wx' && ++refused > 1 && watched !== null) marks.push((await progressOf(watched, 'end')).waiting)
      return disk.fs.open(...args)
    }) as typeof nodeFs.open
  }
  // The last task's call breaks storage past its own ending's save: the run's end cannot be saved.
  const app = await build(t, { fs, config: { TASK_RUN_RETRY_MS: 20, TASK_RUN_RETRY_MAX_MS: 50 }, executors: { default: async (task) => { if (task.instruction === 'b') disk.arm(); return { result: task.instruction } } } })
  watched = app
  t.equal((await post(app, '/create', { session_id: 'end', instructions: '1. a\n2. b' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'end', wait: false })).statusCode, 202)
  await waitFor('several refused tries', async () => marks.length >= 3)
  t.same(marks, marks.map(() => 'storage'), 'progress says "waiting: storage" during every later try')
  watched = null
  disk.mend()
  await waitFor('the run to end', async () => (await progressOf(app, 'end')).running === false)
  t.match(await progressOf(app, 'end'), { all_done: true, completed: 2 })
  t.notOk('waiting' in await progressOf(app, 'end'), 'nothing waited for any more')
})

t.test('on a real full disk: a cancel that answers 507 changes nothing; the run stays, cancellable, and goes on once space is freed', async (t) => {
  const dir = await mountedFolder(t, '256k', 'the fs-seam tests of the runner cover a cancel that storage refuses')
  if (dir === null) return
  const filler = join(dir, 'filler')
  const calls = new Map<string, number>()
  let fillNow: (() => Promise<void>) | null = null
  const app = await build(t, {
    dir,
    config: { TASK_RUN_RETRY_MS: 50, TASK_RUN_RETRY_MAX_MS: 200 },
    executors: {
      default: async (task, { signal }) => {
        calls.set(task.instruction, (calls.get(task.instruction) ?? 0) + 1)
        // 'second' fills the disk: its result cannot be saved.
        if (task.instruction === 'second' && fillNow !== null) { await fillNow(); fillNow = null }
        // 'held' runs until cancelled, the first time.
        if (task.instruction === 'held' && calls.get('held') === 1) {
          await new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }))
        }
        return { result: `${task.instruction} done` }
      }
    }
  })
  const refusedCancel = async (sessionId: string, what: string): Promise<void> => {
    const res = await post(app, '/cancel', { session_id: sessionId })
    t.equal(res.statusCode, 507, `${what}: ${res.body}`)
    t.equal(res.json().code, 'STORAGE_FULL')
    const progress = await progressOf(app, sessionId)
    t.match(progress, { running: true, waiting: 'storage', in_progress: 1 }, `${what}: the run is still there, waiting for storage`)
    const stored = await readSession(dir, sessionId)
    t.ok(stored.background_run !== undefined, `${what}: and recorded on disk`)
    t.equal(stored.session.tasks.filter((task) => task.status === 'InProgress').length, progress.in_progress, `${what}: memory agrees with the disk`)
  }

  // Cancelled while its run waits for storage: the task's result, waiting to be saved, is kept.
  fillNow = async () => { await fill(filler) }
  t.equal((await post(app, '/create', { session_id: 'waits', instructions: '1. first\n2. second\n3. third' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'waits', wait: false })).statusCode, 202)
  await waitFor('the run to wait for storage', async () => (await progressOf(app, 'waits')).waiting === 'storage')
  await refusedCancel('waits', 'a cancel while the run waits')
  await refusedCancel('waits', 'a second cancel (not 409: the run is still cancellable)')
  await unlink(filler)
  await waitFor('the run to go on by itself', async () => (await progressOf(app, 'waits')).running === false)
  t.match(await progressOf(app, 'waits'), { all_done: true, completed: 3, failed: 0 }, 'the refused cancels cancelled nothing')
  t.match(await storedTasks(dir, 'waits'), [{ status: 'Completed' }, { status: 'Completed', result: 'second done', attempts: 1 }, { status: 'Completed' }])
  t.equal(calls.get('second'), 1, 'the result that waited for storage was saved, not asked again')
  t.equal((await readSession(dir, 'waits')).background_run, undefined)

  // Cancelled mid-call with the disk full: the call is stopped, but the task is not cancelled; it runs again.
  t.equal((await post(app, '/create', { session_id: 'calls', instructions: '1. held\n2. after' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'calls', wait: false })).statusCode, 202)
  await waitFor('the call to start', () => calls.get('held') === 1)
  await fill(filler)
  await refusedCancel('calls', 'a cancel mid-call')
  await unlink(filler)
  await waitFor('the run to go on by itself', async () => (await progressOf(app, 'calls')).running === false)
  t.match(await storedTasks(dir, 'calls'), [{ status: 'Completed', result: 'held done', attempts: 2 }, { status: 'Completed' }], 'the task whose call the refused cancel stopped ran again')
  const cancelled = await post(app, '/cancel', { session_id: 'calls' })
  t.equal(cancelled.statusCode, 409, 'and once it has ended, nothing runs')
  await app.close()
})

t.test('a background run\'s cancel is one save: with storage failing right after it, the cancel answers 200, the record is gone and no further task runs', async (t) => {
  const disk = lastWrite()
  const calls: string[] = []
  const dir = await tempDir(t)
  const app = await build(t, {
    dir,
    fs: disk.fs,
    config: { TASK_RUN_RETRY_MS: 20, TASK_RUN_RETRY_MAX_MS: 50 },
    executors: {
      default: async (task, { signal }) => {
        calls.push(task.instruction)
        if (task.instruction === 'held') await new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }))
        return { result: `${task.instruction} done` }
      }
    }
  })
  t.equal((await post(app, '/create', { session_id: 'one', instructions: '1. held\n2. next' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'one', wait: false })).statusCode, 202)
  await waitFor('the call to start', () => calls.includes('held'))
  disk.arm()
  const cancelled = await post(app, '/cancel', { session_id: 'one' })
  t.equal(cancelled.statusCode, 200, cancelled.body)
  t.ok(disk.broken(), 'the cancel\'s save was the last write storage took')
  const stored = await readSession(dir, 'one')
  t.equal(stored.background_run, undefined, 'the run\'s record went in the cancel\'s save: a restart does not resume it')
  t.match(stored.session.tasks, [{ status: 'Failed', error: 'cancelled' }, { status: 'Pending' }])
  t.match(await progressOf(app, 'one'), { running: false, in_progress: 0 })
  disk.mend()
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.same(calls, ['held'], 'no further task ran, with storage back')
  t.match(await storedTasks(dir, 'one'), [{ status: 'Failed' }, { status: 'Pending' }])
})

t.test('an execute-all\'s cancel on a session with a recorded run (TASK_RESUME_ON_START=false) is one save too: storage failing after it leaves no record to resume', async (t) => {
  const disk = lastWrite()
  const calls: string[] = []
  const executors = {
    default: async (task: { instruction: string }, { signal }: { signal: AbortSignal }) => {
      calls.push(task.instruction)
      if (task.instruction === 'held') await new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true }))
      return { result: `${task.instruction} done` }
    }
  }
  const dir = await tempDir(t)
  // A background run recorded, then the server stopped before it began: the record stays.
  const first = await build(t, { dir, fs: disk.fs, config: { TASK_RESUME_ON_START: false }, executors })
  t.equal((await post(first, '/create', { session_id: 'rec', instructions: '1. held\n2. next' })).statusCode, 200)
  t.equal((await post(first, '/execute-all', { session_id: 'rec', wait: false })).statusCode, 202)
  await waitFor('the call to start', () => calls.includes('held'))
  await first.close()
  t.ok((await readSession(dir, 'rec')).background_run !== undefined, 'recorded')
  calls.length = 0

  const app = await build(t, { dir, fs: disk.fs, config: { TASK_RESUME_ON_START: false }, executors })
  const running = post(app, '/execute-all', { session_id: 'rec' })
  await waitFor('the call to start', () => calls.includes('held'))
  disk.arm()
  const cancelled = await post(app, '/cancel', { session_id: 'rec' })
  t.equal(cancelled.statusCode, 200, cancelled.body)
  t.equal((await running).statusCode, 200, 'the execute-all answers with what ran')
  const stored = await readSession(dir, 'rec')
  t.equal(stored.background_run, undefined, 'the record went in the cancel\'s save')
  t.match(stored.session.tasks, [{ status: 'Failed', error: 'cancelled' }, { status: 'Pending' }])
  t.same(calls, ['held'], 'nothing else ran')
})
