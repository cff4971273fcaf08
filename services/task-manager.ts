import type { Static } from '@sinclair/typebox'
import type { StatsResponse } from '../schemas/api.js'
import { ALL_SESSIONS } from '../schemas/session.js'
import { MANAGER_SETTINGS, resolveSettings, type ManagerSettings } from '../schemas/options.js'
import { EventEmitter } from 'node:events'
import type { CommandRuntime } from './runner/agents/command.js'
import type { AgentsConfig } from './runner/agents/spec.js'
import { DiskWatch } from './store/disk-space.js'
import type { ArchivedSummary } from './archive/archive-index.js'
import { ArchivePasses } from './archive/archive-passes.js'
import { ArchivedSessions, archivedView, type ArchivedCopy, type ArchivedSessionSummary, type RetentionCutoffs } from './archive/archived-sessions.js'
import {
  IdempotencyKeyReusedError, InvalidInstructionsError, SessionIdCaseConflictError, SessionTooLargeError, InvalidSessionIdError, LimitExceededError, NotReadyError, NotRunningError, SessionLimitError, SessionBusyError, SessionNotFoundError, ShuttingDownError, StaleArchivedCopyError,
  TaskNotFailedError, TaskNotFoundError, type PassFailure, TaskvaultError
} from './errors.js'
import { setTimeout as sleep } from 'node:timers/promises'
import { resolveAgents, type AgentRoutes, type Executors } from './runner/executors.js'
import { appendTasks, checkCreate, listOrder, newSessionFile, progressOf, specsDigest, type Progress, type SessionFile, type Task, type TaskSpec } from './session/session.js'
import { isBlank } from './session/parser.js'
import { liveFile, unchanged } from './session/draft.js'
import { SessionRegistry, type NewestFirst, type SessionSummary } from './session/registry.js'
import { WriteBackRetries } from './session/write-back-retries.js'
import type { LoadFailure, SessionStore, SharedSessions } from './store/store.js'
import { Sweeper } from './replicas/sweeper.js'
import { noop } from './noop.js'
import { Interruptions, type Interruption } from './runner/interruptions.js'
import { TaskRunner, type Waiting } from './runner/task-runner.js'
import type { ExecutedTask, Logger, RestoreReport, TaskManagerEvents } from './types.js'

export type { AgentCallEvent, ExecutedTask, Logger, RestoreReport, TaskFinishedEvent, TaskManagerEvents } from './types.js'

export interface TaskManagerOptions extends Partial<ManagerSettings> {
  store: SessionStore
  /** Programmatic agents by task type or `default`; they take precedence over `agents`. */
  executors?: Executors
  /** Configured agents (the TASK_AGENTS setting, parsed). Unset: the echo demo agent. */
  agents?: AgentsConfig
  /** Where agents read the secrets their specs name (default process.env). */
  env?: NodeJS.ProcessEnv
  /** How command agents end and are contained (default: a 200 ms drain, the process group only). */
  command?: CommandRuntime
  clock?: () => Date
  logger?: Logger
  /**
   * Loads and changes sessions but runs none by itself: no background run is resumed at
   * restore (its record stays for a server) and no sweeper takes sessions over. The CLI's
   * maintenance passes, which must never call an agent.
   */
  passive?: boolean
}

/** The seed's counts plus storage figures: what GET /stats serves. */
export type ManagerStats = Static<typeof StatsResponse>

/** Which sessions a list of every session shows. */
export type ArchivedFilter = 'exclude' | 'include' | 'only'

export { ALL_SESSIONS }

const silent: Logger = { info () {}, warn () {}, error () {} }

/** A keyed create met its key in this replica's copy: judged again on the stored session. */
class StaleCopyError extends Error {}

/**
 * Owns the sessions: restores them, appends tasks, runs them one at a time per session
 * through executors chosen by task type, and shuts down without losing acknowledged work.
 */
export class TaskManager {
  readonly registry: SessionRegistry
  readonly archived: ArchivedSessions
  readonly events = new EventEmitter<TaskManagerEvents>()
  private readonly store: SessionStore
  readonly agents: AgentRoutes
  /** Free space of the storage, read on demand and on a timer; warns when it runs low. */
  readonly disk: DiskWatch
  /** TaskManagerOptions.passive. */
  private readonly passive: boolean
  /** stopBeforeStart() was called: the restore resumes no run and takes nothing over. */
  private startStopped = false
  /** Every setting the manager runs with: the options given, the settings' defaults for the rest. */
  private readonly settings: ManagerSettings
  private readonly clock: () => Date
  private readonly log: Logger
  private readonly runner: TaskRunner
  private restored: RestoreReport | null = null
  private stopping: Promise<void> | null = null
  /** A store shared by several replicas (PostgreSQL): leases, sweeps, and reads checked against the rows. */
  private readonly shared: SharedSessions | undefined
  private readonly sweeper: Sweeper | null
  private readonly writeBacks: WriteBackRetries
  private readonly passes: ArchivePasses
  private readonly interruptions: Interruptions
  /** Sessions whose reset of interrupted tasks at restore storage refused: their next claim counts them (OwedResets). */
  private readonly owedResets = new Set<string>()
  private readonly unsubscribe: () => void

  constructor (options: TaskManagerOptions) {
    this.store = options.store
    this.agents = resolveAgents(options.executors, options.agents, options.env, options.command)
    const settings = this.settings = resolveSettings(MANAGER_SETTINGS, options)
    this.clock = options.clock ?? (() => new Date())
    this.log = options.logger ?? silent
    this.writeBacks = new WriteBackRetries({ retry: async () => this.registry.retryWriteBacks(), retryMs: settings.runRetryMs, retryMaxMs: settings.runRetryMaxMs, log: this.log })
    this.registry = new SessionRegistry({ store: this.store, autoSave: settings.autoSave, clock: this.clock, writeBackFailed: this.writeBacks.failed })
    this.runner = new TaskRunner({
      registry: this.registry,
      agents: this.agents,
      events: this.events,
      log: this.log,
      maxResultBytes: settings.maxResultBytes,
      shutdownGraceMs: settings.shutdownGraceMs,
      runRetryMs: settings.runRetryMs,
      runRetryMaxMs: settings.runRetryMaxMs,
      maxAgentCalls: settings.maxAgentCalls,
      shared: this.store.shared,
      owedResets: {
        has: (sessionId) => this.owedResets.has(sessionId),
        mark: (tasks, now, noted) => { this.interruptions.markRunning(tasks, now, noted) },
        settled: (sessionId, noted) => {
          this.owedResets.delete(sessionId)
          this.interruptions.report(sessionId, noted)
        }
      }
    })
    const shared = this.shared = this.store.shared
    this.passive = options.passive === true
    this.interruptions = new Interruptions({
      registry: this.registry,
      runner: this.runner,
      events: this.events,
      log: this.log,
      maxInterruptions: settings.maxInterruptions,
      resumeOnStart: settings.resumeOnStart,
      // A shutdown while starting too: a session the first sweep claims then is not resumed.
      shuttingDown: () => this.shuttingDown || this.startStopped
    })
    this.sweeper = shared === undefined || this.passive
      ? null
      : new Sweeper({ shared, intervalMs: settings.sweepIntervalMs, batch: settings.sweepBatch, backoffMaxMs: settings.sweepBackoffMaxMs, takeOver: async (swept) => this.interruptions.takeOver(shared, swept), resumeRuns: settings.resumeOnStart, recheck: async () => this.recheck(), log: this.log })
    const leaseLost = (sessionId: string, why: string): void => { this.runner.leaseLost(sessionId, why) }
    const cancel = (sessionId: string): void => { this.runner.cancelRequested(sessionId) }
    this.store.events?.on('lease-lost', leaseLost)
    this.store.events?.on('cancel', cancel)
    this.unsubscribe = () => {
      this.store.events?.off('lease-lost', leaseLost)
      this.store.events?.off('cancel', cancel)
    }
    this.archived = new ArchivedSessions({ registry: this.registry, store: this.store, logger: this.log })
    this.passes = new ArchivePasses({
      registry: this.registry,
      archived: this.archived,
      shared: this.shared,
      pageSize: settings.sweepBatch,
      shuttingDown: () => this.shuttingDown,
      announce: (name, data) => { this.runner.announce(name, data) },
      log: this.log
    })
    const store = this.store
    this.disk = new DiskWatch({
      read: async () => (store.space === undefined ? null : store.space()),
      warnRatio: settings.diskWarnRatio,
      intervalMs: settings.diskCheckIntervalMs,
      maxAgeMs: settings.diskMaxAgeMs,
      location: store.location,
      logger: this.log
    })
  }

  /** True once restore has finished and until shutdown begins, while the store can write. */
  get ready (): boolean {
    return this.notReady() === null
  }

  /** Why the service is not ready (restoring, shutting down, its storage lock lost), or null when it is. */
  notReady (): TaskvaultError | null {
    if (this.restored === null || this.stopping !== null) return new NotReadyError()
    return this.store.unwritable?.() ?? null
  }

  /** Why the service is not ready, asking the store whether it answers now (a database round trip). */
  async checkReady (): Promise<TaskvaultError | null> {
    return this.notReady() ?? await this.store.check?.() ?? null
  }

  /** Throws the store's refusal when it can no longer write (a pass of writes should not start). */
  assertWritable (): void {
    const refusal = this.store.unwritable?.() ?? null
    if (refusal !== null) throw refusal
  }

  /** Active sessions (archived ones aside). */
  get sessionCount (): number {
    return this.registry.size
  }

  /** Executions (execute, execute-all, background runs) in flight now. */
  get runningCount (): number {
    return this.runner.count
  }

  get shuttingDown (): boolean {
    return this.stopping !== null
  }

  /**
   * Shutdown came while the service starts: the restore (under way, or to come) still loads every
   * session, but resumes no background run and takes no session over, so no task is claimed (its
   * `attempts` counted) only to be stopped at once. They resume at the next start.
   */
  stopBeforeStart (): void {
    this.startStopped = true
    // A first sweep under way ends after the batch in flight, claiming no more.
    this.sweeper?.stop().catch((err: unknown) => { this.log.warn({ err }, 'Could not stop the sweep while starting') })
  }

  /** Loads every stored session; interrupted tasks go back to Pending so they run again. */
  async restore (): Promise<RestoreReport> {
    const started = performance.now()
    // Logged as each is final: a restore that stops later has still moved those files.
    const failed = (failure: LoadFailure): void => {
      this.log.error({ file: failure.name, moved_to: failure.movedTo, reason: failure.reason }, failure.movedTo !== null
        ? 'Could not load a task session; set aside'
        : this.store.kind === 'file'
          ? 'Could not load a task session; it could not be moved to corrupt/ either, so it is left where it is and no save of that id replaces it'
          // PostgreSQL sets no row aside: the row stays, and reads of that session fail until it is mended or deleted.
          : 'Could not load a task session; its row is left as it is and no save of that id replaces it')
    }
    const { sessions, failures, removedTempFiles, ignoredFiles = [] } = await this.store.loadAll({ concurrency: this.settings.restoreConcurrency, failed })
    if (removedTempFiles > 0) this.log.warn({ count: removedTempFiles }, 'Removed temp files left by interrupted saves')
    if (ignoredFiles.length > 0) {
      this.log.warn({ count: ignoredFiles.length, files: ignoredFiles.slice(0, IGNORED_FILES_NAMED) },
        'Files ending in .json whose names are no session id (<session id>.json, the id of letters, digits, _ or -) are in the storage folder; they are no sessions and were left alone')
    }
    let resetTasks = 0
    const resets: Array<Promise<unknown>> = []
    const backgroundRuns: string[] = []
    for (const { file, bytes } of sessions) {
      // Loaded as stored; a reset then goes through a normal durable change.
      this.registry.load(file, bytes)
      // Shared with other replicas: a running task may be theirs. The sweeper claims the
      // sessions whose holder is gone and resets and resumes those (takeOver).
      if (this.shared !== undefined) continue
      if (file.background_run !== undefined) backgroundRuns.push(file.session_id)
      const interrupted = file.session.tasks.filter((task) => task.status === 'InProgress')
      if (interrupted.length === 0) continue
      resetTasks += interrupted.length
      let noted: Interruption[] = []
      resets.push(this.registry.change(file.session_id, (draft) => {
        noted = []
        this.interruptions.markRunning(liveFile(draft).session.tasks, draft.now, noted)
      }, { records: true }).then(() => { this.interruptions.report(file.session_id, noted) }, (err: Error) => {
        this.owedResets.add(file.session_id)
        this.log.error({ session_id: file.session_id, err }, 'Could not save the reset of interrupted tasks; the next run of the session counts them first')
      }))
    }
    await Promise.all(resets)
    await this.store.openArchive({ concurrency: this.settings.restoreConcurrency })
    const ms = Math.round((performance.now() - started) * 100) / 100
    // As /stats counts them: a copy left behind an active session is no archived session.
    const archivedSessions = this.archived.totals.sessions
    this.restored = { sessions: sessions.length, archivedSessions, failedLoads: failures.length, resetTasks, ms }
    this.log.info({ sessions: sessions.length, archived: archivedSessions, failed_loads: failures.length, ms }, `Restored ${sessions.length} task sessions from ${this.store.kind === 'file' ? 'disk' : 'the database'}`)
    // All are served; only new ones are refused, which an operator who lowered the bound should hear of now.
    if (sessions.length >= this.settings.maxSessions) {
      this.log.warn({ sessions: sessions.length, max_sessions: this.settings.maxSessions }, 'TASK_MAX_SESSIONS is reached by the sessions restored: creating a new one answers 507 until some are archived or deleted')
    }
    this.events.emit('restore', this.restored)
    this.disk.start()
    if (this.startStopped) {
      if (backgroundRuns.length > 0) this.log.info({ sessions: backgroundRuns.length }, 'Background runs not resumed: shutting down while starting; they resume at the next start')
      return this.restored
    }
    // Shared: what restore leaves to the sweeper (a restarted replica's own sessions, under the
    // same TASK_REPLICA_ID, and any whose holder is gone) is taken over before the service is ready.
    await this.sweeper?.start()
    if (this.passive) return this.restored
    if (this.settings.resumeOnStart) this.runner.resumeBackgroundRuns(backgroundRuns)
    else if (backgroundRuns.length > 0) this.log.warn({ sessions: backgroundRuns.length }, 'Background runs interrupted by the restart were not resumed (TASK_RESUME_ON_START=false); they resume on a start with it true, or end with an execute-all')
    return this.restored
  }

  /**
   * The next TASK_SWEEP_RECHECK sessions held here, brought up to their rows: another replica
   * may have deleted or archived one (its copy here would hold memory, count against
   * TASK_MAX_SESSIONS and show in /metrics until a request named it) or changed it. The store
   * reads them in batches, and a document only when its version moved. Never rejects.
   */
  private async recheck (): Promise<void> {
    const ids = this.registry.nextIdle(this.settings.sweepRecheck)
    await Promise.all(ids.map(async (id) => this.registry.sync(id).catch(noop)))
  }

  /**
   * Appends tasks to a session, creating it (or bringing it back from the archive) if needed.
   * Resolves once they are durable. `key`: an Idempotency-Key;
   * the same key with the same tasks is answered again from the session (`replayed`, nothing
   * added), with other tasks refused (422).
   */
  async create (sessionId: string, specs: readonly TaskSpec[], key?: string): Promise<{ session_id: string, tasks: Task[], replayed: boolean }> {
    checkCreate(sessionId, specs)
    if (sessionId === ALL_SESSIONS) throw new InvalidSessionIdError(`session id '${ALL_SESSIONS}' is reserved`)
    this.assertOpen()
    const keyed = key === undefined || this.settings.idempotencyKeys === 0 ? null : { key, digest: specsDigest(specs) }
    let replayed = false
    /** A replay's mark was being written (shared). */
    let marking = false
    const { maxInstructionBytes, maxTasksPerSession } = this.settings
    let origin: 'created' | 'unarchived' | null = null
    // Shared: judged on this replica's copy first (no round trip); a refusal only on the stored one.
    // `mark`: a replay through another replica may be written (see below).
    const change = async (fresh: boolean, mark = true): Promise<Task[]> => this.withArchivedCopy(sessionId, (archivedCopy) => this.registry.change(sessionId, (draft) => {
      // Every check before the draft is touched: a refused change must leave it as it was.
      const known = draft.file ?? archivedCopy?.file ?? null
      const answered = keyed === null ? undefined : known?.keyed_creates?.find((entry) => entry.key === keyed.key)
      if (keyed !== null && known !== null && answered !== undefined) {
        // Shared: another replica may have deleted the session, or answered the key, since this copy was read.
        if (this.shared !== undefined && !fresh) throw new StaleCopyError()
        // An archived copy read before this change's turn may have been deleted or brought back since: read again.
        if (draft.file === null) this.archived.assertCurrent(draft, archivedCopy)
        if (answered.digest !== keyed.digest) throw new IdempotencyKeyReusedError(sessionId, keyed.key)
        replayed = true
        origin = null
        const byId = new Map(known.session.tasks.map((task) => [task.id, task]))
        const tasks = answered.task_ids.flatMap((id) => { const task = byId.get(id); return task === undefined ? [] : [{ ...task }] })
        // Answered by a change in this very batch, not yet written: this answer stands or falls with that write.
        const durable = draft.file === null || draft.before?.keyed_creates?.some((entry) => entry.key === keyed.key) === true
        // Shared: the first replay through another replica is written, marking the key. The replica
        // whose create this was may have lost its answer (a 503): it puts back the state before it
        // unless the row is no longer its own write, and that would undo what this answer acknowledges.
        if (mark && durable && this.shared !== undefined && draft.file !== null && answered.replica !== undefined && answered.replica !== this.shared.replicaId && answered.replayed !== true) {
          marking = true
          const file = liveFile(draft)
          file.keyed_creates = file.keyed_creates?.map((entry) => entry.key === keyed.key ? { ...entry, replayed: true as const } : entry)
          return tasks
        }
        return durable ? unchanged(tasks) : tasks
      }
      replayed = false
      // The limits hold for what is added now, not for a replay of what was taken under other ones;
      // the count first, as the route checks it first.
      const existing = draft.file?.session.tasks.length ?? archivedCopy?.file.session.tasks.length ?? 0
      const total = existing + specs.length
      if (total > maxTasksPerSession) {
        throw new LimitExceededError(`session '${sessionId}' would have ${total} tasks; the limit is ${maxTasksPerSession} (TASK_MAX_TASKS_PER_SESSION)`)
      }
      specs.forEach((spec, index) => {
        // As POST /create refuses one (a host may call this directly): a task with nothing to do would be run and "completed".
        if (isBlank(spec.instruction)) throw new InvalidInstructionsError(`task ${index + 1}: task instructions must not be blank`)
        const bytes = Buffer.byteLength(spec.instruction, 'utf8')
        if (bytes > maxInstructionBytes) {
          throw new LimitExceededError(`task ${index + 1} is ${bytes} bytes; the limit is ${maxInstructionBytes} (TASK_MAX_INSTRUCTION_BYTES)`)
        }
      })
      if (draft.file === null) {
        this.assertRoom()
        // Checked here too, not only when written: with auto-save off the write comes at shutdown.
        if (this.store.caseless === true) this.assertCaseFree(sessionId)
        const back = this.archived.unarchive(draft, archivedCopy)
        origin = back ? 'unarchived' : 'created'
        if (!back) draft.file = newSessionFile(sessionId, draft.now)
      } else {
        origin = null
      }
      const file = liveFile(draft)
      const added = appendTasks(file, specs, draft.now)
      if (keyed !== null) {
        const entry = { ...keyed, task_ids: added.map((task) => task.id), ...(this.shared !== undefined && { replica: this.shared.replicaId }) }
        file.keyed_creates = [...(file.keyed_creates ?? []), entry].slice(-this.settings.idempotencyKeys)
      }
      return added.map((task) => ({ ...task }))
    }, { fresh }))
    const tasks = await change(false).catch(async (err: unknown) => {
      // Another replica may have deleted or shortened the session, or answered the key (a refused
      // instruction's replay too), since this copy was read.
      if (!(err instanceof LimitExceededError || err instanceof InvalidInstructionsError || err instanceof StaleCopyError) || this.shared === undefined) throw err
      marking = false
      return await change(true)
    }).catch(async (err: unknown) => {
      // A session at TASK_MAX_SESSION_BYTES has no room for the mark: answered all the same, unmarked.
      if (!(err instanceof SessionTooLargeError) || !marking) throw err
      return await change(true, false)
    })
    if (replayed) return { session_id: sessionId, tasks, replayed }
    if (origin !== null && this.events.listenerCount('task-event') > 0) this.events.emit('task-event', origin === 'created' ? 'session.created' : 'session.unarchived', { session_id: sessionId })
    this.runner.announce('tasks.added', { session_id: sessionId, task_ids: tasks.map((task) => task.id), count: tasks.length })
    return { session_id: sessionId, tasks, replayed }
  }

  /** Refuses one more active session past TASK_MAX_SESSIONS (507). */
  /** A new id on a caseless store: no active session's id may differ from it only in case (their files would be one). */
  private assertCaseFree (sessionId: string): void {
    if (this.registry.caseTwinOf(sessionId) !== null) throw new SessionIdCaseConflictError(sessionId)
  }

  private assertRoom (): void {
    if (this.registry.sessionsAndCreates >= this.settings.maxSessions) throw new SessionLimitError(this.settings.maxSessions)
  }

  /**
   * Refuses more tasks than a session may hold (TASK_MAX_TASKS_PER_SESSION), whatever it holds
   * already: the HTTP route asks before typing what it parsed (a body of 200,000 one-line items),
   * unless the create may be a replay (an Idempotency-Key), which create() answers under any limit.
   */
  assertTaskCount (sessionId: string, count: number): void {
    const max = this.settings.maxTasksPerSession
    if (count > max) throw new LimitExceededError(`session '${sessionId}' would have ${count} tasks or more; the limit is ${max} (TASK_MAX_TASKS_PER_SESSION)`)
  }

  get (sessionId: string): SessionFile {
    return this.registry.existing(sessionId).file
  }

  progress (sessionId: string): Progress {
    return this.registry.existing(sessionId).progress
  }

  /** A page of the active sessions, newest updated first, each saying whether it runs (on any replica). */
  async list (offset: number, limit: number): Promise<{ total: number, sessions: Array<SessionSummary & { running: boolean }> }> {
    // Shared: from the rows, so every replica lists the same.
    if (this.shared !== undefined) return this.shared.listActive(offset, limit)
    return { total: this.registry.size, sessions: this.registry.summaries(offset, limit).map((s) => ({ ...s, running: this.runner.isRunning(s.session_id) })) }
  }

  /** A session, active or archived (then read from its file). */
  async find (sessionId: string): Promise<{ file: SessionFile, archived: boolean }> {
    // Shared: this copy is first checked against the row (read-your-writes across replicas).
    await this.registry.sync(sessionId)
    const active = this.registry.find(sessionId)
    if (active !== null) return { file: active, archived: false }
    const archived = await this.archived.read(sessionId)
    if (archived !== null) return { file: archived.file, archived: true }
    // Being brought back by a create: its file has left the archive but the change is still
    // in the session's queue. Waiting behind it (a change that does nothing) settles which.
    await this.registry.settle(sessionId)
    return { file: this.get(sessionId), archived: false }
  }

  /** An active session's progress from memory, or null (unknown, archived, or a shared store: ask findProgress). */
  activeProgress (sessionId: string): Progress | null {
    return this.shared !== undefined || this.registry.find(sessionId) === null ? null : this.progress(sessionId)
  }

  async findProgress (sessionId: string): Promise<{ progress: Progress, archived: boolean }> {
    await this.registry.sync(sessionId)
    if (this.registry.find(sessionId) !== null) return { progress: this.progress(sessionId), archived: false }
    const known = this.archived.knownProgress(sessionId)
    if (known !== null) return { progress: known, archived: true }
    const { file, archived } = await this.find(sessionId)
    return { progress: archived ? progressOf(file.session.tasks) : this.progress(sessionId), archived }
  }

  /** Every session, newest first, with archived ones (`include`) or only those (`only`). */
  async listWithArchived (offset: number, limit: number, filter: Exclude<ArchivedFilter, 'exclude'>): Promise<{ total: number, sessions: Array<SessionSummary | ArchivedSessionSummary> }> {
    // Shared: from the rows, as other replicas archive too.
    if (this.shared !== undefined) return this.shared.listWithArchived(offset, limit, filter)
    const archived = await this.archived.summaries()
    const active = filter === 'only' ? null : this.registry.newestFirst()
    // Both in list order: merged as far as the page goes (an active session first of one id).
    const sessions: Array<SessionSummary | ArchivedSessionSummary> = []
    let i = 0
    for (let j = 0, at = 0; at < offset + limit; at++) {
      const right = archived[j]
      const takeActive = active !== null && i < active.length && (right === undefined || listOrder(active.updatedMs(i), active.sessionId(i), Date.parse(right.updated_at), right.session_id) <= 0)
      if (!takeActive && right === undefined) break
      if (at >= offset) sessions.push(takeActive ? (active as NewestFirst).summary(i) : archivedView(right as ArchivedSummary))
      if (takeActive) i++
      else j++
    }
    return { total: (active?.length ?? 0) + archived.length, sessions }
  }

  /** Named fields, not spreads: spreads build slow dictionary-mode objects on this hot path. */
  stats (): ManagerStats {
    const t = this.registry.stats()
    const encryption = this.store.encryption()
    const storage: ManagerStats['storage'] = {
      kind: this.store.kind,
      bytes: t.bytes,
      files: t.files,
      archive_bytes: this.archived.totals.bytes,
      failed_loads: (this.restored?.failedLoads ?? 0) + this.archived.failedLoads,
      restore_ms: this.restored?.ms ?? 0
    }
    if (this.store.kind === 'file') storage.dir = this.store.location
    else storage.database = this.store.location
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
      storage,
      encryption: encryption === null ? { enabled: false } : { enabled: true, ...encryption }
    }
  }

  /** Ids of the archived sessions (from the store's index, nothing read). */
  archivedIds (): string[] {
    return this.store.archivedIds()
  }

  /** stats() with the free space of the storage (when the store reports it). */
  async statsWithSpace (): Promise<ManagerStats> {
    const stats = this.stats()
    // A shared store counts its rows itself: every replica on it answers the same.
    const counted = await this.store.totals?.()
    if (counted !== undefined) {
      const { storage, encryption, ...counts } = counted
      Object.assign(stats, counts)
      stats.encryption = encryption === null ? { enabled: false } : { enabled: true, ...encryption }
      stats.storage = { ...storage, failed_loads: stats.storage.failed_loads, restore_ms: stats.storage.restore_ms }
    }
    const space = await this.disk.read()
    if (space !== null) {
      stats.storage.free_bytes = space.free_bytes
      stats.storage.total_bytes = space.total_bytes
      stats.storage.free_ratio = space.free_ratio
    }
    return stats
  }

  /** Runs the next pending task. 409s: already executing, or nothing pending. */
  async executeNext (sessionId: string): Promise<{ task: ExecutedTask, progress: Progress }> {
    this.assertOpen()
    await this.known(sessionId)
    return this.runner.executeNext(sessionId).catch(async (err: unknown) => this.notFoundWhy(sessionId, err))
  }

  /** Runs every pending task in order; stops early on cancel or shutdown. */
  async executeAll (sessionId: string): Promise<{ results: ExecutedTask[], progress: Progress }> {
    this.assertOpen()
    await this.known(sessionId)
    return this.runner.executeAll(sessionId).catch(async (err: unknown) => this.notFoundWhy(sessionId, err))
  }

  /** Starts a background run; resolves once it is recorded in the session file. */
  async startBackgroundRun (sessionId: string): Promise<Progress> {
    this.assertOpen()
    await this.known(sessionId)
    return this.runner.startBackgroundRun(sessionId).catch(async (err: unknown) => this.notFoundWhy(sessionId, err))
  }

  /** Stops the session's running execution (its task fails with "cancelled"). */
  async cancel (sessionId: string): Promise<{ cancelled_task_id: string | null, progress: Progress }> {
    this.assertRestored()
    return this.cancelHere(sessionId).catch(async (err: unknown) => this.notFoundWhy(sessionId, err))
  }

  private async cancelHere (sessionId: string): Promise<{ cancelled_task_id: string | null, progress: Progress }> {
    if (this.shared === undefined) return this.runner.cancel(sessionId)
    // An execution starting here is waited for: cancelElsewhere would take the lease it holds.
    await this.runner.started(sessionId)
    if (this.runner.isRunning(sessionId)) return this.runner.cancel(sessionId)
    return this.cancelElsewhere(this.shared, sessionId)
  }

  /**
   * A cancel for a session this replica does not run: asked of the replica that holds its lease
   * (kept in the row and notified), and answered once that replica let go of the session. When
   * nobody holds it but a run was left behind (its replica died), this replica applies it.
   */
  private async cancelElsewhere (shared: SharedSessions, sessionId: string): Promise<{ cancelled_task_id: string | null, progress: Progress }> {
    await this.registry.sync(sessionId)
    const before = this.registry.existing(sessionId).file
    // The holder may claim a task after this read: the cancelled one is looked for among those not done yet.
    const unfinished = new Set(before.session.tasks.filter((task) => task.status === 'InProgress' || task.status === 'Pending').map((task) => task.id))
    const owner = await shared.requestCancel(sessionId)
    let busy: SessionBusyError | null = null
    if (owner === null) {
      if (!before.session.tasks.some((task) => task.status === 'InProgress') && before.background_run === undefined) throw new NotRunningError(sessionId)
      // An execution started here meanwhile: it is the one to cancel.
      await this.runner.started(sessionId)
      if (this.runner.isRunning(sessionId)) return this.runner.cancel(sessionId)
      // Left behind by a replica that is gone: claimed here and cancelled, as a sweep would.
      const lease = await shared.acquire(sessionId).catch((err: unknown) => {
        // Taken a moment ago by another replica: by its own cancel applying it (or a sweep),
        // whose outcome is read below, or by an execution started since.
        if (err instanceof SessionBusyError) return err
        throw err
      })
      // Its failure is the cancel's (503, the cancel still asked in the row): never a 200 for a cancel not applied.
      if (lease instanceof SessionBusyError) busy = lease
      else await this.interruptions.claim(shared, { sessionId, epoch: lease.epoch, cancelRequested: true })
    } else {
      await this.cancelApplied(shared, sessionId, owner)
    }
    await this.registry.sync(sessionId)
    const after = this.registry.existing(sessionId)
    const cancelled = after.file.session.tasks.find((task) => unfinished.has(task.id) && task.status === 'Failed' && task.error === 'cancelled')
    // Taken by an execution that started since, with nothing cancelled: it runs there, as a 409 says.
    if (busy !== null && cancelled === undefined) throw busy
    return { cancelled_task_id: cancelled?.id ?? null, progress: after.progress }
  }

  /**
   * Waits for the cancel asked in the row to be applied: the holder sees it by NOTIFY (or its
   * next renewal) and lets go; if it died, the replica whose sweep claims the session applies it.
   * Either way the request is cleared then.
   */
  private async cancelApplied (shared: SharedSessions, sessionId: string, owner: string | null): Promise<void> {
    const deadline = performance.now() + this.cancelWaitMs(shared)
    while (await shared.cancelPending(sessionId)) {
      if (performance.now() > deadline) throw new SessionBusyError(sessionId, owner)
      await sleep(CANCEL_POLL_MS)
    }
  }

  /**
   * How long a cancel waits for the holder to let go: a live one records the cancelled task and
   * lets go within the shutdown grace at worst; a dead one's lease runs out and a sweep applies it.
   */
  private cancelWaitMs (shared: SharedSessions): number {
    return shared.leaseMs + this.settings.sweepIntervalMs * 2 + this.settings.shutdownGraceMs + 5000
  }

  /** True while an execution (foreground or background) holds the session, here or (shared) on another replica as last read. */
  isRunning (sessionId: string): boolean {
    return this.runner.isRunning(sessionId) || (this.shared?.runningElsewhere(sessionId) ?? null) !== null
  }

  /** Shared: reads a session this replica does not know yet (another one created it), so that it can run it. */
  private async known (sessionId: string): Promise<void> {
    if (this.registry.find(sessionId) === null) await this.registry.sync(sessionId)
  }

  /**
   * Rethrows `err`; a session not found where only active ones are taken (execute, cancel) that is
   * archived is named as such. Asked once the session was not found, of the rows on a shared store
   * (another replica may have archived it, or brought it back): this replica's index may be behind.
   */
  private async notFoundWhy (sessionId: string, err: unknown): Promise<never> {
    if (!(err instanceof SessionNotFoundError) || err.archived) throw err
    // Shared: the rows, even where this replica still holds a copy from before the archive (a
    // failure to ask leaves the answer as it was: not found).
    const archived = this.shared === undefined
      ? this.archived.has(sessionId)
      : await this.shared.isArchived(sessionId).catch(() => false)
    throw archived ? new SessionNotFoundError(sessionId, true) : err
  }

  /** Shared: refuses to change a session another replica runs (SESSION_BUSY naming it). */
  private async assertNotRunningElsewhere (sessionId: string): Promise<void> {
    if (this.shared === undefined || this.runner.isRunning(sessionId)) return
    const holder = await this.shared.holder(sessionId)
    if (holder !== null) throw new SessionBusyError(sessionId, holder)
  }

  /** What the session's background run waits for before it goes on (a failing disk), if anything. */
  waitingFor (sessionId: string): Waiting | null {
    return this.runner.waitingFor(sessionId)
  }

  /** Deletes a session and its file, or its archived files. Refused while it executes. */
  async delete (sessionId: string): Promise<void> {
    this.assertRestored()
    if (this.shared !== undefined) {
      await this.registry.sync(sessionId)
      // Archived elsewhere since this replica read its index: the rows say.
      if (this.registry.find(sessionId) === null) await this.archived.read(sessionId)
      await this.assertNotRunningElsewhere(sessionId)
    }
    if (!this.archived.has(sessionId) && this.registry.find(sessionId) === null) {
      // Perhaps being brought back from the archive right now: settle behind its change first.
      await this.registry.settle(sessionId)
      this.registry.existing(sessionId)
    }
    await this.registry.change(sessionId, (draft) => {
      const archived = this.store.archivedName(sessionId) !== null
      if (!archived) liveFile(draft)
      if (draft.file !== null && this.registry.existing(sessionId).executing) throw new SessionBusyError(sessionId)
      draft.delete({ archived })
    })
    this.runner.announce('session.deleted', { session_id: sessionId })
  }

  /**
   * Puts one failed task (or every failed task) back to Pending, keeping `attempts` and
   * `interruptions`; `current_index` moves back so they run next. An archived session comes
   * back to active first. Refused while the session executes.
   */
  async retry (sessionId: string, taskId?: string): Promise<{ task_ids: string[], progress: Progress }> {
    this.assertOpen()
    await this.registry.sync(sessionId)
    await this.assertNotRunningElsewhere(sessionId)
    // Another replica may take the lease after this check: the write (leaseFree) is refused then, SESSION_BUSY.
    let unarchived = false
    const change = async (fresh: boolean): Promise<string[]> => this.withArchivedCopy(sessionId, (archivedCopy) => this.registry.change(sessionId, (draft) => {
      // Checked before the draft is touched: a refused change leaves it as it was.
      // Archived (or brought back) since its copy was read: an archive pass ran first; read it again.
      // So too when it was active then (no copy was looked for) and is gone now.
      if (draft.file === null) this.archived.assertCurrent(draft, archivedCopy)
      const source = draft.file ?? archivedCopy?.file ?? null
      if (source === null) {
        // Shared: another replica may have brought it back since this copy was read: read the row.
        if (this.shared !== undefined && !fresh) throw new StaleCopyError()
        throw new SessionNotFoundError(sessionId)
      }
      if (draft.file !== null && this.registry.existing(sessionId).executing) throw new SessionBusyError(sessionId)
      const chosen = taskId === undefined
        ? source.session.tasks.filter((task) => task.status === 'Failed')
        : source.session.tasks.filter((task) => task.id === taskId)
      if (taskId !== undefined && chosen.length === 0) throw new TaskNotFoundError(sessionId, taskId)
      const notFailed = chosen.find((task) => task.status !== 'Failed')
      if (notFailed !== undefined) throw new TaskNotFailedError(sessionId, notFailed.id, notFailed.status)
      if (chosen.length === 0) throw new TaskNotFailedError(sessionId, null, null)
      const ids = chosen.map((task) => task.id)
      if (draft.file === null) {
        // Brought back from the archive: it counts against TASK_MAX_SESSIONS like a new one.
        this.assertRoom()
        if (this.store.caseless === true) this.assertCaseFree(sessionId)
        unarchived = this.archived.unarchive(draft, archivedCopy)
      }
      for (const task of liveFile(draft).session.tasks) {
        if (!ids.includes(task.id)) continue
        Object.assign(task, { status: 'Pending', result: null, error: null, confidence: null, started_at: null, completed_at: null, retries: (task.retries ?? 0) + 1 })
        delete task.result_truncated
      }
      return ids
    }, { records: true, fresh, leaseFree: true }))
    const taskIds = await change(false).catch(async (err: unknown) => {
      if (!(err instanceof StaleCopyError)) throw err
      return change(true)
    })
    if (unarchived && this.events.listenerCount('task-event') > 0) this.events.emit('task-event', 'session.unarchived', { session_id: sessionId })
    this.runner.announce('tasks.retried', { session_id: sessionId, task_ids: taskIds, status: 'Pending' })
    return { task_ids: taskIds, progress: this.progress(sessionId) }
  }

  /** Archives the sessions finished before `cutoff` (ArchivePasses.archiveFinishedBefore). */
  async archiveFinishedBefore (cutoff: Date, failures: PassFailure[], wait = true): Promise<string[]> {
    return this.passes.archiveFinishedBefore(cutoff, failures, wait)
  }

  /** Deletes the archived sessions past their retention cutoff (ArchivePasses.pruneArchivedBefore). */
  async pruneArchivedBefore (cutoffs: RetentionCutoffs, failures: PassFailure[], wait = true): Promise<string[]> {
    return this.passes.pruneArchivedBefore(cutoffs, failures, wait)
  }

  /** The session's progress as a live-view event (when anyone listens). */
  announceProgress (sessionId: string): void {
    this.runner.announceProgress(sessionId)
  }

  /**
   * Stops taking executions, gives running ones the grace period to finish, then aborts
   * them (their tasks stay InProgress on disk and run again after restart).
   */
  beginShutdown (): Promise<void> {
    this.disk.stop()
    this.stopping ??= Promise.all([this.sweeper?.stop(), this.runner.shutdown()]).then(() => { this.unsubscribe() })
    return this.stopping
  }

  /**
   * Shuts down, then waits for every queued write (and, with auto-save off, saves everything).
   * With `last` (the host's final close, after which storage closes): changes that come later
   * are refused.
   */
  async close (options: { last?: boolean } = {}): Promise<void> {
    await this.beginShutdown()
    // No retry round begins while the queued writes finish (each may wait a statement timeout);
    // then the last try: the round under way, or one now.
    this.writeBacks.stop()
    await this.registry.drain()
    await this.writeBacks.close()
    // Changes that waited for the last write-back are written by now too.
    await this.registry.drain()
    try {
      if (!this.settings.autoSave) await this.registry.saveUnsaved()
    } finally {
      if (options.last === true) {
        this.registry.refuseChanges()
        // Changes queued while the last saves were written (auto-save off) are written too,
        // before the storage closes, whether those saves failed or not.
        await this.registry.drain()
      }
    }
  }

  /**
   * Runs `change` with the session's archived copy (ArchivedSessions.before: null when it is not
   * archived, undefined when it is active here), read beforehand because changes cannot wait
   * for I/O. If the archive changed in between, the copy is read again.
   */
  private async withArchivedCopy<R> (sessionId: string, change: (copy: ArchivedCopy) => Promise<R>): Promise<R> {
    for (let attempt = 1; ; attempt++) {
      const copy = await this.archived.before(sessionId)
      try {
        return await change(copy)
      } catch (err) {
        if (!(err instanceof StaleArchivedCopyError) || attempt >= 3) throw err
      }
    }
  }

  private assertOpen (): void {
    if (this.shuttingDown) throw new ShuttingDownError()
    this.assertRestored()
  }

  /**
   * Before the restore has loaded what is stored (a host calling the decorator from its own
   * onReady hook, which runs before ours, or before ready()), a change would not see a session
   * on disk: a create would start it over and save over its file.
   */
  private assertRestored (): void {
    if (this.restored === null) throw new NotReadyError()
  }
}

/** How often a cancel asked of another replica checks whether it let go of the session. */
const CANCEL_POLL_MS = 50

/** The restore's warning names this many of the `.json` files it left alone as no sessions; it counts them all. */
const IGNORED_FILES_NAMED = 10
