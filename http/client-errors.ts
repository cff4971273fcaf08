import { STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { noop } from '../services/noop.js'
import type { ConnectionGuard } from './connections.js'

/** What a client error (no request Fastify could route) is answered with: the status, and the `code` every error answer carries. */
function answerFor (code: string | undefined): { statusCode: number, code: string, message: string } {
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return { statusCode: 408, code: 'REQUEST_TIMEOUT', message: 'the request did not arrive in full within TASK_REQUEST_TIMEOUT_MS' }
  if (code === 'HPE_HEADER_OVERFLOW') return { statusCode: 431, code: 'REQUEST_HEADER_FIELDS_TOO_LARGE', message: 'the request line and headers are larger than the server takes (a query string too long?)' }
  if (code === CONNECT_REFUSED) return { statusCode: 405, code: 'METHOD_NOT_ALLOWED', message: 'CONNECT is not served: this is no proxy' }
  return { statusCode: 400, code: 'BAD_REQUEST', message: 'the request is not valid HTTP' }
}

/** A pipelined request that did not arrive in time, answered in its turn (ConnectionGuard.refuse). */
class ClientRequestError extends Error {
  constructor (readonly statusCode: number, readonly code: string, message: string) {
    super(message)
  }
}

/**
 * Node's clientError (bytes that are no valid request, a request that did not arrive in time,
 * headers too large): answered in the error shape with a code, and logged, then the socket is
 * closed. Answers still owed on the connection go first, in order: an error written ahead of
 * them would be taken by the client as the answer to its earlier request, which still runs.
 * - A request waiting its turn that timed out is answered 408 in that turn, without running.
 * - Bytes that are no request, behind answers being worked on, are answered once those are sent.
 * - When an answer has already started on the socket (an event stream, a backup), another
 *   written into its body would corrupt it: the socket is only closed, as Node itself does.
 * Each answer written is told to `observe` (the metrics; no hook sees these) as `unmatched`: with
 * the request's method and time since its headers arrived when Node parsed them, else
 * UNPARSED_METHOD and 0 (never words of the client's, which would make a series per sender).
 * `connections`: the server's guard, once made (null before: nothing is owed yet).
 */
export function clientErrors (connections: () => ConnectionGuard | null, observe: UnroutedObserver = () => {}) {
  /** Sockets a client error was answered (or closed) for: once each. */
  const handled = new WeakSet<Socket>()
  return function clientErrorHandler (this: FastifyInstance, err: NodeJS.ErrnoException & { since?: number }, socket: Socket): void {
    if (err.code === 'ECONNRESET' || socket.destroyed || handled.has(socket)) return
    // Answered (or closed) once, whichever way below: Node reports the bytes that keep coming
    // after the error as errors of their own until the socket is gone.
    handled.add(socket)
    const guard = connections()
    // A second answer to one request would be read by the client as the answer to its next.
    if (guard?.answeredEarly(socket) === true) {
      this.log.info({ code: err.code, err: err.message }, 'Client error on a request answered before it arrived in full; the connection is closed')
      endAndClose(socket)
      return
    }
    const answer = answerFor(err.code)
    this.log.info({ code: answer.code, statusCode: answer.statusCode, err: err.message }, 'Client error: the request was not answered by a route')
    // Node's own check: the response it is writing on this socket, if any (not a public field).
    const started = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage?.headersSent === true
    let owed = started ? null : guard?.owed(socket) ?? null
    let method = err.code === CONNECT_REFUSED ? 'CONNECT' : UNPARSED_METHOD
    let since = err.since ?? null
    // The latest request did not arrive in full: it is the one in error.
    if (owed !== null && !owed.res.req.complete) {
      if (owed.waiting) {
        // Answered through its route in its turn: the metrics' hook counts it there.
        guard?.refuse(owed.res, new ClientRequestError(answer.statusCode, answer.code, answer.message))
        return
      }
      // Node takes only the methods it knows (llhttp's list): a bounded label.
      method = owed.res.req.method ?? UNPARSED_METHOD
      since = owed.since
      owed = null
    }
    const answered = (): void => { observe(method, answer.statusCode, since === null ? 0 : (performance.now() - since) / 1000) }
    if (owed !== null) {
      // No more bytes are read; the answers owed go out, then this one.
      socket.pause()
      const close = (): void => { socket.destroy() }
      owed.res.once('finish', () => {
        owed.res.off('close', close)
        answerAndClose(socket, answer, answered)
      }).once('close', close)
      return
    }
    if (!started) answerAndClose(socket, answer, answered)
    else socket.destroy()
  }
}

/** The method label of a client error whose request line Node never parsed (bytes that are no HTTP, headers too large or too slow). */
export const UNPARSED_METHOD = 'unknown'

/** The code a CONNECT is handed to the client-error path with. */
const CONNECT_REFUSED = 'TASKVAULT_CONNECT_REFUSED'

/** Told of a request answered before any route (no hook times it): its method, status and duration. */
export type UnroutedObserver = (method: string, statusCode: number, seconds: number) => void

/** Tells `observe` of the answer `res` once it is sent, timed from now. */
export function observeWhenSent (res: ServerResponse, method: string, statusCode: number, observe: UnroutedObserver): void {
  const started = performance.now()
  res.once('finish', () => { observe(method, statusCode, (performance.now() - started) / 1000) })
}

/**
 * What Node would answer itself, before any route, with an empty body or none: an Expect it does
 * not know (417), and CONNECT (the socket closed unanswered; nothing here tunnels). Answered in the
 * error shape with a code, as every other refusal, and each answer told to `observe` (the
 * metrics; no hook sees these). (A request without Host: see badHost.)
 */
export function answerUnrouted (server: Server, observe: UnroutedObserver): void {
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    observeWhenSent(res, req.method ?? '', 417, observe)
    // The connection stays open, as with Node's own 417: a request pipelined behind this one
    // (already read, and run) is answered on it in its turn.
    const body = errorBody(417, 'EXPECTATION_FAILED', `Expect '${String(req.headers.expect).slice(0, 40)}' is not supported (only 100-continue is)`)
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  // As a client error: answered after the answers still owed on the connection, never inside a
  // stream's body, then the socket is closed (clientErrors).
  server.on('connect', (_req: IncomingMessage, socket: Socket) => {
    // Node takes its own error listener off a socket it hands over: a reset from the client
    // would otherwise be an 'error' nobody handles, which ends the process.
    socket.on('error', noop)
    server.emit('clientError', Object.assign(new Error('CONNECT'), { code: CONNECT_REFUSED, since: performance.now() }), socket)
  })
}

/**
 * An HTTP/1.1 request without Host, or any with more than one, which RFC 9112 asks a server to
 * refuse with 400: Node's own check answers the first with no body (so the server lets such
 * requests through to this one, an onRequest hook's, which answers in the error shape), and keeps
 * only the first of several, where a proxy in front may have read another. Null when the request is fine.
 */
export function badHost (req: IncomingMessage): Error | null {
  if (req.headers.host === undefined) {
    if (req.httpVersion !== '1.1') return null
    return Object.assign(new Error('an HTTP/1.1 request must carry a Host header'), { statusCode: 400, code: 'MISSING_HOST' })
  }
  let hosts = 0
  const raw = req.rawHeaders
  for (let i = 0; i < raw.length; i += 2) if ((raw[i] as string).length === 4 && (raw[i] as string).toLowerCase() === 'host') hosts++
  if (hosts < 2) return null
  return Object.assign(new Error(`a request must carry one Host header, not ${hosts}`), { statusCode: 400, code: 'DUPLICATE_HOST' })
}

function errorBody (statusCode: number, code: string, message: string): string {
  return JSON.stringify({ statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message })
}

/** Writes `answer` and closes the socket; `answered` is called once it is written (not when the socket could take none). */
function answerAndClose (socket: Socket, answer: { statusCode: number, code: string, message: string }, answered: () => void): void {
  if (socket.writable) answered()
  const name = STATUS_CODES[answer.statusCode] ?? 'Error'
  const body = errorBody(answer.statusCode, answer.code, answer.message)
  endAndClose(socket, `HTTP/1.1 ${answer.statusCode} ${name}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\n\r\n${body}`)
}

/**
 * Ends the socket after `last`, if given. Ended, not destroyed at once: a close with unread bytes
 * resets the connection, and a reset can drop an answer at the client before it is read.
 * Destroyed if the client lingers.
 */
function endAndClose (socket: Socket, last?: string): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  if (last === undefined) socket.end()
  else socket.end(last)
  const timer = setTimeout(() => { socket.destroy() }, LINGER_MS)
  timer.unref()
  socket.once('close', () => { clearTimeout(timer) })
}

/** How long a refused client has to read its answer and close before its socket is destroyed. */
const LINGER_MS = 1000
