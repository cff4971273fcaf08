import { Readable } from 'node:stream'

/** Bytes made ahead of the client (the stream's buffer), and the most each chunk pushed holds. */
const AHEAD_BYTES = 64 * 1024
/** Event-loop time one turn of serializing may take; the rest waits for the next turn. */
const SLICE_MS = 10

/**
 * A JSON answer holding a long array, serialized an item at a time as its client reads: `head`
 * (everything up to and including the array's `[`), each item, then `tail`. Only AHEAD_BYTES
 * and the item being serialized are held, not the whole text, and a turn of the event loop
 * serializes for SLICE_MS at most, so a session of tens of megabytes neither sits in memory
 * until a slow client takes it nor holds up other requests while it is made. `items` must not
 * change meanwhile: the store's sessions are replaced by a change, never edited.
 */
export class JsonArrayStream<T> extends Readable {
  #next = -1
  #resume: NodeJS.Immediate | null = null
  /** When the current slice of event-loop time ends; 0: none begun. A client that reads as fast as it is written calls _read again within the same turn. */
  #until = 0

  constructor (private readonly head: string, private readonly items: readonly T[], private readonly serialize: (item: T) => string, private readonly tail: string) {
    super({ highWaterMark: AHEAD_BYTES })
  }

  override _read (): void {
    if (this.#resume === null) this.#make()
  }

  override _destroy (err: Error | null, callback: (err?: Error | null) => void): void {
    if (this.#resume !== null) clearImmediate(this.#resume)
    this.#resume = null
    callback(err)
  }

  #make (): void {
    this.#resume = null
    if (this.#until === 0) this.#until = performance.now() + SLICE_MS
    else if (performance.now() >= this.#until) {
      this.#yield()
      return
    }
    let chunk = ''
    try {
      if (this.#next === -1) {
        chunk = this.head
        this.#next = 0
      }
      while (this.#next < this.items.length) {
        chunk += (this.#next === 0 ? '' : ',') + this.serialize(this.items[this.#next++] as T)
        if (chunk.length < AHEAD_BYTES) continue
        const more = this.#push(chunk)
        chunk = ''
        if (!more) return
        if (performance.now() >= this.#until) {
          this.#yield()
          return
        }
      }
    } catch (err) {
      this.destroy(err as Error)
      return
    }
    this.#push(chunk + this.tail)
    this.push(null)
  }

  /**
   * Pushes `text` in pieces of AHEAD_BYTES at most: each is one write to the socket, and a write
   * taken is what tells a slow reader from a stalled one (guardStream), so a task of megabytes
   * must not be one write a slow but steady reader takes minutes over.
   */
  #push (text: string): boolean {
    const bytes = Buffer.from(text, 'utf8')
    let more = true
    for (let at = 0; at < bytes.length; at += AHEAD_BYTES) more = this.push(bytes.subarray(at, at + AHEAD_BYTES))
    return more
  }

  /** Goes on at the next turn of the event loop, in a slice of its own. */
  #yield (): void {
    this.#until = 0
    this.#resume = setImmediate(() => { this.#make() })
  }
}
