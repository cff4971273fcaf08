import { Worker } from 'node:worker_threads'
import type { ReadRequest, ReadResponse, ReaderData } from './restore-worker.js'

export type { ReadResponse }

const WORKER_URL = new URL('./restore-worker.js', import.meta.url)

/**
 * Reader threads for restore, started on first use and ended by `close()`. Each reads one batch
 * at a time; batches beyond the threads wait in a queue. Callers bound batches in flight
 * (p-limit), which bounds memory.
 */
export class ReaderPool {
  private readonly size: number
  private readonly idle: Worker[] = []
  private readonly all: Worker[] = []
  private readonly waiting = new Map<number, { resolve: (response: ReadResponse) => void, reject: (err: Error) => void, worker: Worker }>()
  private readonly queue: Array<() => void> = []
  private seq = 0
  private closed = false

  /** `keys`: a keyring's entries; the threads then open sealed files too, off the main thread. */
  constructor (threads: number, private readonly keys: Array<[string, Uint8Array]> | null = null) {
    this.size = Math.max(1, threads)
  }

  async read (dir: string, names: string[]): Promise<ReadResponse> {
    if (this.closed) throw new Error('reader pool is closed')
    const worker = this.take() ?? await new Promise<Worker | null>((resolve) => this.queue.push(() => resolve(this.take())))
    if (worker === null) throw new Error('reader pool is closed')
    const id = ++this.seq
    try {
      return await new Promise<ReadResponse>((resolve, reject) => {
        this.waiting.set(id, { resolve, reject, worker })
        worker.postMessage({ id, dir, names } satisfies ReadRequest)
      })
    } finally {
      this.waiting.delete(id)
      if (this.all.includes(worker)) this.idle.push(worker)
      this.queue.shift()?.()
    }
  }

  async close (): Promise<void> {
    this.closed = true
    // Batches waiting for a thread will never get one.
    for (const wake of this.queue.splice(0)) wake()
    const workers = this.all.splice(0)
    this.idle.length = 0
    await Promise.all(workers.map((worker) => worker.terminate()))
  }

  /** An idle thread, a new one while the pool is below its size, or null when all are busy. */
  private take (): Worker | null {
    if (this.closed) return null
    const free = this.idle.pop()
    if (free !== undefined) return free
    if (this.all.length >= this.size) return null
    // No execArgv: a reader thread runs only our own module, so the process's preloads (an APM
    // agent or a loader given with --import or --require) would only slow each restore down.
    const worker = new Worker(WORKER_URL, { execArgv: [], workerData: { keys: this.keys } satisfies ReaderData })
    worker.on('message', (response: ReadResponse) => this.waiting.get(response.id)?.resolve(response))
    worker.on('error', (err) => this.fail(worker, err))
    worker.on('exit', (code) => this.fail(worker, new Error(`reader thread exited with code ${code}`)))
    this.all.push(worker)
    return worker
  }

  /** A thread that dies fails the batch it held; the pool does not reuse it. */
  private fail (worker: Worker, err: Error): void {
    const index = this.all.indexOf(worker)
    if (index !== -1) this.all.splice(index, 1)
    for (const pending of this.waiting.values()) if (pending.worker === worker) pending.reject(err)
  }
}
