// node bench/profile/make-fixture.mjs DIR [sessions=10000] [tasks=10]: session files for the profile drivers.
import { mkdirSync } from 'node:fs'
import { writeSessions } from '../lib/fixtures.mjs'

const [dir, sessions = '10000', tasks = '10'] = process.argv.slice(2)
mkdirSync(dir, { recursive: true, mode: 0o700 })
const info = writeSessions(dir, Number(sessions), Number(tasks))
console.log(`${info.count} sessions x ${info.tasksPerSession} tasks, ${(info.bytes / 1e6).toFixed(1)} MB in ${dir}`)
