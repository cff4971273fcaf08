/**
 * The OpenAPI document at /documentation/json: every task route, as the taskvault plugin
 * registers it, is there with its tags, summary, request schemas and every response status;
 * every example matches its schema; TASK_DOCS=false turns the document and the UI off.
 */
import { createConfig, lintFromString } from '@redocly/openapi-core'
import type { TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import Fastify, { type InjectOptions, type RouteOptions } from 'fastify'
import { readFile, readdir } from 'node:fs/promises'
import net, { type AddressInfo } from 'node:net'
import { gzipSync } from 'node:zlib'
import t from 'tap'
import taskvault from '../index.js'
import { ConfigSchema } from '../schemas/config.js'
import { build, tempDir, type TestContext } from './helper.js'

interface Operation {
  operationId?: string
  tags?: string[]
  summary?: string
  requestBody?: { required?: boolean, content: Record<string, { schema: { properties?: object, required?: string[], oneOf?: object[] }, example?: unknown, examples?: object }> }
  parameters?: Array<{ in: string, name: string, required?: boolean, schema?: Record<string, unknown>, example?: unknown, examples?: object }>
  responses: Record<string, { description?: string, content?: Record<string, { schema: object, example?: unknown, examples?: object }> }>
  security?: unknown[]
}
interface OpenApi {
  openapi: string
  info: { license?: { name: string, identifier?: string } }
  servers?: Array<{ url: string }>
  security?: unknown[]
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
  // With keys, so that the 401 every route declares is in the document too.
  const app = await build(t, { config: { TASK_API_KEYS: 'k1' } })
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
        // The event stream answers text/event-stream; its example sits on its schema.
        const stream = content?.['text/event-stream']
        const media = content?.['application/json'] ?? stream
        if (status === '204') continue
        // A download (GET /backup) documents its binary media type; bytes have no example.
        const binary = media === undefined ? Object.values(content ?? {})[0] : undefined
        if (binary !== undefined) {
          t.match(binary.schema, { type: 'string', format: 'binary' }, `${name} ${status}: a binary schema`)
          continue
        }
        t.ok(media?.schema !== undefined, `${name} ${status}: schema`)
        t.ok(media?.example !== undefined || media?.examples !== undefined || (stream !== undefined && (stream.schema as { examples?: unknown }).examples !== undefined), `${name} ${status}: example`)
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

async function documentOf (t: TestContext, config: Parameters<typeof build>[1] = {}): Promise<OpenApi> {
  const app = await build(t, config)
  const res = await app.inject({ method: 'GET', url: '/documentation/json' })
  if (res.statusCode !== 200) throw new Error(`/documentation/json answered ${res.statusCode}`)
  return res.json<OpenApi>()
}

t.test('a generated client names its methods by operationId, one per route', async (t) => {
  const doc = await documentOf(t)
  const ids: Record<string, string | undefined> = {}
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, operation] of Object.entries(item)) ids[`${method.toUpperCase()} ${path}`] = operation.operationId
  }
  t.same(ids, {
    'POST /api/v1/tasks/create': 'createTasks',
    'POST /api/v1/tasks/execute': 'executeNext',
    'POST /api/v1/tasks/execute-all': 'executeAll',
    'POST /api/v1/tasks/cancel': 'cancelRun',
    'GET /api/v1/tasks/progress': 'getProgress',
    'GET /api/v1/tasks/list': 'listSessions',
    'GET /api/v1/tasks/stats': 'getStats',
    'DELETE /api/v1/tasks/sessions/{session_id}': 'deleteSession',
    'POST /api/v1/tasks/archive': 'runArchivePass',
    'GET /api/v1/tasks/backup': 'downloadBackup',
    'POST /api/v1/tasks/retry': 'retryFailed',
    'GET /api/v1/tasks/events': 'streamEvents',
    'GET /health': 'getHealth',
    'GET /ready': 'getReadiness',
    'GET /': 'getIndex'
  })
})

t.test('the document requires what the server requires, and no more', async (t) => {
  const doc = await documentOf(t)
  const list = doc.paths['/api/v1/tasks/list']?.get
  const param = (name: string) => list?.parameters?.find((p) => p.name === name)
  t.equal(param('session_id')?.required, true)
  for (const name of ['archived', 'limit', 'offset']) {
    t.notOk(param(name)?.required, `list: ${name} has a default, so a client may leave it out`)
  }
  t.same(param('archived')?.schema, { type: 'string', enum: ['exclude', 'include', 'only'], default: 'exclude' }, 'archived: one enum, so Swagger UI lists every value')

  t.equal(doc.paths['/api/v1/tasks/archive']?.post?.requestBody?.required, false, 'archive: the body may be left out')
  t.notOk(JSON.stringify(doc).includes('x-taskvault'), 'the marker behind it does not reach the document')
  for (const path of ['create', 'execute', 'execute-all', 'cancel']) {
    t.equal(doc.paths[`/api/v1/tasks/${path}`]?.post?.requestBody?.required, true, `${path}: the body is required`)
  }
  const create = doc.paths['/api/v1/tasks/create']?.post?.requestBody?.content['application/json']?.schema
  t.same(create?.required, ['session_id'])
  t.same(create?.oneOf, [{ required: ['instructions'] }, { required: ['tasks'] }], 'create: exactly one of instructions or tasks')
})

t.test('a query parameter a route does not take is a 400 that changes nothing, and the document lists 400 for that route', async (t) => {
  const app = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/documentation/json' })).json<OpenApi>()
  const operations = Object.entries(doc.paths).filter(([path]) => path.startsWith('/api/v1/tasks/'))
    .flatMap(([path, item]) => Object.entries(item).map(([method, operation]) => ({ path, method: method.toUpperCase() as 'GET', operation })))
  t.ok(operations.filter((o) => o.method === 'GET').length >= 5, 'the GET routes')
  t.ok(operations.filter((o) => o.method !== 'GET').length >= 7, 'the POST and DELETE routes')
  for (const { path, method, operation } of operations) {
    // The required parameters and the body from their examples, so the unknown one is the only fault.
    const query = new URLSearchParams({ not_a_parameter: '1' })
    for (const p of (operation.parameters ?? []).filter((p) => p.in === 'query' && p.required === true)) {
      query.set(p.name, String((p.schema?.examples as unknown[] | undefined)?.[0] ?? p.example))
    }
    const content = operation.requestBody?.content['application/json']
    const body = content?.example ?? Object.values((content?.examples ?? {}) as Record<string, { value: unknown }>)[0]?.value
    const url = `${path.replace(/\{[^}]+\}/u, 'kept')}?${query.toString()}`
    const res = await app.inject({ method, url, ...(body !== undefined && { payload: body as object }) })
    t.equal(res.statusCode, 400, `${method} ${path}: ${res.body}`)
    t.match(res.json(), { message: 'querystring must NOT have additional properties ("not_a_parameter" is not one of its fields)' }, `${method} ${path}`)
    t.ok(Object.keys(operation.responses).includes('400'), `${method} ${path}: 400 is documented (${Object.keys(operation.responses).join(', ')})`)
  }
  // Nothing was created, and a session the DELETE named is still there.
  t.equal((await app.inject({ method: 'GET', url: '/api/v1/tasks/stats' })).json().total_sessions, 0, 'no session was created')
  await app.inject({ method: 'POST', url: '/api/v1/tasks/create', payload: { session_id: 'kept', instructions: '1. one' } })
  const remove = await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/kept?x=1' })
  t.equal(remove.statusCode, 400, remove.body)
  t.equal((await app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=kept' })).statusCode, 200, 'the session is still there')
})

t.test('a route\'s documented error example is what the route answers under that status', async (t) => {
  const app = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/documentation/json' })).json<OpenApi>()
  const example = (path: string, method: string, status: number): { code?: string, message?: string } | undefined => {
    const content = doc.paths[path]?.[method]?.responses[String(status)]?.content?.['application/json']
    const schema = content?.schema as { examples?: unknown[] } | undefined
    return (content?.example ?? Object.values((content?.examples ?? {}) as Record<string, { value: unknown }>)[0]?.value ?? schema?.examples?.[0]) as { code?: string, message?: string } | undefined
  }
  await app.inject({ method: 'POST', url: '/api/v1/tasks/create', payload: { session_id: 'important_work', instructions: '1. one' } })
  const cases: Array<[string, string, number, InjectOptions]> = [
    ['/api/v1/tasks/progress', 'get', 400, { method: 'GET', url: '/api/v1/tasks/progress?session_id=no!' }],
    ['/api/v1/tasks/list', 'get', 400, { method: 'GET', url: '/api/v1/tasks/list?session_id=no!' }],
    ['/api/v1/tasks/stats', 'get', 400, { method: 'GET', url: '/api/v1/tasks/stats?session_id=x' }],
    ['/api/v1/tasks/sessions/{session_id}', 'delete', 400, { method: 'DELETE', url: '/api/v1/tasks/sessions/no!' }],
    ['/api/v1/tasks/cancel', 'post', 409, { method: 'POST', url: '/api/v1/tasks/cancel', payload: { session_id: 'important_work' } }],
    ['/api/v1/tasks/retry', 'post', 409, { method: 'POST', url: '/api/v1/tasks/retry', payload: { session_id: 'important_work' } }],
    ['/api/v1/tasks/progress', 'get', 404, { method: 'GET', url: '/api/v1/tasks/progress?session_id=important_work_2' }]
  ]
  for (const [path, method, status, request] of cases) {
    const res = await app.inject(request)
    t.equal(res.statusCode, status, `${method} ${path}: ${res.body}`)
    const documented = example(path, method, status)
    t.ok(documented !== undefined, `${method} ${path} ${status}: an example`)
    t.same({ code: res.json().code, message: res.json().message.replace('important_work_2', 'important_work') }, { code: documented?.code, message: documented?.message }, `${method} ${path} ${status}: as documented`)
  }
})

t.test('a path parameter longer than the router takes is a 414, and the document lists 414 for each route with one', async (t) => {
  const app = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/documentation/json' })).json<OpenApi>()
  const withParams = Object.entries(doc.paths).flatMap(([path, item]) => Object.entries(item).filter(([, operation]) => (operation as Operation).parameters?.some((p) => p.in === 'path') === true).map(([method, operation]) => ({ path, method, operation: operation as Operation })))
  t.ok(withParams.length >= 1, `${withParams.length} routes with a path parameter`)
  for (const { path, method, operation } of withParams) {
    const res = await app.inject({ method: method.toUpperCase() as 'DELETE', url: path.replace(/\{[^}]+\}/u, 'a'.repeat(5000)) })
    t.equal(res.statusCode, 414, `${method} ${path}`)
    t.ok(Object.keys(operation.responses).includes('414'), `${method} ${path}: 414 is documented`)
  }
})

t.test('every operation lists 408, 417 and 431, which Node\'s client errors answer before any route, with the example a real server answers', async (t) => {
  const app = await build(t, { config: { TASK_REQUEST_TIMEOUT_MS: 500 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  // Raw bytes (a client library would not send these): the answer's JSON body, once the server closed.
  const answer = async (bytes: string): Promise<Record<string, unknown>> => await new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let received = ''
    socket.setEncoding('utf8').on('data', (chunk: string) => { received += chunk }).on('error', reject)
    socket.once('close', () => { resolve(JSON.parse(received.slice(received.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>) })
    socket.write(bytes)
  })
  const answers = {
    408: await answer('POST /api/v1/tasks/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n'),
    417: await answer('GET /api/v1/tasks/list HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: foo\r\nConnection: close\r\n\r\n'),
    431: await answer(`GET /api/v1/tasks/list?session_id=${'a'.repeat(100_000)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
  }
  const doc = (await app.inject({ method: 'GET', url: '/documentation/json' })).json<OpenApi>()
  const operations = Object.entries(doc.paths).flatMap(([path, item]) => Object.entries(item).map(([method, operation]) => ({ name: `${method} ${path}`, operation: operation as Operation })))
  t.ok(operations.length >= 15, `${operations.length} operations`)
  for (const [status, real] of Object.entries(answers)) {
    t.equal(real.statusCode, Number(status), `the real ${status}`)
    for (const { name, operation } of operations) {
      t.same(operation.responses[status]?.content?.['application/json']?.example, real, `${name} ${status}: documented as answered`)
    }
  }
})

t.test('create answers neither-or-both with its own error, as before the document said so', async (t) => {
  const app = await build(t)
  for (const body of [{ session_id: 'x' }, { session_id: 'x', instructions: 'a', tasks: [{ instruction: 'b' }] }]) {
    const res = await app.inject({ method: 'POST', url: '/api/v1/tasks/create', payload: body })
    t.equal(res.statusCode, 400)
    t.match(res.json(), { code: 'INVALID_INSTRUCTIONS', message: 'send exactly one of "instructions" (free text) or "tasks" (a list)' }, Object.keys(body).join(' and '))
  }
})

t.test('headers an answer carries are in the document: a replayed create\'s Idempotent-Replayed, and the Location of the 302 from /, which has no body', async (t) => {
  const app = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/documentation/json' })).json<OpenApi>()
  const send = async (): Promise<Awaited<ReturnType<typeof app.inject>>> => app.inject({ method: 'POST', url: '/api/v1/tasks/create', headers: { 'idempotency-key': 'k1' }, payload: { session_id: 'replayed', instructions: 'one' } })
  t.equal((await send()).headers['idempotent-replayed'], undefined, 'not on a first create')
  t.equal((await send()).headers['idempotent-replayed'], 'true')
  const created = doc.paths['/api/v1/tasks/create']?.post?.responses['200'] as { headers?: Record<string, { schema: object }> }
  t.same(created.headers?.['idempotent-replayed']?.schema, { const: 'true', type: 'string' })
  const moved = await app.inject({ method: 'GET', url: '/', headers: { accept: 'text/html' } })
  t.equal(moved.statusCode, 302)
  t.equal(moved.body, '')
  const redirect = doc.paths['/']?.get?.responses['302'] as { headers?: Record<string, unknown>, content?: unknown }
  t.equal(redirect.content, undefined, 'no body documented')
  t.ok(redirect.headers?.location !== undefined, `Location documented, as ${String(moved.headers.location)}`)
})

t.test('servers, license and security are declared, with keys and without', async (t) => {
  const open = await documentOf(t)
  t.same(open.servers, [{ url: '/', description: 'The server serving this document' }], 'relative: the API is where the document is')
  t.same(open.info.license, { name: 'MIT', identifier: 'MIT' })
  t.same(open.security, [], 'without keys: no security, said explicitly')
  t.notOk(open.components?.securitySchemes, 'and no scheme to offer')
  const operations = (document: OpenApi): Array<[string, Operation]> => Object.entries(document.paths).flatMap(([path, item]) => Object.entries(item).map(([method, operation]) => [`${method} ${path}`, operation] as [string, Operation]))
  t.same(operations(open).filter(([, operation]) => '401' in operation.responses).map(([name]) => name), [], 'without keys: no operation answers 401')
  const keyed = await documentOf(t, { config: { TASK_API_KEYS: 'k1' } })
  const guarded = operations(keyed).filter(([name]) => name.includes(' /api/'))
  t.ok(guarded.length > 10 && guarded.every(([, operation]) => '401' in operation.responses), `with keys: every /api operation (${guarded.length}) answers 401`)
  t.same(keyed.security, [{ apiKey: [] }], 'with keys: a bearer key on every operation')
  t.match(keyed.components?.securitySchemes?.apiKey, { type: 'http', scheme: 'bearer' })
  for (const path of ['/health', '/ready', '/']) t.same(keyed.paths[path]?.get?.security, [], `${path} stays open`)
})

t.test("Redocly's recommended rules pass, with keys and without", async (t) => {
  const config = await createConfig({ extends: ['recommended'] })
  for (const keys of ['', 'k1']) {
    const doc = await documentOf(t, { config: { TASK_API_KEYS: keys } })
    const problems = await lintFromString({ source: JSON.stringify(doc), absoluteRef: 'openapi.json', config })
    const found = problems.map((problem) => `${problem.severity} ${problem.ruleId} ${problem.location[0]?.pointer ?? ''}`)
    t.same(found, [], `keys ${keys === '' ? 'off' : 'on'}: ${found.join('; ')}`)
  }
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

t.test('the README\'s settings table has every setting, with the default the server uses', async (t) => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8')
  for (const [name, schema] of Object.entries(ConfigSchema.properties)) {
    const shown = new RegExp(`^\\| \`${name}\` \\| ([^|]*) \\|`, 'mu').exec(readme)?.[1]?.trim()
    if (shown === undefined) {
      t.fail(`${name} has no row`)
      continue
    }
    const value = (schema as { default: unknown }).default
    // An empty default is described in words ("*(empty)*", "hostname-pid"); any other is shown as it is.
    if (value !== '') t.equal(shown, `\`${String(value)}\``, name)
  }
})

t.test('the README\'s dashboard sizes are those of the built files, within a tenth', async (t) => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8')
  const figures = /`dashboard\/static\/`, (\d+) KB, (\d+) KB gzipped;\s+with the HTML, CSS and icon, (\d+) KB\)/u.exec(readme)
  t.ok(figures, 'the README gives the sizes')
  const folder = new URL('../../dashboard/static/', import.meta.url)
  const files = await Promise.all((await readdir(folder)).map(async (name) => ({ name, data: await readFile(new URL(name, folder)) })))
  const scripts = files.filter((file) => file.name.endsWith('.js'))
  const sum = (sizes: number[]): number => sizes.reduce((a, b) => a + b, 0) / 1000
  // Each file is served on its own, so each is gzipped alone.
  const actual = [sum(scripts.map((file) => file.data.length)), sum(scripts.map((file) => gzipSync(file.data, { level: 9 }).length)), sum(files.map((file) => file.data.length))]
  for (const [index, what] of ['scripts', 'scripts gzipped', 'everything'].entries()) {
    const said = Number(figures?.[index + 1])
    t.ok(Math.abs(said - (actual[index] as number)) <= (actual[index] as number) / 10, `${what}: the README says ${said} KB, the build is ${(actual[index] as number).toFixed(1)} KB`)
  }
})
