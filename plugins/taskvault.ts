import { Type, type Static } from '@sinclair/typebox'
import type { FastifyBaseLogger, FastifyError, FastifyInstance, FastifyReply, FastifyRequest, RegisterOptions, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { Registry } from 'prom-client'
import { errorHandler } from '../http/error-handler.js'
import { errorShape } from '../http/error-shape.js'
import archiveRoutes from '../routes/archive.js'
import backupRoutes from '../routes/backup.js'
import eventRoutes from '../routes/events.js'
import taskRoutes from '../routes/tasks.js'
import { createSerializerCompiler, createValidatorCompiler } from '../http/validation.js'
import { ROUTE_DOCS } from '../schemas/route-docs.js'
import { SESSION_ID_PATTERN } from '../schemas/session.js'
import { InvalidOptionsError, TaskvaultError } from '../services/errors.js'
import { noop } from '../services/noop.js'
import { registerTaskvaultMetrics } from '../services/metrics/metrics.js'
import archiverPlugin, { ArchiverOptionsSchema } from './archiver.js'
import authPlugin, { AuthOptionsSchema } from './auth.js'
import eventsPlugin, { EventsOptionsSchema } from './events.js'
import { ARCHIVER_SETTINGS, BACKUP_SETTINGS, ROUTE_SETTINGS, COMMAND_SETTINGS, EVENTS_SETTINGS, MANAGER_SETTINGS, STORE_SETTINGS, resolveSettings, settingOptions } from '../schemas/options.js'
import { appSettings, checkOptions, FunctionOption, inTermsOf, pick } from './options.js'
import persistencePlugin, { PersistenceOptionsSchema } from './persistence.js'
import taskManagerPlugin, { TaskManagerOptionsSchema } from './task-manager.js'

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

export const TaskvaultOptionsSchema = Type.Object({
  /** Where the task routes are mounted, e.g. `/agents` gives `POST /agents/create`. Default: none (`/create`). Plain segments only: a parameter (`/:tenant`) or wildcard would reach the routes' strict params. */
  prefix: Type.Optional(Type.String({ pattern: '^(/[^/?#:*]+)*/?$' })),
  ...settingOptions(ROUTE_SETTINGS).properties,
  ...settingOptions(BACKUP_SETTINGS).properties,
  /**
   * Put `taskManager`, `persistence` and `archiver` on the instance taskvault is registered on
   * (default true). A second taskvault on the same instance must say false (or be registered
   * in its own encapsulated context): decorators of one instance cannot be there twice.
   */
  decorate: Type.Optional(Type.Boolean()),
  /** The log level of taskvault's routes (their requests' log lines), as Fastify's register option gives a context's routes. */
  logLevel: Type.Optional(Type.Union(LOG_LEVELS.map((level) => Type.Literal(level)))),
  /** Serializers for the log lines of taskvault's routes' requests, as Fastify's register option. */
  logSerializers: Type.Optional(Type.Unsafe<NonNullable<RegisterOptions['logSerializers']>>(Type.Object({}, { additionalProperties: FunctionOption }))),
  /** A prom-client registry to add taskvault's metrics to (sessions, tasks, saves, restore, agent calls). */
  metricsRegistry: Type.Optional(Type.Unsafe<Registry>(Type.Object({ registerMetric: FunctionOption, getSingleMetric: FunctionOption, removeSingleMetric: FunctionOption }))),
  /** Prefix of those metric names (default `taskvault_`); two taskvaults sharing a registry need two prefixes. */
  metricsPrefix: Type.Optional(Type.String({ pattern: '^[a-zA-Z_:][a-zA-Z0-9_:]*$' })),
  /** Put before the operationIds of this registration's routes in the OpenAPI document (default none); two taskvaults in one document need two, as its operationIds must be unique. */
  operationIdPrefix: Type.Optional(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' })),
  ...PersistenceOptionsSchema.properties,
  ...TaskManagerOptionsSchema.properties,
  ...ArchiverOptionsSchema.properties,
  ...AuthOptionsSchema.properties,
  ...EventsOptionsSchema.properties
}, { additionalProperties: false })

export type TaskvaultOptions = Static<typeof TaskvaultOptionsSchema>

// Re-exported so that the emitted types load each part's `declare module 'fastify'` (its decorator).
export type { ArchiverPluginOptions } from './archiver.js'
export type { AuthPluginOptions } from './auth.js'
export type { EventsPluginOptions } from './events.js'
export type { PersistencePluginOptions } from './persistence.js'
export type { TaskManagerPluginOptions } from './task-manager.js'

/** Every option that stands for a setting, for errors told in terms of options (inTermsOf). */
const OPTION_SETTINGS = { ...STORE_SETTINGS, ...MANAGER_SETTINGS, ...COMMAND_SETTINGS, ...ARCHIVER_SETTINGS, ...BACKUP_SETTINGS, ...EVENTS_SETTINGS, ...ROUTE_SETTINGS } as const

const DECORATORS = ['persistence', 'taskManager', 'archiver', 'taskEvents', 'eventStreams'] as const

/**
 * taskvault as one plugin: persistence, task manager, archiver and the task routes, in an
 * encapsulated context of their own under `prefix`, so one process can hold several (each
 * with its own storage folder). This thin wrapper only validates the options and, with
 * `decorate`, hands its services to the instance it is registered on.
 */
export default fp<TaskvaultOptions>(async function taskvault (app, options) {
  checkOptions('taskvault', TaskvaultOptionsSchema, options)
  const decorate = options.decorate ?? true
  if (decorate) {
    // Only the instance's own decorators clash (Fastify's decorate checks the same): one
    // inherited from a parent, a taskvault registered outside this context, is shadowed here.
    const taken = DECORATORS.find((name) => Object.hasOwn(app, name))
    if (taken !== undefined) {
      throw new InvalidOptionsError('taskvault', `this instance already has a '${taken}' decorator (a second taskvault?); ` +
        'register the second one with decorate: false, or inside its own encapsulated context')
    }
  }
  const prefix = options.prefix ?? ''
  const metricsPrefix = options.metricsPrefix ?? 'taskvault_'
  if (options.metricsRegistry?.getSingleMetric(`${metricsPrefix}tasks`) !== undefined) {
    throw new InvalidOptionsError('taskvault', `metricsRegistry already holds metrics named '${metricsPrefix}*'; give each taskvault sharing a registry its own metricsPrefix`)
  }

  let scope: FastifyInstance | undefined
  // Fastify applies logLevel and logSerializers to an encapsulated context only, which this
  // plugin is not (fastify-plugin): they are handed on to the context of the routes.
  await app.register(async function taskvaultScope (instance) {
    // The host's own validation, serialization and error handling may differ; taskvault's routes
    // keep theirs (unknown fields are a 400, answers follow their schemas, domain errors get their status).
    instance.setValidatorCompiler(createValidatorCompiler())
    instance.setSerializerCompiler(createSerializerCompiler())
    instance.setErrorHandler(async (error: FastifyError | TaskvaultError, request, reply) => {
      // Embedded, a limit is an option the host set, not a variable it never read (TASK_MAX_SESSIONS → option 'maxSessions').
      if (error instanceof TaskvaultError) error.message = inTermsOf(instance, OPTION_SETTINGS, error.message)
      await errorHandler(error, request, reply)
    })
    // Keys of this registration's own: its routes say whether they ask for one, whatever the document
    // says of the rest. Only in taskvault/docs's document, which defines the scheme: a host's own
    // @fastify/swagger fails on a route naming a scheme its document lacks.
    const security: Array<Record<string, string[]>> | undefined = options.apiKeys === undefined || !instance.hasPlugin('taskvault-docs') ? undefined : options.apiKeys.length > 0 ? [{ apiKey: [] }] : []
    instance.addHook('onRoute', (route) => { documentRoute(route, options.operationIdPrefix ?? '', security) })
    instance.addHook('preHandler', bindSessionLogger)
    instance.addHook('preSerialization', errorShape)
    // The host's own taskvault-auth (the standalone server registers one) guards these routes
    // too, unless this registration is given keys of its own.
    if (options.apiKeys !== undefined || !instance.hasPlugin('taskvault-auth')) await instance.register(authPlugin, { apiKeys: options.apiKeys })
    await instance.register(persistencePlugin, pick(PersistenceOptionsSchema, options))
    try {
      await registerOnStore(instance, options, metricsPrefix)
    } catch (err) {
      // Nothing past the store registered (agents naming a variable that is not set, say): the
      // store is let go here, since a host that gives up on a failed registration without closing
      // would keep the folder's lock, or the pool and the replica id, and a retry in this process
      // would find them taken.
      await instance.persistence.close().catch(noop)
      throw err
    }
    scope = instance
  }, { prefix, logLevel: options.logLevel, logSerializers: options.logSerializers })

  if (decorate && scope !== undefined) {
    app.decorate('persistence', scope.persistence)
    app.decorate('taskManager', scope.taskManager)
    app.decorate('archiver', scope.archiver)
    app.decorate('taskEvents', scope.taskEvents)
    app.decorate('eventStreams', scope.eventStreams)
    // The check of this registration's apiKeys, for the host's routes too (`{ onRequest: app.verifyApiKey }`),
    // unless the host has one of its own already. Without apiKeys there is no check of taskvault's
    // to share, and the host stays free to register taskvault/auth itself afterwards.
    if (options.apiKeys !== undefined && !app.hasDecorator('verifyApiKey')) app.decorate('verifyApiKey', scope.verifyApiKey)
  }
}, { name: 'taskvault', fastify: '5.x' })

/** Adds the tags, summary and operationId (after `operationIdPrefix`) of ROUTE_DOCS to each task route, and its `security` when the registration has keys of its own, for the OpenAPI document. */
function documentRoute (route: RouteOptions & { routePath: string }, operationIdPrefix: string, security: Array<Record<string, string[]>> | undefined): void {
  // routePath is the path as the route declares it, whatever prefixes the host adds.
  const methods = Array.isArray(route.method) ? route.method : [route.method]
  const doc = methods.map((method) => ROUTE_DOCS[`${method} ${route.routePath}`]).find((entry) => entry !== undefined)
  if (doc !== undefined) route.schema = { ...doc, operationId: operationIdPrefix + doc.operationId, ...(security !== undefined && { security }), ...route.schema }
}

const SESSION_ID = new RegExp(SESSION_ID_PATTERN, 'u')

/** Every log line of a request that names a session carries its `session_id`. */
function bindSessionLogger (request: FastifyRequest, reply: FastifyReply, done: () => void): void {
  const sessionId = sessionIdOf(request.params) ?? sessionIdOf(request.query) ?? sessionIdOf(request.body)
  if (sessionId !== undefined) {
    // With Fastify's own factory, request.log is a child made for this request alone (reply.log
    // is the same one, and writes the "request completed" line): binding onto it costs far less
    // than a child of the child. A host's factory may hand out a shared logger, and a logger
    // that is not pino may lack setBindings: those get a child.
    const log = request.log as FastifyBaseLogger & { setBindings?: (bindings: Record<string, unknown>) => void }
    const own = request.server.childLoggerFactory.name === 'defaultChildLoggerFactory' && log !== request.server.log
    if (own && typeof log.setBindings === 'function') log.setBindings({ session_id: sessionId })
    else request.log = reply.log = request.log.child({ session_id: sessionId })
  }
  done()
}

function sessionIdOf (part: unknown): string | undefined {
  if (typeof part !== 'object' || part === null) return undefined
  const value = (part as { session_id?: unknown }).session_id
  return typeof value === 'string' && SESSION_ID.test(value) ? value : undefined
}

/** What runs on the store: the task manager, archiver, events and routes, in `instance` (the plugin's context). */
async function registerOnStore (instance: FastifyInstance, options: TaskvaultOptions, metricsPrefix: string): Promise<void> {
  await instance.register(taskManagerPlugin, pick(TaskManagerOptionsSchema, options))
  await instance.register(archiverPlugin, pick(ArchiverOptionsSchema, options))
  let unregister = noop
  if (options.metricsRegistry !== undefined) {
    // Subscribed now, before onReady, so the restore and every save are seen.
    // The streams' hub is decorated below, before any scrape.
    const streams = (): number => instance.hasDecorator('eventStreams') ? instance.eventStreams.size : 0
    const { dbPingTimeoutMs } = resolveSettings({ dbPingTimeoutMs: 'TASK_DB_PING_TIMEOUT_MS' }, options, appSettings(instance))
    unregister = registerTaskvaultMetrics({ registry: options.metricsRegistry, prefix: metricsPrefix, manager: instance.taskManager, store: instance.persistence, streams, readWithinMs: dbPingTimeoutMs })
    instance.addHook('onClose', async () => unregister())
  }
  try {
    await registerRoutes(instance, options)
  } catch (err) {
    // The host's registry must not keep reading a store let go, nor refuse a retry's metrics as taken.
    unregister()
    throw err
  }
}

/** The events and the routes, in `instance` (the plugin's context). */
async function registerRoutes (instance: FastifyInstance, options: TaskvaultOptions): Promise<void> {
  await instance.register(eventsPlugin, pick(EventsOptionsSchema, options))
  // A streamed answer or backup whose client stopped reading is cut once the running tasks'
  // grace and the streams' time for their last bytes are over, as the standalone server cuts any answer.
  const { shutdownGraceMs, eventsCloseMs } = resolveSettings({ shutdownGraceMs: 'TASK_SHUTDOWN_GRACE_MS', eventsCloseMs: 'TASK_EVENTS_CLOSE_MS' }, options, appSettings(instance))
  const cutAfterMs = shutdownGraceMs + eventsCloseMs
  const { bodyLimit, answerStallMs } = resolveSettings(ROUTE_SETTINGS, options, appSettings(instance))
  await instance.register(taskRoutes, { bodyLimit, answerStallMs, cutAfterMs })
  await instance.register(archiveRoutes, { bodyLimit })
  const backup = resolveSettings(BACKUP_SETTINGS, options, appSettings(instance))
  await instance.register(backupRoutes, { cutAfterMs, maxClients: backup.backupMaxClients, stallMs: backup.backupStallMs, readAhead: backup.backupReadAhead })
  await instance.register(eventRoutes)
}
