/**
 * A storage folder that does not tell upper from lower case (macOS's and Windows' defaults):
 * `Task1.json` and `task1.json` are one file there, so a session whose id differs from another's
 * only in case must be refused, not written over the other. This machine's file systems all tell
 * case, so the folder is emulated through the fs seam: every name resolves to the entry there
 * that matches it ignoring case, as such a file system looks names up, and names keep their case.
 */
import { readdirSync } from 'node:fs'
import { readdir, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import t from 'tap'
import { assertNoCaseTwins } from '../cli/folder.js'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { API, build, createSession, get, memoryLog, post, tempDir } from './helper.js'

/** `path` as a caseless file system finds it: the entry of its folder that matches it ignoring case, else as it is. */
function found (path: string): string {
  const name = basename(path)
  let entries: string[]
  try {
    entries = readdirSync(dirname(path))
  } catch {
    return path
  }
  if (entries.includes(name)) return path
  const match = entries.find((entry) => entry.toLowerCase() === name.toLowerCase())
  return match === undefined ? path : join(dirname(path), match)
}

/** `distinctInodes`: each name of a file reports its own inode number, as some FUSE and SMB mounts do. */
function caselessFs ({ distinctInodes = false } = {}): FsSeam {
  const renumbered = async <S extends { ino: number | bigint }>(path: string, stat: Promise<S>): Promise<S> => {
    const found_ = found(path)
    const own = await stat
    return distinctInodes && found_ !== path ? Object.assign(Object.create(Object.getPrototypeOf(own)) as S, own, { ino: Number(own.ino) + 1_000_000 }) : own
  }
  return {
    ...nodeFs,
    open: async (path, ...rest) => nodeFs.open(found(String(path)), ...rest),
    rename: async (from, to) => nodeFs.rename(found(String(from)), found(String(to))),
    unlink: async (path) => nodeFs.unlink(found(String(path))),
    lstat: (async (path: string, options?: object) => renumbered(path, nodeFs.lstat(found(path), options))) as FsSeam['lstat'],
    stat: (async (path: string, options?: object) => nodeFs.stat(found(path), options)) as FsSeam['stat'],
    chmod: async (path, mode) => nodeFs.chmod(found(String(path)), mode),
    lutimes: async (path, atime, mtime) => nodeFs.lutimes(found(String(path)), atime, mtime)
  }
}

const sessionFiles = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((name) => name.endsWith('.json')).sort()
const taskCount = async (app: Awaited<ReturnType<typeof build>>, id: string): Promise<number | null> => {
  const res = await get(app, `/list?session_id=${id}`)
  return res.statusCode === 200 ? (res.json().tasks as unknown[]).length : null
}

t.test('a caseless folder: an id differing from an active session\'s only in case is refused (409), and the session is kept', async (t) => {
  const dir = await tempDir(t)
  const fs = caselessFs()
  const log = memoryLog()
  const app = await build(t, { dir, fs, logger: log.logger })
  t.ok(log.lines().some((line) => line.level === 30 && /does not tell upper from lower case/.test(line.msg ?? '')), 'the boot says so')
  await createSession(app, 'Task1', '1. Research\n2. Design')
  const refused = await post(app, '/create', { session_id: 'task1', instructions: 'Write binary search' })
  t.match(refused.json(), { statusCode: 409, code: 'SESSION_ID_CASE_CONFLICT', message: /session id 'task1' names the file of another session whose id differs only in case.*nothing was written/ })
  t.equal(await taskCount(app, 'task1'), null, 'no session task1 in memory')
  t.equal(await taskCount(app, 'Task1'), 2, 'Task1 keeps its two tasks')
  t.same(await sessionFiles(dir), ['Task1.json'])
  t.same((await get(app, '/list?session_id=all')).json().sessions.map((s: { session_id: string }) => s.session_id), ['Task1'], 'the list holds Task1 alone')

  // Two new ids of one file at once: one is created, the other refused.
  const both = await Promise.all(['Same', 'sAME'].map(async (id) => post(app, '/create', { session_id: id, instructions: 'x' })))
  t.same(both.map((res) => res.statusCode).sort(), [200, 409])
  const winner = both[0]?.statusCode === 200 ? 'Same' : 'sAME'
  t.same(await sessionFiles(dir), [`${winner}.json`, 'Task1.json'].sort())
  t.equal(await taskCount(app, winner === 'Same' ? 'sAME' : 'Same'), null)

  // Once Task1 is deleted its name is free.
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/Task1` })).statusCode, 204)
  t.equal((await post(app, '/create', { session_id: 'task1', instructions: 'Write binary search' })).statusCode, 200)
  await app.close()

  const again = await build(t, { dir, fs })
  t.equal(await taskCount(again, 'task1'), 1, 'restored as written')
  t.equal(await taskCount(again, 'Task1'), null)
  t.equal((await post(again, '/create', { session_id: 'TASK1', instructions: 'x' })).statusCode, 409, 'a restored session\'s name is taken too')
})

t.test('a caseless folder: bringing an archived session back over an active one of another case is refused, and both stay', async (t) => {
  const dir = await tempDir(t)
  const fs = caselessFs()
  const app = await build(t, { dir, fs })
  await createSession(app, 'Notes', 'Summarize')
  t.equal((await post(app, '/execute-all', { session_id: 'Notes' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['Notes'])
  // archive/ holds Notes.json; the active folder is free, so `notes` is a session of its own.
  t.equal((await post(app, '/create', { session_id: 'notes', instructions: '1. a\n2. b' })).statusCode, 200)
  const back = await post(app, '/create', { session_id: 'Notes', instructions: 'more' })
  t.match(back.json(), { statusCode: 409, code: 'SESSION_ID_CASE_CONFLICT' })
  const archived = await get(app, '/list?session_id=Notes')
  t.match(archived.json(), { archived: true, tasks: [{ status: 'Completed' }] }, 'Notes is still archived, as it was')
  t.equal(await taskCount(app, 'notes'), 2)
  await app.close()

  const again = await build(t, { dir, fs })
  t.equal(await taskCount(again, 'notes'), 2)
  t.match((await get(again, '/list?session_id=Notes')).json(), { archived: true, tasks: [{ status: 'Completed' }] })
})

t.test('a caseless folder: archiving a session whose name another archived session holds in another case leaves that one alone; deleting it deletes its own copy only', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, fs: caselessFs() })
  await createSession(app, 'Notes', 'Summarize')
  await post(app, '/execute-all', { session_id: 'Notes' })
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['Notes'])
  await createSession(app, 'notes', 'Summarize again')
  await post(app, '/execute-all', { session_id: 'notes' })
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['notes'])
  const bytes = async (): Promise<number> => (await get(app, '/stats')).json().storage.archive_bytes
  const before = await bytes()
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/notes` })).statusCode, 204)
  t.same(await readdir(join(dir, 'archive')), ['Notes.json'], 'Notes\'s file is still there')
  t.match((await get(app, '/list?session_id=Notes')).json(), { archived: true, tasks: [{ status: 'Completed' }] }, 'and Notes answers')
  t.ok(await bytes() < before && await bytes() > 0, 'archive/ bytes count Notes\'s file once')
})

t.test('a caseless folder: an archived file deleted by hand is dropped by the next list though another case\'s file now answers to its name, which stays readable', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, fs: caselessFs() })
  await createSession(app, 'Notes', 'Summarize')
  await post(app, '/execute-all', { session_id: 'Notes' })
  await post(app, '/archive', { older_than_days: 0 })
  await rm(join(dir, 'archive', 'Notes.json'))
  await createSession(app, 'notes', '1. a\n2. b')
  await post(app, '/execute-all', { session_id: 'notes' })
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['notes'])
  const listed = (await get(app, '/list?session_id=all&archived=only')).json().sessions.map((summary: { session_id: string }) => summary.session_id)
  t.same(listed, ['notes'], 'Notes is gone from the list')
  t.match((await get(app, '/list?session_id=notes')).json(), { archived: true, total: 2 }, 'notes answers')
  t.equal((await get(app, '/list?session_id=Notes')).statusCode, 404)
  t.same(await readdir(join(dir, 'archive')), ['notes.json'], 'nothing set aside')
})

t.test('a caseless folder whose names each report an inode number of their own is told too', async (t) => {
  const dir = await tempDir(t)
  const fs = caselessFs({ distinctInodes: true })
  const probeA = join(dir, 'probe.txt')
  await (await fs.open(probeA, 'wx')).close()
  t.not((await fs.lstat(probeA)).ino, (await fs.lstat(join(dir, 'PROBE.TXT'))).ino, 'the emulation: two inode numbers for one file')
  await nodeFs.unlink(probeA)
  const app = await build(t, { dir, fs })
  await createSession(app, 'Task1', '1. a\n2. b')
  t.match((await post(app, '/create', { session_id: 'task1', instructions: 'c' })).json(), { statusCode: 409, code: 'SESSION_ID_CASE_CONFLICT' })
  t.same(await sessionFiles(dir), ['Task1.json'])
})

t.test('a caseless folder with auto-save off: the id is refused at create, not found out at shutdown when one of the two is lost', async (t) => {
  const dir = await tempDir(t)
  const fs = caselessFs()
  const app = await build(t, { dir, fs, config: { TASK_AUTO_SAVE: false } })
  await createSession(app, 'Task1', '1. a\n2. b')
  t.match((await post(app, '/create', { session_id: 'task1', instructions: 'c' })).json(), { statusCode: 409, code: 'SESSION_ID_CASE_CONFLICT' })
  t.equal(await taskCount(app, 'task1'), null)
  await app.close()
  t.same(await sessionFiles(dir), ['Task1.json'], 'written at shutdown, alone')
  const again = await build(t, { dir, fs })
  t.equal(await taskCount(again, 'Task1'), 2)
})

t.test('a folder that tells case (this machine\'s): ids differing only in case are two sessions, and nothing is logged', async (t) => {
  const dir = await tempDir(t)
  const log = memoryLog()
  const app = await build(t, { dir, logger: log.logger })
  t.notOk(log.lines().some((line) => /upper from lower case/.test(line.msg ?? '')))
  await createSession(app, 'Task1', '1. a\n2. b')
  await createSession(app, 'task1', 'c')
  t.same(await sessionFiles(dir), ['Task1.json', 'task1.json'])
  t.equal(await taskCount(app, 'Task1'), 2)
  t.equal(await taskCount(app, 'task1'), 1)
})

t.test('the command-line tool on a caseless folder (restore, export): files to write whose names differ only in case, from each other or from the folder\'s, are refused before anything is written', async (t) => {
  t.doesNotThrow(() => assertNoCaseTwins('/d', ['Task1.json', 'archive/task1.json', 'other.json'], ['Task1.json', 'archive/TASK1.123.json', 'more.json'], 'the backup'),
    'an active file and an archived one are two files, whatever their case; a file already there of the very name is replaced, as on any folder')
  t.throws(() => assertNoCaseTwins('/d', ['Task1.json', 'task1.json'], [], 'the backup'), { message: '/d does not tell upper from lower case in file names, and the backup holds Task1.json and task1.json: they would be one file, and one session would be written over another; nothing was written' })
  t.throws(() => assertNoCaseTwins('/d', ['archive/task1.json'], ['archive/TASK1.json'], 'the database'), { message: /the database's archive\/task1\.json and the folder's archive\/TASK1\.json differ only in case/ })
})
