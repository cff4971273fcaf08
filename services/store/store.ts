import type { EventEmitter } from 'node:events'
import type { SessionFile } from '../../schemas/session.js'
import type { ArchiveTotals, ArchivedSummary } from '../archive/archive-index.js'
import type { TaskvaultError } from '../errors.js'
import type { LockEvent } from './storage-lock.js'
import type { DiskSpace } from './disk-space.js'
import type { SessionCounts } from '../types.js'

export type { ArchiveTotals, ArchivedSummary }

export interface LoadedSession {
  file: SessionFile
  /** Size of the stored form, for storage statistics. */
  bytes: number
}

/** An archived session read back from the archive. */
export interface ArchivedSession extends LoadedSession {
  /** Which archived file it was read from (see unarchive). */
  name: string
}

export interface LoadFailure {
  name: string
  reason: string
  /** Where the unreadable file was set aside, if it could be moved. */
  movedTo: string | null
}

export interface LoadResult {
  sessions: LoadedSession[]
  failures: LoadFailure[]
  /** Leftover temp files of interrupted saves that were removed. */
  removedTempFiles: number
}

/** One save, for observers such as metrics: how long it took, whether it became durable, its size. */
export interface SaveEvent {
  ms: number
  ok: boolean
  bytes: number
}

/** Encryption at rest: the key every write is sealed under, and active sessions by the key that sealed them. */
export interface EncryptionStats {
  active_kid: string
  sealed_sessions: Record<string, number>
  plaintext_sessions: number
}

/** What a shared store counts itself: the active sessions and tasks, and its own storage figures. */
export interface StoreTotals extends SessionCounts {
  archived_sessions: number
  /** What /stats shows as `storage`, besides the restore figures. */
  storage: { kind: 'postgres', database: string, schema: string, rows: number, bytes: number, document_bytes: number, archive_bytes: number, replicas: string[] }
}

export interface SessionStoreEvents {
  save: [SaveEvent]
  /** The single-writer lock's heartbeat: a lock re-created, lost to another writer, or not checkable. */
  lock: [LockEvent]
}

/**
 * Where sessions live. The task manager only talks to this interface, so another backend
 * (PostgreSQL, say) can replace the file store without touching routes or the manager.
 * Every method resolves only once its change is durable, and rejects with StorageError otherwise.
 */
export interface SessionStore {
  /** Which store this is, as /stats says. */
  readonly kind: 'file' | 'postgres'
  /** Human-readable location, shown in stats (a folder for the file store). */
  readonly location: string
  /** Where a store reports its saves, if it does; observers subscribe without the store knowing them. */
  readonly events?: EventEmitter<SessionStoreEvents>
  /** Prepares the storage (folders, permissions, single-writer lock). Fails when it is not writable or held. */
  init(): Promise<unknown>
  /**
   * Why the store refuses every write from now on (it lost its single-writer lock), or null.
   * Writes then reject with this error, so memory keeps the state before them.
   */
  unwritable?(): TaskvaultError | null
  /** Reads every stored session; unreadable ones are set aside and reported, never deleted. */
  loadAll(options: { concurrency: number }): Promise<LoadResult>
  /** Durably replaces the stored session; resolves with the stored size in bytes. */
  save(file: SessionFile): Promise<number>
  /** Durably removes the session; removing a missing session is not an error. */
  remove(sessionId: string): Promise<void>
  /** Durably moves the stored session (whose content is `file`) to the archive. */
  archive(file: SessionFile): Promise<void>
  /**
   * Indexes the archive at restore. Archived sessions stay out of memory: only what the
   * methods below need is kept, and their content is read on demand.
   */
  openArchive(options: { concurrency: number }): Promise<ArchiveTotals>
  /** Which archived file holds the session, or null when it is not archived (from memory). */
  archivedName(sessionId: string): string | null
  /** Every archived session's id (from memory). */
  archivedIds(): string[]
  /** Counts and sizes of the archive (from memory). */
  archiveTotals(): Readonly<ArchiveTotals>
  /** Reads an archived session; null when it is not archived. Unreadable files are set aside and reported. */
  readArchived(sessionId: string): Promise<{ session: ArchivedSession | null, failures: LoadFailure[] }>
  /** A summary of every archived session (for lists and retention). */
  listArchived(): Promise<{ sessions: ArchivedSummary[], failures: LoadFailure[] }>
  /**
   * Durably makes `file` the active session again and then removes the archived file it came
   * from (`archivedName`); a crash in between leaves both, never neither. Resolves with the stored size.
   */
  unarchive(file: SessionFile, archivedName: string): Promise<number>
  /** Durably deletes every archived file of the session; resolves with how many there were. */
  removeArchived(sessionId: string): Promise<number>
  /** Encryption at rest, when keys are set; null otherwise. */
  encryption(): EncryptionStats | null
  /** The bytes this store keeps for the session: what a backup holds (sealed when keys are set). */
  serialize(file: SessionFile): Promise<Buffer>
  /**
   * Counts over what is stored, for a store shared beyond this process (PostgreSQL: SQL over
   * the rows). A store without it is counted from the manager's memory.
   */
  totals?(): Promise<StoreTotals>
  /** Whether the storage answers now (a database round trip); /ready answers 503 with the error. */
  check?(): Promise<TaskvaultError | null>
  /**
   * Free and total bytes where the sessions are kept (the file store: the filesystem of its
   * folder). A store whose space is someone else's concern (a database) leaves it out.
   */
  space?(): Promise<DiskSpace>
  close(): Promise<void>
}
