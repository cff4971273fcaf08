/**
 * How many changes (requests other than GET, HEAD and OPTIONS) are in progress on the server,
 * averaged over time. The event loop's utilization misses a server whose changes wait on the
 * disk: its loop looks half idle while every client waits for an fsync, and stream writes that
 * take that "idle" half lengthen every answer. The number of changes in progress sees that load.
 */
export class ChangeLoad {
  private current = 0
  /** Changes in progress times milliseconds, since the last reading. */
  private area = 0
  private since = performance.now()
  private at = this.since

  /** `busyAt`: the average number in progress from which the server counts as busy (TASK_EVENTS_BUSY_CHANGES). */
  constructor (private readonly busyAt: number) {}

  /** A change began; `ended` must follow exactly once. */
  started (): void {
    this.mark()
    this.current++
  }

  ended (): void {
    this.mark()
    if (this.current > 0) this.current--
  }

  /** Changes in progress now. */
  get size (): number {
    return this.current
  }

  /** True when at least `busyAt` were in progress on average since the last reading (or since this meter began); a new reading begins. */
  busy (): boolean {
    this.mark()
    const window = this.at - this.since
    const average = window > 0 ? this.area / window : this.current
    this.area = 0
    this.since = this.at
    return average >= this.busyAt
  }

  private mark (): void {
    const now = performance.now()
    this.area += this.current * (now - this.at)
    this.at = now
  }
}
