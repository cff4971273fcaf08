// A server in its own process, so autocannon (in the parent) and the server do not share an
// event loop. The parent sends one `start` message and later `stop`; loopback only.
//   kind 'app'          the real service: buildApp from dist/, restored from `dir` (or the store `config` names);
//                       `logger: 'production'` logs as `npm start` does (server.ts: pino at LOG_LEVEL, default
//                       info, to stdout, with its redaction and request serializer) and turns on process metrics
//   kind 'bare-create'  bare Fastify POST doing the raw durable save of the app's bytes
//   kind 'bare-get'     bare Fastify GETs answering precomputed JSON
//   kind 'bare-events'  the event stream's floor: a bare node:http server whose streams get frames like the
//                       app's, written straight to each socket at a fixed pace, doing nothing else (no
//                       saves, no requests, no logging); the message `emit` { rate, paceMs, seconds, frames }
//                       makes `rate` events a second for `seconds`, the `frames` in turn, each with its id,
//                       written every `paceMs`, and answers `emitted` once they are all written
//   (the bare kinds take `logger: 'production'` too: the same pino options, to stdout)
import http from 'node:http'
import Fastify from 'fastify'
import { rawDurableSave } from './lib/durable.mjs'

let app = null
/** [seq, epoch ms] of each live-view event, when the start message asks for them. */
const eventTimes = []

process.on('message', async (message) => {
  try {
    if (message.type === 'start') {
      app = await start(message)
      const address = await app.listen({ host: '127.0.0.1', port: 0 })
      process.send({ type: 'ready', port: new URL(address).port })
    } else if (message.type === 'cpu') {
      // CPU time of the server process, so the parent can report CPU per request (robust to a busy machine).
      process.send({ type: 'cpu', usage: process.cpuUsage() })
    } else if (message.type === 'mem') {
      // After a full collection (the child runs with --expose-gc when the section asks), for per-client memory.
      globalThis.gc?.()
      process.send({ type: 'mem', usage: process.memoryUsage() })
    } else if (message.type === 'emit') {
      await app.emit(message)
      process.send({ type: 'emitted' })
    } else if (message.type === 'event-times') {
      // When each live-view event was emitted (right after its durable save), as epoch ms, for delivery latency.
      process.send({ type: 'event-times', times: eventTimes.splice(0) })
    } else if (message.type === 'stop') {
      await app?.close()
      process.send({ type: 'stopped' }, () => process.exit(0))
    }
  } catch (err) {
    process.send({ type: 'error', message: err?.stack ?? String(err) }, () => process.exit(1))
  }
})

async function start ({ kind, dir, config = {}, logger = 'silent', template, templateId, responseTemplate, bodies, recordEventTimes = false }) {
  if (kind === 'bare-events') return bareEvents()
  if (kind === 'app') {
    const { buildApp } = await import('../dist/app.js')
    const production = logger === 'production'
    const level = config.LOG_LEVEL ?? (production ? 'info' : 'silent')
    const server = await buildApp({
      readEnvironment: false,
      config: { TASK_STORAGE_DIR: dir, TASK_ARCHIVE_DAYS: 0, ...config, LOG_LEVEL: level },
      ...(production && { logger: await shippedLogger(level), processMetrics: true })
    })
    await server.ready()
    // Before the buffer's own listener, so the time is taken before any client is written to; the event gets the next seq.
    if (recordEventTimes) server.taskManager.events.prependListener('task-event', () => { eventTimes.push([server.taskEvents.latest + 1, performance.timeOrigin + performance.now()]) })
    return server
  }
  // A floor logs like the app it is compared with: the shipped logger options, or none.
  const server = Fastify({ logger: logger === 'production' ? await shippedLogger(config.LOG_LEVEL ?? 'info') : false })
  if (kind === 'bare-create') {
    // The exact file the app wrote for a 3-task session, with the session id swapped in.
    const fileParts = template.split(templateId)
    const responseParts = responseTemplate.split(templateId)
    server.post('/api/v1/tasks/create', async (request, reply) => {
      const id = request.body.session_id
      await rawDurableSave(dir, `${id}.json`, Buffer.from(fileParts.join(id), 'utf8'))
      return reply.type('application/json; charset=utf-8').send(responseParts.join(id))
    })
  } else if (kind === 'bare-get') {
    for (const [path, body] of Object.entries(bodies)) {
      server.get(path, async (_request, reply) => reply.type('application/json; charset=utf-8').send(body))
    }
  } else {
    throw new Error(`unknown server kind ${kind}`)
  }
  return server
}

/** The logger options server.ts gives `npm start` (http/logger-options.ts), at `level`, to stdout. */
async function shippedLogger (level) {
  const { loggerOptions } = await import('../dist/http/logger-options.js')
  return loggerOptions({ LOG_LEVEL: level, LOG_PRETTY: false })
}

/**
 * The floor of the event stream: streams opened as the app opens them (headers, a first comment),
 * then every batch of frames written to each socket with one write, at a fixed pace. `listen`
 * and `close` as a Fastify instance has them, so the messages above work alike.
 */
function bareEvents () {
  const sockets = new Set()
  const server = http.createServer((req, res) => {
    res.useChunkedEncodingByDefault = false
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' })
    res.flushHeaders()
    res.socket.write(': connected\n\n')
    sockets.add(res.socket)
    res.once('close', () => sockets.delete(res.socket))
  })
  let seq = 0
  return {
    async listen ({ host, port }) {
      await new Promise((resolve) => server.listen(port, host, resolve))
      return `http://${host}:${server.address().port}`
    },
    async close () {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
    /** `rate` events a second for `seconds`, due on a 2 ms timer as the bench's executes are, written every `paceMs`. */
    async emit ({ rate, paceMs, seconds, frames }) {
      let queued = ''
      const t0 = performance.now()
      let made = 0
      const make = setInterval(() => {
        const due = Math.min(Math.floor(((performance.now() - t0) / 1000) * rate), Math.floor(rate * seconds))
        while (made < due) {
          made++
          seq++
          eventTimes.push([seq, performance.timeOrigin + performance.now()])
          queued += `id: floor-${seq}\n${frames[seq % frames.length]}`
        }
      }, 2)
      const write = () => {
        if (queued === '') return
        const chunk = Buffer.from(queued, 'utf8')
        queued = ''
        for (const socket of sockets) socket.write(chunk)
      }
      const pace = setInterval(write, paceMs)
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000 + 50))
      clearInterval(make)
      clearInterval(pace)
      write()
    }
  }
}
