// Replicas for the bench: real server processes (`node dist/server.js`, as `npm start` runs it)
// on one PostgreSQL schema, each with its own TASK_REPLICA_ID, logging pino at info to a file;
// CPU time of any process from /proc (the servers, PostgreSQL's processes); an HTTP agent the
// replicas call (webhook) that records who called and either answers after a delay or holds
// the call open; and statement counters installed as triggers in the throwaway database.
import { spawn } from 'node:child_process'
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { createServer as createNetServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { allStarted } from './http.mjs'

const SERVER = fileURLToPath(new URL('../../dist/server.js', import.meta.url))
/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ, 100 on Linux). */
const TICKS = 100

/** A port free on 127.0.0.1 when asked. */
function freePort () {
  return new Promise((resolve, reject) => {
    const server = createNetServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** utime + stime of a process in ms, or null once it is gone. */
export function processCpuMs (pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // After the command: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    return ((Number(fields[11]) + Number(fields[12])) / TICKS) * 1000
  } catch {
    return null
  }
}

/** pid -> CPU ms of every process named `postgres` (postmaster, backends, walwriter, checkpointer, ...). */
export function postgresCpu () {
  const out = new Map()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    let comm = ''
    try { comm = readFileSync(`/proc/${name}/comm`, 'utf8').trim() } catch { continue }
    if (comm !== 'postgres') continue
    const ms = processCpuMs(name)
    if (ms !== null) out.set(name, ms)
  }
  return out
}

/**
 * The PostgreSQL processes working for database `dbName`: its backends (pg_stat_activity), and
 * the shared walwriter, background writer and checkpointer (they serve every database on the
 * server: their share is reported apart). Other databases' backends are left out, so tests or
 * benches on other databases of the same server do not count.
 */
export async function databasePids (adminUrl, dbName) {
  const client = new pg.Client({ connectionString: adminUrl })
  await client.connect()
  try {
    const { rows } = await client.query(`SELECT pid::text, datname = $1 AS ours FROM pg_stat_activity
      WHERE (datname = $1 AND pid <> pg_backend_pid()) OR backend_type IN ('walwriter', 'background writer', 'checkpointer')`, [dbName])
    return { ours: new Set(rows.filter((r) => r.ours).map((r) => r.pid)), shared: new Set(rows.filter((r) => !r.ours).map((r) => r.pid)) }
  } finally {
    await client.end()
  }
}

/**
 * CPU spent between two postgresCpu() samples: processes alive at both ends count their
 * difference, those started in between count all their time (those that ended are lost).
 */
export function postgresCpuDelta (before, after) {
  let ms = 0
  for (const [pid, end] of after) ms += end - (before.get(pid) ?? 0)
  return ms
}

/** Replicas started at once (allStarted); resolves with them in order. */
export function startReplicas (optionsList) {
  return allStarted(optionsList.map((options) => startReplica(options)))
}

/**
 * Starts `node dist/server.js` on PostgreSQL with replica id `id`, stdout and stderr appended
 * to `logFile`; resolves once GET /ready answers 200. `env` adds or overrides variables.
 */
export async function startReplica ({ id, databaseUrl, schema, leaseMs, sweepMs, agents, logFile, cwd, env = {} }) {
  const port = await freePort()
  const vars = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOST: '127.0.0.1',
    PORT: String(port),
    LOG_LEVEL: 'info',
    TASK_STORE: 'postgres',
    DATABASE_URL: databaseUrl,
    TASK_DB_SCHEMA: schema,
    TASK_REPLICA_ID: id,
    TASK_LEASE_MS: String(leaseMs),
    TASK_SWEEP_INTERVAL_MS: String(sweepMs),
    TASK_STORAGE_DIR: cwd,
    TASK_ARCHIVE_DAYS: '0',
    // The default 100,000 would turn creates past it into fast 507s.
    TASK_MAX_SESSIONS: '10000000',
    TASK_SHUTDOWN_GRACE_MS: '2000',
    ...(agents !== undefined && { TASK_AGENTS: JSON.stringify(agents) }),
    ...env
  }
  const fd = openSync(logFile, 'a')
  const child = spawn(process.execPath, [SERVER], { cwd, env: vars, stdio: ['ignore', fd, fd] })
  closeSync(fd)
  let exit = null
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => { exit = { code, signal }; resolve(exit) }))
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 60_000
  for (;;) {
    if (exit !== null) throw new Error(`replica ${id} exited (${JSON.stringify(exit)}) before it was ready; see ${logFile}`)
    try {
      const res = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(5000) })
      await res.arrayBuffer()
      if (res.status === 200) break
    } catch {}
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`replica ${id} not ready within 60 s; see ${logFile}`)
    }
    await Promise.race([sleep(50), exited])
  }
  return {
    id,
    url,
    pid: child.pid,
    child,
    exited,
    cpuMs: () => processCpuMs(child.pid),
    /** SIGTERM (a clean shutdown: leases released), SIGKILL past 15 s. */
    async stop () {
      if (exit !== null) return exit
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
      try { return await exited } finally { clearTimeout(timer) }
    },
    async kill9 () {
      if (exit === null) child.kill('SIGKILL')
      return exited
    }
  }
}

/**
 * The agent the replicas call (TASK_AGENTS webhook): `/hold?r=ID` keeps the call open until
 * release(), `/slow?r=ID&ms=N` answers after N ms. Every call is recorded with the replica id
 * from its query string, the session and task, and when it started and was answered.
 */
export async function startAgent () {
  const calls = []
  const held = new Set()
  const server = createServer((req, res) => {
    const u = new URL(req.url, 'http://x')
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      let body = {}
      try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')) } catch {}
      const call = { replica: u.searchParams.get('r'), session_id: body.session_id, task_id: body.task?.id, attempt: body.task?.attempt, started: Date.now(), answered: null }
      calls.push(call)
      const answer = () => {
        if (res.destroyed) return
        call.answered = Date.now()
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ result: `done by ${call.replica}` }))
      }
      if (u.pathname === '/hold') {
        held.add(answer)
        res.on('close', () => held.delete(answer))
      } else {
        setTimeout(answer, Number(u.searchParams.get('ms') ?? 50))
      }
    })
  })
  server.keepAliveTimeout = 60_000
  server.headersTimeout = 0
  server.requestTimeout = 0
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const base = `http://127.0.0.1:${server.address().port}`
  return {
    base,
    calls,
    /** Calls open right now (held). */
    holding: () => held.size,
    release () { for (const answer of [...held]) answer() },
    close () {
      server.closeAllConnections()
      return new Promise((resolve) => server.close(() => resolve()))
    }
  }
}

/**
 * Counters of the statements that write the schema's lease tables, kept as rows by triggers
 * (pg_stat_statements needs shared_preload_libraries): a row per upsert of a heartbeat row
 * (one per renewal statement, with its replica id), and a row per UPDATE statement on
 * `sessions` (even one that changed no row) with its kind, read from current_query(), and the
 * rows it changed and their owner. Installed and removed by the bench only, in the throwaway
 * database; the triggers' own cost lands on the statements they count.
 */
export async function installCounters (url, schema) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  const s = client.escapeIdentifier(schema)
  await client.query(`
    CREATE TABLE ${s}.bench_stmt (at timestamptz NOT NULL DEFAULT clock_timestamp(), tbl text NOT NULL, kind text NOT NULL, replica text, rows int NOT NULL);
    CREATE FUNCTION ${s}.bench_beat() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN INSERT INTO ${s}.bench_stmt (tbl, kind, replica, rows) VALUES ('replicas', 'heartbeat', NEW.replica_id, 1); RETURN NULL; END $$;
    CREATE FUNCTION ${s}.bench_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE q text := current_query(); n int; who text;
      BEGIN
        SELECT count(*), min(owner) INTO n, who FROM changed;
        INSERT INTO ${s}.bench_stmt (tbl, kind, replica, rows) VALUES ('sessions',
          CASE WHEN q LIKE '%INSERT INTO replicas%' THEN 'renew' WHEN q LIKE '%SKIP LOCKED%' THEN 'sweep'
            WHEN q LIKE '%epoch = epoch + 1%' THEN 'acquire' WHEN q LIKE '%owner = NULL%' THEN 'release' ELSE 'other' END,
          who, n);
        RETURN NULL;
      END $$;
    CREATE TRIGGER bench_beat AFTER INSERT OR UPDATE ON ${s}.replicas FOR EACH ROW EXECUTE FUNCTION ${s}.bench_beat();
    CREATE TRIGGER bench_sessions AFTER UPDATE ON ${s}.sessions REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION ${s}.bench_sessions();
  `)
  return {
    /** The rows logged in [from, to) (epoch ms, the database's clock). */
    async between (from, to) {
      const { rows } = await client.query(`SELECT tbl, kind, replica, count(*)::int AS statements, sum(rows)::int AS rows FROM ${s}.bench_stmt
        WHERE at >= to_timestamp($1 / 1000.0) AND at < to_timestamp($2 / 1000.0) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`, [from, to])
      return rows
    },
    /** Per replica: intervals (ms) between its consecutive heartbeats (one per renewal statement) in [from, to). */
    async intervals (from, to) {
      const { rows } = await client.query(`SELECT replica, array_agg(gap ORDER BY at) AS gaps FROM (
          SELECT replica, at, extract(epoch FROM at - lag(at) OVER (PARTITION BY replica ORDER BY at)) * 1000 AS gap FROM ${s}.bench_stmt
            WHERE tbl = 'replicas' AND at >= to_timestamp($1 / 1000.0) AND at < to_timestamp($2 / 1000.0)) g
        WHERE gap IS NOT NULL GROUP BY replica ORDER BY replica`, [from, to])
      return Object.fromEntries(rows.map((r) => [r.replica, r.gaps.map(Number)]))
    },
    /** The database's clock, epoch ms. */
    async now () {
      const { rows } = await client.query('SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS ms')
      return rows[0].ms
    },
    async remove () {
      try {
        await client.query(`DROP TRIGGER IF EXISTS bench_beat ON ${s}.replicas; DROP TRIGGER IF EXISTS bench_sessions ON ${s}.sessions;`)
      } finally {
        await client.end()
      }
    }
  }
}

/** Per-database and per-table counters of pg_stat_* (published up to ~10 s late by idle backends in PostgreSQL 15). */
export async function statCounters (url, dbName, schema) {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const db = await client.query('SELECT xact_commit::bigint AS commits FROM pg_stat_database WHERE datname = $1', [dbName])
    const t = await client.query('SELECT relname, n_tup_upd::bigint AS upd, n_tup_ins::bigint AS ins FROM pg_stat_user_tables WHERE schemaname = $1 AND relname IN (\'sessions\', \'replicas\')', [schema])
    const tables = Object.fromEntries(t.rows.map((r) => [r.relname, { upd: Number(r.upd), ins: Number(r.ins) }]))
    return { commits: Number(db.rows[0]?.commits ?? 0), tables }
  } finally {
    await client.end()
  }
}

/** Runs `fn` over `items` with at most `limit` at once. */
export async function eachLimit (items, limit, fn) {
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const i = next++
      await fn(items[i], i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

/** POST JSON; returns { status, body }. */
export async function postJson (url, body) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const text = await res.text()
  let parsed = null
  try { parsed = JSON.parse(text) } catch {}
  return { status: res.status, body: parsed ?? text }
}

/**
 * Every statement database `dbName`'s backends start during `ms`, seen by sampling
 * pg_stat_activity every `everyMs` (each statement has its own query_start; statements are
 * counted once per (pid, query_start)). A backend that runs two statements within one sample
 * shows only the second: the counts are a floor. Returns a Map `pid|start ms` -> the statement's first 90 characters.
 */
export async function sampleStatements (adminUrl, dbName, ms, everyMs = 10) {
  const client = new pg.Client({ connectionString: adminUrl })
  await client.connect()
  const seen = new Map()
  try {
    const end = Date.now() + ms
    while (Date.now() < end) {
      const { rows } = await client.query({
        name: 'bench_activity',
        text: `SELECT pid, (extract(epoch FROM query_start) * 1000)::float8 AS at, regexp_replace(left(query, 90), '\\s+', ' ', 'g') AS q
          FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND query_start > now() - interval '1 minute'`,
        values: [dbName]
      })
      for (const r of rows) seen.set(`${r.pid}|${r.at}`, r.q)
      await sleep(everyMs)
    }
  } finally {
    await client.end()
  }
  return seen
}
