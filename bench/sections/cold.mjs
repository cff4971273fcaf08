// 4b. Cold-cache restore (issue 17): the restore section's figure with the page cache dropped
// before every timed run, as after a reboot or on a freshly attached volume. Same code path as
// the restore section (FileSessionStore + TaskManager.restore, timed around restore()) and the
// same floor (readdirSync + readFileSync + JSON.parse), the floor read equally cold.
// Then TASK_RESTORE_CONCURRENCY 1..16, each cold and warm, and the concurrency this machine
// would pick (reported only: the default in schemas/config.ts is not changed here). And the
// disk's ceiling: the same files read cold without parsing, by 1, 2, 4 and 16 threads
// (read-probe-child.mjs); no restore that reads with that many beats it.
// Needs root on Linux (`sync`, then 3 > /proc/sys/vm/drop_caches); elsewhere it is skipped with one line.
import { execFileSync } from 'node:child_process'
import { cpus } from 'node:os'
import { join } from 'node:path'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { SETTING_DEFAULTS } from '../../dist/schemas/options.js'
import { cachedMB, describeDevice, dropCaches, probeDropCaches, residentPages } from '../lib/cold-cache.mjs'
import { sessionId, writeSessions } from '../lib/fixtures.mjs'
import { restoreFloor } from './restore.mjs'
import { collect, median, now, round } from '../lib/stats.mjs'

const CONCURRENCIES = [1, 2, 4, 8, 16]
/** Quick runs sweep fewer (the full run shows past 2 threads only loses on 2 cores). */
const QUICK_CONCURRENCIES = [1, 2]
/** Reads in flight for the disk's ceiling (read-probe-child.mjs). */
const IO_DEPTHS = [1, 2, 4, 16]
const QUICK_IO_DEPTHS = [1, 4]
const PROBE = new URL('../read-probe-child.mjs', import.meta.url).pathname
const FLOOR_LABEL = 'readdirSync+readFileSync+JSON.parse'
/** A concurrency may be this much slower warm than the best warm one and still be recommended. */
const WARM_SLACK = 1.1

/** restore() timed as in the restore section; `beforeTimed` runs after store.init(), right before the clock starts. */
async function restoreOurs (dir, concurrency, beforeTimed) {
  const store = new FileSessionStore({ dir })
  await store.init()
  const manager = new TaskManager({ store, autoSave: true, ...(concurrency === null ? {} : { restoreConcurrency: concurrency }) })
  let ms, report, ready
  try {
    beforeTimed()
    const t = now()
    report = await manager.restore()
    ms = now() - t
    ready = manager.ready
  } finally {
    await manager.close()
    await store.close()
  }
  return { ms, sessions: report.sessions, ready, concurrency: manager.settings.restoreConcurrency }
}

/** Reads every file of `dir` cold without parsing, `depth` reads in flight, in a child process (timed there). */
function readCold (dir, depth, beforeTimed) {
  beforeTimed()
  return JSON.parse(execFileSync(process.execPath, [PROBE, dir, String(depth)], { encoding: 'utf8' }))
}

/** Runs `variants` (name -> async fn) in this round's order: as listed on even rounds, reversed on odd ones. */
async function inOrder (roundIndex, variants) {
  const names = Object.keys(variants)
  for (const name of roundIndex % 2 === 0 ? names : names.reverse()) {
    collect()
    await variants[name]()
  }
}

export async function benchCold (ctx) {
  const { quick, row, sections, log, trackedDir, dropDir } = ctx
  const sessions = quick ? 1_000 : 10_000
  const tasks = 10
  const rounds = quick ? 1 : 5
  const concurrencies = quick ? QUICK_CONCURRENCIES : CONCURRENCIES
  const depths = quick ? QUICK_IO_DEPTHS : IO_DEPTHS
  const defaultConcurrency = SETTING_DEFAULTS.TASK_RESTORE_CONCURRENCY
  const res = { sessions, tasks_per_session: tasks, rounds, default_concurrency: defaultConcurrency, cpus: cpus().length, skipped: false }
  sections.cold = res

  const refused = probeDropCaches()
  if (refused !== null) {
    res.skipped = true
    res.reason = `cannot drop the page cache (${refused})`
    log(`  cold: skipped, cannot drop the page cache (${refused}); run as root on Linux`)
    return
  }

  const dir = trackedDir('cold')
  try {
    res.device = describeDevice(dir)
    log(`  ${rounds} rounds; ${res.device.source} ${res.device.fstype}, ${res.device.kind}`)
    let t = now()
    const info = writeSessions(dir, sessions, tasks) // ends with `sync`
    res.bytes = info.bytes
    log(`  fixture ${sessions}x${tasks}: ${(info.bytes / 1e6).toFixed(1)} MB in ${((now() - t) / 1000).toFixed(1)} s`)

    // Check once that a drop really empties the cache for these files (fincore on a sample).
    const sample = Array.from({ length: 50 }, (_, k) => join(dir, `${sessionId(Math.floor(k * sessions / 50))}.json`))
    restoreFloor(dir, () => {})
    const residentWarm = residentPages(sample)
    const cachedBefore = cachedMB()
    t = now()
    dropCaches()
    res.drop = { drop_ms: round(now() - t, 1), page_cache_mb_before: cachedBefore, page_cache_mb_after: cachedMB(), sample_files: sample.length, sample_resident_pages_warm: residentWarm, sample_resident_pages_after_drop: residentPages(sample) }
    log(`  drop_caches: page cache ${cachedBefore} -> ${res.drop.page_cache_mb_after} MB in ${res.drop.drop_ms} ms; ${sample.length} sample files resident pages ${residentWarm} -> ${res.drop.sample_resident_pages_after_drop}`)

    const check = (x, what) => {
      if (x.sessions !== sessions) throw new Error(`${what} got ${x.sessions}/${sessions}`)
      if (x.ready === false) throw new Error(`${what}: manager not ready after restore`)
    }
    const cold = { default: [], floor: [] }
    const warm = { floor: [] }
    for (const c of concurrencies) { cold[c] = []; warm[c] = [] }
    const io = Object.fromEntries(depths.map((d) => [d, []]))
    let dropMs = 0
    const drop = () => {
      const d = now()
      try { dropCaches() } catch (err) { throw Object.assign(new Error(`cannot drop the page cache (${err.code ?? 'error'}: ${err.message.split('\n')[0]})`), { dropRefused: true }) }
      dropMs += now() - d
    }
    const noop = () => {}

    for (let r = 0; r < rounds; r++) {
      t = now()
      const coldVariants = {
        default: async () => { const x = await restoreOurs(dir, null, drop); check(x, 'cold default'); res.default_resolved = x.concurrency; cold.default.push(x.ms) },
        floor: async () => { const x = restoreFloor(dir, drop); check(x, 'cold floor'); cold.floor.push(x.ms) }
      }
      for (const c of concurrencies) coldVariants[`c${c}`] = async () => { const x = await restoreOurs(dir, c, drop); check(x, `cold c=${c}`); cold[c].push(x.ms) }
      for (const d of depths) {
        coldVariants[`io${d}`] = async () => { const x = readCold(dir, d, drop); if (x.files !== sessions) throw new Error(`cold read depth ${d} got ${x.files}/${sessions}`); io[d].push(x.ms) }
      }
      await inOrder(r, coldVariants)
      // Warm: one untimed run right before the timed one, so the files and the code are cached.
      const warmVariants = { floor: async () => { restoreFloor(dir, noop); const x = restoreFloor(dir, noop); check(x, 'warm floor'); warm.floor.push(x.ms) } }
      for (const c of concurrencies) warmVariants[`c${c}`] = async () => { await restoreOurs(dir, c, noop); const x = await restoreOurs(dir, c, noop); check(x, `warm c=${c}`); warm[c].push(x.ms) }
      await inOrder(r, warmVariants)
      log(`  round ${r + 1}/${rounds}: ${((now() - t) / 1000).toFixed(1)} s (cold default ${cold.default.at(-1).toFixed(0)} ms, cold floor ${cold.floor.at(-1).toFixed(0)} ms)`)
    }
    res.drop.total_drop_s = round(dropMs / 1000, 2)

    const n = sessions.toLocaleString('en-US')
    const coldFloor = median(cold.floor)
    const warmFloor = median(warm.floor)
    const ours = median(cold.default)
    res.cold_default = { ms: round(ours, 1), floor_ms: round(coldFloor, 1), ratio: round(ours / coldFloor, 3), ours_rounds: cold.default.map((x) => round(x, 1)), floor_rounds: cold.floor.map((x) => round(x, 1)) }
    row(`cold restore ${n} sessions x ${tasks} tasks (default concurrency ${defaultConcurrency})`, { ours, floor: coldFloor, floorLabel: `${FLOOR_LABEL}, cold`, unit: 'ms', ratio: ours / coldFloor, ratioOf: 'ours/floor', goal: '<= 0.6', met: ours / coldFloor <= 0.6 })

    res.warm_floor = { ms: round(warmFloor, 1), rounds: warm.floor.map((x) => round(x, 1)) }
    res.concurrency = []
    for (const c of concurrencies) {
      const mc = median(cold[c])
      const mw = median(warm[c])
      res.concurrency.push({ concurrency: c, cold_ms: round(mc, 1), warm_ms: round(mw, 1), cold_ratio: round(mc / coldFloor, 3), warm_ratio: round(mw / warmFloor, 3), cold_rounds: cold[c].map((x) => round(x, 1)), warm_rounds: warm[c].map((x) => round(x, 1)) })
      row(`cold restore ${n} x ${tasks}, TASK_RESTORE_CONCURRENCY=${c}`, { ours: mc, floor: coldFloor, floorLabel: `${FLOOR_LABEL}, cold`, unit: 'ms', ratio: mc / coldFloor, ratioOf: 'ours/floor' })
    }
    for (const x of res.concurrency) {
      row(`warm restore ${n} x ${tasks}, TASK_RESTORE_CONCURRENCY=${x.concurrency}`, { ours: x.warm_ms, floor: warmFloor, floorLabel: `${FLOOR_LABEL}, warm`, unit: 'ms', ratio: x.warm_ratio, ratioOf: 'ours/floor' })
    }

    res.io = depths.map((d) => ({ depth: d, cold_ms: round(median(io[d]), 1), ratio: round(median(io[d]) / coldFloor, 3), rounds: io[d].map((x) => round(x, 1)) }))
    for (const x of res.io) {
      row(`cold read of the same files, no parsing, ${x.depth} thread${x.depth === 1 ? '' : 's'} (the disk's ceiling)`, { ours: x.cold_ms, floor: coldFloor, floorLabel: `${FLOOR_LABEL}, cold`, unit: 'ms', ratio: x.ratio, ratioOf: 'read/floor' })
    }
    const ceiling = res.io.reduce((a, b) => (b.cold_ms < a.cold_ms ? b : a))
    res.ceiling = { depth: ceiling.depth, cold_ms: ceiling.cold_ms, ratio: ceiling.ratio, goal_reachable: ceiling.ratio <= 0.6 }
    log(`  the disk's ceiling: reading the files cold without parsing takes ${ceiling.cold_ms} ms at best (${ceiling.depth} thread${ceiling.depth === 1 ? '' : 's'}), ${ceiling.ratio}x the cold floor${ceiling.ratio > 0.6 ? '; no restore can reach 0.6x here' : ''}`)

    // Fastest cold among those within 10% of the best warm time.
    const bestWarm = Math.min(...res.concurrency.map((x) => x.warm_ms))
    const eligible = res.concurrency.filter((x) => x.warm_ms <= bestWarm * WARM_SLACK)
    const pick = eligible.reduce((a, b) => (b.cold_ms < a.cold_ms ? b : a))
    res.recommendation = {
      concurrency: pick.concurrency,
      rule: `fastest cold among concurrencies at most ${Math.round((WARM_SLACK - 1) * 100)}% slower warm than the best warm (${round(bestWarm, 1)} ms)`,
      eligible: eligible.map((x) => x.concurrency),
      cold_ms: pick.cold_ms,
      warm_ms: pick.warm_ms,
      default: defaultConcurrency,
      default_cold_ms: res.concurrency.find((x) => x.concurrency === defaultConcurrency)?.cold_ms ?? null,
      note: 'reported only; the default is unchanged'
    }
    log(`  recommended TASK_RESTORE_CONCURRENCY on this machine: ${pick.concurrency} (cold ${pick.cold_ms} ms, warm ${pick.warm_ms} ms; eligible ${res.recommendation.eligible.join(', ')}; default ${defaultConcurrency})`)
  } catch (err) {
    // A drop refused mid-run (the probe passed) skips the section like a refused probe; anything else is a real failure.
    if (!err.dropRefused) throw err
    res.skipped = true
    res.reason = err.message
    log(`  cold: skipped, ${err.message}`)
  } finally {
    dropDir(dir)
  }
}
