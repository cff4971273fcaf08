// node bench/profile/pg-retention.mjs [sessions=100000] [rounds=5]: a retention pass on PostgreSQL
// at N sessions, half archived (bench/lib/postgres.mjs's fill), on a server as `npm start` runs
// it (one of the replicas). Times a pass that finds nothing to delete (what every hourly pass
// costs once the archive is past its first one), the same with a retention for failed sessions
// only, then one that deletes about 1 % of the archive.
// Also the boot's reading of the archive (openArchive).
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { mkdtempSync, rmSync } from 'node:fs'
import { buildApp } from '../../dist/app.js'
import { archiveHalf, fillSessions, openStore, throwawayDatabase } from '../lib/postgres.mjs'
import { median } from '../lib/stats.mjs'

const [sessions = 100_000, rounds = 5] = process.argv.slice(2).map(Number)
const db = await throwawayDatabase()
const dir = mkdtempSync(join(tmpdir(), 'tv-retention-'))
try {
  const store = await openStore(db.url, 'tv')
  await store.close()
  await fillSessions(db.url, 'tv', sessions, 10)
  await archiveHalf(db.url, 'tv')
  const app = await buildApp({
    readEnvironment: false,
    logger: false,
    config: { TASK_STORE: 'postgres', DATABASE_URL: db.url, TASK_DB_SCHEMA: 'tv', TASK_STORAGE_DIR: dir, TASK_REPLICA_ID: 'bench', TASK_ARCHIVE_DAYS: 0 }
  })
  let t = performance.now()
  await app.ready()
  console.log(`boot to ready: ${(performance.now() - t).toFixed(0)} ms (${sessions} sessions, half archived)`)
  const manager = app.taskManager
  const times = []
  // The fixture's sessions were last updated from 2025-11-03T08:00 on (their newest copies from 2025-11-04T08:00), one a second: none before this.
  const none = new Date('2025-11-01T00:00:00Z')
  for (let r = 0; r < rounds; r++) {
    t = performance.now()
    const deleted = await manager.pruneArchivedBefore({ all: none, failed: none })
    times.push(performance.now() - t)
    if (deleted.length !== 0) throw new Error('deleted some')
  }
  console.log(`pass deleting none: p50 ${median(times).toFixed(1)} ms (${times.map((x) => x.toFixed(0)).join(', ')})`)
  // Retention for sessions with a failed task only (TASK_ARCHIVE_RETENTION_DAYS 0): the others are never read.
  const failedOnly = []
  for (let r = 0; r < rounds; r++) {
    t = performance.now()
    await manager.pruneArchivedBefore({ all: null, failed: none })
    failedOnly.push(performance.now() - t)
  }
  console.log(`pass for failed sessions only, deleting none: p50 ${median(failedOnly).toFixed(1)} ms`)
  const some = new Date('2025-11-04T08:10:00Z')
  t = performance.now()
  const deleted = await manager.pruneArchivedBefore({ all: some, failed: some })
  console.log(`pass deleting ${deleted.length}: ${(performance.now() - t).toFixed(0)} ms`)
  await app.close()
} finally {
  rmSync(dir, { recursive: true, force: true })
  await db.drop()
}
