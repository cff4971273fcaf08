/** One statement on a pooled connection, and how it failed. */
import type pg from 'pg'
import { breaksConnection, stalePlan } from './pg-errors.js'

/** A statement's bounds on a pooled connection (see pooledQuery()). */
export interface Bound {
  statementMs: number
  wanted: () => boolean
}

/**
 * How a statement failed: `sent` when it may have reached the server (see storageError);
 * `backend`, the server process of a connection that broke meanwhile (see orphans.ts).
 */
export class QueryFailure {
  constructor (readonly cause: unknown, readonly sent: boolean, readonly backend: number | null = null) {}
}

/**
 * Runs a statement on a pooled connection; fails with a QueryFailure. A connection that
 * failed (or whose state is unknown) is destroyed rather than returned to the pool. `bound`:
 * not sent unless still wanted once a connection is free, and cancelled by the database past
 * its time (a transaction with its own statement_timeout, which a host's pool never keeps).
 */
export async function pooledQuery<R extends pg.QueryResultRow> (pool: pg.Pool, config: pg.QueryConfig, bound?: Bound): Promise<pg.QueryResult<R>> {
  // A stale plan did not run the statement, and its connection is dropped: tried again, on
  // another connection or a new one, until every stale one of the pool is gone.
  for (let tries = 1; ; tries++) {
    try {
      return await queryOnce<R>(pool, config, bound)
    } catch (err) {
      if (!(err instanceof QueryFailure) || !stalePlan(err.cause) || tries > pool.options.max) throw err
    }
  }
}

async function queryOnce<R extends pg.QueryResultRow> (pool: pg.Pool, config: pg.QueryConfig, bound?: Bound): Promise<pg.QueryResult<R>> {
  let client: pg.PoolClient
  try {
    client = await pool.connect()
  } catch (err) {
    throw new QueryFailure(err, false)
  }
  if (bound !== undefined && !bound.wanted()) {
    client.release()
    throw new QueryFailure(new Error('no longer wanted'), false)
  }
  let broken: Error | undefined
  // A checked-out client has no listener of the pool's: unheard, its 'error' (the connection
  // dropped) would end the process.
  const onError = (err: Error): void => { broken ??= err }
  client.on('error', onError)
  try {
    if (bound === undefined) return await client.query<R>(config)
    await client.query(`BEGIN; SET LOCAL statement_timeout = ${Math.max(1, Math.floor(bound.statementMs))}`)
    try {
      const result = await client.query<R>(config)
      await client.query('COMMIT')
      return result
    } catch (err) {
      // A connection in an unknown state is destroyed (its transaction dies with it), never asked for more.
      if (!breaksConnection(err)) await client.query('ROLLBACK').catch((failure: Error) => { broken ??= failure })
      throw err
    }
  } catch (err) {
    if (!breaksConnection(err)) {
      // Its prepared statements no longer fit the schema: each would fail again on it.
      if (stalePlan(err)) broken ??= err as Error
      throw new QueryFailure(err, true)
    }
    broken ??= err instanceof Error ? err : new Error(String(err))
    throw new QueryFailure(err, true, backendOf(client))
  } finally {
    client.removeListener('error', onError)
    client.release(broken)
  }
}

/** The server process a connection talks to (from its BackendKeyData), null when unknown. */
function backendOf (client: pg.PoolClient): number | null {
  const pid = (client as { processID?: unknown }).processID
  return typeof pid === 'number' && Number.isInteger(pid) && pid > 0 ? pid : null
}
