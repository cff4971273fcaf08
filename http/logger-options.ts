import type { FastifyServerOptions } from 'fastify'
import type { Config } from '../schemas/config.js'
import { LogDestination } from './log-destination.js'
import { serializeRequest } from './log-redaction.js'

/**
 * The logger `npm start` runs with: JSON lines on stdout at LOG_LEVEL (or pino-pretty with
 * LOG_PRETTY=true), API keys kept out, in headers and URLs, written through a LogDestination
 * (`destination`, else a new one) so that a log that cannot be written never stops the server.
 * One place, so the bench measures the service with the very options it ships with.
 */
export function loggerOptions (config: Pick<Config, 'LOG_LEVEL' | 'LOG_PRETTY' | 'LOG_QUEUE_BYTES'>, destination?: LogDestination): FastifyServerOptions['logger'] {
  return {
    level: config.LOG_LEVEL,
    redact: ['req.headers.authorization'],
    serializers: { req: serializeRequest },
    ...(config.LOG_PRETTY
      ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' } } }
      : { stream: destination ?? new LogDestination({ maxQueuedBytes: config.LOG_QUEUE_BYTES }) })
  }
}
