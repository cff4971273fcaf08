import fp from 'fastify-plugin'
import type { ExecutorMap } from '../services/executors.js'
import { TaskManager } from '../services/task-manager.js'

declare module 'fastify' {
  interface FastifyInstance {
    taskManager: TaskManager
  }
}

export interface TaskManagerPluginOptions {
  /** Agents by task type; these take precedence over configured ones. */
  executors?: Partial<ExecutorMap>
  clock?: () => Date
}

/**
 * The task manager. Sessions are restored before the server listens (onReady); on close it
 * lets running tasks finish within the grace period, then flushes every pending write.
 */
export default fp<TaskManagerPluginOptions>(async function taskManagerPlugin (app, options) {
  const config = app.config
  const manager = new TaskManager({
    store: app.persistence,
    executors: options.executors,
    autoSave: config.TASK_AUTO_SAVE,
    restoreConcurrency: config.TASK_RESTORE_CONCURRENCY,
    shutdownGraceMs: config.TASK_SHUTDOWN_GRACE_MS,
    clock: options.clock,
    logger: app.log
  })
  app.decorate('taskManager', manager)
  app.addHook('onReady', async () => {
    await manager.restore()
  })
  app.addHook('preClose', async () => manager.beginShutdown())
  app.addHook('onClose', async () => manager.close())
}, { name: 'taskvault-task-manager', fastify: '5.x', dependencies: ['taskvault-config', 'taskvault-persistence'] })
