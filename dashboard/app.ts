/**
 * The taskvault dashboard: plain DOM, no framework. Every piece of data is set as text (dom.ts),
 * the API key travels only in the Authorization header (api.ts), and the event stream is read
 * with fetch and a stream reader (stream.ts), by one tab for all of the browser's (tabs.ts). Live events update rows and tasks in place, so
 * what the reader has opened or focused stays so.
 */
import type { Static } from '@sinclair/typebox'
import type { Progress as ProgressSchema, SessionSummary as SessionSummarySchema, StatsResponse } from '../dist/schemas/api.js'
import type { Task as TaskSchema } from '../dist/schemas/session.js'
import { answered, ANSWER_TIMEOUT_MS, api, ApiError, onKeyWanted, saveKey, WORK_TIMEOUT_MS } from './api.js'
import { $, arrange, el, keepFocus, setText } from './dom.js'
import { bytes, duration, when } from './format.js'
import { RETRY_FIRST_MS, RETRY_MAX_MS, sleep } from './stream.js'
import { followTabs } from './tabs.js'

const PAGE_SIZE = 20
/** The newest sessions the overview loads (the list endpoint's largest page). */
const SNAPSHOT_LIMIT = 1000
/** A session id as the API accepts it: a link naming anything else names no session. */
const SESSION_ID = /^[A-Za-z0-9_-]{1,128}$/u

// The API's own shapes, from the server's schemas (type-only: nothing of them reaches the bundle).
type Progress = Static<typeof ProgressSchema>
type Task = Static<typeof TaskSchema>
/** A session as the page shows it: `waiting`, from /progress and `progress` events, while its background run waits for storage. */
type Summary = Static<typeof SessionSummarySchema> & { waiting?: 'storage' }

interface Detail extends Summary {
  tasks: Task[]
}

/** What a session stalled on storage says: nothing moves, and nothing is wrong with the session. */
const WAITING_TEXT = 'waiting for storage (the disk is full or failing): the run goes on by itself once saves succeed'

const state = {
  sessions: new Map<string, Summary>(),
  page: 0,
  detail: null as Detail | null,
  started: false,
  /** The last snapshot held SNAPSHOT_LIMIT sessions: older ones may exist that the table does not show. */
  capped: false
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

/**
 * Shows an error in the page's alert box. One from a background load (`background`) goes away
 * once such a load succeeds again; one from the user's action stays until the next action.
 */
function showError (err: unknown, background = false): void {
  const box = $('error')
  box.textContent = err instanceof Error ? err.message : String(err)
  box.dataset.source = background ? 'background' : 'action'
  box.hidden = false
}

const showBackgroundError = (err: unknown): void => { showError(err, true) }

function clearError (): void {
  $('error').hidden = true
}

/** A background load succeeded: an error an earlier one showed is over. */
function backgroundRecovered (): void {
  if ($('error').dataset.source === 'background') clearError()
}

/**
 * Actions in flight: a second click (or Enter) on one is ignored until it answers. Keyed by the
 * control, or for the session page's buttons (one set for every session) by button and session.
 */
const inFlight = new Set<unknown>()

/**
 * Runs a user action: its error (the server's message) is shown, never swallowed. `control`
 * (the button, or the form) is marked busy meanwhile, and a second press does nothing: a
 * double-click on Create would add the tasks twice. Marked, not disabled: a disabled button
 * loses the keyboard's focus.
 */
async function act (work: () => Promise<void>, control?: HTMLElement, key: unknown = control): Promise<void> {
  if (control !== undefined) {
    if (inFlight.has(key)) return
    inFlight.add(key)
    control.setAttribute('aria-busy', 'true')
  }
  clearError()
  try {
    await work()
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err)
  } finally {
    if (control !== undefined) {
      inFlight.delete(key)
      // A session page's button shows the session on screen now, which may be another with its own action in flight.
      if (key === control) control.removeAttribute('aria-busy')
      else markBusyActions(state.detail?.session_id)
    }
  }
}

const actionKey = (button: string, sessionId: string | undefined): string => `${button}:${sessionId ?? ''}`

// ---- API key ----

function askForKey (text: string): void {
  $('key-message').textContent = text
  showKeyProblem(null)
  // Stopped until a key is taken (start() again): a link or Back must not bring a page back under the form.
  state.started = false
  withdrawQuestion()
  $('key-form').hidden = false
  $('overview').hidden = true
  $('session').hidden = true
  setBadge('stopped: a key is needed', false)
  $('key-input').focus()
}
onKeyWanted(askForKey)

function showKeyProblem (problem: string | null): void {
  const box = $('key-error')
  box.textContent = problem ?? ''
  box.hidden = problem === null
  $('key-input').setAttribute('aria-invalid', String(problem !== null))
}

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const input = $<HTMLInputElement>('key-input')
  // Checked before it is kept: a key no header can carry would make every request fail.
  const problem = saveKey(input.value.trim())
  showKeyProblem(problem)
  if (problem !== null) {
    input.focus()
    input.select()
    return
  }
  input.value = ''
  $('key-form').hidden = true
  void start(true)
})

// ---- snapshot and events ----

async function loadSnapshot (): Promise<void> {
  const list = await api<{ sessions: Summary[] }>('GET', `/list?session_id=all&archived=include&limit=${SNAPSHOT_LIMIT}`)
  state.sessions = new Map(list.sessions.map((s) => [s.session_id, s]))
  state.capped = list.sessions.length >= SNAPSHOT_LIMIT
  renderSessions()
  backgroundRecovered()
  scheduleStats()
  if (state.detail !== null) scheduleDetail()
}

function setLive (live: boolean, why?: string): void {
  setBadge(live ? 'live' : why === undefined ? 'reconnecting…' : `reconnecting… (${why})`, live)
}

function setBadge (text: string, live: boolean): void {
  const badge = $('live')
  badge.textContent = text
  badge.dataset.live = String(live)
}

function onEvent (name: string, data: Record<string, unknown>): void {
  const id = data.session_id
  if (typeof id !== 'string') return
  const known = state.sessions.get(id)
  if (name === 'progress') {
    const { session_id: _id, ...progress } = data
    // The server's time of the change: rows from the snapshot carry the server's times, and are
    // sorted against these, whatever this browser's clock says. (The browser's clock only for a
    // server too old to send it.)
    const at = typeof data.updated_at === 'string' ? data.updated_at : new Date().toISOString()
    // An event without `waiting` says the run no longer waits: the row's earlier one goes.
    state.sessions.set(id, { ...(known ?? { session_id: id, created_at: at }), ...progress as unknown as Progress, updated_at: at, archived: undefined, waiting: data.waiting === 'storage' ? 'storage' : undefined } as Summary)
    if (state.detail?.session_id === id) {
      live = { sessionId: id, progress: progress as unknown as LiveProgress, at: Date.parse(at) }
      const d = withLive(state.detail)
      if (d !== state.detail) {
        state.detail = d
        keepFocus($('session'), () => { drawSummary(d) }, detailFallback)
      }
    }
  } else if (name === 'session.deleted') {
    state.sessions.delete(id)
  } else if (name === 'session.archived' && known !== undefined) {
    known.archived = true
    known.running = false
    known.waiting = undefined
  }
  // Archived (or gone) is newer than any progress event: the last one must not be drawn over it.
  if (name === 'session.archived' && live?.sessionId === id) live = null
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

/** How long after a failed load of the totals the next is tried (the panel keeps its figures meanwhile). */
const STATS_RETRY_MS = 3000

let statsTimer: number | undefined
/** A load of the totals is under way; `statsAgain`: a change came meanwhile, so its answer may be older than it. */
let statsLoading = false
let statsAgain = false
/**
 * Loads the totals again soon. One load at a time: an answer that came back late would
 * otherwise be drawn over a newer one, and stay there once the events stop.
 */
function scheduleStats (delay = 300): void {
  if (statsLoading) {
    statsAgain = true
    return
  }
  if (statsTimer !== undefined) return
  statsTimer = window.setTimeout(() => {
    statsTimer = undefined
    statsLoading = true
    statsAgain = false
    renderStats().then(() => {
      statsLoading = false
      if (statsAgain) scheduleStats()
    }, (err: unknown) => {
      statsLoading = false
      // A refused key waits for a new one (which loads the totals again), not sent over and over.
      if (!(err instanceof ApiError && err.status === 401)) scheduleStats(STATS_RETRY_MS)
    })
  }, delay)
}

/** The server's uptime when last read, or null when /health did not answer (a proxy that passes only /api and /dashboard). */
let uptime: { seconds: number, at: number } | null = null
/** The uptime from /health, or null: the totals never wait on it. */
async function readUptime (): Promise<number | null> {
  try {
    return await answered(ANSWER_TIMEOUT_MS, async (signal) => {
      const res = await fetch('/health', { signal })
      const body = res.ok ? await res.json() as { uptime_s?: unknown } : null
      return typeof body?.uptime_s === 'number' ? body.uptime_s : null
    })
  } catch {
    return null
  }
}
const uptimeText = (): string => uptime === null ? '—' : duration(uptime.seconds * 1000 + Date.now() - uptime.at)
async function renderStats (): Promise<void> {
  const [stats, seconds] = await Promise.all([
    api<Static<typeof StatsResponse>>('GET', '/stats'),
    readUptime()
  ])
  uptime = seconds === null ? null : { seconds, at: Date.now() }
  const items: Array<[string, string]> = [
    ['Sessions', String(stats.total_sessions)],
    ['Running tasks', String(stats.in_progress_tasks)],
    ['Pending', String(stats.pending_tasks)],
    ['Completed', String(stats.completed_tasks)],
    ['Failed', String(stats.failed_tasks)],
    ['Archived', String(stats.archived_sessions)],
    // On PostgreSQL `bytes` is the whole table, archived rows in it; on the file store the archive is apart.
    ['Storage', bytes((stats.storage.bytes ?? 0) + (stats.storage.kind === 'postgres' ? 0 : stats.storage.archive_bytes ?? 0))],
    ['Restore', `${stats.storage.restore_ms ?? 0} ms`]
  ]
  const box = $('stats')
  box.replaceChildren(...items.map(([label, value]) => el('div', { class: 'stat' }, el('span', { class: 'label' }, label), el('span', { class: 'value', 'data-stat': label }, value))),
    el('div', { class: 'stat' }, el('span', { class: 'label' }, 'Uptime'), el('span', { class: 'value', id: 'uptime' }, uptimeText())))
}

setInterval(() => {
  const node = document.getElementById('uptime')
  if (node !== null) node.textContent = uptimeText()
}, 1000)

function matchesFilter (s: Summary, filter: string): boolean {
  switch (filter) {
    case 'running': return s.running === true
    case 'pending': return s.pending + s.in_progress > 0 && s.archived !== true
    case 'failed': return s.failed > 0 && s.archived !== true
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

/** A shown session's row, kept across redraws and changed in place. */
interface Row {
  tr: HTMLTableRowElement
  head: HTMLTableCellElement
  link: HTMLAnchorElement
  running: HTMLElement
  waiting: HTMLElement
  archived: HTMLElement
  bar: HTMLProgressElement
  pct: HTMLElement
  counts: HTMLTableCellElement
  time: HTMLTimeElement
}
let rows = new Map<string, Row>()

function makeRow (id: string): Row {
  const link = el('a', { href: `#/session/${encodeURIComponent(id)}` }, id)
  const head = el('th', { scope: 'row' }, link)
  const bar = el('progress', { max: '100', 'aria-label': `${id} progress` })
  const pct = el('span', { class: 'pct' })
  const counts = el('td')
  const time = el('time')
  return {
    tr: el('tr', { 'data-session': id }, head, el('td', {}, bar, pct), counts, el('td', {}, time)),
    head,
    link,
    running: el('span', { class: 'badge running' }, 'running'),
    waiting: el('span', { class: 'badge waiting', title: WAITING_TEXT }, 'waiting for storage'),
    archived: el('span', { class: 'badge archived' }, 'archived'),
    bar,
    pct,
    counts,
    time
  }
}

function updateRow (row: Row, s: Summary): Row {
  arrange(row.head, [row.link, s.running === true && row.running, s.waiting === 'storage' && row.waiting, s.archived === true && row.archived])
  row.bar.value = s.percentage
  setText(row.pct, `${Math.round(s.percentage)}%`)
  setText(row.counts, `${s.completed}/${s.total} done` + (s.failed > 0 ? ` · ${s.failed} failed` : '') + (s.in_progress > 0 ? ` · ${s.in_progress} running` : '') + (s.pending > 0 ? ` · ${s.pending} pending` : ''))
  row.time.dateTime = s.updated_at
  setText(row.time, when(s.updated_at))
  return row
}

/**
 * Draws the page of sessions. A row with the keyboard's focus that a change elsewhere would push
 * to another page stays on this one (after its rows, or before them) until focus leaves the
 * table: a keyboard user keeps their place.
 */
function drawSessions (): void {
  const filter = $<HTMLSelectElement>('filter').value
  const prefix = $<HTMLInputElement>('search').value.trim()
  const shown = [...state.sessions.values()]
    .filter((s) => s.session_id.startsWith(prefix) && matchesFilter(s, filter))
    .sort((a, b) => b.updated_at.localeCompare(a.updated_at))
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE))
  state.page = Math.min(state.page, pages - 1)
  const start = state.page * PAGE_SIZE
  let page = shown.slice(start, start + PAGE_SIZE)
  const focused = (document.activeElement?.closest('#session-rows tr') as HTMLElement | null)?.dataset.session
  const at = focused === undefined ? -1 : shown.findIndex((s) => s.session_id === focused)
  if (at !== -1 && (at < start || at >= start + PAGE_SIZE)) page = at < start ? [shown[at] as Summary, ...page] : [...page, shown[at] as Summary]
  keepFocus($('overview'), () => {
    const next = new Map<string, Row>()
    for (const s of page) {
      next.set(s.session_id, updateRow(rows.get(s.session_id) ?? makeRow(s.session_id), s))
    }
    rows = next
    arrange($('session-rows'), [...rows.values()].map((row) => row.tr))
    $('empty').hidden = shown.length > 0
    // The table holds the newest sessions only: a whole id it does not hold may still be an older session.
    const older = shown.length === 0 && state.capped && SESSION_ID.test(prefix)
    setText($('empty-text'), older ? `No session among the ${SNAPSHOT_LIMIT.toLocaleString('en-US')} newest matches.` : 'No sessions match.')
    const open = $<HTMLAnchorElement>('empty-open')
    open.hidden = !older
    if (older) {
      open.href = `#/session/${encodeURIComponent(prefix)}`
      setText(open, `Open session ${prefix}`)
    }
    setText($('page-info'), `Page ${state.page + 1} of ${pages} (${shown.length} session${shown.length === 1 ? '' : 's'})`)
    $<HTMLButtonElement>('prev').disabled = state.page === 0
    $<HTMLButtonElement>('next').disabled = state.page >= pages - 1
  }, () => $('sessions-title'))
}

$('filter').addEventListener('change', () => { state.page = 0; drawSessions() })
// A focused row kept on a page it no longer belongs to goes once focus leaves the table.
$('session-rows').addEventListener('focusout', (event) => {
  if (!$('session-rows').contains(event.relatedTarget as Node | null)) renderSessions()
})
$('search').addEventListener('input', () => { state.page = 0; drawSessions() })
// A pager button that the page change disables hands focus to the other, not to the list's heading.
function turnPage (by: number, from: string, other: string): void {
  state.page += by
  drawSessions()
  if ($<HTMLButtonElement>(from).disabled) $(other).focus()
}
$('prev').addEventListener('click', () => { turnPage(-1, 'prev', 'next') })
$('next').addEventListener('click', () => { turnPage(1, 'next', 'prev') })

/**
 * The Idempotency-Key of the last create that got no success, with the body it sent: the same
 * form sent again (after a timeout, say) reuses it, so the server adds its tasks once at most.
 */
let unansweredCreate: { body: string, key: string } | null = null

/** A fresh key: crypto.randomUUID needs a secure context, which a dashboard on a pod's plain HTTP is not. */
function newRequestKey (): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (byte) => byte.toString(16).padStart(2, '0')).join('')
}

// The browser's own check of a field stops a submit before it starts: an action's error from before is stale then.
$('create-form').addEventListener('invalid', () => { if ($('error').dataset.source === 'action') clearError() }, true)

$('create-form').addEventListener('submit', (event) => {
  event.preventDefault()
  void act(async () => {
    const id = $<HTMLInputElement>('create-id').value.trim()
    const text = $<HTMLTextAreaElement>('create-text').value
    const mode = (document.querySelector('input[name="mode"]:checked') as HTMLInputElement | null)?.value
    const body = mode === 'tasks'
      ? { session_id: id, tasks: text.split('\n').map((line) => line.trim()).filter((line) => line !== '').map((instruction) => ({ instruction })) }
      : { session_id: id, instructions: text }
    const sent = JSON.stringify(body)
    const key = unansweredCreate?.body === sent ? unansweredCreate.key : newRequestKey()
    unansweredCreate = { body: sent, key }
    const created = await api<{ total_tasks: number }>('POST', '/create', body, undefined, { 'idempotency-key': key })
    unansweredCreate = null
    notice(`Added ${created.total_tasks} task(s) to ${id}`)
    $<HTMLFormElement>('create-form').reset()
  }, $('create-form'))
})

$('archive-form').addEventListener('submit', (event) => {
  event.preventDefault()
  void act(async () => {
    const days = $<HTMLInputElement>('archive-days').value
    const pass = await api<{ archived: number, deleted: number }>('POST', '/archive', days === '' ? {} : { older_than_days: Number(days) }, WORK_TIMEOUT_MS)
    notice(`Archived ${pass.archived} session(s), deleted ${pass.deleted}`)
  }, $('archive-form'))
})

// ---- session page ----

const ACTIONS = ['act-execute', 'act-run', 'act-cancel', 'act-retry', 'act-delete']

/**
 * While events come, the open session is fetched again at most this often: each fetch is the
 * whole session, results included (a 200-task run would otherwise fetch it a hundred times).
 */
const DETAIL_REFRESH_MS = 1000
/**
 * A larger session is fetched less often while events come: one DETAIL_REFRESH_MS more per this
 * many tasks (1,000 tasks, TASK_MAX_TASKS_PER_SESSION's default: every 4 s). Its counts and bar
 * follow each `progress` event meanwhile.
 */
const DETAIL_TASKS_PER_REFRESH = 250

type LiveProgress = Progress & { running?: boolean, waiting?: 'storage' }
/** The open session's newest `progress` event: drawn at once, and over a load that read the session before it. */
let live: { sessionId: string, progress: LiveProgress, at: number } | null = null

/**
 * `d` with the counts of the newest progress event, when that event is not older than what `d`
 * was read from: events come in order, and one change can send two (a cancel's task.failed and
 * run.cancelled share its time), the later being the state. A progress event is of an active session.
 */
function withLive (d: Detail): Detail {
  if (live === null || live.sessionId !== d.session_id || !(live.at >= Date.parse(d.updated_at))) return d
  const p = live.progress
  return { ...d, total: p.total, completed: p.completed, failed: p.failed, pending: p.pending, in_progress: p.in_progress, all_done: p.all_done, percentage: p.percentage, running: p.running ?? d.running, waiting: p.waiting, archived: undefined, updated_at: new Date(live.at).toISOString() }
}

/** A session's counts from its tasks, as the server's progress gives them (a status not counted here is in progress). */
function countsOf (tasks: readonly Task[]): Progress {
  const by = new Map<string, number>()
  for (const task of tasks) by.set(task.status, (by.get(task.status) ?? 0) + 1)
  const [completed, failed, pending] = (['Completed', 'Failed', 'Pending'] as const).map((status) => by.get(status) ?? 0) as [number, number, number]
  const total = tasks.length
  const done = completed + failed
  return { total, completed, failed, pending, in_progress: total - done - pending, all_done: total > 0 && done === total, percentage: total === 0 ? 0 : Math.round((done / total) * 10000) / 100 }
}

function detailRefreshMs (): number {
  // A page whose first load has not answered holds only the session's id (no tasks yet).
  const count = (state.detail?.tasks as Task[] | undefined)?.length ?? 0
  return DETAIL_REFRESH_MS * Math.max(1, Math.ceil(count / DETAIL_TASKS_PER_REFRESH))
}

let detailTimer: number | undefined
let lastDetailLoad = -Infinity
function scheduleDetail (): void {
  if (detailTimer !== undefined) return
  detailTimer = window.setTimeout(() => {
    detailTimer = undefined
    lastDetailLoad = performance.now()
    if (state.detail !== null) void loadDetail(state.detail.session_id).then(backgroundRecovered, showBackgroundError)
  }, Math.max(100, lastDetailLoad + detailRefreshMs() - performance.now()))
}

// Loads are numbered: two that overlap can answer out of order, and an answer older than the
// newest drawn (or than the last page change) is dropped, not drawn over a newer one.
let loadsStarted = 0
let newestDrawn = 0

async function loadDetail (id: string): Promise<void> {
  const load = ++loadsStarted
  let answers: [Detail, Summary]
  try {
    answers = await Promise.all([
      api<Detail>('GET', `/list?session_id=${encodeURIComponent(id)}`),
      api<Summary>('GET', `/progress?session_id=${encodeURIComponent(id)}`)
    ])
  } catch (err) {
    if (load <= newestDrawn || state.detail?.session_id !== id) return
    if (!(err instanceof ApiError && err.status === 404)) throw err
    newestDrawn = load
    keepFocus($('session'), () => { clearDetail(id, `session '${id}' not found`) }, detailFallback)
    return
  }
  if (load <= newestDrawn || state.detail?.session_id !== id) return
  newestDrawn = load
  const [detail, progress] = answers
  // The counts from the tasks, the same read as its updated_at (withLive compares them); running
  // and the like from /progress, a read of its own.
  state.detail = withLive({ ...progress, ...detail, ...countsOf(detail.tasks) })
  drawDetail(state.detail)
}

/** An empty session page: nothing of the session shown before (its counts, its enabled buttons) stays. */
function clearDetail (id: string, summary = ''): void {
  setText($('session-title'), id)
  setText($('session-summary'), summary)
  const bar = $<HTMLProgressElement>('session-progress')
  bar.value = 0
  bar.textContent = ''
  for (const button of ACTIONS) $<HTMLButtonElement>(button).disabled = true
  tasks = new Map()
  $('tasks').replaceChildren()
}

/** Where focus goes when its control went away: the action left to take (Cancel after Run all), else the heading. */
function detailFallback (): HTMLElement {
  return document.querySelector<HTMLElement>('#session .actions button:enabled:not(.danger)') ?? $('session-title')
}

function drawDetail (d: Detail): void {
  keepFocus($('session'), () => {
    drawSummary(d)
    const next = new Map<string, TaskView>()
    d.tasks.forEach((task, index) => next.set(task.id, updateTask(tasks.get(task.id) ?? makeTask(d.session_id, task, index), task)))
    tasks = next
    arrange($('tasks'), [...tasks.values()].map((view) => view.item))
  }, detailFallback)
}

/** The session page's title, counts, bar and buttons (not its tasks). */
function drawSummary (d: Detail): void {
  setText($('session-title'), d.session_id)
  const parts = [`${d.completed}/${d.total} done`, `${d.failed} failed`, ...(d.in_progress > 0 ? [`${d.in_progress} in progress`] : []), `${d.pending} pending`]
  if (d.running === true) parts.push('running')
  if (d.waiting === 'storage') parts.push(WAITING_TEXT)
  if (d.archived === true) parts.push('archived')
  setText($('session-summary'), parts.join(' · '))
  const bar = $<HTMLProgressElement>('session-progress')
  bar.value = d.percentage
  bar.textContent = `${Math.round(d.percentage)}%`
  $<HTMLButtonElement>('act-cancel').disabled = d.running !== true
  $<HTMLButtonElement>('act-retry').disabled = d.failed === 0 || d.running === true
  $<HTMLButtonElement>('act-run').disabled = d.running === true || d.pending === 0
  $<HTMLButtonElement>('act-execute').disabled = d.running === true || d.pending === 0
  $<HTMLButtonElement>('act-delete').disabled = false
}

/** A long text that folds away; it is always text, whatever it contains. */
interface Section { box: HTMLDetailsElement, preview: HTMLElement, full: HTMLPreElement }

function section (label: string, cls = ''): Section {
  const preview = el('span', { class: 'preview' })
  const full = el('pre')
  return { box: el('details', { class: cls }, el('summary', {}, `${label}: `, preview), full), preview, full }
}

/** New text into a section, which stays open or shut as the reader left it. */
function fill (part: Section, text: string, note = ''): HTMLDetailsElement {
  // Cut by code points, not UTF-16 units: an emoji is never split in two.
  const points = [...text]
  // A note after the text is set off from it (U+2068 … U+2069): the text's own direction marks
  // (U+202E and the like) then stay inside it rather than turning the note around.
  const isolated = (shown: string): string => note === '' ? shown : `\u2068${shown}\u2069${note}`
  setText(part.preview, isolated(points.length > 80 ? `${points.slice(0, 80).join('')}…` : text))
  setText(part.full, isolated(text))
  return part.box
}

/** A task on the session page, kept across redraws and changed in place. */
interface TaskView {
  item: HTMLLIElement
  head: HTMLElement
  status: HTMLElement
  attempts: HTMLElement
  times: HTMLElement
  instruction: HTMLDetailsElement
  result: Section
  error: Section
  retry: HTMLButtonElement
}
let tasks = new Map<string, TaskView>()

function makeTask (sessionId: string, task: Task, index: number): TaskView {
  const status = el('span')
  const attempts = el('span', { class: 'meta' })
  const retry = el('button', { type: 'button', class: 'retry-one' }, `Retry task #${index + 1}`)
  retry.addEventListener('click', () => {
    void act(async () => {
      await api('POST', '/retry', { session_id: sessionId, task_id: task.id })
      notice(`Task #${index + 1} is pending again`)
      await loadDetail(sessionId)
    }, retry)
  })
  return {
    // Focusable from script: where focus goes when the task's retry button goes away.
    item: el('li', { class: 'task', 'data-task': task.id, tabindex: '-1' }),
    head: el('div', { class: 'task-head' }, el('span', { class: 'num' }, `#${index + 1}`), el('span', { class: `badge type-${task.task_type.toLowerCase()}` }, task.task_type), status, attempts),
    status,
    attempts,
    times: el('div', { class: 'meta' }),
    instruction: fill(section('Instruction'), task.instruction),
    result: section('Result', 'result'),
    error: section('Error', 'error-text'),
    retry
  }
}

function updateTask (view: TaskView, task: Task): TaskView {
  view.status.className = `badge status-${task.status.toLowerCase()}`
  view.status.dataset.status = task.status
  setText(view.status, task.status)
  setText(view.attempts, `attempts ${task.attempts}` + ((task.interruptions ?? 0) > 0 ? ` · interrupted ${task.interruptions ?? 0}` : '') +
    ((task.retries ?? 0) > 0 ? ` · retried ${task.retries ?? 0}` : ''))
  setText(view.times, `started ${task.started_at === null ? '—' : when(task.started_at)} · finished ${task.completed_at === null ? '—' : when(task.completed_at)}` +
    (task.started_at !== null && task.completed_at !== null ? ` · took ${duration(Date.parse(task.completed_at) - Date.parse(task.started_at))}` : ''))
  arrange(view.item, [
    view.head,
    view.times,
    view.instruction,
    // The flag marks what the agent's answer became: a failed task's error, any other's result.
    task.result !== null && fill(view.result, task.result, task.result_truncated === true && task.status !== 'Failed' ? CUT_NOTE : ''),
    task.error !== null && fill(view.error, task.error, task.result_truncated === true && task.status === 'Failed' ? CUT_NOTE : ''),
    task.status === 'Failed' && view.retry
  ])
  return view
}

/** After a result or error the server cut at its bound. */
const CUT_NOTE = ' [cut at the server\'s TASK_MAX_RESULT_BYTES]'

const question = $<HTMLDialogElement>('confirm')
/**
 * Asks `text` in the page's own dialog; true when confirmed. Not window.confirm: that stops
 * this tab's script until answered, and with it the event stream it may read for every tab.
 */
async function confirmed (text: string): Promise<boolean> {
  setText($('confirm-text'), text)
  question.returnValue = ''
  question.showModal()
  return await new Promise((resolve) => {
    question.addEventListener('close', () => { resolve(question.returnValue === 'ok') }, { once: true })
  })
}
/** An open question goes unanswered (as Cancel): what it asked about is gone from the page. */
function withdrawQuestion (): void {
  if (question.open) question.close('cancel')
}
$('confirm-ok').addEventListener('click', () => { question.close('ok') })
$('confirm-cancel').addEventListener('click', () => { question.close('cancel') })

/**
 * `ask`: a question to confirm first. It is asked before the action starts: a dismissed one
 * leaves nothing in flight, so the button answers the next click at once.
 */
function sessionAction (button: string, work: (id: string) => Promise<void>, ask?: (id: string) => string): void {
  const control = $(button)
  const run = (id: string): void => {
    if (inFlight.has(actionKey(button, id))) return
    void act(async () => {
      await work(id)
      if (state.detail?.session_id === id && location.hash !== '#/') await loadDetail(id)
    }, control, actionKey(button, id))
  }
  control.addEventListener('click', () => {
    const id = state.detail?.session_id
    if (id === undefined || inFlight.has(actionKey(button, id))) return
    if (ask === undefined) run(id)
    else void confirmed(ask(id)).then((yes) => { if (yes) run(id) })
  })
}

/** The session page's buttons show busy for the session shown: another session's action in flight leaves them free. */
function markBusyActions (sessionId: string | undefined): void {
  for (const button of ACTIONS) {
    if (inFlight.has(actionKey(button, sessionId))) $(button).setAttribute('aria-busy', 'true')
    else $(button).removeAttribute('aria-busy')
  }
}

sessionAction('act-execute', async (id) => {
  const done = await api<{ status: string }>('POST', '/execute', { session_id: id }, WORK_TIMEOUT_MS)
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
  await api('DELETE', `/sessions/${encodeURIComponent(id)}`)
  state.sessions.delete(id)
  notice(`Deleted ${id}`)
  location.hash = '#/'
}, (id) => `Delete session ${id} and its file? This cannot be undone.`)

// ---- routing ----

/** The id a link names; a malformed one (`%E0`) stays as written, and names no session. */
function linkedId (encoded: string): string {
  try {
    return decodeURIComponent(encoded)
  } catch {
    return encoded
  }
}

/** Shows the page the address names; `moveFocus` (a page change, not the first load) puts focus on it. */
function route (moveFocus = false): void {
  if (!state.started) return
  // A question asked on the page left (its session deleted meanwhile, or Back) is withdrawn, never answered for another.
  withdrawQuestion()
  const match = /^#\/session\/(.+)$/u.exec(location.hash)
  const left = state.detail?.session_id
  // Whatever a load still in flight answers, it is for the page before this one.
  newestDrawn = loadsStarted
  // The events seen on a page left are stale: this page's loads are not compared with them.
  live = null
  $('overview').hidden = match !== null
  $('session').hidden = match === null
  if (match === null) {
    document.title = 'taskvault'
    state.detail = null
    drawSessions()
    // Back on the overview, on the row of the session just left (gone once deleted: the list's heading).
    if (moveFocus) (rows.get(left ?? '')?.link ?? $('sessions-title')).focus()
    return
  }
  const id = linkedId(match[1] ?? '')
  const valid = SESSION_ID.test(id)
  document.title = `${id} · taskvault`
  // An id the API would refuse is never asked for (nor reloaded on events and snapshots).
  state.detail = valid ? { session_id: id } as Detail : null
  markBusyActions(state.detail?.session_id)
  clearDetail(id, valid ? '' : `session '${id}' not found`)
  if (moveFocus) $('session-title').focus()
  // A page's load is a background one: its error goes once a later load succeeds.
  if (valid) void loadDetail(id).then(backgroundRecovered, showBackgroundError)
}
window.addEventListener('hashchange', () => { route(true) })

// ---- start ----

async function start (moveFocus = false): Promise<void> {
  // One authorised call first: a missing or wrong key asks for one before anything else. Any
  // other failure (a 503 while the database is down, a proxy's 502) is shown and tried again,
  // backing off as the stream does: the page starts by itself once the server answers.
  for (let delay = RETRY_FIRST_MS; ; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
    try {
      await api('GET', '/stats')
      break
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return
      showBackgroundError(`${err instanceof Error ? err.message : String(err)} (trying again)`)
      await sleep(delay)
    }
  }
  backgroundRecovered()
  state.started = true
  $('key-form').hidden = true
  // Before the page is drawn, and whatever the address names: the live view never hangs on a link.
  await followTabs({ reload: loadSnapshot, event: onEvent, live: setLive, failed: showBackgroundError })
  route(moveFocus)
  scheduleStats()
}

void start()
