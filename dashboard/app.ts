/**
 * The taskvault dashboard: plain DOM, no framework. Every piece of data is set with
 * textContent (never innerHTML), the API key travels only in the Authorization header, and the
 * event stream is read with fetch and a stream reader (EventSource cannot send headers).
 */
import type { Static } from '@sinclair/typebox'
import type { Progress as ProgressSchema, SessionSummary as SessionSummarySchema } from '../dist/schemas/api.js'
import type { Task as TaskSchema } from '../dist/schemas/session.js'

const API = '/api/v1/tasks'
const KEY_STORAGE = 'taskvault.apiKey'
const PAGE_SIZE = 20
/** The newest sessions the overview loads (the list endpoint's largest page). */
const SNAPSHOT_LIMIT = 1000

// The API's own shapes, from the server's schemas (type-only: nothing of them reaches the bundle).
type Progress = Static<typeof ProgressSchema>
type Summary = Static<typeof SessionSummarySchema>
type Task = Static<typeof TaskSchema>

interface Detail extends Summary {
  tasks: Task[]
}

class ApiError extends Error {
  constructor (readonly status: number, message: string) {
    super(message)
  }
}

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const element = document.getElementById(id)
  if (element === null) throw new Error(`#${id} missing`)
  return element as T
}

/** An element with text content and attributes: the only way data reaches the page. */
function el<K extends keyof HTMLElementTagNameMap> (tag: K, attrs: Record<string, string> = {}, ...children: Array<Node | string>): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag)
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value)
  for (const child of children) node.append(typeof child === 'string' ? document.createTextNode(child) : child)
  return node
}

const state = {
  sessions: new Map<string, Summary>(),
  page: 0,
  detail: null as Detail | null,
  started: false
}

// ---- API ----

function authHeaders (): Record<string, string> {
  const key = sessionStorage.getItem(KEY_STORAGE)
  return key === null ? {} : { authorization: `Bearer ${key}` }
}

async function api<T> (method: string, path: string, body?: unknown): Promise<T> {
  const headers = authHeaders()
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(API + path, { method, headers, ...(body !== undefined && { body: JSON.stringify(body) }) })
  if (res.status === 204) return null as T
  const data = await res.json().catch(() => null) as { message?: string } | null
  if (res.status === 401) {
    askForKey(data?.message ?? 'unauthorized')
    throw new ApiError(401, data?.message ?? 'unauthorized')
  }
  if (!res.ok) throw new ApiError(res.status, `${res.status}: ${data?.message ?? res.statusText}`)
  return data as T
}

// ---- messages ----

let noticeTimer: number | undefined
function notice (text: string): void {
  const box = $('notice')
  box.textContent = text
  box.hidden = false
  clearTimeout(noticeTimer)
  noticeTimer = window.setTimeout(() => { box.hidden = true }, 4000)
}

function showError (err: unknown): void {
  const box = $('error')
  box.textContent = err instanceof Error ? err.message : String(err)
  box.hidden = false
}

function clearError (): void {
  $('error').hidden = true
}

/** Runs a user action: its error (the server's message) is shown, never swallowed. */
async function act (work: () => Promise<void>): Promise<void> {
  clearError()
  try {
    await work()
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err)
  }
}

// ---- API key ----

function askForKey (message: string): void {
  const hadKey = sessionStorage.getItem(KEY_STORAGE) !== null
  $('key-message').textContent = hadKey ? `That key was refused (${message}). Enter another.` : 'This server needs an API key.'
  $('key-form').hidden = false
  $('overview').hidden = true
  $('session').hidden = true
  $('key-input').focus()
}

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const input = $<HTMLInputElement>('key-input')
  sessionStorage.setItem(KEY_STORAGE, input.value.trim())
  input.value = ''
  $('key-form').hidden = true
  void start()
})

// ---- snapshot and stream ----

async function loadSnapshot (): Promise<void> {
  const list = await api<{ sessions: Summary[] }>('GET', `/list?session_id=all&archived=include&limit=${SNAPSHOT_LIMIT}`)
  state.sessions = new Map(list.sessions.map((s) => [s.session_id, s]))
  renderSessions()
  scheduleStats()
  if (state.detail !== null) scheduleDetail()
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** The stream's first comment names the server's heartbeat period (TASK_EVENTS_HEARTBEAT_MS). */
const HEARTBEAT = /^: connected, heartbeat every (\d+) ms/u
/** Heartbeat periods without a byte after which the connection counts as dead. */
const SILENT_BEATS = 3
/** Until the server has named its period: three of the default heartbeats (a connection or answer that never comes). */
const FIRST_SILENT_MS = 45_000

/** Reads the stream for as long as the page lives, reconnecting with the last id it saw. */
async function follow (): Promise<void> {
  let lastId: string | null = null
  let delay = 500
  for (;;) {
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
      const headers = authHeaders()
      if (lastId !== null) headers['last-event-id'] = lastId
      const res = await fetch(`${API}/events`, { headers, signal: connection.signal })
      if (res.status === 401) {
        askForKey('unauthorized')
        return
      }
      if (!res.ok || res.body === null) throw new Error(`stream: ${res.status}`)
      setLive(true)
      // The first connection (and any that did not resume) starts from a fresh snapshot.
      if (lastId === null) await loadSnapshot()
      // Backing off ends once the page is whole again, not when the stream merely answers.
      delay = 500
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
          if (name !== '') onEvent(name, data === '' ? {} : JSON.parse(data) as Record<string, unknown>)
        }
      }
    } catch {
    } finally {
      clearTimeout(watchdog)
      connection.abort()
    }
    setLive(false)
    await sleep(delay)
    delay = Math.min(delay * 2, 10_000)
  }
}

function setLive (live: boolean): void {
  const badge = $('live')
  badge.textContent = live ? 'live' : 'reconnecting…'
  badge.dataset.live = String(live)
}

function onEvent (name: string, data: Record<string, unknown>): void {
  if (name === 'reset') {
    void loadSnapshot().catch(showError)
    return
  }
  const id = data.session_id
  if (typeof id !== 'string') return
  const known = state.sessions.get(id)
  const now = new Date().toISOString()
  if (name === 'progress') {
    const { session_id: _id, waiting: _waiting, ...progress } = data
    state.sessions.set(id, { ...(known ?? { session_id: id, created_at: now }), ...progress as unknown as Progress, updated_at: now, archived: undefined } as Summary)
  } else if (name === 'session.deleted') {
    state.sessions.delete(id)
  } else if (name === 'session.archived' && known !== undefined) {
    known.archived = true
    known.running = false
  }
  renderSessions()
  scheduleStats()
  if (state.detail?.session_id === id) {
    if (name === 'session.deleted') {
      notice(`Session ${id} was deleted`)
      location.hash = '#/'
    } else {
      scheduleDetail()
    }
  }
}

// ---- overview ----

let statsTimer: number | undefined
function scheduleStats (): void {
  if (statsTimer !== undefined) return
  statsTimer = window.setTimeout(() => {
    statsTimer = undefined
    void renderStats().catch(() => {})
  }, 300)
}

let uptime = { seconds: 0, at: Date.now() }
async function renderStats (): Promise<void> {
  const [stats, health] = await Promise.all([
    api<Record<string, number> & { storage: Record<string, number> }>('GET', '/stats'),
    fetch('/health').then(async (res) => res.json() as Promise<{ uptime_s: number }>)
  ])
  uptime = { seconds: health.uptime_s, at: Date.now() }
  const items: Array<[string, string]> = [
    ['Sessions', String(stats.total_sessions)],
    ['Running tasks', String(stats.in_progress_tasks)],
    ['Pending', String(stats.pending_tasks)],
    ['Completed', String(stats.completed_tasks)],
    ['Failed', String(stats.failed_tasks)],
    ['Archived', String(stats.archived_sessions)],
    ['Storage', bytes((stats.storage.bytes ?? 0) + (stats.storage.archive_bytes ?? 0))],
    ['Restore', `${stats.storage.restore_ms ?? 0} ms`]
  ]
  const box = $('stats')
  box.replaceChildren(...items.map(([label, value]) => el('div', { class: 'stat' }, el('span', { class: 'label' }, label), el('span', { class: 'value', 'data-stat': label }, value))),
    el('div', { class: 'stat' }, el('span', { class: 'label' }, 'Uptime'), el('span', { class: 'value', id: 'uptime' }, duration(uptime.seconds * 1000))))
}

setInterval(() => {
  const node = document.getElementById('uptime')
  if (node !== null) node.textContent = duration(uptime.seconds * 1000 + Date.now() - uptime.at)
}, 1000)

function matchesFilter (s: Summary, filter: string): boolean {
  switch (filter) {
    case 'running': return s.running === true
    case 'pending': return s.pending + s.in_progress > 0 && s.archived !== true
    case 'failed': return s.failed > 0
    case 'done': return s.all_done && s.archived !== true
    case 'archived': return s.archived === true
    default: return s.archived !== true
  }
}

let renderQueued = false
function renderSessions (): void {
  if (renderQueued) return
  renderQueued = true
  requestAnimationFrame(() => {
    renderQueued = false
    drawSessions()
  })
}

function drawSessions (): void {
  const filter = $<HTMLSelectElement>('filter').value
  const prefix = $<HTMLInputElement>('search').value.trim()
  const shown = [...state.sessions.values()]
    .filter((s) => s.session_id.startsWith(prefix) && matchesFilter(s, filter))
    .sort((a, b) => b.updated_at.localeCompare(a.updated_at))
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE))
  state.page = Math.min(state.page, pages - 1)
  const rows = shown.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE).map((s) => {
    const link = el('a', { href: `#/session/${encodeURIComponent(s.session_id)}` }, s.session_id)
    const marks: Node[] = [link]
    if (s.running === true) marks.push(el('span', { class: 'badge running' }, 'running'))
    if (s.archived === true) marks.push(el('span', { class: 'badge archived' }, 'archived'))
    const bar = el('progress', { max: '100', value: String(s.percentage), 'aria-label': `${s.session_id} progress` })
    const counts = `${s.completed}/${s.total} done` + (s.failed > 0 ? ` · ${s.failed} failed` : '') + (s.pending > 0 ? ` · ${s.pending} pending` : '')
    return el('tr', { 'data-session': s.session_id },
      el('th', { scope: 'row' }, ...marks),
      el('td', {}, bar, el('span', { class: 'pct' }, `${Math.round(s.percentage)}%`)),
      el('td', {}, counts),
      el('td', {}, el('time', { datetime: s.updated_at }, when(s.updated_at))))
  })
  $('sessions').querySelector('tbody')?.replaceChildren(...rows)
  $('empty').hidden = shown.length > 0
  $('page-info').textContent = `Page ${state.page + 1} of ${pages} (${shown.length} sessions)`
  $<HTMLButtonElement>('prev').disabled = state.page === 0
  $<HTMLButtonElement>('next').disabled = state.page >= pages - 1
}

$('filter').addEventListener('change', () => { state.page = 0; drawSessions() })
$('search').addEventListener('input', () => { state.page = 0; drawSessions() })
$('prev').addEventListener('click', () => { state.page--; drawSessions() })
$('next').addEventListener('click', () => { state.page++; drawSessions() })

$('create-form').addEventListener('submit', (event) => {
  event.preventDefault()
  void act(async () => {
    const id = $<HTMLInputElement>('create-id').value.trim()
    const text = $<HTMLTextAreaElement>('create-text').value
    const mode = (document.querySelector('input[name="mode"]:checked') as HTMLInputElement | null)?.value
    const body = mode === 'tasks'
      ? { session_id: id, tasks: text.split('\n').map((line) => line.trim()).filter((line) => line !== '').map((instruction) => ({ instruction })) }
      : { session_id: id, instructions: text }
    const created = await api<{ total_tasks: number }>('POST', '/create', body)
    notice(`Added ${created.total_tasks} task(s) to ${id}`)
    $<HTMLFormElement>('create-form').reset()
  })
})

$('archive-form').addEventListener('submit', (event) => {
  event.preventDefault()
  void act(async () => {
    const days = $<HTMLInputElement>('archive-days').value
    const pass = await api<{ archived: number, deleted: number }>('POST', '/archive', days === '' ? {} : { older_than_days: Number(days) })
    notice(`Archived ${pass.archived} session(s), deleted ${pass.deleted}`)
  })
})

// ---- session page ----

let detailTimer: number | undefined
function scheduleDetail (): void {
  if (detailTimer !== undefined) return
  detailTimer = window.setTimeout(() => {
    detailTimer = undefined
    if (state.detail !== null) void loadDetail(state.detail.session_id).catch(showError)
  }, 100)
}

async function loadDetail (id: string): Promise<void> {
  const [detail, progress] = await Promise.all([
    api<Detail>('GET', `/list?session_id=${encodeURIComponent(id)}`),
    api<Summary>('GET', `/progress?session_id=${encodeURIComponent(id)}`)
  ])
  if (location.hash !== `#/session/${encodeURIComponent(id)}`) return
  state.detail = { ...detail, ...progress, tasks: detail.tasks }
  drawDetail(state.detail)
}

function drawDetail (d: Detail): void {
  $('session-title').textContent = d.session_id
  const parts = [`${d.completed}/${d.total} done`, `${d.failed} failed`, `${d.pending} pending`]
  if (d.running === true) parts.push('running')
  if (d.archived === true) parts.push('archived')
  $('session-summary').textContent = parts.join(' · ')
  const bar = $<HTMLProgressElement>('session-progress')
  bar.value = d.percentage
  bar.textContent = `${Math.round(d.percentage)}%`
  $<HTMLButtonElement>('act-cancel').disabled = d.running !== true
  $<HTMLButtonElement>('act-retry').disabled = d.failed === 0 || d.running === true
  $<HTMLButtonElement>('act-run').disabled = d.running === true || d.pending === 0
  $<HTMLButtonElement>('act-execute').disabled = d.running === true || d.pending === 0
  $('tasks').replaceChildren(...d.tasks.map((task, index) => drawTask(d.session_id, task, index)))
}

function drawTask (sessionId: string, task: Task, index: number): HTMLElement {
  const head = el('div', { class: 'task-head' },
    el('span', { class: 'num' }, `#${index + 1}`),
    el('span', { class: `badge type-${task.task_type.toLowerCase()}` }, task.task_type),
    el('span', { class: `badge status-${task.status.toLowerCase()}`, 'data-status': task.status }, task.status),
    el('span', { class: 'meta' }, `attempts ${task.attempts}` + ((task.interruptions ?? 0) > 0 ? ` · interrupted ${task.interruptions ?? 0}` : '')))
  const times = el('div', { class: 'meta' },
    `started ${task.started_at === null ? '—' : when(task.started_at)} · finished ${task.completed_at === null ? '—' : when(task.completed_at)}` +
    (task.started_at !== null && task.completed_at !== null ? ` · took ${duration(Date.parse(task.completed_at) - Date.parse(task.started_at))}` : ''))
  const item = el('li', { class: 'task', 'data-task': task.id }, head, times, expandable('Instruction', task.instruction))
  if (task.result !== null) item.append(expandable('Result', task.result, 'result'))
  if (task.error !== null) item.append(expandable('Error', task.error, 'error-text'))
  if (task.status === 'Failed') {
    const retry = el('button', { type: 'button', class: 'retry-one' }, `Retry task #${index + 1}`)
    retry.addEventListener('click', () => {
      void act(async () => {
        await api('POST', '/retry', { session_id: sessionId, task_id: task.id })
        notice(`Task #${index + 1} is pending again`)
        await loadDetail(sessionId)
      })
    })
    item.append(retry)
  }
  return item
}

/** Long text folds away; it is always text, whatever it contains. */
function expandable (label: string, text: string, cls = ''): HTMLElement {
  const preview = text.length > 80 ? `${text.slice(0, 80)}…` : text
  return el('details', { class: cls }, el('summary', {}, `${label}: `, el('span', { class: 'preview' }, preview)), el('pre', {}, text))
}

function sessionAction (button: string, work: (id: string) => Promise<void>): void {
  $(button).addEventListener('click', () => {
    const id = state.detail?.session_id
    if (id === undefined) return
    void act(async () => {
      await work(id)
      if (state.detail?.session_id === id && location.hash !== '#/') await loadDetail(id)
    })
  })
}

sessionAction('act-execute', async (id) => {
  const done = await api<{ status: string }>('POST', '/execute', { session_id: id })
  notice(`Task ${done.status}`)
})
sessionAction('act-run', async (id) => {
  await api('POST', '/execute-all', { session_id: id, wait: false })
  notice('Running in the background')
})
sessionAction('act-cancel', async (id) => {
  await api('POST', '/cancel', { session_id: id })
  notice('Cancelled')
})
sessionAction('act-retry', async (id) => {
  const retried = await api<{ task_ids: string[] }>('POST', '/retry', { session_id: id })
  notice(`${retried.task_ids.length} task(s) pending again`)
})
sessionAction('act-delete', async (id) => {
  if (!confirm(`Delete session ${id} and its file? This cannot be undone.`)) return
  await api('DELETE', `/sessions/${encodeURIComponent(id)}`)
  state.sessions.delete(id)
  notice(`Deleted ${id}`)
  location.hash = '#/'
})

// ---- routing ----

function route (): void {
  if (!state.started) return
  const match = /^#\/session\/(.+)$/u.exec(location.hash)
  $('overview').hidden = match !== null
  $('session').hidden = match === null
  if (match === null) {
    state.detail = null
    drawSessions()
    return
  }
  const id = decodeURIComponent(match[1] ?? '')
  state.detail = { session_id: id } as Detail
  $('session-title').textContent = id
  $('tasks').replaceChildren()
  void loadDetail(id).catch(showError)
}
window.addEventListener('hashchange', route)

// ---- formatting ----

function bytes (n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let value = n / 1024
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++ }
  return `${value.toFixed(1)} ${units[unit] ?? ''}`
}

function duration (ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${s} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m} min ${s % 60} s`
  const h = Math.floor(m / 60)
  return h < 48 ? `${h} h ${m % 60} min` : `${Math.floor(h / 24)} d ${h % 24} h`
}

function when (iso: string): string {
  return new Date(iso).toLocaleString()
}

// ---- start ----

let following = false
async function start (): Promise<void> {
  try {
    // One authorised call first: a missing or wrong key asks for one before anything else.
    await api('GET', '/stats')
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err)
    return
  }
  state.started = true
  $('key-form').hidden = true
  await loadSnapshot().catch(showError)
  route()
  scheduleStats()
  if (!following) {
    following = true
    void follow().finally(() => { following = false })
  }
}

void start()
