import type pg from 'pg'
import type { Config } from '../schemas/config.js'
import { BadSettingError, DatabaseUnavailableError, InvalidDatabaseSettingError, TaskvaultError } from '../services/errors.js'
import { noop } from '../services/noop.js'
import type { Keyring } from '../services/store/keyring.js'
import { errnoLike } from '../services/store/postgres/pg-errors.js'
import { checkSchemaName, parseDatabaseUrl, redactUrl } from '../services/store/postgres/database-url.js'
import type { PoolSettings } from '../services/store/postgres/pool.js'
import type { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { SYNCHRONOUS_COMMIT_ON } from '../services/store/postgres/sessions-sql.js'
import type { SessionStore } from '../services/store/store.js'
import { CommandFailedError, UsageError, type OptionSpecs, type ParsedCommand } from './args.js'
import type { CommandContext } from './command.js'
import { archiveFolder, storageDir, withWriteLock } from './folder.js'

/**
 * Which store a command works on: the storage folder, or with `--database-url` the PostgreSQL
 * store. One choice for every command (withStore), so `validate`, `stats`, `archive` and
 * `prune` give the same answers on a folder and on the database that holds the same sessions.
 * The pg driver is loaded only when a database is named: commands on a folder start faster.
 */

/** The options of every command that can work on a database instead of a folder. */
export const DATABASE_OPTIONS: OptionSpecs = {
  'database-url': { type: 'string' },
  schema: { type: 'string' }
}

export const DATABASE_HELP = `  --database-url URL  work on the PostgreSQL store at URL instead of a folder (its password is never printed)
  --schema NAME       the schema that holds taskvault's tables (default TASK_DB_SCHEMA, else taskvault)`

/** A command's opening for a connection: bounded, so an unreachable host fails in seconds. */
const CONNECT_TIMEOUT_MS = 5_000

export interface DatabaseTarget {
  url: string
  schema: string
  /** The URL with its password replaced by ***: the only form ever printed. */
  where: string
}

/** In a PostgreSQL server's environment (TASK_STORE=postgres, a pod's shell) with neither a folder nor --database-url given. */
function inDatabaseServer (args: ParsedCommand, settings: Config): boolean {
  return settings.TASK_STORE === 'postgres' && args.positionals.length === 0 && args.values['database-url'] === undefined
}

/**
 * For the commands that read (stats, validate) or are safe beside running servers (seal): the
 * database a PostgreSQL server's environment names, as if given --database-url, rather than the
 * empty folder beside that server; else what the command line names (databaseTarget).
 */
export function readTarget (args: ParsedCommand, settings: Config): DatabaseTarget | null {
  if (!inDatabaseServer(args, settings)) return databaseTarget(args, settings)
  if (settings.DATABASE_URL === '') throw new UsageError('TASK_STORE=postgres and DATABASE_URL is not set: give --database-url URL (or a folder)')
  return databaseTarget(args, settings, true)
}

/**
 * For the commands that work on a folder, or change a database without the servers' leases
 * (archive, prune, restore, backup): refused in a PostgreSQL server's environment unless their
 * target is `named`, rather than working on the empty folder beside that server, or on its live database.
 */
export function assertTargetNamed (settings: Config, named: boolean, instead: string): void {
  if (settings.TASK_STORE === 'postgres' && !named) throw new UsageError(`TASK_STORE=postgres: the sessions are in the database, not in a folder here; ${instead}`)
}

/** The database a command that only works on one names: `--database-url`, else DATABASE_URL (export, import, migrate). */
export function requiredDatabase (args: ParsedCommand, settings: Config): DatabaseTarget {
  const target = databaseTarget(args, settings, true)
  if (target === null) throw new UsageError('missing --database-url (or DATABASE_URL)')
  return target
}

/**
 * The database the command line names: `--database-url`, else (when `fallback`) DATABASE_URL.
 * null: no database named, use the folder.
 */
export function databaseTarget (args: ParsedCommand, settings: Config, fallback = false): DatabaseTarget | null {
  const flagUrl = args.values['database-url'] as string | undefined
  const flagSchema = args.values.schema as string | undefined
  const url = flagUrl ?? (fallback && settings.DATABASE_URL !== '' ? settings.DATABASE_URL : undefined)
  if (url === undefined) {
    if (flagSchema !== undefined) throw new UsageError('--schema needs --database-url')
    return null
  }
  if (url === '') throw new UsageError('--database-url is empty')
  asUsage(flagUrl !== undefined, () => parseDatabaseUrl(url, flagUrl === undefined ? 'DATABASE_URL' : '--database-url'))
  const schema = asUsage(flagSchema !== undefined, () => checkSchemaName(flagSchema ?? settings.TASK_DB_SCHEMA, flagSchema === undefined ? 'TASK_DB_SCHEMA' : '--schema'))
  return { url, schema, where: redactUrl(url) }
}

/**
 * A malformed URL or schema name is a usage error (exit 2) like any other bad value: of a flag
 * (with the pointer to --help), or of a setting (DATABASE_URL, TASK_DB_SCHEMA).
 */
function asUsage<T> (fromFlag: boolean, check: () => T): T {
  try {
    return check()
  } catch (err) {
    if (!(err instanceof InvalidDatabaseSettingError)) throw err
    throw fromFlag ? new UsageError(err.message) : new BadSettingError(err.message)
  }
}

function poolSettings (target: DatabaseTarget, settings: Config, max: number): PoolSettings {
  return { url: target.url, schema: target.schema, max, statementTimeoutMs: settings.TASK_DB_STATEMENT_TIMEOUT_MS, connectTimeoutMs: CONNECT_TIMEOUT_MS }
}

/**
 * The PostgreSQL store, initialised (which applies missing migrations and checks commits are
 * durable). `mustExist`: a schema that has never been migrated is an error rather than a new,
 * empty one (a typo in the URL or the schema must not read as "no sessions").
 */
export async function openDatabaseStore (target: DatabaseTarget, settings: Config, keyring: Keyring | null, mustExist: boolean): Promise<PostgresSessionStore> {
  if (mustExist) await assertSchema(target, settings)
  const { PostgresSessionStore } = await import('../services/store/postgres/postgres-store.js')
  const store = new PostgresSessionStore({ settings: poolSettings(target, settings, 2), keyring, maxSessionBytes: settings.TASK_MAX_SESSION_BYTES })
  try {
    await store.init()
  } catch (err) {
    await store.close().catch(noop)
    throw err
  }
  return store
}

/** One connection of the command's own (for export and import), durable commits on. */
export async function connectDatabase (target: DatabaseTarget, settings: Config): Promise<pg.Client> {
  const [{ default: pg }, { connectionConfig }] = await Promise.all([import('pg'), import('../services/store/postgres/pool.js')])
  const client = new pg.Client(connectionConfig(poolSettings(target, settings, 1)))
  // An error after connecting (the server going away) must not end the process unheard.
  client.on('error', noop)
  try {
    await client.connect()
    await client.query(SYNCHRONOUS_COMMIT_ON)
  } catch (err) {
    await client.end().catch(noop)
    throw unavailable(target, err)
  }
  return client
}

async function assertSchema (target: DatabaseTarget, settings: Config): Promise<void> {
  const client = await connectDatabase(target, settings)
  try {
    const { rows } = await client.query<{ found: string | null }>('SELECT to_regclass(format(\'%I.migrations\', $1::text))::text AS found', [target.schema])
    if (rows[0]?.found === null || rows[0] === undefined) {
      throw new CommandFailedError(`${target.where} has no taskvault schema '${target.schema}' (nothing migrated there yet); check the URL and --schema, or run 'taskvault migrate'`)
    }
  } catch (err) {
    if (err instanceof CommandFailedError) throw err
    throw unavailable(target, err)
  } finally {
    await client.end().catch(noop)
  }
}

/** A failure to reach or use the database, in one line without the password. */
export function unavailable (target: DatabaseTarget, err: unknown): DatabaseUnavailableError {
  const cause = errnoLike(err)
  const reason = cause.message !== '' ? cause.message : ((err as Partial<AggregateError>).errors?.[0] as Error | undefined)?.message ?? cause.code ?? 'failed'
  return new DatabaseUnavailableError(`cannot use the database at ${target.where}: ${reason.split('\n')[0] ?? ''}`, { cause })
}

/**
 * Runs `work` on the store `target` names (databaseTarget, readTarget): the PostgreSQL store
 * (no lock: stop servers on that database first), else (null) the folder's file store holding
 * its single-writer lock. `where` is what the command prints for it.
 */
export async function withStore<R> (args: ParsedCommand, { settings, keyring }: CommandContext, target: DatabaseTarget | null, work: (store: SessionStore, where: string, target: DatabaseTarget | null) => Promise<R>): Promise<R> {
  if (target === null) {
    const dir = storageDir(args.positionals[0], settings)
    await archiveFolder(dir)
    return withWriteLock(dir, settings, keyring, false, async (store) => work(store, dir, null))
  }
  if (args.positionals.length > 0) throw new UsageError(`give a folder or --database-url, not both (got '${args.positionals[0] ?? ''}')`)
  const store = await openDatabaseStore(target, settings, keyring, true)
  try {
    return await work(store, `${target.where} (schema ${target.schema})`, target)
  } finally {
    await store.close().catch(noop)
  }
}

/**
 * Runs `work` on a connection of the command's own, after the store's init has brought the
 * schema up to date (so the rows have the columns this taskvault knows). For what the store
 * contract has no method for: every stored copy as it is (validate, export), exact bytes (import).
 */
export async function withDatabase<R> (target: DatabaseTarget, settings: Config, keyring: Keyring | null, mustExist: boolean, work: (client: pg.Client) => Promise<R>): Promise<R> {
  await (await openDatabaseStore(target, settings, keyring, mustExist)).close()
  const client = await connectDatabase(target, settings)
  try {
    return await work(client)
  } catch (err) {
    // The database's failures in one line without the password; the folder's (export) as they are.
    if (err instanceof TaskvaultError || (err as NodeJS.ErrnoException).syscall !== undefined) throw err
    throw unavailable(target, err)
  } finally {
    await client.end().catch(noop)
  }
}
