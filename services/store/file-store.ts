import { EventEmitter } from 'node:events'
import { constants, statSync } from 'node:fs'
import { statfs } from 'node:fs/promises'
import { basename, dirname, join, resolve, sep } from 'node:path'
import pLimit, { type LimitFunction } from 'p-limit'
import { SETTING_DEFAULTS } from '../../schemas/options.js'
import { SessionFile, SESSION_ID } from '../../schemas/session.js'
import type { ArchiveTotals, ArchivedSummary } from '../archive/archive-index.js'
import { FileArchive } from './file-archive.js'
import { FolderFiles } from './folder-files.js'
import { checkedKids, provenKeyChecks, wrongKeyError } from './key-checks.js'
import { CoalescedRun } from './coalesce.js'
import type { DiskSpace } from './disk-space.js'
import { CorruptSessionFileError, ForeignFolderError, InvalidSessionIdError, KeyUnavailableError, LockLostError, SessionIdCaseConflictError, ShuttingDownError, StorageError, TaskvaultError, UnreadableFileInPlaceError } from '../errors.js'
import { missingFolders, nodeFs, type FsSeam } from './fs-seam.js'
import { kidRecord, type Keyring } from './keyring.js'
import { ReaderPool } from './reader-pool.js'
import { tooLargeReason } from './read-batch.js'
import { assertSavable, reportedSave, sessionBound } from './save-rules.js'
import { DIR_MODE, FILE_MODE, SESSION_FILE, TEMP_FILE, FolderReplacedError, fsyncDir, readSessionDocument, serializeSessionFile, sessionText, tempNames, writeAndRename } from './session-files.js'
import { MARKER_FILE, firstForeignFile, nestedStorageFolder, readMarker, writeMarker } from './storage-folder.js'
import { StorageLock, type LockHolder, type LockWaitBounds, type StorageLockOptions } from './storage-lock.js'
import type { ArchivedSession, EncryptionStats, LoadFailure, LoadOptions, LoadResult, LoadedSession, SaveOptions, SessionStore, SessionStoreEvents, StoredCopy } from './store.js'
import { noop } from '../noop.js'

/** Files per batch a reader thread reads at restore: big enough to amortise a message, small enough to keep memory low. */
const RESTORE_BATCH_FILES = 128
/**
 * Folders of this many batches or fewer are read on the main thread alone (at the default
 * concurrency): threads would take a core, and the disk, to start (30 ms warm, hundreds of ms on
 * a cold cache) and save less than that. Measured on 2 cores: 1,000 files alone 139 ms cold and
 * 65 warm against 155 and 73 with threads; from 2,000 on, the threads win.
 */
const RESTORE_INLINE_BATCHES = 8
/**
 * Batches in flight per unit of TASK_RESTORE_CONCURRENCY: two queued at each thread (one that
 * finishes while the main thread parses starts the next at once) and two read, waiting to be
 * parsed. Bounds memory to some 4 MB per thread at the usual file size. Against two: a sealed
 * restore of 10,000 files 1.25x plaintext instead of 1.31x on 2 cores.
 */
const RESTORE_BATCHES_PER_THREAD = 4

export interface FileSessionStoreOptions {
  dir: string
  fs?: FsSeam
  /** Pretty-printed by default so operators can read and diff session files. */
  indent?: number
  /** A session whose stored form would pass this many bytes is refused (TASK_MAX_SESSION_BYTES); unbounded when omitted. */
  maxSessionBytes?: number
  /** Session files written at once (TASK_MAX_WRITES): each holds a file descriptor until its rename. */
  maxWrites?: number
  /** Seals every write and opens sealed files (TASK_ENCRYPTION_KEYS); plaintext when omitted. */
  keyring?: Keyring | null
  /** Hold the folder's single-writer lock from init to close (the server does; tools reading a copy need not). */
  lock?: StorageLockOptions
  /**
   * Write the key checks of kids the restore proved into the marker (the server does). Without
   * it the checks kept are only compared: a tool given a key at a shell never pins it.
   */
  keepKeyChecks?: boolean
}

/** What init found and did, for the caller to log. */
export interface StorageInitReport {
  /** A holder whose lock was taken over: `dead` (its pid is gone from this host) or only `stale` (it may be alive elsewhere, or paused). */
  replaced: { holder: LockHolder, why: 'dead' | 'stale' } | null
  /** `created` now (0700), `adopted` now (it had no marker; every *.json was a session file), or already `marked`. */
  folder: 'created' | 'adopted' | 'marked'
  /** The folder's permission bits when group or others may use it (left as they are: init did not create it); else null. */
  openMode: number | null
  /** The folder does not tell upper from lower case in names (macOS and Windows by default): ids differing only in case are refused. */
  caseless: boolean
}

/**
 * One JSON file per session in `dir`. Every save is atomic and durable: a unique temp file
 * in the same folder (created exclusively, 0600) is written, fsynced and renamed over the
 * target, then the folder is fsynced. Concurrent saves share folder fsyncs. Archived sessions
 * live in `dir/archive/`, unreadable files are set aside in `dir/corrupt/`.
 */
export class FileSessionStore implements SessionStore {
  readonly kind = 'file'
  readonly dir: string
  /** Observers subscribe here; the store does not know them. */
  readonly events = new EventEmitter<SessionStoreEvents>()
  private readonly fs: FsSeam
  private readonly indent: number
  private readonly maxSessionBytes: number
  private readonly keyring: Keyring | null
  /** The kid each active session is stored under ('' for plaintext), and how many per kid. */
  private readonly kidOf = new Map<string, string>()
  private readonly kidCounts = new Map<string, number>()
  /**
   * Kids under which the restore opened a file (before this process sealed anything): their key
   * is right, so an archived file under one that does not open is damaged, and is set aside.
   */
  private readonly provenKids = new Set<string>()
  /** Ids whose unreadable file could not be set aside: it stays where it is and no save replaces it. */
  private readonly leftInPlace = new Set<string>()
  /** The folder does not tell case in names: a new session's file may be another's (see claimName). */
  caseless = false
  /** New sessions being saved for the first time on a caseless folder, by lower-case id. */
  private readonly firstSaves = new Set<string>()
  /** The marker's key checks (kid → Keyring.keyCheck), and those of configured kids it has none for yet. */
  private keyChecks: Record<string, string> = {}
  private newKeyChecks: Record<string, string> = {}
  private readonly keepChecks: boolean
  private readonly dirSync: CoalescedRun
  /** Bounds the temp files open at once: saves of thousands of sessions together must not run out of file descriptors. */
  private readonly writes: LimitFunction
  private readonly lock: StorageLock | null
  private readonly files: FolderFiles
  private readonly archived: FileArchive
  private readonly tempName = tempNames()

  constructor (options: FileSessionStoreOptions) {
    this.dir = resolve(options.dir)
    this.fs = options.fs ?? nodeFs
    // As JSON.stringify reads an indent: whole spaces, at most 10 (the sealed layout is built to match it).
    this.indent = Math.min(10, Math.max(0, Math.floor(options.indent ?? 2)))
    this.maxSessionBytes = options.maxSessionBytes ?? Number.POSITIVE_INFINITY
    this.writes = pLimit(options.maxWrites ?? SETTING_DEFAULTS.TASK_MAX_WRITES)
    this.keyring = options.keyring ?? null
    this.keepChecks = options.keepKeyChecks ?? false
    this.dirSync = new CoalescedRun(() => fsyncDir(this.fs, this.dir, this.lock === null ? undefined : (stat) => (this.lock as StorageLock).holds(stat)))
    this.lock = options.lock ? new StorageLock(this.dir, this.fs, { ...options.lock, marker: MARKER_FILE }, (event) => this.events.emit('lock', event)) : null
    this.files = new FolderFiles({ fs: this.fs, dir: this.dir, keyring: this.keyring, unwritable: () => this.unwritable() !== null, keyProven: (kid) => this.provenKids.has(kid) })
    this.archived = new FileArchive({
      fs: this.fs,
      dir: join(this.dir, 'archive'),
      files: this.files,
      caseless: () => this.caseless,
      active: {
        pathFor: (sessionId) => this.pathFor(sessionId),
        assertWritable: () => this.assertWritable(),
        // As before a save's rename: the folder at the path is still the one locked, too.
        confirmHeld: async () => { await this.beforeRename() },
        save: async (file, options) => this.save(file, options),
        movedOut: (sessionId) => this.stored(sessionId, null),
        syncChanged: async (operation) => this.syncDir(operation, true),
        present: async () => {
          const problem = await this.check()
          if (problem !== null) throw problem
        }
      }
    })
  }

  get archiveDir (): string {
    return this.archived.dir
  }

  get corruptDir (): string {
    return this.files.corruptDir
  }

  /**
   * Whether the storage folder is still there (/ready): a folder deleted, or a volume gone from
   * under the server, fails every save, and the lock alone does not notice.
   */
  async check (): Promise<TaskvaultError | null> {
    try {
      // Followed: a storage folder given as a symlink is the folder it leads to.
      const stat = await this.fs.stat(this.dir)
      if (!stat.isDirectory()) throw Object.assign(new Error(`${this.dir} is not a folder`), { code: 'ENOTDIR' })
      // Another folder made at the path (a volume gone, the folder deleted and made again): what
      // would be written there is lost with it, as the heartbeat finds; /ready need not wait for it.
      if (this.lock !== null && !this.lock.holds(stat)) {
        this.lock.folderReplaced()
        return this.lock.lost ?? new LockLostError(this.dir, null, true)
      }
      return null
    } catch (err) {
      return new StorageError('checking the storage folder', err as NodeJS.ErrnoException)
    }
  }

  /** Why nothing may be written any more (the lock was lost to another writer), or null. */
  unwritable (): TaskvaultError | null {
    return this.lock?.lost ?? null
  }

  private assertWritable (): void {
    const refusal = this.unwritable()
    if (refusal !== null) throw refusal
  }

  /**
   * Just before a change reaches the folder: the lock still names this server. Null at once (no
   * system call) while it was confirmed lately; else it is read again (StorageLock.confirm), so a
   * server paused past TASK_LOCK_STALE_MS writes nothing over the server that took the folder.
   */
  private confirmHeld (): Promise<void> | null {
    return this.lock?.confirm() ?? null
  }

  /**
   * Just before a save's rename: the lock confirmed, and the folder at the path still the one
   * locked. A save into another folder there (a volume unmounted, a folder deleted and made
   * again, or a copy put in its place) is refused before it lands: left there, a restart on that
   * folder would bring the refused change back, and removing it after could remove the only copy
   * of a session a restored folder holds. The folder fsync checks again after the rename.
   */
  private beforeRename (): Promise<void> | null {
    if (this.lock !== null && this.lock.lost === null) {
      // statSync: one system call with no I/O, not a thread-pool round trip per save.
      const here = statSync(this.dir, { throwIfNoEntry: false })
      if (here !== undefined && !this.lock.holds(here)) {
        this.lock.folderReplaced()
        return Promise.reject(this.lock.lost ?? new LockLostError(this.dir, null, true))
      }
    }
    return this.confirmHeld()
  }

  /**
   * For a writer beside the store holding its lock (the CLI's seal, restore and export): called
   * just before each rename, as the store's own saves do; rejects with LockLostError once
   * another writer has the folder, or another folder is at the path.
   */
  confirmLock (): Promise<void> | null {
    return this.beforeRename()
  }

  get location (): string {
    return this.dir
  }

  /**
   * Creates the folder (0700) or checks that an existing one is taskvault's (its mode is left
   * alone), takes the single-writer lock, marks the folder, and proves it writable. `bounds`
   * limit the wait for a lock of another pid namespace; once `bounds.signal` aborts, the lock is
   * let go and init throws, so an owner that gave up is never left holding it.
   */
  async init (bounds: LockWaitBounds = {}): Promise<StorageInitReport> {
    let replaced: StorageInitReport['replaced'] = null
    let locked = false
    try {
      // Before anything is made: a folder not made yet may still be inside another's.
      const nested = await nestedStorageFolder(this.fs, this.dir)
      if (nested !== null) throw new ForeignFolderError(nested)
      const created = await missingFolders(this.dir, this.fs.lstat)
      const existed = created.length === 0
      await this.fs.ensureDir(this.dir, DIR_MODE)
      // A folder created just now is durable only once its parent's entry is: each level's.
      for (const folder of created) await fsyncDir(this.fs, dirname(folder)).catch(noop)
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
        replaced = await this.lock.acquire(bounds)
        locked = true
      }
      // Read under the lock, so no other writer changes the checks before the restore adds to them.
      // A key other than the one a kid was first given here stops the boot, sessions or not.
      this.keyChecks = marked ? (await readMarker(this.fs, this.dir))?.keyChecks ?? {} : {}
      this.newKeyChecks = this.keyring?.verifyChecks(this.keyChecks, `storage folder ${this.dir}`) ?? {}
      // Proven before any file is read: a box under such a kid that does not open is set aside.
      if (this.keyring !== null) for (const kid of checkedKids(this.keyring, this.newKeyChecks)) this.provenKids.add(kid)
      if (!existed) await this.fs.chmod(this.dir, DIR_MODE)
      if (!marked) await writeMarker(this.fs, this.dir, this.tempName('taskvault'), this.keyChecks)
      // Prove the folder is writable now rather than on the first client's request.
      const probe = join(this.dir, this.tempName('probe'))
      const handle = await this.fs.open(probe, 'wx', FILE_MODE)
      await handle.close()
      try {
        // The probe found under its name in upper case: no such file was made, so one answers to
        // both (inode numbers are no proof: some file systems give each name its own).
        this.caseless = await this.fs.lstat(join(this.dir, basename(probe).toUpperCase())).then(() => true, () => false)
      } finally {
        await this.fs.unlink(probe)
      }
      const dirMode = existed ? await this.modeOf(this.dir) : DIR_MODE
      // Taken just as the owner gave up: nobody would close the store to let the lock go.
      if (bounds.signal?.aborted === true) throw new ShuttingDownError(`opening storage folder ${this.dir} was given up (its host closed)`)
      return { replaced, folder: !existed ? 'created' : marked ? 'marked' : 'adopted', openMode: (dirMode & 0o077) !== 0 ? dirMode & 0o7777 : null, caseless: this.caseless }
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

  async save (file: SessionFile, options?: SaveOptions): Promise<number> {
    return reportedSave(this.events, async () => this.write(file, options))
  }

  private async write (file: SessionFile, options?: SaveOptions): Promise<number> {
    this.assertWritable()
    assertSavable(file)
    const target = this.pathFor(file.session_id)
    const confirming = this.confirmHeld()
    if (confirming !== null) await confirming
    if (this.leftInPlace.has(file.session_id)) await this.clearLeftInPlace(file.session_id)
    const claimed = this.caseless && !this.kidOf.has(file.session_id) ? await this.claimName(file.session_id, target) : null
    try {
      return await this.writeFile(file, target, options)
    } finally {
      if (claimed !== null) this.firstSaves.delete(claimed)
    }
  }

  /**
   * A new session's first save on a caseless folder: its name must not be another session's
   * (an active file whose id differs only in case, or such a first save under way), or the
   * rename would replace that session. Resolves to the claim to drop once the save ends.
   */
  private async claimName (sessionId: string, target: string): Promise<string> {
    const folded = sessionId.toLowerCase()
    if (this.firstSaves.has(folded)) throw new SessionIdCaseConflictError(sessionId)
    this.firstSaves.add(folded)
    const taken = await this.fs.lstat(target).then(() => true, (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return false
      this.firstSaves.delete(folded)
      throw new StorageError(`saving session '${sessionId}'`, err)
    })
    if (taken) {
      this.firstSaves.delete(folded)
      throw new SessionIdCaseConflictError(sessionId)
    }
    return folded
  }

  private async writeFile (file: SessionFile, target: string, options?: SaveOptions): Promise<number> {
    let data: Buffer | undefined
    // A session that cannot be serialized (too large) is the caller's error, not storage's: thrown as it is.
    let unserializable: unknown
    const serialize = async (): Promise<Buffer> => {
      try {
        return (data = await serializeSessionFile(file, this.indent, sessionBound(file, this.maxSessionBytes, options), this.keyring, this.maxSessionBytes))
      } catch (err) {
        unserializable = err
        throw err
      }
    }
    try {
      // Checked again before the rename: the process may have been paused since, or the folder replaced.
      await this.writes(async () => writeAndRename(this.fs, this.tempPath(file.session_id), target, serialize, undefined, () => this.beforeRename()))
    } catch (err) {
      if (err === unserializable || err instanceof LockLostError || err instanceof StorageError) throw err
      throw new StorageError(`saving session '${file.session_id}'`, err as NodeJS.ErrnoException)
    }
    // Past the rename the file holds the new form, whether or not the folder fsync holds.
    this.stored(file.session_id, this.keyring?.activeKid ?? '')
    await this.syncDir(`saving session '${file.session_id}'`, true)
    return (data as Buffer).length
  }

  /** A restore's unreadable file that could not be moved: set aside now, or gone; else the save fails. */
  private async clearLeftInPlace (sessionId: string): Promise<void> {
    const name = `${sessionId}.json`
    const gone = await this.fs.lstat(join(this.dir, name)).then(() => false, (err: NodeJS.ErrnoException) => err.code === 'ENOENT')
    if (!gone && await this.files.setAside(this.dir, name) === null) throw new UnreadableFileInPlaceError(sessionId, name)
    this.leftInPlace.delete(sessionId)
  }

  /** Moves a file the restore could not read into `corrupt/`; one that will not move is noted, and never overwritten. */
  private async setAside (name: string): Promise<string | null> {
    const movedTo = await this.files.setAside(this.dir, name)
    if (movedTo === null) this.leftInPlace.add(name.slice(0, -'.json'.length))
    return movedTo
  }

  async remove (sessionId: string): Promise<void> {
    const target = this.pathFor(sessionId)
    this.assertWritable()
    // As before a save's rename: not in another folder put at the path (a restored copy's session is not ours to delete).
    const confirming = this.beforeRename()
    if (confirming !== null) await confirming
    const operation = `deleting session '${sessionId}'`
    // Moved to a temp name first: if the folder sync fails, moving it back needs no room on a
    // full disk, so a delete answered as failed leaves the session where a restart finds it. A
    // crash meanwhile leaves the temp name, removed at the next start: a delete that happened.
    const temp = this.tempPath(sessionId)
    try {
      await this.fs.rename(target, temp)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // A folder with no room for the new name: unlinked in place, which frees room, as a delete on a full disk must.
      if (code === 'ENOSPC' || code === 'EDQUOT') return this.unlink(sessionId, operation)
      if (code !== 'ENOENT') throw new StorageError(operation, err as NodeJS.ErrnoException)
      // Gone already (a write-back after an uncertain write): that it is gone is made durable too.
      await this.syncDir(operation, true)
      return
    }
    try {
      await this.syncDir(operation, true)
    } catch (err) {
      // Back under its name whatever the failure (another folder found at the path, too: its file is not ours to take).
      if ((err instanceof StorageError || err instanceof LockLostError) && await this.fs.rename(temp, target).then(() => true, () => false)) {
        await this.syncDir(operation).catch(noop)
        // Back under its name: the delete did not happen.
        if (err instanceof StorageError) err.uncertain = false
      } else this.stored(sessionId, null)
      throw err
    }
    this.stored(sessionId, null)
    // Durably gone already; a temp file left here is removed at the next start.
    await this.fs.unlink(temp).catch(noop)
  }

  /** `remove` where a rename found no room: a failed folder sync then leaves the outcome uncertain. */
  private async unlink (sessionId: string, operation: string): Promise<void> {
    try {
      await this.fs.unlink(this.pathFor(sessionId))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StorageError(operation, err as NodeJS.ErrnoException)
    }
    this.stored(sessionId, null)
    await this.syncDir(operation, true)
  }

  async loadAll ({ concurrency, failed = noop }: LoadOptions): Promise<LoadResult> {
    const { names, removedTempFiles, ignoredFiles } = await this.listSessionFiles()
    const { sessions, failures } = await this.readSessionFiles(names, concurrency, failed)
    for (const [kid, count] of this.kidCounts) if (kid !== '' && count > 0) this.provenKids.add(kid)
    if (removedTempFiles > 0 || failures.length > 0) await this.syncDir('restoring sessions')
    await this.settleKeyChecks()
    return { sessions, failures, removedTempFiles, ignoredFiles }
  }

  /**
   * Removes the temp files that interrupted writes left in the folder and archive/, as a restore
   * does (loadAll, openArchive): for a tool holding the lock that restores nothing (seal, restore,
   * export, import), so a run after one killed mid-write leaves none behind.
   */
  async removeTempFiles (): Promise<void> {
    const { removedTempFiles } = await this.listSessionFiles()
    if (removedTempFiles > 0) await this.syncDir('removing temp files')
    await this.archived.open({ concurrency: 1 })
  }

  /** The key checks the restore proved (provenKeyChecks) go into the marker, with keepKeyChecks. */
  private async settleKeyChecks (): Promise<void> {
    if (this.keyring === null) return
    const keep = await provenKeyChecks({
      keyring: this.keyring,
      unkept: this.newKeyChecks,
      proven: (kid) => this.provenKids.has(kid),
      archivedProof: async (kid) => this.archived.proof(kid),
      what: 'files'
    })
    if (!this.keepChecks || Object.keys(keep).length === 0 || this.unwritable() !== null) return
    const checks = kidRecord([...Object.entries(this.keyChecks), ...Object.entries(keep)])
    try {
      await writeMarker(this.fs, this.dir, this.tempName('taskvault'), checks)
    } catch {
      // A full disk must not stop a boot that only reads: the checks are kept at a later one.
      return
    }
    this.keyChecks = checks
    this.newKeyChecks = {}
  }

  /** The session files of the folder, by name; temp files left by interrupted saves are removed. */
  private async listSessionFiles (): Promise<{ names: string[], removedTempFiles: number, ignoredFiles: string[] }> {
    const names: string[] = []
    const ignoredFiles: string[] = []
    let removedTempFiles = 0
    for (const entry of await this.files.list(this.dir)) {
      // Dirent types come from readdir without following links: symlinks, folders,
      // sockets and the like are never read.
      if (!entry.isFile()) continue
      if (TEMP_FILE.test(entry.name)) {
        if (await this.fs.unlink(join(this.dir, entry.name)).then(() => true, () => false)) removedTempFiles++
      } else if (SESSION_FILE.test(entry.name)) {
        names.push(entry.name)
      } else if (entry.name.endsWith('.json')) {
        // Any other name (`my notes.json`) is not a session file: never read, never set aside.
        ignoredFiles.push(entry.name)
      }
    }
    return { names, removedTempFiles, ignoredFiles }
  }

  /**
   * Reads session files in batches (readBatch: read, and sealed files opened) on reader threads
   * while this thread parses the batch before; on this thread until one has started, and alone
   * for a small folder at the default concurrency. Unreadable files are set aside; files sealed
   * under a key we lack, or a key that opens none of its files, stop the restore and stay untouched.
   */
  private async readSessionFiles (names: string[], concurrency: number, failed: (failure: LoadFailure) => void): Promise<{ sessions: LoadedSession[], failures: LoadFailure[] }> {
    const read: BatchOutcome = { sessions: [], failures: [], failed, missingKeys: new Map(), unopened: new Map() }
    const count = Math.ceil(names.length / RESTORE_BATCH_FILES)
    // A concurrency raised past the default (a network volume, where reads wait on the wire) always gets its threads.
    const alone = count <= RESTORE_INLINE_BATCHES && concurrency <= SETTING_DEFAULTS.TASK_RESTORE_CONCURRENCY
    const pool = new ReaderPool(alone ? 0 : Math.min(concurrency, count), this.keyring)
    const limit = pLimit(concurrency * RESTORE_BATCHES_PER_THREAD)
    // Once one batch fails the restore has failed: batches still queued must not start (nor set files aside).
    let broken = false
    try {
      await Promise.all(batches(names, RESTORE_BATCH_FILES).map((batch) => limit(async () => {
        // A batch past BATCH_BYTES leaves its last files to another read, in the same place in the limit.
        for (let names = batch; names.length > 0 && !broken;) {
          const result = await pool.read(this.dir, names).catch((err: Error) => {
            throw new StorageError(`reading ${this.dir}`, Object.assign(err, { code: 'EIO' }))
          })
          await this.takeBatch(result, read)
          names = result.deferred
        }
      }).catch((err: unknown) => {
        broken = true
        throw err
      })))
    } finally {
      limit.clearQueue()
      await pool.close()
    }
    await this.checkKeys(read)
    return { sessions: read.sessions, failures: read.failures }
  }

  /** Parses a batch read (on a reader thread or this one): sessions are kept, corrupt files set aside, key trouble noted for checkKeys. */
  private async takeBatch (result: BatchResult, out: BatchOutcome): Promise<void> {
    const data = Buffer.from(result.data.buffer, result.data.byteOffset, result.data.byteLength)
    for (const file of result.files) {
      // An I/O error (EMFILE, EIO, EACCES) says nothing about the file: it fails the restore
      // rather than setting a healthy file aside.
      if ('code' in file) {
        // Not a regular file, or gone since the listing (removed by hand): no session to restore.
        if (file.code === 'ENOTREG' || file.code === 'ENOENT') continue
        throw new StorageError(`reading ${file.name}`, Object.assign(new Error(file.code), { code: file.code }))
      }
      try {
        if ('tooLarge' in file) throw new CorruptSessionFileError(file.name, tooLargeReason(file.tooLarge))
        // A sealed file was opened by readBatch; what is left is a plaintext check.
        if ('sealed' in file) {
          if (file.sealed === 'key') throw new KeyUnavailableError(file.kid)
          if (file.kid !== undefined) {
            // Set aside by checkKeys, unless no file under this kid opens: then the key is wrong, not the files.
            out.unopened.set(file.kid, [...(out.unopened.get(file.kid) ?? []), { name: file.name, reason: file.reason }])
            continue
          }
          throw new CorruptSessionFileError(file.name, file.reason)
        }
        const text = sessionText(file.name, data.subarray(file.offset, file.offset + file.length))
        const parsed = readSessionDocument(file.name, text, file.name.slice(0, -'.json'.length), this.keyring)
        out.sessions.push({ file: parsed.file, bytes: file.stored ?? file.length })
        this.stored(parsed.file.session_id, file.kid ?? parsed.kid ?? '')
      } catch (err) {
        // Sealed under a key we lack: counted, left exactly where it is, and the restore stops in checkKeys.
        if (err instanceof KeyUnavailableError) {
          out.missingKeys.set(err.kid, (out.missingKeys.get(err.kid) ?? 0) + 1)
          continue
        }
        if (!(err instanceof CorruptSessionFileError)) throw err
        await this.setAsideUnread(out, file.name, err.message)
      }
    }
  }

  /** Stops the restore when keys are missing or wrong; files one right key could not open are set aside. */
  private async checkKeys (read: BatchOutcome): Promise<void> {
    if (read.missingKeys.size > 0) {
      const counts = [...read.missingKeys].map(([kid, count]) => `${count} session${count === 1 ? ' needs' : 's need'} key '${kid}'`).join(', ')
      throw new KeyUnavailableError([...read.missingKeys.keys()][0] as string, `cannot load the sessions: ${counts}, which TASK_ENCRYPTION_KEYS does not hold. Add the key back; those files were left untouched`)
    }
    for (const [kid, files] of read.unopened) {
      // Proven right by the marker's check, an active file that opened, or failing that an archived
      // one (after a rotation, the old kid may hold a few active files, one of them tampered with).
      if (!this.provenKids.has(kid) && (this.kidCounts.get(kid) ?? 0) === 0 && await this.archived.proof(kid) !== 'opened') throw wrongKeyError(kid, files.length, 'files')
      this.provenKids.add(kid)
      for (const file of files) await this.setAsideUnread(read, file.name, `${file.name}: ${file.reason}`)
    }
  }

  /** A file the restore could not read, set aside and told of at once (LoadOptions.failed). */
  private async setAsideUnread (out: BatchOutcome, name: string, reason: string): Promise<void> {
    const failure = { name, reason, movedTo: await this.setAside(name) }
    out.failures.push(failure)
    out.failed(failure)
  }

  // --- The archive half (file-archive.ts): `archive/`, indexed in memory, read on demand. ---

  openArchive (options: { concurrency: number }): Promise<ArchiveTotals> {
    return this.archived.open(options)
  }

  archive (file: SessionFile, options?: SaveOptions): Promise<void> {
    return this.archived.archive(file, options)
  }

  archivedName (sessionId: string): string | null {
    return this.archived.newestName(sessionId)
  }

  archivedEntry (sessionId: string): object | null {
    return this.archived.newestEntry(sessionId)
  }

  archivedSummary (sessionId: string): ArchivedSummary | null {
    return this.archived.summary(sessionId)
  }

  archivedIds (): string[] {
    return this.archived.ids()
  }

  archiveTotals (): Readonly<ArchiveTotals> {
    return this.archived.totals()
  }

  readArchived (sessionId: string): Promise<{ session: ArchivedSession | null, failures: LoadFailure[] }> {
    return this.archived.read(sessionId)
  }

  readArchivedStored (sessionId: string, name?: string): Promise<StoredCopy | null> {
    return this.archived.readStored(sessionId, name)
  }

  listArchived (): Promise<{ sessions: readonly ArchivedSummary[], failures: LoadFailure[] }> {
    return this.archived.list()
  }

  unarchive (file: SessionFile, archivedName: string, options?: SaveOptions): Promise<number> {
    return this.archived.unarchive(file, archivedName, options)
  }

  undoArchive (file: SessionFile, options?: SaveOptions): Promise<number> {
    return this.archived.undoArchive(file, options)
  }

  removeArchived (sessionId: string, upTo?: string): Promise<number> {
    return this.archived.remove(sessionId, upTo)
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
    const sealed = kidRecord<number>()
    // Every configured kid, 0 when nothing is under it: an operator sees when an old key can go.
    for (const kid of this.keyring.kids) sealed[kid] = 0
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

  private tempPath (sessionId: string): string {
    return join(this.dir, this.tempName(sessionId))
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

  /** `afterChange`: the folder entry was already changed, so a failure leaves the outcome uncertain. */
  private async syncDir (operation: string, afterChange = false): Promise<void> {
    try {
      await this.dirSync.run()
    } catch (err) {
      // Written into another folder at the path: not into ours, and nothing more will be.
      if (err instanceof FolderReplacedError && this.lock !== null) {
        this.lock.folderReplaced()
        throw this.lock.lost ?? new LockLostError(this.dir, null, true)
      }
      const error = new StorageError(operation, err as NodeJS.ErrnoException)
      error.uncertain = afterChange
      throw error
    }
  }
}

/** What the restore gathered from the batches read so far. */
interface BatchOutcome {
  sessions: LoadedSession[]
  failures: LoadFailure[]
  /** Told of each file set aside (LoadOptions.failed). */
  failed: (failure: LoadFailure) => void
  /** Files sealed under a kid TASK_ENCRYPTION_KEYS does not hold, by kid. */
  missingKeys: Map<string, number>
  /** Files the kid's key did not open (wrong key, or damaged files), by kid. */
  unopened: Map<string, Array<{ name: string, reason: string }>>
}

type BatchResult = Awaited<ReturnType<ReaderPool['read']>>

function batches<T> (items: T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}
