/**
 * A bound on agent calls in flight at once (TASK_MAX_AGENT_CALLS), across every session: each
 * call holds a slot from before its task is marked InProgress until its agent answers. Without
 * it, a client could start a background run on every session at once and so start that many
 * programs, or open that many requests each buffering its answer. Slots go in the order asked.
 */
export class CallSlots {
  private busy = 0
  /** In the order asked; a Set, so a waiter leaves from anywhere at once (a shutdown aborts thousands). */
  private readonly queue = new Set<{ take: () => void, signals: readonly AbortSignal[], onAbort: () => void }>()

  constructor (private readonly max: number) {}

  /** Calls waiting for a slot now. */
  get waiting (): number {
    return this.queue.size
  }

  /**
   * Resolves with the slot's release once one is free; rejects with the reason of the first of
   * `signals` to abort meanwhile (a cancel, shutdown), having taken nothing.
   */
  async take (signals: readonly AbortSignal[]): Promise<() => void> {
    const aborted = signals.find((signal) => signal.aborted)
    if (aborted !== undefined) throw aborted.reason
    if (this.busy < this.max) return this.held()
    return await new Promise<() => void>((resolve, reject) => {
      const entry = {
        signals,
        take: () => { resolve(this.held()) },
        onAbort: () => {
          this.queue.delete(entry)
          // The signal that aborted has let go of its listener already: looking for it would walk every other waiter's.
          for (const signal of entry.signals) if (!signal.aborted) signal.removeEventListener('abort', entry.onAbort)
          reject((signals.find((signal) => signal.aborted) as AbortSignal).reason)
        }
      }
      for (const signal of signals) signal.addEventListener('abort', entry.onAbort, { once: true })
      this.queue.add(entry)
    })
  }

  private held (): () => void {
    this.busy++
    let released = false
    return () => {
      if (released) return
      released = true
      this.busy--
      const next = this.queue.values().next().value
      if (next === undefined) return
      this.queue.delete(next)
      next.signals.forEach((signal) => signal.removeEventListener('abort', next.onAbort))
      next.take()
    }
  }
}
