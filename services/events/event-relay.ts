import type { EventEmitter } from 'node:events'
import { noop } from '../noop.js'
import { RepeatedFailure } from '../repeated-failure.js'
import { LOG_GAP, type SessionStoreEvents, type SharedSessions } from '../store/store.js'
import type { Logger } from '../types.js'
import { TASK_EVENT_NAMES, type TaskEventBuffer, type TaskEventData, type TaskEventName } from './task-events.js'

export interface EventRelayOptions {
  shared: SharedSessions
  /** The store's events: 'events' says the log has new ones. */
  notices: EventEmitter<SessionStoreEvents>
  buffer: TaskEventBuffer
  /** Events are published at most this often, batched (TASK_EVENTS_FLUSH_MS). */
  flushMs: number
  /** The log is read this often even when no notification came (NOTIFY is lost with its connection). */
  pollMs: number
  log: Logger
}

/** Events read from the log per statement. */
const READ_BATCH = 1000
/** While reads keep failing (the database down), how often the failure is logged again. */
export const READ_FAILURE_LOG_MS = 60_000
const NAMES = new Set<string>(TASK_EVENT_NAMES)
/**
 * The field of a logged event's data that says where its session's row stood when it was
 * published (SharedSessions.orderOf); taken out before the event reaches the buffer.
 */
const ORDER_FIELD = '_order'
const ORDER = /^(\d{1,19})\.(\d{1,19})$/u

/** Where a session's active row stood at the newest of its events read. */
interface SessionOrder {
  row: bigint
  version: bigint
}

/**
 * The live view across replicas: this replica's events go to the shared event log (batched, one
 * statement per flush), and every event of the log, this replica's included, comes back into
 * the local buffer numbered by the log. So a stream on any replica shows every replica's
 * events, in one order, under ids that resume anywhere.
 */
export class EventRelay {
  private readonly options: EventRelayOptions
  /** Events to publish, each with the newest id of the log known here when it came (`seen`: read, or its own last batch's). */
  private queue: Array<{ name: TaskEventName, data: TaskEventData, seen: number }> = []
  /** The ids of this replica's own batches (gaps included) that may lie after a queued event's `seen`: first and last. */
  private ownBatches: Array<{ from: number, to: number }> = []
  private publishing: NodeJS.Timeout | null = null
  private flushed: Promise<void> = Promise.resolve()
  private reading: Promise<void> | null = null
  private again = false
  private poll: NodeJS.Timeout | null = null
  private readonly wake = (): void => { this.read() }
  private readonly readFailures: RepeatedFailure
  private closed = false
  /** An event came after close() and was dropped (said once). */
  private droppedAfterClose = false
  /** A publish failed: new events only queue until the retry's try, TASK_EVENTS_POLL_MS later. */
  private retrying = false
  /**
   * A gap is owed to the log: events went late and another replica's were logged meanwhile (the
   * answers did not wait for ours, so a later change through it may be logged before them),
   * events were dropped, or a change answered as failed turned out to have landed. It goes after
   * the next events published, so every replica's streams get them, then a reset, and refetch.
   */
  private owesGap = false
  /** A publish failed since the last one that went through: the events are late. */
  private late = false
  /** The log's newest id after this replica's last batch (at start, the log's newest). */
  private newest = 0
  /** Per session, the newest order read from the log (its most recently logged sessions, up to the buffer's size). */
  private readonly orders = new Map<string, SessionOrder>()
  private readonly unannounced = (sessionId: string): void => {
    if (this.closed) {
      this.unpublishedAfterClose(sessionId, 'unannounced')
      return
    }
    this.owesGap = true
    if (!this.retrying) this.schedule(this.options.flushMs)
  }

  constructor (options: EventRelayOptions) {
    this.options = options
    this.readFailures = new RepeatedFailure(options.log, {
      failed: 'Could not read live-view events; the next notification or poll tries again (logged again each minute while it lasts)',
      recovered: 'Reading live-view events again'
    }, READ_FAILURE_LOG_MS)
  }

  /**
   * Takes the log's numbering and reads its latest events, a buffer's worth, so that a client
   * moving here from another replica (a rolling deploy) resumes rather than refetching; then
   * follows the log. Should that first read fail, ids up to the log's latest still resume with
   * no replay and no reset (the buffer's shared-log rule), and the next poll reads them.
   */
  async start (): Promise<void> {
    const { token, latest } = await this.options.shared.eventLog()
    this.newest = latest
    this.options.buffer.adopt(token, Math.max(0, latest - this.options.buffer.capacity))
    this.read()
    await this.reading
    this.options.notices.on('events', this.wake)
    this.options.notices.on('unannounced', this.unannounced)
    this.poll = setInterval(this.wake, this.options.pollMs)
    this.poll.unref()
  }

  /** A durable change's event: published with the next batch (while a failed publish waits to be tried again, with that try). */
  publish (name: TaskEventName, data: TaskEventData): void {
    if (this.closed) {
      this.unpublishedAfterClose(data.session_id, name)
      return
    }
    const order = this.options.shared.orderOf(data.session_id)
    this.queue.push({ name, data: order === null ? data : { ...data, [ORDER_FIELD]: order }, seen: Math.max(this.options.buffer.latest, this.newest) })
    if (!this.retrying) this.schedule(this.options.flushMs)
  }

  /**
   * A change landed during shutdown, after the last publish (or one answered as failed turned out
   * to have landed): its events never will be published. Once said, the store leaves its row to
   * run out, and the replica that clears it logs a gap, so every stream resets (the plugin says
   * so for those left queued at close).
   */
  private unpublishedAfterClose (sessionId: string, event: string): void {
    if (this.droppedAfterClose) return
    this.droppedAfterClose = true
    this.options.log.warn({ session_id: sessionId, event }, 'A change landed after the live view stopped publishing: this replica\'s row is left to run out, so the replica that clears it logs a gap and every stream resets')
    this.options.shared.eventsUnpublished()
  }

  /** Events (or a gap) that were not published: after close(), ones that never will be. */
  get unpublished (): boolean {
    return this.queue.length > 0 || this.owesGap
  }

  /** Whether events wait to be published that settled() would wait for. */
  get pending (): boolean {
    return this.queue.length > 0 && !this.retrying && !this.closed
  }

  /**
   * Resolves once every event published before the call is in the log: at once when none waits,
   * else after a publish started now rather than at the next TASK_EVENTS_FLUSH_MS (requests
   * waiting meanwhile share the one after it). While the log refuses events it resolves at once:
   * they go with the retry.
   */
  async settled (): Promise<void> {
    if (!this.pending) return
    if (this.publishing !== null) clearTimeout(this.publishing)
    this.publishing = null
    await this.flushNext()
  }

  private schedule (ms: number): void {
    this.publishing ??= setTimeout(() => {
      this.publishing = null
      void this.flushNext()
    }, ms)
  }

  /** A flush after the one in flight, if any. Caught here, so the chain goes on after any failure (flush handles the database's own). */
  private async flushNext (): Promise<void> {
    this.flushed = this.flushed.then(async () => this.flush()).catch((err: unknown) => {
      this.options.log.warn({ err }, 'Could not publish live-view events')
    })
    return this.flushed
  }

  /** Publishes what is queued and reads the log a last time, so the last events reach this replica's streams. */
  async close (): Promise<void> {
    this.closed = true
    if (this.publishing !== null) clearTimeout(this.publishing)
    this.publishing = null
    if (this.poll !== null) clearInterval(this.poll)
    this.options.notices.off('events', this.wake)
    // 'unannounced' is still listened to: from now on it leaves the row to run out.
    await this.flushed
    await this.flush()
    await this.reading
    this.read()
    await this.reading
  }

  /**
   * Publishes the queue, at most a read's worth per statement. While the database cannot take
   * them, events wait (before any newer) and are tried again every TASK_EVENTS_POLL_MS; no more
   * than the log keeps wait, the oldest dropped past that. Once the log takes events again a gap
   * follows them (LOG_GAP) when some were dropped, or when other replicas logged events
   * meanwhile (the answers did not wait for these, so later changes may be logged before them),
   * so that every replica's streams refetch. A batch that did commit unseen is sent
   * twice, which at-least-once delivery allows.
   */
  private async flush (): Promise<void> {
    while (this.queue.length > 0 || this.owesGap) {
      // The store publishes each entry's name and data (`seen` stays here).
      const batch: Array<{ name: string, data: unknown }> = this.queue.slice(0, READ_BATCH)
      const events = batch.length
      const seen = this.queue[0]?.seen ?? this.newest
      // This replica's own events logged after `seen`, by id: a batch in flight when the first
      // of this one came may have been read (seen) already, or not.
      this.ownBatches = this.ownBatches.filter((own) => own.to > seen)
      const ownSince = this.ownBatches.reduce((sum, own) => sum + own.to - Math.max(own.from - 1, seen), 0)
      // The gap goes after the last of the queue, in the same statement.
      const gap = this.owesGap && events === this.queue.length
      if (gap) batch.push({ name: LOG_GAP, data: { reason: 'late' } })
      let newest: number
      try {
        newest = await this.options.shared.publishEvents(batch, this.options.buffer.capacity)
      } catch (err) {
        const dropped = Math.max(0, this.queue.length - this.options.buffer.capacity)
        this.queue = this.queue.slice(dropped)
        this.late = true
        if (dropped > 0) this.owesGap = true
        this.options.log.warn({ err, events: this.queue.length, dropped }, 'Could not publish live-view events; trying again')
        if (this.closed) return
        this.retrying = true
        if (this.publishing !== null) clearTimeout(this.publishing)
        this.publishing = null
        this.schedule(this.options.pollMs)
        return
      }
      // Only publish() changes the queue meanwhile, and only at its end.
      this.queue.splice(0, events)
      this.ownBatches.push({ from: newest - batch.length + 1, to: newest })
      this.retrying = false
      if (gap) this.owesGap = false
      // Late, with other events logged since this replica's last batch (ids it did not take):
      // the order may be broken, a gap follows at once.
      if (this.late && newest - batch.length !== this.newest) this.owesGap = true
      // Other replicas' events logged since the first of the batch came, and a buffer's worth in
      // all with the batch (a pause, or a slow statement, with no failure to tell): the readers'
      // per-session order (inOrder, a buffer's worth of sessions) may have let go of its sessions,
      // and a stale event of the batch would pass as new. Only this replica's own (older) events
      // in between make no gap: none of them can be newer than the batch's.
      if (newest - batch.length - ownSince > seen && newest - seen >= this.options.buffer.capacity) this.owesGap = true
      this.late = false
      this.newest = newest
    }
  }

  /**
   * The event's data without its order; null when an event of its session logged before it
   * stood further on (row, then version: a session brought back from the archive, or deleted and
   * created again, gets a new row with a higher id; a delete or an archive ends its row, past
   * every version of it); undefined when it is not an event's data
   * (a row not written by taskvault), passed over like an unknown name.
   */
  private inOrder (data: unknown): TaskEventData | null | undefined {
    if (typeof data !== 'object' || data === null || typeof (data as TaskEventData).session_id !== 'string') return undefined
    const { [ORDER_FIELD]: tag, ...rest } = data as TaskEventData
    // No order: the store knew no row of it, or an older replica published it (an archived copy's delete went untagged before this version).
    const parts = typeof tag === 'string' ? ORDER.exec(tag) : null
    if (parts === null) return tag === undefined ? data as TaskEventData : rest as TaskEventData
    const sessionId = rest.session_id
    const row = BigInt(parts[1] as string)
    const version = BigInt(parts[2] as string)
    const known = this.orders.get(sessionId)
    if (known !== undefined) {
      if (row < known.row || (row === known.row && version < known.version)) return null
      if (row === known.row && version === known.version) return rest as TaskEventData
    }
    // Most recently logged last, so the oldest goes first past the bound.
    this.orders.delete(sessionId)
    this.orders.set(sessionId, { row, version })
    if (this.orders.size > this.options.buffer.capacity) this.orders.delete(this.orders.keys().next().value as string)
    return rest as TaskEventData
  }

  /** Reads the log after the newest event held, until nothing is left; never two reads at once. */
  private read (): void {
    if (this.reading !== null) {
      this.again = true
      return
    }
    this.reading = (async () => {
      do {
        this.again = false
        for (;;) {
          const buffer = this.options.buffer
          const { events, trimmed } = await this.options.shared.eventsAfter(buffer.latest, READ_BATCH)
          // Behind the log's trimming (reads failed for a long while): what was lost resets resumes.
          if (events.length > 0 && trimmed > buffer.latest) buffer.lostUpTo(trimmed)
          // Events logged out of order, not shown: one reset for a run of them, before what follows.
          let stale = 0
          for (const event of events) {
            if (event.id <= buffer.latest) continue
            // Events before it may be missing: clients following live reset, resumes from before it too.
            if (event.name === LOG_GAP) {
              stale = event.id
              continue
            }
            const data = NAMES.has(event.name) ? this.inOrder(event.data) : undefined
            // Logged after a later change of its session (two replicas changed it at once, and
            // the first published last): shown, it would leave clients on the older state.
            // Clients reset and refetch instead, as after any gap.
            if (data === null) {
              stale = event.id
              continue
            }
            if (stale !== 0) buffer.lostUpTo(stale)
            stale = 0
            // A name this version does not know (a newer replica's), or data that is no event's, is passed over, not stuck on.
            if (data === undefined) buffer.skipTo(event.id)
            else buffer.appendAt(event.id, event.name as TaskEventName, data)
          }
          if (stale !== 0) buffer.lostUpTo(stale)
          if (events.length < READ_BATCH) break
        }
      } while (this.again)
    })().then(() => { this.readFailures.succeeded() }, (err: Error) => { this.readFailures.failed(err) })
      .finally(() => { this.reading = null })
    this.reading.catch(noop)
  }
}
