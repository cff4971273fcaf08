/**
 * Bytes appended end to end in one buffer that grows by doubling. Chunks are copied in, not
 * kept: a peer that sends a byte at a time costs its bytes, where an array of its chunks would
 * cost a few hundred bytes of object per byte.
 */
export class GrowableBytes {
  bytes: Uint8Array
  length = 0

  /** `limit`: doubling stops there (more is still taken, exactly as much as asked). */
  constructor (capacity: number, private readonly limit = Number.POSITIVE_INFINITY) {
    this.bytes = new Uint8Array(capacity)
  }

  /** Room for `more` bytes past `length`. */
  reserve (more: number): void {
    const needed = this.length + more
    if (needed <= this.bytes.length) return
    const next = new Uint8Array(Math.max(needed, Math.min(this.bytes.length * 2, this.limit)))
    next.set(this.bytes.subarray(0, this.length))
    this.bytes = next
  }

  append (chunk: Uint8Array): void {
    this.reserve(chunk.length)
    this.bytes.set(chunk, this.length)
    this.length += chunk.length
  }

  /** A Buffer over bytes held (no copy; valid until the next reserve). */
  view (from = 0, to = this.length): Buffer {
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset + from, to - from)
  }
}
