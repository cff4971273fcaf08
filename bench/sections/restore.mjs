// 4. Restore N sessions (TaskManager.restore on a FileSessionStore) vs a sync read loop.
// Floor: readdirSync + readFileSync + JSON.parse into a Map, the least a restore can do (no
// validation, no thread pool). The goal applies at 10,000 sessions; the other sizes are reported.
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { collect, median, now } from '../lib/stats.mjs'

async function restoreOurs (dir) {
  const store = new FileSessionStore({ dir })
  await store.init()
  const manager = new TaskManager({ store, autoSave: true })
  const t = now()
  const report = await manager.restore()
  const ms = now() - t
  const ready = manager.ready
  await manager.close()
  await store.close()
  return { ms, sessions: report.sessions, ready }
}

/** The floor: every file read and parsed synchronously into a Map (`beforeTimed` runs right before the clock starts). */
export function restoreFloor (dir, beforeTimed = () => {}) {
  beforeTimed()
  const t = now()
  const map = new Map()
  for (const name of readdirSync(dir)) {
    if (!name.endsWith('.json')) continue
    map.set(name.slice(0, -5), JSON.parse(readFileSync(join(dir, name), 'utf8')))
  }
  return { ms: now() - t, sessions: map.size }
}

async function measureRestore ({ fixture, alternate }, sessions, tasks, rounds) {
  const info = fixture(sessions, tasks)
  restoreFloor(info.dir) // warm the page cache and the code
  const ours = []
  const floor = []
  for (let r = 0; r < rounds; r++) {
    await alternate(r, [
      async () => { const x = await restoreOurs(info.dir); if (x.sessions !== sessions || !x.ready) throw new Error(`restore got ${x.sessions}/${sessions}`); ours.push(x.ms) },
      async () => { const x = restoreFloor(info.dir); if (x.sessions !== sessions) throw new Error('floor miscounted'); floor.push(x.ms) }
    ])
  }
  collect()
  return { sessions, tasks_per_session: tasks, bytes: info.bytes, ours_ms: median(ours), floor_ms: median(floor), ours_rounds: ours, floor_rounds: floor }
}

export async function benchRestore (ctx) {
  const { P, row, sections, log } = ctx
  const res = { sizes: [] }
  const sizes = [...P.restoreSizes, ...(P.bigRestore ? [P.bigRestore] : [])]
  for (const n of sizes) {
    log(`  restore ${n} sessions`)
    const x = await measureRestore(ctx, n, 10, n >= 100_000 ? 3 : P.rounds)
    res.sizes.push(x)
    const ratio = x.ours_ms / x.floor_ms
    const isGoal = n === 10_000
    row(`restore ${n.toLocaleString('en-US')} sessions x 10 tasks`, { ours: x.ours_ms, floor: x.floor_ms, floorLabel: 'readdirSync+readFileSync+JSON.parse', unit: 'ms', ratio, ratioOf: 'ours/floor', goal: isGoal ? '<= 1.5' : 'reported', met: isGoal ? ratio <= 1.5 : null })
  }
  if (P.taskSweep) {
    res.task_sweep = []
    for (const tasks of P.taskSweep.tasks) {
      log(`  restore ${P.taskSweep.sessions} sessions x ${tasks} tasks`)
      const x = await measureRestore(ctx, P.taskSweep.sessions, tasks, P.rounds)
      res.task_sweep.push(x)
      row(`restore ${P.taskSweep.sessions.toLocaleString('en-US')} sessions x ${tasks} tasks`, { ours: x.ours_ms, floor: x.floor_ms, floorLabel: 'readdirSync+readFileSync+JSON.parse', unit: 'ms', ratio: x.ours_ms / x.floor_ms, ratioOf: 'ours/floor' })
    }
  }
  sections.restore = res
}
