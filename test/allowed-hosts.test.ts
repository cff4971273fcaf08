/**
 * DNS rebinding: a web page whose own name is made to resolve to 127.0.0.1 is same-origin with a
 * local taskvault and may send it JSON. A server on loopback with no API key answers only to
 * loopback host names (and TASK_ALLOWED_HOSTS), so such a page's requests, which carry its own
 * name as their Host, are refused before they reach any route.
 */
import { request } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { API, build } from './helper.js'
import { hostName, isLoopback } from '../http/allowed-hosts.js'

async function call (app: FastifyInstance, host: string, method: 'GET' | 'POST' = 'GET', url = `${API}/list?session_id=all`, payload?: object): Promise<{ status: number, body: any }> {
  const res = await app.inject({ method, url, headers: { host }, ...(payload !== undefined && { payload }) })
  return { status: res.statusCode, body: res.body.startsWith('{') ? res.json() : res.body }
}

t.test('on loopback with no API key: a foreign Host is refused (403 HOST_NOT_ALLOWED) on every route and changes nothing; loopback names are answered', async (t) => {
  const app = await build(t)
  for (const [method, url, payload] of [['POST', `${API}/create`, { session_id: 'victim', instructions: 'x' }], ['GET', `${API}/backup`], ['GET', '/dashboard/'], ['GET', '/metrics'], ['GET', '/health'], ['GET', '/documentation/json']] as const) {
    const res = await call(app, 'rebind.attacker.example:7000', method, url, payload)
    t.equal(res.status, 403, `${method} ${url}: 403`)
    t.match(res.body, { statusCode: 403, code: 'HOST_NOT_ALLOWED', error: 'Forbidden', message: /TASK_ALLOWED_HOSTS/ })
  }
  t.equal((await call(app, 'localhost', 'GET', `${API}/progress?session_id=victim`)).status, 404, 'the refused create made nothing')
  for (const host of ['localhost:7000', 'LOCALHOST.', '127.0.0.1:7000', '127.1.2.3', '[::1]:7000', 'dashboard.localhost:7000', '10.0.0.7:7000', '[fd00::7]:7000']) {
    t.equal((await call(app, host)).status, 200, `Host ${host}: answered`)
  }
  for (const host of ['127.0.0.1.nip.io', 'localhost.attacker.example', 'tv.internal:7000']) {
    t.equal((await call(app, host)).status, 403, `Host ${JSON.stringify(host)}: refused`)
  }
})

t.test('TASK_ALLOWED_HOSTS adds names, * turns the check off; API keys or a HOST beyond loopback need no check', async (t) => {
  const named = await build(t, { config: { TASK_ALLOWED_HOSTS: 'tv.internal, Other.Example' } })
  t.equal((await call(named, 'tv.internal:7000')).status, 200)
  t.equal((await call(named, 'other.example')).status, 200, 'names compare without case')
  t.equal((await call(named, 'third.example')).status, 403)
  const written = await build(t, { config: { TASK_ALLOWED_HOSTS: 'tv.lan:7507,[fd00::5],box.example.' } })
  for (const host of ['tv.lan:7507', 'tv.lan', '[fd00::5]:7507', 'box.example', 'box.example.:7507']) t.equal((await call(written, host)).status, 200, `listed as a Host header would carry it: ${host}`)
  const any = await build(t, { config: { TASK_ALLOWED_HOSTS: '*' } })
  t.equal((await call(any, 'whatever.example')).status, 200)
  const keyed = await build(t, { config: { TASK_API_KEYS: 'secret-key-1' } })
  t.equal((await call(keyed, 'rebind.attacker.example')).status, 401, 'with keys: the key decides (a page cannot have it)')
  t.equal((await keyed.inject({ method: 'GET', url: `${API}/list?session_id=all`, headers: { host: 'rebind.attacker.example', authorization: 'Bearer secret-key-1' } })).statusCode, 200)
  const wide = await build(t, { config: { HOST: '0.0.0.0' } })
  t.equal((await call(wide, 'pod-7.taskvault.svc:7000')).status, 200, 'listening beyond loopback: names it is reached under are answered')
  // The compose files: a container on 0.0.0.0 behind a port published on the host's loopback.
  const published = await build(t, { config: { HOST: '0.0.0.0', TASK_ALLOWED_HOSTS: 'localhost' } })
  t.equal((await call(published, 'rebind.attacker.example:7000')).status, 403, 'listing names turns the check on wherever it listens')
  t.equal((await call(published, 'localhost:7000')).status, 200)
  t.equal((await call(published, '127.0.0.1:7000')).status, 200)
  t.equal((await call(published, '10.1.2.3:7000')).status, 200, 'a probe or a scrape by the pod\'s address passes')
})

t.test('the address listened on decides, not HOST: a host of buildApp listening on 0.0.0.0 answers every name', async (t) => {
  const app = await build(t)
  await app.listen({ host: '0.0.0.0', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const status = await new Promise<number>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/health', headers: { host: `taskvault.internal:${port}` } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
    req.on('error', reject)
    req.end()
  })
  t.equal(status, 200)
})

t.test('a real HTTP peer sending a rebinding page\'s Host is refused; one on 127.0.0.1 is answered', async (t) => {
  const app = await build(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const status = async (host: string): Promise<number> => new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/health', headers: { host } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
    req.on('error', reject)
    req.end()
  })
  t.equal(await status(`rebind.attacker.example:${port}`), 403)
  t.equal(await status(`127.0.0.1:${port}`), 200)
})

t.test('host names out of Host headers', async (t) => {
  t.equal(hostName('Example.COM:80'), 'example.com')
  t.equal(hostName('[::1]:7000'), '::1')
  t.equal(hostName('[::1]'), '::1')
  t.equal(hostName('localhost.'), 'localhost')
  t.equal(hostName(':80'), null)
  t.ok(isLoopback('127.255.255.254'))
  t.notOk(isLoopback('128.0.0.1'))
  t.notOk(isLoopback('localhost.example'))
})
