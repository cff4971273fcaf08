import { readFileSync } from 'node:fs'

/**
 * The process's limit on open file descriptors (the soft RLIMIT_NOFILE, which Node raises to the
 * hard one at start), from /proc/self/limits; null where that is not readable (not Linux) or
 * the limit is unlimited.
 */
export function openFileLimit (read: () => string = () => readFileSync('/proc/self/limits', 'utf8')): number | null {
  let text: string
  try {
    text = read()
  } catch {
    return null
  }
  const match = /^Max open files\s+(\d+|unlimited)\s/mu.exec(text)
  if (match === null || match[1] === 'unlimited') return null
  return Number(match[1])
}

/**
 * Client sockets the server may hold at once: TASK_MAX_CONNECTIONS and TASK_EVENTS_MAX_CLIENTS
 * together, but never so many that fewer than `reserved` descriptors stay for session files, the
 * database pool and the process itself. `capped`: the settings allow more than the limit leaves.
 */
export function socketBudget (maxConnections: number, maxStreams: number, reserved: number, limit: number | null): { sockets: number, capped: boolean } {
  const wanted = maxConnections + maxStreams
  if (limit === null || wanted <= limit - reserved) return { sockets: wanted, capped: false }
  return { sockets: Math.max(1, limit - reserved), capped: true }
}
