/** A pass (archiving, retention) run by one replica at a time. */
import type pg from 'pg'
import { TaskvaultError } from '../../errors.js'
import type { PassLock } from '../store.js'
import { noop } from '../../noop.js'
import { passLock, passWait } from './leases-sql.js'
import { storageError } from './pg-errors.js'

/** How a pass's lock is held and waited for. */
export interface PassLockTiming {
  /**
   * A holder silent this long (paused, frozen, cut off) loses the lock: the database ends its
   * idle transaction. A live holder says something every third of it.
   */
  idleMs: number
  /** How long to wait for another replica's pass to end; 0: not at all (null at once). */
  waitMs: number
}

/**
 * Holds a transaction-scoped advisory lock named after the pass and the schema for as long as
 * `run` takes: a replica whose connection dies lets go of it with the transaction, and so does
 * one that falls silent for `idleMs` (its process stopped, a frozen VM), so that passes move on
 * as runs do. Null when another replica's pass still held it after `waitMs`.
 */
export async function exclusively<T> (pool: pg.Pool, schema: string, pass: string, timing: PassLockTiming, run: (lock: PassLock) => Promise<T>): Promise<T | null> {
  let client: pg.PoolClient
  try {
    client = await pool.connect()
  } catch (err) {
    throw storageError(`starting the ${pass} pass`, err, false)
  }
  let broken: Error | undefined
  const onError = (err: Error): void => { broken ??= err }
  client.on('error', onError)
  let running = false
  let beat: NodeJS.Timeout | undefined
  const ping = async (): Promise<boolean> => {
    if (broken !== undefined) return false
    try {
      await client.query('SELECT 1')
    } catch (err) {
      broken ??= err instanceof Error ? err : new Error(String(err))
    }
    return broken === undefined
  }
  try {
    await client.query('BEGIN')
    // Idle between the pass's statements (they go on other connections): bounded, so a holder
    // that stops answering frees the lock, while the beat below keeps a live one's.
    await client.query(`SET LOCAL idle_in_transaction_session_timeout = ${Math.max(1, Math.ceil(timing.idleMs))}`)
    if (!await acquire(client, passKey(`${schema}.${pass}`), timing.waitMs)) return null
    beat = setInterval(() => { ping().catch(noop) }, Math.max(1, Math.floor(timing.idleMs / 3)))
    beat.unref()
    running = true
    return await run({ held: ping })
  } catch (err) {
    // What the pass threw goes on as it is (its statements fail typed; anything else is a
    // defect, not storage): only the lock's own statements fail as storage here.
    if (running || err instanceof TaskvaultError) throw err
    broken ??= err instanceof Error ? err : new Error(String(err))
    throw storageError(`running the ${pass} pass`, err, false)
  } finally {
    clearInterval(beat)
    await client.query('ROLLBACK').catch((err: Error) => { broken ??= err })
    client.removeListener('error', onError)
    client.release(broken)
  }
}

/** Takes the lock, waiting up to `waitMs` for its holder; false when it is still held then. */
async function acquire (client: pg.PoolClient, key: number, waitMs: number): Promise<boolean> {
  if (waitMs <= 0) {
    const { rows } = await client.query<{ locked: boolean }>(passLock(key))
    return rows[0]?.locked === true
  }
  const wait = Math.ceil(waitMs)
  // The wait is the lock's own timeout; the statement's bounds (server and client) sit past it.
  await client.query(`SET LOCAL lock_timeout = ${wait}`)
  await client.query(`SET LOCAL statement_timeout = ${wait + WAIT_MARGIN_MS}`)
  try {
    await client.query({ ...passWait(key), query_timeout: wait + 2 * WAIT_MARGIN_MS } as pg.QueryConfig)
    return true
  } catch (err) {
    if ((err as { code?: string }).code === LOCK_NOT_AVAILABLE) return false
    throw err
  }
}

/** SQLSTATE of a lock wait past lock_timeout. */
const LOCK_NOT_AVAILABLE = '55P03'
/** Between the lock's wait and the statement's bounds. */
const WAIT_MARGIN_MS = 5000

/** A pass's advisory lock key: a 31-bit hash of its name (FNV-1a). */
function passKey (name: string): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193)
  return (hash >>> 1)
}
