import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import authPlugin from './plugins/auth.js'
import configPlugin, { type ConfigPluginOptions } from './plugins/config.js'
import docsPlugin from './plugins/docs.js'
import metricsPlugin from './plugins/metrics.js'
import taskvault from './plugins/taskvault.js'
import { errorHandler } from './routes/error-handler.js'
import healthRoutes from './routes/health.js'
import { createValidatorCompiler } from './routes/validation.js'
import type { Executors } from './services/executors.js'
import type { FsSeam } from './services/fs-seam.js'

export interface BuildAppOptions {
  /** Settings that override the environment. */
  config?: ConfigPluginOptions['values']
  /** Read `process.env` and `.env` (default true). */
  readEnvironment?: boolean
  /** Programmatic agents by task type or `default`; they take precedence over TASK_AGENTS. */
  executors?: Executors
  /** Agent specs in the TASK_AGENTS shape, instead of the setting. */
  agents?: Record<string, unknown>
  /** Environment that agent specs read secrets from (default process.env). */
  env?: NodeJS.ProcessEnv
  /** File-system seam of the store, for fault injection. */
  fs?: FsSeam
  /** Time source for timestamps and archiving. */
  clock?: () => Date
  logger?: FastifyServerOptions['logger']
  /** Node's process metrics on /metrics (process-wide observers: the server turns them on, tests do not). */
  processMetrics?: boolean
}

/** Server options shared by production and tests, so both validate requests the same way. */
export function serverOptions (logger: FastifyServerOptions['logger'] = false): FastifyServerOptions {
  return {
    logger,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    return503OnClosing: true,
    // Ids longer than 128 characters must reach validation (400), not die as 414.
    routerOptions: { maxParamLength: 4096 }
  }
}

/**
 * Builds the service without listening: settings, API keys, docs and metrics around the
 * taskvault plugin (the same one other Fastify services embed), then the health probes.
 */
export async function buildApp (options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify(serverOptions(options.logger)).withTypeProvider<TypeBoxTypeProvider>()
  app.setValidatorCompiler(createValidatorCompiler())
  app.setErrorHandler(errorHandler)

  try {
    await app.register(configPlugin, { values: options.config, readEnvironment: options.readEnvironment })
    const config = app.config
    await app.register(authPlugin)
    // Both collect routes as they are added, so they come before every route.
    if (config.TASK_DOCS) await app.register(docsPlugin, { bearerAuth: config.TASK_API_KEYS.trim() !== '' })
    if (config.TASK_METRICS) await app.register(metricsPlugin, { requireApiKey: config.TASK_METRICS_AUTH, processMetrics: options.processMetrics })

    // Every other setting reaches the plugins through the config fallback (plugins/options.ts).
    await app.register(taskvault, {
      prefix: '/api/v1/tasks',
      executors: options.executors,
      agents: options.agents,
      env: options.env,
      fs: options.fs,
      clock: options.clock,
      ...(config.TASK_METRICS && { metricsRegistry: app.metricsRegistry })
    })
    await app.register(healthRoutes)
  } catch (err) {
    // A plugin that fails after persistence took the storage lock must not leave it held.
    await app.close().catch(() => {})
    throw err
  }
  return app
}
