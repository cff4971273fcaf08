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
    // The answer depends on Accept: a cache keyed on the URL alone would hand one client the other's.
    void reply.header('vary', 'Accept')
    if (options.dashboard !== null && prefersHtml(request.headers.accept ?? '')) return reply.redirect(options.dashboard, 302)
    return index
  })
}

/**
 * Whether an Accept header asks for HTML over JSON: `text/html` listed with a quality above 0 and
 * above `application/json`'s (a browser's `text/html,...,*\/*;q=0.8`). Wildcards choose nothing:
 * `*\/*` (curl) gets JSON.
 */
function prefersHtml (accept: string): boolean {
  const quality = new Map<string, number>()
  for (const range of accept.split(',')) {
    const [type = '', ...params] = range.split(';').map((part) => part.trim().toLowerCase())
    const q = params.find((param) => param.startsWith('q='))
    const value = q === undefined ? 1 : Number(q.slice(2))
    quality.set(type, Number.isFinite(value) ? value : 0)
  }
  const html = quality.get('text/html') ?? 0
  return html > 0 && html > (quality.get('application/json') ?? 0)
}

export default rootRoutes
