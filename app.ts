import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import archiverPlugin from './plugins/archiver.js'
import archiveRoutes from './routes/archive.js'
import authPlugin from './plugins/auth.js'
import configPlugin, { type ConfigPluginOptions } from './plugins/config.js'
import persistencePlugin from './plugins/persistence.js'
import taskManagerPlugin from './plugins/task-manager.js'
import { errorHandler } from './routes/error-handler.js'
import healthRoutes from './routes/health.js'
import { createValidatorCompiler } from './routes/validation.js'
import taskRoutes from './routes/tasks.js'
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

/** Builds the service without listening: plugins, then routes. */
export async function buildApp (options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify(serverOptions(options.logger)).withTypeProvider<TypeBoxTypeProvider>()
  app.setValidatorCompiler(createValidatorCompiler())
  app.setErrorHandler(errorHandler)

  try {
    await app.register(configPlugin, { values: options.config, readEnvironment: options.readEnvironment })
    await app.register(authPlugin)
    await app.register(persistencePlugin, { fs: options.fs })
    await app.register(taskManagerPlugin, { executors: options.executors, agents: options.agents, env: options.env, clock: options.clock })
    await app.register(archiverPlugin, { clock: options.clock })

    await app.register(healthRoutes)
    await app.register(taskRoutes, { prefix: '/api/v1/tasks' })
    await app.register(archiveRoutes, { prefix: '/api/v1/tasks' })
  } catch (err) {
    // A plugin that fails after persistence took the storage lock must not leave it held.
    await app.close().catch(() => {})
    throw err
  }
  return app
}
