/**
 * Servers on one PostgreSQL schema know of each other (the first step of issue 14): each keeps
 * a heartbeat row fresh (TASK_REPLICA_ID, every third of TASK_LEASE_MS), /stats lists the
 * replicas heard from within TASK_LEASE_MS, and a clean shutdown leaves the list at once.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { buildApp } from '../app.js'
import { API, tempDir } from './helper.js'
import { inspector, openTestStore, testDatabase } from './postgres.js'

const SCHEMA = 'tv_replicas'

const listed = async (store: { totals: () => Promise<{ storage: { replicas: string[] } }> }): Promise<string[]> => (await store.totals()).storage.replicas

t.test('each store on the schema is listed while it beats, and leaves the list when it closes', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const a = await openTestStore(t, url, SCHEMA, { replicaId: 'pod-a', leaseMs: 1_200 })
  const b = await openTestStore(t, url, SCHEMA, { replicaId: 'pod-b', leaseMs: 1_200 })
  t.same(await listed(a), ['pod-a', 'pod-b'], 'both, from either')
  t.same(await listed(b), ['pod-a', 'pod-b'])

  await sleep(2_500)
  t.same(await listed(a), ['pod-a', 'pod-b'], 'still listed after twice the lease: the heartbeats keep them fresh')

  // A replica that died without a word: its row stops moving.
  await db.query("INSERT INTO replicas (replica_id, seen_at) VALUES ('pod-dead', now() - interval '2 seconds')")
  await db.query("INSERT INTO replicas (replica_id, seen_at) VALUES ('pod-long-gone', now() - interval '1 hour')")
  t.same(await listed(a), ['pod-a', 'pod-b'], 'silent longer than the lease: not listed')
  const rows = (await db.query<{ replica_id: string }>('SELECT replica_id FROM replicas ORDER BY replica_id')).rows.map((row) => row.replica_id)
  t.same(rows, ['pod-a', 'pod-b', 'pod-dead'], 'rows silent for ten leases are cleared on the way')

  await b.close()
  t.same(await listed(a), ['pod-a'], 'a clean close leaves the list at once')
})

t.test('a store without a replica id (the command-line tool) writes no heartbeat', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url, SCHEMA)
  const tool = await openTestStore(t, url, SCHEMA)
  t.same(await listed(tool), [])
  t.equal((await db.query('SELECT 1 FROM replicas')).rowCount, 0)
})

t.test('the server: /stats lists TASK_REPLICA_ID (hostname-pid by default); a malformed one stops the boot naming it', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const boot = async (extra: Record<string, string>): Promise<Awaited<ReturnType<typeof buildApp>>> => {
    const app = await buildApp({ readEnvironment: false, config: { TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_SCHEMA: SCHEMA, TASK_STORAGE_DIR: await tempDir(t), TASK_ARCHIVE_DAYS: 0, ...extra } })
    t.teardown(() => app.close())
    await app.ready()
    return app
  }
  const named = await boot({ TASK_REPLICA_ID: 'taskvault-0' })
  const unnamed = await boot({})
  const res = await named.inject({ method: 'GET', url: `${API}/stats` })
  t.equal(res.statusCode, 200)
  const replicas = res.json().storage.replicas as string[]
  t.equal(replicas.length, 2)
  t.ok(replicas.includes('taskvault-0'), 'the one named')
  t.ok(replicas.some((id) => id.endsWith(`-${process.pid}`)), 'the other as hostname-pid')
  await unnamed.close()
  t.same((await named.inject({ method: 'GET', url: `${API}/stats` })).json().storage.replicas, ['taskvault-0'], 'gone once it shut down')

  await t.rejects(boot({ TASK_REPLICA_ID: 'not a name!' }), /TASK_REPLICA_ID/u)
})
