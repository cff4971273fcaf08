/**
 * The SessionStore contract, tested through the interface only, so that every store (the file
 * store, the PostgreSQL store) is held to the same promises. A store's test file calls
 * storeContract with a way to open a store and to open another one on the same storage.
 * Not a *.test.ts file: tap does not run it.
 */
import type { Test } from 'tap'
import type { SessionFile, Task } from '../schemas/session.js'
import type { Keyring } from '../services/store/keyring.js'
import type { SessionStore } from '../services/store/store.js'
import { RECORD_ROOM_PER_TASK_BYTES } from '../services/store/save-rules.js'
import { serializeSessionFile } from '../services/store/session-files.js'

export interface ContractStorage {
  /** Initialised, on storage of the test's own. */
  store: SessionStore
  /**
   * Another store on the same storage, initialised (as a restarted server would open it); the
   * caller closes the first one before when the store needs that (a single-writer lock).
   */
  reopen(): Promise<SessionStore>
}

/**
 * Opens a store on fresh storage (sealing with `keyring` when given, bounding sessions at
 * `maxSessionBytes` when given); null when the test cannot run (it skipped itself).
 */
export type OpenStorage = (t: Test, options: { keyring: Keyring | null, maxSessionBytes?: number }) => Promise<ContractStorage | null>

export interface ContractOptions {
  /** A keyring for the encryption tests; they are left out without one. */
  keyring?: Keyring
}

const AT = '2024-01-15T10:30:00.000Z'

function task (n: number, status: Task['status'], extra: Partial<Task> = {}): Task {
  const done = status === 'Completed' || status === 'Failed'
  return {
    id: `task_${n}_1705314600`,
    instruction: `step ${n}`,
    task_type: 'General',
    status,
    result: status === 'Completed' ? `result ${n}` : null,
    error: status === 'Failed' ? 'boom' : null,
    confidence: status === 'Completed' ? 0.75 : null,
    created_at: AT,
    started_at: status === 'Pending' ? null : AT,
    completed_at: done ? '2024-01-15T10:31:00.000Z' : null,
    attempts: status === 'Pending' ? 0 : 1,
    ...extra
  }
}

/** A session with tasks of `statuses`; `updated` tells versions of one session apart. */
export function contractSession (id: string, statuses: Array<Task['status']> = ['Completed', 'Pending'], updated = '2024-01-15T10:31:00.000Z'): SessionFile {
  const tasks = statuses.map((status, i) => task(i + 1, status))
  const current = tasks.findIndex((t) => t.status === 'Pending' || t.status === 'InProgress')
  return {
    session_id: id,
    created_at: AT,
    updated_at: updated,
    session: { session_id: id, tasks, current_index: current === -1 ? tasks.length : current }
  }
}

/** Text that serializers and databases like to change: non-ASCII, escapes, quotes, newlines, a lone surrogate's neighbours. */
function awkward (id: string): SessionFile {
  const file = contractSession(id, ['Completed', 'Failed', 'InProgress', 'Pending'])
  const [a, b, c] = file.session.tasks as [Task, Task, Task]
  a.instruction = 'Implement ünïcödé ✓ "quotes" \\ back\\slash\nand\ttabs 😀 𝄞 and \u2028 separators'
  a.result = '{"looks": "like JSON", "n": 1e400}'
  a.confidence = 0.30000000000000004
  b.error = 'x'.repeat(10_000)
  c.interruptions = 2
  file.background_run = { started_at: AT }
  return file
}

const byId = (a: { session_id: string }, b: { session_id: string }): number => a.session_id < b.session_id ? -1 : a.session_id > b.session_id ? 1 : 0

async function active (store: SessionStore): Promise<SessionFile[]> {
  const result = await store.loadAll({ concurrency: 2 })
  return result.sessions.map((session) => session.file).sort(byId)
}

export function storeContract (t: Test, name: string, open: OpenStorage, options: ContractOptions = {}): void {
  const plain = { keyring: null }

  t.test(`${name}: save then loadAll gives back the same documents, with their stored sizes`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    const a = contractSession('alpha')
    const b = awkward('beta-2_x')
    const bytes = await store.save(a)
    await store.save(b)
    t.equal(bytes, (await store.serialize(a)).length, 'save resolves with the size of the stored bytes')

    const result = await store.loadAll({ concurrency: 2 })
    t.strictSame(result.failures, [], 'nothing unreadable')
    const loaded = result.sessions.sort((x, y) => byId(x.file, y.file))
    t.strictSame(loaded.map((session) => session.file), [a, b], 'the very documents saved')
    t.same(loaded.map((session) => session.bytes), [bytes, (await store.serialize(b)).length], 'each with its stored size')
  })

  t.test(`${name}: what is stored is exactly serialize()'s bytes, through a restart`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const file = awkward('exact')
    await storage.store.save(file)
    const before = await storage.store.serialize(file)
    t.equal(before.toString('utf8'), JSON.stringify(file, null, 2) + '\n', 'without keys: the seed format, 2-space indented with a final newline')
    await storage.store.close()
    const again = await storage.reopen()
    const [back] = await active(again)
    t.ok(back !== undefined, 'read back')
    t.ok((await again.serialize(back as SessionFile)).equals(before), 'serializing what was read back gives the same bytes')
  })

  t.test(`${name}: save replaces the stored session`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    await store.save(contractSession('s1', ['Pending', 'Pending']))
    const second = contractSession('s1', ['Completed', 'Pending', 'Pending'], '2024-01-15T11:00:00.000Z')
    const third = contractSession('s1', ['Completed'], '2024-01-15T12:00:00.000Z')
    await store.save(second)
    await store.save(third)
    t.strictSame(await active(store), [third], 'one session, the last saved')
    await store.close()
    t.strictSame(await active(await storage.reopen()), [third], 'after a restart too')
  })

  t.test(`${name}: a save past maxSessionBytes is refused and stores nothing; one that records a run may use room per task past it`, async (t) => {
    const bound = 64 * 1024
    const storage = await open(t, { keyring: null, maxSessionBytes: bound })
    if (storage === null) return
    const { store } = storage
    const file = contractSession('full', ['Pending', 'Pending'])
    const fit = (await store.serialize(file)).length
    ;(file.session.tasks[0] as Task).instruction += 'x'.repeat(bound - fit)
    t.equal(await store.save(file), bound, 'exactly at the bound is stored')
    const over = structuredClone(file)
    Object.assign(over.session.tasks[0] as Task, { status: 'Failed', error: 'e'.repeat(100), started_at: AT, completed_at: AT })
    await t.rejects(store.save(over), { code: 'LIMIT_EXCEEDED', message: /'full' would take more than 65536 bytes stored \(TASK_MAX_SESSION_BYTES\)/ })
    t.strictSame(await active(store), [file], 'the stored session is as it was')
    t.ok(await store.save(over, { records: true }) > bound, 'a save that records a run may pass the bound')
    const far = structuredClone(over)
    ;(far.session.tasks[1] as Task).error = 'e'.repeat(2 * RECORD_ROOM_PER_TASK_BYTES)
    await t.rejects(store.save(far, { records: true }), { code: 'LIMIT_EXCEEDED' }, `by at most ${RECORD_ROOM_PER_TASK_BYTES} bytes per task`)
    await store.close()
    t.strictSame(await active(await storage.reopen()), [over], 'after a restart: the last save that was taken')
  })

  t.test(`${name}: remove deletes the session; removing a missing one is not an error`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    const a = contractSession('a')
    const b = contractSession('b')
    await store.save(a)
    await store.save(b)
    await store.remove('a')
    t.strictSame(await active(store), [b])
    await t.resolves(store.remove('a'), 'removing it again')
    await t.resolves(store.remove('never-saved'), 'removing one that never existed')
    await store.save(a)
    t.strictSame(await active(store), [a, b], 'a removed id can be saved again')
    await store.remove('a')
    await store.close()
    t.strictSame(await active(await storage.reopen()), [b], 'the removal survives a restart')
  })

  t.test(`${name}: archive moves the session out of the active set and into the archive`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    t.same(await store.openArchive({ concurrency: 2 }), { sessions: 0, files: 0, bytes: 0 }, 'an empty archive')
    const done = contractSession('done', ['Completed', 'Failed'])
    const other = contractSession('other')
    await store.save(done)
    await store.save(other)
    t.equal(store.archivedName('done'), null, 'not archived yet')

    await store.archive(done)
    t.strictSame(await active(store), [other], 'gone from the active sessions')
    const name = store.archivedName('done')
    t.type(name, 'string', 'archivedName says where it is')
    t.same(store.archivedIds(), ['done'])
    const totals = store.archiveTotals()
    t.same({ sessions: totals.sessions, files: totals.files }, { sessions: 1, files: 1 })
    t.ok(totals.bytes > 0, 'archived bytes are counted')

    const read = await store.readArchived('done')
    t.same(read.failures, [])
    t.strictSame(read.session?.file, done, 'reads back the archived document')
    t.equal(read.session?.name, name, 'from the copy archivedName names')
    t.same(await store.readArchived('other'), { session: null, failures: [] }, 'an active session is not archived')
    t.same(await store.readArchived('nobody'), { session: null, failures: [] }, 'nor is an unknown one')

    const list = await store.listArchived()
    t.same(list.failures, [])
    const summary = { session_id: 'done', created_at: done.created_at, updated_at: done.updated_at, file: name, finished_at: '2024-01-15T10:31:00.000Z' }
    const progress = { total: 2, completed: 1, failed: 1, pending: 0, in_progress: 0, all_done: true, percentage: 100 }
    t.match(list.sessions, [{ ...summary, ...progress }], 'the list summarises it')
    t.equal(list.sessions.length, 1)
  })

  t.test(`${name}: a session archived twice keeps both copies; the newest is the archived session`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    await store.openArchive({ concurrency: 2 })
    const first = contractSession('twice', ['Completed'])
    const second = contractSession('twice', ['Completed', 'Completed'], '2024-02-01T00:00:00.000Z')
    await store.save(first)
    await store.archive(first)
    const firstName = store.archivedName('twice')

    await store.save(second)
    t.strictSame(await active(store), [second], 'active again while the older copy stays archived')
    t.equal(store.archivedName('twice'), firstName, 'the archived copy is still there')

    await store.archive(second)
    t.strictSame(await active(store), [])
    t.not(store.archivedName('twice'), firstName, 'the newer copy is the archived session')
    t.same(store.archivedIds(), ['twice'], 'one archived session')
    t.match(store.archiveTotals(), { sessions: 1, files: 2 }, 'held in two copies')
    t.strictSame((await store.readArchived('twice')).session?.file, second, 'reading gives the newest')

    await store.close()
    const again = await storage.reopen()
    t.match(await again.openArchive({ concurrency: 2 }), { sessions: 1, files: 2 }, 'a restart finds both')
    t.strictSame((await again.readArchived('twice')).session?.file, second, 'and still reads the newest')
    // Judged on the older copy (a retention pass whose listing came before the second archive).
    await t.rejects(again.removeArchived('twice', firstName as string), { code: 'SESSION_BUSY' }, 'a copy newer than the one judged: refused')
    t.match(again.archiveTotals(), { sessions: 1, files: 2 }, 'nothing deleted')
    t.equal(await again.removeArchived('twice', again.archivedName('twice') as string), 2, 'judged on the newest: removeArchived deletes both and says so')
    t.equal(again.archivedName('twice'), null)
    await t.rejects(again.removeArchived('twice', firstName as string), { code: 'SESSION_BUSY' }, 'a copy gone since it was judged (brought back, or deleted elsewhere): refused, not counted as deleted')
    t.same(again.archiveTotals(), { sessions: 0, files: 0, bytes: 0 })
    t.same(await again.readArchived('twice'), { session: null, failures: [] })
  })

  t.test(`${name}: unarchive makes the session active again and removes the archived copy`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    await store.openArchive({ concurrency: 2 })
    const file = contractSession('back', ['Completed'])
    await store.save(file)
    await store.archive(file)
    const name = store.archivedName('back') as string
    const revived = contractSession('back', ['Completed', 'Pending'], '2024-03-01T00:00:00.000Z')
    const bytes = await store.unarchive(revived, name)
    t.equal(bytes, (await store.serialize(revived)).length, 'resolves with the stored size')
    t.strictSame(await active(store), [revived], 'active, as given')
    t.equal(store.archivedName('back'), null, 'no longer archived')
    t.same(store.archiveTotals(), { sessions: 0, files: 0, bytes: 0 })

    await store.close()
    const again = await storage.reopen()
    t.same(await again.openArchive({ concurrency: 2 }), { sessions: 0, files: 0, bytes: 0 }, 'the archived copy is gone after a restart')
    t.strictSame(await active(again), [revived])
  })

  t.test(`${name}: undoArchive with no archive in doubt is a save, and leaves archived copies alone`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    await store.openArchive({ concurrency: 2 })
    const old = contractSession('kept', ['Completed'])
    await store.save(old)
    await store.archive(old)
    const name = store.archivedName('kept')
    const current = contractSession('kept', ['Pending'], '2024-05-01T00:00:00.000Z')
    await store.save(current)
    const changed = contractSession('kept', ['Completed'], '2024-05-02T00:00:00.000Z')
    t.equal(await store.undoArchive(changed), (await store.serialize(changed)).length, 'resolves with the stored size')
    t.strictSame(await active(store), [changed], 'written as given')
    t.equal(store.archivedName('kept'), name, 'the older archived copy stays')
    await store.close()
    const again = await storage.reopen()
    t.equal((await again.openArchive({ concurrency: 2 })).files, 1)
    t.strictSame(await active(again), [changed])
  })

  t.test(`${name}: removeArchived deletes only archived copies`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    await store.openArchive({ concurrency: 2 })
    t.equal(await store.removeArchived('none'), 0, 'nothing archived: 0')
    const old = contractSession('both', ['Completed'])
    const current = contractSession('both', ['Pending'], '2024-04-01T00:00:00.000Z')
    await store.save(old)
    await store.archive(old)
    await store.save(current)
    t.equal(await store.removeArchived('both'), 1)
    t.strictSame(await active(store), [current], 'the active session stays')
    t.equal(store.archivedName('both'), null)
    await store.close()
    const again = await storage.reopen()
    t.same(await again.openArchive({ concurrency: 2 }), { sessions: 0, files: 0, bytes: 0 })
    t.strictSame(await active(again), [current])
  })

  t.test(`${name}: a new store on the same storage sees everything acknowledged`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    await store.openArchive({ concurrency: 2 })
    const kept = Array.from({ length: 20 }, (_, i) => contractSession(`kept-${String(i).padStart(2, '0')}`, ['Completed', 'Pending']))
    for (const file of kept) await store.save(file)
    await store.save(contractSession('removed'))
    await store.remove('removed')
    const archived = contractSession('archived', ['Completed', 'Completed'])
    await store.save(archived)
    await store.archive(archived)
    const changed = contractSession('kept-03', ['Completed', 'Completed'], '2024-05-01T00:00:00.000Z')
    await store.save(changed)
    kept[3] = changed
    const totals = { ...store.archiveTotals() }
    await store.close()

    const again = await storage.reopen()
    const result = await again.loadAll({ concurrency: 2 })
    t.same(result.failures, [])
    t.strictSame(result.sessions.map((session) => session.file).sort(byId), kept, 'every active session, as last saved')
    t.same(await again.openArchive({ concurrency: 2 }), totals, 'openArchive indexes the archive as it was')
    t.type(again.archivedName('archived'), 'string')
    t.same(again.archivedIds(), ['archived'])
    t.strictSame((await again.readArchived('archived')).session?.file, archived)
    t.match((await again.listArchived()).sessions, [{ session_id: 'archived', file: again.archivedName('archived'), all_done: true }])
  })

  t.test(`${name}: encryption() is null without keys; the store is writable; close ends it`, async (t) => {
    const storage = await open(t, plain)
    if (storage === null) return
    const { store } = storage
    t.equal(store.encryption(), null)
    t.type(store.location, 'string')
    t.ok(store.location.length > 0, 'a location to show')
    if (store.unwritable !== undefined) t.equal(store.unwritable(), null, 'a store that can tell says it is writable')
    if (store.events !== undefined) {
      const seen: Array<{ outcome: string, bytes: number }> = []
      store.events.on('save', (event) => seen.push({ outcome: event.outcome, bytes: event.bytes }))
      const bytes = await store.save(contractSession('observed'))
      t.same(seen, [{ outcome: 'durable', bytes }], 'a save is reported to observers with its size')
    }
    await t.resolves(store.close())
  })

  const keyring = options.keyring
  if (keyring === undefined) return
  t.test(`${name}: with keys every write is sealed, and reads open it`, async (t) => {
    const storage = await open(t, { keyring })
    if (storage === null) return
    const { store } = storage
    await store.openArchive({ concurrency: 2 })
    const file = awkward('sealed')
    const bytes = await store.save(file)
    const stored = await store.serialize(file)
    t.equal(bytes, stored.length)
    const envelope = JSON.parse(stored.toString('utf8')) as { sealed?: { kid?: string }, session?: unknown }
    t.equal(envelope.sealed?.kid, keyring.activeKid, 'stored sealed under the active key')
    t.equal(envelope.session, undefined, 'no task in clear')
    t.same(store.encryption(), { active_kid: keyring.activeKid, sealed_sessions: { [keyring.activeKid]: 1 }, plaintext_sessions: 0 })
    const archived = contractSession('sealed-archived', ['Completed'])
    await store.save(archived)
    await store.archive(archived)
    await store.close()

    const again = await storage.reopen()
    t.strictSame(await active(again), [file], 'opened on restore')
    t.same(again.encryption(), { active_kid: keyring.activeKid, sealed_sessions: { [keyring.activeKid]: 1 }, plaintext_sessions: 0 }, 'counted after a restart')
    await again.openArchive({ concurrency: 2 })
    t.strictSame((await again.readArchived('sealed-archived')).session?.file, archived, 'archived copies open too')
  })

  t.test(`${name}: with keys the bound holds the content, not the sealed bytes: a session that fits in clear fits sealed`, async (t) => {
    const bound = 64 * 1024
    const storage = await open(t, { keyring, maxSessionBytes: bound })
    if (storage === null) return
    const { store } = storage
    const file = contractSession('full', ['Pending', 'Pending'])
    const clear = async (): Promise<number> => (await serializeSessionFile(file, 2, Number.POSITIVE_INFINITY)).length
    ;(file.session.tasks[0] as Task).instruction += 'x'.repeat(bound - await clear())
    t.equal(await clear(), bound, 'exactly at the bound in clear')
    t.ok(await store.save(file) > bound, 'saved sealed, in more bytes than the bound')
    const run = structuredClone(file)
    Object.assign(run.session.tasks[0] as Task, { status: 'Failed', error: 'e'.repeat(100), started_at: AT, completed_at: AT })
    await t.resolves(store.save(run, { records: true }), 'a run recorded in it is saved too')
    const over = structuredClone(run)
    ;(over.session.tasks[1] as Task).instruction += 'y'.repeat(bound)
    await t.rejects(store.save(over), { code: 'LIMIT_EXCEEDED', message: /'full' would take more than 65536 bytes stored \(TASK_MAX_SESSION_BYTES\)/ }, 'content past the bound is refused')
    await store.close()
    t.strictSame(await active(await storage.reopen()), [run], 'after a restart: the last save that was taken')
  })
}
