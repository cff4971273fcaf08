import { EventEmitter, setMaxListeners } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { callAgent, errorMessage } from './agent-call.js'
import type { AgentsConfig } from './agents/spec.js'
import { AgentError, CancelledError, InvalidSessionIdError, LimitExceededError, NoPendingTaskError, NotRunningError, SessionLimitError, SessionBusyError, SessionNotFoundError, ShuttingDownError } from './errors.js'
import { agentFor, resolveAgents, retryDelay, type AgentRoutes, type ExecutionResult, type Executors } from './executors.js'
import { appendTasks, finishedAt, isoNow, newSessionFile, truncateUtf8, type Progress, type SessionFile, type Task, type TaskSpec } from './session.js'
import { SessionRegistry, unchanged, type Draft, type SessionSummary, type Totals } from './session-registry.js'
import type { SessionStore } from './store.js'

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
  /** Programmatic agents by task type or `default`; they take precedence over `agents`. */
  executors?: Executors
  /** Configured agents (the TASK_AGENTS setting, parsed). Unset: the echo demo agent. */
  agents?: AgentsConfig
  /** Where agents read the secrets their specs name (default process.env). */
  env?: NodeJS.ProcessEnv
  /** Restarts that may find a task running before it is failed instead of run again (default 3). */
  maxInterruptions?: number
  /** Resume background runs a restart interrupted (default true). */
  resumeOnStart?: boolean
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
  failedLoads: number
  resetTasks: number
  ms: number
}

/** The seed's counts plus storage figures: what GET /stats serves. */
export interface ManagerStats extends Omit<Totals, 'bytes' | 'files'> {
  storage: { dir: string, bytes: number, files: number, failed_loads: number, restore_ms: number }
}

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
  readonly events = new EventEmitter<TaskManagerEvents>()
  private readonly store: SessionStore
  readonly agents: AgentRoutes
  private readonly maxInterruptions: number
  private readonly resumeOnStart: boolean
  private readonly runs = new Map<string, Run>()
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
    this.agents = resolveAgents(options.executors, options.agents, options.env)
    this.maxInterruptions = options.maxInterruptions ?? 3
    this.resumeOnStart = options.resumeOnStart ?? true
    this.autoSave = options.autoSave ?? true
    this.restoreConcurrency = options.restoreConcurrency ?? 2
    this.shutdownGraceMs = options.shutdownGraceMs ?? 10_000
    this.clock = options.clock ?? (() => new Date())
    this.log = options.logger ?? silent
    this.limits = { ...DEFAULT_LIMITS, ...options.limits }
    this.registry = new SessionRegistry({ store: this.store, autoSave: this.autoSave, clock: this.clock })
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
    const backgroundRuns: string[] = []
    for (const { file, bytes } of sessions) {
      // Loaded as stored; a reset then goes through a normal durable change.
      this.registry.load(file, bytes)
      if (file.background_run !== undefined) backgroundRuns.push(file.session_id)
      const interrupted = file.session.tasks.filter((task) => task.status === 'InProgress')
      if (interrupted.length === 0) continue
      resetTasks += interrupted.length
      resets.push(this.registry.change(file.session_id, (draft) => {
        for (const task of liveFile(draft).session.tasks) {
          if (task.status === 'InProgress') this.interrupted(file.session_id, task, draft.now)
        }
      }).catch((err: Error) => this.log.error({ session_id: file.session_id, err }, 'Could not save the reset of interrupted tasks')))
    }
    await Promise.all(resets)
    const ms = Math.round((performance.now() - started) * 100) / 100
    this.restored = { sessions: sessions.length, failedLoads: failures.length, resetTasks, ms }
    this.log.info({ sessions: sessions.length, failed_loads: failures.length, ms }, `Restored ${sessions.length} task sessions from disk`)
    this.events.emit('restore', this.restored)
    if (this.resumeOnStart) this.resumeBackgroundRuns(backgroundRuns)
    else if (backgroundRuns.length > 0) this.log.warn({ sessions: backgroundRuns.length }, 'Background runs not resumed (TASK_RESUME_ON_START=false)')
    return this.restored
  }

  /**
   * A task found running at restore was interrupted by a crash or shutdown. It runs again,
   * unless that has happened TASK_MAX_INTERRUPTIONS times: a task that kills the process must not loop forever.
   */
  private interrupted (sessionId: string, task: Task, now: Date): void {
    const count = (task.interruptions ?? 0) + 1
    task.interruptions = count
    if (count >= this.maxInterruptions) {
      Object.assign(task, { status: 'Failed', error: `interrupted ${count} times`, result: null, confidence: null, completed_at: isoNow(now) })
      this.log.error({ session_id: sessionId, task_id: task.id, interruptions: count }, 'Task interrupted too often; failed')
    } else {
      task.status = 'Pending'
      this.log.warn({ session_id: sessionId, task_id: task.id, interruptions: count }, 'Task was interrupted; set back to Pending')
    }
  }

  /** Appends tasks to a session, creating it if needed. Resolves once they are durable. */
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
    const tasks = await this.registry.change(sessionId, (draft) => {
      if (draft.file === null) {
        // Sessions being created right now hold a slot too, so a burst cannot overshoot.
        if (this.registry.slotCount > maxSessions) throw new SessionLimitError(maxSessions)
        draft.file = newSessionFile(sessionId, draft.now)
      }
      const total = draft.file.session.tasks.length + specs.length
      if (total > maxTasksPerSession) {
        throw new LimitExceededError(`session '${sessionId}' would have ${total} tasks; the limit is ${maxTasksPerSession} (TASK_MAX_TASKS_PER_SESSION)`)
      }
      return appendTasks(draft.file, specs, draft.now).map((task) => ({ ...task }))
    })
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
      storage: {
        dir: this.store.location,
        bytes: t.bytes,
        files: t.files,
        failed_loads: this.restored?.failedLoads ?? 0,
        restore_ms: this.restored?.ms ?? 0
      }
    }
  }

  /** Runs the next pending task. 409s: already executing, or nothing pending. */
  async executeNext (sessionId: string): Promise<{ task: ExecutedTask, progress: Progress }> {
    return this.exclusive(sessionId, false, async (run) => {
      const task = await this.runNext(sessionId, run)
      if (task === null) throw new NoPendingTaskError(sessionId)
      return { task, progress: this.progress(sessionId) }
    })
  }

  /** Runs every pending task in order; stops early on cancel or shutdown. */
  async executeAll (sessionId: string): Promise<{ results: ExecutedTask[], progress: Progress }> {
    return this.exclusive(sessionId, false, async (run) => {
      const results = await this.runAll(sessionId, run)
      return { results, progress: this.progress(sessionId) }
    })
  }

  /**
   * Starts running every pending task in the background and resolves once the run is recorded
   * in the session file (so a restart resumes it). Progress is read with `progress()`.
   */
  async startBackgroundRun (sessionId: string): Promise<Progress> {
    this.registry.existing(sessionId)
    let recorded!: () => void
    let failed!: (err: unknown) => void
    const marked = new Promise<void>((resolve, reject) => { recorded = resolve; failed = reject })
    const execution = this.exclusive(sessionId, true, async (run) => {
      try {
        await this.registry.change(sessionId, (draft) => {
          const file = liveFile(draft)
          if (file.background_run !== undefined) return unchanged(undefined)
          file.background_run = { started_at: isoNow(draft.now) }
        })
      } catch (err) {
        failed(err)
        return
      }
      recorded()
      await this.backgroundRun(sessionId, run)
    })
    execution.catch(failed)
    await marked
    return this.progress(sessionId)
  }

  /**
   * Stops the session's running execution: the agent call is aborted and its task failed with
   * "cancelled"; a background run ends. Resolves once that is on disk.
   */
  async cancel (sessionId: string): Promise<{ cancelled_task_id: string | null, progress: Progress }> {
    this.registry.existing(sessionId)
    const run = this.runs.get(sessionId)
    if (run === undefined) throw new NotRunningError(sessionId)
    run.controller.abort(new CancelledError())
    await run.done
    return { cancelled_task_id: run.cancelledTaskId, progress: this.progress(sessionId) }
  }

  /** True while an execution (foreground or background) holds the session. */
  isRunning (sessionId: string): boolean {
    return this.runs.has(sessionId)
  }

  /** Deletes a session and its file. Refused while it executes. */
  async delete (sessionId: string): Promise<void> {
    this.registry.existing(sessionId)
    await this.registry.change(sessionId, (draft) => {
      liveFile(draft)
      if (this.registry.existing(sessionId).executing) throw new SessionBusyError(sessionId)
      draft.file = null
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

  private assertOpen (): void {
    if (this.shuttingDown) throw new ShuttingDownError()
  }

  private async exclusive<R> (sessionId: string, background: boolean, body: (run: Run) => Promise<R>): Promise<R> {
    this.assertOpen()
    if (!this.registry.claim(sessionId)) throw new SessionBusyError(sessionId)
    const controller = new AbortController()
    const run: Run = {
      controller,
      signal: AbortSignal.any([this.abort.signal, controller.signal]),
      background,
      cancelledTaskId: null,
      done: Promise.resolve()
    }
    const execution = body(run)
    run.done = execution.then(noop, noop)
    this.runs.set(sessionId, run)
    this.running.add(execution)
    try {
      return await execution
    } finally {
      this.running.delete(execution)
      this.runs.delete(sessionId)
      this.registry.release(sessionId)
    }
  }

  private async runAll (sessionId: string, run: Run): Promise<ExecutedTask[]> {
    const results: ExecutedTask[] = []
    // Once shutdown begins no new task starts; running ones get the grace period.
    while (!run.signal.aborted && !this.shuttingDown) {
      const task = await this.runNext(sessionId, run)
      if (task === null) break
      results.push(task)
    }
    return results
  }

  /** A background run: ends by clearing its record, unless shutdown interrupts it (then it resumes after restart). */
  private async backgroundRun (sessionId: string, run: Run): Promise<void> {
    try {
      const results = await this.runAll(sessionId, run)
      // Stopped by shutdown: the record stays, so the run resumes after restart.
      if (this.shuttingDown && !run.controller.signal.aborted) return
      await this.registry.change(sessionId, (draft) => {
        if (draft.file === null || draft.file.background_run === undefined) return unchanged(undefined)
        delete draft.file.background_run
      })
      this.log.info({ session_id: sessionId, executed: results.length, cancelled: run.controller.signal.aborted }, 'Background run finished')
    } catch (err) {
      if (err instanceof ShuttingDownError) return
      this.log.error({ session_id: sessionId, err }, 'Background run stopped')
    }
  }

  /** Resumes background runs that a restart interrupted; their sessions hold `background_run`. */
  private resumeBackgroundRuns (sessionIds: string[]): void {
    for (const sessionId of sessionIds) {
      this.log.info({ session_id: sessionId }, 'Resuming background run')
      this.startBackgroundRun(sessionId).catch((err: Error) => {
        this.log.error({ session_id: sessionId, err }, 'Could not resume background run')
      })
    }
  }

  /**
   * Runs the next runnable task to its end: each call to the agent is recorded on disk first
   * (InProgress, attempts, started_at); transient failures are retried with backoff up to the
   * agent's max_attempts. null when there is no task to run.
   */
  private async runNext (sessionId: string, run: Run): Promise<ExecutedTask | null> {
    let taskId: string | null = null
    let outcome: Outcome
    for (let call = 1; ; call++) {
      if (run.signal.aborted) {
        if (taskId === null) return null
        outcome = this.stopped(sessionId, taskId, run)
        break
      }
      const started: Task | null = await this.registry.change(sessionId, (draft) => {
        const tasks = liveFile(draft).session.tasks
        // While this session is claimed nothing else runs it, so an InProgress task here is one
        // whose finishing save failed, or the one being retried: it is run (again).
        const task = taskId === null
          ? tasks.find((t) => t.status === 'Pending' || t.status === 'InProgress')
          : tasks.find((t) => t.id === taskId)
        if (task === undefined) return unchanged(null)
        Object.assign(task, { status: 'InProgress', started_at: isoNow(draft.now), completed_at: null, result: null, error: null, confidence: null, attempts: task.attempts + 1 })
        delete task.result_truncated
        return { ...task }
      })
      if (started === null) {
        if (taskId === null) return null
        throw new SessionNotFoundError(sessionId)
      }
      taskId = started.id
      const agent = agentFor(this.agents, started.task_type)
      try {
        const value = await callAgent({ agent, task: started, sessionId, signal: run.signal, shutdownSignal: this.abort.signal }, (result, ms) => {
          this.events.emit('agent-call', { session_id: sessionId, task_id: started.id, task_type: started.task_type, agent: agent.key, attempt: started.attempts, outcome: result, ms })
        })
        outcome = this.completed(sessionId, started.id, value)
        break
      } catch (err) {
        if (run.signal.aborted) {
          outcome = this.stopped(sessionId, started.id, run)
          break
        }
        const message = errorMessage(err)
        if (err instanceof AgentError && err.transient && call < agent.policy.max_attempts) {
          // No new call once shutdown begins: the task stays InProgress and runs again after restart.
          if (this.shuttingDown) throw new ShuttingDownError(`task ${started.id} will be retried after restart`)
          const delay = retryDelay(agent.policy, call, err.retryAfterMs)
          this.log.warn({ session_id: sessionId, task_id: started.id, attempt: started.attempts, retry_in_ms: Math.round(delay), err: message }, 'Agent call failed; retrying')
          await sleep(delay, undefined, { signal: run.signal }).catch(noop)
          continue
        }
        outcome = { status: 'Failed', result: null, error: truncateUtf8(message, this.limits.maxResultBytes).text, confidence: null }
        this.log.warn({ session_id: sessionId, task_id: started.id, attempt: started.attempts, err: outcome.error }, 'Task failed')
        break
      }
    }
    const finishedId = taskId
    return this.registry.change(sessionId, (draft) => {
      const task = liveFile(draft).session.tasks.find((t) => t.id === finishedId)
      if (task === undefined) throw new SessionNotFoundError(sessionId)
      Object.assign(task, outcome, { completed_at: isoNow(draft.now) })
      return { task_id: task.id, instruction: task.instruction, status: task.status, result: task.result, error: task.error, confidence: task.confidence, ...(task.result_truncated === true && { result_truncated: true }) }
    })
  }

  private completed (sessionId: string, taskId: string, value: ExecutionResult): Outcome {
    const cut = truncateUtf8(value.result, this.limits.maxResultBytes)
    const truncated = cut.truncated || value.truncated === true
    if (truncated) this.log.warn({ session_id: sessionId, task_id: taskId, limit: this.limits.maxResultBytes }, 'Agent result truncated')
    return { status: 'Completed', result: cut.text, error: null, confidence: value.confidence ?? null, ...(truncated && { result_truncated: true }) }
  }

  /** The run was stopped mid-task: shutdown leaves the task InProgress on disk; cancel fails it. */
  private stopped (sessionId: string, taskId: string, run: Run): Outcome {
    if (this.abort.signal.aborted) throw new ShuttingDownError(`task ${taskId} was interrupted by shutdown; it runs again after restart`)
    run.cancelledTaskId = taskId
    this.log.warn({ session_id: sessionId, task_id: taskId }, 'Task cancelled')
    return { status: 'Failed', result: null, error: 'cancelled', confidence: null }
  }
}

type Outcome = Pick<Task, 'status' | 'result' | 'error' | 'confidence' | 'result_truncated'>

/** One execution holding a session: its cancel switch and how it ended. */
interface Run {
  controller: AbortController
  /** Aborted by cancel or by shutdown after the grace period. */
  signal: AbortSignal
  background: boolean
  cancelledTaskId: string | null
  /** Settles (never rejects) when the execution has ended. */
  done: Promise<void>
}

function noop (): void {}

function liveFile (draft: Draft): SessionFile {
  if (draft.file === null) throw new SessionNotFoundError(draft.sessionId)
  return draft.file
}

function isArchivable (file: SessionFile, cutoff: Date): boolean {
  const finished = finishedAt(file)
  return finished !== null && Date.parse(finished) < cutoff.getTime()
}
