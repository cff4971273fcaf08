import type { EventEmitter } from 'node:events'
import { SessionBusyError } from '../errors.js'
import { unchanged } from '../session/draft.js'
import type { SessionRegistry } from '../session/registry.js'
import { isoNow, type Task } from '../session/session.js'
import type { SharedSessions, SweptSession } from '../store/store.js'
import type { Logger, TaskManagerEvents } from '../types.js'
import type { TaskRunner } from './task-runner.js'

/** A task found running at restore or takeover: its interruptions now, and whether that failed it. */
export interface Interruption {
  taskId: string
  count: number
  failed: boolean
}

export interface InterruptionsOptions {
  registry: SessionRegistry
  runner: TaskRunner
  events: EventEmitter<TaskManagerEvents>
  log: Logger
  /** Interruptions after which a task is failed rather than run again (TASK_MAX_INTERRUPTIONS). */
  maxInterruptions: number
  /** Whether a background run a gone replica left goes on here (TASK_RESUME_ON_START). */
  resumeOnStart: boolean
  shuttingDown: () => boolean
}

/**
 * Tasks a crash, a shutdown or a gone replica left running: put back to Pending (or failed past
 * TASK_MAX_INTERRUPTIONS), at restore or when a sweep takes a session over from its replica.
 */
export class Interruptions {
  constructor (private readonly options: InterruptionsOptions) {}

  /**
   * A task found running at restore was interrupted by a crash or shutdown. It runs again,
   * unless that has happened TASK_MAX_INTERRUPTIONS times: a task that kills the process must not
   * loop forever. Noted in `noted`, with whether that failed it.
   */
  mark (task: Task, now: Date, noted: Interruption[]): void {
    const count = (task.interruptions ?? 0) + 1
    task.interruptions = count
    const failed = count >= this.options.maxInterruptions
    if (failed) Object.assign(task, { status: 'Failed', error: `interrupted ${count} time${count === 1 ? '' : 's'}`, result: null, confidence: null, completed_at: isoNow(now) })
    else task.status = 'Pending'
    noted.push({ taskId: task.id, count, failed })
  }

  /** mark, for every task of `tasks` found running. */
  markRunning (tasks: readonly Task[], now: Date, noted: Interruption[]): void {
    for (const task of tasks) if (task.status === 'InProgress') this.mark(task, now, noted)
  }

  /** Logs interrupted tasks once their reset is durable (a reset that failed left them as they were); those failed count as finished. */
  report (sessionId: string, noted: readonly Interruption[]): void {
    for (const { taskId, count, failed } of noted) {
      if (failed) this.options.log.error({ session_id: sessionId, task_id: taskId, interruptions: count }, 'Task interrupted too often; failed')
      else this.options.log.warn({ session_id: sessionId, task_id: taskId, interruptions: count }, 'Task was interrupted; set back to Pending')
    }
    this.failedHere(sessionId, noted.filter((note) => note.failed).map((note) => note.taskId))
  }

  /** Tasks failed here rather than by a run (interrupted too often, cancelled while their replica was gone), once durable: counted as finished, as a run's are. */
  private failedHere (sessionId: string, taskIds: readonly string[]): void {
    for (const taskId of taskIds) this.options.events.emit('task-finished', { session_id: sessionId, task_id: taskId, status: 'Failed' })
  }

  /**
   * A session a sweep claimed (its holder is gone): its interrupted task goes back to Pending,
   * counted once (or is failed as cancelled, when a cancel was asked); then its background run
   * goes on here. False when it failed (a later sweep tries again); never rejects.
   */
  async takeOver (shared: SharedSessions, swept: SweptSession): Promise<boolean> {
    return this.claim(shared, swept).then(() => true, (err: unknown) => {
      if (!(err instanceof SessionBusyError)) this.options.log.error({ session_id: swept.sessionId, err }, 'Could not take over a session whose replica is gone; a later sweep tries again')
      return false
    })
  }

  /**
   * takeOver's work, and a cancel's of a session whose replica is gone; rejects with what failed.
   * The lease is given back in every case (a run that goes on holds one of its own, taken again,
   * a newer epoch); a cancel it failed to apply stays asked in the row, for the next claim.
   */
  async claim (shared: SharedSessions, { sessionId, epoch, cancelRequested }: SweptSession): Promise<void> {
    const registry = this.options.registry
    // This process runs it already (it took the lease after the sweep did): nothing to take over.
    const runningHere = (): boolean => registry.find(sessionId) !== null && registry.existing(sessionId).executing
    let applied = false
    try {
      if (runningHere()) {
        applied = true
        return
      }
      let failed: string[] = []
      let noted: Interruption[] = []
      const resume = await registry.change(sessionId, (draft) => {
        failed = []
        noted = []
        const file = draft.file
        if (file === null || runningHere()) return unchanged(false)
        const interrupted = file.session.tasks.filter((task) => task.status === 'InProgress')
        if (cancelRequested) {
          for (const task of interrupted) {
            Object.assign(task, { status: 'Failed', result: null, error: 'cancelled', confidence: null, completed_at: isoNow(draft.now) })
            failed.push(task.id)
          }
          delete file.background_run
          return false
        }
        for (const task of interrupted) this.mark(task, draft.now, noted)
        const run = file.background_run !== undefined
        return interrupted.length === 0 ? unchanged(run) : run
      }, { fresh: true, records: true })
      applied = true
      // Logged once saved: a change may be applied again (a version conflict) or fail to save.
      for (const taskId of failed) this.options.log.warn({ session_id: sessionId, task_id: taskId }, 'Task cancelled (asked while its replica was gone)')
      this.failedHere(sessionId, failed)
      this.report(sessionId, noted)
      // TASK_RESUME_ON_START=false: the run's record stays (and the lease goes back) until a
      // replica started with true, or an execute-all, carries it on.
      if (resume && !this.options.shuttingDown() && !this.options.resumeOnStart) {
        this.options.log.warn({ session_id: sessionId }, 'Background run of a replica that is gone not resumed (TASK_RESUME_ON_START=false); it resumes on a replica started with it true, or ends with an execute-all')
      } else if (resume && !this.options.shuttingDown()) {
        this.options.log.info({ session_id: sessionId }, 'Resuming background run of a replica that is gone')
        await this.options.runner.startBackgroundRun(sessionId)
      }
    } finally {
      await shared.release(sessionId, epoch, applied).catch((err: Error) => { this.options.log.warn({ session_id: sessionId, err }, 'Could not give the lease back; it runs out by itself') })
    }
  }
}
