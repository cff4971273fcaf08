/**
 * Client sockets of the standalone server: a cap on how many are open, and at shutdown the
 * closing of those still sending a request, then of those not taking their answer, so a
 * stalled client cannot hold the exit up.
 *
 * Event streams: Node's request timeout covers receiving the request only, never the answer
 * (test/events.test.ts checks a stream outliving it), so a stream needs no exemption from it.
 * Their own cap (TASK_EVENTS_MAX_CLIENTS) is checked by their route; their sockets come on top
 * of `maxConnections` and are ended by the stream code at shutdown (the sweep below leaves a
 * socket alone while its answer is being written). Other sockets never take the streams' share:
 * with the usual 1,024 file descriptors, a thousand idle sockets would otherwise leave storage none.
 */
import type { Server, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyBaseLogger } from 'fastify'
import { dropSocket } from '../services/sockets.js'

export interface ConnectionLimits {
  /**
   * Open sockets at most, streams aside. One more closes the oldest socket with no request being
   * answered (idle, or still sending one); when every socket is answering, the new one is closed.
   */
  maxConnections: number
  /** Sockets carrying an event stream at most, on top (TASK_EVENTS_MAX_CLIENTS). */
  maxStreams: number
  /** How long, after shutdown begins, a request still arriving may take before its socket is closed. */
  stalledCloseMs: number
  /**
   * How long, after shutdown begins, an answer may take to be sent before its socket is
   * destroyed: a client that stopped reading a large one (a backup) would hold the exit up.
   */
  answerCloseMs: number
  /**
   * Requests waiting their turn on one connection at most (TASK_MAX_PIPELINED): Node parses a
   * connection's requests ahead of their turn and, with no answer written yet, never stops
   * reading them, so a client pipelining behind a slow change would grow memory without end.
   * Past it the connection is dropped (its requests could only be answered in order anyway).
   */
  maxWaiting: number
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route keeps its own turn behind earlier answers on its connection (an event stream): onRequest does not hold it. */
    ownTurn?: boolean
  }
}

/** Refusals are logged at most this often, so a flood of connections cannot flood the log. */
const DROP_LOG_INTERVAL_MS = 10_000

/** A request pipelined behind answers whose connection closed before they were sent: it is not run (nobody would get its answer). */
export class ConnectionClosedError extends Error {
  readonly statusCode = 400
  readonly code = 'CONNECTION_CLOSED'
  constructor () {
    super('the connection closed before the answers to the requests sent before this one')
  }
}

/** The answer still owed on a connection (the latest request's), and whether it waits for those before it (inTurn). */
export interface OwedAnswer {
  res: ServerResponse
  waiting: boolean
  /** When its headers arrived (performance.now()), where Fastify starts timing a request. */
  since: number
}

/**
 * Requests waiting on a paused connection past TASK_MAX_PIPELINED times this close it: a client
 * that sent that many in one go without taking its answers (each waiting one holds some 3 KB).
 */
const PAST_PAUSE = 32

export interface ConnectionGuard {
  /**
   * Calls `go` once every answer before `res` on its connection is sent: requests pipelined on
   * one connection are parsed, and would run, at once, so a create then an execute of the same
   * session could run out of order. `go(error)` when the request must not run: the connection
   * closed meanwhile (or can no longer carry an answer: behind an event stream, it never will;
   * ConnectionClosedError), or `refuse` named an error for it.
   */
  inTurn: (res: ServerResponse, go: (refusal: Error | null) => void) => void
  /** The answer owed on `socket` (unfinished), or null. */
  owed: (socket: Socket) => OwedAnswer | null
  /**
   * True when the latest request on `socket` was answered before it arrived in full (a 415 on
   * its headers while its body still comes): a client error now is that request's, answered already.
   */
  answeredEarly: (socket: Socket) => boolean
  /**
   * A request waiting its turn failed to arrive (its request timeout ran out): when its turn
   * comes it is answered `error` instead of running, and the connection closes after.
   */
  refuse: (res: ServerResponse, error: Error) => void
  /** Shutdown began: closes, after `stalledCloseMs`, every socket not busy with an answer. */
  closing: () => void
  /**
   * A stream was opened on `socket`: it counts against the streams' share from now on. Told by
   * the stream code once the stream is granted (past auth and the streams' cap), never guessed
   * from the URL: a refused request keeps its socket in the others' share, and a path the router
   * decodes the same (`/%65vents`) is still a stream.
   */
  stream: (socket: Socket) => void
}

export function guardConnections (server: Server, log: FastifyBaseLogger, limits: ConnectionLimits): ConnectionGuard {
  server.maxConnections = limits.maxConnections + limits.maxStreams
  let dropped = 0
  let lastDropLog = -Infinity
  const refused = (): void => {
    dropped++
    const now = Date.now()
    if (now - lastDropLog < DROP_LOG_INTERVAL_MS) return
    lastDropLog = now
    log.warn({ dropped, max_connections: limits.maxConnections }, 'Connection refused: TASK_MAX_CONNECTIONS sockets are open')
    dropped = 0
  }
  server.on('drop', refused)
  let overflowed = 0
  let lastOverflowLog = -Infinity
  const overflow = (socket: Socket): void => {
    dropSocket(socket)
    overflowed++
    const now = Date.now()
    if (now - lastOverflowLog < DROP_LOG_INTERVAL_MS) return
    lastOverflowLog = now
    log.warn({ closed: overflowed, max_pipelined: limits.maxWaiting }, 'Connection closed: more than TASK_MAX_PIPELINED requests waited on it behind an unanswered one, many times over (it sent on without taking its answers)')
    overflowed = 0
  }

  const sockets = new Set<Socket>()
  /** Sockets that asked for an event stream: counted against the streams' share, not the others'. */
  const streams = new Set<Socket>()
  // The latest answer on each socket: one WeakMap write per request, read at shutdown.
  const answers = new WeakMap<Socket, ServerResponse>()
  /** When the latest request on each socket arrived: a client error answering it is timed from there. */
  const arrived = new WeakMap<Socket, number>()
  /** The answer still being sent on the connection when a request arrived behind it (pipelined). */
  const before = new WeakMap<ServerResponse, ServerResponse>()
  /** Requests waiting in inTurn for the answers before theirs. */
  const waiting = new WeakSet<ServerResponse>()
  /** How many wait on each socket (maxWaiting, then the socket is paused; PAST_PAUSE times as many at most). */
  const waitingOn = new WeakMap<Socket, number>()
  /** Sockets paused here because maxWaiting requests wait on them. */
  const paused = new WeakSet<Socket>()
  /** Requests answered with an error instead of running, once their turn comes (refuse). */
  const refusals = new WeakMap<ServerResponse, Error>()
  const refusal = (res: ServerResponse): Error | null => {
    const error = refusals.get(res)
    if (error !== undefined) {
      res.shouldKeepAlive = false
      return error
    }
    const socket = res.req.socket
    return socket.destroyed || !socket.writable ? new ConnectionClosedError() : null
  }
  let evicted = 0
  let lastEvictLog = -Infinity
  server.on('connection', (socket: Socket) => {
    if (sockets.size - streams.size >= limits.maxConnections) {
      // The oldest socket with no request being answered makes room: sockets that sit idle, or
      // send slowly, must not keep new clients (the probes among them) out for good.
      const oldest = oldestIdle()
      if (oldest === null) {
        socket.destroy()
        refused()
        return
      }
      sockets.delete(oldest)
      oldest.destroy()
      evicted++
      const now = Date.now()
      if (now - lastEvictLog >= DROP_LOG_INTERVAL_MS) {
        lastEvictLog = now
        log.warn({ closed: evicted, max_connections: limits.maxConnections }, 'Connection closed to make room: TASK_MAX_CONNECTIONS sockets were open; the oldest with no request being answered was closed')
        evicted = 0
      }
    }
    sockets.add(socket)
    socket.once('close', () => {
      sockets.delete(socket)
      streams.delete(socket)
    })
  })
  // Ahead of Fastify's own listener, which may run the request's hooks at once.
  server.prependListener('request', (req, res: ServerResponse) => {
    const previous = answers.get(req.socket)
    if (previous !== undefined && !previous.writableFinished) before.set(res, previous)
    answers.set(req.socket, res)
    arrived.set(req.socket, performance.now())
  })

  // A socket is busy while the request it sent in full is being answered (a running execute);
  // otherwise it is idle, or sending a request (partly or not at all) that may never arrive.
  const busy = (socket: Socket): boolean => {
    const res = answers.get(socket)
    return res !== undefined && res.req.complete && !res.writableFinished
  }
  // Idle: no answer owed on it, or only the request it is still sending (one pipelined behind an
  // answer being sent is not: closing it would lose that answer).
  const idle = (socket: Socket): boolean => {
    const res = answers.get(socket)
    if (res === undefined || res.writableFinished) return true
    const previous = before.get(res)
    return !res.req.complete && (previous === undefined || previous.writableFinished)
  }
  const oldestIdle = (): Socket | null => {
    for (const socket of sockets) if (!streams.has(socket) && !socket.destroyed && idle(socket)) return socket
    return null
  }
  const sweep = (): void => {
    let closed = 0
    for (const socket of sockets) {
      if (busy(socket)) {
        // Its answer goes out in full, then the socket ends rather than waiting for another request.
        answers.get(socket)?.once('finish', () => socket.end())
        continue
      }
      socket.destroy()
      closed++
    }
    if (closed > 0) log.info({ closed }, 'Closed connections still sending a request at shutdown')
  }
  // Past answerCloseMs, an answer still unsent is a reader that stopped (the drain and the
  // streams' last bytes had their time): its socket goes, as a slow stream reader's does.
  const cut = (): void => {
    let cutOff = 0
    for (const socket of sockets) {
      if (!busy(socket)) continue
      dropSocket(socket)
      cutOff++
    }
    if (cutOff > 0) log.warn({ closed: cutOff }, 'Closed connections whose answers were not taken at shutdown')
  }

  return {
    inTurn: (res, go) => {
      const previous = before.get(res)
      if (previous === undefined || previous.writableFinished) {
        go(null)
        return
      }
      const socket = res.req.socket
      const count = waitingOn.get(socket) ?? 0
      // Parsed from a connection dropped already (its previous answer will never end), or far too many.
      if (socket.destroyed || count >= limits.maxWaiting * PAST_PAUSE) {
        if (!socket.destroyed) overflow(socket)
        go(new ConnectionClosedError())
        return
      }
      // At TASK_MAX_PIPELINED the connection is read no further until one is answered: a client
      // that reads its answers only waits, while one that never does is stopped (what one read
      // of the socket held is still parsed; only a client sending on and on reaches PAST_PAUSE).
      // (Each time: Node resumes a socket when a waiting request's body is read, or its answers drain.)
      if (count + 1 >= limits.maxWaiting) {
        paused.add(socket)
        socket.pause()
      }
      const next = (): void => {
        previous.off('finish', next).off('close', next)
        waiting.delete(res)
        const left = (waitingOn.get(socket) ?? 1) - 1
        waitingOn.set(socket, left)
        // Not if Node paused it too, for answers the client is not taking: Node resumes it once they drain.
        if (left < limits.maxWaiting && paused.delete(socket) && !socket.destroyed && (socket as Socket & { _paused?: boolean })._paused !== true) socket.resume()
        go(refusal(res))
      }
      waiting.add(res)
      waitingOn.set(socket, count + 1)
      previous.once('finish', next).once('close', next)
    },
    owed: (socket) => {
      const res = answers.get(socket)
      if (res === undefined || res.writableFinished) return null
      return { res, waiting: waiting.has(res), since: arrived.get(socket) ?? performance.now() }
    },
    answeredEarly: (socket) => {
      const res = answers.get(socket)
      return res !== undefined && res.writableFinished && !res.req.complete
    },
    refuse: (res, error) => { refusals.set(res, error) },
    stream: (socket) => {
      if (sockets.has(socket)) streams.add(socket)
    },
    closing: () => {
      // Node stops checking request timeouts once the server closes (Node 20 and 24 alike).
      if (sockets.size === 0) return
      const timers = [setTimeout(sweep, limits.stalledCloseMs), setTimeout(cut, limits.answerCloseMs)]
      for (const timer of timers) timer.unref()
      server.once('close', () => { for (const timer of timers) clearTimeout(timer) })
    }
  }
}
