// 7. HTTP GET /progress and /stats vs a bare GET answering the same JSON; O(1) in sessions.
// Floor: a bare Fastify GET answering the exact body the real app returned. The O(1) figure
// compares the same route on 10,000 and on 100 sessions.
import { cannon, load, startServer } from '../lib/http.mjs'
import { sessionId } from '../lib/fixtures.mjs'
import { median } from '../lib/stats.mjs'

export async function benchGet ({ P, row, sections, alternate, fixture }) {
  const small = fixture(100)
  const large = fixture(10_000)
  const oursSmall = await startServer({ kind: 'app', dir: small.dir })
  const oursLarge = await startServer({ kind: 'app', dir: large.dir })
  let bare
  try {
    const paths = { progress: `/api/v1/tasks/progress?session_id=${sessionId(42)}`, stats: '/api/v1/tasks/stats' }
    const bodies = {}
    for (const path of Object.values(paths)) {
      const res = await fetch(oursLarge.url + path)
      if (res.status !== 200) throw new Error(`GET ${path}: ${res.status}`)
      bodies[path.split('?')[0]] = await res.text()
    }
    bare = await startServer({ kind: 'bare-get', bodies })
    const servers = { floor: bare, ours_10k: oursLarge, ours_100: oursSmall }
    for (const s of Object.values(servers)) for (const path of Object.values(paths)) await cannon({ url: s.url + path, duration: P.warmSeconds })
    const runs = {}
    for (const name of Object.keys(paths)) for (const s of Object.keys(servers)) runs[`${name}.${s}`] = []
    for (let r = 0; r < P.rounds; r++) {
      for (const [name, path] of Object.entries(paths)) {
        await alternate(r, Object.entries(servers).map(([s, server]) => async () => {
          runs[`${name}.${s}`].push(await load(server, { url: server.url + path, duration: P.getSeconds }))
        }))
      }
    }
    const res = { connections: 50, seconds: P.getSeconds, bodies }
    for (const [key, list] of Object.entries(runs)) res[key] = { rps: median(list.map((x) => x.rps)), p99_ms: median(list.map((x) => x.p99_ms)), server_cpu_us_per_req: median(list.map((x) => x.server_cpu_us_per_req)), failed: list.reduce((a, x) => a + x.non2xx + x.errors + x.timeouts, 0), rounds: list }
    sections.get = res
    for (const name of Object.keys(paths)) {
      const o = res[`${name}.ours_10k`]
      const f = res[`${name}.floor`]
      const s = res[`${name}.ours_100`]
      row(`HTTP GET /${name} (10,000 sessions), req/s`, { ours: o.rps, floor: f.rps, floorLabel: 'bare Fastify GET, same JSON', unit: 'req/s', ratio: o.rps / f.rps, ratioOf: 'ours/floor', goal: '>= 0.75', met: o.rps / f.rps >= 0.75 && o.failed === 0 })
      row(`HTTP GET /${name}, server CPU per request`, { ours: o.server_cpu_us_per_req, floor: f.server_cpu_us_per_req, floorLabel: 'bare Fastify GET, same JSON', unit: 'us', ratio: o.server_cpu_us_per_req / f.server_cpu_us_per_req, ratioOf: 'ours/floor' })
      row(`HTTP GET /${name}: 10,000 vs 100 sessions`, { ours: o.rps, floor: s.rps, floorLabel: 'same route, 100 sessions', unit: 'req/s', ratio: o.rps / s.rps, ratioOf: 'ours@10k/ours@100', goal: 'O(1): >= 0.8', met: o.rps / s.rps >= 0.8 })
    }
  } finally {
    await Promise.all([oursSmall.stop(), oursLarge.stop(), bare?.stop()])
  }
}
