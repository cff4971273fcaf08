import { createHash, timingSafeEqual } from 'node:crypto'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { InvalidApiKeysError } from '../services/errors.js'
import { isLoopback } from '../http/allowed-hosts.js'
import { appSettings, checkOptions, withOptionErrors } from './options.js'

/**
 * onRequest hook: 401 unless the request carries `Authorization: Bearer <key>` with a configured
 * key. Callback style: it runs on every request, so no promise is made. Named out here: inside
 * the augmentation below, FastifyRequest would be fastify's own name, and the emitted types
 * would lose their import of it (a host's tsc without skipLibCheck then fails).
 */
export type VerifyApiKey = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void

declare module 'fastify' {
  interface FastifyInstance {
    verifyApiKey: VerifyApiKey
  }
}

export const AuthOptionsSchema = Type.Object({
  /** Accepted bearer keys; default: TASK_API_KEYS (comma-separated). None leaves the routes open. */
  apiKeys: Type.Optional(Type.Array(Type.String({ minLength: 1 })))
}, { additionalProperties: false })

export type AuthPluginOptions = Static<typeof AuthOptionsSchema>

const digest = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest()

/**
 * API keys from the `apiKeys` option or TASK_API_KEYS (comma-separated). With none the API is
 * open, and the standalone server logs a loud warning when listening beyond loopback. Keys are
 * compared as SHA-256 digests with timingSafeEqual against every key, so timing reveals
 * neither a key nor which one matched.
 */
export default fp<AuthPluginOptions>(async function authPlugin (app, options) {
  checkOptions('taskvault-auth', AuthOptionsSchema, options)
  const setting = appSettings(app).TASK_API_KEYS
  // Blank, or no entry given: the API is open, as documented.
  const configured = options.apiKeys ?? (setting.trim() === '' ? [] : setting.split(','))
  const keys = (await withOptionErrors(app, 'taskvault-auth', { apiKeys: 'TASK_API_KEYS' }, async () => usableKeys(configured))).map(digest)
  // Only the standalone server knows where it listens; an embedding host decides that itself.
  if (keys.length === 0 && app.hasPlugin('taskvault-config') && !isLoopback(app.taskvaultConfig.HOST)) {
    app.log.warn({ host: app.taskvaultConfig.HOST }, 'TASK_API_KEYS is empty and HOST is not loopback: anyone who can reach this port can read and change every session')
  }

  app.decorate('verifyApiKey', function verifyApiKey (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) {
    if (keys.length === 0) return done()
    const header = request.headers.authorization
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/iu.exec(header) : null
    const offered = digest(match?.[1] ?? '')
    let valid = false
    for (const key of keys) valid = timingSafeEqual(key, offered) || valid
    if (valid && match !== null) return done()
    // Answered here; not calling done() ends the request.
    reply.code(401).header('www-authenticate', 'Bearer').send({
      statusCode: 401,
      code: 'UNAUTHORIZED',
      error: 'Unauthorized',
      message: header === undefined ? 'missing Authorization: Bearer <key> header' : 'invalid API key'
    })
  })
}, { name: 'taskvault-auth', fastify: '5.x' })

/** A key a client can send: a header value of printable ASCII, without spaces (the Bearer syntax ends a key there). */
const SENDABLE = /^[\x21-\x7e]+$/u

/**
 * The keys of a list, trimmed. A list that is not blank but names no key, or a key no
 * Authorization header can carry, stops the boot: either would leave the API other than the
 * operator meant (open, or closed to that key).
 */
function usableKeys (configured: readonly string[]): string[] {
  const keys = configured.map((key) => key.trim()).filter((key) => key !== '')
  if (keys.length === 0 && configured.length > 0) throw new InvalidApiKeysError('names no key, only commas and spaces: set one or more keys, or leave it empty to keep the API open')
  const unsendable = keys.findIndex((key) => !SENDABLE.test(key))
  if (unsendable !== -1) throw new InvalidApiKeysError(`key ${unsendable + 1} holds a space, a control character or a character outside ASCII, which an Authorization header cannot carry`)
  return keys
}
