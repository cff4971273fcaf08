// Part of 12 (PostgreSQL): GET /list with archived sessions at N sessions (half archived, with
// older archived copies a list passes over), on a server as users run it (logging at info; on
// PostgreSQL a server is always one of the replicas, so it lists from the rows). Floor: the same
// server's list of active sessions. Also GET /health's p99 while four clients list with archived
// sessions, against its p99 on the idle server.
import { join } from 'node:path'
import { startServer } from '../lib/http.mjs'
import { archiveHalf, fillSessions, openStore, sectionDatabase } from '../lib/postgres.mjs'
import { median, now, percentile } from '../lib/stats.mjs'

const LIST = '/api/v1/tasks/list?session_id=all&limit=50'

async function sequential (url, n) {
  const times = []
  for (let i = 0; i < n + 5; i++) {
    const t = now()
    const answer = await fetch(url)
    await answer.arrayBuffer()
    if (answer.status !== 200) throw new Error(`${url} answered ${answer.status}`)
    if (i >= 5) times.push(now() - t)
  }
  return times
}

/** /health's latencies while `clients` loops fetch `busy` for `ms`. */
async function healthUnder (base, busy, clients, ms) {
  let stop = false
  const loops = Array.from({ length: clients }, async () => {
    let lists = 0
    while (!stop) {
      await (await fetch(`${base}${busy}`)).arrayBuffer()
      lists++
    }
    return lists
  })
  const times = []
  const until = now() + ms
  while (now() < until) {
    const t = now()
    await (await fetch(`${base}/health`)).arrayBuffer()
    times.push(now() - t)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  stop = true
  const lists = (await Promise.all(loops)).reduce((a, b) => a + b, 0)
  return { times, lists_per_s: lists / (ms / 1000) }
}

async function listFigures ({ quick, row, log, trackedDir }, db, res) {
  const sessions = quick ? 2_000 : 100_000
  const schema = `tv_list_${sessions}`
  const label = sessions.toLocaleString('en-US')
  const store = await openStore(db.url, schema)
  await store.close()
  const t = now()
  await fillSessions(db.url, schema, sessions, 10)
  await archiveHalf(db.url, schema)
  log(`  lists: filled ${label} sessions, half archived, in ${((now() - t) / 1000).toFixed(1)} s`)
  const out = { sessions }
  res.lists = out
  const n = quick ? 30 : 100
  const server = await startServer({
    kind: 'app',
    dir: trackedDir('pg-lists'),
    logger: 'production',
    logFile: join(trackedDir('pg-lists-logs'), 'lists.log'),
    config: { TASK_STORE: 'postgres', DATABASE_URL: db.url, TASK_DB_SCHEMA: schema, TASK_ARCHIVE_DAYS: 100_000 }
  })
  try {
    const figures = {}
    for (const filter of ['exclude', 'include', 'only']) figures[filter] = median(await sequential(`${server.url}${LIST}&archived=${filter}&offset=10`, n))
    const idle = (await healthUnder(server.url, null, 0, quick ? 1000 : 3000)).times
    const busy = await healthUnder(server.url, `${LIST}&archived=include`, 4, quick ? 1000 : 3000)
    Object.assign(out, { list_p50_ms: figures, health: { idle_p99_ms: percentile(idle, 99), busy_p99_ms: percentile(busy.times, 99), lists_per_s: busy.lists_per_s } })
    for (const filter of ['include', 'only']) {
      const ratio = figures[filter] / figures.exclude
      row(`PostgreSQL: GET /list archived=${filter} at ${label} sessions (half archived), p50`, { ours: figures[filter], floor: figures.exclude, floorLabel: 'the same server\'s list of active sessions', unit: 'ms', ratio, ratioOf: `${filter}/active` })
    }
    row(`PostgreSQL: GET /health p99 while 4 clients list with archived sessions (${Math.round(busy.lists_per_s)} lists/s)`, { ours: out.health.busy_p99_ms, floor: out.health.idle_p99_ms, floorLabel: 'idle server', unit: 'ms', ratio: out.health.busy_p99_ms / out.health.idle_p99_ms, ratioOf: 'busy/idle' })
  } finally {
    await server.stop()
  }
}

export async function benchPostgresLists (ctx) {
  const { sections } = ctx
  const db = await sectionDatabase(ctx, 'lists')
  if (db === null) return
  const res = { database: db.name }
  sections.lists = res
  try {
    await listFigures(ctx, db, res)
  } finally {
    await db.drop()
  }
}
