import type { SharedSessions, SweptSession } from '../store/store.js'
import { orLate } from '../deadline.js'
import type { Logger } from '../types.js'

export interface SweeperOptions {
  shared: SharedSessions
  /** TASK_SWEEP_INTERVAL_MS. */
  intervalMs: number
  /** TASK_SWEEP_BATCH: sessions claimed per statement. */
  batch: number
  /** TASK_SWEEP_BACKOFF_MAX_MS: a session whose takeover keeps failing is tried again at most this far apart. */
  backoffMaxMs: number
  /** Carries a claimed session on (its lease is this replica's now); false when that failed. Never rejects. */
  takeOver: (session: SweptSession) => Promise<boolean>
  /** TASK_RESUME_ON_START: whether the sessions claimed for their background run alone are worth claiming. */
  resumeRuns: boolean
  /** After each sweep: checks sessions this replica holds against their rows (TASK_SWEEP_RECHECK). Never rejects. */
  recheck: () => Promise<void>
  log: Logger
}

/** A session whose takeover failed: when this sweeper may claim it again. */
interface Failure {
  failures: number
  retryAt: number
}

/**
 * Every replica's sweeper: now and then it claims the sessions whose holder is gone (their lease
 * ran out) or that nobody runs but should be run on, and hands each to `takeOver`. A sweep that
 * fills its batch goes on at once with the next one; sweeps never overlap. A session whose
 * takeover failed (a document this version cannot read, a save that fails) is left out of this
 * sweeper's claims for one interval, then twice as long each time it fails again, up to
 * `backoffMaxMs`: given back unowned, it would otherwise head every claim and keep the sweep
 * from the sessions behind it.
 */
export class Sweeper {
  private timer: NodeJS.Timeout | null = null
  private sweeping: Promise<void> | null = null
  private stopped = false
  private readonly failed = new Map<string, Failure>()

  constructor (private readonly options: SweeperOptions) {}

  /** Sessions left out of claims now, their takeover having failed lately. */
  private backingOff (): string[] {
    const now = Date.now()
    return [...this.failed].filter(([, failure]) => failure.retryAt > now).map(([id]) => id)
  }

  /** Sweeps now, then every interval; resolves once the first sweep has handed its sessions over. */
  async start (): Promise<void> {
    if (this.stopped || this.timer !== null) return
    this.timer = setInterval(() => { this.sweep() }, this.options.intervalMs)
    this.timer.unref()
    this.sweep(true)
    await this.sweeping
  }

  /**
   * Stops sweeping; resolves once a sweep under way has handed its sessions over, or the
   * database has left it unanswered for SharedSessions.closeWaitMs: what it claimed then is taken
   * over by another replica once the leases run out, as a killed replica's would be.
   */
  async stop (): Promise<void> {
    this.stopped = true
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    if (this.sweeping === null) return
    const { shared, log } = this.options
    if (await orLate(this.sweeping.then(() => true, () => true), shared.closeWaitMs, false)) return
    log.warn({ wait_ms: shared.closeWaitMs }, 'A sweep under way got no answer from the database in time; stopping without it (what it claimed is taken over elsewhere once the leases run out)')
  }

  private sweep (earlier = false): void {
    if (this.sweeping !== null || this.stopped) return
    this.sweeping = this.pass(earlier).finally(() => { this.sweeping = null })
  }

  /** One sweep, batch after batch; the first (`earlier`) also takes what an earlier process of this replica id held. */
  private async pass (earlier: boolean): Promise<void> {
    const { shared, batch, takeOver, log } = this.options
    this.forgetOld()
    try {
      const lost = await shared.clearLostReplicas()
      if (lost.length > 0) log.warn({ replicas: lost }, 'Replicas stopped without leaving; event streams are reset, as their last events may never have been published')
    } catch (err) {
      log.warn({ err }, 'Could not look for replicas that stopped without leaving; the next sweep tries again')
    }
    while (!this.stopped) {
      let swept: SweptSession[]
      try {
        swept = await shared.sweep(batch, earlier, this.backingOff(), this.options.resumeRuns)
      } catch (err) {
        log.warn({ err }, 'Sweep for sessions whose lease ran out failed; the next one tries again')
        return
      }
      if (swept.length > 0) log.info({ sessions: swept.length }, 'Claimed sessions whose runs stopped elsewhere')
      const taken = await Promise.all(swept.map(takeOver))
      swept.forEach((session, i) => { this.settle(session.sessionId, taken[i] === true) })
      if (swept.length < batch) break
    }
    if (!this.stopped) await this.options.recheck()
  }

  private settle (sessionId: string, taken: boolean): void {
    if (taken) {
      this.failed.delete(sessionId)
      return
    }
    const failures = (this.failed.get(sessionId)?.failures ?? 0) + 1
    const wait = Math.min(this.options.backoffMaxMs, this.options.intervalMs * 2 ** Math.min(failures - 1, 30))
    this.failed.set(sessionId, { failures, retryAt: Date.now() + wait })
  }

  /** Failures long past their retry time: the session was not claimed since, so it is no longer stuck. */
  private forgetOld (): void {
    const before = Date.now() - this.options.backoffMaxMs - this.options.intervalMs
    for (const [id, failure] of this.failed) if (failure.retryAt < before) this.failed.delete(id)
  }
}
