// How long /health waits while a 50 MiB session is saved (issue: serializing a large session
// must not block the event loop for seconds). Run: npm run build && node bench/profile/large-session.mjs
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildApp } from '../../dist/app.js'

const MIB = 1024 * 1024
const TASKS = Number(process.env.TASKS ?? 50)
const dir = await mkdtemp(join(tmpdir(), 'taskvault-large-'))
const result = 'r'.repeat(MIB - 1024)
const app = await buildApp({
  readEnvironment: false,
  config: { TASK_STORAGE_DIR: dir, TASK_MAX_TASKS_PER_SESSION: TASKS + 10, TASK_MAX_SESSION_BYTES: 256 * MIB },
  executors: { default: async () => ({ result }) }
})
await app.listen({ port: 0, host: '127.0.0.1' })
const base = `http://127.0.0.1:${app.server.address().port}`
const post = (path, body) => fetch(`${base}/api/v1/tasks${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
await post('/create', { session_id: 'big', tasks: Array.from({ length: TASKS + 1 }, (_, i) => ({ instruction: `t${i}` })) })
for (let i = 0; i < TASKS; i++) await post('/execute', { session_id: 'big' })
const size = (await (await fetch(`${base}/api/v1/tasks/stats`)).json())
console.log(`session stored: ${(size.storage?.bytes ?? size.bytes ?? 0) / MIB} MiB (stats bytes field if present)`)

// Probe /health every 5 ms while the last task's save (the whole session) runs.
let probing = true
const waits = []
const probe = (async () => {
  while (probing) {
    const started = performance.now()
    await fetch(`${base}/health`).then((r) => r.arrayBuffer())
    waits.push(performance.now() - started)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
})()
const started = performance.now()
await post('/execute', { session_id: 'big' })
const saveMs = performance.now() - started
probing = false
await probe
waits.sort((a, b) => a - b)
console.log(JSON.stringify({ session_mib: TASKS, execute_ms: Math.round(saveMs), health_probes: waits.length, health_p50_ms: +waits[Math.floor(waits.length / 2)].toFixed(1), health_max_ms: +waits.at(-1).toFixed(1) }))
await app.close()
await rm(dir, { recursive: true, force: true })
