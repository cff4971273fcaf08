/**
 * Group commit for saves: while every lane (a pooled connection the store may use for saves)
 * is busy, the saves that arrive wait here, and the next free lane writes them together, in
 * one statement and one commit. A lone save goes out at once, as its own statement, so a
 * quiet server's latency is untouched; under load the database sees one commit for many
 * sessions instead of one each, which is where a commit's cost (the WAL flush) lies.
 *
 * A batch never holds a session twice, nor a session whose earlier save is still in flight:
 * each write names the version the one before it produced.
 */

export interface SaveLimits {
  /** Statements in flight at once (the pool's size). */
  lanes: number
  /** Sessions in one statement (TASK_DB_SAVE_BATCH); 1 writes every save alone. */
  maxSessions: number
  /** Stored bytes in one statement (TASK_DB_SAVE_BATCH_BYTES); a bigger session still goes, alone. */
  maxBytes: number
}

/** One save waiting for a lane: what to write, and how to answer its caller. */
export interface PendingSave<T> {
  sessionId: string
  bytes: number
  resolve: (result: T) => void
  reject: (err: unknown) => void
}

/**
 * Sends one batch and answers every save in it (resolve or reject each). It must settle them
 * all before it returns, and must not throw: the batcher frees the lane when it returns.
 */
export type SendBatch<T, S extends PendingSave<T>> = (batch: S[]) => Promise<void>

export class SaveBatcher<T, S extends PendingSave<T>> {
  private queue: S[] = []
  private readonly writing = new Set<string>()
  private busy = 0

  constructor (private readonly limits: SaveLimits, private readonly send: SendBatch<T, S>) {}

  /** Queues a save; it is written as soon as a lane is free and its session is not being written. */
  submit (save: Omit<S, 'resolve' | 'reject'>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const pending = Object.assign(save, { resolve, reject }) as S
      // The quiet case, a lane free and nobody waiting: straight out, alone.
      if (this.busy < this.limits.lanes && this.queue.length === 0 && !this.writing.has(save.sessionId)) this.start([pending])
      else {
        this.queue.push(pending)
        this.dispatch()
      }
    })
  }

  /** Saves waiting for a lane (for tests and metrics). */
  get waiting (): number {
    return this.queue.length
  }

  private dispatch (): void {
    while (this.busy < this.limits.lanes && this.queue.length > 0) {
      const batch = this.take()
      if (batch.length === 0) return
      this.start(batch)
    }
  }

  private start (batch: S[]): void {
    this.busy++
    for (const save of batch) this.writing.add(save.sessionId)
    this.send(batch).then(() => this.done(batch), (err: unknown) => {
      // send answers every save itself; this only guards against a bug there.
      for (const save of batch) save.reject(err)
      this.done(batch)
    })
  }

  private done (batch: S[]): void {
    this.busy--
    for (const save of batch) this.writing.delete(save.sessionId)
    this.dispatch()
  }

  /** The oldest saves that fit one statement, skipping sessions in flight or already taken. */
  private take (): S[] {
    const batch: S[] = []
    const rest: S[] = []
    const taken = new Set<string>()
    let bytes = 0
    let full = false
    for (const save of this.queue) {
      full ||= batch.length === this.limits.maxSessions || (batch.length > 0 && bytes + save.bytes > this.limits.maxBytes)
      if (full || this.writing.has(save.sessionId) || taken.has(save.sessionId)) {
        rest.push(save)
        continue
      }
      batch.push(save)
      taken.add(save.sessionId)
      bytes += save.bytes
    }
    this.queue = rest
    return batch
  }
}
