// How long other requests wait while hundreds of stream clients resume at once (Last-Event-ID,
// as after a proxy restart) from a buffer of some 30 MB of events. A server process (logging as
// `npm start`), its buffer filled by creates of 1,000-task sessions; then `clients` streams resume
// from its oldest event and read `perClient` bytes each, while a third process times GET /health.
// Run: npm run build && node bench/profile/resume-storm.mjs [clients=450] [perClient=4000000]
import { execFile, spawn } from 'node:child_process'
import http from 'node:http'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const [clientsArg = '450', perClientArg = '4000000'] = process.argv.slice(2)
const clients = Number(clientsArg)
const perClient = Number(perClientArg)
const server = fileURLToPath(new URL('../../dist/server.js', import.meta.url))
const dir = mkdtempSync(join(tmpdir(), 'taskvault-storm-'))
const port = 4700 + Math.floor(Math.random() * 200)
const base = `http://127.0.0.1:${port}`
const child = spawn(process.execPath, [server], { env: { PATH: process.env.PATH, PORT: String(port), TASK_STORAGE_DIR: dir }, stdio: 'ignore' })

/** GET /health every 2 ms from another process for `ms`; its latency percentiles. */
const PROBE = `const d = []; const end = performance.now() + Number(process.argv[2]); while (performance.now() < end) { const t0 = performance.now(); await fetch(process.argv[1] + '/health').then((r) => r.text()); d.push(performance.now() - t0); await new Promise((r) => setTimeout(r, 2)) }
d.sort((a, b) => a - b); console.log('/health latency p50 ' + d[d.length >> 1].toFixed(1) + ' ms, p99 ' + d[Math.floor(d.length * 0.99)].toFixed(1) + ' ms, max ' + d.at(-1).toFixed(1) + ' ms over ' + d.length)`
const probe = (ms) => new Promise((resolve) => execFile(process.execPath, ['--input-type=module', '-e', PROBE, base, String(ms)], (err, out) => resolve(err ? String(err) : out.trim())))

try {
  for (let i = 0; ; i++) {
    if (await fetch(`${base}/ready`).then((r) => r.status === 200, () => false)) break
    if (i > 300) throw new Error('the server did not start')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const tasks = Array.from({ length: 1000 }, (_, i) => ({ instruction: `t${i}` }))
  for (let i = 0; i < 1600; i += 8) {
    await Promise.all(Array.from({ length: 8 }, (_, j) => fetch(`${base}/api/v1/tasks/create`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ session_id: `s${i + j}_${'p'.repeat(100)}`, tasks }) }).then((r) => r.text())))
  }
  // The oldest id still held: a reset names the newest; ids are `<lifetime>-<seq>`.
  const newest = await new Promise((resolve) => {
    const req = http.get(`${base}/api/v1/tasks/events`, { headers: { 'last-event-id': '0' } }, (res) => {
      let text = ''
      res.on('data', (chunk) => { text += chunk; const m = /id: (\S+)/u.exec(text); if (m) { req.destroy(); resolve(m[1]) } })
    })
  })
  const [lifetime, seq] = newest.split('-')
  // Far enough back to be past the oldest held: its reset says so, else the resume starts there.
  let from = `${lifetime}-1`
  for (let back = Number(seq) - 1; back > 0; back = Math.floor(back / 2)) {
    const reset = await new Promise((resolve) => {
      const req = http.get(`${base}/api/v1/tasks/events`, { headers: { 'last-event-id': `${lifetime}-${Number(seq) - back}` } }, (res) => {
        let text = ''
        res.on('data', (chunk) => { text += chunk; if (text.includes('event:')) { req.destroy(); resolve(/event: reset/u.test(text)) } })
      })
    })
    if (!reset) { from = `${lifetime}-${Number(seq) - back}`; break }
  }
  console.log(`idle: ${await probe(2000)}`)
  const probing = probe(4000)
  await new Promise((resolve) => setTimeout(resolve, 300))
  const agent = new http.Agent({ maxSockets: Infinity })
  const started = performance.now()
  let bytes = 0
  let done = 0
  for (let i = 0; i < clients; i++) {
    http.get(`${base}/api/v1/tasks/events`, { agent, headers: { 'last-event-id': from } }, (res) => {
      let mine = 0
      res.on('data', (chunk) => { bytes += chunk.length; mine += chunk.length; if (mine >= perClient) { res.destroy(); done++ } })
    }).on('error', () => {})
  }
  while (done < clients && performance.now() - started < 60_000) await new Promise((resolve) => setTimeout(resolve, 50))
  console.log(`${done}/${clients} clients resumed from ${from}, ${(bytes / 1e6).toFixed(0)} MB in ${Math.round(performance.now() - started)} ms; ${await probing}`)
} finally {
  child.kill('SIGTERM')
  await new Promise((resolve) => child.once('exit', resolve))
  rmSync(dir, { recursive: true, force: true })
}
