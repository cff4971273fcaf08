import { closeSync, constants, fstatSync, openSync, readFileSync, readSync } from 'node:fs'
import { parseEnv } from 'node:util'

/**
 * The most a setting's file (`TASK_AGENTS=@path`, `TASK_ENCRYPTION_KEYS=@path`) is read of: such
 * a file holds a few KB. A path to something endless (`/dev/zero`, a pipe that never ends) is
 * refused at boot with the setting named, instead of filling memory until the process aborts.
 */
export const SETTING_FILE_MAX_BYTES = 1024 * 1024

/**
 * How long a pipe named as a setting's file (`@/dev/fd/3`, a FIFO) may take to deliver its text.
 * Opened blocking, a FIFO nobody writes to would hang the boot for good, before any log line.
 */
export const SETTING_FILE_WAIT_MS = 5000

/** How often an empty pipe is read again while its writer is on its way. */
const POLL_MS = 10

/** The file's text, read to its end or refused past `max` bytes or `waitMs`; errors are the file system's, or one naming the bound. */
export function readSettingFile (path: string, max = SETTING_FILE_MAX_BYTES, waitMs = SETTING_FILE_WAIT_MS): string {
  // Non-blocking: opening a FIFO then returns at once, writer or not (a regular file reads the same).
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  try {
    // One byte past the bound tells a file of exactly `max` bytes from a longer one.
    const buffer = Buffer.alloc(max + 1)
    const deadline = performance.now() + waitMs
    // A FIFO reads as ended until its writer opens it: only text, then the end, is its end.
    const fifo = fstatSync(fd).isFIFO()
    let length = 0
    for (;;) {
      let got: number
      try {
        got = readSync(fd, buffer, length, buffer.length - length, null)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err
        got = -1
      }
      if (got === 0 && !(fifo && length === 0)) break
      if (got <= 0) {
        if (performance.now() >= deadline) throw new Error(`a pipe that gave ${length === 0 ? 'nothing' : 'no end'} within ${waitMs} ms`)
        // The boot has nothing else to do meanwhile: a plain wait, not a spin.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, POLL_MS)
        continue
      }
      length += got
      if (length > max) throw new Error(`more than ${max} bytes (a settings file holds a few KB)`)
    }
    return buffer.toString('utf8', 0, length)
  } finally {
    closeSync(fd)
  }
}

/**
 * The text of a `.env` file, or null when there is none. Opened without blocking and refused
 * unless a regular file (code EISDIR for a folder, ENOTREG otherwise): a FIFO opened blocking
 * would hold the start, or a command, for ever, past any signal.
 */
export function readDotEnvFile (path: string): string | null {
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
  try {
    const stat = fstatSync(fd)
    if (!stat.isFile()) throw Object.assign(new Error(`${path} is not a regular file`), { code: stat.isDirectory() ? 'EISDIR' : 'ENOTREG' })
    return readFileSync(fd, 'utf8')
  } finally {
    closeSync(fd)
  }
}

/** A line every Node's parser (util.parseEnv) reads as a setting: spaces, an optional `export `, a name, spaces, `=`. */
const ASSIGNMENT = /^ *(?:export )?[\w.-]+ *=/u
/** The same with tabs, more spaces or a byte-order mark in it: Node 20 misreads the name, later ones do not. */
const LOOSE_ASSIGNMENT = /^[\s\uFEFF]*(?:export\s+)?[\w.-]+\s*=/u
const COMMENT = /^ *#/u
const LOOSE_COMMENT = /^[\s\uFEFF]*#/u
/** A name as the settings have them: what the parser made of a line it misread is not one. */
const NAME = /^[\w.-]+$/u
const QUOTES = '\'"`'

/**
 * The numbers of the `.env` lines that Node's parser (util.parseEnv, which the server and the
 * command-line tool read `.env` with) drops or misreads without a word, so that a setting would
 * not apply: `TASK_STORE postgres` would leave the server on the file store. A line must be empty,
 * a comment, `NAME=value`, or part of a value quoted across lines (up to the line with its closing
 * quote, when one comes). Tabs or a byte-order mark before a name or a comment, and a line of
 * spaces or tabs before another line, make Node 20's parser join lines into one name; they count
 * only where this Node's parser does that.
 */
export function droppedEnvLines (text: string): number[] {
  const lines = text.split(/\r?\n/u)
  const dropped: number[] = []
  const quirks: number[] = []
  let blanks: number[] = []
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string
    if (line === '') continue
    if (line.trim() === '') {
      blanks.push(i + 1)
      continue
    }
    quirks.push(...blanks)
    blanks = []
    if (COMMENT.test(line)) continue
    if (LOOSE_COMMENT.test(line)) {
      quirks.push(i + 1)
      continue
    }
    const strict = ASSIGNMENT.exec(line)
    const assignment = strict ?? LOOSE_ASSIGNMENT.exec(line)
    if (assignment === null) {
      dropped.push(i + 1)
      continue
    }
    if (strict === null) quirks.push(i + 1)
    const value = line.slice(assignment[0].length).replace(/^ +/u, '')
    const quote = value[0]
    if (quote === undefined || !QUOTES.includes(quote) || value.includes(quote, 1)) continue
    // The value goes on to the line with its closing quote; with none, it is this line's text.
    const close = lines.findIndex((later, j) => j > i && later.includes(quote))
    if (close !== -1) i = close
  }
  if (quirks.length > 0 && Object.keys(parseEnv(text)).some((name) => !NAME.test(name))) dropped.push(...quirks)
  return dropped.sort((a, b) => a - b)
}

/** The error for droppedEnvLines(): line numbers only, since such a line may hold a secret. */
export function droppedEnvMessage (lines: readonly number[]): string {
  const one = lines.length === 1
  return `.env line${one ? '' : 's'} ${lines.join(', ')}: not NAME=value, a comment or an empty line, so the parser drops or misreads ${one ? 'it' : 'them'} and a setting would not apply; fix or remove ${one ? 'it' : 'them'}`
}
