import type { Dirent } from 'node:fs'
import { realpath } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { ForeignFolderError } from '../errors.js'
import type { FsSeam } from './fs-seam.js'
import { kidRecord } from './keyring.js'
import { ARCHIVED_FILE, SESSION_FILE, fsyncDir, readWhole, writeAndRename } from './session-files.js'

/**
 * Whose folder it is. A folder taskvault created, or adopted, holds a `.taskvault` marker
 * naming the format of its files. A folder without one is only adopted when every `*.json`
 * in it (and in its archive/) is a session file: pointed at a project folder by mistake,
 * taskvault must not set its package.json aside as a corrupt session.
 */

export const MARKER_FILE = '.taskvault'
/** The layout and file format this version writes; a marker naming a later one is refused. */
export const FORMAT_VERSION = 1
/** Files read at once while judging a folder with no marker (the thread pool runs four at a time). */
const SCAN_CHUNK = 16

/** The folders a storage folder keeps inside it: archived copies, and files set aside. */
export const INNER_FOLDERS = ['archive', 'corrupt'] as const

/**
 * Why `dir` cannot be a storage folder although it may look like one, or null: it is the
 * archive/ or corrupt/ of another storage folder, or its own archive/ or corrupt/ is one. Two
 * stores nested so would read each other's files as their own (retention deleting the other's
 * active sessions).
 */
export async function nestedStorageFolder (fs: FsSeam, given: string): Promise<string | null> {
  const marked = async (folder: string): Promise<boolean> => fs.lstat(join(folder, MARKER_FILE)).then(() => true, () => false)
  // Judged on the real folder: a symlink named otherwise may lead into another's archive/.
  const dir = await realFolder(given)
  const name = basename(dir)
  if ((INNER_FOLDERS as readonly string[]).includes(name) && await marked(dirname(dir))) {
    return `storage folder ${dir} is the ${name}/ folder of the taskvault storage folder ${dirname(dir)}; give each taskvault a folder of its own, outside the other's`
  }
  for (const inner of INNER_FOLDERS) {
    if (await marked(join(dir, inner))) {
      return `storage folder ${dir} holds another taskvault storage folder as its ${inner}/ (${join(dir, inner, MARKER_FILE)}); give each taskvault a folder of its own, outside the other's`
    }
  }
  return null
}

/** `dir` with every symlink resolved, as far as it exists (the rest, not made yet, as given). */
async function realFolder (dir: string): Promise<string> {
  const rest: string[] = []
  for (let at = resolve(dir); ; at = dirname(at)) {
    const real = await realpath(at).catch(() => null)
    if (real !== null) return join(real, ...rest.reverse())
    if (dirname(at) === at) return resolve(dir)
    rest.push(basename(at))
  }
}

/** The format the marker names; null when there is none. Throws ForeignFolderError when it is not one of ours. */
export async function readMarker (fs: FsSeam, dir: string): Promise<Marker | null> {
  const path = join(dir, MARKER_FILE)
  let text: string
  try {
    text = (await readWhole(fs, path)).toString('utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return null
    // ELOOP: a symlink (O_NOFOLLOW); EISDIR, ENOTREG (a FIFO, a device): not a file we wrote.
    if (code === 'ELOOP' || code === 'EISDIR' || code === 'ENOTREG') throw new ForeignFolderError(`${path} is not a taskvault marker (not a regular file); remove it if ${dir} is taskvault's`)
    throw err
  }
  let marker = null as { format?: unknown, key_checks?: unknown } | null
  try {
    marker = JSON.parse(text) as typeof marker
  } catch {}
  const format = marker?.format
  if (typeof format !== 'number' || !Number.isInteger(format) || format < 1) {
    throw new ForeignFolderError(`${path} is not a taskvault marker (expected {"format": ${FORMAT_VERSION}}); remove it if ${dir} is taskvault's`)
  }
  if (format > FORMAT_VERSION) {
    throw new ForeignFolderError(`${dir} holds files of taskvault format ${format}, written by a later taskvault; this one reads format ${FORMAT_VERSION}`)
  }
  const keyChecks = kidRecord<string>()
  const kept = marker?.key_checks
  if (typeof kept === 'object' && kept !== null) for (const [kid, check] of Object.entries(kept)) if (typeof check === 'string') keyChecks[kid] = check
  return { format, keyChecks }
}

/** What the marker holds: the folder's format, and a key check per kid ever configured on it (Keyring.keyCheck). */
export interface Marker {
  format: number
  keyChecks: Record<string, string>
}

/** Writes the marker durably (temp file, fsync, rename, fsync the folder). `temp` is a name restore removes if left behind. */
export async function writeMarker (fs: FsSeam, dir: string, temp: string, keyChecks: Record<string, string> = {}): Promise<void> {
  const marker = Object.keys(keyChecks).length === 0 ? { format: FORMAT_VERSION } : { format: FORMAT_VERSION, key_checks: keyChecks }
  const data = Buffer.from(JSON.stringify(marker) + '\n', 'utf8')
  await writeAndRename(fs, join(dir, temp), join(dir, MARKER_FILE), data)
  await fsyncDir(fs, dir)
}

/**
 * The first `*.json` (by name, the folder's before archive/'s) that is not a session file,
 * with why; null when all are. Only the shape is judged: a damaged session file (which restore
 * sets aside) is still a session file, and the seed's format passes; package.json does not.
 */
export async function firstForeignFile (fs: FsSeam, dir: string): Promise<{ file: string, reason: string } | null> {
  const own = await foreignIn(fs, dir, '', SESSION_FILE)
  if (own !== null) return own
  const archive = join(dir, 'archive')
  const stat = await fs.lstat(archive).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null
    throw err
  })
  return stat?.isDirectory() === true ? foreignIn(fs, archive, 'archive/', ARCHIVED_FILE) : null
}

async function foreignIn (fs: FsSeam, dir: string, prefix: string, names: RegExp): Promise<{ file: string, reason: string } | null> {
  const entries = (await fs.readdir(dir, { withFileTypes: true })).filter((entry) => entry.name.endsWith('.json'))
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  // SCAN_CHUNK files read at once (one by one, 10,000 files took 2.1 s here and held the first
  // boot; now 0.9 to 1.2 s). Each chunk is judged in name order once all its reads are done, so
  // the outcome is the one-by-one reading's: the first foreign file by name, or the error of the
  // first file before it that could not be read.
  for (let at = 0; at < entries.length; at += SCAN_CHUNK) {
    const chunk = entries.slice(at, at + SCAN_CHUNK)
    const judged = await Promise.allSettled(chunk.map(async (entry) => {
      // Symlinks, folders and the like are never read, moved or followed: they are no risk.
      if (!entry.isFile()) return null
      if (!names.test(entry.name)) return 'its name is not <session id>.json'
      return notASession((await readWhole(fs, join(dir, entry.name))).toString('utf8'))
    }))
    for (const [index, outcome] of judged.entries()) {
      if (outcome.status === 'rejected') throw outcome.reason
      if (outcome.value !== null) return { file: prefix + (chunk[index] as Dirent).name, reason: outcome.value }
    }
  }
  return null
}

/**
 * A session file is a JSON object with a session_id. A writer that was not atomic (the seed's)
 * leaves, after a crash, one cut short (it starts with the session_id) or an empty one: those
 * are damaged session files, set aside by the restore, not a sign of someone else's folder.
 */
function notASession (text: string): string | null {
  if (text.trim() === '') return null
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    return /^\s*\{\s*"session_id"\s*:/u.test(text) ? null : 'it is not valid JSON'
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return 'it is not a JSON object'
  return typeof (raw as { session_id?: unknown }).session_id === 'string' ? null : 'it has no session_id'
}
