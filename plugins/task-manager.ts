import { Type } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { TASK_TYPES } from '../schemas/session.js'
import type { ExecutorMap } from '../services/executors.js'
import { TaskManager } from '../services/task-manager.js'
import { checkOptions, fromSetting, FunctionOption, setting } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    taskManager: TaskManager
  }
}

export interface TaskManagerPluginOptions {
  /** Agents by task type (`default` takes every type without its own); these take precedence over configured ones. */
  executors?: Partial<ExecutorMap>
  /** Configured agents, in the shape of the TASK_AGENTS setting (passed through as given). */
  agents?: Record<string, unknown>
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
  /** Time source for timestamps (tests). */
  clock?: () => Date
}

export const ExecutorsOption = Type.Object(
  Object.fromEntries(['default', ...TASK_TYPES].map((type) => [type, Type.Optional(FunctionOption)])),
  { additionalProperties: false }
)

export const TaskManagerOptionsSchema = Type.Object({
  executors: Type.Optional(ExecutorsOption),
  agents: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
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
  const manager = new TaskManager({
    store: app.persistence,
    executors: options.executors,
    autoSave: options.autoSave ?? setting(app, 'TASK_AUTO_SAVE'),
    restoreConcurrency: options.restoreConcurrency ?? setting(app, 'TASK_RESTORE_CONCURRENCY'),
    shutdownGraceMs: options.shutdownGraceMs ?? setting(app, 'TASK_SHUTDOWN_GRACE_MS'),
    limits: {
      maxSessions: options.maxSessions ?? setting(app, 'TASK_MAX_SESSIONS'),
      maxTasksPerSession: options.maxTasksPerSession ?? setting(app, 'TASK_MAX_TASKS_PER_SESSION'),
      maxInstructionBytes: options.maxInstructionBytes ?? setting(app, 'TASK_MAX_INSTRUCTION_BYTES'),
      maxResultBytes: options.maxResultBytes ?? setting(app, 'TASK_MAX_RESULT_BYTES')
    },
    // `options.agents` is checked above; the agent factory (TASK_AGENTS) is what consumes it.
    clock: options.clock,
    logger: app.log
  })
  app.decorate('taskManager', manager)
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
  app.addHook('onSend', async (_request, reply) => {
    if (manager.shuttingDown) reply.header('connection', 'close')
  })
}, { name: 'taskvault-task-manager', fastify: '5.x', dependencies: ['taskvault-persistence'] })
