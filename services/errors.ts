/**
 * Domain errors. Services throw these; the HTTP layer maps each `code` to a status once
 * (routes/error-handler.ts), so nothing here knows about HTTP.
 */
export class TaskvaultError extends Error {
  constructor (readonly code: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = new.target.name
  }
}

export class SessionNotFoundError extends TaskvaultError {
  constructor (sessionId: string) {
    super('SESSION_NOT_FOUND', `session '${sessionId}' not found`)
  }
}

export class NoPendingTaskError extends TaskvaultError {
  constructor (sessionId: string) {
    super('NO_PENDING_TASK', `session '${sessionId}' has no pending task`)
  }
}

export class SessionBusyError extends TaskvaultError {
  constructor (sessionId: string) {
    super('SESSION_BUSY', `session '${sessionId}' is already executing`)
  }
}

export class InvalidInstructionsError extends TaskvaultError {
  constructor (message: string) {
    super('INVALID_INSTRUCTIONS', message)
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

/** TASK_MAX_SESSIONS reached: no room for another session. */
export class SessionLimitError extends TaskvaultError {
  constructor (max: number) {
    super('SESSION_LIMIT', `the service holds its maximum of ${max} sessions (TASK_MAX_SESSIONS); delete or archive some first`)
  }
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

/** A session file that cannot be parsed or does not match the file schema. */
export class CorruptSessionFileError extends TaskvaultError {
  constructor (readonly fileName: string, reason: string) {
    super('CORRUPT_SESSION_FILE', `${fileName}: ${reason}`)
  }
}

/** A plugin was registered with an option it does not take or a value out of range. */
export class InvalidOptionsError extends TaskvaultError {
  constructor (plugin: string, message: string) {
    super('INVALID_OPTIONS', `${plugin}: ${message}`)
  }
}
