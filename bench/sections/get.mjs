// 7. HTTP GET /progress and /stats vs a bare GET answering the same JSON; O(1) in sessions.
// Floor: a bare Fastify GET answering the exact body the real app returned. The O(1) figure
// compares the same route on 10,000 and on 100 sessions. Every server logs as `npm start` does
// (the shipped pino options at info, stdout to a file on the same temp disk), which the goals
// judge; the same pair with the logger silent shows what logging costs, and a server with
// TASK_API_KEYS set (requests carrying the bearer token) what the key check costs.
import { cpSync } from 'node:fs'
import { join } from 'node:path'
import { cannon, load, startServers } from '../lib/http.mjs'
import { sessionId } from '../lib/fixtures.mjs'
import { median } from '../lib/stats.mjs'

const API_KEY = 'bench-key-0123456789abcdef0123456789abcdef'

export async function benchGet ({ P, quick, row, sections, alternate, fixture, trackedDir, dropDir }) {
  // The quick run measures what the goals judge; the key-check and silent-logger variants
  // (reported only) are left to the full run: two fewer 10,000-session servers to start.
  const extras = !quick
  const small = fixture(100)
  const large = fixture(10_000)
  const logs = trackedDir('get-logs')
  const logged = (name) => ({ logger: 'production', logFile: join(logs, `${name}.log`) })
  // One server per folder (the storage lock): the other 10,000-session servers get copies,
  // made before any server holds the folder.
  const copyOfLarge = (name) => {
    const dir = trackedDir(`get-${name}`)
    cpSync(large.dir, dir, { recursive: true })
    return dir
  }
  const copies = extras ? { keys: copyOfLarge('keys'), silent: copyOfLarge('silent') } : {}
  const servers = {}
  try {
    // Started at once (start-up is not measured); the floors need the app's bodies first.
    Object.assign(servers, await startServers({
      ours_10k: { kind: 'app', dir: large.dir, ...logged('ours_10k') },
      ours_100: { kind: 'app', dir: small.dir, ...logged('ours_100') },
      ...(extras && {
        ours_10k_keys: { kind: 'app', dir: copies.keys, config: { TASK_API_KEYS: API_KEY }, ...logged('ours_10k_keys') },
        ours_10k_silent: { kind: 'app', dir: copies.silent }
      })
    }))
    const paths = { progress: `/api/v1/tasks/progress?session_id=${sessionId(42)}`, stats: '/api/v1/tasks/stats' }
    const bodies = {}
    for (const path of Object.values(paths)) {
      const res = await fetch(servers.ours_10k.url + path)
      if (res.status !== 200) throw new Error(`GET ${path}: ${res.status}`)
      bodies[path.split('?')[0]] = await res.text()
    }
    Object.assign(servers, await startServers({ floor: { kind: 'bare-get', bodies, ...logged('floor') }, ...(extras && { floor_silent: { kind: 'bare-get', bodies } }) }))
    const headers = (name) => name === 'ours_10k_keys' ? { authorization: `Bearer ${API_KEY}` } : {}
    for (const [name, s] of Object.entries(servers)) for (const path of Object.values(paths)) await cannon({ url: s.url + path, headers: headers(name), duration: P.warmSeconds })
    const runs = {}
    for (const name of Object.keys(paths)) for (const s of Object.keys(servers)) runs[`${name}.${s}`] = []
    for (let r = 0; r < P.rounds; r++) {
      for (const [name, path] of Object.entries(paths)) {
        await alternate(r, Object.entries(servers).map(([s, server]) => async () => {
          runs[`${name}.${s}`].push(await load(server, { url: server.url + path, headers: headers(s), duration: P.getSeconds }))
        }))
      }
    }
    const res = { connections: 50, seconds: P.getSeconds, logging: 'ours_* and floor: pino at info as npm start (http/logger-options.ts), stdout to a file on the temp disk; *_silent: no logger', bodies }
    for (const [key, list] of Object.entries(runs)) res[key] = { rps: median(list.map((x) => x.rps)), p99_ms: median(list.map((x) => x.p99_ms)), server_cpu_us_per_req: median(list.map((x) => x.server_cpu_us_per_req)), failed: list.reduce((a, x) => a + x.non2xx + x.errors + x.timeouts, 0), rounds: list }
    sections.get = res
    for (const name of Object.keys(paths)) {
      const get = (s) => res[`${name}.${s}`]
      const o = get('ours_10k')
      const f = get('floor')
      row(`HTTP GET /${name} (10,000 sessions), req/s (logging at info)`, { ours: o.rps, floor: f.rps, floorLabel: 'bare Fastify GET, same JSON, same logging', unit: 'req/s', ratio: o.rps / f.rps, ratioOf: 'ours/floor', goal: '>= 0.8', met: o.rps / f.rps >= 0.8 && o.failed === 0 })
      row(`HTTP GET /${name}, server CPU per request (logging at info)`, { ours: o.server_cpu_us_per_req, floor: f.server_cpu_us_per_req, floorLabel: 'bare Fastify GET, same JSON, same logging', unit: 'us', ratio: o.server_cpu_us_per_req / f.server_cpu_us_per_req, ratioOf: 'ours/floor' })
      const s = get('ours_100')
      row(`HTTP GET /${name}: 10,000 vs 100 sessions (logging at info)`, { ours: o.rps, floor: s.rps, floorLabel: 'same route, 100 sessions', unit: 'req/s', ratio: o.rps / s.rps, ratioOf: 'ours@10k/ours@100', goal: 'O(1): >= 0.8', met: o.rps / s.rps >= 0.8 })
      if (!extras) continue
      const k = get('ours_10k_keys')
      row(`HTTP GET /${name} with TASK_API_KEYS and a bearer token, req/s (logging at info)`, { ours: k.rps, floor: f.rps, floorLabel: 'bare Fastify GET, same JSON, same logging', unit: 'req/s', ratio: k.rps / f.rps, ratioOf: 'ours/floor' })
      const os = get('ours_10k_silent')
      const fs = get('floor_silent')
      row(`HTTP GET /${name} (10,000 sessions), req/s (logger silent)`, { ours: os.rps, floor: fs.rps, floorLabel: 'bare Fastify GET, same JSON, no logger', unit: 'req/s', ratio: os.rps / fs.rps, ratioOf: 'ours/floor' })
      row(`HTTP GET /${name}, server CPU per request (logger silent)`, { ours: os.server_cpu_us_per_req, floor: fs.server_cpu_us_per_req, floorLabel: 'bare Fastify GET, same JSON, no logger', unit: 'us', ratio: os.server_cpu_us_per_req / fs.server_cpu_us_per_req, ratioOf: 'ours/floor' })
    }
  } finally {
    await Promise.all(Object.values(servers).map((s) => s.stop()))
    dropDir(logs)
    for (const dir of Object.values(copies)) dropDir(dir)
  }
}
