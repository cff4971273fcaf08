import { STATUS_CODES, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'

/** What a client error (no request Fastify could route) is answered with: the status, and the `code` every error answer carries. */
function answerFor (code: string | undefined): { statusCode: number, code: string, message: string } {
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return { statusCode: 408, code: 'REQUEST_TIMEOUT', message: 'the request did not arrive in full within TASK_REQUEST_TIMEOUT_MS' }
  if (code === 'HPE_HEADER_OVERFLOW') return { statusCode: 431, code: 'REQUEST_HEADER_FIELDS_TOO_LARGE', message: 'the request line and headers are larger than the server takes (a query string too long?)' }
  return { statusCode: 400, code: 'BAD_REQUEST', message: 'the request is not valid HTTP' }
}

/**
 * Node's clientError (bytes that are no valid request, a request that did not arrive in time,
 * headers too large): answered in the error shape with a code, and logged, then the socket is
 * closed. When an answer has already started on the socket (an event stream, a backup), another
 * written into its body would corrupt it: the socket is only closed, as Node itself does.
 */
export function clientErrorHandler (this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const answer = answerFor(err.code)
  this.log.info({ code: answer.code, statusCode: answer.statusCode, err: err.message }, 'Client error: the request was not answered by a route')
  // Node's own check: the response it is writing on this socket, if any (not a public field).
  const started = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage?.headersSent === true
  if (socket.writable && !started) {
    const name = STATUS_CODES[answer.statusCode] ?? 'Error'
    const body = JSON.stringify({ statusCode: answer.statusCode, code: answer.code, error: name, message: answer.message })
    socket.write(`HTTP/1.1 ${answer.statusCode} ${name}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\n\r\n${body}`)
  }
  socket.destroy()
}
