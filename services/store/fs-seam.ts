import fsp from 'node:fs/promises'
import { dirname } from 'node:path'

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
  symlink: typeof fsp.symlink
  readlink: typeof fsp.readlink
  /** mkdir -p with a mode. */
  ensureDir: (dir: string, mode: number) => Promise<void>
}

export const nodeFs: FsSeam = {
  open: fsp.open,
  rename: fsp.rename,
  unlink: fsp.unlink,
  readdir: fsp.readdir,
  chmod: fsp.chmod,
  lutimes: fsp.lutimes,
  lstat: fsp.lstat,
  symlink: fsp.symlink,
  readlink: fsp.readlink,
  ensureDir: makeDirs
}

/**
 * mkdir -p, one level at a time. Node's recursive mkdir (and fs-extra's ensureDir, built on
 * it) never returns when a folder's parent exists but refuses it with ENOENT, as /proc does:
 * it makes the parent again and retries, forever. Here a folder still refused once its parent
 * exists is an error.
 */
async function makeDirs (dir: string, mode: number): Promise<void> {
  try {
    await fsp.mkdir(dir, { mode })
    return
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST' && await isDir(dir)) return
    if (code !== 'ENOENT' || dirname(dir) === dir) throw err
  }
  await makeDirs(dirname(dir), mode)
  try {
    await fsp.mkdir(dir, { mode })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST' && await isDir(dir)) return
    throw err
  }
}

async function isDir (path: string): Promise<boolean> {
  return fsp.stat(path).then((stat) => stat.isDirectory(), () => false)
}
