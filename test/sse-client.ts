/**
 * A minimal Server-Sent Events client over node:http for the stream tests: parses frames as
 * they arrive and lets a test wait for the ones it expects. Not a *.test.ts file.
 */
import http from 'node:http'
import type { TestContext } from './helper.js'

export interface SseEvent {
  id: string | undefined
  event: string
  data: Record<string, unknown>
}

export interface SseClient {
  status: number
  headers: http.IncomingHttpHeaders
  events: SseEvent[]
  /** Raw text received, heartbeat comments included. */
  text: () => string
  /** Resolves with the events once `predicate` holds for the list, or rejects after `ms`. */
  until: (predicate: (events: SseEvent[]) => boolean, ms?: number) => Promise<SseEvent[]>
  /** Settles when the server ends the stream. */
  ended: Promise<void>
  close: () => void
  /** The body of a refused stream (a JSON error), once read. */
  body: () => Promise<string>
}

export async function openStream (t: TestContext, url: string, headers: Record<string, string> = {}): Promise<SseClient> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: { accept: 'text/event-stream', ...headers }, agent: false })
    req.on('error', reject)
    req.on('response', (res) => {
      let text = ''
      let pending = ''
      const events: SseEvent[] = []
      const waiters = new Set<() => void>()
      res.setEncoding('utf8')
      res.on('error', () => {})
      res.on('data', (chunk: string) => {
        text += chunk
        pending += chunk
        let end: number
        while ((end = pending.indexOf('\n\n')) >= 0) {
          const frame = pending.slice(0, end)
          pending = pending.slice(end + 2)
          const fields: Record<string, string> = {}
          for (const line of frame.split('\n')) {
            if (line.startsWith(':')) continue
            const colon = line.indexOf(':')
            if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1).trimStart()
          }
          if (fields.event !== undefined) events.push({ id: fields.id, event: fields.event, data: JSON.parse(fields.data ?? '{}') })
        }
        for (const wake of waiters) wake()
      })
      const ended = new Promise<void>((resolve) => { res.once('end', resolve); res.once('close', resolve) })
      const close = (): void => { req.destroy() }
      t.teardown(close)
      const client: SseClient = {
        status: res.statusCode ?? 0,
        headers: res.headers,
        events,
        text: () => text,
        ended,
        close,
        body: async () => { await ended; return text },
        until: async (predicate, ms = 10_000) => new Promise<SseEvent[]>((resolve, reject) => {
          const check = (): void => {
            if (!predicate(events)) return
            cleanup()
            resolve(events)
          }
          const timer = setTimeout(() => { cleanup(); reject(new Error(`timed out; events so far: ${events.map((e) => e.event).join(', ')}`)) }, ms)
          const cleanup = (): void => { clearTimeout(timer); waiters.delete(check) }
          waiters.add(check)
          check()
        })
      }
      resolve(client)
    })
  })
}
