/**
 * The live event stream, GET /api/v1/tasks/events, over real HTTP on 127.0.0.1: the events of a
 * run in order and each after its change is on disk, resume with Last-Event-ID and a reset past
 * the buffer, a reader that does not read cut off without memory growth, the heartbeat (and the
 * request timeout not cutting a stream), the client cap, API keys, and shutdown with streams open.
 */
import { readFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import v8 from 'node:v8'
import vm from 'node:vm'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { AgentError } from '../services/errors.js'
import { waitFor } from './agents-fakes.js'
import { build, createSession, memoryLog, post, tempDir, type TestAppOptions, type TestContext } from './helper.js'
import { call, kernelConnection, scratch } from './server-process.js'
import { openStream, type SseEvent } from './sse-client.js'
import { createServer, type ServerResponse } from 'node:http'
import { EventStreamHub, flushInterval } from '../services/events/event-stream.js'
import { TaskEventBuffer, type BufferedEvent, type TaskEventData } from '../services/events/task-events.js'
import { ChangeLoad } from '../services/events/change-load.js'

const EVENTS = '/api/v1/tasks/events'

async function listening (t: TestContext, options: TestAppOptions = {}): Promise<{ app: FastifyInstance, base: string, dir: string }> {
  const dir = options.dir ?? await tempDir(t)
  const app = await build(t, { ...options, dir })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address() as net.AddressInfo
  return { app, base: `http://127.0.0.1:${address.port}`, dir }
}

const names = (events: SseEvent[], sessionId?: string): string[] =>
  events.filter((e) => sessionId === undefined || e.data.session_id === sessionId).map((e) => e.event)

t.test('a background run: every event in order, each sent once its change is on disk', async (t) => {
  const { app, base, dir } = await listening(t, {
    executors: { default: async (task) => { if (task.instruction === 'bad') throw new Error('boom'); return { result: `done ${task.instruction}` } } }
  })
  // What the disk says at the moment each task event is emitted.
  const onDisk: string[] = []
  const unsubscribe = app.taskEvents.subscribe((event) => {
    if (!event.name.startsWith('task.')) return
    const stored = JSON.parse(readFileSync(join(dir, 'order.json'), 'utf8'))
    const task = stored.session.tasks.find((x: { id: string }) => x.id === event.data.task_id)
    onDisk.push(`${event.name}:${task.status}`)
  })
  t.teardown(unsubscribe)
  const stream = await openStream(t, `${base}${EVENTS}`)
  t.equal(stream.status, 200)
  t.match(stream.headers['content-type'], /^text\/event-stream/)
  t.equal(stream.headers['cache-control'], 'no-cache')
  t.equal(stream.headers['x-accel-buffering'], 'no')

  await createSession(app, 'order', '1. good\n2. bad')
  t.equal((await post(app, '/execute-all', { session_id: 'order', wait: false })).statusCode, 202)
  const events = await stream.until((list) => list.some((e) => e.event === 'run.finished') && list.at(-1)?.event === 'progress')
  t.same(names(events), [
    'session.created', 'tasks.added', 'progress',
    'run.started', 'progress',
    'task.started', 'progress', 'task.completed', 'progress',
    'task.started', 'progress', 'task.failed', 'progress',
    'run.finished', 'progress'
  ])
  t.same(onDisk, ['task.started:InProgress', 'task.completed:Completed', 'task.started:InProgress', 'task.failed:Failed'], 'each task event follows its durable save')
  const ids = events.map((e) => Number(e.id?.split('-')[1]))
  t.same(ids, [...ids].sort((a, b) => a - b), 'ids increase')
  t.ok(events.every((e) => e.data.session_id === 'order'), 'every event names its session')
  t.notOk(events.some((e) => 'result' in e.data), 'results are not carried')
  const last = events.at(-1) as SseEvent
  t.match(last.data, { total: 2, completed: 1, failed: 1, all_done: true, running: false })
  t.match(events.find((e) => e.event === 'task.failed')?.data, { status: 'Failed', task_id: /^task_2_/ })
})

t.test('?session_id=all gets every session, as /list reads it', async (t) => {
  const { app, base } = await listening(t)
  const all = await openStream(t, `${base}${EVENTS}?session_id=all`)
  t.equal(all.status, 200)
  await createSession(app, 'first', 'x')
  await createSession(app, 'second', 'y')
  await all.until((list) => names(list, 'second').length === 3)
  t.same(names(all.events, 'first'), ['session.created', 'tasks.added', 'progress'], 'the first session\'s events too')
})

t.test('?session_id= gets that session only; a client that disconnects mid-stream is let go', async (t) => {
  const { app, base } = await listening(t, { config: { TASK_EVENTS_MAX_CLIENTS: 2 } })
  const one = await openStream(t, `${base}${EVENTS}?session_id=one`)
  const all = await openStream(t, `${base}${EVENTS}`)
  await createSession(app, 'two', 'x')
  await createSession(app, 'one', 'y')
  await all.until((list) => names(list, 'one').length === 3)
  await one.until((list) => list.length === 3)
  t.same(names(one.events), ['session.created', 'tasks.added', 'progress'])
  t.equal((await openStream(t, `${base}${EVENTS}?session_id=bad%20id`)).status, 400, 'a bad id is a 400')
  // Both slots are taken; a client that goes away frees its slot, and nothing breaks.
  one.close()
  all.close()
  await createSession(app, 'three', 'z')
  const again = await waitFor('a slot to free', async () => {
    const client = await openStream(t, `${base}${EVENTS}`)
    return client.status === 200 && client
  }, 5000)
  await createSession(app, 'four', 'w')
  await again.until((list) => names(list, 'four').length === 3)
})

t.test('resume with Last-Event-ID: the missed events, in order; an id older than the buffer or from another lifetime gets a reset', async (t) => {
  const { app, base } = await listening(t, { config: { TASK_EVENTS_BUFFER: 8 } })
  const first = await openStream(t, `${base}${EVENTS}`)
  await createSession(app, 'r1', 'a')
  const seen = await first.until((list) => list.length === 3)
  first.close()
  const lastId = seen[2]?.id as string
  await createSession(app, 'r2', 'b')

  const resumed = await openStream(t, `${base}${EVENTS}`, { 'last-event-id': lastId })
  await resumed.until((list) => list.length === 3)
  t.same(resumed.events.map((e) => `${e.event}:${String(e.data.session_id)}`), ['session.created:r2', 'tasks.added:r2', 'progress:r2'], 'only what was missed')
  resumed.close()

  // 3 events per create: 9 more push the resumed-from id out of an 8-event buffer.
  for (const id of ['r3', 'r4', 'r5']) await createSession(app, id, 'c')
  const late = await openStream(t, `${base}${EVENTS}`, { 'last-event-id': lastId })
  const [reset] = await late.until((list) => list.length >= 1)
  t.equal(reset?.event, 'reset')
  t.same(reset?.data, { reason: 'unknown-id' })
  late.close()
  // The reset's id names "now": resuming from it misses nothing that follows.
  const after = await openStream(t, `${base}${EVENTS}`, { 'last-event-id': reset?.id as string })
  await createSession(app, 'r6', 'd')
  await after.until((list) => list.length === 3)
  t.same(names(after.events), ['session.created', 'tasks.added', 'progress'])

  const foreign = await openStream(t, `${base}${EVENTS}`, { 'last-event-id': `00000000-${lastId.split('-')[1] as string}` })
  t.equal((await foreign.until((list) => list.length >= 1))[0]?.event, 'reset', 'an id from another process lifetime')
  // Longer than any id the server gives: a reset too, never a 400 (EventSource stops on one).
  const overlong = await openStream(t, `${base}${EVENTS}`, { 'last-event-id': 'x'.repeat(300) })
  t.equal((await overlong.until((list) => list.length >= 1))[0]?.event, 'reset', 'an id of 300 characters')
})

t.test('a client that does not read is cut off with a reset once its queue passes the bound; memory does not grow', async (t) => {
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc') as () => void
  const bound = 64 * 1024
  const { app, base } = await listening(t, { config: { TASK_EVENTS_MAX_QUEUED_BYTES: bound, TASK_EVENTS_BUFFER: 100 } })
  const { port } = new URL(base)
  const socket = net.connect(Number(port), '127.0.0.1')
  t.teardown(() => { socket.destroy() })
  socket.on('error', () => {})
  let received = ''
  await new Promise<void>((resolve) => {
    socket.once('connect', () => socket.write(`GET ${EVENTS} HTTP/1.1\r\nHost: localhost\r\n\r\n`))
    socket.once('data', (chunk) => { received += chunk.toString('utf8'); resolve() })
  })
  socket.pause() // reads nothing more: the kernel buffers fill, then the server's queue
  const ok = await openStream(t, `${base}${EVENTS}?session_id=quiet`)

  gc()
  const before = process.memoryUsage()
  const pad = 'x'.repeat(4096)
  // 80 MB of events: without the bound all of it would wait in the server's queue for this client.
  for (let batch = 0; batch < 200; batch++) {
    for (let i = 0; i < 100; i++) app.taskEvents.append('progress', { session_id: 'slow', pad })
    await new Promise((resolve) => setImmediate(resolve))
  }
  gc()
  const after = process.memoryUsage()
  const grown = (after.heapUsed + after.external) - (before.heapUsed + before.external)
  t.ok(grown < 16 * 1024 * 1024, `memory grew by ${(grown / 1048576).toFixed(1)} MB for 80 MB of events`)

  // Reading again, the client finds the reset at the end of what was queued, and the stream ends.
  const ended = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  socket.on('data', (chunk) => { received += chunk.toString('utf8') })
  socket.resume()
  await ended
  t.match(received.slice(-200), /event: reset\ndata: \{"reason":"slow-reader"\}\n\n/)
  t.ok(received.length < 16 * 1024 * 1024, `it got ${(received.length / 1048576).toFixed(1)} MB, not everything`)
  // A client of another session was not affected.
  await createSession(app, 'quiet', 'q')
  await ok.until((list) => list.length === 3)
})

t.test('a cut-off client that still does not read loses its connection TASK_EVENTS_CUT_GRACE_MS later', async (t) => {
  const { app, base } = await listening(t, { config: { TASK_EVENTS_MAX_QUEUED_BYTES: 64 * 1024, TASK_EVENTS_BUFFER: 100, TASK_EVENTS_CUT_GRACE_MS: 300 } })
  const { port } = new URL(base)
  const socket = net.connect(Number(port), '127.0.0.1')
  t.teardown(() => { socket.destroy() })
  socket.on('error', () => {})
  await new Promise<void>((resolve) => {
    socket.once('connect', () => socket.write(`GET ${EVENTS} HTTP/1.1\r\nHost: localhost\r\n\r\n`))
    socket.once('data', () => resolve())
  })
  socket.pause()
  const connections = async (): Promise<number> => new Promise((resolve, reject) => app.server.getConnections((err, count) => { if (err !== null) reject(err); else resolve(count) }))
  t.equal(await connections(), 1)
  const pad = 'x'.repeat(4096)
  const start = Date.now()
  // Until the server has cut it off (its stream gone), then until it closed the socket.
  while (app.eventStreams.size > 0 && Date.now() - start < 10_000) {
    for (let i = 0; i < 100; i++) app.taskEvents.append('progress', { session_id: 'slow', pad })
    await new Promise((resolve) => setImmediate(resolve))
  }
  const cutAt = Date.now()
  t.equal(await connections(), 1, 'still open right after the cut: it has the grace to read its reset')
  await waitFor('the socket closed by the server', async () => await connections() === 0, 3000)
  t.ok(Date.now() - cutAt < 3000, `closed ${Date.now() - cutAt} ms after the cut (grace 300 ms, default 5000)`)
  // With a reset: the server's kernel dropped what it still held for the client (megabytes for a
  // slow reader) at once. Closed, it would keep that connection, queue and all, until the client
  // reads it or the kernel gives up, minutes later.
  t.equal(await kernelConnection(Number(port), socket.localPort as number, 2000), null, 'the server\'s kernel holds no connection to the client (state, in /proc/net/tcp\'s hex)')
})

/** Appends an event every 40 ms until the hub's pace is back at `flushMs`: its smoothed reading of the load has eased. */
async function paceBackAt (hub: EventStreamHub, buffer: TaskEventBuffer, flushMs: number, event: () => TaskEventData): Promise<void> {
  await waitFor('the pace back at TASK_EVENTS_FLUSH_MS', async () => {
    buffer.append('progress', event())
    await sleep(40)
    return hub.pace === flushMs
  }, 5000)
}

t.test('the pace: a flush may take the idle share of the loop, at least TASK_EVENTS_FANOUT_SHARE, between the two flush bounds', async (t) => {
  const limits = { flushMs: 25, flushMaxMs: 250, fanoutShare: 0.1, fanoutSliceMs: 2 }
  t.equal(flushInterval(10, 0.2, limits), 25, 'idle time to spare: every TASK_EVENTS_FLUSH_MS')
  t.equal(flushInterval(10, 1, limits), 100, 'no idle time: the flush keeps a tenth of the loop')
  t.equal(flushInterval(10, 0.95, limits), 100, 'less idle than the share: the share')
  t.equal(flushInterval(10, 0.75, limits), 40, 'a quarter idle: the flush takes that quarter')
  t.equal(flushInterval(40, 1, limits), 250, 'never further apart than TASK_EVENTS_FLUSH_MAX_MS')
  t.equal(flushInterval(40, 1, { ...limits, flushMaxMs: 10 }), 25, 'TASK_EVENTS_FLUSH_MS wins over a smaller maximum')
})

t.test('a busy server spreads stream writes out; idle again, they come every TASK_EVENTS_FLUSH_MS; every client gets every event in order', async (t) => {
  const flushMs = 10
  // The hub on a plain node:http server: its pace is not part of the app's decorators.
  const buffer = new TaskEventBuffer(100_000)
  const hub = new EventStreamHub(buffer, { maxClients: 1000, heartbeatMs: 3_600_000, maxQueuedBytes: 1024 * 1024, cutGraceMs: 5000, flushMs, flushMaxMs: 200, fanoutShare: 0.01, fanoutSliceMs: 2 }, { info: () => {}, warn: () => {} })
  const server = createServer((_req, res) => { hub.open(res, null, undefined) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hub.close(); server.close() })
  const port = (server.address() as net.AddressInfo).port
  // 200 streams, so that a flush is a measurable share of the loop (about 200 system calls).
  const received: string[] = []
  const sockets = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
    const socket = net.connect(Number(port), '127.0.0.1')
    received[i] = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => { received[i] += chunk })
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
    socket.write(`GET ${EVENTS} HTTP/1.1\r\nHost: localhost\r\n\r\n`)
    return socket
  }))
  t.teardown(() => { for (const socket of sockets) socket.destroy() })
  await waitFor('every stream open', () => hub.size === 200)
  t.equal(hub.pace, flushMs)

  // The rest of the server keeps the loop busy: 9 ms of work every turn, an event each turn,
  // for long enough that the pace's smoothed reading (500 ms) takes it in whole.
  let sent = 0
  let widest = 0
  const until = performance.now() + 2500
  while (performance.now() < until) {
    const busyUntil = performance.now() + 9
    while (performance.now() < busyUntil);
    buffer.append('progress', { session_id: 'busy', n: ++sent })
    widest = Math.max(widest, hub.pace)
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.ok(widest >= 2.5 * flushMs, `flushes spread out to ${widest.toFixed(0)} ms apart under load`)
  t.ok(widest <= 200, 'never more than TASK_EVENTS_FLUSH_MAX_MS')

  // Idle again: events a while apart bring the pace back (the first reading still spans the busy time).
  await paceBackAt(hub, buffer, flushMs, () => ({ session_id: 'busy', n: ++sent }))
  t.pass('back to every TASK_EVENTS_FLUSH_MS')
  const expected = Array.from({ length: sent }, (_, i) => i + 1)
  await waitFor('every event on every stream', () => received.every((text) => (text.match(/\n\n/g) ?? []).length >= sent + 1))
  for (const text of received) {
    const ns = [...text.matchAll(/"n":(\d+)/g)].map((m) => Number(m[1]))
    if (JSON.stringify(ns) !== JSON.stringify(expected)) {
      t.fail(`a stream got ${ns.length} of ${sent} events, or out of order`)
      return
    }
  }
  t.pass(`all 200 streams got all ${sent} events in order`)
  // No chunked framing: the events go to the socket as they are, and the body ends with the connection.
  t.match(received[0], /^HTTP\/1\.1 200 OK\r\n/)
  t.notMatch(received[0]!.split('\r\n\r\n')[0], /transfer-encoding/i)
  t.match(received[0]!.split('\r\n\r\n')[0], /connection: close/i)
})

t.test('changes in progress make a busy server however idle its loop: writes spread out, and come back every TASK_EVENTS_FLUSH_MS once they end', async (t) => {
  const flushMs = 10
  const buffer = new TaskEventBuffer(100_000)
  const load = new ChangeLoad(2)
  const flushMaxMs = 1000
  const hub = new EventStreamHub(buffer, { maxClients: 1000, heartbeatMs: 3_600_000, maxQueuedBytes: 1024 * 1024, cutGraceMs: 5000, flushMs, flushMaxMs, fanoutShare: 0.01, fanoutSliceMs: 2 }, { info: () => {}, warn: () => {} }, load)
  const server = createServer((_req, res) => { hub.open(res, null, undefined) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hub.close(); server.close() })
  const port = (server.address() as net.AddressInfo).port
  // 200 streams: a flush is then a measurable time (about 200 system calls).
  const sockets = await Promise.all(Array.from({ length: 200 }, async () => {
    const socket = net.connect(Number(port), '127.0.0.1')
    socket.resume()
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
    socket.write(`GET ${EVENTS} HTTP/1.1\r\nHost: localhost\r\n\r\n`)
    return socket
  }))
  t.teardown(() => { for (const socket of sockets) socket.destroy() })
  await waitFor('every stream open', () => hub.size === 200)
  // An event every 15 ms on an otherwise idle loop, for `ms`; the pace seen after each, in order.
  let sent = 0
  const trickle = async (ms: number): Promise<number[]> => {
    const paces: number[] = []
    const until = performance.now() + ms
    while (performance.now() < until) {
      buffer.append('progress', { session_id: 'load', n: ++sent })
      await sleep(15)
      paces.push(hub.pace)
    }
    return paces
  }
  // The middle reading: one flush slowed by the host (another process on the core) moves it not.
  const median = (paces: number[]): number => [...paces].sort((x, y) => x - y)[Math.floor(paces.length / 2)] ?? 0
  // Opening 200 streams kept the loop busy a moment: the pace first settles.
  await paceBackAt(hub, buffer, flushMs, () => ({ session_id: 'load', n: ++sent }))
  // On a loaded machine a flush of 200 writes takes longer and the loop reads busier without
  // any change in progress: what the changes do is read against this.
  const idle = median(await trickle(800))
  t.comment(`no change in progress: flushes typically ${idle.toFixed(0)} ms apart`)
  for (let i = 0; i < 3; i++) load.started()
  t.equal(hub.changes, 3)
  // Long enough for the smoothed reading (about 500 ms) to near 1: the writes then keep a
  // hundredth. The second half is read, once the reading has settled.
  const busy = await trickle(3000)
  const spread = median(busy.slice(Math.floor(busy.length / 2)))
  t.ok(spread >= Math.max(10 * flushMs, 3 * idle), `three changes in progress (TASK_EVENTS_BUSY_CHANGES 2): flushes typically spread out to ${spread.toFixed(0)} ms apart, against ${idle.toFixed(0)} without`)
  t.ok(Math.max(...busy) <= flushMaxMs, 'never more than TASK_EVENTS_FLUSH_MAX_MS')
  for (let i = 0; i < 3; i++) load.ended()
  await paceBackAt(hub, buffer, flushMs, () => ({ session_id: 'load', n: ++sent }))
  t.pass('the changes ended: back to every TASK_EVENTS_FLUSH_MS')
})

t.test('the server counts each change until its response closes: answered, refused, or its client gone mid-run; reads and streams never count', async (t) => {
  let release = (): void => {}
  const { app, base } = await listening(t, {
    executors: { default: async () => { await new Promise<void>((resolve) => { release = resolve }); return { result: 'done' } } }
  })
  t.teardown(() => { release() })
  const stream = await openStream(t, `${base}${EVENTS}`)
  await createSession(app, 'count', '1. slow\n2. slow')
  t.equal(app.eventStreams.changes, 0, 'an open stream and a finished create: none in progress')
  t.equal((await fetch(`${base}/api/v1/tasks/create`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"session_id":"bad id"}' })).status, 400)
  t.equal((await fetch(`${base}/api/v1/tasks/progress?session_id=count`)).status, 200)
  t.equal(app.eventStreams.changes, 0, 'a refused change and a read leave none in progress')
  // An execute whose client goes away while the agent works.
  const socket = net.connect(Number(new URL(base).port), '127.0.0.1')
  socket.on('error', () => {})
  const body = '{"session_id":"count"}'
  socket.write(`POST /api/v1/tasks/execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
  await stream.until((events) => events.some((e) => e.event === 'task.started'))
  t.equal(app.eventStreams.changes, 1, 'the execute in progress counts')
  socket.destroy()
  await waitFor('the execute no longer counted once its client is gone', () => app.eventStreams.changes === 0)
  release()
  await stream.until((events) => events.some((e) => e.event === 'task.completed'))
  t.equal(app.eventStreams.changes, 0)
})

t.test('a batch for many clients goes out in slices of TASK_EVENTS_FANOUT_SLICE_MS, the loop turning between them; each client gets each batch whole and in order, shutdown the rest first', async (t) => {
  const buffer = new TaskEventBuffer(1000)
  // A slice of 0 ms: the clock is read every 16 clients, so each turn writes to 16 of them.
  const hub = new EventStreamHub(buffer, { maxClients: 100, heartbeatMs: 3_600_000, maxQueuedBytes: 1024 * 1024, cutGraceMs: 5000, flushMs: 0, flushMaxMs: 0, fanoutShare: 0.1, fanoutSliceMs: 0 }, { info: () => {}, warn: () => {} })
  const server = createServer((_req, res) => { hub.open(res, null, undefined) })
  const streams: net.Socket[] = []
  server.on('connection', (socket) => { streams.push(socket) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hub.close(); server.close() })
  const port = (server.address() as net.AddressInfo).port
  const clients = Array.from({ length: 64 }, () => rawClient(port, `GET ${EVENTS} HTTP/1.1\r\nHost: localhost\r\n\r\n`))
  t.teardown(() => { for (const client of clients) client.socket.destroy() })
  await waitFor('every stream open', () => hub.size === 64 && clients.every((client) => client.received().includes('connected')))
  const before = streams.map((socket) => socket.bytesWritten)
  const turn = async (): Promise<void> => { await new Promise((resolve) => setImmediate(resolve)) }

  // The flush runs at the next turn; this check right after it, in the same turn.
  const first = buffer.append('progress', { session_id: 's', n: 1 })
  // Every event's frame has the same length here: bytes written tell how many each client got.
  const frame = Buffer.byteLength(buffer.frameOf(first))
  const got = (events: number): number => streams.filter((socket, i) => socket.bytesWritten - (before[i] as number) >= events * frame).length
  await turn()
  t.equal(got(1), 16, 'one slice in the first turn')
  // A second batch while the first is under way: the first is written whole before any of it.
  buffer.append('progress', { session_id: 's', n: 2 })
  await turn()
  t.equal(got(1), 64, 'the first batch reached every client')
  t.equal(got(2), 16, 'the second batch, one slice so far')
  // Shutdown mid-batch: every client gets the rest, then its stream ends.
  buffer.append('progress', { session_id: 's', n: 3 })
  await turn()
  hub.close()
  await waitFor('every stream ended', () => clients.every((client) => client.socket.readableEnded))
  const orders = clients.map((client) => [...client.received().matchAll(/"n":(\d+)/g)].map((m) => Number(m[1])).join(','))
  t.same(new Set(orders), new Set(['1,2,3']), 'every client got every event, in order')
})

t.test('many clients resuming at once are written a slice a turn, as live batches are: each gets every event, in order', async (t) => {
  // Some 300 KB each to resume: five pieces.
  const { buffer, first } = paddedEvents(1000, 300)
  // A slice of 0 ms: 16 pieces a turn.
  const hub = new EventStreamHub(buffer, { maxClients: 100, heartbeatMs: 3_600_000, maxQueuedBytes: 1024 * 1024, cutGraceMs: 5000, flushMs: 0, flushMaxMs: 0, fanoutShare: 0.1, fanoutSliceMs: 0 }, { info: () => {}, warn: () => {} })
  // The requests are held, then their streams opened in one go: a burst of resumes in one turn.
  const asked: ServerResponse[] = []
  const server = createServer((_req, res) => { asked.push(res) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hub.close(); server.close() })
  const port = (server.address() as net.AddressInfo).port
  const clients = Array.from({ length: 64 }, () => rawClient(port, `GET ${EVENTS} HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: ${buffer.idOf(first)}\r\n\r\n`))
  t.teardown(() => { for (const client of clients) client.socket.destroy() })
  await waitFor('every request in', () => asked.length === 64)
  for (const res of asked) hub.open(res, null, buffer.idOf(first))
  // Written so far: the headers and the first lines, some 200 bytes; a piece is 64 KB.
  const resumed = (): number => asked.filter((res) => (res.socket?.bytesWritten ?? 0) > 32 * 1024).length
  t.equal(resumed(), 0, 'no resume written in the turn that opened them')
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(resumed(), 16, 'one slice in the next turn')
  await waitFor('every resume written', () => clients.every((client) => client.received().includes('"n":299')))
  const orders = clients.map((client) => [...client.received().matchAll(/"n":(\d+)/g)].map((m) => Number(m[1])))
  t.ok(orders.every((order) => order.length === 299 && order.every((n, i) => n === i + 1)), 'every client got every event after its id, in order')
})

t.test('open streams are a gauge on /metrics, and each logs its end with its duration', async (t) => {
  const log = memoryLog()
  const { app, base } = await listening(t, { logger: log.logger })
  const gauge = async (): Promise<number> => Number(/^taskvault_event_streams (\d+)$/mu.exec((await app.inject({ method: 'GET', url: '/metrics' })).body)?.[1])
  t.equal(await gauge(), 0)
  const first = await openStream(t, `${base}${EVENTS}`)
  const second = await openStream(t, `${base}${EVENTS}?session_id=s`)
  t.equal(await gauge(), 2, 'two open')
  first.close()
  await waitFor('the first to close', async () => await gauge() === 1)
  const closed = await waitFor('its end logged', () => log.lines().find((line) => line.msg === 'Event stream closed'))
  t.type(closed.ms, 'number', 'with its duration')
  t.equal(closed.reqId !== undefined, true, 'on the request\'s log')
  second.close()
  await waitFor('none open', async () => await gauge() === 0)
})

/** A buffer of `size` events holding `count` progress events of session 's' (`n` from 0), each some 1 KB; the first of them. */
function paddedEvents (size: number, count: number): { buffer: TaskEventBuffer, first: BufferedEvent } {
  const buffer = new TaskEventBuffer(size)
  const pad = 'x'.repeat(1000)
  const first = buffer.append('progress', { session_id: 's', n: 0, pad })
  for (let n = 1; n < count; n++) buffer.append('progress', { session_id: 's', n, pad })
  return { buffer, first }
}

/** Sends `request` raw on a new connection; collects what comes back. */
function rawClient (port: number, request: string): { received: () => string, socket: net.Socket } {
  const socket = net.connect(port, '127.0.0.1')
  let text = ''
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => { text += chunk })
  socket.on('error', () => {})
  socket.write(request)
  return { received: () => text, socket }
}

/**
 * A hub on a bare node:http server (no app): every request opens a stream, `/quiet` for session
 * 'quiet' only, resuming from its Last-Event-ID. Writes at once (no pace); `maxQueuedBytes` 1 MiB unless given.
 */
async function hubServer (t: TestContext, buffer: TaskEventBuffer, maxQueuedBytes = 1024 * 1024): Promise<{ hub: EventStreamHub, port: number }> {
  const hub = new EventStreamHub(buffer, { maxClients: 10, heartbeatMs: 3_600_000, maxQueuedBytes, cutGraceMs: 5000, flushMs: 0, flushMaxMs: 0, fanoutShare: 0.1, fanoutSliceMs: 2 }, { info: () => {}, warn: () => {} })
  const server = createServer((req, res) => { hub.open(res, req.url === '/quiet' ? 'quiet' : null, req.headers['last-event-id'] as string | undefined) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hub.close(); server.close() })
  return { hub, port: (server.address() as net.AddressInfo).port }
}

t.test('HEAD on the stream gets its headers only, and no stream', async (t) => {
  const { base } = await listening(t)
  const client = rawClient(Number(new URL(base).port), `HEAD ${EVENTS} HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  t.teardown(() => { client.socket.destroy() })
  await waitFor('the headers', () => client.received().includes('\r\n\r\n'))
  await sleep(200)
  const [head, body] = client.received().split('\r\n\r\n') as [string, string]
  t.match(head, /^HTTP\/1\.1 200 OK\r\n/)
  t.match(head, /content-type: text\/event-stream/i)
  t.equal(body, '', 'nothing after the headers')
})

t.test('a stream requested behind a slow response on the same connection (pipelined) starts once that one is sent', async (t) => {
  const buffer = new TaskEventBuffer(100)
  const hub = new EventStreamHub(buffer, { maxClients: 10, heartbeatMs: 3_600_000, maxQueuedBytes: 1024 * 1024, cutGraceMs: 5000, flushMs: 0, flushMaxMs: 0, fanoutShare: 0.1, fanoutSliceMs: 2 }, { info: () => {}, warn: () => {} })
  const server = createServer((req, res) => {
    if (req.url === '/slow') setTimeout(() => res.end('slow done'), 300)
    else hub.open(res, null, undefined)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hub.close(); server.close() })
  const client = rawClient((server.address() as net.AddressInfo).port, 'GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\nGET /events HTTP/1.1\r\nHost: localhost\r\n\r\n')
  t.teardown(() => { client.socket.destroy() })
  await waitFor('the stream opened', () => hub.size === 1)
  buffer.append('progress', { session_id: 'early' })
  await waitFor('the slow answer', () => client.received().includes('slow done'))
  buffer.append('progress', { session_id: 'late' })
  await waitFor('both events on the stream', () => client.received().includes('"late"'))
  const stream = client.received().slice(client.received().indexOf('slow done'))
  t.match(stream, /HTTP\/1\.1 200 OK[\s\S]*retry: 2000[\s\S]*"early"[\s\S]*"late"/, 'its headers, then the events in order')
})

t.test('a stream pipelined behind a slow response holds nothing while it waits, then resumes a piece at a time; not read, it is cut and its connection closed', async (t) => {
  // Some 20 MB to replay: far past the bound, and more than the kernel's socket buffers take.
  const { buffer, first } = paddedEvents(20_000, 20_000)
  const hub = new EventStreamHub(buffer, { maxClients: 10, heartbeatMs: 3_600_000, maxQueuedBytes: 256 * 1024, cutGraceMs: 200, flushMs: 0, flushMaxMs: 0, fanoutShare: 0.1, fanoutSliceMs: 2 }, { info: () => {}, warn: () => {} })
  let stream: ServerResponse | null = null
  let connection: net.Socket | null = null
  let finishSlow = (): void => {}
  const server = createServer((req, res) => {
    if (req.url === '/slow') finishSlow = () => { res.end('slow done') }
    else {
      stream = res
      connection = req.socket
      hub.open(res, null, req.headers['last-event-id'] as string | undefined)
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { hub.close(); server.close() })
  // A client that sends both requests and never reads.
  const socket = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
  socket.on('error', () => {})
  socket.pause()
  t.teardown(() => { socket.destroy() })
  socket.write(`GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\nGET /events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: ${buffer.idOf(first)}\r\n\r\n`)
  await waitFor('the stream asked for', () => stream !== null)
  await sleep(100)
  t.equal(hub.size, 1, 'it counts against the cap while it waits')
  t.equal((stream as ServerResponse | null)?.writableLength, 0, 'nothing is held for it while the slow response is not sent')
  finishSlow()
  await waitFor('the stream started', () => stream?.headersSent === true)
  await sleep(300)
  const queued = (stream as ServerResponse | null)?.socket?.writableLength ?? 0
  t.ok(queued <= 256 * 1024, `its resume waits a piece at a time behind the socket (${queued} bytes queued)`)
  // Live events past the bound, behind the resume it does not read: cut, and its connection closed.
  for (let n = 0; n < 400; n++) buffer.append('progress', { session_id: 's', n, pad: 'x'.repeat(1000) })
  await waitFor('the client cut off', () => hub.size === 0, 10_000)
  await waitFor('its connection closed', () => (connection as net.Socket | null)?.destroyed === true, 10_000)
  t.pass('the server closed the connection of a client that did not read')
})

t.test('a stream queued behind another on a connection that dies is let go (it never counts against the cap)', async (t) => {
  const { hub, port } = await hubServer(t, new TaskEventBuffer(100))
  // The second stream waits for the first, which never ends: its response never gets the socket.
  const client = rawClient(port, 'GET /events HTTP/1.1\r\nHost: localhost\r\n\r\nGET /quiet HTTP/1.1\r\nHost: localhost\r\n\r\n')
  await waitFor('both streams opened', () => hub.size === 2)
  client.socket.destroy()
  await waitFor('both streams let go', () => hub.size === 0, 5000)
  t.equal(hub.size, 0, 'no stream left counted')
})

/** The frames in a raw HTTP response's body: id and event of each, in order. */
const frames = (text: string): Array<{ id: string, event: string }> =>
  [...text.matchAll(/^id: (\S+)\nevent: (\S+)\n/gmu)].map((m) => ({ id: m[1] as string, event: m[2] as string }))

/** A client that reads all the time, but at most 32 KB a millisecond: slower than the server can write, so the kernel's buffers fill. */
function throttledClient (port: number, request: string): { received: () => string, socket: net.Socket } {
  const socket = net.connect(port, '127.0.0.1')
  let text = ''
  socket.on('error', () => {})
  socket.pause()
  const reader = setInterval(() => {
    const chunk = (socket.read(32 * 1024) ?? socket.read()) as Buffer | null
    if (chunk !== null) text += chunk.toString('latin1')
  }, 1)
  socket.once('close', () => { clearInterval(reader) })
  socket.write(request)
  return { received: () => text, socket }
}

t.test('a resume bigger than TASK_EVENTS_MAX_QUEUED_BYTES reaches a client that reads, whole and in order, live events after it', async (t) => {
  // A bound above and one below a socket's own high-water mark (16 KiB on Node 20, 64 KiB later).
  for (const bound of [64 * 1024, 8 * 1024]) {
    const buffer = new TaskEventBuffer(20_000)
    const { hub, port } = await hubServer(t, buffer, bound)
    const pad = 'x'.repeat(1000)
    const first = buffer.append('progress', { session_id: 's', n: 0, pad })
    // About 20 MB missed: more than the kernel's socket buffers take at once, and 300 times the bound.
    const missed = 19_999
    for (let n = 1; n <= missed; n++) buffer.append('progress', { session_id: 's', n, pad })
    const client = throttledClient(port, `GET /events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: ${buffer.idOf(first)}\r\n\r\n`)
    t.teardown(() => { client.socket.destroy() })
    await waitFor('the stream opened', () => hub.size === 1)
    // Live events while the resume is being written, four fifths of the bound: they come after it.
    const live = Math.floor((bound * 0.8) / 1100)
    for (let n = missed + 1; n <= missed + live; n++) buffer.append('progress', { session_id: 's', n, pad })
    const lastId = buffer.currentId()
    await waitFor('the last live event', () => client.received().includes(`id: ${lastId}\n`), 30_000)
    const got = frames(client.received())
    t.notOk(got.some((frame) => frame.event === 'reset'), `bound ${bound}: no reset, the client reads, so it is not cut`)
    t.equal(got.length, missed + live, `bound ${bound}: every event after the id, once`)
    t.ok(got.every((frame, i) => frame.id === `${buffer.lifetime}-${i + 2}`), `bound ${bound}: in order, the live ones last`)
    t.equal(hub.size, 1, `bound ${bound}: the stream goes on`)
    client.socket.destroy()
  }
})

t.test('a client that stops reading during a resume is cut off once the live events held behind it pass the bound', async (t) => {
  const buffer = new TaskEventBuffer(20_000)
  const { hub, port } = await hubServer(t, buffer, 64 * 1024)
  const pad = 'x'.repeat(1000)
  const first = buffer.append('progress', { session_id: 's', pad })
  // About 20 MB missed: more than the kernel's socket buffers take, so the resume waits.
  for (let n = 1; n < 20_000; n++) buffer.append('progress', { session_id: 's', pad })
  const client = rawClient(port, `GET /events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: ${buffer.idOf(first)}\r\n\r\n`)
  client.socket.pause()
  t.teardown(() => { client.socket.destroy() })
  await waitFor('the stream opened', () => hub.size === 1)
  await sleep(300)
  t.equal(hub.size, 1, 'waiting for the reader is not a reason to cut it')
  // Live events pile up behind the resume until they pass the bound.
  for (let n = 0; n < 100 && hub.size === 1; n++) {
    buffer.append('progress', { session_id: 's', pad })
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(hub.size, 0, 'cut off')
})

t.test('a client resuming from a shared-log id this replica has not read yet gets no reset, and no event twice', async (t) => {
  const buffer = new TaskEventBuffer(100)
  buffer.adopt('log', 10)
  const { hub, port } = await hubServer(t, buffer)
  // The client saw up to 12 on another replica; this one has read up to 10.
  const client = rawClient(port, 'GET /events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: log-12\r\n\r\n')
  t.teardown(() => { client.socket.destroy() })
  await waitFor('the stream opened', () => hub.size === 1)
  for (const seq of [11, 12, 13]) {
    buffer.appendAt(seq, 'progress', { session_id: `s${seq}` })
    await new Promise((resolve) => setImmediate(resolve))
  }
  buffer.appendAt(14, 'progress', { session_id: 's14' })
  await waitFor('event 14', () => client.received().includes('id: log-14\n'))
  t.same(frames(client.received()).map((frame) => frame.id), ['log-13', 'log-14'], 'only what came after its id')
})

t.test('heartbeats keep a stream alive, and the request timeout does not cut it', async (t) => {
  const { app, base } = await listening(t, { config: { TASK_EVENTS_HEARTBEAT_MS: 100, TASK_REQUEST_TIMEOUT_MS: 200 } })
  const stream = await openStream(t, `${base}${EVENTS}`)
  await sleep(1200)
  const beats = stream.text().split(': heartbeat\n\n').length - 1
  t.ok(beats >= 5, `${beats} heartbeats in 1.2 s`)
  await createSession(app, 'late', 'x')
  await stream.until((list) => list.length === 3)
  t.pass('still delivering after six request timeouts')
})

t.test('TASK_EVENTS_MAX_CLIENTS: the stream past the cap is a 503', async (t) => {
  const { base } = await listening(t, { config: { TASK_EVENTS_MAX_CLIENTS: 2 } })
  await openStream(t, `${base}${EVENTS}`)
  await openStream(t, `${base}${EVENTS}?session_id=a`)
  const third = await openStream(t, `${base}${EVENTS}`)
  t.equal(third.status, 503)
  t.match(JSON.parse(await third.body()), { code: 'TOO_MANY_STREAMS', message: /TASK_EVENTS_MAX_CLIENTS/ })
})

t.test('one stream per connection: streams pipelined behind an open one are refused, and take no slot of the cap', async (t) => {
  const { base } = await listening(t, { config: { TASK_EVENTS_MAX_CLIENTS: 2 } })
  const port = Number(new URL(base).port)
  const request = `GET ${EVENTS} HTTP/1.1\r\nHost: localhost\r\n\r\n`
  const greedy = rawClient(port, request.repeat(5))
  t.teardown(() => { greedy.socket.destroy() })
  await waitFor('the first stream', () => greedy.received().includes(': connected'))
  await sleep(100)
  const other = await openStream(t, `${base}${EVENTS}`)
  t.equal(other.status, 200, 'a client on another connection still gets a stream')
})

t.test('API keys: the stream needs one like every /api route', async (t) => {
  const { app, base } = await listening(t, { config: { TASK_API_KEYS: 'k1,k2' } })
  const none = await openStream(t, `${base}${EVENTS}`)
  t.equal(none.status, 401)
  const wrong = await openStream(t, `${base}${EVENTS}`, { authorization: 'Bearer nope' })
  t.equal(wrong.status, 401)
  t.match(JSON.parse(await wrong.body()), { message: 'invalid API key' })
  const right = await openStream(t, `${base}${EVENTS}`, { authorization: 'Bearer k2' })
  t.equal(right.status, 200)
  await app.inject({ method: 'POST', url: '/api/v1/tasks/create', headers: { authorization: 'Bearer k1' }, payload: { session_id: 'keyed', instructions: 'x' } })
  await right.until((list) => list.length === 3)
})

t.test('the real server: SIGTERM with streams open ends them and exits 0', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ TASK_EVENTS_HEARTBEAT_MS: '1000' })
  const streams = [await openStream(t, `${server.base}${EVENTS}`), await openStream(t, `${server.base}${EVENTS}?session_id=s`)]
  await call(server, 'POST', '/api/v1/tasks/create', { session_id: 's', instructions: 'x' })
  await Promise.all(streams.map(async (stream) => stream.until((list) => list.length === 3)))
  const started = Date.now()
  const exit = await server.stop('SIGTERM')
  t.same(exit, { code: 0, signal: null }, 'exit code 0')
  t.ok(Date.now() - started < 5000, `promptly (${Date.now() - started} ms)`)
  await Promise.all(streams.map(async (stream) => stream.ended))
  t.pass('both streams ended')
})

t.test('retrying, cancel, retry, archive, unarchive and delete each say so', async (t) => {
  let calls = 0
  let hangs = 0
  const { app, base } = await listening(t, {
    executors: {
      default: {
        max_attempts: 2,
        backoff_ms: 10,
        run: async (task, { signal }) => {
          if (task.instruction === 'flaky' && calls++ === 0) throw new AgentError('busy', { transient: true })
          if (task.instruction === 'hang' && hangs++ === 0) {
            await new Promise<void>((_resolve, reject) => {
              signal.addEventListener('abort', () => reject(signal.reason), { once: true })
            })
          }
          return { result: 'ok' }
        }
      }
    }
  })
  const stream = await openStream(t, `${base}${EVENTS}?session_id=life`)
  await createSession(app, 'life', '1. flaky\n2. hang')
  t.equal((await post(app, '/execute-all', { session_id: 'life', wait: false })).statusCode, 202)
  // The hanging task has started: the flaky one before it completed on its second call.
  await stream.until((list) => list.some((e) => e.event === 'task.completed') && list.at(-1)?.event === 'progress' && list.at(-2)?.event === 'task.started')
  t.equal((await post(app, '/cancel', { session_id: 'life' })).statusCode, 200)
  await stream.until((list) => list.some((e) => e.event === 'run.cancelled'))
  t.match(stream.events.find((e) => e.event === 'task.retrying')?.data, { status: 'InProgress', attempt: 1, retry_in_ms: Number })
  t.match(stream.events.find((e) => e.event === 'run.cancelled')?.data, { background: true, task_id: /^task_2_/ })
  t.equal((await post(app, '/retry', { session_id: 'life' })).statusCode, 200)
  await stream.until((list) => list.some((e) => e.event === 'tasks.retried'))
  t.equal((await post(app, '/execute', { session_id: 'life' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['life'])
  await createSession(app, 'life', 'more')
  t.equal((await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/life' })).statusCode, 204)
  await stream.until((list) => list.some((e) => e.event === 'session.deleted'))
  const tail = names(stream.events).slice(names(stream.events).indexOf('tasks.retried'))
  t.same(tail.filter((name) => name !== 'progress'), [
    'tasks.retried', 'task.started', 'task.completed', 'session.archived', 'session.unarchived', 'tasks.added', 'session.deleted'
  ])
})

t.test('shutdown: a stream whose client reads slowly gets every queued byte before its socket closes; one that never reads is cut after TASK_EVENTS_CLOSE_MS', async (t) => {
  for (const reads of [true, false]) {
    const { app } = await listening(t, { config: { TASK_EVENTS_MAX_QUEUED_BYTES: 64 * 1024 * 1024, TASK_EVENTS_CLOSE_MS: 1500, TASK_EVENTS_FLUSH_MS: 0 } })
    const port = (app.server.address() as net.AddressInfo).port
    let serverSide: net.Socket | null = null
    app.server.once('connection', (socket: net.Socket) => { serverSide = socket })
    const client = rawClient(port, 'GET /api/v1/tasks/events HTTP/1.1\r\nHost: localhost\r\n\r\n')
    await waitFor('the stream to open', () => client.received().includes(': connected'))
    client.socket.pause()
    let emitted = 0
    app.taskEvents.subscribe(() => { emitted++ })
    // Until the server holds over a MiB it could not hand to the kernel (whatever the kernel's buffers).
    const tasks = Array.from({ length: 1000 }, () => ({ instruction: 'i', task_type: 'General' }))
    for (let n = 0; ((serverSide as net.Socket | null)?.writableLength ?? 0) < 1024 * 1024; n++) {
      const created = await post(app, '/create', { session_id: `queued_${n}`, tasks })
      if (created.statusCode !== 200) throw new Error(created.body)
      await sleep(0)
    }
    const closing = app.close()
    let cut = false
    if (reads) {
      // It reads again after shutdown began, and is slow about it.
      await sleep(100)
      client.socket.resume()
    }
    const started = performance.now()
    await closing
    const took = performance.now() - started
    if (!reads) {
      cut = (serverSide as net.Socket | null)?.destroyed === true
      client.socket.resume()
    }
    await waitFor('the stream to end', () => client.socket.readableEnded || client.socket.destroyed)
    const text = client.received()
    const ids = [...text.matchAll(/^id: \S+-(\d+)$/gm)].length
    if (reads) {
      t.equal(ids, emitted, `every event reached the client (${ids} of ${emitted})`)
      t.ok(text.endsWith('\n\n'), 'the stream ends on a whole frame')
    } else {
      t.ok(cut, 'a client that never reads is cut')
      t.ok(took >= 1400 && took < 5000, `after TASK_EVENTS_CLOSE_MS (${Math.round(took)} ms)`)
      t.ok(ids < emitted, 'without what it never read')
    }
  }
})
