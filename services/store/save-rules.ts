import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { EventEmitter } from 'node:events'
import { SessionFile } from '../../schemas/session.js'
import { TaskvaultError } from '../errors.js'
import type { SaveOptions, SessionStoreEvents } from './store.js'

/** What every store does around a save, so both stores judge and report saves alike. */

const checkSessionFile = TypeCompiler.Compile(SessionFile)

/** Refuses a session that does not match the file schema (a bug), before anything reaches storage. */
export function assertSavable (file: SessionFile): void {
  const candidate: unknown = file
  if (checkSessionFile.Check(candidate)) return
  const first = checkSessionFile.Errors(candidate).First()
  throw new TaskvaultError('INVALID_SESSION_STATE', `refusing to save session '${file.session_id}': ${first?.path ?? ''} ${first?.message ?? ''}`)
}

/**
 * Room per task that a save recording how a run goes may use past TASK_MAX_SESSION_BYTES: a
 * task's times, counters and a short error take far less. Without it a session filled to the
 * bound by its instructions could not even mark a task InProgress, or fail it, and stayed stuck.
 */
export const RECORD_ROOM_PER_TASK_BYTES = 1024

/**
 * The size a save of `file` may reach: the bound, plus room per task for a save that only
 * records a run's course, counted from the session's stored size when that is past the bound.
 */
export function sessionBound (file: SessionFile, maxBytes: number, options: SaveOptions | undefined): number {
  if (options?.records !== true) return maxBytes
  return Math.max(maxBytes, options.stored ?? 0) + file.session.tasks.length * RECORD_ROOM_PER_TASK_BYTES
}

/** Runs a save and reports it on `events` (how long, whether it became durable, its size), whatever its outcome. */
export async function reportedSave (events: EventEmitter<SessionStoreEvents>, write: () => Promise<number>): Promise<number> {
  const started = performance.now()
  let bytes = 0
  let ok = false
  try {
    bytes = await write()
    ok = true
    return bytes
  } finally {
    events.emit('save', { ms: performance.now() - started, ok, bytes })
  }
}
