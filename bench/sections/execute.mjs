// 9. Execute throughput with the echo agent, 100 sessions executing at once.
// Peer: the same run with TASK_AUTO_SAVE=false; the ratio is the share of the time spent saving.
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { countingStore } from '../lib/counting-store.mjs'
import { makeSession } from '../lib/fixtures.mjs'
import { median, now } from '../lib/stats.mjs'

export async function benchExecute ({ P, row, sections, alternate, trackedDir, dropDir }) {
  const M = P.executeSessions
  const T = P.executeTasks
  const specs = makeSession('x', T, { status: 'pending' }).session.tasks.map((t) => ({ instruction: t.instruction, task_type: t.task_type }))
  const runs = { on: [], off: [] }
  const saves = []
  for (let r = 0; r < P.rounds; r++) {
    await alternate(r, ['on', 'off'].map((mode) => async () => {
      const dir = trackedDir(`execute-${mode}`)
      const inner = new FileSessionStore({ dir })
      await inner.init()
      const { store, counter } = countingStore(inner)
      const manager = new TaskManager({ store, autoSave: mode === 'on' })
      await manager.restore()
      await Promise.all(Array.from({ length: M }, (_, s) => manager.create(`ex_${s}`, specs)))
      const before = counter.saves
      const t = now()
      const done = await Promise.all(Array.from({ length: M }, (_, s) => manager.executeAll(`ex_${s}`)))
      const ms = now() - t
      const executed = done.reduce((a, x) => a + x.results.length, 0)
      if (executed !== M * T) throw new Error(`executed ${executed}/${M * T}`)
      runs[mode].push(ms)
      if (mode === 'on') saves.push(counter.saves - before)
      await manager.close()
      await inner.close()
      dropDir(dir)
    }))
  }
  const on = median(runs.on)
  const off = median(runs.off)
  const tasksPerS = (M * T) / (on / 1000)
  const share = (on - off) / on
  sections.execute = { sessions: M, tasks_per_session: T, ms_autosave_on: on, ms_autosave_off: off, tasks_per_s: tasksPerS, tasks_per_s_autosave_off: (M * T) / (off / 1000), share_saving: share, saves: median(saves), rounds: runs }
  row(`execute, echo agent, ${M} sessions x ${T} tasks`, { ours: tasksPerS, floor: (M * T) / (off / 1000), floorLabel: 'same with TASK_AUTO_SAVE=false', unit: 'tasks/s', ratio: share, ratioOf: 'share of time saving' })
}
