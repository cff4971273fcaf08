// Experiment (not product code): is GET /stats slow because of how its answer is built?
// Serves the real app on a fixture folder plus two extra routes with /stats's response schema:
// one building the answer the way routes/tasks.ts does today (spreads and rest destructuring),
// one with explicit fields. Drives each with autocannon and reports req/s and server CPU/request.
//   node bench/profile/make-fixture.mjs /tmp/tv-10k 10000
//   node bench/profile/stats-experiment.mjs /tmp/tv-10k [seconds=3] [rounds=3]
import { fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { cannon } from '../lib/http.mjs'

const [dir, secondsArg = '3', roundsArg = '3', role] = process.argv.slice(2)

if (role === 'server') {
  const { buildApp } = await import('../../dist/app.js')
  const { responses } = await import('../../dist/schemas/api.js')
  const app = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_ARCHIVE_DAYS: 0, LOG_LEVEL: 'silent' } })
  app.get('/x/stats-spread', { schema: { response: responses.stats } }, async () => {
    const { files, bytes, failed_loads: failedLoads, restore_ms: restoreMs, ...counts } = app.taskManager.stats()
    return { ...counts, storage: { dir: app.persistence.location, bytes, files, failed_loads: failedLoads, restore_ms: restoreMs } }
  })
  app.get('/x/stats-explicit', { schema: { response: responses.stats } }, async () => {
    const t = app.taskManager.registry.stats()
    return {
      total_sessions: t.total_sessions,
      active_sessions: t.active_sessions,
      completed_sessions: t.completed_sessions,
      total_tasks: t.total_tasks,
      completed_tasks: t.completed_tasks,
      failed_tasks: t.failed_tasks,
      pending_tasks: t.pending_tasks,
      in_progress_tasks: t.in_progress_tasks,
      storage: { dir: app.persistence.location, bytes: t.bytes, files: t.files, failed_loads: 0, restore_ms: 0 }
    }
  })
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  process.send({ url: address })
  process.on('message', (m) => {
    if (m === 'cpu') process.send({ cpu: process.cpuUsage() })
    if (m === 'stop') app.close().then(() => process.exit(0))
  })
} else {
  const child = fork(fileURLToPath(import.meta.url), [dir, secondsArg, roundsArg, 'server'])
  const url = await new Promise((resolve) => child.once('message', (m) => resolve(m.url)))
  const cpu = () => new Promise((resolve) => { child.once('message', (m) => resolve(m.cpu)); child.send('cpu') })
  const paths = ['/api/v1/tasks/stats', '/x/stats-spread', '/x/stats-explicit', '/api/v1/tasks/progress?session_id=s000042']
  for (const path of paths) await cannon({ url: url + path, duration: 1 })
  const results = Object.fromEntries(paths.map((p) => [p, []]))
  for (let r = 0; r < Number(roundsArg); r++) {
    for (const path of paths) {
      const a = await cpu()
      const res = await cannon({ url: url + path, duration: Number(secondsArg) })
      const b = await cpu()
      results[path].push({ rps: res.rps, cpu: (b.user - a.user + b.system - a.system) / res.requests, failed: res.non2xx + res.errors })
    }
  }
  const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1]
  for (const [path, list] of Object.entries(results)) {
    console.log(`${path.padEnd(44)} ${Math.round(med(list.map((x) => x.rps))).toString().padStart(7)} req/s  ${med(list.map((x) => x.cpu)).toFixed(1)} us CPU/request  failed ${list.reduce((a, x) => a + x.failed, 0)}`)
  }
  child.send('stop')
}
