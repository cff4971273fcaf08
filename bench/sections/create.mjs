// 6. HTTP POST /create (new session, 3 tasks) at 50 connections vs a bare durable route.
// Floor: a bare Fastify POST that writes, with the raw durable sequence, the exact file the real
// app wrote for such a request (captured once, session id swapped in) and answers its exact body.
// Both run twice: logging as `npm start` does (the shipped pino options at info, stdout to a file
// on the same temp disk), which the goal judges, and with the logger silent, to show its cost
// (the full run only).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { THREE_TASK_TEXT } from '../lib/fixtures.mjs'
import { cannon, load, startServer } from '../lib/http.mjs'
import { median } from '../lib/stats.mjs'

export async function benchCreate (ctx) {
  const { row, sections, quick } = ctx
  const logged = await measure(ctx, 'production')
  // The silent pair (reported only) is left to the full run, as in the GET section.
  const silent = quick ? null : await measure(ctx, 'silent')
  sections.create = { ...logged, ...(silent !== null && { silent }) }
  const label = 'bare Fastify POST + raw durable save'
  for (const [res, mode, goal] of [[logged, 'logging at info', 0.9], [silent, 'logger silent', null]]) {
    if (res === null) continue
    const ratio = res.ours.rps / res.floor.rps
    row(`HTTP POST /create, 50 connections, req/s (${mode})`, { ours: res.ours.rps, floor: res.floor.rps, floorLabel: `${label}, ${mode}`, unit: 'req/s', ratio, ratioOf: 'ours/floor', ...(goal !== null && { goal: `>= ${goal}`, met: ratio >= goal && res.ours.failed === 0 }) })
    row(`HTTP POST /create, server CPU per request (${mode})`, { ours: res.ours.server_cpu_us_per_req, floor: res.floor.server_cpu_us_per_req, floorLabel: `${label}, ${mode}`, unit: 'us', ratio: res.ours.server_cpu_us_per_req / res.floor.server_cpu_us_per_req, ratioOf: 'ours/floor' })
    row(`HTTP POST /create, 50 connections, p99 (${mode})`, { ours: res.ours.p99_ms, floor: res.floor.p99_ms, floorLabel: `${label}, ${mode}`, unit: 'ms', ratio: res.ours.p99_ms / res.floor.p99_ms, ratioOf: 'ours/floor' })
  }
}

async function measure ({ P, alternate, trackedDir, dropDir }, logger) {
  const logs = trackedDir(`create-logs-${logger}`)
  const body = (id) => JSON.stringify({ session_id: id, instructions: THREE_TASK_TEXT })
  const createRequests = (prefix) => {
    let n = 0
    return [{ method: 'POST', path: '/api/v1/tasks/create', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: body(`${prefix}_${++n}`) }) }]
  }
  // The exact bytes the app writes for such a session, and its answer, captured once.
  const templateId = 'tmplsession000000'
  let template = null
  let responseTemplate = null
  const capture = async (server, dir) => {
    const res = await fetch(`${server.url}/api/v1/tasks/create`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(templateId) })
    if (res.status !== 200) throw new Error(`template create failed: ${res.status}`)
    responseTemplate = await res.text()
    template = readFileSync(join(dir, `${templateId}.json`), 'utf8')
  }
  const runs = { ours: [], floor: [] }
  let warmups = 0
  const close = async ({ server, dir }) => {
    await server.stop()
    dropDir(dir)
  }
  const open = async (name) => {
    const dir = trackedDir(`create-${name}`)
    const logging = { logger, logFile: join(logs, `${name}.log`) }
    const server = await startServer(name === 'ours' ? { kind: 'app', dir, ...logging } : { kind: 'bare-create', dir, template, templateId, responseTemplate, ...logging })
    if (template === null) await capture(server, dir)
    await cannon({ url: server.url, duration: P.warmSeconds, requests: createRequests(`w${++warmups}`) })
    return { server, dir }
  }
  if (P.freshCreateServer) await close(await open('ours')) // captures the template
  // Full run: a fresh server and folder per round, so every round starts from the same state.
  // Quick run: one server per variant for all rounds (server start-up dominates short runs).
  let shared = null
  if (!P.freshCreateServer) {
    const ours = await open('ours')
    shared = { ours, floor: await open('floor') }
  }
  try {
    for (let r = 0; r < P.rounds; r++) {
      await alternate(r, ['ours', 'floor'].map((name) => async () => {
        const target = shared?.[name] ?? await open(name)
        try {
          runs[name].push(await load(target.server, { duration: P.createSeconds, requests: createRequests(`r${r}`) }))
        } finally {
          if (shared === null) await close(target)
        }
      }))
    }
  } finally {
    if (shared !== null) await Promise.all([close(shared.ours), close(shared.floor)])
  }
  const res = { connections: 50, seconds: P.createSeconds, file_bytes: Buffer.byteLength(template), logger }
  for (const name of Object.keys(runs)) res[name] = { rps: median(runs[name].map((x) => x.rps)), p99_ms: median(runs[name].map((x) => x.p99_ms)), server_cpu_us_per_req: median(runs[name].map((x) => x.server_cpu_us_per_req)), failed: runs[name].reduce((a, x) => a + x.non2xx + x.errors + x.timeouts, 0), rounds: runs[name] }
  dropDir(logs)
  return res
}
