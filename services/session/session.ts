import { createHash } from 'node:crypto'
import type { Static } from '@sinclair/typebox'
import type { Progress as ProgressSchema } from '../../schemas/api.js'
import { SESSION_ID, TASK_TYPES, type SessionFile, type StoredSessionFile, type Task, type TaskType } from '../../schemas/session.js'
import { InvalidInstructionsError, InvalidSessionIdError } from '../errors.js'

export type { SessionFile, Task, TaskType }

export interface TaskSpec {
  instruction: string
  task_type: TaskType
}

/** Counts of a session's tasks by status, as the API serves them. */
export type Progress = Static<typeof ProgressSchema>

export const isoNow = (now: Date): string => now.toISOString()

export function newSessionFile (sessionId: string, now: Date): SessionFile {
  const at = isoNow(now)
  return { session_id: sessionId, created_at: at, updated_at: at, session: { session_id: sessionId, tasks: [], current_index: 0 } }
}

/** A copy that can be changed without touching the original (tasks are flat records). */
export function cloneSessionFile (file: SessionFile): SessionFile {
  return { ...file, session: { ...file.session, tasks: file.session.tasks.map((task) => ({ ...task })) } }
}

/** Fills in what the seed's format leaves out, keeping every value (and unknown field) as stored. Takes ownership of `stored`. */
export function normalizeSessionFile (stored: StoredSessionFile): SessionFile {
  // Filled in place: the caller hands over a freshly parsed object, and restore is allocation-bound.
  for (const task of stored.session.tasks) {
    task.result ??= null
    task.error ??= null
    task.confidence ??= null
    task.started_at ??= null
    task.completed_at ??= null
    task.attempts ??= 0
  }
  const file = stored as SessionFile
  file.session.current_index ??= currentIndex(file.session.tasks)
  return file
}

/** What a keyed create asked for, as a hex SHA-256: the same tasks in the same order give the same digest. */
export function specsDigest (specs: readonly TaskSpec[]): string {
  const hash = createHash('sha256')
  for (const spec of specs) hash.update(JSON.stringify([spec.task_type, spec.instruction]))
  return hash.digest('hex')
}

/** Appends tasks with ids `task_<position>_<unix seconds>`, unique within the session. */
export function appendTasks (file: SessionFile, specs: readonly TaskSpec[], now: Date): Task[] {
  const tasks = file.session.tasks
  const seconds = Math.floor(now.getTime() / 1000)
  const at = isoNow(now)
  const taken = new Set(tasks.map((task) => task.id))
  const added: Task[] = []
  for (const spec of specs) {
    let position = tasks.length + 1
    let id = `task_${position}_${seconds}`
    while (taken.has(id)) id = `task_${++position}_${seconds}`
    taken.add(id)
    const task: Task = {
      id,
      instruction: spec.instruction,
      task_type: spec.task_type,
      status: 'Pending',
      result: null,
      error: null,
      confidence: null,
      created_at: at,
      started_at: null,
      completed_at: null,
      attempts: 0
    }
    tasks.push(task)
    added.push(task)
  }
  return added
}

/** Index of the first task still to run (Pending or InProgress), or the task count when none is. */
export function currentIndex (tasks: readonly Task[]): number {
  const index = tasks.findIndex((task) => task.status === 'Pending' || task.status === 'InProgress')
  return index === -1 ? tasks.length : index
}

export function progressOf (tasks: readonly Task[]): Progress {
  let completed = 0
  let failed = 0
  let pending = 0
  let inProgress = 0
  for (const task of tasks) {
    if (task.status === 'Completed') completed++
    else if (task.status === 'Failed') failed++
    else if (task.status === 'Pending') pending++
    else inProgress++
  }
  const total = tasks.length
  const done = completed + failed
  return {
    total,
    completed,
    failed,
    pending,
    in_progress: inProgress,
    all_done: total > 0 && done === total,
    percentage: total === 0 ? 0 : Math.round((done / total) * 10000) / 100
  }
}

/**
 * When a session whose every task is done finished: its latest `completed_at` (or its
 * `updated_at` for files that lack them). null while any task is still to run.
 */
export function finishedAt (file: SessionFile): string | null {
  const tasks = file.session.tasks
  if (tasks.length === 0) return null
  let latest = -Infinity
  for (const task of tasks) {
    if (task.status !== 'Completed' && task.status !== 'Failed') return null
    if (task.completed_at !== null) latest = Math.max(latest, Date.parse(task.completed_at))
  }
  return latest === -Infinity ? file.updated_at : new Date(latest).toISOString()
}

/** Cuts `text` to at most `maxBytes` of UTF-8 without splitting a character. */
export function truncateUtf8 (text: string, maxBytes: number): { text: string, truncated: boolean } {
  if (text.length <= maxBytes / 3 || Buffer.byteLength(text, 'utf8') <= maxBytes) return { text, truncated: false }
  const bytes = Buffer.from(text, 'utf8')
  let end = maxBytes
  // Step back over continuation bytes (10xxxxxx) to the start of a character.
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--
  return { text: bytes.subarray(0, end).toString('utf8'), truncated: true }
}

/**
 * A create's id and tasks as any caller of the manager may pass them (a host's own route, plain
 * JavaScript: not only the HTTP body the schema checked): refused with a 400 error naming what is
 * wrong, before anything is changed, rather than failing at the save as a state the server cannot write.
 */
export function checkCreate (sessionId: unknown, specs: unknown): void {
  if (typeof sessionId !== 'string' || !SESSION_ID.test(sessionId)) {
    throw new InvalidSessionIdError(`invalid session id ${JSON.stringify(String(sessionId).slice(0, 140))}: expected 1 to 128 letters, digits, _ or -`)
  }
  if (!Array.isArray(specs)) throw new InvalidInstructionsError('tasks must be a list of { instruction, task_type }')
  specs.forEach((spec: Partial<TaskSpec> | null, index) => {
    if (typeof spec?.instruction !== 'string') throw new InvalidInstructionsError(`task ${index + 1} has no instruction text`)
    if (!(TASK_TYPES as readonly unknown[]).includes(spec.task_type)) throw new InvalidInstructionsError(`task ${index + 1} has task_type ${JSON.stringify(spec.task_type)}; expected one of ${TASK_TYPES.join(', ')}`)
  })
}

/**
 * List order: newest updated first, then by id, so a session keeps its place among those of the
 * same millisecond whatever else changes (an archive pass moving one of them), and pages by
 * offset neither repeat nor skip it.
 */
export function listOrder (aMs: number, aId: string, bMs: number, bId: string): number {
  return bMs - aMs || (aId < bId ? -1 : aId > bId ? 1 : 0)
}
