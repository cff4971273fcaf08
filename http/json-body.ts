import type { IncomingMessage } from 'node:http'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { UnsupportedTransferEncodingError } from '../services/errors.js'

/** What an empty body stands for in a context: `{ value }`, or null when it is refused (as Fastify refuses it). */
export type EmptyBody = (request: FastifyRequest) => { value: unknown } | null

/**
 * Makes JSON the only body a context takes, whatever parsers the host registered: a form or
 * multipart post (which a browser sends cross-site without a preflight) gets a 415 and never
 * reaches a route (CSRF), and so does a form-typed body that is no JSON or comes from a browser;
 * JSON sent as text gets the 415 that says so, not "body must be object".
 * Keys that would poison prototypes (`__proto__`, `constructor.prototype`) are refused by name.
 * Bodies are UTF-8: other bytes get a 400 and another charset a 415, rather than being changed.
 * (A Content-Encoding is left to the host: one that decodes bodies, as @fastify/compress does in
 * a route's own hook, does so before this parser; an encoded body nobody decoded is no UTF-8 JSON.)
 */
export function acceptJsonOnly (app: FastifyInstance, empty: EmptyBody): void {
  const json = app.getDefaultJsonParser('error', 'error')
  // Fatal: bytes that are no UTF-8 are refused, where a lenient decoder stores U+FFFD in their place.
  const utf8 = new TextDecoder('utf-8', { fatal: true })
  const parse = (request: FastifyRequest, body: Buffer, form: boolean, done: (err: Error | null, value?: unknown) => void): void => {
    const charset = charsetOf(request.headers['content-type'])
    if (charset !== null && !/^utf-?8$/iu.test(charset)) {
      done(unsupportedCharset(charset), undefined)
      return
    }
    let text: string
    try {
      text = utf8.decode(body)
    } catch {
      done(form ? formPost() : notUtf8(), undefined)
      return
    }
    const meant = text === '' ? empty(request) : null
    if (meant !== null) {
      done(null, meant.value)
      return
    }
    // A form-typed body that is no JSON is a form: refused as one, not as broken JSON.
    if (form && !parses(text)) {
      done(formPost(), undefined)
      return
    }
    json(request, text, (err, value) => {
      done(err !== null && parses(text) ? poisonedBody() : err, value)
    })
  }
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    parse(request, body as Buffer, false, done)
  })
  // The design document's examples post JSON with curl's -d alone, which types it as a form.
  // Such a body is read as JSON when no browser sent it: every browser names the page behind a
  // POST (Origin, Sec-Fetch-Site), which a page cannot leave out, so a web page still cannot
  // drive a local taskvault with a form (CSRF), while curl and server-side clients send neither.
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'buffer' }, (request, body, done) => {
    if (fromBrowser(request)) done(formPost(), undefined)
    else parse(request, body as Buffer, true, done)
  })
}

/**
 * A POST with no body has no Content-Type, so no parser above sees it: where a route takes one
 * (its defaults), a browser's is refused as a form post is, since any web page may send it
 * cross-site without a preflight (`fetch(url, { method: 'POST', mode: 'no-cors' })`).
 */
export function refuseBareBrowserPost (request: FastifyRequest): void {
  // A page's POST always names it (Origin) and browsers add Sec-Fetch-Site; Node's own fetch
  // sends Sec-Fetch-Mode alone, and a server-side client posting nothing is no page.
  if (request.headers.origin !== undefined || request.headers['sec-fetch-site'] !== undefined) throw formPost()
}

/**
 * A route that takes no body (a DELETE, naming its session in the path) refuses one sent
 * anyway, rather than leave unread what a client meant by it (the session named in the body, say).
 */
export function refuseBody (request: FastifyRequest, _reply: unknown, done: (err?: Error) => void): void {
  if (request.body === undefined || request.body === null) done()
  else done(Object.assign(new Error(`${request.method} takes no body: what it acts on is named in the path`), { statusCode: 400, code: 'BODY_NOT_ALLOWED' }))
}

/**
 * The standalone server decodes no body: one sent with a Content-Encoding other than
 * `identity` is refused (415, RFC 9110), and one with a transfer coding besides chunked (501,
 * RFC 9112), not read as if it were plain. (Embedded, the host may
 * decode bodies in its own hook, leaving the header: see acceptJsonOnly.) Null when there is none.
 */
export function encodedBody (raw: IncomingMessage): Error | null {
  // Node takes chunked off (it must come last); a coding under it (`gzip, chunked`) would be left on the body.
  const transfer = raw.headers['transfer-encoding']
  if (transfer !== undefined && !/^\s*((identity|chunked)\s*(,\s*|$))+$/iu.test(transfer)) return new UnsupportedTransferEncodingError(transfer)
  const coding = raw.headers['content-encoding']
  if (coding === undefined || /^\s*(identity\s*)?$/iu.test(coding)) return null
  // A request without a body (a probe's GET) has nothing to decode.
  if (raw.headers['transfer-encoding'] === undefined && !(Number(raw.headers['content-length'] ?? 0) > 0)) return null
  return Object.assign(new Error(`Unsupported Media Type (Content-Encoding '${coding.slice(0, 40)}'): bodies are taken as they are, not decoded; send plain JSON`), {
    statusCode: 415,
    code: 'UNSUPPORTED_CONTENT_ENCODING'
  })
}

/** A request a browser made: it always sends these on a POST, and no page can leave them out. */
function fromBrowser (request: FastifyRequest): boolean {
  const headers = request.headers
  return headers.origin !== undefined || headers['sec-fetch-site'] !== undefined || headers['sec-fetch-mode'] !== undefined
}

/** A form post: answered as Fastify answers a type nothing parses (error-handler.ts says what to send). */
function formPost (): Error {
  return Object.assign(new Error('Unsupported Media Type'), { statusCode: 415, code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE' })
}

/** The charset parameter of a Content-Type, unquoted (those given more than once, comma-joined); null when there is none. */
function charsetOf (type: string | undefined): string | null {
  const given = [...(type ?? '').matchAll(/;\s*charset\s*=\s*(?:"([^"]*)"|([^;\s]*))/giu)].map((match) => match[1] ?? match[2] ?? '')
  return given.length === 0 ? null : given.join(', ')
}

function unsupportedCharset (charset: string): Error {
  return Object.assign(new Error(`Unsupported Media Type (charset '${charset.slice(0, 40)}'): JSON bodies are UTF-8 (RFC 8259); send UTF-8 with the header Content-Type: application/json`), {
    statusCode: 415,
    code: 'UNSUPPORTED_CHARSET'
  })
}

function notUtf8 (): Error {
  return Object.assign(new Error('Body is not valid UTF-8: JSON bodies are UTF-8 (RFC 8259), and bytes that are not would be stored as U+FFFD in their place'), {
    statusCode: 400,
    code: 'BODY_NOT_UTF8'
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
