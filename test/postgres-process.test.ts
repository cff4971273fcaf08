import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import pg from 'pg'
import { connectionConfig } from '../services/store/postgres/pool.js'
import { testDatabase } from './postgres.js'
import { call, scratch, type ServerProcess } from './server-process.js'

const API = '/api/v1/tasks'
const SESSIONS = ['p1', 'p2', 'p3', 'p4', 'p5']
const WORKERS = 8
const ROUNDS = 3

interface StoredTask { id: string, instruction: string, status: string }

/** Every active session as the database holds it: read straight from the rows, not through the service. */
async function rows (url: string): Promise<Map<string, StoredTask[]>> {
  const client = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 0 }))
  await client.connect()
  try {
    const result = await client.query<{ session_id: string, document: string }>('SELECT session_id, document::text AS document FROM sessions WHERE archived_at IS NULL')
    return new Map(result.rows.map((row) => [row.session_id, (JSON.parse(row.document) as { session: { tasks: StoredTask[] } }).session.tasks]))
  } finally {
    await client.end()
  }
}

t.test('kill -9 under concurrent load on PostgreSQL: every acknowledged change is in the database, nothing twice, nothing left InProgress', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const { start } = await scratch(t)
  // One replica id across restarts (a pod keeps its name): the restarted server takes its own
  // sessions over at once, as a single server does after a crash.
  const env = { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_ARCHIVE_DAYS: '0', TASK_REPLICA_ID: 'solo' }
  const ackedCreates: Array<{ session: string, ids: string[] }> = []
  const ackedExecutes: Array<{ session: string, id: string }> = []
  const unexpected: string[] = []

  const verify = async (server: ServerProcess, label: string): Promise<void> => {
    const stored = await rows(url)
    const missing = ackedCreates.filter(({ session, ids }) => ids.some((id) => !(stored.get(session) ?? []).some((task) => task.id === id)))
    const notDone = ackedExecutes.filter(({ session, id }) => (stored.get(session) ?? []).find((task) => task.id === id)?.status !== 'Completed')
    const duplicated = [...stored].filter(([, tasks]) => new Set(tasks.map((task) => task.id)).size !== tasks.length).map(([id]) => id)
    t.same(missing, [], `${label}: every acknowledged create's tasks are in the database`)
    t.same(notDone, [], `${label}: every acknowledged execute's task is Completed there`)
    t.same(duplicated, [], `${label}: no task id twice within a session`)
    const inProgress = [...stored].flatMap(([id, tasks]) => tasks.filter((task) => task.status === 'InProgress').map((task) => `${id}/${task.id}`))
    t.same(inProgress, [], `${label}: no task left InProgress once restored`)
    const stats = await call(server, 'GET', `${API}/stats`)
    t.equal(stats.body.storage.failed_loads, 0, `${label}: every row loaded`)
  }

  for (let round = 0; round < ROUNDS; round++) {
    const server = await start(env)
    if (round > 0) await verify(server, `after kill ${round}`)
    let killed = false
    let acked = 0
    let executed = 0
    let counter = 0
    const worker = async (w: number): Promise<void> => {
      while (!killed) {
        const session = SESSIONS[Math.floor(Math.random() * SESSIONS.length)] as string
        const n = counter++
        try {
          if (Math.random() < 0.5) {
            const res = await call(server, 'POST', `${API}/create`, { session_id: session, tasks: [{ instruction: `r${round} w${w} n${n} a` }, { instruction: `r${round} w${w} n${n} b` }] })
            if (res.status === 200) {
              ackedCreates.push({ session, ids: res.body.task_ids as string[] })
              acked++
            } else if (!killed) unexpected.push(`create ${session}: ${res.status} ${JSON.stringify(res.body)}`)
          } else {
            const res = await call(server, 'POST', `${API}/execute`, { session_id: session })
            if (res.status === 200) {
              ackedExecutes.push({ session, id: res.body.task_id as string })
              acked++
              executed++
            } else if (!killed && res.status !== 404 && res.status !== 409) unexpected.push(`execute ${session}: ${res.status} ${JSON.stringify(res.body)}`)
          }
        } catch (err) {
          // A request cut off by the kill is not acknowledged; anything else is a real error.
          if (!killed) throw err
        }
      }
    }
    const workers = Array.from({ length: WORKERS }, async (_, w) => worker(w))
    const deadline = Date.now() + 20_000
    // Killed once both kinds of change were acknowledged (on a loaded host creates outpace the
    // executes, which run an agent): every round then tests both.
    while ((acked < 6 || executed === 0) && Date.now() < deadline && server.exit() === null) await sleep(5)
    await sleep(Math.floor(Math.random() * 100))
    t.equal(server.exit(), null, `round ${round}: still running when killed`)
    server.child.kill('SIGKILL')
    killed = true
    t.equal((await server.exited).signal, 'SIGKILL', `round ${round}: killed by SIGKILL`)
    await Promise.all(workers)
    t.ok(acked > 0, `round ${round}: some requests were acknowledged (${acked})`)
  }
  const last = await start(env)
  await verify(last, `after kill ${ROUNDS}`)
  t.ok(ackedExecutes.length > 0, `some executes were acknowledged (${ackedExecutes.length})`)
  t.same(unexpected, [], 'no request failed for another reason than the kill')
})
