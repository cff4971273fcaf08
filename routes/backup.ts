import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { NoQuery, responses } from '../schemas/api.js'
import { backupFileName, emptyCounts, liveSessionFiles } from '../services/backup/backup.js'
import { ShuttingDownError, TooManyBackupsError } from '../services/errors.js'
import { errorHandler } from '../http/error-handler.js'
import { tarGzStream } from '../services/backup/tar.js'
import { answersCutAtClose, guardStream } from '../http/stalled-answers.js'

export interface BackupRoutesOptions {
  /**
   * Once the app is closing, how long a backup still being sent may take before its connection
   * is cut (a client that stopped reading would otherwise hold the close forever). Default: never.
   */
  cutAfterMs?: number
  /** Backups being sent at once at most; one more answers 503 (TASK_BACKUP_MAX_CLIENTS). */
  maxClients: number
  /** A backup whose client takes no byte for this long is cut (TASK_BACKUP_STALL_MS). */
  stallMs: number
  /** PostgreSQL: active sessions read ahead of the one sent (TASK_BACKUP_READ_AHEAD). */
  readAhead: number
}

/**
 * GET /backup: a tar.gz of every session, streamed as it is made (memory stays bounded
 * whatever the number of sessions), in the layout `taskvault restore` reads. Each one being sent
 * holds a session or more in memory: they are counted (maxClients), and one whose client stopped
 * reading is cut (stallMs).
 */
const backupRoutes: FastifyPluginAsyncTypebox<BackupRoutesOptions> = async (app, options) => {
  app.addHook('onRequest', app.verifyApiKey)
  // The answers being sent: counted (maxClients), and cut at close.
  const sending = answersCutAtClose(app, options.cutAfterMs)

  app.get('/backup', {
    schema: { querystring: NoQuery, response: responses.backup },
    // A failure before the first byte is an ordinary error answer: not a gzip, not a download.
    errorHandler: async (error, request, reply) => {
      reply.removeHeader('content-type').removeHeader('content-disposition')
      await errorHandler(error, request, reply)
    }
  }, async (request, reply) => {
    const manager = app.taskManager
    if (manager.shuttingDown) throw new ShuttingDownError()
    if (request.method !== 'HEAD' && sending.size >= options.maxClients) throw new TooManyBackupsError(options.maxClients)
    const name = backupFileName(new Date(), true)
    reply.type('application/gzip').header('content-disposition', `attachment; filename="${name}"`).header('cache-control', 'no-store')
    // Fastify's automatic HEAD route would make the whole archive only to drop it. An empty
    // stream, not an empty body: the headers are a GET's, with no `content-length: 0` saying the download is empty.
    if (request.method === 'HEAD') return reply.send(Readable.from([]) as unknown as string)
    const started = performance.now()
    const counts = emptyCounts()
    let leftOut = 0
    const stream = tarGzStream(liveSessionFiles(manager, app.persistence, counts, (sessionId, err) => {
      leftOut++
      request.log.warn({ session_id: sessionId, err }, 'Backup left out a session whose stored copy does not read here')
    }, options.readAhead))
    // A failure mid-stream (after the headers) cuts the response short: tar readers, restore
    // included, then see a truncated archive, never a silently partial one.
    let ended = false
    stream.once('error', (err) => request.log.error({ err, ...counts }, 'Backup cut short'))
    stream.once('end', () => {
      ended = true
      request.log.info({ ...counts, left_out: leftOut, ms: Math.round(performance.now() - started) }, `Backup streamed: ${counts.active + counts.archived} sessions${leftOut > 0 ? `, ${leftOut} left out (unreadable)` : ''}`)
    })
    // The client went away: Fastify destroys the stream, which stops the session walk.
    stream.once('close', () => { if (!ended) request.log.warn({ ...counts }, 'Backup stopped before its end') })
    sending.add(reply.raw)
    // The place is given back when the answer ends, when its connection goes, and when it is cut.
    guardStream(request.raw, reply.raw, stream, options.stallMs, {
      onCut: () => request.log.warn({ ...counts, stall_ms: options.stallMs }, 'Backup cut: its client took nothing for TASK_BACKUP_STALL_MS'),
      onDone: () => sending.delete(reply.raw)
    })
    // The schema types the body as the binary string it documents; a stream is sent as is.
    return reply.send(stream as unknown as string)
  })
}

export default backupRoutes
