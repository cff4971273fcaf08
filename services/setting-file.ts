import { closeSync, openSync, readSync } from 'node:fs'

/**
 * The most a setting's file (`TASK_AGENTS=@path`, `TASK_ENCRYPTION_KEYS=@path`) is read of: such
 * a file holds a few KB. A path to something endless (`/dev/zero`, a pipe that never ends) is
 * refused at boot with the setting named, instead of filling memory until the process aborts.
 */
export const SETTING_FILE_MAX_BYTES = 1024 * 1024

/** The file's text, read to its end or refused past `max` bytes; errors are the file system's, or one naming the bound. */
export function readSettingFile (path: string, max = SETTING_FILE_MAX_BYTES): string {
  const fd = openSync(path, 'r')
  try {
    // One byte past the bound tells a file of exactly `max` bytes from a longer one.
    const buffer = Buffer.alloc(max + 1)
    let length = 0
    for (;;) {
      const got = readSync(fd, buffer, length, buffer.length - length, null)
      if (got === 0) break
      length += got
      if (length > max) throw new Error(`more than ${max} bytes (a settings file holds a few KB)`)
    }
    return buffer.toString('utf8', 0, length)
  } finally {
    closeSync(fd)
  }
}
