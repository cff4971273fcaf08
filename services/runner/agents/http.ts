import { Agent, fetch } from 'undici'
import { AgentError } from '../../errors.js'
import { GrowableBytes } from '../../growable-bytes.js'
import { noop } from '../../noop.js'
import { truncateUtf8 } from '../../session/session.js'

/** undici's codes for a request it will not send as given (not a network failure). */
const REFUSED_REQUEST_CODES = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED'])

/** How much of an unexpected answer goes into the task's error. */
const BODY_EXCERPT_BYTES = 200
/** An answer's body is read into this much at first, grown as it comes. */
const FIRST_BODY_BYTES = 16 * 1024

export interface PostOptions {
  headers: Record<string, string>
  signal: AbortSignal
  maxBytes: number
}

export interface JsonAnswer {
  status: number
  body: unknown
  /**
   * `: ` and the answer's first 200 bytes, secrets redacted ('' for an empty body), as the
   * errors here quote it: for an agent's error about what a 2xx holds. Made when asked only.
   */
  excerpt: () => string
}

/**
 * POSTs JSON and reads the answer whole, up to `maxBytes`. A 2xx must be JSON; anything else
 * becomes an AgentError: transient for network errors, 5xx and 429 (with Retry-After), permanent otherwise.
 */
export async function postJson (who: string, url: string, payload: unknown, options: PostOptions): Promise<JsonAnswer> {
  // Node's own fetch gives up after 300 s without headers, or between two pieces of a body:
  // a slow completion (a local model) would fail, and be retried from the start, before the
  // agent's timeout_ms, which must be the only limit (the signal). The connection is this call's.
  const dispatcher = new Agent({ headersTimeout: 0, bodyTimeout: 0 })
  try {
    return await exchange(who, url, payload, options, dispatcher)
  } finally {
    await dispatcher.destroy().catch(noop)
  }
}

async function exchange (who: string, url: string, payload: unknown, options: PostOptions, dispatcher: Agent): Promise<JsonAnswer> {
  let response: Response
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json', ...options.headers },
      body: JSON.stringify(payload),
      signal: options.signal,
      // A redirect is answered like any other non-2xx: it names its status and is not followed.
      redirect: 'manual',
      dispatcher
    })
  } catch (err) {
    if (options.signal.aborted) throw options.signal.reason
    // A request the client refuses to send is refused again at every try.
    const refused = REFUSED_REQUEST_CODES.has(String((err as { cause?: { code?: unknown } } | null)?.cause?.code))
    throw new AgentError(`${who} ${refused ? 'request refused by the HTTP client' : 'unreachable'}: ${describeNetworkError(err)}`, { transient: !refused, cause: err })
  }
  const { text, cut } = await readText(who, response, options.maxBytes, options.signal)
  // What is quoted of an answer goes into the task's error (every client reads it) and the log:
  // never what we sent in a header (a gateway that echoes headers, a 401 naming the key), nor
  // the start of one that a cut body ends with.
  const secrets = secretsOf(Object.values(options.headers))
  const quoted = (body: string): string => {
    // Only the start is ever shown: of a 4 MiB answer only what the excerpt can take is worked
    // over (undoing escapes costs a call each: the whole of one blocked the server for seconds).
    const room = ESCAPE_CHARS * BODY_EXCERPT_BYTES + 2 * (secrets[0]?.length ?? 0)
    const clipped = body.length > room
    const shown = redacted(unescaped(clipped ? body.slice(0, room) : body), secrets)
    return excerpt(cut || clipped ? withoutTail(shown, secrets) : shown, cut || clipped)
  }
  if (response.status < 200 || response.status > 299) {
    const transient = response.status === 429 || response.status >= 500
    throw new AgentError(`${who} answered ${response.status}${quoted(text)}`, {
      transient,
      retryAfterMs: transient ? parseRetryAfter(response.headers.get('retry-after')) : null
    })
  }
  // A byte-order mark (some Windows stacks write one) is no part of the JSON, which JSON.parse refuses.
  const json = text.replace(/^\uFEFF/u, '')
  // Parsing JSON nested a million deep blocks the process for a second or more: refused unparsed.
  if (nestedPast(json, MAX_ANSWER_DEPTH)) throw new AgentError(`${who} answered ${response.status} with JSON nested more than ${MAX_ANSWER_DEPTH} levels deep`)
  try {
    return { status: response.status, body: JSON.parse(json), excerpt: () => quoted(json) }
  } catch {
    throw new AgentError(`${who} answered ${response.status} with a body that is not JSON${quoted(text)}`)
  }
}

/** How deep an agent's JSON answer may nest: far past any API's, far short of a stall. */
export const MAX_ANSWER_DEPTH = 256

/** Whether `text`'s arrays and objects nest deeper than `max` (brackets inside strings not counted). */
function nestedPast (text: string, max: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true
    } else if (c === 0x5d || c === 0x7d) depth--
  }
  return false
}

/** An answer's body as text; `cut`: an error answer longer than max_response_bytes, of which only the start was kept. */
async function readText (who: string, response: Response, maxBytes: number, signal: AbortSignal): Promise<{ text: string, cut: boolean }> {
  if (response.body === null) return { text: '', cut: false }
  const body = new GrowableBytes(Math.min(maxBytes, FIRST_BODY_BYTES), maxBytes)
  try {
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      if (body.length + chunk.byteLength > maxBytes) {
        // An error answer is judged by its status (a 503 is still retried); only its start is kept,
        // up to the cap within this piece too: a first piece past the cap would leave nothing to quote.
        if (!response.ok) body.append(chunk.subarray(0, maxBytes - body.length))
        await response.body.cancel().catch(() => {})
        if (!response.ok) return { text: body.view().toString('utf8'), cut: true }
        throw new AgentError(`${who} answered ${response.status} with more than ${maxBytes} bytes (max_response_bytes)`)
      }
      body.append(chunk)
    }
  } catch (err) {
    if (err instanceof AgentError) throw err
    if (signal.aborted) throw signal.reason
    throw new AgentError(`${who} connection lost while answering: ${describeNetworkError(err)}`, { transient: true, cause: err })
  }
  return { text: body.view().toString('utf8'), cut: false }
}

/** Shortest header value (or token within one, as in `Bearer <key>`) worth hiding: shorter ones would blank out ordinary words. */
const SECRET_MIN_CHARS = 8

/** Shorter, a header value or credential would be blanked out of the answer wherever it occurs ("true", "2024"); no real key is so short. */
const CREDENTIAL_MIN_CHARS = 6

/** Schemes whose second word is the credential (`Authorization: Bearer <key>`). */
const AUTH_SCHEME = /^(?:bearer|basic|token|apikey|key)$/iu

/** The most characters one character takes escaped (`\u002B`). */
const ESCAPE_CHARS = 6

/** Passes of unescaped: an answer quoting another's JSON escapes its escapes (`\\\/`). */
const UNESCAPE_PASSES = 4

/**
 * `text` with the escapes an encoder may put where none is needed undone: in a JSON string (PHP
 * writes `/` as `\/`, .NET `+` as `\u002B`; control characters stay escaped) and in a URL (`%2F`,
 * `%2f`; printable ASCII only), escaped again as often as UNESCAPE_PASSES: a secret a gateway
 * echoes so is then found by redaction as written.
 */
function unescaped (text: string): string {
  let out = text
  for (let pass = 0; pass < UNESCAPE_PASSES; pass++) {
    const next = out.replace(/\\(\/|u([0-9a-fA-F]{4}))|%([2-7][0-9a-fA-F])/gu, (escape: string, _json: string | undefined, hex: string | undefined, percent: string | undefined) => {
      if (percent !== undefined) return percent.toLowerCase() === '7f' ? escape : String.fromCharCode(Number.parseInt(percent, 16))
      if (hex === undefined) return '/'
      const code = Number.parseInt(hex, 16)
      return code < 0x20 ? escape : String.fromCharCode(code)
    })
    if (next === out) break
    out = next
  }
  return out
}

/**
 * Every header value we sent, the credential of one that names a scheme (`Bearer <key>`), and
 * each long word of any, longest first, with the forms a body may carry them in besides
 * (undone of needless escapes: unescaped): escaped in a JSON string, percent-encoded, and a
 * Basic credential decoded (`user:password`, and the password). A whole value or a credential
 * is a secret from CREDENTIAL_MIN_CHARS (a 7-character key is still the key); another word only
 * from SECRET_MIN_CHARS, as a short one is likely a word the answer uses too.
 */
function secretsOf (values: readonly string[]): string[] {
  const secrets = new Set<string>()
  const add = (secret: string, minChars = CREDENTIAL_MIN_CHARS): void => {
    if (secret.length < minChars) return
    // As the quote is: undone of escapes (a key holding `%2B` is matched as it reads then).
    for (const form of [secret, JSON.stringify(secret).slice(1, -1), encodeURIComponent(secret)]) secrets.add(form).add(unescaped(form))
  }
  for (const value of values) {
    const parts = value.trim().split(/\s+/u)
    add(value.trim())
    for (const part of parts) add(part, SECRET_MIN_CHARS)
    const [scheme, credential] = parts
    if (parts.length !== 2 || credential === undefined || !AUTH_SCHEME.test(scheme as string)) continue
    add(credential)
    if (/^basic$/iu.test(scheme as string)) {
      const decoded = Buffer.from(credential, 'base64').toString('utf8')
      add(decoded)
      add(decoded.slice(decoded.indexOf(':') + 1))
    }
  }
  // Longest first, so that a whole value goes before the token inside it.
  return [...secrets].sort((a, b) => b.length - a.length)
}

/** `text` with every secret replaced by [redacted]. */
function redacted (text: string, secrets: readonly string[]): string {
  let out = text
  for (const secret of secrets) out = out.split(secret).join('[redacted]')
  return out
}

/**
 * A cut body, redacted already, without its last characters, one fewer than the longest secret
 * holds: a secret the cut went through ends the body with its start, which redaction of whole
 * secrets does not find.
 */
function withoutTail (text: string, secrets: readonly string[]): string {
  const longest = secrets[0]?.length ?? 0
  // And an escape's worth more: a secret's start may end in one left undone (`\u00`).
  return longest === 0 ? text : text.slice(0, Math.max(0, text.length - (longest - 1) - (ESCAPE_CHARS - 1)))
}

/** The start of a body, for an error message; `cut` marks a body that was cut already. */
function excerpt (text: string, cut = false): string {
  // A cut or an escape undone may leave half of a surrogate pair: U+FFFD, as strict JSON readers refuse one.
  const trimmed = text.trim().replace(LONE_SURROGATE, '\uFFFD')
  if (trimmed === '') return ''
  const short = truncateUtf8(trimmed, BODY_EXCERPT_BYTES)
  return `: ${short.text}${short.truncated || cut ? '…' : ''}`
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/gu

/** Retry-After as delay-seconds or an HTTP date; null when absent or unreadable. */
export function parseRetryAfter (value: string | null, now = Date.now()): number | null {
  if (value === null || value.trim() === '') return null
  const text = value.trim()
  // Past 308 digits Number() is Infinity: capped, so a huge wait is still a wait (bounded by max_backoff_ms), not none.
  if (/^\d+$/.test(text)) return Math.min(Number(text) * 1000, Number.MAX_SAFE_INTEGER)
  const at = Date.parse(text)
  return Number.isNaN(at) ? null : Math.max(0, at - now)
}

/** fetch hides the useful part (ECONNREFUSED, ENOTFOUND) in `cause`. */
function describeNetworkError (err: unknown): string {
  const cause = (err as { cause?: { code?: string, message?: string } } | null)?.cause
  if (cause?.code !== undefined) return cause.code
  if (cause?.message !== undefined) return cause.message
  return err instanceof Error ? err.message : String(err)
}

/** Reads a JSON object of header names to values from the environment variable `name`. */
export function headersFromEnv (name: string | undefined, env: NodeJS.ProcessEnv): Record<string, string> {
  if (name === undefined) return {}
  const raw = env[name]
  let parsed: unknown
  try {
    parsed = JSON.parse(raw ?? '')
  } catch {
    throw new AgentError(`environment variable ${name} must hold a JSON object of headers`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) ||
    !Object.values(parsed).every((v) => typeof v === 'string')) {
    throw new AgentError(`environment variable ${name} must hold a JSON object of string headers`)
  }
  const bad = unsendableHeader(parsed as Record<string, string>)
  if (bad !== null) throw new AgentError(`environment variable ${name}: ${bad}`)
  // Names in lower case: one given as `Content-Type` replaces ours rather than joining it ("application/json, text/plain").
  return Object.fromEntries(Object.entries(parsed as Record<string, string>).map(([header, value]) => [header.toLowerCase(), value]))
}

/**
 * Headers the HTTP client frames the request with itself: it refuses most at every call (an
 * error that retrying cannot mend), drops `host`, and a `content-length` of our own would
 * misframe the body.
 */
const FRAMING_HEADERS = new Set(['connection', 'keep-alive', 'upgrade', 'transfer-encoding', 'expect', 'content-length', 'host', 'te', 'trailer'])

/** What fetch refuses in a header value. */
export const UNSENDABLE = 'a character a header cannot carry (a line break, NUL, or one past U+00FF)'

/**
 * Why one of `headers` cannot go on a request, or null. Checked at boot: fetch would refuse it at
 * every call with the value in its message, which would put a secret in each task's error and the log.
 */
export function unsendableHeader (headers: Record<string, string>): string | null {
  for (const [name, value] of Object.entries(headers)) {
    if (FRAMING_HEADERS.has(name.toLowerCase())) return `header '${name}' is set by the HTTP client itself and cannot be given`
    try {
      // eslint-disable-next-line no-new -- the check fetch makes, and only it
      new Headers([[name, 'x']])
    } catch {
      return 'a header name is not a valid token'
    }
    try {
      // eslint-disable-next-line no-new
      new Headers([[name, value]])
    } catch {
      return `the value of header '${name}' holds ${UNSENDABLE}`
    }
  }
  return null
}
