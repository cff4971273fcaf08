/**
 * Migrations on a real PostgreSQL (a database of each test's own): applying, racing, refusing
 * a newer database, the schema's place, the document column's fidelity, and the fault proxy.
 */
import { randomBytes } from 'node:crypto'
import { copyFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import type { SessionFile, Task } from '../schemas/session.js'
import { noop } from '../services/noop.js'
import { Keyring } from '../services/store/keyring.js'
import { DatabaseTooNewError, InvalidDatabaseSettingError, MigrationError } from '../services/errors.js'
import { MIGRATIONS_DIR, migrate, migrationLockKey, readMigrations } from '../services/store/postgres/migrate.js'
import { redactUrl } from '../services/store/postgres/database-url.js'
import { connectionConfig, createPool } from '../services/store/postgres/pool.js'
import { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { parseSessionFile, serializeSessionFile } from '../services/store/session-files.js'
import { buildApp } from '../app.js'
import { taskvault, type Run } from './cli-run.js'
import { tempDir, waitFor } from './helper.js'
import { ADMIN_URL, testDatabase, throughProxy } from './postgres.js'
import { startProxy } from './tcp-proxy.js'

const SCHEMA = 'tv_test'
const files = await readMigrations()
const NEWEST = files.at(-1)?.version ?? 0
const ALL = files.map((file) => file.version)

function pool (t: { teardown(fn: () => unknown): void }, url: string, schema = SCHEMA, statementTimeoutMs = 10_000): pg.Pool {
  const created = createPool({ url, schema, max: 3, statementTimeoutMs })
  t.teardown(() => created.end())
  return created
}

async function recorded (db: pg.Pool, schema = SCHEMA): Promise<number[]> {
  const { rows } = await db.query(`SELECT version FROM ${pg.escapeIdentifier(schema)}.migrations ORDER BY version`)
  return rows.map((row: { version: number }) => row.version)
}

/** The shipped migrations up to `upTo`, plus `extra` (`<version>_<name>` -> SQL), in a folder of the test's own. */
async function migrationsDir (t: Test, extra: Record<string, string>, upTo = Number.POSITIVE_INFINITY): Promise<string> {
  const dir = await tempDir(t, 'taskvault-migrations-')
  for (const file of files.filter((candidate) => candidate.version <= upTo)) {
    const name = `${String(file.version).padStart(3, '0')}_${file.name}.sql`
    await copyFile(join(MIGRATIONS_DIR, name), join(dir, name))
  }
  for (const [key, sql] of Object.entries(extra)) {
    const [version, ...name] = key.split('_')
    await writeFile(join(dir, `${String(version).padStart(3, '0')}_${name.join('_')}.sql`), sql)
  }
  return dir
}

/** A failed run of the tool tells its reason in one line, and never with a stack. */
function oneLine (t: Test, run: Run, pattern: RegExp): void {
  t.equal(run.code, 1, 'exits 1')
  t.match(run.stderr, pattern)
  t.equal(run.stderr.trim().split('\n').length, 1, `one line: ${run.stderr}`)
  t.notMatch(run.stderr, /\n\s+at /u, 'no stack trace')
}

/** A bad flag value: exit 2, one line saying why, then the pointer to --help. */
function usageLine (t: Test, run: Run, pattern: RegExp): void {
  t.equal(run.code, 2, 'exits 2, as any bad flag value')
  t.match(run.stderr, pattern)
  t.same(run.stderr.trim().split('\n').slice(1), ["Run 'taskvault migrate --help' for usage."], `one line, then --help: ${run.stderr}`)
  t.notMatch(run.stderr, /\n\s+at /u, 'no stack trace')
}

t.test('a fresh database migrates and records it; a second run applies nothing', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url)
  t.same(await migrate(db, { schema: SCHEMA }), { applied: ALL, version: NEWEST })
  const { rows } = await db.query(`SELECT version, name, checksum, applied_at FROM ${SCHEMA}.migrations ORDER BY version`)
  t.same(rows.map((row) => [row.version, row.name, row.checksum]), files.map((file) => [file.version, file.name, file.checksum]))
  t.ok(rows.every((row) => row.applied_at instanceof Date), 'applied_at is recorded')

  t.same(await migrate(db, { schema: SCHEMA }), { applied: [], version: NEWEST }, 'second run: nothing to do')
  t.same(await recorded(db), ALL)

  // The same through the tool.
  const again = await taskvault(['migrate', '--database-url', url, '--schema', SCHEMA])
  t.equal(again.code, 0)
  t.match(again.stdout, `Schema ${SCHEMA} at`)
  t.match(again.stdout, 'is up to date')
})

t.test('the tool reads DATABASE_URL and TASK_DB_SCHEMA from ./.env like the server, the environment winning', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const cwd = await tempDir(t)
  await writeFile(join(cwd, '.env'), `DATABASE_URL=${url}\nTASK_DB_SCHEMA=from_dotenv\n`)
  const run = await taskvault(['migrate', '--json'], { cwd })
  t.equal(run.code, 0, run.stderr)
  t.match(run.json(), { schema: 'from_dotenv', applied: ALL })
  const overridden = await taskvault(['migrate', '--json'], { cwd, env: { TASK_DB_SCHEMA: 'from_env' } })
  t.match(overridden.json(), { schema: 'from_env', applied: ALL }, 'the environment wins over .env')
})

t.test('the tables land in the chosen schema, not public, and the pool finds them there', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url)
  await migrate(db, { schema: SCHEMA })
  const { rows } = await db.query(`SELECT table_schema, table_name FROM information_schema.tables
    WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY table_name`)
  t.same(rows, [
    { table_schema: SCHEMA, table_name: 'event_stream' },
    { table_schema: SCHEMA, table_name: 'events' },
    { table_schema: SCHEMA, table_name: 'key_checks' },
    { table_schema: SCHEMA, table_name: 'migrations' },
    { table_schema: SCHEMA, table_name: 'replicas' },
    { table_schema: SCHEMA, table_name: 'sessions' }
  ])
  const functions = await db.query("SELECT routine_schema, routine_name FROM information_schema.routines WHERE routine_schema NOT IN ('pg_catalog', 'information_schema')")
  t.same(functions.rows, [{ routine_schema: SCHEMA, routine_name: 'publish_events' }], 'the one function, in the schema too')
  // Unqualified names resolve through the search_path the pool sets on each connection.
  t.same((await db.query('SELECT count(*)::int AS n FROM sessions')).rows, [{ n: 0 }])
  t.same((await db.query('SHOW search_path')).rows, [{ search_path: SCHEMA }])
  t.same((await db.query('SHOW statement_timeout')).rows, [{ statement_timeout: '10s' }])
  t.same((await db.query('SHOW max_parallel_workers_per_gather')).rows, [{ max_parallel_workers_per_gather: '0' }], 'no parallel workers by default')
  // The URL's options may turn them back on (and cannot move search_path or statement_timeout).
  const withOptions = new URL(url)
  withOptions.searchParams.set('options', '-c max_parallel_workers_per_gather=2 -c statement_timeout=5s')
  const tuned = pool(t, withOptions.toString())
  t.same((await tuned.query('SHOW max_parallel_workers_per_gather')).rows, [{ max_parallel_workers_per_gather: '2' }], 'the URL sets them')
  t.same((await tuned.query('SHOW statement_timeout')).rows, [{ statement_timeout: '10s' }], 'the setting\'s bound still wins')

  // Another schema in the same database migrates on its own.
  const other = pool(t, url, 'tv_other')
  t.same((await migrate(other, { schema: 'tv_other' })).applied, ALL)
  t.same(await recorded(other, 'tv_other'), ALL)
})

t.test('a role with the tables\' privileges and no CREATE in the schema (an administrator migrated it) opens the store, saves and reads; the CLI\'s stats, validate and export run with SELECT alone', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const admin = pool(t, url, 'taskvault')
  await migrate(admin, { schema: 'taskvault' })
  const suffix = randomBytes(4).toString('hex')
  const writer = `tv_writer_${suffix}`
  const reader = `tv_reader_${suffix}`
  const drop = async (): Promise<void> => {
    for (const role of [writer, reader]) await admin.query(`DROP OWNED BY ${role}`).then(async () => await admin.query(`DROP ROLE ${role}`)).catch(noop)
  }
  t.teardown(drop)
  await admin.query(`CREATE ROLE ${writer} LOGIN; GRANT USAGE ON SCHEMA taskvault TO ${writer};
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA taskvault TO ${writer}; GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA taskvault TO ${writer};
    CREATE ROLE ${reader} LOGIN; GRANT USAGE ON SCHEMA taskvault TO ${reader}; GRANT SELECT ON ALL TABLES IN SCHEMA taskvault TO ${reader}`)
  const as = (role: string): string => {
    const limited = new URL(url)
    limited.username = role
    return limited.toString()
  }
  const store = new PostgresSessionStore({ settings: { url: as(writer), schema: 'taskvault', max: 4, statementTimeoutMs: 10_000 }, keyring: null })
  await store.init()
  await store.save(awkwardSession('kept'))
  const done = awkwardSession('done')
  for (const task of done.session.tasks) Object.assign(task, { status: 'Completed', error: null, completed_at: '2025-11-04T08:00:15.999Z' })
  done.session.current_index = done.session.tasks.length
  delete done.background_run
  await store.save(done)
  t.same((await store.loadAll({ concurrency: 1 })).sessions.map((loaded) => loaded.file.session_id).sort(), ['done', 'kept'], 'the writer saves and reads')
  await store.close()
  for (const command of ['stats', 'validate']) {
    const run = await taskvault([command, '--database-url', as(reader), '--json'], { env: {} })
    t.equal(run.code, 0, `a reader runs ${command}: ${run.stderr}`)
  }
  const archive = await taskvault(['archive', '--days', '1', '--database-url', as(reader)], { env: {} })
  t.equal(archive.code, 1, 'a reader cannot archive')
  t.match(archive.stderr, /archiving session 'done' failed: storage is unavailable \(42501\): permission denied for table sessions/u, 'and is told why in the database\'s words')
  // A server given the reader by mistake: its first write (claiming its replica id) gets the same
  // answer on every try, so the start stops at once, in the database's words.
  const started = Date.now()
  const config = { TASK_STORE: 'postgres', DATABASE_URL: as(reader), TASK_STORAGE_DIR: await tempDir(t) }
  await t.rejects(async () => {
    const app = await buildApp({ readEnvironment: false, config })
    try {
      await app.ready()
    } finally {
      await app.close().catch(noop)
    }
  }, { code: 'DATABASE_UNAVAILABLE', message: /claiming replica id .* failed: storage is unavailable \(42501\): permission denied for table replicas/u }, 'a server as the reader does not start')
  t.ok(Date.now() - started < 10_000, `at once, not after TASK_DB_CONNECT_TIMEOUT_MS (${Date.now() - started} ms)`)
  const folder = await tempDir(t)
  const exported = await taskvault(['export', '--database-url', as(reader), folder, '--json'], { env: {} })
  t.equal(exported.code, 0, `a reader exports: ${exported.stdout}${exported.stderr}`)
  t.match(exported.json(), { active: 2, archived: 0 })
  await drop()
})

t.test('statements a replica of the version before prepared (a rolling upgrade) still run once the newest migration is applied', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const older = pool(t, url, 'taskvault')
  await migrate(older, { schema: 'taskvault', dir: await migrationsDir(t, {}, NEWEST - 1) })
  const client = await older.connect()
  t.teardown(() => { client.release() })
  await client.query('INSERT INTO sessions (session_id, document, created_at, updated_at) VALUES (\'kept\', \'{}\', now(), now())')
  // Prepared as the older replica's store prepares its reads: by name, once per connection, returning the columns.
  const reads = [
    { name: 'older_list', text: 'SELECT session_id, updated_at FROM sessions WHERE archived_at IS NULL ORDER BY updated_at DESC, session_id LIMIT 10' },
    { name: 'older_row', text: 'SELECT session_id, row_id, version, document::text AS document FROM sessions WHERE session_id = $1 AND archived_at IS NULL', values: ['kept'] }
  ]
  for (const read of reads) t.equal((await client.query(read)).rowCount, 1, `${read.name}: prepared`)
  t.same((await migrate(pool(t, url, 'taskvault'), { schema: 'taskvault' })).applied, [NEWEST])
  for (const read of reads) t.equal((await client.query(read)).rowCount, 1, `${read.name}: still runs (a changed result type would fail it on every call)`)
})

t.test('two servers migrating at once apply each migration exactly once', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  // The real migrations plus a slow one, so the two runs overlap for certain; a second
  // CREATE TABLE of the same table would fail, so "once" is checked by the database too.
  const slow = NEWEST + 1
  const dir = await migrationsDir(t, { [`${slow}_slow`]: 'SELECT pg_sleep(0.3);\nCREATE TABLE slow_once (x integer);\n' })
  const [a, b] = [pool(t, url), pool(t, url)]
  const results = await Promise.all([migrate(a, { schema: SCHEMA, dir }), migrate(b, { schema: SCHEMA, dir })])
  t.same(results.flatMap((result) => result.applied).sort((x, y) => x - y), [...ALL, slow], 'every version applied by exactly one of them')
  t.same(results.map((result) => result.version), [slow, slow])
  t.same(await recorded(a), [...ALL, slow])
})

t.test('two taskvault migrate processes at once apply each migration exactly once', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const runs = await Promise.all([1, 2].map(() => taskvault(['migrate', '--database-url', url, '--schema', SCHEMA, '--json'])))
  for (const run of runs) t.equal(run.code, 0, run.stderr)
  const applied = runs.flatMap((run) => run.json().applied as number[]).sort((x, y) => x - y)
  t.same(applied, ALL, 'each migration applied by one process')
  t.same(runs.map((run) => run.json().version), [NEWEST, NEWEST])
  const db = pool(t, url)
  t.same(await recorded(db), ALL)
})

t.test('a database migrated by a newer taskvault is refused, naming both versions', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url)
  await migrate(db, { schema: SCHEMA })
  const future = NEWEST + 41
  await db.query(`INSERT INTO ${SCHEMA}.migrations (version, name, checksum) VALUES ($1, 'future', 'x')`, [future])
  const message = `database is at migration ${future}, this taskvault knows up to ${NEWEST}; upgrade taskvault`
  await t.rejects(migrate(db, { schema: SCHEMA }), new DatabaseTooNewError(future, NEWEST))
  await t.rejects(migrate(db, { schema: SCHEMA }), { code: 'DATABASE_TOO_NEW', message })
  oneLine(t, await taskvault(['migrate', '--database-url', url, '--schema', SCHEMA]), new RegExp(`^taskvault: ${message}\\n$`, 'u'))
  t.same(await recorded(db), [...ALL, future], 'nothing changed')
})

t.test('a failing migration is rolled back whole and not recorded', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url)
  const broken = NEWEST + 1
  const dir = await migrationsDir(t, { [`${broken}_broken`]: 'CREATE TABLE half_done (x integer);\nSELECT no_such_column FROM half_done;\n' })
  await t.rejects(migrate(db, { schema: SCHEMA, dir }), { code: 'MIGRATION_FAILED', message: new RegExp(`^migration ${broken} \\(broken\\) failed: column "no_such_column" does not exist`, 'u') })
  t.same(await recorded(db), ALL, 'the earlier ones stay applied; the broken one is not recorded')
  t.same((await db.query('SELECT to_regclass($1) AS found', [`${SCHEMA}.half_done`])).rows, [{ found: null }], 'none of its statements remain')
})

t.test('migrations are not bound by the pool\'s statement timeout, which is back afterwards', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  // 200 ms on the server, 1.2 s on the client: the 1.5 s migration passes both only if migrate lifts them.
  const db = createPool({ url, schema: SCHEMA, max: 1, statementTimeoutMs: 200 })
  t.teardown(() => db.end())
  const dir = await migrationsDir(t, { [`${NEWEST + 1}_long`]: 'SELECT pg_sleep(1.5);\n' })
  t.same((await migrate(db, { schema: SCHEMA, dir })).applied, [...ALL, NEWEST + 1])
  t.same((await db.query('SHOW statement_timeout')).rows, [{ statement_timeout: '200ms' }], 'the pooled connection has its bound again')
})

t.test('a connection lost while migrate waits for another server\'s lock fails the migration, not the process', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  // Another server migrates: it holds the lock, so this migrate waits on its connection.
  const holder = await pool(t, url).connect()
  t.teardown(() => { holder.release(true) })
  await holder.query('SELECT pg_advisory_lock($1::bigint)', [migrationLockKey(SCHEMA)])
  const { proxy, url: proxied } = await throughProxy(t, url)
  const db = pool(t, proxied)
  const heard: Error[] = []
  db.on('error', (err) => { heard.push(err) })
  const migrating = migrate(db, { schema: SCHEMA }).then(() => null, (err: Error) => err)
  await waitFor('migrate to wait for the lock', async () => (await holder.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_lock%' AND pid <> pg_backend_pid()")).rowCount === 1, 10_000)
  // Unheard, the checked-out client's 'error' would end this process (and fail this file).
  proxy.drop()
  const err = await migrating
  t.ok(err instanceof Error, `migrate rejects (${err?.message ?? 'resolved'})`)
  proxy.pass()
  await holder.query('SELECT pg_advisory_unlock($1::bigint)', [migrationLockKey(SCHEMA)])
  t.same((await migrate(db, { schema: SCHEMA })).applied, ALL, 'a later migrate on the same pool applies everything')
})

t.test('a server gone silent holding the migration lock (a network black hole, then killed) hangs neither its own boot past the deadline nor every later boot', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const direct = pool(t, url)
  await migrate(direct, { schema: SCHEMA })
  // Another session locks the migrations table, so the migrate through the proxy is caught holding the advisory lock.
  const locker = await direct.connect()
  t.teardown(() => { locker.release(true) })
  await locker.query(`BEGIN; LOCK TABLE ${SCHEMA}.migrations IN ACCESS EXCLUSIVE MODE`)
  const { proxy, url: proxied } = await throughProxy(t, url)
  const silent = pool(t, proxied)
  silent.on('error', noop)
  const started = performance.now()
  const migrating = migrate(silent, { schema: SCHEMA, deadline: started + 3_000 }).then(() => null, (err: Error) => err)
  await waitFor('migrate to wait on the table', async () => (await direct.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FROM%migrations%' AND pid <> pg_backend_pid()")).rowCount === 1, 10_000)
  // Its answer is lost in the black hole: the statement ends, the session holds the lock, idle.
  proxy.stall()
  await locker.query('COMMIT')
  const outcome = await Promise.race([migrating, sleep(10_000, 'still waiting')])
  t.type(outcome, Error, 'the silent server\'s migrate fails')
  t.ok(performance.now() - started < 8_000, 'soon after its deadline')
  // The next server (direct, with no proxy) gets the lock once the silent one's session has ended itself.
  const next = performance.now()
  const later = await Promise.race([migrate(pool(t, url), { schema: SCHEMA }).then(() => 'migrated', (err: Error) => err), sleep(15_000, 'still waiting')])
  t.equal(later, 'migrated', 'a later boot migrates')
  t.ok(performance.now() - next < 10_000, 'within the dead session\'s idle bound, not TCP keepalive\'s hours')
})

t.test('on a PostgreSQL without idle_session_timeout (before 14) the migrations apply and the connection is reset as it was', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  // This server has the setting: a client that names one no server has stands in for an older one (42704 on SET and RESET alike).
  const client = new pg.Client(connectionConfig({ url, schema: SCHEMA, max: 1, statementTimeoutMs: 10_000 }))
  const query = client.query.bind(client) as (...args: unknown[]) => unknown
  const rename = (config: unknown): unknown => typeof config === 'object' && config !== null && typeof (config as { text?: unknown }).text === 'string'
    ? { ...config, text: (config as { text: string }).text.replaceAll('idle_session_timeout', 'idle_session_timeout_before_14') }
    : config
  client.query = ((config: unknown, ...rest: unknown[]) => query(rename(config), ...rest)) as typeof client.query
  await client.connect()
  t.teardown(() => client.end())
  const settings = async (): Promise<unknown> => (await client.query("SELECT current_setting('idle_in_transaction_session_timeout') AS idle, current_setting('statement_timeout') AS statement")).rows
  const before = await settings()
  t.same((await migrate(client, { schema: SCHEMA })).applied, ALL, 'applied')
  t.same((await migrate(client, { schema: SCHEMA })).applied, [], 'and again: nothing left')
  t.same(await settings(), before, 'the connection\'s settings as they were')
})

/** A session that read `sessions` in a REPEATABLE READ transaction and keeps it open (what pg_dump does for a whole dump): it holds a read lock on the table. */
async function reader (t: Test, url: string): Promise<pg.PoolClient> {
  const client = await pool(t, url).connect()
  t.teardown(() => { client.release(true) })
  await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ')
  await client.query('SELECT count(*) FROM sessions')
  return client
}

t.test('a migration whose table is locked (a pg_dump) steps back and tries again: other statements on the table go on, and the boot completes once the lock is gone', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const other = pool(t, url, SCHEMA, 5_000)
  t.same((await migrate(other, { schema: SCHEMA, dir: await migrationsDir(t, {}, 4) })).version, 4)
  const dump = await reader(t, url)
  // A replica of the next version boots: migration 5 alters sessions, which needs the table to itself.
  const waits: number[] = []
  const store = new PostgresSessionStore({ settings: { url, schema: SCHEMA, max: 4, statementTimeoutMs: 5_000 }, replicaId: 'new', onMigrationLockWait: (wait) => { waits.push(wait.version) } })
  t.teardown(() => store.close())
  let booted = false
  const booting = store.init({ deadline: performance.now() + 60_000 }).finally(() => { booted = true })
  booting.catch(noop)
  try {
    // Its first try is under way, or has stepped back already.
    await sleep(1_200)
    // The other replicas keep serving meanwhile: their statements wait at most for one try's lock_timeout.
    for (let i = 0; i < 6; i++) {
      for (const sql of ['SELECT count(*) FROM sessions WHERE archived_at IS NULL', 'UPDATE sessions SET version = version + 1 WHERE session_id = \'x\'']) {
        const started = performance.now()
        const outcome = await other.query(sql).then(() => 'done', (err: Error) => err.message)
        const ms = Math.round(performance.now() - started)
        t.ok(outcome === 'done' && ms < 2_500, `${sql.split(' ')[0] ?? ''} #${i + 1}: ${outcome} in ${ms} ms`)
      }
      await sleep(400)
    }
    t.notOk(booted, 'the boot waits while the lock is held')
    t.ok(waits.length >= 2 && waits.every((version) => version === 5), `each step back was told (${waits.length}), all for migration 5`)
  } finally {
    // Whatever failed above: the boot must not stay queued behind the reader.
    await dump.query('COMMIT')
  }
  t.same(await booting, { applied: ALL.filter((version) => version > 4), version: NEWEST }, 'once the reader ends, the boot completes')
  t.same(await recorded(other), ALL)
})

t.test('a connection cut while a migration waits for its table (57P01: a failover, a pooler restarting) is waited out as one before it: the boot completes', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const other = pool(t, url, SCHEMA, 5_000)
  await migrate(other, { schema: SCHEMA, dir: await migrationsDir(t, {}, NEWEST - 1) })
  const dump = await reader(t, url)
  const booting = buildApp({ readEnvironment: false, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_SCHEMA: SCHEMA, TASK_STORAGE_DIR: await tempDir(t), TASK_DB_CONNECT_TIMEOUT_MS: 30_000 } })
    .then(async (app) => {
      t.teardown(() => app.close())
      await app.ready()
      return app
    })
  booting.catch(noop)
  let cut = 0
  try {
    await waitFor('the migration to wait for the table', async () => {
      const { rows } = await other.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = \'Lock\' AND pid <> pg_backend_pid()')
      for (const { pid } of rows) cut += (await other.query('SELECT pg_terminate_backend($1)', [pid])).rowCount ?? 0
      return cut > 0
    }, 20_000)
  } finally {
    await dump.query('COMMIT')
  }
  await t.resolves(booting, 'the boot goes on and completes')
  t.same(await recorded(other), ALL, 'the migration applied once')
})

t.test('a migration whose table stays locked past the deadline is given up, applying nothing, and the advisory lock is free', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url)
  await migrate(db, { schema: SCHEMA, dir: await migrationsDir(t, {}, 4) })
  const dump = await reader(t, url)
  // Bounded here too: a migrate that waited on would hold this test until tap's timeout.
  const gaveUp = Promise.race([migrate(db, { schema: SCHEMA, deadline: performance.now() + 1_500 }), sleep(10_000).then(() => 'still waiting after 10 s')])
  const ended = gaveUp.then(noop, noop).then(async () => dump.query('COMMIT'))
  await t.rejects(gaveUp, { code: 'MIGRATION_FAILED', message: /^migration 5 \(cheaper_id_check\) could not lock its tables for \d+ ms: another session holds a lock on them/u })
  await ended
  t.same(await recorded(db), [1, 2, 3, 4], 'nothing applied')
  t.same((await migrate(db, { schema: SCHEMA, deadline: performance.now() + 1_500 })).applied, ALL.filter((version) => version > 4), 'applied once the reader ended')
})

t.test('an applied migration that changed since is refused', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url)
  await migrate(db, { schema: SCHEMA })
  await db.query(`UPDATE ${SCHEMA}.migrations SET checksum = 'edited' WHERE version = 1`)
  await t.rejects(migrate(db, { schema: SCHEMA }), MigrationError)
  await t.rejects(migrate(db, { schema: SCHEMA }), { message: /migration 1 \(sessions\) differs/u })
})

t.test('the database refuses every session id the service refuses, before and after migration 5 rewrote the check', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url)
  // A schema at migration 4 with a row in it, as a server of the version before left it.
  const before = await migrationsDir(t, {}, 4)
  t.same((await migrate(db, { schema: SCHEMA, dir: before })).version, 4)
  const insert = async (id: string): Promise<string> => {
    try {
      await db.query('INSERT INTO sessions (session_id, document, created_at, updated_at) VALUES ($1, \'{}\', now(), now())', [id])
      return 'stored'
    } catch (err) {
      return (err as { code?: string }).code ?? 'error'
    }
  }
  const refused = ['', 'x'.repeat(129), '../etc', 'a b', 'a/b', 'a.json', 'é', 'a\n', '\na', 'a\t', 'Ａ']
  const accepted = ['x'.repeat(128), 'A-z_09', '-', '_']
  const check = async (when: string): Promise<void> => {
    for (const id of refused) t.equal(await insert(id), '23514', `${when}: ${id.length > 20 ? `${id.length} characters` : JSON.stringify(id)} break the check`)
    for (const id of accepted) t.equal(await insert(id), 'stored', `${when}: ${id.length > 20 ? `${id.length} characters` : id} is stored`)
    await db.query('DELETE FROM sessions WHERE session_id = ANY($1)', [accepted])
  }
  t.equal(await insert('kept_from_4'), 'stored')
  await check('at migration 4')
  t.same((await migrate(db, { schema: SCHEMA })).applied, ALL.filter((version) => version > 4), 'the rest applies over existing rows')
  const { rows } = await db.query('SELECT session_id FROM sessions')
  t.same(rows, [{ session_id: 'kept_from_4' }], 'the row is still there')
  await check('after')
})

t.test('a bad schema name is refused, naming TASK_DB_SCHEMA, before anything is created', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url, 'public')
  for (const bad of ['', 'Taskvault', '1st', 'task-vault', 'a'.repeat(64), 'tv"; DROP TABLE x; --', 'pg_taskvault', 'täsk']) {
    await t.rejects(migrate(db, { schema: bad }), InvalidDatabaseSettingError, `'${bad}' by migrate`)
    await t.rejects(migrate(db, { schema: bad }), { code: 'INVALID_DATABASE_SETTING', message: /^TASK_DB_SCHEMA: /u })
    t.throws(() => createPool({ url, schema: bad, max: 1, statementTimeoutMs: 0 }), { message: /^TASK_DB_SCHEMA: /u }, `'${bad}' by createPool`)
  }
  const { rows } = await db.query('SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE \'pg\\_%\' AND nspname NOT IN (\'public\', \'information_schema\')')
  t.same(rows, [], 'no schema was created')

  const [flag, env] = await Promise.all([
    taskvault(['migrate', '--database-url', url, '--schema', 'Bad']),
    taskvault(['migrate', '--database-url', url], { env: { TASK_DB_SCHEMA: 'no-dashes' } })
  ])
  usageLine(t, flag, /^taskvault: --schema: 'Bad' is not a usable schema name/u)
  // From the environment it is a bad setting, refused with every other one before any command runs (exit 2).
  t.equal(env.code, 2, 'a bad TASK_DB_SCHEMA in the environment: exit 2, like every bad setting')
  t.match(env.stderr, /^taskvault: bad setting TASK_DB_SCHEMA/u, 'naming the setting')
  t.notMatch(env.stderr, /\n\s+at /u, 'no stack trace')
})

t.test('the tool refuses a bad URL (a usage error) and an unreachable database in one line, and never prints a password', async (t) => {
  // Port 1: nothing listens there, whereas a port found free may be handed to another test file's server meanwhile.
  const port = 1
  const [notUrl, mysql, down, missing] = await Promise.all([
    taskvault(['migrate', '--database-url', 'not a url']),
    taskvault(['migrate', '--database-url', 'mysql://root:hunter2@127.0.0.1/db']),
    taskvault(['migrate', '--database-url', `postgres://me:hunter2@127.0.0.1:${port}/db`]),
    taskvault(['migrate'])
  ])
  usageLine(t, notUrl, /^taskvault: --database-url: is not a URL/u)
  usageLine(t, mysql, /^taskvault: --database-url: must be a postgres:\/\/ URL, not mysql:\/\//u)
  oneLine(t, down, new RegExp(`^taskvault: cannot connect to the database at postgres://me:\\*\\*\\*@127\\.0\\.0\\.1:${port}/db \\(4 tries\\): connect ECONNREFUSED`, 'u'))
  for (const run of [notUrl, mysql, down]) t.notMatch(run.stderr, 'hunter2', 'no password')
  t.equal(missing.code, 2, 'no URL at all is a usage error')
  const help = await taskvault(['migrate', '--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, 'Usage: taskvault migrate --database-url URL [--schema NAME]')
  t.match(missing.stderr, 'missing --database-url (or DATABASE_URL)')
})

t.test('pool settings out of range are refused naming the setting', async (t) => {
  const url = 'postgres://127.0.0.1/db'
  t.throws(() => createPool({ url, schema: SCHEMA, max: 0, statementTimeoutMs: 0 }), { code: 'INVALID_DATABASE_SETTING', message: /^TASK_DB_POOL_MAX: /u })
  t.throws(() => createPool({ url, schema: SCHEMA, max: 1, statementTimeoutMs: -1 }), { message: /^TASK_DB_STATEMENT_TIMEOUT_MS: /u })
  t.throws(() => createPool({ url: 'http://127.0.0.1/db', schema: SCHEMA, max: 1, statementTimeoutMs: 0 }), { message: /^DATABASE_URL: must be a postgres:\/\/ URL/u })
})

t.test('redactUrl hides passwords', async (t) => {
  t.equal(redactUrl('postgres://me:hunter2@db.example:5432/tv'), 'postgres://me:***@db.example:5432/tv')
  t.equal(redactUrl('postgres://db.example/tv?user=me&password=hunter2'), 'postgres://db.example/tv?user=me&password=***')
  t.equal(redactUrl('postgres://me@db.example/tv'), 'postgres://me@db.example/tv', 'nothing to hide')
  t.equal(redactUrl('postgres://me:hunter2@[::1'), '(a malformed database URL)')
})

/** A session with what breaks lossy storage: unicode of every kind, extreme numbers, key order. */
function awkwardSession (id: string, resultBytes = 0): SessionFile {
  const task = (n: number, status: Task['status']): Task => ({
    id: `task_${n}_${Number.MAX_SAFE_INTEGER}`,
    instruction: `Grüße 日本語 שלום 👩‍👩‍👧 é (e + combining) \u2028\u2029 "quotes" \\back\\slashes \u0000\u001f tab\there ${n}`,
    task_type: 'Coding',
    status,
    result: status === 'Completed' ? `lone surrogate \ud800 ok; ${'x'.repeat(resultBytes)}` : null,
    error: status === 'Failed' ? 'boom 💥' : null,
    confidence: n === 1 ? 0.1 + 0.2 : 5e-324,
    created_at: '2025-11-04T08:00:00Z',
    started_at: '2025-11-04T08:00:05.123+02:00',
    completed_at: status === 'Pending' ? null : '2025-11-04T08:00:15.999Z',
    attempts: Number.MAX_SAFE_INTEGER,
    interruptions: 0
  })
  return {
    session_id: id,
    created_at: '2025-11-04T08:00:00Z',
    updated_at: '2025-11-04T08:15:30.000Z',
    session: { session_id: id, tasks: [task(1, 'Completed'), task(2, 'Failed'), task(3, 'Pending')], current_index: 2 },
    background_run: { started_at: '2025-11-04T08:15:00Z' }
  }
}

t.test('the document column gives back the very bytes the file store writes', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = pool(t, url)
  await migrate(db, { schema: SCHEMA })
  const keyring = Keyring.parse(`k1:${randomBytes(32).toString('base64')}`)
  const cases: Array<[string, SessionFile, Keyring | null]> = [
    ['plain', awkwardSession('plain'), null],
    ['large (serialized in slices)', awkwardSession('large', 1_200_000), null],
    ['sealed', awkwardSession('sealed'), keyring]
  ]
  for (const [label, file, ring] of cases) {
    const data = await serializeSessionFile(file, 2, Infinity, ring)
    await db.query(`INSERT INTO sessions (session_id, document, sealed_kid, created_at, updated_at)
      VALUES ($1, $2::json, $3, $4, $5)`, [file.session_id, data.toString('utf8'), ring?.activeKid ?? null, file.created_at, file.updated_at])
    const { rows } = await db.query('SELECT document::text AS document, bytes FROM sessions WHERE session_id = $1', [file.session_id])
    const back = Buffer.from(rows[0].document as string, 'utf8')
    t.ok(back.equals(data), `${label}: byte for byte (${data.length} bytes)`)
    t.equal(rows[0].bytes, data.length, `${label}: bytes column`)
    t.same(parseSessionFile(`${file.session_id}.json`, back.toString('utf8'), file.session_id, ring), file, `${label}: reads back as the same session`)
  }
  // Why not jsonb: it refuses what JSON.stringify may write (\u0000, a lone surrogate), and
  // hands back another text for the rest (keys re-ordered, layout and numbers normalised).
  const plain = (await serializeSessionFile(awkwardSession('plain'), 2, Infinity)).toString('utf8')
  await t.rejects(db.query('SELECT $1::text::jsonb', [plain]), { code: /^22P0[25]$/u }, 'jsonb refuses the document')
  const tame = plain.replaceAll('\\u0000', '').replaceAll('\\ud800', '')
  const { rows } = await db.query('SELECT $1::text::json::text = $1::text AS json_same, $1::text::jsonb::text = $1::text AS jsonb_same', [tame])
  t.same(rows, [{ json_same: true, jsonb_same: false }], 'jsonb changes the text')
})

t.test('through the TCP proxy: queries pass, a drop fails fast, a stall times out, and pass() recovers', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const target = new URL(ADMIN_URL)
  const proxy = await startProxy(Number(target.port === '' ? 5432 : target.port), target.hostname)
  t.teardown(() => proxy.close())
  const proxied = new URL(url)
  proxied.hostname = '127.0.0.1'
  proxied.port = String(proxy.port)
  const db = createPool({ url: proxied.toString(), schema: 'public', max: 2, statementTimeoutMs: 500, connectTimeoutMs: 1_000 })
  t.teardown(() => db.end())
  const timed = async (query: Promise<unknown>): Promise<{ ok: boolean, ms: number, error: unknown }> => {
    const start = Date.now()
    try {
      await query
      return { ok: true, ms: Date.now() - start, error: null }
    } catch (error) {
      return { ok: false, ms: Date.now() - start, error }
    }
  }

  t.same((await db.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'passes')
  const slow = await timed(db.query('SELECT pg_sleep(5)'))
  t.notOk(slow.ok, 'a statement past statement_timeout fails')
  t.equal((slow.error as { code?: string }).code, '57014', 'cancelled by the server (query_canceled)')
  t.ok(slow.ms < 2_000, `within the timeout (${slow.ms} ms)`)

  proxy.drop()
  const dropped = await timed(db.query('SELECT 1'))
  t.notOk(dropped.ok, 'after drop(), a query fails')
  t.ok(dropped.ms < 1_000, `fast (${dropped.ms} ms)`)
  t.equal(proxy.connections(), 0, 'no connection is left open')

  proxy.pass()
  t.same((await db.query('SELECT 2 AS two')).rows, [{ two: 2 }], 'passes again')

  proxy.stall()
  const stalled = await timed(db.query('SELECT 3'))
  t.notOk(stalled.ok, 'after stall(), a query fails rather than hanging')
  t.ok(stalled.ms < 3_000, `bounded by the timeouts (${stalled.ms} ms)`)
  // A new connection during the stall is accepted and held: the connect timeout ends it.
  const fresh = new pg.Client({ connectionString: proxied.toString(), connectionTimeoutMillis: 500 })
  fresh.on('error', noop)
  const connecting = await timed(fresh.connect())
  t.notOk(connecting.ok, 'connecting during a stall times out')
  await fresh.end().catch(noop)

  proxy.pass()
  t.same((await db.query('SELECT 4 AS four')).rows, [{ four: 4 }], 'recovers after pass()')
})
