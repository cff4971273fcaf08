import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { EventEmitter } from 'node:events'
import { SessionFile } from '../../schemas/session.js'
import { StorageError, TaskvaultError } from '../errors.js'
import type { SaveEvent, SaveOptions, SessionStoreEvents } from './store.js'

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

/**
 * Runs a save and reports it on `events` (how long, how it ended, its size), whatever its
 * outcome. Only storage's own failure counts as failed: a save refused by rule (another
 * version stored, a bound, a lost lease) is the registry's or the client's to handle, and
 * the save-failures alert must not fire on replicas changing one session by turns.
 */
export async function reportedSave (events: EventEmitter<SessionStoreEvents>, write: () => Promise<number>): Promise<number> {
  const started = performance.now()
  let bytes = 0
  let outcome: SaveEvent['outcome'] = 'refused'
  try {
    bytes = await write()
    outcome = 'durable'
    return bytes
  } catch (err) {
    if (err instanceof StorageError) outcome = 'failed'
    throw err
  } finally {
    events.emit('save', { ms: performance.now() - started, outcome, bytes })
  }
}
