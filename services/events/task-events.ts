/**
 * The live view's events: their names, and the bounded buffer that numbers them and keeps the
 * latest for clients that reconnect. Nothing here knows about HTTP or Fastify.
 */
import { randomBytes } from 'node:crypto'

export const TASK_EVENT_NAMES = [
  'session.created', 'tasks.added', 'tasks.retried',
  'task.started', 'task.completed', 'task.failed', 'task.retrying',
  'run.started', 'run.finished', 'run.cancelled',
  'session.archived', 'session.unarchived', 'session.deleted',
  'progress'
] as const
export type TaskEventName = typeof TASK_EVENT_NAMES[number]

/** The sequence number of an id, as written: decimal, no sign, no leading zero. */
const SEQ = /^(?:0|[1-9][0-9]{0,15})$/u

/** Always names the session; a task id and status where one applies. Never a result. */
export interface TaskEventData {
  session_id: string
  task_id?: string
  status?: string
  [field: string]: unknown
}

export interface BufferedEvent {
  /** 1, 2, 3... within the lifetime (with gaps when they come from a shared event log). */
  readonly seq: number
  readonly name: TaskEventName
  readonly data: TaskEventData
  /** The SSE frame, serialized once for every client. */
  readonly frame: string
  /** The frame's size in bytes: what the buffer's byte bound counts. */
  readonly bytes: number
}

/**
 * What a client resuming from an id gets: the events after it, or a reset (refetch the
 * snapshot). `after`: the id is ahead of this
 * buffer (another replica had read further in the shared log): live events up to that seq are
 * ones the client already has.
 */
export type Replay = { reset: false, events: BufferedEvent[], after?: number } | { reset: true }

/**
 * The latest `capacity` events, oldest first, and fewer when their frames pass `maxBytes` (the
 * newest is always held): a few events naming many tasks each must not hold much memory. Ids are `<lifetime>-<seq>`: seq grows with each
 * event, and the lifetime part tells an id from another run apart, which must get a reset
 * rather than a wrong replay. A lone process numbers its own events (random lifetime, seq 1, 2,
 * 3...); replicas sharing a database take both from its event log (adopt, appendAt), so an id
 * means the same on every replica.
 */
export class TaskEventBuffer {
  private life = randomBytes(4).toString('hex')
  /** Held events from `head` on, in seq order; compacted now and then. */
  private events: BufferedEvent[] = []
  private head = 0
  private last = 0
  /** The seq of the newest event let go of: a resume from before it cannot be replayed whole. */
  private dropped = 0
  private readonly listeners = new Set<(event: BufferedEvent) => void>()
  private readonly gapListeners = new Set<() => void>()
  /** The numbering is a shared log's (adopt): another replica may have read further in it. */
  private shared = false
  /** The held events' frames, in bytes. */
  private heldBytes = 0

  constructor (readonly capacity: number, readonly maxBytes = Number.POSITIVE_INFINITY) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be a positive integer')
    if (!(maxBytes > 0)) throw new RangeError('maxBytes must be positive')
  }

  /** The held events' frames, in bytes. */
  get bytes (): number {
    return this.heldBytes
  }

  get lifetime (): string {
    return this.life
  }

  /** The seq of the latest event (0 before any). */
  get latest (): number {
    return this.last
  }

  /** The seq of the oldest event still held (the next one when none is). */
  get oldest (): number {
    return this.events[this.head]?.seq ?? this.last + 1
  }

  /**
   * Takes an event log's numbering before any event: ids are `<lifetime>-<seq>` from now on, and
   * `latest` is where the log stands (events before it are not held: resuming from them resets).
   */
  adopt (lifetime: string, latest: number): void {
    if (this.last !== 0 || this.events.length > 0) throw new Error('adopt() comes before any event')
    this.life = lifetime
    this.last = latest
    this.dropped = latest
    this.shared = true
  }

  /**
   * Events up to `seq` were lost to this buffer (an event log trimmed them before they were
   * read): a client resuming from before them gets a reset, not a replay with a hole.
   */
  lostUpTo (seq: number): void {
    if (seq <= this.last) return
    this.last = seq
    this.dropped = seq
    this.gap()
  }

  /** Event `seq` of a log is not one to show (a name this version does not know): numbering moves past it, nothing is lost. */
  skipTo (seq: number): void {
    if (seq > this.last) this.last = seq
  }

  /** Clients following live missed events that will never come: `onGap` listeners tell them to refetch. */
  gap (): void {
    for (const listener of this.gapListeners) listener()
  }

  /** Called at every gap from now on; returns the unsubscribe function. */
  onGap (listener: () => void): () => void {
    this.gapListeners.add(listener)
    return () => { this.gapListeners.delete(listener) }
  }

  /** Adds the next event, numbered after the latest. */
  append (name: TaskEventName, data: TaskEventData): BufferedEvent {
    return this.appendAt(this.last + 1, name, data)
  }

  /** Adds an event numbered `seq` by an event log; seq must be above the latest. */
  appendAt (seq: number, name: TaskEventName, data: TaskEventData): BufferedEvent {
    if (!Number.isSafeInteger(seq) || seq <= this.last) throw new RangeError(`event ${seq} is not after ${this.last}`)
    const frame = `id: ${this.life}-${seq}\nevent: ${name}\ndata: ${JSON.stringify(data)}\n\n`
    const event: BufferedEvent = { seq, name, data, frame, bytes: Buffer.byteLength(frame) }
    this.last = seq
    // Held with its session only (what a stream filters on): the frame says the rest, and a
    // thousand task ids would otherwise be held twice, as objects and as text.
    this.events.push({ ...event, data: { session_id: data.session_id } })
    this.heldBytes += event.bytes
    while (this.events.length - this.head > this.capacity || (this.heldBytes > this.maxBytes && this.events.length - this.head > 1)) {
      const oldest = this.events[this.head] as BufferedEvent
      this.dropped = oldest.seq
      this.heldBytes -= oldest.bytes
      this.events[this.head++] = undefined as unknown as BufferedEvent
    }
    if (this.head >= this.capacity) {
      this.events = this.events.slice(this.head)
      this.head = 0
    }
    for (const listener of this.listeners) listener(event)
    return event
  }

  /** Called with every event appended from now on; returns the unsubscribe function. */
  subscribe (listener: (event: BufferedEvent) => void): () => void {
    this.listeners.add(listener)
    return () => { this.listeners.delete(listener) }
  }

  /** The id a client sends back as Last-Event-ID. */
  idOf (event: BufferedEvent): string {
    return `${this.life}-${event.seq}`
  }

  /** The id naming "now": resuming from it replays nothing. */
  currentId (): string {
    return `${this.life}-${this.last}`
  }

  frameOf (event: BufferedEvent): string {
    return event.frame
  }

  /** Every event after `lastId`, or a reset when it is not from this lifetime or older than the buffer. */
  since (lastId: string): Replay {
    const dash = lastId.lastIndexOf('-')
    // Only a number as this process writes one: "", " 5", "0x10" or "1e3" is no id of ours.
    const digits = lastId.slice(dash + 1)
    const seq = SEQ.test(digits) ? Number(digits) : NaN
    if (dash < 0 || lastId.slice(0, dash) !== this.life || !Number.isSafeInteger(seq)) return { reset: true }
    if (seq > this.last) {
      // A shared log's id this replica has not read yet (a client moved here from a replica a
      // moment ahead): nothing to replay, and what comes up to it the client has. Within a
      // buffer's length only: an id further ahead is none the log gave out lately.
      return this.shared && seq - this.last <= this.capacity ? { reset: false, events: [], after: seq } : { reset: true }
    }
    // Every event after seq must still be held.
    if (seq < this.dropped) return { reset: true }
    let low = this.head
    let high = this.events.length
    while (low < high) {
      const mid = (low + high) >>> 1
      if ((this.events[mid] as BufferedEvent).seq <= seq) low = mid + 1
      else high = mid
    }
    return { reset: false, events: this.events.slice(low) }
  }
}
