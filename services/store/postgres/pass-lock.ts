/** A pass (archiving, retention) run by one replica at a time. */
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { TaskvaultError } from '../../errors.js'
import type { PassLock } from '../store.js'
import { noop } from '../../noop.js'
import { passLock } from './leases-sql.js'
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
  /** Ends the wait at once (a shutdown): null, as when the wait ran out. */
  stopped?: () => boolean
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
  // One ping at a time, shared by the beat and the pass's own asking: a connection runs one
  // statement at a time (pg queues a second, and will refuse it from pg 9).
  let pinging: Promise<boolean> | null = null
  const ping = async (): Promise<boolean> => {
    if (broken !== undefined) return false
    pinging ??= client.query('SELECT 1').then(() => broken === undefined, (err: unknown) => {
      broken ??= err instanceof Error ? err : new Error(String(err))
      return false
    }).finally(() => { pinging = null })
    return pinging
  }
  try {
    await client.query('BEGIN')
    // Idle between the pass's statements (they go on other connections): bounded, so a holder
    // that stops answering frees the lock, while the beat below keeps a live one's.
    await client.query(`SET LOCAL idle_in_transaction_session_timeout = ${Math.max(1, Math.ceil(timing.idleMs))}`)
    if (!await acquire(client, passKey(`${schema}.${pass}`), timing)) return null
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
    // A ping still under way goes first: the rollback is the connection's next statement.
    await pinging
    await client.query('ROLLBACK').catch((err: Error) => { broken ??= err })
    client.removeListener('error', onError)
    client.release(broken)
  }
}

/**
 * Takes the lock, asking again every PASS_POLL_MS for up to `waitMs` while another holds it;
 * false when it is still held then, or once `stopped` says so. A poll rather than a blocking
 * wait: a shutdown ends it between two polls, and no statement outlives its bounds.
 */
async function acquire (client: pg.PoolClient, key: number, { waitMs, stopped }: PassLockTiming): Promise<boolean> {
  const deadline = Date.now() + waitMs
  for (;;) {
    const { rows } = await client.query<{ locked: boolean }>(passLock(key))
    if (rows[0]?.locked === true) return true
    if (Date.now() >= deadline || stopped?.() === true) return false
    await sleep(Math.min(PASS_POLL_MS, Math.max(1, deadline - Date.now())))
    if (stopped?.() === true) return false
  }
}

/** How often a pass waiting for another replica's asks for the lock again. */
const PASS_POLL_MS = 200

/** A pass's advisory lock key: a 31-bit hash of its name (FNV-1a). */
function passKey (name: string): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193)
  return (hash >>> 1)
}
