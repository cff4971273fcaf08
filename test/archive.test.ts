import { existsSync } from 'node:fs'
import { mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { join, sep } from 'node:path'
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { readTarGz } from '../services/backup/tar.js'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { API, build, createSession, get, memoryLog, post, tempDir, waitFor } from './helper.js'
import { faultFs, heldArchiveMove, tempOf } from './faults.js'
import { storedSession } from './session-fixtures.js'
import { openStream } from './sse-client.js'

const DAY = 86_400_000
const T0 = Date.parse('2026-01-01T00:00:00Z')

/** A clock the test moves by hand. */
function movableClock (): { clock: () => Date, advance: (days: number) => void } {
  let now = T0
  return { clock: () => new Date(now), advance: (days) => { now += days * DAY } }
}

const jsonFiles = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((name) => name.endsWith('.json')).sort()
const archived = async (dir: string): Promise<string[]> => existsSync(join(dir, 'archive')) ? (await readdir(join(dir, 'archive'))).sort() : []

/**
 * A folder holding an older copy of `id` in archive/ (under `archivedName`) and a newer active file
 * of it, one task more: what a bring-back that crashed before removing the archived copy leaves.
 */
async function copyLeftBehind (dir: string, id: string, archivedName: string, active: string[]): Promise<void> {
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  await writeFile(join(dir, 'archive', archivedName), storedSession(id, ['Completed'], '2025-06-01T00:00:00.000Z'), { mode: 0o600 })
  await writeFile(join(dir, `${id}.json`), storedSession(id, active, '2025-06-02T00:00:00.000Z'), { mode: 0o600 })
}

/**
 * An fs seam that holds the first open of `archive/<name>` made once armed, after the file is
 * open: the read gets the copy of that moment, however the name changes hands meanwhile.
 */
function heldOpen (name: string): { fs: FsSeam, arm: () => void, held: () => boolean, release: () => void } {
  let gate: Promise<void> | null = null
  let release: () => void = () => {}
  let held = false
  const fs: FsSeam = {
    ...nodeFs,
    open: async (path, ...rest) => {
      const handle = await nodeFs.open(path, ...rest)
      if (gate !== null && String(path).endsWith(`${sep}archive${sep}${name}`)) {
        const wait = gate
        gate = null
        held = true
        await wait
      }
      return handle
    }
  }
  return { fs, arm: () => { gate = new Promise((resolve) => { release = resolve }) }, held: () => held, release: () => { release() } }
}

async function finishedSession (app: Awaited<ReturnType<typeof build>>, id: string, instructions = '1. a\n2. b'): Promise<void> {
  await createSession(app, id, instructions)
  const res = await post(app, '/execute-all', { session_id: id })
  if (res.statusCode !== 200) throw new Error(`execute-all failed: ${res.body}`)
}

/** A server whose session `a` (one task, "one") is archived as `a.json`, and heldOpen's controls on that name. */
async function archivedHeld (t: Test): Promise<{ app: Awaited<ReturnType<typeof build>>, dir: string } & Omit<ReturnType<typeof heldOpen>, 'fs'>> {
  const dir = await tempDir(t)
  const { fs, ...controls } = heldOpen('a.json')
  const app = await build(t, { dir, fs })
  await finishedSession(app, 'a', 'one')
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['a'])
  return { app, dir, ...controls }
}

t.test('a finished session is archived once its last completion is TASK_ARCHIVE_DAYS old, and stays readable', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'done')
  await createSession(app, 'waiting', 'y')
  const before = await readFile(join(dir, 'done.json'))

  advance(29)
  t.same((await post(app, '/archive', {})).json(), { archived: 0, deleted: 0, archived_ids: [], deleted_ids: [] }, '29 days: not yet')
  advance(2)
  t.same((await post(app, '/archive', {})).json(), { archived: 1, deleted: 0, archived_ids: ['done'], deleted_ids: [] })
  t.same(await jsonFiles(dir), ['waiting.json'], 'the file left the storage folder')
  t.same(await archived(dir), ['done.json'])
  t.same(await readFile(join(dir, 'archive', 'done.json')), before, 'moved as it was, byte for byte')

  const list = (await get(app, '/list?session_id=done')).json()
  t.match(list, { session_id: 'done', total: 2, archived: true })
  t.same(list.tasks.map((task: { status: string }) => task.status), ['Completed', 'Completed'])
  t.match((await get(app, '/progress?session_id=done')).json(), { session_id: 'done', total: 2, completed: 2, all_done: true, percentage: 100, archived: true })
  t.notOk('archived' in (await get(app, '/progress?session_id=waiting')).json(), 'active sessions carry no flag')

  const stats = (await get(app, '/stats')).json()
  t.equal(stats.total_sessions, 1, 'archived sessions are not counted as sessions in memory')
  t.equal(stats.archived_sessions, 1)
  t.equal(stats.storage.archive_bytes, before.length)
  t.equal((await get(app, '/list?session_id=all')).json().total, 1, 'lists leave archived sessions out by default')

  // Only active sessions run: the 404 says the session is archived, and how it comes back.
  for (const path of ['/execute', '/execute-all', '/cancel']) {
    const res = await post(app, path, { session_id: 'done' })
    t.equal(res.statusCode, 404, path)
    t.match(res.json(), { code: 'SESSION_NOT_FOUND', message: "session 'done' is archived: it runs nothing until it is brought back, by a create that adds tasks to it or a retry of its failed tasks" }, path)
  }
  t.match((await post(app, '/execute', { session_id: 'nobody' })).json(), { code: 'SESSION_NOT_FOUND', message: "session 'nobody' not found" })
  t.same(await archived(dir), ['done.json'], 'still archived')
})

t.test('the scheduler runs once after restore, then on its interval', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  let app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'first')
  await app.close()

  advance(31)
  app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30, TASK_ARCHIVE_INTERVAL_MINUTES: 0.01 } })
  // A pass asked for now waits for the one started at restore.
  t.same((await app.archiver.runOnce()).archived, [], 'the pass at restore archived it already')
  t.same(await archived(dir), ['first.json'])

  await finishedSession(app, 'second')
  advance(31)
  // The interval is 600 ms (the least allowed); wait (bounded) for a timer pass to pick the session up.
  await waitFor('a timer pass to move the second session', () => !existsSync(join(dir, 'second.json')))
  t.same(await archived(dir), ['first.json', 'second.json'], 'a timer pass archived the second session')
})

t.test('pending and running sessions are not archived, however old', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  let finishRunning: () => void = () => {}
  const app = await build(t, {
    dir,
    clock,
    config: { TASK_ARCHIVE_DAYS: 30 },
    executors: {
      Coding: async () => {
        await new Promise<void>((resolve) => { finishRunning = resolve })
        return { result: 'late' }
      }
    }
  })
  await finishedSession(app, 'done')
  await createSession(app, 'pending', '1. a\n2. b')
  await post(app, '/execute', { session_id: 'pending' })
  await post(app, '/create', { session_id: 'running', tasks: [{ instruction: 'slow', task_type: 'Coding' }] })
  const running = post(app, '/execute', { session_id: 'running' })
  await waitFor('the task to start', async () => (await get(app, '/progress?session_id=running')).json().in_progress > 0)

  advance(365)
  t.same((await app.archiver.runOnce()).archived, ['done'])
  t.same(await jsonFiles(dir), ['pending.json', 'running.json'])
  finishRunning()
  t.equal((await running).json().status, 'Completed')
})

t.test('a session that changes between the scan and the move stays active', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const fs = faultFs()
  const app = await build(t, { dir, clock, fs, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'busy')
  await finishedSession(app, 'idle')
  advance(40)

  // A create on `busy` is in flight (its save held) when the pass scans `busy` as finished.
  const gate = fs.hold('rename', { path: tempOf('busy') })
  const create = post(app, '/create', { session_id: 'busy', instructions: 'one more thing' })
  await waitFor('the save of the create to be held', () => gate.held() > 0)
  t.equal(gate.held(), 1, 'the save of the create is held')
  const pass = app.archiver.runOnce()
  // Scanning and queueing take no I/O: after one turn the archive of `busy` waits behind the create.
  await nextTurn()
  gate.release()

  t.same((await pass).archived, ['idle'], 'only the unchanged session moved')
  t.equal((await create).statusCode, 200)
  t.same(await jsonFiles(dir), ['busy.json'])
  t.equal((await get(app, '/list?session_id=busy')).json().total, 3, 'the new task is there')
})

t.test('progress of an archived session comes from its summary: its file is read once, not on every call', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const opened: string[] = []
  const fs: FsSeam = {
    ...nodeFs,
    open: async (path, ...rest) => {
      if (String(path).includes(`${sep}archive${sep}`)) opened.push(String(path).split(sep).pop() as string)
      return nodeFs.open(path, ...rest)
    }
  }
  const expected = { session_id: 'done', total: 3, completed: 2, failed: 1, pending: 0, in_progress: 0, all_done: true, percentage: 100, running: false, archived: true }
  const app = await build(t, { dir, clock, fs, config: { TASK_ARCHIVE_DAYS: 30 }, executors: { default: async (task) => { if (task.instruction === 'bad') throw new Error('no'); return { result: 'ok' } } } })
  await createSession(app, 'done', '1. a\n2. bad\n3. c')
  t.equal((await post(app, '/execute-all', { session_id: 'done' })).statusCode, 200)
  advance(31)
  t.same((await post(app, '/archive', {})).json().archived_ids, ['done'])
  for (let i = 0; i < 3; i++) t.same((await get(app, '/progress?session_id=done')).json(), expected, `call ${i + 1}`)
  t.same(opened, [], 'archived just now: its summary was known, nothing read')
  await app.close()

  // After a restart the archive is indexed by name: the first call reads the file, later calls none.
  const again = await build(t, { dir, clock, fs, config: { TASK_ARCHIVE_DAYS: 30 } })
  opened.length = 0
  for (let i = 0; i < 3; i++) t.same((await get(again, '/progress?session_id=done')).json(), expected, `after a restart, call ${i + 1}`)
  t.same(opened, ['done.json'], 'read once')
  // The tasks themselves still come from the file, and a bring-back is seen at once.
  t.equal((await get(again, '/list?session_id=done')).json().tasks.length, 3)
  t.equal(opened.length, 2, '/list reads the file')
  await createSession(again, 'done', 'd')
  const { archived: _, ...active } = expected
  t.same((await get(again, '/progress?session_id=done')).json(), { ...active, total: 4, pending: 1, all_done: false, percentage: 75 }, 'brought back: its active progress')
})

t.test('a slow read of an archived copy that was brought back and archived again under the same name meanwhile leaves the new copy\'s summary and entry alone', async (t) => {
  const { app, arm, held, release } = await archivedHeld(t)
  arm()
  const slow = get(app, '/list?session_id=a')
  await waitFor('the read to hold the old file open', held)
  // Brought back, two tasks more, finished and archived again: `a.json` once more, a new copy.
  await finishedSession(app, 'a', '1. two\n2. three')
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['a'])
  t.equal((await get(app, '/progress?session_id=a')).json().total, 3, 'the new copy')
  release()
  t.equal((await slow).json().total, 1, 'the slow read answers with the copy it read')
  t.equal((await get(app, '/progress?session_id=a')).json().total, 3, 'the new copy\'s summary stays')
  t.equal((await get(app, '/list?session_id=a')).json().total, 3)
  t.equal((await get(app, '/list?session_id=all&archived=only')).json().sessions[0].total, 3, 'lists agree')
})

t.test('a bring-back whose archived copy was read before the session was brought back and archived again under the same name reads the new copy: no task is lost', async (t) => {
  const { app, dir, arm, held, release } = await archivedHeld(t)
  arm()
  // This create reads the archived copy first, outside the session's queue; it is held there.
  const slow = post(app, '/create', { session_id: 'a', instructions: 'four' })
  await waitFor('the create to hold the old copy open', held)
  await finishedSession(app, 'a', '1. two\n2. three')
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['a'])
  t.same(await archived(dir), ['a.json'], 'the new copy has the old one\'s name')
  release()
  t.equal((await slow).statusCode, 200)
  t.same((await get(app, '/list?session_id=a')).json().tasks.map((task: { instruction: string }) => task.instruction), ['one', 'two', 'three', 'four'], 'brought back from the new copy, with the task added')
  t.same(await archived(dir), [], 'and that copy left the archive')
})

t.test('a slow read of a damaged archived copy leaves alone a good copy archived under the same name meanwhile', async (t) => {
  const { app, dir, arm, held, release } = await archivedHeld(t)
  await writeFile(join(dir, 'archive', 'a.json'), '{"not":"a session"}')
  arm()
  const slow = get(app, '/list?session_id=a')
  await waitFor('the read to hold the damaged copy open', held)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/a` })).statusCode, 204)
  await finishedSession(app, 'a', '1. two\n2. three')
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['a'])
  release()
  t.equal((await slow).json().total, 2, 'the slow read finds the damaged copy gone and reads the new one')
  t.same(await archived(dir), ['a.json'], 'the new copy stays in the archive')
  t.notOk(existsSync(join(dir, 'corrupt')), 'nothing set aside')
  t.equal((await get(app, '/list?session_id=a')).json().total, 2)
})

t.test('passes never overlap: one asked for while another runs waits for it', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const moves: string[] = []
  let releaseFirst: () => void = () => {}
  const firstHeld = new Promise<void>((resolve) => { releaseFirst = resolve })
  const fs: FsSeam = {
    ...nodeFs,
    rename: async (from, to) => {
      if (String(to).includes('/archive/')) {
        moves.push(`start ${String(to).split('/').pop()}`)
        if (moves.length === 1) await firstHeld
        moves.push(`end ${String(to).split('/').pop()}`)
      }
      return nodeFs.rename(from, to)
    }
  }
  const app = await build(t, { dir, clock, fs, config: { TASK_ARCHIVE_DAYS: 30 } })
  // `young` comes first in every scan but finishes last: only the second pass may move it.
  await createSession(app, 'young', 'y')
  await finishedSession(app, 'old')
  advance(35)
  await post(app, '/execute-all', { session_id: 'young' })
  advance(1)

  const first = app.archiver.runOnce()
  await waitFor('the first pass to start its move', () => moves.length > 0)
  const second = post(app, '/archive', { older_than_days: 0 })
  // A burst of the same request while that pass waits: they share it, rather than queueing a pass each.
  const burst = Array.from({ length: 20 }, async () => post(app, '/archive', { older_than_days: 0 }))
  await sleep(50)
  t.same(moves, ['start old.json'], 'the second pass has not started')
  releaseFirst()
  t.same((await first).archived, ['old'])
  t.same((await second).json().archived_ids, ['young'], 'older_than_days 0 archives every finished session')
  t.same((await Promise.all(burst)).map((res) => res.json().archived_ids), Array.from({ length: 20 }, () => ['young']), 'the burst got the same pass (a pass of its own would have found nothing left)')
  t.same(moves, ['start old.json', 'end old.json', 'start young.json', 'end young.json'])
})

t.test('retention deletes only archived sessions past it, failed ones after their own', async (t) => {
  const dir = await tempDir(t)
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  const at = (days: number): string => new Date(T0 - days * DAY).toISOString()
  const files: Record<string, string> = {
    'old-ok': storedSession('old-ok', ['Completed', 'Completed'], at(100)),
    'young-ok': storedSession('young-ok', ['Completed'], at(10)),
    'old-failed': storedSession('old-failed', ['Completed', 'Failed'], at(100)),
    'ancient-failed': storedSession('ancient-failed', ['Failed'], at(200))
  }
  for (const [id, text] of Object.entries(files)) await writeFile(join(dir, 'archive', `${id}.json`), text, { mode: 0o600 })
  // An active session older than any retention: retention never touches active sessions.
  await writeFile(join(dir, 'active-old.json'), storedSession('active-old', ['Completed'], at(500)), { mode: 0o600 })

  let now = T0 - 400 * DAY
  const app = await build(t, { dir, clock: () => new Date(now), config: { TASK_ARCHIVE_DAYS: 0, TASK_ARCHIVE_RETENTION_DAYS: 90, TASK_ARCHIVE_FAILED_RETENTION_DAYS: 180 } })
  t.same((await post(app, '/archive', {})).json().deleted, 0, 'nothing is past retention yet')
  t.equal((await get(app, '/stats')).json().archived_sessions, 4)

  now = T0
  const pass = (await post(app, '/archive', {})).json()
  t.same(pass.deleted_ids.sort(), ['ancient-failed', 'old-ok'])
  t.equal(pass.archived, 0, 'archiving is off')
  t.same(await archived(dir), ['old-failed.json', 'young-ok.json'])
  t.same(await jsonFiles(dir), ['active-old.json'])
  t.equal((await get(app, '/list?session_id=old-ok')).statusCode, 404)
  t.equal((await get(app, '/stats')).json().archived_sessions, 2)
})

t.test('a retention pass announces each deletion on the event stream as soon as it is durable, not when the pass ends; a session created again under a deleted id meanwhile is shown live', async (t) => {
  const dir = await tempDir(t)
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  for (const [id, days] of [['gone_1', 100], ['gone_2', 200]] as const) {
    await writeFile(join(dir, 'archive', `${id}.json`), storedSession(id, ['Completed'], new Date(T0 - days * DAY).toISOString()), { mode: 0o600 })
  }
  const fs = faultFs()
  // Nothing is past retention at boot (the pass the scheduler runs then); the test moves the clock on.
  let now = T0 - 400 * DAY
  const app = await build(t, { dir, fs, clock: () => new Date(now), config: { TASK_ARCHIVE_DAYS: 0, TASK_ARCHIVE_RETENTION_DAYS: 90 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as import('node:net').AddressInfo
  now = T0
  const stream = await openStream(t, `http://127.0.0.1:${port}${API}/events`)
  // The second deletion's move out of the archive waits: the pass is still running.
  const gate = fs.hold('rename', { path: (path) => path.includes(`${sep}archive${sep}`), skip: 1 })
  t.teardown(gate.release)
  const pass = post(app, '/archive', {})
  await gate.reached
  const [first] = (await stream.until((events) => events.some((e) => e.event === 'session.deleted'), 5000)).filter((e) => e.event === 'session.deleted')
  t.match(first?.data, { session_id: /^gone_[12]$/, archived: true }, 'the first deletion is shown while the pass is still on the next')
  const firstId = first?.data.session_id as string
  // A client creates the deleted id again while the pass goes on: its events are the newest.
  await createSession(app, firstId, 'again')
  gate.release()
  const answer = (await pass).json()
  t.same([answer.deleted, [...answer.deleted_ids].sort()], [2, ['gone_1', 'gone_2']], 'the pass reports both, as before')
  const events = await stream.until((events) => events.filter((e) => e.event === 'session.deleted').length === 2)
  const ofFirst = events.filter((e) => e.data.session_id === firstId).map((e) => e.event)
  t.same(ofFirst.filter((name) => name !== 'progress'), ['session.deleted', 'session.created', 'tasks.added'], 'the created session is the last word on its id')
  t.equal((await get(app, `/progress?session_id=${firstId}`)).json().total, 1, 'and it is there')
})

t.test('retention is off by default: archived sessions are kept forever', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 1 } })
  await finishedSession(app, 'kept')
  advance(2)
  t.equal((await post(app, '/archive', { older_than_days: 0 })).json().archived, 1)
  advance(3650)
  t.equal((await post(app, '/archive', {})).json().deleted, 0)
  t.same(await archived(dir), ['kept.json'])
})

t.test('create on an archived session brings it back with the new tasks, durably', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  let app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'again')
  advance(31)
  t.equal((await post(app, '/archive', { older_than_days: 0 })).json().archived, 1)

  const res = await post(app, '/create', { session_id: 'again', instructions: '1. c\n2. d' })
  t.equal(res.statusCode, 200)
  t.equal(res.json().total_tasks, 2)
  t.same(await archived(dir), [], 'the archived file is gone')
  const onDisk = JSON.parse(await readFile(join(dir, 'again.json'), 'utf8'))
  t.same(onDisk.session.tasks.map((task: { status: string }) => task.status), ['Completed', 'Completed', 'Pending', 'Pending'], 'old and new tasks are both on disk')
  const list = (await get(app, '/list?session_id=again')).json()
  t.equal(list.total, 4)
  t.notOk('archived' in list)
  t.equal(list.current_index, 2)
  t.match((await get(app, '/stats')).json(), { total_sessions: 1, archived_sessions: 0, storage: { archive_bytes: 0 } })

  await app.close()
  app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  t.equal((await get(app, '/list?session_id=again')).json().total, 4, 'after a restart too')
  t.equal((await post(app, '/execute', { session_id: 'again' })).json().instruction, 'c', 'and it runs on')
})

t.test('concurrent creates on one archived session bring it back once', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'many')
  advance(31)
  await post(app, '/archive', {})
  const replies = await Promise.all(Array.from({ length: 8 }, (_, i) => post(app, '/create', { session_id: 'many', tasks: [{ instruction: `extra ${i}` }] })))
  t.same(replies.map((reply) => reply.statusCode), Array(8).fill(200))
  const tasks = (await get(app, '/list?session_id=many')).json().tasks as Array<{ id: string }>
  t.equal(tasks.length, 10, 'the two archived tasks plus eight new ones')
  t.equal(new Set(tasks.map((task) => task.id)).size, 10)
  t.same(await archived(dir), [])
})

t.test('DELETE removes an archived session; lists filter by archived', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'older')
  advance(1)
  await finishedSession(app, 'newer')
  advance(40)
  await post(app, '/archive', {})
  await createSession(app, 'live', 'z')

  const ids = async (query: string): Promise<string[]> => (await get(app, `/list?session_id=all${query}`)).json().sessions.map((s: { session_id: string }) => s.session_id)
  t.same(await ids(''), ['live'])
  t.same(await ids('&archived=exclude'), ['live'])
  t.same(await ids('&archived=only'), ['newer', 'older'], 'newest first')
  t.same(await ids('&archived=include'), ['live', 'newer', 'older'])
  t.same(await ids('&archived=include&limit=1&offset=1'), ['newer'])
  const only = (await get(app, `${'/list?session_id=all&archived=only'}`)).json()
  t.equal(only.total, 2)
  t.match(only.sessions[0], { session_id: 'newer', total: 2, completed: 2, all_done: true, archived: true })
  t.equal((await get(app, '/list?session_id=all&archived=maybe')).statusCode, 400)

  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/older` })).statusCode, 204)
  t.same(await archived(dir), ['newer.json'])
  t.equal((await get(app, '/list?session_id=older')).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/older` })).statusCode, 404, 'gone for good')
  t.equal((await get(app, '/stats')).json().archived_sessions, 1)
})

t.test('a leftover archived copy of an active session is shadowed, and deleted with it', async (t) => {
  // What a crash between writing the brought-back file and removing the archived one leaves.
  const dir = await tempDir(t)
  await copyLeftBehind(dir, 'both', 'both.json', ['Completed', 'Pending'])
  const app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  const list = (await get(app, '/list?session_id=both')).json()
  t.equal(list.total, 2, 'the active copy is the session')
  t.notOk('archived' in list)
  t.same((await get(app, '/list?session_id=all&archived=include')).json().sessions.map((s: { session_id: string }) => s.session_id), ['both'], 'listed once')
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/both` })).statusCode, 204)
  t.same(await jsonFiles(dir), [])
  t.same(await archived(dir), [], 'the archived copy went too, so nothing comes back')
})

t.test('archiving a session whose stale copy sits in archive/ under a stamped name makes the new copy the session, and a bring-back keeps every task', async (t) => {
  // A bring-back that crashed before removing the archived copy, named <id>.<ms>.json (a second
  // archive, or a backup restored), and the session changed since: the new archive must sort after it.
  const dir = await tempDir(t)
  const stale = Date.now() + 3_600_000
  await copyLeftBehind(dir, 'twice', `twice.${stale}.json`, ['Completed', 'Completed'])
  let app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  t.equal((await post(app, '/archive', { older_than_days: 0 })).json().archived, 1)
  const files = await archived(dir)
  t.equal(files.length, 2, 'the stale copy is never replaced')
  const newer = files.find((name) => name !== `twice.${stale}.json`) as string
  t.ok(Number(/^twice\.(\d+)\.json$/.exec(newer)?.[1]) > stale, `the new copy (${newer}) is named after the stale one`)
  let list = (await get(app, '/list?session_id=twice')).json()
  t.equal(list.archived, true)
  t.equal(list.total, 2, 'the archived session is the one just archived, not the stale copy')

  await app.close()
  app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  t.equal((await get(app, '/list?session_id=twice')).json().total, 2, 'and so after a restart')
  t.equal((await post(app, '/create', { session_id: 'twice', instructions: 'third' })).statusCode, 200)
  list = (await get(app, '/list?session_id=twice')).json()
  t.same(list.tasks.map((task: { instruction: string }) => task.instruction), ['step 1', 'step 2', 'third'], 'brought back with every acknowledged task')
})

t.test('a copy in archive/ stamped by hand past 2^53 stops the archive of its session with a 503 naming it; the session stays active', async (t) => {
  const dir = await tempDir(t)
  await copyLeftBehind(dir, 'far', 'far.9999999999999999.json', ['Completed', 'Completed'])
  let app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  const pass = await post(app, '/archive', { older_than_days: 0 })
  t.equal(pass.statusCode, 503)
  t.match(pass.json().message, /archive\/ holds far\.9999999999999999\.json, stamped past the last stamp taskvault can name a later copy by/)
  t.same(await archived(dir), ['far.9999999999999999.json'], 'no copy under a name the server would not read')
  await app.close()
  app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  const list = (await get(app, '/list?session_id=far')).json()
  t.equal(list.total, 2, 'the acknowledged state is still the session')
  t.notOk('archived' in list)
})
t.test('archived files are indexed at restore without being read; a bad one is set aside when first read', async (t) => {
  const dir = await tempDir(t)
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  await writeFile(join(dir, 'archive', 'good.json'), storedSession('good', ['Completed'], '2025-06-01T00:00:00.000Z'), { mode: 0o600 })
  await writeFile(join(dir, 'archive', 'bad.json'), '{"session_id": "bad", ', { mode: 0o600 })
  // Folders made durable (fsync) in order: the set-aside must reach archive/, corrupt/ and the storage folder.
  const synced: string[] = []
  const fs: FsSeam = {
    ...nodeFs,
    open: (async (path: string, ...rest: Parameters<typeof nodeFs.open> extends [unknown, ...infer R] ? R : never) => {
      const handle = await nodeFs.open(path, ...rest)
      const sync = handle.sync.bind(handle)
      handle.sync = async () => { await sync(); synced.push(path) }
      return handle
    }) as FsSeam['open']
  }
  const app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0 } })
  const stats = (await get(app, '/stats')).json()
  t.equal(stats.archived_sessions, 2, 'both indexed')
  t.equal(stats.storage.failed_loads, 0, 'neither read yet')
  t.ok(existsSync(join(dir, 'archive', 'bad.json')))

  synced.length = 0
  t.equal((await get(app, '/list?session_id=bad')).statusCode, 404)
  t.same(await archived(dir), ['good.json'])
  t.equal((await readdir(join(dir, 'corrupt'))).length, 1, 'set aside, never deleted')
  for (const folder of [join(dir, 'corrupt'), join(dir, 'archive'), dir]) t.ok(synced.includes(folder), `${folder.slice(dir.length) || 'the storage folder'} made durable after the move`)
  t.match((await get(app, '/stats')).json(), { archived_sessions: 1, storage: { failed_loads: 1 } })
  t.equal((await get(app, '/list?session_id=good')).json().archived, true)
})

t.test('POST /archive: validation, defaults, auth', async (t) => {
  const app = await build(t, { config: { TASK_API_KEYS: 'k1' } })
  const send = (payload?: object) => app.inject({ method: 'POST', url: `${API}/archive`, headers: { authorization: 'Bearer k1' }, ...(payload === undefined ? {} : { payload }) })
  t.equal((await send()).statusCode, 200, 'no body means the defaults')
  t.equal((await send({})).statusCode, 200)
  const empty = await app.inject({ method: 'POST', url: `${API}/archive`, headers: { authorization: 'Bearer k1', 'content-type': 'application/json' }, body: '' })
  t.equal(empty.statusCode, 200, 'an empty body under a JSON content type means the defaults too')
  const poisoned = await app.inject({ method: 'POST', url: `${API}/archive`, headers: { authorization: 'Bearer k1', 'content-type': 'application/json' }, body: '{"__proto__": {"x": 1}}' })
  t.equal(poisoned.statusCode, 400, 'a body is parsed as everywhere else (prototype poisoning refused)')
  t.equal((await app.inject({ method: 'POST', url: `${API}/archive`, headers: { authorization: 'Bearer k1', 'content-type': 'application/json' }, body: '{"older_than_days": 0}' })).statusCode, 200)
  for (const bad of [{ older_than_days: -1 }, { older_than_days: 'ten' }, { days: 3 }]) {
    const res = await send(bad)
    t.equal(res.statusCode, 400, JSON.stringify(bad))
    t.match(res.json(), { statusCode: 400, error: 'Bad Request' })
  }
  t.equal((await app.inject({ method: 'POST', url: `${API}/archive`, payload: {} })).statusCode, 401)
})

t.test('archive/ bytes in stats follow archive, bring-back and delete', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'a')
  await finishedSession(app, 'b')
  advance(31)
  await post(app, '/archive', {})
  const size = async (name: string): Promise<number> => (await stat(join(dir, 'archive', name))).size
  t.equal((await get(app, '/stats')).json().storage.archive_bytes, await size('a.json') + await size('b.json'))
  await post(app, '/create', { session_id: 'a', instructions: 'more' })
  t.equal((await get(app, '/stats')).json().storage.archive_bytes, await size('b.json'))
  await app.inject({ method: 'DELETE', url: `${API}/sessions/b` })
  t.match((await get(app, '/stats')).json(), { archived_sessions: 0, storage: { archive_bytes: 0 } })
})

t.test('archived files deleted by hand while the server runs (the seed\'s cleanup advice) leave lists, /stats and /progress at the next list with archived sessions', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  let listings = 0
  const fs: FsSeam = {
    ...nodeFs,
    readdir: (async (path: string, ...rest: unknown[]) => {
      if (path === join(dir, 'archive')) listings++
      return (nodeFs.readdir as (...args: unknown[]) => Promise<unknown>)(path, ...rest)
    }) as FsSeam['readdir']
  }
  const app = await build(t, { dir, clock, fs, config: { TASK_ARCHIVE_DAYS: 30 } })
  for (const id of ['a', 'b', 'c', 'd']) await finishedSession(app, id)
  advance(31)
  await post(app, '/archive', {})
  const listed = async (): Promise<{ total: number, ids: string[] }> => {
    const body = (await get(app, '/list?session_id=all&archived=only')).json()
    return { total: body.total, ids: body.sessions.map((summary: { session_id: string }) => summary.session_id).sort() }
  }
  t.same(await listed(), { total: 4, ids: ['a', 'b', 'c', 'd'] }, 'every archived file read once')
  await rm(join(dir, 'archive', 'a.json'))
  await rm(join(dir, 'archive', 'c.json'))
  t.same(await listed(), { total: 2, ids: ['b', 'd'] }, 'the list no longer shows them')
  t.match((await get(app, '/stats')).json(), { archived_sessions: 2, storage: { archive_bytes: (await stat(join(dir, 'archive', 'b.json'))).size * 2 } })
  t.equal((await get(app, '/progress?session_id=a')).statusCode, 404, 'nor does /progress')
  t.equal((await get(app, '/progress?session_id=b')).statusCode, 200)
  // A folder whose times have settled (its ctime too, which utimes sets to now) is listed again only once it changes.
  const past = new Date(Date.now() - 60_000)
  await utimes(join(dir, 'archive'), past, past)
  await sleep(2_100)
  await listed()
  const before = listings
  t.same(await listed(), { total: 2, ids: ['b', 'd'] })
  t.equal(listings, before, 'an unchanged archive/ is not listed again')
  await rm(join(dir, 'archive', 'd.json'))
  t.same(await listed(), { total: 1, ids: ['b'] }, 'a removal changes its mtime: listed again')
  // The mtime set back after a removal (`touch -d`, rsync's times): the change time tells.
  await utimes(join(dir, 'archive'), past, past)
  await sleep(2_100)
  await listed()
  await rm(join(dir, 'archive', 'b.json'))
  await utimes(join(dir, 'archive'), past, past)
  t.same(await listed(), { total: 0, ids: [] }, 'a removal hidden behind an mtime set back is seen')
})

t.test('a session file moved into archive/ by hand while the server runs (the seed\'s manual archiving) is archived by the next pass, not failing every pass; a delete removes both copies', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  let app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  for (const id of ['moved', 'kept']) await finishedSession(app, id)
  await mkdir(join(dir, 'archive'))
  await rename(join(dir, 'moved.json'), join(dir, 'archive', 'moved.json'))
  advance(31)
  const pass = await post(app, '/archive', {})
  t.equal(pass.statusCode, 200, pass.body)
  t.same(pass.json().archived_ids.sort(), ['kept', 'moved'])
  const copies = (await archived(dir)).filter((name) => name.startsWith('moved.'))
  t.equal(copies.length, 2, `the copy moved by hand and the one archived: ${copies.join(', ')}`)
  t.same(await jsonFiles(dir), [], 'no active file left')
  const list = (await get(app, '/list?session_id=all&archived=only')).json()
  t.same(list.sessions.map((summary: { session_id: string }) => summary.session_id).sort(), ['kept', 'moved'], 'listed once')
  t.match((await get(app, '/list?session_id=moved')).json(), { archived: true, total: 2 }, 'read as archived')
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/moved` })).statusCode, 204)
  t.same((await archived(dir)).filter((name) => name.startsWith('moved.')), [], 'both copies deleted')
  await app.close()
  app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  t.equal((await get(app, '/list?session_id=moved')).statusCode, 404, 'and it stays deleted after a restart')
})

t.test('a session moved into archive/ by hand that is stored past a TASK_MAX_SESSION_BYTES lowered since is archived all the same', async (t) => {
  const dir = await tempDir(t)
  let app = await build(t, { dir })
  await createSession(app, 'big', `1. ${'x'.repeat(40_000)}\n2. b`)
  await post(app, '/execute-all', { session_id: 'big' })
  t.ok((await stat(join(dir, 'big.json'))).size > 65_536, 'stored past the bound set next')
  await app.close()
  app = await build(t, { dir, config: { TASK_MAX_SESSION_BYTES: 65_536 } })
  await mkdir(join(dir, 'archive'))
  await rename(join(dir, 'big.json'), join(dir, 'archive', 'big.json'))
  const pass = await post(app, '/archive', { older_than_days: 0 })
  t.same(pass.json().archived_ids, ['big'], pass.body)
  t.match((await get(app, '/stats')).json(), { archived_sessions: 1, active_sessions: 0 })
})

t.test('bringing back is crash-safe: a failed save leaves it archived, a failed removal leaves both copies', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const fs = faultFs()
  let app = await build(t, { dir, clock, fs, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'back')
  advance(31)
  await post(app, '/archive', {})
  const archivedBytes = await readFile(join(dir, 'archive', 'back.json'))

  fs.fail('open', 'ENOSPC', { path: tempOf('back') })
  const full = await post(app, '/create', { session_id: 'back', instructions: 'more' })
  t.equal(full.statusCode, 507)
  t.same(await jsonFiles(dir), [], 'no active file')
  t.same(await readFile(join(dir, 'archive', 'back.json')), archivedBytes, 'the archived file is untouched')
  t.equal((await get(app, '/list?session_id=back')).json().archived, true, 'still archived and readable')

  fs.heal('open')
  fs.fail('unlink', 'EIO', { path: (path) => path.endsWith('/archive/back.json') })
  t.equal((await post(app, '/create', { session_id: 'back', instructions: 'more' })).statusCode, 200, 'the new tasks are on disk')
  t.same(await jsonFiles(dir), ['back.json'])
  t.same(await archived(dir), ['back.json'], 'the old copy could not be removed')
  await app.close()

  // What a restart (or a crash right after the save) finds: both files; the active one is the session.
  app = await build(t, { dir, clock, config: { TASK_ARCHIVE_DAYS: 30 } })
  const list = (await get(app, '/list?session_id=back')).json()
  t.equal(list.total, 3)
  t.notOk('archived' in list)
})

t.test('/stats counts a copy left behind an active session as no archived session, however the active sessions change after', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs })
  await finishedSession(app, 'back')
  t.equal((await post(app, '/create', { session_id: 'other', instructions: 'x' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['back'])
  t.equal((await get(app, '/stats')).json().archived_sessions, 1)
  // Brought back, but its archived file cannot be removed: a copy behind an active session.
  fs.fail('unlink', 'EIO', { path: (path) => path.endsWith('/archive/back.json') })
  t.equal((await post(app, '/create', { session_id: 'back', instructions: 'more' })).statusCode, 200)
  fs.heal()
  // As many active sessions as when /stats last counted, the archive's files unchanged.
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/other` })).statusCode, 204)
  t.equal((await get(app, '/list?session_id=all&archived=only')).json().total, 0, 'lists show none archived')
  t.equal((await get(app, '/stats')).json().archived_sessions, 0, 'nor does /stats')
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /taskvault_sessions\{state="archived"\} 0\n/u, 'nor /metrics')
})

t.test('a damaged archived file that cannot be set aside: the session answers 404 every time, as when it moves, and backups go on over it', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs })
  for (const id of ['bad', 'good']) await finishedSession(app, id)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids.sort(), ['bad', 'good'])
  await writeFile(join(dir, 'archive', 'bad.json'), '{"not":"a session"}')
  fs.fail('rename', 'EIO', { path: (path) => path.endsWith('/archive/bad.json') })
  // Read through its tasks: progress alone answers from the summary taken when it was archived.
  for (const n of [1, 2]) t.equal((await get(app, '/list?session_id=bad')).statusCode, 404, `read ${n}: not found (the file store keeps no id of an unreadable file)`)
  t.equal((await get(app, '/progress?session_id=bad')).statusCode, 404, 'nor its progress')
  const backup = await app.inject({ method: 'GET', url: `${API}/backup` })
  t.equal(backup.statusCode, 200)
  const names: string[] = []
  for await (const entry of readTarGz(Readable.from([backup.rawPayload]))) names.push(entry.name)
  t.same(names, ['archive/good.json'], 'a whole backup, without the unreadable file')
})

t.test('an archive whose folder fsync fails keeps the session active and readable, then archives it later', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const fs = faultFs()
  const app = await build(t, { dir, clock, fs, config: { TASK_ARCHIVE_DAYS: 30 } })
  await finishedSession(app, 'shaky')
  advance(31)
  fs.fail('dirsync', 'EIO', { path: (path) => path.endsWith('/archive') })
  t.same((await app.archiver.runOnce()).archived, [], 'the move is not acknowledged')
  t.same(await jsonFiles(dir), ['shaky.json'], 'the active file was written back')
  t.same(await archived(dir), [], 'and the copy in doubt removed (its removal not yet synced: owed)')
  t.notOk('archived' in (await get(app, '/list?session_id=shaky')).json(), 'still active')

  fs.heal()
  t.same((await app.archiver.runOnce()).archived, ['shaky'])
  t.same(await jsonFiles(dir), [])
  t.same(await archived(dir), ['shaky.json'], 'one archived copy')
  t.equal((await get(app, '/list?session_id=shaky')).json().archived, true)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/shaky` })).statusCode, 204)
  t.same(await archived(dir), [], 'delete removes every archived copy')
})

t.test('POST /archive answers 503, or 507 on a full disk, when storage fails a move or a deletion, naming what the pass did do', async (t) => {
  const dir = await tempDir(t)
  const { clock, advance } = movableClock()
  const fs = faultFs()
  const app = await build(t, { dir, clock, fs, config: { TASK_ARCHIVE_DAYS: 30, TASK_ARCHIVE_RETENTION_DAYS: 60 } })
  for (const id of ['full', 'fine']) await finishedSession(app, id)
  advance(31)
  fs.fail('rename', 'ENOSPC', { path: (path) => path.endsWith(`${sep}full.json`) })
  const pass = await post(app, '/archive', {})
  t.match([pass.statusCode, pass.json()], [507, { code: 'STORAGE_FULL', error: 'Insufficient Storage', message: "the archive pass could not move or delete 1 session ('full': archiving session 'full' failed: storage is full (ENOSPC)); 1 archived and 0 deleted meanwhile, durably" }])
  t.same(await archived(dir), ['fine.json'], 'the one storage took is archived')
  t.same(await jsonFiles(dir), ['full.json'], 'the other stays active')
  fs.fail('rename', 'EIO', { path: (path) => path.endsWith(`${sep}full.json`) })
  t.match((await post(app, '/archive', {})).json(), { statusCode: 503, code: 'STORAGE_UNAVAILABLE', message: /could not move or delete 1 session \('full': .*\(EIO\)\); 0 archived and 0 deleted/u })
  fs.heal()
  t.same((await post(app, '/archive', {})).json(), { archived: 1, deleted: 0, archived_ids: ['full'], deleted_ids: [] }, 'once storage works')
  // Retention: a deletion storage refuses.
  advance(61)
  fs.fail('rename', 'EIO', { path: (path) => path.endsWith(`${sep}archive${sep}fine.json`) })
  t.match((await post(app, '/archive', {})).json(), { statusCode: 503, message: /could not move or delete 1 session \('fine': .*\); 0 archived and 1 deleted meanwhile/u })
  t.same(await archived(dir), ['fine.json'], 'kept')
  fs.heal()
  // A full disk refusing the rename: retention unlinks the copy in place, which frees room.
  fs.fail('rename', 'ENOSPC', { path: (path) => path.endsWith(`${sep}archive${sep}fine.json`) })
  t.same((await post(app, '/archive', {})).json().deleted_ids, ['fine'])
  t.same(await archived(dir), [], 'deleted, no temp name left')
})

t.test('a DELETE of an archived session that storage refuses (the folder fsync, a rename) answers 503 and leaves it archived, on disk and after a restart', async (t) => {
  const dir = await tempDir(t)
  const archive = join(dir, 'archive')
  await mkdir(archive, { recursive: true, mode: 0o700 })
  await writeFile(join(archive, 'kept.json'), storedSession('kept', ['Completed'], '2026-01-01T00:00:00.000Z'))
  // Archived twice: two copies; the rename of the second fails below.
  await writeFile(join(archive, 'twice.json'), storedSession('twice', ['Completed'], '2026-01-01T00:00:00.000Z'))
  await writeFile(join(archive, 'twice.1767225600000.json'), storedSession('twice', ['Completed', 'Failed'], '2026-01-02T00:00:00.000Z'))
  const before = (await readdir(archive)).sort()
  const fs = faultFs()
  const app = await build(t, { dir, fs })

  fs.fail('dirsync', 'EIO', { path: (path) => path === archive, times: 1 })
  const refused = await app.inject({ method: 'DELETE', url: `${API}/sessions/kept` })
  t.equal(refused.statusCode, 503, refused.body)
  fs.fail('rename', 'EIO', { path: (path) => path === join(archive, 'twice.json') || path === join(archive, 'twice.1767225600000.json'), skip: 1, times: 1 })
  const partly = await app.inject({ method: 'DELETE', url: `${API}/sessions/twice` })
  t.equal(partly.statusCode, 503, partly.body)
  fs.heal()
  t.same((await readdir(archive)).sort(), before, 'every copy is where it was')
  for (const id of ['kept', 'twice']) t.match((await get(app, `/progress?session_id=${id}`)).json(), { archived: true }, `${id} is still archived`)
  await app.close()

  const again = await build(t, { dir })
  for (const id of ['kept', 'twice']) t.match((await get(again, `/progress?session_id=${id}`)).json(), { archived: true }, `${id} after a restart`)
  t.equal((await again.inject({ method: 'DELETE', url: `${API}/sessions/twice` })).statusCode, 204)
  t.equal((await get(again, '/progress?session_id=twice')).statusCode, 404)
  t.same(await readdir(archive), ['kept.json'], 'deleted for good, no temp file left')
})

t.test('a DELETE of an archived session on a disk with no room for a new name unlinks its copies in place (204), and a folder fsync failing after that answers 503; both stay gone after a restart', async (t) => {
  const dir = await tempDir(t)
  const archive = join(dir, 'archive')
  await mkdir(archive, { recursive: true, mode: 0o700 })
  for (const id of ['kept', 'other']) await writeFile(join(archive, `${id}.json`), storedSession(id, ['Completed'], '2026-01-01T00:00:00.000Z'))
  await writeFile(join(archive, 'twice.json'), storedSession('twice', ['Completed'], '2026-01-01T00:00:00.000Z'))
  await writeFile(join(archive, 'twice.1767225600000.json'), storedSession('twice', ['Completed', 'Failed'], '2026-01-02T00:00:00.000Z'))
  const fs = faultFs()
  const app = await build(t, { dir, fs })

  // The first copy's rename lands; the second finds no room for its temp name.
  fs.fail('rename', 'ENOSPC', { path: (path) => path.startsWith(archive + sep), skip: 1 })
  const freed = await app.inject({ method: 'DELETE', url: `${API}/sessions/twice` })
  t.equal(freed.statusCode, 204, freed.body)
  t.same((await readdir(archive)).sort(), ['kept.json', 'other.json'], 'both copies gone, no temp name left')
  t.equal((await get(app, '/progress?session_id=twice')).statusCode, 404)

  fs.fail('rename', 'ENOSPC', { path: (path) => path.startsWith(archive + sep) })
  fs.fail('dirsync', 'EIO', { path: (path) => path === archive, times: 1 })
  const unsynced = await app.inject({ method: 'DELETE', url: `${API}/sessions/kept` })
  t.match([unsynced.statusCode, unsynced.json()], [503, { code: 'STORAGE_UNAVAILABLE', message: "deleting archived session 'kept' failed: storage is unavailable (EIO)" }])
  t.same((await readdir(archive)).sort(), ['other.json'], 'unlinked all the same: nothing could be put back')
  t.equal((await get(app, '/progress?session_id=kept')).statusCode, 404, 'memory says what the folder holds')
  fs.heal()
  t.match((await get(app, '/progress?session_id=other')).json(), { archived: true }, 'the other session is untouched')
  await app.close()

  const again = await build(t, { dir })
  for (const id of ['twice', 'kept']) t.equal((await get(again, `/progress?session_id=${id}`)).statusCode, 404, `${id} after a restart`)
  t.match((await get(again, '/progress?session_id=other')).json(), { archived: true })
})

/** A storage folder whose archive/ holds session `kept`, finished. */
async function archivedKept (t: Test): Promise<{ dir: string, archive: string }> {
  const dir = await tempDir(t)
  const archive = join(dir, 'archive')
  await mkdir(archive, { recursive: true, mode: 0o700 })
  await writeFile(join(archive, 'kept.json'), storedSession('kept', ['Completed'], '2026-01-01T00:00:00.000Z'))
  return { dir, archive }
}

t.test('a read while a refused DELETE of an archived session waits on its folder fsync does not lose the session from the index', async (t) => {
  const { dir, archive } = await archivedKept(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs })
  // The delete's archive/ fsync is held, then fails.
  const gate = fs.hold('dirsync', { path: (path) => path === archive, times: 1 })
  fs.fail('dirsync', 'EIO', { path: (path) => path === archive, times: 1 })
  const deleting = app.inject({ method: 'DELETE', url: `${API}/sessions/kept` })
  await gate.reached
  // Reads that do not wait for the session's queue: they find the copy gone from its name.
  await get(app, '/list?session_id=all&archived=only')
  const during = get(app, '/list?session_id=kept')
  gate.release()
  await during
  t.equal((await deleting).statusCode, 503)
  fs.heal()
  t.equal((await get(app, '/list?session_id=kept')).statusCode, 200, 'still archived and readable')
  t.match((await get(app, '/list?session_id=all&archived=include')).json(), { sessions: [{ session_id: 'kept' }] }, 'and listed')
})

t.test('a list whose reading of archive/ spans a refused DELETE of an archived session does not lose the session from the index', async (t) => {
  const { dir, archive } = await archivedKept(t)
  const fs = faultFs()
  // The list's reading of archive/, once armed, is held after it has read the folder.
  let listing: { held: Promise<void>, reached: () => void, release: Promise<void> } | null = null
  const seam: FsSeam = {
    ...fs,
    readdir: (async (path: string, ...rest: unknown[]) => {
      const listed = await (fs.readdir as (...args: unknown[]) => Promise<unknown>)(path, ...rest)
      const hold = path === archive ? listing : null
      if (hold !== null) {
        listing = null
        hold.reached()
        await hold.release
      }
      return listed
    }) as FsSeam['readdir']
  }
  const app = await build(t, { dir, fs: seam })
  const gate = fs.hold('dirsync', { path: (path) => path === archive, times: 1 })
  fs.fail('dirsync', 'EIO', { path: (path) => path === archive, times: 1 })
  const deleting = app.inject({ method: 'DELETE', url: `${API}/sessions/kept` })
  await gate.reached
  // The copy is under a temp name now: the list reads archive/ without it, and waits.
  let reached = (): void => {}
  let release = (): void => {}
  const held = new Promise<void>((resolve) => { reached = resolve })
  listing = { held, reached, release: new Promise<void>((resolve) => { release = resolve }) }
  const listed = get(app, '/list?session_id=all&archived=only')
  await held
  // The delete fails and puts the copy back, the session still indexed; then the list goes on.
  gate.release()
  t.equal((await deleting).statusCode, 503)
  release()
  await listed
  fs.heal()
  t.equal((await get(app, '/list?session_id=kept')).statusCode, 200, 'still archived and readable')
  t.match((await get(app, '/list?session_id=all&archived=include')).json(), { sessions: [{ session_id: 'kept' }] }, 'and listed')
})

t.test('an execute while an archive pass writes the session\'s move answers 409 and starts no run; the session is archived', async (t) => {
  const { fs, held, release } = heldArchiveMove()
  const app = await build(t, { dir: await tempDir(t), fs })
  await finishedSession(app, 'moving')
  const events: string[] = []
  app.taskEvents.subscribe((event) => { if (event.data.session_id === 'moving') events.push(event.name) })
  const pass = post(app, '/archive', { older_than_days: 0 })
  await waitFor('the archive pass to be moving the session', held)
  for (const path of ['/execute-all', '/execute']) {
    const refused = await post(app, path, { session_id: 'moving' })
    t.equal(refused.statusCode, 409, `${path}: ${refused.body}`)
    t.match(refused.json(), { code: 'SESSION_BUSY', message: /being archived or deleted right now/ })
  }
  release()
  t.same((await pass).json().archived_ids, ['moving'])
  t.same(events, ['session.archived'], 'no run started')
})

t.test('a copy left in archive/ behind an active session (a bring-back whose removal of it failed) is not counted as an archived session', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs })
  await finishedSession(app, 'gone')
  await finishedSession(app, 'back')
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids.sort(), ['back', 'gone'])
  fs.fail('unlink', 'EIO', { path: (path) => path === join(dir, 'archive', 'back.json'), times: 1 })
  t.equal((await post(app, '/create', { session_id: 'back', instructions: 'more' })).statusCode, 200, 'back is brought back')
  fs.heal()
  t.equal((await get(app, '/progress?session_id=back')).statusCode, 200, 'back is active')
  t.ok((await readdir(join(dir, 'archive'))).includes('back.json'), 'its copy stayed in archive/')
  const stats = (await get(app, '/stats')).json()
  t.match(stats, { total_sessions: 1, archived_sessions: 1 }, 'one active, one archived: back counted once')
  t.same((await get(app, '/list?session_id=all&archived=only')).json().sessions.map((s: { session_id: string }) => s.session_id), ['gone'], 'as the list says')
  // After a restart, the restore's log line counts as /stats does.
  await app.close()
  const log = memoryLog()
  const again = await build(t, { dir, logger: log.logger })
  t.match(log.lines().find((line) => line.msg === 'Restored 1 task sessions from disk'), { sessions: 1, archived: 1 }, 'the restore says one archived session')
  t.match((await get(again, '/stats')).json(), { archived_sessions: 1 })
})

t.test('a POST /archive that a shutdown cuts short answers 503 naming what it did, not 200 with a part; one queued behind it too', async (t) => {
  const { fs, held, release } = heldArchiveMove()
  const dir = await tempDir(t)
  const app = await build(t, { dir, fs })
  for (const id of ['first', 'second']) await finishedSession(app, id)
  const pass = post(app, '/archive', { older_than_days: 0 })
  await waitFor('the archive pass to be moving a session', held)
  // Another pass's arguments: queued behind the first, not sharing it.
  const queued = post(app, '/archive', { older_than_days: 1 })
  // Time for it to reach the handler (past its own check for a shutdown) and queue.
  await sleep(200)
  const closing = app.close()
  await waitFor('the shutdown to begin', () => app.taskManager.shuttingDown)
  release()
  const cut = await pass
  t.equal(cut.statusCode, 503, cut.body)
  t.match(cut.json(), { code: 'SHUTTING_DOWN', message: /^the archive pass stopped early \(the service is shutting down\); 1 archived and 0 deleted meanwhile, durably$/u })
  const late = await queued
  t.equal(late.statusCode, 503, late.body)
  t.match(late.json(), { code: 'SHUTTING_DOWN', message: /stopped early \(the service is shutting down\); 0 archived/u })
  await closing
  t.equal((await archived(dir)).length, 1, 'the one it answered as archived is in archive/')
  t.equal((await jsonFiles(dir)).length, 1, 'the other is still active')
})
