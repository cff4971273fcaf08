import type { RetentionCutoffs } from './archived-sessions.js'
import { ShuttingDownError, type PassFailure } from '../errors.js'
import type { TaskManager } from '../task-manager.js'
import type { Logger } from '../types.js'
import { noop } from '../noop.js'

const DAY_MS = 24 * 60 * 60 * 1000

/** How long archived sessions are kept, in days from when they finished; 0 keeps them forever. */
export interface Retention {
  days: number
  /** For sessions with a Failed task; 0 means the same as `days`. */
  failedDays: number
}

export interface ArchiveSchedulerOptions {
  manager: TaskManager
  /** Sessions finished longer ago than this move to the archive; 0 turns archiving off. */
  archiveDays: number
  retention?: Retention
  intervalMs: number
  clock?: () => Date
  logger?: Logger
}

/** What one pass does; each part left out follows the settings. */
export interface ArchivePassOptions {
  /** Archive sessions finished more than this many days ago (0: every finished session); null archives nothing. */
  archiveOlderThanDays?: number | null
  /** null deletes nothing. */
  retention?: Retention | null
  /**
   * A pass of the schedule's own: on a shared store it is skipped while another replica's runs.
   * One asked for (false, the default) waits for that pass, and fails (PASS_BUSY) if it still runs.
   */
  scheduled?: boolean
}

export interface ArchivePass {
  archived: string[]
  deleted: string[]
  /** Sessions storage failed (logged): a pass asked for over HTTP answers as a failed save. */
  failures: PassFailure[]
}

/**
 * Moves finished sessions to the archive and deletes archived ones past retention: once at
 * start, then on an interval, and on demand (runOnce). Passes never overlap: one asked for
 * while another runs waits for it; a timer tick while one runs is skipped.
 */
export class ArchiveScheduler {
  private readonly manager: TaskManager
  private readonly archiveDays: number
  private readonly retention: Retention | null
  private readonly intervalMs: number
  private readonly clock: () => Date
  private readonly log: Logger | undefined
  private timer: NodeJS.Timeout | null = null
  /** stop() was called: a start() after it (a shutdown that began while the server started) schedules nothing. */
  private stopped = false
  /** Settles when the last pass asked for has finished; null when none is running. */
  private tail: Promise<void> | null = null
  /** Passes asked for that have not started yet, by their options. */
  private readonly waiting = new Map<string, Promise<ArchivePass>>()

  constructor (options: ArchiveSchedulerOptions) {
    this.manager = options.manager
    this.archiveDays = options.archiveDays
    const retention = options.retention ?? { days: 0, failedDays: 0 }
    this.retention = retention.days > 0 || retention.failedDays > 0 ? retention : null
    this.intervalMs = options.intervalMs
    this.clock = options.clock ?? (() => new Date())
    this.log = options.logger
  }

  get enabled (): boolean {
    return this.archiveDays > 0 || this.retention !== null
  }

  start (): void {
    if (!this.enabled || this.timer !== null || this.stopped) return
    this.tick()
    this.timer = setInterval(() => this.tick(), this.intervalMs)
    // The schedule must never keep the process alive on its own.
    this.timer.unref()
  }

  /**
   * Runs a pass now, after the one running (if any). Rejects if the pass fails. Callers asking
   * for the same pass while one like it still waits to start share that one: a burst of
   * POST /archive costs one pass, not one each.
   */
  runOnce (options: ArchivePassOptions = {}): Promise<ArchivePass> {
    const key = JSON.stringify([options.archiveOlderThanDays, options.retention, options.scheduled])
    const waiting = this.waiting.get(key)
    if (waiting !== undefined) return waiting
    const pass = (this.tail ?? Promise.resolve()).then(() => {
      this.waiting.delete(key)
      return this.pass(options)
    })
    this.waiting.set(key, pass)
    const tail: Promise<void> = pass.then(noop, noop).finally(() => {
      if (this.tail === tail) this.tail = null
    })
    this.tail = tail
    return pass
  }

  async stop (): Promise<void> {
    this.stopped = true
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    await this.tail
  }

  private tick (): void {
    if (this.tail !== null) return
    this.runOnce({ scheduled: true }).catch((err: unknown) => this.log?.error({ err }, 'Archive pass failed'))
  }

  private async pass (options: ArchivePassOptions): Promise<ArchivePass> {
    // Queued behind a pass when the shutdown began: it did not run, which POST /archive must not answer as done.
    if (this.manager.shuttingDown) return { archived: [], deleted: [], failures: [{ sessionId: null, err: new ShuttingDownError() }] }
    // Every move would fail one by one; the pass fails once instead (503 LOCK_LOST for POST /archive).
    this.manager.assertWritable()
    const now = this.clock().getTime()
    const days = options.archiveOlderThanDays === undefined ? (this.archiveDays > 0 ? this.archiveDays : null) : options.archiveOlderThanDays
    const failures: PassFailure[] = []
    const wait = options.scheduled !== true
    const archived = days === null ? [] : await this.manager.archiveFinishedBefore(daysBefore(now, days), failures, wait)
    const retention = options.retention === undefined ? this.retention : options.retention
    // The archive part stopped (storage or the database failing, a shutdown): retention would only fail or stop too.
    const stopped = failures.some((failure) => failure.sessionId === null)
    const deleted = retention === null || stopped ? [] : await this.manager.pruneArchivedBefore(retentionCutoffs(now, retention), failures, wait)
    if (archived.length > 0 || deleted.length > 0) {
      this.log?.info({ archived: archived.length, deleted: deleted.length }, `Archived ${archived.length} finished sessions, deleted ${deleted.length} past retention`)
    }
    return { archived, deleted, failures }
  }
}

export function retentionCutoffs (nowMs: number, retention: Retention): RetentionCutoffs {
  const failedDays = retention.failedDays > 0 ? retention.failedDays : retention.days
  return {
    all: retention.days > 0 ? daysBefore(nowMs, retention.days) : null,
    failed: failedDays > 0 ? daysBefore(nowMs, failedDays) : null
  }
}

/**
 * `days` before `nowMs`, no earlier than 1970: nothing finished before, and a huge number of
 * days (older_than_days 1e9) would otherwise make an invalid date, which PostgreSQL refuses.
 */
function daysBefore (nowMs: number, days: number): Date {
  return new Date(Math.max(0, nowMs - days * DAY_MS))
}
