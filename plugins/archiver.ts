import fp from 'fastify-plugin'
import { ArchiveScheduler } from '../services/archiver.js'

declare module 'fastify' {
  interface FastifyInstance {
    archiver: ArchiveScheduler
  }
}

export interface ArchiverPluginOptions {
  clock?: () => Date
}

/** Archives finished sessions and applies retention after restore, then every TASK_ARCHIVE_INTERVAL_MINUTES. */
export default fp<ArchiverPluginOptions>(async function archiverPlugin (app, options) {
  const archiver = new ArchiveScheduler({
    manager: app.taskManager,
    archiveDays: app.config.TASK_ARCHIVE_DAYS,
    retention: { days: app.config.TASK_ARCHIVE_RETENTION_DAYS, failedDays: app.config.TASK_ARCHIVE_FAILED_RETENTION_DAYS },
    intervalMs: app.config.TASK_ARCHIVE_INTERVAL_MINUTES * 60_000,
    clock: options.clock,
    logger: app.log
  })
  app.decorate('archiver', archiver)
  // Registered after the task manager's onReady, so the first pass sees restored sessions.
  app.addHook('onReady', async () => archiver.start())
  app.addHook('preClose', async () => archiver.stop())
}, { name: 'taskvault-archiver', fastify: '5.x', dependencies: ['taskvault-config', 'taskvault-task-manager'] })
