// Run as: node --expose-gc bench/memory-child.mjs '{"dir": "..."}'
// Boots the real service on `dir` (restore included), listens on loopback, collects garbage
// and prints one JSON line: RSS and heap after restore, and how long boot-to-ready took.
import { setTimeout as sleep } from 'node:timers/promises'
import { buildApp } from '../dist/app.js'

const { dir, config = {} } = JSON.parse(process.argv[2])
const started = performance.now()
const app = await buildApp({
  readEnvironment: false,
  config: { TASK_STORAGE_DIR: dir, TASK_ARCHIVE_DAYS: 0, LOG_LEVEL: 'silent', ...config }
})
await app.listen({ host: '127.0.0.1', port: 0 })
const readyMs = performance.now() - started
const stats = app.taskManager.stats()
for (let i = 0; i < 3; i++) {
  globalThis.gc?.()
  await sleep(50)
}
const memory = process.memoryUsage()
process.stdout.write(JSON.stringify({
  ready_ms: readyMs,
  restore_ms: stats.storage.restore_ms,
  sessions: stats.total_sessions,
  tasks: stats.total_tasks,
  bytes: stats.storage.bytes,
  rss: memory.rss,
  heap_used: memory.heapUsed,
  external: memory.external + memory.arrayBuffers
}) + '\n')
await app.close()
