import fp from 'fastify-plugin'
import { parseAgentsConfig, type AgentsConfig } from '../services/agents/spec.js'
import type { Executors } from '../services/executors.js'
import { TaskManager } from '../services/task-manager.js'

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
  clock?: () => Date
}

/**
 * The task manager. Sessions are restored before the server listens (onReady); on close it
 * lets running tasks finish within the grace period, then flushes every pending write.
 * `close()` is idempotent past the grace period, so running it in both hooks costs nothing.
 */
export default fp<TaskManagerPluginOptions>(async function taskManagerPlugin (app, options) {
  const config = app.config
  const env = options.env ?? process.env
  const agents = agentsConfig(options.agents ?? config.TASK_AGENTS, env)
  const manager = new TaskManager({
    store: app.persistence,
    executors: options.executors,
    agents,
    env,
    maxInterruptions: config.TASK_MAX_INTERRUPTIONS,
    resumeOnStart: config.TASK_RESUME_ON_START,
    autoSave: config.TASK_AUTO_SAVE,
    restoreConcurrency: config.TASK_RESTORE_CONCURRENCY,
    shutdownGraceMs: config.TASK_SHUTDOWN_GRACE_MS,
    limits: {
      maxSessions: config.TASK_MAX_SESSIONS,
      maxTasksPerSession: config.TASK_MAX_TASKS_PER_SESSION,
      maxInstructionBytes: config.TASK_MAX_INSTRUCTION_BYTES,
      maxResultBytes: config.TASK_MAX_RESULT_BYTES
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
  app.addHook('onSend', async (_request, reply) => {
    if (manager.shuttingDown) reply.header('connection', 'close')
  })
}, { name: 'taskvault-task-manager', fastify: '5.x', dependencies: ['taskvault-config', 'taskvault-persistence'] })

/** The `agents` option or the TASK_AGENTS setting, validated; undefined when neither names agents. */
function agentsConfig (source: Record<string, unknown> | string, env: NodeJS.ProcessEnv): AgentsConfig | undefined {
  if (typeof source === 'string' && source.trim() === '') return undefined
  return parseAgentsConfig(source, env)
}
