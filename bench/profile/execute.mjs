// Driver for profiling execute throughput (echo agent, auto-save on):
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/profile/execute.mjs [sessions=100] [tasks=10] [rounds=3]
// Also counts file writes and folder fsyncs (through a counting fs seam), to show how folder fsyncs are shared.
import fsp from 'node:fs/promises'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { nodeFs } from '../../dist/services/store/fs-seam.js'
import { makeSession, removeDir, tempDir } from '../lib/fixtures.mjs'

const [sessions = 100, tasks = 10, rounds = 3] = process.argv.slice(2).map(Number)
const specs = makeSession('x', tasks, { status: 'pending' }).session.tasks.map((t) => ({ instruction: t.instruction, task_type: t.task_type }))
for (let r = 0; r < rounds; r++) {
  const dir = tempDir('profile-execute')
  let opens = 0
  let dirOpens = 0
  // Counting seam: every open, and opens of the folder itself (folder fsyncs).
  const fs = { ...nodeFs, open: (path, ...rest) => { opens++; if (path === dir) dirOpens++; return fsp.open(path, ...rest) } }
  const store = new FileSessionStore({ dir, fs })
  await store.init()
  const manager = new TaskManager({ store })
  await manager.restore()
  await Promise.all(Array.from({ length: sessions }, (_, s) => manager.create(`ex_${s}`, specs)))
  const o0 = opens
  const d0 = dirOpens
  const t = performance.now()
  await Promise.all(Array.from({ length: sessions }, (_, s) => manager.executeAll(`ex_${s}`)))
  const ms = performance.now() - t
  const saves = opens - o0 - (dirOpens - d0)
  console.log(`${sessions * tasks} tasks in ${ms.toFixed(0)} ms = ${Math.round(sessions * tasks / (ms / 1000))} tasks/s; ${saves} file writes, ${dirOpens - d0} folder fsyncs (${((dirOpens - d0) / saves).toFixed(2)} per write)`)
  await manager.close()
  await store.close()
  removeDir(dir)
}
