import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs'
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
 * The numbers of the `.env` lines that Node's parser (util.parseEnv, which the server and the
 * command-line tool read `.env` with) drops without a word: text that is not a comment, holds no
 * `=`, and is no part of a value (a quoted one spans lines). `TASK_STORE postgres` would leave
 * the server on the file store.
 */
export function droppedEnvLines (text: string): number[] {
  const values = Object.values(parseEnv(text))
  const dropped: number[] = []
  text.split(/\r?\n/u).forEach((line, index) => {
    const content = line.trim()
    if (content === '' || content.startsWith('#') || content.includes('=')) return
    // The first or last line of a quoted value carries its quote.
    const text = content.replace(/^['"`]|['"`]$/gu, '')
    if (values.some((value) => value?.includes(text) === true)) return
    dropped.push(index + 1)
  })
  return dropped
}

/** The error for droppedEnvLines(): line numbers only, since a dropped line may hold a secret. */
export function droppedEnvMessage (lines: readonly number[]): string {
  return `.env line${lines.length === 1 ? '' : 's'} ${lines.join(', ')}: not NAME=value, so the parser drops ${lines.length === 1 ? 'it' : 'them'} and the setting would not apply; fix or comment out`
}
