import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { StorageError, TaskvaultError } from '../services/errors.js'
import { redactUrl } from './log-redaction.js'

/** Each domain error's status is its own (services/errors.ts); anything else's, if it is an error status. */
export function statusFor (error: FastifyError | TaskvaultError): number {
  if (error instanceof TaskvaultError) return error.statusCode
  const status = error.statusCode
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500
}

export async function errorHandler (error: FastifyError | TaskvaultError, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const statusCode = statusFor(error)
  const expected = known(error, statusCode)
  // Storage faults and unexpected errors are the operator's business; the rest are expected answers.
  if (error instanceof StorageError || !expected) request.log.error({ err: error }, expected ? error.message : 'unexpected error')
  else request.log.info({ code: error.code, statusCode }, error.message)
  await sendError(error, request, reply)
}

/** Domain errors explain themselves; an unexpected 5xx must not leak internals. */
function known (error: FastifyError | TaskvaultError, statusCode: number): boolean {
  return error instanceof TaskvaultError || statusCode < 500
}

/** Answers with the error in Fastify's shape, logging nothing (for a caller that reports it its own way). */
export async function sendError (error: FastifyError | TaskvaultError, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const statusCode = statusFor(error)
  const name = STATUS_CODES[statusCode] ?? 'Error'
  await reply.code(statusCode).send({
    statusCode,
    // Every answer has a code, as clients branch on it: one a plugin's error lacks (@fastify/static's 403) is its status's name.
    code: (error.code as string | undefined) ?? name.toUpperCase().replace(/[^A-Z0-9]+/gu, '_'),
    error: name,
    message: !known(error, statusCode) ? 'Internal Server Error' : error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? unsupportedMediaType(request) : error.message
  })
}

/**
 * Bodies must be JSON: form posts stay refused, or any web page could drive a local taskvault
 * (CSRF). Curl without -H sends a form type, so the answer says what to send instead.
 */
function unsupportedMediaType (request: FastifyRequest): string {
  const sent = request.headers['content-type']
  const what = sent === undefined ? 'no Content-Type header' : `'${sent.slice(0, 100)}'`
  return `Unsupported Media Type (${what}): send the body as JSON with the header Content-Type: application/json (curl: -H 'content-type: application/json')`
}

/**
 * An unknown route answers in the error shape, with a code like every other error. It replaces
 * Fastify's 404 and so its log line too, which says the same with secrets in the query redacted.
 */
export async function notFoundHandler (request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const message = `Route ${request.method}:${redactUrl(request.url)} not found`
  request.log.info(message)
  await reply.code(404).send({ statusCode: 404, code: 'NOT_FOUND', error: 'Not Found', message })
}
