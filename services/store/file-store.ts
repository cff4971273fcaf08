import { EventEmitter } from 'node:events'
import { constants, type Dirent } from 'node:fs'
import { statfs } from 'node:fs/promises'
import { dirname, join, resolve, sep } from 'node:path'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import pLimit from 'p-limit'
import { SessionFile, SESSION_ID_PATTERN } from '../../schemas/session.js'
import { ArchiveIndex, summarize, type ArchiveTotals, type ArchivedSummary } from '../archive/archive-index.js'
import { CoalescedRun } from './coalesce.js'
import type { DiskSpace } from './disk-space.js'
import { CorruptSessionFileError, ForeignFolderError, InvalidSessionIdError, KeyUnavailableError, StorageError, InvalidSessionStateError, TaskvaultError } from '../errors.js'
import { nodeFs, type FsSeam } from './fs-seam.js'
import type { Keyring } from './keyring.js'
import { ReaderPool } from './reader-pool.js'
import { ARCHIVED_FILE, DIR_MODE, FILE_MODE, SESSION_FILE, TEMP_FILE, fsyncDir, parseSessionFile, readSessionDocument, readWhole, serializeSessionFile, writeAndRename } from './session-files.js'
import { MARKER_FILE, firstForeignFile, readMarker, writeMarker } from './storage-folder.js'
import { StorageLock, type LockHolder, type StorageLockOptions } from './storage-lock.js'
import type { ArchivedSession, EncryptionStats, LoadFailure, LoadResult, LoadedSession, SessionStore, SessionStoreEvents } from './store.js'
import { noop } from '../noop.js'

const SESSION_ID = new RegExp(SESSION_ID_PATTERN, 'u')
const checkSessionFile = TypeCompiler.Compile(SessionFile)
/** Files per batch a reader thread reads at restore: big enough to amortise a message, small enough to keep memory low. */
const RESTORE_BATCH_FILES = 128

export interface FileSessionStoreOptions {
  dir: string
  fs?: FsSeam
  /** Pretty-printed by default so operators can read and diff session files. */
  indent?: number
  /** A session whose stored form would pass this many bytes is refused (TASK_MAX_SESSION_BYTES); unbounded when omitted. */
  maxSessionBytes?: number
  /** Seals every write and opens sealed files (TASK_ENCRYPTION_KEYS); plaintext when omitted. */
  keyring?: Keyring | null
  /** Hold the folder's single-writer lock from init to close (the server does; tools reading a copy need not). */
  lock?: StorageLockOptions
}

/** What init found and did, for the caller to log. */
export interface StorageInitReport {
  /** A stale holder whose lock was taken over. */
  replaced: LockHolder | null
  /** `created` now (0700), `adopted` now (it had no marker; every *.json was a session file), or already `marked`. */
  folder: 'created' | 'adopted' | 'marked'
  /** The folder's permission bits when group or others may use it (left as they are: init did not create it); else null. */
  openMode: number | null
}

/**
 * One JSON file per session in `dir`. Every save is atomic and durable: a unique temp file
 * in the same folder (created exclusively, 0600) is written, fsynced and renamed over the
 * target, then the folder is fsynced. Concurrent saves share folder fsyncs. Archived sessions
 * live in `dir/archive/`, unreadable files are set aside in `dir/corrupt/`.
 */
export class FileSessionStore implements SessionStore {
  readonly dir: string
  readonly archiveDir: string
  readonly corruptDir: string
  /** Observers subscribe here; the store does not know them. */
  readonly events = new EventEmitter<SessionStoreEvents>()
  private readonly fs: FsSeam
  private readonly indent: number
  private readonly maxSessionBytes: number
  private readonly keyring: Keyring | null
  /** The kid each active session is stored under ('' for plaintext), and how many per kid. */
  private readonly kidOf = new Map<string, string>()
  private readonly kidCounts = new Map<string, number>()
  private readonly dirSync: CoalescedRun
  private readonly lock: StorageLock | null
  private readonly archiveIndex = new ArchiveIndex()
  private summaryFill: Promise<LoadFailure[]> | null = null
  private readConcurrency = 32
  private tempSeq = 0

  constructor (options: FileSessionStoreOptions) {
    this.dir = resolve(options.dir)
    this.archiveDir = join(this.dir, 'archive')
    this.corruptDir = join(this.dir, 'corrupt')
    this.fs = options.fs ?? nodeFs
    this.indent = options.indent ?? 2
    this.maxSessionBytes = options.maxSessionBytes ?? Number.POSITIVE_INFINITY
    this.keyring = options.keyring ?? null
    this.dirSync = new CoalescedRun(() => fsyncDir(this.fs, this.dir))
    this.lock = options.lock ? new StorageLock(this.dir, this.fs, options.lock, (event) => this.events.emit('lock', event)) : null
  }

  /** Why nothing may be written any more (the lock was lost to another writer), or null. */
  unwritable (): TaskvaultError | null {
    return this.lock?.lost ?? null
  }

  private assertWritable (): void {
    const refusal = this.unwritable()
    if (refusal !== null) throw refusal
  }

  get location (): string {
    return this.dir
  }

  /**
   * Creates the folder (0700) or checks that an existing one is taskvault's (its mode is left
   * alone), takes the single-writer lock, marks the folder, and proves it writable.
   */
  async init (): Promise<StorageInitReport> {
    let replaced: LockHolder | null = null
    let locked = false
    try {
      const existed = await this.fs.lstat(this.dir).then(() => true, (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return false
        throw err
      })
      await this.fs.ensureDir(this.dir, DIR_MODE)
      // A folder created just now is durable only once its parent's entry is.
      if (!existed) await fsyncDir(this.fs, dirname(this.dir)).catch(noop)
      // Checked before the lock, so a folder that is not ours is left without a trace.
      const marked = existed && await readMarker(this.fs, this.dir) !== null
      if (existed && !marked) {
        const foreign = await firstForeignFile(this.fs, this.dir)
        if (foreign !== null) {
          throw new ForeignFolderError(`storage folder ${this.dir} is not taskvault's: it has no ${MARKER_FILE} marker and holds ${foreign.file}, ` +
            `which is not a session file (${foreign.reason}); point TASK_STORAGE_DIR at a new or empty folder, or move the files that are not sessions out of it`)
        }
      }
      if (this.lock !== null) {
        replaced = await this.lock.acquire()
        locked = true
      }
      if (!existed) await this.fs.chmod(this.dir, DIR_MODE)
      if (!marked) await writeMarker(this.fs, this.dir, `.taskvault.${process.pid}.${++this.tempSeq}.tmp`)
      // Prove the folder is writable now rather than on the first client's request.
      const probe = join(this.dir, `.probe.${process.pid}.${++this.tempSeq}.tmp`)
      const handle = await this.fs.open(probe, 'wx', FILE_MODE)
      await handle.close()
      await this.fs.unlink(probe)
      const dirMode = existed ? await this.modeOf(this.dir) : DIR_MODE
      return { replaced, folder: !existed ? 'created' : marked ? 'marked' : 'adopted', openMode: (dirMode & 0o077) !== 0 ? dirMode & 0o7777 : null }
    } catch (err) {
      if (locked) await this.lock?.release().catch(noop)
      if (err instanceof TaskvaultError) throw err
      throw new StorageError(`preparing storage folder ${this.dir}`, err as NodeJS.ErrnoException)
    }
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
    this.assertWritable()
    const candidate: unknown = file
    if (!checkSessionFile.Check(candidate)) {
      const first = checkSessionFile.Errors(candidate).First()
      throw new InvalidSessionStateError(file.session_id, `${first?.path ?? ''} ${first?.message ?? ''}`)
    }
    const target = this.pathFor(file.session_id)
    const data = await serializeSessionFile(file, this.indent, this.maxSessionBytes, this.keyring)
    try {
      await writeAndRename(this.fs, this.tempPath(file.session_id), target, data)
    } catch (err) {
      throw new StorageError(`saving session '${file.session_id}'`, err as NodeJS.ErrnoException)
    }
    // Past the rename the file holds the new form, whether or not the folder fsync holds.
    this.stored(file.session_id, this.keyring?.activeKid ?? '')
    await this.syncDir(`saving session '${file.session_id}'`, true)
    return data.length
  }

  async remove (sessionId: string): Promise<void> {
    const target = this.pathFor(sessionId)
    this.assertWritable()
    try {
      await this.fs.unlink(target)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw new StorageError(`deleting session '${sessionId}'`, err as NodeJS.ErrnoException)
    }
    this.stored(sessionId, null)
    await this.syncDir(`deleting session '${sessionId}'`, true)
  }

  async loadAll ({ concurrency }: { concurrency: number }): Promise<LoadResult> {
    const entries = await this.list(this.dir)
    const sessions: LoadedSession[] = []
    const failures: LoadFailure[] = []
    let removedTempFiles = 0
    const names: string[] = []
    for (const entry of entries) {
      // Dirent types come from readdir without following links: symlinks, folders,
      // sockets and the like are never read.
      if (!entry.isFile()) continue
      if (TEMP_FILE.test(entry.name)) {
        if (await this.fs.unlink(join(this.dir, entry.name)).then(() => true, () => false)) removedTempFiles++
      } else if (SESSION_FILE.test(entry.name)) {
        // Any other name (`my notes.json`) is not a session file: never read, never set aside.
        names.push(entry.name)
      }
    }
    // Reader threads read the next batches while this thread parses the one before. p-limit keeps
    // two batches per thread in flight: enough to never leave a thread idle, and memory bounded.
    const pool = new ReaderPool(Math.min(concurrency, Math.ceil(names.length / RESTORE_BATCH_FILES)), this.keyring?.entries() ?? null)
    const limit = pLimit(concurrency * 2)
    // Once one batch fails the restore has failed: batches still queued must not start (nor set files aside).
    let failed = false
    const missing = new Map<string, number>()
    const unopened = new Map<string, Array<{ name: string, reason: string }>>()
    try {
      await Promise.all(batches(names, RESTORE_BATCH_FILES).map((batch) => limit(async () => {
        if (failed) return
        const read = await pool.read(this.dir, batch).catch((err: Error) => {
          throw new StorageError(`reading ${this.dir}`, Object.assign(err, { code: 'EIO' }))
        })
        const data = Buffer.from(read.data.buffer, read.data.byteOffset, read.data.byteLength)
        for (const file of read.files) {
          // An I/O error (EMFILE, EIO, EACCES) says nothing about the file: it fails the restore
          // rather than setting a healthy file aside.
          if ('code' in file) {
            if (file.code === 'ENOTREG') continue
            throw new StorageError(`reading ${file.name}`, Object.assign(new Error(file.code), { code: file.code }))
          }
          try {
            // A sealed file was opened by the reader thread; what is left is a plaintext check.
            if ('sealed' in file) {
              if (file.sealed === 'key') throw new KeyUnavailableError(file.kid)
              if (file.kid !== undefined) {
                // Set aside below, unless no file under this kid opens: then the key is wrong, not the files.
                unopened.set(file.kid, [...(unopened.get(file.kid) ?? []), { name: file.name, reason: file.reason }])
                continue
              }
              throw new CorruptSessionFileError(file.name, file.reason)
            }
            const text = data.toString('utf8', file.offset, file.offset + file.length)
            const read = readSessionDocument(file.name, text, file.name.slice(0, -'.json'.length), this.keyring)
            sessions.push({ file: read.file, bytes: file.stored ?? file.length })
            this.stored(read.file.session_id, file.kid ?? read.kid ?? '')
          } catch (err) {
            // Sealed under a key we lack: counted, left exactly where it is, and the boot stops below.
            if (err instanceof KeyUnavailableError) {
              missing.set(err.kid, (missing.get(err.kid) ?? 0) + 1)
              continue
            }
            if (!(err instanceof CorruptSessionFileError)) throw err
            failures.push({ name: file.name, reason: err.message, movedTo: await this.setAside(this.dir, file.name) })
          }
        }
      }).catch((err: unknown) => {
        failed = true
        throw err
      })))
    } finally {
      limit.clearQueue()
      await pool.close()
    }
    if (missing.size > 0) {
      const counts = [...missing].map(([kid, count]) => `${count} session${count === 1 ? '' : 's'} need key '${kid}'`).join(', ')
      throw new KeyUnavailableError([...missing.keys()][0] as string, `cannot restore: ${counts}, which TASK_ENCRYPTION_KEYS does not hold. Add the key back; those files were left untouched`)
    }
    for (const [kid, files] of unopened) {
      if ((this.kidCounts.get(kid) ?? 0) === 0) {
        throw new KeyUnavailableError(kid, `cannot restore: key '${kid}' opens none of the ${files.length} sessions sealed under it; ` +
          'TASK_ENCRYPTION_KEYS holds a different key under that kid. Put the right key back; those files were left untouched')
      }
      for (const file of files) failures.push({ name: file.name, reason: `${file.name}: ${file.reason}`, movedTo: await this.setAside(this.dir, file.name) })
    }
    if (removedTempFiles > 0 || failures.length > 0) await this.syncDir('restoring sessions')
    return { sessions, failures, removedTempFiles }
  }

  // --- The archive: `archive/`, indexed in memory by names and sizes, read on demand. ---

  /**
   * Indexes `archive/` from its listing and file sizes only: archived files are read when a
   * list, a read or retention first needs them. Leftover temp files are removed.
   */
  async openArchive ({ concurrency }: { concurrency: number }): Promise<ArchiveTotals> {
    this.archiveIndex.clear()
    this.readConcurrency = concurrency
    // A missing archive/ is empty; one that is not a real folder is never read (archiving refuses it too).
    const stat = await this.fs.lstat(this.archiveDir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null
      throw new StorageError(`reading ${this.archiveDir}`, err)
    })
    if (stat === null || !stat.isDirectory()) return { ...this.archiveTotals() }
    const entries = await this.list(this.archiveDir)
    const limit = pLimit(concurrency)
    let removedTempFiles = 0
    await Promise.all(entries.map((entry) => limit(async () => {
      if (!entry.isFile()) return
      const path = join(this.archiveDir, entry.name)
      if (TEMP_FILE.test(entry.name)) {
        if (await this.fs.unlink(path).then(() => true, () => false)) removedTempFiles++
        return
      }
      const match = ARCHIVED_FILE.exec(entry.name)
      if (match === null) return
      try {
        const { size } = await this.fs.lstat(path)
        this.archiveIndex.add(match[1] as string, { name: entry.name, bytes: size, stamp: Number(match[2] ?? 0) }, null)
      } catch (err) {
        // Gone since the listing: nothing to index.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StorageError(`reading ${path}`, err as NodeJS.ErrnoException)
      }
    })))
    if (removedTempFiles > 0) await fsyncDir(this.fs, this.archiveDir).catch(noop)
    return { ...this.archiveTotals() }
  }

  /**
   * Durably moves the session's file into `archive/` by rename. An earlier archive of the
   * same id is never replaced: the later one is saved as `<id>.<ms>.json`.
   */
  async archive (file: SessionFile): Promise<void> {
    const sessionId = file.session_id
    const source = this.pathFor(sessionId)
    this.assertWritable()
    const operation = `archiving session '${sessionId}'`
    let stamp = 0
    let name = `${sessionId}.json`
    try {
      await this.ensureRealDir(this.archiveDir)
      // Only ENOENT means the name is free; any other lstat error stops the move rather than risk an overwrite.
      while (await this.fs.lstat(join(this.archiveDir, name)).then(() => true, (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return false
        throw err
      })) {
        stamp = Math.max(stamp + 1, Date.now())
        name = `${sessionId}.${stamp}.json`
      }
      await this.fs.rename(source, join(this.archiveDir, name))
    } catch (err) {
      throw new StorageError(operation, err as NodeJS.ErrnoException)
    }
    // The file is in archive/ now, whatever fails next: the index says so.
    this.stored(sessionId, null)
    const size = await this.fs.lstat(join(this.archiveDir, name)).then((stat) => stat.size, () => 0)
    this.archiveIndex.add(sessionId, { name, bytes: size, stamp }, summarize(file, name))
    try {
      await fsyncDir(this.fs, this.archiveDir)
    } catch (err) {
      const error = new StorageError(operation, err as NodeJS.ErrnoException)
      error.uncertain = true
      throw error
    }
    await this.syncDir(operation, true)
  }

  archivedName (sessionId: string): string | null {
    return this.archiveIndex.newest(sessionId)?.name ?? null
  }

  archivedIds (): string[] {
    return this.archiveIndex.ids()
  }

  archiveTotals (): Readonly<ArchiveTotals> {
    return this.archiveIndex.stats()
  }

  /** The archived session, read from its file; an unreadable file is set aside and the next older one (if any) is tried. */
  async readArchived (sessionId: string): Promise<{ session: ArchivedSession | null, failures: LoadFailure[] }> {
    const failures: LoadFailure[] = []
    for (let newest = this.archiveIndex.newest(sessionId); newest !== null; newest = this.archiveIndex.newest(sessionId)) {
      const loaded = await this.loadFile(this.archiveDir, newest.name, sessionId)
      if (loaded !== null && 'reason' in loaded) failures.push(loaded)
      if (loaded !== null && 'file' in loaded) {
        this.archiveIndex.setSummary(sessionId, newest.name, summarize(loaded.file, newest.name))
        return { session: { ...loaded, name: newest.name }, failures }
      }
      this.archiveIndex.remove(sessionId, newest.name)
    }
    return { session: null, failures }
  }

  /** Every archived session's summary; files not read yet are read now, in parallel. */
  async listArchived (): Promise<{ sessions: ArchivedSummary[], failures: LoadFailure[] }> {
    // Concurrent callers share one pass over the unread files; its failures are reported once.
    const started = this.summaryFill === null
    this.summaryFill ??= this.fillSummaries().finally(() => { this.summaryFill = null })
    const failures = await this.summaryFill
    return { sessions: this.archiveIndex.summaries(), failures: started ? failures : [] }
  }

  /**
   * Brings an archived session back: the active file is written durably first, then the
   * archived file is removed. A crash in between leaves both (the active one is used), never
   * neither. Resolves with the active file's size.
   */
  async unarchive (file: SessionFile, archivedName: string): Promise<number> {
    const bytes = await this.save(file)
    const path = join(this.archiveDir, archivedName)
    const removed = await this.fs.unlink(path).then(() => true, (err: NodeJS.ErrnoException) => err.code === 'ENOENT')
    // A file that could not be removed stays as an older copy behind the active session.
    if (removed) {
      this.archiveIndex.remove(file.session_id, archivedName)
      await fsyncDir(this.fs, this.archiveDir).catch(noop)
    }
    return bytes
  }

  /** Durably deletes every archived file of the session; resolves with how many there were. */
  async removeArchived (sessionId: string): Promise<number> {
    const files = [...this.archiveIndex.files(sessionId)]
    if (files.length === 0) return 0
    this.assertWritable()
    try {
      for (const { name } of files) {
        await this.fs.unlink(join(this.archiveDir, name)).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err
        })
        this.archiveIndex.remove(sessionId, name)
      }
      await fsyncDir(this.fs, this.archiveDir)
    } catch (err) {
      throw new StorageError(`deleting archived session '${sessionId}'`, err as NodeJS.ErrnoException)
    }
    return files.length
  }

  /** The filesystem of the folder, by statfs: one syscall, cheap enough for every scrape. */
  async space (): Promise<DiskSpace> {
    const fs = await statfs(this.dir)
    const total = fs.blocks * fs.bsize
    const free = fs.bavail * fs.bsize
    return { free_bytes: free, total_bytes: total, free_ratio: total > 0 ? free / total : 0 }
  }

  async close (): Promise<void> {
    await this.lock?.release()
  }

  serialize (file: SessionFile): Promise<Buffer> {
    return serializeSessionFile(file, this.indent, Number.POSITIVE_INFINITY, this.keyring)
  }

  encryption (): EncryptionStats | null {
    if (this.keyring === null) return null
    const sealed: Record<string, number> = {}
    for (const [kid, count] of this.kidCounts) if (kid !== '' && count > 0) sealed[kid] = count
    return { active_kid: this.keyring.activeKid, sealed_sessions: sealed, plaintext_sessions: this.kidCounts.get('') ?? 0 }
  }

  /** Records the key a session is stored under now ('' plaintext, null gone from the active folder). */
  private stored (sessionId: string, kid: string | null): void {
    const before = this.kidOf.get(sessionId)
    if (before === kid) return
    if (before !== undefined) this.kidCounts.set(before, (this.kidCounts.get(before) ?? 1) - 1)
    if (kid === null) {
      this.kidOf.delete(sessionId)
      return
    }
    this.kidOf.set(sessionId, kid)
    this.kidCounts.set(kid, (this.kidCounts.get(kid) ?? 0) + 1)
  }

  private async fillSummaries (): Promise<LoadFailure[]> {
    const limit = pLimit(this.readConcurrency)
    const failures: LoadFailure[] = []
    await Promise.all(this.archiveIndex.unsummarized().map((sessionId) => limit(async () => {
      failures.push(...(await this.readArchived(sessionId)).failures)
    })))
    return failures
  }

  private async list (dir: string): Promise<Dirent[]> {
    try {
      return await this.fs.readdir(dir, { withFileTypes: true })
    } catch (err) {
      throw new StorageError(`listing storage folder ${dir}`, err as NodeJS.ErrnoException)
    }
  }

  /**
   * Reads and checks one file. A file that is readable but wrong is set aside into
   * `corrupt/` and reported; an I/O error (EMFILE, EIO, EACCES) says nothing about the file
   * and is thrown instead, leaving the file where it is.
   */
  private async loadFile (dir: string, name: string, sessionId: string): Promise<LoadedSession | LoadFailure | null> {
    try {
      const data = await readWhole(this.fs, join(dir, name))
      return { file: parseSessionFile(name, data.toString('utf8'), sessionId, this.keyring), bytes: data.length }
    } catch (err) {
      // An archived file removed by hand since it was indexed is simply gone.
      if (dir === this.archiveDir && (err as NodeJS.ErrnoException).code === 'ENOENT') return null
      // Sealed under a key we lack: never set aside, never overwritten.
      if (err instanceof KeyUnavailableError) throw err
      if (!(err instanceof CorruptSessionFileError)) throw new StorageError(`reading ${name}`, err as NodeJS.ErrnoException)
      return { name: dir === this.dir ? name : `archive/${name}`, reason: err.message, movedTo: await this.setAside(dir, name) }
    }
  }

  private tempPath (sessionId: string): string {
    return join(this.dir, `.${sessionId}.${process.pid}.${++this.tempSeq}.tmp`)
  }

  /** Moves an unreadable file into `corrupt/`, never deleting it; null if it could not be moved. */
  private async setAside (dir: string, name: string): Promise<string | null> {
    // Once another server holds the folder, even a read must move nothing.
    if (this.unwritable() !== null) return null
    try {
      await this.ensureRealDir(this.corruptDir)
      // Unique per process and call, so two set-asides of one name never overwrite each other.
      const target = join(this.corruptDir, `${name}.${Date.now()}.${process.pid}.${++this.tempSeq}`)
      await this.fs.rename(join(dir, name), target)
      await fsyncDir(this.fs, this.corruptDir)
      return target
    } catch {
      return null
    }
  }

  /** A folder's mode, following a symlink to it: the folder that is actually written to. */
  private async modeOf (dir: string): Promise<number> {
    const handle = await this.fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY)
    try {
      return (await handle.stat()).mode
    } finally {
      await handle.close()
    }
  }

  /** Creates a subfolder, refusing one that is a symlink (it could lead out of the storage folder). */
  private async ensureRealDir (dir: string): Promise<void> {
    await this.fs.ensureDir(dir, DIR_MODE)
    const stat = await this.fs.lstat(dir)
    if (!stat.isDirectory()) throw Object.assign(new Error(`${dir} is not a real folder (a symlink?); refusing to move files into it`), { code: 'ENOTDIR' })
  }

  /** `afterChange`: the folder entry was already changed, so a failure leaves the outcome uncertain. */
  private async syncDir (operation: string, afterChange = false): Promise<void> {
    try {
      await this.dirSync.run()
    } catch (err) {
      const error = new StorageError(operation, err as NodeJS.ErrnoException)
      error.uncertain = afterChange
      throw error
    }
  }
}

function batches<T> (items: T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}
