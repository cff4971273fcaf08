import { Type } from '@sinclair/typebox'
import fp from 'fastify-plugin'
import { EventStreamHub } from '../services/events/event-stream.js'
import { TaskEventBuffer, type TaskEventData, type TaskEventName } from '../services/events/task-events.js'
import { checkOptions, fromSetting, setting } from './options.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The numbered buffer of live-view events; `subscribe` to follow them in code. */
    taskEvents: TaskEventBuffer
    eventStreams: EventStreamHub
  }
}

export interface EventsPluginOptions {
  /** Latest events kept for resume (TASK_EVENTS_BUFFER). */
  eventsBuffer?: number
  /** Heartbeat period of every stream (TASK_EVENTS_HEARTBEAT_MS). */
  eventsHeartbeatMs?: number
  /** Concurrent streams (TASK_EVENTS_MAX_CLIENTS). */
  eventsMaxClients?: number
  /** Bytes queued for one client before it is cut off with a reset (TASK_EVENTS_MAX_QUEUED_BYTES). */
  eventsMaxQueuedBytes?: number
  /** Events are written to clients at most this often, batched (TASK_EVENTS_FLUSH_MS). */
  eventsFlushMs?: number
}

export const EventsOptionsSchema = Type.Object({
  eventsBuffer: fromSetting('TASK_EVENTS_BUFFER'),
  eventsHeartbeatMs: fromSetting('TASK_EVENTS_HEARTBEAT_MS'),
  eventsMaxClients: fromSetting('TASK_EVENTS_MAX_CLIENTS'),
  eventsMaxQueuedBytes: fromSetting('TASK_EVENTS_MAX_QUEUED_BYTES'),
  eventsFlushMs: fromSetting('TASK_EVENTS_FLUSH_MS')
}, { additionalProperties: false })

/**
 * The live view's events: the manager's durable changes go into a bounded buffer, and from it
 * to every open stream. Streams end at shutdown, once running tasks have had their grace period
 * (the task manager's preClose runs first), so clients see the last events before the exit.
 */
export default fp<EventsPluginOptions>(async function eventsPlugin (app, options) {
  checkOptions('taskvault-events', EventsOptionsSchema, options)
  const buffer = new TaskEventBuffer(options.eventsBuffer ?? setting(app, 'TASK_EVENTS_BUFFER'))
  const hub = new EventStreamHub(buffer, {
    maxClients: options.eventsMaxClients ?? setting(app, 'TASK_EVENTS_MAX_CLIENTS'),
    heartbeatMs: options.eventsHeartbeatMs ?? setting(app, 'TASK_EVENTS_HEARTBEAT_MS'),
    maxQueuedBytes: options.eventsMaxQueuedBytes ?? setting(app, 'TASK_EVENTS_MAX_QUEUED_BYTES'),
    flushMs: options.eventsFlushMs ?? setting(app, 'TASK_EVENTS_FLUSH_MS')
  }, app.log)
  const forward = (name: TaskEventName, data: TaskEventData): void => { buffer.append(name, data) }
  app.taskManager.events.on('task-event', forward)
  app.decorate('taskEvents', buffer)
  app.decorate('eventStreams', hub)
  app.addHook('preClose', async () => hub.close())
  app.addHook('onClose', async () => { app.taskManager.events.off('task-event', forward) })
}, { name: 'taskvault-events', fastify: '5.x', dependencies: ['taskvault-task-manager'] })
