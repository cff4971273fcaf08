import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { dropSocket } from '../services/sockets.js'

/**
 * Calls `cut` once `stream`, piped into `res`, has waited on the client (paused by backpressure)
 * with nothing more taken by its socket for `stallMs`. A stream slow to make (not paused) is not
 * stalled, nor is an answer that takes all it is given (app.inject's). Returns the watch's stop.
 */
export function watchStall (res: ServerResponse, stream: Readable, stallMs: number, cut: () => void): () => void {
  let written = -1
  let since = performance.now()
  const timer = setInterval(() => {
    const now = performance.now()
    const bytes = res.socket?.bytesWritten ?? 0
    if (bytes !== written || !stream.isPaused()) {
      written = bytes
      since = now
    } else if (now - since >= stallMs) cut()
  }, Math.max(50, Math.min(1000, stallMs / 4)))
  timer.unref()
  return () => { clearInterval(timer) }
}

/** Cuts an answer's connection with a reset (dropSocket); one with no connection yet (pipelined) is destroyed. */
export function cutAnswer (res: ServerResponse): void {
  if (res.socket === null) res.destroy()
  else dropSocket(res.socket)
}

/**
 * The streamed answers of `app` still being sent, to which routes add theirs: once the app closes
 * and `afterMs` has gone by, those left are cut, so an embedding host's close() ends whatever its
 * clients do (buildApp's server cuts every answer so itself). None is cut when `afterMs` is unset.
 */
export function answersCutAtClose (app: FastifyInstance, afterMs: number | undefined): Set<ServerResponse> {
  const sending = new Set<ServerResponse>()
  if (afterMs === undefined) return sending
  let cut: NodeJS.Timeout | undefined
  app.addHook('preClose', (done) => {
    cut = setTimeout(() => { for (const res of sending) cutAnswer(res) }, afterMs)
    done()
  })
  app.addHook('onClose', (_instance, done) => {
    clearTimeout(cut)
    done()
  })
  return sending
}

/**
 * Watches a streamed answer until it ends, or its request or connection goes: a client that
 * takes nothing of it for `stallMs` has its connection cut (`onCut` first, to log it), so it
 * holds neither the stream nor what the stream reads from. Then `stream` is destroyed and
 * `onDone` called, once. False when the client had left already: the stream is released at once,
 * and there is nobody to send it to.
 */
export function guardStream (req: IncomingMessage, res: ServerResponse, stream: Readable, stallMs: number, on: { onCut: () => void, onDone?: () => void }): boolean {
  let done = false
  const release = (): void => {
    if (done) return
    done = true
    unwatch()
    stream.destroy()
    on.onDone?.()
  }
  const unwatch = watchStall(res, stream, stallMs, () => {
    on.onCut()
    release()
    cutAnswer(res)
  })
  // 'finish' too: an answer pipelined behind this one runs once it is sent, before 'close'.
  // The request's 'close': one queued behind another on its connection has no socket yet.
  res.once('finish', release).once('close', release)
  req.once('close', release)
  // The stream destroyed before its end (by Fastify, when its answer cannot be sent); an answer
  // whose client left already, while it was being made, is released at once: its connection
  // tells (Node marks a request destroyed once its body is read). One that ended is released
  // with its answer: its last bytes may still wait on the client.
  stream.once('close', () => { if (!stream.readableEnded) release() })
  if (!res.destroyed && req.socket?.destroyed !== true) return true
  release()
  return false
}
