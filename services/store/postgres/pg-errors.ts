import { StorageError, TaskvaultError } from '../../errors.js'

/**
 * node-postgres's failures as the store contract's StorageError. Its cause is an errno-like
 * error of our own (never the driver's object, which may hold connection details): `code` is
 * the SQLSTATE when the server answered, the socket's errno when there was one, else EIO.
 */

/** SQLSTATEs that mean the disk or memory of the server is full: 507, like ENOSPC on a folder. */
const FULL_STATES = new Set(['53100', '53200', '53400'])

interface DriverError {
  code?: unknown
  message?: unknown
}

/**
 * Five characters of digits and capitals: an error the server sent. No class starts with E,
 * where the socket's errno codes do (EPIPE has five characters too).
 */
const SQLSTATE = /^(?!E)[0-9A-Z]{5}$/u

function sqlState (err: unknown): string | null {
  const code = (err as DriverError | null)?.code
  return typeof code === 'string' && SQLSTATE.test(code) ? code : null
}

/**
 * The connection is broken or its state unknown after this error: it must not go back to the
 * pool. Everything but an error the server answered on a live session: class 08 (connection
 * exception) and 57P0x (the server shut the session down) break it too.
 */
export function breaksConnection (err: unknown): boolean {
  const state = sqlState(err)
  return state === null || state.startsWith('08') || state.startsWith('57P')
}

/**
 * A statement this connection prepared no longer fits the schema (0A000, "cached plan must not
 * change result type": a newer replica's migration changed the type of a column it returns). The
 * statement did not run; the connection must be dropped, as a new one prepares it anew. Our
 * statements are fixed, so no other unsupported feature can answer them once the migrations ran.
 */
export function stalePlan (err: unknown): boolean {
  return sqlState(err) === '0A000'
}

/**
 * A failure that may pass when tried again: the connection's (breaksConnection), the server's
 * resources or load (class 53: too many connections; the full states, out of disk or memory,
 * are a StorageError's `full`, which callers judge first; 58: its I/O), a conflict
 * with other sessions (40: serialization, deadlock; 55P03: a lock not granted), a statement
 * cancelled (57014: a timeout behind a lock). Not an answer that comes again every time: a
 * column missing (42), bad data (22, 23), a feature or a bug of the server (0A, XX).
 */
export function mayPass (err: unknown): boolean {
  const state = sqlState(err)
  return breaksConnection(err) || /^(40|53|57|58)/u.test(state ?? '') || state === '55P03'
}

/**
 * An answer no wait changes: the schema or the role's rights are not what taskvault needs (class 42:
 * permission denied, a table or column missing). A database not created yet (3D000), a password
 * refused while a secret rotates (28) or a standby read-only in a failover (25) may pass: not these.
 */
export function lasting (err: unknown): boolean {
  return sqlState(err)?.startsWith('42') === true
}

/**
 * A fault of the program, or of an object a host passed in, rather than of the database: trying
 * again cannot help, and reporting it as an unreachable database would send one looking at the network.
 */
export function programmingError (err: unknown): boolean {
  return err instanceof TypeError || err instanceof ReferenceError || err instanceof RangeError
}

/** `user:password@` in anything URL-like, for messages that quote a connection string. */
const CREDENTIALS = /\/\/[^/@\s]*@/gu

/** The errno-like error a StorageError is built from. */
export function errnoLike (err: unknown): NodeJS.ErrnoException {
  const state = sqlState(err)
  const raw = (err as DriverError | null)?.code
  const message = String((err as DriverError | null)?.message ?? err).replace(CREDENTIALS, '//***@')
  const code = state !== null ? (FULL_STATES.has(state) ? 'ENOSPC' : state) : typeof raw === 'string' && raw !== '' ? raw : 'EIO'
  return Object.assign(new Error(message), { code })
}

/**
 * A failed statement as a StorageError naming `operation` (TaskvaultErrors pass as they are).
 * `sent`: the statement may have reached the server; when the connection then failed, the
 * outcome is unknown (it may have committed) and the error says so (`uncertain`).
 */
export function storageError (operation: string, err: unknown, sent: boolean): TaskvaultError {
  if (err instanceof TaskvaultError) return err
  const cause = errnoLike(err)
  const error = new StorageError(operation, cause)
  error.uncertain = uncertain(err, sent)
  return error
}

/**
 * Whether a failed statement may have committed: it may have reached the server and the
 * connection then failed. An answer from the server (a constraint, a cancelled statement) means
 * it rolled back.
 */
export function uncertain (err: unknown, sent: boolean): boolean {
  return sent && !(err instanceof TaskvaultError) && breaksConnection(err)
}
