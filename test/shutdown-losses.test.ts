/**
 * Real-process tests: with TASK_AUTO_SAVE=false, changes are written at shutdown. When some
 * cannot be, the log says which, one JSON line per session (`Unsaved changes lost at
 * shutdown`, with session_id and the cause), whatever else fails after, and the exit is 1.
 */
import { execFile } from 'node:child_process'
import { mkdir, readdir, rename, symlink } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import t from 'tap'
import { archivedSession, build, memoryLog, post, tempDir } from './helper.js'
import { faultFs, tempOf } from './faults.js'
import { buildApp } from '../app.js'
import { LOCK_FILE } from '../services/store/storage-lock.js'
import { call, describe, logLines, scratch, type ServerProcess } from './server-process.js'
import { mountTmpfs, unmount } from './tmpfs.js'

const API = '/api/v1/tasks'
const LOST = 'Unsaved changes lost at shutdown'
const run = promisify(execFile)

/** Creates the session; its status code. */
async function create (server: ServerProcess, sessionId: string): Promise<number> {
  return (await call(server, 'POST', `${API}/create`, { session_id: sessionId, instructions: 'a' })).status
}

/** The lines saying a session's changes were lost, by session. */
function lostLines (server: ServerProcess): Array<Record<string, any>> {
  return logLines(server.stdout()).filter((line) => line.msg === LOST)
}

t.test('a save that fails at shutdown: each failed session logged once, as JSON, with its cause; the others written; exit 1', async (t) => {
  const { dir, start } = await scratch(t)
  const storage = join(dir, 'tasks')
  const server = await start({ TASK_STORAGE_DIR: storage, TASK_AUTO_SAVE: 'false' })
  for (const id of ['s0', 's1', 's2']) t.equal(await create(server, id), 200, `create ${id}`)
  // A folder where a session's file goes: its save's rename fails (EISDIR).
  await mkdir(join(storage, 's1.json'))
  await mkdir(join(storage, 's2.json'))
  const exit = await server.stop('SIGTERM')
  t.same(exit, { code: 1, signal: null }, 'exit 1', { output: describe(server) })
  const lost = lostLines(server)
  t.same(lost.map((line) => line.session_id).sort(), ['s1', 's2'], 'every failed session is named, once each', { output: describe(server) })
  for (const line of lost) {
    t.equal(line.level, 50, `${String(line.session_id)}: at error level`)
    t.match(line.err, { type: 'StorageError', message: /EISDIR/ }, `${String(line.session_id)}: with its cause`)
  }
  t.notOk(logLines(server.stdout()).some((line) => line.msg === 'Shutdown did not finish cleanly'), 'nothing else failed, and the sessions are not told twice')
  t.equal(server.stderr(), '', 'nothing on stderr: no raw stack for a log pipeline to drop or split')
  t.ok((await readdir(storage)).includes('s0.json'), 's0 was written')
})

t.test('a read-only volume at shutdown: every session logged lost, and the failure to release the lock after does not hide them', async (t) => {
  const { dir, start } = await scratch(t)
  const storage = await tempDir(t, 'taskvault-ro-')
  const why = await mountTmpfs(storage, '4m')
  if (why !== null) {
    t.plan(0, `skipped: cannot mount a tmpfs here (${why})`)
    return
  }
  t.teardown(() => unmount(storage))
  const server = await start({ TASK_STORAGE_DIR: storage, TASK_AUTO_SAVE: 'false' }, dir)
  for (const id of ['s0', 's1']) t.equal(await create(server, id), 200, `create ${id}`)
  await run('mount', ['-o', 'remount,ro', storage])
  const exit = await server.stop('SIGTERM')
  t.same(exit, { code: 1, signal: null }, 'exit 1', { output: describe(server) })
  const lost = lostLines(server)
  t.same(lost.map((line) => line.session_id).sort(), ['s0', 's1'], 'both sessions are named, once each', { output: describe(server) })
  for (const line of lost) t.match(line.err, { type: 'StorageError', message: /EROFS/ }, `${String(line.session_id)}: with its cause`)
  const unclean = logLines(server.stdout()).filter((line) => line.msg === 'Shutdown did not finish cleanly')
  t.equal(unclean.length, 1, 'the lock release that failed after is logged too', { output: describe(server) })
  t.match(unclean[0]?.err, { message: new RegExp(`EROFS.*unlink.*${LOCK_FILE.replace(/\./g, '\\.')}`) })
  t.equal(server.stderr(), '', 'nothing on stderr')
})

t.test('a lock lost to another server: the sessions whose changes are not written are named at shutdown', async (t) => {
  const { dir, start } = await scratch(t)
  const storage = join(dir, 'tasks')
  const server = await start({ TASK_STORAGE_DIR: storage, TASK_AUTO_SAVE: 'false', TASK_LOCK_REFRESH_MS: '100', TASK_LOCK_STALE_MS: '60000' })
  for (const id of ['s1', 's2']) t.equal(await create(server, id), 200, `create ${id}`)
  const temp = join(storage, 'other-lock.tmp')
  await symlink(JSON.stringify({ pid: 4242, host: 'web-2', since: '2026-06-01T00:00:00.000Z' }), temp)
  await rename(temp, join(storage, LOCK_FILE))
  const deadline = Date.now() + 20_000
  while ((await call(server, 'GET', '/ready')).status !== 503 && Date.now() < deadline) await sleep(50)
  t.equal((await call(server, 'GET', '/ready')).body.code, 'LOCK_LOST', 'the server saw the lock taken')
  const exit = await server.stop('SIGTERM')
  t.same(exit, { code: 1, signal: null }, 'exit 1', { output: describe(server) })
  const lost = lostLines(server)
  t.same(lost.map((line) => line.session_id).sort(), ['s1', 's2'], 'both sessions are reported lost', { output: describe(server) })
  for (const line of lost) t.match(line.err, { type: 'LockLostError', code: 'LOCK_LOST' }, `${String(line.session_id)}: because the lock was lost`)
  t.same((await readdir(storage)).filter((name) => name.endsWith('.json')), [], 'nothing written over the other server\'s folder')
  t.equal(server.stderr(), '', 'nothing on stderr')
})

t.test('embedded: a host whose app.close() rejects still gets a log line per session whose unsaved changes were lost', async (t) => {
  const dir = await tempDir(t)
  const log = memoryLog()
  const app = await buildApp({ readEnvironment: false, logger: { level: 'info', stream: log.stream } as never, config: { TASK_STORAGE_DIR: dir, TASK_AUTO_SAVE: false, TASK_ARCHIVE_DAYS: 0 } })
  await app.ready()
  for (const id of ['kept', 'lost']) t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: id, instructions: 'a' } })).statusCode, 200)
  await mkdir(join(dir, 'lost.json'))
  await t.rejects(app.close(), { code: 'UNSAVED_CHANGES_LOST' })
  const lines = log.lines().filter((line) => line.msg === LOST)
  t.same(lines.map((line) => line.session_id), ['lost'], 'one line, for the lost session only')
  t.match(lines[0], { level: 50, err: { code: 'STORAGE_UNAVAILABLE' } }, 'with its cause')
})

t.test('a change that reaches the queue after shutdown\'s last drain (its archived copy still being read) is refused 503, and writes nothing', async (t) => {
  const fs = faultFs()
  const dir = await tempDir(t)
  const app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0 } })
  await archivedSession(app, 'keep', 'first')
  // The bring-back reads the archived copy before it takes its turn: held there through the close.
  const gate = fs.hold('open', { path: (path) => path.endsWith('/archive/keep.json') })
  const back = post(app, '/create', { session_id: 'keep', instructions: 'more' })
  await gate.reached
  await app.close()
  gate.release()
  const res = await back
  t.equal(res.statusCode, 503, res.body)
  t.match(res.json(), { code: 'SHUTTING_DOWN' })
  t.notOk(existsSync(join(dir, 'keep.json')), 'nothing was written after the storage closed')
  t.ok(existsSync(join(dir, 'archive', 'keep.json')), 'the session is archived as it was')
})

t.test('auto-save off: a change queued while shutdown\'s last saves are written is written before the storage closes, even when those saves fail', async (t) => {
  const dir = await tempDir(t)
  const first = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  await archivedSession(first, 'keep', 'first')
  await first.close()
  const fs = faultFs()
  const app = await build(t, { dir, fs, config: { TASK_ARCHIVE_DAYS: 0, TASK_AUTO_SAVE: false } })
  t.equal((await post(app, '/create', { session_id: 'unsaved', instructions: 'x' })).statusCode, 200)
  // A bring-back reading its archived copy through the close.
  const reading = fs.hold('open', { path: (path) => path.endsWith('/archive/keep.json') })
  const back = post(app, '/create', { session_id: 'keep', instructions: 'more' })
  await reading.reached
  // The first close's save of 'unsaved' fails; the last one's is held while the bring-back queues.
  fs.fail('open', 'EIO', { path: tempOf('unsaved'), times: 1 })
  const lastSave = fs.hold('open', { path: tempOf('unsaved'), skip: 1 })
  const closing = app.close().then(() => null, (err: { code?: string }) => err.code)
  await lastSave.reached
  const writing = fs.hold('open', { path: tempOf('keep') })
  reading.release()
  await writing.reached
  lastSave.release()
  // Its write held: the close waits for it rather than close the storage under it.
  t.equal(await Promise.race([closing.then(() => 'closed'), sleep(500).then(() => 'waiting')]), 'waiting', 'the close waits for the change queued meanwhile')
  writing.release()
  await closing
  const writtenAtClose = existsSync(join(dir, 'keep.json'))
  const res = await back
  t.equal(res.statusCode, 200, 'queued before the refusal, it is written')
  t.ok(writtenAtClose, 'before the close returned')
  t.same(await readdir(join(dir, 'archive')), [], 'its archived copy gone, as a bring-back does')
})
