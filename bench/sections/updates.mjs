// 3. 1,000 updates to one session through the registry (coalescing) vs 1,000 raw saves.
// Floor: the raw durable sequence run once per update on the session's bytes. Every round also
// checks that the file on disk ends up holding the last update.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { countingStore } from '../lib/counting-store.mjs'
import { rawDurableSave } from '../lib/durable.mjs'
import { makeSession } from '../lib/fixtures.mjs'
import { median, now } from '../lib/stats.mjs'

export async function benchUpdates ({ P, row, sections, alternate, trackedDir, dropDir }) {
  const dir = trackedDir('updates')
  const inner = new FileSessionStore({ dir })
  await inner.init()
  const { store, counter } = countingStore(inner)
  const manager = new TaskManager({ store, autoSave: true })
  await manager.restore()
  const id = 'hot'
  const seedFile = makeSession(id, 10, { status: 'pending' })
  await manager.create(id, seedFile.session.tasks.map((t) => ({ instruction: t.instruction, task_type: t.task_type })))
  const floorData = readFileSync(join(dir, `${id}.json`))
  const N = P.updates
  const update = (value) => manager.registry.change(id, (draft) => { draft.file.session.tasks[0].result = value })
  const lastOnDisk = () => JSON.parse(readFileSync(join(dir, `${id}.json`), 'utf8')).session.tasks[0].result

  const runs = { paced: [], burst: [], floor: [] }
  const checks = []
  const variants = {
    // One update per event-loop turn, as fast as the loop turns: clients arriving continuously.
    paced: async (r) => {
      const before = counter.saves
      const t = now()
      const pending = []
      for (let i = 0; i < N; i++) {
        pending.push(update(`paced ${r} ${i}`))
        await new Promise(setImmediate)
      }
      await Promise.all(pending)
      const ms = now() - t
      checks.push({ variant: 'paced', expected: `paced ${r} ${N - 1}`, on_disk: lastOnDisk(), writes: counter.saves - before })
      runs.paced.push({ ms, writes: counter.saves - before })
    },
    // All updates issued in one tick.
    burst: async (r) => {
      const before = counter.saves
      const t = now()
      const pending = []
      for (let i = 0; i < N; i++) pending.push(update(`burst ${r} ${i}`))
      await Promise.all(pending)
      const ms = now() - t
      checks.push({ variant: 'burst', expected: `burst ${r} ${N - 1}`, on_disk: lastOnDisk(), writes: counter.saves - before })
      runs.burst.push({ ms, writes: counter.saves - before })
    },
    floor: async () => {
      const t = now()
      for (let i = 0; i < N; i++) await rawDurableSave(dir, 'floor_hot.json', floorData)
      runs.floor.push({ ms: now() - t, writes: N })
    }
  }
  for (let r = 0; r < P.rounds; r++) await alternate(r, Object.values(variants).map((fn) => () => fn(r)))
  await manager.close()
  await inner.close()
  const allHeld = checks.every((c) => c.on_disk === c.expected)
  const res = { updates: N, bytes: floorData.length, final_file_holds_last_update: allHeld, checks }
  for (const name of Object.keys(runs)) res[name] = { ms: median(runs[name].map((x) => x.ms)), writes: median(runs[name].map((x) => x.writes)), rounds: runs[name] }
  sections.updates = res
  const speedup = res.floor.ms / res.paced.ms
  row(`${N} updates to one session (1 per loop turn; ${res.paced.writes} writes)`, { ours: res.paced.ms, floor: res.floor.ms, floorLabel: `raw sequence x${N}`, unit: 'ms', ratio: speedup, ratioOf: 'floor/ours (speed-up)', goal: '>= 5, last update on disk', met: speedup >= 5 && allHeld })
  row(`${N} updates to one session (one burst; ${res.burst.writes} writes)`, { ours: res.burst.ms, floor: res.floor.ms, floorLabel: `raw sequence x${N}`, unit: 'ms', ratio: res.floor.ms / res.burst.ms, ratioOf: 'floor/ours (speed-up)', goal: '>= 5, last update on disk', met: res.floor.ms / res.burst.ms >= 5 && allHeld })
  dropDir(dir)
}
