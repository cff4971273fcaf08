// 15. Several replicas on one PostgreSQL (issue 14): real server processes (`node dist/server.js`,
// logging pino at info to a file as `npm start` does), each its own TASK_REPLICA_ID, one
// throwaway database (taskvault_bench_<random>, dropped at the end), one schema per figure:
//   throughput      1, 2 and 3 replicas: POST /create (autocannon, one instance per replica, the
//                   same 48 connections in all split between them), POST /execute on sessions with
//                   pending tasks (echo agent; each replica gets its own sessions, so no two
//                   replicas ask for one session), GET /progress; CPU of the servers, of every
//                   PostgreSQL process and of this process over each phase (/proc utime+stime);
//   lease cost      1,000 sessions each in a background run whose webhook agent is held open, over
//                   the replicas, TASK_LEASE_MS 3000: the statements that write `sessions` and
//                   `replicas` over 3 leases, counted by triggers (pg_stat_statements is not
//                   loaded: shared_preload_libraries is empty), vs the ceiling of issue 14;
//   failover        2 replicas, a 200-task background run on A (webhook agent answering in 50 ms),
//                   kill -9 of A once it runs there: time to the first task completed after it.
// Skipped with one line when no PostgreSQL answers. Quick: 1 and 2 replicas, short loads,
// 100 idle sessions watched over two renewal periods (not three leases; sampled over one), 1 failover trial.
import { cpSync, mkdirSync, readdirSync, readFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { THREE_TASK_TEXT } from '../lib/fixtures.mjs'
import { cannon } from '../lib/http.mjs'
import { ADMIN_URL, sectionDatabase } from '../lib/postgres.mjs'
import { databasePids, eachLimit, installCounters, postJson, sampleStatements, postgresCpu, postgresCpuDelta, startAgent, startReplica, startReplicas, statCounters } from '../lib/replicas.mjs'
import { median, now } from '../lib/stats.mjs'

const CONNECTIONS = 48
const LEASE_MS = 3000
const SWEEP_MS = 1000

/**
 * CPU over a phase: the servers (sum), the database's PostgreSQL backends (and, apart, the
 * shared walwriter/bgwriter/checkpointer), this process; ms, cores (ms per wall ms) and the
 * database's share of the three. Backends that exit during the phase are lost (the pools keep theirs).
 */
async function cpuMeter (servers, dbName) {
  const pids0 = await databasePids(ADMIN_URL, dbName)
  const pg0 = postgresCpu()
  const sv0 = servers.map((s) => s.cpuMs())
  const me0 = process.cpuUsage()
  const load0 = os.loadavg()[0]
  const t0 = now()
  return async () => {
    const wallMs = now() - t0
    const pg1 = postgresCpu()
    const me = process.cpuUsage(me0)
    const serverMs = servers.reduce((a, s, i) => a + ((s.cpuMs() ?? sv0[i]) - sv0[i]), 0)
    const pids1 = await databasePids(ADMIN_URL, dbName)
    const pick = (set0, set1) => new Map([...pg1].filter(([pid]) => set0.has(pid) || set1.has(pid)))
    const dbMs = postgresCpuDelta(pg0, pick(pids0.ours, pids1.ours))
    const sharedMs = postgresCpuDelta(pg0, pick(pids0.shared, pids1.shared))
    const allPgMs = postgresCpuDelta(pg0, pg1)
    const benchMs = (me.user + me.system) / 1000
    const total = dbMs + serverMs + benchMs
    return { wall_ms: wallMs, db_cpu_ms: dbMs, db_shared_processes_cpu_ms: sharedMs, all_postgres_cpu_ms: allPgMs, servers_cpu_ms: serverMs, bench_cpu_ms: benchMs, db_cores: dbMs / wallMs, servers_cores: serverMs / wallMs, bench_cores: benchMs / wallMs, all_postgres_cores: allPgMs / wallMs, db_share: dbMs / total, loadavg_1m: [load0, os.loadavg()[0]] }
  }
}

/** One autocannon per replica at once, the connections split between them; rates summed. */
async function spread (servers, dbName, makeOptions) {
  const per = Math.max(1, Math.floor(CONNECTIONS / servers.length))
  const meter = await cpuMeter(servers, dbName)
  const results = await Promise.all(servers.map((s, i) => cannon({ url: s.url, connections: per, ...makeOptions(s, i) })))
  const cpu = await meter()
  const sum = (k) => results.reduce((a, r) => a + r[k], 0)
  const ok = sum('ok')
  const wall = cpu.wall_ms / 1000
  const perOp = (ms) => (ms * 1000) / Math.max(1, ok)
  cpu.db_us_per_op = perOp(cpu.db_cpu_ms)
  cpu.servers_us_per_op = perOp(cpu.servers_cpu_ms)
  return { rps: ok / wall, ok, failed: sum('non2xx') + sum('errors') + sum('timeouts'), p99_ms_max: Math.max(...results.map((r) => r.p99_ms)), connections_per_replica: per, per_replica: results.map((r) => ({ rps: r.rps, ok: r.ok, non2xx: r.non2xx, errors: r.errors, timeouts: r.timeouts, p50_ms: r.p50_ms, p99_ms: r.p99_ms })), cpu }
}

async function throughput ({ P, quick, log, trackedDir }, db, res, logs) {
  const counts = quick ? [1, 2] : [1, 2, 3]
  const seconds = quick ? 0.3 : P.createSeconds
  // Quick: still more sessions per replica than connections, so no session is asked twice at once.
  const executeCap = quick ? 300 : 4500
  const out = { connections_total: CONNECTIONS, seconds, counts, runs: {} }
  res.throughput = out
  for (const n of counts) {
    const schema = `tv_tp_${n}`
    const servers = []
    try {
      servers.push(...await startReplicas(Array.from({ length: n }, (_, i) => ({ id: `tp${n}-r${i}`, databaseUrl: db.url, schema, leaseMs: 30_000, sweepMs: 5000, logFile: join(logs, `tp${n}-r${i}.log`), cwd: trackedDir(`tp${n}-r${i}`) }))))
      const run = { replicas: n }
      out.runs[n] = run
      // Warm-up: each replica's JIT and pool.
      let w = 0
      await spread(servers, db.name, (s) => ({ duration: quick ? 0.15 : 0.3, requests: [{ method: 'POST', path: '/api/v1/tasks/create', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: JSON.stringify({ session_id: `w${n}_${s.id}_${++w}`, instructions: THREE_TASK_TEXT }) }) }] }))
      // POST /create, 3 tasks per session.
      let c = 0
      run.create = await spread(servers, db.name, () => ({ duration: seconds, requests: [{ method: 'POST', path: '/api/v1/tasks/create', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: JSON.stringify({ session_id: `c${n}_${++c}`, instructions: THREE_TASK_TEXT }) }) }] }))
      // The sessions with pending tasks, dealt to the replicas in turn; a replica's requests go
      // round its own sessions, so each session is asked again only after all of them were.
      const client = new pg.Client({ connectionString: db.url })
      await client.connect()
      const ids = (await client.query(`SELECT session_id, tasks_pending FROM ${schema}.sessions WHERE archived_at IS NULL AND tasks_pending = 3 ORDER BY session_id`)).rows.map((r) => r.session_id)
      await client.end()
      const sessionsUsed = Math.min(ids.length, Math.floor(executeCap / 3))
      const parts = servers.map((_, i) => ids.slice(0, sessionsUsed).filter((_, k) => k % n === i))
      run.execute = await spread(servers, db.name, (s, i) => {
        let k = 0
        const mine = parts[i]
        return { amount: mine.length * 3, requests: [{ method: 'POST', path: '/api/v1/tasks/execute', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: JSON.stringify({ session_id: mine[k++ % mine.length] }) }) }] }
      })
      run.execute.tasks_planned = sessionsUsed * 3
      // GET /progress over the same sessions, each replica its own.
      run.progress = await spread(servers, db.name, (s, i) => {
        let k = 0
        const mine = parts[i]
        return { duration: seconds, requests: [{ method: 'GET', setupRequest: (req) => ({ ...req, path: `/api/v1/tasks/progress?session_id=${mine[k++ % mine.length]}` }) }] }
      })
      log(`  ${n} replica${n > 1 ? 's' : ''}: create ${run.create.rps.toFixed(0)} req/s, execute ${run.execute.rps.toFixed(0)} tasks/s, progress ${run.progress.rps.toFixed(0)} req/s; database CPU ${run.create.cpu.db_cores.toFixed(2)}/${run.execute.cpu.db_cores.toFixed(2)}/${run.progress.cpu.db_cores.toFixed(2)} cores, servers ${run.create.cpu.servers_cores.toFixed(2)}/${run.execute.cpu.servers_cores.toFixed(2)}/${run.progress.cpu.servers_cores.toFixed(2)}; failed ${run.create.failed}/${run.execute.failed}/${run.progress.failed}`)
    } finally {
      await Promise.all(servers.map((s) => s.stop()))
    }
  }
}

async function leaseCost ({ quick, log, trackedDir }, db, res, logs) {
  const R = quick ? 2 : 3
  const sessions = quick ? 100 : 1000
  // Quick: two renewal periods, sampled over one.
  const windowMs = quick ? 2 * LEASE_MS / 3 : 3 * LEASE_MS
  const schema = 'tv_lease'
  const agent = await startAgent()
  const servers = []
  const out = { replicas: R, sessions, lease_ms: LEASE_MS, sweep_interval_ms: SWEEP_MS, window_ms: windowMs, sampled_window_ms: quick ? LEASE_MS / 3 : windowMs }
  res.lease = out
  try {
    const names = Array.from({ length: R }, (_, i) => `lease-r${i}`)
    servers.push(...await startReplicas(names.map((id) => ({ id, databaseUrl: db.url, schema, leaseMs: LEASE_MS, sweepMs: SWEEP_MS, logFile: join(logs, `${id}.log`), cwd: trackedDir(id), agents: { default: { kind: 'webhook', url: `${agent.base}/hold?r=${id}`, timeout_ms: 600_000 } } }))))
    const ids = Array.from({ length: sessions }, (_, i) => `idle_${String(i).padStart(4, '0')}`)
    const failures = []
    await eachLimit(ids, 16, async (id, i) => {
      const s = servers[i % R]
      const a = await postJson(`${s.url}/api/v1/tasks/create`, { session_id: id, tasks: [{ instruction: `wait ${i}` }] })
      if (a.status !== 200) failures.push(['create', id, a.status, a.body])
      const b = await postJson(`${s.url}/api/v1/tasks/execute-all`, { session_id: id, wait: false })
      if (b.status !== 202) failures.push(['execute-all', id, b.status, b.body])
    })
    out.start_failures = failures.length
    if (failures.length) log(`  lease: ${failures.length} requests failed, first: ${JSON.stringify(failures[0]).slice(0, 300)}`)
    const deadline = Date.now() + 60_000
    while (agent.holding() < sessions - failures.length && Date.now() < deadline) await sleep(100)
    out.calls_held = agent.holding()
    out.calls_made = agent.calls.length
    const counters = await installCounters(db.url, schema)
    try {
      // Settling: a full lease, and long enough that pg_stat_* have published the set-up's counts
      // (PostgreSQL 15 publishes an idle backend's counts up to 10 s late). Quick: one renewal period.
      await sleep(quick ? LEASE_MS / 3 : Math.max(LEASE_MS, 11_000))
      const stat0 = await statCounters(db.url, db.name, schema)
      const from = await counters.now()
      const statFrom = from
      const meter = await cpuMeter(servers, db.name)
      await sleep(windowMs)
      const to = await counters.now()
      out.cpu = await meter()
      out.calls_held_at_end = agent.holding()
      const rows = await counters.between(from, to)
      const gaps = await counters.intervals(from, to)
      // A second window: every statement of the database's backends, from pg_stat_activity
      // sampled every 10 ms (this sampling costs CPU, so not during the first window).
      const t1 = await counters.now()
      const seen = await sampleStatements(ADMIN_URL, db.name, out.sampled_window_ms)
      const t2 = await counters.now()
      const shapes = {}
      for (const [key, q] of seen) {
        const at = Number(key.split('|')[1])
        if (at < t1 || at >= t2) continue
        shapes[q] = (shapes[q] ?? 0) + 1
      }
      const sampled = Object.values(shapes).reduce((a, x) => a + x, 0)
      out.all_statements_window2 = { seconds: (t2 - t1) / 1000, statements: sampled, per_s: sampled / ((t2 - t1) / 1000), per_replica_per_s: sampled / R / ((t2 - t1) / 1000), by_text: shapes, method: 'pg_stat_activity sampled every 10 ms, one count per (pid, query_start): a floor (two statements of one backend within 10 ms count once)' }
      // pg_stat_* are published by idle backends up to 10 s late: read them after as long.
      if (!quick) await sleep(11_000)
      const stat1 = await statCounters(db.url, db.name, schema)
      const statTo = await counters.now()
      out.window_ms_measured = to - from
      // Sessions whose agent was called more than once (its task run by two replicas, or twice).
      const bySession = new Map()
      for (const c of agent.calls) bySession.set(c.session_id, [...(bySession.get(c.session_id) ?? []), c])
      const dup = [...bySession].filter(([, cs]) => cs.length > 1)
      const rowsNow = new pg.Client({ connectionString: db.url })
      await rowsNow.connect()
      out.sessions_called_more_than_once = []
      for (const [id, cs] of dup) {
        const r = (await rowsNow.query(`SELECT owner, epoch::text, tasks_in_progress, has_background_run, lease_until > now() AS live FROM ${schema}.sessions WHERE session_id = $1 AND archived_at IS NULL`, [id])).rows[0]
        out.sessions_called_more_than_once.push({ session_id: id, created_on: servers[ids.indexOf(id) % R].id, calls: cs.map((c) => ({ replica: c.replica, attempt: c.attempt, started: new Date(c.started).toISOString(), open: c.answered === null })), row_after_window: r })
      }
      await rowsNow.end()
      if (dup.length) log(`  lease: ${dup.length} session(s) had their agent called more than once: ${JSON.stringify(out.sessions_called_more_than_once).slice(0, 600)}`)
      out.by_kind = rows
      const secs = (to - from) / 1000
      const perReplica = {}
      for (const s of servers) {
        const renew = rows.find((r) => r.tbl === 'sessions' && r.kind === 'renew' && r.replica === s.id)
        const beat = rows.find((r) => r.tbl === 'replicas' && r.replica === s.id)
        const g = gaps[s.id] ?? []
        perReplica[s.id] = { renew_statements: renew?.statements ?? 0, rows_renewed: renew?.rows ?? 0, heartbeats: beat?.statements ?? 0, renew_per_s: (renew?.statements ?? 0) / secs, rows_per_renewal: renew ? renew.rows / renew.statements : 0, interval_ms: { median: g.length ? median(g) : null, min: g.length ? Math.min(...g) : null, max: g.length ? Math.max(...g) : null } }
      }
      // The rate that does not depend on where the window's edges fall: 1 / the median interval between renewals.
      // The design renews every TASK_LEASE_MS/3, exactly the ceiling, so the goal allows 1% of timer jitter
      // (median intervals of 999.5-1003 ms were seen).
      const medians = Object.values(perReplica).map((p) => p.interval_ms.median).filter((x) => x !== null)
      out.renew_interval_median_ms = medians.length ? median(medians) : null
      out.renew_per_replica_per_s_from_interval = out.renew_interval_median_ms ? 1000 / out.renew_interval_median_ms : null
      out.per_replica = perReplica
      const kindTotal = (kind) => rows.filter((r) => r.tbl === 'sessions' && r.kind === kind).reduce((a, r) => a + r.statements, 0)
      // Renewals that renewed nothing (owner null in the changed rows) have no replica in the log.
      out.renew_statements_total = kindTotal('renew')
      out.sweep_statements_total = kindTotal('sweep')
      out.other_session_updates = rows.filter((r) => r.tbl === 'sessions' && !['renew', 'sweep'].includes(r.kind)).reduce((a, r) => a + r.statements, 0)
      out.lease_statements_per_replica_per_s = (out.renew_statements_total + out.sweep_statements_total) / R / secs
      out.renew_per_replica_per_s = out.renew_statements_total / R / secs
      out.design_per_replica_per_s = 3000 / LEASE_MS + 1000 / SWEEP_MS
      out.ceiling_per_replica_per_s = (1000 / LEASE_MS) * 3
      out.pg_stat = {
        note: 'pg_stat_database / pg_stat_user_tables deltas from the first read (11 s after the set-up) to the second (11 s after the end of both windows; seconds_covered), since PostgreSQL 15 publishes an idle backend\'s counts up to 10 s late; commits include the triggers\' inserts (same transactions) and the bench\'s own queries on this database (a few), so a cross-check only',
        commits: stat1.commits - stat0.commits,
        sessions_rows_updated: (stat1.tables.sessions?.upd ?? 0) - (stat0.tables.sessions?.upd ?? 0),
        replicas_rows_updated: (stat1.tables.replicas?.upd ?? 0) - (stat0.tables.replicas?.upd ?? 0),
        // From the first read to the second (the servers kept renewing through the 11 s wait).
        seconds_covered: (statTo - statFrom) / 1000,
        ...(quick && { quick: 'no 11 s waits: set-up commits published late land in these deltas' })
      }
      log(`  lease: ${R} replicas x ${sessions / R} idle sessions, ${secs.toFixed(1)} s: renewals ${out.renew_statements_total} (${out.renew_per_replica_per_s.toFixed(2)}/s per replica, ${Object.values(perReplica).map((p) => p.rows_per_renewal.toFixed(0)).join('/')} rows each), sweeps ${out.sweep_statements_total}, other session updates ${out.other_session_updates}; database CPU ${out.cpu.db_cores.toFixed(3)} cores, servers ${out.cpu.servers_cores.toFixed(3)}`)
    } finally {
      await counters.remove()
    }
  } finally {
    // Released first: a replica with no call held open stops at once, not after its shutdown grace.
    agent.release()
    await Promise.all(servers.map((s) => s.stop()))
    await agent.close()
  }
}

async function failover ({ quick, log, trackedDir }, db, res, logs) {
  const trials = quick ? 1 : 10
  const tasks = 200
  const schema = 'tv_failover'
  const agent = await startAgent()
  const agents = (id) => ({ default: { kind: 'webhook', url: `${agent.base}/slow?ms=50&r=${id}`, timeout_ms: 30_000 } })
  const bound = LEASE_MS + SWEEP_MS + 1000
  const out = { trials: [], lease_ms: LEASE_MS, sweep_interval_ms: SWEEP_MS, bound_ms: bound, tasks_per_session: tasks, agent_ms: 50 }
  res.failover = out
  const options = (id) => ({ id, databaseUrl: db.url, schema, leaseMs: LEASE_MS, sweepMs: SWEEP_MS, logFile: join(logs, `${id}.log`), cwd: trackedDir(id), agents: agents(id) })
  // B and the first trial's A start together; later trials start their A alone.
  const [b, firstA] = await startReplicas([options('fo-b'), options('fo-a0')])
  const client = new pg.Client({ connectionString: db.url })
  try {
    await client.connect()
    for (let k = 0; k < trials; k++) {
      const id = `fo-a${k}`
      const a = k === 0 ? firstA : await startReplica(options(id))
      const session = `fo_${k}`
      const trial = { replica_a: id, session_id: session }
      out.trials.push(trial)
      try {
        const created = await postJson(`${a.url}/api/v1/tasks/create`, { session_id: session, tasks: Array.from({ length: tasks }, (_, i) => ({ instruction: `step ${i}` })) })
        if (created.status !== 200) throw new Error(`create answered ${created.status}: ${JSON.stringify(created.body).slice(0, 200)}`)
        const started = await postJson(`${a.url}/api/v1/tasks/execute-all`, { session_id: session, wait: false })
        if (started.status !== 202) throw new Error(`execute-all answered ${started.status}: ${JSON.stringify(started.body).slice(0, 200)}`)
        // Running on A: the row names A, and A has completed a task (so a call is under way).
        const row = async () => (await client.query(`SELECT owner, epoch::text, tasks_completed, tasks_in_progress FROM ${schema}.sessions WHERE session_id = $1 AND archived_at IS NULL`, [session])).rows[0]
        const deadline = Date.now() + 20_000
        let r = await row()
        while (!(r.owner === id && r.tasks_completed >= 2) && Date.now() < deadline) { await sleep(20); r = await row() }
        if (r.owner !== id) throw new Error(`not running on ${id} after 20 s: owner ${r.owner}`)
        // Past a random part of A's renewal period, so the kill does not always fall right after a renewal.
        await sleep(Math.random() * LEASE_MS / 3)
        const killedAt = Date.now()
        const callsBefore = agent.calls.length
        await a.kill9()
        // The baseline is read once A is gone: a save A sent just before the kill is in it, so it is
        // never taken for the first task completed elsewhere.
        const before = await row()
        trial.completed_at_kill = before.tasks_completed
        trial.baseline_read_after_kill_ms = Date.now() - killedAt
        const end = killedAt + 4 * bound
        let after = await row()
        while (Date.now() < end) {
          after = await row()
          if (trial.claimed_ms === undefined && after.owner !== null && after.owner !== id) trial.claimed_ms = Date.now() - killedAt
          if (after.owner !== id && after.tasks_completed > before.tasks_completed) break
          await sleep(10)
        }
        // Calls by another replica started after the kill (none can have started before it).
        const firstCall = agent.calls.slice(callsBefore).find((c) => c.replica !== id)
        const firstAnswer = agent.calls.slice(callsBefore).find((c) => c.replica !== id && c.answered !== null)
        if (after.owner !== id && after.tasks_completed > before.tasks_completed) {
          trial.ms = Date.now() - killedAt
          trial.new_owner = after.owner
          trial.first_call_after_kill_ms = firstCall ? firstCall.started - killedAt : null
          trial.first_answer_after_kill_ms = firstAnswer ? firstAnswer.answered - killedAt : null
          // Calls by A answered after the kill (its HTTP client is gone with it: there should be none).
          trial.calls_by_a_after_kill = agent.calls.slice(callsBefore).filter((c) => c.replica === id).length
        } else {
          trial.ms = null
          trial.note = `no completion by another replica within ${4 * bound} ms: owner ${after.owner}, completed ${after.tasks_completed} (was ${before.tasks_completed})`
        }
        log(`  failover ${k + 1}/${trials}: ${trial.ms === null ? trial.note : `${trial.ms} ms (first call by ${trial.new_owner} at ${trial.first_call_after_kill_ms} ms)`}`)
      } catch (err) {
        trial.ms = null
        trial.error = err.message
        log(`  failover ${k + 1}/${trials}: ${err.message}`)
      } finally {
        await a.kill9()
        // Stop the run wherever it is now, so B is idle for the next trial.
        await postJson(`${b.url}/api/v1/tasks/cancel`, { session_id: session }).catch(() => {})
        const until = Date.now() + 10_000
        while (Date.now() < until) {
          const r = (await client.query(`SELECT owner FROM ${schema}.sessions WHERE session_id = $1 AND archived_at IS NULL`, [session])).rows[0]
          if (r?.owner == null) break
          await sleep(50)
        }
      }
    }
  } finally {
    await firstA.kill9()
    await client.end().catch(() => {})
    await b.stop()
    await agent.close()
  }
  const times = out.trials.map((t) => t.ms).filter((x) => x !== null)
  out.completed_trials = times.length
  out.median_ms = times.length ? median(times) : null
  out.max_ms = times.length ? Math.max(...times) : null
}

export async function benchReplicas (ctx) {
  const { sections, row, trackedDir } = ctx
  const db = await sectionDatabase(ctx, 'replicas')
  if (db === null) return
  const logs = trackedDir('replicas-logs')
  mkdirSync(logs, { recursive: true })
  const res = { database: db.name, admin_url: ADMIN_URL, logs, logging: 'node dist/server.js, LOG_LEVEL=info (pino JSON) to a file per replica on the temp disk', cores: os.cpus().length }
  sections.replicas = res
  // TASK_BENCH_REPLICAS_PARTS=lease,failover runs some parts only (their rows only); TASK_BENCH_KEEP_LOGS=DIR keeps the replicas' logs.
  const parts = process.env.TASK_BENCH_REPLICAS_PARTS?.split(',') ?? ['throughput', 'lease', 'failover']
  try {
    if (parts.includes('throughput')) await throughput(ctx, db, res, logs)
    if (parts.includes('lease')) await leaseCost(ctx, db, res, logs)
    if (parts.includes('failover')) await failover(ctx, db, res, logs)
  } finally {
    res.log_errors = logErrors(logs)
    if (process.env.TASK_BENCH_KEEP_LOGS) cpSync(logs, process.env.TASK_BENCH_KEEP_LOGS, { recursive: true })
    await db.drop()
  }
  const tp = res.throughput ?? { counts: [], runs: {} }
  const base = tp.runs[1]
  for (const n of tp.counts.slice(1)) {
    const r = tp.runs[n]
    for (const [phase, label, unit] of [['create', 'POST /create', 'req/s'], ['execute', 'POST /execute (echo)', 'tasks/s'], ['progress', 'GET /progress', 'req/s']]) {
      row(`Replicas: ${label}, ${n} replicas vs 1, ${CONNECTIONS} connections`, { ours: r[phase].rps, floor: base[phase].rps, floorLabel: '1 replica, same database', unit, ratio: r[phase].rps / base[phase].rps, ratioOf: `${n}/1 (2 cores)` })
    }
  }
  for (const n of tp.counts) {
    const r = tp.runs[n]
    row(`Replicas: database CPU during POST /execute, ${n} replica${n > 1 ? 's' : ''}`, { ours: r.execute.cpu.db_cores, floor: r.execute.cpu.servers_cores, floorLabel: 'the servers', unit: 'cores', ratio: r.execute.cpu.db_share, ratioOf: 'db share of all CPU' })
    row(`Replicas: CPU per executed task, ${n} replica${n > 1 ? 's' : ''}: database vs servers`, { ours: r.execute.cpu.db_us_per_op, floor: r.execute.cpu.servers_us_per_op, floorLabel: 'servers, sum', unit: 'us', ratio: r.execute.cpu.db_us_per_op / r.execute.cpu.servers_us_per_op, ratioOf: 'db/servers' })
    row(`Replicas: CPU per POST /create, ${n} replica${n > 1 ? 's' : ''}: database vs servers`, { ours: r.create.cpu.db_us_per_op, floor: r.create.cpu.servers_us_per_op, floorLabel: 'servers, sum', unit: 'us', ratio: r.create.cpu.db_us_per_op / r.create.cpu.servers_us_per_op, ratioOf: 'db/servers' })
  }
  const l = res.lease
  if (l !== undefined) leaseRows(row, l)
  const f = res.failover
  if (f !== undefined) failoverRows(row, f)
}

function leaseRows (row, l) {
  const renewRate = l.renew_per_replica_per_s_from_interval ?? l.renew_per_replica_per_s
  row(`Replicas: lease renewal statements (with the heartbeat) per replica per second, ${l.sessions} idle runs over ${l.replicas}, TASK_LEASE_MS ${LEASE_MS}`, { ours: renewRate, floor: l.ceiling_per_replica_per_s, floorLabel: 'ceiling 1000/TASK_LEASE_MS*3', unit: 'statements/s', ratio: renewRate / l.ceiling_per_replica_per_s, ratioOf: 'ours/ceiling', goal: '<= 1.0 (+1% timer jitter)', met: renewRate <= 1.01 * l.ceiling_per_replica_per_s })
  row(`Replicas: every statement of the database per replica per second, same idle window (renewals + sweeps every ${SWEEP_MS} ms)`, { ours: l.all_statements_window2.per_replica_per_s, floor: l.ceiling_per_replica_per_s, floorLabel: 'ceiling, as above', unit: 'statements/s', ratio: l.all_statements_window2.per_replica_per_s / l.ceiling_per_replica_per_s, ratioOf: 'ours/ceiling' })
  // README: "At most one replica executes a session at a time." Every owner stays alive here, so no session should
  // be taken over, no task called twice, and no start refused.
  const anomalies = l.sessions_called_more_than_once.length + l.start_failures
  row(`Replicas: sessions run by two live replicas at once or refused at start (LEASE_LOST), ${l.sessions} one-task background runs`, { ours: anomalies, unit: 'sessions', goal: '0 (at most one replica executes a session)', met: anomalies === 0 })
  row(`Replicas: database CPU, ${l.sessions} idle runs over ${l.replicas} replicas`, { ours: l.cpu.db_cores, floor: l.cpu.servers_cores, floorLabel: 'the servers', unit: 'cores', ratio: l.cpu.db_share, ratioOf: 'db share of all CPU' })
}

function failoverRows (row, f) {
  const fmet = f.completed_trials === f.trials.length && f.max_ms !== null && f.max_ms <= f.bound_ms
  row(`Replicas: failover after kill -9, to the first task completed elsewhere, max of ${f.trials.length}`, { ours: f.max_ms ?? NaN, floor: f.bound_ms, floorLabel: `TASK_LEASE_MS ${LEASE_MS} + TASK_SWEEP_INTERVAL_MS ${SWEEP_MS} + 1 s`, unit: 'ms', ratio: f.max_ms === null ? undefined : f.max_ms / f.bound_ms, ratioOf: 'ours/bound', goal: '<= 1.0', met: fmet })
  row('Replicas: failover after kill -9, median', { ours: f.median_ms ?? NaN, floor: f.bound_ms, floorLabel: 'bound as above', unit: 'ms', ratio: f.median_ms === null ? undefined : f.median_ms / f.bound_ms, ratioOf: 'ours/bound' })
}

/** Lines logged at warn or above (pino level >= 40) by the replicas, counted, with the first few. */
function logErrors (dir) {
  // The echo agent's start-up warning is expected (TASK_AGENTS unset on purpose) and not listed line by line.
  const out = { count: 0, by_message: {}, lines: [] }
  for (const name of readdirSync(dir)) {
    for (const line of readFileSync(join(dir, name), 'utf8').split('\n')) {
      if (line === '') continue
      let entry = null
      try { entry = JSON.parse(line) } catch { entry = { level: 50, msg: line } }
      if (!(entry.level >= 40)) continue
      out.count++
      const key = `${name.replace(/\.log$/, '')}: ${String(entry.msg).slice(0, 120)}`
      out.by_message[key] = (out.by_message[key] ?? 0) + 1
      if (out.lines.length < 80 && !String(entry.msg).startsWith('TASK_AGENTS is not set')) out.lines.push(`${name}: ${line.slice(0, 700)}`)
    }
  }
  return out
}
