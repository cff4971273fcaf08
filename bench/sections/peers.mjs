// 13. Peers (issue 17): the same work on every side, in the same run: S groups of T tasks
// (full: 100 groups, 10,000 tasks; quick: 10 groups of 50, 500 tasks) completed by a no-op handler,
// 16 in flight, timed from the first create/insert to the last completion made durable.
//   taskvault file      TaskManager on FileSessionStore, echo agent, auto-save on: sessions created,
//                       then executeAll with 16 sessions at once; every state change of a task
//                       (InProgress, then its result) is saved before the run goes on: temp file +
//                       fsync + rename + folder fsync of the whole session document;
//   taskvault HTTP      the server child logging as `npm start` does, file store: POST /create per
//                       session, then POST /execute-all per session, 16 requests in flight;
//   taskvault PG        TaskManager on PostgresSessionStore (server defaults): each save one
//                       statement committed with synchronous_commit on;
//   pg-boss             S inserts of T jobs, 16 workers (batchSize 1): per job a fetch UPDATE and
//                       a complete UPDATE, each its own commit (same database server as taskvault PG);
//   BullMQ              S addBulk of T jobs, one Worker with concurrency 16 and a no-op processor,
//                       against (a) the machine's Redis as it is configured (CONFIG GET reported) and
//                       (b) a redis-server started here with appendonly yes, appendfsync always.
//   disk ceiling        no service: what any store keeping one durable file per session can reach
//                       on this disk. 2 x S x T writes of a document the size of the file side's
//                       average (open temp + write + fsync + close + rename, no folder fsync, so
//                       less than the contract asks), IN_FLIGHT at once; reported as tasks/s (2 per task).
// Full mode: 3 rounds, sides in alternating order, median tasks/s; quick: 1 round. A peer that
// cannot be reached (PostgreSQL, Redis, redis-server) is reported as such; the rest still runs.
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { rawFileSave } from '../lib/durable.mjs'
import { makeSession, serialize, sessionOfBytes } from '../lib/fixtures.mjs'
import { countingStore } from '../lib/counting-store.mjs'
import { startServer } from '../lib/http.mjs'
import { IN_FLIGHT, limited, runPgBoss, runTaskvault, taskSpecs, tasksPerSecond } from '../lib/peers.mjs'
import { ADMIN_URL, openStore, throwawayDatabase, unreachable } from '../lib/postgres.mjs'
import { MACHINE_REDIS, REDIS_SERVER, probeRedis, runBullmq, startRedis } from '../lib/redis.mjs'
import { median, now } from '../lib/stats.mjs'

/** What each side makes durable per task, and when (rows and JSON). */
const DURABLE = {
  file: 'per task 2 saves of the whole session document (InProgress, then result), each awaited before the run goes on: temp file + fsync + rename + folder fsync (folder fsyncs shared by concurrent saves)',
  http: 'as the file side, behind POST /create and POST /execute-all (answered after the last save), server logging at info to a file',
  postgres: 'per task 2 saves of the whole session document, each one UPDATE committed (synchronous_commit on) before the run goes on',
  pgboss: 'per job a fetch UPDATE (state active) and a complete UPDATE (state completed), each committed (synchronous_commit on); inserts one group of jobs per commit',
  bullmq: 'per job Redis scripts (move to active, move to completed); durable only if Redis persists them: with appendfsync always the AOF is fsynced before each reply',
  ceiling: 'per task 2 writes of a file the size of the average session document (temp file + write + fsync + close + rename; no folder fsync), 16 at once: the most a one-file-per-session store can make durable here'
}

/**
 * The disk's ceiling for a one-file-per-session store: 2 x S x T raw saves (no folder fsync) of
 * a document as big as the file side's average, IN_FLIGHT at once, each lane writing its group's file.
 */
async function ceilingSide ({ trackedDir, dropDir }, S, T, data) {
  const dir = trackedDir('peers-ceiling')
  try {
    const t = now()
    await limited(IN_FLIGHT, Array.from({ length: S }, (_, s) => async () => {
      for (let k = 0; k < 2 * T; k++) await rawFileSave(dir, `g${s}.json`, data)
    }))
    return { ms: now() - t, tasks: S * T, saves: 2 * S * T, document_bytes: 2 * S * T * data.length }
  } finally {
    dropDir(dir)
  }
}

async function fileSide ({ trackedDir, dropDir }, S, T, r) {
  const dir = trackedDir('peers-file')
  const inner = new FileSessionStore({ dir })
  await inner.init()
  const { store, counter } = countingStore(inner)
  let before = null
  try {
    const x = await runTaskvault(store, S, T, { prefix: `pf${r}`, warm: true, onStart: () => { before = { ...counter } } })
    return { ...x, saves: counter.saves - before.saves, document_bytes: counter.bytes - before.bytes }
  } finally {
    await inner.close()
    dropDir(dir)
  }
}

async function post (url, body) {
  const answer = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const text = await answer.text()
  if (answer.status !== 200) throw new Error(`POST ${new URL(url).pathname} answered ${answer.status}: ${text.slice(0, 200)}`)
  return JSON.parse(text)
}

/** The HTTP side's server for round `r`, starting (its folder, log file and start promise, observed). */
function startHttpServer ({ trackedDir }, r, logs) {
  const dir = trackedDir('peers-http')
  const logFile = join(logs, `http-r${r}.log`)
  const starting = startServer({ kind: 'app', dir, logger: 'production', logFile })
  starting.catch(() => {})
  return { dir, logFile, starting }
}

/** `started`: the round's server from startHttpServer, when it was started ahead (quick run); else started here. */
async function httpSide (ctx, S, T, r, logs, started = null) {
  const { dir, logFile, starting } = started ?? startHttpServer(ctx, r, logs)
  let server
  try {
    server = await starting
  } catch (err) {
    ctx.dropDir(dir)
    throw err
  }
  const tasks = taskSpecs(T)
  const api = `${server.url}/api/v1/tasks`
  let result
  try {
    await post(`${api}/create`, { session_id: `warm_${r}`, tasks: tasks.slice(0, 2) })
    await post(`${api}/execute-all`, { session_id: `warm_${r}` })
    const cpu0 = await server.cpu()
    const t = now()
    await limited(IN_FLIGHT, Array.from({ length: S }, (_, s) => () => post(`${api}/create`, { session_id: `ph${r}_${s}`, tasks })))
    const done = await limited(IN_FLIGHT, Array.from({ length: S }, (_, s) => () => post(`${api}/execute-all`, { session_id: `ph${r}_${s}` })))
    const ms = now() - t
    const cpu1 = await server.cpu()
    const executed = done.reduce((a, x) => a + x.results.filter((task) => task.status === 'Completed').length, 0)
    if (executed !== S * T) throw new Error(`HTTP executed ${executed}/${S * T}`)
    const serverCpuUs = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    result = { ms, tasks: S * T, requests: 2 * S, server_cpu_us_per_task: serverCpuUs / (S * T) }
  } finally {
    await server.stop()
    ctx.dropDir(dir)
  }
  result.log_lines = readFileSync(logFile, 'utf8').split('\n').length - 1
  return result
}

async function postgresSide (db, S, T, r) {
  const inner = await openStore(db.url, `tv_peers_${r}`)
  const { store, counter } = countingStore(inner)
  let before = null
  try {
    const x = await runTaskvault(store, S, T, { prefix: `pp${r}`, warm: true, onStart: () => { before = { ...counter } } })
    return { ...x, saves: counter.saves - before.saves, document_bytes: counter.bytes - before.bytes }
  } finally {
    await inner.close()
  }
}

const fmtRate = (x) => `${Math.round(x).toLocaleString('en-US')} tasks/s`

export async function benchPeers (ctx) {
  const { quick, row, log, alternate, sections, trackedDir, dropDir } = ctx
  const S = quick ? 10 : 100
  const T = quick ? 50 : 100
  const N = S * T
  const rounds = quick ? 1 : 3
  const label = N.toLocaleString('en-US')
  const tag = randomBytes(4).toString('hex')
  const res = { groups: S, tasks_per_group: T, tasks: N, in_flight: IN_FLIGHT, rounds, durable_per_task: DURABLE, sides: {}, unavailable: {} }
  sections.peers = res
  const sides = {}
  const unavailable = res.unavailable

  // taskvault, always. The quick run's one HTTP server starts now, beside the set-up below (untimed).
  sides.file = (r) => fileSide(ctx, S, T, r)
  const logs = trackedDir('peers-logs')
  let early = quick ? startHttpServer(ctx, 0, logs) : null
  sides.http = (r) => {
    const started = early
    early = null
    return httpSide(ctx, S, T, r, logs, started)
  }

  // As big as the file side's average save in its latest round (it runs first), else a fixture's.
  const documentBytes = () => {
    const last = runs.file?.at(-1)
    return last === undefined ? serialize(makeSession('ceiling', T)).length : Math.round(last.document_bytes / last.saves)
  }
  sides.ceiling = (r) => ceilingSide(ctx, S, T, serialize(sessionOfBytes('ceiling', documentBytes())))

  // PostgreSQL: taskvault's store and pg-boss, in one throwaway database.
  let db = null
  const pgWhy = await unreachable()
  if (pgWhy === null) {
    try {
      db = await throwawayDatabase()
      log(`  database ${db.name}`)
      res.database = db.name
      sides.postgres = (r) => postgresSide(db, S, T, r)
      sides.pgboss = (r) => runPgBoss(db.url, `peers_${tag}_r${r}`, S, T)
    } catch (err) {
      unavailable.postgres = unavailable.pgboss = `throwaway database: ${err.message}`
    }
  } else {
    unavailable.postgres = unavailable.pgboss = `no PostgreSQL at ${ADMIN_URL.replace(/:[^:@/]*@/, ':***@')} (${pgWhy})`
  }

  // BullMQ on the machine's Redis, as configured.
  const machine = await probeRedis(MACHINE_REDIS)
  res.machine_redis = { ...MACHINE_REDIS, ...machine }
  if (machine.reachable) {
    log(`  machine Redis ${MACHINE_REDIS.host}:${MACHINE_REDIS.port} ${machine.version}: appendonly ${machine.appendonly}, appendfsync ${machine.appendfsync}, save '${machine.save}'`)
    sides.bullmq_machine = (r) => runBullmq(MACHINE_REDIS, `taskvault-bench-${tag}-m${r}`, S, T)
  } else {
    unavailable.bullmq_machine = `no Redis at ${MACHINE_REDIS.host}:${MACHINE_REDIS.port} (${machine.reason})`
  }

  // BullMQ on a redis-server of our own, append-only file fsynced on every write.
  let own = null
  const ownDir = trackedDir('peers-redis')
  try {
    own = await startRedis(ownDir)
    const probe = await probeRedis(own)
    res.own_redis = { bin: REDIS_SERVER, args: own.args, version: probe.version, appendonly: probe.appendonly, appendfsync: probe.appendfsync, save: probe.save }
    log(`  own redis-server on port ${own.port}: appendonly ${probe.appendonly}, appendfsync ${probe.appendfsync}, save '${probe.save}'`)
    sides.bullmq_fsync = (r) => runBullmq(own, `taskvault-bench-${tag}-f${r}`, S, T)
  } catch (err) {
    unavailable.bullmq_fsync = `own redis-server: ${err.message}`
  }
  for (const [name, why] of Object.entries(unavailable)) log(`  ${name}: not measured (${why})`)
  for (const [name, what] of Object.entries(DURABLE)) log(`  durable, ${name}: ${what}`)

  const runs = Object.fromEntries(Object.keys(sides).map((name) => [name, []]))
  try {
    log(`  ${label} tasks in ${S} groups of ${T}, ${IN_FLIGHT} in flight, ${rounds} round${rounds > 1 ? 's' : ''}: ${Object.keys(sides).join(', ')}`)
    for (let r = 0; r < rounds; r++) {
      await alternate(r, Object.keys(sides).map((name) => async () => {
        if (unavailable[name] !== undefined) return
        try {
          const x = await sides[name](r)
          runs[name].push(x)
          log(`    r${r} ${name}: ${fmtRate(tasksPerSecond(x))}`)
        } catch (err) {
          unavailable[name] = `failed in round ${r}: ${err.message.split('\n')[0]}`
          log(`    r${r} ${name}: FAILED (${unavailable[name]})`)
        }
      }))
    }
  } finally {
    // Started ahead but never used (the run stopped before the HTTP side).
    if (early !== null) {
      await early.starting.then((server) => server.stop(), () => {})
      dropDir(early.dir)
    }
    await own?.stop()
    dropDir(ownDir)
    await db?.drop().catch((err) => log(`  could not drop ${db.name}: ${err.message}`))
  }
  dropDir(logs)

  const rate = {}
  for (const [name, list] of Object.entries(runs)) {
    if (unavailable[name] !== undefined || list.length === 0) continue
    rate[name] = median(list.map(tasksPerSecond))
    const first = list[0]
    const perTask = {}
    if (first.saves !== undefined) Object.assign(perTask, { saves: first.saves / first.tasks, document_bytes: first.document_bytes / first.tasks })
    if (first.statements_total !== undefined) perTask.statements = first.statements_total / first.tasks
    if (first.redis_commands !== undefined) Object.assign(perTask, { redis_commands: first.redis_commands / first.tasks, aof_bytes: first.aof_bytes / first.tasks })
    if (first.server_cpu_us_per_task !== undefined) perTask.server_cpu_us = first.server_cpu_us_per_task
    res.sides[name] = { tasks_per_s: rate[name], per_task: perTask, rounds: list }
  }

  const quickNote = quick ? ' (quick; goal names 10,000)' : ''
  const work = `${label} tasks, ${S} groups x ${T}, ${IN_FLIGHT} in flight`
  const keeps = machine.appendonly === 'yes' ? `AOF, appendfsync ${machine.appendfsync}` : machine.save ? 'RDB snapshots only' : 'nothing on disk'
  const machineLabel = machine.reachable ? `appendonly ${machine.appendonly}, save '${machine.save}': ${keeps}` : 'unreachable'
  const compare = (figure, ours, peer, floorLabel, ratioOf, goal) => {
    const missing = [ours, peer].map((k) => unavailable[k] ?? (rate[k] === undefined ? 'not measured' : null)).find((why) => why !== null)
    if (missing !== undefined) {
      row(`${figure}: not measured (${missing.slice(0, 120)})`, { ours: rate[ours] ?? NaN, floor: rate[peer] ?? NaN, floorLabel, unit: 'tasks/s', ratioOf, goal })
      return
    }
    const ratio = rate[ours] / rate[peer]
    row(figure, { ours: rate[ours], floor: rate[peer], floorLabel, unit: 'tasks/s', ratio, ratioOf, ...(goal !== undefined && { goal, met: ratio >= Number(goal.replace('>=', '')) }) })
  }
  compare(`peers: taskvault file store (API; 2 fsynced saves per task) vs pg-boss, ${work}${quickNote}`, 'file', 'pgboss', 'pg-boss: fetch + complete UPDATE commits per job', 'taskvault/pg-boss', '>= 1.0')
  compare(`peers: taskvault file store (API; 2 fsynced saves per task) vs BullMQ on Redis appendfsync always, ${work}${quickNote}`, 'file', 'bullmq_fsync', 'BullMQ, own redis-server, AOF fsynced per write', 'taskvault/BullMQ', '>= 0.5')
  compare(`peers: the disk's ceiling for one durable file per session (raw temp + fsync + rename, 2 per task, no folder fsync) vs BullMQ on Redis appendfsync always, ${work}${quickNote}`, 'ceiling', 'bullmq_fsync', 'BullMQ, own redis-server, AOF fsynced per write', 'ceiling/BullMQ')
  compare(`peers: taskvault file store (API) vs the disk's ceiling for one durable file per session, ${work}${quickNote}`, 'file', 'ceiling', 'raw temp + fsync + rename, 2 per task, no folder fsync', 'taskvault/ceiling')
  compare(`peers: taskvault HTTP (create + execute-all per session, logging as npm start) vs pg-boss, ${work}${quickNote}`, 'http', 'pgboss', 'pg-boss: fetch + complete UPDATE commits per job', 'taskvault/pg-boss')
  compare(`peers: taskvault file store (API) vs BullMQ on the machine's Redis (${machineLabel}), ${work}${quickNote}`, 'file', 'bullmq_machine', `BullMQ, Redis ${MACHINE_REDIS.host}:${MACHINE_REDIS.port}, appendfsync ${machine.appendfsync ?? '-'}`, 'taskvault/BullMQ')
  compare(`peers: taskvault PostgreSQL store (API; 2 committed UPDATEs per task) vs pg-boss, ${work}${quickNote}`, 'postgres', 'pgboss', 'pg-boss: fetch + complete UPDATE commits per job', 'taskvault/pg-boss')
}
