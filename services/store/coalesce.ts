import { noop } from '../noop.js'

/**
 * Runs `task` so that every caller gets a run that starts at or after its call, while
 * at most one run is in flight and at most one more is queued behind it. Used for folder
 * fsyncs: one fsync that starts after N renames makes all N durable.
 */
export class CoalescedRun {
  private running: Promise<void> | null = null
  private queued: Promise<void> | null = null

  constructor (private readonly task: () => Promise<void>) {}

  run (): Promise<void> {
    if (this.queued !== null) return this.queued
    if (this.running === null) return this.start()
    const queued = this.running.then(noop, noop).then(() => {
      this.queued = null
      return this.start()
    })
    this.queued = queued
    return queued
  }

  private start (): Promise<void> {
    const run: Promise<void> = this.task().finally(() => {
      if (this.running === run) this.running = null
    })
    this.running = run
    return run
  }
}
