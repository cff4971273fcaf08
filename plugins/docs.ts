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
      // Said either way, so clients and linters know whether to send a key.
      ...(options.bearerAuth === true
        ? { components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'One of TASK_API_KEYS' } } }, security: [{ apiKey: [] }] }
        : { security: [] })
    },
    transformObject: (document) => {
      if (!('openapiObject' in document)) return document.swaggerObject
      const openapi = markOptionalBodies(document.openapiObject as OpenApiDocument)
      // Without keys no route answers 401: a client generated from the document should not expect one.
      return options.bearerAuth === true ? openapi : withoutUnauthorized(openapi)
    }
  })
  await app.register(swaggerUi, { routePrefix: options.routePrefix ?? '/documentation' })
}, { name: 'taskvault-docs', fastify: '5.x' })

interface OpenApiDocument { paths?: Record<string, Record<string, { [BODY_OPTIONAL]?: boolean, requestBody?: { required?: boolean }, responses?: Record<string, unknown> }>> }

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

/** The document without its 401 answers (the routes declare them for when keys are set). */
function withoutUnauthorized (document: OpenApiDocument): OpenApiDocument {
  for (const item of Object.values(document.paths ?? {})) {
    for (const operation of Object.values(item)) {
      if (typeof operation === 'object' && operation !== null) delete operation.responses?.['401']
    }
  }
  return document
}
