// taskvault benchmark harness. Run with `npm run bench` (full) or `npm run bench -- --quick`.
// Every figure is the median of several rounds, measured next to a floor or peer on the same
// bytes in the same run; ratios make the goals of issue 6 machine-independent.
// Optional: `--only=save,restore,...` runs a subset (sections: save, concurrent, updates,
// restore, cold, memory, create, get, autosave, execute, encryption, fanout, peers, postgres, lists, replicas; cold drops the page
// cache before each timed run, so it needs root on Linux and is skipped with one line elsewhere); `--out=FILE` writes the JSON elsewhere
// (default bench/results.json for a full run, bench/results.quick.json for --quick, and
// bench/results.partial.json for --only, so a subset never overwrites the recorded full run).
// Each section lives in bench/sections/ and gets the shared context from bench/lib/context.mjs.
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createContext } from './lib/context.mjs'
import { describeKernel, kernel, machine, table } from './lib/report.mjs'
import { now, round } from './lib/stats.mjs'
import { benchAutosave } from './sections/autosave.mjs'
import { benchCold } from './sections/cold.mjs'
import { benchConcurrent } from './sections/concurrent.mjs'
import { benchCreate } from './sections/create.mjs'
import { benchEncryption } from './sections/encryption.mjs'
import { benchExecute } from './sections/execute.mjs'
import { benchFanout } from './sections/fanout.mjs'
import { benchGet } from './sections/get.mjs'
import { benchMemory } from './sections/memory.mjs'
import { benchPeers } from './sections/peers.mjs'
import { benchPostgres } from './sections/postgres.mjs'
import { benchPostgresLists } from './sections/postgres-lists.mjs'
import { benchReplicas } from './sections/replicas.mjs'
import { benchRestore } from './sections/restore.mjs'
import { benchSave } from './sections/save.mjs'
import { benchUpdates } from './sections/updates.mjs'

const args = process.argv.slice(2)
const QUICK = args.includes('--quick')
const ONLY = args.find((a) => a.startsWith('--only='))?.slice(7).split(',') ?? null
const OUT = args.find((a) => a.startsWith('--out='))?.slice(6) ?? null
const HERE = fileURLToPath(new URL('.', import.meta.url))

// fsync-bound sections first; the HTTP ones create and delete thousands of files.
const SECTIONS = [
  ['save', benchSave], ['concurrent', benchConcurrent], ['updates', benchUpdates], ['autosave', benchAutosave],
  ['execute', benchExecute], ['restore', benchRestore], ['cold', benchCold], ['memory', benchMemory], ['create', benchCreate], ['get', benchGet], ['encryption', benchEncryption], ['fanout', benchFanout],
  // taskvault against pg-boss and BullMQ on the same work; a peer that cannot be reached is reported as such.
  ['peers', benchPeers],
  // Last: skipped with one line when no PostgreSQL answers (TASK_BENCH_DATABASE_URL, default 127.0.0.1:5432).
  ['postgres', benchPostgres],
  // Lists with archived sessions at 100,000 sessions on PostgreSQL; skipped like postgres.
  ['lists', benchPostgresLists],
  // Several server processes on one PostgreSQL (issue 14); skipped like postgres.
  ['replicas', benchReplicas]
]

const benchStarted = now()
const loadAtStart = os.loadavg()
const ctx = createContext({ quick: QUICK })
// `--fanout-flush-ms=N`: the fanout section's TASK_EVENTS_FLUSH_MS (latency against CPU).
const FLUSH = args.find((a) => a.startsWith('--fanout-flush-ms='))?.slice(18)
if (FLUSH !== undefined) ctx.P.fanoutFlushMs = Number(FLUSH)
// `--fanout-config=JSON`: more of the fanout server's settings, as in `{"TASK_EVENTS_FANOUT_SLICE_MS":2}`.
const FANOUT_CONFIG = args.find((a) => a.startsWith('--fanout-config='))?.slice(16)
if (FANOUT_CONFIG !== undefined) ctx.P.fanoutConfig = JSON.parse(FANOUT_CONFIG)
const { P, rows, sections, log } = ctx
const wanted = (name) => ONLY === null || ONLY.includes(name)

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

async function main () {
  if (loadAtStart[0] > 1) log(`warning: load average ${loadAtStart.map((x) => x.toFixed(2)).join(' ')} on ${os.cpus().length} cores: something else is running, figures will be noisy`)
  log(`taskvault bench (${QUICK ? 'quick' : 'full'}), ${P.rounds} rounds, node ${process.version}${typeof globalThis.gc === 'function' ? '' : ' (no --expose-gc: run through npm run bench)'}`)
  const kernelInfo = kernel()
  log(describeKernel(kernelInfo))
  const timings = {}
  for (const [name, fn] of SECTIONS) {
    if (!wanted(name)) continue
    await settle()
    const t = now()
    log(`- ${name}`)
    await fn(ctx)
    timings[name] = round((now() - t) / 1000, 2)
    log(`  ${timings[name]} s`)
  }
  const out = {
    mode: QUICK ? 'quick' : 'full',
    date: new Date().toISOString(),
    duration_s: round((now() - benchStarted) / 1000, 1),
    machine: machine(loadAtStart, kernelInfo),
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
  const file = OUT ?? join(HERE, QUICK ? 'results.quick.json' : ONLY !== null ? 'results.partial.json' : 'results.json')
  if (warnings.size > 0) process.stdout.write(`process warnings: ${[...warnings].map(([k, v]) => `${k} x${v}`).join(', ')}\n`)
  writeFileSync(file, JSON.stringify(out, null, 2) + '\n')
  process.stdout.write(`wrote ${file}\n`)
}

// Interrupted (Ctrl-C): still remove the temp folders (the 100,000-session one is ~570 MB).
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    ctx.removeAll()
    process.exit(130)
  })
}

try {
  await main()
} finally {
  if (QUICK) ctx.removeAllInBackground()
  else ctx.removeAll()
}
