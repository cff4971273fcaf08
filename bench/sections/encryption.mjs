// 10. Encryption at rest: the same work with TASK_ENCRYPTION_KEYS set against unset, in the same
// run. Save p50 of a 3 KB session (goal <= 1.1x), restore of 10,000 sessions (<= 1.3x; 2,000 in
// the quick run) both as a boot runs it, in a new process, and in this process after earlier
// restores (the figure before stop 57), and POST /create at 50 connections (>= 0.9x).
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promisify } from 'node:util'
import { join } from 'node:path'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { Keyring } from '../../dist/services/store/keyring.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { THREE_TASK_TEXT, sessionOfBytes, writeSealedCopy } from '../lib/fixtures.mjs'
import { load, startServers } from '../lib/http.mjs'
import { collect, interleaved, median, now, percentile } from '../lib/stats.mjs'

const run = promisify(execFile)
const KEYS = `bench:${randomBytes(32).toString('base64')}`

async function saveTimes (P, stores, file) {
  const variants = Object.fromEntries(Object.entries(stores).map(([name, store]) => [name, () => store.save(file)]))
  const perRound = Object.fromEntries(Object.keys(stores).map((name) => [name, []]))
  for (let r = 0; r < P.rounds; r++) {
    collect()
    const times = await interleaved(variants, P.saveN)
    for (const name of Object.keys(stores)) perRound[name].push(percentile(times[name], 50))
  }
  return Object.fromEntries(Object.keys(stores).map((name) => [name, median(perRound[name])]))
}

async function restoreMs (dir, keyring) {
  const store = new FileSessionStore({ dir, keyring })
  await store.init()
  const manager = new TaskManager({ store, autoSave: true })
  const t = now()
  const report = await manager.restore()
  const ms = now() - t
  await manager.close()
  await store.close()
  return { ms, sessions: report.sessions }
}

const RESTORE_CHILD = new URL('../restore-child.mjs', import.meta.url).pathname

/** The same restore in a new process (restore-child.mjs), as a boot runs it. */
async function bootRestoreMs (dir, keys) {
  const { stdout } = await run(process.execPath, [RESTORE_CHILD, dir, keys ?? '-'], { maxBuffer: 1 << 20 })
  return JSON.parse(stdout.trim().split('\n').pop())
}

export async function benchEncryption ({ P, quick, row, sections, alternate, trackedDir, dropDir, fixture }) {
  const keyring = Keyring.parse(KEYS)
  const res = {}

  // Save: interleaved, save by save.
  const plainDir = trackedDir('enc-save-plain')
  const sealedDir = trackedDir('enc-save-sealed')
  const stores = { plain: new FileSessionStore({ dir: plainDir }), sealed: new FileSessionStore({ dir: sealedDir, keyring }) }
  for (const store of Object.values(stores)) await store.init()
  const file = sessionOfBytes('enc_one', 3072)
  for (let i = 0; i < 30; i++) for (const store of Object.values(stores)) await store.save(file)
  res.save_p50_ms = await saveTimes(P, stores, file)
  for (const store of Object.values(stores)) await store.close()
  dropDir(plainDir)
  dropDir(sealedDir)
  const saveRatio = res.save_p50_ms.sealed / res.save_p50_ms.plain
  row('encryption: save 3 KB session p50, sealed vs plaintext', { ours: res.save_p50_ms.sealed, floor: res.save_p50_ms.plain, floorLabel: 'the same save in plaintext', unit: 'ms', ratio: saveRatio, ratioOf: 'sealed/plain', goal: '<= 1.1', met: saveRatio <= 1.1 })

  // POST /create at 50 connections (below): the real app with and without keys, one server per
  // variant for every round (room for every session the rounds create), logging as `npm start`
  // does, to a file on the same disk. The quick run starts them during the untimed sealed copy
  // (they idle through the restore rounds); the full run after the restore rounds.
  const body = (id) => JSON.stringify({ session_id: id, instructions: THREE_TASK_TEXT })
  const requests = (prefix) => {
    let n = 0
    return [{ method: 'POST', path: '/api/v1/tasks/create', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: body(`${prefix}_${++n}`) }) }]
  }
  const dirs = { plain: trackedDir('enc-create-plain'), sealed: trackedDir('enc-create-sealed') }
  const logs = trackedDir('enc-create-logs')
  const startCreateServers = () => {
    const starting = startServers(Object.fromEntries(Object.entries(dirs).map(([name, dir]) => [name,
      { kind: 'app', dir, logger: 'production', logFile: join(logs, `${name}.log`), config: { TASK_MAX_SESSIONS: 10_000_000, ...(name === 'sealed' && { TASK_ENCRYPTION_KEYS: KEYS }) } }])))
    // Awaited later; observed now so a failed start is not an unhandled rejection meanwhile.
    starting.catch(() => {})
    return starting
  }
  const early = quick ? startCreateServers() : null

  // Restore: the shared plaintext fixture against a sealed copy of it.
  const count = P.sealedRestore
  const sealedCopy = trackedDir('enc-restore-sealed')
  let servers = null
  const runs = { plain: [], sealed: [] }
  try {
    const plain = fixture(count, 10)
    await writeSealedCopy(plain.dir, sealedCopy, keyring)
    if (early !== null) servers = await early
    const counted = (variant) => (x) => {
      if (x.sessions !== count) throw new Error(`${variant} restore miscounted`)
      return x.ms
    }
    // As a boot restores: once, in a new process (restore-child.mjs).
    const boot = { plain: [], sealed: [] }
    for (let r = 0; r < P.rounds; r++) {
      await alternate(r, [
        async () => { boot.plain.push(counted('plain')(await bootRestoreMs(plain.dir, null))) },
        async () => { boot.sealed.push(counted('sealed')(await bootRestoreMs(sealedCopy, KEYS))) }
      ])
    }
    // In this process, after earlier restores: its main thread has compiled the parse, while each
    // restore's reader threads (which open sealed files) start new. No boot runs so, but this is
    // the figure stops before 57 gave: the goal holds for both.
    await restoreMs(plain.dir, null)
    await restoreMs(sealedCopy, keyring)
    const restore = { plain: [], sealed: [] }
    for (let r = 0; r < P.rounds; r++) {
      await alternate(r, [
        async () => { restore.plain.push(counted('plain')(await restoreMs(plain.dir, null))) },
        async () => { restore.sealed.push(counted('sealed')(await restoreMs(sealedCopy, keyring))) }
      ])
    }
    dropDir(sealedCopy)
    res.restore_ms = { sessions: count, plain: median(boot.plain), sealed: median(boot.sealed), rounds: boot }
    res.restore_warm_ms = { sessions: count, plain: median(restore.plain), sealed: median(restore.sealed), rounds: restore }
    const quickNote = count === 10_000 ? '' : ' (quick: goal names 10,000)'
    const restoreRatio = res.restore_ms.sealed / res.restore_ms.plain
    row(`encryption: restore ${count.toLocaleString('en-US')} sessions at boot (each in a new process), sealed vs plaintext${quickNote}`, { ours: res.restore_ms.sealed, floor: res.restore_ms.plain, floorLabel: 'the same boot restore in plaintext', unit: 'ms', ratio: restoreRatio, ratioOf: 'sealed/plain', goal: '<= 1.3', met: restoreRatio <= 1.3 })
    const warmRatio = res.restore_warm_ms.sealed / res.restore_warm_ms.plain
    row(`encryption: restore ${count.toLocaleString('en-US')} sessions in the bench's process after earlier restores, sealed vs plaintext${quickNote}`, { ours: res.restore_warm_ms.sealed, floor: res.restore_warm_ms.plain, floorLabel: 'the same restore in plaintext', unit: 'ms', ratio: warmRatio, ratioOf: 'sealed/plain', goal: '<= 1.3', met: warmRatio <= 1.3 })

    servers ??= await startCreateServers()
    for (const name of ['plain', 'sealed']) await load(servers[name], { duration: P.warmSeconds, requests: requests('warm') })
    for (let r = 0; r < P.rounds; r++) {
      await alternate(r, ['plain', 'sealed'].map((name) => async () => { runs[name].push(await load(servers[name], { duration: P.createSeconds, requests: requests(`r${r}`) })) }))
    }
  } finally {
    // Started early but never awaited (the copy or a restore failed): stopped all the same.
    if (servers === null && early !== null) servers = await early.catch(() => null)
    if (servers !== null) await Promise.all(Object.values(servers).map((server) => server.stop()))
    for (const name of ['plain', 'sealed']) dropDir(dirs[name])
    dropDir(logs)
  }
  res.create_rps = { plain: median(runs.plain.map((x) => x.rps)), sealed: median(runs.sealed.map((x) => x.rps)), rounds: { plain: runs.plain.map((x) => Math.round(x.rps)), sealed: runs.sealed.map((x) => Math.round(x.rps)) }, failed: [...runs.plain, ...runs.sealed].reduce((a, x) => a + x.non2xx + x.errors + x.timeouts, 0) }
  const createRatio = res.create_rps.sealed / res.create_rps.plain
  row('encryption: POST /create req/s, sealed vs plaintext (logging at info)', { ours: res.create_rps.sealed, floor: res.create_rps.plain, floorLabel: 'the same app without keys, same logging', unit: 'req/s', ratio: createRatio, ratioOf: 'sealed/plain', goal: '>= 0.9', met: createRatio >= 0.9 && res.create_rps.failed === 0 })
  sections.encryption = res
}
