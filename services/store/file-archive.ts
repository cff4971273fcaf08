import { join } from 'node:path'
import pLimit from 'p-limit'
import type { SessionFile } from '../../schemas/session.js'
import { ArchiveIndex, summarize, type ArchiveTotals, type ArchivedFile, type ArchivedSummary } from '../archive/archive-index.js'
import { KeyUnavailableError, StaleArchivedCopyError, StorageError, TaskvaultError } from '../errors.js'
import type { FolderFiles } from './folder-files.js'
import type { KidProof } from './key-checks.js'
import type { FsSeam } from './fs-seam.js'
import { ARCHIVED_FILE, TEMP_FILE, fsyncDir, readWhole, tempNames } from './session-files.js'
import { clearUpdatedAt, type ArchivedSession, type LoadFailure, type SaveOptions, type StoredCopy } from './store.js'
import { noop } from '../noop.js'

/** The coarsest step of a folder's times among the file systems a storage folder may be on (FAT's). */
const MTIME_GRANULARITY_MS = 2_000

/** What the archive needs from the active half of the file store. */
export interface ActiveFolder {
  pathFor(sessionId: string): string
  assertWritable(): void
  /** Rejects (LockLostError) when the lock, read again if it was not confirmed lately, names another server, or another folder is at the path. */
  confirmHeld(): Promise<void>
  save(file: SessionFile, options?: SaveOptions): Promise<number>
  /** The session's active file was renamed into the archive. */
  movedOut(sessionId: string): void
  /** Makes a change to the active folder's entries durable; a failure leaves the change uncertain. */
  syncChanged(operation: string): Promise<void>
  /**
   * Rejects (StorageError, LockLostError) when the storage folder is gone from its path, or
   * another folder is there: a file found missing then says nothing of the file.
   */
  present(): Promise<void>
}

export interface FileArchiveOptions {
  fs: FsSeam
  /** `archive/` inside the storage folder. */
  dir: string
  files: FolderFiles
  /** Whether the folder tells no upper from lower case (found at open): a name found there may be another's. */
  caseless: () => boolean
  active: ActiveFolder
}

/**
 * The file store's archive half: `archive/`, indexed in memory by names and sizes and read on
 * demand. A session archived twice keeps both files (`<id>.json`, then `<id>.<ms>.json`).
 */
export class FileArchive {
  readonly dir: string
  private readonly fs: FsSeam
  private readonly files: FolderFiles
  private readonly active: ActiveFolder
  private readonly caseless: () => boolean
  private readonly index = new ArchiveIndex()
  private summaryFill: Promise<LoadFailure[]> | null = null
  /** Archived files the keyring cannot open (key missing or wrong): left in place, out of lists, reported once. */
  private readonly unopened = new Set<string>()
  private readConcurrency = 32
  private readonly tempName = tempNames()
  /** The copy an archive renamed into `archive/` before failing with its outcome unknown, by session (see undoArchive). */
  private readonly doubtful = new Map<string, string>()
  /** archive/'s device, inode, mtime and ctime when a listing last matched the index (forgetRemoved), else null. */
  private listedVersion: string | null = null

  constructor (options: FileArchiveOptions) {
    this.dir = options.dir
    this.fs = options.fs
    this.files = options.files
    this.active = options.active
    this.caseless = options.caseless
  }

  /**
   * Indexes `archive/` from its listing and file sizes only: archived files are read when a
   * list, a read or retention first needs them. Leftover temp files are removed.
   */
  async open ({ concurrency }: { concurrency: number }): Promise<ArchiveTotals> {
    this.index.clear()
    this.readConcurrency = concurrency
    // A missing archive/ is empty; one that is not a real folder is never read (archiving refuses it too).
    const stat = await this.fs.lstat(this.dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null
      throw new StorageError(`reading ${this.dir}`, err)
    })
    if (stat === null || !stat.isDirectory()) return { ...this.totals() }
    const entries = await this.files.list(this.dir)
    const limit = pLimit(concurrency)
    let removedTempFiles = 0
    await Promise.all(entries.map((entry) => limit(async () => {
      if (!entry.isFile()) return
      const path = join(this.dir, entry.name)
      if (TEMP_FILE.test(entry.name)) {
        if (await this.fs.unlink(path).then(() => true, () => false)) removedTempFiles++
        return
      }
      const match = ARCHIVED_FILE.exec(entry.name)
      if (match === null) return
      try {
        const { size } = await this.fs.lstat(path)
        this.index.add(match[1] as string, { name: entry.name, bytes: size, stamp: Number(match[2] ?? 0) }, null)
      } catch (err) {
        // Gone since the listing: nothing to index.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StorageError(`reading ${path}`, err as NodeJS.ErrnoException)
      }
    })))
    if (removedTempFiles > 0) await fsyncDir(this.fs, this.dir).catch(noop)
    return { ...this.totals() }
  }

  /**
   * What the archived files say of the key under `kid` (KidProof): read one by one until one
   * under it opens. Asked only at a restore, of a kid no active file proves.
   */
  async proof (kid: string): Promise<KidProof> {
    const stat = await this.fs.lstat(this.dir).catch((err: NodeJS.ErrnoException) => err.code === 'ENOENT' ? null : err)
    if (stat === null) return 'none'
    if (stat instanceof Error || !stat.isDirectory()) return 'unknown'
    const entries = await this.files.list(this.dir).catch(() => null)
    if (entries === null) return 'unknown'
    const said = new Set<KidProof>()
    for (const entry of entries) {
      const match = ARCHIVED_FILE.exec(entry.name)
      if (!entry.isFile() || match === null) continue
      const one = await this.files.sealedUnder(this.dir, entry.name, match[1] as string, kid)
      if (one === 'opened') return one
      said.add(one)
    }
    // Files under the kid, none opening, are the key's fault more likely than all damaged: that
    // stops a restore whatever else could not be read. Unread files alone allow no judgement.
    return said.has('unopened') ? 'unopened' : said.has('unknown') ? 'unknown' : 'none'
  }

  /**
   * Durably moves the session's file into `archive/` by rename. An earlier archive of the
   * same id is never replaced: the later one is saved as `<id>.<ms>.json`, stamped after every
   * copy of the id already there.
   */
  async archive (file: SessionFile, options?: SaveOptions): Promise<void> {
    const sessionId = file.session_id
    const source = this.active.pathFor(sessionId)
    this.active.assertWritable()
    const operation = `archiving session '${sessionId}'`
    // After every copy already there (a leftover of a crashed bring-back, a restored backup's):
    // the newest copy is the session, so this one must sort last whatever the clock says.
    const newest = this.index.newest(sessionId)
    let stamp = newest === null ? 0 : Math.max(newest.stamp + 1, Date.now())
    let name: string
    try {
      await this.files.ensureRealDir(this.dir)
      for (;;) {
        // A copy named by hand past what a stamp can be counted to (2^53) has no name after it.
        if (!Number.isSafeInteger(stamp)) throw new Error(`archive/ holds ${newest?.name ?? `copies of '${sessionId}'`}, stamped past the last stamp taskvault can name a later copy by; rename or remove it`)
        name = stamp === 0 ? `${sessionId}.json` : `${sessionId}.${stamp}.json`
        // Only ENOENT means the name is free; any other lstat error stops the move rather than risk an overwrite.
        const taken = await this.fs.lstat(join(this.dir, name)).catch((err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return null
          throw err
        })
        if (taken === null) break
        // A copy put there by hand since the index was made (the seed's manual archiving, while
        // the server runs): indexed as the older copy it is, so a delete removes it too. Only
        // under its very name: in a folder that ignores case, `Notes.json` answers for `notes.json`.
        if (taken.isFile() && !this.index.files(sessionId).some((file) => file.name === name) && (!this.caseless() || (await this.fs.readdir(this.dir)).includes(name))) {
          this.index.add(sessionId, { name, bytes: taken.size, stamp }, null)
        }
        stamp = Math.max(stamp + 1, Date.now())
      }
    } catch (err) {
      throw new StorageError(operation, err as NodeJS.ErrnoException)
    }
    await this.active.confirmHeld()
    try {
      await this.fs.rename(source, join(this.dir, name)).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err
        // The active file is gone from under the server (moved into archive/ or deleted by hand):
        // a session is archived only once saved as it is in memory, so that is written again, and moved.
        await this.active.present()
        await this.active.save(file, options)
        await this.fs.rename(source, join(this.dir, name))
      })
    } catch (err) {
      if (err instanceof TaskvaultError) throw err
      throw new StorageError(operation, err as NodeJS.ErrnoException)
    }
    // The file is in archive/ now, whatever fails next: the index says so.
    this.doubtful.set(sessionId, name)
    this.active.movedOut(sessionId)
    const size = await this.fs.lstat(join(this.dir, name)).then((stat) => stat.size, () => 0)
    this.index.add(sessionId, { name, bytes: size, stamp }, summarize(file, name))
    try {
      await fsyncDir(this.fs, this.dir)
    } catch (err) {
      const error = new StorageError(operation, err as NodeJS.ErrnoException)
      error.uncertain = true
      throw error
    }
    await this.active.syncChanged(operation)
    this.doubtful.delete(sessionId)
  }

  /**
   * After an archive that failed with its outcome unknown: the active file is written durably,
   * then the copy that archive renamed is removed, durably too (else this fails, to be called
   * again). A crash in between leaves both, never neither. A plain save when no archive is in doubt.
   */
  async undoArchive (file: SessionFile, options?: SaveOptions): Promise<number> {
    const sessionId = file.session_id
    const bytes = await this.active.save(file, options)
    const name = this.doubtful.get(sessionId)
    if (name === undefined) return bytes
    try {
      await this.fs.unlink(join(this.dir, name)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err
      })
      this.index.remove(sessionId, name)
      await fsyncDir(this.fs, this.dir)
    } catch (err) {
      throw new StorageError(`putting back session '${sessionId}' after a failed archive`, err as NodeJS.ErrnoException)
    }
    this.doubtful.delete(sessionId)
    return bytes
  }

  newestEntry (sessionId: string): ArchivedFile | null {
    return this.index.newest(sessionId)
  }

  newestName (sessionId: string): string | null {
    return this.index.newest(sessionId)?.name ?? null
  }

  summary (sessionId: string): ArchivedSummary | null {
    return this.index.summary(sessionId)
  }

  ids (): string[] {
    return this.index.ids()
  }

  totals (): Readonly<ArchiveTotals> {
    return this.index.stats()
  }

  /** The archived session, read from its file; an unreadable file is set aside and the next older one (if any) is tried. */
  async read (sessionId: string): Promise<{ session: ArchivedSession | null, failures: LoadFailure[] }> {
    const failures: LoadFailure[] = []
    for (;;) {
      const newest = this.index.newest(sessionId)
      if (newest === null) break
      // An archived file removed by hand since it was indexed is simply gone. Judged by the
      // entry: a name removed meanwhile and used by a later copy is that copy's.
      const loaded = await this.files.load(this.dir, newest.name, sessionId, `archive/${newest.name}`, true, () => this.index.newest(sessionId) === newest)
      if (loaded !== null && 'reason' in loaded) failures.push(loaded)
      if (loaded !== null && 'file' in loaded) {
        // By the entry, not its name: the file may have been removed and archived again meanwhile.
        this.index.setSummaryOf(sessionId, newest, summarize(loaded.file, newest.name))
        return { session: { ...loaded, name: newest.name, entry: newest }, failures }
      }
      // Missing with the whole folder (a volume gone for a while): kept, to be read once it is back.
      if (loaded === null) await this.active.present()
      this.index.forget(sessionId, newest)
    }
    return { session: null, failures }
  }

  /** The newest archived file of the session, as it is on disk; null when none is (left). */
  async readStored (sessionId: string, name?: string): Promise<StoredCopy | null> {
    const copy = name ?? this.index.newest(sessionId)?.name
    // Only a name the index holds for this session: never a path made from a caller's string.
    if (copy === undefined || !this.index.files(sessionId).some((file) => file.name === copy)) return null
    try {
      const data = await readWhole(this.fs, join(this.dir, copy))
      return { name: copy, data, updatedAt: clearUpdatedAt(data.toString('utf8')) }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new StorageError(`reading archive/${copy}`, err as NodeJS.ErrnoException)
      await this.active.present()
      return null
    }
  }

  /**
   * Drops from the index the files no longer in `archive/` (old archives deleted by hand, as the
   * seed's maintenance advice does while the server runs), so lists, /stats and /progress stop
   * showing them.
   */
  private async forgetRemoved (): Promise<void> {
    const failed = (err: NodeJS.ErrnoException): never => { throw new StorageError(`listing ${this.dir}`, err) }
    const stat = await this.fs.lstat(this.dir).catch((err: NodeJS.ErrnoException) => err.code === 'ENOENT' ? null : failed(err))
    // Unchanged since a listing that matched the index: nothing was removed (a listing of many
    // files costs more than the list it precedes). Stat first: a removal during the listing changes
    // it again. The same folder, by its inode, and its change time too: a tool may set the mtime
    // back (`touch -d`, `rsync -a` into a copy swapped in), which moves the ctime or the inode.
    const version = stat === null ? null : `${stat.dev}:${stat.ino}:${stat.mtimeMs}:${stat.ctimeMs}`
    if (version !== null && version === this.listedVersion) return
    const indexed = this.index.ids().flatMap((sessionId) => this.index.files(sessionId).map((file) => ({ sessionId, file })))
    const listed = stat === null ? [] : await this.fs.readdir(this.dir).catch((err: NodeJS.ErrnoException) => err.code === 'ENOENT' ? [] : failed(err))
    // A time within the coarsest granularity of a folder's times (2 s on FAT) may not move for
    // a removal right after: such a folder is listed again next time.
    const settled = stat !== null && Date.now() - Math.max(stat.mtimeMs, stat.ctimeMs) > MTIME_GRANULARITY_MS ? version : null
    this.listedVersion = null
    const names = new Set(listed)
    // Only entries indexed before the listing began: one archived meanwhile may be missing from it.
    // Judged by the exact names listed, not by a lookup, which a caseless folder answers with another case's file.
    const missing = indexed.filter(({ file }) => !names.has(file.name))
    if (missing.length > 0) {
      // The whole folder gone (a volume away for a while) says nothing of its files: kept.
      await this.active.present()
      // Confirmed after: a copy renamed away during the listing may be back (a delete undone,
      // whose put-back re-adds only entries no longer indexed). By name where a lookup is exact;
      // by a second listing where the folder ignores case.
      const relisted = this.caseless() ? new Set(await this.fs.readdir(this.dir).catch((err: NodeJS.ErrnoException) => failed(err))) : null
      const limit = pLimit(this.readConcurrency)
      await Promise.all(missing.map(({ sessionId, file }) => limit(async () => {
        const gone = relisted !== null ? !relisted.has(file.name) : await this.fs.lstat(join(this.dir, file.name)).then(() => false, (err: NodeJS.ErrnoException) => err.code === 'ENOENT')
        if (gone) this.index.forget(sessionId, file)
      })))
    }
    this.listedVersion = settled
  }

  /** Every archived session's summary; files not read yet are read now, in parallel. Files removed by hand since are forgotten first. */
  async list (): Promise<{ sessions: readonly ArchivedSummary[], failures: LoadFailure[] }> {
    // Concurrent callers share one pass over the unread files; its failures are reported once.
    const started = this.summaryFill === null
    this.summaryFill ??= this.fillSummaries().finally(() => { this.summaryFill = null })
    const failures = await this.summaryFill
    return { sessions: this.index.summaries(), failures: started ? failures : [] }
  }

  /**
   * Unarchives a session: the active file is written durably first, then the archived file is
   * removed. A crash in between leaves both (the active one is used), never neither. Resolves
   * with the active file's size.
   */
  async unarchive (file: SessionFile, archivedName: string, options?: SaveOptions): Promise<number> {
    const bytes = await this.active.save(file, options)
    const path = join(this.dir, archivedName)
    const removed = await this.fs.unlink(path).then(() => true, (err: NodeJS.ErrnoException) => err.code === 'ENOENT')
    // A file that could not be removed stays as an older copy behind the active session.
    if (removed) {
      this.index.remove(file.session_id, archivedName)
      await fsyncDir(this.fs, this.dir).catch(noop)
    }
    return bytes
  }

  /**
   * Durably deletes every archived file of the session; resolves with how many there were. The
   * copies are first renamed to temp names (which a restore removes) and the folder synced: only
   * then are they gone for good. A failure before that puts back the names it changed, so a
   * refused delete leaves the session archived, on disk and in the index. A folder with no room
   * for a new name (a full disk) has the copies unlinked in place instead (unlinkInPlace).
   */
  async remove (sessionId: string, upTo?: string): Promise<number> {
    // One writer per folder: the index holds every copy, so the newest is known here.
    if (upTo !== undefined && this.index.newest(sessionId)?.name !== upTo) throw new StaleArchivedCopyError(sessionId)
    const files = [...this.index.files(sessionId)]
    if (files.length === 0) {
      this.doubtful.delete(sessionId)
      return 0
    }
    this.active.assertWritable()
    await this.active.confirmHeld()
    // A copy sealed under a key this process lacks, or that does not open under the one it has,
    // stays (503), as retention leaves it: a lost or mistyped key must not destroy data.
    for (const { name } of files) {
      const refusal = await this.files.keyRefusal(this.dir, name, sessionId, `archive/${name}`)
      if (refusal !== null) throw refusal
    }
    const renamed: Array<{ name: string, temp: string }> = []
    let noRoom = false
    try {
      for (const { name } of files) {
        const temp = join(this.dir, this.tempName(sessionId))
        const moved = await this.fs.rename(join(this.dir, name), temp).then(() => true, (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return false
          noRoom = err.code === 'ENOSPC' || err.code === 'EDQUOT'
          throw err
        })
        if (moved) renamed.push({ name, temp })
      }
      await fsyncDir(this.fs, this.dir)
    } catch (err) {
      if (noRoom) return this.unlinkInPlace(sessionId, files, renamed, upTo)
      // Put back: the names the folder had (a crash meanwhile leaves either name, and a temp name
      // only as a delete that happened).
      for (const { name, temp } of renamed.reverse()) await this.fs.rename(temp, join(this.dir, name)).catch(noop)
      await fsyncDir(this.fs, this.dir).catch(noop)
      // A read meanwhile found no file under the old name and dropped it from the index: back in.
      for (const file of files) {
        if (!this.index.files(sessionId).some((indexed) => indexed.name === file.name)) this.index.add(sessionId, file, null)
      }
      throw new StorageError(`deleting archived session '${sessionId}'`, err as NodeJS.ErrnoException)
    }
    for (const { name } of files) this.index.remove(sessionId, name)
    if (upTo === undefined) this.doubtful.delete(sessionId)
    // Durably gone already; a temp file left here is removed at the next start.
    for (const { temp } of renamed) await this.fs.unlink(temp).catch(noop)
    return files.length
  }

  /**
   * `remove` on a folder with no room for a new name: the copies renamed already and the rest
   * are unlinked where they are, which frees room, as a delete on a full disk must (retention
   * too). Nothing can be put back then, so a failure past the first unlink leaves the outcome
   * uncertain; the index drops the copies no longer under their names either way.
   */
  private async unlinkInPlace (sessionId: string, files: readonly ArchivedFile[], renamed: ReadonlyArray<{ name: string, temp: string }>, upTo?: string): Promise<number> {
    const operation = `deleting archived session '${sessionId}'`
    const gone = (err: NodeJS.ErrnoException): void => {
      if (err.code !== 'ENOENT') throw err
    }
    const moved = new Set(renamed.map(({ name }) => name))
    // A renamed copy is deleted already (a restore removes temp names), so the folder has changed.
    let changed = renamed.length > 0
    try {
      for (const { temp } of renamed) await this.fs.unlink(temp).catch(gone)
      for (const { name } of files) {
        if (moved.has(name)) continue
        await this.fs.unlink(join(this.dir, name)).catch(gone)
        changed = true
      }
      await fsyncDir(this.fs, this.dir)
    } catch (err) {
      for (const { name } of files) {
        const there = moved.has(name) ? false : await this.fs.lstat(join(this.dir, name)).then(() => true, () => false)
        if (!there) this.index.remove(sessionId, name)
      }
      const error = new StorageError(operation, err as NodeJS.ErrnoException)
      error.uncertain = changed
      throw error
    }
    for (const { name } of files) this.index.remove(sessionId, name)
    if (upTo === undefined) this.doubtful.delete(sessionId)
    return files.length
  }

  private async fillSummaries (): Promise<LoadFailure[]> {
    await this.forgetRemoved()
    const limit = pLimit(this.readConcurrency)
    const failures: LoadFailure[] = []
    const unread = this.index.unsummarized().filter((sessionId) => !this.unopened.has(this.index.newest(sessionId)?.name ?? ''))
    await Promise.all(unread.map((sessionId) => limit(async () => {
      const name = this.index.newest(sessionId)?.name ?? ''
      try {
        failures.push(...(await this.read(sessionId)).failures)
      } catch (err) {
        // A file this keyring cannot open stays, unlisted, and is reported once: one such file
        // must not fail every list and retention pass over the rest.
        if (!(err instanceof KeyUnavailableError)) throw err
        this.unopened.add(name)
        failures.push({ name: `archive/${name}`, reason: err.message, movedTo: null, kid: err.kid })
      }
    })))
    return failures
  }
}
