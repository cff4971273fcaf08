/**
 * Answers carrying a whole large session (GET /list?session_id=X, an execute-all's results) are
 * streamed as the client reads them: the same bytes as an answer made whole, memory bounded by
 * the reader, and a client that stops reading cut after TASK_ANSWER_STALL_MS.
 */
import { readFile } from 'node:fs/promises'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { ExecuteAllResponse, ListResponse } from '../schemas/api.js'
import { createSerializerCompiler } from '../http/validation.js'
import { JsonArrayStream } from '../http/json-stream.js'
import { API, build, get, heldBytes, memoryLog, post, waitFor } from './helper.js'
import { call, logLines, scratch, within } from './server-process.js'

const serializer = createSerializerCompiler()
/** The bytes Fastify's serializer makes of an answer made whole. */
const whole = {
  list: serializer({ schema: ListResponse, method: 'GET', url: '/list', httpStatus: '200' }) as (answer: unknown) => string,
  executeAll: serializer({ schema: ExecuteAllResponse, method: 'POST', url: '/execute-all', httpStatus: '200' }) as (answer: unknown) => string
}

/** Instructions of `chars` characters each, with text JSON escapes and characters outside ASCII. */
function bulky (count: number, chars: number): Array<{ instruction: string }> {
  return Array.from({ length: count }, (_, i) => ({ instruction: `${i} "quoted" \\ tab\t é ✓ 𝄞 ${'x'.repeat(chars)}` }))
}

t.test('a large session is answered as streamed JSON, byte for byte what the whole answer was, active and archived', async (t) => {
  const app = await build(t, { config: { BODY_LIMIT: 8 * 1024 * 1024, TASK_MAX_INSTRUCTION_BYTES: 1024 * 1024 }, executors: { default: async () => ({ result: 'done' }) } })
  t.equal((await post(app, '/create', { session_id: 'big', tasks: bulky(6, 400_000) })).statusCode, 200)
  const res = await get(app, '/list?session_id=big')
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8')
  t.notOk(res.headers['content-length'], 'sent as it is made (chunked), not made whole first')
  const { file } = await app.taskManager.find('big')
  const made = whole.list({ session_id: 'big', created_at: file.created_at, updated_at: file.updated_at, current_index: file.session.current_index, total: 6, tasks: file.session.tasks })
  t.ok(res.body === made, `the same ${made.length} characters as the answer made whole`)
  t.equal(JSON.parse(res.body).tasks[5].instruction, bulky(6, 400_000)[5]?.instruction)

  const head = await app.inject({ method: 'HEAD', url: `${API}/list?session_id=big` })
  t.equal(head.statusCode, 200)
  t.equal(head.body, '', 'HEAD: no body')

  // Done and archived: read from the archive, the same bytes, marked archived.
  t.equal((await post(app, '/execute-all', { session_id: 'big' })).statusCode, 200)
  const done = (await app.taskManager.find('big')).file
  t.equal((await post(app, '/archive', { older_than_days: 0 })).statusCode, 200)
  const archived = await get(app, '/list?session_id=big')
  t.equal(archived.statusCode, 200)
  t.notOk(archived.headers['content-length'])
  t.ok(archived.body === whole.list({ session_id: 'big', created_at: done.created_at, updated_at: done.updated_at, current_index: 6, total: 6, tasks: done.session.tasks, archived: true }), 'archived: the same bytes as made whole')
  t.equal(JSON.parse(archived.body).archived, true)

  // A small session is made whole as before (with its length).
  t.equal((await post(app, '/create', { session_id: 'small', instructions: '1. a\n2. b' })).statusCode, 200)
  const small = await get(app, '/list?session_id=small')
  t.ok(Number(small.headers['content-length']) > 0)
})

t.test('an execute-all carrying large results is streamed, the same bytes as made whole', async (t) => {
  const app = await build(t, { executors: { default: async (task: { instruction: string }) => ({ result: `done ✓ "${task.instruction.slice(0, 4)}" ${'r'.repeat(300_000)}` }) } })
  t.equal((await post(app, '/create', { session_id: 'many', instructions: '1. one\n2. two\n3. three\n4. four\n5. five' })).statusCode, 200)
  const res = await post(app, '/execute-all', { session_id: 'many' })
  t.equal(res.statusCode, 200)
  t.notOk(res.headers['content-length'])
  const body = JSON.parse(res.body)
  t.equal(body.total_executed, 5)
  t.equal(body.progress.completed, 5)
  t.ok(res.body === whole.executeAll(body), 'the same characters as the answer made whole')
  t.match(body.results[4].result, /^done ✓ "five" r+$/u)
})

t.test('a client that does not read a large answer holds little memory, and is cut after TASK_ANSWER_STALL_MS', async (t) => {
  const { start } = await scratch(t)
  const server = await start({ TASK_ANSWER_STALL_MS: '1500', BODY_LIMIT: String(8 * 1024 * 1024), TASK_MAX_INSTRUCTION_BYTES: String(1024 * 1024) })
  // Some 12 MB of tasks.
  for (let part = 0; part < 3; part++) {
    t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'big', tasks: bulky(5, 800_000) })).status, 200)
  }
  const rss = async (): Promise<number> => Number(/VmRSS:\s+(\d+)/u.exec(await readFile(`/proc/${server.child.pid}/status`, 'utf8'))?.[1]) * 1024
  const before = await rss()
  // Twenty clients ask and never read: each answer was made whole and held until read (240 MB).
  const stalled = await Promise.all(Array.from({ length: 20 }, async () => {
    const socket = net.connect(server.port, '127.0.0.1')
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.pause()
    socket.write(`GET ${API}/list?session_id=big HTTP/1.1\r\nHost: localhost\r\n\r\n`)
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
    socket.on('error', () => {})
    t.teardown(() => socket.destroy())
    return { socket, closed }
  }))
  await sleep(800)
  const grown = await rss() - before
  t.ok(grown < 60 * 1024 * 1024, `the server's memory grew by ${Math.round(grown / 1024 / 1024)} MB`)
  t.equal((await call(server, 'GET', '/health')).status, 200, 'the server serves on')
  const cuts = async (): Promise<number> => logLines(server.stdout()).filter((line) => line.msg === 'Answer cut: its client took nothing of it for TASK_ANSWER_STALL_MS').length
  t.equal(await waitFor('every stalled answer to be cut', async () => await cuts() === 20 && 20), 20, 'every stalled answer is cut, and logged')
  // A paused socket sees the reset once it reads: short of the answer.
  for (const client of stalled) {
    let received = 0
    client.socket.on('data', (data: Buffer) => { received += data.length })
    client.socket.resume()
    t.ok(await within(client.closed, 10_000) !== null, 'the connection is closed')
    t.ok(received < 12_000_000, `short of the answer (${received} bytes)`)
  }

  // A client that reads gets it whole.
  const res = await call(server, 'GET', `${API}/list?session_id=big`)
  t.equal(res.status, 200)
  t.equal(res.body.total, 15)
})

t.test('an execute-all over a real connection: a client that waits gets its results streamed; one that left during the run holds nothing once the run ends, and logs no error', async (t) => {
  const log = memoryLog()
  let call = 0
  // A result of its own each time (a shared string would be held anyway).
  const app = await build(t, { logger: log.logger, executors: { default: async () => { await sleep(60); return { result: `${++call}`.padEnd(400_000, 'r') } } } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${(app.server.address() as net.AddressInfo).port}${API}`
  const round = async (i: number): Promise<void> => {
    t.equal((await post(app, '/create', { session_id: `left${i}`, instructions: '1. a\n2. b\n3. c' })).statusCode, 200)
    // Gone after the first task: the answer, 1.2 MB of results, is streamed once the run ends.
    await t.rejects(fetch(`${base}/execute-all`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ session_id: `left${i}` }), signal: AbortSignal.timeout(90) }))
    await waitFor('the run to end', async () => (await get(app, `/progress?session_id=left${i}`)).json().all_done === true)
    t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/left${i}` })).statusCode, 204)
  }
  await round(0)
  // A client that waits gets the whole answer, streamed over a real connection.
  t.equal((await post(app, '/create', { session_id: 'stayed', instructions: '1. a\n2. b\n3. c' })).statusCode, 200)
  const stayed = await fetch(`${base}/execute-all`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ session_id: 'stayed' }) })
  t.equal(stayed.status, 200)
  t.equal(stayed.headers.get('content-length'), null, 'streamed')
  const text = await stayed.text()
  const answer = JSON.parse(text)
  t.equal(answer.total_executed, 3)
  t.ok(text === whole.executeAll(answer), `the whole answer (${text.length} characters), as made whole`)
  const before = heldBytes()
  for (let i = 1; i <= 12; i++) await round(i)
  await sleep(100)
  const grown = heldBytes() - before
  // Each answer kept alive would hold its 1.2 MB of results: 14 MB.
  t.ok(grown < 5 * 1024 * 1024, `held ${Math.round(grown / 1024)} KB more after 12 clients left`)
  t.same(log.lines().filter((line) => Number(line.level) >= 50).map((line) => line.msg), [], 'no error logged')
})

t.test('a streamed answer is written in pieces of 64 KB at most, so a slow but steady reader of a task of megabytes shows progress to the stall watch', async (t) => {
  const tasks = ['a', 'b'].map((name) => ({ name, text: `${name} é ✓ `.padEnd(3_000_000, 'x') }))
  const stream = new JsonArrayStream('{"tasks":[', tasks, (task) => JSON.stringify(task), ']}')
  const sizes: number[] = []
  const parts: Buffer[] = []
  // Each 'data' is one chunk as pushed: what the response writes to its socket, one at a time.
  stream.on('data', (chunk: Buffer) => {
    sizes.push(chunk.length)
    parts.push(chunk)
  })
  await new Promise((resolve) => stream.once('end', resolve))
  t.ok(sizes.length > 90, `${sizes.length} pieces`)
  t.ok(sizes.every((size) => size <= 64 * 1024), `the largest ${Math.max(...sizes)} bytes`)
  t.same(JSON.parse(Buffer.concat(parts).toString('utf8')), { tasks }, 'together, the whole JSON, characters split across pieces included')
})
