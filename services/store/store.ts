import type { EventEmitter } from 'node:events'
import type { SessionFile } from '../../schemas/session.js'
import type { ArchiveTotals, ArchivedSummary, RetentionCutoffs } from '../archive/archive-index.js'
import type { ReplicaHolder, ReplicaIdTakenError, TaskvaultError } from '../errors.js'
import type { LockEvent } from './storage-lock.js'
import type { DiskSpace } from './disk-space.js'
import type { SessionCounts } from '../types.js'
import type { SessionSummary } from '../../schemas/api.js'
import type { Static } from '@sinclair/typebox'

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
  /**
   * The index entry it was read from, where a name comes back for a later copy (the file store:
   * `<id>.json` again once the first copy was brought back or deleted): the copy is current only
   * while this is still the newest entry (archivedEntry). Absent where names are never reused.
   */
  entry?: object
}

export interface LoadFailure {
  name: string
  reason: string
  /** Where the unreadable file was set aside, if it could be moved. */
  movedTo: string | null
  /** Set when it waits for the key under this kid (missing, or not proven right): not damaged. */
  kid?: string
}

export interface LoadOptions {
  concurrency: number
  /**
   * Told of each unreadable session once it is final: the file store tells as it moves the file
   * aside, so a restore that stops later (a key missing, a read failing) has still said where it went.
   */
  failed?: (failure: LoadFailure) => void
}

export interface LoadResult {
  sessions: LoadedSession[]
  failures: LoadFailure[]
  /** Leftover temp files of interrupted saves that were removed. */
  removedTempFiles: number
  /**
   * File store: `.json` files whose names are no session id (`project.v2.json`), left alone and
   * read as no session; named so that the log says why a session someone put there is not served.
   */
  ignoredFiles?: string[]
}

export interface SaveOptions {
  /**
   * The save only records how a run goes (statuses, times, counters, a short error): it may take
   * the session RECORD_ROOM_PER_TASK_BYTES per task past TASK_MAX_SESSION_BYTES (see sessionBound).
   */
  records?: boolean
  /**
   * With `records`: the session's size in storage now. One already past TASK_MAX_SESSION_BYTES
   * (the bound lowered since it was saved) is bounded from there instead, so its run can still
   * be recorded (an interrupted task set back, a task claimed or failed) rather than stay stuck.
   */
  stored?: number
  /**
   * The save lands only while no other replica holds a live lease on the session (a shared store;
   * a store of one process has no other): else it is refused with SessionBusyError naming the
   * holder. For a change a run must not see land mid-run (a retry), whose check of the lease
   * before it was queued another replica may have overtaken since.
   */
  leaseFree?: boolean
}

/**
 * One save, for observers such as metrics: how long it took, how it ended, its size. `durable`:
 * on disk (committed); `failed`: storage failed it (a StorageError, answered 503 or 507);
 * `refused`: nothing was written, by rule (a bound, another version stored, a lost lease).
 */
export interface SaveEvent {
  ms: number
  outcome: 'durable' | 'failed' | 'refused'
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
  /** As encryption(), counted over the stored rows (what `taskvault seal` changed too); null without keys. */
  encryption: EncryptionStats | null
  /** What /stats shows as `storage`, besides the restore figures. */
  storage: { kind: 'postgres', database: string, schema: string, rows: number, bytes: number, document_bytes: number, archive_bytes: number, replicas: string[] }
}

export interface SessionStoreEvents {
  save: [SaveEvent]
  /** The single-writer lock's heartbeat: a lock re-created, lost to another writer, or not checkable. */
  lock: [LockEvent]
  /** A shared store: this replica no longer holds the session's execution lease (why, in words). */
  'lease-lost': [string, string]
  /** A shared store: a cancel was asked elsewhere for a session this replica runs. */
  cancel: [string]
  /** A shared store: events were published to its event log (or may have been, unheard). */
  events: []
  /** A shared store: a change of this replica's that was answered as failed turned out to have landed; its events never went out. */
  unannounced: [string]
  /** A shared store: what claiming this server's replica id found (at boot), or that another server claimed it since. */
  'replica-id': [ReplicaIdEvent]
  /** A shared store at boot: a read of the restore failed as the database went away, and is tried again in `waitMs`. */
  'restore-retry': [{ reason: string, waitMs: number }]
}

/** What the claim of a replica id found, for the owner to log: the store knows no logger. */
export type ReplicaIdEvent =
  | { type: 'waiting', holder: ReplicaHolder, silentMs: number, waitMs: number }
  | { type: 'cleared', holder: ReplicaHolder, silentMs: number, why: 'silent' | 'gone' }
  | { type: 'taken', error: ReplicaIdTakenError }

/**
 * A shared event log's record of a gap: events before it may be missing (a replica stopped
 * without publishing its last ones, or published them late). Not a task event: a reader resets
 * its clients; a version that does not know the name passes it over.
 */
export const LOG_GAP = 'log.gap'

/** A live-view event as a shared event log holds it: numbered in the order they were published. */
export interface LoggedEvent {
  id: number
  name: string
  data: Record<string, unknown>
}

/** A stored copy as it is: its name (as in readArchived), its bytes, and the time it says it was updated. */
export interface StoredCopy {
  name: string
  data: Buffer
  updatedAt: Date
}

/** The clear `updated_at` of a stored document (plaintext or sealed), or the epoch when it has none. */
export function clearUpdatedAt (text: string): Date {
  try {
    const at = (JSON.parse(text) as { updated_at?: unknown }).updated_at
    const date = typeof at === 'string' ? new Date(at) : new Date(0)
    return Number.isNaN(date.getTime()) ? new Date(0) : date
  } catch {
    return new Date(0)
  }
}

/** How a maintenance pass waits for another replica's (SharedSessions.exclusively). */
export interface PassWait {
  ms: number
  /** Ends the wait at once (a shutdown). */
  stopped?: () => boolean
}

/** The lock a maintenance pass holds (SharedSessions.exclusively). */
export interface PassLock {
  /**
   * Whether the pass still holds it: a round trip on the lock's connection. False once that
   * connection broke: the lock went with it, and another replica's pass may have started.
   */
  held(): Promise<boolean>
}

/** A session claimed by a sweep: its lease is now this replica's. */
export interface SweptSession {
  sessionId: string
  /** The epoch of the lease the sweep took (what release names). */
  epoch: string
  /** A cancel was asked while its last holder ran it: apply it rather than carry the run on. */
  cancelRequested: boolean
}

/** An active session in a list from a shared store: its summary, and whether a replica runs it. */
export type SharedSummary = Static<typeof SessionSummary> & { running: boolean }

/** Where a page of retention's candidates ended (SharedSessions.pastRetention): the store's own. */
export interface RetentionCursor {
  part: number
  at: string
  rowId: string
}

/** Where a page of archivable sessions ended: its last session's finish time (as stored) and id. */
export interface ArchivableCursor {
  finishedAt: string
  sessionId: string
}

/**
 * What a store shared by several replicas adds (PostgreSQL with TASK_REPLICA_ID): executing a
 * session takes a lease on it, so one replica at a time runs it; every save made while this
 * replica holds the lease is fenced by the lease's epoch, so a replica that lost it can never
 * overwrite the new holder's work; and a replica's copy of a session is checked against the
 * stored one before it is relied on.
 */
export interface SharedSessions {
  readonly replicaId: string
  /** How long a lease lasts unless renewed (TASK_LEASE_MS). */
  readonly leaseMs: number
  /**
   * How long shutdown waits on the database for each of its last steps (a sweep under way,
   * leaving, closing the pool), TASK_DB_PING_TIMEOUT_MS: one the database does not answer is left,
   * as a killed replica's would be, so shutdown stays prompt.
   */
  readonly closeWaitMs: number
  /**
   * The session as stored now when it differs from what this store last read or wrote (null:
   * no active row); undefined when it is the same.
   */
  refresh(sessionId: string): Promise<LoadedSession | null | undefined>
  /** Which other replica holds a live lease on the session, as of its last refresh or list; null: none. */
  runningElsewhere(sessionId: string): string | null
  /**
   * Where the session's active row stands as this store last read or wrote it, `<row>.<version>`
   * (both only grow over a session's life: row ids are never reused); null when none is known.
   * Just after this store deleted or archived the session, once: the row it ended (deleting
   * archived copies only, the newest of them), with a version past any it had, so no
   * later-logged event of that row stands after that change's, and a session created under
   * the id since (a higher row) stands after it.
   * Events carry it through the shared log, so a reader can tell one logged late (EventRelay).
   */
  orderOf(sessionId: string): string | null
  /**
   * Takes the session's lease; SessionBusyError naming the holder when another replica has it.
   * Resolves with its epoch, and whether a cancel already waits for the run that takes it.
   */
  acquire(sessionId: string): Promise<{ epoch: string, cancelRequested: boolean }>
  /**
   * Gives back the lease taken at `epoch` (a newer one of the session stays). Every lease taken
   * must be given back: this process renews what it holds for as long as it holds it. A pending
   * cancel is done with, unless `applied` is false (what was to apply it failed): it stays asked.
   */
  release(sessionId: string, epoch: string, applied?: boolean): Promise<void>
  /** The live holder of the session's lease (this replica included, unless nothing of this process holds the lease: one whose giving back failed), or null. */
  holder(sessionId: string): Promise<string | null>
  /** Whether a cancel asked for the session (requestCancel) still waits to be applied. */
  cancelPending(sessionId: string): Promise<boolean>
  /**
   * Claims sessions whose holder is gone (lease run out) or that nobody runs but should be run
   * on; with `earlier`, also those this replica id holds from an earlier process (only before
   * this process has run anything: later they may be its own runs). Never the sessions of `skip`.
   * With `runs` false (TASK_RESUME_ON_START=false), not those unowned with only a background run's
   * record: this replica would not resume it, so claiming it would only go round.
   */
  sweep(limit: number, earlier: boolean, skip?: readonly string[], runs?: boolean): Promise<SweptSession[]>
  /**
   * Clears the replicas silent past the lease (stopped without leaving: killed, or their node
   * lost) and, when there were any, logs a gap in the event log, so every stream resets: their
   * last changes' events may never have been published. Resolves with their ids.
   */
  clearLostReplicas(): Promise<string[]>
  /** Whether the session is archived and not active, from the rows (no document is read). */
  isArchived(sessionId: string): Promise<boolean>
  /**
   * After unarchive() failed with its outcome unknown: when it landed (the active row holds what
   * it wrote, changed by nobody since), archives the session again holding `archived`, the copy
   * it came from (`archivedName`), in one statement. Otherwise leaves the rows as they are (not
   * landed, or changed since: that state is adopted). The archive's index follows the rows.
   */
  undoUnarchive(archived: Readonly<SessionFile>, archivedName: string): Promise<void>
  /** Asks the live holder to cancel; resolves with its id, or null when nobody holds the lease (as for holder(): a lease of this replica's that nothing of this process holds is nobody's). */
  requestCancel(sessionId: string): Promise<string | null>
  /** A page of the active sessions, newest updated first, and how many there are. */
  listActive(offset: number, limit: number): Promise<{ total: number, sessions: SharedSummary[] }>
  /**
   * As listActive, with the archived sessions too (`include`) or only those (`only`), marked
   * `archived` (never running). A session is listed once: active, or else its newest archived copy.
   * Read from the rows a page at a time, as other replicas archive too.
   */
  listWithArchived(offset: number, limit: number, filter: 'include' | 'only'): Promise<{ total: number, sessions: SharedSummary[] }>
  /**
   * Active sessions nobody runs whose tasks all ended before `cutoff`, oldest first, a page of
   * `limit` after `after` (the page before's `next`), so sessions a pass leaves never hide the rest.
   */
  archivable(cutoff: Date, limit: number, after?: ArchivableCursor | null): Promise<{ ids: string[], next: ArchivableCursor | null }>
  /**
   * Archived sessions that are not active whose newest copy finished before its retention
   * cutoff, as the rows' columns tell (each copy is judged again when read): a page of `limit`
   * after `after` (the page before's `next`; null when there is no more), so those a pass keeps
   * never hide the rest.
   */
  pastRetention(cutoffs: RetentionCutoffs, limit: number, after?: RetentionCursor | null): Promise<{ sessions: ArchivedSummary[], next: RetentionCursor | null }>
  /**
   * Runs a maintenance pass once no other replica's pass of that name runs; null when one still
   * does after `wait.ms` (0: not waited for at all), or when `wait.stopped` ends the wait. The
   * pass asks `lock.held()` between its steps and stops once it says false.
   */
  exclusively<T>(pass: string, wait: PassWait, run: (lock: PassLock) => Promise<T>): Promise<T | null>
  /** How long a pass asked for waits for another replica's (see exclusively). */
  readonly passWaitMs: number
  /** The live view's shared event log: its identity (part of every event id) and its newest id. */
  eventLog(): Promise<{ token: string, latest: number }>
  /** Appends events (one statement), keeping the newest `keep`, and wakes every replica ('events'); resolves with the batch's last id. */
  publishEvents(events: ReadonlyArray<{ name: string, data: unknown }>, keep: number): Promise<number>
  /** Up to `limit` events after `id`, oldest first, and the id up to which the log was trimmed. */
  eventsAfter(id: number, limit: number): Promise<{ events: LoggedEvent[], trimmed: number }>
  /**
   * Events of this replica will never reach the log (a shutdown cut their publishing short): at
   * close its replica row is left to run out rather than removed, so the replica that clears it
   * (a sweep, or a restart under the same id) logs a gap, and every replica's streams reset.
   */
  eventsUnpublished(): void
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
  loadAll(options: LoadOptions): Promise<LoadResult>
  /** Durably replaces the stored session; resolves with the stored size in bytes. */
  save(file: SessionFile, options?: SaveOptions): Promise<number>
  /** Durably removes the session; removing a missing session is not an error. */
  remove(sessionId: string): Promise<void>
  /**
   * Durably moves the stored session (whose content is `file`) to the archive. `options`: how
   * `file` is saved again should it have to be (the file store's file gone from under it).
   */
  archive(file: SessionFile, options?: SaveOptions): Promise<void>
  /**
   * Indexes the archive at restore. Archived sessions stay out of memory: only what the
   * methods below need is kept, and their content is read on demand.
   */
  openArchive(options: { concurrency: number }): Promise<ArchiveTotals>
  /** Which archived file holds the session, or null when it is not archived (from memory). */
  archivedName(sessionId: string): string | null
  /** The index entry of that file (see ArchivedSession.entry), or null; absent where names are never reused. */
  archivedEntry?(sessionId: string): object | null
  /**
   * The summary of the archived session's newest copy, from memory, once that copy has been read
   * (by a list or a read); else null. Absent in a shared store: other replicas change its archive.
   */
  archivedSummary?(sessionId: string): ArchivedSummary | null
  /** Every archived session's id (from memory). */
  archivedIds(): string[]
  /** Counts and sizes of the archive (from memory). */
  archiveTotals(): Readonly<ArchiveTotals>
  /** Reads an archived session; null when it is not archived. Unreadable files are set aside and reported. */
  readArchived(sessionId: string): Promise<{ session: ArchivedSession | null, failures: LoadFailure[] }>
  /**
   * The newest archived copy as stored, unopened (sealed under a key this process may lack), and
   * its clear `updated_at`: what a backup carries, byte for byte. With `name` (a copy readArchived
   * read), that copy. Null when there is no such copy.
   */
  readArchivedStored(sessionId: string, name?: string): Promise<StoredCopy | null>
  /** A summary of every archived session, newest `updated_at` first (for lists and retention). */
  listArchived(): Promise<{ sessions: readonly ArchivedSummary[], failures: LoadFailure[] }>
  /**
   * Durably makes `file` the active session again and then removes the archived file it came
   * from (`archivedName`); a crash in between leaves both, never neither. Resolves with the stored size.
   */
  unarchive(file: SessionFile, archivedName: string, options?: SaveOptions): Promise<number>
  /**
   * After archive(file) failed with its outcome unknown (StorageError.uncertain): durably makes
   * `file` the active session again and removes the archived copy that archive may have made.
   * Resolves with the stored size once both are done; may be called again after a failure. A
   * plain save when no archive of the session is in doubt.
   */
  undoArchive(file: SessionFile, options?: SaveOptions): Promise<number>
  /**
   * Durably deletes every archived file of the session; resolves with how many there were. With
   * `upTo` (a copy's name), only while that copy is the newest: else StaleArchivedCopyError,
   * nothing deleted (another replica archived the session again since that copy was judged, or
   * brought it back, or deleted it).
   */
  removeArchived(sessionId: string, upTo?: string): Promise<number>
  /** Encryption at rest, when keys are set; null otherwise. */
  encryption(): EncryptionStats | null
  /** The bytes this store keeps for the session: what a backup holds (sealed when keys are set). */
  serialize(file: SessionFile): Promise<Buffer>
  /**
   * Counts over what is stored, for a store shared beyond this process (PostgreSQL: SQL over
   * the rows). A store without it is counted from the manager's memory.
   */
  totals?(): Promise<StoreTotals>
  /** Set when several replicas may share the store (see SharedSessions). */
  readonly shared?: SharedSessions
  /** Ids differing only in case name one place (a file store on a folder that ignores case): such a new id is refused. */
  readonly caseless?: boolean
  /** Whether the storage answers now (a database round trip); /ready answers 503 with the error. */
  check?(): Promise<TaskvaultError | null>
  /**
   * Free and total bytes where the sessions are kept (the file store: the filesystem of its
   * folder). A store whose space is someone else's concern (a database) leaves it out.
   */
  space?(): Promise<DiskSpace>
  close(): Promise<void>
}
