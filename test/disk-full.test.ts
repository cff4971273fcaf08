/**
 * Storage faults (issue 5, "Faults"): ENOSPC answers 507, EIO/EACCES 503; a failed request
 * changes nothing in memory, reads keep working, no temp file is left, every file parses, and
 * writes work again once space is freed or the fault is gone.
 *
 * 1. On a real full disk: a 512 KiB tmpfs mounted by the test (root, Linux). Skipped, saying
 *    why, where mounting is not permitted.
 * 2. Through the store's fs seam, always: faults injected at open, partway through the write
 *    (half the bytes written first), at fsync, at rename and at the folder fsync.
 */
import { cp, readFile, readdir, rm, statfs } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { buildApp } from '../app.js'
import { SessionFile } from '../schemas/session.js'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { setTimeout as sleep } from 'node:timers/promises'
import { API, archivedSession, build, get, memoryLog, post, tempDir, waitFor, withoutFreeSpace, type TestContext } from './helper.js'
import { fill, mountedFolder } from './tmpfs.js'
import { faultFs, tempOf, type Where } from './faults.js'
import { liveFile } from '../services/session/draft.js'
import { appendTasks } from '../services/session/session.js'

const checkFile = TypeCompiler.Compile(SessionFile)
const TEMP_FILE = /^\..*\.tmp$/u
const BIG = 60_000

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

interface TaskView {
  id: string
  instruction: string
  status: string
  attempts: number
  result: string | null
}

/** Everything the API shows: list of all sessions, stats, and each session's tasks. */
interface ApiState {
  all: unknown
  stats: unknown
  sessions: Record<string, unknown>
}

async function apiState (t: Test, app: FastifyInstance): Promise<ApiState> {
  const all = await get(app, '/list?session_id=all&limit=1000')
  const stats = await get(app, '/stats')
  t.equal(all.statusCode, 200, 'list all answers 200')
  t.equal(stats.statusCode, 200, 'stats answers 200')
  const sessions: Record<string, unknown> = {}
  for (const summary of all.json().sessions as Array<{ session_id: string }>) {
    const res = await get(app, `/list?session_id=${summary.session_id}`)
    sessions[summary.session_id] = res.statusCode === 200 ? res.json() : res.statusCode
  }
  return { all: all.json(), stats: withoutFreeSpace(stats.json()), sessions }
}

async function tasksOf (app: FastifyInstance, sessionId: string): Promise<TaskView[]> {
  const res = await get(app, `/list?session_id=${sessionId}`)
  if (res.statusCode !== 200) throw new Error(`list ${sessionId}: ${res.statusCode} ${res.body}`)
  return res.json().tasks as TaskView[]
}

/** The session files in `dir`, parsed; problems (unparsable, wrong format, temp files) are listed. */
async function readFolder (dir: string): Promise<{ files: Map<string, SessionFile>, temps: string[], problems: string[] }> {
  const files = new Map<string, SessionFile>()
  const problems: string[] = []
  const names = await readdir(dir)
  for (const name of names.filter((n) => n.endsWith('.json'))) {
    try {
      const parsed: unknown = JSON.parse(await readFile(join(dir, name), 'utf8'))
      if (!checkFile.Check(parsed)) {
        const first = checkFile.Errors(parsed).First()
        problems.push(`${name}: not the session file format at ${first?.path ?? '?'}: ${first?.message ?? ''}`)
      } else if (name !== `${parsed.session_id}.json`) {
        problems.push(`${name}: holds session ${parsed.session_id}`)
      } else {
        files.set(parsed.session_id, parsed)
      }
    } catch (err) {
      problems.push(`${name}: ${(err as Error).message}`)
    }
  }
  return { files, temps: names.filter((n) => TEMP_FILE.test(n)), problems }
}

/** No temp file, every file parses and matches the format, and memory shows exactly what disk holds. */
async function checkFolder (t: Test, app: FastifyInstance, dir: string, label: string): Promise<Map<string, SessionFile>> {
  const { files, temps, problems } = await readFolder(dir)
  t.same(temps, [], `${label}: no temp file is left in the folder`)
  t.same(problems, [], `${label}: every session file parses and matches the format`)
  const all = (await get(app, '/list?session_id=all&limit=1000')).json().sessions as Array<{ session_id: string }>
  t.same(all.map((s) => s.session_id).sort(), [...files.keys()].sort(), `${label}: the sessions served are the session files`)
  const differ: string[] = []
  for (const [id, file] of files) {
    const res = await get(app, `/list?session_id=${id}`)
    if (res.statusCode !== 200 || !isDeepStrictEqual(res.json().tasks, file.session.tasks)) differ.push(id)
  }
  t.same(differ, [], `${label}: every session in memory equals its file`)
  return files
}

/** Fastify's error shape with the expected status and code. */
function storageError (t: Test, res: LightMyRequestResponse, status: 503 | 507, label: string): void {
  t.equal(res.statusCode, status, `${label}: answers ${status}`)
  const body = res.json()
  const [code, error, mention] = status === 507
    ? ['STORAGE_FULL', 'Insufficient Storage', /storage is full/]
    : ['STORAGE_UNAVAILABLE', 'Service Unavailable', /storage is unavailable/]
  t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'], `${label}: Fastify's error shape`)
  t.match(body, { statusCode: status, code, error, message: mention }, `${label}: ${code}, the message says so`)
}

function del (app: FastifyInstance, sessionId: string): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'DELETE', url: `${API}/sessions/${sessionId}` })
}

/** Builds on `dir`, reporting a failure to start instead of throwing (plugins load inside buildApp). */
async function tryOpen (t: TestContext, dir: string): Promise<{ app: FastifyInstance | null, error: Error | null }> {
  let app: FastifyInstance | undefined
  try {
    app = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_SHUTDOWN_GRACE_MS: 2000, TASK_ARCHIVE_DAYS: 0 } })
    const opened = app
    t.teardown(() => opened.close().catch(() => {}))
    await app.ready()
    return { app, error: null }
  } catch (err) {
    await app?.close().catch(() => {})
    return { app: null, error: err as Error }
  }
}

/** Acknowledged creates and deletes, to check a restart against. */
class Model {
  readonly created = new Map<string, string[]>()
  readonly deleted = new Set<string>()

  async create (app: FastifyInstance, sessionId: string, instructions: string[]): Promise<LightMyRequestResponse> {
    const res = await post(app, '/create', { session_id: sessionId, tasks: instructions.map((instruction) => ({ instruction })) })
    if (res.statusCode === 200) {
      this.created.set(sessionId, [...(this.created.get(sessionId) ?? []), ...res.json().task_ids as string[]])
      this.deleted.delete(sessionId)
    }
    return res
  }

  async delete (app: FastifyInstance, sessionId: string): Promise<LightMyRequestResponse> {
    const res = await del(app, sessionId)
    if (res.statusCode === 204) {
      this.created.delete(sessionId)
      this.deleted.add(sessionId)
    }
    return res
  }

  /** Every acknowledged task is there, in order; every acknowledged delete stays deleted. */
  async check (t: Test, app: FastifyInstance, label: string): Promise<void> {
    const missing: string[] = []
    for (const [sessionId, ids] of this.created) {
      const res = await get(app, `/list?session_id=${sessionId}`)
      const have = res.statusCode === 200 ? (res.json().tasks as TaskView[]).map((task) => task.id) : []
      if (!isDeepStrictEqual(have, ids)) missing.push(`${sessionId}: expected ${ids.join(',')}, found ${res.statusCode} ${have.join(',')}`)
    }
    t.same(missing, [], `${label}: every acknowledged task is there, nothing else`)
    const back: string[] = []
    for (const sessionId of this.deleted) if ((await get(app, `/progress?session_id=${sessionId}`)).statusCode !== 404) back.push(sessionId)
    t.same(back, [], `${label}: deleted sessions stay deleted`)
  }
}

// ---------------------------------------------------------------------------------------
// 1. A real full disk
// ---------------------------------------------------------------------------------------

/** A pass-through seam that records the real errors that temp-file writes hit, and how far they got. */
function spyFs (): FsSeam & { writeFailures: Array<{ code: string, written: number, of: number }> } {
  const writeFailures: Array<{ code: string, written: number, of: number }> = []
  const open = (async (...args: Parameters<typeof nodeFs.open>) => {
    const handle = await nodeFs.open(...args)
    if (!String(args[0]).endsWith('.tmp')) return handle
    const writeFile = handle.writeFile.bind(handle)
    handle.writeFile = (async (data: Buffer) => {
      try {
        return await writeFile(data)
      } catch (err) {
        writeFailures.push({ code: String((err as NodeJS.ErrnoException).code), written: (await handle.stat()).size, of: data.length })
        throw err
      }
    }) as FileHandle['writeFile']
    return handle
  }) as typeof nodeFs.open
  return { ...nodeFs, open, writeFailures }
}

t.test('a real full disk: a 512 KiB tmpfs', async (t) => {
  // Teardowns run last-registered first: apps close, then this unmounts, then the folder goes.
  const dir = await mountedFolder(t, '512k', 'the fs-seam tests below cover the same behaviour')
  if (dir === null) return
  const fsInfo = await statfs(dir)
  t.ok(fsInfo.blocks * fsInfo.bsize <= 512 * 1024, `the mounted filesystem holds 512 KiB (${fsInfo.blocks} blocks of ${fsInfo.bsize})`)

  const spy = spyFs()
  let app = await build(t, { dir, fs: spy, config: { TASK_ARCHIVE_DAYS: 0 } })
  const model = new Model()
  t.equal((await model.create(app, 'small', ['small one', 'small two', 'small three', 'small four'])).statusCode, 200, 'a small session is created')

  // --- Fill it with sessions holding large instructions until a create answers 507. -------
  let before: ApiState | null = null
  let full: LightMyRequestResponse | null = null
  let failedId = ''
  for (let i = 0; i < 40 && full === null; i++) {
    before = await apiState(t, app)
    const res = await model.create(app, `big-${i}`, [`big ${i} ${'x'.repeat(BIG)}`])
    if (res.statusCode !== 200) {
      full = res
      failedId = `big-${i}`
    }
  }
  if (full === null || before === null) {
    t.fail('40 creates of 60 KB never filled a 512 KiB disk')
    return
  }
  storageError(t, full, 507, 'the create that no longer fits')
  t.ok(spy.writeFailures.some((f) => f.code === 'ENOSPC'), 'the 507 comes from a real ENOSPC of the write', { writeFailures: spy.writeFailures })
  t.comment(`real ENOSPC after ${model.created.size - 1} big sessions; writes failed at ${spy.writeFailures.map((f) => `${f.written}/${f.of} bytes`).join(', ')}`)
  t.same(await apiState(t, app), before, 'nothing in memory changed: list, stats and every session as before the failed create')
  t.equal((await get(app, `/progress?session_id=${failedId}`)).statusCode, 404, 'the session whose create failed does not exist')
  t.equal((await get(app, '/progress?session_id=small')).statusCode, 200, 'progress keeps working')
  await checkFolder(t, app, dir, 'after the failed create')

  // --- Execute on a full disk: 200 or 507, and memory agrees with disk either way. ---------
  for (const sessionId of ['small', 'big-0']) {
    const beforeExecute = await apiState(t, app)
    const res = await post(app, '/execute', { session_id: sessionId })
    const memory = (await tasksOf(app, sessionId))[0] as TaskView
    const disk = JSON.parse(await readFile(join(dir, `${sessionId}.json`), 'utf8')).session.tasks[0] as TaskView
    t.same(memory, disk, `execute ${sessionId} (${res.statusCode}): the task in memory equals the task on disk`)
    if (res.statusCode === 507) {
      storageError(t, res, 507, `execute ${sessionId}`)
      t.not(memory.status, 'Completed', `execute ${sessionId}: a 507 did not complete the task`)
      if (memory.status === 'Pending') t.same(await apiState(t, app), beforeExecute, `execute ${sessionId}: the start did not fit; nothing changed`)
      else t.match(memory, { status: 'InProgress', attempts: 1 }, `execute ${sessionId}: the start was saved, the finish did not fit`)
    } else {
      t.equal(res.statusCode, 200, `execute ${sessionId}: 200 when it fits`)
      t.match(memory, { status: 'Completed', attempts: 1 }, `execute ${sessionId}: Completed in memory and on disk`)
    }
    t.comment(`execute ${sessionId} on the full disk: ${res.statusCode}`)
  }
  await checkFolder(t, app, dir, 'after executes on the full disk')

  // --- Free space by deleting (deletes must work on a full disk); writes work again. -------
  for (const sessionId of ['big-1', 'big-2']) {
    t.equal((await model.delete(app, sessionId)).statusCode, 204, `delete ${sessionId} works on a full disk`)
  }
  const resumed = await post(app, '/execute', { session_id: 'big-3' })
  t.match([resumed.statusCode, resumed.json()], [200, { status: 'Completed' }], 'a big session executes once space is freed')
  t.equal((await model.create(app, 'after-free', ['room again'])).statusCode, 200, 'a new session is created once space is freed')
  t.equal((await model.create(app, 'big-0', ['one more'])).statusCode, 200, 'an existing session grows once space is freed')
  await checkFolder(t, app, dir, 'after space was freed')

  // --- Full to the last byte with a filler file of our own. ------------------------------
  const filler = join(dir, 'filler.bin')
  const fillerBytes = await fill(filler)
  t.equal((await statfs(dir)).bavail, 0, `the disk is full to the last block (filler ${fillerBytes} bytes)`)
  const brim = await apiState(t, app)
  storageError(t, await post(app, '/create', { session_id: 'tiny', tasks: [{ instruction: 't' }] }), 507, 'a tiny new session on a brim-full disk')
  storageError(t, await post(app, '/create', { session_id: 'small', tasks: [{ instruction: 't' }] }), 507, 'a tiny append on a brim-full disk')
  storageError(t, await post(app, '/execute-all', { session_id: 'small' }), 507, 'execute-all on a brim-full disk')
  t.same(await apiState(t, app), brim, 'brim-full: nothing in memory changed')
  await checkFolder(t, app, dir, 'brim-full')

  // --- A restart on a brim-full disk: the sessions load and reads work. ------------------
  await app.close()
  await fill(filler)
  const restarted = await tryOpen(t, dir)
  t.equal(restarted.error?.message ?? null, null, 'a server restarted on a brim-full disk starts (reads, deletes and stats work)')
  if (restarted.app !== null) {
    app = restarted.app
    await model.check(t, app, 'restarted on a brim-full disk')
  }

  // --- Free the filler: writes work again, and a restart loads everything acknowledged. --
  await rm(filler)
  if (restarted.app === null) app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  // A finished big task holds its 60 KB twice (the echo agent's result is the instruction).
  for (const sessionId of ['big-4', 'big-5']) t.equal((await model.delete(app, sessionId)).statusCode, 204, `delete ${sessionId} (room for big-0 to finish)`)
  t.equal((await model.create(app, 'tiny', ['t'])).statusCode, 200, 'a create works once the filler is removed')
  for (const sessionId of ['small', 'big-0']) {
    // big-0 may hold a task left InProgress by a finish that did not fit: it runs again here.
    const done = await post(app, '/execute-all', { session_id: sessionId })
    t.match([done.statusCode, done.json().progress], [200, { all_done: true }], `execute-all ${sessionId} works once the filler is removed`)
  }
  await checkFolder(t, app, dir, 'after the filler was removed')
  const final = await apiState(t, app)
  await app.close()
  const again = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  await model.check(t, again, 'restart after the disk was full')
  const reloaded = await apiState(t, again)
  t.same(reloaded.sessions, final.sessions, 'restart: every session exactly as acknowledged')
  t.same(reloaded.all, final.all, 'restart: the session list is the same')
  t.match((reloaded.stats as { storage: { failed_loads: number } }).storage, { failed_loads: 0 }, 'restart: nothing failed to load')
  await checkFolder(t, again, dir, 'after the restart')
})

// ---------------------------------------------------------------------------------------
// 2. Through the fs seam
// ---------------------------------------------------------------------------------------

const CASES: Array<{ code: string, where: Where, status: 503 | 507 }> = [
  { code: 'ENOSPC', where: 'write', status: 507 },
  { code: 'ENOSPC', where: 'open', status: 507 },
  { code: 'EDQUOT', where: 'write', status: 507 },
  { code: 'EIO', where: 'write', status: 503 },
  { code: 'EIO', where: 'sync', status: 503 },
  { code: 'EIO', where: 'rename', status: 503 },
  { code: 'EACCES', where: 'open', status: 503 }
]

for (const { code, where, status } of CASES) {
  t.test(`fs seam: ${code} at ${where} → ${status}, nothing changes, and the service recovers`, async (t) => {
    const dir = await tempDir(t)
    const fs = faultFs()
    let app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0 } })
    const model = new Model()
    await model.create(app, 'keep', ['keep one', 'keep two', 'keep three'])
    await model.create(app, 'doomed', ['to be deleted during the fault'])
    t.equal((await post(app, '/execute', { session_id: 'keep' })).statusCode, 200, 'one task of keep runs before the fault')
    const keepBytes = await readFile(join(dir, 'keep.json'))
    const before = await apiState(t, app)

    fs.fail(where, code)
    storageError(t, await model.create(app, 'keep', ['appended during the fault']), status, 'create on an existing session')
    storageError(t, await model.create(app, 'fresh', ['new during the fault']), status, 'create of a new session')
    storageError(t, await post(app, '/execute', { session_id: 'keep' }), status, 'execute')
    storageError(t, await post(app, '/execute-all', { session_id: 'keep' }), status, 'execute-all')
    const burst = await Promise.all(Array.from({ length: 10 }, (_, i) => model.create(app, 'keep', [`burst ${i}`])))
    t.same(burst.map((res) => res.statusCode), Array(10).fill(status), `a coalesced burst of creates all answer ${status}`)
    t.ok(fs.fired.length > 0 && fs.fired.every((f) => f.code === code && f.where === where), `the fault fired at ${where}`)
    if (where === 'write') t.ok(fs.fired.every((f) => f.partial > 0), 'each failing write had written part of the file first')

    t.same(await apiState(t, app), before, 'nothing in memory changed: list, stats and every session as before')
    t.equal((await get(app, '/progress?session_id=fresh')).statusCode, 404, 'a session whose first save failed does not exist')
    t.same(await readFile(join(dir, 'keep.json')), keepBytes, 'the file on disk is unchanged')
    t.same((await tasksOf(app, 'keep')).map((task) => task.status), ['Completed', 'Pending', 'Pending'], 'the next task is still Pending')
    await checkFolder(t, app, dir, 'during the fault')
    t.equal((await model.delete(app, 'doomed')).statusCode, 204, 'a delete works during a write fault')
    t.equal((await get(app, '/progress?session_id=doomed')).statusCode, 404, 'the deleted session is gone')

    fs.heal()
    t.equal((await model.create(app, 'keep', ['appended after the fault'])).statusCode, 200, 'create works once the fault is cleared')
    const next = await post(app, '/execute', { session_id: 'keep' })
    t.match([next.statusCode, next.json()], [200, { instruction: 'keep two', status: 'Completed' }], 'execute works once the fault is cleared')
    t.equal((await model.create(app, 'fresh', ['new after the fault'])).statusCode, 200, 'a new session is created once the fault is cleared')
    await checkFolder(t, app, dir, 'after the fault')

    const acknowledged = await apiState(t, app)
    await app.close()
    app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
    await model.check(t, app, 'restart on the same folder')
    const reloaded = await apiState(t, app)
    t.same(reloaded.sessions, acknowledged.sessions, 'restart: every session exactly as acknowledged')
    t.same((await tasksOf(app, 'keep')).map((task) => [task.instruction, task.status]),
      [['keep one', 'Completed'], ['keep two', 'Completed'], ['keep three', 'Pending'], ['appended after the fault', 'Pending']],
      'restart: keep holds what was acknowledged, none of what failed')
    await checkFolder(t, app, dir, 'after the restart')
  })
}

t.test('fs seam: ENOSPC on the save that finishes a task → 507, memory agrees with disk, it runs again', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0 } })
  const model = new Model()
  await model.create(app, 'half', ['first', 'second'])
  fs.fail('write', 'ENOSPC', { skip: 1 }) // the start (InProgress) is saved, the finish is not
  const res = await post(app, '/execute', { session_id: 'half' })
  storageError(t, res, 507, 'execute whose finishing save fails')
  t.equal(fs.fired.length, 1, 'exactly the finishing save failed')
  const memory = (await tasksOf(app, 'half'))[0]
  t.match(memory, { status: 'InProgress', attempts: 1, result: null }, 'memory: the task stays InProgress (what disk holds)')
  await checkFolder(t, app, dir, 'after the failed finish')
  fs.heal()
  const again = await post(app, '/execute', { session_id: 'half' })
  t.match([again.statusCode, again.json()], [200, { instruction: 'first', status: 'Completed' }], 'it runs again once space is back')
  t.equal((await tasksOf(app, 'half'))[0]?.attempts, 2, 'the re-run counts as attempt 2')
  await checkFolder(t, app, dir, 'after the re-run')
})

t.test('fs seam: EIO on the folder fsync after the rename → 503, and the failed change stays out', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  let app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0 } })
  const model = new Model()
  await model.create(app, 'keep', ['keep one'])
  const keepBytes = await readFile(join(dir, 'keep.json'))
  const before = await apiState(t, app)

  fs.fail('dirsync', 'EIO')
  storageError(t, await model.create(app, 'keep', ['appended during the fault']), 503, 'create whose folder fsync fails')
  t.ok(fs.fired.some((f) => f.where === 'dirsync'), 'the folder fsync failed')
  t.same(await apiState(t, app), before, 'nothing in memory changed')
  t.same((await readFolder(dir)).temps, [], 'no temp file is left')
  fs.heal()
  const onDisk = await readFile(join(dir, 'keep.json'))
  t.same(onDisk, keepBytes, 'the file on disk is unchanged by the failed request')
  await app.close()
  app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  const tasks = (await tasksOf(app, 'keep')).map((task) => task.instruction)
  t.same(tasks, ['keep one'], 'restart: the change answered 503 is not there')
})

t.test('fs seam: the folder fsync fails after the rename and the write-back fails too → the acknowledged state is put back once the disk works, by a retry or at shutdown', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const logs = memoryLog()
  let app = await build(t, { dir, fs, logger: logs.logger, config: { TASK_ARCHIVE_DAYS: 0, TASK_RUN_RETRY_MS: 100, TASK_RUN_RETRY_MAX_MS: 400 } })
  const model = new Model()
  await model.create(app, 'keep', ['keep one'])
  const keepBytes = await readFile(join(dir, 'keep.json'))

  // The append lands and its folder fsync fails; the write-back then fails before its rename.
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('write', 'EIO', { skip: 1 })
  storageError(t, await model.create(app, 'keep', ['appended during the fault']), 503, 'create whose folder fsync fails')
  t.match(await readFile(join(dir, 'keep.json'), 'utf8'), /appended during the fault/u, 'the disk holds the change answered 503, for now')
  t.ok(logs.lines().some((line) => line.msg === 'Could not put back the acknowledged state after a failed save; trying again' && line.session_id === 'keep' && line.level === 40), 'the failed write-back is logged')
  await sleep(300)
  t.match(await readFile(join(dir, 'keep.json'), 'utf8'), /appended during the fault/u, 'still, while the disk fails')
  fs.heal()
  // The message is logged once the write-back's folder fsync is done, a moment after its rename.
  await waitFor('the put-back to be logged', () => logs.messages().includes('Storage holds the acknowledged states again after failed saves'), 5000)
  t.ok((await readFile(join(dir, 'keep.json'))).equals(keepBytes), 'the acknowledged state is put back')

  // Failing until the shutdown begins: the shutdown tries once more.
  await app.close()
  app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0, TASK_RUN_RETRY_MS: 3_600_000 } })
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('write', 'EIO', { skip: 1 })
  storageError(t, await model.create(app, 'keep', ['appended before the shutdown']), 503, 'create whose folder fsync fails')
  fs.heal()
  await app.close()
  t.ok((await readFile(join(dir, 'keep.json'))).equals(keepBytes), 'the shutdown put the acknowledged state back')
  app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  t.same((await tasksOf(app, 'keep')).map((task) => task.instruction), ['keep one'], 'restart: neither change answered 503 is there')
})

t.test('fs seam: a DELETE whose folder fsync fails answers 503 and leaves the session where a restart finds it, with no room to write it again', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0 } })
  const model = new Model()
  await model.create(app, 'kept', ['keep one', 'keep two'])
  const bytes = await readFile(join(dir, 'kept.json'))
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('open', 'ENOSPC')
  storageError(t, await model.delete(app, 'kept'), 503, 'a delete whose folder fsync fails')
  t.same(await readFile(join(dir, 'kept.json')), bytes, 'the file is where it was, as it was')
  t.same((await readFolder(dir)).temps, [], 'no temp file is left')
  // What a kill -9 now leaves behind: the folder, started again.
  const copy = await tempDir(t)
  await cp(dir, copy, { recursive: true })
  await rm(join(copy, '.taskvault.lock'))
  const restarted = await build(t, { dir: copy, config: { TASK_ARCHIVE_DAYS: 0 } })
  await model.check(t, restarted, 'a restart after the failed delete')
  await restarted.close()
  fs.heal()
  t.equal((await model.delete(app, 'kept')).statusCode, 204, 'the delete works once the disk does')
  t.same([...(await readFolder(dir)).files.keys(), ...(await readFolder(dir)).temps], [], 'gone, with no temp file left')
  await model.check(t, app, 'after the delete')
})

t.test('fs seam: a bring-back answered 503 whose undo failed, then a DELETE answered 204: nothing of the session is left, also after a kill -9', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  // The write-back is not tried again before the delete (an hour away).
  const app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0, TASK_RUN_RETRY_MS: 3_600_000 } })
  await archivedSession(app, 'back', '1. a\n2. b')
  // The bring-back's file lands, its folder sync fails; the undo (its removal) fails too.
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('rename', 'EIO', { path: (path) => path === join(dir, 'back.json') })
  storageError(t, await post(app, '/create', { session_id: 'back', instructions: 'answered 503' }), 503, 'the bring-back')
  fs.heal()
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/back` })).statusCode, 204)
  t.notOk((await readdir(dir)).includes('back.json'), 'the active file the failed bring-back left is gone too')
  // A kill -9 now: a server on a copy of the folder (without the lock) finds no session.
  const copy = await tempDir(t)
  await cp(dir, copy, { recursive: true })
  await rm(join(copy, '.taskvault.lock'), { force: true })
  const again = await build(t, { dir: copy })
  t.equal((await get(again, '/list?session_id=back')).statusCode, 404, 'deleted, as answered')
})

t.test('fs seam: a write in flight at shutdown whose outcome is unknown and whose write-back fails is tried once more before the process stops', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0, TASK_RUN_RETRY_MS: 3_600_000 } })
  const model = new Model()
  await model.create(app, 'keep', ['keep one'])
  const keepBytes = await readFile(join(dir, 'keep.json'))
  // A change being written as the shutdown begins (a background run's last save, say).
  const gate = fs.hold('rename', { path: tempOf('keep'), times: 1 })
  const inFlight = app.taskManager.registry.change('keep', (draft) => { appendTasks(liveFile(draft), [{ instruction: 'answered 503', task_type: 'General' }], draft.now) }).catch((err: unknown) => err)
  await gate.reached
  // Its folder fsync fails (outcome unknown) and its write-back's write fails once; then the disk works.
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('write', 'EIO', { times: 1 })
  const closing = app.close()
  await sleep(20)
  gate.release()
  await closing
  t.match(await inFlight, { uncertain: true }, 'the change failed, its outcome unknown')
  t.ok((await readFile(join(dir, 'keep.json'))).equals(keepBytes), 'the shutdown put the acknowledged state back')
})

t.test('fs seam: a shutdown while a write-back retry round is under way, with a change queued behind it, tries no write-back after that round', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const logs = memoryLog()
  const app = await build(t, { dir, fs, logger: logs.logger, config: { TASK_ARCHIVE_DAYS: 0, TASK_RUN_RETRY_MS: 10, TASK_RUN_RETRY_MAX_MS: 10 } })
  const model = new Model()
  await model.create(app, 'keep', ['keep one'])
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('write', 'EIO', { skip: 1 })
  storageError(t, await model.create(app, 'keep', ['appended during the fault']), 503, 'create whose folder fsync fails')
  const tries = (): number => logs.messages().filter((msg) => msg === 'Could not put back the acknowledged state after a failed save; trying again').length
  // A retry round's write-back waits in its open; a change queued behind it; then the shutdown.
  // (The retry timer does not hold the process open, as a listening server would: this does.)
  const alive = setInterval(() => {}, 60_000)
  t.teardown(() => { clearInterval(alive) })
  const gate = fs.hold('open', { path: tempOf('keep'), times: 1 })
  await gate.reached
  const queued = app.taskManager.registry.change('keep', (draft) => { appendTasks(liveFile(draft), [{ instruction: 'queued', task_type: 'General' }], draft.now) }).catch((err: unknown) => err)
  const before = tries()
  const closing = app.close()
  await sleep(50)
  gate.release()
  await closing
  t.match(await queued, { code: 'STORAGE_UNAVAILABLE' }, 'the queued change was written after the round, and failed')
  t.equal(tries() - before, 1, 'one failed write-back after the shutdown began: the round under way, no round after it')
  t.ok(logs.messages().includes('Stopping with acknowledged states not put back: these sessions may show a change answered as failed'))
})
