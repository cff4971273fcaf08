// A server in its own process, so autocannon (in the parent) and the server do not share an
// event loop. The parent sends one `start` message and later `stop`; loopback only.
//   kind 'app'          the real service: buildApp from dist/, restored from `dir` (or the store `config` names);
//                       `logger: 'production'` logs as `npm start` does (server.ts: pino at LOG_LEVEL, default
//                       info, to stdout, with its redaction and request serializer) and turns on process metrics
//   kind 'bare-create'  bare Fastify POST doing the raw durable save of the app's bytes
//   kind 'bare-get'     bare Fastify GETs answering precomputed JSON
//   (the bare kinds take `logger: 'production'` too: the same pino options, to stdout)
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
