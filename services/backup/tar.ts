import { constants as bufferConstants } from 'node:buffer'
import { Readable, pipeline as pipelineCallback, type Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip, createGzip } from 'node:zlib'
import { TarFormatError } from '../errors.js'

/**
 * The largest entry the reader accepts: the largest session file restore can read, one string
 * (MAX_SESSION_FILE_BYTES). Not TASK_MAX_SESSION_BYTES's 256 MiB: a sealed file takes a third
 * more than the content that bound holds.
 */
export const MAX_ENTRY_BYTES = bufferConstants.MAX_STRING_LENGTH

/** The largest pax or GNU long-name header: it holds a path, and a path of more is damage or hostility. */
export const MAX_HEADER_ENTRY_BYTES = 64 * 1024

/**
 * Gzipped tar archives (POSIX ustar, with pax headers for names over 100 bytes), written and
 * read as streams: what `taskvault backup` and `restore` use. Readable by any `tar`.
 */

const BLOCK = 512
const NAME_BYTES = 100
/** 11 octal digits: the largest size or time a plain ustar field holds. */
const MAX_OCTAL_11 = 0o77777777777

export interface TarFile {
  name: string
  data: Uint8Array
  /** Permission bits; 0600 by default. */
  mode?: number
  mtime?: Date
}

export interface TarEntry {
  name: string
  /** Regular files and folders; anything else (links, devices) is `other`. */
  type: 'file' | 'directory' | 'other'
  data: Buffer
  mode: number
  mtime: Date
}

/** Writes `files` as a tar.gz to `out`, one at a time, respecting backpressure; resolves once `out` has it all. */
export async function writeTarGz (files: AsyncIterable<TarFile> | Iterable<TarFile>, out: Writable): Promise<void> {
  await pipeline(Readable.from(tarBlocks(files), { objectMode: false }), createGzip(), out)
}

/**
 * `files` as a tar.gz stream, produced as it is read (a file at a time, never the whole
 * archive). An error of `files` destroys the stream with that error; destroying the stream
 * (a client gone) stops `files` at its next step.
 */
export function tarGzStream (files: AsyncIterable<TarFile> | Iterable<TarFile>): Readable {
  const gzip = createGzip()
  // The error reaches the reader through gzip; the callback only keeps it observed.
  pipelineCallback(Readable.from(tarBlocks(files), { objectMode: false }), gzip, () => {})
  return gzip
}

async function * tarBlocks (files: AsyncIterable<TarFile> | Iterable<TarFile>): AsyncGenerator<Buffer> {
  for await (const file of files) {
    const name = Buffer.from(file.name, 'utf8')
    const mtime = Math.floor((file.mtime?.getTime() ?? Date.now()) / 1000)
    if (name.length > NAME_BYTES || /[^\x20-\x7e]/u.test(file.name)) {
      const pax = paxRecord('path', file.name)
      yield header({ name: 'PaxHeader/' + asciiPrefix(file.name, NAME_BYTES - 10), size: pax.length, mode: 0o600, mtime, type: 'x' })
      yield * padded(pax)
    }
    yield header({ name: asciiPrefix(file.name, NAME_BYTES), size: file.data.length, mode: file.mode ?? 0o600, mtime, type: '0' })
    yield * padded(Buffer.from(file.data.buffer, file.data.byteOffset, file.data.byteLength))
  }
  // The end of an archive: two zero blocks.
  yield Buffer.alloc(BLOCK * 2)
}

interface HeaderFields {
  name: string
  size: number
  mode: number
  mtime: number
  type: string
}

function header ({ name, size, mode, mtime, type }: HeaderFields): Buffer {
  if (size > MAX_OCTAL_11) throw new TarFormatError(`${name}: ${size} bytes is more than a tar entry holds`)
  const block = Buffer.alloc(BLOCK)
  block.write(name, 0, NAME_BYTES, 'utf8')
  writeOctal(block, 100, 8, mode & 0o7777)
  writeOctal(block, 108, 8, 0)
  writeOctal(block, 116, 8, 0)
  writeOctal(block, 124, 12, size)
  writeOctal(block, 136, 12, Math.min(Math.max(mtime, 0), MAX_OCTAL_11))
  block.write(type, 156, 1, 'latin1')
  block.write('ustar\u000000', 257, 8, 'latin1')
  block.write('taskvault', 265, 32, 'latin1')
  block.write('taskvault', 297, 32, 'latin1')
  // The checksum is computed with its own field as eight spaces, then stored as six octal digits, NUL, space.
  block.fill(0x20, 148, 156)
  const sum = checksum(block)
  block.write(sum.toString(8).padStart(6, '0') + '\u0000 ', 148, 8, 'latin1')
  return block
}

/** One pax record, `"<len> <key>=<value>\n"`, where `<len>` counts the whole record including itself. */
function paxRecord (key: string, value: string): Buffer {
  const body = ` ${key}=${value}\n`
  const bodyBytes = Buffer.byteLength(body, 'utf8')
  let length = bodyBytes + 1
  while (String(length).length + bodyBytes !== length) length = String(length).length + bodyBytes
  return Buffer.from(`${length}${body}`, 'utf8')
}

/** `data`, then the zeros up to a whole block: two chunks, so a session of megabytes is not copied to pad it. */
function * padded (data: Buffer): Generator<Buffer> {
  yield data
  const rest = data.length % BLOCK
  if (rest !== 0) yield Buffer.alloc(BLOCK - rest)
}

function writeOctal (block: Buffer, offset: number, length: number, value: number): void {
  block.write(value.toString(8).padStart(length - 1, '0') + '\u0000', offset, length, 'latin1')
}

/** A printable ASCII stand-in for a name, for the header field when the real name is in a pax record. */
function asciiPrefix (name: string, bytes: number): string {
  return name.replace(/[^\x20-\x7e]/gu, '_').slice(0, bytes)
}

function checksum (block: Buffer): number {
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i] as number
  return sum
}

/**
 * Reads a tar.gz stream entry by entry. Throws TarFormatError when it is not gzip, a header's
 * checksum is wrong, or the archive ends before its end marker (a truncated backup).
 */
export async function * readTarGz (source: Readable): AsyncGenerator<TarEntry> {
  const gunzip = createGunzip()
  // Errors of either stream end the iteration below with that error.
  const piping = pipeline(source, gunzip).catch(() => {})
  const bytes = new ByteQueue(gunzip[Symbol.asyncIterator]() as AsyncIterator<Buffer>)
  let longName: string | null = null
  try {
    for (;;) {
      const block = await bytes.take(BLOCK).catch(gzipError)
      if (block === null) throw new TarFormatError('the archive ends without its end marker (truncated?)')
      if (block.every((byte) => byte === 0)) {
        // Read to the end, so that gzip checks its CRC and length: a damaged backup must not pass.
        await bytes.drain().catch(gzipError)
        return
      }
      if (checksum(block) !== readOctal(block, 148, 8)) throw new TarFormatError('a header has a wrong checksum (not a tar archive, or damaged)')
      const size = readOctal(block, 124, 12)
      // Session files are small: a huge size is a damaged or hostile archive, never buffered.
      if (size > MAX_ENTRY_BYTES) throw new TarFormatError(`an entry claims ${size} bytes, more than the ${MAX_ENTRY_BYTES} a session file may have`)
      const type = block[156] === 0 ? '0' : String.fromCharCode(block[156] as number)
      // x: pax; L and K: GNU's long name and long link target (a lock's target runs past 100 bytes); g: pax global.
      const header = type === 'x' || type === 'L' || type === 'K' || type === 'g'
      if (header && size > MAX_HEADER_ENTRY_BYTES) throw new TarFormatError(`a pax or long-name header claims ${size} bytes, more than the ${MAX_HEADER_ENTRY_BYTES} a path needs`)
      const kind = type === '0' || type === '7' ? 'file' : type === '5' ? 'directory' : 'other'
      if (!header && kind !== 'file') {
        // A folder's or a link's body is never used: passed over, not buffered (a hostile size costs no memory).
        if (!await bytes.skip(Math.ceil(size / BLOCK) * BLOCK).catch(gzipError)) throw new TarFormatError('the archive ends inside an entry (truncated?)')
        const name = longName ?? ustarName(block)
        longName = null
        yield { name, type: kind, data: Buffer.alloc(0), mode: readOctal(block, 100, 8), mtime: new Date(readOctal(block, 136, 12) * 1000) }
        continue
      }
      const body = await bytes.take(Math.ceil(size / BLOCK) * BLOCK).catch(gzipError)
      if (body === null) throw new TarFormatError('the archive ends inside an entry (truncated?)')
      const data = body.subarray(0, size)
      if (type === 'x') {
        longName = paxPath(data) ?? longName
        continue
      }
      if (type === 'L') {
        longName = data.toString('utf8').replace(/\0.*$/su, '')
        continue
      }
      // A link's target is never used (links are refused or skipped by name).
      if (type === 'g' || type === 'K') continue
      const name = longName ?? ustarName(block)
      longName = null
      yield {
        name,
        type: kind,
        data,
        mode: readOctal(block, 100, 8),
        mtime: new Date(readOctal(block, 136, 12) * 1000)
      }
    }
  } finally {
    source.destroy()
    gunzip.destroy()
    await piping
  }
}

function gzipError (err: unknown): never {
  const code = (err as NodeJS.ErrnoException).code
  if (typeof code === 'string' && code.startsWith('Z_')) throw new TarFormatError(`not a gzip file, or damaged (${(err as Error).message})`)
  throw err
}

function ustarName (block: Buffer): string {
  const field = (start: number, length: number): string => block.subarray(start, start + length).toString('utf8').replace(/\0.*$/su, '')
  const name = field(0, NAME_BYTES)
  const prefix = block.subarray(257, 262).toString('latin1') === 'ustar' ? field(345, 155) : ''
  return prefix === '' ? name : `${prefix}/${name}`
}

function paxPath (records: Buffer): string | null {
  let path: string | null = null
  let at = 0
  while (at < records.length) {
    const space = records.indexOf(0x20, at)
    const length = Number(records.subarray(at, space).toString('latin1'))
    if (space === -1 || !Number.isInteger(length) || length <= 0 || at + length > records.length) throw new TarFormatError('a pax header is malformed')
    const record = records.subarray(space + 1, at + length - 1).toString('utf8')
    const equals = record.indexOf('=')
    if (record.slice(0, equals) === 'path') path = record.slice(equals + 1)
    at += length
  }
  return path
}

function readOctal (block: Buffer, offset: number, length: number): number {
  const text = block.subarray(offset, offset + length).toString('latin1').replace(/[\0 ]+$/u, '').replace(/^[ ]+/u, '')
  if (!/^[0-7]*$/u.test(text)) throw new TarFormatError(`a header field is not an octal number ('${text}')`)
  return text === '' ? 0 : parseInt(text, 8)
}

/** Past this, take() copies into a buffer of its own rather than queue chunks and join them. */
const TAKE_IN_PLACE_BYTES = 1024 * 1024

/** Bytes from an async iterator of chunks, taken in exact amounts. */
class ByteQueue {
  private chunks: Buffer[] = []
  private length = 0

  constructor (private readonly source: AsyncIterator<Buffer>) {}

  /**
   * Exactly `n` bytes, or null if the source ends first. Past what is queued, they are copied
   * into one buffer of `n` as they come, so an entry costs its size once, not twice.
   */
  async take (n: number): Promise<Buffer | null> {
    if (this.length < n && n > TAKE_IN_PLACE_BYTES) return this.takeInto(n)
    while (this.length < n) {
      const next = await this.source.next()
      if (next.done === true) return null
      this.chunks.push(next.value)
      this.length += next.value.length
    }
    const all = this.chunks.length === 1 ? this.chunks[0] as Buffer : Buffer.concat(this.chunks, this.length)
    const taken = all.subarray(0, n)
    const rest = all.subarray(n)
    this.chunks = rest.length > 0 ? [rest] : []
    this.length = rest.length
    return taken
  }

  private async takeInto (n: number): Promise<Buffer | null> {
    const out = Buffer.allocUnsafe(n)
    let filled = 0
    for (const chunk of this.chunks) filled += chunk.copy(out, filled)
    this.chunks = []
    this.length = 0
    while (filled < n) {
      const next = await this.source.next()
      if (next.done === true) return null
      const used = next.value.copy(out, filled, 0, Math.min(next.value.length, n - filled))
      filled += used
      if (used < next.value.length) {
        this.chunks = [next.value.subarray(used)]
        this.length = next.value.length - used
      }
    }
    return out
  }

  /** Passes over `n` bytes, holding none of them; false if the source ends first. */
  async skip (n: number): Promise<boolean> {
    let left = n
    while (left > 0) {
      if (this.length === 0) {
        const next = await this.source.next()
        if (next.done === true) return false
        this.chunks = [next.value]
        this.length = next.value.length
      }
      const head = this.chunks[0] as Buffer
      const used = Math.min(head.length, left)
      left -= used
      this.length -= used
      if (used === head.length) this.chunks.shift()
      else this.chunks[0] = head.subarray(used)
    }
    return true
  }

  /** Reads the source to its end, discarding what is left. */
  async drain (): Promise<void> {
    this.chunks = []
    this.length = 0
    while ((await this.source.next()).done !== true);
  }
}
