// taskvault benchmark harness. Run with `npm run bench` (full) or `npm run bench -- --quick`.
// Every figure is the median of several rounds, measured next to a floor or peer on the same
// bytes in the same run; ratios make the goals of issue 6 machine-independent.
// Optional: `--only=save,restore,...` runs a subset (sections: save, concurrent, updates,
// restore, memory, create, get, autosave, execute); `--out=FILE` writes the JSON elsewhere
// (default bench/results.json for a full run, bench/results.quick.json for --quick).
import { execFileSync, spawn } from 'node:child_process'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import writeFileAtomic from 'write-file-atomic'
import { FileSessionStore } from '../dist/services/file-store.js'
import { TaskManager } from '../dist/services/task-manager.js'
import { rawDurableSave, rawDurableSaveSync } from './lib/durable.mjs'
import { removeDir, serialize, sessionId, sessionOfBytes, makeSession, tempDir, writeSessions } from './lib/fixtures.mjs'
import { cannon, load, startServer } from './lib/http.mjs'
import { collect, median, now, percentile, round } from './lib/stats.mjs'

const args = process.argv.slice(2)
const QUICK = args.includes('--quick')
const ONLY = args.find((a) => a.startsWith('--only='))?.slice(7).split(',') ?? null
const HERE = fileURLToPath(new URL('.', import.meta.url))

const P = QUICK
  ? { rounds: 3, saveN: 150, concurrentBatches: 4, updates: 1000, restoreSizes: [100, 1000, 10_000], createSeconds: 1, getSeconds: 0.5, warmSeconds: 0.3, freshCreateServer: false, autosaveSessions: 40, executeSessions: 100, executeTasks: 10, memoryRounds: 3, bigRestore: null, taskSweep: null }
  : { rounds: 5, saveN: 500, concurrentBatches: 10, updates: 1000, restoreSizes: [100, 1000, 10_000], createSeconds: 5, getSeconds: 3, warmSeconds: 1, freshCreateServer: true, autosaveSessions: 100, executeSessions: 100, executeTasks: 10, memoryRounds: 3, bigRestore: 100_000, taskSweep: { sessions: 1000, tasks: [1, 10, 100] } }

const rows = []
const sections = {}
const cleanup = new Set()
/** A temp folder removed at the end even if the run is interrupted. */
function trackedDir (name) {
  const dir = tempDir(name)
  cleanup.add(dir)
  return dir
}
function dropDir (dir) {
  removeDir(dir)
  cleanup.delete(dir)
}
const benchStarted = now()

const wanted = (name) => ONLY === null || ONLY.includes(name)
const log = (...parts) => process.stderr.write(parts.join(' ') + '\n')

/** A table row; `ratio` is oriented so the goal reads naturally (see `ratioOf`). */
function row (figure, { ours, floor, floorLabel, unit, ratio, ratioOf, goal, met = null }) {
  rows.push({ figure, ours: round(ours, 3), floor: floor === undefined ? null : round(floor, 3), floor_label: floorLabel ?? '', unit, ratio: ratio === undefined ? null : round(ratio, 3), ratio_of: ratioOf ?? '', goal: goal ?? 'reported', met })
}

/** Runs the variants of one round in alternating order, so neither always goes first. */
async function alternate (roundIndex, variants) {
  const order = roundIndex % 2 === 0 ? variants : [...variants].reverse()
  for (const variant of order) {
    collect()
    await variant()
  }
}

/** The store with its saves counted; every other member passes through (whatever the interface grows). */
function countingStore (inner) {
  const counter = { saves: 0, saveMs: 0 }
  const save = async (file) => {
    const t = now()
    try { return await inner.save(file) } finally { counter.saves++; counter.saveMs += now() - t }
  }
  const store = new Proxy(inner, {
    get (target, key) {
      if (key === 'save') return save
      const value = Reflect.get(target, key, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
  return { store, counter }
}

const THREE_TASKS = [
  { instruction: 'Write code for the binary search function', task_type: 'Coding' },
  { instruction: 'Analyze the latency logs from last night', task_type: 'Analysis' },
  { instruction: 'Research prior art on write coalescing', task_type: 'Research' }
]
const THREE_TASK_TEXT = '1. Write code for the binary search function\n2. Analyze the latency logs from last night\n3. Research prior art on write coalescing'

// ---------------------------------------------------------------------------------------------
// 1. Sequential save of one 3 KB session: store.save vs raw sequence vs write-file-atomic.
async function benchSave () {
  const dir = trackedDir('save')
  const store = new FileSessionStore({ dir })
  await store.init()
  const file = sessionOfBytes('save_one', 3072)
  const data = serialize(file)
  await store.save(file)
  const sameBytes = readFileSync(join(dir, 'save_one.json')).equals(data)
  const variants = {
    ours: () => store.save(file),
    floor: () => rawDurableSave(dir, 'floor_one.json', data),
    peer: () => writeFileAtomic(join(dir, 'wfa_one.json'), data, { mode: 0o600, fsync: true }),
    floor_sync: async () => rawDurableSaveSync(dir, 'sync_one.json', data)
  }
  for (const fn of Object.values(variants)) for (let i = 0; i < 30; i++) await fn()
  const perRound = { ours: [], floor: [], peer: [], floor_sync: [] }
  const names = Object.keys(variants)
  for (let r = 0; r < P.rounds; r++) {
    collect()
    // Interleaved save by save (order rotating), so every variant sees the same disk moments.
    const times = Object.fromEntries(names.map((n) => [n, []]))
    for (let i = 0; i < P.saveN; i++) {
      for (let k = 0; k < names.length; k++) {
        const name = names[(i + k) % names.length]
        const t = now()
        await variants[name]()
        times[name].push(now() - t)
      }
    }
    for (const name of names) perRound[name].push({ p50: percentile(times[name], 50), p99: percentile(times[name], 99) })
  }
  const m = (name, key) => median(perRound[name].map((x) => x[key]))
  const res = { bytes: data.length, same_bytes: sameBytes, saves_per_round: P.saveN }
  for (const name of Object.keys(perRound)) res[name] = { p50_ms: m(name, 'p50'), p99_ms: m(name, 'p99'), rounds: perRound[name] }
  sections.save = res
  row('save 3 KB session, sequential p50', { ours: res.ours.p50_ms, floor: res.floor.p50_ms, floorLabel: 'raw sequence', unit: 'ms', ratio: res.ours.p50_ms / res.floor.p50_ms, ratioOf: 'ours/floor', goal: '<= 1.2', met: res.ours.p50_ms / res.floor.p50_ms <= 1.2 })
  row('save 3 KB session, sequential p99', { ours: res.ours.p99_ms, floor: res.floor.p99_ms, floorLabel: 'raw sequence', unit: 'ms', ratio: res.ours.p99_ms / res.floor.p99_ms, ratioOf: 'ours/floor' })
  row('save 3 KB session, p50 vs write-file-atomic', { ours: res.ours.p50_ms, floor: res.peer.p50_ms, floorLabel: 'write-file-atomic (no folder fsync)', unit: 'ms', ratio: res.ours.p50_ms / res.peer.p50_ms, ratioOf: 'ours/peer', goal: '< 1 (beat it)', met: res.ours.p50_ms < res.peer.p50_ms })
  row('save 3 KB session, p99 vs write-file-atomic', { ours: res.ours.p99_ms, floor: res.peer.p99_ms, floorLabel: 'write-file-atomic (no folder fsync)', unit: 'ms', ratio: res.ours.p99_ms / res.peer.p99_ms, ratioOf: 'ours/peer' })
  await store.close()
  dropDir(dir)
}

// ---------------------------------------------------------------------------------------------
// 2. 100 concurrent saves to distinct sessions.
async function benchConcurrent () {
  const dir = trackedDir('concurrent')
  const store = new FileSessionStore({ dir })
  await store.init()
  const files = Array.from({ length: 100 }, (_, i) => sessionOfBytes(`c${String(i).padStart(3, '0')}`, 3072))
  const datas = files.map(serialize)
  const variants = {
    ours: () => Promise.all(files.map((f) => store.save(f))),
    floor: () => Promise.all(datas.map((d, i) => rawDurableSave(dir, `floor_${i}.json`, d))),
    peer: () => Promise.all(datas.map((d, i) => writeFileAtomic(join(dir, `wfa_${i}.json`), d, { mode: 0o600, fsync: true })))
  }
  for (const fn of Object.values(variants)) await fn()
  const perRound = { ours: [], floor: [], peer: [] }
  const names = Object.keys(variants)
  for (let r = 0; r < P.rounds; r++) {
    collect()
    // Batches interleaved (order rotating), so every variant sees the same disk moments.
    const ms = Object.fromEntries(names.map((n) => [n, 0]))
    for (let b = 0; b < P.concurrentBatches; b++) {
      for (let k = 0; k < names.length; k++) {
        const name = names[(b + k + r) % names.length]
        const t = now()
        await variants[name]()
        ms[name] += now() - t
      }
    }
    for (const name of names) perRound[name].push((100 * P.concurrentBatches) / (ms[name] / 1000))
  }
  const res = { batch: 100, batches_per_round: P.concurrentBatches }
  for (const name of Object.keys(perRound)) res[name] = { saves_per_s: median(perRound[name]), rounds: perRound[name] }
  sections.concurrent = res
  const ratio = res.ours.saves_per_s / res.floor.saves_per_s
  row('100 concurrent saves, distinct sessions', { ours: res.ours.saves_per_s, floor: res.floor.saves_per_s, floorLabel: 'raw sequence x100 at once', unit: 'saves/s', ratio, ratioOf: 'ours/floor', goal: '>= 0.9', met: ratio >= 0.9 })
  row('100 concurrent saves vs write-file-atomic', { ours: res.ours.saves_per_s, floor: res.peer.saves_per_s, floorLabel: 'write-file-atomic x100 at once', unit: 'saves/s', ratio: res.ours.saves_per_s / res.peer.saves_per_s, ratioOf: 'ours/peer' })
  await store.close()
  dropDir(dir)
}

// ---------------------------------------------------------------------------------------------
// 3. 1,000 updates to one session through the registry (coalescing) vs 1,000 raw saves.
async function benchUpdates () {
  const dir = trackedDir('updates')
  const inner = new FileSessionStore({ dir })
  await inner.init()
  const { store, counter } = countingStore(inner)
  const manager = new TaskManager({ store, autoSave: true })
  await manager.restore()
  const id = 'hot'
  const seedFile = makeSession(id, 10, { status: 'pending' })
  await manager.create(id, seedFile.session.tasks.map((t) => ({ instruction: t.instruction, task_type: t.task_type })))
  const floorData = readFileSync(join(dir, `${id}.json`))
  const N = P.updates
  const update = (value) => manager.registry.change(id, (draft) => { draft.file.session.tasks[0].result = value })
  const lastOnDisk = () => JSON.parse(readFileSync(join(dir, `${id}.json`), 'utf8')).session.tasks[0].result

  const runs = { paced: [], burst: [], floor: [] }
  const checks = []
  const variants = {
    // One update per event-loop turn, as fast as the loop turns: clients arriving continuously.
    paced: async (r) => {
      const before = counter.saves
      const t = now()
      const pending = []
      for (let i = 0; i < N; i++) {
        pending.push(update(`paced ${r} ${i}`))
        await new Promise(setImmediate)
      }
      await Promise.all(pending)
      const ms = now() - t
      checks.push({ variant: 'paced', expected: `paced ${r} ${N - 1}`, on_disk: lastOnDisk(), writes: counter.saves - before })
      runs.paced.push({ ms, writes: counter.saves - before })
    },
    // All updates issued in one tick.
    burst: async (r) => {
      const before = counter.saves
      const t = now()
      const pending = []
      for (let i = 0; i < N; i++) pending.push(update(`burst ${r} ${i}`))
      await Promise.all(pending)
      const ms = now() - t
      checks.push({ variant: 'burst', expected: `burst ${r} ${N - 1}`, on_disk: lastOnDisk(), writes: counter.saves - before })
      runs.burst.push({ ms, writes: counter.saves - before })
    },
    floor: async () => {
      const t = now()
      for (let i = 0; i < N; i++) await rawDurableSave(dir, 'floor_hot.json', floorData)
      runs.floor.push({ ms: now() - t, writes: N })
    }
  }
  for (let r = 0; r < P.rounds; r++) await alternate(r, Object.values(variants).map((fn) => () => fn(r)))
  await manager.close()
  await inner.close()
  const allHeld = checks.every((c) => c.on_disk === c.expected)
  const res = { updates: N, bytes: floorData.length, final_file_holds_last_update: allHeld, checks }
  for (const name of Object.keys(runs)) res[name] = { ms: median(runs[name].map((x) => x.ms)), writes: median(runs[name].map((x) => x.writes)), rounds: runs[name] }
  sections.updates = res
  const speedup = res.floor.ms / res.paced.ms
  row(`${N} updates to one session (1 per loop turn; ${res.paced.writes} writes)`, { ours: res.paced.ms, floor: res.floor.ms, floorLabel: `raw sequence x${N}`, unit: 'ms', ratio: speedup, ratioOf: 'floor/ours (speed-up)', goal: '>= 5, last update on disk', met: speedup >= 5 && allHeld })
  row(`${N} updates to one session (one burst; ${res.burst.writes} writes)`, { ours: res.burst.ms, floor: res.floor.ms, floorLabel: `raw sequence x${N}`, unit: 'ms', ratio: res.floor.ms / res.burst.ms, ratioOf: 'floor/ours (speed-up)', goal: '>= 5, last update on disk', met: res.floor.ms / res.burst.ms >= 5 && allHeld })
  dropDir(dir)
}

// ---------------------------------------------------------------------------------------------
// 4. Restore N sessions (TaskManager.restore on a FileSessionStore) vs a sync read loop.
const fixtureDirs = new Map()

function fixture (sessions, tasks = 10) {
  const key = `${sessions}x${tasks}`
  if (!fixtureDirs.has(key)) {
    const dir = tempDir(`restore-${key}`)
    cleanup.add(dir)
    const t = now()
    const info = writeSessions(dir, sessions, tasks)
    log(`  fixture ${key}: ${(info.bytes / 1e6).toFixed(1)} MB in ${((now() - t) / 1000).toFixed(1)} s`)
    fixtureDirs.set(key, info)
  }
  return fixtureDirs.get(key)
}

function dropFixture (sessions, tasks = 10) {
  const key = `${sessions}x${tasks}`
  const info = fixtureDirs.get(key)
  if (info === undefined) return
  removeDir(info.dir)
  cleanup.delete(info.dir)
  fixtureDirs.delete(key)
}

async function restoreOurs (dir) {
  const store = new FileSessionStore({ dir })
  await store.init()
  const manager = new TaskManager({ store, autoSave: true })
  const t = now()
  const report = await manager.restore()
  const ms = now() - t
  const ready = manager.ready
  await manager.close()
  await store.close()
  return { ms, sessions: report.sessions, ready }
}

function restoreFloor (dir) {
  const t = now()
  const map = new Map()
  for (const name of readdirSync(dir)) {
    if (!name.endsWith('.json')) continue
    map.set(name.slice(0, -5), JSON.parse(readFileSync(join(dir, name), 'utf8')))
  }
  return { ms: now() - t, sessions: map.size }
}

async function measureRestore (sessions, tasks, rounds) {
  const info = fixture(sessions, tasks)
  restoreFloor(info.dir) // warm the page cache and the code
  const ours = []
  const floor = []
  for (let r = 0; r < rounds; r++) {
    await alternate(r, [
      async () => { const x = await restoreOurs(info.dir); if (x.sessions !== sessions || !x.ready) throw new Error(`restore got ${x.sessions}/${sessions}`); ours.push(x.ms) },
      async () => { const x = restoreFloor(info.dir); if (x.sessions !== sessions) throw new Error('floor miscounted'); floor.push(x.ms) }
    ])
  }
  collect()
  return { sessions, tasks_per_session: tasks, bytes: info.bytes, ours_ms: median(ours), floor_ms: median(floor), ours_rounds: ours, floor_rounds: floor }
}

async function benchRestore () {
  const res = { sizes: [] }
  const sizes = [...P.restoreSizes, ...(P.bigRestore ? [P.bigRestore] : [])]
  for (const n of sizes) {
    log(`  restore ${n} sessions`)
    const x = await measureRestore(n, 10, n >= 100_000 ? 3 : P.rounds)
    res.sizes.push(x)
    const ratio = x.ours_ms / x.floor_ms
    const isGoal = n === 10_000
    row(`restore ${n.toLocaleString('en-US')} sessions x 10 tasks`, { ours: x.ours_ms, floor: x.floor_ms, floorLabel: 'readdirSync+readFileSync+JSON.parse', unit: 'ms', ratio, ratioOf: 'ours/floor', goal: isGoal ? '<= 1.5' : 'reported', met: isGoal ? ratio <= 1.5 : null })
  }
  if (P.taskSweep) {
    res.task_sweep = []
    for (const tasks of P.taskSweep.tasks) {
      log(`  restore ${P.taskSweep.sessions} sessions x ${tasks} tasks`)
      const x = await measureRestore(P.taskSweep.sessions, tasks, P.rounds)
      res.task_sweep.push(x)
      row(`restore ${P.taskSweep.sessions.toLocaleString('en-US')} sessions x ${tasks} tasks`, { ours: x.ours_ms, floor: x.floor_ms, floorLabel: 'readdirSync+readFileSync+JSON.parse', unit: 'ms', ratio: x.ours_ms / x.floor_ms, ratioOf: 'ours/floor' })
    }
  }
  sections.restore = res
}

// ---------------------------------------------------------------------------------------------
// 5. Memory: RSS of the real server after restore, in a fresh child process each round.
function memoryChild (dir) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', join(HERE, 'memory-child.mjs'), JSON.stringify({ dir })], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk) => { out += chunk })
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`memory child exited with ${code}`))
      resolve(JSON.parse(out.trim().split('\n').pop()))
    })
  })
}

let emptyRss = null
async function emptyServerRss () {
  if (emptyRss === null) {
    const dir = tempDir('empty')
    const runs = []
    for (let r = 0; r < P.memoryRounds; r++) runs.push(await memoryChild(dir))
    removeDir(dir)
    emptyRss = { rss: median(runs.map((x) => x.rss)), heap_used: median(runs.map((x) => x.heap_used)), ready_ms: median(runs.map((x) => x.ready_ms)), rounds: runs }
    sections.memory ??= {}
    sections.memory.empty = emptyRss
  }
  return emptyRss
}

async function memoryFigure (sessions, tasks, label, goal = true) {
  const empty = await emptyServerRss()
  const info = fixture(sessions, tasks)
  const runs = []
  for (let r = 0; r < P.memoryRounds; r++) {
    const x = await memoryChild(info.dir)
    if (x.sessions !== sessions) throw new Error(`memory child restored ${x.sessions}/${sessions}`)
    runs.push(x)
  }
  const rss = median(runs.map((x) => x.rss))
  const heap = median(runs.map((x) => x.heap_used))
  const readyMs = median(runs.map((x) => x.ready_ms))
  const factor = (rss - empty.rss) / info.bytes
  sections.memory ??= {}
  sections.memory[`${sessions}x${tasks}`] = { sessions, tasks_per_session: tasks, bytes_on_disk: info.bytes, rss, heap_used: heap, empty_rss: empty.rss, rss_over_empty_per_disk_byte: factor, ready_ms: readyMs, rounds: runs }
  row(label, { ours: rss / 1e6, floor: (3 * info.bytes + empty.rss) / 1e6, floorLabel: `3 x ${(info.bytes / 1e6).toFixed(1)} MB on disk + empty server ${(empty.rss / 1e6).toFixed(1)} MB`, unit: 'MB', ratio: factor, ratioOf: '(RSS - empty RSS) / bytes on disk', goal: goal ? '<= 3' : 'reported', met: goal ? factor <= 3 : null })
}

async function benchMemory () {
  await memoryFigure(10_000, 10, 'RSS after restoring 10,000 sessions')
  if (P.bigRestore) {
    await memoryFigure(P.bigRestore, 10, `RSS after restoring ${P.bigRestore.toLocaleString('en-US')} sessions`)
    dropFixture(P.bigRestore, 10)
  }
  if (P.taskSweep) {
    for (const tasks of P.taskSweep.tasks) {
      await memoryFigure(P.taskSweep.sessions, tasks, `RSS after restoring ${P.taskSweep.sessions.toLocaleString('en-US')} sessions x ${tasks} tasks`, false)
      if (tasks !== 10) dropFixture(P.taskSweep.sessions, tasks)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 6. HTTP POST /create (new session, 3 tasks) at 50 connections vs a bare durable route.
async function benchCreate () {
  const body = (id) => JSON.stringify({ session_id: id, instructions: THREE_TASK_TEXT })
  const createRequests = (prefix) => {
    let n = 0
    return [{ method: 'POST', path: '/api/v1/tasks/create', headers: { 'content-type': 'application/json' }, setupRequest: (req) => ({ ...req, body: body(`${prefix}_${++n}`) }) }]
  }
  // The exact bytes the app writes for such a session, and its answer, captured once.
  const templateId = 'tmplsession000000'
  let template = null
  let responseTemplate = null
  const capture = async (server, dir) => {
    const res = await fetch(`${server.url}/api/v1/tasks/create`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(templateId) })
    if (res.status !== 200) throw new Error(`template create failed: ${res.status}`)
    responseTemplate = await res.text()
    template = readFileSync(join(dir, `${templateId}.json`), 'utf8')
  }
  const runs = { ours: [], floor: [] }
  let warmups = 0
  const close = async ({ server, dir }) => {
    await server.stop()
    dropDir(dir)
  }
  const open = async (name) => {
    const dir = tempDir(`create-${name}`)
    cleanup.add(dir)
    const server = await startServer(name === 'ours' ? { kind: 'app', dir } : { kind: 'bare-create', dir, template, templateId, responseTemplate })
    if (template === null) await capture(server, dir)
    await cannon({ url: server.url, duration: P.warmSeconds, requests: createRequests(`w${++warmups}`) })
    return { server, dir }
  }
  if (P.freshCreateServer) await close(await open('ours')) // captures the template
  // Full run: a fresh server and folder per round, so every round starts from the same state.
  // Quick run: one server per variant for all rounds (server start-up dominates short runs).
  let shared = null
  if (!P.freshCreateServer) {
    const ours = await open('ours')
    shared = { ours, floor: await open('floor') }
  }
  try {
    for (let r = 0; r < P.rounds; r++) {
      await alternate(r, ['ours', 'floor'].map((name) => async () => {
        const target = shared?.[name] ?? await open(name)
        try {
          runs[name].push(await load(target.server, { duration: P.createSeconds, requests: createRequests(`r${r}`) }))
        } finally {
          if (shared === null) await close(target)
        }
      }))
    }
  } finally {
    if (shared !== null) await Promise.all([close(shared.ours), close(shared.floor)])
  }
  const res = { connections: 50, seconds: P.createSeconds, file_bytes: Buffer.byteLength(template) }
  for (const name of Object.keys(runs)) res[name] = { rps: median(runs[name].map((x) => x.rps)), p99_ms: median(runs[name].map((x) => x.p99_ms)), server_cpu_us_per_req: median(runs[name].map((x) => x.server_cpu_us_per_req)), failed: runs[name].reduce((a, x) => a + x.non2xx + x.errors + x.timeouts, 0), rounds: runs[name] }
  sections.create = res
  const ratio = res.ours.rps / res.floor.rps
  row('HTTP POST /create, 50 connections, req/s', { ours: res.ours.rps, floor: res.floor.rps, floorLabel: 'bare Fastify POST + raw durable save', unit: 'req/s', ratio, ratioOf: 'ours/floor', goal: '>= 0.8', met: ratio >= 0.8 && res.ours.failed === 0 })
  row('HTTP POST /create, server CPU per request', { ours: res.ours.server_cpu_us_per_req, floor: res.floor.server_cpu_us_per_req, floorLabel: 'bare Fastify POST + raw durable save', unit: 'us', ratio: res.ours.server_cpu_us_per_req / res.floor.server_cpu_us_per_req, ratioOf: 'ours/floor' })
  row('HTTP POST /create, 50 connections, p99', { ours: res.ours.p99_ms, floor: res.floor.p99_ms, floorLabel: 'bare Fastify POST + raw durable save', unit: 'ms', ratio: res.ours.p99_ms / res.floor.p99_ms, ratioOf: 'ours/floor' })
}

// ---------------------------------------------------------------------------------------------
// 7. HTTP GET /progress and /stats vs a bare GET answering the same JSON; O(1) in sessions.
async function benchGet () {
  const small = fixture(100)
  const large = fixture(10_000)
  const oursSmall = await startServer({ kind: 'app', dir: small.dir })
  const oursLarge = await startServer({ kind: 'app', dir: large.dir })
  let bare
  try {
    const paths = { progress: `/api/v1/tasks/progress?session_id=${sessionId(42)}`, stats: '/api/v1/tasks/stats' }
    const bodies = {}
    for (const [name, path] of Object.entries(paths)) {
      const res = await fetch(oursLarge.url + path)
      if (res.status !== 200) throw new Error(`GET ${path}: ${res.status}`)
      bodies[path.split('?')[0]] = await res.text()
    }
    bare = await startServer({ kind: 'bare-get', bodies })
    const servers = { floor: bare, ours_10k: oursLarge, ours_100: oursSmall }
    for (const s of Object.values(servers)) for (const path of Object.values(paths)) await cannon({ url: s.url + path, duration: P.warmSeconds })
    const runs = {}
    for (const name of Object.keys(paths)) for (const s of Object.keys(servers)) runs[`${name}.${s}`] = []
    for (let r = 0; r < P.rounds; r++) {
      for (const [name, path] of Object.entries(paths)) {
        await alternate(r, Object.entries(servers).map(([s, server]) => async () => {
          runs[`${name}.${s}`].push(await load(server, { url: server.url + path, duration: P.getSeconds }))
        }))
      }
    }
    const res = { connections: 50, seconds: P.getSeconds, bodies }
    for (const [key, list] of Object.entries(runs)) res[key] = { rps: median(list.map((x) => x.rps)), p99_ms: median(list.map((x) => x.p99_ms)), server_cpu_us_per_req: median(list.map((x) => x.server_cpu_us_per_req)), failed: list.reduce((a, x) => a + x.non2xx + x.errors + x.timeouts, 0), rounds: list }
    sections.get = res
    for (const name of Object.keys(paths)) {
      const o = res[`${name}.ours_10k`]
      const f = res[`${name}.floor`]
      const s = res[`${name}.ours_100`]
      row(`HTTP GET /${name} (10,000 sessions), req/s`, { ours: o.rps, floor: f.rps, floorLabel: 'bare Fastify GET, same JSON', unit: 'req/s', ratio: o.rps / f.rps, ratioOf: 'ours/floor', goal: '>= 0.75', met: o.rps / f.rps >= 0.75 && o.failed === 0 })
      row(`HTTP GET /${name}, server CPU per request`, { ours: o.server_cpu_us_per_req, floor: f.server_cpu_us_per_req, floorLabel: 'bare Fastify GET, same JSON', unit: 'us', ratio: o.server_cpu_us_per_req / f.server_cpu_us_per_req, ratioOf: 'ours/floor' })
      row(`HTTP GET /${name}: 10,000 vs 100 sessions`, { ours: o.rps, floor: s.rps, floorLabel: 'same route, 100 sessions', unit: 'req/s', ratio: o.rps / s.rps, ratioOf: 'ours@10k/ours@100', goal: 'O(1): >= 0.8', met: o.rps / s.rps >= 0.8 })
    }
  } finally {
    await Promise.all([oursSmall.stop(), oursLarge.stop(), bare?.stop()])
  }
}

// ---------------------------------------------------------------------------------------------
// 8. Auto-save overhead: create + 3 executes per session, TASK_AUTO_SAVE true vs false.
async function benchAutosave () {
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
      const dir = tempDir('autosave-probe')
      const inner = new FileSessionStore({ dir })
      await inner.init()
      const sizes = []
      const probe = new Proxy(inner, {
        get (target, key) {
          if (key === 'save') return async (f) => { sizes.push(serialize(f)); return target.save(f) }
          const value = Reflect.get(target, key, target)
          return typeof value === 'function' ? value.bind(target) : value
        }
      })
      const m = new TaskManager({ store: probe, autoSave: true })
      await m.restore()
      await m.create('auto_0', THREE_TASKS)
      for (let k = 0; k < 3; k++) await m.executeNext('auto_0')
      await m.close()
      await inner.close()
      removeDir(dir)
      saveBytes = sizes
    }
    await alternate(r, [floorRun, ...['on', 'off'].map((mode) => async () => {
      const dir = tempDir(`autosave-${mode}`)
      cleanup.add(dir)
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

// ---------------------------------------------------------------------------------------------
// 9. Execute throughput with the echo agent, 100 sessions executing at once.
async function benchExecute () {
  const M = P.executeSessions
  const T = P.executeTasks
  const specs = makeSession('x', T, { status: 'pending' }).session.tasks.map((t) => ({ instruction: t.instruction, task_type: t.task_type }))
  const runs = { on: [], off: [] }
  const saves = []
  for (let r = 0; r < P.rounds; r++) {
    await alternate(r, ['on', 'off'].map((mode) => async () => {
      const dir = tempDir(`execute-${mode}`)
      cleanup.add(dir)
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

// ---------------------------------------------------------------------------------------------

function machine () {
  const describeDisk = () => {
    try {
      const source = execFileSync('df', ['--output=source,fstype', os.tmpdir()], { encoding: 'utf8' }).trim().split('\n').pop().trim().split(/\s+/)
      const dev = source[0].replace('/dev/', '').replace(/\d+$/, '')
      let rotational = null
      try { rotational = readFileSync(`/sys/block/${dev}/queue/rotational`, 'utf8').trim() === '1' } catch {}
      return { device: source[0], fstype: source[1], rotational }
    } catch { return null }
  }
  return {
    cpus: os.cpus().length,
    cpu_model: os.cpus()[0]?.model ?? 'unknown',
    memory_gb: round(os.totalmem() / 2 ** 30, 1),
    node: process.version,
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
    tmpdir: os.tmpdir(),
    disk: describeDisk(),
    uv_threadpool_size: Number(process.env.UV_THREADPOOL_SIZE ?? 4),
    loadavg_at_start: loadAtStart.map((x) => round(x, 2)),
    loadavg_at_end: os.loadavg().map((x) => round(x, 2))
  }
}

function fmt (value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '-'
  const abs = Math.abs(value)
  if (abs >= 1000) return Math.round(value).toLocaleString('en-US')
  if (abs >= 100) return value.toFixed(0)
  if (abs >= 10) return value.toFixed(1)
  if (abs >= 1) return value.toFixed(2)
  return value.toFixed(3)
}

export function table (list) {
  const header = ['figure', 'ours', 'floor / peer', 'unit', 'ratio', 'ratio of', 'goal', 'met']
  const lines = list.map((r) => [r.figure, fmt(r.ours), `${fmt(r.floor)}${r.floor_label ? ` (${r.floor_label})` : ''}`, r.unit, fmt(r.ratio), r.ratio_of, r.goal, r.met === null ? '-' : r.met ? 'yes' : 'NO'])
  const md = [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...lines.map((l) => `| ${l.join(' | ')} |`)]
  return md.join('\n')
}

// fsync-bound sections first; the HTTP ones create and delete thousands of files.
const SECTIONS = [
  ['save', benchSave], ['concurrent', benchConcurrent], ['updates', benchUpdates], ['autosave', benchAutosave],
  ['execute', benchExecute], ['restore', benchRestore], ['memory', benchMemory], ['create', benchCreate], ['get', benchGet]
]

/** Between sections: flush dirty pages and the journal so one section's writeback does not land in the next. */
async function settle () {
  try { execFileSync('sync') } catch {}
  await new Promise((resolve) => setTimeout(resolve, 100))
}

// The manager shares one AbortSignal among running executions; more than 10 at once makes
// Node warn. Counted and reported once instead of printed per occurrence.
const warnings = new Map()
process.removeAllListeners('warning')
process.on('warning', (w) => warnings.set(w.name, (warnings.get(w.name) ?? 0) + 1))

const loadAtStart = os.loadavg()

async function main () {
  if (loadAtStart[0] > 1) log(`warning: load average ${loadAtStart.map((x) => x.toFixed(2)).join(' ')} on ${os.cpus().length} cores: something else is running, figures will be noisy`)
  log(`taskvault bench (${QUICK ? 'quick' : 'full'}), ${P.rounds} rounds, node ${process.version}${typeof globalThis.gc === 'function' ? '' : ' (no --expose-gc: run through npm run bench)'}`)
  const timings = {}
  for (const [name, fn] of SECTIONS) {
    if (!wanted(name)) continue
    await settle()
    const t = now()
    log(`- ${name}`)
    await fn()
    timings[name] = round((now() - t) / 1000, 2)
    log(`  ${timings[name]} s`)
  }
  const out = {
    mode: QUICK ? 'quick' : 'full',
    date: new Date().toISOString(),
    duration_s: round((now() - benchStarted) / 1000, 1),
    machine: machine(),
    parameters: P,
    section_seconds: timings,
    process_warnings: Object.fromEntries(warnings),
    rows,
    sections
  }
  const md = table(rows)
  out.table_markdown = md
  process.stdout.write('\n' + md + '\n\n')
  const met = rows.filter((r) => r.met === true).length
  const missed = rows.filter((r) => r.met === false)
  if (out.machine.loadavg_at_start[0] > 1 || out.machine.loadavg_at_end[0] > 2.5) process.stdout.write(`note: load average ${out.machine.loadavg_at_start.join(' ')} at start, ${out.machine.loadavg_at_end.join(' ')} at end (the bench itself adds ~2 on its HTTP sections)\n`)
  process.stdout.write(`goals met: ${met}, missed: ${missed.length}${missed.length ? ' (' + missed.map((r) => r.figure).join('; ') + ')' : ''}; ${out.duration_s} s\n`)
  // The full run's file is the one RESULTS.md quotes; a quick run never overwrites it.
  const file = args.find((a) => a.startsWith('--out='))?.slice(6) ?? join(HERE, QUICK ? 'results.quick.json' : 'results.json')
  if (warnings.size > 0) process.stdout.write(`process warnings: ${[...warnings].map(([k, v]) => `${k} x${v}`).join(', ')}\n`)
  writeFileSync(file, JSON.stringify(out, null, 2) + '\n')
  process.stdout.write(`wrote ${file}\n`)
}

// Interrupted (Ctrl-C): still remove the temp folders (the 100,000-session one is ~570 MB).
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    for (const dir of cleanup) removeDir(dir)
    process.exit(130)
  })
}

try {
  await main()
} finally {
  for (const dir of cleanup) removeDir(dir)
}
