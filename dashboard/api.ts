/**
 * The API and its key. The key lives in sessionStorage (gone with the tab) and travels only in
 * the Authorization header, never in a URL.
 */

export const API = '/api/v1/tasks'
const KEY_STORAGE = 'taskvault.apiKey'

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

/** Keeps `key` for this tab. */
export function saveKey (key: string): void {
  sessionStorage.setItem(KEY_STORAGE, key)
}

/** The page asks for a key and the caller stops with a 401. */
function refused (message: string): ApiError {
  askForKey(sessionStorage.getItem(KEY_STORAGE) === null ? 'This server needs an API key.' : `That key was refused (${message}). Enter another.`)
  return new ApiError(401, message)
}

/** A request to the API with the saved key. */
export function request (path: string, init: RequestInit & { headers?: Record<string, string> } = {}): Request {
  const key = sessionStorage.getItem(KEY_STORAGE)
  return new Request(API + path, { ...init, headers: { ...init.headers, ...(key !== null && { authorization: `Bearer ${key}` }) } })
}

export async function api<T> (method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(request(path, { method, ...(body !== undefined && { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }) }))
  if (res.status === 204) return null as T
  const data = await res.json().catch(() => null) as { message?: string } | null
  if (res.status === 401) throw refused(data?.message ?? 'unauthorized')
  if (!res.ok) throw new ApiError(res.status, `${res.status}: ${data?.message ?? res.statusText}`)
  return data as T
}

/** For the event stream, which reads its own answer: a 401 asks for a key. */
export function streamRefused (): ApiError {
  return refused('unauthorized')
}
