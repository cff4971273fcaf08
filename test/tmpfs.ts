/**
 * A real small filesystem for disk-full tests: a tmpfs mounted by the test (root, Linux), and a
 * filler that fills it to the last block. Not a *.test.ts file: tap does not run it.
 */
import { execFile } from 'node:child_process'
import { appendFile, stat } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { tempDir, type TestContext } from './helper.js'

const run = promisify(execFile)

/** null once mounted, else why it could not be. */
export async function mountTmpfs (dir: string, size: string): Promise<string | null> {
  if (process.platform !== 'linux') return `tmpfs needs Linux (this is ${process.platform})`
  if (process.getuid?.() !== 0) return `mounting needs root (uid ${process.getuid?.() ?? '?'})`
  try {
    await run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir])
    return null
  } catch (err) {
    const e = err as { stderr?: string, message: string }
    return `'mount -t tmpfs' failed: ${(e.stderr ?? '').trim() || e.message}`
  }
}

/** Unmounts, retrying while busy; lazily as a last resort. Never throws (teardown chain). */
export async function unmount (dir: string): Promise<void> {
  for (let attempt = 1; attempt <= 5; attempt++) {
    try {
      await run('umount', [dir])
      return
    } catch {
      // Busy (a handle still closing): no event to wait for, so back off and retry.
      await sleep(100 * attempt)
    }
  }
  await run('umount', ['-l', dir]).catch((err: Error) => { console.error(`umount -l ${dir} failed: ${err.message}`) })
}

/** Appends to a filler file until the disk is full to the last block; returns its size. */
export async function fill (path: string): Promise<number> {
  const page = Buffer.alloc(4096, 0x66)
  for (;;) {
    try {
      // A write that only partly fits lands what fits, then the next one fails.
      await appendFile(path, page)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
      return (await stat(path)).size
    }
  }
}

/**
 * A fresh folder with a tmpfs of `size` mounted on it, unmounted at teardown (registered before
 * the test's apps, so they close first); null, with the test planned as skipped saying why,
 * where mounting is not permitted.
 */
export async function mountedFolder (t: TestContext & { plan: (n: number, why: string) => void }, size: string, coveredBy: string): Promise<string | null> {
  const dir = await tempDir(t, 'taskvault-tmpfs-')
  const why = await mountTmpfs(dir, size)
  if (why !== null) {
    t.plan(0, `skipped: cannot mount a tmpfs here (${why}); ${coveredBy}`)
    return null
  }
  t.teardown(() => unmount(dir))
  return dir
}
