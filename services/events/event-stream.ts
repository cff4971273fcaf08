/**
 * Server-Sent Events clients of the live view, on plain node:http responses. Written on the raw
 * response rather than through an SSE plugin: each event is serialized once and the same frame
 * written to every client straight to its socket, whose queued bytes (`writableLength`) cut a
 * reader that does not keep up; neither plugin offered that bound or a reset, and @fastify/sse
 * returns a promise per client per event.
 */
import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { BufferedEvent, TaskEventBuffer } from './task-events.js'
import type { ChangeLoad } from './change-load.js'
import { noop } from '../noop.js'
import { orLate } from '../deadline.js'
import { dropSocket } from '../sockets.js'

export interface StreamLimits {
  /** Concurrent streams at most (TASK_EVENTS_MAX_CLIENTS). */
  maxClients: number
  /** A comment line this often keeps proxies and clients from timing out (TASK_EVENTS_HEARTBEAT_MS). */
  heartbeatMs: number
  /** A client with more bytes queued than this is sent a reset and cut off (TASK_EVENTS_MAX_QUEUED_BYTES). */
  maxQueuedBytes: number
  /** A client cut off has this long to read its reset before its socket is destroyed (TASK_EVENTS_CUT_GRACE_MS). */
  cutGraceMs: number
  /** Events are written to clients at most this often, batched (TASK_EVENTS_FLUSH_MS). */
  flushMs: number
  /** When the rest of the server keeps the event loop busy, writes spread out up to this far apart (TASK_EVENTS_FLUSH_MAX_MS). */
  flushMaxMs: number
  /** The share of the event loop the writes keep when the rest of the server leaves none idle (TASK_EVENTS_FANOUT_SHARE). */
  fanoutShare: number
  /** A batch's writes hold the event loop this long at most before the rest go on at the next turn (TASK_EVENTS_FANOUT_SLICE_MS). */
  fanoutSliceMs: number
}

/**
 * How long after a flush that took `spentMs` the next one may start. The writes take the share
 * of the event loop the rest of the server left idle (`busy`: its utilization, the flushes' own
 * time left out), but at least `fanoutShare` of it: with 1,000 clients a flush is some 10 ms of
 * system calls, which at 40 a second would take half of a saturated server's time from the
 * requests. Never further apart than `flushMaxMs`, never closer than `flushMs` (which wins).
 */
export function flushInterval (spentMs: number, busy: number, limits: Pick<StreamLimits, 'flushMs' | 'flushMaxMs' | 'fanoutShare'>): number {
  const share = Math.max(limits.fanoutShare, 1 - busy)
  return Math.max(limits.flushMs, Math.min(limits.flushMaxMs, spentMs / share))
}

export interface StreamLogger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
}

interface Client {
  res: ServerResponse
  /** Only this session's events, or every session's (null). */
  sessionId: string | null
  /** Where in the current turn's events this client starts (it joined mid-turn), else 0. */
  from: number
  /** Live events up to this seq are not sent: the client resumed from an id this replica had not read yet (0: none). */
  after: number
  /** A resume still being written a piece at a time: live events wait here behind it, in order. */
  held: Buffer[] | null
  heldBytes: number
}

/** The headers of every stream: no caching, and no buffering by nginx-style proxies. */
export const STREAM_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  'x-accel-buffering': 'no'
} as const

/** The time constant of the pace's reading of how busy the loop is. */
const BUSY_SMOOTHING_MS = 500

/**
 * A resume is written in pieces of about this size, the next once the socket has taken the last:
 * a whole buffer's worth (10,000 events, some 2 MB) in one write would sit in the socket's queue
 * past TASK_EVENTS_MAX_QUEUED_BYTES and cut even a client that reads at once.
 */
const REPLAY_PIECE_CHARS = 64 * 1024

/** The clock is read once per this many clients of a batch (a power of two): reading it is not free either. */
const SLICE_CHECK_CLIENTS = 16

/** A batch being written, a slice of clients per turn of the event loop. */
interface FanOut {
  events: BufferedEvent[]
  /** The clients when the batch was taken: one joining later gets its events another way (its resume, or not at all). */
  clients: Client[]
  at: number
  /** The encoded events per kind of client, shared. */
  chunks: Map<string, Buffer | null>
  /** The batch's write time so far, for the pace. */
  spent: number
  next: NodeJS.Immediate | null
}

export class EventStreamHub {
  private readonly clients = new Set<Client>()
  /**
   * Streams asked for behind an unfinished response on their connection (pipelined): started
   * once they have the connection, holding nothing until then. They count against the cap.
   */
  private readonly waiting = new Set<ServerResponse>()
  /** Streams close() ended whose last bytes are still queued in the process (see ended()). */
  private readonly ending = new Set<ServerResponse>()
  /** Connections a stream was opened on: a stream never ends before its connection does. */
  private readonly streamSockets = new WeakSet<object>()
  private readonly openListeners = new Set<(socket: Socket) => void>()
  private heartbeat: NodeJS.Timeout | null = null
  /** Events since the last flush: written together at the end of this turn of the event loop. */
  private turn: BufferedEvent[] = []
  /** The frames of `turn`, in bytes. */
  private turnBytes = 0
  private flushing: NodeJS.Immediate | NodeJS.Timeout | null = null
  /** The flush scheduled is at the next turn (not at the pace's time). */
  private soon = false
  private lastFlush = -Infinity
  /** The batch still being written, or null. */
  private fanning: FanOut | null = null
  /** The pace: flushes start at least this far apart (flushInterval). */
  private interval: number
  /** Where the event loop's utilization was last read, and the flushes' own time since. */
  private loop = performance.eventLoopUtilization()
  private spentSince = 0
  /** How busy the rest of the server keeps the loop, smoothed (0 to 1). */
  private busy = 0
  private readonly unsubscribe: () => void
  private readonly unsubscribeGaps: () => void
  private closed = false
  /** Resumes whose next piece is due: written together, a slice of them per turn (replayTurn). */
  private replays: Array<() => void> = []
  private replaying: NodeJS.Immediate | null = null

  /** `load`: the server's changes in progress, busy past TASK_EVENTS_BUSY_CHANGES (none: the loop alone sets the pace). */
  constructor (private readonly buffer: TaskEventBuffer, private readonly limits: StreamLimits, private readonly log: StreamLogger, private readonly load: ChangeLoad | null = null) {
    this.interval = limits.flushMs
    this.unsubscribe = buffer.subscribe((event) => { this.deliver(event) })
    this.unsubscribeGaps = buffer.onGap(() => { this.missed() })
  }

  get size (): number {
    return this.clients.size + this.waiting.size
  }

  get maxClients (): number {
    return this.limits.maxClients
  }

  /** Changes in progress on the server, as the pace reads them (0 when it reads the loop alone). */
  get changes (): number {
    return this.load?.size ?? 0
  }

  /** How far apart flushes start now, in ms: TASK_EVENTS_FLUSH_MS, more while the server is busy (flushInterval). */
  get pace (): number {
    return this.interval
  }

  /**
   * True when a stream is open on this connection already: a stream asked for behind it
   * (pipelined) would never get to send anything, and would only take a slot of the cap.
   */
  streamingOn (socket: object | null): boolean {
    return socket !== null && this.streamSockets.has(socket)
  }

  /** Called with the connection of every stream opened from now on (not of a refused one); returns the unsubscribe function. */
  onOpen (listener: (socket: Socket) => void): () => void {
    this.openListeners.add(listener)
    return () => { this.openListeners.delete(listener) }
  }

  /** Shutdown began: no new stream. */
  get closing (): boolean {
    return this.closed
  }

  /** True when another stream would pass TASK_EVENTS_MAX_CLIENTS. */
  get full (): boolean {
    return this.size >= this.limits.maxClients
  }

  /**
   * Starts a stream on `res`: headers, then the events after `lastEventId` (or a reset when
   * they are no longer held), then every new event. Synchronous, so nothing falls in between.
   * A response queued behind another on its connection (pipelined) starts once it has the
   * connection, from the events after this moment (or after `lastEventId`): a response without
   * its socket would hold whatever is written to it, with no bound.
   */
  open (res: ServerResponse, sessionId: string | null, lastEventId: string | undefined): void {
    res.on('error', noop)
    // A HEAD request (Fastify answers one for every GET) gets the headers only.
    if (res.req.method === 'HEAD') {
      res.writeHead(200, STREAM_HEADERS)
      res.end()
      return
    }
    if (res.socket !== null) {
      this.start(res, sessionId, lastEventId)
      return
    }
    const from = lastEventId ?? this.buffer.currentId()
    const connection = res.req.socket
    this.waiting.add(res)
    this.opened(connection)
    // Let go with the connection: a response queued behind others is not told when it dies.
    const forget = (): void => { this.waiting.delete(res) }
    connection?.once('close', forget)
    res.once('socket', () => {
      connection?.off('close', forget)
      // Not waiting any more: the connection died, or shutdown ended it (close()).
      if (this.waiting.delete(res)) this.start(res, sessionId, from)
    })
  }

  /** A stream was granted on `connection`: no stream behind it can ever send, and it takes the streams' share. */
  private opened (connection: Socket | null): void {
    if (connection === null || this.streamSockets.has(connection)) return
    this.streamSockets.add(connection)
    for (const listener of this.openListeners) listener(connection)
  }

  /** `open` on a response that has its connection. */
  private start (res: ServerResponse, sessionId: string | null, lastEventId: string | undefined): void {
    const client: Client = { res, sessionId, from: this.turn.length, after: 0, held: null, heldBytes: 0 }
    // No chunked framing: the body ends with the connection, and events go straight to the
    // socket once the headers are out. A write is then one system call, made at once (and timed
    // by the pace), where res.write corks the socket and leaves a writev to the next tick.
    res.useChunkedEncodingByDefault = false
    res.writeHead(200, STREAM_HEADERS)
    res.flushHeaders()
    // The retry hint, and a first line so that clients see the headers at once. It names the
    // heartbeat's period: a client hearing nothing for a few of them knows the connection is dead
    // (a dropped NAT entry or proxy leaves a socket open that never delivers again).
    let head = `retry: 2000\n: connected, heartbeat every ${this.limits.heartbeatMs} ms\n\n`
    let missed: BufferedEvent[] = []
    if (lastEventId !== undefined) {
      const replay = this.buffer.since(lastEventId)
      if (replay.reset) head += this.resetFrame('unknown-id')
      else {
        missed = replay.events.filter((event) => matches(client, event))
        client.after = replay.after ?? 0
      }
    }
    this.clients.add(client)
    this.opened(res.req.socket)
    res.once('close', () => { this.clients.delete(client) })
    this.write(client, head)
    if (missed.length > 0) {
      // Live events wait behind the resume, which starts with the others due.
      client.held = []
      this.due(() => { this.replay(client, missed, 0) })
    }
    this.heartbeat ??= setInterval(() => { this.beat() }, this.limits.heartbeatMs).unref()
  }

  /**
   * Writes the events `missed` from `at` on, then the live ones that arrived meanwhile (`held`,
   * bounded like a socket's queue), a piece at a time: each once the socket has handed the last
   * to the kernel, so its queue never holds more than one piece.
   */
  private replay (client: Client, missed: readonly BufferedEvent[], at: number): void {
    if (!this.clients.has(client)) return
    const held = client.held ??= []
    // Well under the bound a socket's queue is checked against (a small TASK_EVENTS_MAX_QUEUED_BYTES).
    const size = Math.min(REPLAY_PIECE_CHARS, this.limits.maxQueuedBytes / 4)
    let piece = ''
    while (at < missed.length && piece.length < size) piece += this.buffer.frameOf(missed[at++] as BufferedEvent)
    const chunks: Buffer[] = piece === '' ? [] : [Buffer.from(piece, 'utf8')]
    let length = piece.length
    // Held chunks join the last piece only while the write stays within the piece's size: a
    // held batch (up to the bound itself) on top of a piece would pass the bound in the socket's
    // queue and cut a client that reads.
    while (at === missed.length && held.length > 0 && (chunks.length === 0 || length + (held[0] as Buffer).length <= size)) {
      const chunk = held.shift() as Buffer
      client.heldBytes -= chunk.length
      chunks.push(chunk)
      length += chunk.length
    }
    if (chunks.length === 0) {
      // Everything is out: live events are written as they come from now on.
      client.held = null
      client.heldBytes = 0
      return
    }
    // The next piece a turn later: a kernel that takes every piece at once does not hold the loop.
    this.write(client, chunks.length === 1 ? chunks[0] as Buffer : Buffer.concat(chunks), () => { this.due(() => { this.replay(client, missed, at) }) })
  }

  /** A resume's next piece, written at the next turn with the others due. */
  private due (piece: () => void): void {
    this.replays.push(piece)
    this.replaying ??= setImmediate(() => { this.replayTurn() })
  }

  /**
   * Writes the pieces due, for TASK_EVENTS_FANOUT_SLICE_MS at most (the live batches' budget);
   * the rest at the next turn. Hundreds of clients resuming at once (a proxy restarted) would
   * otherwise each write a piece in the same turn, holding the loop for all of them.
   */
  private replayTurn (): void {
    this.replaying = null
    const pieces = this.replays
    this.replays = []
    const start = performance.now()
    let at = 0
    // A slice of 0 writes 16 a turn, as the live batches do.
    const least = this.limits.fanoutSliceMs === 0 ? SLICE_CHECK_CLIENTS : 1
    while (at < pieces.length) {
      (pieces[at++] as () => void)()
      if (at >= least && performance.now() - start >= this.limits.fanoutSliceMs) break
    }
    if (at < pieces.length) this.replays = pieces.slice(at).concat(this.replays)
    if (this.replays.length > 0) this.replaying ??= setImmediate(() => { this.replayTurn() })
  }

  /** Ends every stream (shutdown) and stops taking new ones; clients reconnect with their last id. */
  close (): void {
    this.closed = true
    this.unsubscribe()
    this.unsubscribeGaps()
    this.stopHeartbeat()
    this.cancelFlush()
    this.flush(true)
    // Resumes under way end with their streams.
    if (this.replaying !== null) clearImmediate(this.replaying)
    this.replaying = null
    this.replays = []
    for (const client of this.clients) {
      endStream(client.res)
      if (!client.res.writableFinished) this.ending.add(client.res)
    }
    this.clients.clear()
    // Not started: an empty stream, sent after the responses ahead of it (whose connection the server's shutdown sees to).
    for (const res of this.waiting) {
      res.writeHead(200, STREAM_HEADERS)
      res.end()
    }
    this.waiting.clear()
  }

  /**
   * Resolves once every stream `close()` ended has handed its last bytes to the kernel, or after
   * `ms`, when the sockets of the rest are destroyed. Until then the server must not close: it
   * would destroy a finished response's socket with the tail of a slow client's queue unsent.
   */
  async ended (ms: number): Promise<void> {
    const waiting = [...this.ending].map((res) => new Promise<void>((resolve) => {
      const done = (): void => {
        this.ending.delete(res)
        resolve()
      }
      if (res.writableFinished || res.destroyed) done()
      else res.once('finish', done).once('close', done)
    }))
    await orLate(Promise.all(waiting), ms, undefined)
    for (const res of this.ending) dropSocket(res.socket)
    this.ending.clear()
  }

  /**
   * Clients missed events that will never come: what is pending goes out first, then a reset,
   * after which the stream goes on (the client refetches and carries on from the reset's id).
   */
  private missed (): void {
    this.cancelFlush()
    this.flush(true)
    const frame = Buffer.from(this.resetFrame('missed-events'), 'utf8')
    // A copy: a send may cut its client, which leaves the set.
    for (const client of [...this.clients]) this.send(client, frame)
  }

  /**
   * Events are written once per turn of the event loop: the events of every save that completed
   * in one turn cost one write per client, and clients that want the same events (every
   * session, or one session) share one encoded buffer.
   */
  private deliver (event: BufferedEvent): void {
    if (this.clients.size === 0) return
    this.turn.push(event)
    this.turnBytes += event.bytes
    // Events held past half a client's bound go out at the next turn whatever the pace: waiting
    // would only grow this batch, and each client's one write of it, toward the cut.
    if (this.turnBytes > this.limits.maxQueuedBytes / 2 && !this.soon) {
      this.cancelFlush()
      this.schedule(0)
      return
    }
    if (this.flushing !== null) return
    // At most one flush per interval: under heavy load the writes per client stay bounded.
    this.schedule(this.lastFlush + this.interval - performance.now())
  }

  private schedule (wait: number): void {
    this.soon = wait <= 0
    this.flushing = this.soon ? setImmediate(() => { this.flush() }) : setTimeout(() => { this.flush() }, wait)
  }

  private cancelFlush (): void {
    if (this.flushing === null) return
    // Each by its own kind: clearImmediate given a timeout corrupts the immediate queue.
    if (this.soon) clearImmediate(this.flushing as NodeJS.Immediate)
    else clearTimeout(this.flushing as NodeJS.Timeout)
    this.flushing = null
    this.soon = false
  }

  /** Writes the events since the last flush; `whole`: all of it now (shutdown, a reset behind it), not a slice per turn. */
  private flush (whole = false): void {
    this.flushing = null
    this.soon = false
    // A batch's clients get all of it before any of the next: events stay in order.
    if (this.fanning !== null) this.fanOut(Number.POSITIVE_INFINITY)
    this.lastFlush = performance.now()
    const events = this.turn
    this.turn = []
    this.turnBytes = 0
    if (events.length === 0) return
    this.fanning = { events, clients: [...this.clients], at: 0, chunks: new Map(), spent: 0, next: null }
    this.fanOut(whole ? Number.POSITIVE_INFINITY : this.limits.fanoutSliceMs)
  }

  /** Sets the interval before the next flush from this one's time and how busy the loop was since the last reading. */
  private adjustPace (spentMs: number): void {
    this.spentSince += spentMs
    const loop = performance.eventLoopUtilization(this.loop)
    const window = loop.idle + loop.active
    // Too short a window says little; the time adds up until the next.
    if (window < this.limits.flushMs) return
    const rest = window - this.spentSince
    let busy = rest <= 0 ? 1 : Math.min(1, Math.max(0, loop.active - this.spentSince) / rest)
    // Clients waiting on changes (on the disk, mostly) are a busy server even when its loop idles:
    // the writes then keep their share of it, and those clients' answers are not held up.
    if (this.load?.busy() === true) busy = 1
    // Smoothed over about BUSY_SMOOTHING_MS: one busy window (a collection, a burst of
    // requests) does not hold the next batch back; a loop that stays busy does.
    this.busy += (busy - this.busy) * (1 - Math.exp(-window / BUSY_SMOOTHING_MS))
    this.interval = flushInterval(spentMs, this.busy, this.limits)
    this.loop = performance.eventLoopUtilization()
    this.spentSince = 0
  }

  /**
   * Writes the batch under way to its clients, each its events in one write, for up to
   * `sliceMs`; the rest at the next turn. Clients that want the same events (every session, or
   * one session) share one encoded buffer.
   */
  private fanOut (sliceMs: number): void {
    const batch = this.fanning as FanOut
    if (batch.next !== null) clearImmediate(batch.next)
    batch.next = null
    const start = performance.now()
    const events = batch.events
    const chunks = batch.chunks
    while (batch.at < batch.clients.length) {
      const client = batch.clients[batch.at++] as Client
      // Gone meanwhile (closed, or cut).
      if (!this.clients.has(client)) continue
      const from = client.from
      const after = client.after
      client.from = 0
      if (after !== 0 && (events.at(-1) as BufferedEvent).seq >= after) client.after = 0
      const key = `${from}:${after}:${client.sessionId ?? ''}`
      let chunk = chunks.get(key)
      if (chunk === undefined) {
        let text = ''
        for (let i = from; i < events.length; i++) {
          const event = events[i] as BufferedEvent
          if (event.seq > after && matches(client, event)) text += this.buffer.frameOf(event)
        }
        chunk = text === '' ? null : Buffer.from(text, 'utf8')
        chunks.set(key, chunk)
      }
      if (chunk !== null) this.send(client, chunk)
      if (batch.at % SLICE_CHECK_CLIENTS === 0 && performance.now() - start >= sliceMs) break
    }
    batch.spent += performance.now() - start
    if (batch.at < batch.clients.length) {
      batch.next = setImmediate(() => { this.fanOut(this.limits.fanoutSliceMs) })
      return
    }
    this.fanning = null
    this.adjustPace(batch.spent)
  }

  /** A live chunk: written, or held behind a resume still being written (under the same bound as a socket's queue). */
  private send (client: Client, chunk: Buffer): void {
    if (client.held === null) {
      this.write(client, chunk)
      return
    }
    client.held.push(chunk)
    client.heldBytes += chunk.length
    if (client.heldBytes > this.limits.maxQueuedBytes) this.cut(client)
  }

  private beat (): void {
    if (this.clients.size === 0) {
      this.stopHeartbeat()
      return
    }
    for (const client of this.clients) this.write(client, ': heartbeat\n\n')
  }

  /** Writes `chunk` to the client's socket; `written` once it is handed to the kernel (not called for a client gone). */
  private write (client: Client, chunk: string | Buffer, written?: () => void): void {
    const res = client.res
    const socket = res.socket
    // A stream starts only with its socket (open): none now means the response let go of it.
    if (res.writableEnded || res.destroyed || socket === null || !socket.writable) {
      this.clients.delete(client)
      return
    }
    socket.write(chunk, written)
    if (socket.writableLength > this.limits.maxQueuedBytes) this.cut(client)
  }

  /** A client that does not read: told to refetch (if it ever reads again), then let go. */
  private cut (client: Client): void {
    this.clients.delete(client)
    const res = client.res
    this.log.warn({ queued_bytes: res.socket?.writableLength ?? 0, limit: this.limits.maxQueuedBytes, session_id: client.sessionId ?? undefined }, 'Event stream client too slow; cut off with a reset')
    const socket = res.socket
    endStream(res, this.resetFrame('slow-reader'))
    // Its queue is dropped with the socket if it still does not read.
    const timer = setTimeout(() => { dropSocket(socket) }, this.limits.cutGraceMs)
    timer.unref()
    socket?.once('close', () => clearTimeout(timer))
  }

  /** A reset carries the current id: after refetching its snapshot the client resumes from here. */
  private resetFrame (reason: 'unknown-id' | 'slow-reader' | 'missed-events'): string {
    return `id: ${this.buffer.currentId()}\nevent: reset\ndata: ${JSON.stringify({ reason })}\n\n`
  }

  private stopHeartbeat (): void {
    if (this.heartbeat !== null) clearInterval(this.heartbeat)
    this.heartbeat = null
  }
}

function matches (client: Client, event: BufferedEvent): boolean {
  return client.sessionId === null || client.sessionId === event.data.session_id
}

/** Ends the stream and then its socket: a keep-alive socket left idle would hold the client's reconnect back. */
function endStream (res: ServerResponse, last?: string): void {
  const socket = res.socket
  res.end(last, () => { socket?.end() })
}
