// Sealed against plaintext POST /create, round by round, to see whether the ratio drifts as sessions pile up.
// node bench/profile/create-sealed.mjs [rounds] [seconds]
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { THREE_TASK_TEXT } from '../lib/fixtures.mjs'
import { load, startServers } from '../lib/http.mjs'

const rounds = Number(process.argv[2] ?? 6)
const seconds = Number(process.argv[3] ?? 3)
const KEYS = `bench:${randomBytes(32).toString('base64')}`
const root = mkdtempSync(join(tmpdir(), 'create-sealed-'))
const servers = await startServers({
  plain: { kind: 'app', dir: join(root, 'plain'), logger: 'production', logFile: join(root, 'plain.log'), config: { TASK_MAX_SESSIONS: 10_000_000 } },
  sealed: { kind: 'app', dir: join(root, 'sealed'), logger: 'production', logFile: join(root, 'sealed.log'), config: { TASK_MAX_SESSIONS: 10_000_000, TASK_ENCRYPTION_KEYS: KEYS } }
})
const requests = (prefix) => {
  let n = 0
  return [{ method: 'POST', path: '/api/v1/tasks/create', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: JSON.stringify({ session_id: `${prefix}_${++n}`, instructions: THREE_TASK_TEXT }) }) }]
}
try {
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? ['plain', 'sealed'] : ['sealed', 'plain']
    const line = {}
    for (const name of order) line[name] = Math.round((await load(servers[name], { duration: seconds, requests: requests(`r${r}`) })).rps)
    console.log(`round ${r}: plain ${line.plain} sealed ${line.sealed} ratio ${(line.sealed / line.plain).toFixed(3)}`)
  }
} finally {
  await Promise.all(Object.values(servers).map((s) => s.stop()))
  rmSync(root, { recursive: true, force: true })
}
