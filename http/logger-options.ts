import type { FastifyServerOptions } from 'fastify'
import { prettyFactory } from 'pino-pretty'
import type { Config } from '../schemas/config.js'
import { LogDestination } from './log-destination.js'
import { serializeRequest } from './log-redaction.js'

/**
 * The logger `npm start` runs with: JSON lines on stdout at LOG_LEVEL (or pino-pretty's lines
 * with LOG_PRETTY=true), API keys kept out, in headers and URLs, written through a LogDestination
 * (`destination`, else a new one) so that a log that cannot be written never stops the server.
 * One place, so the bench measures the service with the very options it ships with.
 */
export function loggerOptions (config: Pick<Config, 'LOG_LEVEL' | 'LOG_PRETTY' | 'LOG_QUEUE_BYTES'>, destination?: LogDestination): FastifyServerOptions['logger'] {
  const out = destination ?? new LogDestination({ maxQueuedBytes: config.LOG_QUEUE_BYTES })
  return {
    level: config.LOG_LEVEL,
    redact: ['req.headers.authorization'],
    serializers: { req: serializeRequest },
    stream: config.LOG_PRETTY ? new PrettyLines(out) : out
  }
}

/**
 * pino-pretty's lines, formatted on this thread and written through the same LogDestination:
 * its own transport writes from a worker thread straight to stdout, where a full disk ends the
 * process and a reader that stopped holds the exit.
 */
class PrettyLines {
  private readonly pretty = prettyFactory({ translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' })

  constructor (private readonly out: LogDestination) {}

  write (line: string): boolean {
    return this.out.write(this.pretty(line))
  }

  flushSync (): void {
    this.out.flushSync()
  }
}
