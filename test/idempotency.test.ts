/**
 * `POST /create` with an Idempotency-Key: a create retried after its answer was lost (a
 * timeout, a dropped connection) adds its tasks once. The key is kept in the session's stored
 * form, so it holds across a restart and across replicas; other tasks under a used key are
 * refused, and each session keeps only its newest TASK_IDEMPOTENCY_KEYS keys.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../app.js'
import { API, build, tempDir, type TestContext } from './helper.js'
import { faultFs } from './faults.js'
import { testDatabase } from './postgres.js'

interface Answer { status: number, replayed: boolean, body: any }

async function create (app: FastifyInstance, payload: Record<string, unknown>, key?: string): Promise<Answer> {
  const res = await app.inject({ method: 'POST', url: `${API}/create`, payload, headers: key === undefined ? {} : { 'idempotency-key': key } })
  return { status: res.statusCode, replayed: res.headers['idempotent-replayed'] === 'true', body: res.json() }
}

async function taskCount (app: FastifyInstance, sessionId: string): Promise<number> {
  return (await app.inject({ method: 'GET', url: `${API}/progress?session_id=${sessionId}` })).json().total
}

t.test('the same key with the same tasks is answered again and adds nothing; other tasks under it are refused; no key appends as before', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir })
  const first = await create(app, { session_id: 's', instructions: '1. a\n2. b' }, 'req-1')
  t.equal(first.status, 200)
  t.notOk(first.replayed, 'the first answer is no replay')
  const again = await create(app, { session_id: 's', instructions: '1. a\n2. b' }, 'req-1')
  t.equal(again.status, 200)
  t.ok(again.replayed, 'Idempotent-Replayed: true')
  t.same(again.body, first.body, 'the same answer: the same task ids, the same tasks')
  t.equal(await taskCount(app, 's'), 2, 'the tasks were added once')

  const other = await create(app, { session_id: 's', instructions: '1. c' }, 'req-1')
  t.equal(other.status, 422)
  t.match(other.body, { statusCode: 422, code: 'IDEMPOTENCY_KEY_REUSED', error: 'Unprocessable Entity' })
  t.match(other.body.message, /Idempotency-Key 'req-1'/)
  t.equal(await taskCount(app, 's'), 2, 'nothing added')
  // The same instructions given as a task list are the same tasks.
  const asList = await create(app, { session_id: 's', tasks: [{ instruction: 'a', task_type: first.body.tasks[0].task_type }, { instruction: 'b', task_type: first.body.tasks[1].task_type }] }, 'req-1')
  t.ok(asList.replayed, 'the same tasks written as a list: a replay')

  for (const bad of ['', 'with space', 'ü', 'x'.repeat(129)]) {
    const res = await app.inject({ method: 'POST', url: `${API}/create`, payload: { session_id: 's', instructions: 'x' }, headers: { 'idempotency-key': bad } })
    t.equal(res.statusCode, 400, `key ${JSON.stringify(bad.slice(0, 10))}: 400`)
    t.match(res.json(), { code: 'FST_ERR_VALIDATION', message: /idempotency-key/ })
  }
  t.equal(await taskCount(app, 's'), 2, 'refused keys changed nothing')

  t.equal((await create(app, { session_id: 's', instructions: '1. a\n2. b' })).status, 200)
  t.equal(await taskCount(app, 's'), 4, 'without a key, a create appends as it always did')
  const other2 = await create(app, { session_id: 't', instructions: '1. a\n2. b' }, 'req-1')
  t.notOk(other2.replayed, 'a key belongs to its session: the same key on another session is new there')

  const stored = JSON.parse(await readFile(join(dir, 's.json'), 'utf8'))
  t.same(stored.keyed_creates, [{ key: 'req-1', digest: stored.keyed_creates[0].digest, task_ids: first.body.task_ids }], 'kept in the session file')
  t.match(stored.keyed_creates[0].digest, /^[0-9a-f]{64}$/)
})

t.test('creates sent twice at once under one key (a double submit) add the tasks once', async (t) => {
  const app = await build(t)
  const answers = await Promise.all(Array.from({ length: 5 }, async () => create(app, { session_id: 'burst', instructions: '1. a\n2. b\n3. c' }, 'once')))
  t.same(answers.map((answer) => answer.status), [200, 200, 200, 200, 200])
  t.equal(answers.filter((answer) => !answer.replayed).length, 1, 'one added them, four were replays')
  t.equal(new Set(answers.map((answer) => JSON.stringify(answer.body.task_ids))).size, 1, 'all with the same task ids')
  t.equal(await taskCount(app, 'burst'), 3)
})

t.test('a replay of a key whose create is still being written stands or falls with that write', async (t) => {
  const fs = faultFs()
  const app = await build(t, { fs })
  t.equal((await create(app, { session_id: 's', instructions: '1. a' })).status, 200)
  // A create without a key is held at its rename: the keyed ones queue behind it, and go in one write.
  const gate = fs.hold('rename', { times: 1 })
  const first = create(app, { session_id: 's', instructions: '1. b' })
  await gate.reached
  fs.fail('rename', 'ENOSPC', { skip: 1 })
  const keyed = [create(app, { session_id: 's', instructions: '1. keyed' }, 'K'), create(app, { session_id: 's', instructions: '1. keyed' }, 'K')]
  await sleep(100)
  gate.release()
  t.equal((await first).status, 200)
  const answers = await Promise.all(keyed)
  t.same(answers.map((answer) => answer.status), [507, 507], 'both fail with the write that would have held the key: no replay of tasks never saved')
  fs.heal()
  const retry = await create(app, { session_id: 's', instructions: '1. keyed' }, 'K')
  t.notOk(retry.replayed, 'the retry adds the task')
  t.equal(await taskCount(app, 's'), 3)
})

t.test('a key outlives a restart; a create whose save failed recorded no key, so its retry adds the tasks', async (t) => {
  const dir = await tempDir(t)
  const fs = faultFs()
  const app = await build(t, { dir, fs })
  const first = await create(app, { session_id: 'kept', instructions: '1. a' }, 'k1')
  t.equal(first.status, 200)
  fs.fail('rename', 'EIO')
  const failed = await create(app, { session_id: 'kept', instructions: '1. b' }, 'k2')
  t.equal(failed.status, 503, 'a save that fails answers 503')
  fs.heal()
  await app.close()

  const again = await build(t, { dir })
  const replay = await create(again, { session_id: 'kept', instructions: '1. a' }, 'k1')
  t.ok(replay.replayed, 'after a restart: a replay')
  t.same(replay.body.task_ids, first.body.task_ids)
  const retry = await create(again, { session_id: 'kept', instructions: '1. b' }, 'k2')
  t.equal(retry.status, 200)
  t.notOk(retry.replayed, 'the failed create left no key: its retry adds the task')
  t.equal(await taskCount(again, 'kept'), 2)
})

t.test('each session keeps its newest TASK_IDEMPOTENCY_KEYS keys; 0 turns the header off', async (t) => {
  const app = await build(t, { config: { TASK_IDEMPOTENCY_KEYS: 2 } })
  for (const key of ['k1', 'k2', 'k3']) t.equal((await create(app, { session_id: 'few', instructions: key }, key)).status, 200)
  t.ok((await create(app, { session_id: 'few', instructions: 'k3' }, 'k3')).replayed, 'the newest is kept')
  t.ok((await create(app, { session_id: 'few', instructions: 'k2' }, 'k2')).replayed, 'and the one before')
  t.notOk((await create(app, { session_id: 'few', instructions: 'k1' }, 'k1')).replayed, 'the oldest was forgotten: its create appends again')
  t.equal(await taskCount(app, 'few'), 4)

  const off = await build(t, { config: { TASK_IDEMPOTENCY_KEYS: 0 } })
  await create(off, { session_id: 'off', instructions: 'a' }, 'k')
  t.notOk((await create(off, { session_id: 'off', instructions: 'a' }, 'k')).replayed, 'with 0, the key is not kept')
  t.equal(await taskCount(off, 'off'), 2)
})

t.test('with encryption on, keys are sealed with the rest of the session', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `k1:${randomBytes(32).toString('base64')}` } })
  await create(app, { session_id: 'sealed', instructions: '1. a' }, 'visible-key-123')
  t.ok((await create(app, { session_id: 'sealed', instructions: '1. a' }, 'visible-key-123')).replayed)
  const text = await readFile(join(dir, 'sealed.json'), 'utf8')
  t.notOk(text.includes('visible-key-123'), 'the key is not in clear')
  t.notOk(text.includes('keyed_creates'))
})

t.test('an archived session answers a replay from its archived copy, and stays archived', async (t) => {
  const app = await build(t)
  const first = await create(app, { session_id: 'old', instructions: '1. a' }, 'k')
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute-all`, payload: { session_id: 'old' } })).statusCode, 200)
  t.same((await app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json().archived_ids, ['old'])
  const replay = await create(app, { session_id: 'old', instructions: '1. a' }, 'k')
  t.ok(replay.replayed)
  t.same(replay.body.task_ids, first.body.task_ids)
  t.equal(replay.body.tasks[0].status, 'Completed', 'the tasks as they are now')
  t.match((await app.inject({ method: 'GET', url: `${API}/progress?session_id=old` })).json(), { archived: true }, 'still archived')
  t.notOk((await create(app, { session_id: 'old', instructions: '1. b' }, 'k2')).replayed, 'a new key brings it back as any create does')
  t.equal(await taskCount(app, 'old'), 2)
})

t.test('a replay judged on an archived copy that a delete removes meanwhile is judged again: the create makes the session anew', async (t) => {
  const fs = faultFs()
  const app = await build(t, { fs })
  await create(app, { session_id: 'old', instructions: '1. a' }, 'k')
  t.equal((await app.inject({ method: 'POST', url: `${API}/execute-all`, payload: { session_id: 'old' } })).statusCode, 200)
  t.same((await app.inject({ method: 'POST', url: `${API}/archive`, payload: { older_than_days: 0 } })).json().archived_ids, ['old'])
  const gate = fs.hold('rename', { path: (path) => path.includes('archive'), times: 1 })
  const deleting = app.inject({ method: 'DELETE', url: `${API}/sessions/old` })
  await gate.reached
  const creating = create(app, { session_id: 'old', instructions: '1. a' }, 'k')
  await sleep(200)
  gate.release()
  t.equal((await deleting).statusCode, 204)
  const answer = await creating
  t.equal(answer.status, 200)
  t.notOk(answer.replayed, 'not a replay of the deleted session')
  t.equal(await taskCount(app, 'old'), 1, 'made anew, with its task')
})

async function replica (t: TestContext, url: string, name: string): Promise<FastifyInstance> {
  const app = await buildApp({
    readEnvironment: false,
    config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, TASK_REPLICA_ID: name, TASK_SHUTDOWN_GRACE_MS: 2000 }
  })
  t.teardown(() => app.close())
  await app.ready()
  return app
}

t.test('PostgreSQL replicas: a create retried through another replica is a replay there, whether that replica knew the session or not', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const a = await replica(t, url, 'a')
  const b = await replica(t, url, 'b')
  const first = await create(a, { session_id: 'shared', instructions: '1. a\n2. b' }, 'k1')
  t.equal(first.status, 200)
  const replay = await create(b, { session_id: 'shared', instructions: '1. a\n2. b' }, 'k1')
  t.equal(replay.status, 200)
  t.ok(replay.replayed, 'b had never seen the session: a replay all the same')
  t.same(replay.body.task_ids, first.body.task_ids)
  // b knows the session now; a adds under a new key, and b is asked for that key with its copy behind.
  const second = await create(a, { session_id: 'shared', instructions: '1. c' }, 'k2')
  const late = await create(b, { session_id: 'shared', instructions: '1. c' }, 'k2')
  t.ok(late.replayed, 'b\'s stale copy: still a replay')
  t.same(late.body.task_ids, second.body.task_ids)
  t.equal((await create(b, { session_id: 'shared', instructions: '1. d' }, 'k2')).status, 422, 'other tasks under that key: 422 on b too')
  t.equal(await taskCount(a, 'shared'), 3)
  t.equal(await taskCount(b, 'shared'), 3)

  // Deleted through a, the session's keys go with it, though b's copy still holds them.
  t.equal((await a.inject({ method: 'DELETE', url: `${API}/sessions/shared` })).statusCode, 204)
  const after = await create(b, { session_id: 'shared', instructions: '1. a\n2. b' }, 'k1')
  t.equal(after.status, 200)
  t.notOk(after.replayed, 'not a replay of the deleted session')
  t.equal(await taskCount(a, 'shared'), 2, 'made again, with its tasks')
})
