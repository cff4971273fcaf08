/**
 * Logs: every line of a request that names a session carries its session_id, task failures
 * carry task_id too; LOG_PRETTY=true makes the real server print pino-pretty lines.
 */
import Fastify from 'fastify'
import t from 'tap'
import taskvault from '../index.js'
import { build, memoryLog, post, tempDir } from './helper.js'
import { logLines, logMessages, scratch } from './server-process.js'

t.test('request logs carry the session_id the request names; task failures carry task_id', async (t) => {
  const log = memoryLog()
  const app = await build(t, { logger: log.logger, executors: { default: async () => { throw new Error('agent down') } } })
  await post(app, '/create', { session_id: 'logged', instructions: 'a' })
  await post(app, '/execute', { session_id: 'logged' })
  await app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=logged' })
  await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/logged' })
  await app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=gone' })
  await app.inject({ method: 'GET', url: '/api/v1/tasks/stats' })

  const completed = log.lines().filter((line) => line.msg === 'request completed')
  t.equal(completed.length, 6)
  t.same(completed.map((line) => line.session_id), ['logged', 'logged', 'logged', 'logged', 'gone', undefined], 'body, query and path ids; none for /stats')
  const failed = log.lines().find((line) => line.msg === 'Task failed')
  t.equal(failed?.session_id, 'logged')
  t.match(failed?.task_id, /^task_1_/)
  t.equal(failed?.agent, 'default', 'and the agent that failed, by its routing key')
  const notFound = log.lines().find((line) => line.code === 'SESSION_NOT_FOUND')
  t.equal(notFound?.session_id, 'gone', 'error logs of the request carry it too')
})

t.test('embedded in a host whose child logger factory hands out one shared logger, a session_id never reaches other requests\' lines', async (t) => {
  const log = memoryLog()
  const host = Fastify({ logger: log.logger as { level: string }, childLoggerFactory: (logger) => logger })
  t.teardown(() => host.close())
  await host.register(taskvault, { prefix: '/agents', storageDir: await tempDir(t) })
  host.get('/hello', async () => 'hi')
  await host.ready()
  await host.inject({ method: 'POST', url: '/agents/create', payload: { session_id: 'mine', instructions: 'a' } })
  await host.inject({ method: 'GET', url: '/agents/progress?session_id=mine' })
  await host.inject({ method: 'GET', url: '/hello' })
  await host.inject({ method: 'GET', url: '/agents/stats' })
  const completed = log.lines().filter((line) => line.msg === 'request completed')
  t.same(completed.map((line) => line.session_id), ['mine', 'mine', undefined, undefined], 'bound for the session\'s requests only')
})

t.test('LOG_PRETTY=true: the server logs through pino-pretty', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ LOG_PRETTY: 'true' })
  const res = await fetch(`${server.base}/api/v1/tasks/create`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ session_id: 'pretty', instructions: 'a' })
  })
  t.equal(res.status, 200)
  t.equal((await server.stop('SIGTERM')).code, 0)
  const lines = server.stdout().split('\n').filter((line) => line.trim() !== '')
  t.ok(lines.some((line) => /INFO.*Server listening/u.test(line)), 'human-readable level and message')
  t.ok(lines.some((line) => /session_id: "pretty"/u.test(line)), 'bindings shown as fields')
  t.notOk(lines.some((line) => line.startsWith('{')), 'no JSON lines')
})

t.test('secrets sent in a query string (key, token, access_token, api_key, apikey, api-key, password, secret, any case) are redacted in logged URLs', async (t) => {
  const { start } = await scratch(t)
  const server = await start()
  const urls = [
    '/api/v1/tasks/progress?session_id=nope&key=secret-1&TOKEN=secret-2',
    '/api/v1/tasks/list?Api_Key=secret-3&session_id=all',
    '/api/v1/tasks/stats?%6Bey=secret-4',
    '/no-such-route?token=secret-5',
    // What an EventSource client, which cannot set headers, sends (RFC 6750).
    '/api/v1/tasks/events?access_token=secret-6',
    '/api/v1/tasks/stats?password=secret-7&Secret=secret-8&APIKEY=secret-9&api-key=secret-10'
  ]
  for (const url of urls) await (await fetch(`${server.base}${url}`)).arrayBuffer()
  t.equal((await server.stop('SIGTERM')).code, 0)
  const out = server.stdout()
  t.notMatch(out, /secret-\d/, 'no secret value reaches the log')
  const logged = logLines(out).flatMap((line) => typeof (line.req as { url?: unknown } | undefined)?.url === 'string' ? [(line.req as { url: string }).url] : [])
  t.ok(logged.includes('/api/v1/tasks/progress?session_id=nope&key=[REDACTED]&TOKEN=[REDACTED]'), 'names and other parameters kept')
  t.ok(logged.includes('/api/v1/tasks/list?Api_Key=[REDACTED]&session_id=all'))
  t.ok(logged.includes('/api/v1/tasks/stats?%6Bey=[REDACTED]'), 'a percent-encoded name too')
  t.ok(logMessages(out).includes('Route GET:/no-such-route?token=[REDACTED] not found'), "Fastify's 404 line too")
  t.ok(logged.includes('/api/v1/tasks/events?access_token=[REDACTED]'), 'an EventSource client\'s access_token')
  t.ok(logged.includes('/api/v1/tasks/stats?password=[REDACTED]&Secret=[REDACTED]&APIKEY=[REDACTED]&api-key=[REDACTED]'), 'password, secret, apikey, api-key')
})
