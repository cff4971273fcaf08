/**
 * The API and its key. The key lives in sessionStorage (gone with the tab) and travels only in
 * the Authorization header, never in a URL.
 */

export const API = '/api/v1/tasks'
const KEY_STORAGE = 'taskvault.apiKey'
/** What a bearer key can be: printable ASCII without spaces (the server reads `Bearer (\S+)`). */
const KEY_CHARS = /^[\x21-\x7e]+$/u

export class ApiError extends Error {
  constructor (readonly status: number, message: string) {
    super(message)
  }
}

/** Shows the key form with this text; set by the page. */
let askForKey: (text: string) => void = () => {}
export function onKeyWanted (ask: (text: string) => void): void {
  askForKey = ask
}

/** Why `key` cannot be sent as an API key, or null when it can. */
function keyProblem (key: string): string | null {
  if (KEY_CHARS.test(key)) return null
  const at = [...key].findIndex((char) => !KEY_CHARS.test(char))
  const char = [...key][at]
  if (char === undefined) return 'An API key cannot be empty.'
  const code = `U+${(char.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`
  return `An API key is printable ASCII without spaces, but character ${at + 1} of this one is ${code} ` +
    '(a pasted curly quote or invisible space?). Type or paste it again.'
}

/** Keeps `key` for this tab, or says why it cannot be used (and keeps nothing). */
export function saveKey (key: string): string | null {
  const problem = keyProblem(key)
  if (problem === null) sessionStorage.setItem(KEY_STORAGE, key)
  return problem
}

/** The page asks for a key and the caller stops with a 401. */
function refused (message: string): ApiError {
  askForKey(sessionStorage.getItem(KEY_STORAGE) === null ? 'This server needs an API key.' : `That key was refused (${message}). Enter another.`)
  return new ApiError(401, message)
}

/**
 * A request to the API with the saved key. A key no header can carry makes the browser throw
 * before anything is sent, on every call and every reload; rather than stay stuck, the page
 * forgets it and asks again.
 */
export function request (path: string, init: RequestInit & { headers?: Record<string, string> } = {}): Request {
  const key = sessionStorage.getItem(KEY_STORAGE)
  try {
    return new Request(API + path, { ...init, headers: { ...init.headers, ...(key !== null && { authorization: `Bearer ${key}` }) } })
  } catch (err) {
    if (key === null) throw err
    sessionStorage.removeItem(KEY_STORAGE)
    askForKey(`The saved API key cannot be sent. ${keyProblem(key) ?? String(err)}`)
    throw new ApiError(401, 'unusable API key')
  }
}

/**
 * A call that has had no answer this long is given up. After a network drop the browser may send
 * a call over a pooled connection that is dead: without a bound it would wait forever, holding
 * one of the six connections the browser gives a server, and its button busy.
 */
export const ANSWER_TIMEOUT_MS = 30_000
/** The same for a call whose answer waits for its work (running a task: as long as its agent takes; an archive pass). */
export const WORK_TIMEOUT_MS = 300_000

/**
 * Runs `call` with a signal that aborts after `ms`; a call so ended says so. `change`: the call
 * changes something, which may have been done all the same.
 */
export async function answered<T> (ms: number, call: (signal: AbortSignal) => Promise<T>, change = false): Promise<T> {
  const signal = AbortSignal.timeout(ms)
  try {
    return await call(signal)
  } catch (err) {
    // fetch's own failure (the browser says "Failed to fetch"): the connection dropped, or never was.
    if (!signal.aborted && err instanceof TypeError) {
      throw new ApiError(0, change
        ? 'the connection to the server was lost before its answer: it may have been done all the same (the page shows it once it is); check before trying again'
        : 'the server could not be reached (the page keeps trying)')
    }
    if (!signal.aborted) throw err
    throw new ApiError(0, change
      ? `no answer within ${ms / 1000} s: it may have been done all the same (the page shows it once it is); check before trying again`
      : `no answer within ${ms / 1000} s (is the network down?)`)
  }
}

export async function api<T> (method: string, path: string, body?: unknown, answerMs = ANSWER_TIMEOUT_MS, headers: Record<string, string> = {}): Promise<T> {
  return answered(answerMs, async (signal) => {
    const res = await fetch(request(path, { method, signal, headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' }, ...(body !== undefined && { body: JSON.stringify(body) }) }))
    if (res.status === 204) return null as T
    const data = await res.json().catch(() => null) as { message?: string } | null
    // A body cut off by the timeout is no answer, whatever the status said.
    signal.throwIfAborted()
    if (res.status === 401) throw refused(data?.message ?? 'unauthorized')
    if (!res.ok) throw new ApiError(res.status, `${res.status}: ${data?.message ?? res.statusText}`)
    return data as T
  }, method !== 'GET')
}

/** For the event stream, which reads its own answer: a 401 asks for a key. */
export function streamRefused (): ApiError {
  return refused('unauthorized')
}
