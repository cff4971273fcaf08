/**
 * SessionRegistry at its own API: the change queue and its batched writes, over a real
 * FileSessionStore on a temp folder, with faults and holds through the store's fs seam.
 */
import { existsSync, readFileSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { SessionFile, TaskStatus } from '../schemas/session.js'
import { SessionNotFoundError, StorageError } from '../services/errors.js'
import { liveFile, unchanged, type ChangeFn } from '../services/session/draft.js'
import { SessionRegistry } from '../services/session/registry.js'
import { WriteBackRetries } from '../services/session/write-back-retries.js'
import { UnsavedChangesLostError } from '../services/errors.js'
import { appendTasks, newSessionFile } from '../services/session/session.js'
import { FileSessionStore } from '../services/store/file-store.js'
import { faultFs, tempOf, type FaultFs } from './faults.js'
import { openStore, type TestContext } from './helper.js'

const NOW = new Date('2026-03-01T12:00:00.000Z')

async function setup (t: TestContext, autoSave = true): Promise<{ fs: FaultFs, store: FileSessionStore, registry: SessionRegistry }> {
  const fs = faultFs()
  const store = await openStore(t, fs)
  const registry = new SessionRegistry({ store, autoSave, clock: () => NOW })
  return { fs, store, registry }
}

/** Appends one task (creating the session if need be); resolves with the new task's id. */
const addTask = (instruction: string): ChangeFn<string> => (draft) => {
  if (draft.file === null) draft.file = newSessionFile(draft.sessionId, draft.now)
  return appendTasks(draft.file, [{ instruction, task_type: 'General' }], draft.now)[0]!.id
}

const setStatus = (index: number, status: TaskStatus): ChangeFn<void> => (draft) => {
  liveFile(draft).session.tasks[index]!.status = status
}

/** The session as its file holds it now (read at once), or null when there is no file. */
function onDisk (store: FileSessionStore, sessionId: string): SessionFile | null {
  const path = store.pathFor(sessionId)
  return existsSync(path) ? JSON.parse(readFileSync(path, 'utf8')) as SessionFile : null
}

const instructions = (file: SessionFile | null): string[] => file === null ? [] : file.session.tasks.map((task) => task.instruction)

t.test('changes queued while a write is in flight share the next write, and each resolves once the disk holds it', async (t) => {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('first'))
  const renamesBefore = fs.calls.rename

  const gate = fs.hold('rename', { path: tempOf('s'), times: 1 })
  const settled: string[] = []
  const inFlight = registry.change('s', addTask('in flight')).then((id) => {
    settled.push('in flight')
    return { id, disk: onDisk(store, 's') }
  })
  await gate.reached
  const queued = Array.from({ length: 10 }, (_, i) => registry.change('s', addTask(`queued ${i}`)).then((id) => {
    settled.push(`queued ${i}`)
    return { id, disk: onDisk(store, 's') }
  }))
  await sleep(30)
  t.same(settled, [], 'nothing resolves while the write is held')
  gate.release()

  const first = await inFlight
  const rest = await Promise.all(queued)
  t.equal(fs.calls.rename - renamesBefore, 2, 'the held write, then one write for all ten queued changes')
  t.same(instructions(first.disk), ['first', 'in flight'], 'the first change resolved once its write was on disk')
  for (const [i, { id, disk }] of rest.entries()) {
    const task = disk?.session.tasks.find((task) => task.id === id)
    t.equal(task?.instruction, `queued ${i}`, `queued ${i}: its own task id came back, and the disk held it when it resolved`)
  }
  t.equal(new Set(rest.map((r) => r.id)).size, 10, 'ten different task ids')
  t.strictSame(onDisk(store, 's'), registry.find('s'), 'memory and disk agree')
  t.equal(registry.find('s')?.session.tasks.length, 12)
})

t.test('a failed save rejects every change in its write; memory keeps the state before them; a later change writes the whole state', async (t) => {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('one'))
  await registry.change('s', addTask('two'))
  const fileBefore = registry.find('s')
  const statsBefore = { ...registry.stats() }
  const diskBefore = readFileSync(store.pathFor('s'))

  fs.fail('write', 'ENOSPC')
  const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => registry.change('s', addTask(`lost ${i}`))))
  t.equal(fs.fired.length, 1, 'the five changes shared one write')
  for (const result of results) t.match(result, { status: 'rejected', reason: { code: 'STORAGE_FULL' } })
  t.ok(results.every((result) => result.status === 'rejected' && result.reason instanceof StorageError), 'each rejects with the StorageError')
  await t.rejects(registry.change('fresh', addTask('new')), { code: 'STORAGE_FULL' }, 'a new session fails too')

  t.equal(registry.find('s'), fileBefore, 'find() gives the state before the failed changes')
  t.equal(registry.find('fresh'), null, 'a session whose first save failed does not exist')
  t.same(registry.sessionIds(), ['s'])
  t.same(registry.stats(), statsBefore, 'totals unchanged')
  t.same(readFileSync(store.pathFor('s')), diskBefore, 'the file is unchanged')

  fs.heal()
  await registry.change('s', addTask('three'))
  t.same(instructions(onDisk(store, 's')), ['one', 'two', 'three'], 'the next write holds the whole state, none of the failed changes')
  t.strictSame(onDisk(store, 's'), registry.find('s'))
  t.equal(registry.stats().total_tasks, statsBefore.total_tasks + 1)
})

t.test('a save whose outcome is uncertain (the folder fsync failed after the rename) puts the last acknowledged state back', async (t) => {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('one'))
  const acknowledged = registry.find('s')

  const renames = fs.calls.rename
  fs.fail('dirsync', 'EIO', { times: 1 })
  const err = await registry.change('s', addTask('uncertain')).then(() => null, (e: unknown) => e)
  t.type(err, StorageError)
  t.match(err, { code: 'STORAGE_UNAVAILABLE', uncertain: true })
  t.equal(fs.calls.rename - renames, 2, 'the failed save renamed, then the write-back did')
  t.equal(registry.find('s'), acknowledged, 'memory keeps the acknowledged state')
  t.strictSame(onDisk(store, 's'), acknowledged, 'the disk holds the acknowledged state again')

  // A new session whose first save is uncertain: its file is removed again.
  fs.fail('dirsync', 'EIO', { times: 1 })
  t.match(await registry.change('fresh', addTask('new')).catch((e: unknown) => e), { uncertain: true })
  t.equal(registry.find('fresh'), null)
  t.notOk(existsSync(store.pathFor('fresh')), 'no file left for a session that was never acknowledged')

  // A fault before the rename is certain: nothing to put back, so no second write.
  const before = fs.calls.rename
  fs.fail('rename', 'EIO', { times: 1 })
  t.match(await registry.change('s', addTask('certain')).catch((e: unknown) => e), { code: 'STORAGE_UNAVAILABLE', uncertain: false })
  t.equal(fs.calls.rename - before, 1, 'no write-back')
  t.strictSame(onDisk(store, 's'), acknowledged)
})

/**
 * Session 's' with task 'one', whose next change (a task `instruction`) landed and was answered
 * as failed (the folder fsync failed), its write-back failing once: it owes one.
 */
async function owingWriteBack (t: TestContext, instruction: string): Promise<{ fs: FaultFs, store: FileSessionStore, registry: SessionRegistry }> {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('one'))
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('write', 'EIO', { skip: 1, times: 1 })
  const err = await registry.change('s', addTask(instruction)).then(() => null, (e: unknown) => e)
  if (!(err instanceof StorageError && err.uncertain)) throw new Error(`expected a failure of unknown outcome, got ${String(err)}`)
  return { fs, store, registry }
}

t.test('a write-back that fails too is owed: tried again until it lands, or until a later write of the session does', async (t) => {
  const fs = faultFs()
  const store = await openStore(t, fs)
  const failed: string[] = []
  const registry = new SessionRegistry({ store, autoSave: true, clock: () => NOW, writeBackFailed: (sessionId) => { failed.push(sessionId) } })
  await registry.change('s', addTask('one'))
  const acknowledged = registry.find('s')

  // The save lands but its folder fsync fails; the write-back then fails before its rename.
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('write', 'EIO', { skip: 1 })
  t.match(await registry.change('s', addTask('uncertain')).catch((e: unknown) => e), { uncertain: true })
  t.same(failed, ['s'], 'the failed write-back is reported')
  t.equal(registry.find('s'), acknowledged, 'memory keeps the acknowledged state')
  t.same(instructions(onDisk(store, 's')), ['one', 'uncertain'], 'the disk holds the change answered as failed, for now')
  t.same(registry.nextIdle(10), [], 'not handed out to be checked against storage (that would adopt the change)')

  t.equal(await registry.retryWriteBacks(), 1, 'still owed while the disk fails')
  t.same(failed, ['s', 's'])
  fs.heal()
  t.equal(await registry.retryWriteBacks(), 0, 'nothing owed once it lands')
  t.strictSame(onDisk(store, 's'), acknowledged, 'the disk holds the acknowledged state again')
  const renames = fs.calls.rename
  t.equal(await registry.retryWriteBacks(), 0)
  t.equal(fs.calls.rename, renames, 'nothing written when nothing is owed')

  // A new session whose create landed and whose removal failed: the slot stays until the file is gone.
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('rename', 'EIO', { path: (path) => path.endsWith('fresh.json') })
  t.match(await registry.change('fresh', addTask('new')).catch((e: unknown) => e), { uncertain: true })
  t.equal(registry.find('fresh'), null, 'a session never acknowledged does not exist')
  t.ok(existsSync(store.pathFor('fresh')), 'its file is still there')
  fs.heal()
  t.equal(await registry.retryWriteBacks(), 0)
  t.notOk(existsSync(store.pathFor('fresh')), 'the retry removed it')

  // Unlinked by the write-back (no room to rename it), whose folder sync failed: the file may be
  // back after a power loss until a folder sync says it is gone, so the retry that finds it gone syncs.
  fs.fail('dirsync', 'EIO', { times: 2 })
  fs.fail('rename', 'ENOSPC', { path: (path) => path.endsWith('unsynced.json') })
  t.match(await registry.change('unsynced', addTask('new')).catch((e: unknown) => e), { uncertain: true })
  t.notOk(existsSync(store.pathFor('unsynced')), 'unlinked by the write-back, whose folder sync failed')
  fs.heal()
  const syncs = fs.calls.dirsync
  t.equal(await registry.retryWriteBacks(), 0, 'settled')
  t.equal(fs.calls.dirsync, syncs + 1, 'by a folder sync, the file being gone already')
  t.same(registry.sessionIds(), ['s'])

  // A later change's write holds the whole acknowledged state: it settles what was owed.
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('write', 'EIO', { skip: 1, times: 1 })
  t.match(await registry.change('s', addTask('uncertain again')).catch((e: unknown) => e), { uncertain: true })
  await registry.change('s', addTask('two'))
  t.same(instructions(onDisk(store, 's')), ['one', 'two'], 'the next write leaves out the failed change')
  const before = fs.calls.rename
  t.equal(await registry.retryWriteBacks(), 0, 'nothing left owed')
  t.equal(fs.calls.rename, before, 'and nothing written again')
})

t.test('archiving a session that owes a write-back archives its acknowledged state, not the change answered as failed', async (t) => {
  const { store, registry } = await owingWriteBack(t, 'answered 503')
  t.same(instructions(onDisk(store, 's')), ['one', 'answered 503'], 'owed: the disk holds the failed change')
  // The disk works again, and the session is archived before any retry.
  await registry.change('s', (draft) => { draft.archive() })
  t.notOk(existsSync(store.pathFor('s')), 'no longer active')
  const archived = (await store.readArchived('s')).session?.file as SessionFile
  t.same(instructions(archived), ['one'], 'the archived copy holds the acknowledged state')
  t.equal(await registry.retryWriteBacks(), 0, 'nothing owed')
})

/** Archives session 's' so that the rename lands and the archive folder's fsync fails: an archive in doubt. */
async function archiveInDoubt (fs: FaultFs, registry: SessionRegistry): Promise<unknown> {
  fs.fail('dirsync', 'EIO', { times: 1 })
  return await registry.change('s', (draft) => { draft.archive() }).then(() => null, (e: unknown) => e)
}

/** What a restarted server finds: the active session (its tasks' instructions) and the archived ids. */
async function afterRestart (t: TestContext, store: FileSessionStore): Promise<{ active: string[][], archived: string[] }> {
  await store.close()
  const again = new FileSessionStore({ dir: store.dir })
  await again.init()
  t.teardown(() => again.close())
  const { sessions } = await again.loadAll({ concurrency: 4 })
  await again.openArchive({ concurrency: 4 })
  return { active: sessions.map((loaded) => instructions(loaded.file)), archived: again.archivedIds() }
}

t.test('an archive whose outcome is unknown (the archive folder fsync failed after the rename) is undone: the session is active again, with no archived copy', async (t) => {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('one'))
  const acknowledged = registry.find('s')
  t.match(await archiveInDoubt(fs, registry), { code: 'STORAGE_UNAVAILABLE', uncertain: true })
  t.equal(registry.find('s'), acknowledged, 'memory keeps the active session')
  t.strictSame(onDisk(store, 's'), acknowledged, 'its file is back')
  t.same(await readdir(store.archiveDir), [], 'the archived copy is gone')
  t.equal(store.archivedName('s'), null, 'and the archive does not list it')
  t.same(await afterRestart(t, store), { active: [['one']], archived: [] }, 'a restart finds it active only')
})

t.test('the undo of an archive in doubt that fails too is owed: a retry, or the next write of the session, removes the archived copy', async (t) => {
  for (const settle of ['retry', 'next write'] as const) {
    await t.test(settle, async (t) => {
      const { fs, store, registry } = await setup(t)
      await registry.change('s', addTask('one'))
      fs.fail('write', 'EIO', { times: 1 })
      t.match(await archiveInDoubt(fs, registry), { uncertain: true })
      t.equal(onDisk(store, 's'), null, 'the undo failed: no active file yet')
      t.equal(store.archivedName('s'), 's.json', 'the archived copy is there')
      if (settle === 'retry') t.equal(await registry.retryWriteBacks(), 0, 'the retry lands')
      else await registry.change('s', addTask('two'))
      const expected = settle === 'retry' ? ['one'] : ['one', 'two']
      t.same(instructions(onDisk(store, 's')), expected, 'the session is active')
      t.same(await readdir(store.archiveDir), [], 'and no archived copy is left')
      t.equal(await registry.retryWriteBacks(), 0, 'nothing owed')
      t.same(await afterRestart(t, store), { active: [expected], archived: [] }, 'a restart finds it active only')
    })
  }
})

/** Session 's' (task 'one') archived in doubt, its undo failed too (the write of the active file): the undo is owed. */
async function owingArchiveUndo (t: TestContext): Promise<{ fs: FaultFs, store: FileSessionStore, registry: SessionRegistry }> {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('one'))
  fs.fail('write', 'EIO', { times: 1 })
  const err = await archiveInDoubt(fs, registry)
  if (!(err instanceof StorageError && err.uncertain)) throw new Error(`expected a failure of unknown outcome, got ${String(err)}`)
  return { fs, store, registry }
}

t.test('an owed archive undo that fails again, uncertain, before the next write is still owed as an archive undo (not settled by a plain save)', async (t) => {
  const { fs, store, registry } = await owingArchiveUndo(t)
  // The undo done before this change lands its active file, then the active folder's fsync fails.
  fs.fail('dirsync', 'EIO', { times: 1 })
  t.match(await registry.change('s', addTask('two')).catch((e: unknown) => e), { uncertain: true }, 'the change fails, its outcome unknown')
  t.same(instructions(onDisk(store, 's')), ['one'], 'the acknowledged state is active')
  t.same(await readdir(store.archiveDir), [], 'and the archived copy is gone: the write-back undid the archive')
  t.equal(await registry.retryWriteBacks(), 0, 'nothing owed')
  t.same(await afterRestart(t, store), { active: [['one']], archived: [] })
})

t.test('a session owing an archive undo is deleted on a full disk: the delete needs no room, and removes the archived copy too', async (t) => {
  const { fs, store, registry } = await owingArchiveUndo(t)
  fs.fail('write', 'ENOSPC')
  fs.fail('open', 'ENOSPC')
  await registry.change('s', (draft) => { draft.delete({ archived: store.archivedName('s') !== null }) })
  t.equal(registry.find('s'), null, 'deleted')
  t.equal(onDisk(store, 's'), null)
  t.same(await readdir(store.archiveDir), [], 'no archived copy left')
  t.equal(await registry.retryWriteBacks(), 0, 'nothing owed')
  fs.heal()
  t.same(await afterRestart(t, store), { active: [], archived: [] }, 'a restart finds nothing')
})

t.test('a shutdown while a retry round is under way takes that round as its last try, not one more (each would wait on storage)', async (t) => {
  const fs = faultFs()
  const store = await openStore(t, fs)
  const warnings: string[] = []
  const log = { info: () => {}, error: () => {}, warn: (_obj: object, msg?: string) => { warnings.push(msg ?? '') } }
  // Wired as the task manager wires them: a failed write-back is reported to the retries.
  const retries: WriteBackRetries = new WriteBackRetries({ retry: async () => await registry.retryWriteBacks(), retryMs: 1, retryMaxMs: 1, log })
  const registry: SessionRegistry = new SessionRegistry({ store, autoSave: true, clock: () => NOW, writeBackFailed: retries.failed })
  await registry.change('s', addTask('one'))
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('write', 'EIO', { skip: 1 })
  t.match(await registry.change('s', addTask('uncertain')).catch((e: unknown) => e), { uncertain: true })
  // The first retry round's write-back waits in its open; the shutdown begins meanwhile. (The
  // retry timer does not hold the process open, as a server's sockets would: this does.)
  const alive = setInterval(() => {}, 60_000)
  t.teardown(() => { clearInterval(alive) })
  const gate = fs.hold('open', { path: tempOf('s'), times: 1 })
  await gate.reached
  const opens = fs.calls.open
  const closing = retries.close()
  gate.release()
  await closing
  t.equal(fs.calls.open, opens, 'no write-back tried after the round under way')
  t.ok(warnings.includes('Stopping with acknowledged states not put back: these sessions may show a change answered as failed'), 'what is still owed is reported')
  t.equal(await registry.retryWriteBacks(), 1, 'still owed: the disk still fails')
})

t.test('a change queued while an owed write-back is tried again waits for it, then is written', async (t) => {
  const { fs, store, registry } = await owingWriteBack(t, 'uncertain')
  const gate = fs.hold('rename', { path: tempOf('s'), times: 1 })
  const retry = registry.retryWriteBacks()
  await gate.reached
  const queued = registry.change('s', addTask('two'))
  gate.release()
  t.equal(await retry, 0)
  await queued
  t.same(instructions(onDisk(store, 's')), ['one', 'two'])
  t.strictSame(onDisk(store, 's'), registry.find('s'), 'memory and disk agree')
})

t.test('auto-save off: changes commit in memory, saveUnsaved() writes them, delete and unarchive still write at once', async (t) => {
  const { fs, store, registry } = await setup(t, false)
  const renames = fs.calls.rename
  t.equal(await registry.change('lazy', addTask('one')), 'task_1_' + Math.floor(NOW.getTime() / 1000), 'the change resolves with its result')
  await registry.change('lazy', addTask('two'))
  t.equal(fs.calls.rename, renames, 'nothing written')
  t.notOk(existsSync(store.pathFor('lazy')))
  t.ok(registry.isUnsaved('lazy'))
  t.same(instructions(registry.find('lazy')), ['one', 'two'], 'memory holds the changes')
  t.match(registry.stats(), { total_sessions: 1, total_tasks: 2 })

  await registry.saveUnsaved()
  t.equal(fs.calls.rename - renames, 1, 'one write')
  t.notOk(registry.isUnsaved('lazy'))
  t.strictSame(onDisk(store, 'lazy'), registry.find('lazy'))

  await registry.change('lazy', addTask('three'))
  t.ok(registry.isUnsaved('lazy'), 'dirty again')
  t.equal(fs.calls.rename - renames, 1)
  t.same(instructions(onDisk(store, 'lazy')), ['one', 'two'])

  await registry.change('lazy', (draft) => { draft.delete({ archived: false }) })
  t.notOk(existsSync(store.pathFor('lazy')), 'a delete removes the file at once')
  t.equal(registry.find('lazy'), null)
  t.notOk(registry.isUnsaved('lazy'))
  t.match(registry.stats(), { total_sessions: 0, total_tasks: 0, files: 0 })

  // Unarchive: a session moved to the archive comes back, written at once.
  await registry.change('old', addTask('archived one'))
  await registry.saveUnsaved()
  await registry.change('old', (draft) => { draft.archive() })
  t.notOk(existsSync(store.pathFor('old')), 'archived: the active file is gone')
  const { session } = await store.readArchived('old')
  if (session === null) throw new Error('the archived copy is not readable')
  const beforeUnarchive = fs.calls.rename
  await registry.change('old', (draft) => { draft.unarchive(session.file, session.name, session.bytes) })
  t.equal(fs.calls.rename - beforeUnarchive, 1, 'the unarchived session is written at once')
  t.strictSame(onDisk(store, 'old'), registry.find('old'))
  t.notOk(registry.isUnsaved('old'))
  t.notOk(existsSync(join(store.archiveDir, session.name)), 'the archived copy is removed')
})

t.test('auto-save off: saveUnsaved() writes every session it can and names each one it cannot, with its cause', async (t) => {
  const { fs, store, registry } = await setup(t, false)
  for (const id of ['a', 'b', 'c']) await registry.change(id, addTask('one'))
  fs.fail('rename', 'EIO', { path: (path) => tempOf('a')(path) || tempOf('c')(path) })
  const err = await registry.saveUnsaved().then(() => null, (e: unknown) => e)
  t.ok(err instanceof UnsavedChangesLostError, 'UnsavedChangesLostError, not only the first failure')
  const lost = (err as UnsavedChangesLostError).sessions
  t.same(lost.map((entry) => entry.sessionId).sort(), ['a', 'c'], 'it names both failed sessions')
  for (const entry of lost) t.match(entry.cause, { name: 'StorageError', message: `saving session '${entry.sessionId}' failed` })
  t.same((err as UnsavedChangesLostError).errors.length, 2)
  t.same(registry.lostChanges().map((entry) => entry.sessionId).sort(), ['a', 'c'], 'the registry still knows them, with their causes')
  t.ok(registry.lostChanges().every((entry) => entry.cause instanceof StorageError))
  t.ok(onDisk(store, 'b') !== null, 'the session that could be written is written')
  fs.heal()
  await registry.saveUnsaved()
  t.same(registry.lostChanges(), [], 'written on the next try: nothing lost')
  t.ok(onDisk(store, 'a') !== null && onDisk(store, 'c') !== null)
})

t.test('auto-save off: a delete whose outcome is uncertain puts the session back on disk, unsaved changes included', async (t) => {
  const { fs, store, registry } = await setup(t, false)
  await registry.change('lazy', addTask('one'))
  await registry.saveUnsaved()
  await registry.change('lazy', addTask('two'))
  t.ok(registry.isUnsaved('lazy'))
  // The file is moved to a temp name and the folder fsync fails: it is moved back, and the delete did not happen.
  fs.fail('dirsync', 'EIO', { times: 1 })
  await t.rejects(registry.change('lazy', (draft) => { draft.delete({ archived: false }) }), StorageError)
  t.same(instructions(registry.find('lazy')), ['one', 'two'], 'memory keeps the session')
  t.same(instructions(onDisk(store, 'lazy')), ['one'], 'the disk keeps the file as it was')
  t.ok(registry.isUnsaved('lazy'), 'the change not saved before is still to be saved')
  // Moving it back fails too: whether the delete holds is unknown.
  fs.fail('dirsync', 'EIO', { times: 1 })
  fs.fail('rename', 'EIO', { times: 1 })
  await t.rejects(registry.change('lazy', (draft) => { draft.delete({ archived: false }) }), StorageError)
  t.same(instructions(registry.find('lazy')), ['one', 'two'], 'memory keeps the session')
  t.same(instructions(onDisk(store, 'lazy')), ['one', 'two'], 'and the disk has it back, with the change not saved before')
  t.notOk(registry.isUnsaved('lazy'), 'saved now')
})

t.test('a delete queued while a save is in flight: the save resolves, then the delete; a change after it finds no session', async (t) => {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('one'))
  const gate = fs.hold('rename', { path: tempOf('s'), times: 1 })
  const order: string[] = []
  const save = registry.change('s', addTask('two')).then(() => order.push('save'))
  await gate.reached
  const del = registry.change('s', (draft) => { draft.delete({ archived: false }) }).then(() => order.push('delete'))
  const after = registry.change('s', (draft) => liveFile(draft).session.tasks.length)
  gate.release()
  await Promise.all([save, del])
  t.same(order, ['save', 'delete'])
  await t.rejects(after, SessionNotFoundError, 'the change after the delete sees no session')
  t.notOk(existsSync(store.pathFor('s')), 'the file is gone')
  t.equal(registry.find('s'), null)
  t.throws(() => registry.existing('s'), SessionNotFoundError)
  t.same(registry.summaries(), [])
  t.match(registry.stats(), { total_sessions: 0, total_tasks: 0, files: 0, bytes: 0 })
  t.equal(registry.slotCount, 0, 'nothing is kept for a deleted session')
})

t.test('a delete queued behind other changes is written on its own, after them: a delete that fails fails alone', async (t) => {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('one'))
  const gate = fs.hold('rename', { path: tempOf('s'), times: 1 })
  const held = registry.change('s', addTask('two'))
  await gate.reached
  // Queued together while that write is held: a change, then a delete the store refuses.
  const queued = registry.change('s', addTask('three'))
  const del = registry.change('s', (draft) => { draft.delete({ archived: false }) })
  fs.fail('rename', 'EIO', { path: (path) => path === store.pathFor('s') })
  gate.release()
  await held
  t.type(await queued, 'string', 'the change before the delete is written')
  await t.rejects(del, StorageError, 'the delete fails, alone')
  t.same(instructions(onDisk(store, 's')), ['one', 'two', 'three'], 'the disk holds the change')
  t.strictSame(onDisk(store, 's'), registry.find('s'), 'memory and disk agree')
  fs.heal()
  // A delete behind a change that succeeds: both resolve, in order, and the session is gone.
  const order: string[] = []
  const gate2 = fs.hold('rename', { path: tempOf('s'), times: 1 })
  const held2 = registry.change('s', addTask('four')).then(() => order.push('four'))
  await gate2.reached
  const five = registry.change('s', addTask('five')).then(() => order.push('five'))
  const gone = registry.change('s', (draft) => { draft.delete({ archived: false }) }).then(() => order.push('delete'))
  gate2.release()
  await Promise.all([held2, five, gone])
  t.same(order, ['four', 'five', 'delete'])
  t.equal(onDisk(store, 's'), null, 'the file is gone')
  t.equal(registry.find('s'), null)
})

t.test('a change that throws leaves the others in its batch unaffected; unchanged() costs no write', async (t) => {
  const { fs, store, registry } = await setup(t)
  await registry.change('s', addTask('one'))
  const renames = fs.calls.rename
  const [a, bad, b] = await Promise.allSettled([
    registry.change('s', addTask('a')),
    registry.change('s', () => { throw new Error('refused') }),
    registry.change('s', addTask('b'))
  ])
  t.match(a, { status: 'fulfilled' })
  t.match(bad, { status: 'rejected', reason: { message: 'refused' } })
  t.match(b, { status: 'fulfilled' })
  t.equal(fs.calls.rename - renames, 1, 'one write for the batch')
  t.same(instructions(onDisk(store, 's')), ['one', 'a', 'b'])

  const before = registry.find('s')
  const opens = fs.calls.open
  t.equal(await registry.change('s', () => unchanged(42)), 42, 'unchanged() resolves with its value')
  await t.rejects(registry.change('s', () => { throw new Error('nothing') }))
  t.equal(fs.calls.open, opens, 'no write: no file opened')
  t.equal(fs.calls.rename - renames, 1)
  t.equal(registry.find('s'), before, 'the state (and its updated_at) is untouched')
  t.equal(await registry.snapshot('s'), before, 'snapshot reads through the queue without a write')
  t.equal(await registry.snapshot('none'), null)
  t.equal(registry.slotCount, 1, 'reading a missing session keeps nothing')
})

/** Totals recomputed from the files on disk. */
async function totalsOnDisk (store: FileSessionStore): Promise<Record<string, number>> {
  const totals = { total_sessions: 0, active_sessions: 0, completed_sessions: 0, total_tasks: 0, completed_tasks: 0, failed_tasks: 0, pending_tasks: 0, in_progress_tasks: 0, bytes: 0, files: 0 }
  for (const name of (await readdir(store.dir)).filter((name) => name.endsWith('.json'))) {
    const text = readFileSync(join(store.dir, name))
    const tasks = (JSON.parse(text.toString('utf8')) as SessionFile).session.tasks
    const done = tasks.filter((task) => task.status === 'Completed' || task.status === 'Failed').length
    totals.total_sessions++
    totals.files++
    totals.bytes += text.length
    if (tasks.length > 0 && done === tasks.length) totals.completed_sessions++
    else totals.active_sessions++
    totals.total_tasks += tasks.length
    totals.completed_tasks += tasks.filter((task) => task.status === 'Completed').length
    totals.failed_tasks += tasks.filter((task) => task.status === 'Failed').length
    totals.pending_tasks += tasks.filter((task) => task.status === 'Pending').length
    totals.in_progress_tasks += tasks.filter((task) => task.status === 'InProgress').length
  }
  return totals
}

t.test('totals stay right across create, update and delete', async (t) => {
  const { store, registry } = await setup(t)
  const check = async (when: string): Promise<void> => {
    t.same({ ...registry.stats() }, await totalsOnDisk(store), when)
  }
  await check('empty')
  await registry.change('a', addTask('a1'))
  await registry.change('a', addTask('a2'))
  await registry.change('b', addTask('b1'))
  await check('after creates')
  t.match(registry.stats(), { total_sessions: 2, active_sessions: 2, total_tasks: 3, pending_tasks: 3 })
  await registry.change('b', setStatus(0, 'Completed'))
  await check('after b finished')
  t.match(registry.stats(), { completed_sessions: 1, active_sessions: 1, completed_tasks: 1 })
  await registry.change('a', setStatus(0, 'InProgress'))
  await registry.change('a', setStatus(1, 'Failed'))
  await check('after a changed')
  t.match(registry.stats(), { in_progress_tasks: 1, failed_tasks: 1, pending_tasks: 0 })
  await registry.change('b', (draft) => { draft.delete({ archived: false }) })
  await check('after b was deleted')
  t.match(registry.stats(), { total_sessions: 1, completed_sessions: 0, total_tasks: 2, files: 1 })
  t.equal(registry.size, 1)
})

t.test('summaries list the sessions newest updated first through creates, changes, deletes and re-creates, a page at a time', async (t) => {
  const fs = faultFs()
  const store = await openStore(t, fs)
  let ms = Date.parse('2026-01-01T00:00:00.000Z')
  // Every change a millisecond later than the last.
  const registry = new SessionRegistry({ store, autoSave: true, clock: () => new Date(ms++) })
  const ids = (): string[] => registry.summaries().map((s) => s.session_id)
  for (const id of ['a', 'b', 'c']) await registry.change(id, addTask('one'))
  t.same(ids(), ['c', 'b', 'a'])
  await registry.change('a', addTask('two'))
  t.same(ids(), ['a', 'c', 'b'], 'a changed session moves to the front')
  await registry.change('c', (draft) => { draft.delete({ archived: false }) })
  t.same(ids(), ['a', 'b'], 'a deleted one leaves')
  await registry.change('c', addTask('again'))
  await registry.change('d', addTask('one'))
  t.same(ids(), ['d', 'c', 'a', 'b'], 're-created and new ones join in order')
  t.same(registry.summaries(1, 2).map((s) => s.session_id), ['c', 'a'], 'a page')
  t.match(registry.summaries(0, 1), [{ session_id: 'd', total: 1, pending: 1 }], 'with its progress')
  const all = registry.newestFirst()
  t.equal(all.length, 4)
  t.same([0, 1, 2, 3].map((at) => all.updatedMs(at)), [...[0, 1, 2, 3].map((at) => all.updatedMs(at))].sort((x, y) => y - x))

  // Many more sessions come and go between two lists: still each once, in order.
  for (let i = 0; i < 1500; i++) await registry.change(`n${i}`, addTask('one'))
  for (let i = 0; i < 1500; i += 2) await registry.change(`n${i}`, (draft) => { draft.delete({ archived: false }) })
  await registry.change('b', addTask('two'))
  const listed = ids()
  t.equal(listed.length, 4 + 750)
  t.equal(new Set(listed).size, listed.length, 'each session once')
  t.same(listed.slice(0, 3), ['b', 'n1499', 'n1497'])
  t.same(listed.slice(-4), ['n1', 'd', 'c', 'a'], 'the oldest last')
})
