import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { StorageError, TaskvaultError, type ErrorCode } from '../services/errors.js'

/**
 * The one place where domain errors become HTTP statuses; every code must be here. 500: the
 * error stops a boot or a CLI command, or is a bug, and never answers a client's request.
 */
const STATUS_BY_CODE: Readonly<Record<ErrorCode, number>> = {
  SESSION_NOT_FOUND: 404,
  NO_PENDING_TASK: 409,
  SESSION_BUSY: 409,
  NOT_RUNNING: 409,
  TASK_NOT_FOUND: 404,
  TASK_NOT_FAILED: 409,
  TOO_MANY_STREAMS: 503,
  INVALID_INSTRUCTIONS: 400,
  INVALID_SESSION_ID: 400,
  LIMIT_EXCEEDED: 400,
  SESSION_LIMIT: 507,
  SHUTTING_DOWN: 503,
  NOT_READY: 503,
  STORAGE_UNAVAILABLE: 503,
  LOCK_LOST: 503,
  STORAGE_FULL: 507,
  ENCRYPTION_KEY_UNAVAILABLE: 503,
  CANCELLED: 500,
  STORAGE_LOCKED: 500,
  INVALID_SESSION_STATE: 500,
  CORRUPT_SESSION_FILE: 500,
  FOREIGN_STORAGE_FOLDER: 500,
  INVALID_ARCHIVE: 500,
  AGENT_FAILED: 500,
  INVALID_OPTIONS: 500,
  INVALID_AGENT_CONFIG: 500,
  INVALID_ENCRYPTION_KEYS: 500,
  INVALID_LOCK_SETTINGS: 500,
  USAGE: 500,
  FAILED: 500,
  INVALID_DATABASE_SETTING: 500,
  DATABASE_TOO_NEW: 500,
  MIGRATION_FAILED: 500,
  DATABASE_UNAVAILABLE: 503,
  VERSION_CONFLICT: 409,
  LEASE_LOST: 503
}

export function statusFor (error: FastifyError | TaskvaultError): number {
  if (error instanceof TaskvaultError) return STATUS_BY_CODE[error.code]
  const status = error.statusCode
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500
}

export async function errorHandler (error: FastifyError | TaskvaultError, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const statusCode = statusFor(error)
  // Domain errors explain themselves; an unexpected 5xx must not leak internals.
  const known = error instanceof TaskvaultError || statusCode < 500
  // Storage faults and unexpected errors are the operator's business; the rest are expected answers.
  if (error instanceof StorageError || !known) request.log.error({ err: error }, known ? error.message : 'unexpected error')
  else request.log.info({ code: error.code, statusCode }, error.message)
  await reply.code(statusCode).send({
    statusCode,
    code: error.code,
    error: STATUS_CODES[statusCode] ?? 'Error',
    message: !known ? 'Internal Server Error' : error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? unsupportedMediaType(request) : error.message
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
