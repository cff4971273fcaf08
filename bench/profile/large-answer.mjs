// How long the event loop is held while a 60 MB session is read whole (GET /list?session_id=X),
// the answer taken by curl in another process: the answer is streamed a task at a time in slices.
// Run: npm run build && node --expose-gc bench/profile/large-answer.mjs [rounds=3]
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { buildApp } from '../../dist/app.js'

const rounds = Number(process.argv[2] ?? 3)
const dir = await mkdtemp(join(tmpdir(), 'taskvault-answer-'))
const app = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, BODY_LIMIT: 80 * 1024 * 1024, TASK_MAX_INSTRUCTION_BYTES: 2 * 1024 * 1024, LOG_LEVEL: 'warn' } })
try {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${app.server.address().port}/api/v1/tasks`
  // Sixty tasks of 1 MB, created in six appends.
  for (let part = 0; part < 6; part++) {
    const tasks = Array.from({ length: 10 }, (_, i) => ({ instruction: `${part}.${i} ${'x'.repeat(1_000_000)}` }))
    const res = await fetch(`${base}/create`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ session_id: 'big', tasks }) })
    if (res.status !== 200) throw new Error(`create: ${res.status}`)
  }
  for (let round = 0; round < rounds; round++) {
    globalThis.gc?.()
    const delay = monitorEventLoopDelay({ resolution: 1 })
    delay.enable()
    const started = performance.now()
    const bytes = await new Promise((resolve, reject) => execFile('curl', ['-s', '-o', '/dev/null', '-w', '%{size_download}', `${base}/list?session_id=big`], (err, out) => err ? reject(err) : resolve(Number(out))))
    delay.disable()
    console.log(`round ${round}: ${(bytes / 1e6).toFixed(1)} MB in ${Math.round(performance.now() - started)} ms; event loop delay max ${(delay.max / 1e6).toFixed(1)} ms, p99 ${(delay.percentile(99) / 1e6).toFixed(1)} ms`)
  }
} finally {
  await app.close()
  await rm(dir, { recursive: true, force: true })
}
