import { readFileSync } from 'node:fs'

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
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
  } catch {
    return false
  }
  // `pid (comm) state ...`: comm may hold spaces and parentheses, so the state follows the last ')'.
  const state = stat.charAt(stat.lastIndexOf(')') + 2)
  return state === 'Z' || state === 'X'
}
