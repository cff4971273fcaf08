import { readFileSync, readlinkSync } from 'node:fs'

/**
 * This machine's boot and this process's pid namespace (Linux; '' elsewhere): a pid recorded with
 * the same two names the same process slot here, so whether it runs can be asked; under any other
 * (another machine of the same host name, another container), a pid says nothing.
 */
export function processPlace (): { boot: string, pidNamespace: string } {
  const read = (fn: () => string): string => {
    try {
      return fn().trim()
    } catch {
      return ''
    }
  }
  return { boot: read(() => readFileSync('/proc/sys/kernel/random/boot_id', 'latin1')), pidNamespace: read(() => readlinkSync('/proc/self/ns/pid')) }
}

/** When this process started (ms since the epoch): a record of this pid older than that is an earlier life of it (a container's pid 1 again). */
export const PROCESS_STARTED_MS = Date.now() - process.uptime() * 1000

/**
 * Whether a process with this pid runs on this host (EPERM: it runs, as another user). A process
 * killed but not yet reaped by its parent (a zombie) keeps its pid and answers signal 0, yet runs
 * no more: it counts as gone.
 */
export function pidAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  return !exited(pid)
}

/** Linux's /proc says the process has exited (state Z or X); false where there is no /proc. */
function exited (pid: number): boolean {
  const state = statFields(pid)?.[0]
  return state === 'Z' || state === 'X'
}

/**
 * When the process with this pid started, in clock ticks since this machine booted (Linux's
 * /proc/<pid>/stat field 22), as text; null where there is no /proc or no such process. No clock
 * is involved: two processes given the same pid in one boot and pid namespace always differ in it.
 */
export function processStart (pid: number): string | null {
  return statFields(pid)?.[19] ?? null
}

/**
 * The process with this pid as `<pid namespace>.<start>` (processStart; the namespace as its
 * inode number), or null where /proc cannot tell: equal for one process, different once another
 * has taken the pid.
 */
export function processSlot (pid: number): string | null {
  const start = processStart(pid)
  const namespace = /\d+/u.exec(processPlace().pidNamespace)?.[0]
  return start === null || namespace === undefined ? null : `${namespace}.${start}`
}

/** The fields of /proc/<pid>/stat from the state (field 3) on; null when it cannot be read. */
function statFields (pid: number): string[] | null {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
  } catch {
    return null
  }
  // `pid (comm) state ...`: comm may hold spaces and parentheses, so the fields follow the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
}
