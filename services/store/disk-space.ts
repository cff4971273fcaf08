import type { Logger } from '../types.js'

/** Free and total bytes of the filesystem holding the sessions, as /stats and /metrics show them. */
export interface DiskSpace {
  /** Bytes an unprivileged writer (the service) can still use. */
  free_bytes: number
  total_bytes: number
  /** free_bytes / total_bytes, 0..1. */
  free_ratio: number
}

export interface DiskWatchOptions {
  /** Reads the figures; null when the store has none to report (a database, say). */
  read: () => Promise<DiskSpace | null>
  /** Warn once when free_ratio falls below this (TASK_DISK_WARN_RATIO); 0 never warns. */
  warnRatio: number
  /** Check this often besides on demand (TASK_DISK_CHECK_INTERVAL_MS); 0: only on demand. */
  intervalMs: number
  /** A reading this recent is reused (TASK_DISK_MAX_AGE_MS): /stats stays as cheap as the other reads. */
  maxAgeMs: number
  /** Named in the log lines. */
  location: string
  logger: Logger
}

/**
 * Free space, read on demand (stats, scrapes) and on a timer, never more than one read at a
 * time: concurrent callers share the read in flight, so a burst of /stats costs one statfs.
 * Logs a warning when the free share crosses below the threshold, and again when it recovers:
 * once per crossing, however often it is read.
 */
export class DiskWatch {
  private readonly options: DiskWatchOptions
  private inFlight: Promise<DiskSpace | null> | null = null
  private low = false
  private failing = false
  private timer: NodeJS.Timeout | null = null
  private last: { at: number, space: DiskSpace } | null = null

  constructor (options: DiskWatchOptions) {
    this.options = options
  }

  /** The current figures; null when unknown (the store reports none, or the read failed: logged once). */
  read (): Promise<DiskSpace | null> {
    const last = this.last
    if (last !== null && performance.now() - last.at < this.options.maxAgeMs) return Promise.resolve(last.space)
    this.inFlight ??= this.readOnce().finally(() => { this.inFlight = null })
    return this.inFlight
  }

  start (): void {
    if (this.options.intervalMs <= 0 || this.timer !== null) return
    // Never rejects (readOnce catches), so the interval leaves nothing unobserved.
    this.timer = setInterval(() => { void this.read() }, this.options.intervalMs)
    this.timer.unref()
  }

  stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  private async readOnce (): Promise<DiskSpace | null> {
    const { logger: log, location, warnRatio } = this.options
    let space: DiskSpace | null
    try {
      space = await this.options.read()
    } catch (err) {
      if (!this.failing) log.error({ err, dir: location }, 'Could not read the free space of the storage filesystem')
      this.failing = true
      return null
    }
    this.failing = false
    if (space === null) return null
    const figures = { free_bytes: space.free_bytes, total_bytes: space.total_bytes, free_ratio: space.free_ratio, warn_ratio: warnRatio, dir: location }
    const low = space.free_ratio < warnRatio
    if (low && !this.low) log.warn(figures, `Storage is running out of space: ${percent(space.free_ratio)} free, below TASK_DISK_WARN_RATIO (${percent(warnRatio)})`)
    else if (!low && this.low) log.warn(figures, `Storage has room again: ${percent(space.free_ratio)} free, at or above TASK_DISK_WARN_RATIO (${percent(warnRatio)})`)
    this.low = low
    this.last = { at: performance.now(), space }
    return space
  }
}

function percent (ratio: number): string {
  return `${(ratio * 100).toFixed(1)}%`
}
