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
 * The sockets the server may hold at once: TASK_MAX_CONNECTIONS for requests and
 * TASK_EVENTS_MAX_CLIENTS for event streams, unless the open file limit leaves fewer than their
 * sum once `reserved` descriptors are kept for session files, the database pool and the process.
 * Then both shares shrink in proportion, so that neither kind can take the other's (streams
 * alone must not lock requests and probes out). `capped`: they were shrunk.
 */
export function socketBudget (maxConnections: number, maxStreams: number, reserved: number, limit: number | null): { connections: number, streams: number, capped: boolean } {
  const wanted = maxConnections + maxStreams
  if (limit === null || wanted <= limit - reserved) return { connections: maxConnections, streams: maxStreams, capped: false }
  const available = Math.max(2, limit - reserved)
  const streams = Math.max(1, Math.floor(available * maxStreams / wanted))
  return { connections: Math.max(1, available - streams), streams, capped: true }
}
