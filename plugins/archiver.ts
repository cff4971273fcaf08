import { Type, type Static } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { ArchiveScheduler } from '../services/archive/archive-scheduler.js'
import { ARCHIVER_SETTINGS, resolveSettings, settingOptions } from '../schemas/options.js'
import { appSettings, checkOptions, functionOption } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    archiver: ArchiveScheduler
  }
}

export const ArchiverOptionsSchema = Type.Object({
  ...settingOptions(ARCHIVER_SETTINGS).properties,
  clock: Type.Optional(functionOption<() => Date>())
}, { additionalProperties: false })

export type ArchiverPluginOptions = Static<typeof ArchiverOptionsSchema>

/** Archives finished sessions and applies retention after restore, then every TASK_ARCHIVE_INTERVAL_MINUTES. */
export default fp<ArchiverPluginOptions>(async function archiverPlugin (app, options) {
  checkOptions('taskvault-archiver', ArchiverOptionsSchema, options)
  const settings = resolveSettings(ARCHIVER_SETTINGS, options, appSettings(app))
  const archiver = new ArchiveScheduler({
    manager: app.taskManager,
    archiveDays: settings.archiveDays,
    retention: { days: settings.archiveRetentionDays, failedDays: settings.archiveFailedRetentionDays },
    intervalMs: settings.archiveIntervalMinutes * 60_000,
    clock: options.clock,
    logger: app.log
  })
  app.decorate('archiver', archiver)
  // Registered after the task manager's onReady, so the first pass sees restored sessions.
  app.addHook('onReady', async () => archiver.start())
  app.addHook('preClose', async () => archiver.stop())
}, { name: 'taskvault-archiver', fastify: '5.x', dependencies: ['taskvault-task-manager'] })
