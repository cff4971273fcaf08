import type { Logger } from './types.js'

/**
 * A failure that repeats while its cause lasts (a poll each second while the database is
 * down): logged at `warn` when it starts, then at most once every `everyMs` with how many
 * failed since, and once at `info` when the operation succeeds again. An outage shows as a
 * few lines, not one stack trace a second.
 */
export class RepeatedFailure {
  private failures = 0
  private unlogged = 0
  private loggedAt = Number.NEGATIVE_INFINITY

  constructor (private readonly log: Logger, private readonly messages: { failed: string, recovered: string }, private readonly everyMs: number) {}

  failed (err: unknown, now = performance.now()): void {
    this.failures++
    this.unlogged++
    if (this.failures > 1 && now - this.loggedAt < this.everyMs) return
    this.log.warn({ err, failures: this.unlogged }, this.messages.failed)
    this.loggedAt = now
    this.unlogged = 0
  }

  succeeded (): void {
    if (this.failures === 0) return
    this.log.info({ failures: this.failures }, this.messages.recovered)
    this.failures = 0
    this.unlogged = 0
    this.loggedAt = Number.NEGATIVE_INFINITY
  }
}
