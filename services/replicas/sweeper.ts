import type { SharedSessions, SweptSession } from '../store/store.js'
import type { Logger } from '../types.js'

export interface SweeperOptions {
  shared: SharedSessions
  /** TASK_SWEEP_INTERVAL_MS. */
  intervalMs: number
  /** TASK_SWEEP_BATCH: sessions claimed per statement. */
  batch: number
  /** Carries a claimed session on (its lease is this replica's now); never rejects. */
  takeOver: (session: SweptSession) => Promise<void>
  log: Logger
}

/**
 * Every replica's sweeper: now and then it claims the sessions whose holder is gone (their lease
 * ran out) or that nobody runs but should be run on, and hands each to `takeOver`. A sweep that
 * fills its batch goes on at once with the next one; sweeps never overlap.
 */
export class Sweeper {
  private timer: NodeJS.Timeout | null = null
  private sweeping: Promise<void> | null = null
  private stopped = false

  constructor (private readonly options: SweeperOptions) {}

  /** Sweeps now, then every interval; resolves once the first sweep has handed its sessions over. */
  async start (): Promise<void> {
    if (this.stopped || this.timer !== null) return
    this.timer = setInterval(() => { this.sweep() }, this.options.intervalMs)
    this.timer.unref()
    this.sweep(true)
    await this.sweeping
  }

  /** Stops sweeping; resolves once a sweep under way has handed its sessions over. */
  async stop (): Promise<void> {
    this.stopped = true
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    await this.sweeping
  }

  private sweep (earlier = false): void {
    if (this.sweeping !== null || this.stopped) return
    this.sweeping = this.pass(earlier).finally(() => { this.sweeping = null })
  }

  /** One sweep, batch after batch; the first (`earlier`) also takes what an earlier process of this replica id held. */
  private async pass (earlier: boolean): Promise<void> {
    const { shared, batch, takeOver, log } = this.options
    while (!this.stopped) {
      let swept: SweptSession[]
      try {
        swept = await shared.sweep(batch, earlier)
      } catch (err) {
        log.warn({ err }, 'Sweep for sessions whose lease ran out failed; the next one tries again')
        return
      }
      if (swept.length > 0) log.info({ sessions: swept.length }, 'Claimed sessions whose runs stopped elsewhere')
      await Promise.all(swept.map(takeOver))
      if (swept.length < batch) return
    }
  }
}
