import { isUtf8 } from 'node:buffer'
import { constants, fstatSync } from 'node:fs'
import { basename } from 'node:path'
import type { FileHandle } from 'node:fs/promises'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { ALL_SESSIONS, SealedSessionFile, StoredSessionFile, type SessionFile } from '../../schemas/session.js'
import { CorruptSessionFileError, KeyUnavailableError, SessionTooLargeError } from '../errors.js'
import type { Keyring } from './keyring.js'
import type { FsSeam } from './fs-seam.js'
import { tooLargeReason } from './read-batch.js'
import { normalizeSessionFile } from '../session/session.js'
import { noop } from '../noop.js'

/**
 * The names and checks of stored session files, shared by the store (restore, archive) and the
 * command-line tool, so that `taskvault validate` judges a file exactly as a restore would.
 */

export const FILE_MODE = 0o600
export const DIR_MODE = 0o700

/** `<id>.json` in the storage folder. */
export const SESSION_FILE = /^([A-Za-z0-9_-]{1,128})\.json$/u
/** `<id>.json` or `<id>.<ms>.json` (a later archive of an id that was already archived) in archive/. */
export const ARCHIVED_FILE = /^([A-Za-z0-9_-]{1,128})(?:\.(\d{1,16}))?\.json$/u
/** `.<id>.<pid>.<seq>.tmp`: hidden, never matches `*.json`, unique per process and save. */
export const TEMP_FILE = /^\.[A-Za-z0-9_-]{1,128}\.\d+\.\d+\.tmp$/u

/**
 * A writer's temp-file names, `.<stem>.<pid>.<n>.tmp` (TEMP_FILE for a session id), n counting
 * up from the time the namer was made: a writer that has an earlier one's pid (pid 1 in a
 * container, run again after a kill -9) never meets that one's leftover temp files, which a
 * create-exclusive open would refuse (EEXIST) until a server start removed them.
 */
export function tempNames (): (stem: string) => string {
  let seq = Date.now() * 1000
  return (stem) => `.${stem}.${process.pid}.${++seq}.tmp`
}

const checkStoredFile = TypeCompiler.Compile(StoredSessionFile)
const checkSealedFile = TypeCompiler.Compile(SealedSessionFile)

/**
 * The text of a session file's bytes. Bytes that are not UTF-8 make the file corrupt: decoded,
 * each would turn into U+FFFD, and the next save would write that in their place for good.
 */
export function sessionText (name: string, bytes: Buffer): string {
  const text = bytes.toString('utf8')
  // Only a text holding U+FFFD (the file's own, or the decoder's) needs its bytes checked.
  if (text.includes('\uFFFD') && !isUtf8(bytes)) throw new CorruptSessionFileError(name, 'not UTF-8 text (session files are UTF-8 JSON)')
  return text
}

/**
 * Parses and checks the text of a session file whose name says it holds `expectedId`, opening
 * it first when it is sealed. Throws CorruptSessionFileError naming `name` and the first
 * problem, or KeyUnavailableError when it is sealed under a kid the keyring does not hold.
 */
export function parseSessionFile (name: string, text: string, expectedId: string, keyring: Keyring | null = null): SessionFile {
  return readSessionDocument(name, text, expectedId, keyring).file
}

/** parseSessionFile, also saying which key sealed the file (null: plaintext). */
export function readSessionDocument (name: string, text: string, expectedId: string, keyring: Keyring | null): { file: SessionFile, kid: string | null } {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new CorruptSessionFileError(name, `not valid JSON (${(err as Error).message})`)
  }
  let kid: string | null = null
  if (typeof raw === 'object' && raw !== null && 'sealed' in raw) {
    kid = (raw as { sealed?: { kid?: unknown } }).sealed?.kid as string
    raw = openSealed(name, raw, expectedId, keyring)
  }
  if (!checkStoredFile.Check(raw)) {
    const first = checkStoredFile.Errors(raw).First()
    throw new CorruptSessionFileError(name, `does not match the session file format at '${first?.path ?? ''}': ${first?.message ?? ''}`)
  }
  if (raw.session_id !== expectedId || raw.session.session_id !== raw.session_id) {
    throw new CorruptSessionFileError(name, `holds session '${raw.session_id}', which does not match its file name`)
  }
  // No request could reach it (GET /list?session_id=all lists every session), yet others would act on it.
  if (raw.session_id === ALL_SESSIONS) throw new CorruptSessionFileError(name, `holds session '${ALL_SESSIONS}', an id reserved for every session; rename the file and the ids in it to keep it`)
  const ids = new Set(raw.session.tasks.map((task) => task.id))
  if (ids.size !== raw.session.tasks.length) throw new CorruptSessionFileError(name, 'has duplicate task ids')
  const badTime = invalidTimestamp(raw)
  if (badTime !== null) throw new CorruptSessionFileError(name, `holds an impossible date '${badTime}'`)
  return { file: normalizeSessionFile(raw), kid }
}

/** The stored session inside a sealed document: its clear fields with what the box holds. */
function openSealed (name: string, raw: object, expectedId: string, keyring: Keyring | null): unknown {
  if (!checkSealedFile.Check(raw)) {
    const first = checkSealedFile.Errors(raw).First()
    throw new CorruptSessionFileError(name, `does not match the sealed file format at '${first?.path ?? ''}': ${first?.message ?? ''}`)
  }
  if (raw.session_id !== expectedId) throw new CorruptSessionFileError(name, `holds session '${raw.session_id}', which does not match its file name`)
  if (keyring === null) throw new KeyUnavailableError(raw.sealed.kid, `a session is sealed under key '${raw.sealed.kid}', but TASK_ENCRYPTION_KEYS is not set`)
  const text = sessionText(name, keyring.open(name, raw))
  let inner: unknown
  try {
    inner = JSON.parse(text)
  } catch (err) {
    throw new CorruptSessionFileError(name, `sealed content is not valid JSON (${(err as Error).message})`)
  }
  if (typeof inner !== 'object' || inner === null || Array.isArray(inner)) throw new CorruptSessionFileError(name, 'sealed content is not an object')
  return { session_id: raw.session_id, created_at: raw.created_at, updated_at: raw.updated_at, ...inner }
}

/**
 * A file's bytes, read without following a symlink (one swapped in after readdir is refused);
 * one over `maxBytes` is not read (CorruptSessionFileError naming its size). I/O errors are
 * thrown as they are; they say nothing about the file's content. Opened without blocking and
 * refused unless a regular file (code ENOTREG, as the reader threads say): opening a FIFO
 * would wait for a writer for ever, holding a thread of the pool and the process's exit.
 */
export async function readWhole (fs: FsSeam, path: string, maxBytes = Number.POSITIVE_INFINITY): Promise<Buffer> {
  const handle = await fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  try {
    const stat = await handle.stat()
    if (!stat.isFile()) throw Object.assign(new Error(`${path} is not a regular file`), { code: 'ENOTREG' })
    const size = stat.size
    if (size > maxBytes) throw new CorruptSessionFileError(basename(path), tooLargeReason(size, maxBytes))
    return await handle.readFile()
  } finally {
    await handle.close()
  }
}

/**
 * Writes `data` to the new file `temp` (created exclusively, 0600), fsyncs it and renames it
 * over `target`. The caller fsyncs the folder. On failure the temp file is removed and the
 * error is rethrown as it is. `data` may be a function making the bytes: it runs while the
 * thread pool creates the temp file, so serializing (and sealing) costs no extra latency; its
 * error wins over the file system's. `beforeRename` may refuse the rename (its error is thrown as it is).
 */
export async function writeAndRename (fs: FsSeam, temp: string, target: string, data: Uint8Array | (() => Promise<Uint8Array>), mtime?: Date,
  beforeRename?: () => Promise<void> | null): Promise<void> {
  let handle: FileHandle | undefined
  try {
    const opening = fs.open(temp, 'wx', FILE_MODE)
    // Observed at once: it may fail while the bytes are still being made.
    opening.catch(noop)
    let bytes: Uint8Array
    try {
      bytes = typeof data === 'function' ? await data() : data
    } catch (err) {
      handle = await opening.catch(() => undefined)
      throw err
    }
    handle = await opening
    await handle.writeFile(bytes)
    if (mtime !== undefined) await handle.utimes(mtime, mtime)
    await handle.sync()
    await handle.close()
    handle = undefined
    const ready = beforeRename?.()
    if (ready != null) await ready
    await fs.rename(temp, target)
  } catch (err) {
    await handle?.close().catch(noop)
    await fs.unlink(temp).catch(noop)
    throw err
  }
}

/** Makes a folder's entries (renames, creations, deletions) durable. */
export async function fsyncDir (fs: FsSeam, dir: string, expected?: (stat: { dev: number, ino: number }) => boolean): Promise<void> {
  const handle = await fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    await handle.sync()
    // The folder synced is the one expected (not another made at its path since): the change is in it.
    // fstat of an open folder is a system call with no I/O: made here, not through the thread pool.
    if (expected !== undefined && !expected(fstatSync(handle.fd))) throw new FolderReplacedError(dir)
  } finally {
    await handle.close()
  }
}

/** fsyncDir found another folder at the path than the one expected. */
export class FolderReplacedError extends Error {
  constructor (dir: string) {
    super(`${dir} is not the folder it was`)
  }
}

/** How much JSON is made between two turns of the event loop while a large session is serialized. */
const SERIALIZE_SLICE_BYTES = 1024 * 1024
/** The session file is serialized piece by piece down to this depth: the file, the session, its tasks. */
const SLICED_DEPTH = 3

/**
 * `JSON.stringify(file, null, indent) + '\n'` as bytes. A large session is made piece by piece
 * (each task on its own), yielding to the event loop between slices, so it neither blocks the
 * server for seconds nor meets V8's string limit. Stops as soon as the bytes pass `maxBytes`
 * and throws SessionTooLargeError (naming `reportedMax`, the configured bound `maxBytes` is
 * derived from): nothing is written for a session over the bound.
 */
export async function serializeSessionFile (file: SessionFile, indent: number, maxBytes: number, keyring: Keyring | null = null, reportedMax = maxBytes): Promise<Buffer> {
  if (keyring !== null) return sealSessionFile(file, indent, maxBytes, keyring, reportedMax)
  // The common case, a session of a few small tasks, is one stringify.
  if (textLength(file) < SERIALIZE_SLICE_BYTES) {
    const data = Buffer.from(JSON.stringify(file, null, indent) + '\n', 'utf8')
    if (data.length > maxBytes) throw new SessionTooLargeError(file.session_id, reportedMax)
    return data
  }
  const writer = new SlicedWriter(file.session_id, ' '.repeat(indent), maxBytes, reportedMax)
  await writer.value(file, 0)
  writer.emit('\n')
  return Buffer.concat(writer.pieces(), writer.size)
}

/**
 * The sealed form: everything but the id and times is serialized compactly (nobody reads
 * ciphertext's layout), encrypted in slices, and carried base64 inside the envelope. The bound
 * holds the content (its compact JSON), not the envelope: base64 takes a third more, so bounding
 * the sealed bytes would refuse, once keys are set, a session the server saved in clear (and
 * strand a run interrupted in it). Compact JSON is never longer than the clear form, so every
 * session that fits in clear fits sealed.
 */
async function sealSessionFile (file: SessionFile, indent: number, maxBytes: number, keyring: Keyring, reportedMax: number): Promise<Buffer> {
  const { session_id: sessionId, created_at: createdAt, updated_at: updatedAt, ...content } = file
  let plaintext: Buffer[]
  if (textLength(file) < SERIALIZE_SLICE_BYTES) {
    const data = Buffer.from(JSON.stringify(content), 'utf8')
    if (data.length > maxBytes) throw new SessionTooLargeError(sessionId, reportedMax)
    plaintext = [data]
  } else {
    const writer = new SlicedWriter(sessionId, '', maxBytes, reportedMax)
    await writer.value(content, 0)
    plaintext = writer.pieces()
  }
  return keyring.sealToBytes({ session_id: sessionId, created_at: createdAt, updated_at: updatedAt }, plaintext, indent)
}

/** Characters of free text in a session: what its serialized size grows with. */
function textLength (file: SessionFile): number {
  let length = 0
  for (const task of file.session.tasks) length += 256 + task.instruction.length + (task.result?.length ?? 0) + (task.error?.length ?? 0)
  return length
}

class SlicedWriter {
  private readonly chunks: Buffer[] = []
  size = 0
  private sinceYield = 0

  /** `reportedMax`: the bound named in the error, when `maxBytes` is derived from it. */
  constructor (private readonly sessionId: string, private readonly unit: string, private readonly maxBytes: number, private readonly reportedMax = maxBytes) {}

  emit (text: string): void {
    const chunk = Buffer.from(text, 'utf8')
    this.size += chunk.length
    if (this.size > this.maxBytes) throw new SessionTooLargeError(this.sessionId, this.reportedMax)
    this.chunks.push(chunk)
    this.sinceYield += chunk.length
  }

  pieces (): Buffer[] {
    return this.chunks
  }

  async value (value: unknown, depth: number): Promise<void> {
    const pad = this.unit.repeat(depth)
    if (depth >= SLICED_DEPTH || typeof value !== 'object' || value === null) {
      let text: string
      try {
        text = JSON.stringify(value, null, this.unit) ?? 'null'
      } catch (err) {
        // One piece past V8's string limit is far past any bound a session may have.
        if (err instanceof RangeError) throw new SessionTooLargeError(this.sessionId, this.reportedMax)
        throw err
      }
      // Strings inside JSON never hold a raw newline, so every newline is the layout's.
      this.emit(this.unit === '' ? text : text.replaceAll('\n', '\n' + pad))
      if (this.sinceYield >= SERIALIZE_SLICE_BYTES) {
        this.sinceYield = 0
        await new Promise((resolve) => setImmediate(resolve))
      }
      return
    }
    const inner = pad + this.unit
    const newline = this.unit === '' ? '' : '\n'
    const colon = this.unit === '' ? ':' : ': '
    const entries: Array<[string | null, unknown]> = Array.isArray(value)
      ? value.map((item) => [null, item])
      : Object.entries(value).filter(([, item]) => item !== undefined && typeof item !== 'function')
    const [open, close] = Array.isArray(value) ? ['[', ']'] : ['{', '}']
    if (entries.length === 0) return this.emit(open + close)
    this.emit(open + newline)
    for (let i = 0; i < entries.length; i++) {
      const [key, item] = entries[i] as [string | null, unknown]
      this.emit(inner + (key === null ? '' : JSON.stringify(key) + colon))
      await this.value(item === undefined ? null : item, depth + 1)
      this.emit(i < entries.length - 1 ? ',' + newline : newline)
    }
    this.emit(pad + close)
  }
}

/** The pattern admits 2020-13-45; Date.parse does not. Returns the first such value. */
function invalidTimestamp (file: StoredSessionFile): string | null {
  if (!realTimestamp(file.created_at)) return file.created_at
  if (!realTimestamp(file.updated_at)) return file.updated_at
  for (const task of file.session.tasks) {
    for (const value of [task.created_at, task.started_at, task.completed_at]) {
      if (value !== null && value !== undefined && !realTimestamp(value)) return value
    }
  }
  return null
}

/**
 * For a value that matched the Timestamp pattern: does it name a real time? Checked field by
 * field: Date.parse would roll 2025-02-30 over into March, and costs a third of restore's CPU.
 */
function realTimestamp (value: string): boolean {
  const year = twoDigits(value, 0) * 100 + twoDigits(value, 2)
  const month = twoDigits(value, 5)
  const day = twoDigits(value, 8)
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return false
  if (twoDigits(value, 11) > 23 || twoDigits(value, 14) > 59 || twoDigits(value, 17) > 59) return false
  // An offset, when there is one, stands at the end: +hh:mm.
  const zone = value.length - 6
  if (value.endsWith('Z')) return true
  return twoDigits(value, zone + 1) <= 23 && twoDigits(value, zone + 4) <= 59
}

function daysInMonth (year: number, month: number): number {
  if (month === 2) return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31
}

function twoDigits (text: string, at: number): number {
  return (text.charCodeAt(at) - 48) * 10 + text.charCodeAt(at + 1) - 48
}
