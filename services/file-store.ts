import { EventEmitter } from 'node:events'
import { constants } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { dirname, join, resolve, sep } from 'node:path'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import pLimit from 'p-limit'
import { SessionFile, StoredSessionFile, SESSION_ID_PATTERN } from '../schemas/session.js'
import { CoalescedRun } from './coalesce.js'
import { CorruptSessionFileError, InvalidSessionIdError, StorageError, TaskvaultError } from './errors.js'
import { nodeFs, type FsSeam } from './fs-seam.js'
import { normalizeSessionFile } from './session.js'
import { StorageLock, type LockHolder, type StorageLockOptions } from './storage-lock.js'
import type { LoadFailure, LoadResult, LoadedSession, SessionStore, SessionStoreEvents } from './store.js'

const FILE_MODE = 0o600
const DIR_MODE = 0o700
const SESSION_ID = new RegExp(SESSION_ID_PATTERN, 'u')
// `.<id>.<pid>.<seq>.tmp`: hidden, never matches `*.json`, unique per process and save.
const TEMP_FILE = /^\.[A-Za-z0-9_-]{1,128}\.\d+\.\d+\.tmp$/u
const checkSessionFile = TypeCompiler.Compile(SessionFile)
const checkStoredFile = TypeCompiler.Compile(StoredSessionFile)

export interface FileSessionStoreOptions {
  dir: string
  fs?: FsSeam
  /** Pretty-printed by default so operators can read and diff session files. */
  indent?: number
  /** Hold the folder's single-writer lock from init to close (the server does; tools reading a copy need not). */
  lock?: StorageLockOptions
}

/**
 * One JSON file per session in `dir`. Every save is atomic and durable: a unique temp file
 * in the same folder (created exclusively, 0600) is written, fsynced and renamed over the
 * target, then the folder is fsynced. Concurrent saves share folder fsyncs.
 */
export class FileSessionStore implements SessionStore {
  readonly dir: string
  readonly archiveDir: string
  readonly corruptDir: string
  /** Observers subscribe here; the store does not know them. */
  readonly events = new EventEmitter<SessionStoreEvents>()
  private readonly fs: FsSeam
  private readonly indent: number
  private readonly dirSync: CoalescedRun
  private readonly lock: StorageLock | null
  private tempSeq = 0

  constructor (options: FileSessionStoreOptions) {
    this.dir = resolve(options.dir)
    this.archiveDir = join(this.dir, 'archive')
    this.corruptDir = join(this.dir, 'corrupt')
    this.fs = options.fs ?? nodeFs
    this.indent = options.indent ?? 2
    this.dirSync = new CoalescedRun(() => this.fsyncDir(this.dir))
    this.lock = options.lock ? new StorageLock(this.dir, this.fs, options.lock) : null
  }

  get location (): string {
    return this.dir
  }

  /** Creates the folder (0700), takes the single-writer lock, and proves the folder writable. Returns a stale holder it replaced. */
  async init (): Promise<LockHolder | null> {
    let replaced: LockHolder | null = null
    try {
      await this.fs.ensureDir(this.dir, DIR_MODE)
      // A folder created just now is durable only once its parent's entry is.
      await this.fsyncDir(dirname(this.dir)).catch(noop)
      if (this.lock !== null) replaced = await this.lock.acquire()
      await this.fs.chmod(this.dir, DIR_MODE)
      // Prove the folder is writable now rather than on the first client's request.
      const probe = join(this.dir, `.probe.${process.pid}.${++this.tempSeq}.tmp`)
      const handle = await this.fs.open(probe, 'wx', FILE_MODE)
      await handle.close()
      await this.fs.unlink(probe)
    } catch (err) {
      if (err instanceof TaskvaultError) throw err
      await this.lock?.release().catch(noop)
      throw new StorageError(`preparing storage folder ${this.dir}`, err as NodeJS.ErrnoException)
    }
    return replaced
  }

  pathFor (sessionId: string): string {
    if (!SESSION_ID.test(sessionId)) throw new InvalidSessionIdError(`invalid session id '${sessionId.slice(0, 140)}'`)
    const path = join(this.dir, `${sessionId}.json`)
    // Defence in depth: the pattern already keeps ids free of separators and dots.
    if (!path.startsWith(this.dir + sep)) throw new InvalidSessionIdError('session id escapes the storage folder')
    return path
  }

  async save (file: SessionFile): Promise<number> {
    const started = performance.now()
    let bytes = 0
    let ok = false
    try {
      bytes = await this.write(file)
      ok = true
      return bytes
    } finally {
      this.events.emit('save', { ms: performance.now() - started, ok, bytes })
    }
  }

  private async write (file: SessionFile): Promise<number> {
    const candidate: unknown = file
    if (!checkSessionFile.Check(candidate)) {
      const first = checkSessionFile.Errors(candidate).First()
      throw new TaskvaultError('INVALID_SESSION_STATE', `refusing to save session '${file.session_id}': ${first?.path ?? ''} ${first?.message ?? ''}`)
    }
    const target = this.pathFor(file.session_id)
    const data = Buffer.from(JSON.stringify(file, null, this.indent) + '\n', 'utf8')
    const temp = join(this.dir, `.${file.session_id}.${process.pid}.${++this.tempSeq}.tmp`)
    let handle: FileHandle | undefined
    try {
      handle = await this.fs.open(temp, 'wx', FILE_MODE)
      await handle.writeFile(data)
      await handle.sync()
      await handle.close()
      handle = undefined
      await this.fs.rename(temp, target)
    } catch (err) {
      await handle?.close().catch(noop)
      await this.fs.unlink(temp).catch(noop)
      throw new StorageError(`saving session '${file.session_id}'`, err as NodeJS.ErrnoException)
    }
    await this.syncDir(`saving session '${file.session_id}'`, true)
    return data.length
  }

  async remove (sessionId: string): Promise<void> {
    const target = this.pathFor(sessionId)
    try {
      await this.fs.unlink(target)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw new StorageError(`deleting session '${sessionId}'`, err as NodeJS.ErrnoException)
    }
    await this.syncDir(`deleting session '${sessionId}'`, true)
  }

  async archive (sessionId: string): Promise<void> {
    const source = this.pathFor(sessionId)
    try {
      await this.ensureRealDir(this.archiveDir)
      // Never replace an earlier archive of the same id: the later one gets a dated name.
      let target = join(this.archiveDir, `${sessionId}.json`)
      if (await this.fs.lstat(target).then(() => true, () => false)) target = join(this.archiveDir, `${sessionId}.${Date.now()}.json`)
      await this.fs.rename(source, target)
      await this.fsyncDir(this.archiveDir)
    } catch (err) {
      throw new StorageError(`archiving session '${sessionId}'`, err as NodeJS.ErrnoException)
    }
    await this.syncDir(`archiving session '${sessionId}'`, true)
  }

  async loadAll ({ concurrency }: { concurrency: number }): Promise<LoadResult> {
    let entries
    try {
      entries = await this.fs.readdir(this.dir, { withFileTypes: true })
    } catch (err) {
      throw new StorageError(`listing storage folder ${this.dir}`, err as NodeJS.ErrnoException)
    }
    const limit = pLimit(concurrency)
    const sessions: LoadedSession[] = []
    const failures: LoadFailure[] = []
    let removedTempFiles = 0
    await Promise.all(entries.map((entry) => limit(async () => {
      // Dirent types come from readdir without following links: symlinks, folders,
      // sockets and the like are never read.
      if (!entry.isFile()) return
      if (TEMP_FILE.test(entry.name)) {
        if (await this.fs.unlink(join(this.dir, entry.name)).then(() => true, () => false)) removedTempFiles++
        return
      }
      if (!entry.name.endsWith('.json')) return
      try {
        sessions.push(await this.loadFile(entry.name))
      } catch (err) {
        // Only a file that is readable but wrong is set aside; an I/O error (EMFILE, EIO,
        // EACCES) says nothing about the file and fails the restore instead.
        if (!(err instanceof CorruptSessionFileError)) throw new StorageError(`reading ${entry.name}`, err as NodeJS.ErrnoException)
        failures.push({ name: entry.name, reason: err.message, movedTo: await this.setAside(entry.name) })
      }
    })))
    if (removedTempFiles > 0 || failures.length > 0) await this.syncDir('restoring sessions')
    return { sessions, failures, removedTempFiles }
  }

  async close (): Promise<void> {
    await this.lock?.release()
  }

  private async loadFile (name: string): Promise<LoadedSession> {
    // O_NOFOLLOW: a symlink swapped in after readdir is refused, not followed.
    const handle = await this.fs.open(join(this.dir, name), constants.O_RDONLY | constants.O_NOFOLLOW)
    let text: string
    try {
      text = await handle.readFile('utf8')
    } finally {
      await handle.close()
    }
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
    if (name !== `${raw.session_id}.json` || raw.session.session_id !== raw.session_id) {
      throw new CorruptSessionFileError(name, `holds session '${raw.session_id}', which does not match its file name`)
    }
    const ids = new Set(raw.session.tasks.map((task) => task.id))
    if (ids.size !== raw.session.tasks.length) throw new CorruptSessionFileError(name, 'has duplicate task ids')
    const badTime = invalidTimestamp(raw)
    if (badTime !== null) throw new CorruptSessionFileError(name, `holds an impossible date '${badTime}'`)
    return { file: normalizeSessionFile(raw), bytes: Buffer.byteLength(text, 'utf8') }
  }

  /** Moves an unreadable file into `corrupt/`, never deleting it; null if it could not be moved. */
  private async setAside (name: string): Promise<string | null> {
    try {
      await this.ensureRealDir(this.corruptDir)
      // Unique per process and call, so two set-asides of one name never overwrite each other.
      const target = join(this.corruptDir, `${name}.${Date.now()}.${process.pid}.${++this.tempSeq}`)
      await this.fs.rename(join(this.dir, name), target)
      await this.fsyncDir(this.corruptDir)
      return target
    } catch {
      return null
    }
  }

  /** `afterChange`: the folder entry was already changed, so a failure leaves the outcome uncertain. */
  /** Creates a subfolder, refusing one that is a symlink (it could lead out of the storage folder). */
  private async ensureRealDir (dir: string): Promise<void> {
    await this.fs.ensureDir(dir, DIR_MODE)
    const stat = await this.fs.lstat(dir)
    if (!stat.isDirectory()) throw Object.assign(new Error(`${dir} is not a real folder (a symlink?); refusing to move files into it`), { code: 'ENOTDIR' })
  }

  private async syncDir (operation: string, afterChange = false): Promise<void> {
    try {
      await this.dirSync.run()
    } catch (err) {
      const error = new StorageError(operation, err as NodeJS.ErrnoException)
      error.uncertain = afterChange
      throw error
    }
  }

  private async fsyncDir (dir: string): Promise<void> {
    const handle = await this.fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY)
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
  }
}

function noop (): void {}

/** The pattern admits 2020-13-45; Date.parse does not. Returns the first such value. */
function invalidTimestamp (file: StoredSessionFile): string | null {
  const values = [file.created_at, file.updated_at]
  for (const task of file.session.tasks) values.push(task.created_at, task.started_at ?? '', task.completed_at ?? '')
  return values.find((value) => value !== '' && Number.isNaN(Date.parse(value))) ?? null
}
