import { write, writeSync } from 'node:fs'
import { hostname } from 'node:os'

export interface LogDestinationOptions {
  /** The file descriptor written to: stdout unless given. */
  fd?: number
  /** Lines waiting to be written, in bytes at most (LOG_QUEUE_BYTES): past it, new lines are dropped and counted. */
  maxQueuedBytes?: number
  /** After a write that failed (or found a full pipe), the next is tried this much later. */
  retryMs?: number
}

/** A write that can succeed later without anything lost: the pipe is full, the disk is not failing. */
const BUSY = new Set(['EAGAIN', 'EBUSY', 'EINTR'])

/**
 * Where the server's log lines go (pino's destination): written in batches with one write in
 * flight, as pino's own destination does, except that a log that cannot be written never stops
 * the server. Pino's destination throws on any write error but a broken pipe (a crash), and at
 * exit retries a failing write forever (a process that hangs, ignoring signals, holding its
 * storage lock): with stdout redirected to a file on the full disk a client filled, that is the
 * whole service down. Here a batch that fails (ENOSPC, EIO) is dropped, lines past
 * `maxQueuedBytes` are dropped, both counted, and the count is written as a warning line once
 * writing works again.
 */
export class LogDestination {
  private readonly fd: number
  private readonly maxQueuedBytes: number
  private readonly retryMs: number
  private queue: string[] = []
  private queuedBytes = 0
  /** A batch being written (or waiting to be tried again): the bytes not written yet. */
  private pending: Buffer | null = null
  private retry: NodeJS.Timeout | null = null
  private dropped = 0
  /** Why lines were dropped since the last report: the write's error code, or the full queue. */
  private reason = ''

  constructor ({ fd = 1, maxQueuedBytes = 16 * 1024 * 1024, retryMs = 100 }: LogDestinationOptions = {}) {
    this.fd = fd
    this.maxQueuedBytes = maxQueuedBytes
    this.retryMs = retryMs
  }

  /** Log lines dropped since the last report (a failing write, or a full queue). */
  get droppedLines (): number {
    return this.dropped
  }

  write (line: string): boolean {
    // Lengths in UTF-16 units: a bound, not an exact byte count, and no encoding per line.
    if (this.queuedBytes + line.length > this.maxQueuedBytes) {
      this.dropped++
      this.reason ||= 'LOG_QUEUE_BYTES reached'
      return true
    }
    this.queue.push(line)
    this.queuedBytes += line.length
    if (this.pending === null && this.retry === null) this.next()
    return true
  }

  /**
   * At exit: what is queued, written at once with blocking calls, each tried once (a busy pipe
   * a few times); a failure gives the rest up. A batch still in flight is not written again.
   */
  flushSync (): void {
    if (this.retry !== null) clearTimeout(this.retry)
    const rest = [...(this.pending !== null && this.retry !== null ? [this.pending] : []), Buffer.from(this.take(), 'utf8')]
    this.pending = null
    let busy = 0
    for (let data of rest) {
      while (data.length > 0) {
        try {
          data = data.subarray(writeSync(this.fd, data))
        } catch (err) {
          if (!BUSY.has((err as NodeJS.ErrnoException).code ?? '') || ++busy > 20) return
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10)
        }
      }
    }
  }

  /** The queued lines as one text, with the report of dropped ones first. */
  private take (): string {
    const text = this.queue.join('')
    this.queue = []
    this.queuedBytes = 0
    if (this.dropped === 0) return text
    // In pino's shape, at warn (40).
    const report = JSON.stringify({ level: 40, time: Date.now(), pid: process.pid, hostname: hostname(), dropped_lines: this.dropped, reason: this.reason, msg: `${this.dropped} log line${this.dropped === 1 ? ' was' : 's were'} dropped (${this.reason})` })
    this.dropped = 0
    this.reason = ''
    return `${report}\n${text}`
  }

  private next (): void {
    this.retry = null
    if (this.pending === null) {
      if (this.queue.length === 0) return
      this.pending = Buffer.from(this.take(), 'utf8')
    }
    const data = this.pending
    write(this.fd, data, 0, data.length, null, (err, written) => {
      if (err === null) {
        this.pending = written < data.length ? data.subarray(written) : null
        this.next()
        return
      }
      if (!BUSY.has(err.code ?? '')) {
        // Lost, and counted (the lines it held, a report among them).
        this.dropped += countLines(data)
        this.reason = `writing failed: ${err.code ?? err.message}`
        this.pending = null
      }
      this.retry = setTimeout(() => { this.next() }, this.retryMs)
      this.retry.unref()
    })
  }
}

function countLines (data: Buffer): number {
  let lines = 0
  for (let at = data.indexOf(10); at !== -1; at = data.indexOf(10, at + 1)) lines++
  return lines
}
