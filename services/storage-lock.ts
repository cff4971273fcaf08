import { hostname } from 'node:os'
import { join } from 'node:path'
import { TaskvaultError } from './errors.js'
import type { FsSeam } from './fs-seam.js'

export interface LockHolder {
  pid: number
  host: string
  since: string
}

export interface StorageLockOptions {
  /** How often the holder touches the lock file to show it is alive. */
  refreshMs: number
  /** A lock not touched for this long is taken over whatever host holds it. */
  staleMs: number
}

export class StorageLockedError extends TaskvaultError {
  constructor (readonly dir: string, readonly holder: LockHolder) {
    super('STORAGE_LOCKED', `storage folder ${dir} is in use by pid ${holder.pid} on host ${holder.host} since ${holder.since}; ` +
      'only one server may write to a folder at a time')
  }
}

export const LOCK_FILE = '.taskvault.lock'

/**
 * The single-writer lock of a storage folder: a file created exclusively, holding who owns
 * it, and touched every `refreshMs`. It is taken over when its holder is dead on this host
 * (or is this very pid: a restarted container), or when nobody has touched it for `staleMs`
 * (a holder on another host that died without releasing it).
 */
export class StorageLock {
  readonly path: string
  private readonly me: LockHolder
  private timer: NodeJS.Timeout | null = null

  constructor (private readonly dir: string, private readonly fs: FsSeam, private readonly options: StorageLockOptions) {
    this.path = join(dir, LOCK_FILE)
    this.me = { pid: process.pid, host: hostname(), since: new Date().toISOString() }
  }

  /** Takes the lock or throws StorageLockedError naming the holder. Returns a holder it replaced. */
  async acquire (): Promise<LockHolder | null> {
    let replaced: LockHolder | null = null
    for (let attempt = 0; attempt < 3; attempt++) {
      if (await this.tryCreate()) {
        this.startHeartbeat()
        return replaced
      }
      const { holder, ageMs } = await this.readHolder()
      // Anything at the lock's path that names no holder is not a live server's lock.
      if (holder !== null && !this.isStale(holder, ageMs)) throw new StorageLockedError(this.dir, holder)
      replaced = holder
      await this.fs.unlink(this.path).catch(ignoreMissing)
    }
    const { holder } = await this.readHolder()
    throw new StorageLockedError(this.dir, holder ?? { pid: 0, host: 'unknown', since: 'unknown' })
  }

  async release (): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    const { holder } = await this.readHolder()
    if (holder !== null && holder.pid === this.me.pid && holder.host === this.me.host && holder.since === this.me.since) {
      await this.fs.unlink(this.path).catch(ignoreMissing)
    }
  }

  /**
   * The lock is a symlink whose target is the holder as JSON: creating it is atomic and
   * exclusive (EEXIST), it is never seen half-written, and a short target lives in the inode,
   * so the lock can be taken even on a full disk (where reads and deletes must keep working).
   */
  private async tryCreate (): Promise<boolean> {
    try {
      await this.fs.symlink(JSON.stringify(this.me), this.path)
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
      throw err
    }
  }

  private async readHolder (): Promise<{ holder: LockHolder | null, ageMs: number }> {
    let ageMs: number
    let text: string
    try {
      const stat = await this.fs.lstat(this.path)
      ageMs = Date.now() - stat.mtimeMs
      if (!stat.isSymbolicLink()) return { holder: null, ageMs }
      text = await this.fs.readlink(this.path)
    } catch (err) {
      ignoreMissing(err)
      return { holder: null, ageMs: 0 }
    }
    try {
      const parsed = JSON.parse(text) as Partial<LockHolder>
      if (typeof parsed.pid === 'number' && typeof parsed.host === 'string' && typeof parsed.since === 'string') {
        return { holder: { pid: parsed.pid, host: parsed.host, since: parsed.since }, ageMs }
      }
    } catch {}
    return { holder: null, ageMs }
  }

  private isStale (holder: LockHolder, ageMs: number): boolean {
    if (ageMs > this.options.staleMs) return true
    if (holder.host !== this.me.host) return false
    return holder.pid === this.me.pid || !isAlive(holder.pid)
  }

  private startHeartbeat (): void {
    this.timer = setInterval(() => {
      const now = new Date()
      this.fs.lutimes(this.path, now, now).catch(() => {})
    }, this.options.refreshMs)
    this.timer.unref()
  }
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function ignoreMissing (err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
}
