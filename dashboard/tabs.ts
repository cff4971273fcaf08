/**
 * The live view of all of this browser's dashboard tabs. A browser opens at most six HTTP/1.1
 * connections to a server, and an event stream holds one for as long as it is open: with a
 * stream per tab, a sixth tab has none left to load with, and every action in every tab waits.
 * So one tab, the holder of a Web Lock, reads the stream and passes each event on to the others
 * over a BroadcastChannel; when it closes, the lock goes to another tab, which resumes from the
 * last id passed on. Without Web Locks (plain HTTP to a host other than localhost is not a secure
 * context) each tab reads a stream of its own, closed while the tab is hidden (stream.ts).
 */
import { ApiError } from './api.js'
import { follow, RETRY_FIRST_MS, RETRY_MAX_MS, sleep, type StreamHandlers } from './stream.js'

/** The lock and the channel: per origin, so per server. */
const SHARED = 'taskvault.events'

type Message =
  | { type: 'event', name: string, data: Record<string, unknown>, id: string | null }
  | { type: 'seen', id: string }
  | { type: 'reload' }
  | { type: 'live', live: boolean, why?: string }
  | { type: 'hello' }

export interface TabHandlers extends StreamHandlers {
  /** A refetch failed; it is tried again, backing off. */
  failed: (err: unknown) => void
}

let on: TabHandlers
/** The last event this tab has: where it resumes from if it comes to read the stream. */
let lastId: string | null = null
/** This tab reads the stream (for the others too, when shared). */
let leading = false
let channel: BroadcastChannel | null = null
let status: { live: boolean, why?: string } = { live: false }

// ---- the snapshot: one load at a time, events that come meanwhile applied after it ----

let loading: Promise<void> | null = null
let held: Array<[string, Record<string, unknown>]> = []

function apply (name: string, data: Record<string, unknown>): void {
  if (loading === null) on.event(name, data, null)
  else held.push([name, data])
}

async function load (): Promise<void> {
  while (loading !== null) await loading.catch(() => {})
  loading = on.reload()
  try {
    await loading
  } finally {
    loading = null
    const events = held
    held = []
    for (const [name, data] of events) on.event(name, data, null)
  }
}

let refreshing: Promise<void> | null = null
let again = false

/**
 * Refetches the snapshot until it succeeds, backing off as the stream does, and once more if
 * asked again meanwhile (a tab that missed a refetch would stay stale for good); a 401 stops it,
 * the page asking for a key. Resolves once the first try has answered.
 */
function refresh (): Promise<void> {
  again = true
  if (refreshing !== null) return refreshing
  let tried!: () => void
  refreshing = new Promise((resolve) => { tried = resolve })
  void (async () => {
    let delay = RETRY_FIRST_MS
    try {
      while (again) {
        again = false
        try {
          await load()
          delay = RETRY_FIRST_MS
        } catch (err) {
          if (err instanceof ApiError && err.status === 401) return
          on.failed(err)
          again = true
          tried()
          await sleep(delay)
          delay = Math.min(delay * 2, RETRY_MAX_MS)
        }
        tried()
      }
    } finally {
      refreshing = null
      tried()
    }
  })().catch(() => {})
  return refreshing
}

// ---- the stream ----

/** What the tab reading the stream does with it: shows it, and passes it on when shared. */
function reader (share: boolean): StreamHandlers {
  const post = (message: Message): void => { if (share) channel?.postMessage(message) }
  return {
    reload: async () => {
      post({ type: 'reload' })
      await load()
    },
    event: (name, data, id) => {
      lastId = id ?? lastId
      post({ type: 'event', name, data, id })
      apply(name, data)
    },
    seen: (id) => {
      lastId = id
      post({ type: 'seen', id })
    },
    live: (live, why) => {
      status = why === undefined ? { live } : { live, why }
      post({ type: 'live', ...status })
      on.live(live, why)
    }
  }
}

/** A message from the tab reading the stream (or a new tab's hello). */
function heard ({ data: message }: MessageEvent<Message>): void {
  if (message.type === 'hello') {
    if (leading) channel?.postMessage({ type: 'live', ...status } satisfies Message)
    return
  }
  // Only the tab reading posts these: one still on its way from the tab that read before this one
  // took over is not applied (the stream sends it again, from this tab's last id).
  if (leading) return
  if (message.type === 'event') {
    lastId = message.id ?? lastId
    apply(message.name, message.data)
  } else if (message.type === 'seen') lastId = message.id
  else if (message.type === 'reload') void refresh()
  else if (message.type === 'live') on.live(message.live, message.why)
}

let following = false

/**
 * Starts the live view, or starts it again after a new key: a fresh snapshot (resolves once it
 * answered, drawn or not), then events, from this tab's stream or from another tab's.
 */
export function followTabs (handlers: TabHandlers): Promise<void> {
  on = handlers
  const first = refresh()
  if (following) return first
  following = true
  const locks = (navigator as { locks?: LockManager }).locks
  if (locks === undefined || typeof BroadcastChannel !== 'function') {
    void follow(reader(false), { pauseWhenHidden: true }).finally(() => { following = false })
    return first
  }
  if (channel === null) {
    channel = new BroadcastChannel(SHARED)
    channel.onmessage = heard
    channel.postMessage({ type: 'hello' } satisfies Message)
  }
  // Held for as long as this tab reads the stream: until it closes, or its key is refused.
  void locks.request(SHARED, async () => {
    leading = true
    try {
      await follow(reader(true), { lastId })
    } finally {
      leading = false
    }
  }).catch(() => {}).finally(() => { following = false })
  return first
}
