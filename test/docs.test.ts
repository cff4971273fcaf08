/**
 * The OpenAPI document at /documentation/json: every task route, as the taskvault plugin
 * registers it, is there with its tags, summary, request schemas and every response status;
 * every example matches its schema; TASK_DOCS=false turns the document and the UI off.
 */
import type { TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import Fastify, { type RouteOptions } from 'fastify'
import t from 'tap'
import taskvault from '../index.js'
import { build, tempDir, type TestContext } from './helper.js'

interface Operation {
  tags?: string[]
  summary?: string
  requestBody?: { content: Record<string, { schema: { properties?: object, required?: string[] }, example?: unknown, examples?: object }> }
  parameters?: Array<{ in: string, name: string, required?: boolean, example?: unknown, examples?: object }>
  responses: Record<string, { description?: string, content?: Record<string, { schema: object, example?: unknown, examples?: object }> }>
  security?: unknown[]
}
interface OpenApi {
  openapi: string
  paths: Record<string, Record<string, Operation>>
  tags?: Array<{ name: string }>
  components?: { securitySchemes?: Record<string, unknown> }
}

interface RouteSchema {
  body?: TSchema
  querystring?: TSchema
  params?: TSchema
  response?: Record<string, TSchema>
}

/** Every route the taskvault plugin registers under /api/v1/tasks, seen by an onRoute hook of its host. */
async function taskRoutes (t: TestContext): Promise<RouteOptions[]> {
  const host = Fastify({ logger: false })
  t.teardown(() => host.close())
  const routes: RouteOptions[] = []
  host.addHook('onRoute', (route) => { if (route.method !== 'HEAD') routes.push(route) })
  await host.register(taskvault, { prefix: '/api/v1/tasks', storageDir: await tempDir(t) })
  await host.ready()
  return routes
}

const openApiPath = (url: string): string => url.replace(/:([A-Za-z_]+)/gu, '{$1}')
const keys = (schema: TSchema | undefined): string[] => Object.keys((schema?.properties ?? {}) as object).sort()

t.test('every task route is in the document with tags, summary, request schemas and every response status', async (t) => {
  const routes = await taskRoutes(t)
  t.ok(routes.length >= 7, `found ${routes.length} task routes`)
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/documentation/json' })
  t.equal(res.statusCode, 200)
  const doc = res.json<OpenApi>()
  t.match(doc.openapi, /^3\./)
  const tagNames = new Set((doc.tags ?? []).map((tag) => tag.name))

  for (const route of routes) {
    const methods = Array.isArray(route.method) ? route.method : [route.method]
    const schema = (route.schema ?? {}) as RouteSchema
    for (const method of methods) {
      const name = `${method} ${route.url}`
      const operation = doc.paths[openApiPath(route.url)]?.[method.toLowerCase()]
      if (operation === undefined) {
        t.fail(`${name} is missing from the document`)
        continue
      }
      t.ok(operation.tags !== undefined && operation.tags.length > 0 && operation.tags.every((tag) => tagNames.has(tag)), `${name} has a declared tag`)
      t.ok((operation.summary ?? '') !== '', `${name} has a summary`)

      if (schema.body !== undefined) {
        const body = operation.requestBody?.content['application/json']
        t.same(keys(body?.schema as TSchema), keys(schema.body), `${name}: body fields`)
        t.same([...(body?.schema.required ?? [])].sort(), [...(schema.body.required ?? [])].sort(), `${name}: required body fields`)
        t.ok(body?.example !== undefined || body?.examples !== undefined, `${name}: body example`)
      }
      for (const [part, where] of [['querystring', 'query'], ['params', 'path']] as const) {
        if (schema[part] === undefined) continue
        const names = (operation.parameters ?? []).filter((p) => p.in === where).map((p) => p.name).sort()
        t.same(names, keys(schema[part]), `${name}: ${where} parameters`)
        t.ok((operation.parameters ?? []).filter((p) => p.in === where).every((p) => p.example !== undefined || p.examples !== undefined), `${name}: ${where} parameter examples`)
      }
      const statuses = Object.keys(schema.response ?? {}).sort()
      t.ok(statuses.length > 0, `${name} declares its answers`)
      t.same(Object.keys(operation.responses).sort(), statuses, `${name}: every response status`)
      for (const status of statuses) {
        const content = operation.responses[status]?.content
        const media = content?.['application/json']
        if (status === '204') continue
        // A download (GET /backup) documents its binary media type; bytes have no example.
        const binary = media === undefined ? Object.values(content ?? {})[0] : undefined
        if (binary !== undefined) {
          t.match(binary.schema, { type: 'string', format: 'binary' }, `${name} ${status}: a binary schema`)
          continue
        }
        t.ok(media?.schema !== undefined, `${name} ${status}: schema`)
        t.ok(media?.example !== undefined || media?.examples !== undefined, `${name} ${status}: example`)
      }
    }
  }
  for (const path of ['/health', '/ready']) t.ok(doc.paths[path]?.get?.tags?.includes('health'), `${path} is documented`)
  t.notOk(doc.paths['/metrics'], '/metrics is not an API route')
  t.notOk(Object.keys(doc.paths).some((path) => path.startsWith('/documentation')), 'nor is the UI')
})

t.test('every example matches the schema it illustrates', async (t) => {
  let checked = 0
  const check = (schema: TSchema | undefined, where: string): void => {
    if (schema === undefined) return
    for (const example of (schema.examples ?? []) as unknown[]) {
      checked++
      const error = Value.Errors(schema, example).First()
      t.equal(error, undefined, `${where}: ${error === undefined ? 'ok' : `${error.path} ${error.message}`}`)
    }
    for (const [key, property] of Object.entries((schema.properties ?? {}) as Record<string, TSchema>)) check(property, `${where}.${key}`)
  }
  for (const route of await taskRoutes(t)) {
    const schema = (route.schema ?? {}) as RouteSchema
    const name = `${String(route.method)} ${route.url}`
    check(schema.body, `${name} body`)
    check(schema.querystring, `${name} query`)
    check(schema.params, `${name} params`)
    for (const [status, response] of Object.entries(schema.response ?? {})) check(response, `${name} ${status}`)
  }
  t.ok(checked > 20, `${checked} examples checked`)
})

t.test('the UI is served at /documentation, without an API key', async (t) => {
  const app = await build(t, { config: { TASK_API_KEYS: 'k1' } })
  const ui = await app.inject({ method: 'GET', url: '/documentation/' })
  t.equal(ui.statusCode, 200)
  t.match(ui.headers['content-type'], /text\/html/)
  const doc = await app.inject({ method: 'GET', url: '/documentation/json' })
  t.equal(doc.statusCode, 200, 'the document describes the API and holds no session data')
  const openapi = doc.json<OpenApi>()
  t.ok(openapi.components?.securitySchemes?.apiKey, 'with keys set, the document says how to send one')
  t.same(openapi.paths['/health']?.get?.security, [], 'probes need no key')
  t.equal((await app.inject({ method: 'GET', url: '/api/v1/tasks/stats' })).statusCode, 401, 'the API itself still does')
})

t.test('TASK_DOCS=false: no document, no UI', async (t) => {
  const app = await build(t, { config: { TASK_DOCS: false } })
  for (const url of ['/documentation/json', '/documentation', '/documentation/']) {
    t.equal((await app.inject({ method: 'GET', url })).statusCode, 404, url)
  }
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200)
})

t.test('tags and summaries reach the routes under any prefix the host adds', async (t) => {
  const host = Fastify({ logger: false })
  t.teardown(() => host.close())
  const routes: RouteOptions[] = []
  host.addHook('onRoute', (route) => { if (route.method === 'POST') routes.push(route) })
  const dir = await tempDir(t)
  await host.register(async (scope) => { await scope.register(taskvault, { prefix: '/agents', storageDir: dir }) }, { prefix: '/v2' })
  await host.ready()
  const create = routes.find((route) => route.url === '/v2/agents/create')
  t.same((create?.schema as { tags?: string[] } | undefined)?.tags, ['tasks'])
})
