/** A pass (archiving, retention) run by one replica at a time. */
import type pg from 'pg'
import { TaskvaultError } from '../../errors.js'
import type { PassLock } from '../store.js'
import { passLock } from './leases-sql.js'
import { storageError } from './pg-errors.js'

/**
 * Holds a transaction-scoped advisory lock named after the pass and the schema for as long as
 * `run` takes: a replica whose connection dies lets go of it with the transaction.
 */
export async function exclusively<T> (pool: pg.Pool, schema: string, pass: string, run: (lock: PassLock) => Promise<T>): Promise<T | null> {
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
  try {
    await client.query('BEGIN')
    // Idle for the whole pass: a server-side idle timeout must not end it (and free the lock) midway.
    await client.query('SET LOCAL idle_in_transaction_session_timeout = 0')
    const { rows } = await client.query<{ locked: boolean }>(passLock(passKey(`${schema}.${pass}`)))
    if (rows[0]?.locked !== true) return null
    const lock: PassLock = {
      held: async () => {
        if (broken !== undefined) return false
        try {
          await client.query('SELECT 1')
        } catch (err) {
          broken ??= err instanceof Error ? err : new Error(String(err))
        }
        return broken === undefined
      }
    }
    running = true
    return await run(lock)
  } catch (err) {
    // What the pass threw goes on as it is (its statements fail typed; anything else is a
    // defect, not storage): only the lock's own statements fail as storage here.
    if (running || err instanceof TaskvaultError) throw err
    broken ??= err instanceof Error ? err : new Error(String(err))
    throw storageError(`running the ${pass} pass`, err, false)
  } finally {
    await client.query('ROLLBACK').catch((err: Error) => { broken ??= err })
    client.removeListener('error', onError)
    client.release(broken)
  }
}

/** A pass's advisory lock key: a 31-bit hash of its name (FNV-1a). */
function passKey (name: string): number {
  let hash = 0x811c9dc5
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193)
  return (hash >>> 1)
}
