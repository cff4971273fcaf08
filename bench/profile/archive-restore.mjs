// What an archive costs at start: node bench/profile/archive-restore.mjs [archived=10000] [rounds=3]
// Writes `archived` finished 10-task sessions into archive/ of a temp folder, then times, per round:
//   restore   TaskManager.restore() (active folder empty; archive/ indexed from names and sizes)
//   first list  the first read of every archived summary (what a list with archived=include,
//             or retention, pays once: every file parsed, TASK_RESTORE_CONCURRENCY at a time)
//   as active  the same files restored as active sessions (the cost the index avoids)
import { mkdirSync, renameSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { removeDir, tempDir, writeSessions } from '../lib/fixtures.mjs'

const [countArg = '10000', roundsArg = '3'] = process.argv.slice(2)
const dir = tempDir('archive')
const archiveDir = join(dir, 'archive')
mkdirSync(archiveDir, { mode: 0o700 })
try {
  const info = writeSessions(archiveDir, Number(countArg), 10, { marker: false })
  console.log(`${info.count} archived sessions, ${(info.bytes / 1e6).toFixed(1)} MB`)
  const time = async (fn) => {
    const t = performance.now()
    const value = await fn()
    return [performance.now() - t, value]
  }
  for (let round = 0; round < Number(roundsArg); round++) {
    const store = new FileSessionStore({ dir })
    await store.init()
    const manager = new TaskManager({ store })
    const [restoreMs, report] = await time(() => manager.restore())
    const [listMs, listed] = await time(() => manager.archived.summaries())
    await manager.close()
    await store.close()
    for (const name of readdirSync(archiveDir)) renameSync(join(archiveDir, name), join(dir, name))
    const active = new FileSessionStore({ dir })
    await active.init()
    const activeManager = new TaskManager({ store: active })
    const [activeMs, activeReport] = await time(() => activeManager.restore())
    await activeManager.close()
    await active.close()
    for (const name of readdirSync(dir)) if (name.endsWith('.json')) renameSync(join(dir, name), join(archiveDir, name))
    console.log(`restore with ${report.archivedSessions} archived: ${restoreMs.toFixed(0)} ms; first list of ${listed.length}: ${listMs.toFixed(0)} ms; ` +
      `the same ${activeReport.sessions} restored as active: ${activeMs.toFixed(0)} ms`)
  }
} finally {
  removeDir(dir)
}
