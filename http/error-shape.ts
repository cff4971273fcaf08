import { STATUS_CODES } from 'node:http'
import type { FastifyReply, FastifyRequest } from 'fastify'

interface ErrorShape {
  statusCode: number
  code?: string
  error: string
  message: string
}

/**
 * preSerialization hook of taskvault's routes: an error answer that is not in Fastify's error
 * shape (a host's auth hook answering 401 with `{ "error": ... }`) is put in it, keeping its
 * message and code. The routes document that shape for every 4xx and 5xx, and their serializer
 * requires it: another body would fail serialization and reach the client as a 500.
 */
export function errorShape (_request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (err: null, payload: unknown) => void): void {
  const status = reply.statusCode
  if (status < 400 || isErrorShape(payload)) return done(null, payload)
  const body = typeof payload === 'object' && payload !== null ? payload as Record<string, unknown> : {}
  const error = STATUS_CODES[status] ?? 'Error'
  const message = typeof body.message === 'string' ? body.message : typeof body.error === 'string' ? body.error : error
  done(null, { statusCode: status, ...(typeof body.code === 'string' && { code: body.code }), error, message } satisfies ErrorShape)
}

function isErrorShape (payload: unknown): payload is ErrorShape {
  if (typeof payload !== 'object' || payload === null) return false
  const { statusCode, error, message, code } = payload as Record<string, unknown>
  return Number.isInteger(statusCode) && typeof error === 'string' && typeof message === 'string' && (code === undefined || typeof code === 'string')
}
