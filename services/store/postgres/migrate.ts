import { createHash } from 'node:crypto'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { noop } from '../../noop.js'
import { DatabaseTooNewError, MigrationError } from '../../errors.js'
import { checkSchemaName } from './database-url.js'

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
export async function migrate (db: pg.Pool | pg.ClientBase, options: { schema: string, dir?: string }): Promise<MigrateResult> {
  const schema = checkSchemaName(options.schema)
  const files = await readMigrations(options.dir)
  const key = migrationLockKey(schema)
  const pooled = isPool(db)
  const client = pooled ? await db.connect() : db
  // Set when the connection may hold the lock or a transaction still: a pooled one is then discarded.
  let broken: Error | undefined
  // A connection lost while checked out (a reset while waiting for another server's migration)
  // emits 'error' on the client, which nobody else hears: unheard, it would end the process. The
  // statement under way fails with it.
  const lost = (err: Error): void => { broken ??= err }
  client.on('error', lost)
  try {
    // A migration may take long (an index on many rows), and waiting for another server's
    // turn is not a fault: neither is bound by the pool's statement timeouts.
    await run(client, 'SET statement_timeout = 0')
    await run(client, 'SELECT pg_advisory_lock($1::bigint)', [key])
    let result: MigrateResult
    try {
      result = await migrateLocked(client, schema, files)
    } finally {
      await run(client, 'SELECT pg_advisory_unlock($1::bigint)', [key]).catch((err: Error) => { broken ??= err })
    }
    await run(client, 'RESET statement_timeout')
    if (broken !== undefined) throw broken
    return result
  } catch (err) {
    broken ??= err as Error
    throw err
  } finally {
    client.removeListener('error', lost)
    // Destroying the connection ends its session, which frees the lock whatever happened.
    if (pooled) (client as pg.PoolClient).release(broken)
    else if (broken !== undefined) await run(client, 'RESET statement_timeout').catch(noop)
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

async function migrateLocked (client: pg.ClientBase, schema: string, files: MigrationFile[]): Promise<MigrateResult> {
  const schemaId = pg.escapeIdentifier(schema)
  // CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when the schema exists;
  // a role given a schema made by an administrator has none.
  const found = await run(client, 'SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema])
  if (found.rowCount === 0) await run(client, `CREATE SCHEMA ${schemaId}`)
  await run(client, `CREATE TABLE IF NOT EXISTS ${schemaId}.migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
  )`)
  const rows = (await run(client, `SELECT version, name, checksum FROM ${schemaId}.migrations ORDER BY version`)).rows as Array<{ version: number, name: string, checksum: string }>
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
    await applyOne(client, schemaId, file)
    applied.push(file.version)
  }
  return { applied, version: files.at(-1)?.version ?? 0 }
}

async function applyOne (client: pg.ClientBase, schemaId: string, file: MigrationFile): Promise<void> {
  await run(client, 'BEGIN')
  try {
    await run(client, 'SELECT set_config(\'search_path\', $1, true)', [schemaId])
    // No parameters: sent as a simple query, so a file may hold many statements.
    await run(client, file.sql)
    await run(client, `INSERT INTO ${schemaId}.migrations (version, name, checksum) VALUES ($1, $2, $3)`, [file.version, file.name, file.checksum])
    await run(client, 'COMMIT')
  } catch (err) {
    await run(client, 'ROLLBACK').catch(noop)
    throw new MigrationError(`migration ${file.version} (${file.name}) failed: ${(err as Error).message}`, { cause: err })
  }
}

/** setTimeout's largest delay: node-postgres reads a 0 query_timeout as "the client's default". */
const NO_CLIENT_TIMEOUT = 2 ** 31 - 1

/** A query without the pool's client-side timeout. */
async function run (client: pg.ClientBase, text: string, values?: unknown[]): Promise<pg.QueryResult> {
  const config: pg.QueryConfig & { query_timeout: number } = { text, values, query_timeout: NO_CLIENT_TIMEOUT }
  return client.query(config)
}
