/**
 * The event stream, read with fetch and a stream reader (EventSource cannot send headers, and
 * the key never goes in a URL).
 */
import { ApiError, request, streamRefused } from './api.js'

export interface StreamHandlers {
  /** Refetches everything the page shows; rejects when it could not. */
  reload: () => Promise<void>
  event: (name: string, data: Record<string, unknown>) => void
  /** `why`: the server's message when it refused the stream (503 at TASK_EVENTS_MAX_CLIENTS). */
  live: (live: boolean, why?: string) => void
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Retries (a connection, a refetch, the first call) back off from this... */
export const RETRY_FIRST_MS = 500
/** ...to this, doubling each time. */
export const RETRY_MAX_MS = 10_000

/** The stream's first comment names the server's heartbeat period (TASK_EVENTS_HEARTBEAT_MS). */
const HEARTBEAT = /^: connected, heartbeat every (\d+) ms/u
/** Heartbeat periods without a byte after which the connection counts as dead. */
const SILENT_BEATS = 3
/** Until the server has named its period: three of the default heartbeats (a connection or answer that never comes). */
const FIRST_SILENT_MS = 45_000

/** Reads the stream for as long as the page lives, reconnecting with the last id it saw. */
export async function follow (on: StreamHandlers): Promise<void> {
  let lastId: string | null = null
  let delay = RETRY_FIRST_MS
  for (;;) {
    let why: string | undefined
    // One connection at a time: whatever ends this one (a failed snapshot, a bad frame) closes it,
    // or each retry would hold another of the browser's six connections to the server, and a slot
    // of the server's TASK_EVENTS_MAX_CLIENTS, until the page froze.
    const connection = new AbortController()
    // A connection that goes silent (a dropped NAT entry, a frozen proxy) never ends by itself:
    // once the server has named its heartbeat, silence for a few of them closes it, and the page
    // reconnects with its last id rather than showing "live" while nothing arrives.
    let silentMs = FIRST_SILENT_MS
    let watchdog: ReturnType<typeof setTimeout> | undefined
    const heard = (): void => {
      clearTimeout(watchdog)
      watchdog = setTimeout(() => { connection.abort() }, silentMs)
    }
    heard()
    try {
      const res = await fetch(request('/events', { headers: lastId === null ? {} : { 'last-event-id': lastId }, signal: connection.signal }))
      if (res.status === 401) throw streamRefused()
      if (!res.ok) {
        const data = await res.json().catch(() => null) as { message?: unknown } | null
        throw new ApiError(res.status, `${res.status}: ${typeof data?.message === 'string' ? data.message : res.statusText}`)
      }
      if (res.body === null) throw new Error('stream: no body')
      on.live(true)
      // The first connection (and any that did not resume) starts from a fresh snapshot.
      if (lastId === null) await on.reload()
      // Backing off ends once the page is whole again, not when the stream merely answers.
      delay = RETRY_FIRST_MS
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
      let buffer = ''
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        heard()
        buffer += value
        let end: number
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          let name = ''
          let data = ''
          for (const line of frame.split('\n')) {
            const beat = HEARTBEAT.exec(line)
            if (beat !== null) {
              silentMs = SILENT_BEATS * Number(beat[1])
              heard()
            } else if (line.startsWith('id:')) lastId = line.slice(3).trim()
            else if (line.startsWith('event:')) name = line.slice(6).trim()
            else if (line.startsWith('data:')) data += line.slice(5).trim()
          }
          if (name === 'reset') {
            // Refetch, then carry on from the reset's id. A refetch that fails (a moment's 503)
            // would leave the page stale while the stream went on: this connection ends instead,
            // and the next one, after the backoff below, starts afresh with a snapshot.
            const resetId: string | null = lastId
            lastId = null
            await on.reload()
            lastId = resetId
          } else if (name !== '') on.event(name, data === '' ? {} : JSON.parse(data) as Record<string, unknown>)
        }
      }
    } catch (err) {
      // Without a usable key there is nothing to follow: start() begins again once one is entered.
      if (err instanceof ApiError && err.status === 401) return
      if (err instanceof ApiError) why = err.message
    } finally {
      clearTimeout(watchdog)
      connection.abort()
    }
    on.live(false, why)
    await sleep(delay)
    delay = Math.min(delay * 2, RETRY_MAX_MS)
  }
}
