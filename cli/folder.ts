import { constants, type Dirent } from 'node:fs'
import { lstat, open, readdir, stat as statFollowing } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import type { Config } from '../schemas/config.js'
import { FileSessionStore } from '../services/store/file-store.js'
import type { SessionFile } from '../services/session/session.js'
import { KeyUnavailableError, LockLostError, SealNotOpenedError, StorageError, StorageLockedError } from '../services/errors.js'
import { kidRecord, type Clear, type Keyring } from '../services/store/keyring.js'
import { ARCHIVED_FILE, SESSION_FILE, readSessionDocument, sessionText } from '../services/store/session-files.js'
import { MAX_SESSION_FILE_BYTES, tooLargeReason } from '../services/store/read-batch.js'
import { CommandFailedError } from './args.js'
import { nodeFs } from '../services/store/fs-seam.js'
import { readMarker } from '../services/store/storage-folder.js'
import { checkedKids } from '../services/store/key-checks.js'
import { StorageLock } from '../services/store/storage-lock.js'

/** A `*.json` entry of the storage folder or its `archive/`. */
export interface StoredFile {
  /** Relative to the storage folder: `<id>.json` or `archive/<name>`. */
  rel: string
  path: string
  archived: boolean
  /** The session its name says it holds; null when the name is not a session file's. */
  sessionId: string | null
  /** Not a symlink, folder or other special file. */
  regular: boolean
}

export type CheckedFile =
  /** `kid`: the key that sealed it, null for plaintext. */
  | { ok: true, file: SessionFile, data: Buffer, mtime: Date, kid: string | null }
  /**
   * Sealed under a key not configured: whole and untouched, only unreadable here; never moved.
   * `clear`: its id and times, which stay in clear (checked before the key was looked for).
   */
  | { ok: false, reason: string, keyMissing: true, kid: string, clear: Clear, data: Buffer, mtime: Date }
  /**
   * `unopenedKid`: sealed under that kid, and its box did not open under the key configured for it.
   * `denied`: the file system refused to read it (EACCES, say): nothing is known of its content, so it is never moved.
   */
  | { ok: false, reason: string, keyMissing?: undefined, unopenedKid?: string, denied?: true }
  /** Removed or moved (by a running server) since the listing. */
  | { ok: null }

/** KidProofs' `archivedToo` for a command that reads every archived copy (seal): each kid's count. */
export const EVERY_KID = '*'

/**
 * Which kids' keys open their files, as a command checks them one by one: a kid with active
 * files whose box did not open and no file (active or archived) that did has a wrong key, not
 * damaged files; the server's restore judges them so, and stops. Archived files count only
 * under `archivedToo` (the sealing kid when the store keeps no key check of it): the restore
 * proves that key by them, and stops when none opens; other archived ones are read on demand.
 * With EVERY_KID, every kid's archived files count (a command that reads them all, as seal does).
 */
export class KidProofs {
  private readonly opened = new Set<string>()
  private readonly unopened = new Map<string, number>()

  constructor (private readonly unit: 'files' | 'rows' = 'files', private readonly archivedToo: string | null = null) {}

  /** A file checked: opened, or an active one sealed under a kid whose key did not open it (files the server ignores aside). */
  note (stored: StoredFile, checked: CheckedFile): void {
    if (checked.ok === true) this.opens(checked.kid)
    else if (checked.ok === false && checked.keyMissing !== true && checked.unopenedKid !== undefined && !ignoredByServer(stored)) this.failsUnder(checked.unopenedKid, stored.archived)
  }

  /** One opened: sealed under `kid`, or plaintext (null). */
  opens (kid: string | null): void {
    if (kid !== null) this.opened.add(kid)
  }

  /** One whose box did not open under the key configured for `kid`; an archived one counts only under `archivedToo`. */
  failsUnder (kid: string, archived: boolean): void {
    if (archived && kid !== this.archivedToo && this.archivedToo !== EVERY_KID) return
    this.unopened.set(kid, (this.unopened.get(kid) ?? 0) + 1)
  }

  /** The first kid none of whose files opened, with how many did not; null when there is none. */
  wrong (): { kid: string, count: number } | null {
    for (const [kid, count] of this.unopened) if (!this.opened.has(kid)) return { kid, count }
    return null
  }

  /** The failure for a wrong key, `then` saying what the command did (or did not do). */
  failure (then: string): CommandFailedError | null {
    const wrong = this.wrong()
    return wrong === null
      ? null
      : new CommandFailedError(`key '${wrong.kid}' opens none of the ${wrong.count} ${this.unit} sealed under it: TASK_ENCRYPTION_KEYS likely holds a different key under that kid (the ${this.unit} are whole; the server would refuse to start). Put the right key back; ${then}`)
  }
}

/**
 * What a command reading a folder's files learns of its keys before it starts: the marker's key
 * checks are verified (a key under a kid other than the one the folder first had refuses the
 * server's start, so the command fails too), and the proofs to gather as files are checked.
 * `marked`: the folder has a `.taskvault` marker.
 */
export async function folderKeys (dir: string, keyring: Keyring | null): Promise<{ proofs: KidProofs, marked: boolean }> {
  const marker = await readMarker(nodeFs, dir)
  const keyChecks = marker?.keyChecks ?? kidRecord<string>()
  const proofs = new KidProofs('files', keyring !== null && !Object.hasOwn(keyChecks, keyring.activeKid) ? keyring.activeKid : null)
  // A kept check that matched proves its key, as the server's restore takes it.
  if (keyring !== null) for (const kid of checkedKids(keyring, keyring.verifyChecks(keyChecks, `storage folder ${dir}`))) proofs.opens(kid)
  return { proofs, marked: marker !== null }
}

/** The storage folder named on the command line, or TASK_STORAGE_DIR. */
export function storageDir (given: string | undefined, settings: Config): string {
  return resolve(given ?? settings.TASK_STORAGE_DIR)
}

/**
 * A `*.json` entry the server never reads, so never judges: a name that is not a session id
 * (`my notes.json`), or not a regular file (a symlink, a folder, a FIFO). Reported as ignored,
 * never failing a command, never set aside.
 */
export function ignoredByServer (stored: StoredFile): boolean {
  return stored.sessionId === null || !stored.regular
}

/**
 * Fails unless `dir` is an existing folder (a typo must not become a new, empty one). A symlink
 * to a folder is one, as the server takes it (TASK_STORAGE_DIR on a mounted volume's link);
 * links inside the folder are never followed.
 */
export async function assertFolder (dir: string): Promise<void> {
  const stat = await statFollowing(dir).catch(() => null)
  if (stat === null) throw new CommandFailedError(`${dir} is not a storage folder (no such folder)`)
  if (!stat.isDirectory()) throw new CommandFailedError(`${dir} is not a storage folder (not a folder)`)
}

/**
 * True when `archive/` is a real folder, false when there is none; fails the command when it is
 * something else (a symlink to a folder elsewhere, say): the server never reads or archives
 * through it, so a backup, a count, a seal or an archive pass would leave the archive out.
 */
export async function archiveFolder (dir: string): Promise<boolean> {
  const archiveDir = join(dir, 'archive')
  const archive = await lstat(archiveDir).catch(() => null)
  if (archive === null) return false
  if (archive.isDirectory()) return true
  throw new CommandFailedError(`${archiveDir} is not a real folder (a symlink or a file): the server reads no archived session through it, so neither does this tool; make it a folder of the storage folder (move the files in), then run this again`)
}

/** Every `*.json` of the folder and of `archive/` (see archiveFolder), sorted by relative path. */
export async function listStoredFiles (dir: string): Promise<StoredFile[]> {
  const files: StoredFile[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.name.endsWith('.json')) files.push(stored(dir, entry, false))
  }
  const archiveDir = join(dir, 'archive')
  if (await archiveFolder(dir)) {
    for (const entry of await readdir(archiveDir, { withFileTypes: true })) {
      if (entry.name.endsWith('.json')) files.push(stored(archiveDir, entry, true))
    }
  }
  return files.sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0))
}

function stored (dir: string, entry: Dirent, archived: boolean): StoredFile {
  const match = (archived ? ARCHIVED_FILE : SESSION_FILE).exec(entry.name)
  return {
    rel: archived ? `archive/${entry.name}` : entry.name,
    path: join(dir, entry.name),
    archived,
    sessionId: match?.[1] ?? null,
    regular: entry.isFile()
  }
}

/** Rounds of listing again when files moved while read (a live server archiving or bringing back). */
const MAX_ROUNDS = 5

/** A file of the folder as readSettled read it: never one gone since the listing. */
export interface SettledFile {
  stored: StoredFile
  checked: Exclude<CheckedFile, { ok: null }>
}

/**
 * Every file of the folder and `archive/`, each read once, active ones first, for a command that
 * reads while a server may run (validate, stats, backup). A file that moved between the listing
 * and its read (archived, or brought back) is read where it went: the folder is listed again (up
 * to MAX_ROUNDS) while files move, and the files not read yet are read. `skip` is asked before
 * each read (`late`: not in both of the first two listings, so moving); a file it skips is asked
 * again in a later round.
 */
export async function * readSettled (dir: string, keyring: Keyring | null, skip: (stored: StoredFile, late: boolean) => boolean | Promise<boolean> = () => false): AsyncGenerator<SettledFile> {
  const taken = new Set<string>()
  let settled: ReadonlySet<string> | null = null
  for (let round = 1; round <= MAX_ROUNDS; round++) {
    let moved = 0
    const { files, both } = await listTwice(dir)
    settled ??= both
    for (const stored of files) {
      if (taken.has(stored.rel) || await skip(stored, !settled.has(stored.rel))) continue
      const checked = await checkStoredFile(stored, keyring)
      if (checked.ok === null) {
        moved++
        continue
      }
      taken.add(stored.rel)
      yield { stored, checked }
    }
    if (moved === 0) break
  }
}

/**
 * readSettled's `skip` for a command that takes each session once: a file listed only after a
 * move (archived, or brought back, since the session was read) is skipped. `seen` is told of each
 * file read; files there from the first listing (an active file and its archived copies) are all read.
 */
export function readOnce (): { skip: (stored: StoredFile, late: boolean) => boolean, seen: (stored: StoredFile) => void } {
  /** Sessions read, and whether from their active file. */
  const read = new Map<string, boolean>()
  return {
    skip: (stored, late) => late && stored.sessionId !== null && read.has(stored.sessionId) && read.get(stored.sessionId) !== !stored.archived,
    seen: (stored) => {
      if (stored.sessionId !== null && !read.has(stored.sessionId)) read.set(stored.sessionId, !stored.archived)
    }
  }
}

/**
 * The folder and archive/ listed, then listed again: a session moving between them (archived,
 * or brought back) between two listings is then in at least one of them. Active files first;
 * `both`: the files in both listings (not moving then).
 */
async function listTwice (dir: string): Promise<{ files: StoredFile[], both: Set<string> }> {
  const first = await listStoredFiles(dir)
  const second = await listStoredFiles(dir)
  const byPath = new Map(first.map((stored) => [stored.rel, stored]))
  const both = new Set<string>()
  for (const stored of second) {
    if (byPath.has(stored.rel)) both.add(stored.rel)
    else byPath.set(stored.rel, stored)
  }
  const files = [...byPath.values()].sort((a, b) => (a.archived !== b.archived ? (a.archived ? 1 : -1) : a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0))
  return { files, both }
}

/** Reads a file once, whole, and checks it exactly as the server's restore does. */
export async function checkStoredFile (stored: StoredFile, keyring: Keyring | null): Promise<CheckedFile> {
  if (!stored.regular) return { ok: false, reason: 'not a regular file (a symlink or folder); the server never reads it' }
  if (stored.sessionId === null) {
    return { ok: false, reason: stored.archived ? 'not named <id>.json or <id>.<ms>.json; the server ignores it' : 'not named <id>.json with a valid session id' }
  }
  let data: Buffer
  let mtime: Date
  try {
    const handle = await open(stored.path, constants.O_RDONLY | constants.O_NOFOLLOW)
    try {
      const stat = await handle.stat()
      // Not read: no session this large can be parsed (the server sets such a file aside too).
      if (stat.size > MAX_SESSION_FILE_BYTES) return { ok: false, reason: tooLargeReason(stat.size) }
      mtime = stat.mtime
      data = await handle.readFile()
    } finally {
      await handle.close()
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return { ok: null }
    // One file the folder's owner cannot read (a root-owned leftover) is reported; the rest is still checked.
    if (code === 'EACCES' || code === 'EPERM' || code === 'EIO') return { ok: false, reason: `cannot be read (${code}); fix its owner or mode`, denied: true }
    throw err
  }
  try {
    const read = readSessionDocument(stored.rel, sessionText(stored.rel, data), stored.sessionId, keyring)
    return { ok: true, file: read.file, data, mtime, kid: read.kid }
  } catch (err) {
    if (err instanceof KeyUnavailableError) return { ok: false, reason: err.message, keyMissing: true, kid: err.kid, clear: clearOf(data), data, mtime }
    // The store's message starts with the file name, which the caller prints already.
    const reason = (err as Error).message.replace(`${stored.rel}: `, '')
    return err instanceof SealNotOpenedError ? { ok: false, reason, unopenedKid: err.kid } : { ok: false, reason }
  }
}

/**
 * The clear fields of a sealed document whose format was checked already (a KeyUnavailableError
 * is only thrown past that check): what is known of a session sealed under a missing key.
 */
export function clearOf (data: Buffer): Clear {
  const { session_id: sessionId, created_at: createdAt, updated_at: updatedAt } = JSON.parse(data.toString('utf8')) as Clear
  return { session_id: sessionId, created_at: createdAt, updated_at: updatedAt }
}

/**
 * A checked file that is whole: one that reads, or one sealed under a missing key (its
 * updated_at then from its clear fields); null for one that does not read, or is gone.
 */
export function wholeFile (checked: CheckedFile): { data: Buffer, updatedAt: string } | null {
  if (checked.ok === true) return { data: checked.data, updatedAt: checked.file.updated_at }
  return checked.ok === false && checked.keyMissing === true ? { data: checked.data, updatedAt: checked.clear.updated_at } : null
}

/** Two copies of a session: their bytes, and what they hold when it could be opened here (null: sealed under a key not configured). */
export interface Copy {
  data: Buffer
  file: SessionFile | null
}

/**
 * Whether two copies of a session with the same updated_at hold the same state: the same bytes,
 * or the same session once opened (one sealed since under another key by `taskvault seal`, or
 * one in clear, is the same state in another form). Null when it cannot be told here: one of
 * them is sealed under a key TASK_ENCRYPTION_KEYS does not hold.
 */
export function sameState (a: Copy, b: Copy): boolean | null {
  if (a.data.equals(b.data)) return true
  if (a.file === null || b.file === null) return null
  return isDeepStrictEqual(a.file, b.file)
}

/** Files carried as they are though sealed under a key TASK_ENCRYPTION_KEYS does not hold, by kid. */
export type KeysNeeded = Record<string, { active: number, archived: number }>

export function needKey (needs: KeysNeeded, kid: string, archived: boolean): void {
  const need = needs[kid] ??= { active: 0, archived: 0 }
  need[archived ? 'archived' : 'active']++
}

/**
 * One warning a kid: archived files wait for their key; active ones stop the server's start.
 * Where a key under that kid is in use already, only the one that sealed them opens them: under
 * another, the server sets them aside as damaged (in corrupt/, never deleted).
 */
export function keyWarnings (needs: KeysNeeded, where: string, store: 'folder' | 'database' = 'folder'): string[] {
  const unit = store === 'folder' ? 'file' : 'row'
  // A folder's file that does not open is moved to corrupt/; a database's row is left where it is, unread.
  const damaged = store === 'folder' ? 'sets them aside as damaged' : 'leaves them unread, as damaged'
  return Object.entries(needs).map(([kid, { active, archived }]) => {
    const parts = [
      ...(archived > 0 ? [`${archived} archived ${unit}${archived === 1 ? '' : 's'} (served once the key is back)`] : []),
      ...(active > 0 ? [`${active} active session${active === 1 ? '' : 's'}: the server will not start on ${where} until TASK_ENCRYPTION_KEYS holds key '${kid}' again`] : [])
    ]
    return `⚠️  sealed under key '${kid}', which TASK_ENCRYPTION_KEYS does not hold, carried as they are: ${parts.join('; ')}. ` +
      `Only the key that sealed them opens them: where another key is in use under '${kid}', the server ${damaged}`
  })
}

/**
 * Runs `work` holding the folder's single-writer lock, exactly as a server would hold it:
 * refused (naming the holder) while a live server has the folder. `create` makes a missing
 * folder (restore); otherwise a missing folder is an error.
 */
export async function withWriteLock<R> (dir: string, settings: Config, keyring: Keyring | null, create: boolean, work: (store: FileSessionStore) => Promise<R>): Promise<R> {
  if (!create) await assertUsedFolder(dir, 'nothing was written')
  const store = new FileSessionStore({ dir, keyring, maxSessionBytes: settings.TASK_MAX_SESSION_BYTES, lock: { refreshMs: settings.TASK_LOCK_REFRESH_MS, staleMs: settings.TASK_LOCK_STALE_MS } })
  await store.init()
  try {
    // A killed run's temp files (seal, restore, export): the server's start would remove them, so does any writer here.
    await store.removeTempFiles()
    return await work(store)
  } catch (err) {
    if (!(err instanceof LockLostError)) throw err
    throw new CommandFailedError(`lost the lock of ${dir} to another writer, so stopped: every file written is whole; run again once nothing else writes the folder`)
  } finally {
    await store.close()
  }
}

/**
 * For a command that only reads but must not run beside a writer (import: a server's archive pass
 * moves files while they are read): refused, naming the holder, while a live process holds the
 * folder's lock. Writes nothing, so a read-only folder or snapshot is read as it is.
 */
export async function assertNoWriter (dir: string, settings: Config): Promise<void> {
  const lock = new StorageLock(dir, nodeFs, { refreshMs: settings.TASK_LOCK_REFRESH_MS, staleMs: settings.TASK_LOCK_STALE_MS })
  const holder = await lock.liveHolder()
  if (holder !== null) throw new StorageLockedError(dir, holder)
}

/**
 * Refuses a folder with no .taskvault marker and no session file: not one taskvault has used (a
 * volume that did not mount, a mistyped path). A check of it would pass on nothing, and a command
 * that writes would mark it as a storage folder (which then turns off this check and backup's).
 * `outcome`: what the message says of the command's work ("nothing was written").
 */
export async function assertUsedFolder (dir: string, outcome: string): Promise<void> {
  await assertFolder(dir)
  if (await readMarker(nodeFs, dir) !== null) return
  // A session file the server reads: not a folder, link or other entry that only takes the name.
  if ((await listStoredFiles(dir)).some((stored) => !ignoredByServer(stored))) return
  throw new CommandFailedError(`${dir} holds no session and no .taskvault marker: it is not a storage folder taskvault has used (a volume that did not mount?); ${outcome}`)
}

/**
 * Runs a step that writes `what` (a file, a folder's fsync); an I/O error there (ENOSPC, EIO)
 * becomes a StorageError naming it and saying what was done before: `done`, as in "3 of 10 files
 * sealed before it". Other errors pass as they are.
 */
export async function writing<R> (what: string, done: () => string, step: () => Promise<R>): Promise<R> {
  try {
    return await step()
  } catch (err) {
    const io = err as NodeJS.ErrnoException
    if (!(err instanceof Error) || typeof io.code !== 'string' || typeof io.syscall !== 'string') throw err
    const failure = new StorageError(`writing ${what}`, io)
    failure.message += `; ${done()}`
    throw failure
  }
}

/**
 * How many files the folder's `corrupt/` holds. A restore or `validate --fix` moves a file there
 * as it was found (in clear, or sealed under any key) and no command reads it again, so seal and
 * validate name the count: a plaintext one stays in clear until an operator deletes it.
 */
export async function setAsideCount (dir: string): Promise<number | null> {
  const corruptDir = join(dir, 'corrupt')
  // Not a real folder (none, or a symlink): nothing was ever moved into it.
  if ((await lstat(corruptDir).catch(() => null))?.isDirectory() !== true) return 0
  // Unreadable (another user's): the command's own work stands; only the count is unknown.
  const entries = await readdir(corruptDir, { withFileTypes: true }).catch(() => null)
  return entries === null ? null : entries.filter((entry) => entry.isFile()).length
}

/** The warning for setAsideCount's files (null: unknown), `done` saying what the command did not do to them ("sealed"). */
export function setAsideWarning (count: number | null, done: string): string {
  if (count === null) return `⚠️  corrupt/ could not be read: files set aside there, if any, are kept as found and not ${done}`
  const [files, are, them] = count === 1 ? ['file', 'is', 'it'] : ['files', 'are', 'them']
  return `⚠️  ${count} ${files} set aside in corrupt/ ${are} kept as found and not ${done} (plaintext ones stay in clear): inspect ${them}, then delete ${them}`
}

/** The session files of a folder, relative to it: `<id>.json` and `archive/<name>`. */
export async function folderSessionFiles (dir: string): Promise<string[]> {
  const rels: string[] = []
  for (const name of await readdir(dir).catch(() => [])) if (SESSION_FILE.test(name)) rels.push(name)
  for (const name of await readdir(join(dir, 'archive')).catch(() => [])) if (ARCHIVED_FILE.test(name)) rels.push(`archive/${name}`)
  return rels
}

/**
 * For a folder that does not tell upper from lower case (FileSessionStore.caseless): refuses
 * files to write (relative paths) whose names differ only in case, from each other or from a
 * file the folder holds, as each pair would be one file and one session written over another.
 * `source`: what the files come from ("the backup", "the database").
 */
export function assertNoCaseTwins (dir: string, incoming: Iterable<string>, present: Iterable<string>, source: string): void {
  const folded = new Map<string, string>()
  for (const rel of incoming) {
    const twin = folded.get(rel.toLowerCase())
    if (twin !== undefined && twin !== rel) throw caseTwinsError(dir, `${source} holds ${twin} and ${rel}`)
    folded.set(rel.toLowerCase(), rel)
  }
  for (const rel of present) {
    const twin = folded.get(rel.toLowerCase())
    if (twin !== undefined && twin !== rel) throw caseTwinsError(dir, `${source}'s ${twin} and the folder's ${rel} differ only in case`)
  }
}

function caseTwinsError (dir: string, what: string): CommandFailedError {
  return new CommandFailedError(`${dir} does not tell upper from lower case in file names, and ${what}: they would be one file, and one session would be written over another; nothing was written`)
}
