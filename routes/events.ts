import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { EventsHeaders, EventsQuery, responses } from '../schemas/api.js'
import { ShuttingDownError, TooManyStreamsError } from '../services/errors.js'
import { ALL_SESSIONS } from '../services/task-manager.js'

/** GET /events: the live event stream (services/event-stream.ts does the writing). */
const eventRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.addHook('onRequest', app.verifyApiKey)

  // A stream pipelined behind other answers waits for them itself, taking its slot and its events from when it was asked for.
  app.get('/events', { config: { ownTurn: true }, schema: { querystring: EventsQuery, headers: EventsHeaders, response: responses.events } }, async (request, reply) => {
    const hub = app.eventStreams
    if (hub.closing || app.taskManager.shuttingDown) throw new ShuttingDownError()
    if (hub.full) throw new TooManyStreamsError(hub.maxClients)
    if (hub.streamingOn(request.raw.socket)) throw new TooManyStreamsError(hub.maxClients, true)
    const opened = performance.now()
    // The stream outlives this handler: Fastify lets go of the reply and the hub writes it.
    reply.hijack()
    // Hijacked, it has no "request completed" line (nor a place in the request histogram): its end is logged here.
    reply.raw.once('close', () => { request.log.info({ ms: Math.round(performance.now() - opened) }, 'Event stream closed') })
    // `all` reads as in /list: every session (no session can have that id).
    const only = request.query.session_id
    hub.open(reply.raw, only === undefined || only === ALL_SESSIONS ? null : only, request.headers['last-event-id'])
  })
}

export default eventRoutes
