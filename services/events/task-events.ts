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

/** Always names the session; a task id and status where one applies. Never a result. */
export interface TaskEventData {
  session_id: string
  task_id?: string
  status?: string
  [field: string]: unknown
}

export interface BufferedEvent {
  /** 1, 2, 3... within this process lifetime. */
  readonly seq: number
  readonly name: TaskEventName
  readonly data: TaskEventData
  /** The SSE frame, serialized once for every client, on first use. */
  frame: string | null
}

/** What a client resuming from an id gets: the events after it, or a reset (refetch the snapshot). */
export type Replay = { reset: false, events: BufferedEvent[] } | { reset: true }

/**
 * The latest `capacity` events in a ring. Ids are `<lifetime>-<seq>`: seq grows by one per
 * event, and the lifetime part (random, per process) tells an id from a previous run apart,
 * which must get a reset rather than a wrong replay.
 */
export class TaskEventBuffer {
  readonly lifetime = randomBytes(4).toString('hex')
  private readonly ring: Array<BufferedEvent | undefined>
  private next = 1
  private readonly listeners = new Set<(event: BufferedEvent) => void>()

  constructor (readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be a positive integer')
    this.ring = new Array<BufferedEvent | undefined>(capacity)
  }

  /** The seq of the latest event (0 before any). */
  get latest (): number {
    return this.next - 1
  }

  /** The seq of the oldest event still held. */
  get oldest (): number {
    return Math.max(1, this.next - this.capacity)
  }

  append (name: TaskEventName, data: TaskEventData): BufferedEvent {
    const event: BufferedEvent = { seq: this.next++, name, data, frame: null }
    this.ring[event.seq % this.capacity] = event
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
    return `${this.lifetime}-${event.seq}`
  }

  /** The id naming "now": resuming from it replays nothing. */
  currentId (): string {
    return `${this.lifetime}-${this.latest}`
  }

  frameOf (event: BufferedEvent): string {
    event.frame ??= `id: ${this.idOf(event)}\nevent: ${event.name}\ndata: ${JSON.stringify(event.data)}\n\n`
    return event.frame
  }

  /** Every event after `lastId`, or a reset when it is not from this lifetime or older than the buffer. */
  since (lastId: string): Replay {
    const dash = lastId.lastIndexOf('-')
    const seq = Number(lastId.slice(dash + 1))
    if (dash < 0 || lastId.slice(0, dash) !== this.lifetime || !Number.isSafeInteger(seq) || seq < 0 || seq > this.latest) return { reset: true }
    // Events seq+1... must all still be held.
    if (seq + 1 < this.oldest) return { reset: true }
    const events: BufferedEvent[] = []
    for (let s = seq + 1; s <= this.latest; s++) events.push(this.ring[s % this.capacity] as BufferedEvent)
    return { reset: false, events }
  }
}
