import { EventEmitter, setMaxListeners } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { ArchivedSessions, type ArchivedSessionSummary, type RetentionCutoffs } from './archived-sessions.js'
import { InvalidSessionIdError, LimitExceededError, NoPendingTaskError, SessionLimitError, SessionBusyError, SessionNotFoundError, ShuttingDownError, StaleArchivedCopyError } from './errors.js'
import { checkExecutionResult, executorFor, resolveExecutors, type ExecutorMap } from './executors.js'
import { appendTasks, finishedAt, isoNow, newSessionFile, progressOf, truncateUtf8, type Progress, type SessionFile, type Task, type TaskSpec } from './session.js'
import { SessionRegistry, unchanged, type Draft, type SessionSummary, type Totals } from './session-registry.js'
import type { ArchivedSession, SessionStore } from './store.js'

/** The subset of pino's API the manager logs through, so it runs without Fastify. */
export interface Logger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

/** Bounds on what clients and agents may store. */
export interface Limits {
  maxSessions: number
  maxTasksPerSession: number
  maxInstructionBytes: number
  /** Longer agent results (and error messages) are cut to this and flagged. */
  maxResultBytes: number
}

export const DEFAULT_LIMITS: Limits = {
  maxSessions: 100_000,
  maxTasksPerSession: 1000,
  maxInstructionBytes: 64 * 1024,
  maxResultBytes: 1024 * 1024
}

export interface TaskManagerOptions {
  store: SessionStore
  limits?: Partial<Limits>
  executors?: Partial<ExecutorMap>
  /** Save on every change (default). Off: save only at graceful shutdown. */
  autoSave?: boolean
  restoreConcurrency?: number
  /** How long running executions may take to finish at shutdown before they are aborted. */
  shutdownGraceMs?: number
  clock?: () => Date
  logger?: Logger
}

export interface ExecutedTask {
  task_id: string
  instruction: string
  status: Task['status']
  result: string | null
  error: string | null
  confidence: number | null
  result_truncated?: boolean
}

export interface RestoreReport {
  sessions: number
  /** Sessions in the archive (indexed, not loaded). */
  archivedSessions: number
  failedLoads: number
  resetTasks: number
  ms: number
}

/** The seed's counts plus storage figures: what GET /stats serves. */
export interface ManagerStats extends Omit<Totals, 'bytes' | 'files'> {
  archived_sessions: number
  storage: { dir: string, bytes: number, files: number, archive_bytes: number, failed_loads: number, restore_ms: number }
}

/** Which sessions a list of every session shows. */
export type ArchivedFilter = 'exclude' | 'include' | 'only'

/** One call to an agent, for metrics and logs. `agent` is the routing key that chose it (a task type or `default`). */
export interface AgentCallEvent {
  session_id: string
  task_id: string
  task_type: Task['task_type']
  agent: string
  attempt: number
  outcome: 'ok' | 'error' | 'timeout' | 'aborted' | 'cancelled'
  ms: number
}

/** What the manager reports as it works; observers (metrics) subscribe without the manager knowing them. */
export interface TaskManagerEvents {
  'agent-call': [AgentCallEvent]
  restore: [RestoreReport]
}

/** The reserved id that the list endpoint reads as "every session". */
export const ALL_SESSIONS = 'all'

const silent: Logger = { info () {}, warn () {}, error () {} }

/**
 * Owns the sessions: restores them, appends tasks, runs them one at a time per session
 * through executors chosen by task type, and shuts down without losing acknowledged work.
 */
export class TaskManager {
  readonly registry: SessionRegistry
  readonly archived: ArchivedSessions
  readonly events = new EventEmitter<TaskManagerEvents>()
  private readonly store: SessionStore
  private readonly executors: ExecutorMap
  private readonly autoSave: boolean
  private readonly restoreConcurrency: number
  private readonly shutdownGraceMs: number
  private readonly clock: () => Date
  private readonly log: Logger
  private readonly limits: Limits
  private readonly abort = new AbortController()
  private readonly running = new Set<Promise<unknown>>()
  private restored: RestoreReport | null = null
  private stopping: Promise<void> | null = null

  constructor (options: TaskManagerOptions) {
    this.store = options.store
    this.executors = resolveExecutors(options.executors)
    this.autoSave = options.autoSave ?? true
    this.restoreConcurrency = options.restoreConcurrency ?? 32
    this.shutdownGraceMs = options.shutdownGraceMs ?? 10_000
    this.clock = options.clock ?? (() => new Date())
    this.log = options.logger ?? silent
    this.limits = { ...DEFAULT_LIMITS, ...options.limits }
    this.registry = new SessionRegistry({ store: this.store, autoSave: this.autoSave, clock: this.clock })
    this.archived = new ArchivedSessions({ registry: this.registry, store: this.store, logger: this.log })
    // Every running execution listens on this one signal; many at once is normal, not a leak.
    setMaxListeners(0, this.abort.signal)
  }

  /** True once restore has finished and until shutdown begins. */
  get ready (): boolean {
    return this.restored !== null && this.stopping === null
  }

  /** Executions (execute, execute-all, background runs) in flight now. */
  get runningCount (): number {
    return this.running.size
  }

  get shuttingDown (): boolean {
    return this.stopping !== null
  }

  /** Loads every stored session; interrupted tasks go back to Pending so they run again. */
  async restore (): Promise<RestoreReport> {
    const started = performance.now()
    const { sessions, failures, removedTempFiles } = await this.store.loadAll({ concurrency: this.restoreConcurrency })
    for (const failure of failures) {
      this.log.error({ file: failure.name, moved_to: failure.movedTo, reason: failure.reason }, 'Could not load a task session; set aside')
    }
    if (removedTempFiles > 0) this.log.warn({ count: removedTempFiles }, 'Removed temp files left by interrupted saves')
    let resetTasks = 0
    const resets: Array<Promise<unknown>> = []
    for (const { file, bytes } of sessions) {
      const interrupted = file.session.tasks.filter((task) => task.status === 'InProgress')
      if (interrupted.length === 0) {
        this.registry.load(file, bytes)
        continue
      }
      resetTasks += interrupted.length
      this.log.warn({ session_id: file.session_id, task_ids: interrupted.map((task) => task.id) }, 'Task was interrupted; set back to Pending')
      // Loaded as stored, then the reset goes through a normal durable change.
      this.registry.load(file, bytes)
      resets.push(this.registry.change(file.session_id, (draft) => {
        for (const task of liveFile(draft).session.tasks) if (task.status === 'InProgress') task.status = 'Pending'
      }).catch((err: Error) => this.log.error({ session_id: file.session_id, err }, 'Could not save the reset of interrupted tasks')))
    }
    await Promise.all(resets)
    const archive = await this.store.openArchive({ concurrency: this.restoreConcurrency })
    const ms = Math.round((performance.now() - started) * 100) / 100
    this.restored = { sessions: sessions.length, archivedSessions: archive.sessions, failedLoads: failures.length, resetTasks, ms }
    this.log.info({ sessions: sessions.length, archived: archive.sessions, failed_loads: failures.length, ms }, `Restored ${sessions.length} task sessions from disk`)
    this.events.emit('restore', this.restored)
    return this.restored
  }

  /** Appends tasks to a session, creating it (or bringing it back from the archive) if needed. Resolves once they are durable. */
  async create (sessionId: string, specs: readonly TaskSpec[]): Promise<{ session_id: string, tasks: Task[] }> {
    if (sessionId === ALL_SESSIONS) throw new InvalidSessionIdError(`session id '${ALL_SESSIONS}' is reserved`)
    this.assertOpen()
    const { maxInstructionBytes, maxTasksPerSession, maxSessions } = this.limits
    specs.forEach((spec, index) => {
      const bytes = Buffer.byteLength(spec.instruction, 'utf8')
      if (bytes > maxInstructionBytes) {
        throw new LimitExceededError(`task ${index + 1} is ${bytes} bytes; the limit is ${maxInstructionBytes} (TASK_MAX_INSTRUCTION_BYTES)`)
      }
    })
    const tasks = await this.withArchivedCopy(sessionId, (archivedCopy) => this.registry.change(sessionId, (draft) => {
      if (draft.file === null) {
        // Sessions being created right now hold a slot too, so a burst cannot overshoot.
        if (this.registry.slotCount > maxSessions) throw new SessionLimitError(maxSessions)
        draft.file = this.archived.bringBack(draft, archivedCopy) ?? newSessionFile(sessionId, draft.now)
      }
      const total = draft.file.session.tasks.length + specs.length
      if (total > maxTasksPerSession) {
        throw new LimitExceededError(`session '${sessionId}' would have ${total} tasks; the limit is ${maxTasksPerSession} (TASK_MAX_TASKS_PER_SESSION)`)
      }
      return appendTasks(draft.file, specs, draft.now).map((task) => ({ ...task }))
    }))
    return { session_id: sessionId, tasks }
  }

  get (sessionId: string): SessionFile {
    return this.registry.existing(sessionId).file
  }

  progress (sessionId: string): Progress {
    return this.registry.existing(sessionId).progress
  }

  list (offset: number, limit: number): { total: number, sessions: SessionSummary[] } {
    const all = this.registry.summaries()
    return { total: all.length, sessions: all.slice(offset, offset + limit) }
  }

  /** A session, active or archived (then read from its file). */
  async find (sessionId: string): Promise<{ file: SessionFile, archived: boolean }> {
    const active = this.registry.find(sessionId)
    if (active !== null) return { file: active, archived: false }
    const archived = await this.archived.read(sessionId)
    if (archived !== null) return { file: archived.file, archived: true }
    // Brought back while the archive was read.
    return { file: this.get(sessionId), archived: false }
  }

  async findProgress (sessionId: string): Promise<{ progress: Progress, archived: boolean }> {
    if (this.registry.find(sessionId) !== null) return { progress: this.progress(sessionId), archived: false }
    const { file, archived } = await this.find(sessionId)
    return { progress: archived ? progressOf(file.session.tasks) : this.progress(sessionId), archived }
  }

  /** Every session, newest first, with archived ones (`include`) or only those (`only`). */
  async listWithArchived (offset: number, limit: number, filter: Exclude<ArchivedFilter, 'exclude'>): Promise<{ total: number, sessions: Array<SessionSummary | ArchivedSessionSummary> }> {
    const archived = await this.archived.summaries()
    const all = filter === 'only' ? archived : mergeNewestFirst(this.registry.summaries(), archived)
    return { total: all.length, sessions: all.slice(offset, offset + limit) }
  }

  /** Named fields, not spreads: spreads build slow dictionary-mode objects on this hot path. */
  stats (): ManagerStats {
    const t = this.registry.stats()
    return {
      total_sessions: t.total_sessions,
      active_sessions: t.active_sessions,
      completed_sessions: t.completed_sessions,
      total_tasks: t.total_tasks,
      completed_tasks: t.completed_tasks,
      failed_tasks: t.failed_tasks,
      pending_tasks: t.pending_tasks,
      in_progress_tasks: t.in_progress_tasks,
      archived_sessions: this.archived.totals.sessions,
      storage: {
        dir: this.store.location,
        bytes: t.bytes,
        files: t.files,
        archive_bytes: this.archived.totals.bytes,
        failed_loads: (this.restored?.failedLoads ?? 0) + this.archived.failedLoads,
        restore_ms: this.restored?.ms ?? 0
      }
    }
  }

  /** Runs the next pending task. 409s: already executing, or nothing pending. */
  async executeNext (sessionId: string): Promise<{ task: ExecutedTask, progress: Progress }> {
    return this.exclusive(sessionId, async () => {
      const task = await this.runNext(sessionId)
      if (task === null) throw new NoPendingTaskError(sessionId)
      return { task, progress: this.progress(sessionId) }
    })
  }

  /** Runs every pending task in order; stops early only when the service shuts down. */
  async executeAll (sessionId: string): Promise<{ results: ExecutedTask[], progress: Progress }> {
    return this.exclusive(sessionId, async () => {
      const results: ExecutedTask[] = []
      while (!this.shuttingDown) {
        const task = await this.runNext(sessionId)
        if (task === null) break
        results.push(task)
      }
      return { results, progress: this.progress(sessionId) }
    })
  }

  /** Deletes a session and its file, or its archived files. Refused while it executes. */
  async delete (sessionId: string): Promise<void> {
    if (!this.archived.has(sessionId)) this.registry.existing(sessionId)
    await this.registry.change(sessionId, (draft) => {
      const archived = this.store.archivedName(sessionId) !== null
      if (!archived) liveFile(draft)
      if (draft.file !== null && this.registry.existing(sessionId).executing) throw new SessionBusyError(sessionId)
      draft.file = null
      draft.dropArchived = archived
    })
  }

  /**
   * Moves to the archive every session whose tasks are all done and whose last completion
   * is before `cutoff`. The check is made again inside each session's change queue, so a
   * session that starts running or gains tasks in the meantime stays.
   */
  async archiveFinishedBefore (cutoff: Date): Promise<string[]> {
    const archived: string[] = []
    for (const sessionId of this.registry.sessionIds()) {
      const file = this.registry.find(sessionId)
      if (file === null || !isArchivable(file, cutoff)) continue
      if (this.shuttingDown) break
      const moved = await this.registry.change(sessionId, (draft) => {
        // Unsaved changes (auto-save off) stay put: the archive must get the latest state.
        if (draft.file === null || this.registry.existing(sessionId).executing || this.registry.isDirty(sessionId) ||
          !isArchivable(draft.file, cutoff)) return unchanged(false)
        draft.file = null
        draft.archive = true
        return true
      }).catch((err: Error) => {
        this.log.error({ session_id: sessionId, err }, 'Could not archive session')
        return false
      })
      if (moved) archived.push(sessionId)
    }
    return archived
  }

  /** Deletes archived sessions that finished before their retention cutoff. */
  async pruneArchivedBefore (cutoffs: RetentionCutoffs): Promise<string[]> {
    return this.archived.prune(cutoffs, () => this.shuttingDown)
  }

  /**
   * Stops taking executions, gives running ones the grace period to finish, then aborts
   * them (their tasks stay InProgress on disk and run again after restart).
   */
  beginShutdown (): Promise<void> {
    this.stopping ??= this.stopExecutions()
    return this.stopping
  }

  /** Shuts down, then waits for every queued write (and, with auto-save off, saves everything). */
  async close (): Promise<void> {
    await this.beginShutdown()
    await this.registry.drain()
    if (!this.autoSave) await this.registry.saveDirty()
  }

  private async stopExecutions (): Promise<void> {
    if (this.running.size === 0) return
    const settled = Promise.allSettled([...this.running])
    const grace = new AbortController()
    const timedOut = await Promise.race([settled.then(() => false), sleep(this.shutdownGraceMs, true, { signal: grace.signal }).catch(() => false)])
    grace.abort()
    if (timedOut) {
      this.log.warn({ running: this.running.size }, 'Shutdown grace period over; aborting running tasks')
      this.abort.abort(new ShuttingDownError())
      await settled
    }
  }

  /**
   * Runs `change` with the session's archived copy (null when it is active or not archived),
   * read beforehand because changes cannot wait for I/O. If the archive changed in between,
   * the copy is read again.
   */
  private async withArchivedCopy<R> (sessionId: string, change: (copy: ArchivedSession | null) => Promise<R>): Promise<R> {
    for (let attempt = 1; ; attempt++) {
      const copy = await this.archived.read(sessionId)
      try {
        return await change(copy)
      } catch (err) {
        if (!(err instanceof StaleArchivedCopyError) || attempt >= 3) throw err
      }
    }
  }

  private assertOpen (): void {
    if (this.shuttingDown) throw new ShuttingDownError()
  }

  private async exclusive<R> (sessionId: string, run: () => Promise<R>): Promise<R> {
    this.assertOpen()
    if (!this.registry.claim(sessionId)) throw new SessionBusyError(sessionId)
    const execution = run()
    this.running.add(execution)
    try {
      return await execution
    } finally {
      this.running.delete(execution)
      this.registry.release(sessionId)
    }
  }

  /** Starts, runs and finishes the next runnable task; null when there is none. */
  private async runNext (sessionId: string): Promise<ExecutedTask | null> {
    const started = await this.registry.change(sessionId, (draft) => {
      // While this session is claimed nothing else runs it, so an InProgress task here is one
      // whose finishing save failed: it is run again rather than left stuck.
      const task = liveFile(draft).session.tasks.find((t) => t.status === 'Pending' || t.status === 'InProgress')
      if (task === undefined) return unchanged(null)
      Object.assign(task, { status: 'InProgress', started_at: isoNow(draft.now), completed_at: null, result: null, error: null, confidence: null, attempts: task.attempts + 1 })
      delete task.result_truncated
      return { ...task }
    })
    if (started === null) return null
    const signal = this.abort.signal
    let outcome: Pick<Task, 'status' | 'result' | 'error' | 'confidence' | 'result_truncated'>
    const callStarted = performance.now()
    const agent = this.executors[started.task_type] === undefined ? 'default' : started.task_type
    const report = (result: AgentCallEvent['outcome']): void => {
      this.events.emit('agent-call', { session_id: sessionId, task_id: started.id, task_type: started.task_type, agent, attempt: started.attempts, outcome: result, ms: performance.now() - callStarted })
    }
    try {
      const executor = executorFor(this.executors, started.task_type)
      // Executors are user code: a synchronous throw fails the task like a rejection does.
      const call = Promise.resolve().then(() => executor(started, { session_id: sessionId, attempt: started.attempts, signal }))
      const value = await abortable(call, signal).catch((err: unknown) => {
        report(signal.aborted ? 'aborted' : 'error')
        throw err
      })
      report('ok')
      const { result, confidence } = checkExecutionResult(value)
      const cut = truncateUtf8(result, this.limits.maxResultBytes)
      if (cut.truncated) this.log.warn({ session_id: sessionId, task_id: started.id, limit: this.limits.maxResultBytes }, 'Agent result truncated to TASK_MAX_RESULT_BYTES')
      outcome = { status: 'Completed', result: cut.text, error: null, confidence: confidence ?? null, ...(cut.truncated && { result_truncated: true }) }
    } catch (err) {
      if (signal.aborted) throw new ShuttingDownError(`task ${started.id} was interrupted by shutdown; it runs again after restart`)
      outcome = { status: 'Failed', result: null, error: truncateUtf8(errorMessage(err), this.limits.maxResultBytes).text, confidence: null }
      this.log.warn({ session_id: sessionId, task_id: started.id, err: outcome.error }, 'Task failed')
    }
    return this.registry.change(sessionId, (draft) => {
      const task = liveFile(draft).session.tasks.find((t) => t.id === started.id)
      if (task === undefined) throw new SessionNotFoundError(sessionId)
      Object.assign(task, outcome, { completed_at: isoNow(draft.now) })
      return { task_id: task.id, instruction: task.instruction, status: task.status, result: task.result, error: task.error, confidence: task.confidence, ...(task.result_truncated === true && { result_truncated: true }) }
    })
  }
}

function liveFile (draft: Draft): SessionFile {
  if (draft.file === null) throw new SessionNotFoundError(draft.sessionId)
  return draft.file
}

/** Merges two lists sorted newest `updated_at` first. */
function mergeNewestFirst<A extends { updated_at: string }, B extends { updated_at: string }> (a: A[], b: B[]): Array<A | B> {
  const merged: Array<A | B> = []
  let i = 0
  let j = 0
  while (i < a.length || j < b.length) {
    const left = a[i]
    const right = b[j]
    if (right === undefined || (left !== undefined && Date.parse(left.updated_at) >= Date.parse(right.updated_at))) {
      merged.push(left as A)
      i++
    } else {
      merged.push(right)
      j++
    }
  }
  return merged
}

function isArchivable (file: SessionFile, cutoff: Date): boolean {
  const finished = finishedAt(file)
  return finished !== null && Date.parse(finished) < cutoff.getTime()
}

function errorMessage (err: unknown): string {
  if (err instanceof Error) return err.message || err.name
  return String(err)
}

/** Settles with the promise, or rejects as soon as the signal aborts. */
function abortable<T> (promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}
