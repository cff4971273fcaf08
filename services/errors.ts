/**
 * Domain errors. Services throw these; each `code` maps to an HTTP status once, in
 * STATUS_BY_CODE below (which must name every code), and every error carries its status as
 * `statusCode`: Fastify's own error handler then answers a host that calls the services from
 * its own routes as taskvault's routes answer (http/error-handler.ts writes those).
 */
export const ERROR_CODES = [
  'SESSION_NOT_FOUND', 'NO_PENDING_TASK', 'SESSION_BUSY', 'TASK_NOT_FOUND', 'TASK_NOT_FAILED', 'NOT_RUNNING', 'CANCELLED',
  'IDEMPOTENCY_KEY_REUSED', 'INVALID_INSTRUCTIONS', 'INVALID_SESSION_ID', 'LIMIT_EXCEEDED', 'SESSION_LIMIT', 'TOO_MANY_STREAMS', 'TOO_MANY_BACKUPS',
  'SHUTTING_DOWN', 'NOT_READY', 'STORAGE_UNAVAILABLE', 'STORAGE_FULL', 'LOCK_LOST', 'STORAGE_LOCKED', 'ENCRYPTION_KEY_UNAVAILABLE',
  'INVALID_SESSION_STATE', 'CORRUPT_SESSION_FILE', 'FOREIGN_STORAGE_FOLDER', 'INVALID_ARCHIVE', 'AGENT_FAILED',
  'INVALID_OPTIONS', 'INVALID_AGENT_CONFIG', 'INVALID_ENCRYPTION_KEYS', 'INVALID_API_KEYS', 'INVALID_LOCK_SETTINGS', 'USAGE', 'FAILED',
  'INVALID_DATABASE_SETTING', 'DATABASE_TOO_NEW', 'MIGRATION_FAILED', 'DATABASE_UNAVAILABLE',
  'VERSION_CONFLICT', 'SESSION_ID_CASE_CONFLICT', 'PASS_BUSY', 'LEASE_LOST', 'REPLICA_ID_IN_USE', 'REPLICA_ID_TAKEN',
  'UNSUPPORTED_TRANSFER_ENCODING'
] as const
export type ErrorCode = (typeof ERROR_CODES)[number]

/** 500: the error stops a boot or a CLI command, or is a bug, and never answers a client's request. */
const STATUS_BY_CODE: Readonly<Record<ErrorCode, number>> = {
  SESSION_NOT_FOUND: 404,
  NO_PENDING_TASK: 409,
  SESSION_BUSY: 409,
  NOT_RUNNING: 409,
  CANCELLED: 409,
  TASK_NOT_FOUND: 404,
  TASK_NOT_FAILED: 409,
  TOO_MANY_STREAMS: 503,
  TOO_MANY_BACKUPS: 503,
  IDEMPOTENCY_KEY_REUSED: 422,
  INVALID_INSTRUCTIONS: 400,
  INVALID_SESSION_ID: 400,
  LIMIT_EXCEEDED: 400,
  SESSION_LIMIT: 507,
  SHUTTING_DOWN: 503,
  NOT_READY: 503,
  STORAGE_UNAVAILABLE: 503,
  LOCK_LOST: 503,
  STORAGE_FULL: 507,
  ENCRYPTION_KEY_UNAVAILABLE: 503,
  STORAGE_LOCKED: 500,
  INVALID_SESSION_STATE: 500,
  CORRUPT_SESSION_FILE: 500,
  FOREIGN_STORAGE_FOLDER: 500,
  INVALID_ARCHIVE: 500,
  AGENT_FAILED: 500,
  INVALID_OPTIONS: 500,
  INVALID_AGENT_CONFIG: 500,
  INVALID_ENCRYPTION_KEYS: 500,
  INVALID_API_KEYS: 500,
  INVALID_LOCK_SETTINGS: 500,
  USAGE: 500,
  FAILED: 500,
  INVALID_DATABASE_SETTING: 500,
  DATABASE_TOO_NEW: 500,
  MIGRATION_FAILED: 500,
  DATABASE_UNAVAILABLE: 503,
  VERSION_CONFLICT: 409,
  SESSION_ID_CASE_CONFLICT: 409,
  PASS_BUSY: 503,
  LEASE_LOST: 503,
  REPLICA_ID_IN_USE: 500,
  REPLICA_ID_TAKEN: 503,
  UNSUPPORTED_TRANSFER_ENCODING: 501
}

export class TaskvaultError extends Error {
  constructor (readonly code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
  }

  /** The HTTP status this error answers with. */
  get statusCode (): number {
    return STATUS_BY_CODE[this.code]
  }
}

export class SessionNotFoundError extends TaskvaultError {
  /** `archived`: it exists, archived, where only active sessions are taken (execute, cancel). */
  constructor (sessionId: string, readonly archived = false) {
    super('SESSION_NOT_FOUND', archived
      ? `session '${sessionId}' is archived: it runs nothing until it is brought back, by a create that adds tasks to it or a retry of its failed tasks`
      : `session '${sessionId}' not found`)
  }
}

export class NoPendingTaskError extends TaskvaultError {
  constructor (sessionId: string) {
    super('NO_PENDING_TASK', `session '${sessionId}' has no pending task`)
  }
}

export class SessionBusyError extends TaskvaultError {
  /** The replica that runs it, when another one does (many replicas on PostgreSQL). */
  constructor (sessionId: string, readonly owner: string | null = null) {
    super('SESSION_BUSY', owner === null ? `session '${sessionId}' is already executing` : `session '${sessionId}' is executing on replica '${owner}'`)
  }
}

export class TaskNotFoundError extends TaskvaultError {
  constructor (sessionId: string, taskId: string) {
    super('TASK_NOT_FOUND', `session '${sessionId}' has no task '${taskId}'`)
  }
}

/** A retry of a task that is not Failed (or of a session with no failed task: `taskId` null). */
export class TaskNotFailedError extends TaskvaultError {
  constructor (sessionId: string, taskId: string | null, status: string | null) {
    super('TASK_NOT_FAILED', taskId === null ? `session '${sessionId}' has no failed task` : `task '${taskId}' of session '${sessionId}' is ${status}, not Failed`)
  }
}

/** TASK_EVENTS_MAX_CLIENTS streams are open already (or the server is shutting down). */
export class TooManyStreamsError extends TaskvaultError {
  constructor (max: number, onConnection = false) {
    super('TOO_MANY_STREAMS', onConnection
      ? 'an event stream is open on this connection already, and it never ends: open each stream on a connection of its own'
      : `${max} event streams are open already (TASK_EVENTS_MAX_CLIENTS); try again later`)
  }
}

/** TASK_BACKUP_MAX_CLIENTS backups are being sent already. */
export class TooManyBackupsError extends TaskvaultError {
  constructor (max: number) {
    super('TOO_MANY_BACKUPS', `${max} backup${max === 1 ? ' is' : 's are'} being sent already (TASK_BACKUP_MAX_CLIENTS); try again later`)
  }
}

export class InvalidInstructionsError extends TaskvaultError {
  constructor (message: string) {
    super('INVALID_INSTRUCTIONS', message)
  }
}

/** A body under a transfer coding Node does not take off (`gzip, chunked`): RFC 9112 answers 501. */
export class UnsupportedTransferEncodingError extends TaskvaultError {
  constructor (coding: string) {
    super('UNSUPPORTED_TRANSFER_ENCODING', `Not Implemented (Transfer-Encoding '${coding.slice(0, 40)}'): only chunked is taken; send plain JSON`)
  }
}

export class InvalidSessionIdError extends TaskvaultError {
  constructor (message: string) {
    super('INVALID_SESSION_ID', message)
  }
}

/** A request over one of the configured bounds (instruction size, tasks per session). */
export class LimitExceededError extends TaskvaultError {
  constructor (message: string) {
    super('LIMIT_EXCEEDED', message)
  }
}

/** An Idempotency-Key this session answered a create under, sent again with other tasks: nothing is added. */
export class IdempotencyKeyReusedError extends TaskvaultError {
  constructor (sessionId: string, key: string) {
    super('IDEMPOTENCY_KEY_REUSED', `session '${sessionId}' already answered a create under Idempotency-Key '${key}' with other tasks; a new request needs a new key`)
  }
}

/** A change would make the session's stored form larger than TASK_MAX_SESSION_BYTES. */
export class SessionTooLargeError extends LimitExceededError {
  constructor (readonly sessionId: string, readonly maxBytes: number) {
    super(Number.isFinite(maxBytes)
      ? `session '${sessionId}' would take more than ${maxBytes} bytes stored (TASK_MAX_SESSION_BYTES); nothing was changed`
      : `${sessionId} is too large to store; nothing was changed`)
  }
}

/** TASK_MAX_SESSIONS reached: no room for another session. */
export class SessionLimitError extends TaskvaultError {
  constructor (max: number) {
    super('SESSION_LIMIT', `the service holds its maximum of ${max} sessions (TASK_MAX_SESSIONS); delete or archive some first`)
  }
}

/**
 * The session moved between the archive and the active folder while a create was reading
 * its archived copy, again and again; the client may retry.
 */
export class StaleArchivedCopyError extends TaskvaultError {
  constructor (sessionId: string) {
    super('SESSION_BUSY', `session '${sessionId}' is being archived or brought back right now; try again`)
  }
}

/** A session a pass did not archive or delete because storage failed it (null: the pass itself stopped). */
export interface PassFailure {
  sessionId: string | null
  err: Error
}

/**
 * An archive or retention pass that storage failed for some sessions: answered as a save that
 * failed (507 when one failure was a full disk), naming what did happen, which is durable.
 */
export class ArchivePassError extends TaskvaultError {
  constructor (readonly failures: readonly PassFailure[], archived: number, deleted: number) {
    const [first] = failures as [PassFailure]
    const full = failures.some(({ err }) => err instanceof StorageError && err.full)
    const own = first.err instanceof TaskvaultError && first.err.statusCode >= 500 ? first.err.code : 'STORAGE_UNAVAILABLE'
    const sessions = failures.filter((failure) => failure.sessionId !== null)
    const stop = failures.find((failure) => failure.sessionId === null)
    const what = [
      ...sessions.slice(0, 1).map(({ sessionId, err }) => `could not move or delete ${sessions.length} session${sessions.length === 1 ? '' : 's'} ('${sessionId ?? ''}': ${err.message})`),
      ...(stop === undefined ? [] : [`stopped early (${stop.err.message})`])
    ]
    super(full ? 'STORAGE_FULL' : own, `the archive pass ${what.join(' and ')}; ${archived} archived and ${deleted} deleted meanwhile, durably`)
  }
}

/** What a pass counts as a failure: storage or the database failing, not a session another replica changed meanwhile. */
export function isPassFailure (err: unknown): boolean {
  return !(err instanceof TaskvaultError) || err.statusCode >= 500
}

export class ShuttingDownError extends TaskvaultError {
  constructor (message = 'the service is shutting down') {
    super('SHUTTING_DOWN', message)
  }
}

export class NotReadyError extends TaskvaultError {
  constructor () {
    super('NOT_READY', 'sessions are still being restored')
  }
}

/** A save, delete or move did not reach the disk. `full` is ENOSPC/EDQUOT. */
export class StorageError extends TaskvaultError {
  readonly full: boolean
  /**
   * The change may have reached the disk anyway (the rename happened, the folder fsync then
   * failed). Whoever holds the previous state should write it back.
   */
  uncertain = false
  constructor (operation: string, cause: NodeJS.ErrnoException) {
    const full = cause.code === 'ENOSPC' || cause.code === 'EDQUOT'
    super(full ? 'STORAGE_FULL' : 'STORAGE_UNAVAILABLE',
      `${operation} failed: ${full ? 'storage is full' : 'storage is unavailable'} (${cause.code ?? cause.message})`,
      { cause })
    this.full = full
  }
}

/**
 * An error in an operator's words: a storage error's message, made for clients, names only the
 * fault's code; its cause's own words follow (a column missing, permission denied, a path).
 */
export function operatorMessage (err: Error): string {
  const cause = err instanceof StorageError && err.cause instanceof Error ? err.cause.message : ''
  return cause === '' || err.message.includes(cause) ? err.message : `${err.message}: ${cause}`
}

/**
 * A session file the restore could not read nor move into `corrupt/`: left in place, it is never
 * overwritten, so a save of that id fails (503) until an operator moves it away.
 */
export class UnreadableFileInPlaceError extends StorageError {
  constructor (sessionId: string, fileName: string) {
    super(`saving session '${sessionId}'`, Object.assign(new Error('an unreadable file is in place'), { code: 'EEXIST' }))
    this.message = `session '${sessionId}' cannot be saved: its file ${fileName} could not be read at restore nor moved to corrupt/, ` +
      'and is never overwritten; move it out of the storage folder (or make corrupt/ writable) and try again'
  }
}

/** TASK_ENCRYPTION_KEYS is malformed. Stops the boot; the message never holds a key. */
export class InvalidEncryptionKeysError extends TaskvaultError {
  constructor (message: string) {
    super('INVALID_ENCRYPTION_KEYS', `TASK_ENCRYPTION_KEYS: ${message}`)
  }
}

/** TASK_API_KEYS names no usable key. Stops the boot; the message never holds a key. */
export class InvalidApiKeysError extends TaskvaultError {
  constructor (message: string) {
    super('INVALID_API_KEYS', `TASK_API_KEYS: ${message}`)
  }
}

/** A session sealed under a kid that is not configured. The file is left as it is: losing a key must not destroy data. */
export class KeyUnavailableError extends TaskvaultError {
  constructor (readonly kid: string, message = `a session is sealed under key '${kid}', which TASK_ENCRYPTION_KEYS does not hold`) {
    super('ENCRYPTION_KEY_UNAVAILABLE', message)
  }
}

/**
 * Another server took this one's storage lock (or something replaced the lock file): this one
 * refuses every write from then on, so neither overwrites the other. Reads still work; a
 * restart, once only one server uses the folder, clears it. `holder` is who holds it now.
 */
export class LockLostError extends TaskvaultError {
  /** `replaced`: the folder at the path is not the one this server locked (an unmounted volume, a folder made again). */
  constructor (readonly dir: string, readonly holder: { pid: number, host: string, since: string } | null, readonly replaced = false) {
    super('LOCK_LOST', replaced
      ? 'the storage folder is no longer the folder this server opened and locked (an unmounted volume, or a folder deleted and made again), ' +
        'so it saves nothing more (reads still work); put the folder back and restart it'
      : 'this server lost the storage lock of its folder to another writer and saves nothing more (reads still work); ' +
        'restart it once only one server uses the folder')
  }
}

/** TASK_STORAGE_DIR is a folder taskvault does not own (no `.taskvault` marker, files that are not sessions). Stops the boot. */
export class ForeignFolderError extends TaskvaultError {
  constructor (message: string) {
    super('FOREIGN_STORAGE_FOLDER', message)
  }
}

/** A session file that cannot be parsed or does not match the file schema. */
export class CorruptSessionFileError extends TaskvaultError {
  constructor (readonly fileName: string, readonly reason: string) {
    super('CORRUPT_SESSION_FILE', `${fileName}: ${reason}`)
  }
}

/**
 * A sealed file whose box does not open under the key of its kid: tampered with, or the key
 * configured under that kid is the wrong one. One file cannot tell which, so it is set aside
 * only where another file under the same kid opened (the restore, validate).
 */
export class SealNotOpenedError extends CorruptSessionFileError {
  constructor (fileName: string, readonly kid: string, detail = 'authentication failed') {
    super(fileName, detail)
  }

  /** The error for a copy read on its own, under a kid no other copy proved right: the key is the suspect, and the copy is left as it is. */
  keySuspected (shownAs: string): KeyUnavailableError {
    return new KeyUnavailableError(this.kid, `${shownAs} does not open under key '${this.kid}': TASK_ENCRYPTION_KEYS holds a different key under that kid, or the copy was changed. It was left in place; taskvault validate tells the two apart`)
  }
}

/** TASK_AGENTS (or the `agents` option) is not a valid agent configuration. Stops the boot. */
export class InvalidAgentConfigError extends TaskvaultError {
  constructor (message: string) {
    super('INVALID_AGENT_CONFIG', message)
  }
}

/**
 * A failed agent call. `transient` ones (network errors, timeouts, 5xx, 429) are retried up to
 * the agent's `max_attempts`; the others fail the task at once. Executors may throw it too.
 */
export class AgentError extends TaskvaultError {
  readonly transient: boolean
  /** The agent asked to wait this long before the next call (Retry-After). */
  readonly retryAfterMs: number | null
  constructor (message: string, options: { transient?: boolean, retryAfterMs?: number | null, cause?: unknown } = {}) {
    super('AGENT_FAILED', message, { cause: options.cause })
    this.transient = options.transient ?? false
    // An executor's value is checked like a Retry-After header's: one that is no wait at all is none.
    const after = options.retryAfterMs
    this.retryAfterMs = typeof after === 'number' && Number.isFinite(after) && after >= 0 ? after : null
  }
}

/**
 * A client stopped the session's execution (POST /cancel): the reason its calls are aborted
 * with, and the answer of an execute cancelled before it claimed a task (`sessionId` given).
 */
export class CancelledError extends TaskvaultError {
  constructor (sessionId?: string) {
    super('CANCELLED', sessionId === undefined ? 'cancelled' : `session '${sessionId}' was cancelled before it started a task; nothing ran`)
  }
}

/** POST /cancel on a session with nothing running. */
export class NotRunningError extends TaskvaultError {
  constructor (sessionId: string) {
    super('NOT_RUNNING', `session '${sessionId}' has no execution running`)
  }
}

/** A backup that is not a well-formed tar.gz (truncated, a bad checksum, an unsupported field). */
export class TarFormatError extends TaskvaultError {
  constructor (message: string) {
    super('INVALID_ARCHIVE', message)
  }
}

/** A plugin was registered with an option it does not take or a value out of range. */
export class InvalidOptionsError extends TaskvaultError {
  constructor (plugin: string, message: string, options?: ErrorOptions) {
    super('INVALID_OPTIONS', `${plugin}: ${message}`, options)
  }
}

/** Another live server holds the storage folder's lock. Stops the boot. */
export class StorageLockedError extends TaskvaultError {
  constructor (readonly dir: string, readonly holder: { pid: number, host: string, since: string }, detail = 'only one server may write to a folder at a time') {
    super('STORAGE_LOCKED', `storage folder ${dir} is in use by pid ${holder.pid} on host ${holder.host} since ${holder.since}; ${detail}`)
  }
}

/**
 * A lock of this host name from another pid namespace, not stale yet when the wait for it had to
 * end (the boot's deadline, or its owner closing). Stops the boot.
 */
export class LockNotStaleError extends StorageLockedError {
  constructor (dir: string, holder: { pid: number, host: string, since: string }, readonly staleInMs: number) {
    super(dir, holder, 'it was made in another pid namespace (an earlier life of this container, or another container of the same name) ' +
      `and is not stale yet: it goes stale (TASK_LOCK_STALE_MS) in ${staleInMs} ms`)
  }
}

/** TASK_LOCK_REFRESH_MS and TASK_LOCK_STALE_MS that do not fit together. Stops the boot. */
export class InvalidLockSettingsError extends TaskvaultError {
  constructor (refreshMs: number, staleMs: number) {
    super('INVALID_LOCK_SETTINGS', `TASK_LOCK_STALE_MS (${staleMs}) must be at least twice TASK_LOCK_REFRESH_MS (${refreshMs})`)
  }
}

/** A command line that cannot be run as given: the CLI exits 2. */
export class UsageError extends TaskvaultError {
  constructor (message: string) {
    super('USAGE', message)
  }
}

/** A setting (environment variable or .env) that cannot be used: exit 2 as for usage, but the command's --help cannot help. */
export class BadSettingError extends UsageError {
  constructor (message: string) {
    super(`bad setting ${message}`)
  }
}

/** A CLI command that ran and failed (a bad file found, a refusal, an I/O error): it exits 1. */
export class CommandFailedError extends TaskvaultError {
  constructor (message: string) {
    super('FAILED', message)
  }
}

// The PostgreSQL store's: each stops a boot or a `taskvault migrate` with one line naming the setting or versions.

/** A PostgreSQL setting (TASK_DB_SCHEMA, DATABASE_URL, ...) that cannot be used. */
export class InvalidDatabaseSettingError extends TaskvaultError {
  constructor (readonly setting: string, message: string) {
    super('INVALID_DATABASE_SETTING', `${setting}: ${message}`)
  }
}

/** The database was migrated by a newer taskvault: running against it could lose its changes. */
export class DatabaseTooNewError extends TaskvaultError {
  constructor (readonly databaseVersion: number, readonly knownVersion: number) {
    super('DATABASE_TOO_NEW', `database is at migration ${databaseVersion}, this taskvault knows up to ${knownVersion}; upgrade taskvault`)
  }
}

/** A migration file that is malformed, or that changed after it was applied, or that failed to apply. */
export class MigrationError extends TaskvaultError {
  constructor (message: string, options?: ErrorOptions) {
    super('MIGRATION_FAILED', message, options)
  }
}

/**
 * The database could not be reached (refused, timed out, not accepting connections yet), or
 * `lasting`: it answered, and would answer the same again (permission denied, no such database,
 * a wrong password), so waiting for it cannot help.
 */
export class DatabaseUnavailableError extends TaskvaultError {
  constructor (message: string, options?: ErrorOptions, readonly lasting = false) {
    super('DATABASE_UNAVAILABLE', message, options)
  }
}

/**
 * A write found the stored session at another version than the one this server read or last
 * wrote: someone else changed (or removed) it meanwhile. Nothing was written, so nothing of
 * theirs is lost; this server's view of the session is stale and must be read again.
 */
/**
 * This replica no longer holds the session's execution lease (it could not renew in time, or
 * another replica took the session over): whatever it was doing with the session stops, and
 * its save was refused. The session carries on where the lease is now.
 */
export class LeaseLostError extends TaskvaultError {
  constructor (readonly sessionId: string, detail: string) {
    super('LEASE_LOST', `session '${sessionId}': ${detail}; nothing more was written by this replica`)
  }
}

/** Who holds a replica id, as its heartbeat row says (null where an older server wrote it). */
export interface ReplicaHolder {
  host: string | null
  pid: number | null
  startedAt: string | null
}

const holderText = (holder: ReplicaHolder): string =>
  holder.pid === null ? 'a server of an older version' : `pid ${holder.pid} on host ${holder.host ?? '?'}, started ${holder.startedAt ?? '?'}`

/**
 * Another live server beats under this server's TASK_REPLICA_ID: both would renew each other's
 * leases and run the same sessions. Stops the boot, before anything is taken over.
 */
export class ReplicaIdInUseError extends TaskvaultError {
  constructor (readonly replicaId: string, readonly holder: ReplicaHolder) {
    super('REPLICA_ID_IN_USE', `TASK_REPLICA_ID '${replicaId}' is in use by another running server (${holderText(holder)}), whose heartbeat goes on: ` +
      'each replica needs an id of its own (a Kubernetes pod name is ideal); nothing was changed')
  }
}

/**
 * Another process claimed this server's TASK_REPLICA_ID (it judged this one gone) and took its
 * sessions over: this one writes nothing more.
 */
export class ReplicaIdTakenError extends TaskvaultError {
  constructor (readonly replicaId: string) {
    super('REPLICA_ID_TAKEN', `another process claimed this server's TASK_REPLICA_ID '${replicaId}', judging this one gone (it was silent past TASK_LEASE_MS: ` +
      'paused, or cut off from the database; or a second server uses the same id), and took its sessions over, so this one saves nothing more (reads still work); ' +
      'restart it once only one server uses the id')
  }
}

export class VersionConflictError extends TaskvaultError {
  constructor (readonly sessionId: string, operation: string, reason = 'was changed or removed by another writer since this server read it') {
    super('VERSION_CONFLICT', `${operation} refused: session '${sessionId}' ${reason}; nothing was written`)
  }
}

/**
 * A pass asked for while another replica's pass of its kind held the lock for as long as it
 * was waited for (PostgreSQL): nothing was done, and it may be asked for again.
 */
export class PassBusyError extends TaskvaultError {
  constructor (pass: string, waitedMs: number) {
    super('PASS_BUSY', `the ${pass} pass of another replica held its lock for the ${waitedMs} ms this one waited; nothing was done by this one, try again`)
  }
}

/**
 * A new session whose file would be another session's: the storage folder ignores case (macOS
 * and Windows by default), so `Task1.json` and `task1.json` are one file.
 */
export class SessionIdCaseConflictError extends TaskvaultError {
  constructor (readonly sessionId: string) {
    super('SESSION_ID_CASE_CONFLICT', `session id '${sessionId}' names the file of another session whose id differs only in case: the storage folder does not tell upper from lower case; nothing was written`)
  }
}

/**
 * A request on a session whose stored row does not read (PostgreSQL): 409, as a save of it is
 * refused; `unread` says why, for a backup that leaves such a session out.
 */
export class UnreadableRowError extends VersionConflictError {
  constructor (sessionId: string, readonly unread: CorruptSessionFileError) {
    super(sessionId, `reading session '${sessionId}'`, `has a stored row that does not read (${unread.message}); fix or delete that row first`)
  }
}

/**
 * A session whose archived copies do not read, none of them, and stay where they are (rows of
 * PostgreSQL): 409, as for an unreadable active row, so the id stays taken until they are fixed
 * or deleted rather than answering 404 while lists show the session.
 */
export class UnreadableArchivedError extends VersionConflictError {
  constructor (sessionId: string, reason: string) {
    super(sessionId, `reading archived session '${sessionId}'`, `has an archived copy that does not read (${reason}), and no older one that does; fix or delete it first`)
  }
}

/** An execution asked for while the session's archive or delete is being written: it may be gone a moment later. */
export class SessionLeavingError extends TaskvaultError {
  constructor (sessionId: string) {
    super('SESSION_BUSY', `session '${sessionId}' is being archived or deleted right now; try again`)
  }
}

/** A session whose unsaved changes (auto-save off) could not be written, and why. */
export interface LostChanges {
  sessionId: string
  cause: unknown
}

/** Unsaved changes (auto-save off) that saveUnsaved() could not write, for every session it failed. */
export class UnsavedChangesLostError extends AggregateError {
  readonly code = 'UNSAVED_CHANGES_LOST'
  readonly sessions: LostChanges[]
  constructor (sessions: LostChanges[]) {
    const named = sessions.slice(0, 10).map((lost) => lost.sessionId).join(', ')
    super(sessions.map((lost) => lost.cause), `unsaved changes of ${sessions.length} session(s) could not be written: ${named}${sessions.length > 10 ? ', ...' : ''}`)
    this.name = 'UnsavedChangesLostError'
    this.sessions = sessions
  }
}
