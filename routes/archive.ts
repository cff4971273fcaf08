import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ArchiveBody, NoQuery, responses } from '../schemas/api.js'
import { SETTING_DEFAULTS } from '../schemas/options.js'
import { acceptJsonOnly, refuseBareBrowserPost } from '../http/json-body.js'
import { ArchivePassError, ShuttingDownError } from '../services/errors.js'

/** POST /archive: an archive and retention pass now, queued behind the scheduler's if one is running. */
const archiveRoutes: FastifyPluginAsyncTypebox<{ bodyLimit?: number }> = async (app, options) => {
  app.addHook('onRequest', app.verifyApiKey)
  // The body is optional: an empty one means the defaults, also under a JSON content type (which
  // many clients send on every request).
  acceptJsonOnly(app, () => ({ value: {} }))

  app.post('/archive', {
    bodyLimit: options.bodyLimit ?? SETTING_DEFAULTS.BODY_LIMIT,
    // A bare `POST /archive` (no body) means the defaults, like `{}`, unless a web page sent it; a body of `null` is not an object (400).
    preValidation: async (request) => {
      if ((request.body as ArchiveBody | undefined) !== undefined) return
      refuseBareBrowserPost(request)
      request.body = {}
    },
    schema: { querystring: NoQuery, body: ArchiveBody, response: responses.archive }
  }, async (request) => {
    if (app.taskManager.shuttingDown) throw new ShuttingDownError()
    const days = request.body.older_than_days
    const pass = await app.archiver.runOnce(days === undefined ? {} : { archiveOlderThanDays: days })
    if (pass.failures.length > 0) throw new ArchivePassError(pass.failures, pass.archived.length, pass.deleted.length)
    return { archived: pass.archived.length, deleted: pass.deleted.length, archived_ids: pass.archived, deleted_ids: pass.deleted }
  })
}

export default archiveRoutes
