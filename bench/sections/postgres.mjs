// 12. The PostgreSQL store (issue 13), each figure against a floor or peer taken in the same run,
// in one throwaway database (taskvault_bench_<random>, dropped at the end), one schema per figure:
//   save p50            PostgresSessionStore.save of a 3 KB session vs a raw single-statement upsert
//                       of the same bytes through pg (named, autocommit, one round trip);
//   100 concurrent      100 distinct sessions saved at once vs 100 raw upserts at once (pools of 10);
//   POST /create        the server on PostgreSQL vs the same server on the file store, both logging
//                       as `npm start` does (pino at info to stdout, sent to a file on the temp disk);
//   GET /stats          the server on PostgreSQL restored from N sessions, sequential requests;
//   restore 10,000      TaskManager.restore() until ready, PostgreSQL vs the file store, same documents;
//                       (quick: /stats and restore at 2,000 sessions, the peer with 500 tasks)
//   peer                pg-boss: N jobs inserted and completed by a no-op handler, vs taskvault on
//                       PostgreSQL creating and executing N tasks with the echo agent, auto-save on;
//                       16 in flight on both sides; statements and commits per task counted.
// Skipped with one line when no PostgreSQL answers at TASK_BENCH_DATABASE_URL (default 127.0.0.1:5432).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import pg from 'pg'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { withSave } from '../lib/counting-store.mjs'
import { THREE_TASK_TEXT, serialize, sessionOfBytes } from '../lib/fixtures.mjs'
import { load, startServer, startServers } from '../lib/http.mjs'
import { runPgBoss, runTaskvault } from '../lib/peers.mjs'
import { ADMIN_URL, commitsOf, fillSessions, openStore, sectionDatabase } from '../lib/postgres.mjs'
import { collect, interleaved, median, now, percentile } from '../lib/stats.mjs'

const RAW_UPDATE = 'UPDATE tv_save.sessions SET document = $2::json WHERE session_id = $1 AND archived_at IS NULL'
const RAW_UPSERT = 'INSERT INTO raw_upsert (session_id, document) VALUES ($1, $2::json) ON CONFLICT (session_id) DO UPDATE SET document = EXCLUDED.document'

async function saveFigures ({ P, row, log }, db, res) {
  log('  save p50 and 100 concurrent saves')
  const store = await openStore(db.url, 'tv_save')
  const raw = new pg.Pool({ connectionString: db.url, max: 10 })
  await raw.query('CREATE TABLE raw_upsert (session_id text PRIMARY KEY, document json NOT NULL)')
  const upsert = (id, data) => raw.query({ name: 'raw_upsert', text: RAW_UPSERT, values: [id, data] })
  // Informational: the same bytes as a bare UPDATE of a row of the store's own table (its indexes,
  // generated column and checks), no version check and no derived columns: the schema's share.
  const rawUpdate = (id, data) => raw.query({ name: 'raw_update', text: RAW_UPDATE, values: [id, data] })
  try {
    // Sequential, one 3 KB session.
    const file = sessionOfBytes('pg_save_one', 3072)
    const data = serialize(file)
    await store.save(file)
    await upsert('pg_save_one', data)
    await store.save({ ...file, session_id: 'pg_save_raw', session: { ...file.session, session_id: 'pg_save_raw' } })
    const stored = await raw.query("SELECT (SELECT document::text FROM tv_save.sessions WHERE session_id = 'pg_save_one' AND archived_at IS NULL) AS ours, (SELECT document::text FROM raw_upsert WHERE session_id = 'pg_save_one') AS floor")
    const sameBytes = stored.rows[0].ours === data.toString('utf8') && stored.rows[0].floor === data.toString('utf8')
    const variants = { ours: () => store.save(file), floor: () => upsert('pg_save_one', data), same_table: () => rawUpdate('pg_save_raw', data) }
    for (const fn of Object.values(variants)) for (let i = 0; i < 30; i++) await fn()
    const perRound = { ours: [], floor: [], same_table: [] }
    for (let r = 0; r < P.rounds; r++) {
      collect()
      const times = await interleaved(variants, P.saveN)
      for (const name of Object.keys(perRound)) perRound[name].push({ p50: percentile(times[name], 50), p99: percentile(times[name], 99) })
    }
    // This process's CPU per call (validation, serialisation, pg's protocol work): steadier than ms on a busy machine.
    const cpu = {}
    const calls = Math.min(200, P.saveN)
    for (const [name, fn] of Object.entries(variants)) {
      const c0 = process.cpuUsage()
      for (let i = 0; i < calls; i++) await fn()
      const c = process.cpuUsage(c0)
      cpu[name] = (c.user + c.system) / calls
    }
    const m = (name, key) => median(perRound[name].map((x) => x[key]))
    const save = { bytes: data.length, same_bytes: sameBytes, saves_per_round: P.saveN, client_cpu_us_per_call: cpu }
    for (const name of Object.keys(perRound)) save[name] = { p50_ms: m(name, 'p50'), p99_ms: m(name, 'p99'), rounds: perRound[name] }
    res.save = save
    const ratio = save.ours.p50_ms / save.floor.p50_ms
    row('PostgreSQL: save 3 KB session, sequential p50', { ours: save.ours.p50_ms, floor: save.floor.p50_ms, floorLabel: 'raw pg upsert, 1 statement', unit: 'ms', ratio, ratioOf: 'ours/floor', goal: '<= 1.3', met: ratio <= 1.3 && sameBytes })
    row('PostgreSQL: save 3 KB session, p50 vs a bare UPDATE of the store\'s table', { ours: save.ours.p50_ms, floor: save.same_table.p50_ms, floorLabel: 'raw UPDATE of a sessions row, same bytes', unit: 'ms', ratio: save.ours.p50_ms / save.same_table.p50_ms, ratioOf: 'ours/floor' })
    row('PostgreSQL: save 3 KB session, bench process CPU per call', { ours: cpu.ours, floor: cpu.floor, floorLabel: 'raw pg upsert, 1 statement', unit: 'us', ratio: cpu.ours / cpu.floor, ratioOf: 'ours/floor' })
    row('PostgreSQL: save 3 KB session, sequential p99', { ours: save.ours.p99_ms, floor: save.floor.p99_ms, floorLabel: 'raw pg upsert, 1 statement', unit: 'ms', ratio: save.ours.p99_ms / save.floor.p99_ms, ratioOf: 'ours/floor' })

    // 100 distinct sessions at once.
    const files = Array.from({ length: 100 }, (_, i) => sessionOfBytes(`pgc${String(i).padStart(3, '0')}`, 3072))
    const datas = files.map(serialize)
    const rawIds = files.map((f) => `${f.session_id}_raw`)
    for (const [i, f] of files.entries()) await store.save({ ...f, session_id: rawIds[i], session: { ...f.session, session_id: rawIds[i] } })
    const batch = {
      ours: () => Promise.all(files.map((f) => store.save(f))),
      floor: () => Promise.all(datas.map((d, i) => upsert(files[i].session_id, d))),
      same_table: () => Promise.all(datas.map((d, i) => rawUpdate(rawIds[i], d)))
    }
    for (const fn of Object.values(batch)) await fn()
    const rates = { ours: [], floor: [], same_table: [] }
    const names = Object.keys(batch)
    for (let r = 0; r < P.rounds; r++) {
      collect()
      const ms = { ours: 0, floor: 0, same_table: 0 }
      for (let b = 0; b < P.concurrentBatches; b++) {
        for (let k = 0; k < names.length; k++) {
          const name = names[(b + k + r) % names.length]
          const t = now()
          await batch[name]()
          ms[name] += now() - t
        }
      }
      for (const name of names) rates[name].push((100 * P.concurrentBatches) / (ms[name] / 1000))
    }
    const conc = { batch: 100, batches_per_round: P.concurrentBatches, pool_max: 10 }
    for (const name of names) conc[name] = { saves_per_s: median(rates[name]), rounds: rates[name] }
    res.concurrent = conc
    const cr = conc.ours.saves_per_s / conc.floor.saves_per_s
    row('PostgreSQL: 100 concurrent saves, distinct sessions', { ours: conc.ours.saves_per_s, floor: conc.floor.saves_per_s, floorLabel: 'raw pg upsert x100 at once, pool of 10', unit: 'saves/s', ratio: cr, ratioOf: 'ours/floor', goal: '>= 0.8', met: cr >= 0.8 })
    row('PostgreSQL: 100 concurrent saves vs bare UPDATEs of the store\'s table', { ours: conc.ours.saves_per_s, floor: conc.same_table.saves_per_s, floorLabel: 'raw UPDATE of sessions rows x100 at once, pool of 10', unit: 'saves/s', ratio: conc.ours.saves_per_s / conc.same_table.saves_per_s, ratioOf: 'ours/floor' })
  } finally {
    await store.close()
    await raw.end()
  }
}

/** `whileStarting`: untimed work (the later figures' fills) done while the two servers start. */
async function createFigures ({ P, row, log, alternate, trackedDir, dropDir }, db, res, whileStarting) {
  log('  POST /create, PostgreSQL vs file store (both logging at info to a file)')
  const logs = trackedDir('pg-logs')
  const dir = trackedDir('pg-create-file')
  const body = (id) => JSON.stringify({ session_id: id, instructions: THREE_TASK_TEXT })
  let n = 0
  const requests = () => [{ method: 'POST', path: '/api/v1/tasks/create', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: body(`pc_${++n}`) }) }]
  const starting = startServers({
    // TASK_MAX_SESSIONS (100,000 by default) would turn later creates into fast 507s on a quick machine.
    postgres: { kind: 'app', dir: trackedDir('pg-create-unused'), logger: 'production', logFile: join(logs, 'create-postgres.log'), config: { TASK_STORE: 'postgres', DATABASE_URL: db.url, TASK_DB_SCHEMA: 'tv_create', TASK_MAX_SESSIONS: 10_000_000 } },
    file: { kind: 'app', dir, logger: 'production', logFile: join(logs, 'create-file.log'), config: { TASK_MAX_SESSIONS: 10_000_000 } }
  })
  // Awaited below; observed now so a failed start is not an unhandled rejection meanwhile.
  starting.catch(() => {})
  let servers
  try {
    await whileStarting()
    servers = await starting
  } catch (err) {
    await starting.then((started) => Promise.all(Object.values(started).map((server) => server.stop())), () => {})
    throw err
  }
  const runs = { postgres: [], file: [] }
  try {
    for (const server of Object.values(servers)) await load(server, { duration: P.warmSeconds, requests: requests() })
    for (let r = 0; r < P.rounds; r++) {
      await alternate(r, Object.keys(runs).map((name) => async () => {
        runs[name].push(await load(servers[name], { duration: P.createSeconds, requests: requests() }))
      }))
    }
  } finally {
    await Promise.all(Object.values(servers).map((s) => s.stop()))
  }
  const logLines = readFileSync(join(logs, 'create-postgres.log'), 'utf8').split('\n').length - 1
  const out = { connections: 50, seconds: P.createSeconds, logging: 'pino at info to a file on the temp disk (as npm start, stdout redirected)', postgres_log_lines: logLines }
  for (const name of Object.keys(runs)) out[name] = { rps: median(runs[name].map((x) => x.rps)), p99_ms: median(runs[name].map((x) => x.p99_ms)), server_cpu_us_per_req: median(runs[name].map((x) => x.server_cpu_us_per_req)), failed: runs[name].reduce((a, x) => a + x.non2xx + x.errors + x.timeouts, 0), rounds: runs[name] }
  res.create = out
  const ratio = out.postgres.rps / out.file.rps
  row('PostgreSQL: HTTP POST /create, 50 connections, req/s', { ours: out.postgres.rps, floor: out.file.rps, floorLabel: 'same server on the file store', unit: 'req/s', ratio, ratioOf: 'postgres/file', goal: '>= 0.7', met: ratio >= 0.7 && out.postgres.failed === 0 })
  row('PostgreSQL: HTTP POST /create, server CPU per request', { ours: out.postgres.server_cpu_us_per_req, floor: out.file.server_cpu_us_per_req, floorLabel: 'same server on the file store', unit: 'us', ratio: out.postgres.server_cpu_us_per_req / out.file.server_cpu_us_per_req, ratioOf: 'postgres/file' })
  row('PostgreSQL: HTTP POST /create, 50 connections, p99', { ours: out.postgres.p99_ms, floor: out.file.p99_ms, floorLabel: 'same server on the file store', unit: 'ms', ratio: out.postgres.p99_ms / out.file.p99_ms, ratioOf: 'postgres/file' })
  dropDir(dir)
}

async function statsFigures ({ quick, row, trackedDir }, db, res, sessions) {
  const schema = `tv_fill_${sessions}`
  const label = sessions.toLocaleString('en-US')
  const figure = `PostgreSQL: GET /stats at ${label} sessions, sequential p50${quick ? ' (quick; goal names 100,000)' : ''}`
  const out = { sessions }
  res.stats = out
  const boot = now()
  let server = null
  try {
    server = await startServer({ kind: 'app', dir: trackedDir('pg-stats-unused'), logger: 'production', logFile: join(trackedDir('pg-stats-logs'), 'stats.log'), config: { TASK_STORE: 'postgres', DATABASE_URL: db.url, TASK_DB_SCHEMA: schema } })
  } catch (err) {
    // The server restores before it listens, inside Fastify's onReady (10 s plugin timeout by default).
    out.server_failed = err.message.split('\n')[0]
    out.server_failed_after_ms = now() - boot
  }
  if (server !== null) {
    out.server_boot_to_listen_ms = now() - boot
    const url = `${server.url}/api/v1/tasks/stats`
    const times = []
    let body = null
    try {
      for (let i = 0; i < 20; i++) await (await fetch(url)).arrayBuffer()
      for (let i = 0; i < (quick ? 100 : 300); i++) {
        const t = now()
        const answer = await fetch(url)
        const text = await answer.text()
        times.push(now() - t)
        if (answer.status !== 200) throw new Error(`GET /stats answered ${answer.status}`)
        body = text
      }
    } finally {
      await server.stop()
    }
    Object.assign(out, { requests: times.length, p50_ms: percentile(times, 50), p99_ms: percentile(times, 99), total_sessions_in_answer: JSON.parse(body).total_sessions ?? null })
    row(figure, { ours: out.p50_ms, unit: 'ms', goal: '<= 50', met: out.p50_ms <= 50 })
    row(`PostgreSQL: server start to listening, ${label} sessions`, { ours: out.server_boot_to_listen_ms, unit: 'ms' })
  } else {
    row(`${figure}: server did not start (${out.server_failed.replace(/^.*FastifyError: /, '').slice(0, 60)}...)`, { ours: NaN, unit: 'ms', goal: '<= 50', met: false })
  }
  // In process, no HTTP: the restore the server's onReady waits for, and what GET /stats calls.
  const store = await openStore(db.url, schema)
  const manager = new TaskManager({ store, autoSave: true })
  const t = now()
  const report = await manager.restore()
  out.in_process_restore_ms = now() - t
  if (report.sessions !== sessions) throw new Error(`restore got ${report.sessions}/${sessions}`)
  const times = []
  for (let i = 0; i < 320; i++) {
    const t0 = now()
    await manager.statsWithSpace()
    if (i >= 20) times.push(now() - t0)
  }
  out.in_process_stats_p50_ms = percentile(times, 50)
  await manager.close()
  await store.close()
  row(`PostgreSQL: restore ${label} sessions in process (what onReady waits for)`, { ours: out.in_process_restore_ms, unit: 'ms' })
  row(`PostgreSQL: TaskManager.statsWithSpace() at ${label} sessions, in process, p50`, { ours: out.in_process_stats_p50_ms, unit: 'ms' })
}

async function restoreFigures ({ P, row, log, alternate, fixture }, db, res, sessions) {
  const info = fixture(sessions, 10)
  const schema = `tv_fill_${sessions}`
  const timesPg = []
  const timesFile = []
  for (let r = 0; r < P.rounds; r++) {
    await alternate(r, [
      async () => {
        const store = await openStore(db.url, schema)
        const manager = new TaskManager({ store, autoSave: true })
        const t = now()
        const report = await manager.restore()
        const ms = now() - t
        if (report.sessions !== sessions || !manager.ready) throw new Error(`PostgreSQL restore got ${report.sessions}/${sessions}`)
        timesPg.push(ms)
        await manager.close()
        await store.close()
      },
      async () => {
        const store = new FileSessionStore({ dir: info.dir })
        await store.init()
        const manager = new TaskManager({ store, autoSave: true })
        const t = now()
        const report = await manager.restore()
        const ms = now() - t
        if (report.sessions !== sessions || !manager.ready) throw new Error(`file restore got ${report.sessions}/${sessions}`)
        timesFile.push(ms)
        await manager.close()
        await store.close()
      }
    ])
  }
  res.restore = { sessions, tasks_per_session: 10, bytes: info.bytes, postgres_ms: median(timesPg), file_ms: median(timesFile), postgres_rounds: timesPg, file_rounds: timesFile }
  row(`PostgreSQL: restore ${sessions.toLocaleString('en-US')} sessions x 10 tasks to ready`, { ours: res.restore.postgres_ms, floor: res.restore.file_ms, floorLabel: 'file store, same documents', unit: 'ms', ratio: res.restore.postgres_ms / res.restore.file_ms, ratioOf: 'postgres/file' })
}

/** taskvault on PostgreSQL: S sessions of T tasks created, then executed (execute-all) with 16 sessions at once. */
async function taskvaultSide (db, schema, S, T) {
  const inner = await openStore(db.url, schema)
  const counter = { saves: 0, bytes: 0, acquired: 0 }
  const store = withSave(inner, async (file) => {
    const bytes = await inner.save(file)
    counter.saves++
    counter.bytes += bytes
    return bytes
  })
  // Statements the store sends: it runs one per pooled checkout (postgres-store.ts run()).
  const pool = inner.pool
  const onAcquire = () => { counter.acquired++ }
  pool.on('acquire', onAcquire)
  let before = null
  try {
    const { ms, tasks } = await runTaskvault(store, S, T, { onStart: () => { before = { ...counter } }, onEnd: () => pool.off('acquire', onAcquire) })
    return { ms, tasks, saves: counter.saves - before.saves, statements: counter.acquired - before.acquired, document_bytes: counter.bytes - before.bytes }
  } finally {
    pool.off('acquire', onAcquire)
    await inner.close()
  }
}

async function peerFigures ({ P, quick, row, log, alternate }, db, res) {
  const S = quick ? 10 : 100
  const T = quick ? 50 : 100
  const rounds = quick ? 1 : 3
  log(`  peer: ${S * T} tasks, taskvault on PostgreSQL vs pg-boss (${rounds} round${rounds > 1 ? 's' : ''})`)
  const runs = { taskvault: [], pgboss: [] }
  for (let r = 0; r < rounds; r++) {
    await alternate(r, [
      async () => {
        const c0 = await commitsOf(db.name)
        const x = await taskvaultSide(db, `tv_exec_${r}`, S, T)
        await new Promise((resolve) => setTimeout(resolve, 300))
        x.commits_whole_side = (await commitsOf(db.name)) - c0
        runs.taskvault.push(x)
      },
      async () => {
        const c0 = await commitsOf(db.name)
        const x = await runPgBoss(db.url, `bench_r${r}`, S, T)
        await new Promise((resolve) => setTimeout(resolve, 300))
        x.commits_whole_side = (await commitsOf(db.name)) - c0
        runs.pgboss.push(x)
      }
    ])
  }
  const rate = (x) => x.tasks / (x.ms / 1000)
  const tv = median(runs.taskvault.map(rate))
  const pb = median(runs.pgboss.map(rate))
  const tv0 = runs.taskvault[0]
  const pb0 = runs.pgboss[0]
  res.peer = {
    sessions_or_inserts: S,
    tasks_per_session: T,
    in_flight: 16,
    taskvault: { tasks_per_s: tv, per_task: { statements: tv0.statements / tv0.tasks, saves: tv0.saves / tv0.tasks, document_bytes: tv0.document_bytes / tv0.tasks }, rounds: runs.taskvault },
    pgboss: { tasks_per_s: pb, per_task: { statements: pb0.statements_total / pb0.tasks }, rounds: runs.pgboss },
    note: `taskvault: one INSERT per session at create, then per task two UPDATEs of the whole session document (InProgress, then the result), each its own autocommit transaction. pg-boss: one INSERT per ${T} jobs, per job one fetch UPDATE (state active) and one complete UPDATE, each autocommit. commits_whole_side also counts set-up (migrations, restore page, pg-boss start, maintenance) from pg_stat_database.`
  }
  // Informational (full run): the same task count in sessions ten times smaller, so each save writes a tenth of the document.
  const small = quick ? null : await taskvaultSide(db, 'tv_exec_small', S * 10, T / 10)
  if (small !== null) res.peer.taskvault_small_sessions = { sessions: S * 10, tasks_per_session: T / 10, tasks_per_s: rate(small), per_task: { statements: small.statements / small.tasks, document_bytes: small.document_bytes / small.tasks }, round: small }
  const ratio = tv / pb
  row(`PostgreSQL: ${(S * T).toLocaleString('en-US')} tasks created and executed, 16 in flight${quick ? ' (quick: goal names 10,000)' : ''}`, { ours: tv, floor: pb, floorLabel: `pg-boss ${S} inserts of ${T} + 16 workers`, unit: 'tasks/s', ratio, ratioOf: 'taskvault/pg-boss', goal: '>= 1.0', met: ratio >= 1.0 })
  if (small !== null) row(`PostgreSQL: same tasks as ${S * 10} sessions x ${T / 10} (1 round)`, { ours: rate(small), floor: pb, floorLabel: 'pg-boss, as above', unit: 'tasks/s', ratio: rate(small) / pb, ratioOf: 'taskvault/pg-boss' })
  row('PostgreSQL: statements per task (created and completed)', { ours: tv0.statements / tv0.tasks, floor: pb0.statements_total / pb0.tasks, floorLabel: 'pg-boss', unit: 'statements', ratio: (tv0.statements / tv0.tasks) / (pb0.statements_total / pb0.tasks), ratioOf: 'taskvault/pg-boss' })
}

export async function benchPostgres (ctx) {
  const { quick, sections, log } = ctx
  const db = await sectionDatabase(ctx, 'postgres')
  if (db === null) return
  const res = { database: db.name, admin_url: ADMIN_URL }
  sections.postgres = res
  try {
    await saveFigures(ctx, db, res)
    // Fills for /stats and restore: migrated by the store, then 1,000 rows per INSERT ... SELECT
    // FROM unnest. The quick run fills while the create servers start; the full run after the
    // create rounds, so their writeback and autovacuum stay out of those rounds.
    const restoreSessions = quick ? 2_000 : 10_000
    const statsSessions = quick ? 2_000 : 100_000
    const fills = async () => {
      for (const n of new Set([restoreSessions, statsSessions])) {
        const store = await openStore(db.url, `tv_fill_${n}`)
        await store.close()
        const t = now()
        const fill = await fillSessions(db.url, `tv_fill_${n}`, n, 10)
        log(`  filled ${n} sessions (${(fill.bytes / 1e6).toFixed(1)} MB) in ${((now() - t) / 1000).toFixed(1)} s`)
      }
    }
    await createFigures(ctx, db, res, quick ? fills : async () => {})
    if (!quick) await fills()
    log(`  GET /stats at ${statsSessions} sessions`)
    await statsFigures(ctx, db, res, statsSessions)
    log(`  restore ${restoreSessions} sessions`)
    await restoreFigures(ctx, db, res, restoreSessions)
    await peerFigures(ctx, db, res)
  } finally {
    await db.drop()
  }
}
