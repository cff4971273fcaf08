/**
 * The live view's building blocks without HTTP: the numbered ring buffer (resume, reset, ids of
 * another lifetime, malformed ids) and the manager building no event at all when nobody listens.
 */
import t, { type Test } from 'tap'
import { FileSessionStore } from '../services/store/file-store.js'
import { TaskEventBuffer } from '../services/events/task-events.js'
import { TaskManager } from '../services/task-manager.js'
import { build, post, tempDir } from './helper.js'

t.test('the buffer keeps the latest events, numbered; older ids and foreign ids get a reset', async (t) => {
  const buffer = new TaskEventBuffer(3)
  t.same(buffer.since(buffer.currentId()), { reset: false, events: [] }, 'nothing yet, nothing missed')
  const start = buffer.currentId()
  for (let i = 0; i < 5; i++) buffer.append('progress', { session_id: `s${i}` })
  t.equal(buffer.latest, 5)
  t.equal(buffer.oldest, 3)
  const after2 = buffer.since(`${buffer.lifetime}-2`)
  t.same(after2.reset ? null : after2.events.map((e) => e.data.session_id), ['s2', 's3', 's4'], 'everything after id 2, in order')
  t.same(buffer.since(`${buffer.lifetime}-5`), { reset: false, events: [] })
  t.equal(buffer.since(`${buffer.lifetime}-1`).reset, true, 'event 2 is gone: reset')
  t.equal(buffer.since(start).reset, true, 'from before the first event, with the first ones gone')
  // Ids this process never wrote, some of which Number() would read as 4 or 0.
  const life = buffer.lifetime
  for (const id of [`${life}-6`, 'ffffffff-4', 'garbage', '', `${life}-x`, `${life}--1`, `${life}-`, `${life}- 4`, `${life}-4 `, `${life}-0x4`, `${life}-4e0`, `${life}-+4`, `${life}-04`, `${life}-4.0`]) {
    t.equal(buffer.since(id).reset, true, `reset for '${id}'`)
  }
  const event = buffer.append('task.completed', { session_id: 'a', task_id: 't', status: 'Completed' })
  t.equal(buffer.frameOf(event), `id: ${buffer.lifetime}-6\nevent: task.completed\ndata: {"session_id":"a","task_id":"t","status":"Completed"}\n\n`)
  t.equal(buffer.frameOf(event), buffer.frameOf(event), 'serialized once')
  t.throws(() => new TaskEventBuffer(0))
})

t.test('the buffer also keeps its frames under a byte bound: events naming many tasks push the oldest out, whose ids then get a reset', async (t) => {
  const ids = Array.from({ length: 1000 }, (_, i) => `task_${i + 1}_1767225600`)
  const big = { session_id: 'many', task_ids: ids }
  const one = Buffer.byteLength(new TaskEventBuffer(1).frameOf(new TaskEventBuffer(1).append('tasks.added', big)))
  const buffer = new TaskEventBuffer(10_000, 5 * one + 100)
  const first = buffer.append('progress', { session_id: 'small' })
  for (let i = 0; i < 20; i++) buffer.append('tasks.added', big)
  t.ok(buffer.bytes <= 5 * one + 100, `the frames held stay under the bound (${buffer.bytes} bytes, ${one} each)`)
  t.equal(buffer.latest - buffer.oldest + 1, 5, 'five events fit')
  t.equal(buffer.since(buffer.idOf(first)).reset, true, 'an id pushed out gets a reset')
  const recent = buffer.since(`${buffer.lifetime}-${buffer.latest - 3}`)
  t.same(recent.reset ? null : recent.events.length, 3, 'recent ids replay')
  // One event larger than the bound is kept all the same: the newest always is.
  const tiny = new TaskEventBuffer(10, 10)
  tiny.append('progress', { session_id: 'a' })
  tiny.append('progress', { session_id: 'b' })
  t.equal(tiny.latest - tiny.oldest + 1, 1, 'the newest alone')
  t.throws(() => new TaskEventBuffer(10, 0))
})

t.test('TASK_EVENTS_BUFFER_BYTES bounds the app\'s buffer', async (t) => {
  const app = await build(t, { config: { TASK_EVENTS_BUFFER_BYTES: 64 * 1024 } })
  // Events are built only while someone listens (a stream): listen as one does.
  app.taskManager.events.on('task-event', () => {})
  const tasks = Array.from({ length: 500 }, (_, i) => ({ instruction: `step ${i}` }))
  for (let i = 0; i < 10; i++) t.equal((await post(app, '/create', { session_id: `s${i}`, tasks })).statusCode, 200)
  t.ok(app.taskEvents.latest >= 20, `events were made (${app.taskEvents.latest})`)
  t.ok(app.taskEvents.bytes <= 64 * 1024, `held: ${app.taskEvents.bytes} bytes of ${app.taskEvents.latest - app.taskEvents.oldest + 1} events`)
})

/** A manager on a file store of its own, restored, closed when the test ends. */
async function restoredManager (t: Test): Promise<TaskManager> {
  const store = new FileSessionStore({ dir: await tempDir(t) })
  await store.init()
  const manager = new TaskManager({ store })
  t.teardown(async () => { await manager.close(); await store.close() })
  await manager.restore()
  return manager
}

t.test('the manager emits live-view events only while someone listens', async (t) => {
  const manager = await restoredManager(t)
  let emitted = 0
  const emit = manager.events.emit.bind(manager.events)
  manager.events.emit = ((name: string, ...args: unknown[]) => { if (name === 'task-event') emitted++; return (emit as (n: string, ...a: unknown[]) => boolean)(name, ...args) }) as typeof manager.events.emit
  await manager.create('quiet', [{ instruction: 'a', task_type: 'General' }])
  await manager.executeAll('quiet')
  const withoutListener = emitted
  const names: string[] = []
  manager.events.on('task-event', (name) => names.push(name))
  await manager.create('heard', [{ instruction: 'b', task_type: 'General' }])
  await manager.executeAll('heard')
  t.equal(withoutListener, 0, 'none without a listener')
  t.same(names, ['session.created', 'tasks.added', 'progress', 'run.started', 'progress', 'task.started', 'progress', 'task.completed', 'progress', 'run.finished', 'progress'])
})

t.test('after a single execute its one progress event after the task ended says the session is no longer running', async (t) => {
  const manager = await restoredManager(t)
  await manager.create('one', [{ instruction: 'a', task_type: 'General' }, { instruction: 'b', task_type: 'General' }])
  const events: Array<[string, Record<string, unknown>]> = []
  manager.events.on('task-event', (name, data) => events.push([name, data as Record<string, unknown>]))
  await manager.executeNext('one')
  // No progress saying it still runs between the two: the run ends as the task does.
  t.same(events.map(([name]) => name), ['task.started', 'progress', 'task.completed', 'progress'])
  t.match(events[1], ['progress', { session_id: 'one', completed: 0, in_progress: 1, running: true }])
  t.match(events.at(-1), ['progress', { session_id: 'one', completed: 1, pending: 1, running: false }], 'what GET /progress says too')
  // The server's time of the change, as the session's updated_at (a client's clock may be off).
  t.equal(events.at(-1)?.[1].updated_at, manager.get('one').updated_at, 'updated_at: the session\'s, as saved')
  t.ok(Date.parse(String(events[1]?.[1].updated_at)) <= Date.parse(String(events.at(-1)?.[1].updated_at)), 'and later with each change')
})

t.test('a log event this version does not show is passed over without resetting resumes; a loss tells the gap listeners', async (t) => {
  const buffer = new TaskEventBuffer(10)
  buffer.adopt('log', 0)
  let gaps = 0
  const stop = buffer.onGap(() => { gaps++ })
  buffer.appendAt(1, 'progress', { session_id: 'a' })
  buffer.skipTo(2)
  buffer.appendAt(3, 'progress', { session_id: 'b' })
  const replay = buffer.since('log-1')
  t.same(replay.reset ? 'reset' : replay.events.map((event) => event.seq), [3], 'a resume from before the skipped event replays what follows')
  const fromSkipped = buffer.since('log-2')
  t.same(fromSkipped.reset ? 'reset' : fromSkipped.events.map((event) => event.seq), [3], 'and so does one from it')
  t.equal(gaps, 0, 'skipping is no gap')
  buffer.lostUpTo(7)
  t.equal(gaps, 1, 'events lost before they were read: a gap')
  t.equal(buffer.since('log-3').reset, true, 'and resuming from before them resets')
  stop()
  buffer.gap()
  t.equal(gaps, 1, 'unsubscribed')
})

t.test('an id of the shared log a replica has not read yet resumes with nothing to replay; one far ahead, or of a lone process, resets', async (t) => {
  const shared = new TaskEventBuffer(10)
  shared.adopt('log', 40)
  shared.appendAt(41, 'progress', { session_id: 'a' })
  t.same(shared.since('log-43'), { reset: false, events: [], after: 43 }, 'two ahead: the client has 42 and 43 already')
  t.equal(shared.since('log-52').reset, true, 'further ahead than the buffer holds: no id the log gave out lately')
  const lone = new TaskEventBuffer(10)
  lone.append('progress', { session_id: 'a' })
  t.equal(lone.since(`${lone.lifetime}-2`).reset, true, 'a lone process numbers its own events: an id ahead is not one of them')
})
