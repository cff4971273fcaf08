import type { Logger } from '../types.js'

export interface WriteBackRetriesOptions {
  /** Tries every owed write-back once; resolves with how many are still owed (SessionRegistry.retryWriteBacks). */
  retry: () => Promise<number>
  /** The first wait after a failure, doubled after each try that leaves some owed (TASK_RUN_RETRY_MS). */
  retryMs: number
  /** The longest wait (TASK_RUN_RETRY_MAX_MS). */
  retryMaxMs: number
  log: Logger
}

/**
 * Paces the write-backs a storage fault left owed (SessionSlot.owed): after an uncertain write
 * and a failed write-back, storage may hold a change its client was told failed, until the
 * acknowledged state is put back. Tried again after TASK_RUN_RETRY_MS, doubling up to
 * TASK_RUN_RETRY_MAX_MS while storage keeps failing, and once more at shutdown.
 */
export class WriteBackRetries {
  private readonly options: WriteBackRetriesOptions
  private timer: NodeJS.Timeout | null = null
  private delay: number
  /** The round under way: its retry(). */
  private round: Promise<number> | null = null
  /** A write-back failed while a round ran: its count may predate that, so another round follows. */
  private again = false
  /** Set by stop(): the round under way then, which close() takes as its last try. */
  private stopped: { round: Promise<number> | null } | null = null
  /** A write-back failed after stop() other than in that round (a write that was in flight): close() tries again. */
  private failedSinceStop = false
  private closing: Promise<void> | null = null

  constructor (options: WriteBackRetriesOptions) {
    this.options = options
    this.delay = Math.min(options.retryMs, options.retryMaxMs)
  }

  /**
   * A write-back failed: warns, and makes sure a try is scheduled. `retried`: it was a round's
   * try (SessionRegistry's writeBackFailed).
   */
  readonly failed = (sessionId: string, err: unknown, retried = false): void => {
    this.options.log.warn({ session_id: sessionId, err, retry_ms: this.delay }, 'Could not put back the acknowledged state after a failed save; trying again')
    if (this.stopped !== null && !retried) this.failedSinceStop = true
    this.schedule()
  }

  /**
   * Starts no more rounds (a shutdown: the writes still queued are left to finish, then
   * close()). The round under way, if any, will be the last try.
   */
  stop (): void {
    if (this.stopped !== null) return
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    this.stopped = { round: this.round }
  }

  /**
   * Stops (see stop()) and makes the last try (once, however often it is called); warns about
   * what is still owed (after a restart those sessions may show a change answered as failed).
   * The round under way at stop() is that try: what it leaves owed failed just now, and another
   * round would double the wait on storage that does not answer (a statement timeout each).
   * A round follows it only for write-backs that failed outside it since (writes in flight).
   */
  async close (): Promise<void> {
    this.stop()
    const round = this.stopped?.round ?? null
    this.closing ??= (async () => {
      let owed = round === null ? null : await round.catch(() => null)
      if (owed === null || this.failedSinceStop) owed = await this.options.retry()
      if (owed > 0) this.options.log.warn({ sessions: owed }, 'Stopping with acknowledged states not put back: these sessions may show a change answered as failed')
    })()
    return this.closing
  }

  private schedule (): void {
    if (this.stopped !== null || this.timer !== null) return
    if (this.round !== null) {
      this.again = true
      return
    }
    this.timer = setTimeout(() => {
      this.timer = null
      this.again = false
      this.round = this.options.retry()
      // Neither callback throws: the chain ends here.
      void this.round.then((owed) => {
        this.round = null
        if (owed === 0 && !this.again) {
          this.delay = Math.min(this.options.retryMs, this.options.retryMaxMs)
          this.options.log.info({}, 'Storage holds the acknowledged states again after failed saves')
          return
        }
        // Still failing: wait longer. None left by the count, but one failed after it: a fresh start.
        this.delay = owed > 0 ? Math.min(this.delay * 2, this.options.retryMaxMs) : Math.min(this.options.retryMs, this.options.retryMaxMs)
        this.schedule()
      }, (err: unknown) => {
        this.round = null
        this.options.log.error({ err }, 'Could not try the owed write-backs again')
      })
    }, this.delay)
    this.timer.unref()
  }
}
