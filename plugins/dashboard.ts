import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import fastifyStatic from '@fastify/static'
import { Type } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { checkOptions } from './options.js'

/** The dashboard's files, shipped in the package (package.json "files"); app.js and the modules it imports are built by `npm run build`. */
export const DASHBOARD_ROOT = fileURLToPath(new URL('../../dashboard/static/', import.meta.url))

export interface DashboardPluginOptions {
  /** Where the page is served (default `/dashboard`). It calls the API at /api/v1/tasks. */
  path?: string
}

export const DashboardOptionsSchema = Type.Object({
  path: Type.Optional(Type.String({ pattern: '^(/[^/?#]+)+$' }))
}, { additionalProperties: false })

/**
 * The dashboard: static files, no data in them, so no API key is needed to load the page; it
 * asks for one when the API does. A strict Content-Security-Policy allows only its own files,
 * so even a result that slipped into HTML could run nothing.
 */
export default fp<DashboardPluginOptions>(async function dashboardPlugin (app, options) {
  checkOptions('taskvault-dashboard', DashboardOptionsSchema, options)
  const path = options.path ?? '/dashboard'
  if (!existsSync(`${DASHBOARD_ROOT}app.js`)) app.log.warn({ root: DASHBOARD_ROOT }, 'Dashboard script missing: run npm run build')
  await app.register(fastifyStatic, {
    root: DASHBOARD_ROOT,
    prefix: `${path}/`,
    decorateReply: false,
    index: 'index.html',
    // Served under a path of their own; the page is not listed in the OpenAPI document.
    schemaHide: true,
    setHeaders: (res) => {
      res.setHeader('content-security-policy', "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
      res.setHeader('x-content-type-options', 'nosniff')
      res.setHeader('referrer-policy', 'no-referrer')
    }
  })
  // `/dashboard` without the slash: relative asset URLs need it.
  app.get(path, { schema: { hide: true } }, async (_request, reply) => reply.redirect(`${path}/`, 302))
}, { name: 'taskvault-dashboard', fastify: '5.x' })
