import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { CorruptSessionFileError, KeyUnavailableError } from '../errors.js'
import type { Keyring, SealedDocument } from './keyring.js'

/** A batch to read: file names in `dir`. */
export interface ReadRequest {
  id: number
  dir: string
  names: string[]
}

/**
 * What came back: the files' bytes end to end in `data` (transferred from a reader thread, not copied), and per file
 * either its [offset, length] in `data` or the errno code that stopped its read.
 */
export interface ReadResponse {
  id: number
  files: ReadFile[]
  data: Uint8Array
}

/**
 * A file read: where its bytes are (a sealed file's bytes are its opened form, and `kid` and
 * `stored` say which key sealed it and how many bytes it takes on disk), or the errno code
 * that stopped its read, or why a sealed file did not open (`sealed`: 'corrupt' with `reason`,
 * or 'key' with the missing `kid`).
 */
export type ReadFile =
  | { name: string, offset: number, length: number, kid?: string, stored?: number }
  | { name: string, code: string }
  | { name: string, sealed: 'corrupt', reason: string, kid?: string }
  | { name: string, sealed: 'key', kid: string }

/** What a reader thread posts once it can take batches (until one has, the pool reads on its own thread). */
export const READY = 'ready'

const SEALED_KEY = Buffer.from('"sealed"')
/** A sealed document names its box right after the id and times: the head is enough to tell. */
const HEAD_BYTES = 512

// O_NOFOLLOW: a symlink swapped in after readdir is refused, not followed.
const FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW

/** A batch's bytes, end to end, in one buffer that grows by doubling. */
class BatchBytes {
  bytes: Uint8Array
  length = 0

  constructor (capacity: number) {
    this.bytes = new Uint8Array(capacity)
  }

  /** Room for `more` bytes past `length`. */
  reserve (more: number): void {
    if (this.length + more <= this.bytes.length) return
    const next = new Uint8Array(Math.max(this.length + more, this.bytes.length * 2))
    next.set(this.bytes.subarray(0, this.length))
    this.bytes = next
  }

  append (chunk: Uint8Array): void {
    this.reserve(chunk.length)
    this.bytes.set(chunk, this.length)
    this.length += chunk.length
  }

  /** A Buffer over bytes already held (no copy; valid until the next reserve). */
  view (from: number, to: number): Buffer {
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset + from, to - from)
  }
}

/** What a batch's buffer starts with per file: a session file is a few KB; more is grown into. */
const START_BYTES_PER_FILE = 8 * 1024
/** How much a read asks for past the size fstat gave, when a file turns out longer. */
const MORE_BYTES = 64 * 1024

/**
 * Reads the file open as `fd` (of `size` bytes by fstat) onto the end of `out`. One read when the
 * size holds, as it does for our files, which change only by rename; a file that grew or a read
 * that came back short (some network file systems) is read on until the end.
 */
function readInto (fd: number, size: number, out: BatchBytes): void {
  const start = out.length
  let want = size + 1
  for (;;) {
    out.reserve(want)
    const got = readSync(fd, out.bytes, out.length, want, null)
    out.length += got
    if (got === 0) return
    // One byte past the size was asked for: fewer, with the size read, is the end.
    if (got < want && out.length - start >= size) return
    want = got < want ? want - got : MORE_BYTES
  }
}

/**
 * Reads a batch of files with blocking calls: one system call each, with no thread-pool round
 * trips, straight into the batch's buffer. A reader thread runs it while the main thread parses
 * the batch before; the main thread runs it itself while no reader thread has started yet.
 * `keyring` opens sealed files.
 */
export function readBatch ({ id, dir, names }: ReadRequest, keyring: Keyring | null): ReadResponse {
  const out = new BatchBytes(names.length * START_BYTES_PER_FILE)
  const files: ReadResponse['files'] = []
  for (const name of names) {
    let fd: number | null = null
    const offset = out.length
    try {
      fd = openSync(join(dir, name), FLAGS)
      const stat = fstatSync(fd)
      if (!stat.isFile()) {
        files.push({ name, code: 'ENOTREG' })
        continue
      }
      readInto(fd, stat.size, out)
      const opened = keyring === null ? null : openSealed(name, out.view(offset, out.length), keyring)
      if (opened === null) {
        files.push({ name, offset, length: out.length - offset })
        continue
      }
      const stored = out.length - offset
      // The sealed bytes make way for what they hold.
      out.length = offset
      if ('sealed' in opened) {
        files.push(opened)
        continue
      }
      out.append(opened.bytes)
      files.push({ name, offset, length: opened.bytes.length, kid: opened.kid, stored })
    } catch (err) {
      out.length = offset
      files.push({ name, code: (err as NodeJS.ErrnoException).code ?? 'EIO' })
    } finally {
      if (fd !== null) closeSync(fd)
    }
  }
  return { id, files, data: out.bytes.subarray(0, out.length) }
}

/**
 * A sealed file opened: the stored document it holds, as the bytes of a plaintext session file
 * (the clear fields, then what the box holds); null when the file is not sealed (or not JSON:
 * the main thread reports that).
 */
function openSealed (name: string, read: Buffer, keyring: Keyring): { bytes: Buffer, kid: string } | Extract<ReadFile, { sealed: string }> | null {
  if (read.subarray(0, HEAD_BYTES).indexOf(SEALED_KEY) === -1) return null
  let document: SealedDocument
  try {
    document = JSON.parse(read.toString('utf8'))
  } catch {
    return null
  }
  const box = document?.sealed
  if (typeof box !== 'object' || box === null || typeof box.kid !== 'string' || typeof box.iv !== 'string' || typeof box.tag !== 'string' ||
    typeof box.data !== 'string' || typeof document.session_id !== 'string' || typeof document.created_at !== 'string' || typeof document.updated_at !== 'string') {
    // Not the sealed format: the main thread's checks name the problem.
    return null
  }
  try {
    const inner = keyring.open(name, document)
    if (inner[0] !== 0x7b) return { name, sealed: 'corrupt', reason: 'sealed content is not an object' }
    const clear = `{"session_id":${JSON.stringify(document.session_id)},"created_at":${JSON.stringify(document.created_at)},"updated_at":${JSON.stringify(document.updated_at)}`
    // The box holds a compact object: its fields follow the clear ones.
    const rest = inner.length > 2 ? Buffer.concat([Buffer.from(clear + ','), inner.subarray(1)]) : Buffer.from(clear + '}')
    return { bytes: rest, kid: box.kid }
  } catch (err) {
    if (err instanceof KeyUnavailableError) return { name, sealed: 'key', kid: err.kid }
    // `kid` with a box that did not verify: the store tells a wrong key from a tampered file by it.
    if (err instanceof CorruptSessionFileError) return { name, sealed: 'corrupt', reason: err.message.replace(`${name}: `, ''), kid: box.kid }
    throw err
  }
}
