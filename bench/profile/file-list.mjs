// GET /list on the file store at N active sessions and N archived (in process, app.inject): the cost of a page as sessions grow.
// node bench/profile/file-list.mjs [sessions]
import { renameSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { buildApp } from '../../dist/app.js'
import { removeDir, sessionId, tempDir, writeSessions } from '../lib/fixtures.mjs'
import { median, now } from '../lib/stats.mjs'

const count = Number(process.argv[2] ?? 100_000)
const dir = tempDir('file-list')
writeSessions(dir, count * 2, 3)
// The second half archived (the store reads the archive folder's names at boot, the files when listed).
mkdirSync(join(dir, 'archive'))
for (let i = count; i < count * 2; i++) renameSync(join(dir, `${sessionId(i)}.json`), join(dir, 'archive', `${sessionId(i)}.json`))
const app = await buildApp({ readEnvironment: false, logger: false, config: { TASK_STORAGE_DIR: dir, TASK_ARCHIVE_DAYS: 100_000 } })
try {
  await app.ready()
  for (const filter of ['exclude', 'include']) {
    const times = []
    for (let i = 0; i < 40; i++) {
      const t = now()
      const res = await app.inject({ method: 'GET', url: `/api/v1/tasks/list?session_id=all&limit=50&offset=10&archived=${filter}` })
      if (res.statusCode !== 200) throw new Error(res.body)
      if (i >= 10) times.push(now() - t)
    }
    console.log(`${count} active + ${count} archived, archived=${filter}: p50 ${median(times).toFixed(2)} ms`)
  }
} finally {
  await app.close()
  removeDir(dir)
}
