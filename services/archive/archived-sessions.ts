import { summarize, type ArchivedSummary, type RetentionCutoffs } from './archive-index.js'
import { KeyUnavailableError, StaleArchivedCopyError, UnreadableArchivedError, isPassFailure, type PassFailure } from '../errors.js'
import { unchanged, type Draft } from '../session/draft.js'
import type { SessionRegistry, SessionSummary } from '../session/registry.js'
import type { Progress } from '../session/session.js'
import type { ArchiveTotals, ArchivedSession, LoadFailure, SessionStore } from '../store/store.js'
import type { Logger } from '../types.js'

export type { RetentionCutoffs }

export type ArchivedSessionSummary = SessionSummary & { archived: true }

/** What ArchivedSessions.before() read: the archived copy, null (none), or undefined (the session was active, none looked for). */
export type ArchivedCopy = ArchivedSession | null | undefined

export interface ArchivedSessionsOptions {
  registry: SessionRegistry
  store: SessionStore
  logger: Logger
}

/**
 * Sessions in the archive, seen from the task manager: out of memory, read through the store
 * on demand, and changed only through each session's change queue in the registry, so that
 * archive, bring-back, delete and retention of one session never interleave.
 *
 * A session that is active is never shown as archived, even if an older archived file of the
 * same id exists (left by a crash between bringing it back and removing the archived file).
 */
export class ArchivedSessions {
  private readonly registry: SessionRegistry
  private readonly store: SessionStore
  private readonly log: Logger
  /** Archived copies found unreadable since start (each once), set aside or left in place. */
  failedLoads = 0
  /** Copies left in place that were reported already (by name: a newer copy has a name of its own). */
  private readonly reported = new Set<string>()
  /** Archived sessions that are active too, counted when the counts were `key` (see totals). */
  private behindActive = { key: '', count: 0 }
  /** What summaries() last answered, and from what. */
  private shown: { from: readonly ArchivedSummary[], membership: number, shown: readonly ArchivedSummary[] } | null = null

  constructor (options: ArchivedSessionsOptions) {
    this.registry = options.registry
    this.store = options.store
    this.log = options.logger
  }

  /**
   * The archive's files and bytes, and its sessions that are not active: a copy left behind an
   * active session (a bring-back cut short by a crash, an archive whose folder fsync failed) is
   * no archived session, as lists say too. Those are counted again only when a count changed.
   */
  get totals (): Readonly<ArchiveTotals> {
    const all = this.store.archiveTotals()
    // Membership counts every session given to or taken from the registry: its size alone comes back.
    const key = `${all.sessions}:${all.files}:${all.bytes}:${this.registry.membership}`
    if (key !== this.behindActive.key) {
      let count = 0
      for (const id of this.store.archivedIds()) if (this.registry.find(id) !== null) count++
      this.behindActive = { key, count }
    }
    return { ...all, sessions: all.sessions - this.behindActive.count }
  }

  /** Archived, and not active (a shared store: as far as this replica knows; read() asks the rows). */
  has (sessionId: string): boolean {
    return this.registry.find(sessionId) === null && this.store.archivedName(sessionId) !== null
  }

  /**
   * The archived session read from its file, or null when it is not archived (or active). A
   * shared store is asked whenever the session is not active here: another replica may have
   * archived it, which this replica's index does not know (the store's read corrects it).
   */
  async read (sessionId: string): Promise<ArchivedSession | null> {
    if (this.store.shared === undefined ? !this.has(sessionId) : this.registry.find(sessionId) !== null) return null
    const { session, failures } = await this.store.readArchived(sessionId)
    this.report(failures)
    // A shared store's rows stay where they are (no corrupt/), keeping the id taken; a file that
    // could not be set aside is left out of the file store's index, so the id is free there.
    const kept = failures.find((failure) => failure.movedTo === null && failure.kid === undefined)
    if (session === null && kept !== undefined && this.store.shared !== undefined) throw new UnreadableArchivedError(sessionId, kept.reason)
    return session
  }

  /**
   * An archived session's progress from the summary its newest copy was read into, or null (not
   * archived, that copy not read yet, or a shared store, whose rows other replicas change). So
   * `/progress` polled on an archived session reads its file once, not a whole parse of a
   * session of many megabytes on every call.
   */
  knownProgress (sessionId: string): Progress | null {
    if (this.store.shared !== undefined || !this.has(sessionId)) return null
    // The index keeps the summary of the newest copy only: that copy's, or none.
    return this.store.archivedSummary?.(sessionId) ?? null
  }

  /**
   * The copy a change that may bring the session back needs, read beforehand (changes cannot
   * wait for I/O): as read(), but `undefined` when the session was active here, so none was
   * looked for (see unarchive).
   */
  async before (sessionId: string): Promise<ArchivedCopy> {
    if (this.registry.find(sessionId) !== null) return undefined
    return this.read(sessionId)
  }

  /**
   * Every archived session that is not active in memory, newest `updated_at` first (a store of
   * this process alone: a shared one lists from its rows). archivedView() gives a list's entry.
   */
  async summaries (): Promise<readonly ArchivedSummary[]> {
    const { sessions, failures } = await this.store.listArchived()
    this.report(failures)
    // Kept while neither the archive's summaries nor the registry's sessions change: lists come far more often.
    const last = this.shown
    if (last !== null && last.from === sessions && last.membership === this.registry.membership) return last.shown
    const shown = sessions.filter((summary) => this.registry.find(summary.session_id) === null)
    this.shown = { from: sessions, membership: this.registry.membership, shown }
    return shown
  }

  /**
   * Inside a change on a session that is not in memory: when it is archived, unarchives it
   * into the draft, with `copy` (read beforehand by before()) as its content, and returns true;
   * false when it is not archived. Throws StaleArchivedCopyError, before touching the draft,
   * when `copy` is no longer the archived file, or was never looked for.
   */
  unarchive (draft: Draft, copy: ArchivedCopy): boolean {
    // Active when the copy was read, gone now: perhaps archived by another replica, which this
    // replica's index cannot tell. Read again, from the rows.
    if (copy === undefined) throw new StaleArchivedCopyError(draft.sessionId)
    const name = this.store.archivedName(draft.sessionId)
    if (name === null) return false
    if (copy === null || !this.current(draft.sessionId, copy, name)) throw new StaleArchivedCopyError(draft.sessionId)
    draft.unarchive(copy.file, name, copy.bytes)
    return true
  }

  /**
   * Inside a change on a session that is not in memory: throws StaleArchivedCopyError unless
   * `copy` (read beforehand by before()) is still what the archive holds (null: nothing).
   */
  assertCurrent (draft: Draft, copy: ArchivedCopy): void {
    const name = this.store.archivedName(draft.sessionId)
    if (copy === undefined || (copy === null ? name !== null : !this.current(draft.sessionId, copy, name))) throw new StaleArchivedCopyError(draft.sessionId)
  }

  /**
   * Whether `copy`, read earlier, is still the session's newest archived copy: the same name and,
   * where a name comes back for a later copy (brought back or deleted, then archived again while
   * this copy waited for its change), the same index entry.
   */
  private current (sessionId: string, copy: ArchivedSession, name: string | null): boolean {
    return copy.name === name && (copy.entry === undefined || copy.entry === this.store.archivedEntry?.(sessionId))
  }

  /**
   * Deletes archived sessions that finished before their cutoff, found in the store's index (a
   * store of this process alone: a shared one pages its candidates from the rows). Each one is
   * told to `deleted` as soon as its deletion is durable, so a pass that fails (or a process that
   * dies) later has still reported and announced it; one that storage failed goes into `failures`.
   */
  async prune (cutoffs: RetentionCutoffs, stop: () => boolean | Promise<boolean>, deleted: (sessionId: string) => void, failures: PassFailure[]): Promise<void> {
    if (cutoffs.all === null && cutoffs.failed === null) return
    const listed = await this.store.listArchived()
    this.report(listed.failures)
    await this.pruneEach(listed.sessions, cutoffs, stop, deleted, failures)
  }

  /**
   * Deletes those of `candidates` that finished before their cutoff, each told to `deleted` once
   * durable. Each is checked again inside its change queue: one brought back or replaced since
   * the listing stays.
   */
  async pruneEach (candidates: readonly ArchivedSummary[], cutoffs: RetentionCutoffs, stop: () => boolean | Promise<boolean>, deleted: (sessionId: string) => void, failures: PassFailure[]): Promise<void> {
    for (const summary of candidates) {
      if (!expired(summary, cutoffs)) continue
      if (await stop()) break
      const sessionId = summary.session_id
      // Judged again on the copy itself: a summary may be a row's columns, which cannot tell a
      // copy sealed under a key this process lacks (never deleted unread, as a lost key must not
      // destroy data) nor one whose tasks were never counted (imported without its key).
      const copy = await this.read(sessionId).catch((err: Error) => {
        if (!(err instanceof KeyUnavailableError || err instanceof UnreadableArchivedError)) throw err
        this.log.warn({ session_id: sessionId, err }, 'Retention passed over an archived session it cannot open')
        return null
      })
      if (copy === null || copy.name !== summary.file || !expired(summarize(copy.file, copy.name), cutoffs)) continue
      const removed = await this.registry.change(sessionId, (draft) => {
        if (draft.file !== null || this.store.archivedName(sessionId) !== summary.file) return unchanged(false)
        draft.delete({ archived: true, upTo: summary.file })
        return true
      }).catch((err: Error) => {
        // Archived again meanwhile (by another replica): its new copy is judged by a later pass.
        if (err instanceof StaleArchivedCopyError) return false
        // An older copy under a key this process lacks: waits for its key, as an unread one does.
        if (err instanceof KeyUnavailableError) {
          this.log.warn({ session_id: sessionId, err }, 'Retention passed over an archived session it cannot open')
          return false
        }
        this.log.error({ session_id: sessionId, err }, 'Could not delete archived session')
        if (isPassFailure(err)) failures.push({ sessionId, err })
        return false
      })
      if (removed) deleted(sessionId)
    }
  }

  private report (failures: LoadFailure[]): void {
    for (const failure of failures) {
      // A copy left where it is (a database row, a file corrupt/ could not take) is met again by
      // every later read: counted and logged once, so polls and backups do not swell the count.
      if (failure.movedTo === null) {
        if (this.reported.has(failure.name)) continue
        this.reported.add(failure.name)
      }
      // One waiting for its key is not damaged: a warning, and not a failed load (the alert on
      // those sends an operator to corrupt/), so an archive that keeps a retired key's sessions
      // does not read as failing.
      if (failure.kid !== undefined) this.log.warn({ file: failure.name, kid: failure.kid, reason: failure.reason }, 'An archived session waits for its key; left where it is')
      else {
        this.failedLoads++
        this.log.error({ file: failure.name, moved_to: failure.movedTo, reason: failure.reason }, failure.movedTo === null ? 'Could not read an archived session; left where it is' : 'Could not read an archived session; set aside')
      }
    }
  }
}

/** An archived session as a list shows it (named fields: the summary carries more). */
export function archivedView (summary: ArchivedSummary): ArchivedSessionSummary {
  return {
    session_id: summary.session_id,
    created_at: summary.created_at,
    updated_at: summary.updated_at,
    total: summary.total,
    completed: summary.completed,
    failed: summary.failed,
    pending: summary.pending,
    in_progress: summary.in_progress,
    all_done: summary.all_done,
    percentage: summary.percentage,
    archived: true
  }
}

/** Whether an archived session finished before its cutoff (the failed one when a task failed). */
function expired (summary: ArchivedSummary, cutoffs: RetentionCutoffs): boolean {
  const cutoff = summary.failed > 0 ? cutoffs.failed : cutoffs.all
  return cutoff !== null && Date.parse(summary.finished_at) < cutoff.getTime()
}
