import { createHash, timingSafeEqual } from 'node:crypto'
import { isIP } from 'node:net'
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyInstance {
    /** onRequest hook: 401 unless the request carries `Authorization: Bearer <key>` with a configured key. */
    verifyApiKey: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  }
}

const digest = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest()

/**
 * API keys from TASK_API_KEYS (comma-separated). With none set the API is open, and a loud
 * warning is logged when listening beyond loopback. Keys are compared as SHA-256 digests with
 * timingSafeEqual against every key, so timing reveals neither a key nor which one matched.
 */
export default fp(async function authPlugin (app) {
  const keys = app.config.TASK_API_KEYS.split(',').map((key) => key.trim()).filter((key) => key !== '').map(digest)
  if (keys.length === 0 && !isLoopback(app.config.HOST)) {
    app.log.warn({ host: app.config.HOST }, 'TASK_API_KEYS is empty and HOST is not loopback: anyone who can reach this port can read and change every session')
  }

  app.decorate('verifyApiKey', async function verifyApiKey (request: FastifyRequest, reply: FastifyReply) {
    if (keys.length === 0) return
    const header = request.headers.authorization
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/iu.exec(header) : null
    const offered = digest(match?.[1] ?? '')
    let valid = false
    for (const key of keys) valid = timingSafeEqual(key, offered) || valid
    if (valid && match !== null) return
    await reply.code(401).header('www-authenticate', 'Bearer').send({
      statusCode: 401,
      code: 'UNAUTHORIZED',
      error: 'Unauthorized',
      message: header === undefined ? 'missing Authorization: Bearer <key> header' : 'invalid API key'
    })
  })
}, { name: 'taskvault-auth', fastify: '5.x', dependencies: ['taskvault-config'] })

function isLoopback (host: string): boolean {
  if (host === 'localhost') return true
  if (isIP(host) === 4) return host.startsWith('127.')
  return host === '::1'
}
