import type { Server } from 'node:http'
import Fastify, { type FastifyHttpOptions, type FastifyInstance, type FastifyReply, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Registry } from 'prom-client'
import authPlugin from './plugins/auth.js'
import configPlugin, { environmentWarnings, loadConfig, type ConfigPluginOptions } from './plugins/config.js'
import dashboardPlugin from './plugins/dashboard.js'
import docsPlugin from './plugins/docs.js'
import metricsPlugin, { observeUnrouted } from './plugins/metrics.js'
import taskvault, { type TaskvaultOptions } from './plugins/taskvault.js'
import { errorHandler, notFoundHandler } from './http/error-handler.js'
import healthRoutes from './routes/health.js'
import rootRoutes from './routes/root.js'
import { createValidatorCompiler } from './http/validation.js'
import { answerUnrouted, badHost, clientErrors, observeWhenSent, type UnroutedObserver } from './http/client-errors.js'
import { guardConnections, type ConnectionGuard } from './http/connections.js'
import { hostCheck } from './http/allowed-hosts.js'
import { encodedBody } from './http/json-body.js'
import { openFileLimit, socketBudget } from './http/file-limit.js'
import type { Config } from './schemas/config.js'

/** What code (not settings) gives the taskvault plugin: agents as functions, their environment, seams. */
type CodeOptions = Pick<TaskvaultOptions, 'executors' | 'agents' | 'env' | 'fs' | 'clock'>

export interface BuildAppOptions extends CodeOptions {
  /** Settings that override the environment. */
  config?: ConfigPluginOptions['values']
  /** Read `process.env` and `.env` (default true). */
  readEnvironment?: boolean
  logger?: FastifyServerOptions['logger']
  /** Node's process metrics on /metrics (process-wide observers: the server turns them on, tests do not). */
  processMetrics?: boolean
  /** The open file descriptor limit (a test seam; default: the process's, see openFileLimit). */
  fileLimit?: () => number | null
}

/** The settings the HTTP server itself takes. */
export type ServerSettings = Pick<Config, 'TASK_REQUEST_TIMEOUT_MS' | 'TASK_KEEP_ALIVE_TIMEOUT_MS'>

/**
 * Server options shared by production and tests, so both validate and time requests the same way.
 * `connections`: the guard of the server's sockets, once made (client errors wait for the answers it knows owed).
 * `unrouted`: told of each request answered before any route (a URL the router refuses, a client error), once answered (the metrics count it).
 */
export function serverOptions (settings: ServerSettings, logger: FastifyServerOptions['logger'] = false, connections: () => ConnectionGuard | null = () => null, unrouted: UnroutedObserver = () => {}): FastifyHttpOptions<Server> {
  const requestTimeout = settings.TASK_REQUEST_TIMEOUT_MS
  return {
    logger,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    clientErrorHandler: clientErrors(connections, unrouted),
    return503OnClosing: true,
    // The restore runs in onReady and takes what the data takes (seconds for 100,000 sessions,
    // longer on a slow volume or a loaded host): Fastify's default 10 s would fail a healthy
    // start. A database that is down is bounded by TASK_DB_CONNECT_TIMEOUT_MS instead.
    pluginTimeout: 0,
    // Ids longer than 128 characters must reach validation (400), not die as 414.
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // URLs the router refuses before any route: answered in the error shape, without echoing them.
    frameworkErrors: (error, request, routerReply) => {
      const reply = routerReply as FastifyReply
      const long = error.code === 'FST_ERR_MAX_PARAM_LENGTH'
      const statusCode = long ? 414 : 400
      observeWhenSent(reply.raw, request.method, statusCode, unrouted)
      void reply.code(statusCode).send({
        statusCode,
        error: long ? 'URI Too Long' : 'Bad Request',
        message: long ? `a part of the path is longer than ${MAX_PARAM_LENGTH} characters` : 'the URL is not valid (malformed percent-encoding?)',
        code: error.code
      })
    },
    // Receiving a request (headers and body) is bounded; running it is not (an execute may wait
    // minutes on its agent). Given to Node at creation with a headersTimeout no longer than it:
    // Fastify's requestTimeout alone, set on the server afterwards, is never enforced (Node 20
    // and 24 keep a 60 s headersTimeout). Node checks every 30 s by default: check often enough
    // that the timeout holds to about a second.
    requestTimeout,
    http: {
      requestTimeout,
      headersTimeout: Math.min(60_000, requestTimeout),
      // Answered by the onRequest hook instead, in the error shape (badHost).
      requireHostHeader: false,
      connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(requestTimeout / 4)))
    },
    keepAliveTimeout: settings.TASK_KEEP_ALIVE_TIMEOUT_MS
  }
}

/** Where the taskvault plugin's routes live in the standalone server. */
const API_PREFIX = '/api/v1/tasks'

/** The longest path parameter the router takes: far past any valid id, so long ones get validation's 400. */
const MAX_PARAM_LENGTH = 4096

/**
 * Builds the service without listening: settings, API keys, docs and metrics around the
 * taskvault plugin (the same one other Fastify services embed), then the health probes.
 */
export async function buildApp (options: BuildAppOptions = {}): Promise<FastifyInstance> {
  // Read first: the server's own options come from the settings.
  const loaded = await loadConfig({ values: options.config, readEnvironment: options.readEnvironment })
  const limit = (options.fileLimit ?? openFileLimit)()
  const budget = socketBudget(loaded.TASK_MAX_CONNECTIONS, loaded.TASK_EVENTS_MAX_CLIENTS, loaded.TASK_RESERVED_FILES, limit)
  // Under a low open file limit every part of the app (the guard, the streams' cap) works with the shrunk shares.
  const settings = budget.capped ? { ...loaded, TASK_MAX_CONNECTIONS: budget.connections, TASK_EVENTS_MAX_CLIENTS: budget.streams } : loaded
  let guard: ConnectionGuard | null = null
  let metrics: Registry | null = null
  const unrouted: UnroutedObserver = (method, statusCode, seconds) => { if (metrics !== null) observeUnrouted(metrics, method, statusCode, seconds) }
  const app = Fastify(serverOptions(settings, options.logger, () => guard, unrouted)).withTypeProvider<TypeBoxTypeProvider>()
  // Whatever logger the caller gave (tests give their own), the server logs at LOG_LEVEL.
  app.log.level = settings.LOG_LEVEL
  app.setValidatorCompiler(createValidatorCompiler())
  app.setErrorHandler(errorHandler)
  app.setNotFoundHandler(notFoundHandler)
  if (options.readEnvironment !== false) for (const warning of environmentWarnings()) app.log.warn(warning)
  if (budget.capped) {
    app.log.warn({ open_file_limit: limit, reserved_files: loaded.TASK_RESERVED_FILES, max_connections: budget.connections, events_max_clients: budget.streams },
      `The open file limit (ulimit -n ${String(limit)}) is below TASK_MAX_CONNECTIONS (${loaded.TASK_MAX_CONNECTIONS}) + TASK_EVENTS_MAX_CLIENTS (${loaded.TASK_EVENTS_MAX_CLIENTS}) + TASK_RESERVED_FILES: ` +
      `they are lowered in proportion to ${budget.connections} and ${budget.streams}, so saves keep their file descriptors; raise the limit, or lower those settings`)
  }
  const connections = guardConnections(app.server, app.log, {
    // Event streams hold their sockets for long: their own cap comes on top, so they never take
    // the slots of requests, and requests never take theirs.
    maxConnections: settings.TASK_MAX_CONNECTIONS,
    maxStreams: settings.TASK_EVENTS_MAX_CLIENTS,
    // A request still arriving at shutdown gets its timeout, but never more than the grace period.
    stalledCloseMs: Math.min(settings.TASK_REQUEST_TIMEOUT_MS, settings.TASK_SHUTDOWN_GRACE_MS),
    // The running tasks' grace, then the streams' time for their last bytes: an answer still
    // unsent past both (a backup whose client stopped reading) is cut; with the default
    // close time, well within the 10 s server.ts adds to the grace before it gives up on a clean exit.
    answerCloseMs: settings.TASK_SHUTDOWN_GRACE_MS + settings.TASK_EVENTS_CLOSE_MS,
    maxWaiting: settings.TASK_MAX_PIPELINED
  })
  guard = connections
  answerUnrouted(app.server, unrouted)
  app.addHook('preClose', async () => connections.closing())
  // Pipelined changes run in the order sent (RFC 9112 lets a server run only safe requests side by side).
  // The address listened on once listening (a host of buildApp may listen elsewhere than HOST); HOST before (inject).
  const listening = (): string => {
    const address = app.server.address()
    return address !== null && typeof address === 'object' ? address.address : settings.HOST
  }
  const foreignHost = hostCheck(listening, settings.TASK_API_KEYS, settings.TASK_ALLOWED_HOSTS)
  app.addHook('onRequest', (request, reply, done) => {
    // An HTTP/1.0 message framed by Transfer-Encoding is read as Node frames it, then its
    // connection closes (RFC 9112 6.1): an intermediary of 1.0 may have framed it otherwise.
    if (request.raw.httpVersion === '1.0' && request.headers['transfer-encoding'] !== undefined) reply.header('connection', 'close')
    const refusal = badHost(request.raw) ?? foreignHost?.(request.raw) ?? encodedBody(request.raw)
    if (refusal !== null) {
      done(refusal)
      return
    }
    // Every request waits for the answers sent before it on its connection, reads too: run side by
    // side, a pipelined batch of reads (hundreds in one packet) would build and hold every answer
    // at once, gigabytes for a client that does not read; in turn, one is held and TASK_MAX_PIPELINED wait.
    if (request.routeOptions.config.ownTurn === true) {
      done()
      return
    }
    connections.inTurn(reply.raw, (refusal) => { done(refusal ?? undefined) })
  })

  try {
    await app.register(configPlugin, { loaded: settings })
    const config = app.taskvaultConfig
    await app.register(authPlugin)
    // Both collect routes as they are added, so they come before every route.
    if (config.TASK_DOCS) await app.register(docsPlugin, { bearerAuth: config.TASK_API_KEYS.trim() !== '' })
    if (config.TASK_METRICS) {
      await app.register(metricsPlugin, { requireApiKey: config.TASK_METRICS_AUTH, processMetrics: options.processMetrics })
      metrics = app.metricsRegistry
    }

    // Every other setting reaches the plugins through the config fallback (plugins/options.ts).
    await app.register(taskvault, {
      prefix: API_PREFIX,
      executors: options.executors,
      agents: options.agents,
      env: options.env,
      fs: options.fs,
      clock: options.clock,
      ...(config.TASK_METRICS && { metricsRegistry: app.metricsRegistry })
    })
    // Sockets carrying a stream leave the requests' share once the stream is granted (both end with the app).
    app.eventStreams.onOpen(connections.stream)
    await app.register(healthRoutes)
    if (config.TASK_DASHBOARD) await app.register(dashboardPlugin)
    await app.register(rootRoutes, {
      api: API_PREFIX,
      dashboard: config.TASK_DASHBOARD ? '/dashboard/' : null,
      documentation: config.TASK_DOCS ? '/documentation' : null,
      metrics: config.TASK_METRICS ? '/metrics' : null
    })
  } catch (err) {
    // A plugin that fails after persistence took the storage lock must not leave it held.
    await app.close().catch(() => {})
    throw err
  }
  return app
}
