import { constants as bufferConstants } from 'node:buffer'
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { CorruptSessionFileError, KeyUnavailableError } from '../errors.js'
import { GrowableBytes } from '../growable-bytes.js'
import { isKid, type Keyring, type SealedDocument } from './keyring.js'

/** A batch to read: file names in `dir`. */
export interface ReadRequest {
  id: number
  dir: string
  names: string[]
  /** Bytes the batch holds at most: a file that would take it past them, after at least one, is left to the next batch (`deferred`). */
  maxBytes: number
}

/**
 * What came back: the files' bytes end to end in `data` (transferred from a reader thread, not copied), and per file
 * either its [offset, length] in `data` or the errno code that stopped its read.
 */
export interface ReadResponse {
  id: number
  files: ReadFile[]
  data: Uint8Array
  /** Names not read: the batch was full (`maxBytes`); the caller reads them as another batch. */
  deferred: string[]
}

/**
 * A file read: where its bytes are (a sealed file's bytes are its opened form, and `kid` and
 * `stored` say which key sealed it and how many bytes it takes on disk), or the errno code
 * that stopped its read, or its size when it is too large to be a session (`tooLarge`), or why a sealed file did not open (`sealed`: 'corrupt' with `reason`,
 * or 'key' with the missing `kid`).
 */
export type ReadFile =
  | { name: string, offset: number, length: number, kid?: string, stored?: number }
  | { name: string, code: string }
  | { name: string, tooLarge: number }
  | { name: string, sealed: 'corrupt', reason: string, kid?: string }
  | { name: string, sealed: 'key', kid: string }

/**
 * The largest session file that can be read: its text must fit in one JavaScript string. The
 * server never writes one this large (TASK_MAX_SESSION_BYTES is 256 MiB at most); a foreign one is
 * set aside, not read.
 */
export const MAX_SESSION_FILE_BYTES = bufferConstants.MAX_STRING_LENGTH

/** The reason a file over MAX_SESSION_FILE_BYTES is set aside. */
export function tooLargeReason (bytes: number, max = MAX_SESSION_FILE_BYTES): string {
  return `${bytes} bytes: larger than any session file can be (${max} bytes, the longest text JavaScript holds)`
}

/**
 * Bytes a batch holds at most (but one file, however large, is read alone): with four batches in
 * flight per thread, sessions of tens of MB would otherwise take gigabytes, and past 4 GiB no
 * buffer holds one batch. Files of a few KB never come near it (128 of them are a batch).
 */
export const BATCH_BYTES = 32 * 1024 * 1024

/** What a reader thread posts once it can take batches (until one has, the pool reads on its own thread). */
export const READY = 'ready'

const SEALED_KEY = Buffer.from('"sealed"')
/** A sealed document names its box right after the id and times: the head is enough to tell. */
export const SEALED_HEAD_BYTES = 512

/** Whether a session file's first bytes (SEALED_HEAD_BYTES of them are enough) say it is sealed. */
export function sealedHead (head: Buffer): boolean {
  return head.subarray(0, SEALED_HEAD_BYTES).indexOf(SEALED_KEY) !== -1
}

// O_NOFOLLOW: a symlink swapped in after readdir is refused, not followed. O_NONBLOCK: a FIFO
// swapped in is opened at once (then refused as no regular file), not waited on for a writer.
const FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK

/** What a batch's buffer starts with per file: a session file is a few KB; more is grown into. */
const START_BYTES_PER_FILE = 8 * 1024
/** How much a read asks for past the size fstat gave, when a file turns out longer. */
const MORE_BYTES = 64 * 1024

/**
 * Reads the file open as `fd` (of `size` bytes by fstat) onto the end of `out`. One read when the
 * size holds, as it does for our files, which change only by rename; a file that grew or a read
 * that came back short (some network file systems) is read on until the end.
 */
function readInto (fd: number, size: number, out: GrowableBytes): void {
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
export function readBatch ({ id, dir, names, maxBytes }: ReadRequest, keyring: Keyring | null): ReadResponse {
  const out = new GrowableBytes(names.length * START_BYTES_PER_FILE)
  const files: ReadResponse['files'] = []
  let deferred: string[] = []
  for (const [index, name] of names.entries()) {
    let fd: number | null = null
    const offset = out.length
    try {
      fd = openSync(join(dir, name), FLAGS)
      const stat = fstatSync(fd)
      if (!stat.isFile()) {
        files.push({ name, code: 'ENOTREG' })
        continue
      }
      // Not read: no session this large can be parsed (a foreign file; taskvault writes none).
      if (stat.size > MAX_SESSION_FILE_BYTES) {
        files.push({ name, tooLarge: stat.size })
        continue
      }
      // Full: this file and the rest go in a batch of their own (one file alone always fits).
      if (offset > 0 && offset + stat.size > maxBytes) {
        deferred = names.slice(index)
        break
      }
      readInto(fd, stat.size, out)
      const opened = keyring === null ? null : openSealed(name, out.view(offset, out.length), keyring)
      if (opened === null) {
        files.push({ name, offset, length: out.length - offset })
        continue
      }
      const stored = out.length - offset
      // The sealed bytes make way for what they hold: the clear fields, then the box's fields.
      out.length = offset
      if ('sealed' in opened) {
        files.push(opened)
        continue
      }
      const empty = opened.inner.length <= 2
      out.append(Buffer.from(empty ? `${opened.clear}}` : `${opened.clear},`))
      if (!empty) out.append(opened.inner.subarray(1))
      files.push({ name, offset, length: out.length - offset, kid: opened.kid, stored })
    } catch (err) {
      out.length = offset
      files.push({ name, code: (err as NodeJS.ErrnoException).code ?? 'EIO' })
    } finally {
      if (fd !== null) closeSync(fd)
    }
  }
  return { id, files, data: out.bytes.subarray(0, out.length), deferred }
}

/** A sealed file opened: the clear fields as the start of a JSON object, what the box held (an object), its kid. */
interface Opened {
  clear: string
  inner: Buffer
  kid: string
}

/**
 * A sealed file opened (`Opened`); null when the file is not sealed (or not JSON: the main
 * thread reports that).
 */
function openSealed (name: string, read: Buffer, keyring: Keyring): Opened | Extract<ReadFile, { sealed: string }> | null {
  if (!sealedHead(read)) return null
  let document: SealedDocument
  let ciphertext: Buffer | null = null
  const quick = quickEnvelope(read)
  if (quick !== null) ({ document, ciphertext } = quick)
  else {
    try {
      document = JSON.parse(read.toString('utf8'))
    } catch {
      return null
    }
    // Not the sealed format: the main thread's checks name the problem.
    if (!isSealedDocument(document)) return null
  }
  const box = document.sealed
  try {
    const inner = ciphertext === null ? keyring.open(name, document) : keyring.openBytes(name, document, box, ciphertext)
    if (inner[0] !== 0x7b) return { name, sealed: 'corrupt', reason: 'sealed content is not an object' }
    const clear = `{"session_id":${JSON.stringify(document.session_id)},"created_at":${JSON.stringify(document.created_at)},"updated_at":${JSON.stringify(document.updated_at)}`
    return { clear, inner, kid: box.kid }
  } catch (err) {
    if (err instanceof KeyUnavailableError) return { name, sealed: 'key', kid: err.kid }
    // `kid` with a box that did not verify: the store tells a wrong key from a tampered file by it.
    if (err instanceof CorruptSessionFileError) return { name, sealed: 'corrupt', reason: err.message.replace(`${name}: `, ''), kid: box.kid }
    throw err
  }
}

function isSealedDocument (document: unknown): document is SealedDocument {
  if (typeof document !== 'object' || document === null) return false
  const { sealed: box, session_id: id, created_at: created, updated_at: updated } = document as SealedDocument
  // A kid no key can have is damage, left to the main thread's format check (set aside), not a key to ask for.
  return typeof box === 'object' && box !== null && isKid(box.kid) && typeof box.iv === 'string' && typeof box.tag === 'string' &&
    typeof box.data === 'string' && typeof id === 'string' && typeof created === 'string' && typeof updated === 'string'
}

const DATA_KEY = Buffer.from('"data"')
const QUOTE = 0x22
const BACKSLASH = 0x5c
const COLON = 0x3a
const isSpace = (byte: number | undefined): boolean => byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09

/**
 * The envelope read with its data string cut out, which is most of the file: the few hundred
 * bytes around it are parsed, and the ciphertext is decoded straight from the file's bytes
 * (some 5 µs a file less on Node 20). Null unless that reading is sure to be JSON.parse's: one
 * `"data"` key after `"sealed"`, its string free of escapes and all of it base64; anything else
 * takes the whole parse.
 */
function quickEnvelope (read: Buffer): { document: SealedDocument, ciphertext: Buffer } | null {
  const key = read.indexOf(DATA_KEY, read.indexOf(SEALED_KEY))
  if (key === -1) return null
  let at = key + DATA_KEY.length
  while (isSpace(read[at])) at++
  if (read[at++] !== COLON) return null
  while (isSpace(read[at])) at++
  if (read[at] !== QUOTE) return null
  const start = at + 1
  const end = read.indexOf(QUOTE, start)
  if (end === -1 || read.subarray(start, end).indexOf(BACKSLASH) !== -1 || read.indexOf(DATA_KEY, end) !== -1) return null
  let document: unknown
  try {
    document = JSON.parse(read.toString('utf8', 0, start) + read.toString('utf8', end))
  } catch {
    return null
  }
  if (!isSealedDocument(document) || document.sealed.data !== '') return null
  const text = read.toString('latin1', start, end)
  const ciphertext = Buffer.from(text, 'base64')
  // Each base64 character is 6 bits: fewer bytes than that means one was skipped as not base64.
  const padding = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0
  if (ciphertext.length !== Math.floor(text.length * 3 / 4) - padding) return null
  return { document, ciphertext }
}
