import { execFile } from 'node:child_process'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import t from 'tap'
import { promisify } from 'node:util'
import { API, build, createSession, get, post, tempDir } from './helper.js'

const execFileAsync = promisify(execFile)

t.test('POST /create parses instructions into typed tasks and saves them', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  const res = await post(app, '/create', { session_id: 'big_project', instructions: '1. Research the market\n2. Design\n3. Implement the API' })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.session_id, 'big_project')
  t.equal(body.total_tasks, 3)
  t.same(body.tasks.map((task: { task_type: string }) => task.task_type), ['Research', 'General', 'Coding'])
  t.same(body.task_ids, body.tasks.map((task: { id: string }) => task.id))
  t.match(body.task_ids[0], /^task_1_\d+$/)
  const onDisk = JSON.parse(await readFile(join(dir, 'big_project.json'), 'utf8'))
  t.same(onDisk.session.tasks.map((task: { id: string }) => task.id), body.task_ids, 'a 200 means the tasks are on disk')
  t.equal(onDisk.session.current_index, 0)
})

t.test('POST /create appends to an existing session; total_tasks counts this call', async (t) => {
  const app = await build(t)
  await createSession(app, 's1', '1. a\n2. b')
  const res = await post(app, '/create', { session_id: 's1', instructions: 'write code for c' })
  t.equal(res.statusCode, 200)
  t.equal(res.json().total_tasks, 1)
  t.match(res.json().task_ids[0], /^task_3_/)
  t.equal(res.json().tasks[0].task_type, 'Coding')
  const list = (await get(app, '/list?session_id=s1')).json()
  t.equal(list.total, 3)
  t.equal(new Set(list.tasks.map((task: { id: string }) => task.id)).size, 3, 'task ids are unique in the session')
})

t.test('POST /create accepts explicit tasks with optional types', async (t) => {
  const app = await build(t)
  const res = await post(app, '/create', { session_id: 's2', tasks: [{ instruction: 'anything', task_type: 'Reasoning' }, { instruction: 'debug the parser' }] })
  t.equal(res.statusCode, 200)
  t.same(res.json().tasks.map((task: { task_type: string }) => task.task_type), ['Reasoning', 'Coding'])
})

t.test('POST /create rejects bad input with 400 and changes nothing', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  const cases: Array<[string, unknown]> = [
    ['blank instructions', { session_id: 'x', instructions: '   \n\t ' }],
    ['empty instructions', { session_id: 'x', instructions: '' }],
    ['neither instructions nor tasks', { session_id: 'x' }],
    ['both instructions and tasks', { session_id: 'x', instructions: 'a', tasks: [{ instruction: 'b' }] }],
    ['blank task', { session_id: 'x', tasks: [{ instruction: '   ' }] }],
    ['invisible instructions', { session_id: 'x', instructions: '\u200b\u2060' }],
    ['invisible task', { session_id: 'x', tasks: [{ instruction: 'a' }, { instruction: ' \u200b\u180e ' }] }],
    ['unknown task type', { session_id: 'x', tasks: [{ instruction: 'a', task_type: 'Magic' }] }],
    ['unknown field', { session_id: 'x', instructions: 'a', extra: true }],
    ['unknown task field', { session_id: 'x', tasks: [{ instruction: 'a', priority: 1 }] }],
    ['missing session id', { instructions: 'a' }],
    ['path traversal id', { session_id: '../escape', instructions: 'a' }],
    ['slash in id', { session_id: 'a/b', instructions: 'a' }],
    ['dot in id', { session_id: 'a.b', instructions: 'a' }],
    ['too long id', { session_id: 'a'.repeat(129), instructions: 'a' }],
    ['reserved id', { session_id: 'all', instructions: 'a' }],
    ['wrong type', { session_id: 'x', instructions: 42 }]
  ]
  for (const [name, body] of cases) {
    const res = await post(app, '/create', body)
    t.equal(res.statusCode, 400, name)
    const error = res.json()
    t.equal(error.statusCode, 400, `${name}: Fastify error shape`)
    t.equal(error.error, 'Bad Request')
    t.type(error.message, 'string')
  }
  const bad = await app.inject({ method: 'POST', url: `${API}/create`, headers: { 'content-type': 'application/json' }, payload: '{"session_id": "x",' })
  t.equal(bad.statusCode, 400, 'malformed JSON')
  const poisoned = await app.inject({ method: 'POST', url: `${API}/create`, headers: { 'content-type': 'application/json' }, payload: '{"session_id":"x","instructions":"a","__proto__":{"polluted":1}}' })
  t.equal(poisoned.statusCode, 400, 'prototype poisoning')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), [], 'no session file was written')
  t.equal((await get(app, '/stats')).json().total_sessions, 0)
})

t.test('an id of 128 characters is accepted', async (t) => {
  const app = await build(t)
  const id = 'a'.repeat(128)
  t.equal((await post(app, '/create', { session_id: id, instructions: 'x' })).statusCode, 200)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/${id}` })).statusCode, 204)
})

t.test('oversized bodies get 413', async (t) => {
  const app = await build(t, { config: { BODY_LIMIT: 2048 } })
  const res = await post(app, '/create', { session_id: 'big', instructions: 'x'.repeat(4096) })
  t.equal(res.statusCode, 413)
  t.equal(res.json().statusCode, 413)
  t.equal((await get(app, '/progress?session_id=big')).statusCode, 404)
})

t.test('POST /execute runs the next pending task and reports progress', async (t) => {
  const app = await build(t)
  const { task_ids: ids } = await createSession(app, 'w', '1. Task A\n2. Task B')
  const first = await post(app, '/execute', { session_id: 'w' })
  t.equal(first.statusCode, 200)
  t.match(first.json(), { task_id: ids[0], instruction: 'Task A', status: 'Completed', result: 'Task A', error: null, confidence: 1 })
  t.match(first.json().progress, { total: 2, completed: 1, pending: 1, all_done: false, percentage: 50 })
  const second = await post(app, '/execute', { session_id: 'w' })
  t.equal(second.json().task_id, ids[1])
  t.equal(second.json().progress.all_done, true)
  const none = await post(app, '/execute', { session_id: 'w' })
  t.equal(none.statusCode, 409)
  t.equal(none.json().code, 'NO_PENDING_TASK')
  const missing = await post(app, '/execute', { session_id: 'nope' })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().error, 'Not Found')
  t.equal((await post(app, '/execute', { session_id: '../x' })).statusCode, 400)
  t.equal((await post(app, '/execute', { session_id: 'w', extra: 1 })).statusCode, 400)
})

t.test('task details on disk after execute: started_at, completed_at, attempts', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  await createSession(app, 'd', 'only task')
  await post(app, '/execute', { session_id: 'd' })
  const task = JSON.parse(await readFile(join(dir, 'd.json'), 'utf8')).session.tasks[0]
  t.equal(task.status, 'Completed')
  t.equal(task.attempts, 1)
  t.ok(Date.parse(task.started_at) <= Date.parse(task.completed_at))
  t.match(task.completed_at, /Z$/)
})

t.test('a failing agent marks the task Failed and the session moves on', async (t) => {
  const app = await build(t, {
    executors: {
      default: async (task) => {
        if (task.instruction.includes('boom')) throw new Error('agent exploded')
        return { result: `done: ${task.instruction}`, confidence: 0.5 }
      }
    }
  })
  await createSession(app, 'f', '1. boom\n2. fine')
  const res = await post(app, '/execute-all', { session_id: 'f' })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.total_executed, 2)
  t.match(body.results[0], { status: 'Failed', error: 'agent exploded', result: null })
  t.match(body.results[1], { status: 'Completed', result: 'done: fine', confidence: 0.5 })
  t.match(body.progress, { completed: 1, failed: 1, all_done: true, percentage: 100 })
})

t.test('executors are routed by task type', async (t) => {
  const app = await build(t, {
    executors: {
      Coding: async () => ({ result: 'coding agent' }),
      default: async () => ({ result: 'thinking agent' })
    }
  })
  await createSession(app, 'r', '1. Implement binary search\n2. Explain it')
  const body = (await post(app, '/execute-all', { session_id: 'r' })).json()
  t.same(body.results.map((r: { result: string }) => r.result), ['coding agent', 'thinking agent'])
  t.equal(body.results[0].confidence, null, 'confidence left unset when the agent gives none')
})

t.test('an agent returning a malformed result fails the task', async (t) => {
  const app = await build(t, { executors: { default: async () => ({ result: 42 }) as never } })
  await createSession(app, 'm', 'x')
  const res = (await post(app, '/execute', { session_id: 'm' })).json()
  t.equal(res.status, 'Failed')
  t.match(res.error, /string/)
})

t.test('POST /execute-all on an unknown session is 404; on a done session runs nothing', async (t) => {
  const app = await build(t)
  t.equal((await post(app, '/execute-all', { session_id: 'ghost' })).statusCode, 404)
  await createSession(app, 'done', 'x')
  await post(app, '/execute', { session_id: 'done' })
  const res = await post(app, '/execute-all', { session_id: 'done' })
  t.equal(res.statusCode, 200)
  t.equal(res.json().total_executed, 0)
})

t.test('GET /progress', async (t) => {
  const app = await build(t)
  await createSession(app, 'p', '1. a\n2. b\n3. c')
  await post(app, '/execute', { session_id: 'p' })
  const res = await get(app, '/progress?session_id=p')
  t.equal(res.statusCode, 200)
  t.same(res.json(), { session_id: 'p', total: 3, completed: 1, failed: 0, pending: 2, in_progress: 0, all_done: false, percentage: 33.33, running: false })
  t.equal((await get(app, '/progress?session_id=nope')).statusCode, 404)
  t.equal((await get(app, '/progress')).statusCode, 400)
  t.equal((await get(app, '/progress?session_id=..%2Fetc')).statusCode, 400)
  t.equal((await get(app, '/progress?session_id=p&extra=1')).statusCode, 400)
})

t.test('GET /list for one session returns every task field', async (t) => {
  const app = await build(t)
  await createSession(app, 'l', '1. a\n2. b')
  const res = await get(app, '/list?session_id=l')
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.session_id, 'l')
  t.equal(body.total, 2)
  t.same(Object.keys(body.tasks[0]).sort(), ['attempts', 'completed_at', 'confidence', 'created_at', 'error', 'id', 'instruction', 'result', 'started_at', 'status', 'task_type'])
  t.equal((await get(app, '/list?session_id=nope')).statusCode, 404)
})

t.test('GET /list?session_id=all lists sessions newest first with paging', async (t) => {
  let now = Date.parse('2026-01-01T00:00:00Z')
  const app = await build(t, { clock: () => new Date(now) })
  for (const id of ['s1', 's2', 's3']) {
    now += 1000
    await createSession(app, id, 'x')
  }
  now += 1000
  await post(app, '/execute', { session_id: 's1' })
  const all = (await get(app, '/list?session_id=all')).json()
  t.equal(all.total, 3)
  t.match(all, { limit: 100, offset: 0 }, 'limit and offset may be left out')
  t.same(all.sessions.map((s: { session_id: string }) => s.session_id), ['s1', 's3', 's2'])
  t.match(all.sessions[0], { completed: 1, all_done: true, percentage: 100 })
  const page = (await get(app, '/list?session_id=all&limit=1&offset=1')).json()
  t.same(page.sessions.map((s: { session_id: string }) => s.session_id), ['s3'])
  t.equal(page.total, 3)
  t.equal((await get(app, '/list?session_id=all&limit=1001')).statusCode, 400)
  t.equal((await get(app, '/list?session_id=all&limit=0')).statusCode, 400)
  t.equal((await get(app, '/list?session_id=all&offset=-1')).statusCode, 400)
  t.equal((await get(app, '/list?session_id=all&archived=all')).statusCode, 400, 'archived takes exclude, include or only')
})

t.test('GET /stats and GET /backup take no query: a parameter is a 400 in the error shape', async (t) => {
  const app = await build(t, { dir: await tempDir(t) })
  for (const url of [`${API}/stats?bogus=1`, `${API}/backup?session_id=x`]) {
    const res = await app.inject({ method: 'GET', url })
    t.equal(res.statusCode, 400, url)
    t.match(res.json(), { statusCode: 400, error: 'Bad Request', message: /must NOT have additional properties|bogus|session_id/ }, url)
  }
  t.equal((await app.inject({ method: 'GET', url: `${API}/stats` })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: `${API}/backup` })).statusCode, 200)
})

t.test('GET /stats counts sessions and tasks as they change', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  await createSession(app, 'a', '1. x\n2. y')
  await createSession(app, 'b', 'z')
  await post(app, '/execute', { session_id: 'b' })
  await post(app, '/execute', { session_id: 'a' })
  const stats = (await get(app, '/stats')).json()
  t.match(stats, { total_sessions: 2, active_sessions: 1, completed_sessions: 1, total_tasks: 3, completed_tasks: 2, failed_tasks: 0, pending_tasks: 1, in_progress_tasks: 0 })
  t.equal(stats.storage.dir, dir)
  t.equal(stats.storage.files, 2)
  const sizes = await Promise.all(['a.json', 'b.json'].map(async (name) => (await readFile(join(dir, name))).length))
  t.equal(stats.storage.bytes, sizes[0]! + sizes[1]!, 'bytes match the files on disk')
  t.equal(stats.storage.failed_loads, 0)
  t.type(stats.storage.restore_ms, 'number')
  await app.inject({ method: 'DELETE', url: `${API}/sessions/a` })
  t.match((await get(app, '/stats')).json(), { total_sessions: 1, total_tasks: 1, storage: { files: 1, bytes: sizes[1] } })
})

t.test('DELETE /sessions/:id removes the session and its file', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  await createSession(app, 'gone', 'x')
  const res = await app.inject({ method: 'DELETE', url: `${API}/sessions/gone` })
  t.equal(res.statusCode, 204)
  t.equal(res.body, '')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), [])
  t.equal((await get(app, '/progress?session_id=gone')).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/gone` })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/a.b` })).statusCode, 400)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/..%2F..%2Fetc` })).statusCode, 400)
  // The id can be used again afterwards.
  t.equal((await post(app, '/create', { session_id: 'gone', instructions: 'again' })).json().task_ids.length, 1)
  // Clients that name JSON on every request, a body-less DELETE included.
  const named = await app.inject({ method: 'DELETE', url: `${API}/sessions/gone`, headers: { 'content-type': 'application/json' } })
  t.equal(named.statusCode, 204, named.body)
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute`, headers: { 'content-type': 'application/json' } })).statusCode, 400, 'a POST still needs its body')
  // A body sent anyway is refused, not left unread: this client meant another session.
  await createSession(app, 'kept', 'x')
  await createSession(app, 'other', 'x')
  for (const payload of ['{"session_id":"other"}', '[1]', '"kept"', '{}']) {
    const refused = await app.inject({ method: 'DELETE', url: `${API}/sessions/kept`, headers: { 'content-type': 'application/json' }, payload })
    t.equal(refused.statusCode, 400, payload)
    t.equal(refused.json().code, 'BODY_NOT_ALLOWED')
    t.match(refused.json().message, /DELETE takes no body/u)
  }
  t.equal((await get(app, '/progress?session_id=kept')).statusCode, 200, 'nothing deleted')
  t.equal((await get(app, '/progress?session_id=other')).statusCode, 200)
  t.equal((await app.inject({ method: 'DELETE', url: `${API}/sessions/kept`, headers: { 'content-type': 'application/json' }, payload: 'null' })).statusCode, 204, 'JSON null is no body')
})

t.test('GET /health and /ready', async (t) => {
  const app = await build(t)
  const health = await app.inject({ method: 'GET', url: '/health' })
  t.equal(health.statusCode, 200)
  t.equal(health.json().status, 'ok')
  const ready = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 200)
  t.equal(ready.json().status, 'ready')
  await app.taskManager.beginShutdown()
  const stopping = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(stopping.statusCode, 503, 'not ready once shutdown begins')
  t.equal(stopping.json().statusCode, 503)
})

t.test('GET / says where things are; a browser is sent to the dashboard', async (t) => {
  const app = await build(t, { config: { TASK_API_KEYS: 'k1' } })
  const curl = await app.inject({ method: 'GET', url: '/', headers: { accept: '*/*' } })
  t.equal(curl.statusCode, 200, 'no API key needed')
  t.same(curl.json(), { service: 'taskvault', api: '/api/v1/tasks', dashboard: '/dashboard/', documentation: '/documentation', metrics: '/metrics', health: '/health', ready: '/ready' })
  const browser = await app.inject({ method: 'GET', url: '/', headers: { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' } })
  t.equal(browser.statusCode, 302)
  t.equal(browser.headers.location, '/dashboard/')
  t.equal(browser.headers.vary, 'Accept', 'both answers vary on Accept')
  t.equal(curl.headers.vary, 'Accept')
  for (const [accept, redirected] of [['TEXT/HTML', true], ['text/html; q=0.5, application/json; q=0.4', true], ['text/html;q=0', false],
    ['application/json, text/html;q=0.1', false], ['text/html, application/json', false], ['*/*', false], ['', false], ['text/html;q=oops', false],
    ['text/html;q=0.5, */*', false], ['text/html;q=0.5, application/*', false], ['text/html;q=0.5, */*;q=0.4', true]] as const) {
    const res = await app.inject({ method: 'GET', url: '/', headers: { accept } })
    t.equal(res.statusCode, redirected ? 302 : 200, `Accept: ${accept}`)
  }
  t.equal((await app.inject({ method: 'GET', url: '/dashboard/' })).statusCode, 200, 'where it leads is the page')

  const bare = await build(t, { config: { TASK_DASHBOARD: false, TASK_DOCS: false, TASK_METRICS: false } })
  const plain = await bare.inject({ method: 'GET', url: '/', headers: { accept: 'text/html' } })
  t.equal(plain.statusCode, 200, 'no dashboard: the index, to a browser too')
  t.same(plain.json(), { service: 'taskvault', api: '/api/v1/tasks', dashboard: null, documentation: null, metrics: null, health: '/health', ready: '/ready' })
})

t.test('unknown routes answer 404 in the error shape', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: `${API}/nothing` })
  t.equal(res.statusCode, 404)
  t.equal(res.json().error, 'Not Found')
})

t.test('unicode survives the round trip: emoji, NUL and lone surrogates', async (t) => {
  const dir = await tempDir(t)
  const text = 'emoji 🚀 nul \u0000 lone \ud800 end'
  let app = await build(t, { dir, executors: { default: async (task) => ({ result: task.instruction + ' ✅' }) } })
  await post(app, '/create', { session_id: 'u', tasks: [{ instruction: text }] })
  await post(app, '/execute', { session_id: 'u' })
  await app.close()
  app = await build(t, { dir })
  const task = (await get(app, '/list?session_id=u')).json().tasks[0]
  t.equal(task.instruction, text)
  t.equal(task.result, text + ' ✅')
})

t.test('a body that is not JSON is refused with 415, and the answer says what to send', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  const body = '{"session_id": "form", "instructions": "1. Task A"}'
  // What a web form posts (from a page, which names itself), what a page's form carries past
  // the browser, JSON sent as text, and no type at all; and a form that is no JSON from anyone.
  const page = { origin: 'https://evil.example' }
  const cases: Array<[string | undefined, Record<string, string>, string]> = [
    ['application/x-www-form-urlencoded', page, body],
    ['application/x-www-form-urlencoded', { 'sec-fetch-site': 'cross-site' }, body],
    ['application/x-www-form-urlencoded', { 'sec-fetch-mode': 'navigate' }, body],
    ['application/x-www-form-urlencoded', {}, 'session_id=form&instructions=1.%20Task%20A'],
    ['application/x-www-form-urlencoded', {}, '\xff{"session_id": "form"}'],
    ['multipart/form-data; boundary=x', {}, body],
    ['text/plain', page, body],
    ['text/plain; charset=utf-8', {}, body],
    [undefined, {}, body]
  ]
  for (const [type, extra, payload] of cases) {
    const headers = { ...extra, ...(type === undefined ? { 'content-length': String(Buffer.byteLength(payload)) } : { 'content-type': type }) }
    const res = await app.inject({ method: 'POST', url: `${API}/create`, payload, headers })
    t.equal(res.statusCode, 415, `${type}: 415`)
    const error = res.json()
    t.match(error, { statusCode: 415, code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE', error: 'Unsupported Media Type' }, `${type}: Fastify's error shape`)
    t.match(error.message, "send the body as JSON with the header Content-Type: application/json (curl: -H 'content-type: application/json')", `${type}: says what to send`)
  }
  const archive = await app.inject({ method: 'POST', url: `${API}/archive`, payload: '{}', headers: { 'content-type': 'text/plain' } })
  t.equal(archive.statusCode, 415, 'POST /archive: text is refused the same way')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), [], 'nothing was created')
  t.equal((await post(app, '/create', JSON.parse(body))).statusCode, 200, 'the same body as JSON is accepted')
})

t.test('JSON posted as the design document does, curl -d alone (a form type), is read as JSON: only a browser\'s form post is refused', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  // The design document's own commands, run by a real curl.
  const curl = async (path: string, data: string): Promise<{ status: number, body: string }> => {
    const { stdout } = await execFileAsync('curl', ['-sS', '-X', 'POST', `${url}${API}${path}`, '-d', data, '-w', '\n%{http_code}'])
    const at = stdout.lastIndexOf('\n')
    return { status: Number(stdout.slice(at + 1)), body: stdout.slice(0, at) }
  }
  const created = await curl('/create', '{\n  "session_id": "important_work",\n  "instructions": "1. Task A\\n2. Task B\\n3. Task C"\n}')
  t.equal(created.status, 200, 'create: 200')
  t.equal(JSON.parse(created.body).total_tasks, 3, 'three tasks')
  const executed = await curl('/execute', '{\n  "session_id": "important_work"\n}')
  t.equal(executed.status, 200, 'execute: 200')
  t.equal(JSON.parse(executed.body).instruction, 'Task A', 'Task A ran')
  const stored = JSON.parse(await readFile(join(dir, 'important_work.json'), 'utf8'))
  t.same(stored.session.tasks.map((task: { status: string }) => task.status), ['Completed', 'Pending', 'Pending'], 'and is durable')
  // The same post from a page of another site: refused, and nothing changes.
  const forged = await app.inject({ method: 'POST', url: `${API}/execute`, payload: '{"session_id": "important_work"}', headers: { 'content-type': 'application/x-www-form-urlencoded', origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' } })
  t.equal(forged.statusCode, 415, 'from a browser: 415')
  t.same(JSON.parse(await readFile(join(dir, 'important_work.json'), 'utf8')), stored, 'nothing changed')
})

t.test('a body is UTF-8: bytes that are not are a 400 and another charset a 415, and nothing changes', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  const text = (instruction: Buffer): Buffer => Buffer.concat([Buffer.from('{"session_id":"bytes","instructions":"1. '), instruction, Buffer.from('"}')])
  // A Latin-1 é, a lone continuation byte, an overlong slash, a UTF-16 surrogate encoded in UTF-8, a cut sequence.
  for (const bad of [[0xe9], [0x80], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xe2, 0x82]]) {
    const res = await app.inject({ method: 'POST', url: `${API}/create`, payload: text(Buffer.from(bad)), headers: { 'content-type': 'application/json' } })
    t.equal(res.statusCode, 400, `${Buffer.from(bad).toString('hex')}: 400`)
    t.match(res.json(), { statusCode: 400, code: 'BODY_NOT_UTF8', error: 'Bad Request', message: /not valid UTF-8/u }, `${Buffer.from(bad).toString('hex')}: says why`)
  }
  for (const type of ['application/json; charset=latin1', 'application/json; charset="ISO-8859-1"', 'application/json;charset=utf-16', 'application/json; charset=utf-8; charset=latin1']) {
    const res = await app.inject({ method: 'POST', url: `${API}/create`, payload: text(Buffer.from('plain')), headers: { 'content-type': type } })
    t.equal(res.statusCode, 415, `${type}: 415`)
    t.match(res.json(), { statusCode: 415, code: 'UNSUPPORTED_CHARSET', error: 'Unsupported Media Type', message: /JSON bodies are UTF-8/u }, `${type}: says why`)
  }
  const archive = await app.inject({ method: 'POST', url: `${API}/archive`, payload: Buffer.from('{"older_than_days":"\xff"}', 'latin1'), headers: { 'content-type': 'application/json' } })
  t.match(archive.json(), { statusCode: 400, code: 'BODY_NOT_UTF8' }, 'POST /archive: refused the same way')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), [], 'nothing was created')
  for (const type of ['application/json; charset=utf-8', 'application/json; charset="UTF-8"', 'application/json; charset=utf8']) {
    const res = await app.inject({ method: 'POST', url: `${API}/create`, payload: text(Buffer.from('café ✅')), headers: { 'content-type': type } })
    t.equal(res.statusCode, 200, `${type}: UTF-8 is taken`)
  }
  t.same((await get(app, '/list?session_id=bytes')).json().tasks.map((task: { instruction: string }) => task.instruction), ['café ✅', 'café ✅', 'café ✅'], 'stored as sent')
  const bom = await app.inject({ method: 'POST', url: `${API}/create`, payload: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"session_id":"bom","instructions":"1. a"}')]), headers: { 'content-type': 'application/json' } })
  t.equal(bom.statusCode, 200, 'a UTF-8 byte order mark is taken, as before')
})

t.test('a body sent with a Content-Encoding is a 415 and changes nothing, not read as if plain; a body-less request carrying the header is served', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  const body = JSON.stringify({ session_id: 'coded', instructions: '1. a' })
  for (const [coding, payload] of [['gzip', gzipSync(body)], ['br', body], ['deflate, gzip', body], ['x-custom', body]] as const) {
    const res = await app.inject({ method: 'POST', url: `${API}/create`, payload, headers: { 'content-type': 'application/json', 'content-encoding': coding } })
    t.equal(res.statusCode, 415, `${coding}: 415`)
    t.match(res.json(), { statusCode: 415, code: 'UNSUPPORTED_CONTENT_ENCODING', error: 'Unsupported Media Type', message: /not decoded/u }, `${coding}: says why`)
  }
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), [], 'nothing was created')
  t.equal((await app.inject({ method: 'POST', url: `${API}/create`, payload: body, headers: { 'content-type': 'application/json', 'content-encoding': 'identity' } })).statusCode, 200, 'identity is no coding')
  t.equal((await app.inject({ method: 'GET', url: `${API}/progress?session_id=coded`, headers: { 'content-encoding': 'gzip' } })).statusCode, 200, 'a GET has no body to decode')
})

t.test('an unknown route answers 404 in the error shape, with a code like every other error', async (t) => {
  const app = await build(t)
  for (const url of [`${API}/nope/nope`, '/nope']) {
    const res = await app.inject({ method: 'GET', url })
    t.equal(res.statusCode, 404, url)
    t.same(res.json(), { statusCode: 404, code: 'NOT_FOUND', error: 'Not Found', message: `Route GET:${url} not found` }, url)
  }
  const secret = await app.inject({ method: 'POST', url: '/nope?token=s3cret', payload: {} })
  t.equal(secret.json().message, 'Route POST:/nope?token=[REDACTED] not found', 'a secret in the query is not echoed')
})

t.test('an unknown field is named in the 400, so a typo can be corrected', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 'typo', instruction: 'x' } })
  t.equal(res.statusCode, 400)
  t.match(res.json(), { code: 'FST_ERR_VALIDATION', message: 'body must NOT have additional properties ("instruction" is not one of its fields)' })
})
