import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { responses, type IndexResponse } from '../schemas/api.js'

export interface RootRoutesOptions {
  /** The API's prefix (`/api/v1/tasks`). */
  api: string
  /** Where each optional part is served; null when it is turned off. */
  dashboard: string | null
  documentation: string | null
  metrics: string | null
}

/**
 * `GET /`: where things are. A browser (it asks for HTML) is sent to the dashboard when there is
 * one; anything else gets the paths as JSON. It says nothing a client could not find by trying, so
 * it needs no API key.
 */
const rootRoutes: FastifyPluginAsyncTypebox<RootRoutesOptions> = async (app, options) => {
  const index: IndexResponse = {
    service: 'taskvault',
    api: options.api,
    dashboard: options.dashboard,
    documentation: options.documentation,
    metrics: options.metrics,
    health: '/health',
    ready: '/ready'
  }
  app.get('/', {
    schema: { operationId: 'getIndex', tags: ['health'], security: [], summary: 'Where the API, the dashboard, the documentation and the probes are; a browser is sent to the dashboard', response: responses.index }
  }, async (request, reply) => {
    if (options.dashboard !== null && (request.headers.accept ?? '').includes('text/html')) return reply.redirect(options.dashboard, 302)
    return index
  })
}

export default rootRoutes
