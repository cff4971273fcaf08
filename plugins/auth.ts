import { createHash, timingSafeEqual } from 'node:crypto'
import { isIP } from 'node:net'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { appSettings, checkOptions } from './options.js'

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
  const configured = options.apiKeys ?? appSettings(app).TASK_API_KEYS.split(',')
  const keys = configured.map((key) => key.trim()).filter((key) => key !== '').map(digest)
  // Only the standalone server knows where it listens; an embedding host decides that itself.
  if (keys.length === 0 && app.hasPlugin('taskvault-config') && !isLoopback(app.config.HOST)) {
    app.log.warn({ host: app.config.HOST }, 'TASK_API_KEYS is empty and HOST is not loopback: anyone who can reach this port can read and change every session')
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

function isLoopback (host: string): boolean {
  if (host === 'localhost') return true
  if (isIP(host) === 4) return host.startsWith('127.')
  return host === '::1'
}
