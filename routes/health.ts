import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { responses } from '../schemas/api.js'

/** Liveness and readiness, for load balancers and Kubernetes probes. */
const healthRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/health', {
    schema: { operationId: 'getHealth', tags: ['health'], security: [], summary: 'Liveness: 200 while the process runs', response: responses.health }
  }, async () => ({ status: 'ok' as const, uptime_s: Math.round(process.uptime()) }))

  // 503 until every session is restored (a host that listens before it does), again once shutdown begins, and for good once the storage lock is lost.
  app.get('/ready', {
    schema: { operationId: 'getReadiness', tags: ['health'], security: [], summary: 'Readiness: 200 once sessions are restored (the server listens only then), 503 while shutting down or after losing the storage lock', response: responses.ready }
  }, async () => {
    const reason = await app.taskManager.checkReady()
    if (reason !== null) throw reason
    return { status: 'ready' as const, sessions: app.taskManager.sessionCount }
  })
}

export default healthRoutes
