import { createHash } from 'node:crypto'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { noop } from '../../noop.js'
import { DatabaseTooNewError, MigrationError } from '../../errors.js'
import { checkSchemaName } from './database-url.js'
import { mayPass } from './pg-errors.js'

/**
 * Brings a schema's tables up to the newest migration in `migrations/`. Every server runs it
 * at start and `taskvault migrate` runs it by hand; an advisory lock lets only one at a time
 * in, so servers starting together apply each migration once.
 */

/** The package's migrations/ folder (this file is dist/services/store/postgres/migrate.js). */
export const MIGRATIONS_DIR = fileURLToPath(new URL('../../../../migrations/', import.meta.url))

/** `001_sessions.sql`: the version, then a name. */
const FILE_NAME = /^(\d{3,9})_([a-z0-9_]+)\.sql$/u

export interface MigrationFile {
  version: number
  name: string
  checksum: string
  sql: string
}

/**
 * lock_timeout of each migration's transaction. A migration that waits for a table lock (held by
 * a pg_dump, a long transaction) queues every later statement on that table behind it, the
 * other replicas' too: this bounds how long they stall before it steps back and tries again.
 */
const MIGRATION_LOCK_TIMEOUT_MS = 1_000
/** The first wait before trying a migration that found its table locked again; it doubles up to MAX. */
const LOCK_RETRY_MS = 250
const LOCK_RETRY_MAX_MS = 5_000
/** How long a migration keeps trying for its table locks when the caller gives no deadline (TASK_DB_CONNECT_TIMEOUT_MS's default). */
const DEFAULT_LOCK_WAIT_MS = 60_000
/** lock_not_available: lock_timeout ran out. */
const LOCK_NOT_AVAILABLE = '55P03'

/** A migration that could not take its table locks in time, and is tried again after `retryInMs`. */
export interface MigrationLockWait {
  version: number
  name: string
  /** Since its first try. */
  waitedMs: number
  retryInMs: number
}

export interface MigrateOptions {
  schema: string
  dir?: string
  /**
   * performance.now() after which a migration that cannot take its table locks is given up
   * (MigrationError); by default a minute from the call.
   */
  deadline?: number
  /** Told each time a migration steps back because another session holds a lock on its tables. */
  onLockWait?: (wait: MigrationLockWait) => void
}

export interface MigrateResult {
  /** Versions applied by this call, in order; empty when the schema was up to date. */
  applied: number[]
  /** The schema's version afterwards. */
  version: number
}

/** The migration files of `dir`, oldest first. Anything there that looks like one but is misnamed is refused. */
export async function readMigrations (dir = MIGRATIONS_DIR): Promise<MigrationFile[]> {
  const files: MigrationFile[] = []
  for (const entry of (await readdir(dir)).sort()) {
    if (!entry.endsWith('.sql')) continue
    const match = FILE_NAME.exec(entry)
    if (match === null) throw new MigrationError(`${entry}: a migration is named <version>_<name>.sql, such as 001_sessions.sql`)
    const version = Number(match[1])
    if (version < 1) throw new MigrationError(`${entry}: versions start at 1`)
    if (files.some((file) => file.version === version)) throw new MigrationError(`${entry}: two migrations have version ${version}`)
    const sql = await readFile(join(dir, entry), 'utf8')
    files.push({ version, name: match[2] as string, checksum: checksum(sql), sql })
  }
  return files.sort((a, b) => a.version - b.version)
}

/** Line endings do not count: a checkout with CRLF holds the same migration. */
function checksum (sql: string): string {
  return createHash('sha256').update(sql.replaceAll('\r\n', '\n')).digest('hex')
}

/**
 * The advisory lock key of a schema: 64 bits of a hash of 'taskvault' and the schema, so
 * two schemas in one database migrate independently and other programs' keys are unlikely hit.
 */
export function migrationLockKey (schema: string): string {
  return createHash('sha256').update(`taskvault\0migrate\0${schema}`).digest().readBigInt64BE(0).toString()
}

/**
 * Applies the migrations of `dir` missing from `schema`, each in its own transaction, under a
 * session-level advisory lock on one connection (taken from `db` when it is a pool). Creates
 * the schema and its `migrations` table first when they are missing. Refuses a database that
 * holds a migration newer than the newest file, or one whose applied file has changed.
 */
export async function migrate (db: pg.Pool | pg.ClientBase, options: MigrateOptions): Promise<MigrateResult> {
  const deadline = options.deadline ?? performance.now() + DEFAULT_LOCK_WAIT_MS
  const schema = checkSchemaName(options.schema)
  const files = await readMigrations(options.dir)
  const key = migrationLockKey(schema)
  const pooled = isPool(db)
  const client = pooled ? await db.connect() : db
  // Set when the connection may hold the lock or a transaction still: a pooled one is then discarded.
  let broken: Error | undefined
  // What the end puts back: idle_session_timeout only where it exists (PostgreSQL 14 and later).
  let resets = 'RESET statement_timeout; RESET idle_in_transaction_session_timeout'
  // A connection lost while checked out (a reset while waiting for another server's migration)
  // emits 'error' on the client, which nobody else hears: unheard, it would end the process. The
  // statement under way fails with it.
  const lost = (err: Error): void => { broken ??= err }
  client.on('error', lost)
  try {
    // A migration may take long (an index on many rows), and waiting for another server's
    // turn is not a fault: neither is bound by the pool's statement timeouts.
    await run(client, 'SET statement_timeout = 0', [], deadline)
    resets = await releaseIfGone(client, deadline)
    await run(client, 'SELECT pg_advisory_lock($1::bigint)', [key])
    let result: MigrateResult
    try {
      result = await migrateLocked(client, schema, files, deadline, options.onLockWait)
    } finally {
      await run(client, 'SELECT pg_advisory_unlock($1::bigint)', [key], deadline).catch((err: Error) => { broken ??= err })
    }
    await run(client, resets, undefined, deadline)
    if (broken !== undefined) throw broken
    return result
  } catch (err) {
    broken ??= err as Error
    throw err
  } finally {
    client.removeListener('error', lost)
    // Destroying the connection ends its session, which frees the lock whatever happened.
    if (pooled) (client as pg.PoolClient).release(broken)
    else if (broken !== undefined) await run(client, resets, undefined, deadline).catch(noop)
  }
}

/**
 * A pool is anything to check a connection out of: a host's pool may come from another copy
 * of pg, or wrap one, so `instanceof pg.Pool` would take it for a connection. A connection is
 * a pg.Client of ours or one checked out of a pool (it has release()).
 */
function isPool (db: pg.Pool | pg.ClientBase): db is pg.Pool {
  return !(db instanceof pg.Client) && typeof (db as Partial<pg.PoolClient>).release !== 'function' && typeof db.connect === 'function'
}

async function migrateLocked (client: pg.ClientBase, schema: string, files: MigrationFile[], deadline: number, onLockWait?: (wait: MigrationLockWait) => void): Promise<MigrateResult> {
  const schemaId = pg.escapeIdentifier(schema)
  // CREATE SCHEMA and CREATE TABLE IF NOT EXISTS need the CREATE privilege even when what they
  // name exists; a role given a schema an administrator made and migrated has none (nor needs it).
  const found = await run(client, 'SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema], deadline)
  if (found.rowCount === 0) await run(client, `CREATE SCHEMA ${schemaId}`, [], deadline)
  const table = await run(client, "SELECT to_regclass(format('%I.migrations', $1::text)) IS NOT NULL AS found", [schema], deadline)
  if (!(table.rows[0] as { found: boolean }).found) {
    await run(client, `CREATE TABLE ${schemaId}.migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`, [], deadline)
  }
  return await migrateFrom(client, schemaId, files, deadline, onLockWait)
}

/** Applies the migrations the schema's `migrations` table does not list yet. */
async function migrateFrom (client: pg.ClientBase, schemaId: string, files: MigrationFile[], deadline: number, onLockWait?: (wait: MigrationLockWait) => void): Promise<MigrateResult> {
  const rows = (await run(client, `SELECT version, name, checksum FROM ${schemaId}.migrations ORDER BY version`, [], deadline)).rows as Array<{ version: number, name: string, checksum: string }>
  const known = files.at(-1)?.version ?? 0
  const newest = rows.at(-1)?.version ?? 0
  if (newest > known) throw new DatabaseTooNewError(newest, known)
  const done = new Set<number>()
  for (const row of rows) {
    const file = files.find((candidate) => candidate.version === row.version)
    if (file === undefined) throw new MigrationError(`database has migration ${row.version} (${row.name}), which this taskvault does not ship`)
    if (file.checksum !== row.checksum) {
      throw new MigrationError(`migration ${row.version} (${row.name}) differs from the one applied to the database; a migration must never change once released`)
    }
    done.add(row.version)
  }
  const applied: number[] = []
  for (const file of files) {
    if (done.has(file.version)) continue
    // Tried again until the deadline while another session holds a lock on its tables; the
    // advisory lock stays held, so no other server starts it meanwhile.
    const first = performance.now()
    for (let wait = LOCK_RETRY_MS; !await applyOne(client, schemaId, file, deadline); wait = Math.min(wait * 2, LOCK_RETRY_MAX_MS)) {
      const waitedMs = Math.round(performance.now() - first)
      const left = deadline - performance.now()
      if (left <= 0) {
        throw new MigrationError(`migration ${file.version} (${file.name}) could not lock its tables for ${waitedMs} ms: another session holds a lock on them ` +
          '(a pg_dump, a long transaction; see pg_locks); nothing was applied, start again once it ends')
      }
      const retryInMs = Math.round(Math.min(wait, left))
      onLockWait?.({ version: file.version, name: file.name, waitedMs, retryInMs })
      await sleep(retryInMs)
    }
    applied.push(file.version)
  }
  return { applied, version: files.at(-1)?.version ?? 0 }
}

/** Applies one migration in a transaction; false, with nothing applied, when a lock it needs was not granted within MIGRATION_LOCK_TIMEOUT_MS. */
async function applyOne (client: pg.ClientBase, schemaId: string, file: MigrationFile, deadline: number): Promise<boolean> {
  await run(client, 'BEGIN', [], deadline)
  try {
    await run(client, 'SELECT set_config(\'search_path\', $1, true), set_config(\'lock_timeout\', $2, true)', [schemaId, `${MIGRATION_LOCK_TIMEOUT_MS}ms`], deadline)
    // No parameters: sent as a simple query, so a file may hold many statements. Not bounded: an index on many rows takes its time.
    await run(client, file.sql)
    await run(client, `INSERT INTO ${schemaId}.migrations (version, name, checksum) VALUES ($1, $2, $3)`, [file.version, file.name, file.checksum], deadline)
    await run(client, 'COMMIT', [], deadline)
    return true
  } catch (err) {
    await run(client, 'ROLLBACK').catch(noop)
    if ((err as { code?: unknown }).code === LOCK_NOT_AVAILABLE) return false
    // A connection cut or a server restarting (57P01) is waited out like one before the migration: nothing was applied.
    if (mayPass(err)) throw err
    throw new MigrationError(`migration ${file.version} (${file.name}) failed: ${(err as Error).message}`, { cause: err })
  }
}

/** PostgreSQL's code for a setting it does not know (idle_session_timeout before 14). */
const UNDEFINED_SETTING = '42704'

/** setTimeout's largest delay: node-postgres reads a 0 query_timeout as "the client's default". */
const NO_CLIENT_TIMEOUT = 2 ** 31 - 1

/** The shortest client-side wait for a statement of the migrations' own bookkeeping, however near the deadline. */
const MIN_STATEMENT_WAIT_MS = 1000

/**
 * A query without the pool's client-side timeout. With `deadline` (performance.now()), one of
 * the bookkeeping statements: bounded by what is left of the boot's wait, so a connection gone
 * silent (a network black hole) fails the boot rather than hanging it; the lock's wait and a
 * migration's own SQL are not.
 */
async function run (client: pg.ClientBase, text: string, values?: unknown[], deadline?: number): Promise<pg.QueryResult> {
  const wait = deadline === undefined ? NO_CLIENT_TIMEOUT : Math.min(NO_CLIENT_TIMEOUT, Math.max(MIN_STATEMENT_WAIT_MS, Math.round(deadline - performance.now())))
  const config: pg.QueryConfig & { query_timeout: number } = { text, values: values?.length === 0 ? undefined : values, query_timeout: wait }
  return client.query(config)
}

/**
 * The session holding the migration lock must not outlive its server: a server gone without
 * closing its connection (killed behind a network black hole) would leave the lock held, and
 * every later boot waiting on it, until the database noticed (hours, with TCP keepalive's
 * defaults). So the session ends itself once idle for as long as the boot may wait: a migrating
 * server is never idle that long between two statements. Before PostgreSQL 14 only the
 * in-transaction bound exists. Resolves with the statement that resets what was set.
 */
async function releaseIfGone (client: pg.ClientBase, deadline: number): Promise<string> {
  const idleMs = Math.max(MIN_STATEMENT_WAIT_MS, Math.round(deadline - performance.now()))
  await run(client, `SET idle_in_transaction_session_timeout = ${idleMs}`, [], deadline)
  const known = await run(client, `SET idle_session_timeout = ${idleMs}`, [], deadline).then(() => true, (err: { code?: unknown }) => {
    if (err.code !== UNDEFINED_SETTING) throw err
    return false
  })
  // What the end puts back: only what was set (RESET of a setting this server lacks fails too).
  return `RESET statement_timeout; RESET idle_in_transaction_session_timeout${known ? '; RESET idle_session_timeout' : ''}`
}
