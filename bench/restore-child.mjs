// One restore in a process of its own, as a boot does it: `npm start` restores once, in a new
// process, so its main thread parses with nothing compiled yet, like its reader threads.
//   node bench/restore-child.mjs DIR KEYS|-     prints {"ms", "sessions"} of TaskManager.restore()
import { FileSessionStore } from '../dist/services/store/file-store.js'
import { Keyring } from '../dist/services/store/keyring.js'
import { TaskManager } from '../dist/services/task-manager.js'

const [dir, keys] = process.argv.slice(2)
const store = new FileSessionStore({ dir, keyring: keys === '-' ? null : Keyring.parse(keys) })
await store.init()
const manager = new TaskManager({ store, autoSave: true })
const started = performance.now()
const report = await manager.restore()
const ms = performance.now() - started
await manager.close()
await store.close()
process.stdout.write(`${JSON.stringify({ ms, sessions: report.sessions })}\n`)
