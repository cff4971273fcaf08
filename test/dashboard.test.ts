/**
 * The dashboard end to end in real headless Chromium (Debian's package, driven by
 * playwright-core; never a browser download): create from the form, a background run whose
 * progress moves without a reload, cancel, retry, delete with confirmation, HTML in a result
 * shown as text, API keys, a reload mid-run, and the page at 375 px and in the dark scheme;
 * live updates made in place (focus and opened sections kept), focus after page changes and
 * actions, an unsendable key, unknown and malformed session links, and a reset whose reload fails;
 * more than six tabs (one stream shared, or without Web Locks closed while hidden), a first call
 * that fails, and a browser clock that is off.
 * With TASKVAULT_SCREENSHOTS=1 it also writes the README's screenshots under docs/.
 */
import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { chromium, type Browser, type Page, type Request as BrowserRequest } from 'playwright-core'
import { build, createSession, deferred, post, waitFor, type TestAppOptions, type TestContext } from './helper.js'
import { faultFs, tempOf } from './faults.js'
import { testDatabase } from './postgres.js'

const CHROMIUM = '/usr/bin/chromium'
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
const DOCS = fileURLToPath(new URL('../../docs/', import.meta.url))
const SCREENSHOTS = process.env.TASKVAULT_SCREENSHOTS === '1'
const HTML_RESULT = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold?</b>'

/** The "gate ..." tasks waiting, each released by calling it (or ended by an abort). */
const gates: Array<() => void> = []

/** Tasks named "slow ..." take 400 ms (until aborted); "gate ..." wait for the test; "html" answers HTML; "bad" fails. */
const executors: TestAppOptions['executors'] = {
  default: async (task, { signal }) => {
    if (task.instruction.startsWith('gate')) {
      await new Promise<void>((resolve, reject) => {
        gates.push(resolve)
        signal.addEventListener('abort', () => {
          gates.splice(gates.indexOf(resolve), 1)
          reject(signal.reason)
        }, { once: true })
      })
    }
    if (task.instruction.startsWith('slow')) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, 400)
        signal.addEventListener('abort', () => { clearTimeout(timer); reject(signal.reason) }, { once: true })
      })
    }
    if (task.instruction.startsWith('bad')) throw new Error('bad task')
    return { result: task.instruction.startsWith('html') ? HTML_RESULT : `done: ${task.instruction}` }
  }
}

async function serve (t: TestContext, options: TestAppOptions = {}): Promise<{ app: FastifyInstance, base: string }> {
  const app = await build(t, { executors, ...options })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/dashboard/` }
}

/** A page in a context of its own at `url`; `prepare` runs first (routes, listeners, init scripts). */
async function open (t: TestContext, browser: Browser, url: string, options: Parameters<Browser['newContext']>[0] = {}, prepare?: (page: Page) => unknown): Promise<Page> {
  // The page's CSP forbids eval, which the tests' waits use; the XSS test checks the CSP header itself.
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 }, bypassCSP: true, ...options })
  t.teardown(() => context.close())
  const page = await context.newPage()
  // A bound on waiting, not a speed claim: a loaded CI host may take seconds to deliver an event.
  page.setDefaultTimeout(30_000)
  await prepare?.(page)
  await page.goto(url)
  return page
}

/** The overview's snapshot request. */
const LIST_ALL = '**/api/v1/tasks/list?session_id=all*'

/** 503 answers (a busy server's) to a page's requests to `glob`, as many as `fail(n)` last said; `on(page)` sets them up. */
function failing (glob: string): { on: (page: Page) => Promise<void>, fail: (times: number) => void, left: () => number } {
  let left = 0
  return {
    on: async (page) => {
      await page.route(glob, async (route) => {
        if (left === 0) return route.continue()
        left--
        return route.fulfill({ status: 503, contentType: 'application/json', body: '{"statusCode":503,"error":"Service Unavailable","message":"busy"}' })
      })
    },
    fail: (times) => { left = times },
    left: () => left
  }
}

/**
 * A TCP proxy in front of the server; `swallowStreams` makes its open event-stream connections
 * drop whatever the server sends from then on while staying open (a dropped NAT entry or a
 * frozen proxy, as the page sees it). Other connections go on working.
 */
async function blackHoleProxy (t: TestContext, target: number): Promise<{ port: number, swallowStreams: () => void, swallowAll: () => void, heal: () => void }> {
  const open = new Set<{ stream: boolean, swallow: boolean }>()
  // Every connection, open or new, delivers nothing back (a dropped route); healed, new ones work again.
  let frozen = false
  const server = net.createServer((client) => {
    const state = { stream: false, swallow: frozen }
    open.add(state)
    const upstream = net.connect(target, '127.0.0.1')
    client.on('data', (chunk: Buffer) => {
      if (chunk.toString('latin1').startsWith('GET /api/v1/tasks/events')) state.stream = true
      upstream.write(chunk)
    })
    upstream.on('data', (chunk: Buffer) => { if (!state.swallow) client.write(chunk) })
    const end = (): void => { open.delete(state); client.destroy(); upstream.destroy() }
    for (const socket of [client, upstream]) socket.on('error', end).on('close', end)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.close(() => { resolve() }) }))
  return {
    port: (server.address() as AddressInfo).port,
    swallowStreams: () => { for (const state of open) if (state.stream) state.swallow = true },
    swallowAll: () => {
      frozen = true
      for (const state of open) state.swallow = true
    },
    heal: () => { frozen = false }
  }
}

/** The event streams a server has open (`now`, the `most` at once), and the Last-Event-ID each one asked to resume from. */
function watchStreams (t: TestContext, app: FastifyInstance): { now: () => number, most: () => number, resumes: Array<string | undefined> } {
  let now = 0
  let most = 0
  const resumes: Array<string | undefined> = []
  const count = (req: IncomingMessage, res: ServerResponse): void => {
    if (!(req.url ?? '').startsWith('/api/v1/tasks/events')) return
    resumes.push(req.headers['last-event-id'] as string | undefined)
    most = Math.max(most, ++now)
    res.once('close', () => { now-- })
  }
  app.server.on('request', count)
  t.teardown(() => { app.server.off('request', count) })
  return { now: () => now, most: () => most, resumes }
}

/**
 * A page script taking Web Locks away (as plain HTTP to a host other than localhost does: not a
 * secure context), and showing the page as hidden or not; `window.__setHidden(hidden)` changes it
 * as switching tabs would. Headless Chromium shows every page as visible, whatever is in front.
 */
const withoutLocks = (hidden: boolean): string => `
  delete Navigator.prototype.locks
  window.__hidden = ${String(hidden)}
  Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get: () => window.__hidden })
  Object.defineProperty(Document.prototype, 'visibilityState', { configurable: true, get: () => window.__hidden ? 'hidden' : 'visible' })
  window.__setHidden = (hidden) => { window.__hidden = hidden; document.dispatchEvent(new Event('visibilitychange')) }`

/** Runs `expression` in the page (as text: this file is compiled without the DOM's types). */
const js = async <T>(page: Page, expression: string): Promise<T> => page.evaluate(expression) as Promise<T>
const progressValue = async (page: Page): Promise<number> => js<number>(page, "document.getElementById('session-progress').value")
const BAR = "document.getElementById('session-progress').value"
const sessionsShown = async (page: Page): Promise<string[]> => js<string[]>(page, "[...document.querySelectorAll('tbody tr')].map((row) => row.dataset.session)")
/** Whether the focused element matches `selector` (never true of the body: focus on nothing). */
const focusIs = async (page: Page, selector: string): Promise<boolean> => js<boolean>(page, `document.activeElement.matches(${JSON.stringify(selector)})`)
/** Notes the focused element, for `focusKept` to compare with. */
const markFocus = async (page: Page): Promise<void> => { await js(page, 'window.__focused = document.activeElement') }
const focusKept = async (page: Page): Promise<boolean> => js<boolean>(page, 'document.activeElement === window.__focused && document.activeElement !== document.body')
/** A moment for the page to draw what it has just received. */
const settle = async (page: Page): Promise<void> => { await js(page, 'new Promise((resolve) => setTimeout(resolve, 100))') }
async function useKey (page: Page, key: string): Promise<void> {
  await page.getByLabel('API key').fill(key)
  await page.getByRole('button', { name: 'Use this key' }).click()
}

async function run (browser: Browser): Promise<void> {
  const { app, base } = await serve(t)

  t.test('create a session from the form; it appears live in the table', async (t) => {
    const page = await open(t, browser, base)
    await page.getByLabel('Session id').fill('from-form')
    await page.getByLabel('Instructions', { exact: true }).fill('1. Research the API\n2. Write code for it')
    await page.getByRole('button', { name: 'Create' }).click()
    await page.locator('#notice', { hasText: 'Added 2 task(s) to from-form' }).waitFor()
    await page.locator('tr[data-session="from-form"]').waitFor()
    t.match(await page.locator('tr[data-session="from-form"]').innerText(), /0\/2 done/)
    // A refused create shows the server's message.
    await page.getByLabel('Session id').fill('all')
    await page.getByLabel('Instructions', { exact: true }).fill('x')
    await page.getByRole('button', { name: 'Create' }).click()
    await page.locator('#error', { hasText: "400: session id 'all' is reserved" }).waitFor()
    t.pass('the server\'s message is shown')
    // Every control has a label.
    t.equal(await js<number>(page, "[...document.querySelectorAll('input, select, textarea')].filter((c) => c.labels.length === 0 && !c.hasAttribute('aria-label')).length"), 0)
  })

  t.test('a create whose answer is lost, sent again from the same form, adds its tasks once (Idempotency-Key)', async (t) => {
    const page = await open(t, browser, base)
    const keys: string[] = []
    let lose = true
    // The first answer is lost on the way back: the server did the create, the page sees a network error.
    await page.route('**/api/v1/tasks/create', async (route) => {
      keys.push(route.request().headers()['idempotency-key'] ?? '')
      const response = await route.fetch()
      if (lose) {
        lose = false
        t.equal(response.status(), 200, 'the server created the session')
        await route.abort('connectionreset')
        return
      }
      await route.fulfill({ response })
    })
    await page.getByLabel('Session id').fill('lost-answer')
    await page.getByLabel('Instructions', { exact: true }).fill('1. Research the API\n2. Write code for it')
    await page.getByRole('button', { name: 'Create' }).click()
    await page.locator('#error:not([hidden])').waitFor()
    t.equal(await page.locator('#error').textContent(), 'the connection to the server was lost before its answer: it may have been done all the same (the page shows it once it is); check before trying again', 'not the browser\'s "Failed to fetch"')
    await page.getByRole('button', { name: 'Create' }).click()
    await page.locator('#notice', { hasText: 'Added 2 task(s) to lost-answer' }).waitFor()
    t.equal(keys.length, 2)
    t.match(keys[0], /^[0-9a-f]{32}$/, 'sent with a key')
    t.equal(keys[1], keys[0], 'the retry sent the same key')
    t.equal((await app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=lost-answer' })).json().total, 2, 'the tasks were added once')
    // The next create from the form is a new request: a new key.
    await page.getByLabel('Session id').fill('lost-answer')
    await page.getByLabel('Instructions', { exact: true }).fill('1. Research the API\n2. Write code for it')
    await page.getByRole('button', { name: 'Create' }).click()
    await page.locator('#notice', { hasText: 'Added 2 task(s) to lost-answer' }).waitFor({ state: 'attached' })
    await waitFor('the third create', () => keys.length === 3)
    t.not(keys[2], keys[0], 'a create after a success has a key of its own')
    await waitFor('four tasks', async () => (await app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=lost-answer' })).json().total === 4)
    // The last answer's handler may still be fulfilling: closing the page under it would throw.
    await page.unrouteAll({ behavior: 'wait' })
  })

  t.test('the totals end on the server\'s figures when an older answer of /stats arrives after a newer one', async (t) => {
    const page = await open(t, browser, base)
    await page.locator('[data-stat="Pending"]').waitFor()
    let delayNext = false
    let delivered = 0
    // One answer, made by the server at once, reaches the page 2.5 s late (a slow moment of the network).
    await page.route('**/api/v1/tasks/stats', async (route) => {
      if (!delayNext) return route.continue()
      delayNext = false
      const response = await route.fetch()
      await new Promise((resolve) => setTimeout(resolve, 2500))
      await route.fulfill({ response })
      delivered++
    })
    delayNext = true
    await createSession(app, 'late-stats', 'one')
    await new Promise((resolve) => setTimeout(resolve, 700))
    t.equal((await post(app, '/execute', { session_id: 'late-stats' })).statusCode, 200)
    await waitFor('the late answer', () => delivered === 1)
    const stats = (await app.inject({ method: 'GET', url: '/api/v1/tasks/stats' })).json()
    const shows = `document.querySelector('[data-stat="Pending"]').textContent === '${String(stats.pending_tasks)}' && document.querySelector('[data-stat="Completed"]').textContent === '${String(stats.completed_tasks)}'`
    await page.waitForFunction(shows, undefined, { timeout: 5000 })
    t.pass('the panel shows what GET /stats says')
    await page.unrouteAll({ behavior: 'wait' })
  })

  t.test('a keyboard user\'s row stays on the page when another session\'s change would push it to the next one, until focus leaves the table', async (t) => {
    const { app: own, base: ownBase } = await serve(t)
    // 21 sessions, each changed after the one before: f20 is the newest, f00 alone on page 2.
    for (let i = 0; i < 21; i++) {
      await createSession(own, `f${String(i).padStart(2, '0')}`, 'one')
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    const page = await open(t, browser, ownBase)
    await page.locator('tr[data-session="f01"]').waitFor()
    t.equal((await sessionsShown(page)).at(-1), 'f01', 'f01 is the last row of page 1')
    await page.locator('tr[data-session="f01"] a').focus()
    await markFocus(page)
    // f00 changes: it is now the newest, which would push f01 to page 2.
    t.equal((await post(own, '/execute', { session_id: 'f00' })).statusCode, 200)
    // The change has reached the page: the totals count it.
    await page.waitForFunction("document.querySelector('[data-stat=\"Completed\"]')?.textContent === '1'")
    await settle(page)
    t.ok(await focusKept(page), 'focus stays on f01\'s link')
    const shown = await sessionsShown(page)
    t.equal(shown[0], 'f00', 'the changed session is first')
    t.equal(shown.at(-1), 'f01', 'and the focused row stays on the page, last')
    t.equal(shown.length, 21)
    // Focus leaves the table: f01 goes to page 2, where it belongs.
    await page.getByLabel('Id starts with').focus()
    await page.waitForFunction("document.querySelectorAll('#session-rows tr').length === 20")
    t.notOk((await sessionsShown(page)).includes('f01'), 'and f01 is on page 2 now')
  })

  t.test('a background run moves the progress bar without a reload; cancel; retry the cancelled task; delete with confirmation', async (t) => {
    // Each task after the first waits for the test, so the run is still going when Cancel is
    // clicked, however late the browser sees its progress.
    await createSession(app, 'live-run', '1. slow one\n2. gate two\n3. gate three\n4. gate four\n5. gate five\n6. gate six')
    const page = await open(t, browser, `${base}#/session/live-run`)
    await page.locator('#session-title', { hasText: 'live-run' }).waitFor()
    await js(page, 'window.marker = 1')
    await page.getByRole('button', { name: 'Run all in background' }).click()
    await page.waitForFunction(`${BAR} > 0`)
    const first = await progressValue(page)
    await waitFor('task 2 to wait at its gate', () => gates.length > 0)
    gates.shift()?.()
    await page.waitForFunction(`${BAR} > ${first}`)
    t.ok(await progressValue(page) > first, 'the bar moved')
    t.equal(await js(page, 'window.marker'), 1, 'without a reload')
    if (SCREENSHOTS) await page.screenshot({ path: `${DOCS}dashboard-session.png`, fullPage: true })

    await page.getByRole('button', { name: 'Cancel' }).click()
    await page.locator('#notice', { hasText: 'Cancelled' }).waitFor()
    const cancelled = page.locator('li.task', { has: page.locator('[data-status="Failed"]') })
    await cancelled.first().waitFor()
    t.match(await cancelled.first().innerText(), /Error: cancelled/)
    await page.waitForFunction("!document.getElementById('session-summary').textContent.includes('running')")

    await cancelled.first().getByRole('button', { name: /Retry task/ }).click()
    await page.locator('#notice', { hasText: /pending again/ }).waitFor()
    await page.waitForFunction("document.querySelectorAll('[data-status=Failed]').length === 0")
    t.pass('the cancelled task is Pending again')
    await page.locator('li.task', { hasText: 'retried 1' }).waitFor()
    t.pass('and says it was retried')

    // The session's reads are held from here on: a dismissed confirmation must leave nothing in
    // flight (it once reloaded the session, and a click meanwhile was ignored as a second delete).
    const held: Array<() => Promise<void>> = []
    await page.route('**/api/v1/tasks/list?session_id=live-run', (route) => { held.push(() => route.continue()) })
    t.teardown(() => Promise.all(held.map(async (release) => release().catch(() => {}))))
    await page.getByRole('button', { name: 'Delete…' }).click()
    const question = page.getByRole('dialog')
    t.match(await question.innerText(), /Delete session live-run and its file\? This cannot be undone\./)
    t.ok(await focusIs(page, '#confirm-cancel'), 'the question opens on Cancel')
    await question.getByRole('button', { name: 'Cancel' }).click()
    await question.waitFor({ state: 'hidden' })
    t.ok(await page.locator('#session').isVisible(), 'dismissed: still there')
    t.equal(await page.getByRole('button', { name: 'Delete…' }).getAttribute('aria-busy'), null, 'and not busy')
    await page.getByRole('button', { name: 'Delete…' }).click()
    await page.keyboard.press('Escape')
    await question.waitFor({ state: 'hidden' })
    t.ok(await page.locator('#session').isVisible(), 'Escape dismisses it too')
    await page.getByRole('button', { name: 'Delete…' }).click()
    await question.getByRole('button', { name: 'Delete' }).click()
    await page.locator('#overview').waitFor()
    t.equal(await page.locator('tr[data-session="live-run"]').count(), 0, 'gone from the table')
    t.equal((await app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=live-run' })).statusCode, 404)
  })

  t.test('a large session\'s page follows each progress event at once, and fetches the whole session less often', async (t) => {
    const tasks = Array.from({ length: 1000 }, (_, i) => ({ instruction: `gate ${i + 1}` }))
    t.equal((await post(app, '/create', { session_id: 'big', tasks })).statusCode, 200)
    t.teardown(async () => {
      await post(app, '/cancel', { session_id: 'big' })
      await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/big' })
    })
    const page = await open(t, browser, `${base}#/session/big`)
    await page.locator('li.task').nth(999).waitFor({ state: 'attached' })
    // From here the session's reads are held: only the events can move the bar.
    const held: Array<() => Promise<void>> = []
    await page.route('**/api/v1/tasks/list?session_id=big', (route) => { held.push(() => route.continue()) })
    t.teardown(() => Promise.all(held.map(async (release) => release().catch(() => {}))))
    t.equal((await post(app, '/execute-all', { session_id: 'big', wait: false })).statusCode, 202)
    const started = Date.now()
    let last = 0
    for (let i = 0; i < 8; i++) {
      await waitFor(`task ${i + 1} at its gate`, () => gates.length > 0)
      gates.shift()?.()
      await page.waitForFunction(`${BAR} > ${last}`)
      last = await progressValue(page)
      await sleep(400)
    }
    const seconds = (Date.now() - started) / 1000
    // Counted with the time: a fetch due just after (while the checks below wait on the page) is not in it.
    const fetched = held.length
    t.equal(last, 0.8, 'the bar followed each completion (8 of 1,000 tasks)')
    t.match(await page.locator('#session-summary').innerText(), /^8\/1000 done · 0 failed · 1 in progress · 991 pending · running$/u, 'and the counts')
    // A fetch of 1,000 tasks at most every 4 s (one per second for 250 tasks or fewer).
    t.ok(fetched <= 1 + Math.floor(seconds / 4), `the whole session was fetched ${fetched} times in ${seconds.toFixed(2)} s of events`)

    // A load due by now: its /progress answers (running, 8 done), its /list is held.
    await waitFor('a load of the session, held', () => held.length > 0)
    // Cancelled elsewhere (here through the API), its reads still held: the page says so at once.
    t.equal((await post(app, '/cancel', { session_id: 'big' })).statusCode, 200)
    await page.waitForFunction("!document.getElementById('session-summary').textContent.includes('running')")
    t.ok(await page.getByRole('button', { name: 'Cancel' }).isDisabled(), 'Cancel is off')
    // The held loads answer now: each read its /progress long ago, its tasks now. The page keeps the newest state.
    const answered = page.waitForResponse('**/api/v1/tasks/list?session_id=big')
    for (const release of held.splice(0)) await release()
    await answered
    await sleep(500)
    t.equal(await page.locator('#session-summary').innerText(), '8/1000 done · 1 failed · 991 pending', 'the counts of the tasks read, not of an older /progress')
  })

  t.test('a session page names itself in the tab title; a preview never splits an emoji', async (t) => {
    const instruction = `${'a'.repeat(79)}🙂 and more`
    await post(app, '/create', { session_id: 'titled', tasks: [{ instruction }] })
    const page = await open(t, browser, `${base}#/session/titled`)
    await page.locator('li.task').waitFor()
    t.equal(await page.title(), 'titled · taskvault')
    t.equal(await page.locator('li.task details .preview').first().textContent(), `${'a'.repeat(79)}🙂…`)
    await page.goto(`${base}#/`)
    await waitFor('the overview\'s title', async () => await page.title() === 'taskvault')
  })

  t.test('a result holding HTML is shown as text and runs nothing', async (t) => {
    await createSession(app, 'html-result', 'html <b>instruction</b>')
    await post(app, '/execute', { session_id: 'html-result' })
    const page = await open(t, browser, `${base}#/session/html-result`)
    const result = page.locator('details.result')
    await result.locator('summary').click()
    t.equal(await result.locator('pre').textContent(), HTML_RESULT)
    t.equal(await page.locator('li.task details').first().locator('pre').textContent(), 'html <b>instruction</b>')
    t.equal(await page.locator('#tasks img, #tasks script, #tasks b').count(), 0, 'no element made from the data')
    t.equal(await js(page, 'window.__xss'), undefined, 'nothing ran')
    // And a second line of defence: the page may run only its own script.
    const served = await page.request.get(base)
    t.match(served.headers()['content-security-policy'], /script-src 'self'/)
  })

  t.test('a snapshot that fails leaves no stream behind: one stream at a time while the page retries, and it catches up', async (t) => {
    // This page's streams as the server sees them: requests for /events whose responses are open.
    let streams = 0
    let most = 0
    const count = (req: IncomingMessage, res: ServerResponse): void => {
      if (!(req.url ?? '').startsWith('/api/v1/tasks/events')) return
      most = Math.max(most, ++streams)
      res.once('close', () => { streams-- })
    }
    app.server.on('request', count)
    t.teardown(() => { app.server.off('request', count) })
    // The first snapshots fail after the stream has opened (as a busy server's 503 would).
    const lists = failing(LIST_ALL)
    lists.fail(3)
    const page = await open(t, browser, base, {}, lists.on)
    await waitFor('the failing snapshots to be used up', () => lists.left() === 0, 30_000)
    await createSession(app, 'after-failures', 'x')
    await page.locator('tr[data-session="after-failures"]').waitFor()
    t.ok(most <= 1, `at most one stream of this page open at once (${most})`)
  })

  t.test('a stream that goes silent without closing is dropped after three heartbeats; the page resumes from its last id', async (t) => {
    const quiet = await serve(t, { config: { TASK_EVENTS_HEARTBEAT_MS: 500 } })
    const proxy = await blackHoleProxy(t, Number(new URL(quiet.base).port))
    // The stream requests the server sees, with the id each resumes from.
    const resumes: Array<string | undefined> = []
    const count = (req: IncomingMessage): void => {
      if ((req.url ?? '').startsWith('/api/v1/tasks/events')) resumes.push(req.headers['last-event-id'] as string | undefined)
    }
    quiet.app.server.on('request', count)
    const page = await open(t, browser, quiet.base.replace(/:\d+\//u, `:${proxy.port}/`))
    await createSession(quiet.app, 'before-silence', 'x')
    await page.locator('tr[data-session="before-silence"]').waitFor()
    // The first row may come from the snapshot; once it is shown and the stream is open, the next can only come as an event, with an id.
    await waitFor('the page\'s stream', () => resumes.length > 0)
    await createSession(quiet.app, 'by-event', 'x')
    await page.locator('tr[data-session="by-event"]').waitFor()
    const before = resumes.length
    // The connection stays open but nothing the server sends reaches the page any more.
    proxy.swallowStreams()
    await createSession(quiet.app, 'during-silence', 'x')
    await page.locator('tr[data-session="during-silence"]').waitFor()
    t.ok(resumes.length > before, `the page opened a new stream (${resumes.length - before})`)
    t.type(resumes.at(-1), 'string', 'resuming from the last id it had')
  })

  t.test('after a network drop, each dead connection the browser kept costs one short wait, not a growing backoff: the page is live again soon after the network heals', async (t) => {
    const quiet = await serve(t, { config: { TASK_EVENTS_HEARTBEAT_MS: 500 } })
    const proxy = await blackHoleProxy(t, Number(new URL(quiet.base).port))
    const streams = watchStreams(t, quiet.app)
    const page = await open(t, browser, quiet.base.replace(/:\d+\//u, `:${proxy.port}/`))
    await createSession(quiet.app, 'before-drop', 'x')
    await page.locator('tr[data-session="before-drop"]').waitFor()
    await waitFor('the page\'s stream', () => streams.resumes.length > 0)
    // Every connection the browser holds to the server (up to six, opened to load the page) now
    // answers nothing, and stays so once the network heals: the browser sends attempts over them.
    proxy.swallowAll()
    // The page notices the silence (three heartbeats) and tries again, on a connection that answers nothing either.
    const before = streams.resumes.length
    await waitFor('an attempt to resume while the network is down', () => streams.resumes.length > before, 10_000)
    const attempts: number[] = []
    const attempt = (req: IncomingMessage): void => { if ((req.url ?? '').startsWith('/api/v1/tasks/events')) attempts.push(Date.now()) }
    quiet.app.server.on('request', attempt)
    t.teardown(() => { quiet.app.server.off('request', attempt) })
    await createSession(quiet.app, 'after-drop', 'x')
    proxy.heal()
    const healed = Date.now()
    await page.locator('tr[data-session="after-drop"]').waitFor({ timeout: 60_000 })
    t.ok(Date.now() - healed < 20_000, `live again ${Date.now() - healed} ms after the network healed`)
    t.equal(await page.locator('#live').textContent(), 'live')
    // Each dead connection costs three heartbeats (1.5 s) and RETRY_FIRST_MS, some 2 s; backing
    // off as for a refusal would add 1, 2, 4, 8 s.
    // The browser may send the first one over a fresh connection, which answers at once.
    const gaps = attempts.slice(1).map((at, i) => at - (attempts[i] ?? at))
    t.ok(attempts.length >= 1, `${attempts.length} attempts once healed`)
    t.ok(gaps.every((gap) => gap < 3_000), `between attempts: ${gaps.join(', ')} ms`)
  })

  t.test('a reload mid-run catches up with the run', async (t) => {
    await createSession(app, 'reloaded', '1. slow a\n2. slow b\n3. slow c\n4. slow d')
    const page = await open(t, browser, `${base}#/session/reloaded`)
    t.equal((await post(app, '/execute-all', { session_id: 'reloaded', wait: false })).statusCode, 202)
    await page.waitForFunction(`${BAR} > 0`)
    await page.reload()
    await page.waitForFunction(`${BAR} === 100`)
    await page.locator('#session-summary', { hasText: '4/4 done' }).waitFor()
    await page.getByRole('link', { name: '← All sessions' }).click()
    await page.locator('tr[data-session="reloaded"]', { hasText: '100%' }).waitFor()
    t.pass('the session ends at 100% in both views')
  })

  t.test('a session archived while its page is open, after a run it watched, says so without a reload', async (t) => {
    // A server of its own: an archive pass takes every finished session, and the other tests' stay active.
    const own = await serve(t)
    await createSession(own.app, 'archived-live', '1. slow a\n2. slow b')
    const page = await open(t, browser, `${own.base}#/session/archived-live`)
    await page.locator('#session-title', { hasText: 'archived-live' }).waitFor()
    await js(page, 'window.marker = 1')
    t.equal((await post(own.app, '/execute-all', { session_id: 'archived-live', wait: false })).statusCode, 202)
    await page.locator('#session-summary', { hasText: '2/2 done' }).waitFor()
    // The last task's progress comes before the run's own end is saved: a pass meanwhile leaves a running session be.
    await waitFor('the run to end', () => !own.app.taskManager.isRunning('archived-live'))
    // Archiving changes no time of the session: the run's last progress event must not be drawn over it.
    t.match((await post(own.app, '/archive', { older_than_days: 0 })).json(), { archived_ids: ['archived-live'] })
    await page.locator('#session-summary', { hasText: 'archived' }).waitFor()
    t.equal(await js(page, 'window.marker'), 1, 'without a reload')
  })

  t.test('a background run waiting for storage says so, on its page and its row, after a reload too, until it ends', async (t) => {
    const fs = faultFs()
    // One try a minute: no progress event comes while the page reloads, so its snapshot must say so itself.
    const own = await serve(t, { fs, config: { TASK_RUN_RETRY_MS: 60_000, TASK_RUN_RETRY_MAX_MS: 60_000 } })
    await createSession(own.app, 'stalled', '1. gate a\n2. b')
    const page = await open(t, browser, `${own.base}#/session/stalled`)
    await page.locator('#session-title', { hasText: 'stalled' }).waitFor()
    t.equal((await post(own.app, '/execute-all', { session_id: 'stalled', wait: false })).statusCode, 202)
    await waitFor('task a to wait at its gate', () => gates.length > 0)
    // The disk fills while task a runs: its result cannot be saved, and the run waits for storage.
    fs.fail('write', 'ENOSPC', { path: tempOf('stalled') })
    gates.shift()?.()
    await page.locator('#session-summary', { hasText: 'waiting for storage (the disk is full or failing)' }).waitFor()
    t.pass('the session page says the run waits for storage')
    await page.getByRole('link', { name: '← All sessions' }).click()
    const row = page.locator('tr[data-session="stalled"]')
    await row.locator('.badge.waiting', { hasText: 'waiting for storage' }).waitFor()
    t.pass('its row says so too')
    await page.reload()
    await row.locator('.badge.waiting').waitFor()
    t.pass('and still does after a reload, from the snapshot')
    fs.heal()
    t.equal((await post(own.app, '/cancel', { session_id: 'stalled' })).statusCode, 200)
    await row.locator('.badge.running').waitFor({ state: 'detached' })
    t.equal(await row.locator('.badge.waiting').count(), 0, 'once the run ends, the row no longer waits')
  })

  t.test('filters and search; usable at 375 px and in the dark scheme', async (t) => {
    await createSession(app, 'has-failure', 'bad one')
    await post(app, '/execute', { session_id: 'has-failure' })
    const page = await open(t, browser, base)
    await page.locator('tr[data-session="has-failure"]').waitFor()
    await page.getByLabel('Show').selectOption('failed')
    t.same(await sessionsShown(page), ['has-failure'])
    await page.getByLabel('Show').selectOption('all')
    await page.getByLabel('Id starts with').fill('from')
    t.same(await sessionsShown(page), ['from-form'])
    await page.getByLabel('Id starts with').fill('')
    await page.locator('#uptime').waitFor()
    if (SCREENSHOTS) {
      await mkdir(DOCS, { recursive: true })
      await page.screenshot({ path: `${DOCS}dashboard-overview.png`, fullPage: true })
    }
    const small = await open(t, browser, base, { viewport: { width: 375, height: 740 }, colorScheme: 'dark' })
    await small.locator('tr[data-session="has-failure"]').waitFor()
    t.ok(await js(small, 'document.documentElement.scrollWidth <= 375'), 'no sideways scrolling at 375 px')
    t.not(await js(small, 'getComputedStyle(document.body).backgroundColor'), await js(page, 'getComputedStyle(document.body).backgroundColor'), 'dark colours')
    // The keyboard reaches the form: Tab from the search field lands on a control, never on nothing.
    await small.getByLabel('Id starts with').focus()
    await small.keyboard.press('Tab')
    t.not(await js(small, 'document.activeElement.tagName'), 'BODY')
    await small.locator('#uptime').waitFor()
    if (SCREENSHOTS) await small.screenshot({ path: `${DOCS}dashboard-mobile-dark.png`, fullPage: true })
    // A session page with a long id (ids run to 128 characters, no space in them) and an error showing it.
    const longId = `nightly_${'report_'.repeat(17)}x`
    await createSession(app, longId, 'x')
    await small.goto(`${base}#/session/${longId}`)
    await small.locator('#session-title', { hasText: longId }).waitFor()
    // Enabled and clicked in one step: a live update in between would draw it disabled again.
    await small.getByRole('button', { name: 'Retry failed' }).evaluate((button) => { (button as unknown as { disabled: boolean }).disabled = false; (button as unknown as { click: () => void }).click() })
    await small.locator('#error', { hasText: 'no failed task' }).waitFor()
    t.ok(await js(small, 'document.documentElement.scrollWidth <= 375'), `no sideways scrolling on a ${longId.length}-character id's page, its error shown`)
    // Text on the dark scheme's light buttons is dark: readable (WCAG AA, 4.5:1).
    const contrast = await js<number[]>(small, `[...document.querySelectorAll('#act-execute, #act-delete')].map((button) => {
      const rgb = (value) => value.match(/[0-9.]+/g).slice(0, 3).map(Number).map((c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4 })
      const lum = ([r, g, b]) => 0.2126 * r + 0.7152 * g + 0.0722 * b
      const style = getComputedStyle(button)
      const [a, b] = [lum(rgb(style.color)), lum(rgb(style.backgroundColor))].sort((x, y) => y - x)
      return (a + 0.05) / (b + 0.05)
    })`)
    t.ok(contrast.every((ratio) => ratio >= 4.5), `button text contrast in the dark scheme: ${contrast.map((ratio) => ratio.toFixed(2)).join(', ')} (at least 4.5)`)
  })

  t.test('with API keys: the page asks for one, refuses a wrong one, and never puts it in a URL', async (t) => {
    const keyed = await serve(t, { config: { TASK_API_KEYS: 'right-key' } })
    await createSession(keyed.app, 'secret-session', 'x').catch(() => {})
    const urls: string[] = []
    const page = await open(t, browser, keyed.base, {}, (page) => page.on('request', (request) => urls.push(request.url())))
    await page.locator('#key-form').waitFor()
    t.match(await page.locator('#key-message').innerText(), /needs an API key/)
    await useKey(page, 'wrong-key')
    await page.locator('#key-message', { hasText: 'refused' }).waitFor()
    t.match(await page.locator('#key-message').innerText(), /invalid API key/)
    await useKey(page, 'right-key')
    await page.locator('#overview').waitFor()
    await page.locator('#live', { hasText: 'live' }).waitFor()
    await keyed.app.inject({ method: 'POST', url: '/api/v1/tasks/create', headers: { authorization: 'Bearer right-key' }, payload: { session_id: 'keyed-live', instructions: 'y' } })
    await page.locator('tr[data-session="keyed-live"]').waitFor()
    t.notOk(urls.some((url) => url.includes('key')), 'no key in any URL')
  })

  t.test('a key revoked while the page is open: the totals ask for a new one once, not again and again, and the form keeps its message', async (t) => {
    const keyed = await serve(t, { config: { TASK_API_KEYS: 'right-key' } })
    const page = await open(t, browser, keyed.base)
    await page.locator('#key-form').waitFor()
    await useKey(page, 'right-key')
    await page.locator('#overview').waitFor()
    await page.locator('[data-stat="Pending"]').waitFor()
    // From now on /stats refuses the key, as a server whose keys changed does.
    let refusals = 0
    await page.route('**/api/v1/tasks/stats', async (route) => {
      refusals++
      await route.fulfill({ status: 401, contentType: 'application/json', body: JSON.stringify({ statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'invalid API key' }) })
    })
    await keyed.app.inject({ method: 'POST', url: '/api/v1/tasks/create', headers: { authorization: 'Bearer right-key' }, payload: { session_id: 'revoked', instructions: 'y' } })
    await page.locator('#key-message', { hasText: 'refused' }).waitFor()
    // Past the retry of a failed load (STATS_RETRY_MS, 3 s).
    await new Promise((resolve) => setTimeout(resolve, 3600))
    t.equal(refusals, 1, 'the refused key was not sent again')
    t.match(await page.locator('#key-message').innerText(), /refused/)
    await page.unrouteAll({ behavior: 'wait' })
  })

  t.test('a key refused while a session page is open: a link or Back to the overview leaves only the key form, until a key is taken', async (t) => {
    const keyed = await serve(t, { config: { TASK_API_KEYS: 'right-key' } })
    await keyed.app.inject({ method: 'POST', url: '/api/v1/tasks/create', headers: { authorization: 'Bearer right-key' }, payload: { session_id: 'keyed', instructions: 'y' } })
    const page = await open(t, browser, keyed.base)
    await page.locator('#key-form').waitFor()
    await useKey(page, 'right-key')
    await page.locator('#overview').waitFor()
    await page.evaluate("location.hash = '#/session/keyed'")
    await page.locator('#session-summary', { hasText: '0/1 done' }).waitFor()
    // From now on every call refuses the key, as a server whose keys changed does.
    await page.route('**/api/v1/tasks/**', async (route) => {
      await route.fulfill({ status: 401, contentType: 'application/json', body: JSON.stringify({ statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'invalid API key' }) })
    })
    // A change elsewhere: the page's next loads are refused.
    await keyed.app.inject({ method: 'POST', url: '/api/v1/tasks/create', headers: { authorization: 'Bearer right-key' }, payload: { session_id: 'keyed', instructions: 'z' } })
    await page.locator('#key-message', { hasText: 'refused' }).waitFor()
    await page.evaluate("location.hash = '#/'")
    await settle(page)
    t.same(await js(page, "['key-form', 'overview', 'session'].map((id) => document.getElementById(id).hidden)"), [false, true, true], 'the key form alone')
    t.match(await page.locator('#live').innerText(), /key/, 'the badge says what it waits for, not a reconnect')
    await page.unrouteAll({ behavior: 'wait' })
    await useKey(page, 'right-key')
    await page.locator('#overview').waitFor()
    t.equal(await js(page, "document.getElementById('key-form').hidden"), true, 'a key taken: the page the address names')
  })

  t.test('a key no header can carry is refused with the reason; one already saved brings the form back', async (t) => {
    const keyed = await serve(t, { config: { TASK_API_KEYS: 'right-key' } })
    // A zero-width space pasted with the key: fetch would throw on it before sending anything.
    const page = await open(t, browser, keyed.base)
    await page.locator('#key-form').waitFor()
    await useKey(page, 'right\u200bkey')
    await page.locator('#key-error', { hasText: 'U+200B' }).waitFor()
    t.match(await page.locator('#key-error').innerText(), /character 6 of this one is U\+200B/)
    t.equal(await js(page, "sessionStorage.getItem('taskvault.apiKey')"), null, 'not kept')
    await useKey(page, 'right-key')
    await page.locator('#overview').waitFor()
    t.ok(await page.locator('#key-form').isHidden(), 'the form took the next key')
    // A curly quote saved before this check existed: the page asks again rather than failing on every load.
    const saved = await open(t, browser, keyed.base, {}, (page) => page.addInitScript(`sessionStorage.setItem('taskvault.apiKey', ${JSON.stringify('right\u2019key')})`))
    await saved.locator('#key-form').waitFor()
    t.match(await saved.locator('#key-message').innerText(), /saved API key cannot be sent.*U\+2019/)
    await useKey(saved, 'right-key')
    await saved.locator('#overview').waitFor()
    t.pass('and takes a good key')
  })

  t.test('live events change rows and tasks in place: focus stays put and an opened result stays open', async (t) => {
    await createSession(app, 'in-place', '1. first\n2. gate second')
    await post(app, '/execute', { session_id: 'in-place' })
    const page = await open(t, browser, base)
    // The overview: a keyboard user on a row's link while another session arrives above it, then
    // that row's own session changes and it moves to the top.
    await page.getByRole('link', { name: 'in-place', exact: true }).focus()
    await markFocus(page)
    await createSession(app, 'in-place-other', 'x')
    await page.locator('tr[data-session="in-place-other"]').waitFor()
    await createSession(app, 'in-place', '3. more')
    await page.locator('tr[data-session="in-place"]', { hasText: '1/3 done' }).waitFor()
    t.same((await sessionsShown(page)).slice(0, 2), ['in-place', 'in-place-other'], 'the row moved to the top')
    t.ok(await focusKept(page), 'focus is still on its link')
    // The session page: the first task's result opened (and focused), while the next task starts
    // and another session changes.
    await page.getByRole('link', { name: 'in-place', exact: true }).click()
    const result = page.locator('li.task').first().locator('details.result')
    await result.locator('summary').click()
    await markFocus(page)
    await post(app, '/execute-all', { session_id: 'in-place', wait: false })
    await page.locator('[data-status="InProgress"]').waitFor()
    await createSession(app, 'in-place-other', 'y')
    await page.locator('tr[data-session="in-place-other"]', { hasText: '0/2 done' }).waitFor({ state: 'attached' })
    t.ok(await result.evaluate((details) => (details as unknown as { open: boolean }).open), 'the result is still open')
    t.ok(await focusKept(page), 'focus is still on its summary')
    await post(app, '/cancel', { session_id: 'in-place' })
  })

  t.test('focus follows page changes and actions, never left on nothing', async (t) => {
    await createSession(app, 'focus-moves', '1. bad one\n2. gate two')
    await post(app, '/execute', { session_id: 'focus-moves' })
    const page = await open(t, browser, base)
    await page.getByRole('link', { name: 'focus-moves', exact: true }).press('Enter')
    await page.locator('#session-title', { hasText: 'focus-moves' }).waitFor()
    t.ok(await focusIs(page, '#session-title'), 'following a link: on the session\'s heading')
    await page.locator('#act-run:enabled').press('Enter')
    await page.locator('#act-cancel:enabled').waitFor()
    t.ok(await focusIs(page, '#act-cancel'), 'Run all, disabled by its run, hands focus to Cancel')
    await page.locator('#act-cancel').press('Enter')
    await page.locator('#act-cancel:disabled').waitFor()
    t.ok(await focusIs(page, '#session .actions button:enabled'), 'Cancel, disabled once done, hands focus to an action still open')
    const first = page.locator('li.task').first()
    await first.getByRole('button', { name: 'Retry task #1' }).press('Enter')
    await first.locator('[data-status="Pending"]').waitFor()
    t.ok(await focusIs(page, 'li.task:first-child'), 'retrying a task: on the task, its button gone')
    await page.getByRole('link', { name: '← All sessions' }).press('Enter')
    await page.locator('#overview').waitFor()
    t.ok(await focusIs(page, 'tr[data-session="focus-moves"] a'), 'back on the overview: on the row of the session left')
    await page.getByRole('link', { name: 'focus-moves', exact: true }).click()
    await page.locator('#session-title', { hasText: 'focus-moves' }).waitFor()
    await page.locator('#act-delete:enabled').press('Enter')
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click()
    await page.locator('#overview').waitFor()
    t.ok(await focusIs(page, '#sessions-title'), 'after a delete: on the list\'s heading')
  })

  t.test('a session page shows its own session only: an unknown one none of the last one\'s figures, an older answer never over a newer', async (t) => {
    await createSession(app, 'figures', '1. one\n2. bad two\n3. three')
    const page = await open(t, browser, `${base}#/session/figures`)
    await page.locator('#session-summary', { hasText: '0/3 done' }).waitFor()
    // Two loads overlap: the first one's answer is taken from the server, then held back until a
    // newer one has been drawn.
    const held = deferred<BrowserRequest>()
    const release = deferred()
    await page.route('**/api/v1/tasks/list?session_id=figures', async (route) => {
      const response = await route.fetch()
      held.resolve(route.request())
      await release.promise
      await route.fulfill({ response })
    }, { times: 1 })
    await post(app, '/execute', { session_id: 'figures' })
    const older = await held.promise
    await post(app, '/execute', { session_id: 'figures' })
    await page.locator('#session-summary', { hasText: '1/3 done · 1 failed' }).waitFor()
    const answered = page.waitForEvent('requestfinished', (request) => request === older)
    release.resolve()
    await answered
    await settle(page)
    t.match(await page.locator('#session-summary').innerText(), /1\/3 done · 1 failed/, 'the older answer, come last, is not drawn')
    // On to a session that does not exist.
    await js(page, "location.hash = '#/session/typo'")
    await page.getByText("session 'typo' not found").first().waitFor()
    t.equal(await page.locator('#session-summary').innerText(), "session 'typo' not found", 'no counts of the last session')
    t.equal(await progressValue(page), 0, 'its bar empty')
    t.same(await js(page, "[...document.querySelectorAll('#session .actions button:enabled')].map((button) => button.id)"), [], 'every action disabled')
    t.equal(await page.locator('li.task').count(), 0, 'no tasks')
  })

  t.test('a malformed session link shows no session, and the page still follows the stream', async (t) => {
    const page = await open(t, browser, `${base}#/session/%E0`)
    await page.locator('#session').waitFor()
    t.equal(await page.locator('#session-summary').innerText(), "session '%E0' not found")
    await js(page, "location.hash = '#/'")
    await page.locator('#overview').waitFor()
    await createSession(app, 'after-bad-link', 'x')
    await page.locator('tr[data-session="after-bad-link"]').waitFor()
    t.pass('a session created since is shown')
  })

  t.test('a double-click sends an action once; an error of a background load goes once loads succeed again, a user action\'s stays; no console error', async (t) => {
    const errors: string[] = []
    const detail = failing('**/api/v1/tasks/list?session_id=twice*')
    const page = await open(t, browser, base, {}, async (page) => {
      page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
      await detail.on(page)
    })
    await page.getByLabel('Session id').fill('twice')
    await page.getByLabel('Instructions', { exact: true }).fill('1. one\n2. two')
    await page.getByRole('button', { name: 'Create' }).dblclick()
    await page.locator('tr[data-session="twice"]').waitFor()
    await settle(page)
    t.equal(app.taskManager.progress('twice').total, 2, 'the tasks were added once')

    await page.getByRole('link', { name: 'twice', exact: true }).click()
    await page.locator('#session-title', { hasText: 'twice' }).waitFor()
    // The opening's own load done first.
    await page.locator('li.task').nth(1).waitFor()
    await settle(page)
    // A refresh after an event fails (a moment's 503): shown, then gone once the next one succeeds.
    detail.fail(1)
    await createSession(app, 'twice', '3. three')
    await page.locator('#error', { hasText: 'busy' }).waitFor()
    await createSession(app, 'twice', '4. four')
    await page.locator('#error').waitFor({ state: 'hidden' })
    t.pass('a background load\'s error went once a load succeeded')
    // A user action's error stays while events come and the page refreshes.
    await page.getByRole('button', { name: 'Retry failed' }).evaluate((button) => { (button as unknown as { disabled: boolean }).disabled = false; (button as unknown as { click: () => void }).click() })
    await page.locator('#error', { hasText: 'no failed task' }).waitFor()
    await createSession(app, 'twice', '5. five')
    await page.locator('li.task').nth(4).waitFor()
    await js(page, 'new Promise((resolve) => setTimeout(resolve, 1500))')
    t.ok(await page.locator('#error', { hasText: 'no failed task' }).isVisible(), 'the action\'s error is still shown')
    // The 503 and the 409 above are the browser's own lines for answers the test asked for.
    t.same(errors.filter((text) => !/status of (409|503)\b/.test(text)), [], 'nothing else in the console (a missing icon would be a 404 there)')
  })

  t.test('a session page whose opening load fails says why, and the error goes once a later load succeeds', async (t) => {
    await createSession(app, 'opening', '1. one')
    const detail = failing('**/api/v1/tasks/progress?session_id=opening')
    const page = await open(t, browser, `${base}#/session/opening`, {}, async (page) => {
      await detail.on(page)
      detail.fail(1)
    })
    await waitFor('the opening load refused', () => detail.left() === 0)
    // Drawn by a later load (the one after the snapshot, or after an event).
    await createSession(app, 'opening', '2. two')
    await page.locator('li.task').nth(1).waitFor()
    await page.locator('#error').waitFor({ state: 'hidden' })
    t.equal(await page.locator('#error').textContent(), '503: busy', 'the refusal was shown')
  })

  t.test('an action in flight on one session leaves the same button free on another session\'s page', async (t) => {
    await createSession(app, 'busy-a', 'gate a')
    await createSession(app, 'busy-b', 'quick b')
    const page = await open(t, browser, `${base}#/session/busy-a`)
    await page.locator('#session-title', { hasText: 'busy-a' }).waitFor()
    await page.getByRole('button', { name: 'Execute next' }).click()
    await page.locator('[data-status="InProgress"]').waitFor()
    t.equal(await page.getByRole('button', { name: 'Execute next' }).getAttribute('aria-busy'), 'true', 'busy on its own session')
    await page.goto(`${base}#/session/busy-b`)
    await page.locator('#session-title', { hasText: 'busy-b' }).waitFor()
    await page.locator('[data-status="Pending"]').waitFor()
    t.equal(await page.getByRole('button', { name: 'Execute next' }).getAttribute('aria-busy'), null, 'free on another session')
    await page.getByRole('button', { name: 'Execute next' }).click()
    await page.locator('[data-status="Completed"]').waitFor()
    t.pass('the other session\'s task ran')
    for (const release of gates.splice(0)) release()
  })

  t.test('a reset whose reload fails (a moment\'s 503) does not leave the overview stale', async (t) => {
    const lists = failing(LIST_ALL)
    let streams = 0
    const page = await open(t, browser, base, {}, async (page) => {
      await lists.on(page)
      await page.route('**/api/v1/tasks/events', async (route) => {
        streams++
        // The first stream ends at once, its last id from another process lifetime: the page
        // comes back with it and is sent a reset.
        if (streams === 1) return route.fulfill({ status: 200, contentType: 'text/event-stream', body: 'id: gone-1\n\n' })
        if (streams === 2) {
          // Changed while the page was away (its events come before the reset), and the reload
          // after the reset fails once.
          await createSession(app, 'while-away', 'x')
          lists.fail(1)
        }
        return route.continue()
      })
    })
    await page.locator('tr[data-session="while-away"]').waitFor()
    t.equal(lists.left(), 0, 'shown after the failed reload')
    t.ok(streams >= 3, `by a stream opened afresh (${streams})`)
  })

  t.test('more than six tabs of one browser share one event stream: every tab loads, actions answer in each, and a tab that takes the stream over resumes from the last id', async (t) => {
    const tabbed = await serve(t)
    const streams = watchStreams(t, tabbed.app)
    await createSession(tabbed.app, 'tabs', '1. one\n2. two\n3. three')
    // One browser profile: six HTTP/1.1 connections to the server for all of its tabs.
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 }, bypassCSP: true })
    t.teardown(() => context.close())
    const pages: Page[] = []
    for (let i = 0; i < 8; i++) {
      const page = await context.newPage()
      page.setDefaultTimeout(30_000)
      await page.goto(`${tabbed.base}#/session/tabs`)
      await page.locator('#session-summary', { hasText: '0/3 done' }).waitFor()
      pages.push(page)
    }
    t.pass('eight tabs loaded')
    const [first, ...others] = pages as [Page, ...Page[]]
    await others.at(-1)?.getByRole('button', { name: 'Execute next' }).click()
    for (const page of pages) await page.locator('#session-summary', { hasText: '1/3 done' }).waitFor()
    t.pass('an action in the eighth tab answered, and every tab shows it live')
    t.equal(streams.most(), 1, 'one stream for all of them')
    // The tab reading the stream closes: another takes it over, from the last event passed on.
    const before = streams.resumes.length
    await first.close()
    await waitFor('another tab to open the stream', () => streams.resumes.length > before)
    t.type(streams.resumes.at(-1), 'string', 'resuming from the last id')
    await post(tabbed.app, '/execute', { session_id: 'tabs' })
    for (const page of others) await page.locator('#session-summary', { hasText: '2/3 done' }).waitFor()
    t.pass('and every tab left follows it')
    // The closed tab's connection may be seen closing just after the new stream opens: one once it has.
    await waitFor('one stream open', () => streams.now() === 1)
    t.equal(streams.now(), 1, 'one stream again after the takeover')
  })

  t.test('a Delete question open in the tab that reads the stream for all: the other tabs go on updating live', async (t) => {
    const tabbed = await serve(t)
    await createSession(tabbed.app, 'asked', 'one')
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 }, bypassCSP: true })
    t.teardown(() => context.close())
    // The first tab takes the stream (a Web Lock) and passes its events on to the others.
    const asking = await context.newPage()
    asking.setDefaultTimeout(30_000)
    await asking.goto(`${tabbed.base}#/session/asked`)
    await asking.locator('#session-summary', { hasText: '0/1 done' }).waitFor()
    const watching = await context.newPage()
    watching.setDefaultTimeout(30_000)
    await watching.goto(tabbed.base)
    await watching.locator('#live[data-live="true"]').waitFor()
    await asking.getByRole('button', { name: 'Delete…' }).click()
    await asking.getByRole('dialog').waitFor()
    await createSession(tabbed.app, 'made-meanwhile', 'two')
    // window.confirm would stop the first tab's script until answered, and every tab's events with it.
    await watching.locator('tr[data-session="made-meanwhile"]').waitFor({ timeout: 10_000 })
    t.pass('the new session shows in the other tab while the question is open')
    await asking.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click()
    t.equal((await tabbed.app.inject({ method: 'GET', url: '/api/v1/tasks/progress?session_id=asked' })).statusCode, 200, 'and nothing was deleted')
  })

  t.test('a Delete question is withdrawn when its session is deleted elsewhere: nothing is sent, and it is never answered for another page', async (t) => {
    const deleting = await serve(t)
    await createSession(deleting.app, 'asked-away', 'one')
    const page = await open(t, browser, `${deleting.base}#/session/asked-away`)
    await page.locator('#session-summary', { hasText: '0/1 done' }).waitFor()
    await page.getByRole('button', { name: 'Delete…' }).click()
    await page.getByRole('dialog').waitFor()
    const deletes: string[] = []
    page.on('request', (request) => { if (request.method() === 'DELETE') deletes.push(request.url()) })
    t.equal((await deleting.app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/asked-away' })).statusCode, 204)
    await page.locator('#overview').waitFor()
    await page.getByRole('dialog').waitFor({ state: 'hidden' })
    t.pass('the question went with its session')
    await settle(page)
    t.same(deletes, [], 'no delete sent')
  })

  t.test('totals show when /health does not answer (a proxy passing only /api and /dashboard): uptime is unknown', async (t) => {
    const page = await open(t, browser, base, {}, async (page) => {
      await page.route('**/health', (route) => route.fulfill({ status: 404, contentType: 'text/html', body: '<html>not here</html>' }))
    })
    await page.locator('[data-stat="Sessions"]').waitFor({ timeout: 10_000 })
    t.equal(await page.locator('#uptime').innerText(), '—')
  })

  t.test('the Storage total is what the store holds: the folder and its archive on the file store, the table (archived rows in it) on PostgreSQL', async (t) => {
    const url = await testDatabase(t)
    if (url === null) return
    const shown = (n: number): string => n < 1024 ? `${n} B` : n < 1024 ** 2 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 ** 2).toFixed(1)} MiB`
    for (const config of [{}, { TASK_STORE: 'postgres', DATABASE_URL: url }]) {
      const { app: own, base: ownBase } = await serve(t, { config })
      // Some 600 KB archived, so counting the archive twice shows.
      const text = 'x'.repeat(60_000)
      t.equal((await post(own, '/create', { session_id: 'kept', tasks: Array.from({ length: 10 }, (_, i) => ({ instruction: `${i} ${text}` })) })).statusCode, 200)
      t.equal((await post(own, '/execute-all', { session_id: 'kept' })).statusCode, 200)
      t.equal((await post(own, '/archive', { older_than_days: 0 })).statusCode, 200)
      const { storage } = (await own.inject({ method: 'GET', url: '/api/v1/tasks/stats' })).json()
      t.ok(storage.archive_bytes > 500_000, `${storage.kind}: the archive holds the session`)
      const expected = shown(storage.kind === 'postgres' ? storage.bytes : storage.bytes + storage.archive_bytes)
      const page = await open(t, browser, ownBase)
      await page.locator('[data-stat="Storage"]').waitFor()
      t.equal(await page.locator('[data-stat="Storage"]').innerText(), expected, `${storage.kind}: the tile shows ${expected}`)
      await own.close()
    }
  })

  t.test('a result\'s direction marks stay inside it: the note after a cut result reads left to right', async (t) => {
    const cut = await serve(t, { config: { TASK_MAX_RESULT_BYTES: 60 } })
    // U+202E (right-to-left override) left open: without isolation it turns the note after it around.
    await createSession(cut.app, 'bidi', '\u202Egnp.exe and more words to pass sixty bytes of result')
    t.equal((await post(cut.app, '/execute', { session_id: 'bidi' })).statusCode, 200)
    const page = await open(t, browser, `${cut.base}#/session/bidi`)
    const result = page.locator('li.task details').filter({ has: page.locator('pre', { hasText: 'cut at' }) })
    await result.locator('summary').click()
    // Where the note's "[" and "]" are drawn: "[" first (left) when the note runs left to right.
    const order = await page.evaluate(`(() => {
      const node = [...document.querySelectorAll('li.task pre')].find((pre) => pre.textContent.includes('cut at')).firstChild
      const text = node.data
      const at = (index) => {
        const range = document.createRange()
        range.setStart(node, index)
        range.setEnd(node, index + 1)
        return range.getBoundingClientRect().left
      }
      return { open: at(text.lastIndexOf('[')), close: at(text.lastIndexOf(']')), text }
    })()`) as { open: number, close: number, text: string }
    t.match(order.text, /\[cut at the server's TASK_MAX_RESULT_BYTES\]$/u, 'the result was cut')
    t.ok(order.open < order.close, `the note runs left to right ([ at ${order.open}, ] at ${order.close})`)
  })

  t.test('a failed task\'s error cut at TASK_MAX_RESULT_BYTES carries the note, as a cut result does', async (t) => {
    const cut = await serve(t, { config: { TASK_MAX_RESULT_BYTES: 60 }, executors: { default: async () => { throw new Error(`upstream said: ${'e'.repeat(200)}`) } } })
    await createSession(cut.app, 'failing', 'do it')
    t.match((await post(cut.app, '/execute', { session_id: 'failing' })).json(), { status: 'Failed', result_truncated: true })
    const page = await open(t, browser, `${cut.base}#/session/failing`)
    const error = page.locator('li.task pre', { hasText: 'upstream said' })
    await error.waitFor({ state: 'attached' })
    t.match(await error.textContent(), /^\u2068upstream said: e+\u2069 \[cut at the server's TASK_MAX_RESULT_BYTES\]$/u, 'the error says it was cut (the error isolated from the note)')
  })

  t.test('a search for a whole id the table does not hold (older than the 1,000 newest it loads) offers to open that session', async (t) => {
    const many = await serve(t, { config: { TASK_MAX_SESSIONS: 2000 } })
    await createSession(many.app, 'oldest', 'one')
    for (let i = 0; i < 1000; i += 50) {
      await Promise.all(Array.from({ length: 50 }, async (_, j) => createSession(many.app, `s${String(i + j).padStart(4, '0')}`, 'one')))
    }
    const page = await open(t, browser, many.base)
    await page.locator('#session-rows tr').first().waitFor()
    await page.locator('#search').fill('oldest')
    await page.locator('#empty-open').waitFor()
    t.equal(await page.locator('#empty-text').innerText(), 'No session among the 1,000 newest matches.')
    await page.getByRole('link', { name: 'Open session oldest' }).click()
    await page.locator('#session-title', { hasText: 'oldest' }).waitFor()
    await page.locator('#session-summary', { hasText: '0/1 done' }).waitFor()
    t.pass('the session page opens on it')
  })

  t.test('without Web Locks each tab reads its own stream and closes it while hidden: eight tabs, most hidden, all answer; one shown again catches up from its last id', async (t) => {
    const tabbed = await serve(t)
    const streams = watchStreams(t, tabbed.app)
    await createSession(tabbed.app, 'hidden-tabs', '1. one\n2. two\n3. three\n4. four')
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 }, bypassCSP: true })
    t.teardown(() => context.close())
    const tab = async (hidden: boolean): Promise<Page> => {
      const page = await context.newPage()
      page.setDefaultTimeout(30_000)
      await page.addInitScript(withoutLocks(hidden))
      await page.goto(`${tabbed.base}#/session/hidden-tabs`)
      await page.locator('#session-summary', { hasText: /\d\/4 done/ }).waitFor()
      return page
    }
    const shown = await tab(false)
    const later = await tab(false)
    await waitFor('both tabs\' streams', () => streams.now() === 2)
    await post(tabbed.app, '/execute', { session_id: 'hidden-tabs' })
    await later.locator('#session-summary', { hasText: '1/4 done' }).waitFor()
    // Switched away from: after a short grace, its connection goes back to the browser.
    await js(later, 'window.__setHidden(true)')
    await waitFor('the hidden tab to close its stream', () => streams.now() === 1, 15_000)
    const hidden: Page[] = []
    for (let i = 0; i < 6; i++) hidden.push(await tab(true))
    t.equal(streams.now(), 1, 'tabs opened hidden open no stream')
    await shown.getByRole('button', { name: 'Execute next' }).click()
    await shown.locator('#session-summary', { hasText: '2/4 done' }).waitFor()
    const last = hidden.at(-1) as Page
    await last.getByRole('button', { name: 'Execute next' }).click()
    await last.locator('#session-summary', { hasText: '3/4 done' }).waitFor()
    t.pass('actions answer in a tab shown and in the eighth, hidden')
    t.match(await later.locator('#session-summary').innerText(), /^1\/4 done/, 'the hidden tab heard nothing meanwhile')
    const before = streams.resumes.length
    await js(later, 'window.__setHidden(false)')
    await later.locator('#session-summary', { hasText: '3/4 done' }).waitFor()
    t.type(streams.resumes[before], 'string', 'shown again, it resumed from its last id and caught up')
  })

  t.test('a page whose first call fails (a 503 while the database is down, a proxy\'s 502) says why, tries again, and starts once the server answers', async (t) => {
    const stats = failing('**/api/v1/tasks/stats')
    stats.fail(3)
    const page = await open(t, browser, base, {}, stats.on)
    await page.locator('#error', { hasText: '503: busy (trying again)' }).waitFor()
    await page.locator('#overview').waitFor()
    await page.locator('#live', { hasText: /^live$/ }).waitFor()
    t.equal(stats.left(), 0, 'after the failures')
    t.ok(await page.locator('#error').isHidden(), 'the error went once the server answered')
    await createSession(app, 'after-first-failures', 'x')
    await page.locator('tr[data-session="after-first-failures"]').waitFor()
    t.pass('and it follows the stream')
  })

  t.test('live updates carry the server\'s time: with the browser\'s clock 10 minutes behind, a session just changed sorts first and shows when it changed', async (t) => {
    const timed = await serve(t)
    await createSession(timed.app, 'older', '1. one\n2. two')
    await new Promise((resolve) => setTimeout(resolve, 20))
    await createSession(timed.app, 'newer', 'x')
    const page = await open(t, browser, timed.base, {}, (page) => page.clock.setSystemTime(new Date(Date.now() - 10 * 60_000)))
    await page.locator('tr[data-session="older"]').waitFor()
    t.same(await sessionsShown(page), ['newer', 'older'])
    await post(timed.app, '/execute', { session_id: 'older' })
    await page.locator('tr[data-session="older"]', { hasText: '1/2 done' }).waitFor()
    t.same(await sessionsShown(page), ['older', 'newer'], 'newest first, as the server lists them')
    t.equal(await page.locator('tr[data-session="older"] time').getAttribute('datetime'), timed.app.taskManager.get('older').updated_at, 'the time of its change, the server\'s')
  })

  t.test('a stream refused at TASK_EVENTS_MAX_CLIENTS shows the server\'s reason; the page goes live once a slot frees', async (t) => {
    const capped = await serve(t, { config: { TASK_EVENTS_MAX_CLIENTS: 1 } })
    // Another client holds the only stream.
    const holder = new AbortController()
    const held = await fetch(new URL('../api/v1/tasks/events', capped.base), { signal: holder.signal })
    t.equal(held.status, 200)
    t.teardown(() => { holder.abort() })
    const page = await open(t, browser, capped.base)
    await page.locator('#live', { hasText: 'TASK_EVENTS_MAX_CLIENTS' }).waitFor()
    t.match(await page.locator('#live').textContent(), /^reconnecting… \(503: 1 event streams are open already/, 'the status and the server\'s message')
    holder.abort()
    await page.locator('#live', { hasText: /^live$/ }).waitFor()
  })
}

// Last: everything above is initialised before the tests run.
if (!existsSync(CHROMIUM)) {
  if (process.env.CI === 'true') throw new Error(`${CHROMIUM} is missing: CI must install Debian's chromium package (.ci/run does)`)
  console.error(`\n!!!!!!!! dashboard browser tests SKIPPED: ${CHROMIUM} is missing (apt-get install -y chromium) !!!!!!!!\n`)
  t.plan(0, `skipped: ${CHROMIUM} missing`)
} else {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true })
  t.teardown(() => browser.close())
  await run(browser)
}
