import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorHandler, sendError } from '../http/error-handler.js'
import { responses } from '../schemas/api.js'
import { StorageError } from '../services/errors.js'
import { RepeatedFailure } from '../services/repeated-failure.js'

/** How often a storage fault that keeps failing the readiness probe is logged again, with its count. */
const READY_FAILURE_LOG_MS = 60_000

/** Liveness and readiness, for load balancers and Kubernetes probes. */
const healthRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/health', {
    schema: { operationId: 'getHealth', tags: ['health'], security: [], summary: 'Liveness: 200 while the process runs', response: responses.health }
  }, async () => ({ status: 'ok' as const, uptime_s: Math.round(process.uptime()) }))

  // 503 until every session is restored (a host that listens before it does), again once shutdown begins, and for good once the storage lock is lost.
  // A probe every few seconds finds a storage fault again and again: logged when it starts, then once a minute.
  const storageFaults = new RepeatedFailure(app.log, { failed: 'readiness probes fail: the storage is not usable', recovered: 'readiness probes pass again: the storage is usable' }, READY_FAILURE_LOG_MS)
  app.get('/ready', {
    schema: { operationId: 'getReadiness', tags: ['health'], security: [], summary: 'Readiness: 200 once sessions are restored (the server listens only then), 503 while shutting down or after losing the storage lock', response: responses.ready },
    errorHandler: async (error, request, reply) => {
      if (!(error instanceof StorageError)) return await errorHandler(error, request, reply)
      storageFaults.failed(error)
      await sendError(error, request, reply)
    }
  }, async () => {
    const reason = await app.taskManager.checkReady()
    if (reason !== null) throw reason
    storageFaults.succeeded()
    return { status: 'ready' as const, sessions: app.taskManager.sessionCount }
  })
}

export default healthRoutes
