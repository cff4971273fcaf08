// 8. Auto-save overhead: create + 3 executes per session, TASK_AUTO_SAVE true vs false.
// Floor: the same writes replayed with the raw durable sequence, which explains the overhead.
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { countingStore, withSave } from '../lib/counting-store.mjs'
import { rawDurableSave } from '../lib/durable.mjs'
import { serialize, THREE_TASKS } from '../lib/fixtures.mjs'
import { median, now } from '../lib/stats.mjs'

export async function benchAutosave ({ P, row, sections, alternate, trackedDir, dropDir }) {
  const M = P.autosaveSessions
  const runs = { on: [], off: [], floor: [] }
  let savesPerOp = 0
  let saveBytes = null
  // The floor replays the same writes with the raw sequence: per session the file is created,
  // then rewritten once per save the manager made (1 create + 2 per execute), same sizes.
  const floorRun = async () => {
    const dir = trackedDir('autosave-floor')
    const t = now()
    for (let s = 0; s < M; s++) for (const data of saveBytes) await rawDurableSave(dir, `auto_${s}.json`, data)
    runs.floor.push((now() - t) / (4 * M))
    dropDir(dir)
  }
  for (let r = 0; r < P.rounds; r++) {
    if (saveBytes === null) {
      // Learn the byte sizes of the manager's writes for one session (pretty JSON of each state).
      const dir = trackedDir('autosave-probe')
      const inner = new FileSessionStore({ dir })
      await inner.init()
      const sizes = []
      const probe = withSave(inner, async (f) => { sizes.push(serialize(f)); return inner.save(f) })
      const m = new TaskManager({ store: probe, autoSave: true })
      await m.restore()
      await m.create('auto_0', THREE_TASKS)
      for (let k = 0; k < 3; k++) await m.executeNext('auto_0')
      await m.close()
      await inner.close()
      dropDir(dir)
      saveBytes = sizes
    }
    await alternate(r, [floorRun, ...['on', 'off'].map((mode) => async () => {
      const dir = trackedDir(`autosave-${mode}`)
      const inner = new FileSessionStore({ dir })
      await inner.init()
      const { store, counter } = countingStore(inner)
      const manager = new TaskManager({ store, autoSave: mode === 'on' })
      await manager.restore()
      const t = now()
      for (let s = 0; s < M; s++) {
        const id = `auto_${s}`
        await manager.create(id, THREE_TASKS)
        for (let k = 0; k < 3; k++) await manager.executeNext(id)
      }
      const ms = now() - t
      if (mode === 'on') savesPerOp = counter.saves / (4 * M)
      runs[mode].push(ms / (4 * M))
      await manager.close()
      await inner.close()
      dropDir(dir)
    })])
  }
  const on = median(runs.on)
  const off = median(runs.off)
  const floorPerOp = median(runs.floor)
  sections.autosave = { sessions: M, ops: 'create(3 tasks) + 3 x executeNext per session', ops_per_session: 4, saves_per_op: savesPerOp, save_bytes: saveBytes.map((b) => b.length), on_ms_per_op: on, off_ms_per_op: off, overhead_ms_per_op: on - off, durable_floor_ms_per_op: floorPerOp, rounds: runs }
  row('auto-save overhead per task operation', { ours: on - off, floor: floorPerOp, floorLabel: `raw sequence, same ${savesPerOp.toFixed(2)} writes/op`, unit: 'ms/op', ratio: (on - off) / floorPerOp, ratioOf: 'overhead/durable floor', goal: 'reported (explained by the floor)' })
}
