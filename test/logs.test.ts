/**
 * Logs: every line of a request that names a session carries its session_id, task failures
 * carry task_id too; LOG_PRETTY=true makes the real server print pino-pretty lines.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { closeSync, constants, openSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import taskvault from '../index.js'
import { build, memoryLog, post, tempDir } from './helper.js'
import { SERVER, baseEnv, freePort, logLines, logMessages, scratch } from './server-process.js'
import { node } from './node-child.js'

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

/** The server on a free port with its stdout on the descriptor `stdout`, ready (its /ready 200); killed at teardown. */
async function serverWithStdout (t: Test, dir: string, stdout: number, env: Record<string, string> = {}): Promise<{ child: ChildProcess, base: string, exited: Promise<number | null>, stderr: () => string }> {
  const port = await freePort()
  const child = spawn(...node([SERVER]), { cwd: dir, env: baseEnv({ PORT: String(port), ...env }), stdio: ['ignore', stdout, 'pipe'] })
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => { resolve(code) }))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  })
  const base = `http://127.0.0.1:${port}`
  let ready = 0
  for (let i = 0; i < 300 && ready !== 200; i++) {
    ready = await fetch(`${base}/ready`).then((res) => res.status, () => 0)
    if (ready !== 200) await sleep(100)
  }
  t.equal(ready, 200, `ready ${stderr}`)
  return { child, base, exited, stderr: () => stderr }
}

// Both ways of printing: JSON lines, and pino-pretty's (LOG_PRETTY=true) through the same destination.
for (const pretty of ['false', 'true']) {
  t.test(`LOG_PRETTY=${pretty}: a log that cannot be written (stdout on a full disk: /dev/full) never stops the server: it serves, and SIGTERM exits 0`, async (t) => {
    const { dir } = await scratch(t)
    const stdout = openSync('/dev/full', 'w')
    const { child, base, exited, stderr } = await serverWithStdout(t, dir, stdout, { LOG_PRETTY: pretty })
    closeSync(stdout)
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${base}/api/v1/tasks/create`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ session_id: `s${i}`, instructions: 'a' }) })
      t.equal(res.status, 200, `create ${i}`)
    }
    t.equal(((await fetch(`${base}/api/v1/tasks/list?session_id=all`).then(async (res) => res.json())) as { total: number }).total, 20, 'every create landed')
    child.kill('SIGTERM')
    t.equal(await Promise.race([exited, sleep(20_000, 'hung', { ref: false })]), 0, `SIGTERM exits 0 ${stderr()}`)
  })

  t.test(`LOG_PRETTY=${pretty}: stdout a pipe whose reader stops reading: the server serves on, and SIGTERM exits 0 (the exit does not wait on the full pipe)`, async (t) => {
    const { dir } = await scratch(t)
    const fifo = join(dir, 'stdout.fifo')
    execFileSync('mkfifo', [fifo])
    // Held open for reading and writing, never read: the pipe has a reader, and fills.
    const pipe = openSync(fifo, constants.O_RDWR)
    t.teardown(() => { closeSync(pipe) })
    const { child, base, exited, stderr } = await serverWithStdout(t, dir, pipe, { LOG_PRETTY: pretty })
    // Some 1.2 MB of request lines: far past what the pipe holds (64 KiB).
    const pad = 'x'.repeat(4096)
    let answered = 0
    for (let i = 0; i < 300; i++) {
      const res = await fetch(`${base}/api/v1/tasks/progress?session_id=s${i}&pad=${pad}`)
      await res.arrayBuffer()
      if (res.status === 400) answered++
    }
    t.equal(answered, 300, 'every request answered')
    child.kill('SIGTERM')
    t.equal(await Promise.race([exited, sleep(20_000, 'hung', { ref: false })]), 0, `SIGTERM exits 0 ${stderr()}`)
  })
}

t.test('a log reader that stops reading: lines past LOG_QUEUE_BYTES are dropped, the server serves on, and a warning counts them once it reads again', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ LOG_QUEUE_BYTES: '65536' })
  // The socket to this process fills (a few hundred KB), then the queue: 300 requests logging
  // their 4 KB URLs make some 1.2 MB of lines.
  server.child.stdout?.pause()
  const pad = 'x'.repeat(4096)
  let answered = 0
  for (let i = 0; i < 300; i++) {
    const res = await fetch(`${server.base}/api/v1/tasks/progress?session_id=s${i}&pad=${pad}`)
    await res.arrayBuffer()
    if (res.status === 400) answered++
  }
  t.equal(answered, 300, 'every request answered (400: an unknown query parameter)')
  const res = await fetch(`${server.base}/api/v1/tasks/create`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ session_id: 'after', instructions: 'a' }) })
  t.equal(res.status, 200, 'a create too')
  server.child.stdout?.resume()
  // The next line written after the pipe drained carries the report.
  await fetch(`${server.base}/ready`)
  t.ok(await server.waitForLine((line) => line.includes('"dropped_lines"'), 10_000), 'the drop is reported')
  const report = logLines(server.stdout()).find((line) => 'dropped_lines' in line) as { level: number, dropped_lines: number, reason: string, msg: string }
  t.match(report, { level: 40, reason: 'LOG_QUEUE_BYTES reached', msg: /^(1 log line was|\d+ log lines were) dropped \(LOG_QUEUE_BYTES reached\)$/u })
  t.ok(report.dropped_lines > 0, `${report.dropped_lines} lines dropped`)
  t.equal((await server.stop('SIGTERM')).code, 0)
  t.ok(logLines(server.stdout()).some((line) => line.msg === 'shutting down'), 'lines after it are written')
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
