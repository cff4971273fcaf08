import type { FastifyInstance, FastifyRequest } from 'fastify'

/** What an empty body stands for in a context: `{ value }`, or null when it is refused (as Fastify refuses it). */
export type EmptyBody = (request: FastifyRequest) => { value: unknown } | null

/**
 * Makes JSON the only body a context takes, whatever parsers the host registered: a form or
 * multipart post (which a browser sends cross-site without a preflight) gets a 415 and never
 * reaches a route (CSRF); JSON sent as text gets the 415 that says so, not "body must be object".
 * Keys that would poison prototypes (`__proto__`, `constructor.prototype`) are refused by name.
 */
export function acceptJsonOnly (app: FastifyInstance, empty: EmptyBody): void {
  const json = app.getDefaultJsonParser('error', 'error')
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    const text = body as string
    const meant = text === '' ? empty(request) : null
    if (meant !== null) {
      done(null, meant.value)
      return
    }
    json(request, text, (err, value) => {
      done(err !== null && parses(text) ? poisonedBody() : err, value)
    })
  })
}

/** True when `text` is JSON: the secure parser refused it for its keys, not its syntax. */
function parses (text: string): boolean {
  try {
    JSON.parse(text)
    return true
  } catch {
    return false
  }
}

function poisonedBody (): Error {
  return Object.assign(new Error('Body holds a "__proto__" key, or a "constructor" key with "prototype" in it: such keys are refused, since they could change every object of the server (prototype poisoning)'), {
    statusCode: 400,
    code: 'FORBIDDEN_BODY_KEY'
  })
}
