import { EventEmitter } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { SessionFile, SESSION_ID } from '../../../schemas/session.js'
import { type ArchiveTotals, type ArchivedSummary, type RetentionCutoffs } from '../../archive/archive-index.js'
import {
  CorruptSessionFileError, DatabaseUnavailableError, InvalidDatabaseSettingError, InvalidSessionIdError, KeyUnavailableError,
  LeaseLostError, operatorMessage, SealNotOpenedError, SessionBusyError, StaleArchivedCopyError, StorageError, TaskvaultError, UnreadableRowError, VersionConflictError
} from '../../errors.js'
import { noop } from '../../noop.js'
import { orLate } from '../../deadline.js'
import { SETTING_DEFAULTS } from '../../../schemas/options.js'
import { kidRecord, type Keyring } from '../keyring.js'
import { readSessionDocument, serializeSessionFile } from '../session-files.js'
import { wrongKeyError } from '../key-checks.js'
import { KeyProofs } from './key-proofs.js'
import {
  type ArchivableCursor, type ArchivedSession, type RetentionCursor, type EncryptionStats, type LoadFailure, type LoadOptions, type LoadResult, type LoadedSession, type LoggedEvent, type SaveOptions, type SessionStore,
  type PassLock, type PassWait, type SessionStoreEvents, type SharedSessions, type SharedSummary, type StoreTotals, type StoredCopy, type SweptSession
} from '../store.js'
import { archiveSession, isArchived, RETENTION_PARTS, retentionCandidates, reviveArchived, rowArchived, rearchiveSession, unarchiveSession, type ArchivedRow, type RetentionPart } from './archive-sql.js'
import { migrate, type MigrationLockWait } from './migrate.js'
import { assertSavable, reportedSave, sessionBound } from '../save-rules.js'
import { errnoLike, lasting, mayPass, programmingError, storageError, uncertain } from './pg-errors.js'
import { checkSchemaName, redactUrl } from './database-url.js'
import { createPool, endConnection, openConnection, type PoolSettings } from './pool.js'
import {
  CONNECTION_SETTINGS, PING, ROW_TOTALS, activePage, columnsHold, correctColumns, deriveColumns, currentSession, deleteSession, insertSession, nextVersion, saveBatch,
  updateLeaseFreeSession, updateSession, type ActiveRow, type DerivedColumns, type RowVersion
} from './sessions-sql.js'
import { SaveBatcher, type PendingSave } from './save-batcher.js'
import { exclusively } from './pass-lock.js'
import { pooledQuery, QueryFailure, type Bound } from './pooled-query.js'
import { Orphans } from './orphans.js'
import { archivedLikeName, listPage, summaryOf } from './row-summaries.js'
import { ArchivedRows } from './archived-rows.js'
import { leave, liveReplicas } from './replicas-sql.js'
import { EVENTS_CHANNEL, LeaseKeeper } from './leases.js'
import { ACTIVE_COUNT, EVENT_LOG, activeSummaries, archivableSessions, eventsAfter, listedCount, listedSummaries, publishEvents, refreshSession, refreshSessions } from './leases-sql.js'

/** `<session id>@<row id>`: how an archived copy is named (archivedName, summaries, failures). */
const ARCHIVED_NAME = /^([A-Za-z0-9_-]{1,128})@(\d{1,19})$/u
/** Active rows per page at restore: big enough to amortise a round trip, small enough to keep memory flat. */
const DEFAULT_PAGE_ROWS = 500
/** TASK_DB_SAVE_BATCH and TASK_DB_SAVE_BATCH_BYTES's defaults (schemas/config.ts), for a store built by hand. */
const DEFAULT_SAVE_BATCH = 50
const DEFAULT_SAVE_BATCH_BYTES = 4 * 1024 * 1024
/** Connections a shared store needs at least: the listener, a pass's lock, and one for everything else. */
const MIN_SHARED_POOL = 3
/** How long statements of broken connections may take to end, for a host's pool (ours: the statement timeout). */
const DEFAULT_ORPHAN_WAIT_MS = 10_000
/** TASK_LEASE_MS's default. */
const DEFAULT_LEASE_MS = 30_000
/** The first wait before a read of the restore is tried again at boot, doubling up to the second (the whole bounded by TASK_DB_CONNECT_TIMEOUT_MS). */
const BOOT_RETRY_MS = 100
const BOOT_RETRY_MAX_MS = 2_000

export interface PostgresSessionStoreOptions {
  /** Settings of the store's own pool, ended by close(). */
  settings?: PoolSettings
  /**
   * A host's pool instead (the `pool` plugin option), left open by close(). Its connections
   * must have search_path set to `schema` (pool.ts's connectionConfig, exported as taskvault/postgres, does); init checks it.
   */
  pool?: pg.Pool
  /** The schema of taskvault's tables; settings.schema when settings are given. */
  schema?: string
  /** The URL the host's pool connects to, shown (redacted) as the location. */
  url?: string
  /** Documents are pretty-printed like the file store's files, so export gives the very file. */
  indent?: number
  /** A session whose stored form would pass this many bytes is refused (TASK_MAX_SESSION_BYTES). */
  maxSessionBytes?: number
  /** Seals every write and opens sealed documents (TASK_ENCRYPTION_KEYS). */
  keyring?: Keyring | null
  /**
   * Add the key checks of kids the restore proved (the server does). Without it the checks kept
   * are only compared: a tool given a key at a shell never pins it.
   */
  keepKeyChecks?: boolean
  /** Errors of idle connections of the store's own pool (a dropped network, a restarted server). */
  onPoolError?: (err: Error) => void
  /** Rows per page at restore. */
  pageRows?: number
  /** Sessions written in one statement when saves queue up (TASK_DB_SAVE_BATCH); 1 for none. */
  saveBatch?: number
  /** Stored bytes in one such statement (TASK_DB_SAVE_BATCH_BYTES). */
  saveBatchBytes?: number
  /**
   * This server among the replicas on the schema (TASK_REPLICA_ID): the store is then shared
   * (`shared`: leases, fencing, refresh). None: the only server, no heartbeat.
   */
  replicaId?: string
  /** Execution leases last this long, renewed with the heartbeat every third of it (TASK_LEASE_MS). */
  leaseMs?: number
  /** At init: a migration stepped back because another session holds a lock on its tables, and is tried again. */
  onMigrationLockWait?: (wait: MigrationLockWait) => void
  /** check() answers 503 past this, whatever the statement timeout (TASK_DB_PING_TIMEOUT_MS). */
  pingTimeoutMs?: number
}

/** A save waiting for its statement (save-batcher.ts). */
interface QueuedSave extends PendingSave<RowVersion | null> {
  data: Buffer
  derived: DerivedColumns
  outcome: Extract<Outcome, { kind: 'row' }>
  operation: string
  /** SaveOptions.leaseFree, with other replicas about: written alone, by updateLeaseFreeSession. */
  leaseFree: boolean
  /**
   * For a new row, the newest archived copy known when the change was decided (ArchivedRows.newestRow),
   * not when sent: a read meanwhile may learn a copy the change never saw.
   */
  knownArchived: string | null
}

/** The active row of a session as stored now (refresh); `document` only when it differs from the known one. */
interface FreshRow {
  session_id: string
  row_id: string
  version: string
  bytes: number
  owner: string | null
  live: boolean
  document: string | null
}

/** A refresh waiting for its statement: several go in one when they queue up (like saves). */
interface QueuedRefresh extends PendingSave<FreshRow | null> {}

/** The active row a session is stored in, as this store last read or wrote it. */
interface KnownRow extends RowVersion {
  /** The kid its document is sealed under ('' for plaintext), for encryption stats. */
  kid: string
}

/**
 * What a write whose outcome is unknown (the connection failed after the statement was sent)
 * would have left: the active row holding `data`, or no active row. The next write of that
 * session that meets a conflict checks whether the row is in that state, and if so carries on
 * from it instead of failing: the earlier write did land.
 */
type Outcome = { kind: 'row', data: Buffer, kid: string } | { kind: 'gone' }

/** The version a deleted row's order names (orderOf): the largest a bigint holds, past any the row had. */
const DELETED_VERSION = '9223372036854775807'
/** The version an archived row's order names: past any the row had, before its delete's (a late archive event is then stale). */
const ARCHIVED_VERSION = '9223372036854775806'

/** Uncertain writes of one session remembered at most (each failed write-back adds one). */
const MAX_UNSURE = 8

/**
 * Sessions in PostgreSQL: one row per stored copy of a session (migrations/001 and 002), the
 * document in the exact bytes the file store writes, the columns lists and stats need
 * derived from it on every write. A change resolves once its statement has committed
 * (synchronous_commit is checked at init); every statement is autocommit and single, so
 * nothing is ever half done.
 *
 * Rows, not memory, are the truth. The store remembers, per active session, the row and
 * version it last read or wrote, and every write names them: a write that finds another
 * version (a lost update) changes nothing and rejects with VersionConflictError. Issue 14
 * (many replicas) builds on that: leases and epochs go into the same WHERE clauses.
 *
 * The archive's synchronous answers (archivedName, archivedIds, archiveTotals) come from an
 * in-memory index filled by openArchive (at boot, and by tools) and kept current by this store's
 * own writes. With several replicas another one's archive, unarchive or retention is not seen
 * there until a read of that session: readArchived and removeArchived go by the rows and correct
 * the index, and what replicas answer from the archive (lists, /stats, retention's candidates)
 * is read from the rows.
 */
export class PostgresSessionStore implements SessionStore, SharedSessions {
  readonly kind = 'postgres'
  readonly events = new EventEmitter<SessionStoreEvents>()
  readonly schema: string
  readonly location: string
  /** The database, its password hidden. */
  readonly database: string
  private readonly pool: pg.Pool
  private readonly ownsPool: boolean
  private readonly indent: number
  private readonly maxSessionBytes: number
  private readonly keyring: Keyring | null
  private readonly pageRows: number
  private readonly rows = new Map<string, KnownRow>()
  private readonly kidCounts = new Map<string, number>()
  /**
   * Writes of a session whose outcome is unknown, oldest first, since the last one known to
   * land: any of them may be what the row holds (a failed write, then its failed write-back).
   */
  private readonly unsure = new Map<string, Outcome[]>()
  /** The active row a bring-back in doubt was found to have left, until it is archived again (see undoUnarchive). */
  private readonly rearchiving = new Map<string, KnownRow>()
  /** The row an archive was moving when it failed with its outcome unknown, and its version then, by session (see undoArchive). */
  private readonly doubtful = new Map<string, KnownRow>()
  /** Active rows restore could not read: left in place, so their ids are not free (see conflict()). */
  private readonly unreadable = new Set<string>()
  /** Whether close() removes this replica's row (eventsUnpublished() says no). */
  private leaveAtClose = true
  /** init went on to claim the replica id (a row this store leaves at close). */
  private joined = false
  /** Until when (performance.now()) the restore's reads are tried again (see atBoot); 0: not at all. */
  private bootDeadline = 0
  private readonly archived: ArchivedRows
  /** Which kids are proven, and the key checks to keep (null without encryption). */
  private readonly keys: KeyProofs | null
  private readonly batcher: SaveBatcher<RowVersion | null, QueuedSave>
  private readonly refresher: SaveBatcher<FreshRow | null, QueuedRefresh>
  readonly replicaId: string
  readonly shared: SharedSessions | undefined
  readonly leaseMs: number
  private readonly leases: LeaseKeeper | null
  /**
   * Rows a delete or an archive of ours ended (or the newest archived copy a delete of only
   * archived copies removed), by session, until the event of that change takes
   * its order (orderOf): a later-logged event of that row is then known to be older.
   */
  private readonly ended = new Map<string, { row: string, version: string }>()
  /** Sessions another replica held a live lease on when last read (refresh, list), by holder. */
  private readonly elsewhere = new Map<string, string>()
  private closed = false
  /** Statements of ours that may still be running on the server, ended before the next one (orphans.ts). */
  private readonly orphans: Orphans
  private readonly onMigrationLockWait: ((wait: MigrationLockWait) => void) | undefined
  private readonly pingTimeoutMs: number
  /** The check in flight: probes that arrive meanwhile share it rather than take more connections. */
  private pinging: Promise<TaskvaultError | null> | null = null

  constructor (options: PostgresSessionStoreOptions) {
    this.onMigrationLockWait = options.onMigrationLockWait
    this.pingTimeoutMs = options.pingTimeoutMs ?? SETTING_DEFAULTS.TASK_DB_PING_TIMEOUT_MS
    if (options.pool !== undefined) {
      this.pool = options.pool
      this.ownsPool = false
      this.schema = checkSchemaName(options.schema ?? 'taskvault')
      this.database = options.url === undefined ? 'PostgreSQL' : redactUrl(options.url)
      this.location = `${this.database} (schema ${this.schema})`
    } else if (options.settings !== undefined) {
      this.pool = createPool(options.settings, options.onPoolError ?? noop)
      this.ownsPool = true
      this.schema = checkSchemaName(options.settings.schema)
      this.database = redactUrl(options.settings.url)
      this.location = `${this.database} (schema ${this.schema})`
    } else {
      throw new InvalidDatabaseSettingError('DATABASE_URL', 'the PostgreSQL store needs connection settings or a pool')
    }
    this.orphans = new Orphans(this.pool, options.settings?.statementTimeoutMs || DEFAULT_ORPHAN_WAIT_MS)
    this.indent = options.indent ?? 2
    this.maxSessionBytes = options.maxSessionBytes ?? Number.POSITIVE_INFINITY
    this.keyring = options.keyring ?? null
    this.pageRows = options.pageRows ?? DEFAULT_PAGE_ROWS
    this.keys = this.keyring === null ? null : new KeyProofs({ keyring: this.keyring, run: this.run.bind(this), pageRows: this.pageRows, keep: options.keepKeyChecks ?? false, location: this.location })
    this.archived = new ArchivedRows({ run: this.run.bind(this), keyring: this.keyring, pageRows: this.pageRows, provenKids: this.keys?.proven ?? new Set() })
    this.replicaId = options.replicaId ?? ''
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS
    // A host's pool comes without settings of ours (or they are not its).
    const ownSettings = options.pool === undefined ? options.settings : undefined
    this.leases = options.replicaId === undefined
      ? null
      : new LeaseKeeper({
        replicaId: options.replicaId,
        leaseMs: this.leaseMs,
        schema: this.schema,
        query: async (operation, config) => this.run(operation, config),
        renewPooled: async (config, statementMs, wanted) => this.run('renewing leases', config, [], { statementMs, wanted }),
        // Outside the pool when the store has its own settings: renewals never queue behind statements.
        connect: async (timeoutMs) => {
          if (ownSettings === undefined) return this.pool.connect()
          const client = await openConnection(ownSettings, timeoutMs, 'taskvault-leases')
          return Object.assign(client, { release: async () => { await endConnection(client, timeoutMs) } })
        },
        pooled: ownSettings === undefined,
        events: this.events
      })
    this.shared = this.leases === null ? undefined : this
    // As many saves in flight as the pool has connections: more would only wait in the pool,
    // where they could not be batched. Shared, one is kept from them: for a host's pool, the lease
    // keeper's; for the store's own, reads and a maintenance pass's lock.
    const max = options.settings?.max ?? (this.pool as pg.Pool & { options?: { max?: number } }).options?.max ?? 10
    const lanes = Math.max(1, this.leases === null ? max : max - 1)
    if (this.leases !== null && max < MIN_SHARED_POOL) {
      throw new InvalidDatabaseSettingError('TASK_DB_POOL_MAX', `must be at least ${MIN_SHARED_POOL} with TASK_STORE=postgres (every server is one of the replicas): an archive or retention pass holds one for its lock and one is kept from saves for reads (on a host's pool, for the lease keeper, which listens for cancels and events), while saves need the rest (got ${max})`)
    }
    this.batcher = new SaveBatcher({
      lanes,
      maxSessions: options.saveBatch ?? DEFAULT_SAVE_BATCH,
      maxBytes: options.saveBatchBytes ?? DEFAULT_SAVE_BATCH_BYTES
    }, async (batch) => this.sendSaves(batch))
    // Every request of a shared store checks its session's row: under load those checks go
    // several to a statement, as saves do.
    this.refresher = new SaveBatcher({ lanes, maxSessions: options.saveBatch ?? DEFAULT_SAVE_BATCH, maxBytes: Number.POSITIVE_INFINITY },
      async (batch) => this.sendRefreshes(batch))
  }

  /**
   * Applies the migrations (under their advisory lock), then checks that commits are durable
   * (synchronous_commit not off) and that unqualified names reach our schema. `deadline`
   * (performance.now()): a migration whose tables another session keeps locked is tried again until then.
   */
  async init (options: { deadline?: number } = {}): Promise<{ applied: number[], version: number }> {
    this.bootDeadline = options.deadline ?? 0
    let result: { applied: number[], version: number }
    let settings: { synchronous_commit: string, schema: string | null } | undefined
    try {
      result = await migrate(this.pool, { schema: this.schema, deadline: options.deadline, onLockWait: this.onMigrationLockWait })
      settings = (await pooledQuery<{ synchronous_commit: string, schema: string | null }>(this.pool, { text: CONNECTION_SETTINGS })).rows[0]
      // A key other than the one a kid was first given here stops the boot, sessions or not.
      await this.keys?.verify()
    } catch (err) {
      if (err instanceof TaskvaultError) throw err
      const raw = err instanceof QueryFailure ? err.cause : err
      // Not retried as a database that is down (persistence.ts): a bug, or a `pool` that is not one.
      if (programmingError(raw)) throw raw
      const cause = errnoLike(raw)
      throw new DatabaseUnavailableError(`preparing ${this.location} failed: ${cause.message} (${cause.code ?? 'EIO'})`, { cause }, lasting(raw))
    }
    if (settings?.synchronous_commit === 'off') {
      throw new InvalidDatabaseSettingError('synchronous_commit', 'is off for taskvault\'s connections and could not be turned on, so a commit could be acknowledged and then lost in a crash; ' +
        'turn it on for the role or database (ALTER ROLE ... SET synchronous_commit = on), or in the pool\'s connection options')
    }
    if (settings?.schema !== this.schema) {
      throw new InvalidDatabaseSettingError('TASK_DB_SCHEMA', `the pool's connections resolve names in schema '${settings?.schema ?? '(none)'}', not '${this.schema}'; ` +
        'build the pool with search_path set to it (connectionConfig of taskvault/postgres does)')
    }
    // The replica id claimed, then the heartbeat and lease renewal: now, then every third of TASK_LEASE_MS.
    // From here on the id may be claimed (a row to leave), even if the start fails midway.
    this.joined = this.leases !== null
    await this.leases?.start().catch((err: unknown) => {
      // The database went away again since the migrations: tried again like a database not up yet
      // (unless it answered what no wait changes: a role that may not write).
      if (err instanceof StorageError) throw new DatabaseUnavailableError(`preparing ${this.location} failed: ${operatorMessage(err)}`, { cause: err }, lasting(err.cause))
      throw err
    })
    // Closed meanwhile (the boot gave up on this attempt at its deadline): nothing of it may go on.
    if (this.closed) await this.leases?.close()
    return result
  }

  // --- Active sessions (sessions-sql.ts) ---

  async loadAll ({ failed }: LoadOptions): Promise<LoadResult> {
    // Told once the read is whole: a read the database broke off starts over, and no row is moved.
    const result = await this.atBoot(async () => await this.readActive())
    for (const failure of result.failures) failed?.(failure)
    return result
  }

  /**
   * A read of the restore, tried again while the database is away until the deadline init was
   * given (TASK_DB_CONNECT_TIMEOUT_MS from the start), as init tries a database not up yet: a
   * connection that drops during the restore does not end the boot. Each read starts over.
   */
  private async atBoot<T> (read: () => Promise<T>): Promise<T> {
    for (let wait = BOOT_RETRY_MS; ; wait = Math.min(wait * 2, BOOT_RETRY_MAX_MS)) {
      try {
        return await read()
      } catch (err) {
        const left = this.bootDeadline - performance.now()
        // A connection that failed or a server out of room for it is waited out (a restart: every
        // client reconnects at once); an answer that comes again on every try (a column missing) is not.
        if (!(err instanceof StorageError) || err.full || left <= 0 || !mayPass(err.cause)) throw err
        const waitMs = Math.round(Math.min(wait, left))
        this.events.emit('restore-retry', { reason: `${err.message}: ${(err.cause as Error).message}`, waitMs })
        await sleep(waitMs)
      }
    }
  }

  private async readActive (): Promise<LoadResult> {
    this.rows.clear()
    this.kidCounts.clear()
    this.unreadable.clear()
    const sessions: LoadedSession[] = []
    const failures: LoadFailure[] = []
    const missingKeys = new Map<string, number>()
    // Rows whose box did not open, by kid: damaged, unless no row under the kid opens (a wrong key).
    const unopened = new Map<string, Array<{ sessionId: string, failure: LoadFailure }>>()
    // Rows whose columns are not their documents' (see correctColumns).
    const astray: Array<{ expected: RowVersion, columns: DerivedColumns }> = []
    let next: Promise<ActiveRow[]> | null = this.page('')
    while (next !== null) {
      const rows: ActiveRow[] = await next
      // The next page is on its way while this one is parsed.
      const last = rows.at(-1)
      next = rows.length === this.pageRows && last !== undefined ? this.page(last.session_id) : null
      next?.catch(noop)
      for (const row of rows) {
        const name = archivedLikeName(row.session_id, row.row_id)
        try {
          const { file, kid } = readSessionDocument(name, row.document, row.session_id, this.keyring)
          sessions.push({ file, bytes: row.bytes })
          this.known(row.session_id, { row: row.row_id, version: row.version, kid: kid ?? '' })
          const columns = astrayColumns(file, kid ?? null, row)
          if (columns !== null) astray.push({ expected: { row: row.row_id, version: row.version }, columns })
          if (kid !== null && kid !== undefined) this.keys?.proven.add(kid)
        } catch (err) {
          if (err instanceof KeyUnavailableError) {
            missingKeys.set(err.kid, (missingKeys.get(err.kid) ?? 0) + 1)
            continue
          }
          if (!(err instanceof CorruptSessionFileError)) throw err
          const failure = { name, reason: err.message, movedTo: null }
          if (err instanceof SealNotOpenedError) unopened.set(err.kid, [...(unopened.get(err.kid) ?? []), { sessionId: row.session_id, failure }])
          else this.setUnreadable(row.session_id, failure, failures)
        }
      }
    }
    if (missingKeys.size > 0) {
      const counts = [...missingKeys].map(([kid, count]) => `${count} session${count === 1 ? ' needs' : 's need'} key '${kid}'`).join(', ')
      throw new KeyUnavailableError([...missingKeys.keys()][0] as string, `cannot load the sessions: ${counts}, which TASK_ENCRYPTION_KEYS does not hold. Add the key back; those rows were left untouched`)
    }
    for (const [kid, rows] of unopened) {
      // Booting on would seal new sessions under a wrong key, which the right one never opens.
      // Only sealed rows fail to open, so the keys are there.
      const keys = this.keys as KeyProofs
      if (!keys.proven.has(kid) && await keys.archivedProof(kid) !== 'opened') throw wrongKeyError(kid, rows.length, 'rows')
      keys.proven.add(kid)
      for (const { sessionId, failure } of rows) this.setUnreadable(sessionId, failure, failures)
    }
    await this.keys?.settle()
    // Lists, /stats, archiving and the sweep that resumes runs go by the columns: they are set
    // now rather than at the session's next save, which a finished session or a stuck run never makes.
    // Best effort, a page at a time: a row not corrected now is at its next save or the next restore.
    for (let at = 0; at < astray.length; at += this.pageRows) {
      await this.run('correcting the task counts of imported sessions', correctColumns(astray.slice(at, at + this.pageRows))).catch(noop)
    }
    return { sessions, failures, removedTempFiles: 0 }
  }

  /**
   * A row left where it is: a row is never deleted because this version cannot read it. Its id
   * stays taken, so nothing overwrites it unseen; an operator fixes or deletes it.
   */
  private setUnreadable (sessionId: string, failure: LoadFailure, failures: LoadFailure[]): void {
    this.unreadable.add(sessionId)
    failures.push(failure)
  }

  private async page (after: string): Promise<ActiveRow[]> {
    return (await this.run<ActiveRow>('restoring sessions', activePage(after, this.pageRows))).rows
  }

  async save (file: SessionFile, options?: SaveOptions): Promise<number> {
    return reportedSave(this.events, async () => this.write(file, options))
  }

  private async write (file: SessionFile, options?: SaveOptions): Promise<number> {
    const sessionId = this.checkId(file.session_id)
    assertSavable(file)
    // Read in the turn of the change that decided, before any wait (QueuedSave.knownArchived).
    const inserts = !this.rows.has(sessionId)
    const knownArchived = this.archived.newestRow(sessionId)
    const data = await serializeSessionFile(file, this.indent, sessionBound(file, this.maxSessionBytes, options), this.keyring, this.maxSessionBytes)
    const derived = this.derive(file)
    const operation = `saving session '${sessionId}'`
    const outcome: QueuedSave['outcome'] = { kind: 'row', data, kid: derived.sealedKid ?? '' }
    const leaseFree = options?.leaseFree === true && this.leases !== null
    try {
      await this.attempt(sessionId, operation, async () => this.batcher.submit({ sessionId, bytes: data.length, data, derived, outcome, operation, leaseFree, knownArchived }))
    } catch (err) {
      // A new session refused as its id is archived: another replica archived it after this one
      // looked for a copy. The change reads the copy again and brings the session back with it.
      if (inserts && err instanceof VersionConflictError && await this.isArchived(sessionId)) throw new StaleArchivedCopyError(sessionId)
      throw err
    }
    return data.length
  }

  /**
   * Writes queued saves: one alone by its own statement, several by one (saveBatch). Each save
   * names its row as known now, after the saves before it of the same session have landed,
   * and its new row is known before the next one of that session is sent. Answers each save
   * with its new row, null on a conflict, or its own StorageError.
   */
  private async sendSaves (queued: QueuedSave[]): Promise<void> {
    if (queued.length > 1 && queued.some((save) => save.leaseFree)) {
      // Its statement is not the batch's: the others go together, it goes alone.
      await Promise.all([this.sendSaves(queued.filter((save) => !save.leaseFree)), ...queued.filter((save) => save.leaseFree).map(async (save) => this.sendSaves([save]))])
      return
    }
    const batch = queued.filter((save) => {
      const refusal = this.leases?.refusal(save.sessionId) ?? null
      if (refusal !== null) save.reject(refusal)
      return refusal === null
    })
    const first = batch[0]
    if (first === undefined) return
    if (batch.length === 1) {
      const known = this.rows.get(first.sessionId)
      const outcomes = [[first.sessionId, first.outcome]] as const
      try {
        if (known === undefined) {
          const row = (await this.run<{ row_id: string, version: string }>(first.operation, insertSession(first.sessionId, first.data, first.derived, first.knownArchived), outcomes)).rows[0]
          first.resolve(row === undefined ? null : this.written(first, row))
        } else if (first.leaseFree) {
          const result = (await this.run<{ updated: number, busy: string | null }>(first.operation, updateLeaseFreeSession(known, first.data, first.derived, this.replicaId, this.leases?.me.instance ?? null), outcomes)).rows[0]
          // Another replica took the lease since it was checked: busy, not a version to reload.
          if (result?.updated !== 1 && result?.busy != null) throw new SessionBusyError(first.sessionId, result.busy)
          const next = nextVersion(known)
          first.resolve(result?.updated === 1 ? this.written(first, { row_id: next.row, version: next.version }) : null)
        } else {
          const fence = this.leases?.fence(first.sessionId) ?? null
          const { rowCount } = await this.run(first.operation, updateSession(known, first.data, first.derived, fence), outcomes)
          const next = nextVersion(known)
          first.resolve(rowCount === 1 ? this.written(first, { row_id: next.row, version: next.version }) : null)
        }
      } catch (err) {
        first.reject(err)
      }
      return
    }
    const config = saveBatch(batch.map((save) => ({
      sessionId: save.sessionId, expected: this.rows.get(save.sessionId) ?? null, document: save.data, columns: save.derived, fence: this.leases?.fence(save.sessionId) ?? null, knownArchived: save.knownArchived
    })))
    let rows: Array<{ session_id: string, row_id: string, version: string }>
    try {
      await this.orphans.settled()
      rows = (await pooledQuery<{ session_id: string, row_id: string, version: string }>(this.pool, config)).rows
    } catch (err) {
      const failure = err instanceof QueryFailure ? err : new QueryFailure(err, true)
      this.orphans.add(failure)
      if (!uncertain(failure.cause, failure.sent)) {
        // Rolled back for certain (a statement timeout, a constraint): maybe one session's
        // doing. Each is tried again alone, so only the culprit fails.
        await Promise.all(batch.map(async (save) => this.sendSaves([save])))
        return
      }
      for (const save of batch) {
        this.remember(save.sessionId, save.outcome)
        save.reject(storageError(save.operation, failure.cause, failure.sent))
      }
      return
    }
    const written = new Map(rows.map((row) => [row.session_id, row]))
    for (const save of batch) {
      const row = written.get(save.sessionId)
      save.resolve(row === undefined ? null : this.written(save, row))
    }
  }

  /** A save landed as `row`: from now on writes of its session name that row and version. */
  private written (save: QueuedSave, row: { row_id: string, version: string }): RowVersion {
    const known = { row: row.row_id, version: row.version }
    this.known(save.sessionId, { ...known, kid: save.outcome.kid })
    return known
  }

  async remove (sessionId: string): Promise<void> {
    this.checkId(sessionId)
    const operation = `deleting session '${sessionId}'`
    // Known here only by an uncertain write of ours (the undo of a create that may have landed):
    // a row is deleted only if it is what that write left, by its version. A row that differs
    // is another replica's acknowledged session, and no row means nothing to undo.
    if (!this.rows.has(sessionId) && this.unsure.has(sessionId) && (!(await this.reconcile(sessionId, operation)) || !this.rows.has(sessionId))) {
      this.unsure.delete(sessionId)
      this.forget(sessionId)
      return
    }
    await this.attempt(sessionId, operation, async () => {
      const result = await this.run<{ found: string | null, deleted: number, busy: string | null, archived: number }>(operation, deleteSession(sessionId, this.rows.get(sessionId) ?? null, this.leases === null ? null : this.replicaId, this.leases?.me.instance ?? null), [[sessionId, { kind: 'gone' }]])
      const { found, deleted, busy, archived } = result.rows[0] ?? { found: null, deleted: 0, busy: null, archived: 0 }
      // Another replica took the lease since the holder was checked: busy, not a version to reload.
      if (deleted === 0 && busy !== null) throw new SessionBusyError(sessionId, busy)
      // Archived by another replica since this one read it (deleted from the archive instead), or copies gone with the active row.
      if (archived > 0) this.archived.dropAbove(sessionId, -1)
      // Missing is not an error; found but left alone means it was at another version.
      return deleted > 0 || found === null ? true : null
    })
    this.end(sessionId, 'deleted')
    this.unreadable.delete(sessionId)
    this.doubtful.delete(sessionId)
  }

  // --- The archive (archive-sql.ts) ---

  async archive (file: SessionFile): Promise<void> {
    const sessionId = this.checkId(file.session_id)
    const operation = `archiving session '${sessionId}'`
    // Archived, the row keeps its id: the copy an archive in doubt may have made is known by it
    // (and by the version it had, which attempt() may move on before trying again).
    let moving: KnownRow | undefined
    const row = await this.attempt(sessionId, operation, async () => {
      moving = this.rows.get(sessionId)
      const result = await this.run<{ row_id: string, bytes: number }>(operation, archiveSession(sessionId, moving ?? null), [[sessionId, { kind: 'gone' }]])
      return result.rows[0] ?? null
    }).catch((err: unknown) => {
      if (err instanceof StorageError && err.uncertain && moving !== undefined) this.doubtful.set(sessionId, moving)
      throw err
    })
    this.doubtful.delete(sessionId)
    this.end(sessionId, 'archived')
    this.archived.added(sessionId, row, file)
  }

  async unarchive (file: SessionFile, archivedName: string, options?: SaveOptions): Promise<number> {
    return await reportedSave(this.events, async () => await this.revive(file, archivedName, options))
  }

  private async revive (file: SessionFile, archivedName: string, options?: SaveOptions): Promise<number> {
    const sessionId = this.checkId(file.session_id)
    const match = ARCHIVED_NAME.exec(archivedName)
    if (match === null || match[1] !== sessionId) throw new TaskvaultError('INVALID_SESSION_STATE', `'${archivedName.slice(0, 160)}' names no archived copy of session '${sessionId}'`)
    const archivedRow = match[2] as string
    const data = await serializeSessionFile(file, this.indent, sessionBound(file, this.maxSessionBytes, options), this.keyring, this.maxSessionBytes)
    const derived = this.derive(file)
    const operation = `bringing back archived session '${sessionId}'`
    const outcome: Outcome = { kind: 'row', data, kid: derived.sealedKid ?? '' }
    const row = await this.attempt(sessionId, operation, async () => {
      const config = unarchiveSession(sessionId, data, derived, archivedRow, this.rows.get(sessionId) ?? null)
      return (await this.run<{ row_id: string, version: string, removed: number }>(operation, config, [[sessionId, outcome]])).rows[0] ?? null
    }).catch(async (err: unknown) => {
      // The copy is gone (another replica deleted or brought it back): the index learns what the
      // rows hold, and the change is made again from them (a create then starts a new session).
      if (err instanceof VersionConflictError && this.rows.get(sessionId) === undefined) {
        await this.readArchived(sessionId).catch(noop)
        if (this.archived.newestName(sessionId) !== archivedName) throw new StaleArchivedCopyError(sessionId)
      }
      throw err
    })
    this.known(sessionId, { row: row.row_id, version: row.version, kid: outcome.kid })
    // Deleted now, or gone before: either way the database no longer holds that copy.
    this.archived.removed(sessionId, archivedName)
    return data.length
  }

  async undoUnarchive (archived: Readonly<SessionFile>, archivedName: string): Promise<void> {
    const sessionId = this.checkId(archived.session_id)
    const operation = `archiving session '${sessionId}' again after a failed bring-back`
    // Found landed by an earlier try whose archiving again failed (kept until settled): still the
    // row known (nobody's read since), it goes on.
    const found = this.rearchiving.get(sessionId)
    const landed = await this.reconcile(sessionId, operation)
    // Not landed (the copy is still archived), or changed since: the refresh that follows adopts the rows.
    if (!landed && (found === undefined || this.rows.get(sessionId) !== found)) {
      this.rearchiving.delete(sessionId)
      return
    }
    // Landed: the copy it came from is gone, deleted by the same statement.
    this.archived.removed(sessionId, archivedName)
    const known = this.rows.get(sessionId)
    if (known === undefined) {
      this.rearchiving.delete(sessionId)
      // No active row, as an earlier try of this undo, in doubt, would leave it: it landed. The
      // index learns that copy from the rows.
      await this.readArchived(sessionId)
      return
    }
    const data = await serializeSessionFile(archived, this.indent, Number.POSITIVE_INFINITY, this.keyring)
    this.rearchiving.set(sessionId, known)
    const { rows } = await this.run<{ row_id: string, bytes: number }>(operation, rearchiveSession(sessionId, data, this.derive(archived), known), [[sessionId, { kind: 'gone' }]])
    this.rearchiving.delete(sessionId)
    const row = rows[0]
    if (row === undefined) return
    // What an earlier try in doubt may have done is settled too.
    this.unsure.delete(sessionId)
    this.end(sessionId, 'archived')
    this.archived.added(sessionId, row, archived)
  }

  /**
   * After an archive in doubt: if it landed (the row archived at the version it would have left,
   * no active row beside it), that row is made active again holding `file`, in one statement;
   * otherwise the archive did not land (or another replica has moved the row on since, which the
   * save's version check tells): `file` is saved. A plain save when no archive is in doubt.
   */
  async undoArchive (file: SessionFile, options?: SaveOptions): Promise<number> {
    return await reportedSave(this.events, async () => await this.undo(file, options))
  }

  private async undo (file: SessionFile, options?: SaveOptions): Promise<number> {
    const sessionId = this.checkId(file.session_id)
    const doubt = this.doubtful.get(sessionId)
    if (doubt === undefined) return await this.write(file, options)
    const data = await serializeSessionFile(file, this.indent, sessionBound(file, this.maxSessionBytes, options), this.keyring, this.maxSessionBytes)
    const derived = this.derive(file)
    const outcome: Outcome = { kind: 'row', data, kid: derived.sealedKid ?? '' }
    // An archive bumps the version as an update does.
    const archivedVersion = nextVersion(doubt).version
    const operation = `putting back session '${sessionId}' after a failed archive`
    const { rows } = await this.run<{ row_id: string, version: string }>(operation, reviveArchived(sessionId, data, derived, doubt.row, archivedVersion), [[sessionId, outcome]])
    const row = rows[0]
    if (row !== undefined) {
      this.doubtful.delete(sessionId)
      this.unsure.delete(sessionId)
      this.known(sessionId, { row: row.row_id, version: row.version, kid: outcome.kid })
      this.archived.removed(sessionId, archivedLikeName(sessionId, doubt.row))
      return data.length
    }
    // Not as our archive left it. Archived still, at another version: another replica changed
    // and archived it since (or archived it as it was, which this cannot tell from ours: then it
    // was revived above, the same content); that copy stands, so no active row is not ours to
    // fill. Active, or gone (a delete's, ours among them): the save's version check settles it.
    const { rows: [now] } = await this.run<{ archived: boolean }>(operation, rowArchived(sessionId, doubt.row))
    this.doubtful.delete(sessionId)
    if (now?.archived === true) {
      const outcomes = this.unsure.get(sessionId)?.filter((one) => one.kind !== 'gone') ?? []
      if (outcomes.length > 0) this.unsure.set(sessionId, outcomes)
      else this.unsure.delete(sessionId)
    }
    return await this.write(file, options)
  }

  async openArchive (_options: { concurrency: number }): Promise<ArchiveTotals> {
    return await this.atBoot(async () => await this.archived.open())
  }

  archivedName (sessionId: string): string | null {
    return this.archived.newestName(sessionId)
  }

  /** Archived copies per kid they are sealed under (plaintext ones left out): `taskvault stats`. */
  async archivedByKid (): Promise<Map<string, number>> {
    return await this.archived.byKid()
  }

  archivedIds (): string[] {
    return this.archived.ids()
  }

  archiveTotals (): Readonly<ArchiveTotals> {
    return this.archived.totals()
  }

  async readArchived (sessionId: string): Promise<{ session: ArchivedSession | null, failures: LoadFailure[] }> {
    return await this.archived.read(this.checkId(sessionId))
  }

  async readArchivedStored (sessionId: string, name?: string): Promise<StoredCopy | null> {
    return await this.archived.readStored(this.checkId(sessionId), name)
  }

  async listArchived (): Promise<{ sessions: readonly ArchivedSummary[], failures: LoadFailure[] }> {
    return await this.archived.list()
  }

  async removeArchived (sessionId: string, upTo?: string): Promise<number> {
    const removed = await this.archived.remove(this.checkId(sessionId), upTo).catch((err: unknown) => {
      // Its outcome unknown, the delete may have landed, with no event to say so: streams reset and refetch what is stored.
      if (err instanceof StorageError && err.uncertain) this.events.emit('unannounced', sessionId)
      throw err
    })
    // Every copy gone: no archive of ours is in doubt any more.
    if (upTo === undefined) this.doubtful.delete(sessionId)
    // No active row to order the delete's event by: it takes the newest copy it deleted, ended,
    // so a session created under the id since (a higher row) makes it stale, not newest (orderOf).
    if (!this.rows.has(sessionId)) {
      const newest = removed.reduce((max, row) => BigInt(row) > BigInt(max) ? row : max, this.ended.get(sessionId)?.row ?? '0')
      if (newest !== '0') this.ended.set(sessionId, { row: newest, version: DELETED_VERSION })
    }
    return removed.length
  }

  // --- The rest of the contract ---

  /** /stats from the rows: every replica on the database answers the same counts. */
  async totals (): Promise<StoreTotals> {
    const [{ rows }, replicas] = await Promise.all([
      this.run<Record<string, string | number>>('counting sessions', { text: ROW_TOTALS }),
      this.run<{ replica_id: string }>('listing replicas', liveReplicas(this.leaseMs))
    ])
    const row = rows[0] ?? {}
    const n = (key: string): number => Number(row[key] ?? 0)
    return {
      total_sessions: n('total_sessions'),
      active_sessions: n('active_sessions'),
      completed_sessions: n('completed_sessions'),
      total_tasks: n('total_tasks'),
      completed_tasks: n('completed_tasks'),
      failed_tasks: n('failed_tasks'),
      pending_tasks: n('pending_tasks'),
      in_progress_tasks: n('in_progress_tasks'),
      archived_sessions: n('archived_rows'),
      encryption: this.keyring === null ? null : this.encryptionStats(new Map(Object.entries(JSON.parse(String(row.kids ?? '{}')) as Record<string, number>))),
      storage: {
        kind: 'postgres',
        database: this.database,
        schema: this.schema,
        rows: n('total_sessions') + n('archived_rows'),
        bytes: n('table_bytes'),
        document_bytes: n('document_bytes'),
        archive_bytes: n('archive_bytes'),
        replicas: replicas.rows.map((row) => row.replica_id)
      }
    }
  }

  /** Why nothing may be written any more (another server claimed this replica id), or null. */
  unwritable (): TaskvaultError | null {
    return this.leases?.taken ?? null
  }

  /**
   * Null when the database answers, the StorageError (503) when it does not within
   * pingTimeoutMs: a probe that waited for a table lock up to the statement timeout would hold
   * a connection long after the prober gave up, and the next probes would take more.
   */
  async check (): Promise<TaskvaultError | null> {
    this.pinging ??= this.ping().finally(() => { this.pinging = null })
    return await this.pinging
  }

  private async ping (): Promise<TaskvaultError | null> {
    const operation = 'checking the database'
    let timer: NodeJS.Timeout | undefined
    let late = false
    // The statement is bounded by the database; the wait for a free connection, here.
    const waited = new Promise<TaskvaultError>((resolve) => {
      timer = setTimeout(() => {
        late = true
        resolve(new StorageError(operation, Object.assign(new Error(`no answer within ${this.pingTimeoutMs} ms`), { code: 'ETIMEDOUT' })))
      }, this.pingTimeoutMs)
    })
    const answered = this.run(operation, { text: PING }, [], { statementMs: this.pingTimeoutMs, wanted: () => !late }).then(
      () => null,
      (err: unknown) => {
        if (err instanceof TaskvaultError) return err
        throw err
      })
    try {
      return await Promise.race([answered, waited])
    } finally {
      clearTimeout(timer)
      // Lost the race: its connection, once it has one, goes back unused; its outcome is known above.
      answered.catch(noop)
    }
  }

  /** From the rows this process read or wrote; totals() counts every row (other replicas', `taskvault seal`'s). */
  encryption (): EncryptionStats | null {
    return this.keyring === null ? null : this.encryptionStats(this.kidCounts)
  }

  /** Encryption stats from active sessions counted by kid ('' for plaintext). */
  private encryptionStats (counts: ReadonlyMap<string, number>): EncryptionStats {
    const keyring = this.keyring as Keyring
    const sealed = kidRecord<number>()
    // Every configured kid, 0 when nothing is under it: an operator sees when an old key can go.
    for (const kid of keyring.kids) sealed[kid] = 0
    for (const [kid, count] of counts) if (kid !== '' && count > 0) sealed[kid] = count
    return { active_kid: keyring.activeKid, sealed_sessions: sealed, plaintext_sessions: counts.get('') ?? 0 }
  }

  serialize (file: SessionFile): Promise<Buffer> {
    return serializeSessionFile(file, this.indent, Number.POSITIVE_INFINITY, this.keyring)
  }

  /** Ends the pool when the store made it; a host's pool is the host's to end. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.leases?.close()
    // Leaving cleanly: gone from /stats at once, not after TASK_LEASE_MS (unless events of ours were
    // lost: the row then runs out, and the replica that clears it logs a gap).
    // Only once it joined (init claimed the id): a boot that never reached the database has no row to leave.
    const leaving = this.leases !== null && this.leaveAtClose && this.joined ? this.leases.me.instance : null
    const last = async (): Promise<void> => {
      if (leaving !== null) await pooledQuery(this.pool, leave(this.replicaId, leaving)).catch(noop)
      if (this.ownsPool) await this.pool.end().catch(noop)
    }
    // Bounded: a row not left runs out (the replica that clears it resets the streams, as after a
    // kill), and a statement the database does not answer holds its connection until its
    // timeout, not the shutdown; both go on meanwhile.
    await orLate(last(), this.closeWaitMs, undefined)
  }

  get closeWaitMs (): number {
    return this.pingTimeoutMs
  }

  // --- Shared by several replicas (SharedSessions; leases.ts) ---

  async refresh (sessionId: string): Promise<LoadedSession | null | undefined> {
    this.checkId(sessionId)
    // The registry adopts what is stored: no undo of an archive in doubt follows.
    this.doubtful.delete(sessionId)
    const known = this.rows.get(sessionId) ?? null
    const row = await this.refresher.submit({ sessionId, bytes: 0 })
    this.noteHolder(sessionId, row?.live === true ? row.owner : null)
    if (row === null) {
      if (known === null) return undefined
      this.forget(sessionId)
      this.unsure.delete(sessionId)
      return null
    }
    if (row.document === null) return undefined
    const { file, kid } = this.readRow(sessionId, row.row_id, row.document)
    this.known(sessionId, { row: row.row_id, version: row.version, kid: kid ?? '' })
    // The stored state is adopted as it is: whatever an uncertain write of ours did is settled
    // (and if it landed, its events never went out).
    if (this.unsure.delete(sessionId)) this.events.emit('unannounced', sessionId)
    this.unreadable.delete(sessionId)
    return { file, bytes: row.bytes }
  }

  /**
   * An active row's session. One that does not read (damaged, or changed by hand) is left as it
   * is and its id stays taken: requests on it answer 409 saying so, as a save of it does. One
   * sealed under a kid no row opened under at the restore answers that the key is suspect (503).
   */
  private readRow (sessionId: string, rowId: string, document: string): { file: SessionFile, kid: string | null } {
    const name = archivedLikeName(sessionId, rowId)
    try {
      return readSessionDocument(name, document, sessionId, this.keyring)
    } catch (err) {
      if (!(err instanceof CorruptSessionFileError)) throw err
      if (err instanceof SealNotOpenedError && this.keys?.proven.has(err.kid) !== true) throw err.keySuspected(name)
      this.unreadable.add(sessionId)
      throw new UnreadableRowError(sessionId, err)
    }
  }

  /** Reads the rows of queued refreshes: one alone by its own statement, several by one. */
  private async sendRefreshes (batch: QueuedRefresh[]): Promise<void> {
    try {
      const first = batch[0]
      if (batch.length === 1 && first !== undefined) {
        const { rows } = await this.run<FreshRow>(`reading session '${first.sessionId}'`, refreshSession(first.sessionId, this.rows.get(first.sessionId) ?? null))
        first.resolve(rows[0] ?? null)
        return
      }
      const { rows } = await this.run<FreshRow>(`reading ${batch.length} sessions`, refreshSessions(batch.map((refresh) => {
        const known = this.rows.get(refresh.sessionId)
        return { sessionId: refresh.sessionId, row: known?.row ?? null, version: known?.version ?? null }
      })))
      const found = new Map(rows.map((row) => [row.session_id, row]))
      for (const refresh of batch) refresh.resolve(found.get(refresh.sessionId) ?? null)
    } catch (err) {
      for (const refresh of batch) refresh.reject(err)
    }
  }

  runningElsewhere (sessionId: string): string | null {
    return this.elsewhere.get(sessionId) ?? null
  }

  orderOf (sessionId: string): string | null {
    const row = this.rows.get(sessionId)
    if (row !== undefined) return `${row.row}.${row.version}`
    const ended = this.ended.get(sessionId)
    if (ended === undefined) return null
    // Taken once, by the delete's or the archive's event: past every version of its row.
    this.ended.delete(sessionId)
    return `${ended.row}.${ended.version}`
  }

  async acquire (sessionId: string): Promise<{ epoch: string, cancelRequested: boolean }> {
    return this.keeper().acquire(this.checkId(sessionId))
  }

  async release (sessionId: string, epoch: string, applied = true): Promise<void> {
    await this.keeper().release(sessionId, epoch, applied)
  }

  async isArchived (sessionId: string): Promise<boolean> {
    const { rows } = await this.run<{ archived: boolean }>(`reading whether session '${sessionId}' is archived`, isArchived(this.checkId(sessionId)))
    return rows[0]?.archived === true
  }

  async holder (sessionId: string): Promise<string | null> {
    const holder = await this.keeper().holder(this.checkId(sessionId))
    this.noteHolder(sessionId, holder)
    return holder
  }

  async cancelPending (sessionId: string): Promise<boolean> {
    return this.keeper().cancelPending(this.checkId(sessionId))
  }

  async sweep (limit: number, earlier: boolean, skip: readonly string[] = [], runs = true): Promise<SweptSession[]> {
    return this.keeper().sweep(limit, earlier, skip, runs)
  }

  async clearLostReplicas (): Promise<string[]> {
    return this.keeper().clearLost()
  }

  async requestCancel (sessionId: string): Promise<string | null> {
    return this.keeper().requestCancel(this.checkId(sessionId))
  }

  async listActive (offset: number, limit: number): Promise<{ total: number, sessions: SharedSummary[] }> {
    return listPage(this.run.bind(this), this.pageRows, activeSummaries(offset, limit), ACTIVE_COUNT)
  }

  async listWithArchived (offset: number, limit: number, filter: 'include' | 'only'): Promise<{ total: number, sessions: SharedSummary[] }> {
    return listPage(this.run.bind(this), this.pageRows, listedSummaries(offset, limit, filter), listedCount(filter))
  }

  async archivable (cutoff: Date, limit: number, after: ArchivableCursor | null = null): Promise<{ ids: string[], next: ArchivableCursor | null }> {
    const { rows } = await this.run<{ session_id: string, finished_at: string }>('finding sessions to archive', archivableSessions(cutoff, limit, after))
    const last = rows.at(-1)
    return { ids: rows.map((row) => row.session_id), next: last === undefined ? null : { finishedAt: last.finished_at, sessionId: last.session_id } }
  }

  async pastRetention (cutoffs: RetentionCutoffs, limit: number, after: RetentionCursor | null = null): Promise<{ sessions: ArchivedSummary[], next: RetentionCursor | null }> {
    for (let part = after?.part ?? 0; part < RETENTION_PARTS.length; part++) {
      const kind = RETENTION_PARTS[part] as RetentionPart
      const cutoff = kind.failed ? cutoffs.failed : cutoffs.all
      if (cutoff === null) continue
      const from = after !== null && after.part === part ? after : null
      const { rows } = await this.run<ArchivedRow & { at: string }>('finding archived sessions past retention', retentionCandidates(kind, cutoff, limit, from))
      const last = rows.at(-1)
      if (last === undefined) continue
      return { sessions: rows.map((row) => summaryOf(row, archivedLikeName(row.session_id, row.row_id))), next: { part, at: last.at, rowId: last.row_id } }
    }
    return { sessions: [], next: null }
  }

  /**
   * Holds a transaction-scoped advisory lock named after the pass and the schema for as long as
   * `run` takes (see pass-lock.ts).
   */
  async exclusively<T> (pass: string, wait: PassWait, run: (lock: PassLock) => Promise<T>): Promise<T | null> {
    return exclusively(this.pool, this.schema, pass, { idleMs: this.leaseMs, waitMs: wait.ms, stopped: wait.stopped }, run)
  }

  /** A frozen holder frees the lock within TASK_LEASE_MS (see exclusively): waited for that long and 5 s more. */
  get passWaitMs (): number {
    return this.leaseMs + 5000
  }

  async eventLog (): Promise<{ token: string, latest: number }> {
    const { rows } = await this.run<{ token: string, latest: string }>('reading the event log', { text: EVENT_LOG })
    return { token: rows[0]?.token ?? '', latest: Number(rows[0]?.latest ?? 0) }
  }

  async publishEvents (events: ReadonlyArray<{ name: string, data: unknown }>, keep: number): Promise<number> {
    if (events.length === 0) return 0
    const { rows } = await this.run<{ newest: string }>('publishing events', publishEvents(events.map((event) => event.name), events.map((event) => JSON.stringify(event.data)), keep, EVENTS_CHANNEL, this.schema))
    return Number(rows[0]?.newest ?? 0)
  }

  eventsUnpublished (): void {
    this.leaveAtClose = false
  }

  async eventsAfter (id: number, limit: number): Promise<{ events: LoggedEvent[], trimmed: number }> {
    const { rows } = await this.run<{ id: string, name: string, data: string, trimmed: string }>('reading events', eventsAfter(id, limit))
    return {
      events: rows.map((row) => ({ id: Number(row.id), name: row.name, data: JSON.parse(row.data) as Record<string, unknown> })),
      trimmed: Number(rows[0]?.trimmed ?? 0)
    }
  }

  private keeper (): LeaseKeeper {
    if (this.leases === null) throw new InvalidDatabaseSettingError('TASK_REPLICA_ID', 'leases need the store built with a replica id')
    return this.leases
  }

  private noteHolder (sessionId: string, holder: string | null): void {
    // Once another process claimed this replica id, a live lease under it that this process does
    // not hold is that process's: it runs the session elsewhere.
    const ours = holder === this.replicaId && (this.leases?.taken == null || this.leases.holds(sessionId))
    if (holder === null || ours) this.elsewhere.delete(sessionId)
    else this.elsewhere.set(sessionId, holder)
  }

  // --- Helpers ---

  /**
   * Runs a statement (pooledQuery()), as a StorageError naming `operation` when it fails. The
   * saves in `outcomes` are remembered as unsure when the failure leaves the outcome unknown. It
   * waits for statements of broken connections to end first (orphans.ts), unless `bound`: the
   * lease renewal, which reads no session and must not wait.
   */
  private async run<R extends pg.QueryResultRow> (operation: string, config: pg.QueryConfig, outcomes: ReadonlyArray<readonly [string, Outcome]> = [], bound?: Bound): Promise<pg.QueryResult<R>> {
    try {
      if (bound === undefined) await this.orphans.settled()
      return await pooledQuery<R>(this.pool, config, bound)
    } catch (err) {
      const failure = err instanceof QueryFailure ? err : new QueryFailure(err, true)
      this.orphans.add(failure)
      const error = storageError(operation, failure.cause, failure.sent)
      if (error instanceof StorageError && error.uncertain) for (const [sessionId, outcome] of outcomes) this.remember(sessionId, outcome)
      throw error
    }
  }

  /**
   * A write that returns null on a version conflict, tried once more if the conflict is only
   * the trace of an earlier write of ours whose outcome was unknown and which did land.
   */
  private async attempt<T> (sessionId: string, operation: string, write: () => Promise<T | null>): Promise<T> {
    const first = await write()
    if (first !== null) {
      this.unsure.delete(sessionId)
      return first
    }
    if (await this.reconcile(sessionId, operation)) {
      const second = await write()
      if (second !== null) {
        this.unsure.delete(sessionId)
        return second
      }
    }
    throw await this.conflict(sessionId, operation)
  }

  /**
   * A write's outcome is unknown: one more state the row may be in. The first (the change
   * answered as failed) is kept; past MAX_UNSURE the oldest of the later ones (write-backs of
   * one acknowledged state) goes, and one the same as the last is not added twice.
   */
  private remember (sessionId: string, outcome: Outcome): void {
    const outcomes = this.unsure.get(sessionId) ?? []
    const last = outcomes.at(-1)
    if (last !== undefined && (last.kind === 'gone' ? outcome.kind === 'gone' : outcome.kind === 'row' && outcome.data.equals(last.data))) return
    outcomes.push(outcome)
    if (outcomes.length > MAX_UNSURE) outcomes.splice(1, 1)
    this.unsure.set(sessionId, outcomes)
  }

  /** After uncertain writes: is the active row in the state one of them would have left? Then adopt it. */
  private async reconcile (sessionId: string, operation: string): Promise<boolean> {
    const outcomes = this.unsure.get(sessionId)
    if (outcomes === undefined) return false
    // Kept until one is found to have landed: otherwise another writer changed the row since,
    // and the refresh that follows the conflict adopts it, with a reset (ours may have landed
    // first, its events never sent).
    const { rows } = await this.run<{ row_id: string, version: string, document: string }>(operation, currentSession(sessionId))
    const row = rows[0]
    if (row === undefined) {
      if (!outcomes.some((outcome) => outcome.kind === 'gone')) return false
      this.unsure.delete(sessionId)
      this.forget(sessionId)
      this.events.emit('unannounced', sessionId)
      return true
    }
    const landed = outcomes.find((outcome) => outcome.kind === 'row' && this.sameSession(sessionId, row.document, outcome.data.toString('utf8')))
    if (landed?.kind !== 'row') return false
    this.unsure.delete(sessionId)
    this.known(sessionId, { row: row.row_id, version: row.version, kid: landed.kid })
    // Answered as failed, yet it landed: the change's events never went out.
    this.events.emit('unannounced', sessionId)
    return true
  }

  /**
   * Whether two stored forms hold the same session: the same bytes, or, once opened, the same
   * content (`taskvault seal` may have re-sealed the row since, keeping its version).
   */
  private sameSession (sessionId: string, stored: string, written: string): boolean {
    if (stored === written) return true
    try {
      const name = `${sessionId} (check)`
      return JSON.stringify(readSessionDocument(name, stored, sessionId, this.keyring).file) === JSON.stringify(readSessionDocument(name, written, sessionId, this.keyring).file)
    } catch {
      return false
    }
  }

  private async conflict (sessionId: string, operation: string): Promise<TaskvaultError> {
    if (this.leases?.fence(sessionId) != null && !(await this.leases.stillHeld(sessionId))) {
      return new LeaseLostError(sessionId, `${operation} refused: this replica no longer holds its lease`)
    }
    if (this.unreadable.has(sessionId)) {
      return new VersionConflictError(sessionId, operation, 'has a stored row that could not be read at restore (reported then); fix or delete that row first')
    }
    return new VersionConflictError(sessionId, operation)
  }

  private derive (file: SessionFile): DerivedColumns {
    return deriveColumns(file, this.keyring?.activeKid ?? null)
  }

  private checkId (sessionId: string): string {
    if (!SESSION_ID.test(sessionId)) throw new InvalidSessionIdError(`invalid session id '${sessionId.slice(0, 140)}'`)
    return sessionId
  }

  /** Records the active row of a session, and its key for the encryption stats. */
  private known (sessionId: string, row: KnownRow): void {
    this.forget(sessionId)
    this.ended.delete(sessionId)
    this.rows.set(sessionId, row)
    this.kidCounts.set(row.kid, (this.kidCounts.get(row.kid) ?? 0) + 1)
  }

  /**
   * A delete or an archive of ours ended the session's active row: the event of that change is
   * ordered after every change of the row (orderOf), an archive's before a delete of the copy it made.
   */
  private end (sessionId: string, how: 'deleted' | 'archived'): void {
    const row = this.rows.get(sessionId)
    if (row !== undefined) this.ended.set(sessionId, { row: row.row, version: how === 'deleted' ? DELETED_VERSION : ARCHIVED_VERSION })
    this.forget(sessionId)
  }

  /** The session has no active row (any more). */
  private forget (sessionId: string): void {
    const before = this.rows.get(sessionId)
    if (before === undefined) return
    this.rows.delete(sessionId)
    this.kidCounts.set(before.kid, (this.kidCounts.get(before.kid) ?? 1) - 1)
  }
}

/** A restored row's columns from its document when they differ from the row's (see correctColumns), else null. */
function astrayColumns (file: SessionFile, kid: string | null, row: ActiveRow): DerivedColumns | null {
  let columns: DerivedColumns
  try {
    columns = deriveColumns(file, kid)
  } catch {
    // A time the schema lets through but no date has (month 13): the session loads; its save will say.
    return null
  }
  return columnsHold(row, columns) ? null : columns
}
