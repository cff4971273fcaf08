/**
 * Events a replica could not put in the shared log in time, as real processes on the real
 * PostgreSQL: a replica killed after a change committed but before its events were published
 * (found by the others' sweeps once its heartbeat is older than the lease, or by its own next
 * boot), and a publish that failed (the database unreachable) and went late. In each case every
 * stream gets a reset after what did arrive, and a resume from before it resets too: clients
 * refetch rather than keep a stale view.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { API, type TestContext } from './helper.js'
import { inspector, testDatabase, throughProxy, type DatabaseTestContext } from './postgres.js'
import { recordingAgent, replicaSet, type ReplicaSet } from './replicas.js'
import { call, type ServerProcess } from './server-process.js'
import { openStream, type SseClient, type SseEvent } from './sse-client.js'

/** The writer's events wait this long before they are published, and its answers do not wait for them: a window to kill it in. */
const SLOW_PUBLISH = { TASK_EVENTS_FLUSH_MS: '1000', TASK_EVENTS_PUBLISH_WAIT_MS: '0' }

const created = (id: string) => (e: SseEvent): boolean => e.event === 'session.created' && e.data.session_id === id

t.test('a replica killed before publishing a committed change\'s events: the others\' streams reset once its heartbeat is past the lease, and so do resumes from before', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  const set = await replicaSet(t, url, agent, { TASK_LEASE_MS: '2000', TASK_SWEEP_INTERVAL_MS: '300' })
  const [a, b] = await Promise.all([set.start('ga', SLOW_PUBLISH), set.start('gb')]) as [ServerProcess, ServerProcess]
  const stream = await openStream(t, `${b.base}${API}/events`)
  t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'before', instructions: 'one' })).status, 200)
  const [first] = (await stream.until((events) => events.some(created('before')), 10_000)).filter(created('before'))
  const resumeFrom = first?.id as string

  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'lost', instructions: 'two' })).status, 200, 'committed on ga')
  a.child.kill('SIGKILL')
  await a.exited
  t.equal((await call(b, 'GET', `${API}/progress?session_id=lost`)).status, 200, 'the change is in the database')
  const events = await stream.until((events) => events.some((e) => e.event === 'reset'), 15_000)
  t.notOk(events.some(created('lost')), 'its events were never published (the case under test)')
  t.match(events.find((e) => e.event === 'reset')?.data, { reason: 'missed-events' }, 'the stream on gb was told to refetch')

  const resumed = await openStream(t, `${b.base}${API}/events`, { 'last-event-id': resumeFrom })
  const replay = await resumed.until((events) => events.length > 0, 10_000)
  t.equal(replay[0]?.event, 'reset', 'a resume from before the gap resets rather than replaying a log with a hole')
})

t.test('a replica restarted under the same id after a kill: its boot logs the gap, before the lease would have run out', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  // A lease far longer than the restart: the gap can only come from the boot.
  const set = await replicaSet(t, url, agent, { TASK_LEASE_MS: '60000', TASK_SWEEP_INTERVAL_MS: '300' })
  const [a, b] = await Promise.all([set.start('ra', SLOW_PUBLISH), set.start('rb')]) as [ServerProcess, ServerProcess]
  const stream = await openStream(t, `${b.base}${API}/events`)
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'lost', instructions: 'two' })).status, 200)
  a.child.kill('SIGKILL')
  await a.exited
  await set.start('ra')
  // Within 20 s, a third of the lease.
  const events = await stream.until((events) => events.some((e) => e.event === 'reset'), 20_000)
  t.notOk(events.some(created('lost')), 'the killed process never published the create')
  // A clean stop leaves no row behind: the next boot logs no gap.
  const clean = await set.start('rc')
  await clean.stop('SIGTERM')
  const count = stream.events.filter((e) => e.event === 'reset').length
  await set.start('rc')
  await sleep(1000)
  t.equal(stream.events.filter((e) => e.event === 'reset').length, count, 'no reset after a clean stop and restart')
})

t.test('a publish that failed (the database unreachable) goes late; with other replicas\' events logged meanwhile, a reset follows on every replica', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  const { proxy, url: proxied } = await throughProxy(t, url)
  const set = await replicaSet(t, url, agent, { TASK_LEASE_MS: '30000', TASK_SWEEP_INTERVAL_MS: '300' })
  const [a, b] = await Promise.all([
    set.start('pa', { ...SLOW_PUBLISH, DATABASE_URL: proxied, TASK_EVENTS_POLL_MS: '200' }),
    set.start('pb')
  ]) as [ServerProcess, ServerProcess]
  const stream = await openStream(t, `${b.base}${API}/events`)
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'early', instructions: 'one' })).status, 200)
  await stream.until((events) => events.some(created('early')), 10_000)
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'late', instructions: 'one' })).status, 200, 'committed on pa')
  // Cut before pa's publish (a second later), back after a few of its tries; meanwhile pb logs events.
  proxy.drop()
  t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'meanwhile', instructions: 'one' })).status, 200)
  await sleep(2000)
  proxy.pass()
  const events = await stream.until((events) => events.some((e) => e.event === 'reset'), 20_000)
  const createdAt = events.findIndex(created('late'))
  const resetAt = events.findIndex((e) => e.event === 'reset')
  t.ok(events.findIndex(created('meanwhile')) < createdAt, 'pb\'s later change was logged first')
  t.ok(createdAt >= 0, 'the late events arrived')
  t.ok(resetAt > createdAt, 'then a reset')
})

/**
 * Replicas pa (its events published a second late: SLOW_PUBLISH; its database through `proxy`)
 * and pb on a database of their own, with a stream open on each; null without PostgreSQL.
 * `meanwhile` runs work while pa's connections are stalled: pa's events, waiting to be published,
 * are logged after what it does however loaded the host is.
 */
async function slowAndPrompt (t: TestContext & DatabaseTestContext): Promise<{ set: ReplicaSet, a: ServerProcess, b: ServerProcess, streams: [SseClient, SseClient], meanwhile: (work: () => Promise<void>) => Promise<void> } | null> {
  const url = await testDatabase(t)
  if (url === null) return null
  const { proxy, url: proxied } = await throughProxy(t, url)
  const set = await replicaSet(t, url, await recordingAgent(t), { TASK_LEASE_MS: '30000' })
  const [a, b] = await Promise.all([set.start('pa', { ...SLOW_PUBLISH, DATABASE_URL: proxied }), set.start('pb')]) as [ServerProcess, ServerProcess]
  const streams = await Promise.all([openStream(t, `${a.base}${API}/events`), openStream(t, `${b.base}${API}/events`)]) as [SseClient, SseClient]
  const meanwhile = async (work: () => Promise<void>): Promise<void> => {
    proxy.stall()
    try {
      await work()
    } finally {
      proxy.pass()
    }
  }
  return { set, a, b, streams, meanwhile }
}

/** The events of one session, each after the resets: a later one must never show an older state without a reset between. */
function sessionEvents (events: SseEvent[], id: string): SseEvent[] {
  return events.filter((e) => e.event === 'reset' || e.data.session_id === id)
}

t.test('two replicas change one session at once and the first publishes last: no stream shows its older state after the later one; they reset instead', async (t) => {
  const pair = await slowAndPrompt(t)
  if (pair === null) return
  const { set, a, b, streams, meanwhile } = pair
  // Appended through pb while pa's events for the session's creation still wait to be published.
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'raced', instructions: 'one' })).status, 200)
  await meanwhile(async () => { t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'raced', instructions: '1. two\n2. three' })).status, 200) })
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'after', instructions: 'one' })).status, 200)
  const seen: SseEvent[][] = []
  for (const [n, stream] of streams.entries()) {
    const events = await stream.until((events) => events.some(created('after')), 10_000)
    seen.push(events)
    const raced = sessionEvents(events, 'raced')
    let total = 0
    for (const e of raced) {
      if (e.event === 'reset') total = 0
      else if (e.event === 'progress') {
        t.ok(e.data.total as number >= total, `stream ${n}: progress ${String(e.data.total)} after ${total} without a reset between`)
        total = e.data.total as number
      }
    }
    t.ok(raced.some((e) => e.event === 'progress' && e.data.total === 3), `stream ${n}: pb's append shown`)
    t.ok(raced.some((e) => e.event === 'reset'), `stream ${n}: a reset where pa's late events were`)
    t.equal(events.filter((e) => e.data._order !== undefined).length, 0, `stream ${n}: the order field never reaches clients`)
  }
  const shown = (events: SseEvent[]): string[] => events.map((e) => `${e.id ?? ''} ${e.event}`)
  t.same(shown(seen[0] ?? []), shown(seen[1] ?? []), 'both replicas show the same events under the same ids')
  // A sequential client's changes through two replicas: every event shown, no reset. Not through
  // pa, whose answers do not wait for its events (a change through pb logged before them would
  // rightly reset): through pc, whose answers wait for them however loaded the host is.
  const c = await set.start('pc', { TASK_EVENTS_PUBLISH_WAIT_MS: '30000' })
  const before = (seen[1] ?? []).length
  t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'calm', instructions: 'one' })).status, 200)
  t.equal((await call(c, 'POST', `${API}/create`, { session_id: 'calm', instructions: 'two' })).status, 200)
  t.equal((await call(c, 'POST', `${API}/execute-all`, { session_id: 'calm' })).status, 200)
  t.same((await call(b, 'POST', `${API}/archive`, { older_than_days: 0 })).body.archived_ids, ['calm'])
  // Brought back through the other replica: a new row.
  t.equal((await call(c, 'POST', `${API}/create`, { session_id: 'calm', instructions: 'three' })).status, 200)
  t.equal((await call(b, 'DELETE', `${API}/sessions/calm`)).status, 204)
  const calm = (await streams[1].until((events) => events.some((e) => e.event === 'session.deleted' && e.data.session_id === 'calm'), 10_000)).slice(before)
  t.same(calm.filter((e) => e.event === 'reset'), [], 'no reset for changes made one after another')
})

t.test('a change racing a delete or an archive through another replica, published after it: no stream shows it after the session.deleted or session.archived; they reset instead', async (t) => {
  const pair = await slowAndPrompt(t)
  if (pair === null) return
  const { a, b, streams, meanwhile } = pair
  t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'doomed', instructions: 'one' })).status, 200)
  t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'shelved', instructions: 'one' })).status, 200)
  // pa's changes commit first; their events wait to be published while pb's delete and archive are logged.
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'doomed', instructions: 'two' })).status, 200)
  await meanwhile(async () => { t.equal((await call(b, 'DELETE', `${API}/sessions/doomed`)).status, 204) })
  t.equal((await call(a, 'POST', `${API}/execute-all`, { session_id: 'shelved' })).status, 200)
  await meanwhile(async () => { t.same((await call(b, 'POST', `${API}/archive`, { older_than_days: 0 })).body.archived_ids, ['shelved']) })
  t.equal((await call(b, 'POST', `${API}/create`, { session_id: 'after', instructions: 'one' })).status, 200)
  for (const [n, stream] of streams.entries()) {
    // pa's late events are in the log once its next batch is: after pb's `after`, at most a flush later.
    const events = await stream.until((events) => events.some(created('after')) && events.some((e) => e.event === 'reset'), 10_000)
    for (const [id, end] of [['doomed', 'session.deleted'], ['shelved', 'session.archived']] as const) {
      const shown = sessionEvents(events, id)
      const at = shown.findIndex((e) => e.event === end)
      t.ok(at !== -1, `stream ${n}: ${id}'s ${end} shown`)
      const next = shown.slice(at + 1).find((e) => e.event === 'reset' || e.data.session_id === id)
      t.ok(next === undefined || next.event === 'reset', `stream ${n}: nothing of ${id} after its ${end} but a reset (${next?.event ?? 'none'})`)
    }
  }
})

t.test('a row in the events table that no replica wrote (its data null, not an object, or without a session id) is passed over; the live view goes on', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const agent = await recordingAgent(t)
  const set = await replicaSet(t, url, agent, { TASK_EVENTS_POLL_MS: '200' })
  const a = await set.start('pa')
  const stream = await openStream(t, `${a.base}${API}/events`)
  const db = inspector(t, url, 'taskvault')
  await db.query("INSERT INTO taskvault.events (name, data) VALUES ('progress', 'null'), ('task.completed', '[1]'), ('progress', '{\"session_id\": 5}'), ('progress', '{\"session_id\": \"x\", \"_order\": \"not.an.order\"}')")
  t.equal((await call(a, 'POST', `${API}/create`, { session_id: 'next', instructions: 'one' })).status, 200)
  const events = await stream.until((events) => events.some(created('next')), 10_000)
  t.same(events.filter((e) => e.event === 'progress' && e.data.session_id !== 'next').map((e) => e.data), [{ session_id: 'x' }], 'only the row that is an event\'s is shown, without its malformed order')
})
