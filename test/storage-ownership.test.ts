/**
 * Whose storage folder it is (issue 11, items 3 and 7): a lock deleted under a running server
 * is re-created; a lock another writer took makes the server refuse every write (503 LOCK_LOST,
 * /ready 503) while reads go on; a folder taskvault did not create keeps its mode, is marked
 * with `.taskvault`, and is refused when it holds files that are not sessions; files not named
 * like sessions are never moved; a failed start leaves no lock behind.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, cp, lstat, mkdir, readFile, readdir, readlink, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { gunzipSync } from 'node:zlib'
import t from 'tap'
import { node } from './node-child.js'
import { buildApp } from '../app.js'
import { ForeignFolderError, StorageError } from '../services/errors.js'
import { FileSessionStore } from '../services/store/file-store.js'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { FORMAT_VERSION, MARKER_FILE } from '../services/store/storage-folder.js'
import { LOCK_FILE } from '../services/store/storage-lock.js'
import { API, get, markAsTaskvault, memoryLog, post, tempDir, type TestContext } from './helper.js'
import { SERVER, baseEnv, call, freePort, logLines, scratch, within } from './server-process.js'
import { faultFs, tempOf } from './faults.js'
import { storedSession } from './session-fixtures.js'

/** A heartbeat every 100 ms, so that tests wait little. */
const FAST_LOCK = { TASK_LOCK_REFRESH_MS: 100, TASK_LOCK_STALE_MS: 1000 }

async function open (t: TestContext, dir: string, config: Record<string, string | number | boolean> = {}, log = memoryLog()): Promise<FastifyInstance> {
  const app = await buildApp({
    readEnvironment: false,
    logger: { level: 'info', stream: log.stream } as never,
    config: { TASK_STORAGE_DIR: dir, TASK_SHUTDOWN_GRACE_MS: 2000, TASK_ARCHIVE_DAYS: 0, ...FAST_LOCK, ...config }
  })
  t.teardown(() => app.close())
  await app.ready()
  return app
}

async function openError (dir: string): Promise<unknown> {
  try {
    const app = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir } })
    await app.ready()
    await app.close()
    return null
  } catch (err) {
    return err
  }
}

/** Polls `check` until it holds (behaviour is not timed: the bound only stops a hung test). */
async function eventually (check: () => Promise<boolean> | boolean, ms = 10_000): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(20)
  }
  return false
}

const lockPresent = async (dir: string): Promise<boolean> => lstat(join(dir, LOCK_FILE)).then(() => true, () => false)

// ---------------------------------------------------------------------------------------
// Item 3: the lock is checked, not only touched
// ---------------------------------------------------------------------------------------

t.test('lock: a lock deleted under a running server is re-created, with a warning, and writes go on', async (t) => {
  const dir = await tempDir(t)
  const log = memoryLog()
  const app = await open(t, dir, {}, log)
  t.equal((await post(app, '/create', { session_id: 'a', instructions: 'one' })).statusCode, 200)
  const held = await readlink(join(dir, LOCK_FILE))
  await unlink(join(dir, LOCK_FILE))
  t.ok(await eventually(() => lockPresent(dir)), 'the lock is back')
  t.equal(await readlink(join(dir, LOCK_FILE)), held, 'naming this server, as before')
  // The warning is logged once the re-created lock is checked, a moment after it is back.
  t.ok(await eventually(async () => log.lines().some((line) => line.level === 40 && /lock file was missing.*re-created/u.test(line.msg ?? ''))), 'a warning says what happened')
  t.equal((await post(app, '/create', { session_id: 'a', instructions: 'two' })).statusCode, 200, 'writes still work')
  t.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 200)
  await app.close()
  t.notOk(await lockPresent(dir), 'released on close')
})

/** Puts another writer's lock in place in one step (rename), so the heartbeat never sees the path empty. */
async function takeLock (dir: string, holder: { pid: number, host: string, since: string }): Promise<void> {
  const temp = join(dir, 'other-lock.tmp')
  await symlink(JSON.stringify(holder), temp)
  await rename(temp, join(dir, LOCK_FILE))
}

const OTHER = { pid: 4242, host: 'other-host', since: '2026-06-01T00:00:00.000Z' }

t.test('lock: a lock another writer took stops every write (503 LOCK_LOST), /ready goes 503, reads go on', async (t) => {
  const dir = await tempDir(t)
  const log = memoryLog()
  const app = await open(t, dir, {}, log)
  t.equal((await post(app, '/create', { session_id: 'a', instructions: '1. one\n2. two' })).statusCode, 200)
  t.equal((await post(app, '/create', { session_id: 'done', instructions: 'x' })).statusCode, 200)
  t.equal((await post(app, '/execute', { session_id: 'done' })).statusCode, 200)
  const onDisk = await readFile(join(dir, 'a.json'), 'utf8')
  await takeLock(dir, OTHER)

  t.ok(await eventually(async () => (await app.inject({ method: 'GET', url: '/ready' })).statusCode === 503), '/ready turns 503')
  const ready = await app.inject({ method: 'GET', url: '/ready' })
  t.match(ready.json(), { statusCode: 503, code: 'LOCK_LOST', error: 'Service Unavailable' }, '/ready says why')
  const error = log.lines().find((line) => line.level === 50 && /Lost the storage lock/u.test(line.msg ?? ''))
  t.ok(error, 'an error is logged')
  t.match(error?.msg, `pid ${OTHER.pid} on host ${OTHER.host} since ${OTHER.since}`, 'naming who holds the lock now')
  t.match(error?.holder, OTHER)

  const writes: Array<[string, () => Promise<{ statusCode: number, json: () => any }>]> = [
    ['create on an existing session', () => post(app, '/create', { session_id: 'a', instructions: 'three' })],
    ['create of a new session', () => post(app, '/create', { session_id: 'b', instructions: 'x' })],
    ['execute', () => post(app, '/execute', { session_id: 'a' })],
    ['execute-all', () => post(app, '/execute-all', { session_id: 'a' })],
    ['execute-all in the background', () => post(app, '/execute-all', { session_id: 'a', wait: false })],
    ['delete', () => app.inject({ method: 'DELETE', url: `${API}/sessions/a` })],
    ['archive', () => app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })]
  ]
  for (const [name, write] of writes) {
    const res = await write()
    t.equal(res.statusCode, 503, `${name}: 503`)
    t.match(res.json(), { statusCode: 503, code: 'LOCK_LOST', message: /lost the storage lock/u }, `${name}: LOCK_LOST`)
  }

  t.equal((await get(app, '/progress?session_id=a')).json().total, 2, 'reads work, and memory holds no refused change')
  t.equal((await get(app, '/progress?session_id=a')).json().pending, 2)
  t.equal((await get(app, '/progress?session_id=b')).statusCode, 404, 'the refused new session does not exist')
  t.equal((await get(app, '/list?session_id=done')).json().tasks[0].status, 'Completed', 'the finished session was not archived')
  t.equal((await get(app, '/stats')).statusCode, 200)
  t.equal(await readFile(join(dir, 'a.json'), 'utf8'), onDisk, 'the file on disk is untouched')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')).sort(), ['a.json', 'done.json'])
  await app.close()
  t.same(JSON.parse(await readlink(join(dir, LOCK_FILE))), OTHER, 'the other writer keeps its lock after close')
})

t.test('lock: a cancel after the lock is lost answers 503 LOCK_LOST: the cancelled task\'s failure could not be saved', async (t) => {
  const dir = await tempDir(t)
  // An agent that runs until it is cancelled.
  const waitForAbort = async (_task: unknown, { signal }: { signal: AbortSignal }): Promise<{ result: string }> =>
    new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason))), { once: true }))
  const app = await buildApp({ readEnvironment: false, executors: { default: waitForAbort }, config: { TASK_STORAGE_DIR: dir, TASK_SHUTDOWN_GRACE_MS: 2000, ...FAST_LOCK } })
  t.teardown(() => app.close())
  await app.ready()
  t.equal((await post(app, '/create', { session_id: 'a', instructions: 'one' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'a', wait: false })).statusCode, 202)
  t.ok(await eventually(async () => (await get(app, '/progress?session_id=a')).json().in_progress === 1), 'the task runs')
  await takeLock(dir, OTHER)
  t.ok(await eventually(async () => (await app.inject({ method: 'GET', url: '/ready' })).statusCode === 503), '/ready turns 503')
  const res = await post(app, '/cancel', { session_id: 'a' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'LOCK_LOST')
  t.equal((await get(app, '/progress?session_id=a')).json().failed, 0, 'memory does not claim the unsaved failure')
})

t.test('lock: with auto-save off, a lost lock refuses changes too (memory must not hold what can never be saved)', async (t) => {
  const dir = await tempDir(t)
  const app = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_AUTO_SAVE: false, ...FAST_LOCK } })
  await app.ready()
  t.equal((await post(app, '/create', { session_id: 'a', instructions: 'one' })).statusCode, 200)
  await takeLock(dir, OTHER)
  t.ok(await eventually(async () => (await app.inject({ method: 'GET', url: '/ready' })).statusCode === 503), '/ready turns 503')
  const res = await post(app, '/create', { session_id: 'a', instructions: 'two' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'LOCK_LOST')
  t.equal((await get(app, '/progress?session_id=a')).json().total, 1, 'memory unchanged')
  // What was held unsaved before the loss cannot be written over the other writer's folder: shutdown says so.
  await t.rejects(app.close(), { code: 'UNSAVED_CHANGES_LOST', sessions: [{ sessionId: 'a', cause: { code: 'LOCK_LOST' } }] }, 'the shutdown flush is refused too, naming the session')
  t.match(app.taskManager.registry.lostChanges(), [{ sessionId: 'a', cause: { code: 'LOCK_LOST' } }], 'the registry reports it lost')
  t.notOk(existsSync(join(dir, 'a.json')), 'nothing written')
})

t.test('lock: a server paused (SIGSTOP) past TASK_LOCK_STALE_MS while another took its lock over writes nothing on resume, not even a request queued meanwhile', async (t) => {
  const { dir: root, start } = await scratch(t)
  const dir = join(root, 'tasks')
  // Stale after 2 s, touched every 0.5 s: the pause below is longer than that.
  const env = { TASK_STORAGE_DIR: dir, TASK_LOCK_STALE_MS: '2000', TASK_LOCK_REFRESH_MS: '500' }
  const a = await start(env)
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'x', instructions: 'first' })).status, 200)
  a.child.kill('SIGSTOP')
  t.teardown(() => { a.child.kill('SIGCONT') })
  // A client's request reaches the paused server: the kernel takes it, and it waits in the backlog.
  const queued = call(a, 'POST', `${API}/create`, { session_id: 'x', instructions: 'from A' })
  queued.catch(() => {})
  t.ok(await eventually(async () => Date.now() - (await lstat(join(dir, LOCK_FILE))).mtimeMs > 2500), 'the paused server\'s lock goes stale')
  const b = await start(env)
  const takeover = logLines(b.stdout()).find((line) => /Took over/u.test(String(line.msg)))
  t.match(takeover?.msg, /stale storage lock.*may still be running/u, 'the takeover says the holder may be alive, not that it is gone')
  t.equal((takeover?.holder as { pid?: number } | undefined)?.pid, a.child.pid, 'naming it')
  t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'x', instructions: 'from B' })).status, 200, 'the new holder acknowledges a change')
  const acknowledged = await readFile(join(dir, 'x.json'), 'utf8')

  a.child.kill('SIGCONT')
  const refused = await queued
  t.equal(refused.status, 503, 'the queued request is refused')
  t.match(refused.body, { code: 'LOCK_LOST' })
  t.equal(await readFile(join(dir, 'x.json'), 'utf8'), acknowledged, 'the acknowledged change is still on disk, untouched')
  t.same((await call(b, 'GET', `${API}/list?session_id=x`)).body.tasks.map((task: { instruction: string }) => task.instruction), ['first', 'from B'])
  t.same((await call(a, 'GET', `${API}/list?session_id=x`)).body.tasks.map((task: { instruction: string }) => task.instruction), ['first'], 'the paused server\'s memory holds no refused change')
  t.match((await call(a, 'GET', '/ready')).body, { code: 'LOCK_LOST' }, 'it is unready')
  t.ok(logLines(a.stdout()).some((line) => line.level === 50 && /Lost the storage lock/u.test(String(line.msg))), 'and logs who holds the lock now')
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'y', instructions: 'later' })).status, 503, 'nor does it write anything later')
  t.notOk(existsSync(join(dir, 'y.json')))
})

t.test('lock: saves while the heartbeat keeps the lock confirmed make no extra system call to check it', async (t) => {
  const dir = await tempDir(t)
  let lockReads = 0
  const fs: FsSeam = {
    ...nodeFs,
    readlink: (async (...args: Parameters<typeof nodeFs.readlink>) => {
      if (basename(String(args[0])) === LOCK_FILE) lockReads++
      return nodeFs.readlink(...args)
    }) as typeof nodeFs.readlink
  }
  // No heartbeat within the test: only a save could read the lock.
  const app = await buildApp({ readEnvironment: false, fs, config: { TASK_STORAGE_DIR: dir, TASK_LOCK_REFRESH_MS: 60_000, TASK_LOCK_STALE_MS: 120_000 } })
  t.teardown(() => app.close())
  await app.ready()
  const before = lockReads
  for (let i = 0; i < 20; i++) t.equal((await post(app, '/create', { session_id: `s${i % 3}`, instructions: `n${i}` })).statusCode, 200)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/s0` })).statusCode, 204)
  t.equal(lockReads, before, 'the lock was not read for any of them')
})

t.test('lock: a save in flight when the lock is lost (its process paused mid-write) does not rename over the other server\'s file', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await buildApp({ readEnvironment: false, fs, config: { TASK_STORAGE_DIR: dir, TASK_SHUTDOWN_GRACE_MS: 2000, ...FAST_LOCK } })
  t.teardown(() => app.close())
  await app.ready()
  t.equal((await post(app, '/create', { session_id: 'x', instructions: 'one' })).statusCode, 200)
  // The next save of x stops at its temp file's fsync, as a process stopped there would.
  const gate = fs.hold('sync', { path: tempOf('x') })
  const saving = post(app, '/create', { session_id: 'x', instructions: 'two' })
  await gate.reached
  await takeLock(dir, OTHER)
  const theirs = storedSession('x', ['Completed'], '2026-06-01T00:00:00.000Z')
  await writeFile(join(dir, 'x.json'), theirs)
  t.ok(await eventually(async () => (await app.inject({ method: 'GET', url: '/ready' })).statusCode === 503), 'the heartbeat finds the lock lost')
  gate.release()
  const res = await saving
  t.equal(res.statusCode, 503, res.body)
  t.equal(res.json().code, 'LOCK_LOST')
  t.equal(await readFile(join(dir, 'x.json'), 'utf8'), theirs, 'the other server\'s file is not replaced')
  t.equal((await get(app, '/progress?session_id=x')).json().total, 1, 'memory holds no refused change')
})

// ---------------------------------------------------------------------------------------
// Item 7: a folder taskvault did not create
// ---------------------------------------------------------------------------------------

const modeOf = async (path: string): Promise<number> => (await stat(path)).mode & 0o7777

t.test('folder: a project folder (mode 1777) is refused at boot naming the first foreign file, and left exactly as it was', async (t) => {
  const dir = join(await tempDir(t), 'project')
  await mkdir(dir)
  await chmod(dir, 0o1777)
  await writeFile(join(dir, 'tsconfig.json'), '{ "compilerOptions": {} }\n')
  await writeFile(join(dir, 'package.json'), '{ "name": "app" }\n')
  await writeFile(join(dir, 'README.md'), '# app\n')
  const err = await openError(dir)
  t.ok(err instanceof ForeignFolderError, 'ForeignFolderError')
  t.equal((err as ForeignFolderError | null)?.code, 'FOREIGN_STORAGE_FOLDER')
  t.match(String((err as Error | null)?.message), `storage folder ${dir} is not taskvault's`)
  t.match(String((err as Error | null)?.message), 'holds package.json, which is not a session file (it has no session_id)', 'names the first foreign file and why')
  t.equal(await modeOf(dir), 0o1777, 'its mode is untouched')
  t.same((await readdir(dir)).sort(), ['README.md', 'package.json', 'tsconfig.json'], 'nothing moved, no marker, no lock left')
})

t.test('folder: a real server refuses a foreign folder with exit 1 and says why', async (t) => {
  const root = await tempDir(t)
  const dir = join(root, 'project')
  await mkdir(dir)
  await writeFile(join(dir, 'package.json'), '{ "name": "app" }\n')
  const child = spawn(...node([SERVER]), { cwd: root, env: baseEnv({ TASK_STORAGE_DIR: dir, PORT: String(await freePort()) }), stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const code = await within(new Promise<number | null>((resolve) => child.once('close', resolve)), 30_000)
  if (code === null) child.kill('SIGKILL')
  t.equal(code, 1, 'exit 1')
  t.match(stderr, /cannot start: storage folder .* holds package\.json, which is not a session file/u)
})

/** The seed document's example file (its form: no `error`, no `attempts`). */
const SEED_FILE = JSON.stringify({
  session_id: 'demo_session_123',
  created_at: '2025-11-04T08:00:00Z',
  updated_at: '2025-11-04T08:15:30Z',
  session: {
    session_id: 'demo_session_123',
    tasks: [{
      id: 'task_1_1730727480',
      instruction: 'Write binary search',
      task_type: 'Coding',
      status: 'Completed',
      result: 'fn binary_search...',
      confidence: 0.95,
      created_at: '2025-11-04T08:00:00Z',
      started_at: '2025-11-04T08:00:05Z',
      completed_at: '2025-11-04T08:00:15Z'
    }],
    current_index: 1
  }
}, null, 2)

t.test('folder: a seed-format folder is adopted and marked; its mode is left alone, with a warning', async (t) => {
  const dir = join(await tempDir(t), 'tasks')
  await mkdir(join(dir, 'archive'), { recursive: true })
  await chmod(dir, 0o755)
  await writeFile(join(dir, 'demo_session_123.json'), SEED_FILE)
  // Cut short by a writer that was not atomic: still a session file (restore sets it aside).
  await writeFile(join(dir, 'torn.json'), '{\n  "session_id": "torn",\n  "created')
  // Or left empty, the commonest wreck of a plain writeFile: damaged, not foreign.
  await writeFile(join(dir, 'empty.json'), '')
  await writeFile(join(dir, 'archive', 'old_session_789.json'), storedSession('old_session_789', ['Completed'], '2025-10-01T00:00:00.000Z'))
  await writeFile(join(dir, 'notes.txt'), 'not JSON, not ours, never touched\n')
  const log = memoryLog()
  const app = await open(t, dir, {}, log)
  t.equal((await get(app, '/list?session_id=demo_session_123')).json().tasks[0].instruction, 'Write binary search', 'the seed session loads')
  t.match((await get(app, '/stats')).json(), { archived_sessions: 1, storage: { failed_loads: 2 } }, 'the torn and the empty file are set aside')
  t.same(JSON.parse(await readFile(join(dir, MARKER_FILE), 'utf8')), { format: FORMAT_VERSION }, 'the folder is marked with the format version')
  t.equal(await modeOf(dir), 0o755, 'the mode is left as it was')
  t.ok(log.lines().some((line) => line.level === 30 && /adopted/u.test(line.msg ?? '')), 'the adoption is logged')
  const warning = log.lines().find((line) => line.level === 40 && /accessible to its group or others \(mode 755\)/u.test(line.msg ?? ''))
  t.ok(warning, 'a warning names the open mode')
  t.equal(await readFile(join(dir, 'notes.txt'), 'utf8'), 'not JSON, not ours, never touched\n')
  await app.close()

  const again = memoryLog()
  await open(t, dir, {}, again)
  t.notOk(again.lines().some((line) => /adopted/u.test(line.msg ?? '')), 'a marked folder is simply taskvault\'s')
})

t.test('folder: a folder taskvault creates is 0700 and marked; an existing empty one keeps its mode', async (t) => {
  const root = await tempDir(t)
  const created = join(root, 'new', 'tasks')
  const log = memoryLog()
  await open(t, created, {}, log)
  t.equal(await modeOf(created), 0o700)
  t.ok((await lstat(join(created, MARKER_FILE))).isFile(), 'marked')
  t.notOk(log.lines().some((line) => line.level === 40 && /accessible/u.test(line.msg ?? '')), 'no warning')

  const existing = join(root, 'existing')
  await mkdir(existing)
  await chmod(existing, 0o750)
  await open(t, existing)
  t.equal(await modeOf(existing), 0o750, 'not chmodded')
  t.ok((await lstat(join(existing, MARKER_FILE))).isFile(), 'marked')
})

t.test('folder: a marker that is not ours, or names a later format, stops the boot', async (t) => {
  for (const [label, content, message] of [
    ['garbage', 'hello\n', /is not a taskvault marker/u],
    ['a later format', JSON.stringify({ format: FORMAT_VERSION + 1 }), /format 2, written by a later taskvault/u]
  ] as const) {
    const dir = await tempDir(t)
    await writeFile(join(dir, MARKER_FILE), content)
    const err = await openError(dir)
    t.ok(err instanceof ForeignFolderError, `${label}: refused`)
    t.match(String((err as Error | null)?.message), message, label)
    t.notOk(await lockPresent(dir), `${label}: no lock left`)
  }
})

t.test('folder: a storage folder inside another\'s archive/ or corrupt/, or holding one there, is refused either way round, and nothing is written', async (t) => {
  for (const inner of ['archive', 'corrupt']) {
    const outer = await tempDir(t)
    const app = await open(t, outer)
    t.equal((await post(app, '/create', { session_id: 'mine', instructions: 'a' })).statusCode, 200)
    await app.close()
    // Not made yet (nothing was archived or set aside), then made and empty.
    t.ok(await openError(join(outer, inner)) instanceof ForeignFolderError, `${inner}/ not made yet: refused`)
    t.notOk(existsSync(join(outer, inner)), 'and not made')
    await mkdir(join(outer, inner), { recursive: true })
    const err = await openError(join(outer, inner))
    t.ok(err instanceof ForeignFolderError, `${inner}/ of a storage folder: refused`)
    t.match(String((err as Error | null)?.message), new RegExp(`is the ${inner}/ folder of the taskvault storage folder`, 'u'))
    t.notOk(existsSync(join(outer, inner, MARKER_FILE)), 'no marker written there')
    t.notOk(await lockPresent(join(outer, inner)), 'no lock left there')
    // Reached through a symlink of another name: judged on the folder it leads to.
    const link = join(await tempDir(t), 'elsewhere')
    await symlink(join(outer, inner), link)
    t.ok(await openError(link) instanceof ForeignFolderError, `${inner}/ through a symlink: refused`)
    t.notOk(existsSync(join(outer, inner, MARKER_FILE)), 'no marker written there')
    // The other way round: the inner one was a storage folder first.
    const first = await tempDir(t)
    await open(t, join(first, inner)).then(async (inside) => inside.close())
    const refused = await openError(first)
    t.ok(refused instanceof ForeignFolderError, `a folder whose ${inner}/ is a storage folder: refused`)
    t.match(String((refused as Error | null)?.message), new RegExp(`holds another taskvault storage folder as its ${inner}/`, 'u'))
    t.notOk(await lockPresent(first), 'no lock left')
  }
})

t.test('folder: files not named like sessions are never moved to corrupt/, nor taken for foreign in archive/', async (t) => {
  const dir = await tempDir(t)
  await markAsTaskvault(dir)
  await writeFile(join(dir, 'my notes.json'), '{ not a session')
  await writeFile(join(dir, 'x.y.json'), 'garbage')
  await writeFile(join(dir, 'bad.json'), '{ broken')
  await writeFile(join(dir, 'good.json'), storedSession('good', ['Pending'], '2025-01-01T00:00:00.000Z'))
  const app = await open(t, dir)
  t.match((await get(app, '/stats')).json(), { total_sessions: 1, storage: { failed_loads: 1 } }, 'the bad session file is set aside')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')).sort(), ['good.json', 'my notes.json', 'x.y.json'], 'the others stay where they are')
  t.equal(await readFile(join(dir, 'my notes.json'), 'utf8'), '{ not a session')
  t.equal((await readdir(join(dir, 'corrupt'))).length, 1)
})

t.test('folder: in an unmarked folder a *.json not named like a session is foreign', async (t) => {
  const dir = await tempDir(t)
  await writeFile(join(dir, 'good.json'), storedSession('good', ['Pending'], '2025-01-01T00:00:00.000Z'))
  await writeFile(join(dir, 'my notes.json'), '{"session_id": "x"}')
  const err = await openError(dir)
  t.match(String((err as Error | null)?.message), 'holds my notes.json, which is not a session file (its name is not <session id>.json)')
})

/** 40 session files s000..s039 in a folder with no marker. */
async function unmarkedSessions (t: TestContext): Promise<string> {
  const dir = await tempDir(t)
  await Promise.all(Array.from({ length: 40 }, (_, i) => `s${String(i).padStart(3, '0')}`).map((id) => writeFile(join(dir, `${id}.json`), storedSession(id, ['Pending'], '2025-01-01T00:00:00.000Z'))))
  return dir
}

/** The real fs, except that opening a file whose name `decide` answers for runs that instead. */
function seamOn (decide: (name: string) => (() => Promise<void>) | undefined): FsSeam {
  return {
    ...nodeFs,
    open: (async (path: string, ...rest: unknown[]) => {
      const before = decide(basename(String(path)))
      if (before !== undefined) await before()
      return nodeFs.open(path, ...(rest as [number]))
    }) as FsSeam['open']
  }
}

const eio = (name: string): Error => Object.assign(new Error(`EIO: i/o error, open '${name}'`), { code: 'EIO' })

t.test('folder: files are judged several at once, yet the first foreign one by name is named, whichever read ends first', async (t) => {
  const dir = await unmarkedSessions(t)
  await writeFile(join(dir, 's017.json'), '{ "name": "not a session" }\n')
  await writeFile(join(dir, 's020.json'), 'not json at all')
  // s017's read ends only after s020's (or after 2 s, so reading one by one still ends).
  let s020Read: () => void = () => {}
  const s020 = new Promise<void>((resolve) => { s020Read = resolve })
  const fs = seamOn((name) => name === 's017.json' ? async () => { await Promise.race([s020, sleep(2000)]) } : name === 's020.json' ? async () => { setImmediate(s020Read) } : undefined)
  const store = new FileSessionStore({ dir, fs })
  const err = await store.init().then(() => null, (e: unknown) => e)
  t.ok(err instanceof ForeignFolderError, 'ForeignFolderError')
  t.match(String((err as Error | null)?.message), 'holds s017.json, which is not a session file (it has no session_id)', 'the first foreign file by name, not the first read to end')
  t.notOk(existsSync(join(dir, MARKER_FILE)), 'no marker')

  await writeFile(join(dir, 's017.json'), storedSession('s017', ['Pending'], '2025-01-01T00:00:00.000Z'))
  await writeFile(join(dir, 's020.json'), storedSession('s020', ['Pending'], '2025-01-01T00:00:00.000Z'))
  const app = await open(t, dir)
  t.equal(app.taskManager.stats().total_sessions, 40, 'once they are sessions, all 40 are restored')
  t.ok(existsSync(join(dir, MARKER_FILE)), 'adopted and marked')
})

t.test('folder: a read that fails after the first foreign file does not hide it; of two failing before it, the first by name stops the boot', async (t) => {
  const dir = await unmarkedSessions(t)
  await writeFile(join(dir, 's017.json'), '{ "name": "not a session" }\n')
  const after = new FileSessionStore({ dir, fs: seamOn((name) => name === 's020.json' ? async () => { throw eio(name) } : undefined) })
  const err = await after.init().then(() => null, (e: unknown) => e)
  t.ok(err instanceof ForeignFolderError, 'a later unreadable file does not hide the foreign one')
  t.match(String((err as Error | null)?.message), 'holds s017.json')

  // s010 fails late with EIO, s012 at once with EACCES: read one by one, s010's error came first.
  const before = new FileSessionStore({ dir, fs: seamOn((name) => name === 's010.json' ? async () => { await sleep(50); throw eio(name) } : name === 's012.json' ? async () => { throw Object.assign(new Error('EACCES'), { code: 'EACCES' }) } : undefined) })
  const failed = await before.init().then(() => null, (e: unknown) => e)
  t.ok(failed instanceof StorageError, 'an unreadable file before any foreign one stops the boot as a storage error')
  t.match(String((failed as Error | null)?.message), '(EIO)', 'the first unreadable file by name')
  t.notOk(existsSync(join(dir, MARKER_FILE)), 'no marker')
})

// ---------------------------------------------------------------------------------------
// Minor: a failed start leaves no lock
// ---------------------------------------------------------------------------------------

t.test('a real server whose restore fails with EACCES exits 1 and leaves no lock behind', async (t) => {
  const root = await tempDir(t)
  const dir = join(root, 'tasks')
  await mkdir(dir, { mode: 0o700 })
  await markAsTaskvault(dir)
  await writeFile(join(dir, 'secret.json'), storedSession('secret', ['Pending'], '2025-01-01T00:00:00.000Z'), { mode: 0o600 })
  await chmod(join(dir, 'secret.json'), 0)
  // Root reads anything: there the server runs without the capabilities that let it (still root,
  // so it reads the checkout wherever that is, whatever its modes).
  const asRoot = process.getuid?.() === 0
  const [file, args] = node([SERVER])
  const command = asRoot ? ['setpriv', '--bounding-set=-dac_override,-dac_read_search', '--', file, ...args] : [file, ...args]
  const child = spawn(command[0] as string, command.slice(1), { cwd: root, env: baseEnv({ TASK_STORAGE_DIR: dir, PORT: String(await freePort()) }), stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const code = await within(new Promise<number | null>((resolve) => child.once('close', resolve)), 30_000)
  if (code === null) child.kill('SIGKILL')
  t.equal(code, 1, 'exit 1')
  t.match(stderr, /cannot start: .*EACCES/u, 'the reason is given')
  t.notOk(await lockPresent(dir), 'no .taskvault.lock left behind')
  t.ok((await lstat(join(dir, 'secret.json'))).isFile(), 'the unreadable file is left where it is')
})

t.test('folder: another folder at the path (a volume unmounted from under its mount point) stops every write, at the next save, /ready or heartbeat; reads go on', async (t) => {
  for (const first of ['save', 'ready', 'heartbeat'] as const) {
    const parent = await tempDir(t)
    const dir = join(parent, 'tasks')
    const log = memoryLog()
    // `save`, `ready`: a heartbeat too slow to see it first.
    const app = await open(t, dir, first !== 'heartbeat' ? { TASK_LOCK_REFRESH_MS: 60_000, TASK_LOCK_STALE_MS: 120_000 } : {}, log)
    t.equal((await post(app, '/create', { session_id: 'kept', instructions: 'x' })).statusCode, 200)
    // The volume goes: the empty folder beneath its mount point is at the path now.
    await rename(dir, join(parent, 'volume'))
    await mkdir(dir, { mode: 0o700 })
    if (first === 'heartbeat') {
      t.ok(await eventually(async () => (await app.inject({ method: 'GET', url: '/ready' })).statusCode === 503), `${first}: /ready goes 503`)
      t.notOk(existsSync(join(dir, LOCK_FILE)), `${first}: no lock made in the other folder`)
    }
    if (first === 'ready') t.match((await app.inject({ method: 'GET', url: '/ready' })).json(), { statusCode: 503, code: 'LOCK_LOST' }, `${first}: /ready sees it at once`)
    const refused = await post(app, '/create', { session_id: 'new', instructions: 'y' })
    t.equal(refused.statusCode, 503, `${first}: ${refused.body}`)
    t.match(refused.json(), { code: 'LOCK_LOST', message: /no longer the folder this server opened/ })
    t.equal((await get(app, '/progress?session_id=new')).statusCode, 404, `${first}: nothing in memory claims it`)
    t.notOk(existsSync(join(dir, 'new.json')), `${first}: nor anything in the other folder, for a restart there to bring back`)
    t.match((await app.inject({ method: 'GET', url: '/ready' })).json(), { statusCode: 503, code: 'LOCK_LOST' })
    t.equal((await get(app, '/progress?session_id=kept')).statusCode, 200, `${first}: reads go on`)
    t.ok(log.lines().some((line) => line.level === 50 && /is no longer the folder this server opened/.test(line.msg ?? '')), `${first}: logged`)
  }
})

t.test('folder: an archive pass while the storage folder is gone (a volume unmounted from under a subfolder) does not make it anew: writes work again once it is back', async (t) => {
  const parent = await tempDir(t)
  const dir = join(parent, 'tasks')
  const app = await open(t, dir, { TASK_LOCK_REFRESH_MS: 60_000, TASK_LOCK_STALE_MS: 120_000 })
  t.equal((await post(app, '/create', { session_id: 'done', instructions: 'one' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'done' })).statusCode, 200)
  t.equal((await post(app, '/create', { session_id: 'open', instructions: 'two' })).statusCode, 200)
  await rename(dir, join(parent, 'away'))
  const pass = await post(app, '/archive', { older_than_days: 0 })
  t.equal(pass.statusCode, 503, pass.body)
  t.notOk(existsSync(dir), 'no storage folder made where the real one was')
  await rename(join(parent, 'away'), dir)
  t.equal((await post(app, '/create', { session_id: 'open', instructions: 'three' })).statusCode, 200, 'the folder back, writes work')
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['done'], 'and so does the archive pass')
})

t.test('folder: an archived session read while the storage folder is gone answers 503 and is kept: once the folder is back it is served, backed up, and a create appends to it', async (t) => {
  const parent = await tempDir(t)
  const dir = join(parent, 'tasks')
  const app = await open(t, dir, { TASK_LOCK_REFRESH_MS: 60_000, TASK_LOCK_STALE_MS: 120_000 })
  t.equal((await post(app, '/create', { session_id: 'old', instructions: 'original work' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'old' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['old'])
  await rename(dir, join(parent, 'away'))
  const read = await get(app, '/list?session_id=old')
  t.equal(read.statusCode, 503, `a read of it says storage is unavailable, not that it does not exist: ${read.body}`)
  const backup = await app.inject({ method: 'GET', url: '/api/v1/tasks/backup' })
  // Cut short (a truncated gzip) or refused: never a whole archive without it.
  const whole = backup.statusCode === 200 ? (() => { try { return gunzipSync(backup.rawPayload).toString('latin1') } catch { return null } })() : null
  t.ok(whole === null || whole.includes('archive/old.json'), `no backup leaving it out passes for a whole one (${backup.statusCode}, ${whole === null ? 'not whole' : 'whole'})`)
  await rename(join(parent, 'away'), dir)
  t.match((await get(app, '/list?session_id=old')).json(), { session_id: 'old', archived: true, tasks: [{ instruction: 'original work' }] }, 'the folder back, it is served')
  t.match((await get(app, '/list?session_id=all&archived=only')).json(), { total: 1 }, 'and listed')
  const added = await post(app, '/create', { session_id: 'old', instructions: 'more work' })
  t.equal(added.statusCode, 200)
  t.match((await get(app, '/list?session_id=old')).json(), { total: 2, tasks: [{ instruction: 'original work' }, { instruction: 'more work' }] }, 'a create brings it back and appends')
})

t.test('folder: a copy of the folder put in its place keeps its sessions: a save, DELETE or archive refused there neither lands nor removes anything', async (t) => {
  for (const first of ['save', 'delete', 'archive', 'archived delete'] as const) {
    const parent = await tempDir(t)
    const dir = join(parent, 'tasks')
    // A heartbeat too slow to see it first: the write finds it.
    const app = await open(t, dir, { TASK_LOCK_REFRESH_MS: 60_000, TASK_LOCK_STALE_MS: 120_000 })
    t.equal((await post(app, '/create', { session_id: 'kept', instructions: '1. a\n2. b' })).statusCode, 200)
    if (first.startsWith('archive')) t.equal((await post(app, '/execute-all', { session_id: 'kept' })).statusCode, 200)
    if (first === 'archived delete') t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['kept'])
    const file = first === 'archived delete' ? join('archive', 'kept.json') : 'kept.json'
    await rename(dir, join(parent, 'old'))
    await cp(join(parent, 'old'), dir, { recursive: true, preserveTimestamps: true })
    const copied = await readFile(join(dir, file), 'utf8')
    const refused = first === 'save'
      ? await post(app, '/create', { session_id: 'kept', instructions: 'c' })
      : first === 'archive' ? await post(app, '/archive', { older_than_days: 0 }) : await app.inject({ method: 'DELETE', url: `${API}/sessions/kept` })
    t.match([refused.statusCode, refused.json()], [503, { code: 'LOCK_LOST' }], `${first}: refused`)
    t.same((await readdir(join(dir, dirname(file)))).filter((name) => name.includes('kept')), ['kept.json'], `${first}: the copy's file keeps its name`)
    t.equal(await readFile(join(dir, file), 'utf8'), copied, `${first}: the copy's session is as it was: not replaced by the refused change, not moved, not removed`)
  }
})

t.test('folder: a folder emptied in place (deleted and made again under the same inode number): the lock and marker both gone stop every write', async (t) => {
  const dir = await tempDir(t)
  const log = memoryLog()
  const app = await open(t, dir, {}, log)
  t.equal((await post(app, '/create', { session_id: 'kept', instructions: 'x' })).statusCode, 200)
  // What `rm -rf dir && mkdir dir` leaves when the file system hands the same inode number out again.
  for (const name of await readdir(dir)) await rm(join(dir, name), { recursive: true, force: true })
  t.ok(await eventually(async () => (await app.inject({ method: 'GET', url: '/ready' })).statusCode === 503), '/ready goes 503')
  t.match((await app.inject({ method: 'GET', url: '/ready' })).json(), { code: 'LOCK_LOST' })
  t.notOk(await lockPresent(dir), 'no lock made in the emptied folder')
  const refused = await post(app, '/create', { session_id: 'new', instructions: 'y' })
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), { code: 'LOCK_LOST', message: /no longer the folder this server opened/ })
  t.same(await readdir(dir), [], 'nothing written there')
  t.equal((await get(app, '/progress?session_id=kept')).statusCode, 200, 'reads go on')
})

t.test('folder: a storage folder given as a symlink is the folder it leads to: saves, heartbeats and /ready work', async (t) => {
  const parent = await tempDir(t)
  await mkdir(join(parent, 'volume'), { mode: 0o700 })
  await symlink(join(parent, 'volume'), join(parent, 'tasks'))
  const app = await open(t, join(parent, 'tasks'))
  t.equal((await post(app, '/create', { session_id: 'linked', instructions: 'x' })).statusCode, 200)
  // A few heartbeats (every 100 ms here).
  await sleep(400)
  t.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 200, '/ready')
  const again = await post(app, '/create', { session_id: 'linked', instructions: 'y' })
  t.equal(again.statusCode, 200, again.body)
  t.ok(existsSync(join(parent, 'volume', 'linked.json')), 'written in the folder the link leads to')
})
