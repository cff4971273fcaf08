import { constants } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { StoredSessionFile, type SessionFile } from '../schemas/session.js'
import { CorruptSessionFileError } from './errors.js'
import type { FsSeam } from './fs-seam.js'
import { normalizeSessionFile } from './session.js'

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

const checkStoredFile = TypeCompiler.Compile(StoredSessionFile)

/**
 * Parses and checks the text of a session file whose name says it holds `expectedId`.
 * Throws CorruptSessionFileError naming `name` and the first problem.
 */
export function parseSessionFile (name: string, text: string, expectedId: string): SessionFile {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new CorruptSessionFileError(name, `not valid JSON (${(err as Error).message})`)
  }
  if (!checkStoredFile.Check(raw)) {
    const first = checkStoredFile.Errors(raw).First()
    throw new CorruptSessionFileError(name, `does not match the session file format at '${first?.path ?? ''}': ${first?.message ?? ''}`)
  }
  if (raw.session_id !== expectedId || raw.session.session_id !== raw.session_id) {
    throw new CorruptSessionFileError(name, `holds session '${raw.session_id}', which does not match its file name`)
  }
  const ids = new Set(raw.session.tasks.map((task) => task.id))
  if (ids.size !== raw.session.tasks.length) throw new CorruptSessionFileError(name, 'has duplicate task ids')
  const badTime = invalidTimestamp(raw)
  if (badTime !== null) throw new CorruptSessionFileError(name, `holds an impossible date '${badTime}'`)
  return normalizeSessionFile(raw)
}

/**
 * Reads a whole file without following a symlink (one swapped in after readdir is refused).
 * I/O errors are thrown as they are; they say nothing about the file's content.
 */
export async function readWhole (fs: FsSeam, path: string): Promise<Buffer> {
  const handle = await fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  try {
    return await handle.readFile()
  } finally {
    await handle.close()
  }
}

/**
 * Writes `data` to the new file `temp` (created exclusively, 0600), fsyncs it and renames it
 * over `target`. The caller fsyncs the folder. On failure the temp file is removed and the
 * error is rethrown as it is.
 */
export async function writeAndRename (fs: FsSeam, temp: string, target: string, data: Uint8Array, mtime?: Date): Promise<void> {
  let handle: FileHandle | undefined
  try {
    handle = await fs.open(temp, 'wx', FILE_MODE)
    await handle.writeFile(data)
    if (mtime !== undefined) await handle.utimes(mtime, mtime)
    await handle.sync()
    await handle.close()
    handle = undefined
    await fs.rename(temp, target)
  } catch (err) {
    await handle?.close().catch(noop)
    await fs.unlink(temp).catch(noop)
    throw err
  }
}

/** Makes a folder's entries (renames, creations, deletions) durable. */
export async function fsyncDir (fs: FsSeam, dir: string): Promise<void> {
  const handle = await fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

function noop (): void {}

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
 * For a value that matched the Timestamp pattern: does it name a real time? Fields in their
 * everyday ranges are settled here without Date.parse (a third of restore's CPU otherwise);
 * the rare edge (day 29 to 31, hour 24, out-of-range fields) is left to Date.parse.
 */
function realTimestamp (value: string): boolean {
  const month = twoDigits(value, 5)
  const day = twoDigits(value, 8)
  if (month >= 1 && month <= 12 && day >= 1 && day <= 28 && twoDigits(value, 11) <= 23 &&
    twoDigits(value, 14) <= 59 && twoDigits(value, 17) <= 59 && value.endsWith('Z')) return true
  return !Number.isNaN(Date.parse(value))
}

function twoDigits (text: string, at: number): number {
  return (text.charCodeAt(at) - 48) * 10 + text.charCodeAt(at + 1) - 48
}
