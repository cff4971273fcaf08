/**
 * Shutdown with a client that stopped reading its answer, as a real process: a backup download
 * whose reader went away (a laptop closed mid-download keeps the socket open for minutes) must
 * not hold the exit up, nor leave the storage lock behind.
 */
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { API } from './helper.js'
import { call, kernelConnection, logMessages, scratch } from './server-process.js'

t.test('SIGTERM with a backup download nobody reads: the socket is cut after the grace and the streams\' close time, the exit is 0 and the lock released', async (t) => {
  const { dir, start } = await scratch(t)
  const server = await start({ TASK_SHUTDOWN_GRACE_MS: '1000', TASK_EVENTS_CLOSE_MS: '500', TASK_MAX_INSTRUCTION_BYTES: '1000000', BODY_LIMIT: '2000000' })
  // 24 MB that does not compress: far more than the socket's buffers on both sides take.
  for (let i = 0; i < 40; i += 4) {
    await Promise.all(Array.from({ length: 4 }, async (_, j) => {
      const reply = await call(server, 'POST', `${API}/create`, { session_id: `big_${i + j}`, tasks: [{ instruction: randomBytes(450_000).toString('base64') }] })
      t.equal(reply.status, 200)
    }))
  }
  const socket = net.connect(server.port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  socket.write(`GET ${API}/backup HTTP/1.1\r\nHost: localhost\r\n\r\n`)
  // The headers, then no more reading.
  await new Promise<void>((resolve) => socket.once('data', () => { socket.pause(); resolve() }))
  // Time for the backup to fill every buffer on the way and stop, waiting for a reader.
  await sleep(3000)
  const signalled = Date.now()
  server.child.kill('SIGTERM')
  const exit = await server.exited
  const took = Date.now() - signalled
  t.same(exit, { code: 0, signal: null }, 'a clean exit')
  t.ok(took < 8000, `within the grace and the close time, well before the 10 s fallback (${took} ms)`)
  t.ok(logMessages(server.stdout()).includes('Closed connections whose answers were not taken at shutdown'), 'the reader was cut (the case under test)')
  // Reset, not closed: a closed socket would outlive the process in the kernel, its megabytes
  // queued, until the reader reads them or the kernel gives up, minutes later.
  t.equal(await kernelConnection(server.port, socket.localPort as number), null, 'the kernel holds no connection to the reader')
  t.notOk(existsSync(join(dir, 'data', 'tasks', '.taskvault.lock')), 'the storage lock is released')
})
