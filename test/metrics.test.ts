/**
 * GET /metrics: real requests, saves, agent calls and a restore move the series they should,
 * in Prometheus text format; TASK_METRICS=false turns it off; each app has its own registry.
 */
import { writeFile } from 'node:fs/promises'
import net, { type AddressInfo } from 'node:net'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { build, get, post, tempDir } from './helper.js'
import { testDatabase } from './postgres.js'
import { scratch } from './server-process.js'

/** One sample of the text format: name, labels, value. */
interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

/** Parses the Prometheus text exposition format (the subset prom-client writes). */
function parse (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/u.exec(line)
    if (match === null) throw new Error(`not a sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/gu)) labels[pair[1] as string] = pair[2] as string
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) })
  }
  return samples
}

async function scrape (app: FastifyInstance): Promise<Sample[]> {
  const res = await app.inject({ method: 'GET', url: '/metrics' })
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}`)
  if (!/^text\/plain; version=0\.0\.4/u.test(String(res.headers['content-type']))) throw new Error(`content-type ${res.headers['content-type']}`)
  return parse(res.body)
}

/** The value of the sample with this name and (at least) these labels; 0 when there is none. */
function value (samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length} samples`)
  return found[0]?.value ?? 0
}

t.test('requests, saves and agent calls move their series', async (t) => {
  let release: () => void = () => {}
  let entered: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const agentCalled = new Promise<void>((resolve) => { entered = resolve })
  const app = await build(t, {
    executors: {
      Coding: async () => { throw new Error('compiler crashed') },
      Research: async () => {
        entered()
        await gate
        return { result: 'found it' }
      },
      default: async (task) => ({ result: task.instruction })
    }
  })
  const before = await scrape(app)
  t.equal(value(before, 'taskvault_session_save_duration_seconds_count'), 0)
  t.equal(value(before, 'taskvault_executions_in_flight'), 0)

  t.equal((await post(app, '/create', { session_id: 'm1', tasks: [{ instruction: 'a', task_type: 'General' }, { instruction: 'b', task_type: 'Coding' }] })).statusCode, 200)
  t.equal((await post(app, '/execute', { session_id: 'm1' })).json().status, 'Completed')
  t.equal((await post(app, '/execute', { session_id: 'm1' })).json().status, 'Failed')
  t.equal((await app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=missing' })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/missing' })).statusCode, 404)
  t.equal((await post(app, '/create', { session_id: 'm2', tasks: [{ instruction: 'look', task_type: 'Research' }] })).statusCode, 200)
  const running = post(app, '/execute', { session_id: 'm2' })
  await agentCalled
  const during = await scrape(app)
  t.equal(value(during, 'taskvault_executions_in_flight'), 1, 'one execution in flight')
  t.equal(value(during, 'taskvault_tasks', { status: 'InProgress' }), 1)
  release()
  t.equal((await running).json().status, 'Completed')

  const after = await scrape(app)
  const http = (method: string, route: string, status: string): number =>
    value(after, 'http_request_duration_seconds_count', { method, route, status_code: status })
  t.equal(http('POST', '/api/v1/tasks/create', '200'), 2, 'requests by route pattern and status')
  t.equal(http('POST', '/api/v1/tasks/execute', '200'), 3)
  t.equal(http('GET', '/api/v1/tasks/progress', '404'), 1)
  t.equal(http('DELETE', '/api/v1/tasks/sessions/:session_id', '404'), 1, 'the pattern, not the id')
  t.equal(http('GET', '/metrics', '200'), 2, 'earlier scrapes are counted too')
  t.notOk(after.some((s) => s.labels.route?.includes('missing') === true), 'no series per session id')

  // create m1, start+finish twice, create m2, start+finish: 8 durable saves.
  t.equal(value(after, 'taskvault_session_save_duration_seconds_count'), 8, 'every save timed')
  t.equal(value(after, 'taskvault_session_save_failures_total'), 0)
  t.equal(value(after, 'taskvault_agent_call_duration_seconds_count', { agent: 'default', outcome: 'ok' }), 1)
  t.equal(value(after, 'taskvault_agent_call_duration_seconds_count', { agent: 'Coding', outcome: 'error' }), 1)
  t.equal(value(after, 'taskvault_agent_call_duration_seconds_count', { agent: 'Research', outcome: 'ok' }), 1)
  t.equal(value(after, 'taskvault_agent_call_failures_total', { agent: 'Coding', outcome: 'error' }), 1, 'failures by agent and outcome')
  t.equal(value(after, 'taskvault_agent_call_failures_total', { agent: 'default' }), 0, 'successes are not failures')
  t.equal(value(after, 'taskvault_tasks', { status: 'Completed' }), 2)
  t.equal(value(after, 'taskvault_tasks', { status: 'Failed' }), 1)
  t.equal(value(after, 'taskvault_tasks', { status: 'Pending' }), 0)
  t.equal(value(after, 'taskvault_sessions', { state: 'completed' }), 2)
  t.equal(value(after, 'taskvault_sessions', { state: 'active' }), 0)
  // The file store's process holds all of it: the store's counts are the same, under a store label of its own.
  const stored = after.filter((s) => s.name === 'taskvault_stored_sessions' || s.name === 'taskvault_stored_tasks')
  t.equal(stored.length, 7, 'three states and four statuses')
  t.match(stored[0]?.labels.store, /^file:[0-9a-f]{12}$/u, 'the store named by kind and a digest')
  t.ok(stored.every((s) => s.labels.store === stored[0]?.labels.store), 'one store')
  t.equal(value(after, 'taskvault_stored_sessions', { state: 'completed' }), 2)
  t.equal(value(after, 'taskvault_stored_sessions', { state: 'archived' }), 0)
  t.equal(value(after, 'taskvault_stored_tasks', { status: 'Completed' }), 2)
  t.equal(value(after, 'taskvault_stored_tasks', { status: 'Failed' }), 1)
  t.equal(value(after, 'taskvault_executions_in_flight'), 0)
  t.ok(value(after, 'taskvault_storage_bytes') > 0)
})

/** Sends raw bytes to the server on `port`: the status of its answer, once it wrote one. */
async function rawStatus (port: number, bytes: string): Promise<number> {
  return await new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let answer = ''
    socket.setEncoding('latin1').on('data', (chunk: string) => {
      answer += chunk
      const status = /^HTTP\/1\.1 (\d{3}) /u.exec(answer)
      if (status !== null) {
        socket.destroy()
        resolve(Number(status[1]))
      }
    }).on('error', reject)
    socket.write(bytes)
  })
}

t.test('requests answered before any route are counted as unmatched: a malformed URL (400), a path part too long (414), an Expect not supported (417)', async (t) => {
  const app = await build(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  // Raw requests: a client library would refuse or rewrite these URLs.
  const send = async (head: string): Promise<number> => await rawStatus(port, `${head}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`)
  t.equal(await send('GET /api/v1/tasks/sessions/%E0%A4%A HTTP/1.1'), 400)
  t.equal(await send('DELETE /api/v1/tasks/sessions/%FF HTTP/1.1'), 400)
  t.equal(await send(`DELETE /api/v1/tasks/sessions/${'a'.repeat(5000)} HTTP/1.1`), 414)
  t.equal(await send('POST /api/v1/tasks/create HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 0'), 417)
  const samples = await scrape(app)
  const unmatched = (method: string, status: string): number => value(samples, 'http_request_duration_seconds_count', { method, route: 'unmatched', status_code: status })
  t.equal(unmatched('GET', '400'), 1, 'the malformed URL')
  t.equal(unmatched('DELETE', '400'), 1, 'the malformed id')
  t.equal(unmatched('DELETE', '414'), 1, 'the long path part')
  t.equal(unmatched('POST', '417'), 1, 'the Expect')
})

t.test('client errors answered before any route are counted as unmatched: a body too slow (408, its method, timed from its headers), headers too slow (408) or too large (431), bytes that are no HTTP (400), CONNECT (405)', async (t) => {
  const app = await build(t, { config: { TASK_REQUEST_TIMEOUT_MS: 500 } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  const send = async (bytes: string): Promise<number> => await rawStatus(port, bytes)
  const started = performance.now()
  const slowBody = send('POST /api/v1/tasks/create HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"session_id":')
  const slowHeaders = send('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n')
  t.equal(await slowBody, 408)
  t.ok(performance.now() - started >= 450, 'answered once TASK_REQUEST_TIMEOUT_MS ran out')
  t.equal(await slowHeaders, 408)
  t.equal(await send(`GET /api/v1/tasks/list?session_id=${'a'.repeat(100_000)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`), 431)
  t.equal(await send('NOT HTTP AT ALL\r\n\r\n'), 400)
  t.equal(await send('CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n'), 405)

  const samples = await scrape(app)
  const unmatched = (name: string, method: string, status: string): number => value(samples, `http_request_duration_seconds_${name}`, { method, route: 'unmatched', status_code: status })
  t.equal(unmatched('count', 'POST', '408'), 1, 'the body too slow, under the method of its parsed headers')
  // Timed from its headers, as a routed request is: the half second it was given, not 0.
  const slow = unmatched('sum', 'POST', '408')
  t.ok(slow >= 0.45 && slow < 5, `the body too slow took ${slow} s`)
  t.equal(unmatched('count', 'unknown', '408'), 1, 'the headers too slow: no method was parsed')
  t.equal(unmatched('count', 'unknown', '431'), 1, 'the headers too large')
  t.equal(unmatched('count', 'unknown', '400'), 1, 'the bytes that are no HTTP')
  t.equal(unmatched('count', 'CONNECT', '405'), 1, 'the CONNECT')
  t.equal(unmatched('sum', 'unknown', '408'), 0, 'a request never parsed is timed 0')
  // Each counted once: none also under a route (the body too slow reached the route's hooks).
  t.equal(samples.filter((s) => s.name === 'http_request_duration_seconds_count' && s.labels.route !== 'unmatched' && s.labels.route !== '/metrics').length, 0, 'no routed series')
  t.same([...new Set(samples.filter((s) => s.name === 'http_request_duration_seconds_count').map((s) => s.labels.method))].sort(), ['CONNECT', 'POST', 'unknown'], 'never a word of the client\'s as a label')
})

t.test('a save that fails is counted as a failure', async (t) => {
  let failRenames = false
  const fs: FsSeam = {
    ...nodeFs,
    rename: (async (...args: Parameters<typeof nodeFs.rename>) => {
      if (failRenames) throw Object.assign(new Error('injected EIO'), { code: 'EIO' })
      return nodeFs.rename(...args)
    }) as typeof nodeFs.rename
  }
  const app = await build(t, { fs })
  t.equal((await post(app, '/create', { session_id: 'ok', instructions: 'a' })).statusCode, 200)
  failRenames = true
  t.equal((await post(app, '/create', { session_id: 'bad', instructions: 'a' })).statusCode, 503)
  failRenames = false
  const samples = await scrape(app)
  t.equal(value(samples, 'taskvault_session_save_failures_total'), 1)
  t.equal(value(samples, 'taskvault_session_save_duration_seconds_count'), 2, 'failed saves are timed too')
})

t.test('a save refused by rule is no failure: a create past TASK_MAX_SESSION_BYTES (400) leaves the counter at 0', async (t) => {
  const app = await build(t, { config: { TASK_MAX_SESSION_BYTES: 65_536 } })
  t.equal((await post(app, '/create', { session_id: 'big', instructions: 'a' })).statusCode, 200)
  t.equal((await post(app, '/create', { session_id: 'big', tasks: [{ instruction: 'b'.repeat(40_000) }, { instruction: 'c'.repeat(40_000) }] })).statusCode, 400)
  t.equal(value(await scrape(app), 'taskvault_session_save_failures_total'), 0, 'nothing failed: the client was refused')
})

t.test('PostgreSQL: two replicas changing one session by turns (each save meets the other\'s version) count no save failure', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const replicas = [await build(t, { config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_REPLICA_ID: 'a', TASK_ARCHIVE_DAYS: 0 } })]
  replicas.push(await build(t, { config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_REPLICA_ID: 'b', TASK_ARCHIVE_DAYS: 0 } }))
  t.equal((await post(replicas[0] as FastifyInstance, '/create', { session_id: 'shared', instructions: 'first' })).statusCode, 200)
  const rounds = 10
  for (let i = 0; i < rounds; i++) {
    const answers = await Promise.all(replicas.map(async (app, k) => post(app, '/create', { session_id: 'shared', instructions: `r${i}-${k}` })))
    t.same(answers.map((res) => res.statusCode), [200, 200], `round ${i}: both creates answered 200`)
  }
  const stored = (await get(replicas[1] as FastifyInstance, '/list?session_id=shared')).json<{ tasks: unknown[] }>()
  t.equal(stored.tasks.length, 1 + 2 * rounds, 'every task is there')
  const counts = await Promise.all(replicas.map(async (app) => scrape(app)))
  t.same(counts.map((samples) => value(samples, 'taskvault_session_save_failures_total')), [0, 0], 'no save failed on either replica')
  // The other's version met at least once: what the count once took for a failure.
  t.ok(counts.reduce((sum, samples) => sum + value(samples, 'taskvault_session_save_duration_seconds_count'), 0) > 1 + 2 * rounds, 'some saves were refused (another version stored) and made again')
})

t.test('the restore: its duration and the files it set aside', async (t) => {
  const dir = await tempDir(t)
  const first = await build(t, { dir })
  t.equal((await post(first, '/create', { session_id: 'kept', instructions: '1. a\n2. b' })).statusCode, 200)
  await first.close()
  await writeFile(join(dir, 'broken.json'), '{ not json', { mode: 0o600 })
  const app = await build(t, { dir })
  const samples = await scrape(app)
  t.equal(value(samples, 'taskvault_restore_failed_loads'), 1)
  t.ok(value(samples, 'taskvault_restore_duration_seconds') > 0, 'restore duration in seconds')
  t.equal(value(samples, 'taskvault_sessions', { state: 'active' }), 1, 'restored sessions are counted')
  t.equal(value(samples, 'taskvault_tasks', { status: 'Pending' }), 2)
})

t.test('a task the restore fails (interrupted TASK_MAX_INTERRUPTIONS times) is counted as finished, Failed; one set back to Pending is not', async (t) => {
  const dir = await tempDir(t)
  const task = (id: string, interruptions: number): object => ({ id, instruction: id, task_type: 'General', status: 'InProgress', result: null, error: null, confidence: null, created_at: '2026-01-01T00:00:00.000Z', started_at: '2026-01-01T00:00:01.000Z', completed_at: null, attempts: 1, interruptions })
  const session = (id: string, interruptions: number): string => JSON.stringify({ session_id: id, created_at: '2026-01-01T00:00:00.000Z', updated_at: '2026-01-01T00:00:01.000Z', session: { session_id: id, tasks: [task(`${id}_1`, interruptions)], current_index: 0 } })
  await writeFile(join(dir, 'looping.json'), session('looping', 2), { mode: 0o600 })
  await writeFile(join(dir, 'once.json'), session('once', 0), { mode: 0o600 })
  const app = await build(t, { dir, config: { TASK_MAX_INTERRUPTIONS: 3, TASK_RESUME_ON_START: false } })
  const samples = await scrape(app)
  t.equal(value(samples, 'taskvault_tasks_finished_total', { status: 'Failed' }), 1, 'the task failed at restore is counted')
  t.equal(value(samples, 'taskvault_tasks', { status: 'Failed' }), 1)
  t.equal(value(samples, 'taskvault_tasks', { status: 'Pending' }), 1, 'the other runs again, not counted as finished')
})

t.test('two apps in one process keep separate counts', async (t) => {
  const a = await build(t)
  const b = await build(t)
  await post(a, '/create', { session_id: 'only_a', instructions: 'x' })
  t.equal(value(await scrape(a), 'taskvault_session_save_duration_seconds_count'), 1)
  t.equal(value(await scrape(b), 'taskvault_session_save_duration_seconds_count'), 0)
  t.equal(value(await scrape(b), 'http_request_duration_seconds_count', { route: '/api/v1/tasks/create' }), 0)
})

t.test('TASK_METRICS=false: no /metrics', async (t) => {
  const app = await build(t, { config: { TASK_METRICS: false } })
  t.equal((await app.inject({ method: 'GET', url: '/metrics' })).statusCode, 404)
  t.equal((await post(app, '/create', { session_id: 's', instructions: 'x' })).statusCode, 200, 'the API works without metrics')
})

t.test('/metrics is open by default with API keys set; TASK_METRICS_AUTH=true asks for a key', async (t) => {
  const open = await build(t, { config: { TASK_API_KEYS: 'k1' } })
  t.equal((await open.inject({ method: 'GET', url: '/metrics' })).statusCode, 200)
  const closed = await build(t, { config: { TASK_API_KEYS: 'k1', TASK_METRICS_AUTH: true } })
  t.equal((await closed.inject({ method: 'GET', url: '/metrics' })).statusCode, 401)
  t.equal((await closed.inject({ method: 'GET', url: '/metrics', headers: { authorization: 'Bearer k1' } })).statusCode, 200)
})

t.test('the real server adds Node\'s process metrics', async (t) => {
  const { start } = await scratch(t)
  const server = await start()
  const res = await fetch(`${server.base}/metrics`)
  t.equal(res.status, 200)
  const samples = parse(await res.text())
  t.ok(value(samples, 'process_resident_memory_bytes') > 0, 'process_resident_memory_bytes')
  t.ok(samples.some((s) => s.name === 'nodejs_eventloop_lag_seconds'), 'event loop lag')
  t.equal(value(samples, 'taskvault_sessions', { state: 'active' }), 0)
  t.equal((await server.stop('SIGTERM')).code, 0)
})
