import type { Logger, TaskManager } from './task-manager.js'

const DAY_MS = 24 * 60 * 60 * 1000

export interface ArchiveSchedulerOptions {
  manager: TaskManager
  /** Sessions finished longer ago than this move to the archive; 0 turns archiving off. */
  archiveDays: number
  intervalMs: number
  clock?: () => Date
  logger?: Logger
}

export interface ArchivePass {
  archived: string[]
}

/** Moves finished sessions to the archive once at start, then on an interval. Passes never overlap. */
export class ArchiveScheduler {
  private readonly manager: TaskManager
  private readonly archiveDays: number
  private readonly intervalMs: number
  private readonly clock: () => Date
  private readonly log: Logger | undefined
  private timer: NodeJS.Timeout | null = null
  private running: Promise<ArchivePass> | null = null

  constructor (options: ArchiveSchedulerOptions) {
    this.manager = options.manager
    this.archiveDays = options.archiveDays
    this.intervalMs = options.intervalMs
    this.clock = options.clock ?? (() => new Date())
    this.log = options.logger
  }

  get enabled (): boolean {
    return this.archiveDays > 0
  }

  start (): void {
    if (!this.enabled || this.timer !== null) return
    void this.runOnce()
    this.timer = setInterval(() => { void this.runOnce() }, this.intervalMs)
    // The schedule must never keep the process alive on its own.
    this.timer.unref()
  }

  /** Runs a pass now (or joins the one running). `olderThanDays` overrides the setting. */
  runOnce (olderThanDays = this.archiveDays): Promise<ArchivePass> {
    this.running ??= this.pass(olderThanDays).finally(() => { this.running = null })
    return this.running
  }

  async stop (): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    await this.running
  }

  private async pass (olderThanDays: number): Promise<ArchivePass> {
    if (olderThanDays <= 0 || this.manager.shuttingDown) return { archived: [] }
    const cutoff = new Date(this.clock().getTime() - olderThanDays * DAY_MS)
    try {
      const archived = await this.manager.archiveFinishedBefore(cutoff)
      if (archived.length > 0) this.log?.info({ archived: archived.length, cutoff: cutoff.toISOString() }, `Archived ${archived.length} finished sessions`)
      return { archived }
    } catch (err) {
      this.log?.error({ err }, 'Archive pass failed')
      return { archived: [] }
    }
  }
}
