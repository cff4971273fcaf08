import { readFile } from 'node:fs/promises'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { Type } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { BODY_OPTIONAL, TAGS } from '../schemas/route-docs.js'
import { checkOptions } from './options.js'
import { InvalidOptionsError } from '../services/errors.js'

export interface DocsPluginOptions {
  /** Where the UI is served; the document is at `<routePrefix>/json` (default `/documentation`). */
  routePrefix?: string
  /** Mark the routes as needing `Authorization: Bearer <key>` in the document. Default false. */
  bearerAuth?: boolean
}

export const DocsOptionsSchema = Type.Object({
  routePrefix: Type.Optional(Type.String({ pattern: '^/' })),
  bearerAuth: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

/**
 * The OpenAPI 3.1 document, built by @fastify/swagger from the TypeBox schema of every route
 * registered after this plugin, and @fastify/swagger-ui to read it. 3.1, because its schemas
 * are JSON Schema: TypeBox's nullable fields (`type: 'null'`) are valid there as they are.
 */
export default fp<DocsPluginOptions>(async function docsPlugin (app, options) {
  checkOptions('taskvault-docs', DocsOptionsSchema, options)
  // A second @fastify/swagger fails outside register's promise (the process's uncaught error).
  if (app.hasDecorator('swagger')) {
    throw new InvalidOptionsError('taskvault-docs', 'this instance has an OpenAPI document already (@fastify/swagger): it lists taskvault\'s routes too, so leave taskvault/docs out')
  }
  const { version, description, license } = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string, description: string, license: string }
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'taskvault', version, description, license: { name: license, identifier: license } },
      // Relative: the API is wherever this document is served from.
      servers: [{ url: '/', description: 'The server serving this document' }],
      tags: TAGS,
      // Said either way, so clients and linters know whether to send a key. The scheme is there
      // either way: a registration with keys of its own names it on its routes (see bySecurity).
      components: { securitySchemes: { apiKey: API_KEY_SCHEME } },
      security: options.bearerAuth === true ? [{ apiKey: [] }] : []
    },
    transformObject: (document) => {
      if (!('openapiObject' in document)) return document.swaggerObject
      return bySecurity(markOptionalBodies(document.openapiObject as OpenApiDocument), options.bearerAuth === true)
    }
  })
  await app.register(swaggerUi, { routePrefix: options.routePrefix ?? '/documentation' })
}, { name: 'taskvault-docs', fastify: '5.x' })

const API_KEY_SCHEME = { type: 'http' as const, scheme: 'bearer', description: 'One of TASK_API_KEYS' }

interface OpenApiDocument {
  paths?: Record<string, Record<string, { [BODY_OPTIONAL]?: boolean, requestBody?: { required?: boolean }, responses?: Record<string, unknown>, security?: unknown[] }>>
  components?: { securitySchemes?: Record<string, unknown> }
}

/** @fastify/swagger marks every declared body required; a route that takes none says so with BODY_OPTIONAL. */
function markOptionalBodies (document: OpenApiDocument): OpenApiDocument {
  for (const item of Object.values(document.paths ?? {})) {
    for (const operation of Object.values(item)) {
      if (typeof operation !== 'object' || operation === null || !(BODY_OPTIONAL in operation)) continue
      if (operation[BODY_OPTIONAL] === true && operation.requestBody !== undefined) operation.requestBody.required = false
      delete operation[BODY_OPTIONAL]
    }
  }
  return document
}

/**
 * 401 answers only where a key is asked for: by the document (`bearerAuth`) or by the operation
 * itself (a taskvault registration given `apiKeys` of its own says so on its routes). Without keys
 * no route answers 401, and a client generated from the document should not expect one.
 */
function bySecurity (document: OpenApiDocument, bearerAuth: boolean): OpenApiDocument {
  let keyed = bearerAuth
  for (const item of Object.values(document.paths ?? {})) {
    for (const operation of Object.values(item)) {
      if (typeof operation !== 'object' || operation === null) continue
      if ((operation.security ?? (bearerAuth ? [{}] : [])).length === 0) delete operation.responses?.['401']
      else keyed = true
    }
  }
  // No operation asks for a key: no scheme to offer.
  if (!keyed) delete document.components?.securitySchemes?.apiKey
  if (document.components?.securitySchemes !== undefined && Object.keys(document.components.securitySchemes).length === 0) delete document.components.securitySchemes
  if (document.components !== undefined && Object.keys(document.components).length === 0) delete document.components
  return document
}
