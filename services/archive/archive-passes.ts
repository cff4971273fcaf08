import { isDeepStrictEqual } from 'node:util'
import type { ArchivedSummary } from './archive-index.js'
import type { ArchivedSessions, RetentionCutoffs } from './archived-sessions.js'
import { DatabaseUnavailableError, PassBusyError, ShuttingDownError, TaskvaultError, isPassFailure, type PassFailure } from '../errors.js'
import type { TaskEventData } from '../events/task-events.js'
import { noop } from '../noop.js'
import { unchanged } from '../session/draft.js'
import type { SessionRegistry } from '../session/registry.js'
import { finishedAt, type SessionFile } from '../session/session.js'
import type { ArchivableCursor, PassLock, PassWait, RetentionCursor, SharedSessions } from '../store/store.js'
import type { Logger } from '../types.js'

export interface ArchivePassesOptions {
  registry: SessionRegistry
  archived: ArchivedSessions
  /** A store shared by several replicas: candidates come from its rows, one replica's pass at a time. */
  shared: SharedSessions | undefined
  /** Candidates read from a shared store per page (TASK_SWEEP_BATCH). */
  pageSize: number
  /** True once the service is shutting down: a pass stops. */
  shuttingDown: () => boolean
  /** A change made, as a live-view event. */
  announce: (name: 'session.archived' | 'session.deleted', data: TaskEventData) => void
  log: Logger
}

/**
 * The archive pass (finished sessions into the archive) and the retention pass (archived
 * sessions past their cutoff deleted), on one store or, shared by replicas, under a pass lock.
 */
export class ArchivePasses {
  constructor (private readonly options: ArchivePassesOptions) {}

  /**
   * Moves to the archive every session whose tasks are all done and whose last completion
   * is before `cutoff`. The check is made again inside each session's change queue, so a
   * session that starts running or gains tasks in the meantime stays. Sessions storage failed go
   * into `failures` (logged), and the pass goes on with the others; a failure that stops the
   * whole pass (the database gone) goes there too, after the sessions archived before it.
   * `wait`: another replica's pass is waited for (SharedSessions.passWaitMs), and one still
   * running then is a failure (PASS_BUSY); else this pass is skipped at once.
   */
  async archiveFinishedBefore (cutoff: Date, failures: PassFailure[], wait = true): Promise<string[]> {
    const { shared, registry } = this.options
    if (shared === undefined) return this.archiveEach(registry.sessionIds(), cutoff, failures)
    const done: string[] = []
    // One replica's pass at a time; candidates from the rows (sessions nobody runs), each
    // checked against its row before it moves.
    const ran = await shared.exclusively('archive', this.passWait(wait), async (lock) => {
      const seen = new Set<string>()
      const stop = this.passStop('archive', lock, failures)
      // Page by page: sessions left active (unreadable ones, say) must not hide the ones after them.
      let after: ArchivableCursor | null = null
      while (!(await stop(false))) {
        const page: { ids: string[], next: ArchivableCursor | null } = await shared.archivable(cutoff, this.options.pageSize, after)
        after = page.next
        if (page.ids.length === 0 || this.stoppedByShutdown(failures)) return done
        const batch = page.ids.filter((id) => !seen.has(id))
        // A page of sessions seen already: the cursor did not move (it always should); stop rather than loop.
        if (batch.length === 0) return done
        for (const id of batch) {
          seen.add(id)
          await registry.sync(id).catch(noop)
        }
        done.push(...await this.archiveEach(batch, cutoff, failures, stop))
      }
      return done
    }).catch((err: unknown) => { this.passStopped('archive', err, failures) })
    if (ran === null && wait && !this.stoppedByShutdown(failures)) failures.push({ sessionId: null, err: new PassBusyError('archive', shared.passWaitMs) })
    return done
  }

  /** Archives those of `sessionIds` that are archivable; `stop` is asked before each (a shutdown; on a shared store, a lost lock too: passStop). */
  private async archiveEach (sessionIds: string[], cutoff: Date, failures: PassFailure[], stop: () => Promise<boolean> = async () => this.stoppedByShutdown(failures)): Promise<string[]> {
    const { registry, log } = this.options
    const archived: string[] = []
    for (const sessionId of sessionIds) {
      const file = registry.find(sessionId)
      if (file === null || !isArchivable(file, cutoff)) continue
      if (await stop()) break
      const moved = await registry.change(sessionId, (draft) => {
        // Unsaved changes (auto-save off) stay put: the archive must get the latest state.
        if (draft.file === null || registry.existing(sessionId).executing || registry.isUnsaved(sessionId) ||
          !isArchivable(draft.file, cutoff)) return unchanged(false)
        draft.archive()
        return true
      }).catch((err: Error) => {
        log.error({ session_id: sessionId, err }, 'Could not archive session')
        if (isPassFailure(err)) failures.push({ sessionId, err })
        return false
      })
      if (moved) {
        archived.push(sessionId)
        this.options.announce('session.archived', { session_id: sessionId })
      }
    }
    return archived
  }

  /** Deletes archived sessions that finished before their retention cutoff; those storage failed go into `failures`, and so does a failure that stops the pass. */
  async pruneArchivedBefore (cutoffs: RetentionCutoffs, failures: PassFailure[], wait = true): Promise<string[]> {
    const shared = this.options.shared
    const deleted: string[] = []
    // Announced one by one as each is durable, as archiveEach does: held to the pass's end, a
    // deletion's event would follow whatever a client did to the id meanwhile (a session created
    // again), and a process dying mid-pass would never announce the deletions it made.
    const gone = (sessionId: string): void => {
      deleted.push(sessionId)
      this.options.announce('session.deleted', { session_id: sessionId, archived: true })
    }
    try {
      if (shared === undefined) await this.options.archived.prune(cutoffs, () => this.stoppedByShutdown(failures), gone, failures)
      else {
        const ran = await shared.exclusively('retention', this.passWait(wait), async (lock) => { await this.pruneShared(shared, cutoffs, lock, gone, failures) })
        if (ran === null && wait && !this.stoppedByShutdown(failures)) failures.push({ sessionId: null, err: new PassBusyError('retention', shared.passWaitMs) })
      }
    } catch (err) {
      this.passStopped('retention', err, failures)
    }
    return deleted
  }

  /**
   * Retention on a shared store: candidates a page at a time from the rows (other replicas
   * archive too, and the whole archive is never read), each judged again on its copy; each
   * deleted is told to `deleted` as it goes.
   */
  private async pruneShared (shared: SharedSessions, cutoffs: RetentionCutoffs, lock: PassLock, deleted: (sessionId: string) => void, failures: PassFailure[]): Promise<void> {
    const stop = this.passStop('retention', lock, failures)
    let after: RetentionCursor | null = null
    while (!(await stop(false))) {
      const page: { sessions: ArchivedSummary[], next: RetentionCursor | null } = await shared.pastRetention(cutoffs, this.options.pageSize, after)
      // No more, or a cursor that did not move (it always should): the pass ends rather than loop holding its lock.
      if (page.sessions.length === 0 || (after !== null && page.next !== null && isDeepStrictEqual(page.next, after))) return
      after = page.next
      await this.options.archived.pruneEach(page.sessions, cutoffs, stop, deleted, failures)
    }
  }

  /**
   * What a shared pass asks before each page and each session: true once it must stop, because
   * the service is shutting down or the pass's lock went with its connection (another replica's
   * pass may have started). A lost lock goes into `failures` once, so the pass answers 503; so
   * does a shutdown, when asked with work left (`workLeft`: before a session, not before a page
   * that may turn out empty).
   */
  /** A pass asked for waits for another replica's (passWaitMs) unless a shutdown begins; a scheduled one does not wait. */
  private passWait (wait: boolean): PassWait {
    return { ms: wait ? this.options.shared?.passWaitMs ?? 0 : 0, stopped: this.options.shuttingDown }
  }

  private passStop (pass: 'archive' | 'retention', lock: PassLock, failures: PassFailure[]): (workLeft?: boolean) => Promise<boolean> {
    let stopped = false
    return async (workLeft = true) => {
      if (stopped || (workLeft ? this.stoppedByShutdown(failures) : this.options.shuttingDown())) return true
      if (await lock.held()) return false
      stopped = true
      const reason = `the ${pass} pass stopped: its lock's connection to the database broke`
      this.options.log.warn({ pass }, reason)
      failures.push({ sessionId: null, err: new DatabaseUnavailableError(reason) })
      return true
    }
  }

  /**
   * A pass stopped by a failure of storage or the database as a whole (a listing or a page that
   * could not be read): into `failures`, so the pass answers 503 or 507 with what it did before.
   * Anything else (a defect) is thrown on.
   */
  private passStopped (pass: 'archive' | 'retention', err: unknown, failures: PassFailure[]): void {
    if (!(err instanceof TaskvaultError) || err.statusCode < 500) throw err
    this.options.log.error({ err, pass }, `The ${pass} pass stopped: storage failed`)
    failures.push({ sessionId: null, err })
  }

  /**
   * Whether a pass must stop because the service is shutting down; if so, that goes into
   * `failures` (once), so a POST /archive cut short answers 503 rather than 200 with a part.
   */
  private stoppedByShutdown (failures: PassFailure[]): boolean {
    if (!this.options.shuttingDown()) return false
    if (!failures.some(({ err }) => err instanceof ShuttingDownError)) failures.push({ sessionId: null, err: new ShuttingDownError() })
    return true
  }
}

function isArchivable (file: SessionFile, cutoff: Date): boolean {
  const finished = finishedAt(file)
  return finished !== null && Date.parse(finished) < cutoff.getTime()
}
