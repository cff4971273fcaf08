import { constants, type Dirent } from 'node:fs'
import { join } from 'node:path'
import { CorruptSessionFileError, KeyUnavailableError, SealNotOpenedError, StorageError } from '../errors.js'
import type { FsSeam } from './fs-seam.js'
import type { KidProof } from './key-checks.js'
import type { Keyring } from './keyring.js'
import { DIR_MODE, fsyncDir, parseSessionFile, readSessionDocument, readWhole, sessionText } from './session-files.js'
import { MAX_SESSION_FILE_BYTES, SEALED_HEAD_BYTES, sealedHead } from './read-batch.js'
import type { LoadFailure, LoadedSession } from './store.js'
import { noop } from '../noop.js'

export interface FolderFilesOptions {
  fs: FsSeam
  /** The storage folder; `corrupt/` is inside it. */
  dir: string
  keyring: Keyring | null
  /** True once nothing may be moved any more (another server holds the folder). */
  unwritable: () => boolean
  /** True when a file under this kid has opened with its key: one that does not open is damaged, not the key wrong. */
  keyProven?: (kid: string) => boolean
}

/**
 * What both halves of the file store do to the files of a folder (the active one or
 * `archive/`): list it, read and check one session file, set an unreadable one aside.
 */
export class FolderFiles {
  readonly corruptDir: string
  private seq = 0

  constructor (private readonly options: FolderFilesOptions) {
    this.corruptDir = join(options.dir, 'corrupt')
  }

  async list (dir: string): Promise<Dirent[]> {
    try {
      return await this.options.fs.readdir(dir, { withFileTypes: true })
    } catch (err) {
      throw new StorageError(`listing storage folder ${dir}`, err as NodeJS.ErrnoException)
    }
  }

  /**
   * Whether the file is sealed under `kid` and opens, is sealed under it and does not, or is
   * not under it (KidProof); 'unknown' when it could not be read. Only a file under `kid` is
   * opened; nothing else is done with it.
   */
  async sealedUnder (dir: string, name: string, sessionId: string, kid: string): Promise<KidProof> {
    let text: string
    try {
      text = (await readWhole(this.options.fs, join(dir, name))).toString('utf8')
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'none' : 'unknown'
    }
    try {
      if ((JSON.parse(text) as { sealed?: { kid?: unknown } } | null)?.sealed?.kid !== kid) return 'none'
      readSessionDocument(name, text, sessionId, this.options.keyring)
      return 'opened'
    } catch (err) {
      return err instanceof SealNotOpenedError && err.kid === kid ? 'unopened' : 'none'
    }
  }

  /**
   * Why a delete must leave this file where it is, or null: it is sealed under a key this process
   * lacks, or one that does not open it while nothing proved that key right (a mistyped key; under
   * a proven key such a box is damage, and goes). Only a file whose head names a box is read whole.
   * A file gone is null; one that cannot be read is a StorageError: unknown, so not deleted.
   */
  async keyRefusal (dir: string, name: string, sessionId: string, shownAs: string): Promise<KeyUnavailableError | null> {
    const path = join(dir, name)
    let text: string
    try {
      const handle = await this.options.fs.open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
      let head: Buffer
      try {
        const { buffer, bytesRead } = await handle.read(Buffer.alloc(SEALED_HEAD_BYTES), 0, SEALED_HEAD_BYTES, 0)
        head = buffer.subarray(0, bytesRead)
      } finally {
        await handle.close()
      }
      if (!sealedHead(head)) return null
      text = (await readWhole(this.options.fs, path, MAX_SESSION_FILE_BYTES)).toString('utf8')
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // Gone, or too large (or not a regular file) to be a session at all: nothing a key opens.
      if (code === 'ENOENT' || code === 'ELOOP' || code === 'ENOTREG' || err instanceof CorruptSessionFileError) return null
      throw new StorageError(`reading ${shownAs}`, err as NodeJS.ErrnoException)
    }
    let kid: unknown
    try {
      kid = (JSON.parse(text) as { sealed?: { kid?: unknown } } | null)?.sealed?.kid
    } catch {
      return null
    }
    if (typeof kid !== 'string') return null
    if (this.options.keyring?.kids.includes(kid) !== true) {
      return new KeyUnavailableError(kid, `${shownAs} is sealed under key '${kid}', which TASK_ENCRYPTION_KEYS does not hold; it was left in place, as a lost key must not destroy data. Add the key back to delete it`)
    }
    if (this.options.keyProven?.(kid) === true) return null
    try {
      readSessionDocument(name, text, sessionId, this.options.keyring)
      return null
    } catch (err) {
      if (!(err instanceof SealNotOpenedError)) return null
      return new KeyUnavailableError(kid, `${shownAs} does not open under key '${kid}'; it was left in place, as a mistyped key must not destroy data. Put the right key under '${kid}' to delete it`)
    }
  }

  /**
   * Reads and checks one file. A file that is readable but wrong is set aside into `corrupt/`
   * and reported as `shownAs`; a sealed one this keyring cannot open throws KeyUnavailableError
   * and stays where it is; an I/O error (EMFILE, EIO, EACCES) says nothing about the file
   * and is thrown instead, leaving the file where it is. With `missingOk`, a file gone since
   * it was listed gives null. `current` says whether the name still holds the copy that was read
   * (an archived name comes back for a later copy): a file that no longer does is not set aside,
   * and gives null as one gone.
   */
  async load (dir: string, name: string, sessionId: string, shownAs: string, missingOk: boolean, current?: () => boolean): Promise<LoadedSession | LoadFailure | null> {
    try {
      const data = await readWhole(this.options.fs, join(dir, name), MAX_SESSION_FILE_BYTES)
      return { file: parseSessionFile(name, sessionText(name, data), sessionId, this.options.keyring), bytes: data.length }
    } catch (err) {
      if (missingOk && (err as NodeJS.ErrnoException).code === 'ENOENT') return null
      // Sealed under a key we lack: never set aside, never overwritten.
      if (err instanceof KeyUnavailableError) throw err
      // One file that does not open cannot tell a changed file from a wrong key under its kid:
      // unless a file under that kid opened at the restore, it is left in place like a file whose
      // key is missing (the restore and validate, which see every file of the kid, judge the rest).
      if (err instanceof SealNotOpenedError && this.options.keyProven?.(err.kid) !== true) throw err.keySuspected(shownAs)
      if (!(err instanceof CorruptSessionFileError)) throw new StorageError(`reading ${name}`, err as NodeJS.ErrnoException)
      if (current?.() === false) return null
      return { name: shownAs, reason: err.message, movedTo: await this.setAside(dir, name, current) }
    }
  }

  /**
   * Moves an unreadable file into `corrupt/`, never deleting it; null if it could not be moved,
   * or if `current` says the name no longer holds the file found unreadable.
   */
  async setAside (dir: string, name: string, current?: () => boolean): Promise<string | null> {
    // Once another server holds the folder, even a read must move nothing.
    if (this.options.unwritable()) return null
    try {
      await this.ensureRealDir(this.corruptDir)
      if (current?.() === false) return null
      // Unique per process and call, so two set-asides of one name never overwrite each other.
      const target = join(this.corruptDir, `${name}.${Date.now()}.${process.pid}.${++this.seq}`)
      await this.options.fs.rename(join(dir, name), target)
      // Durable on both sides: the file's new entry, the old one gone (`archive/` read on demand
      // has no later fsync of its own), and `corrupt/` itself when this made it. Moved already,
      // the file is reported where it is even if one of these fails.
      await fsyncDir(this.options.fs, this.corruptDir).catch(noop)
      await fsyncDir(this.options.fs, dir).catch(noop)
      if (dir !== this.options.dir) await fsyncDir(this.options.fs, this.options.dir).catch(noop)
      return target
    } catch {
      return null
    }
  }

  /**
   * Creates a subfolder of the storage folder, refusing one that is a symlink (it could lead out
   * of the storage folder). Never its parent: a storage folder gone from under the server (a
   * volume unmounted) is not made anew on what lies beneath, which would look like the folder
   * replaced for good; the write fails, and works again once the folder is back.
   */
  async ensureRealDir (dir: string): Promise<void> {
    await this.options.fs.mkdir(dir, { mode: DIR_MODE }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err
    })
    const stat = await this.options.fs.lstat(dir)
    if (!stat.isDirectory()) throw Object.assign(new Error(`${dir} is not a real folder (a symlink?); refusing to move files into it`), { code: 'ENOTDIR' })
  }
}
