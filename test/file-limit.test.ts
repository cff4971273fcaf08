/**
 * Client sockets never take the file descriptors saves need: on a host whose open file limit is
 * below TASK_MAX_CONNECTIONS + TASK_EVENTS_MAX_CLIENTS + TASK_RESERVED_FILES, the server caps its
 * sockets so that TASK_RESERVED_FILES stay free, and says so at boot.
 */
import { spawn } from 'node:child_process'
import { get as httpGet, type ClientRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { buildApp } from '../app.js'
import { openFileLimit, socketBudget } from '../http/file-limit.js'
import { memoryLog, tempDir } from './helper.js'
import { SERVER, baseEnv, freePort } from './server-process.js'

t.test('the limit is read from /proc/self/limits', async (t) => {
  const text = 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 4096                 files\n'
  t.equal(openFileLimit(() => text), 1024)
  t.equal(openFileLimit(() => text.replace('1024 ', 'unlimited ')), null)
  t.equal(openFileLimit(() => { throw new Error('ENOENT') }), null)
  if (process.platform === 'linux') t.type(openFileLimit(), 'number', 'this process\'s, on Linux')
  t.same(socketBudget(512, 1000, 256, 1024), { connections: 261, streams: 507, capped: true }, 'both shares shrink, in proportion')
  t.same(socketBudget(512, 1000, 256, 65_536), { connections: 512, streams: 1000, capped: false })
  t.same(socketBudget(512, 1000, 256, null), { connections: 512, streams: 1000, capped: false })
  t.same(socketBudget(512, 1000, 256, 100), { connections: 1, streams: 1, capped: true })
})

t.test('under a low limit the server caps its sockets and warns, naming the settings; under a high one it takes them as set', async (t) => {
  const log = memoryLog()
  const low = await buildApp({ readEnvironment: false, logger: log.logger, fileLimit: () => 1024, config: { TASK_STORAGE_DIR: await tempDir(t) } })
  t.teardown(() => low.close())
  t.equal(low.server.maxConnections, 1024 - 256)
  t.equal(low.taskvaultConfig.TASK_MAX_CONNECTIONS, 261, 'the requests\' share, as the app uses it')
  t.equal(low.taskvaultConfig.TASK_EVENTS_MAX_CLIENTS, 507, 'the streams\' share: past it a stream is refused with 503, so streams never take the requests\' sockets')
  t.ok(log.lines().some((line) => line.level === 40 && /ulimit -n 1024.*lowered in proportion to 261 and 507/.test(line.msg ?? '')), 'a warning at boot')
  const high = await buildApp({ readEnvironment: false, fileLimit: () => 1_000_000, config: { TASK_STORAGE_DIR: await tempDir(t), TASK_MAX_CONNECTIONS: 100, TASK_EVENTS_MAX_CLIENTS: 50 } })
  t.teardown(() => high.close())
  t.equal(high.server.maxConnections, 150)
})

t.test('a real server started under ulimit -n 1024 says so and serves', { skip: process.platform !== 'linux' && 'ulimit and /proc are Linux here' }, async (t) => {
  const port = await freePort()
  const child = spawn('/bin/sh', ['-c', `ulimit -n 1024 && exec "${process.execPath}" "${SERVER}"`], {
    env: baseEnv({ PORT: String(port), TASK_STORAGE_DIR: await tempDir(t) }),
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  t.teardown(() => { child.kill('SIGKILL') })
  const deadline = Date.now() + 30_000
  while (!/listening/i.test(out) && Date.now() < deadline && child.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 50))
  t.match(out, /open file limit \(ulimit -n 1024\)[^\n]*lowered in proportion to 261 and 507/, 'the warning')
  t.equal((await fetch(`http://127.0.0.1:${port}/health`)).status, 200, 'and it serves')
})

t.test('under the cap, event streams past their share are refused and requests still get in', async (t) => {
  const app = await buildApp({ readEnvironment: false, fileLimit: () => 300, config: { TASK_STORAGE_DIR: await tempDir(t), TASK_MAX_CONNECTIONS: 20, TASK_EVENTS_MAX_CLIENTS: 100 } })
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  const port = (app.server.address() as AddressInfo).port
  const streams = app.taskvaultConfig.TASK_EVENTS_MAX_CLIENTS
  t.equal(streams, 36)
  const statuses: number[] = []
  const open: ClientRequest[] = []
  await Promise.all(Array.from({ length: streams + 5 }, async () => new Promise<void>((resolve) => {
    const req = httpGet({ host: '127.0.0.1', port, path: '/api/v1/tasks/events' }, (res) => { statuses.push(res.statusCode ?? 0); resolve() })
    req.on('error', () => { statuses.push(0); resolve() })
    open.push(req)
  })))
  t.teardown(() => { for (const req of open) req.destroy() })
  t.equal(statuses.filter((status) => status === 200).length, streams, 'streams up to their share')
  t.equal(statuses.filter((status) => status === 503).length, 5, 'the rest refused')
  t.equal((await fetch(`http://127.0.0.1:${port}/health`)).status, 200, 'requests still get in')
})
