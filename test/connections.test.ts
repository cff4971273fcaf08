/**
 * Client sockets against the real server: a request that never finishes arriving is answered
 * 408 and closed after TASK_REQUEST_TIMEOUT_MS, a socket that never sends one is closed too,
 * SIGTERM exits 0 promptly with such a socket open, TASK_MAX_CONNECTIONS closes the oldest idle sockets past
 * the cap, and an answer slower than the request timeout is not cut (the timeout covers
 * receiving the request only, which live-view streams will rely on).
 */
import http from 'node:http'
import { readFile } from 'node:fs/promises'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { waitFor, type TestContext } from './helper.js'
import { call, caller, describe, EXIT_TIMEOUT_MS, logLines, scratch, within, type ServerProcess } from './server-process.js'

const API = '/api/v1/tasks'
/** Headers of a create whose 1000-byte body never comes. */
const STALLED = `POST ${API}/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n`

interface Raw {
  socket: net.Socket
  /** Everything the server sent. */
  received: () => string
  /** Settles when the socket closes, with the ms since it was opened. */
  closed: Promise<number>
}

/** A raw client socket to the server, connected; `send` is written at once if given. */
async function connect (t: TestContext, server: ServerProcess, send?: string): Promise<Raw> {
  const opened = Date.now()
  const socket = net.connect(server.port, '127.0.0.1')
  t.teardown(() => { socket.destroy() })
  let data = ''
  socket.setEncoding('utf8').on('data', (chunk: string) => { data += chunk })
  socket.on('error', () => {}) // a refused or reset socket shows as `closed`
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - opened)))
  await new Promise<void>((resolve) => {
    socket.once('connect', resolve)
    socket.once('close', () => resolve())
  })
  if (send !== undefined) socket.write(send)
  return { socket, received: () => data, closed }
}

/** The statuses of the answers a raw connection received, in order. */
function statusesOf (raw: Raw): number[] {
  return [...raw.received().matchAll(/HTTP\/1\.1 (\d{3}) /gu)].map((m) => Number(m[1]))
}

/** A create on a connection of its own that is closed after the answer (so it holds no slot); status, or the error. */
async function createOnce (server: ServerProcess, sessionId: string, key?: string): Promise<number | string> {
  const body = JSON.stringify({ session_id: sessionId, instructions: 'a' })
  return new Promise((resolve) => {
    const req = http.request({
      host: '127.0.0.1',
      port: server.port,
      method: 'POST',
      path: `${API}/create`,
      agent: false,
      timeout: 10_000,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close', ...(key !== undefined && { authorization: `Bearer ${key}` }) }
    }, (res) => {
      res.resume().on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
    req.end(body)
  })
}

t.test('a request whose body never arrives is answered 408 and closed after TASK_REQUEST_TIMEOUT_MS; a silent socket is closed too', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ TASK_REQUEST_TIMEOUT_MS: '500' })
  const stalled = await connect(t, server, STALLED)
  const silent = await connect(t, server)
  const stalledMs = await within(stalled.closed, 15_000)
  t.ok(stalledMs !== null, 'the stalled request is closed', { output: describe(server) })
  t.ok(stalledMs !== null && stalledMs >= 400, `not before its timeout (${stalledMs} ms)`)
  t.match(stalled.received(), /^HTTP\/1\.1 408 /, 'answered 408 Request Timeout')
  const silentMs = await within(silent.closed, 15_000)
  t.ok(silentMs !== null && silentMs >= 400, `a socket that never sends a request is closed after the timeout (${silentMs} ms)`)
  t.match(silent.received(), /^(|HTTP\/1\.1 408 [^]*)$/, 'with a 408 at most')
  t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'after', instructions: 'a' })).status, 200, 'the server serves on')
})

t.test('a request answered before its body arrived (415, 403) whose body then trickles past TASK_REQUEST_TIMEOUT_MS gets no second answer: its connection is closed', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ TASK_REQUEST_TIMEOUT_MS: '500' })
  const heads = [
    `POST ${API}/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n`,
    `POST ${API}/create HTTP/1.1\r\nHost: elsewhere.example\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n`
  ]
  for (const head of heads) {
    const raw = await connect(t, server, head)
    // One body byte every 100 ms: the request stays incomplete past its timeout.
    const drip = setInterval(() => { if (!raw.socket.destroyed) raw.socket.write('x') }, 100)
    const ms = await within(raw.closed, 15_000)
    clearInterval(drip)
    t.ok(ms !== null, 'the connection is closed', { output: describe(server) })
    const statuses = statusesOf(raw)
    t.equal(statuses.length, 1, `one answer (${statuses.join(', ')})`)
    t.match(String(statuses[0]), /^4(15|03)$/u, 'the early one')
  }
})

t.test('TASK_KEEP_ALIVE_TIMEOUT_MS: an idle keep-alive socket is closed after it', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ TASK_KEEP_ALIVE_TIMEOUT_MS: '300' })
  const raw = await connect(t, server, 'GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n')
  const closedMs = await within(raw.closed, 15_000)
  t.match(raw.received(), /^HTTP\/1\.1 200 [^]*Keep-Alive: timeout=/i, 'answered, keep-alive announced')
  // Node waits one more second than it announces, so clients close first.
  t.ok(closedMs !== null && closedMs >= 250, `then closed once idle for the keep-alive timeout (${closedMs} ms)`)
})

t.test('SIGTERM with a stalled request open exits 0 promptly', async (t) => {
  const { start } = await scratch(t)
  // The request timeout is far off: the shutdown itself must close the socket.
  const server = await start({ TASK_REQUEST_TIMEOUT_MS: '60000', TASK_SHUTDOWN_GRACE_MS: '1000' })
  const stalled = await connect(t, server, STALLED)
  const arrived = await server.waitForLine((line) => line.includes('"incoming request"') && line.includes(`${API}/create`), 10_000)
  t.ok(arrived, 'the server has the stalled request', { output: describe(server) })
  const signalled = Date.now()
  const exit = await server.stop('SIGTERM', EXIT_TIMEOUT_MS)
  const tookMs = Date.now() - signalled
  t.same(exit, { code: 0, signal: null }, 'exit code 0', { output: describe(server) })
  // Before the fix: shutdown gave up after grace + 10 s and exited 1.
  t.ok(tookMs < 8000, `within the grace period and a little (${tookMs} ms)`)
  t.ok(await within(stalled.closed, 5000) !== null, 'the stalled socket was closed')
  t.ok(logLines(server.stdout()).some((line) => line.msg === 'Closed connections still sending a request at shutdown'), 'and the log says so')
})

t.test('TASK_MAX_CONNECTIONS: past the cap the oldest sockets with no request being answered are closed to make room, so a flood of idle and stalled sockets never keeps a create or a probe out', async (t) => {
  const { start } = await scratch(t)
  const cap = 4
  const server = await start({ TASK_MAX_CONNECTIONS: String(cap), TASK_EVENTS_MAX_CLIENTS: '1', TASK_REQUEST_TIMEOUT_MS: '10000' })
  const flood: Raw[] = []
  for (let i = 0; i < cap * 3; i++) flood.push(await connect(t, server, i % 2 === 0 ? undefined : STALLED))
  const closedNow = async (): Promise<Raw[]> => (await Promise.all(flood.map(async (raw) => await within(raw.closed, 0) !== null && raw))).filter((raw) => raw !== false)
  // This process may hold one more keep-alive socket to the server (from the readiness polls).
  await waitFor('the sockets past the cap to be closed', async () => flood.length - (await closedNow()).length <= cap, 5000).catch(() => {})
  const closed = await closedNow()
  t.ok(flood.length - closed.length <= cap, `no more than ${cap} stay open (${flood.length - closed.length})`, { output: describe(server) })
  t.ok(closed.includes(flood[0] as Raw) && !closed.includes(flood.at(-1) as Raw), 'the oldest went, the newest stays')
  t.ok(closed.every((raw) => raw.received() === ''), 'without an answer')
  t.equal(await createOnce(server, 'past-cap'), 200, 'a create past the cap works: it takes the place of an idle socket')
  t.equal((await call(server, 'GET', '/health')).status, 200, 'and so does a probe')
  // Read as it arrives: on a loaded host the line may reach this process after the closing.
  t.ok(await server.waitForLine((line) => line.includes('"msg":"Connection closed to make room: TASK_MAX_CONNECTIONS'), 5000), 'the closing is logged')
  const listed = await call(server, 'GET', `${API}/list?session_id=all`)
  t.same(listed.body.sessions.map((s: { session_id: string }) => s.session_id), ['past-cap'])
})

t.test('past TASK_MAX_CONNECTIONS a socket owing an answer is never the one closed, even with the next request half sent behind it', async (t) => {
  const { start } = await scratch(t)
  const cap = 3
  const agents = { default: { kind: 'command', argv: ['sh', '-c', 'sleep 1; echo slow result'] } }
  const server = await start({ TASK_MAX_CONNECTIONS: String(cap), TASK_EVENTS_MAX_CLIENTS: '1', TASK_REQUEST_TIMEOUT_MS: '10000', TASK_AGENTS: JSON.stringify(agents) })
  t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'slow', instructions: 'a' })).status, 200)
  const body = JSON.stringify({ session_id: 'slow' })
  // The oldest socket: an execute sent in full, then the start of another request pipelined behind it.
  const running = await connect(t, server, `POST ${API}/execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
  await server.waitForLine((line) => line.includes('"incoming request"') && line.includes(`${API}/execute`), 5000)
  running.socket.write(`POST ${API}/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"session_`)
  const flood: Raw[] = []
  for (let i = 0; i < cap * 3; i++) flood.push(await connect(t, server))
  await waitFor('its answer', () => running.received().includes('slow result'), 10_000).catch(() => {})
  t.match(running.received(), /^HTTP\/1\.1 200 /u, 'the execute is answered', { output: describe(server) })
  t.equal(await within(running.closed, 0), null, 'its socket is still open')
  t.ok((await Promise.all(flood.map(async (raw) => await within(raw.closed, 0) !== null))).some(Boolean), 'idle ones were closed instead')
})

t.test('idle sockets never take the event streams\' share: past TASK_MAX_CONNECTIONS they are closed, while streams still open on top', async (t) => {
  const { start } = await scratch(t)
  const cap = 3
  const server = await start({ TASK_MAX_CONNECTIONS: String(cap), TASK_EVENTS_MAX_CLIENTS: '50', TASK_REQUEST_TIMEOUT_MS: '10000' })
  const stream = await connect(t, server, `GET ${API}/events HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  await waitFor('the stream to open', () => stream.received().includes(': connected'))
  const idle: Raw[] = []
  for (let i = 0; i < 10; i++) idle.push(await connect(t, server))
  // This process may hold one more keep-alive socket to the server (from the readiness polls).
  await waitFor('the idle sockets past the cap to be closed', async () => (await Promise.all(idle.map(async (raw) => await within(raw.closed, 0) === null))).filter(Boolean).length <= cap, 5000).catch(() => {})
  const open = (await Promise.all(idle.map(async (raw) => await within(raw.closed, 0) === null))).filter(Boolean).length
  t.ok(open <= cap, `at most ${cap} idle sockets stay open, not ${cap} + the streams' 50 (${open})`, { output: describe(server) })
  t.equal(await within(stream.closed, 0), null, 'the stream stays open')
  // Read as it arrives: on a loaded host the line may reach this process after the closing.
  t.ok(await server.waitForLine((line) => line.includes('"msg":"Connection closed to make room: TASK_MAX_CONNECTIONS'), 5000), 'the closing is logged')
  for (const raw of idle) raw.socket.destroy()
  await waitFor('the idle sockets to be gone', async () => (await Promise.all(idle.map(async (raw) => await within(raw.closed, 0) !== null))).every(Boolean), 5000)
  // The server sees those sockets close a moment after this process does (on a loaded host, a
  // while): until then a new socket may still be refused, so the stream is tried until it opens.
  const opened = await waitFor('a second stream to open beside the first', async () => {
    const second = await connect(t, server, `GET ${API}/events HTTP/1.1\r\nHost: localhost\r\n\r\n`)
    const settled = await Promise.race([second.closed.then(() => false), waitFor('connected', () => second.received().includes(': connected'), 2000).then(() => true, () => false)])
    if (!settled) second.socket.destroy()
    return settled
  }, 10_000).then(() => true, () => false)
  t.ok(opened, 'streams open on top of the others', { output: describe(server) })
  t.equal(await within(stream.closed, 0), null, 'the first stream is still open')
})

t.test('a socket joins the streams\' share when a stream is granted, not by its URL: a refused stream request stays among the others, and a stream at an encoded path is still a stream', async (t) => {
  const { start } = await scratch(t)
  const cap = 2
  const key = 'k'.repeat(32)
  const server = await start({ TASK_MAX_CONNECTIONS: String(cap), TASK_EVENTS_MAX_CLIENTS: '50', TASK_API_KEYS: key })
  const open = async (raws: Raw[]): Promise<number> => (await Promise.all(raws.map(async (raw) => await within(raw.closed, 0) === null))).filter(Boolean).length
  // Refused (401), on keep-alive sockets: each stays one of the others, so past the cap the oldest are closed.
  const refused: Raw[] = []
  for (let i = 0; i < 6; i++) {
    const raw = await connect(t, server, `GET ${API}/events HTTP/1.1\r\nHost: localhost\r\n\r\n`)
    refused.push(raw)
    await Promise.race([raw.closed, waitFor('the 401', () => raw.received().includes(' 401 '), 5000).catch(() => {})])
  }
  // This process may hold one more keep-alive socket to the server (from the readiness polls).
  t.ok(await open(refused) <= cap, `at most ${cap} sockets of refused stream requests stay open (${await open(refused)})`, { output: describe(server) })
  t.ok(refused.slice(0, cap - 1).every((raw) => raw.received().includes(' 401 ')), 'the first are answered 401')
  for (const raw of refused) raw.socket.destroy()
  await waitFor('the refused sockets to be gone', async () => await open(refused) === 0, 5000)

  // Streams granted at a path the router decodes to the stream's: they leave the others' share.
  const streams: Raw[] = []
  for (let i = 0; i < cap + 1; i++) {
    // The server sees the sockets above close a moment after this process does: tried until a stream opens.
    await waitFor('an encoded-path stream to open', async () => {
      const raw = await connect(t, server, `GET ${API}/%65vents HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${key}\r\n\r\n`)
      const ok = await Promise.race([raw.closed.then(() => false), waitFor('connected', () => raw.received().includes(': connected'), 2000).then(() => true, () => false)])
      if (ok) streams.push(raw)
      else raw.socket.destroy()
      return ok
    }, 10_000)
  }
  t.equal(await open(streams), cap + 1, `${cap + 1} streams open, more than TASK_MAX_CONNECTIONS`)
  t.equal(await createOnce(server, 'beside', key), 200, 'a request still gets a socket beside them')
})

t.test('an answer slower than TASK_REQUEST_TIMEOUT_MS is not cut: the timeout covers receiving the request only', async (t) => {
  const { start } = await scratch(t)
  const agents = { default: { kind: 'command', argv: ['sh', '-c', 'sleep 1.5; echo slow result'] } }
  const server = await start({ TASK_REQUEST_TIMEOUT_MS: '300', TASK_AGENTS: JSON.stringify(agents) })
  t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'slow', instructions: 'a' })).status, 200)
  const started = Date.now()
  const executed = await caller(30_000)(server, 'POST', `${API}/execute`, { session_id: 'slow' })
  t.ok(Date.now() - started >= 1400, 'the answer took longer than the request timeout')
  t.equal(executed.status, 200, 'answered', { output: describe(server) })
  t.match(executed.body, { status: 'Completed', result: /slow result/ })
})

t.test('client errors are answered in the error shape with a code and logged; bytes that are no request, behind a stream, only close its socket', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ TASK_REQUEST_TIMEOUT_MS: '500' })
  const json = (raw: Raw): Record<string, unknown> => JSON.parse(raw.received().slice(raw.received().indexOf('\r\n\r\n') + 4)) as Record<string, unknown>
  const timedOut = await connect(t, server, STALLED)
  await timedOut.closed
  t.match(timedOut.received(), /^HTTP\/1\.1 408 /)
  t.same(json(timedOut), { statusCode: 408, code: 'REQUEST_TIMEOUT', error: 'Request Timeout', message: 'the request did not arrive in full within TASK_REQUEST_TIMEOUT_MS' })
  const large = await connect(t, server, `GET ${API}/list?session_id=${'a'.repeat(100_000)} HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  await large.closed
  t.match(json(large), { statusCode: 431, code: 'REQUEST_HEADER_FIELDS_TOO_LARGE' })
  const garbage = await connect(t, server, 'NOT HTTP AT ALL\r\n\r\n')
  await garbage.closed
  t.match(json(garbage), { statusCode: 400, code: 'BAD_REQUEST', error: 'Bad Request' })
  await waitFor('the log lines', () => logLines(server.stdout()).filter((line) => line.msg === 'Client error: the request was not answered by a route').length >= 3)
  await sleep(300)
  const tooLarge = logLines(server.stdout()).filter((line) => line.msg === 'Client error: the request was not answered by a route' && line.code === 'REQUEST_HEADER_FIELDS_TOO_LARGE')
  t.equal(tooLarge.length, 1, 'headers too large are logged once, though their bytes kept coming after the error')

  // What Node answers itself unless told otherwise: no Host (400), an Expect it does not know (417), CONNECT (closed unanswered).
  const hostless = await connect(t, server, 'GET /health HTTP/1.1\r\n\r\n')
  await waitFor('the hostless answer', () => hostless.received().includes('}'))
  t.match(hostless.received(), /^HTTP\/1\.1 400 /)
  t.same(json(hostless), { statusCode: 400, code: 'MISSING_HOST', error: 'Bad Request', message: 'an HTTP/1.1 request must carry a Host header' })
  // Two Hosts: Node keeps the first, where a proxy in front may have routed by the other (RFC 9112: 400).
  const twoHosts = await connect(t, server, 'GET /health HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n')
  await waitFor('the two-Host answer', () => twoHosts.received().includes('}'))
  t.same(json(twoHosts), { statusCode: 400, code: 'DUPLICATE_HOST', error: 'Bad Request', message: 'a request must carry one Host header, not 2' })
  // An absolute-form target's authority is the host (its Host header is ignored): checked as a Host would be.
  const absolute = await connect(t, server, `GET http://evil.example${API}/stats HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  await waitFor('the absolute-form answer', () => absolute.received().includes('}'))
  t.match(json(absolute), { statusCode: 403, code: 'HOST_NOT_ALLOWED', message: /'evil\.example'/u })
  // A transfer coding under chunked would be left on the body: refused, not read as if plain.
  const body = JSON.stringify({ session_id: 'zipped', instructions: 'a' })
  const coded = await connect(t, server, `POST ${API}/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`)
  await waitFor('the transfer-coded answer', () => coded.received().includes('}'))
  t.same(json(coded), { statusCode: 501, code: 'UNSUPPORTED_TRANSFER_ENCODING', error: 'Not Implemented', message: 'Not Implemented (Transfer-Encoding \'gzip, chunked\'): only chunked is taken; send plain JSON' })
  t.equal((await call(server, 'GET', `${API}/progress?session_id=zipped`)).status, 404, 'and nothing was created')
  const chunked = await connect(t, server, `POST ${API}/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`)
  await waitFor('the chunked answer', () => chunked.received().includes('}'))
  t.match(chunked.received(), /^HTTP\/1\.1 200 /, 'chunked alone is taken')
  // HTTP/1.0 framed by Transfer-Encoding: served as Node frames it, then the connection closes, whatever keep-alive asked.
  const old10 = await connect(t, server, `POST ${API}/create HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  await old10.closed
  t.equal((old10.received().match(/HTTP\/1\.1 /gu) ?? []).length, 1, 'one answer, then the connection closed')
  await waitFor('the log lines', () => logLines(server.stdout()).some((line) => line.code === 'UNSUPPORTED_TRANSFER_ENCODING'))
  t.notOk(logLines(server.stdout()).some((line) => Number(line.level) >= 50 && JSON.stringify(line).includes('UNSUPPORTED_TRANSFER_ENCODING')), 'a client\'s framing is no server error in the log')
  const old = await connect(t, server, 'GET /health HTTP/1.0\r\n\r\n')
  await old.closed
  t.match(old.received(), /^HTTP\/1\.1 200 /, 'HTTP/1.0 needs no Host')
  // The 417 keeps the connection, as Node's own does: a change pipelined behind it is answered in its turn.
  const create = (id: string, extra = ''): string => {
    const body = JSON.stringify({ session_id: id, instructions: 'a' })
    return `POST ${API}/create HTTP/1.1\r\nHost: localhost\r\n${extra}Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`
  }
  const expecting = await connect(t, server, create('expecting', 'Expect: something-else\r\n') + create('behind-expect'))
  await waitFor('both answers', () => (expecting.received().match(/HTTP\/1\.1 /gu) ?? []).length === 2)
  t.match(expecting.received(), /^HTTP\/1\.1 417 [^]*"code":"EXPECTATION_FAILED"[^]*HTTP\/1\.1 200 [^]*"session_id":"behind-expect"/u)
  expecting.socket.destroy()
  t.equal((await call(server, 'GET', `${API}/progress?session_id=expecting`)).status, 404, 'the refused one was not run')
  // CONNECT: refused in the error shape, and behind an answer still owed, after it (never taken for its answer).
  const tunnel = await connect(t, server, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n')
  await tunnel.closed
  t.match(tunnel.received(), /^HTTP\/1\.1 405 /)
  t.match(json(tunnel), { statusCode: 405, code: 'METHOD_NOT_ALLOWED', error: 'Method Not Allowed' })
  const behind = await connect(t, server, create('before-connect') + 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n')
  await behind.closed
  t.match(behind.received(), /^HTTP\/1\.1 200 [^]*"session_id":"before-connect"[^]*HTTP\/1\.1 405 /u, 'the create answered first, then the refusal')
  // A CONNECT whose client resets the connection (alone, or while an answer before it is owed) takes nothing down.
  for (const send of ['CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', create('before-reset') + 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n']) {
    const reset = await connect(t, server, send)
    reset.socket.resetAndDestroy()
    await reset.closed
  }
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal((await call(server, 'GET', '/health')).status, 200, 'the server serves on after CONNECTs that were reset')

  // Behind a stream: its body must not get an HTTP answer in the middle.
  const stream = await connect(t, server, `GET ${API}/events HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  await waitFor('the stream to start', () => stream.received().includes('connected'))
  stream.socket.write('NOT HTTP AT ALL\r\n\r\n')
  await stream.closed
  t.notMatch(stream.received(), /HTTP\/1\.1 400/, 'no answer written into the stream')
  const tunnelling = await connect(t, server, `GET ${API}/events HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  await waitFor('the stream to start', () => tunnelling.received().includes('connected'))
  tunnelling.socket.write('CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n')
  await tunnelling.closed
  t.notMatch(tunnelling.received(), /HTTP\/1\.1 405/, 'nor a CONNECT\'s refusal')
})

t.test('pipelined changes run in the order sent: a create, then an execute and a delete of the same session; a change pipelined behind a stream never runs', async (t) => {
  const { start } = await scratch(t)
  const server = await start()
  const post = (path: string, body: unknown): string => {
    const text = JSON.stringify(body)
    return `POST ${API}${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`
  }
  for (let round = 0; round < 3; round++) {
    const id = `piped_${round}`
    const raw = await connect(t, server, post('/create', { session_id: id, instructions: '1. a\n2. b' }) + post('/execute', { session_id: id }) + `DELETE ${API}/sessions/${id} HTTP/1.1\r\nHost: localhost\r\n\r\n`)
    const statuses = await waitFor('three answers', () => {
      const found = statusesOf(raw)
      return found.length >= 3 && found
    })
    raw.socket.destroy()
    t.same(statuses, [200, 200, 204], `round ${round}: each ran after the one before`)
  }

  const stream = await connect(t, server, `GET ${API}/events HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  await waitFor('the stream to start', () => stream.received().includes('connected'))
  stream.socket.write(post('/create', { session_id: 'behind', instructions: 'a' }))
  await sleep(500)
  t.equal((await call(server, 'GET', `${API}/progress?session_id=behind`)).status, 404, 'not created: its answer could never be sent')
  stream.socket.destroy()
  await sleep(200)
  t.equal((await call(server, 'GET', `${API}/progress?session_id=behind`)).status, 404, 'nor once the connection closed')
})

t.test('reads pipelined behind a change see it: an execute, then its progress and its list, then a read behind those reads', async (t) => {
  const { start } = await scratch(t)
  // Each task takes 0.5 s: long enough for a read not held back to run before it.
  const server = await start({ TASK_AGENTS: JSON.stringify({ default: { kind: 'command', argv: ['/bin/sh', '-c', 'sleep 0.5; cat'] } }) })
  t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'seen', instructions: '1. a\n2. b' })).status, 200)
  const body = JSON.stringify({ session_id: 'seen' })
  const get = (path: string): string => `GET ${API}${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`
  const raw = await connect(t, server, `POST ${API}/execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}` +
    get('/progress?session_id=seen') + get('/list?session_id=seen') + get('/progress?session_id=seen'))
  const bodies = await waitFor('four answers', () => {
    const found = [...raw.received().matchAll(/\r\n\r\n(\{.*?\})(?=HTTP\/1\.1|$)/gsu)].map((m) => JSON.parse(m[1] as string))
    return found.length >= 4 && found
  })
  raw.socket.destroy()
  t.match(bodies[0], { status: 'Completed' }, 'the execute ran the first task')
  t.match(bodies[1], { completed: 1, pending: 1 }, 'the progress behind it counts it')
  t.match(bodies[2], { tasks: [{ status: 'Completed' }, { status: 'Pending' }] }, 'so does the list')
  t.match(bodies[3], { completed: 1, pending: 1 }, 'and a read behind those reads')
})

t.test('a client error behind a change still running waits for its answer: the change is answered 200 first, then the error, in order', async (t) => {
  const { start } = await scratch(t)
  // Each task takes 1.5 s; a request arrives in full within 0.5 s.
  const server = await start({ TASK_REQUEST_TIMEOUT_MS: '500', TASK_AGENTS: JSON.stringify({ default: { kind: 'command', argv: ['/bin/sh', '-c', 'sleep 1.5; cat'] } }) })
  const post = (path: string, body: unknown, length?: number): string => {
    const text = JSON.stringify(body)
    return `POST ${API}${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${length ?? Buffer.byteLength(text)}\r\n\r\n${text}`
  }
  for (const id of ['garbage', 'stalled']) t.equal((await call(server, 'POST', `${API}/create`, { session_id: id, instructions: '1. a\n2. b' })).status, 200)

  // Bytes that are no request, behind an execute: the execute's answer, then the 400.
  const garbage = await connect(t, server, post('/execute', { session_id: 'garbage' }) + 'NOT HTTP AT ALL\r\n\r\n')
  t.ok(await within(garbage.closed, 15_000) !== null, 'closed after the answers')
  t.same(statusesOf(garbage), [200, 400], garbage.received())
  t.match(garbage.received(), /"status":"Completed"[^]*"code":"BAD_REQUEST"/u, 'the execute\'s own answer first')

  // A create whose body stops arriving, behind an execute: the execute's answer, then a 408 for the create, which never ran.
  const stalled = await connect(t, server, post('/execute', { session_id: 'stalled' }) + post('/create', { session_id: 'never', instructions: 'a' }, 1000))
  // Bytes after the timeout, while the 408 waits its turn: no second error for the connection, nor a line for one.
  await sleep(900)
  stalled.socket.write('x'.repeat(1000) + 'NOT HTTP AT ALL\r\n\r\n')
  t.ok(await within(stalled.closed, 15_000) !== null, 'closed after the answers')
  t.same(statusesOf(stalled), [200, 408], stalled.received())
  t.match(stalled.received(), /"status":"Completed"[^]*"code":"REQUEST_TIMEOUT"/u)
  const logged = logLines(server.stdout()).filter((line) => line.msg === 'Client error: the request was not answered by a route').map((line) => line.code)
  t.same(logged.sort(), ['BAD_REQUEST', 'REQUEST_TIMEOUT'], 'one line for each connection\'s error')
  for (const id of ['garbage', 'stalled']) {
    t.equal((await call(server, 'GET', `${API}/progress?session_id=${id}`)).body.completed, 1, `${id}: the execute that was answered 200 is stored`)
  }
  t.equal((await call(server, 'GET', `${API}/progress?session_id=never`)).status, 404, 'the create answered 408 did not run')
})

t.test('TASK_MAX_PIPELINED: requests pipelined behind a slow change wait their turn up to the bound; past it the connection is closed, and memory does not grow with a flood of them', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ TASK_MAX_PIPELINED: '4', TASK_AGENTS: JSON.stringify({ default: { kind: 'command', argv: ['/bin/sh', '-c', 'sleep 1; cat'] } }) })
  const body = JSON.stringify({ session_id: 'slow' })
  const execute = `POST ${API}/execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  const health = 'GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n'
  t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'slow', instructions: '1. a\n2. b\n3. c' })).status, 200)

  const within4 = await connect(t, server, execute + health.repeat(4))
  const statuses = await waitFor('five answers', () => {
    const found = statusesOf(within4)
    return found.length >= 5 && found
  })
  within4.socket.destroy()
  t.same(statuses, [200, 200, 200, 200, 200], 'four waiting behind the change: all answered, in order')

  const rss = async (): Promise<number> => Number(/VmRSS:\s+(\d+)/u.exec(await readFile(`/proc/${server.child.pid}/status`, 'utf8'))?.[1]) * 1024
  const before = await rss()
  const flood = await connect(t, server)
  // 100,000 requests (3.6 MB): before the bound, each was parsed and held (some 3 KB each) until the change was answered.
  const chunk = health.repeat(1000)
  flood.socket.write(execute)
  for (let i = 0; i < 100 && !flood.socket.destroyed; i++) {
    if (!flood.socket.write(chunk)) await Promise.race([new Promise((resolve) => flood.socket.once('drain', resolve)), flood.closed])
  }
  t.ok(await within(flood.closed, 5000) !== null, 'the connection is closed, before the change is answered', { output: describe(server) })
  t.notMatch(flood.received(), /HTTP\/1\.1 200/u, 'no answer was sent on it')
  const grown = await rss() - before
  t.ok(grown < 40 * 1024 * 1024, `the server's memory grew by ${Math.round(grown / 1024 / 1024)} MB`)
  t.ok(await server.waitForLine((line) => line.includes('"msg":"Connection closed: more than TASK_MAX_PIPELINED requests'), 5000), 'the closing is logged')
  // The change sent first still runs to its end: only the requests behind it were dropped.
  await waitFor('the change to be stored', async () => (await call(server, 'GET', `${API}/progress?session_id=slow`)).body.completed === 2)
  t.equal((await call(server, 'GET', '/health')).status, 200, 'the server serves on')
})

t.test('reads pipelined behind an answer the client does not take wait their turn: one answer is held, not one per read; a client that reads its answers may pipeline past TASK_MAX_PIPELINED', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ TASK_MAX_PIPELINED: '4' })
  // A session whose whole answer is some 2.7 MB, created in appends under BODY_LIMIT.
  for (let part = 0; part < 3; part++) {
    const tasks = Array.from({ length: 15 }, (_, i) => ({ instruction: `${part}.${i} ${'x'.repeat(60_000)}` }))
    t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'big', tasks })).status, 200)
  }
  const rss = async (): Promise<number> => Number(/VmRSS:\s+(\d+)/u.exec(await readFile(`/proc/${server.child.pid}/status`, 'utf8'))?.[1]) * 1024
  const before = await rss()
  // 64 reads in one packet from a client that never reads: run side by side, each answer was built and held (170 MB).
  const stalled = await connect(t, server)
  stalled.socket.pause()
  stalled.socket.write(`GET ${API}/list?session_id=big HTTP/1.1\r\nHost: localhost\r\n\r\n`.repeat(64))
  await sleep(1500)
  const grown = await rss() - before
  t.ok(grown < 40 * 1024 * 1024, `the server's memory grew by ${Math.round(grown / 1024 / 1024)} MB`)
  stalled.socket.destroy()
  // A client that reads its answers as they come pipelines ten times TASK_MAX_PIPELINED: all answered, in order.
  const health = 'GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n'
  const polite = await connect(t, server, `GET ${API}/progress?session_id=big HTTP/1.1\r\nHost: localhost\r\n\r\n` + health.repeat(38) + 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
  t.ok(await within(polite.closed, 10_000) !== null, 'closed after the last answer')
  const statuses = statusesOf(polite)
  t.equal(statuses.length, 40, 'forty answers')
  t.ok(statuses.every((status) => status === 200), 'all 200')
  t.match(polite.received(), /^HTTP\/1\.1 200 [^]*"session_id":"big"/u, 'the progress first')
  // Changes too: forty creates sent in one go, answered in order while the client reads.
  const create = (i: number): string => {
    const body = JSON.stringify({ session_id: `deep${i}`, instructions: 'a' })
    return `POST ${API}/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${i === 39 ? 'Connection: close\r\n' : ''}\r\n${body}`
  }
  const changes = await connect(t, server, Array.from({ length: 40 }, (_, i) => create(i)).join(''))
  t.ok(await within(changes.closed, 15_000) !== null, 'closed after the last answer')
  t.same([...changes.received().matchAll(/"session_id":"(deep\d+)"/gu)].map((m) => m[1]), Array.from({ length: 40 }, (_, i) => `deep${i}`), 'every create answered, in order')
})
