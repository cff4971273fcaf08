import { closeSync, constants, fstatSync, openSync, write, writeSync } from 'node:fs'
import { hostname } from 'node:os'

/** The two calls that write (a test seam: faults are injected there). */
export interface LogWrites {
  write: typeof write
  writeSync: typeof writeSync
}

export interface LogDestinationOptions {
  /** The file descriptor written to: stdout unless given. */
  fd?: number
  /** Lines waiting to be written, in bytes at most (LOG_QUEUE_BYTES): past it, new lines are dropped and counted. */
  maxQueuedBytes?: number
  /** After a write that failed, the next is tried this much later. */
  retryMs?: number
  /** node:fs's write and writeSync unless given (a test seam). */
  io?: LogWrites
}

/** A write that can succeed later without anything lost: the pipe is full, the disk is not failing. */
const BUSY = new Set(['EAGAIN', 'EBUSY', 'EINTR'])
const NEWLINE = 0x0a
/** At exit, a full pipe is waited for this long at most (its reader may be slow, or stopped), tried every EXIT_WAIT_MS. */
const EXIT_MAX_MS = 2000
const EXIT_WAIT_MS = 10
/** A full pipe is tried again this soon: its reader may drain it at once. */
const BUSY_RETRY_MS = 5

/**
 * Where the server's log lines go (pino's destination): written in batches with one write in
 * flight, as pino's own destination does, except that a log that cannot be written never stops
 * the server. Pino's destination throws on any write error but a broken pipe (a crash), and at
 * exit retries a failing write forever (a process that hangs, ignoring signals, holding its
 * storage lock): with stdout redirected to a file on the full disk a client filled, that is the
 * whole service down. Here a batch that fails (ENOSPC, EIO) is dropped, lines past
 * `maxQueuedBytes` are dropped, both counted, and the count is written as a warning line once
 * writing works again. A pipe is written without blocking (a reader that stops reading must not
 * hold the exit either).
 */
export class LogDestination {
  private readonly fd: number
  /** The fd is ours (a pipe reopened without blocking): closed at exit. */
  private readonly own: boolean
  private readonly maxQueuedBytes: number
  private readonly retryMs: number
  private readonly io: LogWrites
  private queue: string[] = []
  private queuedBytes = 0
  /** A batch being written (or waiting to be tried again): the bytes not written yet. */
  private pending: Buffer | null = null
  private inFlight = false
  /** When the write in flight started (performance.now()). */
  private inFlightSince = 0
  private retry: NodeJS.Timeout | null = null
  /** The next batch to a pipe of ours, at the end of this turn: the lines of one turn, one write. */
  private soon: NodeJS.Immediate | null = null
  /** Lines lost since the last report that was written. */
  private dropped = 0
  /** Why lines were dropped since then: the write's error code, or the full queue. */
  private reason = ''
  /** The report in `pending`: the lines it counts, and the bytes up to its end not written yet. */
  private report: { lines: number, bytes: number } | null = null
  /** The last byte written ended a line (a batch cut short after a partial write did not). */
  private atLineStart = true
  /** `pending` starts with a newline ending a cut line, not written yet: no line of its own. */
  private mended = false

  constructor ({ fd = 1, maxQueuedBytes = 16 * 1024 * 1024, retryMs = 100, io = { write, writeSync } }: LogDestinationOptions = {}) {
    this.io = io
    const nonBlocking = reopenPipe(fd)
    this.fd = nonBlocking ?? fd
    this.own = nonBlocking !== null
    this.maxQueuedBytes = maxQueuedBytes
    this.retryMs = retryMs
  }

  /** Log lines lost and not yet reported (a failing write, or a full queue). */
  get droppedLines (): number {
    return this.dropped
  }

  write (line: string): boolean {
    const bytes = Buffer.byteLength(line)
    const held = this.queuedBytes + (this.pending?.length ?? 0)
    // One line is always taken, however long: the bound is on what waits behind it.
    if (held > 0 && held + bytes > this.maxQueuedBytes) {
      // Counted as printed, as a failed write's are: one for a JSON line, a pretty entry's several.
      this.dropped += Math.max(1, countLines(line))
      this.reason ||= 'LOG_QUEUE_BYTES reached'
      return true
    }
    this.queue.push(line)
    this.queuedBytes += bytes
    if (this.pending !== null || this.retry !== null || this.soon !== null) return true
    if (this.own) this.soon = setImmediate(() => { this.next() })
    else this.next()
    return true
  }

  /**
   * At exit: what is queued, written at once. A pipe of ours (which never blocks) that is full is
   * waited for up to EXIT_MAX_MS, its reader taking what it can; a write that fails gives the rest
   * up. On a descriptor that blocks (a file, a socket), a write in flight is left to finish on its
   * own and the queue written after it, unless it has been in flight for EXIT_MAX_MS: then it is
   * stuck, and so would the exit be. What is given up is said in one line on stderr.
   */
  flushSync (): void {
    if (this.retry !== null) clearTimeout(this.retry)
    if (this.soon !== null) clearImmediate(this.soon)
    this.retry = null
    this.soon = null
    const rest: Buffer[] = []
    if (this.pending !== null && !this.inFlight) rest.push(this.pending)
    if (this.queue.length > 0 || this.dropped > 0) rest.push(Buffer.from(this.take(), 'utf8'))
    this.pending = null
    let data = rest.length === 1 ? rest[0] as Buffer : Buffer.concat(rest)
    let why = `stdout took no write for ${EXIT_MAX_MS} ms`
    if (!this.inFlight || performance.now() - this.inFlightSince < EXIT_MAX_MS) {
      const deadline = performance.now() + EXIT_MAX_MS
      while (data.length > 0) {
        try {
          const written = this.io.writeSync(this.fd, data)
          this.wrote(data, written)
          data = data.subarray(written)
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code ?? 'EIO'
          if (!BUSY.has(code) || performance.now() > deadline) {
            why = BUSY.has(code) ? `stdout's reader did not take them within ${EXIT_MAX_MS} ms` : `writing failed: ${code}`
            break
          }
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, EXIT_WAIT_MS)
        }
      }
    }
    // The lines left, less a report among them (its lines are in `dropped`) and a newline ending a cut line.
    const lost = data.length === 0 ? 0 : countLines(data) - (this.report !== null ? 1 : 0) - (this.mended ? 1 : 0) + this.dropped
    if (lost > 0) notice(`taskvault: ${lost} log line${lost === 1 ? '' : 's'} not written at exit (${why})\n`)
    if (this.own) closeSync(this.fd)
  }

  /** The queued lines as one text: after a cut line a newline, then the report of lines lost, if any. */
  private take (): string {
    const text = this.queue.join('')
    this.queue = []
    this.queuedBytes = 0
    this.mended = !this.atLineStart
    const head = this.mended ? '\n' : ''
    if (this.dropped === 0) return head + text
    // In pino's shape, at warn (40).
    const report = JSON.stringify({ level: 40, time: Date.now(), pid: process.pid, hostname: hostname(), dropped_lines: this.dropped, reason: this.reason, msg: `${this.dropped} log line${this.dropped === 1 ? ' was' : 's were'} dropped (${this.reason})` }) + '\n'
    this.report = { lines: this.dropped, bytes: head.length + Buffer.byteLength(report) }
    return head + report + text
  }

  private next (): void {
    this.retry = null
    this.soon = null
    if (this.pending === null) {
      if (this.queue.length === 0 && this.dropped === 0) return
      this.pending = Buffer.from(this.take(), 'utf8')
    }
    const data = this.pending
    if (!this.own) {
      this.inFlight = true
      this.inFlightSince = performance.now()
      this.io.write(this.fd, data, 0, data.length, null, (err, written) => {
        this.inFlight = false
        this.settle(data, err, written)
      })
      return
    }
    // A pipe of ours never blocks: written here and now, so no write is ever in flight (an exit
    // knows exactly what is left).
    let written = 0
    let error: NodeJS.ErrnoException | null = null
    try {
      written = this.io.writeSync(this.fd, data)
    } catch (err) {
      error = err as NodeJS.ErrnoException
    }
    this.settle(data, error, written)
  }

  /** A write of `data` ended: what is left goes next (a pipe that took part of it is full: a moment later), or the batch is lost. */
  private settle (data: Buffer, err: NodeJS.ErrnoException | null, written: number): void {
    this.soon = null
    if (err === null) {
      this.wrote(data, written)
      this.pending = written < data.length ? data.subarray(written) : null
      if (this.pending === null || !this.own) {
        this.next()
        return
      }
    } else if (!BUSY.has(err.code ?? '')) this.lost(data, err)
    this.retry = setTimeout(() => { this.next() }, err === null || BUSY.has(err.code ?? '') ? BUSY_RETRY_MS : this.retryMs)
    this.retry.unref()
  }

  /** `written` bytes of `data` are out: a report among them has done its job. */
  private wrote (data: Buffer, written: number): void {
    if (written === 0) return
    this.atLineStart = data[written - 1] === NEWLINE
    this.mended = false
    if (this.report === null) return
    this.report.bytes -= written
    if (this.report.bytes > 0) return
    this.dropped -= this.report.lines
    if (this.dropped === 0) this.reason = ''
    this.report = null
  }

  /** The batch `data` could not be written: its lines are lost, and counted. */
  private lost (data: Buffer, err: NodeJS.ErrnoException): void {
    let lines = countLines(data)
    // A report not written stays counted as the lines it stood for, not as one line of its own;
    // nor is the newline that ends a cut line one.
    if (this.report !== null) {
      lines--
      this.report = null
    }
    if (this.mended) lines--
    this.dropped += lines
    this.reason = `writing failed: ${err.code ?? err.message}`
    this.pending = null
  }
}

/** One line on stderr, if it takes it now: at exit, never waiting on a stuck descriptor. */
function notice (text: string): void {
  try {
    const fd = reopenPipe(2)
    try {
      writeSync(fd ?? 2, text)
    } finally {
      if (fd !== null) closeSync(fd)
    }
  } catch {}
}

function countLines (data: Buffer | string): number {
  let lines = 0
  for (let at = data.indexOf('\n'); at !== -1; at = data.indexOf('\n', at + 1)) lines++
  return lines
}

/**
 * A pipe (a FIFO: `| tee`, a container runtime's log pipe) opened again without blocking: a
 * reader that stops reading then gets EAGAIN (tried again later) instead of a write that never
 * returns. Not for a file (opened again it would write from its start) nor a socket (it cannot
 * be). Null when `fd` is not a pipe or cannot be opened so.
 */
function reopenPipe (fd: number): number | null {
  try {
    if (!fstatSync(fd).isFIFO()) return null
    return openSync(`/proc/self/fd/${fd}`, constants.O_WRONLY | constants.O_NONBLOCK)
  } catch {
    return null
  }
}
