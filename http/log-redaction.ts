/**
 * Secrets a client puts in a query string (`?key=`, `?token=`, `?access_token=`, `?password=`...)
 * are never read by the server, which takes keys from the Authorization header only, but a URL is
 * logged whole: their values are replaced before a URL reaches the log. Names are matched
 * case-insensitively, after percent-decoding.
 */
import type { FastifyRequest } from 'fastify'

// access_token: RFC 6750's query name for a bearer token, what EventSource clients (no headers) send.
const SECRET_NAMES = new Set(['key', 'token', 'access_token', 'api_key', 'apikey', 'api-key', 'password', 'secret'])
export const REDACTED = '[REDACTED]'

function isSecretName (name: string): boolean {
  let decoded = name
  if (name.includes('%') || name.includes('+')) {
    try {
      decoded = decodeURIComponent(name.replaceAll('+', ' '))
    } catch {
      // Not valid percent-encoding: compared as sent.
    }
  }
  return SECRET_NAMES.has(decoded.toLowerCase())
}

/** The URL with the values of secret-named query parameters replaced; the same string when it has no query. */
export function redactUrl (url: string): string {
  const q = url.indexOf('?')
  if (q === -1) return url
  const hash = url.indexOf('#', q)
  const end = hash === -1 ? url.length : hash
  let changed = false
  const pairs = url.slice(q + 1, end).split('&').map((pair) => {
    const eq = pair.indexOf('=')
    if (eq === -1 || !isSecretName(pair.slice(0, eq))) return pair
    changed = true
    return `${pair.slice(0, eq + 1)}${REDACTED}`
  })
  return changed ? `${url.slice(0, q + 1)}${pairs.join('&')}${url.slice(end)}` : url
}

/** Fastify's request serializer, with the URL redacted. */
export function serializeRequest (req: FastifyRequest): Record<string, unknown> {
  return {
    method: req.method,
    url: redactUrl(req.url),
    version: req.headers?.['accept-version'],
    host: req.host,
    remoteAddress: req.ip,
    remotePort: req.socket?.remotePort
  }
}
