/**
 * Free space on a real small filesystem (a tmpfs the test mounts): /stats and /metrics follow
 * it as sessions are written, and the log warns once when it crosses TASK_DISK_WARN_RATIO, and
 * once when it recovers, however often it is read.
 */
import { rename, statfs, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { taskvault } from './cli-run.js'
import { build, get, memoryLog, post, tempDir } from './helper.js'
import { mountedFolder } from './tmpfs.js'

interface Storage { free_bytes: number, total_bytes: number, free_ratio: number }

async function storage (app: FastifyInstance): Promise<Storage> {
  const res = await get(app, '/stats')
  if (res.statusCode !== 200) throw new Error(`/stats answered ${res.statusCode}`)
  return res.json().storage as Storage
}

async function scraped (app: FastifyInstance, name: string): Promise<number | null> {
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? null : Number(line.split(' ')[1])
}

t.test('a 2 MiB tmpfs: the ratio falls as sessions are written; one warning per crossing', async (t) => {
  const dir = await mountedFolder(t, '2m', 'free space is not measured on a filesystem of known size')
  if (dir === null) return
  const log = memoryLog()
  // Checked only on demand here, so every read below is one the test made.
  const app = await build(t, { dir, logger: log.logger, config: { TASK_DISK_WARN_RATIO: 0.5, TASK_DISK_CHECK_INTERVAL_MS: 0, TASK_DISK_MAX_AGE_MS: 0, TASK_ARCHIVE_DAYS: 0 } })
  const warnings = (): string[] => log.lines().filter((m) => m.level === 40 && /^Storage (is running out|has room)/u.test(String(m.msg))).map((m) => String(m.msg))

  const fs = await statfs(dir)
  const first = await storage(app)
  t.equal(first.total_bytes, fs.blocks * fs.bsize, 'total_bytes is the size of the filesystem holding the folder')
  t.ok(first.total_bytes <= 2 * 1024 * 1024 && first.total_bytes > 0, `a 2 MiB filesystem (${first.total_bytes})`)
  t.ok(first.free_ratio > 0.9, `nearly empty at first (${first.free_ratio})`)
  t.equal(first.free_ratio, first.free_bytes / first.total_bytes, 'free_ratio is free_bytes / total_bytes')
  t.equal(await scraped(app, 'taskvault_storage_capacity_bytes'), first.total_bytes, '/metrics: the capacity')
  const cli = await taskvault(['stats', dir, '--json'])
  t.equal(cli.code, 0, cli.stderr)
  t.match(cli.json().storage, { total_bytes: first.total_bytes, free_ratio: Number }, 'taskvault stats shows the same filesystem')

  // Sessions of ~60 KB each, until well below half free.
  let previous = first
  let falls = 0
  for (let i = 0; i < 24; i++) {
    const res = await post(app, '/create', { session_id: `big-${i}`, tasks: [{ instruction: `big ${i} ${'x'.repeat(60_000)}` }] })
    t.equal(res.statusCode, 200, `big-${i} is saved`)
    const now = await storage(app)
    t.ok(now.free_ratio <= previous.free_ratio, `the ratio does not rise as big-${i} is written (${now.free_ratio.toFixed(3)})`)
    if (now.free_ratio < previous.free_ratio) falls++
    previous = now
  }
  t.ok(falls >= 20, `the ratio fell with ${falls} of 24 saves`)
  t.ok(previous.free_ratio < 0.4, `now under the threshold (${previous.free_ratio.toFixed(3)})`)
  const free = await scraped(app, 'taskvault_storage_free_bytes')
  t.ok(free !== null && Math.abs(free - previous.free_bytes) <= 64 * 1024, `/metrics: free bytes (${free}) as /stats says (${previous.free_bytes})`)

  for (let i = 0; i < 5; i++) await storage(app)
  await scraped(app, 'taskvault_storage_free_bytes')
  t.equal(warnings().length, 1, 'one warning for the crossing, however often the figures are read since')
  t.match(warnings()[0], /^Storage is running out of space: \d+\.\d% free, below TASK_DISK_WARN_RATIO \(50\.0%\)/u)

  // Deleting brings it back above: one more line, then quiet.
  for (let i = 0; i < 24; i++) t.equal((await app.inject({ method: 'DELETE', url: `/api/v1/tasks/sessions/big-${i}` })).statusCode, 204)
  const after = await storage(app)
  t.ok(after.free_ratio > 0.9, `free again (${after.free_ratio.toFixed(3)})`)
  for (let i = 0; i < 5; i++) await storage(app)
  t.equal(warnings().length, 2, 'one more line for the recovery')
  t.match(warnings()[1], /^Storage has room again: \d+\.\d% free/u)
})

t.test('a storage folder gone: /metrics leaves the free-space gauges out, as /stats does, rather than the last reading or 0', async (t) => {
  const root = await tempDir(t)
  const dir = join(root, 'a', 'data')
  const app = await build(t, { dir, config: { TASK_DISK_MAX_AGE_MS: 0, TASK_DISK_CHECK_INTERVAL_MS: 0, TASK_ARCHIVE_DAYS: 0 } })
  t.ok((await scraped(app, 'taskvault_storage_free_bytes') ?? 0) > 0, 'a reading first')
  await rename(join(root, 'a'), join(root, 'b'))
  t.teardown(async () => rename(join(root, 'b'), join(root, 'a')).catch(() => undefined))
  t.notOk('free_bytes' in (await get(app, '/stats')).json().storage, '/stats leaves it out')
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.notMatch(text, /^taskvault_storage_(free|capacity)_bytes /mu, 'no sample of either gauge')
  t.match(text, /^# TYPE taskvault_storage_free_bytes gauge$/mu, 'the gauge is still declared')
  t.match(text, /^taskvault_ready 0$/mu)
  await rename(join(root, 'b'), join(root, 'a'))
  t.ok((await scraped(app, 'taskvault_storage_capacity_bytes') ?? 0) > 0, 'back with the folder')
})

t.test('the timer checks without anyone asking (TASK_DISK_CHECK_INTERVAL_MS)', async (t) => {
  const log = memoryLog()
  // Any real filesystem is less than 100% free: a ratio of 1 crosses at the first check.
  await build(t, { logger: log.logger, config: { TASK_DISK_WARN_RATIO: 1, TASK_DISK_CHECK_INTERVAL_MS: 50, TASK_DISK_MAX_AGE_MS: 0 } })
  const deadline = Date.now() + 10_000
  while (!log.lines().some((m) => String(m.msg).startsWith('Storage is running out of space')) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.equal(log.lines().filter((m) => String(m.msg).startsWith('Storage is running out of space')).length, 1, 'warned once by the timer, with no request')
})

t.test('TASK_DISK_MAX_AGE_MS: a reading that recent is reused; older ones are read again', async (t) => {
  const dir = await mountedFolder(t, '2m', 'no other test reuses a reading')
  if (dir === null) return
  // A second of age: the two reads around the write fall within it even on a loaded host.
  const app = await build(t, { dir, config: { TASK_DISK_MAX_AGE_MS: 1000, TASK_DISK_CHECK_INTERVAL_MS: 0 } })
  const first = (await get(app, '/stats')).json().storage.free_bytes
  await writeFile(join(dir, 'filler'), Buffer.alloc(256 * 1024))
  t.equal((await get(app, '/stats')).json().storage.free_bytes, first, 'within the age: the same reading')
  await sleep(1100)
  t.ok((await get(app, '/stats')).json().storage.free_bytes < first, 'past it: read again')
})

t.test('TASK_DISK_WARN_RATIO is checked at boot', async (t) => {
  await t.rejects(build(t, { config: { TASK_DISK_WARN_RATIO: 1.5 } }), /TASK_DISK_WARN_RATIO/u)
})
