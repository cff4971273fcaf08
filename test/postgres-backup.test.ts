/**
 * GET /backup on replicas of one PostgreSQL database: a backup taken through any of them is of
 * the rows (every active and archived session, as last written anywhere), not of what that
 * replica happens to hold in memory.
 */
import { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { buildApp } from '../app.js'
import { readTarGz } from '../services/backup/tar.js'
import { API, memoryLog, tempDir } from './helper.js'
import { inspector, testDatabase } from './postgres.js'

type TapTest = Parameters<Parameters<typeof t.test>[0]>[0]

async function replica (t: TapTest, url: string, id: string, logger?: ReturnType<typeof memoryLog>['logger']): Promise<FastifyInstance> {
  const app = await buildApp({
    readEnvironment: false,
    ...(logger !== undefined && { logger }),
    config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_REPLICA_ID: id, TASK_STORAGE_DIR: await tempDir(t), TASK_SHUTDOWN_GRACE_MS: 2000, TASK_ARCHIVE_DAYS: 0 }
  })
  t.teardown(() => app.close())
  await app.ready()
  return app
}

async function send (t: TapTest, app: FastifyInstance, path: string, payload: object): Promise<unknown> {
  const res = await app.inject({ method: 'POST', url: `${API}${path}`, payload })
  t.equal(res.statusCode, 200, `${path} ${JSON.stringify(payload)}: ${res.body}`)
  return res.json()
}

async function backup (t: TapTest, app: FastifyInstance): Promise<Map<string, Buffer>> {
  const res = await app.inject({ method: 'GET', url: `${API}/backup` })
  t.equal(res.statusCode, 200)
  const files = new Map<string, Buffer>()
  for await (const entry of readTarGz(Readable.from([res.rawPayload]))) files.set(entry.name, entry.data)
  return files
}

const tasksIn = (data: Buffer | undefined): number => (JSON.parse(data?.toString('utf8') ?? '{"session":{"tasks":[]}}') as { session: { tasks: unknown[] } }).session.tasks.length

t.test('a backup through any replica holds every session as the rows do: made, changed, archived, brought back or deleted through another', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const a = await replica(t, url, 'a')
  const b = await replica(t, url, 'b')
  // Through a: one session archived there, then sessions a holds in memory.
  await send(t, a, '/create', { session_id: 'back', instructions: 'x' })
  await send(t, a, '/execute-all', { session_id: 'back' })
  t.same(((await send(t, a, '/archive', { older_than_days: 0 })) as { archived_ids: string[] }).archived_ids, ['back'])
  await send(t, a, '/create', { session_id: 'old_done', instructions: 'x' })
  await send(t, a, '/execute-all', { session_id: 'old_done' })
  await send(t, a, '/create', { session_id: 'changed', instructions: 'one' })
  await send(t, a, '/create', { session_id: 'gone', instructions: 'x' })
  t.same([...(await backup(t, a)).keys()].sort(), ['archive/back.json', 'changed.json', 'gone.json', 'old_done.json'], 'a\'s backup before')

  // Through b: each of them moves on, and a new one is made. (A list shows b the session a
  // archived, which it then brings back rather than making a new one.)
  t.equal((await b.inject({ method: 'GET', url: `${API}/list?session_id=all&archived=include` })).statusCode, 200)
  t.same(((await send(t, b, '/archive', { older_than_days: 0 })) as { archived_ids: string[] }).archived_ids, ['old_done'])
  await send(t, b, '/create', { session_id: 'made_on_b', instructions: 'y' })
  await send(t, b, '/create', { session_id: 'changed', instructions: 'two' })
  await send(t, b, '/create', { session_id: 'back', instructions: 'again' })
  t.equal((await b.inject({ method: 'DELETE', url: `${API}/sessions/gone` })).statusCode, 204)

  const fromA = await backup(t, a)
  t.same([...fromA.keys()].sort(), ['archive/old_done.json', 'back.json', 'changed.json', 'made_on_b.json'],
    'a\'s backup: the session made through b, the one archived through b as archived, the one brought back as active, none deleted')
  t.equal(tasksIn(fromA.get('changed.json')), 2, 'the session as b last wrote it')
  t.equal(tasksIn(fromA.get('back.json')), 2, 'the one brought back, with its new task')
  const fromB = await backup(t, b)
  t.same([...fromB.keys()].sort(), [...fromA.keys()].sort(), 'both replicas back up the same sessions')
  for (const [name, data] of fromA) t.ok(fromB.get(name)?.equals(data), `${name}: the same bytes from either replica`)
})

t.test('an active row that does not read is left out of a replica\'s backup and logged, not carried from memory; the others are in it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const log = memoryLog('warn')
  const a = await replica(t, url, 'a', log.logger)
  await send(t, a, '/create', { session_id: 'good', instructions: 'x' })
  await send(t, a, '/create', { session_id: 'broken', instructions: 'x' })
  const db = inspector(t, url, 'taskvault')
  // Damaged behind the replica's back (it holds the session in memory, as it was).
  await db.query("UPDATE sessions SET document = '{\"not\":\"a session\"}'::json, version = version + 1 WHERE session_id = 'broken'")
  t.same([...(await backup(t, a)).keys()], ['good.json'])
  t.ok(log.lines().some((line) => line.session_id === 'broken' && /left out/.test(String(line.msg))), 'the left-out session is logged')
})
