import fsp from 'node:fs/promises'
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
  ensureDir: (dir, mode) => fse.ensureDir(dir, { mode })
}
