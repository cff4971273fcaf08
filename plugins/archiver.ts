import { Type } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { ArchiveScheduler } from '../services/archive/archive-scheduler.js'
import { checkOptions, fromSetting, FunctionOption, setting } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    archiver: ArchiveScheduler
  }
}

export interface ArchiverPluginOptions {
  /** Finished sessions older than this many days move to `archive/`; 0 turns archiving off (TASK_ARCHIVE_DAYS). */
  archiveDays?: number
  /** How often the archiver runs (TASK_ARCHIVE_INTERVAL_MINUTES). */
  archiveIntervalMinutes?: number
  /** Archived sessions older than this many days are deleted; 0 keeps them (TASK_ARCHIVE_RETENTION_DAYS). */
  archiveRetentionDays?: number
  /** The same for sessions with a failed task; 0 means archiveRetentionDays (TASK_ARCHIVE_FAILED_RETENTION_DAYS). */
  archiveFailedRetentionDays?: number
  clock?: () => Date
}

export const ArchiverOptionsSchema = Type.Object({
  archiveDays: fromSetting('TASK_ARCHIVE_DAYS'),
  archiveIntervalMinutes: fromSetting('TASK_ARCHIVE_INTERVAL_MINUTES'),
  archiveRetentionDays: fromSetting('TASK_ARCHIVE_RETENTION_DAYS'),
  archiveFailedRetentionDays: fromSetting('TASK_ARCHIVE_FAILED_RETENTION_DAYS'),
  clock: Type.Optional(FunctionOption)
}, { additionalProperties: false })

/** Archives finished sessions and applies retention after restore, then every TASK_ARCHIVE_INTERVAL_MINUTES. */
export default fp<ArchiverPluginOptions>(async function archiverPlugin (app, options) {
  checkOptions('taskvault-archiver', ArchiverOptionsSchema, options)
  const archiver = new ArchiveScheduler({
    manager: app.taskManager,
    archiveDays: options.archiveDays ?? setting(app, 'TASK_ARCHIVE_DAYS'),
    retention: {
      days: options.archiveRetentionDays ?? setting(app, 'TASK_ARCHIVE_RETENTION_DAYS'),
      failedDays: options.archiveFailedRetentionDays ?? setting(app, 'TASK_ARCHIVE_FAILED_RETENTION_DAYS')
    },
    intervalMs: (options.archiveIntervalMinutes ?? setting(app, 'TASK_ARCHIVE_INTERVAL_MINUTES')) * 60_000,
    clock: options.clock,
    logger: app.log
  })
  app.decorate('archiver', archiver)
  // Registered after the task manager's onReady, so the first pass sees restored sessions.
  app.addHook('onReady', async () => archiver.start())
  app.addHook('preClose', async () => archiver.stop())
}, { name: 'taskvault-archiver', fastify: '5.x', dependencies: ['taskvault-task-manager'] })
