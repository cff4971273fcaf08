import fsp from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import fse from 'fs-extra'

/**
 * The file-system calls the file store makes, gathered so that tests can inject faults
 * (ENOSPC, EIO) on a real folder by wrapping one of them.
 */
export interface FsSeam {
  open: typeof fsp.open
  rename: typeof fsp.rename
  unlink: typeof fsp.unlink
  readdir: typeof fsp.readdir
  chmod: typeof fsp.chmod
  lutimes: typeof fsp.lutimes
  lstat: typeof fsp.lstat
  /** Follows a symlink: the storage folder may be one. */
  stat: typeof fsp.stat
  symlink: typeof fsp.symlink
  readlink: typeof fsp.readlink
  /** mkdir -p with a mode. */
  ensureDir: (dir: string, mode: number) => Promise<void>
  /** One folder, its parent there already. */
  mkdir: typeof fsp.mkdir
}

export const nodeFs: FsSeam = {
  open: fsp.open,
  rename: fsp.rename,
  unlink: fsp.unlink,
  readdir: fsp.readdir,
  chmod: fsp.chmod,
  lutimes: fsp.lutimes,
  lstat: fsp.lstat,
  stat: fsp.stat,
  symlink: fsp.symlink,
  readlink: fsp.readlink,
  ensureDir: makeDirs,
  mkdir: fsp.mkdir
}

/**
 * mkdir -p with a mode. The topmost missing folder is made alone first: Node's recursive mkdir
 * (which fs-extra's ensureDir is built on) never returns when a folder is refused with ENOENT
 * although its parent exists, as /proc answers; it makes the parent again and retries, forever.
 * Below a folder just made, fs-extra makes the rest.
 */
async function makeDirs (dir: string, mode: number): Promise<void> {
  const first = (await missingFolders(dir, fsp.lstat)).at(-1)
  if (first !== undefined) {
    await fsp.mkdir(first, { mode }).catch((err: NodeJS.ErrnoException) => {
      // Made meanwhile by someone else: fine, ensureDir checks it is a folder.
      if (err.code !== 'EEXIST') throw err
    })
  }
  await fse.ensureDir(dir, { mode })
}

/** The folders of `dir`'s path that do not exist, `dir` first, the topmost last: what makeDirs makes. */
export async function missingFolders (dir: string, lstat: FsSeam['lstat']): Promise<string[]> {
  const missing: string[] = []
  for (let at = resolve(dir); ; at = dirname(at)) {
    const exists = await lstat(at).then(() => true, (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return false
      throw err
    })
    if (exists || dirname(at) === at) return missing
    missing.push(at)
  }
}
