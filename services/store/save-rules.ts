import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { EventEmitter } from 'node:events'
import { SessionFile } from '../../schemas/session.js'
import { TaskvaultError } from '../errors.js'
import type { SessionStoreEvents } from './store.js'

/** What every store does around a save, so both stores judge and report saves alike. */

const checkSessionFile = TypeCompiler.Compile(SessionFile)

/** Refuses a session that does not match the file schema (a bug), before anything reaches storage. */
export function assertSavable (file: SessionFile): void {
  const candidate: unknown = file
  if (checkSessionFile.Check(candidate)) return
  const first = checkSessionFile.Errors(candidate).First()
  throw new TaskvaultError('INVALID_SESSION_STATE', `refusing to save session '${file.session_id}': ${first?.path ?? ''} ${first?.message ?? ''}`)
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
