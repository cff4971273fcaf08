// The one object every bench section receives: the run's parameters, where results go (rows for
// the table, sections for the JSON), logging, round ordering, and temp folders that are removed
// at the end even if the run is interrupted. Sections share state only through this object.
import { spawn } from 'node:child_process'
import { removeDir, tempDir, writeSessions } from './fixtures.mjs'
import { collect, now, round } from './stats.mjs'

/**
 * Quick (issue 17: under 90 s, every section): the same figures with fewer, shorter and smaller
 * rounds, no 100,000-session or tasks-per-session runs. Quick figures are for a first look; the
 * recorded ones come from the full run.
 */
const QUICK_PARAMS = { rounds: 1, saveN: 100, concurrentBatches: 3, updates: 250, restoreSizes: [100, 10_000], createSeconds: 0.4, getSeconds: 0.2, warmSeconds: 0.15, freshCreateServer: false, autosaveSessions: 20, executeSessions: 50, executeTasks: 10, memoryRounds: 1, bigRestore: null, taskSweep: null, fanoutClients: 1000, fanoutTasksPerS: 100, fanoutSeconds: 1, fanoutThroughputSeconds: 0.4, fanoutBlocks: 1, sealedRestore: 2_000 }
const FULL_PARAMS = { rounds: 5, saveN: 500, concurrentBatches: 10, updates: 1000, restoreSizes: [100, 1000, 10_000], createSeconds: 5, getSeconds: 3, warmSeconds: 1, freshCreateServer: true, autosaveSessions: 100, executeSessions: 100, executeTasks: 10, memoryRounds: 3, bigRestore: 100_000, taskSweep: { sessions: 1000, tasks: [1, 10, 100] }, fanoutClients: 1000, fanoutTasksPerS: 100, fanoutSeconds: 10, fanoutThroughputSeconds: 3, fanoutBlocks: 3, sealedRestore: 10_000 }

export function createContext ({ quick }) {
  const P = structuredClone(quick ? QUICK_PARAMS : FULL_PARAMS)
  const rows = []
  const sections = {}
  const cleanup = new Set()
  const fixtures = new Map()

  const log = (...parts) => process.stderr.write(parts.join(' ') + '\n')

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

  /** Removes every temp folder still tracked (Ctrl-C, or where `rm` is missing). */
  function removeAll () {
    for (const dir of cleanup) removeDir(dir)
    cleanup.clear()
  }

  /**
   * At the end of a quick run: the folders go to a detached `rm -rf` that outlives this process,
   * so the results are not held back by unlinking (10,000 files take about 3 s on this VM's
   * disk). A full run removes them itself, so a run started right after is not measured during it.
   */
  function removeAllInBackground () {
    const dirs = [...cleanup]
    if (dirs.length === 0) return
    const inForeground = () => { for (const dir of dirs) removeDir(dir) }
    cleanup.clear()
    try {
      // No `rm` (spawn fails on the next tick, before the process can exit): removed here instead.
      spawn('rm', ['-rf', '--', ...dirs], { detached: true, stdio: 'ignore' }).on('error', inForeground).unref()
    } catch {
      inForeground()
    }
  }

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

  /**
   * A folder of `sessions` session files with `tasks` tasks each, written once and shared by the
   * sections that read it (restore, memory, get); returns { dir, count, tasksPerSession, bytes }.
   */
  function fixture (sessions, tasks = 10) {
    const key = `${sessions}x${tasks}`
    if (!fixtures.has(key)) {
      const dir = trackedDir(`restore-${key}`)
      const t = now()
      const info = writeSessions(dir, sessions, tasks)
      log(`  fixture ${key}: ${(info.bytes / 1e6).toFixed(1)} MB in ${((now() - t) / 1000).toFixed(1)} s`)
      fixtures.set(key, info)
    }
    return fixtures.get(key)
  }

  /** Removes a fixture no later section needs (the 100,000-session one is ~570 MB). */
  function dropFixture (sessions, tasks = 10) {
    const key = `${sessions}x${tasks}`
    const info = fixtures.get(key)
    if (info === undefined) return
    dropDir(info.dir)
    fixtures.delete(key)
  }

  return { quick, P, rows, sections, log, row, alternate, trackedDir, dropDir, removeAll, removeAllInBackground, fixture, dropFixture }
}
