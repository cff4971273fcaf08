import { Type } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { TASK_TYPES } from '../schemas/session.js'
import { probeCgroups } from '../services/runner/agents/cgroup.js'
import type { CommandRuntime } from '../services/runner/agents/command.js'
import { parseAgentsConfig, type AgentsConfig } from '../services/runner/agents/spec.js'
import type { Executors } from '../services/runner/executors.js'
import { TaskManager } from '../services/task-manager.js'
import { checkOptions, fromSetting, FunctionOption, setting } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    taskManager: TaskManager
  }
}

export interface TaskManagerPluginOptions {
  /** Programmatic agents by task type or `default`; these take precedence over configured ones. */
  executors?: Executors
  /** Agent specs (the TASK_AGENTS shape); used instead of the TASK_AGENTS setting when given. */
  agents?: Record<string, unknown>
  /** Where agent specs' `api_key_env` and `headers_env` are looked up (default process.env). */
  env?: NodeJS.ProcessEnv
  /** Save on every change (TASK_AUTO_SAVE). */
  autoSave?: boolean
  /** Files read in parallel at restore (TASK_RESTORE_CONCURRENCY). */
  restoreConcurrency?: number
  /** How long running tasks may take to finish at shutdown (TASK_SHUTDOWN_GRACE_MS). */
  shutdownGraceMs?: number
  /** TASK_MAX_SESSIONS, TASK_MAX_TASKS_PER_SESSION, TASK_MAX_INSTRUCTION_BYTES, TASK_MAX_RESULT_BYTES. */
  maxSessions?: number
  maxTasksPerSession?: number
  maxInstructionBytes?: number
  maxResultBytes?: number
  /** Restarts that may find a task running before it is failed (TASK_MAX_INTERRUPTIONS). */
  maxInterruptions?: number
  /** Resume background runs a restart interrupted (TASK_RESUME_ON_START). */
  resumeOnStart?: boolean
  /** Waits of a background run stopped by a storage fault (TASK_RUN_RETRY_MS, TASK_RUN_RETRY_MAX_MS). */
  runRetryMs?: number
  runRetryMaxMs?: number
  /** After a command agent's program exits, how long its output may take to end (TASK_COMMAND_DRAIN_MS). */
  commandDrainMs?: number
  /** 'auto': a cgroup per command call when the host allows; 'off': the process group only (TASK_COMMAND_CGROUP). */
  commandCgroup?: 'auto' | 'off'
  /** Free-space warning threshold and check interval (TASK_DISK_WARN_RATIO, TASK_DISK_CHECK_INTERVAL_MS). */
  diskWarnRatio?: number
  diskCheckIntervalMs?: number
  /** How recent a free-space reading /stats may reuse (TASK_DISK_MAX_AGE_MS). */
  diskMaxAgeMs?: number
  /** Time source for timestamps (tests). */
  clock?: () => Date
}

/** Per key a function, or `{ run, ...policy }` (the policy is checked when the agents are resolved). */
const ExecutorOption = Type.Union([FunctionOption, Type.Object({ run: FunctionOption })])

export const ExecutorsOption = Type.Object(
  Object.fromEntries(['default', ...TASK_TYPES].map((type) => [type, Type.Optional(ExecutorOption)])),
  { additionalProperties: false }
)

export const TaskManagerOptionsSchema = Type.Object({
  executors: Type.Optional(ExecutorsOption),
  agents: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  env: Type.Optional(Type.Record(Type.String(), Type.Union([Type.String(), Type.Undefined()]))),
  maxInterruptions: fromSetting('TASK_MAX_INTERRUPTIONS'),
  resumeOnStart: fromSetting('TASK_RESUME_ON_START'),
  runRetryMs: fromSetting('TASK_RUN_RETRY_MS'),
  runRetryMaxMs: fromSetting('TASK_RUN_RETRY_MAX_MS'),
  commandDrainMs: fromSetting('TASK_COMMAND_DRAIN_MS'),
  commandCgroup: fromSetting('TASK_COMMAND_CGROUP'),
  diskWarnRatio: fromSetting('TASK_DISK_WARN_RATIO'),
  diskCheckIntervalMs: fromSetting('TASK_DISK_CHECK_INTERVAL_MS'),
  diskMaxAgeMs: fromSetting('TASK_DISK_MAX_AGE_MS'),
  autoSave: fromSetting('TASK_AUTO_SAVE'),
  restoreConcurrency: fromSetting('TASK_RESTORE_CONCURRENCY'),
  shutdownGraceMs: fromSetting('TASK_SHUTDOWN_GRACE_MS'),
  maxSessions: fromSetting('TASK_MAX_SESSIONS'),
  maxTasksPerSession: fromSetting('TASK_MAX_TASKS_PER_SESSION'),
  maxInstructionBytes: fromSetting('TASK_MAX_INSTRUCTION_BYTES'),
  maxResultBytes: fromSetting('TASK_MAX_RESULT_BYTES'),
  clock: Type.Optional(FunctionOption)
}, { additionalProperties: false })

/**
 * The task manager. Sessions are restored before the server listens (onReady); on close it
 * lets running tasks finish within the grace period, then flushes every pending write.
 * `close()` is idempotent past the grace period, so running it in both hooks costs nothing.
 */
export default fp<TaskManagerPluginOptions>(async function taskManagerPlugin (app, options) {
  checkOptions('taskvault-task-manager', TaskManagerOptionsSchema, options)
  const env = options.env ?? process.env
  const agents = agentsConfig(options.agents ?? setting(app, 'TASK_AGENTS'), env)
  const manager = new TaskManager({
    store: app.persistence,
    executors: options.executors,
    agents,
    env,
    command: await commandRuntime(app, options, agents),
    maxInterruptions: options.maxInterruptions ?? setting(app, 'TASK_MAX_INTERRUPTIONS'),
    resumeOnStart: options.resumeOnStart ?? setting(app, 'TASK_RESUME_ON_START'),
    runRetryMs: options.runRetryMs ?? setting(app, 'TASK_RUN_RETRY_MS'),
    runRetryMaxMs: options.runRetryMaxMs ?? setting(app, 'TASK_RUN_RETRY_MAX_MS'),
    diskWarnRatio: options.diskWarnRatio ?? setting(app, 'TASK_DISK_WARN_RATIO'),
    diskCheckIntervalMs: options.diskCheckIntervalMs ?? setting(app, 'TASK_DISK_CHECK_INTERVAL_MS'),
    diskMaxAgeMs: options.diskMaxAgeMs ?? setting(app, 'TASK_DISK_MAX_AGE_MS'),
    autoSave: options.autoSave ?? setting(app, 'TASK_AUTO_SAVE'),
    restoreConcurrency: options.restoreConcurrency ?? setting(app, 'TASK_RESTORE_CONCURRENCY'),
    shutdownGraceMs: options.shutdownGraceMs ?? setting(app, 'TASK_SHUTDOWN_GRACE_MS'),
    limits: {
      maxSessions: options.maxSessions ?? setting(app, 'TASK_MAX_SESSIONS'),
      maxTasksPerSession: options.maxTasksPerSession ?? setting(app, 'TASK_MAX_TASKS_PER_SESSION'),
      maxInstructionBytes: options.maxInstructionBytes ?? setting(app, 'TASK_MAX_INSTRUCTION_BYTES'),
      maxResultBytes: options.maxResultBytes ?? setting(app, 'TASK_MAX_RESULT_BYTES')
    },
    clock: options.clock,
    logger: app.log
  })
  app.decorate('taskManager', manager)
  const routing = Object.fromEntries(Object.entries(manager.agents).map(([key, agent]) => [key, agent.kind]))
  if (agents === undefined && options.executors === undefined) {
    app.log.warn('TASK_AGENTS is not set: every task goes to the echo demo agent, which returns the instruction as its result')
  }
  app.log.info({ agents: routing }, 'Agents by task type')
  app.addHook('onReady', async () => {
    await manager.restore()
  })
  // Drain in preClose, before the server waits for connections: nothing acknowledged may
  // depend on how long a client keeps its socket open. onClose flushes what came after.
  app.addHook('preClose', async () => {
    // Stop accepting connections now, not after the grace period; Fastify's own close later
    // tolerates the server being closed already.
    if (app.server.listening) app.server.close()
    await manager.close()
  })
  app.addHook('onClose', async () => manager.close())
  // Once shutdown begins, answers close their connection so the server can stop promptly.
  app.addHook('onSend', (_request, reply, payload, done) => {
    if (manager.shuttingDown) reply.header('connection', 'close')
    done(null, payload)
  })
}, { name: 'taskvault-task-manager', fastify: '5.x', dependencies: ['taskvault-persistence'] })
/**
 * How command agents end and are contained. The cgroup probe runs only when a command agent is
 * configured, and says once at startup what a command can leave running.
 */
async function commandRuntime (app: FastifyInstance, options: TaskManagerPluginOptions, agents: AgentsConfig | undefined): Promise<CommandRuntime> {
  const drainMs = options.commandDrainMs ?? setting(app, 'TASK_COMMAND_DRAIN_MS')
  if (!Object.values(agents ?? {}).some((spec) => spec.kind === 'command')) return { drainMs, cgroups: null }
  const mode = options.commandCgroup ?? setting(app, 'TASK_COMMAND_CGROUP')
  const probe = mode === 'off' ? { cgroups: null, reason: 'TASK_COMMAND_CGROUP=off' } : await probeCgroups({ logger: app.log })
  if (probe.cgroups !== null) {
    app.log.info({ cgroup_parent: probe.cgroups.parent }, 'Command agents run in a cgroup per call: everything a command starts, setsid or not, is killed when its call ends')
  } else {
    app.log.warn({ reason: probe.reason }, 'Command agents are contained by their process group only: a process a command starts that calls setsid (or joins another group) is not killed with it and can outlive its call')
  }
  return { drainMs, cgroups: probe.cgroups }
}

/** The `agents` option or the TASK_AGENTS setting, validated; undefined when neither names agents. */
function agentsConfig (source: Record<string, unknown> | string, env: NodeJS.ProcessEnv): AgentsConfig | undefined {
  if (typeof source === 'string' && source.trim() === '') return undefined
  return parseAgentsConfig(source, env)
}
