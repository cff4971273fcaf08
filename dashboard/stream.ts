/**
 * The event stream, read with fetch and a stream reader (EventSource cannot send headers, and
 * the key never goes in a URL).
 */
import { ApiError, request, streamRefused } from './api.js'

export interface StreamHandlers {
  /** Refetches everything the page shows; rejects when it could not. */
  reload: () => Promise<void>
  /** `id`: the event's own, to resume from (null when the server sent none). */
  event: (name: string, data: Record<string, unknown>, id: string | null) => void
  /** The stream is at this id with no event to show for it (a reset, once its refetch is done). */
  seen?: (id: string) => void
  /** `why`: the server's message when it refused the stream (503 at TASK_EVENTS_MAX_CLIENTS). */
  live: (live: boolean, why?: string) => void
}

export interface FollowOptions {
  /** Where to resume from: the last event another tab's stream passed on to this one. */
  lastId?: string | null
  /** Close the stream while the page is hidden (see HIDDEN_GRACE_MS), resuming from the last id once it is shown. */
  pauseWhenHidden?: boolean
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Retries (a connection, a refetch, the first call) back off from this... */
export const RETRY_FIRST_MS = 500
/** ...to this, doubling each time. */
export const RETRY_MAX_MS = 10_000

/**
 * A tab with a stream of its own closes it once hidden this long (and reconnects, from its last
 * id, when shown again): a browser gives each server six HTTP/1.1 connections, and a stream holds
 * one for as long as it is open. Long enough that switching tabs back and forth costs nothing.
 */
export const HIDDEN_GRACE_MS = 5_000

/** Once the page is shown (at once when it is). */
function shown (): Promise<void> {
  return new Promise((resolve) => {
    const check = (): void => {
      if (document.hidden) return
      document.removeEventListener('visibilitychange', check)
      resolve()
    }
    document.addEventListener('visibilitychange', check)
    check()
  })
}

/** The stream's first comment names the server's heartbeat period (TASK_EVENTS_HEARTBEAT_MS). */
const HEARTBEAT = /^: connected, heartbeat every (\d+) ms/u
/** Heartbeat periods without a byte after which the connection counts as dead. */
const SILENT_BEATS = 3
/** Until the server has named its period: three of the default heartbeats (an answer that stops coming). */
const FIRST_SILENT_MS = 45_000
/**
 * After a connection went silent, the network may have dropped every connection the browser kept
 * to the server (up to six), and the browser sends the next attempts over them. The server
 * answers a stream at once (headers, then the comment naming the heartbeat), so an attempt
 * unanswered this long is given up and the next one sent soon after: each dead connection costs
 * this once. Past POOLED_CONNECTIONS such attempts the wait doubles (up to three heartbeats), so
 * a server merely slow to answer is reached all the same.
 */
export const ANSWER_WAIT_MS = 5_000
export const POOLED_CONNECTIONS = 6

/** A retry's wait, spread by a quarter either way: pages cut off together do not come back in step. */
const jittered = (ms: number): number => ms * (0.75 + Math.random() / 2)

/**
 * Reads the stream for as long as the page lives, reconnecting with the last id it saw; returns
 * only when the server refuses the key (401).
 */
export async function follow (on: StreamHandlers, options: FollowOptions = {}): Promise<void> {
  let lastId: string | null = options.lastId ?? null
  let delay = RETRY_FIRST_MS
  // The period the server last named, kept across attempts: an attempt over a connection that
  // answers nothing (every route dropped, the browser reusing a dead pooled connection) is given
  // up after a few of them, not after FIRST_SILENT_MS each time.
  let silentMs = FIRST_SILENT_MS
  // Since a connection went silent, the attempts in a row that got no answer (see ANSWER_WAIT_MS).
  let suspect = false
  let unanswered = 0
  for (;;) {
    if (options.pauseWhenHidden === true && document.hidden) {
      on.live(false)
      await shown()
    }
    let why: string | undefined
    let hidden = false
    // Whether the server answered this attempt; whether the watchdog ended it.
    let answer = false
    let silent = false
    // One connection at a time: whatever ends this one (a failed snapshot, a bad frame) closes it,
    // or each retry would hold another of the browser's six connections to the server, and a slot
    // of the server's TASK_EVENTS_MAX_CLIENTS, until the page froze.
    const connection = new AbortController()
    // A connection that goes silent (a dropped NAT entry, a frozen proxy) never ends by itself:
    // once the server has named its heartbeat, silence for a few of them closes it, and the page
    // reconnects with its last id rather than showing "live" while nothing arrives.
    let watchdog: ReturnType<typeof setTimeout> | undefined
    const answerWait = suspect ? Math.min(silentMs, ANSWER_WAIT_MS * 2 ** Math.max(0, unanswered - POOLED_CONNECTIONS + 1)) : silentMs
    const heard = (): void => {
      clearTimeout(watchdog)
      watchdog = setTimeout(() => { silent = true; connection.abort() }, answer ? silentMs : answerWait)
    }
    heard()
    // A snapshot being fetched is no silence of the stream: the watchdog waits for it.
    const reload = async (): Promise<void> => {
      clearTimeout(watchdog)
      try {
        await on.reload()
      } finally {
        heard()
      }
    }
    // Hidden for HIDDEN_GRACE_MS: the connection goes back to the browser for the tabs in view.
    let hiding: ReturnType<typeof setTimeout> | undefined
    const visibility = (): void => {
      clearTimeout(hiding)
      if (document.hidden) hiding = setTimeout(() => { hidden = true; connection.abort() }, HIDDEN_GRACE_MS)
    }
    if (options.pauseWhenHidden === true) {
      document.addEventListener('visibilitychange', visibility)
      visibility()
    }
    try {
      const res = await fetch(request('/events', { headers: lastId === null ? {} : { 'last-event-id': lastId }, signal: connection.signal }))
      answer = true
      suspect = false
      unanswered = 0
      heard()
      if (res.status === 401) throw streamRefused()
      if (!res.ok) {
        const data = await res.json().catch(() => null) as { message?: unknown } | null
        throw new ApiError(res.status, `${res.status}: ${typeof data?.message === 'string' ? data.message : res.statusText}`)
      }
      if (res.body === null) throw new Error('stream: no body')
      on.live(true)
      // The first connection (and any that did not resume) starts from a fresh snapshot.
      if (lastId === null) await reload()
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
            await reload()
            lastId = resetId
            if (resetId !== null) on.seen?.(resetId)
          } else if (name !== '') on.event(name, data === '' ? {} : JSON.parse(data) as Record<string, unknown>, lastId)
        }
      }
    } catch (err) {
      // Without a usable key there is nothing to follow: start() begins again once one is entered.
      if (err instanceof ApiError && err.status === 401) return
      if (err instanceof ApiError) why = err.message
    } finally {
      clearTimeout(watchdog)
      clearTimeout(hiding)
      document.removeEventListener('visibilitychange', visibility)
      connection.abort()
    }
    on.live(false, why)
    // Closed because hidden: back as soon as shown (the loop's top waits), with no backoff.
    if (hidden) {
      delay = RETRY_FIRST_MS
      continue
    }
    if (silent) suspect = true
    if (silent && !answer && ++unanswered <= POOLED_CONNECTIONS) {
      await sleep(jittered(RETRY_FIRST_MS))
      continue
    }
    await sleep(jittered(delay))
    delay = Math.min(delay * 2, RETRY_MAX_MS)
  }
}
