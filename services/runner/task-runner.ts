import type { EventEmitter } from 'node:events'
import { setMaxListeners } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { callAgent, errorMessage, transientFailure } from './agent-call.js'
import { CancelledError, LeaseLostError, NoPendingTaskError, NotRunningError, SessionBusyError, SessionNotFoundError, SessionTooLargeError, ShuttingDownError, StorageError } from '../errors.js'
import { agentFor, retryDelay, type AgentRoutes, type ExecutionResult } from './executors.js'
import { isoNow, truncateUtf8, type Progress, type Task } from '../session/session.js'
import { liveFile, unchanged } from '../session/draft.js'
import type { SessionRegistry } from '../session/registry.js'
import type { SharedSessions } from '../store/store.js'
import type { ExecutedTask, Logger, TaskManagerEvents } from '../types.js'
import type { TaskEventData, TaskEventName } from '../events/task-events.js'
import { anySignal, pause } from './signals.js'
import { CallSlots } from './call-slots.js'
import type { Interruption } from './interruptions.js'

export interface TaskRunnerOptions {
  registry: SessionRegistry
  agents: AgentRoutes
  events: EventEmitter<TaskManagerEvents>
  log: Logger
  /** Results (and error messages) longer than this are cut. */
  maxResultBytes: number
  shutdownGraceMs: number
  /** A background run stopped by a storage fault tries again after this, doubling (TASK_RUN_RETRY_MS). */
  runRetryMs: number
  /** The longest of those waits (TASK_RUN_RETRY_MAX_MS). */
  runRetryMaxMs: number
  /** Agent calls in flight at once, over every session (TASK_MAX_AGENT_CALLS). */
  maxAgentCalls: number
  /** A store shared by replicas: each execution holds the session's lease while it runs. */
  shared?: SharedSessions
  /** Sessions whose reset at restore storage refused (see OwedResets). */
  owedResets?: OwedResets
}

/**
 * Sessions with tasks a crash left running whose reset at restore storage refused (a full
 * disk): in memory they are still InProgress. The first claim of such a session counts them as
 * interrupted (or fails them, past TASK_MAX_INTERRUPTIONS) in its own save, before any runs
 * again; a claim otherwise takes an InProgress task for one whose finishing save failed, and the
 * crash would go uncounted, and a task that kills the server would loop.
 */
export interface OwedResets {
  has(sessionId: string): boolean
  /** Counts the tasks of `tasks` found running as interrupted, in the claim's draft; noted in `noted`. */
  mark(tasks: Task[], now: Date, noted: Interruption[]): void
  /** The claim that counted them landed. */
  settled(sessionId: string, noted: readonly Interruption[]): void
}

/**
 * Runs sessions' tasks, one execution per session at a time: foreground (execute,
 * execute-all), background (recorded in the session file, resumed after restart), cancel,
 * retries with backoff, and shutdown with a grace period.
 */
export class TaskRunner {
  private readonly registry: SessionRegistry
  private readonly agents: AgentRoutes
  private readonly events: EventEmitter<TaskManagerEvents>
  private readonly log: Logger
  private readonly maxResultBytes: number
  private readonly shutdownGraceMs: number
  private readonly runRetryMs: number
  private readonly runRetryMaxMs: number
  private readonly slots: CallSlots
  private readonly shared: SharedSessions | undefined
  private readonly owedResets: OwedResets | undefined
  private readonly abort = new AbortController()
  /** Aborted when shutdown begins: ends waits that would otherwise outlast it. */
  private readonly closingSignal = new AbortController()
  private readonly running = new Set<Promise<unknown>>()
  private readonly runs = new Map<string, Run>()
  /** Cancels asked (shared store) for sessions whose execution has its lease but is not running yet. */
  private readonly early = new Set<string>()
  /** Executions claimed but not registered in `runs` yet (taking the lease, reading the session): settled once they are, or failed. */
  private readonly starting = new Map<string, Promise<void>>()
  private closing = false

  constructor (options: TaskRunnerOptions) {
    this.registry = options.registry
    this.agents = options.agents
    this.events = options.events
    this.log = options.log
    this.maxResultBytes = options.maxResultBytes
    this.shutdownGraceMs = options.shutdownGraceMs
    this.runRetryMs = options.runRetryMs
    this.runRetryMaxMs = options.runRetryMaxMs
    this.slots = new CallSlots(options.maxAgentCalls)
    this.shared = options.shared
    this.owedResets = options.owedResets
    // Every running execution listens on this one signal; many at once is normal, not a leak.
    setMaxListeners(0, this.abort.signal, this.closingSignal.signal)
  }

  /** Executions (execute, execute-all, background runs) in flight now. */
  get count (): number {
    return this.running.size
  }

  /** Runs the next pending task. 409s: already executing, or nothing pending. */
  async executeNext (sessionId: string): Promise<{ task: ExecutedTask, progress: Progress }> {
    return this.exclusive(sessionId, false, async (run) => {
      const task = await this.runNext(sessionId, run)
      if (task === null) {
        // Stopped before it claimed a task (a cancel that ended its wait for a slot): nothing ran.
        if (run.signal.aborted) throw run.signal.reason instanceof CancelledError ? new CancelledError(sessionId) : run.signal.reason
        throw new NoPendingTaskError(sessionId)
      }
      return { task, progress: this.registry.existing(sessionId).progress }
    })
  }

  /** Runs every pending task in order; stops early on cancel or shutdown. */
  async executeAll (sessionId: string): Promise<{ results: ExecutedTask[], progress: Progress }> {
    return this.exclusive(sessionId, false, async (run) => {
      run.announced = true
      this.announce('run.started', { session_id: sessionId, background: false })
      const results: ExecutedTask[] = []
      // A run left recorded (not resumed at start) is finished by this one, or ended by its
      // cancel; one stopped by shutdown, or lost to another replica, is not.
      do results.push(...await this.runAll(sessionId, run))
      while (!stoppedElsewhere(run, this.closing) && !await this.endRecordedRun(sessionId, run))
      return { results, progress: this.registry.existing(sessionId).progress }
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
        }, { records: true })
      } catch (err) {
        failed(err)
        return
      }
      recorded()
      run.announced = true
      this.announce('run.started', { session_id: sessionId, background: true })
      await this.backgroundRun(sessionId, run)
    })
    execution.catch(failed)
    await marked
    return this.registry.existing(sessionId).progress
  }

  /**
   * Stops the session's running execution: the agent call is aborted and its task failed with
   * "cancelled"; a background run ends. Resolves once that is on disk. A background run whose
   * cancel storage refuses takes the cancel back and goes on waiting for storage (takeBackCancel).
   */
  async cancel (sessionId: string): Promise<{ cancelled_task_id: string | null, progress: Progress }> {
    this.registry.existing(sessionId)
    const run = this.runs.get(sessionId)
    if (run === undefined) throw new NotRunningError(sessionId)
    // Shared by cancels asked together: they all get the one outcome.
    run.cancelling ??= refusal()
    const refused = run.cancelling.promise
    run.controller.abort(new CancelledError())
    const error = await Promise.race([refused, run.done.then(() => null)])
    if (error !== null) throw error
    // The cancelled task's failure did not reach the disk (or shutdown took over): say so, not 200.
    // An execute stopped before it claimed a task answers CancelledError: this cancel did that.
    if (run.error !== null && !(run.error instanceof CancelledError)) throw run.error
    return { cancelled_task_id: run.cancelledTaskId, progress: this.registry.existing(sessionId).progress }
  }

  /**
   * This replica no longer holds the session's lease: its execution stops at once, leaving the
   * task as it is for the replica that has the session now (nothing more is saved from here).
   */
  leaseLost (sessionId: string, why: string): void {
    const run = this.runs.get(sessionId)
    if (run === undefined || run.controller.signal.aborted) return
    this.log.error({ session_id: sessionId, reason: why }, 'Lost the lease of a running session; its execution stops here and goes on where the lease is')
    run.controller.abort(new LeaseLostError(sessionId, why))
  }

  /** A cancel asked on another replica for a session this one runs: as cancel(), without waiting. */
  cancelRequested (sessionId: string): void {
    const run = this.runs.get(sessionId)
    if (run === undefined) {
      // Its execution may be starting (lease taken, run not registered yet): it checks this.
      if (this.registry.find(sessionId) !== null && this.registry.existing(sessionId).executing) this.early.add(sessionId)
      return
    }
    if (run.controller.signal.aborted) return
    this.log.info({ session_id: sessionId }, 'Cancel asked on another replica')
    // Nobody here waits to be told it failed: it is never taken back.
    run.remoteCancel = true
    run.controller.abort(new CancelledError())
  }

  /** True while an execution (foreground or background) holds the session. */
  isRunning (sessionId: string): boolean {
    return this.runs.has(sessionId)
  }

  /** Once an execution starting on the session (taking its lease, reading it) runs or failed to start; at once when none is. */
  async started (sessionId: string): Promise<void> {
    await this.starting.get(sessionId)
  }

  /** What a running background run is waiting for before it goes on, if anything. */
  waitingFor (sessionId: string): Waiting | null {
    return this.runs.get(sessionId)?.waiting ?? null
  }

  /**
   * A live-view event, then the session's progress after it; called once the change is durable.
   * Nothing is built when nobody listens (no stream plugin), so the hot path stays as it was.
   */
  announce (name: TaskEventName, data: TaskEventData, progress = true): void {
    if (this.events.listenerCount('task-event') === 0) return
    this.events.emit('task-event', name, data)
    if (progress) this.announceProgress(data.session_id)
  }

  /** The session's progress as a `progress` event, when anyone listens and the session is active. */
  announceProgress (sessionId: string): void {
    if (this.events.listenerCount('task-event') === 0 || this.registry.find(sessionId) === null) return
    const { progress: p, file } = this.registry.existing(sessionId)
    const running = this.runs.has(sessionId)
    const waiting = this.waitingFor(sessionId)
    // The server's time of the change (updated_at): a client sorting by it need not trust its own clock.
    this.events.emit('task-event', 'progress', {
      session_id: sessionId, total: p.total, completed: p.completed, failed: p.failed, pending: p.pending, in_progress: p.in_progress, all_done: p.all_done, percentage: p.percentage, running, updated_at: file.updated_at, ...(waiting !== null && { waiting })
    })
  }

  /**
   * Stops starting tasks, gives running executions the grace period to finish, then aborts
   * their agent calls (their tasks stay InProgress on disk and run again after restart).
   */
  async shutdown (): Promise<void> {
    this.closing = true
    this.closingSignal.abort()
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

  private async exclusive<R> (sessionId: string, background: boolean, body: (run: Run) => Promise<R>): Promise<R> {
    if (this.closing) throw new ShuttingDownError()
    if (!this.registry.claim(sessionId)) throw new SessionBusyError(sessionId)
    this.early.delete(sessionId)
    let lease: { epoch: string, cancelRequested: boolean } | null = null
    if (this.shared !== undefined) {
      let started!: () => void
      this.starting.set(sessionId, new Promise<void>((resolve) => { started = resolve }))
      try {
        lease = await this.shared.acquire(sessionId)
        // What other replicas did to it before the lease was taken is what this run starts from.
        await this.registry.sync(sessionId)
      } catch (err) {
        this.registry.release(sessionId)
        if (lease !== null) await this.giveBack(sessionId, lease.epoch, err)
        throw err
      } finally {
        // Before `runs` is set below, with no await between: a cancel waiting on it finds the run.
        this.starting.delete(sessionId)
        started()
      }
    }
    const controller = new AbortController()
    const joined = anySignal([this.abort.signal, controller.signal])
    let ended!: () => void
    const run: Run = {
      controller,
      signal: joined.signal,
      releaseSignal: joined.release,
      cancelling: null,
      remoteCancel: false,
      background,
      cancelledTaskId: null,
      error: null,
      waiting: null,
      unsaved: null,
      announced: false,
      claimed: false,
      executed: 0,
      drained: false,
      done: new Promise<void>((resolve) => { ended = resolve })
    }
    // Set before the body starts, so what it announces first already reads as running.
    this.runs.set(sessionId, run)
    // A cancel that came while the lease was being taken (or was waiting for this replica's run).
    if (lease?.cancelRequested === true || this.early.delete(sessionId)) controller.abort(new CancelledError())
    const execution = body(run)
    this.running.add(execution)
    try {
      return await execution
    } catch (err) {
      run.error = err as Error
      throw err
    } finally {
      run.releaseSignal()
      this.running.delete(execution)
      this.runs.delete(sessionId)
      this.registry.release(sessionId)
      this.early.delete(sessionId)
      if (lease !== null) await this.giveBack(sessionId, lease.epoch, run.error)
      if (run.announced) this.announceEnd(sessionId, run)
      // A single execute says no run.*: its last progress (its only one after the task ended) says it stopped running.
      else if (run.claimed) this.announceProgress(sessionId)
      // Only now: whoever waits on `done` (cancel) must see the session free.
      ended()
    }
  }

  /**
   * Gives the session's lease back (shared store); a failure only means it runs out by itself.
   * After a run that ended on a storage failure it is not waited for: the database is likely out
   * of reach, and the answer (a 503 already) would wait a connect and a statement timeout more.
   */
  private async giveBack (sessionId: string, epoch: string, ended: unknown): Promise<void> {
    const given = this.shared?.release(sessionId, epoch).catch((err: Error) => {
      this.log.warn({ session_id: sessionId, err }, 'Could not give the lease back; it runs out by itself')
    })
    if (!(ended instanceof StorageError)) await given
  }

  /** How a run that said run.started ended; a run stopped by shutdown resumes later and says nothing. */
  private announceEnd (sessionId: string, run: Run): void {
    // Lost to another replica: the run goes on there, which says how it ends.
    if (lostLease(run)) return
    // A cancel after the last task ended (while the run's record was being cleared) stopped nothing.
    if (run.controller.signal.aborted && !run.drained) {
      this.announce('run.cancelled', { session_id: sessionId, background: run.background, task_id: run.cancelledTaskId ?? undefined, executed: run.executed })
    } else if (!(this.closing && (run.background || run.error !== null))) {
      this.announce('run.finished', { session_id: sessionId, background: run.background, executed: run.executed, ...(run.error !== null && { error: run.error.message }) })
    }
  }

  private async runAll (sessionId: string, run: Run): Promise<ExecutedTask[]> {
    const results: ExecutedTask[] = []
    // A pass after one that found nothing left (a task added since): drained only if it is too.
    run.drained = false
    for (;;) {
      // Once shutdown begins no new task starts; running ones get the grace period. A cancel
      // still records the task whose ending storage refused (as cancelled).
      const cancelledUnsaved = run.unsaved !== null && run.controller.signal.aborted && !this.closing
      if ((run.signal.aborted || this.closing) && !cancelledUnsaved) break
      const task = await this.runNext(sessionId, run)
      if (task === null) {
        run.drained = !run.signal.aborted
        break
      }
      results.push(task)
      run.executed++
    }
    return results
  }

  /**
   * A background run: ends by clearing its record, unless shutdown interrupts it (then it
   * resumes after restart). A storage fault (a full or failing disk) does not end it: it waits,
   * with backoff, and goes on by itself once saves succeed again.
   */
  private async backgroundRun (sessionId: string, run: Run): Promise<void> {
    // TASK_RUN_RETRY_MAX_MS is the longest wait, the first one included.
    let delay = Math.min(this.runRetryMs, this.runRetryMaxMs)
    for (;;) {
      try {
        await this.runAll(sessionId, run)
        // Stopped by shutdown: the record stays, so the run resumes after restart (or on
        // another replica); lost to another replica: it goes on there.
        if (stoppedElsewhere(run, this.closing)) return
        if (!await this.endRecordedRun(sessionId, run)) continue
        this.log.info({ session_id: sessionId, executed: run.executed, cancelled: run.controller.signal.aborted }, 'Background run finished')
        return
      } catch (err) {
        run.error = err as Error
        if (err instanceof ShuttingDownError || err instanceof LeaseLostError) return
        const refusedCancel = err instanceof StorageError && this.takeBackCancel(sessionId, run, err)
        if (!refusedCancel && (!(err instanceof StorageError) || run.signal.aborted || this.closing)) {
          this.log.error({ session_id: sessionId, err }, 'Background run stopped')
          return
        }
        this.log.warn({ session_id: sessionId, err, retry_in_ms: delay }, 'Background run waiting for storage; it goes on by itself once saves succeed')
        run.waiting = 'storage'
        this.announceProgress(sessionId)
        await pause(delay, [run.signal, this.closingSignal.signal])
        // The mark stays through the next try, until a save of it succeeds (saved()): a try
        // storage refuses again leaves no moment in which the run looks as if it went on.
        run.error = null
        delay = Math.min(delay * 2, this.runRetryMaxMs)
        // Shutdown during the wait: the record stays and the run resumes after restart.
        if (this.closing && !run.controller.signal.aborted) return
      }
    }
  }

  /**
   * A cancel asked here whose save storage refused (a full disk: 507) changes nothing: the run
   * takes it back and stays registered, waiting for storage as before, so it goes on by itself
   * once saves succeed and can be cancelled again; memory then agrees with the disk (the task
   * InProgress, the run recorded). A task whose ending waited for storage keeps that ending; a
   * task whose agent call the cancel aborted runs again, as after a restart. False when the run
   * was not stopped by such a cancel (another replica's, or shutdown).
   */
  private takeBackCancel (sessionId: string, run: Run, err: StorageError): boolean {
    const cancelling = run.cancelling
    if (cancelling === null || run.remoteCancel || !(run.controller.signal.reason instanceof CancelledError) || this.abort.signal.aborted || this.closing) return false
    run.cancelling = null
    run.releaseSignal()
    run.controller = new AbortController()
    const joined = anySignal([this.abort.signal, run.controller.signal])
    run.signal = joined.signal
    run.releaseSignal = joined.release
    run.cancelledTaskId = null
    if (run.unsaved?.cancelled !== undefined) run.unsaved = run.unsaved.cancelled.before
    this.log.warn({ session_id: sessionId, err }, 'Cancel not saved; the background run was not cancelled and goes on once saves succeed')
    cancelling.settle(err)
    return true
  }

  /**
   * Clears the run's record; false (kept) when a run that found nothing left to run finds a task
   * added since (on a shared store, through another replica before this copy learnt of it): it
   * runs that too, as it would have had the task come a moment sooner.
   */
  private async endRecordedRun (sessionId: string, run: Run): Promise<boolean> {
    return this.registry.change(sessionId, (draft) => {
      if (draft.file === null || draft.file.background_run === undefined) return unchanged(true)
      // Shutdown meanwhile: kept too, and the next pass stops at once, leaving the record for the restart.
      if (run.drained && !run.signal.aborted && draft.file.session.tasks.some((task) => task.status === 'Pending')) return unchanged(false)
      delete draft.file.background_run
      return true
    }, { records: true })
  }

  /** Resumes background runs that a restart interrupted; their sessions hold `background_run`. */
  resumeBackgroundRuns (sessionIds: string[]): void {
    for (const sessionId of sessionIds) {
      this.log.info({ session_id: sessionId }, 'Resuming background run')
      this.startBackgroundRun(sessionId).catch((err: Error) => {
        // A host closing while it starts: the record stays, and the run resumes at the next start.
        if (err instanceof ShuttingDownError) this.log.info({ session_id: sessionId }, 'Background run not resumed: shutting down')
        else this.log.error({ session_id: sessionId, err }, 'Could not resume background run')
      })
    }
  }

  /**
   * Runs the next runnable task to its end: claim it (InProgress, on disk before any call), call
   * its agent with retries, record how it ended. null when there is no task to run. A task
   * whose ending could not be saved is recorded first, without calling its agent again.
   */
  private async runNext (sessionId: string, run: Run): Promise<ExecutedTask | null> {
    const unsaved = run.unsaved
    if (unsaved !== null) {
      run.unsaved = null
      // Cancelled while waiting for storage: the task's ending is "cancelled" after all.
      return this.record(sessionId, run, run.signal.aborted ? this.stopped(sessionId, unsaved.taskId, run, unsaved) : unsaved)
    }
    const ended = await this.callWithRetries(sessionId, run)
    return ended === null ? null : this.record(sessionId, run, ended)
  }

  /** Claims the next runnable task and calls its agent, retrying transient failures with backoff. */
  private async callWithRetries (sessionId: string, run: Run): Promise<Ending | null> {
    let taskId: string | null = null
    for (let call = 1; ; call++) {
      if (run.signal.aborted) return taskId === null ? null : this.stopped(sessionId, taskId, run)
      // A slot first (TASK_MAX_AGENT_CALLS): while waiting, the task is still Pending (or, when
      // retried, as its last call left it), and a cancel or shutdown ends the wait.
      const release = await this.slots.take([run.signal, this.closingSignal.signal]).catch(() => null)
      if (release === null) {
        if (run.signal.aborted) continue
        if (taskId === null) throw new ShuttingDownError()
        return this.putBack(sessionId, taskId)
      }
      let started: Task | null
      try {
        started = await this.claimTask(sessionId, taskId, run)
      } catch (err) {
        release()
        throw err
      }
      if (started === null) {
        release()
        if (taskId === null) return null
        throw new SessionNotFoundError(sessionId)
      }
      taskId = started.id
      run.claimed = true
      // Shutdown that began while the claim was being saved: no call starts (the task runs after restart).
      if (this.closing && !run.signal.aborted) {
        release()
        return this.putBack(sessionId, started.id)
      }
      this.announce('task.started', { session_id: sessionId, task_id: started.id, status: started.status, task_type: started.task_type, attempt: started.attempts })
      const agent = agentFor(this.agents, started.task_type)
      try {
        const value = await callAgent({ agent, task: started, sessionId, signal: run.signal, shutdownSignal: this.abort.signal }, (result, ms) => {
          this.events.emit('agent-call', { session_id: sessionId, task_id: started.id, task_type: started.task_type, agent: agent.key, attempt: started.attempts, outcome: result, ms })
        }).finally(release)
        return { taskId, outcome: this.completed(sessionId, started.id, value), agents: true }
      } catch (err) {
        if (run.signal.aborted) return this.stopped(sessionId, started.id, run)
        // Cut as the task's error is: a retry's log line must not carry a huge message whole.
        const cut = truncateUtf8(errorMessage(err), this.maxResultBytes)
        const message = cut.text
        const transient = transientFailure(err)
        if (transient !== null && call < agent.policy.max_attempts) {
          // No new call once shutdown begins: the task runs again after restart.
          if (this.closing) return this.putBack(sessionId, started.id)
          const delay = retryDelay(agent.policy, call, transient.retryAfterMs)
          this.log.warn({ session_id: sessionId, task_id: started.id, agent: agent.key, attempt: started.attempts, retry_in_ms: Math.round(delay), err: message }, 'Agent call failed; retrying')
          this.announce('task.retrying', { session_id: sessionId, task_id: started.id, status: started.status, attempt: started.attempts, retry_in_ms: Math.round(delay) })
          // Shutdown ends the wait too: no call starts after it, so waiting on only holds the close.
          await pause(delay, [run.signal, this.closingSignal.signal])
          // Shutdown that began during the wait: the task runs again after restart.
          if (this.closing && !run.signal.aborted) return this.putBack(sessionId, started.id)
          continue
        }
        // Flagged as a cut result is: the client sees that the error is not the agent's whole message.
        const outcome: Outcome = { status: 'Failed', result: null, error: message, confidence: null, ...(cut.truncated && { result_truncated: true }) }
        this.log.warn({ session_id: sessionId, task_id: started.id, agent: agent.key, attempt: started.attempts, err: outcome.error }, 'Task failed')
        return { taskId, outcome, agents: true }
      }
    }
  }

  /**
   * Shutdown came between two calls of a task: no call is in flight, so it goes back to Pending
   * as it is, not counted as an interruption at restart (a save that fails leaves it InProgress,
   * counted). Then the run stops, as shutdown stops it.
   */
  private async putBack (sessionId: string, taskId: string): Promise<never> {
    await this.registry.change(sessionId, (draft) => {
      const task = liveFile(draft).session.tasks.find((t) => t.id === taskId)
      if (task?.status !== 'InProgress') return unchanged(undefined)
      task.status = 'Pending'
    }, { records: true }).catch((err: Error) => {
      this.log.warn({ session_id: sessionId, task_id: taskId, err }, 'Could not put the task back to Pending at shutdown; restart counts it as interrupted')
    })
    throw new ShuttingDownError(`task ${taskId} will be retried after restart`)
  }

  /**
   * Marks the task InProgress (the first runnable one, or `taskId` when retrying it) and
   * resolves once that is on disk; null when there is none.
   */
  private async claimTask (sessionId: string, taskId: string | null, run: Run): Promise<Task | null> {
    const owed = this.owedResets?.has(sessionId) === true ? this.owedResets : null
    let noted: Interruption[] = []
    const claimed = await this.registry.change(sessionId, (draft) => {
      const tasks = liveFile(draft).session.tasks
      noted = []
      owed?.mark(tasks, draft.now, noted)
      // While this session is claimed nothing else runs it, so an InProgress task here is one
      // whose finishing save failed, or the one being retried: it is run (again).
      const task = taskId === null
        ? tasks.find((t) => t.status === 'Pending' || t.status === 'InProgress')
        : tasks.find((t) => t.id === taskId)
      // None left to run: the counts of an owed reset still go to disk (they failed its last task).
      if (task === undefined) return noted.length > 0 ? null : unchanged(null)
      Object.assign(task, { status: 'InProgress', started_at: isoNow(draft.now), completed_at: null, result: null, error: null, confidence: null, attempts: task.attempts + 1 })
      delete task.result_truncated
      return { ...task }
    }, { records: true })
    // Only a change written says storage works: none left to claim writes nothing.
    if (claimed !== null || noted.length > 0) saved(run)
    owed?.settled(sessionId, noted)
    // Tasks failed for their interruptions end as a run's do, on the live view too; the claimed
    // task's own events follow (a task failed so is not run: when none is left, the progress says so).
    const failed = noted.filter((note) => note.failed)
    for (const { taskId } of failed) this.announce('task.failed', { session_id: sessionId, task_id: taskId, status: 'Failed' }, false)
    if (failed.length > 0 && claimed === null) this.announceProgress(sessionId)
    return claimed
  }

  /**
   * Saves how the task ended. The agent's words (a result, an error) that do not fit the session
   * fail the task instead, with a short error that fits (records room); an ending that storage
   * refused is kept on the run, so a background run that waits for storage saves it later
   * rather than calling the agent again.
   */
  private async record (sessionId: string, run: Run, ending: Ending): Promise<ExecutedTask> {
    try {
      // A run's cancel (background or execute-all: either ends a recorded run) ends the run in the
      // same save: both land or neither does, so a cancel is never half done (the task cancelled
      // on disk, the run's record left to resume it).
      return await this.finish(sessionId, ending, run, run.announced && ending.cancelled !== undefined)
    } catch (err) {
      if (!(err instanceof SessionTooLargeError) || !ending.agents) {
        if (err instanceof StorageError) run.unsaved = ending
        throw err
      }
      const { outcome, taskId } = ending
      const what = outcome.status === 'Completed' ? 'result' : 'error'
      const bytes = Buffer.byteLength((what === 'result' ? outcome.result : outcome.error) ?? '')
      this.log.warn({ session_id: sessionId, task_id: taskId, [`${what}_bytes`]: bytes, limit: err.maxBytes }, `The agent's ${what} does not fit in the session; task failed`)
      // Failed rather than run again and again.
      const error = `the agent's ${what} (${bytes} bytes) would make the session larger than TASK_MAX_SESSION_BYTES (${err.maxBytes} bytes stored); it was not kept`
      return this.record(sessionId, run, { taskId, outcome: { status: 'Failed', result: null, error, confidence: null }, agents: false })
    }
  }

  /**
   * Records how the task's call ended: what the client is answered once it is durable. A run not
   * `announced` is a single execute, whose end announces the progress (no longer running) right after.
   * `endsRun`: the run's record (`background_run`) is cleared in the same save.
   */
  private async finish (sessionId: string, { taskId, outcome, agents }: Ending, run: Run, endsRun = false): Promise<ExecutedTask> {
    const executed = await this.registry.change(sessionId, (draft) => {
      const file = liveFile(draft)
      const task = file.session.tasks.find((t) => t.id === taskId)
      if (task === undefined) throw new SessionNotFoundError(sessionId)
      if (endsRun) delete file.background_run
      delete task.result_truncated
      Object.assign(task, outcome, { completed_at: isoNow(draft.now) })
      return { task_id: task.id, instruction: task.instruction, status: task.status, result: task.result, error: task.error, confidence: task.confidence, ...(task.result_truncated === true && { result_truncated: true }) }
    }, { records: !agents })
    saved(run)
    // Counted once durable, as the client is told (metrics: tasks finished per second).
    this.events.emit('task-finished', { session_id: sessionId, task_id: taskId, status: executed.status as 'Completed' | 'Failed' })
    this.announce(executed.status === 'Completed' ? 'task.completed' : 'task.failed', { session_id: sessionId, task_id: executed.task_id, status: executed.status }, run.announced)
    return executed
  }

  private completed (sessionId: string, taskId: string, value: ExecutionResult): Outcome {
    const cut = truncateUtf8(value.result, this.maxResultBytes)
    const truncated = cut.truncated || value.truncated === true
    if (truncated) this.log.warn({ session_id: sessionId, task_id: taskId, limit: this.maxResultBytes }, 'Agent result truncated')
    return { status: 'Completed', result: cut.text, error: null, confidence: value.confidence ?? null, ...(truncated && { result_truncated: true }) }
  }

  /**
   * The run was stopped mid-task: shutdown leaves the task InProgress on disk; cancel fails it.
   * `before`: the task's ending that was waiting for storage when the cancel came.
   */
  private stopped (sessionId: string, taskId: string, run: Run, before: Ending | null = null): Ending {
    const reason: unknown = run.controller.signal.reason
    if (reason instanceof LeaseLostError) throw reason
    if (this.abort.signal.aborted) throw new ShuttingDownError(`task ${taskId} was interrupted by shutdown; it runs again after restart`)
    run.cancelledTaskId = taskId
    this.log.warn({ session_id: sessionId, task_id: taskId }, 'Task cancelled')
    return { taskId, outcome: { status: 'Failed', result: null, error: 'cancelled', confidence: null }, agents: false, cancelled: { before } }
  }
}

/** A save of the run succeeded: storage works again, so the run waits for it no more (before its events tell so). */
function saved (run: Run): void {
  run.waiting = null
}

/** What cancel() waits on besides the run's end: a refusal that settles with the error of a cancel taken back. */
function refusal (): { promise: Promise<Error | null>, settle: (err: Error | null) => void } {
  let settle!: (err: Error | null) => void
  const promise = new Promise<Error | null>((resolve) => { settle = resolve })
  return { promise, settle }
}

/** The run was stopped by shutdown (not cancelled) or lost to another replica: it goes on after restart, or there. */
function stoppedElsewhere (run: Run, closing: boolean): boolean {
  return (closing && !run.controller.signal.aborted) || lostLease(run)
}

/** The run stopped because this replica lost the session's lease. */
function lostLease (run: Run): boolean {
  return run.controller.signal.reason instanceof LeaseLostError
}

/** What a run can be waiting for: today only storage (a full or failing disk). */
export type Waiting = 'storage'

type Outcome = Pick<Task, 'status' | 'result' | 'error' | 'confidence' | 'result_truncated'>

/** How a task ended; `agents`: the outcome carries the agent's words (held to TASK_MAX_SESSION_BYTES), not only the run's. */
interface Ending {
  taskId: string
  outcome: Outcome
  agents: boolean
  /** A cancel's ending, and the one it replaced (null: the task's call was aborted): kept if the cancel is taken back. */
  cancelled?: { before: Ending | null }
}

/** One execution holding a session: its cancel switch and how it ended. */
interface Run {
  controller: AbortController
  /** Aborted by cancel or by shutdown after the grace period. */
  signal: AbortSignal
  /** Stops `signal` listening to its sources. */
  releaseSignal: () => void
  /** Set by cancel() while it waits: settled with the error of a cancel the run took back (takeBackCancel). */
  cancelling: { promise: Promise<Error | null>, settle: (err: Error | null) => void } | null
  /** Cancelled by another replica's request (cancelRequested). */
  remoteCancel: boolean
  background: boolean
  cancelledTaskId: string | null
  /** Why the execution failed, if it did (a failed save, shutdown). */
  error: Error | null
  /** A background run waiting for storage to work again before it goes on. */
  waiting: Waiting | null
  /** How a task ended when storage refused to save it: saved first when the run goes on. */
  unsaved: Ending | null
  /** It said run.started, so it says how it ended. */
  announced: boolean
  /** It marked a task InProgress. */
  claimed: boolean
  /** Tasks it ran to an end. */
  executed: number
  /** It ran out of pending tasks before any cancel or shutdown. */
  drained: boolean
  /** Resolves (never rejects) once the execution has ended and let go of the session. */
  done: Promise<void>
}
