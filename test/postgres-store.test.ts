/**
 * The PostgreSQL store on a real PostgreSQL (a database of each test's own, see postgres.ts):
 * the store contract suite, then what only a database store has: the version check against
 * lost updates, the document column's fidelity, a dropped or stalled connection, restore size.
 */
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import type { SessionFile, Task } from '../schemas/session.js'
import { StorageError, TaskvaultError } from '../services/errors.js'
import { noop } from '../services/noop.js'
import { statusFor } from '../http/error-handler.js'
import { Keyring } from '../services/store/keyring.js'
import { connectionConfig } from '../services/store/postgres/pool.js'
import { Orphans } from '../services/store/postgres/orphans.js'
import { archivableSessions } from '../services/store/postgres/leases-sql.js'
import { QueryFailure } from '../services/store/postgres/pooled-query.js'
import { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { serializeSessionFile } from '../services/store/session-files.js'
import { waitFor } from './helper.js'
import { inspector as inspectorOf, openTestStore, testDatabase, throughProxy, type TestStoreOptions } from './postgres.js'
import type { TcpProxy } from './tcp-proxy.js'
import { contractSession, storeContract } from './store-contract.js'

const SCHEMA = 'tv_store'
const keyring = Keyring.fromEntries([['k1', randomBytes(32)]])

/** A store of its own pool on `url`, initialised, closed when the test ends. */
const openStore = async (t: Test, url: string, options: TestStoreOptions = {}): Promise<PostgresSessionStore> => openTestStore(t, url, SCHEMA, { max: 4, ...options })
const inspector = (t: Test, url: string): pg.Pool => inspectorOf(t, url, SCHEMA)

async function documentOf (db: pg.Pool, sessionId: string): Promise<string | null> {
  const { rows } = await db.query('SELECT document::text AS document FROM sessions WHERE session_id = $1 AND archived_at IS NULL', [sessionId])
  return (rows[0] as { document: string } | undefined)?.document ?? null
}

const text = async (file: SessionFile, ring: Keyring | null = null): Promise<string> => (await serializeSessionFile(file, 2, Number.POSITIVE_INFINITY, ring)).toString('utf8')

storeContract(t, 'PostgreSQL store', async (t, { keyring, maxSessionBytes }) => {
  const url = await testDatabase(t)
  if (url === null) return null
  const store = await openStore(t, url, { keyring, maxSessionBytes })
  return { store, reopen: async () => openStore(t, url, { keyring, maxSessionBytes }) }
}, { keyring })

t.test('a lost update is refused: the second writer of a version gets VERSION_CONFLICT (409) and the row keeps the first', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const a = await openStore(t, url)
  await a.save(contractSession('shared', ['Pending']))
  const b = await openStore(t, url)
  await a.loadAll({ concurrency: 1 })
  await b.loadAll({ concurrency: 1 })

  const first = contractSession('shared', ['Completed'], '2024-06-01T00:00:00.000Z')
  const second = contractSession('shared', ['Failed'], '2024-06-01T00:00:01.000Z')
  await a.save(first)
  const refused = await b.save(second).catch((err: unknown) => err)
  t.type(refused, TaskvaultError)
  t.match(refused, { code: 'VERSION_CONFLICT', message: /saving session 'shared' refused: .*another writer.*nothing was written/u })
  t.equal(statusFor(refused as TaskvaultError), 409)
  t.equal(await documentOf(db, 'shared'), await text(first), 'the row keeps the first write')

  await t.rejects(b.remove('shared'), { code: 'VERSION_CONFLICT' }, 'nor can the stale writer delete it')
  await t.rejects(b.archive(second), { code: 'VERSION_CONFLICT' }, 'nor archive it')
  t.equal(await documentOf(db, 'shared'), await text(first), 'still there, unchanged')

  // Deleted and created again: version 1 once more, but another row. B's version 2 of the old
  // row must not match it, nor may a writer that read the old row at version 1 (ABA).
  const c = await openStore(t, url)
  await c.loadAll({ concurrency: 1 })
  await a.remove('shared')
  const reborn = contractSession('shared', ['Pending', 'Pending'], '2024-07-01T00:00:00.000Z')
  await a.save(reborn)
  await t.rejects(c.save(second), { code: 'VERSION_CONFLICT' }, 'a writer of the deleted row cannot overwrite the new one')
  t.equal(await documentOf(db, 'shared'), await text(reborn))

  // Reading again is how a stale writer catches up.
  await b.loadAll({ concurrency: 1 })
  await b.save(second)
  t.equal(await documentOf(db, 'shared'), await text(second), 'after a fresh read the write goes through')
})

t.test('unarchive is all or nothing, and archived reads go by the rows, not by memory', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const a = await openStore(t, url)
  await a.openArchive({ concurrency: 1 })
  const old = contractSession('moved', ['Completed'])
  await a.save(old)
  await a.archive(old)
  const name = a.archivedName('moved') as string
  t.match(name, /^moved@\d+$/u, 'an archived copy is named by its row')

  // Another writer made the session active meanwhile: bringing the archived copy back must
  // neither overwrite that row nor delete the copy.
  const b = await openStore(t, url)
  // B knows the archived copy (a writer that does not is refused: it must bring that copy back).
  await b.openArchive({ concurrency: 1 })
  const theirs = contractSession('moved', ['Pending'], '2024-11-01T00:00:00.000Z')
  await b.save(theirs)
  await t.rejects(a.unarchive(contractSession('moved', ['Completed', 'Pending'], '2024-11-02T00:00:00.000Z'), name), { code: 'VERSION_CONFLICT' })
  t.equal(await documentOf(db, 'moved'), await text(theirs), 'their active row is untouched')
  const copies = await db.query('SELECT count(*)::int AS n FROM sessions WHERE session_id = $1 AND archived_at IS NOT NULL', ['moved'])
  t.equal(copies.rows[0].n, 1, 'and the archived copy is still there')
  t.equal(a.archivedName('moved'), name)

  // B archives its session too and then deletes every copy; A's memory is behind, its reads are not.
  await b.archive(theirs)
  t.strictSame((await a.readArchived('moved')).session?.file, theirs, 'A reads the copy B archived')
  t.not(a.archivedName('moved'), name, 'and its index follows')
  t.equal(await b.removeArchived('moved'), 2, 'B deletes both copies, though its index knew only its own')
  t.same(await a.readArchived('moved'), { session: null, failures: [] }, 'A finds none')
  t.equal(a.archivedName('moved'), null, 'and forgets them')
  t.equal(await a.removeArchived('moved'), 0)
})

t.test('the archive index reads each copy\'s times as its document holds them: from its first bytes, or from the whole document when laid out otherwise', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const plain = await openStore(t, url)
  const sealed = await openStore(t, url, { keyring })
  const archived = async (store: PostgresSessionStore, file: SessionFile): Promise<void> => { await store.save(file); await store.archive(file) }
  // Times as no column renders them (no milliseconds, an offset): only the document has them so.
  await archived(plain, contractSession('plain', ['Completed'], '2024-02-01T00:00:00Z'))
  await archived(sealed, contractSession('sealed', ['Completed'], '2024-02-02T00:00:00+00:00'))
  await archived(plain, contractSession('reordered', ['Completed']))
  await archived(plain, contractSession('escaped', ['Completed']))
  await archived(plain, contractSession('twice-keyed', ['Completed']))
  // Text the json type stores but cannot turn into text (a NUL, a lone surrogate: any instruction
  // or result may hold one), in the usual layout and in another: the database never parses it out.
  for (const id of ['nul', 'nul-reordered']) {
    const file = contractSession(id, ['Completed'], '2024-02-06T00:00:00Z')
    const [only] = file.session.tasks as [Task]
    only.instruction = 'a\u0000b'
    only.result = 'half a pair: \ud800'
    await archived(plain, file)
  }
  // Keys in another order, and a time with an escape in it: the first bytes cannot tell, the whole document is read.
  await db.query(`UPDATE sessions SET document = json_build_object('created_at', '2024-01-03T00:00:00+01:00', 'session_id', session_id,
    'updated_at', '2024-02-03T00:00:00Z', 'session', document->'session') WHERE session_id = 'reordered'`)
  await db.query(`UPDATE sessions SET document = ('{"session_id": "escaped", "created_at": "2024-01-04T00:00:00.000\\u005a", "updated_at": "2024-02-04T00:00:00Z", "session": ' ||
    (document->'session')::text || '}')::json WHERE session_id = 'escaped'`)
  // A key given twice (an import keeps the file's bytes): the last counts, as in JSON.parse and in the columns derived from it.
  await db.query(`UPDATE sessions SET updated_at = '2024-02-05T00:00:00Z', document = ('{"session_id": "twice-keyed", "created_at": "2024-01-15T10:30:00.000Z", "updated_at": "2030-01-01T00:00:00Z", "session": ' ||
    (document->'session')::text || ', "updated_at": "2024-02-05T00:00:00Z"}')::json WHERE session_id = 'twice-keyed'`)
  await db.query(`UPDATE sessions SET document = ('{"updated_at": "2024-02-07T00:00:00Z", "session_id": "nul-reordered", "created_at": "2024-01-07T00:00:00Z", "session": ' ||
    substring(document::text from '"session": (.*)}\\s*$') || '}')::json WHERE session_id = 'nul-reordered'`)
  // Pages of one row: the whole documents are read a page at a time.
  const fresh = await openStore(t, url, { keyring, pageRows: 1 })
  t.match(await fresh.openArchive({ concurrency: 1 }), { sessions: 7, files: 7 })
  const { sessions, failures } = await fresh.listArchived()
  t.same(failures, [])
  const times = Object.fromEntries(sessions.map((summary) => [summary.session_id, [summary.created_at, summary.updated_at]]))
  t.same(times, {
    plain: ['2024-01-15T10:30:00.000Z', '2024-02-01T00:00:00Z'],
    sealed: ['2024-01-15T10:30:00.000Z', '2024-02-02T00:00:00+00:00'],
    reordered: ['2024-01-03T00:00:00+01:00', '2024-02-03T00:00:00Z'],
    escaped: ['2024-01-04T00:00:00.000Z', '2024-02-04T00:00:00Z'],
    'twice-keyed': ['2024-01-15T10:30:00.000Z', '2024-02-05T00:00:00Z'],
    nul: ['2024-01-15T10:30:00.000Z', '2024-02-06T00:00:00Z'],
    'nul-reordered': ['2024-01-07T00:00:00Z', '2024-02-07T00:00:00Z']
  })
  // A list with archived sessions (every replica's) reads the same times from the rows.
  for (const filter of ['only', 'include'] as const) {
    const listed = await fresh.listWithArchived(0, 20, filter)
    t.same(Object.fromEntries(listed.sessions.map((summary) => [summary.session_id, [summary.created_at, summary.updated_at]])), times, `archived=${filter}`)
  }
  t.equal((await fresh.readArchived('nul-reordered')).session?.file.session.tasks[0]?.instruction, 'a\u0000b', 'the text as written')
  const readBack = (await fresh.readArchived('escaped')).session?.file
  t.same([readBack?.created_at, readBack?.updated_at], times.escaped, 'as reading the copy gives them')
})

t.test('retention deletes a judged copy only while it is still the session\'s newest and the session is not active again', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const a = await openStore(t, url)
  const b = await openStore(t, url)
  const first = contractSession('back', ['Completed'], '2024-02-01T00:00:00.000Z')
  await a.save(first)
  await a.archive(first)
  const second = contractSession('back', ['Completed', 'Completed'], '2024-03-01T00:00:00.000Z')
  await a.save(second)
  await a.archive(second)
  const judged = a.archivedName('back') as string
  // B brings the session back (its newest copy) after A judged that copy past retention.
  const copy = (await b.readArchived('back')).session
  t.equal(copy?.name, judged)
  await b.unarchive(second, judged)
  await t.rejects(a.removeArchived('back', judged), { code: 'SESSION_BUSY' }, 'refused: not counted as deleted')
  const rows = await db.query('SELECT archived_at IS NOT NULL AS archived FROM sessions WHERE session_id = $1 ORDER BY row_id', ['back'])
  t.same(rows.rows, [{ archived: true }, { archived: false }], 'the older copy and the active session stay')
  t.not(a.archivedName('back'), judged, 'A\'s index follows the rows: the judged copy is gone from it')
})

/** A session of one task, completed (and last updated) at `at`. */
async function saveFinished (store: PostgresSessionStore, id: string, at: string): Promise<void> {
  const file = contractSession(id, ['Completed'])
  Object.assign(file.session.tasks[0] ?? {}, { completed_at: at })
  file.updated_at = at
  await store.save(file)
}

/** Every id the archive pass's pages of `limit` give, in their order (ten pages at most). */
async function archivablePages (store: PostgresSessionStore, cutoff: Date, limit: number): Promise<string[]> {
  const ids: string[] = []
  for (let after = null, n = 0; n < 10; n++) {
    const page = await store.archivable(cutoff, limit, after)
    if (page.ids.length === 0) break
    ids.push(...page.ids)
    after = page.next
  }
  return ids
}

t.test('retention and archive passes page with cursors that read back as the same instant under any DateStyle and TimeZone', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  // A zone whose abbreviation (IST) PostgreSQL reads back as another zone's, in a DateStyle that prints abbreviations.
  await db.query(`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET DateStyle = %L', current_database(), 'SQL, DMY');
    EXECUTE format('ALTER DATABASE %I SET TimeZone = %L', current_database(), 'Asia/Kolkata'); END $$`)
  const store = await openStore(t, url)
  const hour = (i: number): string => new Date(Date.parse('2024-01-10T00:00:00.000Z') + i * 3_600_000).toISOString()
  const ids = ['h0', 'h1', 'h2', 'h3', 'h4']
  for (const [i, id] of ids.entries()) await saveFinished(store, id, hour(i))
  t.same(await archivablePages(store, new Date('2025-01-01'), 2), ids, 'the archive pass\'s pages: every session once, in finish order')
  // Times come back as the store wrote them, whatever the database's DateStyle says.
  const newestFirst = ids.map((_, i) => hour(i)).reverse()
  t.same((await store.listActive(0, 10)).sessions.map((summary) => summary.updated_at), newestFirst, 'the list reads every time')
  t.same((await store.listWithArchived(0, 10, 'include')).sessions.map((summary) => summary.updated_at), newestFirst, 'with archived sessions too')
  for (const id of ids) await store.archive((await store.loadAll({ concurrency: 1 })).sessions.find(({ file }) => file.session_id === id)?.file as SessionFile)
  const found: string[] = []
  for (let after = null, n = 0; n < 10; n++) {
    const page = await store.pastRetention({ all: new Date('2025-01-01'), failed: null }, 2, after)
    if (page.sessions.length === 0) break
    found.push(...page.sessions.map((summary) => summary.session_id))
    after = page.next
  }
  t.same(found, ids, 'retention\'s pages: every session once, in finish order')
})

t.test('the archive pass pages by the finish time itself, not its text: across the end of summer time every session once, in order, each page read from the candidates\' index', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  await db.query('DO $$ BEGIN EXECUTE format(\'ALTER DATABASE %I SET TimeZone = %L\', current_database(), \'Europe/Berlin\'); END $$')
  const store = await openStore(t, url)
  // 02:30+02:00, then 02:10+01:00 an hour later: as text, the later one sorts first.
  await saveFinished(store, 'before', '2025-10-26T00:30:00.000Z')
  await saveFinished(store, 'after', '2025-10-26T01:10:00.000Z')
  t.same(await archivablePages(store, new Date('2026-01-01'), 1), ['before', 'after'], 'in finish order, neither skipped')
  const query = archivableSessions(new Date('2026-01-01'), 100, null)
  const plan = (await db.query(`EXPLAIN ${query.text as string}`, query.values)).rows.map((row: Record<string, string>) => Object.values(row)[0]).join('\n')
  t.match(plan, /sessions_archive_candidates_idx/u, 'the candidates\' index is read')
  t.notMatch(plan, /Sort Key: \(\(to_json/u, 'in its order, not sorted again by the text')
})

interface PlanNode { 'Node Type': string, 'Actual Rows'?: number, 'Rows Removed by Filter'?: number, Plans?: PlanNode[] }

/** Rows the scans of an EXPLAIN ANALYZE plan read: those they gave and those their filters dropped. */
function rowsRead (node: PlanNode | undefined): number {
  if (node === undefined) return 0
  const own = node['Node Type'].endsWith('Scan') ? (node['Actual Rows'] ?? 0) + (node['Rows Removed by Filter'] ?? 0) : 0
  return own + (node.Plans ?? []).reduce((sum, child) => sum + rowsRead(child), 0)
}

t.test('a page of the archive pass past many sessions that finished at one instant reads that page from the candidates\' index, not all of them', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url)
  const db = inspector(t, url)
  await db.query(`INSERT INTO sessions (session_id, document, created_at, updated_at, finished_at, tasks_total, tasks_completed)
    SELECT 's' || lpad(i::text, 5, '0'), '{}', $1, $1, $1, 1, 1 FROM generate_series(1, 5000) i`, ['2025-01-01T00:00:00.000Z'])
  await db.query('ANALYZE sessions')
  const query = archivableSessions(new Date('2026-01-01'), 100, { finishedAt: '2025-01-01T00:00:00.000Z', sessionId: 's02500' })
  const { rows } = await db.query<{ 'QUERY PLAN': [{ Plan: PlanNode }] }>(`EXPLAIN (ANALYZE, FORMAT JSON) ${query.text as string}`, query.values)
  const read = rowsRead(rows[0]?.['QUERY PLAN'][0].Plan)
  t.ok(read > 0 && read <= 101, `the page read ${read} rows of the 2,500 after its cursor`)
  const page = await store.archivable(new Date('2026-01-01'), 3, { finishedAt: '2025-01-01T00:00:00.000Z', sessionId: 's02500' })
  t.same(page.ids, ['s02501', 's02502', 's02503'], 'the page after the cursor, in id order')
})

t.test('statements prepared before a newer replica\'s migration changed a column\'s type are prepared anew: no read or save fails for it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url, { max: 3 })
  const db = inspector(t, url)
  const ids = ['p1', 'p2', 'p3']
  for (const id of ids) await store.save(contractSession(id, ['Pending']))
  // Every connection of the pool prepares the list's statement.
  await Promise.all(ids.map(async () => store.listActive(0, 10)))
  // A type the list returns changes under it (a migration of a later version may do so).
  await db.query('ALTER TABLE sessions ALTER COLUMN session_id TYPE varchar(128)')
  const lists = await Promise.all([...ids, ...ids].map(async () => store.listActive(0, 10)))
  for (const list of lists) t.same(list.sessions.map((summary) => summary.session_id).sort(), ids, 'the list answers')
  await store.save(contractSession('p4', ['Pending']))
  t.same((await store.listActive(0, 10)).total, 4, 'and saves go on')
})

t.test('the document column holds exactly serializeSessionFile\'s bytes; the columns are derived from the file', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const store = await openStore(t, url)
  const file = contractSession('exact', ['Completed', 'Failed', 'InProgress', 'Pending'])
  const [task] = file.session.tasks
  if (task !== undefined) {
    task.instruction = 'ünïcödé ✓ "quotes" \\ \n\t 😀 \u2028 and a number 0.30000000000000004'
    task.confidence = 0.30000000000000004
  }
  file.background_run = { started_at: '2024-01-15T10:30:00.000Z' }
  const bytes = await store.save(file)
  const expected = await serializeSessionFile(file, 2, Number.POSITIVE_INFINITY)
  const { rows } = await db.query(`SELECT document::text AS document, bytes, sealed_kid, tasks_total, tasks_completed, tasks_failed, tasks_pending,
    tasks_in_progress, has_background_run, finished_at, created_at, updated_at, version, archived_at FROM sessions WHERE session_id = 'exact'`)
  const row = rows[0]
  t.ok(Buffer.from(row.document, 'utf8').equals(expected), 'byte for byte')
  t.equal(row.bytes, expected.length)
  t.equal(bytes, expected.length, 'save resolves with the size')
  t.match(row, { sealed_kid: null, tasks_total: 4, tasks_completed: 1, tasks_failed: 1, tasks_pending: 1, tasks_in_progress: 1 }, 'counts by status')
  t.match(row, { has_background_run: true, finished_at: null, version: '1', archived_at: null }, 'a background run, unfinished, first version, active')
  t.equal((row.created_at as Date).toISOString(), file.created_at)

  const done = contractSession('exact', ['Completed', 'Failed'], '2024-08-01T00:00:00.000Z')
  await store.save(done)
  const after = (await db.query('SELECT finished_at, version, tasks_total FROM sessions WHERE session_id = \'exact\'')).rows[0]
  t.same({ finished: (after.finished_at as Date).toISOString(), version: after.version, total: after.tasks_total }, { finished: '2024-01-15T10:31:00.000Z', version: '2', total: 2 }, 'finished, version bumped')

  const sealedStore = await openStore(t, url, { keyring })
  await sealedStore.loadAll({ concurrency: 1 })
  await sealedStore.save(done)
  const sealed = (await db.query('SELECT sealed_kid, document::text AS document FROM sessions WHERE session_id = \'exact\'')).rows[0]
  t.equal(sealed.sealed_kid, 'k1', 'the kid is recorded')
  t.match(JSON.parse(sealed.document), { session_id: 'exact', sealed: { kid: 'k1' } }, 'the envelope is stored')
  t.notMatch(sealed.document, 'Completed', 'no task in clear')
})

t.test('a dropped connection fails a save fast with a 503 StorageError, changes nothing, and saves work again once it passes', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const { proxy, url: through } = await throughProxy(t, url)
  const store = await openStore(t, through, { statementTimeoutMs: 1_500, connectTimeoutMs: 1_500 })
  const v1 = contractSession('netsplit', ['Pending'])
  await store.save(v1)

  proxy.drop()
  const v2 = contractSession('netsplit', ['Completed'], '2024-09-01T00:00:00.000Z')
  const started = performance.now()
  const err = await store.save(v2).catch((error: unknown) => error)
  const ms = performance.now() - started
  t.type(err, StorageError)
  t.match(err, { code: 'STORAGE_UNAVAILABLE', message: /^saving session 'netsplit' failed: storage is unavailable/u })
  t.equal(statusFor(err as StorageError), 503)
  t.ok(ms < 1_500, `fails fast (${ms.toFixed(0)} ms)`)
  t.equal(await documentOf(db, 'netsplit'), await text(v1), 'the row is unchanged')

  proxy.pass()
  await store.save(v2)
  t.equal(await documentOf(db, 'netsplit'), await text(v2), 'saves work again')

  // Stalled: the statement goes out and nothing comes back. The client gives up a little
  // after the statement timeout; the outcome is unknown, and a later write still goes through.
  proxy.stall()
  const v3 = contractSession('netsplit', ['Completed', 'Pending'], '2024-09-02T00:00:00.000Z')
  const stalledAt = performance.now()
  const stalled = await store.save(v3).catch((error: unknown) => error)
  const stalledMs = performance.now() - stalledAt
  t.match(stalled, { code: 'STORAGE_UNAVAILABLE' })
  t.ok(stalledMs < 1_500 + 1_000 + 1_000, `bounded by the statement timeout (${stalledMs.toFixed(0)} ms)`)
  proxy.pass()
  const v4 = contractSession('netsplit', ['Completed', 'Completed'], '2024-09-03T00:00:00.000Z')
  await store.save(v4)
  t.equal(await documentOf(db, 'netsplit'), await text(v4), 'after the stall, the next save lands')
})

t.test('a statement over the statement timeout fails with a 503 StorageError naming the operation, and changes nothing', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const store = await openStore(t, url, { statementTimeoutMs: 300 })
  const v1 = contractSession('slow', ['Pending'])
  await store.save(v1)
  await db.query('CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$')
  await db.query('CREATE TRIGGER slow BEFORE UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION slow_write()')
  const started = performance.now()
  const err = await store.save(contractSession('slow', ['Completed'], '2024-12-01T00:00:00.000Z')).catch((error: unknown) => error) as StorageError
  const ms = performance.now() - started
  await db.query('DROP TRIGGER slow ON sessions')
  t.type(err, StorageError)
  t.match(err, { code: 'STORAGE_UNAVAILABLE', uncertain: false, message: /^saving session 'slow' failed: storage is unavailable \(57014\)$/u }, 'cancelled by the server: certainly not committed')
  t.equal(statusFor(err), 503)
  t.ok(ms < 1_500, `within the statement timeout (${ms.toFixed(0)} ms)`)
  t.equal(await documentOf(db, 'slow'), await text(v1), 'the row is unchanged')
  await store.save(contractSession('slow', ['Completed'], '2024-12-01T00:00:00.000Z'))
  t.pass('the connection was fine: the next save goes through')
})

/**
 * Saves `file` so that it commits but its answer never arrives: the update takes a while on the
 * server and the network stalls meanwhile, so the client gives up not knowing. The save's error.
 */
async function landedUnknown (db: pg.Pool, proxy: TcpProxy, store: PostgresSessionStore, file: SessionFile, statement: 'INSERT' | 'UPDATE' = 'UPDATE'): Promise<unknown> {
  await db.query('CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN NEW; END $$')
  await db.query(`CREATE TRIGGER slow BEFORE ${statement} ON sessions FOR EACH ROW EXECUTE FUNCTION slow_write()`)
  const saving = store.save(file).catch((error: unknown) => error)
  // The network stalls once the update is in the server's hands (sleeping in the trigger), however slow this host.
  await waitFor('the update to reach the server', async () => (await db.query(
    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()")).rowCount === 1, 10_000)
  proxy.stall()
  const err = await saving
  await dropSlowWrite(db)
  return err
}

async function dropSlowWrite (db: pg.Pool): Promise<void> {
  await db.query('DROP TRIGGER slow ON sessions')
  await db.query('DROP FUNCTION slow_write()')
}

t.test('an unknown outcome that did land is recognised by the next write, not taken for a conflict', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const { proxy, url: through } = await throughProxy(t, url)
  const store = await openStore(t, through, { statementTimeoutMs: 1_500 })
  const v1 = contractSession('landed', ['Pending'])
  await store.save(v1)
  const v2 = contractSession('landed', ['Completed'], '2024-10-01T00:00:00.000Z')
  t.match(await landedUnknown(db, proxy, store, v2), { code: 'STORAGE_UNAVAILABLE', uncertain: true }, 'the save fails, its outcome unknown')
  t.equal(await documentOf(db, 'landed'), await text(v2), 'it did commit')
  proxy.pass()
  // What the registry does after an uncertain failure: write the acknowledged state back.
  await store.save(v1)
  t.equal(await documentOf(db, 'landed'), await text(v1), 'the write-back lands: no conflict with our own write')
  await store.save(v2)
  t.equal(await documentOf(db, 'landed'), await text(v2), 'and later writes go on')
})

t.test('undoing a create whose outcome is unknown deletes the row it left, never another replica\'s session of that id', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const { proxy, url: through } = await throughProxy(t, url)
  const a = await openStore(t, through, { statementTimeoutMs: 1_500 })
  const b = await openStore(t, url)

  // It landed: the registry's write-back (remove) takes it away again.
  const landed = contractSession('landed', ['Pending'])
  t.match(await landedUnknown(db, proxy, a, landed, 'INSERT'), { code: 'STORAGE_UNAVAILABLE', uncertain: true }, 'the create fails, its outcome unknown')
  t.equal(await documentOf(db, 'landed'), await text(landed), 'it did commit')
  proxy.pass()
  await a.remove('landed')
  t.equal(await documentOf(db, 'landed'), null, 'the undo deletes the row the create left')

  // It never reached the server, and another replica created the session meanwhile (acknowledged).
  proxy.stall()
  const lost = await a.save(contractSession('contested', ['Pending'])).catch((err: unknown) => err)
  t.match(lost, { code: 'STORAGE_UNAVAILABLE', uncertain: true }, 'a create that never arrived fails, its outcome unknown to it')
  const theirs = contractSession('contested', ['Completed'], '2024-11-01T00:00:00.000Z')
  await b.save(theirs)
  proxy.pass()
  await a.remove('contested')
  t.equal(await documentOf(db, 'contested'), await text(theirs), 'the other replica\'s session is left as it was')
  await b.save(contractSession('contested', ['Failed'], '2024-11-02T00:00:00.000Z'))
  t.pass('and its writer goes on with it')
})

/**
 * Saves (or archives) so that the connection breaks while the server is still running the
 * statement (sleeping in a trigger for 1 s), and the error comes at once. The save's error.
 */
async function brokenMidStatement (db: pg.Pool, proxy: TcpProxy, write: () => Promise<unknown>, trigger: string): Promise<unknown> {
  await db.query('CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$')
  await db.query(`CREATE TRIGGER slow BEFORE ${trigger} ON sessions FOR EACH ROW EXECUTE FUNCTION slow_write()`)
  const writing = write().catch((error: unknown) => error)
  await waitFor('the statement to reach the server', async () => (await db.query(
    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()")).rowCount === 1, 10_000)
  // Both sides of every connection closed: the server's process does not notice while it runs the statement.
  proxy.drop()
  const err = await writing
  proxy.pass()
  return err
}

t.test('a write whose connection broke while the server still ran it is ended before the store reads: an undone create or archive never lands later', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const { proxy, url: through } = await throughProxy(t, url)
  const store = await openStore(t, through, { statementTimeoutMs: 5_000 })

  const created = contractSession('late', ['Pending'])
  t.match(await brokenMidStatement(db, proxy, async () => store.save(created), 'INSERT'), { code: 'STORAGE_UNAVAILABLE', uncertain: true }, 'the create fails at once, its outcome unknown')
  // What the registry does after a failed create: undo it.
  await store.remove('late')
  const undone = performance.now()
  t.equal(await documentOf(db, 'late'), null, 'no row')
  // Past the trigger's sleep: a statement still running would have committed by now.
  await new Promise((resolve) => setTimeout(resolve, 1_500 - (performance.now() - undone)))
  t.equal(await documentOf(db, 'late'), null, 'and none lands later')
  t.equal((await db.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'")).rowCount, 0, 'the statement was ended, not left to run')
  await dropSlowWrite(db)

  const finished = contractSession('archived', ['Completed'])
  await store.save(finished)
  t.match(await brokenMidStatement(db, proxy, async () => store.archive(finished), 'UPDATE'), { code: 'STORAGE_UNAVAILABLE', uncertain: true }, 'the archive fails at once, its outcome unknown')
  // What the archiver does after a failed archive: undo it, the session staying active.
  await store.undoArchive(finished)
  await new Promise((resolve) => setTimeout(resolve, 1_500))
  const { rows } = await db.query<{ archived: boolean }>('SELECT archived_at IS NOT NULL AS archived FROM sessions WHERE session_id = $1', ['archived'])
  t.same(rows, [{ archived: false }], 'one row, active: the archive did not land after the undo')
  await dropSlowWrite(db)
  await store.remove('archived')
  t.equal((await db.query('SELECT 1 FROM sessions WHERE session_id = $1', ['archived'])).rowCount, 0, 'and a delete leaves nothing')
})

t.test('ending the statements of broken connections ends only processes that started before the break, and waits for them', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const pool = new pg.Pool({ ...connectionConfig({ url, schema: SCHEMA, max: 4, statementTimeoutMs: 10_000 }) })
  pool.on('error', noop)
  t.teardown(() => pool.end())
  const orphans = new Orphans(pool, 5_000)
  const pidOf = async (client: pg.PoolClient): Promise<number> => (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid ?? 0
  const alive = async (pid: number): Promise<boolean> => (await db.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount === 1
  // A connection still running what was sent before its break, and one opened since under an id a broken one had.
  const running = await pool.connect()
  const since = await pool.connect()
  // A checked-out client's connection ending is an 'error' event on it.
  running.on('error', noop)
  const runningPid = await pidOf(running)
  const sincePid = await pidOf(since)
  const sleeping = running.query('SELECT pg_sleep(30)').catch((err: unknown) => err)
  await waitFor('the statement to run', async () => (await db.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'", [runningPid])).rowCount === 1)
  orphans.add(new QueryFailure(new Error('connection terminated'), true, runningPid))
  // Broken a minute ago: the process now under that id started after, so it is another connection's.
  orphans.add(new QueryFailure(new Error('connection terminated'), true, sincePid), performance.now() - 60_000)
  // Never sent, or no process known: nothing to wait for.
  orphans.add(new QueryFailure(new Error('refused'), false, 1))
  await orphans.settled()
  t.match(await sleeping, { code: '57P01' }, 'the statement still running was ended')
  t.notOk(await alive(runningPid), 'and its process is gone once settled() resolves')
  t.ok(await alive(sincePid), 'a process that started after the break is left alone')
  t.same((await since.query<{ one: number }>('SELECT 1 AS one')).rows, [{ one: 1 }], 'and its connection works')
  running.release(new Error('ended'))
  since.release()
})

t.test('an unknown outcome that did land and was re-sealed since (taskvault seal) is recognised by its content', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const { proxy, url: through } = await throughProxy(t, url)
  const store = await openStore(t, through, { statementTimeoutMs: 1_500, keyring })
  const v1 = contractSession('resealed', ['Pending'])
  await store.save(v1)
  const v2 = contractSession('resealed', ['Completed'], '2024-10-01T00:00:00.000Z')
  t.match(await landedUnknown(db, proxy, store, v2), { code: 'STORAGE_UNAVAILABLE', uncertain: true }, 'the save fails, its outcome unknown')
  // What `taskvault seal` does to the row meanwhile: the same session sealed anew (a fresh IV), the version kept.
  const { rows } = await db.query<{ version: string }>('SELECT version FROM sessions WHERE session_id = $1 AND archived_at IS NULL', ['resealed'])
  const resealed = await serializeSessionFile(v2, 2, Number.POSITIVE_INFINITY, keyring)
  await db.query('UPDATE sessions SET document = $2::json WHERE session_id = $1 AND archived_at IS NULL', ['resealed', resealed])
  t.equal((await db.query<{ version: string }>('SELECT version FROM sessions WHERE session_id = $1 AND archived_at IS NULL', ['resealed'])).rows[0]?.version, rows[0]?.version)
  proxy.pass()
  await store.save(v1)
  const back = await store.loadAll({ concurrency: 1 })
  t.same(back.sessions.map((session) => session.file), [v1], 'the write-back lands: the re-sealed row is known for ours, no conflict')
})

t.test('a row that does not read is reported, left in place, and not overwritten', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const store = await openStore(t, url)
  await store.save(contractSession('fine'))
  await db.query('INSERT INTO sessions (session_id, document, created_at, updated_at) VALUES (\'broken\', \'{"session_id": "broken"}\', now(), now())')
  const again = await openStore(t, url)
  const result = await again.loadAll({ concurrency: 1 })
  t.same(result.sessions.map((session) => session.file.session_id), ['fine'])
  t.match(result.failures, [{ name: /^broken@\d+$/u, reason: /does not match the session file format/u, movedTo: null }])
  t.equal(await documentOf(db, 'broken'), '{"session_id": "broken"}', 'left as it was')
  await t.rejects(again.save(contractSession('broken')), { code: 'VERSION_CONFLICT', message: /could not be read at restore/u }, 'a new session of that id does not overwrite it')
})

t.test('synchronous_commit: turned on for the store\'s own pool, refused when a host\'s pool has it off', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const name = new URL(url).pathname.slice(1)
  await db.query(`ALTER DATABASE ${pg.escapeIdentifier(name)} SET synchronous_commit = off`)
  const own = await openStore(t, url)
  await own.save(contractSession('durable'))
  t.pass('the store\'s own pool starts: it turns synchronous_commit on for its connections')

  // Built as a host builds one (createPool's connections turn it on; this one's are the host's to configure).
  const host = new pg.Pool(connectionConfig({ url, schema: SCHEMA, max: 1, statementTimeoutMs: 5_000 }))
  // As a host's pool must: an idle connection the database's drop ends is its 'error'.
  host.on('error', noop)
  t.teardown(() => host.end())
  const store = new PostgresSessionStore({ pool: host, schema: SCHEMA, url })
  await t.rejects(store.init(), { code: 'INVALID_DATABASE_SETTING', message: /^synchronous_commit: is off/u })
  await store.close()
  t.equal((await host.query('SELECT 1 AS one')).rows[0].one, 1, 'a host\'s pool stays open after close')
})

t.test('synchronous_commit is on for every connection of the store\'s own pool: the lease keeper\'s listener (which renews leases) too, and after reconnecting', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const name = new URL(url).pathname.slice(1)
  await db.query(`ALTER DATABASE ${pg.escapeIdentifier(name)} SET synchronous_commit = off`)
  const store = await openStore(t, url, { replicaId: 'r1', leaseMs: 3_000, onPoolError: noop })
  // The connections the store holds itself: nothing outside it sees them.
  const inside = store as unknown as { pool: pg.Pool, leases: { listener: pg.PoolClient | null } }
  const setting = async (client: pg.ClientBase): Promise<unknown> => (await client.query('SHOW synchronous_commit')).rows[0]?.synchronous_commit
  const check = async (when: string, before: pg.PoolClient | null): Promise<pg.PoolClient> => {
    const listener = await waitFor('a listening connection', () => inside.leases.listener !== before && (inside.leases.listener ?? undefined))
    t.equal(await setting(listener), 'on', `the listener, ${when}`)
    // Checked out straight from the pool (as migrations and a pass's lock are), not through a statement of the store's.
    const pooled = await Promise.all([inside.pool.connect(), inside.pool.connect()])
    try {
      t.same(await Promise.all(pooled.map(setting)), ['on', 'on'], `pooled connections, ${when}`)
    } finally {
      for (const client of pooled) client.release()
    }
    return listener
  }
  const first = await check('at start', null)
  // As a restart of the database looks to this one: every connection of it ends.
  await db.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name])
  await check('after every connection was dropped and opened again', first)
  await store.save(contractSession('durable'))
})

t.test('connection failures never show the password', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const closed = new URL(url)
  closed.username = 'someone'
  closed.password = 'hunter2secret'
  closed.port = '1'
  const store = new PostgresSessionStore({ settings: { url: closed.toString(), schema: SCHEMA, max: 1, statementTimeoutMs: 1_000, connectTimeoutMs: 1_000 } })
  t.teardown(() => store.close())
  t.notMatch(store.location, 'hunter2secret')
  t.match(store.location, /\*\*\*.*schema tv_store/u)
  const err = await store.init().catch((error: unknown) => error) as Error
  t.match(err, { code: 'DATABASE_UNAVAILABLE' })
  t.notMatch(err.message, 'hunter2secret')
  const saved = await store.save(contractSession('x')).catch((error: unknown) => error) as StorageError
  t.match(saved, { code: 'STORAGE_UNAVAILABLE', message: /^saving session 'x' failed: storage is unavailable \(ECONNREFUSED\)$/u })
  t.notMatch(JSON.stringify({ message: saved.message, cause: String(saved.cause) }), 'hunter2secret')
})

t.test('1,000 sessions restore in one loadAll, every one as saved', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url, { pageRows: 128 })
  const files = Array.from({ length: 1_000 }, (_, i) => contractSession(`bulk-${String(i).padStart(4, '0')}`, i % 3 === 0 ? ['Completed'] : ['Completed', 'Pending']))
  for (let i = 0; i < files.length; i += 50) await Promise.all(files.slice(i, i + 50).map((file) => store.save(file)))
  const again = await openStore(t, url, { pageRows: 128 })
  const started = performance.now()
  const result = await again.loadAll({ concurrency: 2 })
  t.comment(`loadAll of 1,000 sessions: ${(performance.now() - started).toFixed(0)} ms`)
  t.same(result.failures, [])
  t.strictSame(result.sessions.map((session) => session.file).sort((a, b) => a.session_id < b.session_id ? -1 : 1), files)
  // Every one is known at its version: saving them all again conflicts nowhere.
  await Promise.all(result.sessions.slice(0, 100).map((session) => again.save(session.file)))
  t.pass('saves after restore carry the versions read')
})

t.test('the event log keeps the newest events asked for, and a trim reads only what it deletes, not every event trimmed before (no vacuum)', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url)
  const db = inspector(t, url)
  // As on a server whose autovacuum is off or behind: the trimmed events' index entries stay.
  await db.query('ALTER TABLE events SET (autovacuum_enabled = false)')
  const keep = 100
  const batch = (n: number): Array<{ name: string, data: unknown }> => Array.from({ length: n }, (_, i) => ({ name: 'progress', data: { session_id: `s${i}` } }))
  let newest = 0
  for (let i = 0; i < 300; i++) newest = await store.publishEvents(batch(64), keep)
  const { rows: [log] } = await db.query<{ events: string, oldest: string, trimmed: string }>('SELECT count(*) AS events, min(id) AS oldest, (SELECT trimmed FROM event_stream) AS trimmed FROM events')
  t.equal(Number(log?.trimmed), newest - keep, 'trimmed to the newest `keep` at the last batch')
  t.equal(Number(log?.events), keep, 'and only those are left')
  t.equal(Number(log?.oldest), newest - keep + 1)
  // Pages of the log (its rows and its key) read, from the statistics (flushed when the client goes idle).
  const client = await db.connect()
  t.teardown(() => { client.release() })
  const pagesRead = async (): Promise<number> => {
    await client.query('SELECT pg_stat_force_next_flush()')
    await sleep(100)
    const { rows } = await db.query<{ pages: string }>("SELECT heap_blks_hit + heap_blks_read + idx_blks_hit + idx_blks_read AS pages FROM pg_statio_user_tables WHERE schemaname = $1 AND relname = 'events'", [SCHEMA])
    return Number(rows[0]?.pages)
  }
  // One event at a time: the log trims at ids that are multiples of 64. The last batch ended on
  // one; 62 more, then one that only appends, then one that trims.
  const publishOne = async (): Promise<number> => {
    const before = await pagesRead()
    await client.query('SELECT publish_events($1::text[], $2::json[], $3::bigint, $4, $5)', [['progress'], ['{}'], keep, 'taskvault_test', ''])
    return await pagesRead() - before
  }
  await client.query('SELECT publish_events($1::text[], $2::json[], $3::bigint, $4, $5)', [Array(62).fill('progress'), Array(62).fill('{}'), keep, 'taskvault_test', ''])
  const appended = await publishOne()
  const trimmed = await publishOne()
  t.equal(Number((await db.query<{ trimmed: string }>('SELECT trimmed FROM event_stream')).rows[0]?.trimmed), newest + 64 - keep, 'the id that trims')
  // It deletes 64 events (a page hit each, on 2 pages), past 19,200 trimmed before (some 250 pages, rows and key).
  t.ok(trimmed - appended <= 64 + 16, `a trim read ${trimmed - appended} more pages of the log than an append alone (${appended})`)
})

t.test('at boot, a restore refused a connection for a while (53300 too many connections: a restart, every client reconnecting) is read again until the connect deadline; an answer that comes every time (a column missing) fails at once', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const seeded = await openStore(t, url)
  await seeded.save(contractSession('kept', ['Completed']))
  await seeded.close()
  // A role of its own: connection limits do not apply to a superuser.
  const role = `tv_limited_${randomBytes(4).toString('hex')}`
  const admin = inspectorOf(t, url, SCHEMA)
  await admin.query(`CREATE ROLE ${role} LOGIN`)
  t.teardown(async () => {
    await admin.query(`DROP OWNED BY ${role}`).catch(noop)
    await admin.query(`DROP ROLE ${role}`).catch(noop)
  })
  for (const grant of [`GRANT CREATE ON DATABASE ${new URL(url).pathname.slice(1)} TO ${role}`, `GRANT USAGE, CREATE ON SCHEMA ${SCHEMA} TO ${role}`, `GRANT ALL ON ALL TABLES IN SCHEMA ${SCHEMA} TO ${role}`,
    `GRANT ALL ON ALL SEQUENCES IN SCHEMA ${SCHEMA} TO ${role}`, `GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ${SCHEMA} TO ${role}`]) await admin.query(grant)
  const limited = new URL(url)
  limited.username = role
  const store = new PostgresSessionStore({ settings: { url: limited.toString(), schema: SCHEMA, max: 4, statementTimeoutMs: 5_000, connectTimeoutMs: 5_000 } })
  t.teardown(() => store.close())
  await store.init({ deadline: performance.now() + 20_000 })
  const retries: string[] = []
  store.events.on('restore-retry', ({ reason }) => { retries.push(reason) })
  // The role's connections end, and new ones are refused for a second.
  await admin.query(`ALTER ROLE ${role} CONNECTION LIMIT 0`)
  await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [role])
  setTimeout(() => { admin.query(`ALTER ROLE ${role} CONNECTION LIMIT -1`).catch(noop) }, 1000).unref()
  const { sessions } = await store.loadAll({ concurrency: 1 })
  t.same(sessions.map(({ file }) => file.session_id), ['kept'], 'restored once connections were taken again')
  t.ok(retries.some((reason) => /53300/u.test(reason)), 'after trying again past the refusals', { retries })
  // A column missing comes back on every try: no waiting.
  await admin.query(`ALTER TABLE ${SCHEMA}.sessions RENAME COLUMN bytes TO bytes_gone`)
  retries.length = 0
  const started = performance.now()
  const err = await store.loadAll({ concurrency: 1 }).then(() => null, (e: unknown) => e)
  t.type(err, StorageError, 'a column missing: fails')
  t.match(((err as Error).cause as Error).message, /bytes/u, 'naming it in its cause')
  t.same(retries, [], 'at once, not tried again')
  t.ok(performance.now() - started < 3000, 'well before the deadline')
  await admin.query(`ALTER TABLE ${SCHEMA}.sessions RENAME COLUMN bytes_gone TO bytes`)
})

t.test('at boot, a restore whose connection drops is read again until the connect deadline; past it, or without one, it fails', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const seeded = await openStore(t, url)
  await seeded.save(contractSession('kept', ['Completed']))
  await seeded.save(contractSession('gone-by', ['Completed']))
  await seeded.archive(contractSession('gone-by', ['Completed']))
  await seeded.close()
  const { proxy, url: through } = await throughProxy(t, url)
  const store = new PostgresSessionStore({ settings: { url: through, schema: SCHEMA, max: 4, statementTimeoutMs: 5_000, connectTimeoutMs: 5_000 } })
  t.teardown(() => store.close())
  await store.init({ deadline: performance.now() + 20_000 })
  const retries: number[] = []
  store.events.on('restore-retry', ({ waitMs }) => { retries.push(waitMs) })
  proxy.drop()
  setTimeout(() => { proxy.pass() }, 400).unref()
  const { sessions } = await store.loadAll({ concurrency: 1 })
  t.same(sessions.map(({ file }) => file.session_id), ['kept'], 'restored once the database answered again')
  t.ok(retries.length > 0, `tried again (${retries.length} times)`)
  proxy.drop()
  setTimeout(() => { proxy.pass() }, 400).unref()
  t.equal((await store.openArchive({ concurrency: 1 })).sessions, 1, 'the archive too')

  // A store given no deadline (one opened after the boot, the CLI's) fails at once, as before.
  const later = new PostgresSessionStore({ settings: { url: through, schema: SCHEMA, max: 4, statementTimeoutMs: 5_000, connectTimeoutMs: 5_000 } })
  t.teardown(() => later.close())
  await later.init()
  proxy.drop()
  await t.rejects(later.loadAll({ concurrency: 1 }), StorageError)
  proxy.pass()
})
