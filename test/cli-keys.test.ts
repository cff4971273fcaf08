/**
 * The command-line tool on folders holding files sealed under a key it is not given (an archive
 * under a retired key): restore, import and stats carry or count them as the server does,
 * rather than refusing a folder the server starts on.
 */
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import type { SessionFile } from '../schemas/session.js'
import { noop } from '../services/noop.js'
import { Keyring } from '../services/store/keyring.js'
import { connectionConfig } from '../services/store/postgres/pool.js'
import { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { serializeSessionFile } from '../services/store/session-files.js'
import { taskvault } from './cli-run.js'
import { buildApp } from '../app.js'
import { build, get, markAsTaskvault, tempDir, type TestContext } from './helper.js'
import { testDatabase } from './postgres.js'
import { daysAgo, storedSession } from './session-fixtures.js'

const K1 = randomBytes(32).toString('base64')
const K2 = randomBytes(32).toString('base64')
/** The configuration now: k2 seals; k1, retired, is gone. */
const K2_ONLY = { TASK_ENCRYPTION_KEYS: `k2:${K2}` }

async function sealed (id: string, kid: 'k1' | 'k2', statuses = ['Completed', 'Pending']): Promise<Buffer> {
  const file = JSON.parse(storedSession(id, statuses, daysAgo(3))) as SessionFile
  return serializeSessionFile(file, 2, Number.POSITIVE_INFINITY, Keyring.parse(kid === 'k1' ? `k1:${K1}` : `k2:${K2}`))
}

/** A folder the server starts on with k2 only: active files under k2, an archived one under k1. `extra` adds files. */
async function folder (t: TestContext, extra: Record<string, Buffer> = {}): Promise<{ dir: string, files: Record<string, Buffer> }> {
  const dir = join(await tempDir(t, 'taskvault-cli-keys-'), 'tasks')
  await mkdir(join(dir, 'archive'), { recursive: true, mode: 0o700 })
  const files = { 'a.json': await sealed('a', 'k2'), 'b.json': await sealed('b', 'k2'), 'archive/x.json': await sealed('x', 'k1', ['Completed']), ...extra }
  for (const [rel, data] of Object.entries(files)) await writeFile(join(dir, rel), data, { mode: 0o600 })
  await markAsTaskvault(dir)
  return { dir, files }
}

t.test('seal without TASK_ENCRYPTION_KEYS is a bad setting: exit 2, saying so, nothing written', async (t) => {
  const dir = await tempDir(t)
  const run = await taskvault(['seal', dir])
  t.equal(run.code, 2, run.stderr)
  t.match(run.stderr, /^taskvault: bad setting TASK_ENCRYPTION_KEYS is not set: there is no key to seal with/u)
  t.same(await readdir(dir), [], 'the folder untouched')
})

t.test('restore takes the backup of a folder with an archived file under a retired key, byte for byte, and says which key it needs', async (t) => {
  const { dir, files } = await folder(t)
  const backup = join(await tempDir(t), 'b.tar.gz')
  const made = await taskvault(['backup', dir, '--out', backup], { env: K2_ONLY })
  t.equal(made.code, 0, made.stderr)
  const target = join(await tempDir(t), 'restored')
  const restored = await taskvault(['restore', backup, target, '--json'], { env: K2_ONLY })
  t.equal(restored.code, 0, restored.stderr)
  t.match(restored.json(), { restored: 3, unchanged: 0, needs_keys: { k1: { active: 0, archived: 1 } } })
  t.match(restored.stderr, /sealed under key 'k1', which TASK_ENCRYPTION_KEYS does not hold, carried as they are: 1 archived file/)
  t.match(restored.stderr, /the server sets them aside as damaged/)
  for (const [rel, data] of Object.entries(files)) t.ok((await readFile(join(target, rel))).equals(data), `${rel} restored byte for byte`)
  // Again: the file under the missing key is judged by its bytes, so it is identical, not a conflict.
  const again = await taskvault(['restore', backup, target, '--json'], { env: K2_ONLY })
  t.equal(again.code, 0, again.stderr)
  t.match(again.json(), { restored: 0, unchanged: 3, conflicts: [] })
  const app = await build(t, { dir: target, config: K2_ONLY })
  t.equal((await get(app, '/stats')).json().total_sessions, 2, 'the server starts on the restored folder')
})

t.test('a backup made before a rotation does not undo it: restore keeps the re-sealed files (the same sessions), and refuses what it cannot compare', async (t) => {
  const BOTH = { TASK_ENCRYPTION_KEYS: `k2:${K2},k1:${K1}` }
  const K1_ONLY = { TASK_ENCRYPTION_KEYS: `k1:${K1}` }
  const plainB = storedSession('b', ['Completed', 'Pending'], daysAgo(3))
  const { dir } = await folder(t, { 'a.json': await sealed('a', 'k1'), 'b.json': Buffer.from(plainB) })
  const backup = join(await tempDir(t), 'before.tar.gz')
  t.equal((await taskvault(['backup', dir, '--out', backup], { env: K1_ONLY })).code, 0)
  const seal = await taskvault(['seal', dir], { env: BOTH })
  t.equal(seal.code, 0, seal.stderr)
  const rotated = Object.fromEntries(await Promise.all(['a.json', 'b.json', 'archive/x.json'].map(async (rel) => [rel, await readFile(join(dir, rel))] as const)))
  for (const env of [BOTH, K2_ONLY]) {
    const restored = await taskvault(['restore', backup, dir, '--json'], { env })
    if (env === BOTH) {
      t.equal(restored.code, 0, restored.stderr)
      t.match(restored.json(), { restored: 0, unchanged: 3, conflicts: [] }, 'with both keys: the same sessions, kept as they are')
    } else {
      // The backup's copies are under k1, which is gone: they cannot be compared, so they are not written.
      t.equal(restored.code, 1, 'with k2 only: a conflict, nothing written')
      t.match(restored.json().conflicts, [{ file: 'a.json', reason: /^the folder's copy differs from the backup's under the same updated_at .*the backup's is sealed under key 'k1', which TASK_ENCRYPTION_KEYS does not hold, so they cannot be compared$/ }])
    }
    for (const [rel, data] of Object.entries(rotated)) t.ok((await readFile(join(dir, rel))).equals(data), `${rel} still sealed under k2`)
  }
  // A backup copy with other content under the same updated_at is a conflict, not a replacement.
  const other = JSON.parse(plainB) as SessionFile
  other.session.tasks[0]!.result = 'another result'
  const changed = join(await tempDir(t), 'changed')
  await mkdir(changed)
  await writeFile(join(changed, 'b.json'), JSON.stringify(other, null, 2))
  const tarred = join(await tempDir(t), 'changed.tar.gz')
  const { execFileSync } = await import('node:child_process')
  execFileSync('tar', ['-czf', tarred, '-C', changed, 'b.json'])
  const refused = await taskvault(['restore', tarred, dir], { env: BOTH })
  t.equal(refused.code, 1)
  t.match(refused.stdout, /b\.json: the folder's copy holds other content under the same updated_at/)
  t.ok((await readFile(join(dir, 'b.json'))).equals(rotated['b.json'] as Buffer), 'b.json untouched')
})

t.test('restore carries an active session under a missing key too, warning that the server needs that key to start', async (t) => {
  const { dir, files } = await folder(t, { 'old.json': await sealed('old', 'k1') })
  const backup = join(await tempDir(t), 'b.tar.gz')
  t.equal((await taskvault(['backup', dir, '--out', backup], { env: K2_ONLY })).code, 0)
  const target = join(await tempDir(t), 'restored')
  const restored = await taskvault(['restore', backup, target], { env: K2_ONLY })
  t.equal(restored.code, 0, restored.stderr)
  t.match(restored.stderr, new RegExp(`1 active session: the server will not start on ${target} until TASK_ENCRYPTION_KEYS holds key 'k1' again`))
  t.ok((await readFile(join(target, 'old.json'))).equals(files['old.json'] as Buffer), 'carried as it is')
})

t.test('prune passes over an archived file under a missing key, keeps it, and does not fail for it', async (t) => {
  const { dir, files } = await folder(t)
  const pruned = await taskvault(['prune', dir, '--days', '1', '--json'], { env: K2_ONLY })
  t.equal(pruned.code, 0, pruned.stderr)
  t.match(pruned.json(), { deleted: 0, errors: 0 })
  t.match(pruned.stderr, /waits for its key/)
  t.ok((await readFile(join(dir, 'archive', 'x.json'))).equals(files['archive/x.json'] as Buffer), 'the file is untouched')
})

t.test('stats counts an archived file under a missing key as archived, lists its key, and fails only for active ones', async (t) => {
  const { dir } = await folder(t)
  const stats = await taskvault(['stats', dir, '--json'], { env: K2_ONLY })
  t.equal(stats.code, 0, stats.stderr)
  t.match(stats.json(), { total_sessions: 2, archived_sessions: 1, storage: { archive_files: 1, failed_loads: 0, archived_needing_keys: { k1: 1 } } })
  const text = await taskvault(['stats', dir], { env: K2_ONLY })
  t.match(text.stdout, /needs a key +1 archived file sealed under key 'k1', which TASK_ENCRYPTION_KEYS does not hold/)
  await writeFile(join(dir, 'old.json'), await sealed('old', 'k1'), { mode: 0o600 })
  const failing = await taskvault(['stats', dir], { env: K2_ONLY })
  t.equal(failing.code, 1, 'an active file under a missing key stops the server, so stats fails')
  t.match(failing.stderr, /1 session needs key 'k1'/)
})

t.test('import loads a folder with an archived file under a retired key, its bytes as they are and sealed_kid from its envelope', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { dir, files } = await folder(t)
  const imported = await taskvault(['import', dir, '--database-url', url, '--json'], { env: K2_ONLY })
  t.equal(imported.code, 0, imported.stderr)
  t.match(imported.json(), { inserted: 2, archived: 1, needs_keys: { k1: { active: 0, archived: 1 } } })
  t.match(imported.stderr, /sealed under key 'k1'.*1 archived row \(served once the key is back\)/)
  t.match(imported.stderr, /the server leaves them unread, as damaged/, 'said of a database, not a folder')
  t.notMatch(imported.stderr, /sets them aside/)
  // stats on the database lists the archived row's key as it does for the folder.
  const stats = await taskvault(['stats', '--database-url', url, '--json'], { env: K2_ONLY })
  t.equal(stats.code, 0, stats.stderr)
  t.match(stats.json(), { total_sessions: 2, archived_sessions: 1, storage: { kind: 'postgres', archive_files: 1, archived_needing_keys: { k1: 1 } } })
  t.match((await taskvault(['stats', '--database-url', url], { env: K2_ONLY })).stdout, /needs a key +1 archived row sealed under key 'k1', which TASK_ENCRYPTION_KEYS does not hold/)
  t.same((await taskvault(['stats', '--database-url', url, '--json'], { env: { TASK_ENCRYPTION_KEYS: `k2:${K2},k1:${K1}` } })).json().storage.archived_needing_keys, {}, 'none once the key is back')
  const client = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 10_000 }))
  client.on('error', noop)
  await client.connect()
  t.teardown(async () => client.end().catch(noop))
  const { rows } = await client.query<{ session_id: string, sealed_kid: string, document: string, updated_at: Date }>('SELECT session_id, sealed_kid, document::text AS document, updated_at FROM sessions WHERE archived_at IS NOT NULL')
  t.equal(rows.length, 1)
  t.equal(rows[0]?.sealed_kid, 'k1', 'sealed_kid from the envelope')
  t.ok(Buffer.from(rows[0]?.document ?? '', 'utf8').equals(files['archive/x.json'] as Buffer), 'the row holds the file\'s bytes')
  t.equal(rows[0]?.updated_at.toISOString(), JSON.parse((files['archive/x.json'] as Buffer).toString('utf8')).updated_at, 'updated_at from the clear fields')
  const store = new PostgresSessionStore({ settings: { url, schema: 'taskvault', max: 2, statementTimeoutMs: 10_000 }, keyring: Keyring.parse(K2_ONLY.TASK_ENCRYPTION_KEYS) })
  await store.init()
  t.teardown(() => store.close())
  t.equal((await store.loadAll({ concurrency: 1 })).sessions.length, 2, 'a server with k2 only starts on the database')
  const again = await taskvault(['import', dir, '--database-url', url, '--json'], { env: K2_ONLY })
  t.match(again.json(), { inserted: 0, archived: 0, unchanged: 3 }, 'running it again changes nothing')
  const counts = async (): Promise<unknown> => (await client.query('SELECT tasks_total, tasks_completed FROM sessions WHERE archived_at IS NOT NULL')).rows[0]
  t.same(await counts(), { tasks_total: 0, tasks_completed: 0 }, 'its tasks cannot be counted without its key')
  // k1 back beside k2: seal opens it, seals it under k2, and counts its tasks.
  const resealed = await taskvault(['seal', '--database-url', url], { env: { TASK_ENCRYPTION_KEYS: `k2:${K2},k1:${K1}` } })
  t.equal(resealed.code, 0, resealed.stderr)
  t.same(await counts(), { tasks_total: 1, tasks_completed: 1 }, 'seal sets the counts from the content')
  // The folder imported again after the rotation: the same sessions, now under k2 in the rows, are
  // left as they are; with k1 gone the archived copy under it cannot be compared, so it is refused.
  const kids = async (): Promise<unknown> => (await client.query('SELECT session_id, sealed_kid FROM sessions ORDER BY session_id, row_id')).rows
  const before = await kids()
  const reimported = await taskvault(['import', dir, '--database-url', url, '--json'], { env: { TASK_ENCRYPTION_KEYS: `k2:${K2},k1:${K1}` } })
  t.equal(reimported.code, 0, reimported.stderr)
  t.match(reimported.json(), { inserted: 0, replaced: 0, archived: 0, unchanged: 3 }, 'the same sessions: nothing written')
  const refused = await taskvault(['import', dir, '--database-url', url, '--json'], { env: K2_ONLY })
  t.equal(refused.code, 1)
  t.match(refused.json().conflicts, [{ file: 'archive/x.json', reason: /differs from the file under the same updated_at .*, and the file is sealed under key 'k1', which TASK_ENCRYPTION_KEYS does not hold, so they cannot be compared$/ }])
  t.same(await kids(), before, 'every row still under the key it was sealed under')
})

t.test('seal reports a file not named like a session as ignored, leaves it alone and does not fail for it, as validate does', async (t) => {
  const notes = Buffer.from('operator notes\n')
  const { dir } = await folder(t, { 'my notes.json': notes })
  const both = { TASK_ENCRYPTION_KEYS: `k2:${K2},k1:${K1}` }
  const sealing = await taskvault(['seal', dir, '--json'], { env: both })
  t.equal(sealing.code, 0, sealing.stderr)
  t.match(sealing.json(), { sealed: 1, already: 2, unreadable: 0, ignored: 1, problems: [{ file: 'my notes.json', ignored: true }] })
  t.match(sealing.stderr, /⚠️ my notes\.json: not named <id>\.json/)
  t.notMatch(sealing.stderr, /❌/)
  t.ok((await readFile(join(dir, 'my notes.json'))).equals(notes), 'the file is untouched')
  t.equal((await taskvault(['validate', dir], { env: both })).code, 0, 'validate agrees')
  // A damaged session file still fails it.
  await writeFile(join(dir, 'broken.json'), '{"session_id":', { mode: 0o600 })
  const failing = await taskvault(['seal', dir, '--json'], { env: both })
  t.equal(failing.code, 1)
  t.match(failing.json(), { unreadable: 1, ignored: 1 })
})

t.test('validate names the key of a sealed file that did not open, in text and --json: the rotation runbook looks for the old kid', async (t) => {
  const { dir } = await folder(t)
  const doc = JSON.parse(await readFile(join(dir, 'b.json'), 'utf8')) as { sealed: { tag: string } }
  const tag = Buffer.from(doc.sealed.tag, 'base64')
  tag[0] = (tag[0] as number) ^ 1
  await writeFile(join(dir, 'b.json'), JSON.stringify({ ...doc, sealed: { ...doc.sealed, tag: tag.toString('base64') } }))
  // b.json's box does not open though a.json's does under k2; x.json's key k1 is not given.
  const text = await taskvault(['validate', dir], { env: K2_ONLY })
  t.equal(text.code, 1)
  t.match(text.stdout, /^❌ b\.json \(sealed, key k2\): authentication failed$/mu)
  t.match(text.stdout, /^❌ archive\/x\.json \(sealed, key k1\): a session is sealed under key 'k1'/mu)
  t.match(text.stdout, /^✅ a\.json \(sealed, key k2\)$/mu)
  const json = await taskvault(['validate', dir, '--json'], { env: K2_ONLY })
  t.match(json.json().files, [
    { file: 'a.json', ok: true, kid: 'k2' },
    { file: 'archive/x.json', ok: false, kid: 'k1' },
    { file: 'b.json', ok: false, kid: 'k2', reason: 'authentication failed' }
  ])
})

t.test('seal and validate count the files set aside in corrupt/, which stay as found (a plaintext one in clear), with a warning', async (t) => {
  const dir = await tempDir(t)
  await markAsTaskvault(dir)
  await writeFile(join(dir, 'fine.json'), storedSession('fine', ['Pending'], daysAgo(1)), { mode: 0o600 })
  // A plaintext file damaged in a way that keeps its content (a duplicated task).
  const damaged = JSON.parse(storedSession('cust', ['Pending'], daysAgo(1), 'SECRET-CUSTOMER-DATA')) as { session: { tasks: unknown[] } }
  damaged.session.tasks.push(damaged.session.tasks[0])
  await writeFile(join(dir, 'cust.json'), JSON.stringify(damaged), { mode: 0o600 })
  const env = { TASK_ENCRYPTION_KEYS: `k1:${K1}` }
  const none = await taskvault(['seal', dir, '--json'], { env })
  t.match([none.code, none.json()], [1, { unreadable: 1, set_aside: 0 }], 'before it is set aside, the damaged file fails seal; no corrupt/ yet')
  t.notMatch(none.stderr, /corrupt\//)
  // Keys on: the server's restore sets the damaged file aside, as it was.
  await (await build(t, { dir, config: env })).close()
  const [setAside] = await readdir(join(dir, 'corrupt'))
  t.match(await readFile(join(dir, 'corrupt', setAside as string), 'utf8'), /SECRET-CUSTOMER-DATA/, 'set aside in clear')
  const warning = /⚠️ {2}1 file set aside in corrupt\/ is kept as found and not (sealed|checked) \(plaintext ones stay in clear\): inspect it, then delete it/u
  const sealing = await taskvault(['seal', dir, '--json'], { env })
  t.equal(sealing.code, 0, sealing.stderr)
  t.match(sealing.json(), { sealed: 0, already: 1, set_aside: 1 })
  t.match(sealing.stderr, warning)
  const validating = await taskvault(['validate', dir], { env })
  t.equal(validating.code, 0, 'already set aside: no failure')
  t.match(validating.stderr, warning)
  t.match((await taskvault(['validate', dir, '--json'], { env })).json(), { checked: 1, bad: 0, set_aside: 1 })
  t.match(await readFile(join(dir, 'corrupt', setAside as string), 'utf8'), /SECRET-CUSTOMER-DATA/, 'neither command changes what corrupt/ holds')
  // corrupt/ not readable by the command's user: its work stands (exit 0), only the count is unknown.
  await chmod(join(dir, 'corrupt'), 0o000)
  t.teardown(async () => chmod(join(dir, 'corrupt'), 0o700))
  const unknown = /⚠️ {2}corrupt\/ could not be read: files set aside there, if any, are kept as found and not (sealed|checked)/u
  for (const command of ['seal', 'validate']) {
    const run = await taskvault([command, dir, '--json'], { env, unprivileged: true })
    t.match([run.code, run.json()], [0, { set_aside: null }], `${command}: exit 0, the count unknown`)
    t.match(run.stderr, unknown)
  }
})

// Debian's strace, which .ci/run installs: without it this fails under CI=true, and is skipped elsewhere.
const STRACE = existsSync('/usr/bin/strace') || process.env.CI === 'true' ? false : 'needs strace (/usr/bin/strace)'

t.test('seal run again after a kill -9 that came after its renames, before its folder syncs: it syncs the folders, though nothing is left to seal', { skip: STRACE }, async (t) => {
  const { dir } = await folder(t)
  const env = { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: `k1:${K1},k2:${K2}` }
  // Killed at its first fsync of the folder itself: a.json and b.json are renamed, not yet durable.
  const killed = await taskvault(['seal'], { env, strace: ['-o', '/dev/null', '-P', dir, '-e', 'trace=fsync', '-e', 'inject=fsync:signal=SIGKILL'] })
  t.not(killed.code, 0, 'the first run was killed')
  const rerun = await taskvault(['seal', '--json'], { env, strace: ['-y', '-o', join(dir, '..', 'trace'), '-P', dir, '-P', join(dir, 'archive'), '-e', 'trace=fsync'] })
  t.equal(rerun.code, 0, rerun.stderr)
  t.match(rerun.json(), { sealed: 0, already: 3 }, 'the killed run had sealed every file')
  const trace = await readFile(join(dir, '..', 'trace'), 'utf8')
  t.match(trace, new RegExp(`fsync\\(\\d+<${dir}>\\) = 0`, 'u'), 'the folder is synced')
  t.match(trace, new RegExp(`fsync\\(\\d+<${join(dir, 'archive')}>\\) = 0`, 'u'), 'and archive/')
})

t.test('stats --json has GET /stats\'s encryption object: active sessions by key, every configured kid, plaintext ones', async (t) => {
  const { dir } = await folder(t, { 'plain.json': Buffer.from(storedSession('plain', ['Pending'], daysAgo(1))) })
  const both = { TASK_ENCRYPTION_KEYS: `k2:${K2},k1:${K1}` }
  const stats = await taskvault(['stats', dir, '--json'], { env: both })
  t.equal(stats.code, 0, stats.stderr)
  const expected = { enabled: true, active_kid: 'k2', sealed_sessions: { k2: 2, k1: 0 }, plaintext_sessions: 1 }
  t.same(stats.json().encryption, expected, 'the archived file under k1 is not an active session')
  const text = await taskvault(['stats', dir], { env: both })
  t.match(text.stdout, /encryption +active key k2; active sessions: 2 under k2, 0 under k1, 1 plaintext/)
  const plain = await tempDir(t)
  await writeFile(join(plain, 'plain.json'), storedSession('plain', ['Pending'], daysAgo(1)), { mode: 0o600 })
  await markAsTaskvault(plain)
  t.same((await taskvault(['stats', plain, '--json'], { env: {} })).json().encryption, { enabled: false }, 'without keys')
  const app = await build(t, { dir, config: both })
  t.same((await get(app, '/stats')).json().encryption, expected, 'what GET /stats shows')

  const url = await testDatabase(t)
  if (url === null) return
  await app.close()
  t.equal((await taskvault(['import', dir, '--database-url', url], { env: both })).code, 0)
  const rows = await taskvault(['stats', '--database-url', url, '--json'], { env: both })
  t.equal(rows.code, 0, rows.stderr)
  t.same(rows.json().encryption, expected, 'the same from the database')
  const server = await buildApp({ readEnvironment: false, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_ENCRYPTION_KEYS: both.TASK_ENCRYPTION_KEYS } })
  t.teardown(() => server.close())
  await server.ready()
  t.same((await get(server, '/stats')).json().encryption, expected, 'what GET /stats shows on the database')
})

/** k2 given a key it was never sealed with: every file under it fails to open. */
const K2_WRONG = { TASK_ENCRYPTION_KEYS: `k2:${randomBytes(32).toString('base64')}` }

t.test('backup with a wrong key under a kid writes nothing and deletes no older backup; one that left a file out deletes none either', async (t) => {
  const { dir } = await folder(t)
  const outDir = await tempDir(t)
  const old = join(outDir, 'tasks_20200101.tar.gz')
  t.equal((await taskvault(['backup', dir, '--out', old], { env: K2_ONLY })).code, 0)
  const good = await readFile(old)

  const wrong = await taskvault(['backup', dir, '--out-dir', outDir, '--keep-days', '7'], { env: K2_WRONG })
  t.equal(wrong.code, 1)
  t.match(wrong.stderr, /key 'k2' opens none of the 2 files sealed under it: TASK_ENCRYPTION_KEYS likely holds a different key under that kid/)
  t.match(wrong.stderr, /no backup was written/)
  t.same((await readdir(outDir)).sort(), ['tasks_20200101.tar.gz'], 'no backup written, the old one kept')
  t.ok((await readFile(old)).equals(good), 'byte for byte')

  // One damaged file under a key that opens the others: left out, reported, and then no older backup goes.
  const damaged = Buffer.from(await readFile(join(dir, 'b.json')))
  const at = damaged.indexOf('"data"') + 12
  damaged[at] = (damaged[at] as number) ^ 1
  await writeFile(join(dir, 'b.json'), damaged)
  const partial = await taskvault(['backup', dir, '--out-dir', outDir, '--keep-days', '7'], { env: K2_ONLY })
  t.equal(partial.code, 1, 'a file was left out')
  t.match(partial.stdout, /left out b\.json/)
  t.match(partial.stdout, /Deleted no older backup: this one left 1 file out/)
  t.ok((await readdir(outDir)).includes('tasks_20200101.tar.gz'), 'the old backup is kept')
})

t.test('backup refuses a folder with no session and no marker (a volume that did not mount), and deletes nothing', async (t) => {
  const outDir = await tempDir(t)
  const old = join(outDir, 'tasks_20200101.tar.gz')
  await writeFile(old, 'an older backup')
  const empty = await tempDir(t)
  const made = await taskvault(['backup', empty, '--out-dir', outDir, '--keep-days', '7'])
  t.equal(made.code, 1)
  t.match(made.stderr, /holds no session and no \.taskvault marker/)
  t.same(await readdir(outDir), ['tasks_20200101.tar.gz'])
  await markAsTaskvault(empty)
  const marked = await taskvault(['backup', empty, '--out-dir', outDir, '--keep-days', '7', '--json'])
  t.equal(marked.code, 0, 'an empty folder taskvault has used backs up (nothing), as before')
  t.same(marked.json().deleted, ['tasks_20200101.tar.gz'])
})

t.test('seal, validate, archive and prune refuse a folder with no session and no marker too, and do not mark it (which would let backup pass)', async (t) => {
  const empty = await tempDir(t)
  for (const command of [['seal'], ['validate'], ['validate', '--fix'], ['archive', '--days', '1'], ['prune', '--days', '1']]) {
    const run = await taskvault([command[0] as string, empty, ...command.slice(1)], { env: K2_ONLY })
    t.equal(run.code, 1, command.join(' '))
    t.match(run.stderr, /holds no session and no \.taskvault marker: it is not a storage folder taskvault has used \(a volume that did not mount\?\); nothing was (written|checked)/, command.join(' '))
  }
  t.same(await readdir(empty), [], 'nothing written: no marker, no lock')
  t.equal((await taskvault(['backup', empty, '--out-dir', await tempDir(t)])).code, 1, 'backup still refuses it')
  // Entries that only take a session's name are no session: a link to nothing, a folder.
  await symlink('/nonexistent', join(empty, 'y.json'))
  await mkdir(join(empty, 'z.json'))
  t.equal((await taskvault(['validate', empty, '--fix'])).code, 1, 'a link and a folder named like sessions')
  t.same((await readdir(empty)).sort(), ['y.json', 'z.json'], 'still unmarked')
  await rm(join(empty, 'y.json'))
  await rm(join(empty, 'z.json'), { recursive: true })
  await markAsTaskvault(empty)
  t.equal((await taskvault(['seal', empty], { env: K2_ONLY })).code, 0, 'a marked empty folder is one taskvault used: sealed (nothing)')
  t.equal((await taskvault(['validate', empty])).code, 0)
})

t.test('restore with another key under the sealing kid says the key may be the wrong one, not only that the file failed', async (t) => {
  const { dir } = await folder(t)
  const backup = join(await tempDir(t), 'b.tar.gz')
  t.equal((await taskvault(['backup', dir, '--out', backup], { env: K2_ONLY })).code, 0)
  const target = join(await tempDir(t), 'restored')
  const restored = await taskvault(['restore', backup, target], { env: K2_WRONG })
  t.equal(restored.code, 1)
  t.match(restored.stderr, /the backup's [ab]\.json: authentication failed: it does not open under key 'k2' as TASK_ENCRYPTION_KEYS gives it, so either that is not the key that sealed it \(give that one\) or the file was changed; nothing was written/)
  t.notOk(existsSync(target), 'the folder was not even made')
})

t.test('import with another key under the sealing kid says the key is likely wrong, rather than to set the files aside', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { dir } = await folder(t)
  const imported = await taskvault(['import', dir, '--database-url', url], { env: K2_WRONG })
  t.equal(imported.code, 1)
  t.match(imported.stdout, /key 'k2' opens none of the 2 files sealed under it: TASK_ENCRYPTION_KEYS likely holds a different key under that kid .*Put the right key back; nothing was written/)
  t.notMatch(imported.stdout, /validate .* --fix/)
})

t.test('seal with another key under a kid it only opens says the key is likely wrong, besides each file that did not open', async (t) => {
  const { dir, files } = await folder(t)
  const sealing = await taskvault(['seal', dir], { env: { TASK_ENCRYPTION_KEYS: `k2:${K2},k1:${randomBytes(32).toString('base64')}` } })
  t.equal(sealing.code, 1)
  t.match(sealing.stderr, /❌ archive\/x\.json: authentication failed/)
  t.match(sealing.stderr, /❌ key 'k1' opens none of the 1 files sealed under it: TASK_ENCRYPTION_KEYS likely holds a different key under that kid .*those files were left as they are/)
  t.ok((await readFile(join(dir, 'archive', 'x.json'))).equals(files['archive/x.json'] as Buffer), 'left as it is')
})

t.test('stats with a wrong key under a kid fails as the server does, rather than count the sessions as unloadable', async (t) => {
  const { dir } = await folder(t)
  const stats = await taskvault(['stats', dir], { env: K2_WRONG })
  t.equal(stats.code, 1)
  t.match(stats.stderr, /key 'k2' opens none of the 2 files sealed under it/)
  t.match(stats.stderr, /nothing was counted/)
  const server = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, ...K2_WRONG } })
  await t.rejects(async () => { await server.ready() }, /key 'k2' opens none/, 'the server refuses to start alike')
  await server.close().catch(noop)
})

t.test('an archived session waiting for a retired key is no failed load: GET /stats and /metrics stay at 0 once it is read', async (t) => {
  const { dir } = await folder(t)
  const app = await build(t, { dir, config: { ...K2_ONLY, TASK_ARCHIVE_DAYS: 0 } })
  t.equal((await app.inject({ method: 'GET', url: '/api/v1/tasks/list?session_id=all&archived=include' })).statusCode, 200)
  t.equal((await get(app, '/stats')).json().storage.failed_loads, 0)
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /\ntaskvault_restore_failed_loads 0\n/)
})

t.test('export with a wrong key under a kid says the key is wrong, not only that each row failed', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { dir } = await folder(t)
  t.equal((await taskvault(['import', dir, '--database-url', url], { env: K2_ONLY })).code, 0)
  const out = join(await tempDir(t), 'exported')
  const exported = await taskvault(['export', out, '--database-url', url], { env: K2_WRONG })
  t.equal(exported.code, 1)
  t.match(exported.stdout, /key 'k2' opens none of the 2 rows sealed under it: TASK_ENCRYPTION_KEYS likely holds a different key under that kid/)
  const right = await taskvault(['export', join(await tempDir(t), 'again'), '--database-url', url], { env: K2_ONLY })
  t.equal(right.code, 0, right.stderr)
  t.notMatch(right.stdout, /opens none/)
})

t.test('an archived file that does not open, under a kid no other file proves, is left out as damaged: backup and stats go on, as the server starts', async (t) => {
  const { dir } = await folder(t)
  const both = { TASK_ENCRYPTION_KEYS: `k2:${K2},k1:${K1}` }
  const damaged = Buffer.from(await readFile(join(dir, 'archive', 'x.json')))
  const at = damaged.indexOf('"tag"') + 10
  damaged[at] = damaged[at] === 0x41 ? 0x42 : 0x41
  await writeFile(join(dir, 'archive', 'x.json'), damaged)
  const backup = join(await tempDir(t), 'b.tar.gz')
  const made = await taskvault(['backup', dir, '--out', backup], { env: both })
  t.equal(made.code, 1, 'a file was left out')
  t.match(made.stdout, /Backed up 2 sessions/)
  t.match(made.stdout, /left out archive\/x\.json/)
  t.notMatch(made.stderr, /opens none/)
  const stats = await taskvault(['stats', dir, '--json'], { env: both })
  t.equal(stats.code, 0, stats.stderr)
  t.match(stats.json(), { total_sessions: 2 })
  const app = await build(t, { dir, config: both })
  t.equal((await get(app, '/stats')).json().total_sessions, 2, 'the server starts on it')
})

t.test('the sealing key wrong over a folder of archived files only, with no key check kept: stats and backup fail as the server does', async (t) => {
  const dir = join(await tempDir(t, 'taskvault-cli-keys-'), 'tasks')
  await mkdir(join(dir, 'archive'), { recursive: true, mode: 0o700 })
  for (const id of ['x', 'y']) await writeFile(join(dir, 'archive', `${id}.json`), await sealed(id, 'k1', ['Completed']), { mode: 0o600 })
  await markAsTaskvault(dir)
  const wrong = { TASK_ENCRYPTION_KEYS: `k1:${randomBytes(32).toString('base64')}` }
  const stats = await taskvault(['stats', dir], { env: wrong })
  t.equal(stats.code, 1)
  t.match(stats.stderr, /key 'k1' opens none of the 2 files sealed under it/)
  const out = join(await tempDir(t), 'b.tar.gz')
  const backup = await taskvault(['backup', dir, '--out', out], { env: wrong })
  t.equal(backup.code, 1)
  t.match(backup.stderr, /key 'k1' opens none/)
  t.notOk(existsSync(out), 'no backup written')
  const server = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, ...wrong } })
  await t.rejects(async () => { await server.ready() }, /opens none of the archived sessions sealed under it/, 'the server refuses to start alike')
  await server.close().catch(noop)
  const right = await taskvault(['stats', dir, '--json'], { env: { TASK_ENCRYPTION_KEYS: `k1:${K1}` } })
  t.equal(right.code, 0, right.stderr)
  t.match(right.json(), { archived_sessions: 2 })
})
