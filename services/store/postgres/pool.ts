import { userInfo } from 'node:os'
import pg from 'pg'
import { noop } from '../../noop.js'
import { InvalidDatabaseSettingError } from '../../errors.js'
import { checkSchemaName, parseDatabaseUrl } from './database-url.js'
import { SYNCHRONOUS_COMMIT_ON } from './sessions-sql.js'

/**
 * Connection settings for the PostgreSQL store: one place that checks the settings and builds
 * pools, so the server and the command-line tool connect the same way.
 */

export interface PoolSettings {
  url: string
  schema: string
  max: number
  /** Server-side bound of every statement (statement_timeout); 0 for none. */
  statementTimeoutMs: number
  /** Bound on opening a connection. */
  connectTimeoutMs?: number
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000
/**
 * A query also gives up on the client this long after its statement_timeout: when the network
 * stalls, the server never sees the statement and cannot cancel it.
 */
const CLIENT_TIMEOUT_MARGIN_MS = 1_000

/** What a pg.Client or pg.Pool needs to connect with these settings. */
export function connectionConfig (settings: PoolSettings): pg.PoolConfig {
  const url = parseDatabaseUrl(settings.url)
  const schema = checkSchemaName(settings.schema)
  if (!Number.isInteger(settings.max) || settings.max < 1) throw new InvalidDatabaseSettingError('TASK_DB_POOL_MAX', `must be a whole number of connections, at least 1 (got ${settings.max})`)
  if (!Number.isFinite(settings.statementTimeoutMs) || settings.statementTimeoutMs < 0) {
    throw new InvalidDatabaseSettingError('TASK_DB_STATEMENT_TIMEOUT_MS', `must be a number of milliseconds, 0 for none (got ${settings.statementTimeoutMs})`)
  }
  // Set at connection start, so no query can run with another search_path or without the bound.
  // The URL's own `options` go first: for a repeated -c, PostgreSQL keeps the last. DateStyle ISO:
  // node-postgres reads timestamps only as ISO writes them (under `SQL, DMY` or German, as null).
  const own = `-c search_path=${schema} -c statement_timeout=${Math.floor(settings.statementTimeoutMs)} -c DateStyle=ISO`
  const given = url.searchParams.get('options')
  url.searchParams.delete('options')
  // A default the URL's options may override, so it goes before them. Parallel workers take longer
  // to start than they save on our statements (the /stats scan of 100,000 sessions: 30 ms alone,
  // 70 to 90 ms with two workers on the bench VM), and every replica would draw on the cluster's
  // shared max_worker_processes each time /stats is polled.
  const defaults = '-c max_parallel_workers_per_gather=0'
  // Like libpq (psql): no user in the URL nor in PGUSER means the operating-system user.
  // node-postgres would read $USER, which a service's environment often lacks.
  if (url.username === '' && (process.env.PGUSER ?? '') === '') url.username = osUser()
  return {
    connectionString: url.toString(),
    options: given === null || given.trim() === '' ? `${defaults} ${own}` : `${defaults} ${given} ${own}`,
    max: settings.max,
    connectionTimeoutMillis: settings.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    query_timeout: settings.statementTimeoutMs > 0 ? settings.statementTimeoutMs + CLIENT_TIMEOUT_MARGIN_MS : undefined,
    keepAlive: true,
    application_name: 'taskvault'
  }
}

function osUser (): string {
  try {
    return encodeURIComponent(userInfo().username)
  } catch {
    return ''
  }
}

/**
 * A pool for these settings. Errors of idle connections (the server restarted, the network
 * dropped) go to `onError`: unheard, the pool's 'error' event would end the process.
 *
 * Every connection turns synchronous_commit on (where the role or database has it off) before
 * the pool hands it out, whoever takes it: statements, migrations, a pass's lock (and the lease
 * keeper's connection, which openConnection sets up the same way). Not as a startup option: that would also override a
 * stronger setting of the role's (remote_apply). A connection where it fails is never handed out.
 */
export function createPool (settings: PoolSettings, onError: (err: Error) => void = noop): pg.Pool {
  const pool = new pg.Pool({ ...connectionConfig(settings), onConnect: durableCommits })
  pool.on('error', onError)
  return pool
}

/**
 * One connection outside any pool, set up as the pool's are (durable commits), for a holder that
 * must never wait behind the pool's statements: the lease keeper. `timeoutMs` bounds opening it;
 * `applicationName` tells it apart in pg_stat_activity.
 * Errors before the holder listens for them show as a rejection, never as an unheard 'error'.
 */
export async function openConnection (settings: PoolSettings, timeoutMs: number, applicationName: string): Promise<pg.Client> {
  const { max: _max, ...config } = connectionConfig(settings)
  // The settings' bound when tighter; 0 there means none (pg's meaning), so `timeoutMs` alone.
  const configured = config.connectionTimeoutMillis ?? 0
  const connectionTimeoutMillis = Math.max(1, configured > 0 ? Math.min(timeoutMs, configured) : timeoutMs)
  const client = new pg.Client({ ...config, connectionTimeoutMillis, application_name: applicationName })
  client.on('error', noop)
  try {
    await client.connect()
    await durableCommits(client, connectionTimeoutMillis)
  } catch (err) {
    await endConnection(client, connectionTimeoutMillis)
    throw err
  }
  return client
}

/**
 * Ends a connection of openConnection's; when the server does not answer within `timeoutMs` (a
 * half-open link would hold end() for minutes), its socket is destroyed.
 */
export async function endConnection (client: pg.Client, timeoutMs: number): Promise<void> {
  const timer = setTimeout(() => { client.connection.stream.destroy() }, timeoutMs)
  try {
    await client.end().catch(noop)
  } finally {
    clearTimeout(timer)
  }
}

async function durableCommits (client: pg.ClientBase, timeoutMs?: number): Promise<void> {
  // pg's Client.query honours a query's own query_timeout (its typings leave it out).
  const query: pg.QueryConfig & { query_timeout?: number } = { text: SYNCHRONOUS_COMMIT_ON, query_timeout: timeoutMs }
  await client.query(query)
}
