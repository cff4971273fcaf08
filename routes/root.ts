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
 * above that of anything JSON matches (`application/json`, `application/*`, `*\/*`): a browser's
 * `text/html,...,*\/*;q=0.8` does; curl's `*\/*` does not.
 */
function prefersHtml (accept: string): boolean {
  const quality = new Map<string, number>()
  for (const range of accept.split(',')) {
    const [type = '', ...params] = range.split(';').map((part) => part.trim().toLowerCase())
    const q = params.find((param) => param.startsWith('q='))
    const value = q === undefined ? 1 : Number(q.slice(2))
    quality.set(type, Math.max(quality.get(type) ?? 0, Number.isFinite(value) ? value : 0))
  }
  const of = (...types: string[]): number => Math.max(0, ...types.map((type) => quality.get(type) ?? 0))
  const html = of('text/html')
  // JSON is what the wildcards take: `*/*` at 1 outranks `text/html;q=0.5`.
  return html > 0 && html > of('application/json', 'application/*', '*/*')
}

export default rootRoutes
