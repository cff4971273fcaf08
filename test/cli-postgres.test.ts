/**
 * The command-line tool on the PostgreSQL store, run as operators run it (a child process) on
 * a database of the test's own: export, import, and validate/stats/archive/prune with
 * --database-url answering as they do on the equivalent folder.
 */
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { cp, mkdir, readFile, readdir, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import type { SessionFile } from '../schemas/session.js'
import { noop } from '../services/noop.js'
import { Keyring } from '../services/store/keyring.js'
import { connectionConfig } from '../services/store/postgres/pool.js'
import { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { rowsPage, sealedPage, unsealedPage } from '../cli/rows.js'
import { taskvault } from './cli-run.js'
import { tempDir, type TestContext } from './helper.js'
import { testDatabase } from './postgres.js'
import { daysAgo, preparedFolder, storedSession } from './session-fixtures.js'

const KEY = randomBytes(32)
const KEYS_ENV = { TASK_ENCRYPTION_KEYS: `k1:${KEY.toString('base64')}` }
const session = (id: string, statuses: string[], finished: string, instruction?: string): SessionFile => JSON.parse(storedSession(id, statuses, finished, instruction)) as SessionFile

async function openStore (t: TestContext, url: string, keyring: Keyring | null = null): Promise<PostgresSessionStore> {
  const store = new PostgresSessionStore({ settings: { url, schema: 'taskvault', max: 2, statementTimeoutMs: 10_000 }, keyring })
  await store.init()
  t.teardown(() => store.close())
  return store
}

async function query<R extends pg.QueryResultRow> (url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 10_000 }))
  client.on('error', noop)
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end().catch(noop)
  }
}

/** Every file under `dir` but the folder's own dot files (marker, lock), relative path -> bytes. */
async function snapshot (dir: string, files = new Map<string, Buffer>(), prefix = ''): Promise<Map<string, Buffer>> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue
    if (entry.isDirectory()) await snapshot(join(dir, entry.name), files, `${prefix}${entry.name}/`)
    else if (entry.isFile()) files.set(prefix + entry.name, await readFile(join(dir, entry.name)))
  }
  return files
}

t.test('export, import into a fresh database, export again: the same bytes, active and archived, unicode and sealed', async (t) => {
  const first = await testDatabase(t)
  const second = await testDatabase(t)
  if (first === null || second === null) return
  const store = await openStore(t, first)
  await store.save(session('unicode', ['Completed'], daysAgo(1), 'naïve café 🎉 日本語 \u2028 "quoted" \\ back'))
  await store.save(session('pending', ['Completed', 'Pending'], daysAgo(3)))
  // Archived twice: two copies of one id, the later one the archived session.
  await store.save(session('twice', ['Failed'], daysAgo(20)))
  await store.archive(session('twice', ['Failed'], daysAgo(20)))
  await store.save(session('twice', ['Completed'], daysAgo(10)))
  await store.archive(session('twice', ['Completed'], daysAgo(10)))
  await store.save(session('once', ['Completed'], daysAgo(40)))
  await store.archive(session('once', ['Completed'], daysAgo(40)))
  const sealed = await openStore(t, first, Keyring.fromEntries([['k1', KEY]]))
  await sealed.save(session('sealed', ['Completed'], daysAgo(5), 'secret ✓'))

  const root = await tempDir(t, 'taskvault-cli-pg-')
  const one = join(root, 'one')
  const exported = await taskvault(['export', '--database-url', first, one, '--json'], { env: KEYS_ENV })
  t.equal(exported.code, 0, exported.stderr)
  t.match(exported.json(), { active: 3, archived: 3, left_out: [] })
  const files = await snapshot(one)
  t.same([...files.keys()].sort(), ['archive/once.json', 'archive/twice.1.json', 'archive/twice.json', 'pending.json', 'sealed.json', 'unicode.json'])
  t.equal(JSON.parse(await readFile(join(one, '.taskvault'), 'utf8')).format, 1, 'marked as a taskvault folder')
  // Each file holds the row's bytes exactly; the later archived copy is <id>.1.json.
  const rows = await query<{ session_id: string, archived: boolean, document: string }>(first, 'SELECT session_id, archived_at IS NOT NULL AS archived, document::text AS document FROM sessions ORDER BY row_id')
  const twice = rows.filter((row) => row.session_id === 'twice')
  t.same(files.get('archive/twice.json'), Buffer.from(twice[0]?.document ?? '', 'utf8'), 'oldest copy')
  t.same(files.get('archive/twice.1.json'), Buffer.from(twice[1]?.document ?? '', 'utf8'), 'newest copy')
  for (const id of ['unicode', 'pending', 'sealed']) t.same(files.get(`${id}.json`), Buffer.from(rows.find((row) => row.session_id === id && !row.archived)?.document ?? '', 'utf8'), `${id}.json`)
  t.match(files.get('sealed.json')?.toString('utf8'), /"sealed"/u, 'the sealed envelope, as stored')
  t.match(files.get('unicode.json')?.toString('utf8'), 'naïve café 🎉 日本語')

  const imported = await taskvault(['import', one, '--database-url', second, '--json'], { env: KEYS_ENV })
  t.equal(imported.code, 0, imported.stderr)
  t.match(imported.json(), { inserted: 3, replaced: 0, archived: 3, unchanged: 0, conflicts: [] })
  const two = join(root, 'two')
  const again = await taskvault(['export', '--database-url', second, two], { env: KEYS_ENV })
  t.equal(again.code, 0, again.stderr)
  t.same(await snapshot(two), files, 'export → import → export is byte for byte')
  // The second database serves what the first did, through the store.
  const reopened = await openStore(t, second, Keyring.fromEntries([['k1', KEY]]))
  const loaded = await reopened.loadAll({ concurrency: 1 })
  t.same(loaded.sessions.map((s) => s.file.session_id).sort(), ['pending', 'sealed', 'unicode'])
  await reopened.openArchive({ concurrency: 1 })
  t.same((await reopened.readArchived('twice')).session?.file.session.tasks[0]?.status, 'Completed', 'the newest archived copy is still the newest')
})

t.test('export and validate read rows a page at a time bounded in bytes too: a page holds rows while those before stay under the bound', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url)
  for (const id of ['a', 'b', 'c', 'd']) await store.save(session(id, ['Completed'], daysAgo(1), `${id} ${'x'.repeat(5000)}`))
  const sizes = await query<{ row_id: string, bytes: number }>(url, 'SELECT row_id, bytes FROM sessions ORDER BY row_id')
  const page = async (after: string, limit: number, maxBytes: number): Promise<string[]> => {
    const { text, values } = rowsPage(after, limit, maxBytes)
    return (await query<{ session_id: string }>(url, text, values as unknown[])).map((row) => row.session_id)
  }
  t.same(await page('0', 500, 1), ['a'], 'one row, however large, past a tiny bound')
  t.same(await page('0', 500, (sizes[0]?.bytes ?? 0) + 1), ['a', 'b'], 'the rows while those before are under the bound')
  t.same(await page('0', 3, 1e9), ['a', 'b', 'c'], 'and never more than the limit')
  t.same(await page(sizes[1]?.row_id ?? '', 500, 1e9), ['c', 'd'], 'after a row id')
  t.same(await page(sizes[3]?.row_id ?? '', 500, 1e9), [], 'past the last: empty, the end')
  // seal's pages (rows not under the key, rows under it) are bounded the same way.
  const unsealed = async (after: string, maxBytes: number): Promise<string[]> => {
    const { text, values } = unsealedPage(after, 500, 'k1', maxBytes)
    return (await query<{ session_id: string }>(url, text, values as unknown[])).map((row) => row.session_id)
  }
  t.same(await unsealed('0', 1), ['a'], 'seal: one unsealed row past a tiny bound')
  t.same(await unsealed(sizes[0]?.row_id ?? '', (sizes[1]?.bytes ?? 0) + 1), ['b', 'c'], 'seal: the unsealed rows while those before are under the bound')
  await query(url, "UPDATE sessions SET sealed_kid = 'k1'")
  const { text, values } = sealedPage('0', 500, 'k1', 1)
  t.same((await query<{ session_id: string }>(url, text, values as unknown[])).map((row) => row.session_id), ['a'], 'seal: one sealed row past a tiny bound')
  t.same(await unsealed('0', 1e9), [], 'seal: none left unsealed')
})

t.test('sealed files imported without their key get their task counts from a server with the key at its restore, and archived copies from seal', async (t) => {
  const first = await testDatabase(t)
  const second = await testDatabase(t)
  if (first === null || second === null) return
  const keyring = Keyring.fromEntries([['k1', KEY]])
  const source = await openStore(t, first, keyring)
  await source.save(session('done', ['Completed', 'Completed'], daysAgo(30)))
  // Interrupted midway: the sweep that resumes runs finds it by its count of tasks in progress.
  await source.save(session('interrupted', ['Completed', 'InProgress', 'Pending'], daysAgo(1)))
  await source.save(session('old', ['Completed'], daysAgo(60)))
  await source.archive(session('old', ['Completed'], daysAgo(60)))
  // No task at all (a stored file may have none): its counts are right at 0, and seal passes it over.
  await source.save(session('empty', [], daysAgo(2)))
  const folder = join(await tempDir(t, 'taskvault-cli-pg-'), 'out')
  const exported = await taskvault(['export', '--database-url', first, folder], { env: KEYS_ENV })
  t.equal(exported.code, 0, exported.stderr)
  const imported = await taskvault(['import', folder, '--database-url', second], { env: {} })
  t.equal(imported.code, 0, imported.stderr)
  type Counts = { session_id: string, archived: boolean, tasks_total: number, tasks_in_progress: number, finished: boolean }
  const counts = async (): Promise<Counts[]> => query<Counts>(second, `SELECT session_id, archived_at IS NOT NULL AS archived, tasks_total, tasks_in_progress,
    finished_at IS NOT NULL AS finished FROM sessions ORDER BY session_id`)
  t.same((await counts()).map((row) => row.tasks_total), [0, 0, 0, 0], 'without the key, the import counts no task')

  const server = await openStore(t, second, keyring)
  const loaded = await server.loadAll({ concurrency: 1 })
  t.equal(loaded.sessions.length, 3)
  t.same(await counts(), [
    { session_id: 'done', archived: false, tasks_total: 2, tasks_in_progress: 0, finished: true },
    { session_id: 'empty', archived: false, tasks_total: 0, tasks_in_progress: 0, finished: false },
    { session_id: 'interrupted', archived: false, tasks_total: 3, tasks_in_progress: 1, finished: false },
    { session_id: 'old', archived: true, tasks_total: 0, tasks_in_progress: 0, finished: false }
  ], 'a restore with the key sets the active rows\' columns: the finished one can be archived, the interrupted one resumed')
  t.equal((await server.totals()).total_tasks, 5, '/stats counts their tasks')

  const sealed = await taskvault(['seal', '--database-url', second, '--json'], { env: KEYS_ENV })
  t.equal(sealed.code, 0, sealed.stderr)
  t.match(sealed.json(), { sealed: 1 }, 'seal rewrites the archived copy under the key it is sealed under already')
  t.same((await counts()).find((row) => row.session_id === 'old'), { session_id: 'old', archived: true, tasks_total: 1, tasks_in_progress: 0, finished: true }, 'and sets its columns')
  const again = await taskvault(['seal', '--database-url', second, '--json'], { env: KEYS_ENV })
  t.match(again.json(), { sealed: 0 }, 'a second run has nothing left to do')
})

t.test('import holds a few sessions at a time, not the folder: 100 MB of archived sessions import with a 40 MB heap', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const dir = join(await tempDir(t, 'taskvault-cli-pg-'), 'tasks')
  await mkdir(join(dir, 'archive'), { recursive: true, mode: 0o700 })
  const big = 'y'.repeat(400 * 1024)
  for (let i = 0; i < 250; i++) await writeFile(join(dir, 'archive', `big${i}.json`), storedSession(`big${i}`, ['Completed'], daysAgo(50), `${i} ${big}`), { mode: 0o600 })
  const imported = await taskvault(['import', dir, '--database-url', url, '--json'], { nodeArgs: ['--max-old-space-size=40'] })
  t.equal(imported.code, 0, imported.stderr.slice(0, 2000))
  t.match(imported.json(), { inserted: 0, archived: 250, conflicts: [] })
  const [row] = await query<{ n: string, bytes: string }>(url, 'SELECT count(*) AS n, sum(bytes) AS bytes FROM sessions WHERE archived_at IS NOT NULL')
  t.equal(Number(row?.n), 250)
  t.ok(Number(row?.bytes) > 100e6, `every byte (${row?.bytes})`)
  // The rows' side too: a folder of small active files of those sessions is judged against the
  // 100 MB of rows without reading their documents (only a row of the same updated_at would be).
  const small = join(await tempDir(t, 'taskvault-cli-pg-'), 'tasks')
  await mkdir(small, { recursive: true, mode: 0o700 })
  for (let i = 0; i < 250; i++) await writeFile(join(small, `big${i}.json`), storedSession(`big${i}`, ['Completed', 'Pending'], daysAgo(1)), { mode: 0o600 })
  const again = await taskvault(['import', small, '--database-url', url, '--json'], { nodeArgs: ['--max-old-space-size=40'] })
  t.equal(again.code, 0, again.stderr.slice(0, 2000))
  t.match(again.json(), { inserted: 250, archived: 0, conflicts: [] })
})

t.test('import keeps a hand-written file\'s bytes, and running it again skips everything', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const dir = await preparedFolder(t, 'taskvault-cli-pg-')
  // Not the server's layout: compact, escaped unicode, a number spelt oddly. Stored as it is.
  const compact = JSON.stringify(session('compact', ['Completed'], daysAgo(1), 'caf\u00e9')).replace('café', '\\u0063af\\u00e9').replace('"attempts":1', '"attempts":1.0e0')
  await writeFile(join(dir, 'compact.json'), compact, { mode: 0o600 })
  // Entries the server never reads: skipped, as validate reports them, not refusing the import.
  await writeFile(join(dir, 'my notes.json'), '{"note":"hi"}')
  await mkdir(join(dir, 'a-folder.json'))
  const once = await taskvault(['import', dir, '--database-url', url, '--json'])
  t.equal(once.code, 0, once.stderr)
  t.match(once.json(), { inserted: 5, archived: 2, unchanged: 0 })
  const [row] = await query<{ document: string }>(url, "SELECT document::text AS document FROM sessions WHERE session_id = 'compact'")
  t.equal(row?.document, compact, 'the exact bytes of the file')

  const twice = await taskvault(['import', dir, '--database-url', url, '--json'])
  t.equal(twice.code, 0, twice.stderr)
  t.match(twice.json(), { inserted: 0, replaced: 0, archived: 0, unchanged: 7 })
  t.equal((await query(url, 'SELECT 1 FROM sessions')).length, 7, 'no row added')
  const text = await taskvault(['import', dir, '--database-url', url])
  t.match(text.stdout, /0 new, 0 replaced, 0 archived copies added, 7 already identical/u)
})

t.test('import again after a session was archived in the folder: its older active row is archived first, so the database shows it archived too', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const dir = await tempDir(t, 'taskvault-cli-pg-')
  await writeFile(join(dir, 'moved.json'), storedSession('moved', ['Pending', 'Pending'], daysAgo(3)), { mode: 0o600 })
  t.equal((await taskvault(['import', dir, '--database-url', url])).code, 0)
  // Run and archived on the file store since: only archive/moved.json, newer.
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  const done = storedSession('moved', ['Completed', 'Completed'], daysAgo(1))
  await writeFile(join(dir, 'archive', 'moved.json'), done, { mode: 0o600 })
  await unlink(join(dir, 'moved.json'))

  const again = await taskvault(['import', dir, '--database-url', url, '--json'])
  t.equal(again.code, 0, again.stderr)
  t.match(again.json(), { inserted: 0, replaced: 0, archived: 1, archived_rows: 1 })
  t.same(await query(url, "SELECT 1 FROM sessions WHERE session_id = 'moved' AND archived_at IS NULL"), [], 'no active row left in front')
  const store = await openStore(t, url)
  t.equal(JSON.stringify((await store.readArchived('moved')).session?.file), JSON.stringify(JSON.parse(done)), 'the archived session is the folder\'s newest copy')
  const third = await taskvault(['import', dir, '--database-url', url, '--json'])
  t.match(third.json(), { inserted: 0, replaced: 0, archived: 0, archived_rows: 0, unchanged: 1 }, 'a third run has nothing to do')
})

t.test('import again after a session was archived unchanged in the folder: its active row is archived in place, not copied', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const dir = await tempDir(t, 'taskvault-cli-pg-')
  const done = storedSession('same', ['Completed'], daysAgo(2))
  await writeFile(join(dir, 'same.json'), done, { mode: 0o600 })
  t.equal((await taskvault(['import', dir, '--database-url', url])).code, 0)
  // The folder's archive pass moved the file as it was.
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  await writeFile(join(dir, 'archive', 'same.json'), done, { mode: 0o600 })
  await unlink(join(dir, 'same.json'))
  const again = await taskvault(['import', dir, '--database-url', url, '--json'])
  t.equal(again.code, 0, again.stderr)
  t.match(again.json(), { archived: 0, archived_rows: 1 })
  t.same(await query(url, "SELECT archived_at IS NOT NULL AS archived FROM sessions WHERE session_id = 'same'"), [{ archived: true }], 'one row, archived')
  t.match((await taskvault(['import', dir, '--database-url', url, '--json'])).json(), { archived_rows: 0, unchanged: 1 }, 'a third run has nothing to do')
})

t.test('import refuses to replace a newer row without --force, writing nothing, and replaces it with --force', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const dir = await preparedFolder(t, 'taskvault-cli-pg-')
  const store = await openStore(t, url)
  // The database's `recent` is newer than the folder's; `fresh` is new to the database.
  await store.save(session('recent', ['Completed', 'Completed'], daysAgo(1)))
  await store.close()
  await writeFile(join(dir, 'fresh.json'), storedSession('fresh', ['Pending'], daysAgo(1)), { mode: 0o600 })

  const refused = await taskvault(['import', dir, '--database-url', url])
  t.equal(refused.code, 1)
  t.match(refused.stdout, /❌ recent\.json: the database's recent@\d+ is newer/u)
  t.match(refused.stdout, /Refused: 1 files would replace newer rows .*nothing was written/u)
  t.same((await query<{ session_id: string }>(url, 'SELECT session_id FROM sessions')).map((row) => row.session_id), ['recent'], 'nothing written, not even the new session')
  const json = (await taskvault(['import', dir, '--database-url', url, '--json'])).json()
  t.match(json, { conflicts: [{ file: 'recent.json', reason: /newer/ }], forced: false })

  const forced = await taskvault(['import', dir, '--database-url', url, '--force', '--json'])
  t.equal(forced.code, 0, forced.stderr)
  t.match(forced.json(), { inserted: 4, replaced: 1, archived: 2, forced: true })
  const [row] = await query<{ document: string, version: string }>(url, "SELECT document::text AS document, version FROM sessions WHERE session_id = 'recent' AND archived_at IS NULL")
  t.equal(row?.document, await readFile(join(dir, 'recent.json'), 'utf8'), 'the folder\'s copy replaced it')
  t.equal(row?.version, '2', 'a version-checked update')
})

t.test('stats, validate, archive and prune with --database-url answer as on the same folder', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const dir = await preparedFolder(t, 'taskvault-cli-pg-')
  t.equal((await taskvault(['import', dir, '--database-url', url])).code, 0)
  const db = ['--database-url', url]

  const stats = async (): Promise<[any, any]> => {
    const [folder, database] = await Promise.all([taskvault(['stats', dir, '--json']), taskvault(['stats', ...db, '--json'])])
    t.equal(database.code, 0, database.stderr)
    const { storage: fs, ...folderCounts } = folder.json()
    const { storage, ...databaseCounts } = database.json()
    t.same(databaseCounts, folderCounts, 'the same counts')
    t.match(storage, { kind: 'postgres', schema: 'taskvault', database: url, bytes: fs.bytes, files: fs.files, archive_bytes: fs.archive_bytes, archive_files: fs.archive_files, failed_loads: 0 })
    return [folderCounts, databaseCounts]
  }
  const [before] = await stats()
  t.match(before, { total_sessions: 4, archived_sessions: 2 })
  // In a server's environment (a pod's shell), no folder given: the database that server uses.
  const inPod = await taskvault(['stats', '--json'], { env: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t) } })
  t.equal(inPod.code, 0, inPod.stderr)
  t.match(inPod.json(), { ...before, storage: { kind: 'postgres', database: url } }, 'TASK_STORE=postgres: DATABASE_URL, not the empty folder beside it')
  const noUrl = await taskvault(['validate'], { env: { TASK_STORE: 'postgres' } })
  t.same([noUrl.code, noUrl.stderr.trim().split('\n')[0]], [2, 'taskvault: TASK_STORE=postgres and DATABASE_URL is not set: give --database-url URL (or a folder)'])
  // Those that change the store without the servers' leases, or work on a folder, need their target named there.
  // `prune` without --days (retention is off by default): the target is what to fix first, not the days.
  for (const args of [['archive', '--days', '30'], ['prune', '--days', '300'], ['prune'], ['backup', '--out', join(dir, '..', 'b.tar.gz')], ['restore', join(dir, '..', 'b.tar.gz')]]) {
    const refused = await taskvault(args, { env: { TASK_STORE: 'postgres', DATABASE_URL: url } })
    t.match([refused.code, refused.stderr], [2, /^taskvault: TASK_STORE=postgres: the sessions are in the database, not in a folder here; /u], `${args[0] ?? ''}: refused`)
  }
  t.match(await taskvault(['stats', dir, '--json'], { env: { TASK_STORE: 'postgres', DATABASE_URL: url } }), { code: 0 }, 'a folder named is read as ever')

  const archived = await Promise.all([taskvault(['archive', dir, '--days', '30', '--json']), taskvault(['archive', ...db, '--days', '30', '--json'])])
  t.equal(archived[1].code, 0, archived[1].stderr)
  t.same(archived[1].json().archived_ids.sort(), archived[0].json().archived_ids.sort())
  t.same(archived[1].json().archived_ids.sort(), ['failed', 'old'])
  const pruned = await Promise.all([taskvault(['prune', dir, '--days', '300', '--json']), taskvault(['prune', ...db, '--days', '300', '--json'])])
  t.equal(pruned[1].code, 0, pruned[1].stderr)
  t.same(pruned[1].json().deleted_ids, pruned[0].json().deleted_ids)
  t.same(pruned[1].json().deleted_ids, ['gone'])
  const [after] = await stats()
  t.match(after, { total_sessions: 2, archived_sessions: 3 })

  // A row that holds another session than its id says, as a file named for another one.
  await writeFile(join(dir, 'wrong.json'), storedSession('other', ['Pending'], daysAgo(1)), { mode: 0o600 })
  await query(url, `INSERT INTO sessions (session_id, document, created_at, updated_at, tasks_total, tasks_pending)
    VALUES ('wrong', $1::json, now(), now(), 1, 1)`, [storedSession('other', ['Pending'], daysAgo(1))])
  const [folder, database] = await Promise.all([taskvault(['validate', dir, '--json']), taskvault(['validate', ...db, '--json'])])
  t.equal(database.code, 1)
  t.match(database.json(), { checked: folder.json().checked, bad: 1 })
  t.match(database.json().files.find((file: { ok: boolean }) => !file.ok), { file: /^wrong@\d+$/, reason: /holds session 'other'/ })
  const text = await taskvault(['validate', ...db])
  t.match(text.stdout, /❌ wrong@\d+: holds session 'other'/u)
  t.match(text.stdout, /✅ archive\/kept@\d+/u)
  const fix = await taskvault(['validate', ...db, '--fix'])
  t.equal(fix.code, 2, '--fix on a database is a usage error')
})

t.test('an unreachable database, or one without the schema: exit 1, one line, no password', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const unreachable = 'postgres://someone:hunter2@127.0.0.1:1/nowhere'
  const wrongSchema = new URL(url)
  wrongSchema.password = 'hunter2'
  const exportDir = join(await tempDir(t), 'out')
  const cases = [
    ['stats', '--database-url', unreachable],
    ['validate', '--database-url', unreachable],
    ['archive', '--database-url', unreachable, '--days', '1'],
    ['export', '--database-url', unreachable, exportDir],
    ['import', await preparedFolder(t, 'taskvault-cli-pg-'), '--database-url', unreachable],
    ['stats', '--database-url', wrongSchema.toString(), '--schema', 'not_there']
  ]
  const runs = await Promise.all(cases.map((args) => taskvault(args)))
  runs.forEach((run, i) => {
    const name = (cases[i] ?? []).slice(0, 2).join(' ')
    t.equal(run.code, 1, `${name}: exit 1`)
    t.equal(run.stdout, '', `${name}: nothing on stdout`)
    t.match(run.stderr, /^taskvault: [^\n]+\n$/u, `${name}: one line`)
    t.notMatch(run.stderr, 'hunter2', `${name}: no password`)
  })
  t.match(runs[0]?.stderr, 'someone:***@127.0.0.1:1')
  t.match(runs[5]?.stderr, /no taskvault schema 'not_there'/u)
  t.notOk(existsSync(exportDir), 'export made no folder')
  const json = await taskvault(['stats', '--database-url', unreachable, '--json'])
  t.equal(json.code, 1)
  t.equal(json.json().error.code, 'DATABASE_UNAVAILABLE')
  t.notMatch(json.stdout, 'hunter2')
  const both = await taskvault(['stats', '/tmp', '--database-url', url])
  t.equal(both.code, 2, 'a folder and a database is a usage error')
})

t.test('a malformed database URL or schema name is a usage error (exit 2) like any bad value, and prints no password', async (t) => {
  const good = 'postgres://someone:hunter2@127.0.0.1:1/x'
  const flags: Array<[string, string[], RegExp]> = [
    ['an http:// URL', ['stats', '--database-url', 'http://someone:hunter2@127.0.0.1/x'], /--database-url: must be a postgres:\/\/ URL, not http:\/\//u],
    ['a mysql:// URL', ['validate', '--database-url', 'mysql://someone:hunter2@127.0.0.1/x'], /--database-url: must be a postgres:\/\/ URL/u],
    // Not a URL at all (two ports): nothing of it is printed.
    ['not a URL', ['archive', '--database-url', 'postgres://someone:hunter2@127.0.0.1:1:2/x', '--days', '1'], /--database-url: is not a URL/u],
    ['a bad --schema', ['stats', '--database-url', good, '--schema', 'Bad;name'], /--schema: 'Bad;name' is not a usable schema name/u],
    ['a reserved --schema', ['export', '--database-url', good, '--schema', 'pg_x', '/tmp/taskvault-never-written'], /--schema: 'pg_x': names starting with pg_ are reserved/u]
  ]
  const settings: Array<[string, string[], Record<string, string>, RegExp]> = [
    ['DATABASE_URL', ['export', '/tmp/taskvault-never-written'], { DATABASE_URL: 'http://someone:hunter2@127.0.0.1/x' }, /bad setting DATABASE_URL: must be a postgres:\/\/ URL/u],
    ['TASK_DB_SCHEMA', ['stats', '--database-url', good], { TASK_DB_SCHEMA: 'Bad;name' }, /bad setting TASK_DB_SCHEMA/u]
  ]
  const runs = await Promise.all([...flags.map(([, args]) => taskvault(args)), ...settings.map(([, args, env]) => taskvault(args, { env }))])
  for (const [i, [what, , reason]] of [...flags.map(([what, args, reason]) => [what, args, reason] as const), ...settings.map(([what, args, , reason]) => [what, args, reason] as const)].entries()) {
    const run = runs[i]
    t.equal(run?.code, 2, `${what}: exit 2, as any bad value`)
    t.match(run?.stderr, reason, `${what}: says what is wrong`)
    t.notMatch(run?.stderr, 'hunter2', `${what}: no password`)
    t.equal(run?.stdout, '', `${what}: nothing on stdout`)
    // A flag's --help can help; a setting's cannot.
    if (i < flags.length) t.match(run?.stderr, /Run 'taskvault \w+ --help' for usage/u, `${what}: points to --help`)
    else t.notMatch(run?.stderr, /--help/u, `${what}: no pointer to --help`)
  }
  const json = await taskvault(['stats', '--database-url', 'http://x@y/db', '--json'])
  t.equal(json.code, 2)
  t.equal(json.json().error.code, 'USAGE')
})

t.test('export refuses a non-empty folder that is not taskvault\'s unless --force', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url)
  await store.save(session('one', ['Completed'], daysAgo(1)))
  await store.close()
  const dir = await tempDir(t)
  await writeFile(join(dir, 'package.json'), '{"name": "not sessions"}\n')
  const refused = await taskvault(['export', '--database-url', url, dir])
  t.equal(refused.code, 1)
  t.match(refused.stderr, /not empty and not a taskvault folder/u)
  t.same(await readdir(dir), ['package.json'], 'nothing written')
  const forced = await taskvault(['export', '--database-url', url, dir, '--force'])
  t.equal(forced.code, 0, forced.stderr)
  t.same((await readdir(dir)).filter((name) => !name.startsWith('.')).sort(), ['one.json', 'package.json'])
  // A taskvault folder is exported into again, replacing files of the same names.
  const marked = join(await tempDir(t), 'marked')
  await cp(dir, marked, { recursive: true })
  t.equal((await taskvault(['export', '--database-url', url, marked])).code, 0)
  // --force never marks another storage folder's archive/: its server would no longer start.
  const inner = join(marked, 'archive')
  await mkdir(inner, { recursive: true })
  await writeFile(join(inner, 'notes.txt'), 'x')
  const nested = await taskvault(['export', '--database-url', url, inner, '--force'])
  t.equal(nested.code, 1, nested.stderr)
  t.match(nested.stderr, /is the archive\/ folder of the taskvault storage folder/u)
  t.same(await readdir(inner), ['notes.txt'], 'no marker written there')
})

t.test('import only reads its folder: a copy without a marker, with a killed run\'s temp file, is imported and left exactly as it was', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const dir = await tempDir(t)
  await writeFile(join(dir, 'copied.json'), storedSession('copied', ['Completed'], daysAgo(1)), { mode: 0o600 })
  await writeFile(join(dir, '.copied.123.456.tmp'), 'half a session', { mode: 0o600 })
  const before = (await readdir(dir)).sort()
  const run = await taskvault(['import', dir, '--database-url', url])
  t.equal(run.code, 0, run.stderr)
  t.match(run.stdout, /1 new/u)
  t.same((await readdir(dir)).sort(), before, 'no marker written, nothing removed')
})

t.test('import refuses an empty folder with no marker (a volume that did not mount) rather than report 0 new, and writes nothing', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const empty = await tempDir(t)
  const run = await taskvault(['import', empty, '--database-url', url])
  t.equal(run.code, 1, run.stdout)
  t.match(run.stderr, /holds no session and no \.taskvault marker: it is not a storage folder taskvault has used \(a volume that did not mount\?\); nothing was written/u)
  t.same(await readdir(empty), [], 'the folder is left unmarked')
  t.same(await query(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'taskvault'"), [], 'not even the schema was made')
})

/** Archives one copy of session `id` per [instruction, days ago], in order, through a store of its own. */
async function archiveCopies (t: TestContext, url: string, id: string, copies: Array<readonly [string, number]>, removeFirst = false): Promise<void> {
  const store = await openStore(t, url)
  if (removeFirst) await store.removeArchived(id)
  // Knowing the copies there, the store adds a session beside them (one that does not is refused: it must bring the newest back).
  await store.openArchive({ concurrency: 1 })
  for (const [instruction, days] of copies) {
    const copy = session(id, ['Completed'], daysAgo(days), instruction)
    await store.save(copy)
    await store.archive(copy)
  }
  await store.close()
}

/** `export --json` into `dir`: its exit code and what it says. */
async function exportJson (url: string, dir: string): Promise<{ code: number | null, json: Record<string, unknown> }> {
  const run = await taskvault(['export', '--database-url', url, dir, '--json'])
  return { code: run.code, json: JSON.parse(run.stdout) as Record<string, unknown> }
}

const damageNewest = async (url: string, id: string): Promise<void> => {
  await query(url, `UPDATE taskvault.sessions SET document = '{"damaged": true}' WHERE row_id = (SELECT max(row_id) FROM taskvault.sessions WHERE session_id = '${id}')`)
}

t.test('export into a folder an earlier export wrote: an archived copy it left, numbered higher than the copies the database holds now, is removed, as a server would read it as the session', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  // Two archived copies of 'reused': the export writes archive/reused.json and reused.1.json.
  await archiveCopies(t, url, 'reused', [['VERSION A', 1], ['VERSION B', 1]])
  const dir = join(await tempDir(t), 'export')
  t.equal((await taskvault(['export', '--database-url', url, dir])).code, 0)
  t.same((await readdir(join(dir, 'archive'))).sort(), ['reused.1.json', 'reused.json'])
  // Since: retention deleted the session, and its id came back, archived once.
  await archiveCopies(t, url, 'reused', [['VERSION C', 0]], true)
  t.match(await exportJson(url, dir), { code: 0, json: { active: 0, archived: 1, removed_hiding: 1 } })
  t.same(await readdir(join(dir, 'archive')), ['reused.json'], 'the stale copy is gone')
  // What a server on the folder reads as the session: the database's copy.
  const shown = await taskvault(['validate', dir, '--json'])
  t.equal(shown.code, 0, shown.stdout)
  t.match(await readFile(join(dir, 'archive', 'reused.json'), 'utf8'), /VERSION C/u)
  // A second copy, then damaged in the database: left out, and the file an earlier export wrote of it stays.
  await archiveCopies(t, url, 'reused', [['VERSION D', 0]])
  t.equal((await taskvault(['export', '--database-url', url, dir])).code, 0)
  const good = await readFile(join(dir, 'archive', 'reused.1.json'), 'utf8')
  t.match(good, /VERSION D/u)
  await damageNewest(url, 'reused')
  t.match(await exportJson(url, dir), { code: 1, json: { removed_hiding: 0 } }, 'a row left out')
  t.equal(await readFile(join(dir, 'archive', 'reused.1.json'), 'utf8'), good, 'the earlier export\'s file of the row left out stays as it was')
  // The id deleted and back again, twice archived, its newest copy damaged: the file at that copy's
  // name is the deleted session's (another time), not that copy's, and goes.
  await archiveCopies(t, url, 'reused', [['VERSION E', 3], ['VERSION F', 2]], true)
  await damageNewest(url, 'reused')
  t.match(await exportJson(url, dir), { code: 1, json: { removed_hiding: 1 } }, 'a row left out')
  t.same(await readdir(join(dir, 'archive')), ['reused.json'], 'only the readable copy of the session as it is now')
  t.match(await readFile(join(dir, 'archive', 'reused.json'), 'utf8'), /VERSION E/u)
})

t.test('export into a folder an earlier export wrote: an active file of a session the database now holds archived only is removed, as it would hide the archived copy from a server', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url)
  const pending = session('moved', ['Pending'], daysAgo(1))
  await store.save(pending)
  await store.save(session('stays', ['Pending'], daysAgo(1)))
  const dir = join(await tempDir(t), 'export')
  t.equal((await taskvault(['export', '--database-url', url, dir])).code, 0)
  // Since: 'moved' finished and was archived.
  const finished = session('moved', ['Completed'], daysAgo(0))
  await store.save(finished)
  await store.archive(finished)
  await store.close()
  const again = await taskvault(['export', '--database-url', url, dir, '--json'])
  t.equal(again.code, 0, again.stderr)
  t.match(JSON.parse(again.stdout), { active: 1, archived: 1, removed_hiding: 1 })
  t.notOk(existsSync(join(dir, 'moved.json')), 'the stale active file is gone')
  t.ok(existsSync(join(dir, 'stays.json')), 'an active session\'s file is kept')
  t.same((await readdir(join(dir, 'archive'))).length, 1, 'the archived copy is there')
  // A server on the folder shows the session as the database holds it: archived, completed.
  const stats = await taskvault(['stats', dir, '--json'])
  t.match(JSON.parse(stats.stdout), { active_sessions: 1 }, 'one active session, as in the database')
  const text = await taskvault(['export', '--database-url', url, dir])
  t.notMatch(text.stdout, /Removed/u, 'nothing more to remove the next time')
  // An archived copy that is left out (unreadable) hides nothing: the earlier file stays.
  const store2 = await openStore(t, url)
  const later = session('later', ['Pending'], daysAgo(1))
  await store2.save(later)
  t.equal((await taskvault(['export', '--database-url', url, dir])).code, 0)
  const done = session('later', ['Completed'], daysAgo(0))
  await store2.save(done)
  await store2.archive(done)
  await store2.close()
  await query(url, 'UPDATE sessions SET document = \'{"not": "a session"}\' WHERE session_id = \'later\'')
  const unread = await taskvault(['export', '--database-url', url, dir, '--json'])
  t.equal(unread.code, 1, 'a row left out')
  t.match(JSON.parse(unread.stdout), { removed_hiding: 0 })
  t.ok(existsSync(join(dir, 'later.json')), 'the folder\'s only copy of it stays')
})
