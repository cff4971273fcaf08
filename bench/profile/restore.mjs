// Driver for profiling restore on an existing folder (see make-fixture.mjs):
//   node bench/profile/make-fixture.mjs /tmp/tv-10k 10000
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/profile/restore.mjs /tmp/tv-10k [rounds=5] [concurrency=32]
//   node bench/profile/summarize.mjs /tmp/prof/*.cpuprofile
// Restores the folder with TaskManager on a FileSessionStore, and times the synchronous floor loop
// on the same files after each round.
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'

const [dir, roundsArg = '5', concurrencyArg = '32'] = process.argv.slice(2)
for (let round = 0; round < Number(roundsArg); round++) {
  const store = new FileSessionStore({ dir })
  await store.init()
  const manager = new TaskManager({ store, restoreConcurrency: Number(concurrencyArg) })
  const t = performance.now()
  const report = await manager.restore()
  const ours = performance.now() - t
  await manager.close()
  await store.close()
  const f = performance.now()
  const map = new Map()
  for (const name of readdirSync(dir)) if (name.endsWith('.json')) map.set(name, JSON.parse(readFileSync(join(dir, name), 'utf8')))
  const floor = performance.now() - f
  console.log(`restore ${report.sessions}: ${ours.toFixed(0)} ms; floor ${floor.toFixed(0)} ms; ratio ${(ours / floor).toFixed(2)}`)
}
