import { readlinkSync, unlinkSync } from 'node:fs'
import { hostname } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { join } from 'node:path'
import { InvalidLockSettingsError, LockLostError, LockNotStaleError, StorageError, StorageLockedError } from '../errors.js'
import type { FsSeam } from './fs-seam.js'
import { PROCESS_STARTED_MS, pidAlive, processSlot } from '../pid.js'
import { noop } from '../noop.js'

export interface LockHolder {
  pid: number
  host: string
  since: string
  /**
   * Which process had the pid (Linux; absent from locks of earlier versions): its pid namespace's
   * number and its start (processStart), as `<namespace>.<start>`. A dead holder's pid taken
   * since by another process is told from the holder by the start. Short: a lock's target must
   * fit where a full disk still has room (tmpfs keeps up to 128 bytes in the inode).
   */
  proc?: string
}

export interface StorageLockOptions {
  /** How often the holder touches the lock file to show it is alive. */
  refreshMs: number
  /** A lock not touched for this long is taken over whatever host holds it. */
  staleMs: number
  /**
   * A file the folder always holds once taken (the store's `.taskvault` marker). A lock found
   * missing with it gone too means the folder was deleted and made again, which an inode number
   * reused at once hides from the identity check: not the lock deleted by hand.
   */
  marker?: string
}

/** Bounds of acquire's wait for a lock (or guard) of another pid namespace to go stale: past either, it throws LockNotStaleError. */
export interface LockWaitBounds {
  /** performance.now() by which the lock must be taken (a host's pluginTimeout). */
  deadline?: number
  /** Aborted when the owner gives up (its host closes): nothing may take the lock after that. */
  signal?: AbortSignal
}

/** What the heartbeat found, for the owner to log: the store knows no logger. */
export type LockEvent =
  | { type: 'recreated', path: string }
  | { type: 'replaced', error: LockLostError }
  | { type: 'lost', error: LockLostError, found: string }
  | { type: 'check-failed', path: string, err: unknown }
  | { type: 'waiting', path: string, holder: LockHolder, staleInMs: number, guard: boolean }

export const LOCK_FILE = '.taskvault.lock'

/**
 * Removes the lock of folder `dir` when this process holds it, synchronously: for a process that
 * must exit before its store could close (a signal while it starts, past the grace period), so
 * that the next start, on another host too, need not wait TASK_LOCK_STALE_MS. One process holds
 * one folder's lock at most through its store, so its pid and host name it.
 */
export function releaseHeldSync (dir: string): void {
  const path = join(dir, LOCK_FILE)
  try {
    const holder = JSON.parse(readlinkSync(path)) as Partial<LockHolder>
    // The same pid and host name may be another container's (pid 7 under tini in both): the
    // process slot (pid namespace and start) tells, where /proc gives it.
    if (holder.pid === process.pid && holder.host === hostname() && (holder.proc ?? null) === processSlot(process.pid)) unlinkSync(path)
  } catch {
    // None, not ours, or not readable: left as it is.
  }
}

/**
 * The single-writer lock of a storage folder: a file created exclusively, holding who owns
 * it, and touched every `refreshMs`. It is taken over when its holder is dead on this host and
 * pid namespace, or when nobody has touched it for `staleMs` (a holder on another host, or in
 * another container, that died without releasing it: a restarted container waits for that).
 */
export class StorageLock {
  readonly path: string
  private readonly me: LockHolder
  /** The lock's content when this process holds it. */
  private readonly mine: string
  private timer: NodeJS.Timeout | null = null
  /** The check in flight (the heartbeat's, or one a write asked for), if any: checks never overlap, and release waits for it. */
  private checking: Promise<void> | null = null
  /**
   * Until when (performance.now(), which runs on through a SIGSTOP) no other server can judge the
   * lock stale: TASK_LOCK_STALE_MS after the lock's time as last read or touched by this process.
   */
  private safeUntil = Number.NEGATIVE_INFINITY
  /** Why the last check found no folder at the path, if it did not. */
  private folderMissing: NodeJS.ErrnoException | null = null
  private released = false
  private lostTo: LockLostError | null = null
  /** The folder the lock was taken in: another one at the path (an unmounted volume) is not ours. */
  private folder: FolderIdentity | null = null

  constructor (private readonly dir: string, private readonly fs: FsSeam, private readonly options: StorageLockOptions,
    private readonly report: (event: LockEvent) => void = noop) {
    if (options.refreshMs * 2 > options.staleMs) {
      throw new InvalidLockSettingsError(options.refreshMs, options.staleMs)
    }
    this.path = join(dir, LOCK_FILE)
    const proc = processSlot(process.pid)
    this.me = { pid: process.pid, host: hostname(), since: new Date().toISOString(), ...(proc !== null && { proc }) }
    this.mine = JSON.stringify(this.me)
  }

  /** Set once the heartbeat found the lock held by someone else: from then on nothing may be written. */
  get lost (): LockLostError | null {
    return this.lostTo
  }

  /**
   * Takes the lock or throws StorageLockedError naming the holder (LockNotStaleError when a wait
   * for another pid namespace's lock runs past `bounds`). Returns a holder it replaced,
   * and why it could: `dead` (its pid is gone from this host) or `stale` (not touched for
   * TASK_LOCK_STALE_MS: its server may still be alive, paused or on another host).
   */
  async acquire (bounds: LockWaitBounds = {}): Promise<{ holder: LockHolder, why: 'dead' | 'stale' } | null> {
    let replaced: { holder: LockHolder, why: 'dead' | 'stale' } | null = null
    let guardWaited = false
    for (let attempt = 0; attempt < 20; attempt++) {
      const at = performance.now()
      if (await this.tryCreate(this.path)) {
        this.safeUntil = at + this.options.staleMs
        // The folder written to: the target when the path is a symlink (as fsyncDir's handle sees it).
        const { dev, ino } = await this.fs.stat(this.dir)
        this.folder = { dev, ino }
        this.startHeartbeat()
        return replaced
      }
      const { holder, ageMs, mtimeMs, raw } = await this.readHolder(this.path)
      // Anything at the lock's path that names no holder is not a live server's lock.
      if (holder !== null && !this.isStale(holder, ageMs)) {
        // Of this host name but another pid namespace: an earlier life of this container (killed,
        // then restarted), or another container of the same name running now. Its pid names no
        // process here, so only the lock's age can tell them apart.
        if (holder.host !== this.me.host || !this.elsewhere(holder)) throw new StorageLockedError(this.dir, holder)
        await this.awaitStale(holder, raw, mtimeMs, ageMs, bounds)
        continue
      }
      replaced = holder === null ? null : { holder, why: this.goneFromHere(holder) ? 'dead' : 'stale' }
      if (await this.removeStale(raw)) continue
      // A takeover guard is held for a moment; one of another pid namespace, left by a container
      // killed mid-takeover, goes once stale (reapGuard): waited for, not counted as a try.
      const guard = await this.foreignGuard()
      if (guard !== null) {
        if (!guardWaited) this.reportWait(`${this.path}.takeover`, guard.holder, guard.ageMs, true)
        guardWaited = true
        attempt--
        await this.pause(guard.holder, guard.mtimeMs, bounds)
      } else await sleep(25 + Math.random() * 50)
    }
    const { holder } = await this.readHolder(this.path)
    throw new StorageLockedError(this.dir, holder ?? { pid: 0, host: 'unknown', since: 'unknown' })
  }

  /**
   * Waits for the lock to go stale (its holder is gone), or to change (judged again then); one
   * touched meanwhile has a live holder, refused with StorageLockedError.
   */
  private async awaitStale (holder: LockHolder, raw: string | null, mtimeMs: number, ageMs: number, bounds: LockWaitBounds): Promise<void> {
    this.reportWait(this.path, holder, ageMs, false)
    for (;;) {
      await this.pause(holder, mtimeMs, bounds)
      const now = await this.readHolder(this.path)
      if (now.raw !== raw || now.holder === null) return
      if (now.mtimeMs > mtimeMs) throw new StorageLockedError(this.dir, holder)
      if (this.isStale(now.holder, now.ageMs)) return
    }
  }

  /** The live process holding the lock now, or null (none, or one gone or stale): read only, for a reader that must not run beside a writer. */
  async liveHolder (): Promise<LockHolder | null> {
    const { holder, ageMs } = await this.readHolder(this.path)
    return holder !== null && !this.isStale(holder, ageMs) ? holder : null
  }

  /**
   * Removes the stale lock `raw` under a second exclusive "takeover" lock, and only if it is
   * still the very lock judged stale: two servers starting at once on a stale lock can then
   * never both end up holding it. False when another server is taking over right now.
   */
  private async removeStale (raw: string | null): Promise<boolean> {
    const guard = `${this.path}.takeover`
    if (!await this.tryCreate(guard)) {
      await this.reapGuard(guard)
      return false
    }
    try {
      // Judged again under the guard: a holder that touched its lock since (it was only paused) keeps it.
      const now = await this.readHolder(this.path)
      if (now.raw === raw && (now.holder === null || this.isStale(now.holder, now.ageMs))) await this.fs.unlink(this.path).catch(ignoreMissing)
    } finally {
      await this.fs.unlink(guard).catch(ignoreMissing)
    }
    return true
  }

  /** One poll of a wait for a lock (or guard) touched at `mtimeMs` to go stale; past `bounds`, refused naming when it would. */
  private async pause (holder: LockHolder, mtimeMs: number, bounds: LockWaitBounds): Promise<void> {
    const left = (bounds.deadline ?? Number.POSITIVE_INFINITY) - performance.now()
    if (left > 0) await sleep(Math.min(this.waitPollMs, left), undefined, { signal: bounds.signal }).catch(noop)
    if (bounds.signal?.aborted === true || performance.now() >= (bounds.deadline ?? Number.POSITIVE_INFINITY)) {
      throw new LockNotStaleError(this.dir, holder, Math.max(0, Math.round(this.options.staleMs - (Date.now() - mtimeMs))))
    }
  }

  /** How often a wait for another pid namespace's lock or guard to go stale looks again. */
  private get waitPollMs (): number {
    return Math.min(1000, this.options.refreshMs / 2)
  }

  private reportWait (path: string, holder: LockHolder, ageMs: number, guard: boolean): void {
    this.report({ type: 'waiting', path, holder, staleInMs: Math.max(0, Math.round(this.options.staleMs - ageMs)), guard })
  }

  /** The takeover guard when it names this host name in another pid namespace, where its pid says nothing; else null. */
  private async foreignGuard (): Promise<{ holder: LockHolder, ageMs: number, mtimeMs: number } | null> {
    const { holder, ageMs, mtimeMs } = await this.readHolder(`${this.path}.takeover`)
    return holder !== null && holder.host === this.me.host && this.elsewhere(holder) ? { holder, ageMs, mtimeMs } : null
  }

  /**
   * Removes a takeover guard left by a server that died mid-takeover (killed at boot), judged
   * like a lock: a dead pid on this host frees it at once rather than after TASK_LOCK_STALE_MS.
   * Judged and removed under a third exclusive file, so that two servers finding the same dead
   * guard cannot remove a live server's new one between them: a guard is removed only by its
   * owner or by the one reaper. A reaper killed mid-reap leaves its file, taken away once it is
   * TASK_LOCK_STALE_MS old (until then takeovers wait: the safe side).
   */
  private async reapGuard (guard: string): Promise<void> {
    const reaper = `${guard}.reap`
    if (!await this.tryCreate(reaper)) {
      if ((await this.readHolder(reaper)).ageMs > this.options.staleMs) await this.fs.unlink(reaper).catch(ignoreMissing)
      return
    }
    try {
      const left = await this.readHolder(guard)
      if (left.missing) return
      if (left.holder === null ? left.ageMs > this.options.staleMs : this.isStale(left.holder, left.ageMs)) await this.fs.unlink(guard).catch(ignoreMissing)
    } finally {
      await this.fs.unlink(reaper).catch(ignoreMissing)
    }
  }

  /** Whether `stat` is of the folder the lock was taken in (true before the lock is taken). */
  holds (stat: FolderIdentity): boolean {
    return this.folder === null || (stat.dev === this.folder.dev && stat.ino === this.folder.ino)
  }

  /**
   * The folder at the path is not the one locked: whatever is written there is lost with it (a
   * volume unmounted from under its mount point leaves the empty folder beneath). Nothing is
   * written from now on, as when the lock is lost.
   */
  folderReplaced (): void {
    if (this.lostTo !== null || this.released) return
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    this.lostTo = new LockLostError(this.dir, null, true)
    this.emit({ type: 'replaced', error: this.lostTo })
  }

  /**
   * Before a write: null (no system call) while no other server can have judged the lock stale
   * for a while yet; otherwise the lock is checked again, and the promise rejects with
   * LockLostError if it names someone else (as the heartbeat would find), or with StorageError if
   * it cannot be confirmed. This closes the window of a server paused (SIGSTOP, a frozen VM) past
   * TASK_LOCK_STALE_MS: on resume it serves requests queued meanwhile before its heartbeat runs.
   *
   * The margin is one TASK_LOCK_REFRESH_MS: the heartbeat's touches keep the time left near
   * TASK_LOCK_STALE_MS - TASK_LOCK_REFRESH_MS (at least one refresh, since stale >= 2 x refresh),
   * so the common path never checks; and a write found safe has that long (seconds by default)
   * for its rename to land, which also absorbs a clock skew with another host of that much.
   */
  confirm (): Promise<void> | null {
    if (this.lostTo !== null) return Promise.reject(this.lostTo)
    if (this.released || this.fresh()) return null
    return this.reconfirm()
  }

  private fresh (): boolean {
    return this.safeUntil - performance.now() > this.options.refreshMs
  }

  /**
   * A check in flight may have read the lock before a pause (then it confirms nothing); a lock
   * read as ours but old is touched, then read again. Three checks settle every case.
   */
  private async reconfirm (): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.shared()
      } catch (err) {
        if (this.lostTo !== null) throw this.lostTo
        throw new StorageError('checking the storage lock', err as NodeJS.ErrnoException)
      }
      if (this.lostTo !== null) throw this.lostTo
      if (this.released || this.fresh()) return
    }
    throw new StorageError('checking the storage lock', this.folderMissing ?? Object.assign(new Error(`${this.path} could not be confirmed`), { code: 'ENOLCK' }))
  }

  /** The check in flight, or a new one: they never overlap. Rejects with the check's error. */
  private shared (): Promise<void> {
    this.checking ??= this.check().finally(() => { this.checking = null })
    return this.checking
  }

  async release (): Promise<void> {
    this.released = true
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    // A check in flight could re-create the lock after it was removed here.
    await this.checking?.catch(noop)
    const { holder } = await this.readHolder(this.path)
    if (holder !== null && holder.pid === this.me.pid && holder.host === this.me.host && holder.since === this.me.since) {
      await this.fs.unlink(this.path).catch(ignoreMissing)
    }
  }

  /**
   * The lock is a symlink whose target is the holder as JSON: creating it is atomic and
   * exclusive (EEXIST), it is never seen half-written, and a short target lives in the inode,
   * so the lock can be taken even on a full disk (where reads and deletes must keep working).
   */
  private async tryCreate (path: string): Promise<boolean> {
    try {
      await this.fs.symlink(this.mine, path)
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
      throw err
    }
  }

  private async readHolder (path: string): Promise<{ holder: LockHolder | null, ageMs: number, mtimeMs: number, raw: string | null, missing: boolean }> {
    let mtimeMs: number
    let raw: string
    try {
      const stat = await this.fs.lstat(path)
      mtimeMs = stat.mtimeMs
      if (!stat.isSymbolicLink()) return { holder: null, ageMs: Date.now() - mtimeMs, mtimeMs, raw: null, missing: false }
      raw = await this.fs.readlink(path)
    } catch (err) {
      ignoreMissing(err)
      return { holder: null, ageMs: 0, mtimeMs: 0, raw: null, missing: true }
    }
    const ageMs = Date.now() - mtimeMs
    try {
      const parsed = JSON.parse(raw) as Partial<LockHolder>
      if (typeof parsed.pid === 'number' && typeof parsed.host === 'string' && typeof parsed.since === 'string') {
        const { pid, host, since, proc } = parsed
        return { holder: { pid, host, since, ...(typeof proc === 'string' && { proc }) }, ageMs, mtimeMs, raw, missing: false }
      }
    } catch {}
    return { holder: null, ageMs, mtimeMs, raw, missing: false }
  }

  private isStale (holder: LockHolder, ageMs: number): boolean {
    return ageMs > this.options.staleMs || this.goneFromHere(holder)
  }

  /** The holder is a process of this host that is no longer running. */
  private goneFromHere (holder: LockHolder): boolean {
    // A pid of another pid namespace (another container of the same host name) names no process here.
    if (holder.host !== this.me.host || this.elsewhere(holder)) return false
    // Our own pid: a lock from an earlier life of this process slot if it predates this process
    // (a lock of earlier versions, which name no namespace); otherwise another instance in this process holds it.
    if (holder.pid === this.me.pid) return Date.parse(holder.since) < PROCESS_STARTED_MS
    if (!pidAlive(holder.pid)) return true
    // Its pid runs: the holder's own process, unless one started since took that pid over (known
    // only for a lock made in this pid namespace, whose pids name the same process slots).
    if (holder.proc === undefined || this.me.proc === undefined) return false
    const now = processSlot(holder.pid)
    return now !== null && now !== holder.proc
  }

  /** The holder's lock names a pid namespace other than this process's. */
  private elsewhere (holder: LockHolder): boolean {
    const mine = this.me.proc?.split('.')[0]
    return holder.proc !== undefined && mine !== undefined && holder.proc.split('.')[0] !== mine
  }

  /** Every `refreshMs`: checks the lock still names this process, then touches it. Checks never overlap. */
  private startHeartbeat (): void {
    this.timer = setInterval(() => {
      if (this.checking !== null) return
      this.shared().catch((err: unknown) => this.emit({ type: 'check-failed', path: this.path, err }))
    }, this.options.refreshMs)
    this.timer.unref()
  }

  /**
   * A missing lock (deleted by hand, a cleanup script) is re-created, exclusively: if another
   * server created it first, theirs is judged instead. A lock naming anyone else means another
   * server may be writing to the folder now: this one stops writing for good.
   */
  private async check (): Promise<void> {
    // A folder gone from the path is the store's to report (/ready); another one there ends the lock.
    const here = await this.fs.stat(this.dir).catch((err: NodeJS.ErrnoException) => err)
    if (this.released) return
    if (here instanceof Error) {
      this.folderMissing = here
      return
    }
    this.folderMissing = null
    if (!this.holds(here)) {
      this.folderReplaced()
      return
    }
    // Taken before the read: a read that a pause delayed confirms the lock only up to then.
    let readAt = performance.now()
    let found = await this.readHolder(this.path)
    if (this.released) return
    if (found.missing && this.options.marker !== undefined && await this.fs.lstat(join(this.dir, this.options.marker)).then(() => false, (err: NodeJS.ErrnoException) => err.code === 'ENOENT')) {
      this.folderReplaced()
      return
    }
    if (found.missing) {
      readAt = performance.now()
      if (await this.tryCreate(this.path)) {
        this.safeUntil = readAt + this.options.staleMs
        this.emit({ type: 'recreated', path: this.path })
        return
      }
      readAt = performance.now()
      found = await this.readHolder(this.path)
      // Gone again already: the next beat looks again.
      if (found.missing) return
    }
    if (found.raw === this.mine) {
      // Ours when read, and nobody could take it before it is staleMs old.
      const readSafeUntil = readAt + this.options.staleMs - Math.max(0, found.ageMs)
      this.safeUntil = Math.max(this.safeUntil, readSafeUntil)
      const touchedAt = performance.now()
      const now = new Date()
      await this.fs.lutimes(this.path, now, now)
      // The touch renews the lock only if nobody could have taken it over before the touch landed
      // (else it may have touched another server's lock: the next read tells).
      if (performance.now() < readSafeUntil) this.safeUntil = touchedAt + this.options.staleMs
      return
    }
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    this.lostTo = new LockLostError(this.dir, found.holder)
    const what = found.holder !== null
      ? `pid ${found.holder.pid} on host ${found.holder.host} since ${found.holder.since}`
      : found.raw !== null ? `a symlink to ${JSON.stringify(found.raw.slice(0, 200))}, which names no server` : 'a file that is not a taskvault lock'
    this.emit({ type: 'lost', error: this.lostTo, found: what })
  }

  /** The owner's handler must not turn a heartbeat into an unhandled rejection. */
  private emit (event: LockEvent): void {
    try {
      this.report(event)
    } catch {}
  }
}

/** A folder as the kernel names it: another folder at the same path has another device or inode. */
export interface FolderIdentity {
  dev: number
  ino: number
}

function ignoreMissing (err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
}
