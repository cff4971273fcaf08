import type { Static } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { EventRelay } from '../services/events/event-relay.js'
import { ChangeLoad } from '../services/events/change-load.js'
import { EventStreamHub } from '../services/events/event-stream.js'
import { TaskEventBuffer, type TaskEventData, type TaskEventName } from '../services/events/task-events.js'
import { EVENTS_SETTINGS, resolveSettings, settingOptions } from '../schemas/options.js'
import { appSettings, checkOptions } from './options.js'
import { noop } from '../services/noop.js'
import { orLate } from '../services/deadline.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The numbered buffer of live-view events; `subscribe` to follow them in code. */
    taskEvents: TaskEventBuffer
    eventStreams: EventStreamHub
  }
}

/** Methods that change nothing (as RFC 9110's safe methods): never counted as changes in progress, and their answers have no events of their own to wait for. */
const READS = new Set(['GET', 'HEAD', 'OPTIONS'])

export const EventsOptionsSchema = settingOptions(EVENTS_SETTINGS)
export type EventsPluginOptions = Static<typeof EventsOptionsSchema>

/**
 * The live view's events: the manager's durable changes go into a bounded buffer, and from it
 * to every open stream. Streams end at shutdown, once running tasks have had their grace period
 * (the task manager's preClose runs first), so clients see the last events before the exit.
 */
export default fp<EventsPluginOptions>(async function eventsPlugin (app, options) {
  checkOptions('taskvault-events', EventsOptionsSchema, options)
  const settings = resolveSettings(EVENTS_SETTINGS, options, appSettings(app))
  const buffer = new TaskEventBuffer(settings.eventsBuffer, settings.eventsBufferBytes)
  const load = settings.eventsBusyChanges > 0 ? new ChangeLoad(settings.eventsBusyChanges) : null
  const hub = new EventStreamHub(buffer, {
    maxClients: settings.eventsMaxClients,
    heartbeatMs: settings.eventsHeartbeatMs,
    maxQueuedBytes: settings.eventsMaxQueuedBytes,
    cutGraceMs: settings.eventsCutGraceMs,
    flushMs: settings.eventsFlushMs,
    flushMaxMs: settings.eventsFlushMaxMs,
    fanoutShare: settings.eventsFanoutShare,
    fanoutSliceMs: settings.eventsFanoutSliceMs
  }, app.log, load)
  if (load !== null) {
    // Every change counts until its response closes: sent, failed, or its client gone.
    app.addHook('onRequest', (request, reply, done) => {
      if (!READS.has(request.method)) {
        load.started()
        reply.raw.once('close', () => { load.ended() })
      }
      done()
    })
  }
  // Replicas on one database: events go through its event log, so every replica streams all of them.
  const store = app.persistence
  const relay = store.shared === undefined || store.events === undefined
    ? null
    : new EventRelay({ shared: store.shared, notices: store.events, buffer, flushMs: settings.eventsFlushMs, pollMs: settings.eventsPollMs, log: app.log })
  await relay?.start()
  const forward = relay === null
    ? (name: TaskEventName, data: TaskEventData): void => { buffer.append(name, data) }
    : (name: TaskEventName, data: TaskEventData): void => { relay.publish(name, data) }
  app.taskManager.events.on('task-event', forward)
  if (relay !== null && settings.eventsPublishWaitMs > 0) {
    // A change's events are in the shared log before its answer leaves: a client that changes
    // the session next through another replica cannot have that replica's events logged first.
    // Reads change nothing, so they have no events to wait for: they go on at once, as do answers
    // that find nothing waiting, without a timer or a promise.
    app.addHook('onSend', (request, _reply, _payload, done) => {
      if (!relay.pending || READS.has(request.method)) return done()
      settledWithin(relay.settled(), settings.eventsPublishWaitMs).then(() => { done() }, done)
    })
  }
  app.decorate('taskEvents', buffer)
  app.decorate('eventStreams', hub)
  app.addHook('preClose', async () => {
    // The last events (the drain's) reach the streams before they end, unless they take longer
    // than TASK_EVENTS_CLOSE_MS: through the database's log, then out of the process to clients
    // (a slow reader's queue). Past it the streams end without them (clients resume or
    // refetch). A statement still in flight is bounded by its own timeout.
    const deadline = performance.now() + settings.eventsCloseMs
    try {
      if (relay !== null) {
        await settledWithin(relay.close(), settings.eventsCloseMs)
        // Events no other replica will see: the row is left to run out, and its clearing logs a gap (clients reset).
        if (relay.unpublished) {
          app.log.warn('Live-view events could not be published before shutdown: this replica\'s row is left to run out, so the replica that clears it logs a gap and every stream resets')
          store.shared?.eventsUnpublished()
        }
      }
    } finally {
      hub.close()
    }
    await hub.ended(Math.max(0, deadline - performance.now()))
  })
  // With a relay, events keep going to it: one after its close (a change that landed late in the
  // shutdown) leaves this replica's row to run out, so a gap is logged for it.
  app.addHook('onClose', async () => { if (relay === null) app.taskManager.events.off('task-event', forward) })
}, { name: 'taskvault-events', fastify: '5.x', dependencies: ['taskvault-task-manager'] })

/** Waits for `work` at most `ms`; its outcome, if later, is let go (the relay logs its own failures). */
async function settledWithin (work: Promise<void>, ms: number): Promise<void> {
  await orLate(work.catch(noop), ms, undefined)
}
