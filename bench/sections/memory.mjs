// 5. Memory: RSS of the real server after restore, in a fresh child process each round.
// Floor: 3 x the bytes on disk over an empty server's RSS (the goal is RSS growth <= 3 x disk).
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { median } from '../lib/stats.mjs'

const CHILD = fileURLToPath(new URL('../memory-child.mjs', import.meta.url))

function memoryChild (dir) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', CHILD, JSON.stringify({ dir })], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk) => { out += chunk })
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`memory child exited with ${code}`))
      resolve(JSON.parse(out.trim().split('\n').pop()))
    })
  })
}

/** The same server on an empty folder: the baseline every figure subtracts. */
async function emptyServerRss ({ P, sections, trackedDir, dropDir }) {
  const dir = trackedDir('empty')
  const runs = []
  for (let r = 0; r < P.memoryRounds; r++) runs.push(await memoryChild(dir))
  dropDir(dir)
  return baseline(sections, runs)
}

/** The baseline from its runs, recorded in the JSON. */
function baseline (sections, runs) {
  const empty = { rss: median(runs.map((x) => x.rss)), heap_used: median(runs.map((x) => x.heap_used)), ready_ms: median(runs.map((x) => x.ready_ms)), rounds: runs }
  sections.memory ??= {}
  sections.memory.empty = empty
  return empty
}

/** `measured`: runs already taken (the quick run's); otherwise P.memoryRounds children, one after another. */
async function memoryFigure ({ P, row, sections, fixture }, empty, sessions, tasks, label, goal = true, measured = null) {
  const info = fixture(sessions, tasks)
  const runs = measured ?? []
  for (let r = runs.length; r < P.memoryRounds; r++) runs.push(await memoryChild(info.dir))
  for (const x of runs) if (x.sessions !== sessions) throw new Error(`memory child restored ${x.sessions}/${sessions}`)
  const rss = median(runs.map((x) => x.rss))
  const heap = median(runs.map((x) => x.heap_used))
  const readyMs = median(runs.map((x) => x.ready_ms))
  const factor = (rss - empty.rss) / info.bytes
  sections.memory ??= {}
  sections.memory[`${sessions}x${tasks}`] = { sessions, tasks_per_session: tasks, bytes_on_disk: info.bytes, rss, heap_used: heap, empty_rss: empty.rss, rss_over_empty_per_disk_byte: factor, ready_ms: readyMs, rounds: runs }
  row(label, { ours: rss / 1e6, floor: (3 * info.bytes + empty.rss) / 1e6, floorLabel: `3 x ${(info.bytes / 1e6).toFixed(1)} MB on disk + empty server ${(empty.rss / 1e6).toFixed(1)} MB`, unit: 'MB', ratio: factor, ratioOf: '(RSS - empty RSS) / bytes on disk', goal: goal ? '<= 3' : 'reported', met: goal ? factor <= 3 : null })
}

export async function benchMemory (ctx) {
  const { P, quick, dropFixture } = ctx
  if (quick) {
    // One child each, side by side: RSS does not depend on the other child (boot times, reported
    // in the JSON only, do).
    const dir = ctx.trackedDir('empty')
    const info = ctx.fixture(10_000, 10)
    const [empty, full] = await Promise.all([memoryChild(dir), memoryChild(info.dir)])
    ctx.dropDir(dir)
    await memoryFigure(ctx, baseline(ctx.sections, [empty]), 10_000, 10, 'RSS after restoring 10,000 sessions', true, [full])
    return
  }
  const empty = await emptyServerRss(ctx)
  await memoryFigure(ctx, empty, 10_000, 10, 'RSS after restoring 10,000 sessions')
  if (P.bigRestore) {
    await memoryFigure(ctx, empty, P.bigRestore, 10, `RSS after restoring ${P.bigRestore.toLocaleString('en-US')} sessions`)
    dropFixture(P.bigRestore, 10)
  }
  if (P.taskSweep) {
    for (const tasks of P.taskSweep.tasks) {
      await memoryFigure(ctx, empty, P.taskSweep.sessions, tasks, `RSS after restoring ${P.taskSweep.sessions.toLocaleString('en-US')} sessions x ${tasks} tasks`, false)
      if (tasks !== 10) dropFixture(P.taskSweep.sessions, tasks)
    }
  }
}
