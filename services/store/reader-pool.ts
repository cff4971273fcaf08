import { setImmediate as turn } from 'node:timers/promises'
import { Worker } from 'node:worker_threads'
import { noop } from '../noop.js'
import type { Keyring } from './keyring.js'
import { BATCH_BYTES, READY, readBatch, type ReadRequest, type ReadResponse } from './read-batch.js'
import type { ReaderData } from './restore-worker.js'

export type { ReadResponse }

const WORKER_URL = new URL('./restore-worker.js', import.meta.url)

/**
 * Batches posted to one thread at once: the next waits in its port while it reads the current
 * one, so a thread that finishes while the main thread parses starts the next at once.
 */
const THREAD_QUEUE_BATCHES = 2

/**
 * Reader threads for restore, started on first use and ended by `close()`. Each is given up to
 * THREAD_QUEUE_BATCHES batches and reads them in turn; batches beyond that wait in a queue here.
 * Callers bound batches in flight (p-limit), which bounds memory. Starting a thread takes tens
 * of milliseconds (a new V8 isolate, our modules loaded): until one is ready, batches are read
 * on the calling thread, so a small folder is restored before any thread is up, and a large one
 * loses no time waiting.
 */
export class ReaderPool {
  private readonly size: number
  private started = 0
  private readonly all: Worker[] = []
  /** Threads that posted READY and are alive, with the batches posted to each and not yet answered. */
  private readonly ready = new Map<Worker, number>()
  private readonly waiting = new Map<number, { resolve: (response: ReadResponse) => void, reject: (err: Error) => void, worker: Worker }>()
  private readonly queue: Array<() => void> = []
  private seq = 0
  /** A batch is being read on the calling thread (acquire). */
  private inline = false
  /** A thread that did not start was reported (once per pool). */
  private warned = false
  private closed = false

  /**
   * `threads`: 0 reads every batch on the calling thread. `keyring`: sealed files are opened by
   * the readers too, off the main thread once one is up. `script`: the threads' module (a test
   * seam; restore-worker.js).
   */
  constructor (threads: number, private readonly keyring: Keyring | null = null, private readonly script: URL = WORKER_URL) {
    this.size = Math.max(0, threads)
  }

  /** Threads that posted READY and are alive (busy or not). */
  get threads (): number {
    return this.ready.size
  }

  /** Reads `names` in `dir`, those past `maxBytes` (after the first) deferred: see ReadResponse. */
  async read (dir: string, names: string[], maxBytes = BATCH_BYTES): Promise<ReadResponse> {
    const worker = await this.acquire()
    if (worker === null) {
      try {
        return readBatch({ id: 0, dir, names, maxBytes }, this.keyring)
      } finally {
        this.inlineDone()
      }
    }
    const id = ++this.seq
    try {
      return await new Promise<ReadResponse>((resolve, reject) => {
        this.waiting.set(id, { resolve, reject, worker })
        worker.postMessage({ id, dir, names, maxBytes } satisfies ReadRequest)
      })
    } finally {
      this.waiting.delete(id)
      this.release(worker)
    }
  }

  async close (): Promise<void> {
    this.closed = true
    // Batches waiting for a thread will never get one.
    for (const wake of this.queue.splice(0)) wake()
    const workers = this.all.splice(0)
    const started = workers.filter((worker) => this.ready.has(worker))
    this.ready.clear()
    // A thread still starting holds nothing: it is stopped without waiting, which takes as
    // long as a small folder's whole restore.
    for (const worker of workers) if (!started.includes(worker)) worker.terminate().catch(noop)
    await Promise.all(started.map((worker) => worker.terminate()))
  }

  /**
   * A ready thread with room for a batch; null when none is ready yet, even after one turn of
   * the event loop (which lets in a READY that arrived meanwhile): the caller then reads the
   * batch itself, and calls `inlineDone()`. One batch at a time is read so, each after a turn:
   * reading several in a row would keep out the READY of a thread that has started meanwhile.
   */
  private async acquire (): Promise<Worker | null> {
    for (;;) {
      if (this.closed) throw new Error('reader pool is closed')
      this.start()
      const free = this.leastBusy()
      if (free !== null) {
        this.ready.set(free, (this.ready.get(free) as number) + 1)
        return free
      }
      if (this.ready.size === 0 && !this.inline) {
        this.inline = true
        await turn()
        if (this.ready.size === 0 && !this.closed) return null
        this.inlineDone()
        continue
      }
      await new Promise<void>((resolve) => this.queue.push(resolve))
    }
  }

  /** The calling thread read its batch: the next waiting batch may go to a thread, or be read here too. */
  private inlineDone (): void {
    this.inline = false
    this.queue.shift()?.()
  }

  /** Starts the pool's threads, once each: a thread that dies is not replaced. */
  private start (): void {
    while (this.started < this.size) {
      this.started++
      // No execArgv: a reader thread runs only our own module, so the process's preloads (an APM
      // agent or a loader given with --import or --require) would only slow each restore down.
      const worker = new Worker(this.script, { execArgv: [], workerData: { keys: this.keyring?.entries() ?? null } satisfies ReaderData })
      worker.on('message', (message: ReadResponse | typeof READY) => {
        if (message !== READY) {
          this.waiting.get(message.id)?.resolve(message)
          return
        }
        if (this.closed) return
        this.ready.set(worker, 0)
        for (let slot = 0; slot < THREAD_QUEUE_BATCHES; slot++) this.queue.shift()?.()
      })
      worker.on('error', (err) => this.fail(worker, err))
      worker.on('exit', (code) => this.fail(worker, new Error(`reader thread exited with code ${code}`)))
      this.all.push(worker)
    }
  }

  /** The ready thread with the fewest batches posted, if it has room for one more (THREAD_QUEUE_BATCHES); else null. */
  private leastBusy (): Worker | null {
    let best: Worker | null = null
    let fewest = THREAD_QUEUE_BATCHES
    for (const [worker, count] of this.ready) {
      if (count < fewest) {
        best = worker
        fewest = count
      }
    }
    return best
  }

  /** A thread answered a batch: it has room for the next waiting one. */
  private release (worker: Worker): void {
    const count = this.ready.get(worker)
    // Not there: the thread died, or the pool closed.
    if (count !== undefined) this.ready.set(worker, count - 1)
    this.queue.shift()?.()
  }

  /**
   * A thread that dies fails the batch it held; the batches waiting go to the rest, or to the
   * calling thread. One that dies before READY (a broken install, no memory for a new isolate)
   * is reported as a process warning: the restore goes on, but without its threads.
   */
  private fail (worker: Worker, err: Error): void {
    const index = this.all.indexOf(worker)
    // Not in `all`: stopped by close(), or its 'error' came first.
    if (index !== -1) {
      this.all.splice(index, 1)
      if (!this.ready.has(worker) && !this.warned) {
        this.warned = true
        process.emitWarning(`a restore reader thread did not start (${err.message}); its batches are read on the main thread`, { code: 'TASKVAULT_READER_THREAD' })
      }
    }
    this.ready.delete(worker)
    for (const pending of this.waiting.values()) if (pending.worker === worker) pending.reject(err)
    // Every waiting batch looks again: with no thread left ready, each is read on the calling thread.
    for (const wake of this.queue.splice(0)) wake()
  }
}
