// Where a restore's CPU goes, plaintext against sealed, thread by thread (not product code):
//   node bench/profile/restore-cpu.mjs [sessions=10000] [rounds=5]
// Writes the bench's fixture (sessions x 10 tasks) and a sealed copy of it, then for each runs
// `rounds` restores in a child process (TaskManager on a FileSessionStore, as the bench's
// encryption section does) while this process reads the child's threads' CPU time from /proc
// every few ms: the main thread, the reader threads (started by each restore), and the threads
// the process has throughout (V8's platform threads: GC helpers and concurrent compilers). A
// second child, under --trace-opt, counts the functions TurboFan compiled and its compile time.
// Each reader thread is a new V8 isolate, which compiles its hot code again at every restore.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync, readdirSync } from 'node:fs'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { Keyring } from '../../dist/services/store/keyring.js'
import { TaskManager } from '../../dist/services/task-manager.js'
import { removeDir, tempDir, writeSealedCopy, writeSessions } from '../lib/fixtures.mjs'

const [mode, ...rest] = process.argv.slice(2)

if (mode === '--child') {
  // The child: `rounds` restores of `dir`, each line its wall time.
  const [dir, keys, rounds] = rest
  const keyring = keys === '-' ? null : Keyring.parse(keys)
  await new Promise((resolve) => setTimeout(resolve, 300))
  process.stdout.write('ready\n')
  for (let round = 0; round < Number(rounds); round++) {
    const store = new FileSessionStore({ dir, keyring })
    await store.init()
    const manager = new TaskManager({ store })
    const started = performance.now()
    await manager.restore()
    process.stdout.write(`restore ${performance.now() - started}\n`)
    await manager.close()
    await store.close()
  }
  process.exit(0)
}

const sessions = Number(mode ?? 10_000)
const rounds = Number(rest[0] ?? 5)
const KEYS = `bench:${randomBytes(32).toString('base64')}`
const plain = tempDir('restore-cpu-plain')
const sealed = tempDir('restore-cpu-sealed')
try {
  writeSessions(plain, sessions, 10)
  await writeSealedCopy(plain, sealed, Keyring.parse(KEYS))
  console.log(`${sessions.toLocaleString('en-US')} sessions x 10 tasks, ${rounds} restores each; CPU ms per restore (median wall ms)`)
  for (const [name, dir, keys] of [['plaintext', plain, '-'], ['sealed', sealed, KEYS]]) {
    const threads = await threadTimes(dir, keys)
    const jit = await compiles(dir, keys)
    console.log(`${name.padEnd(9)} wall ${threads.wall.toFixed(0).padStart(4)}  main ${per(threads.main)}  readers ${per(threads.readers)}  process threads ${per(threads.others)}  ` +
      `TurboFan: ${(jit.count / rounds).toFixed(0)} functions, ${(jit.ms / rounds).toFixed(0)} ms (under --trace-opt)`)
  }
} finally {
  removeDir(plain)
  removeDir(sealed)
}

function per (ms) {
  return (ms / rounds).toFixed(0).padStart(4)
}

/** The child run with its threads' CPU read from /proc: main, reader threads, the others. */
async function threadTimes (dir, keys) {
  const child = spawn(process.execPath, [new URL(import.meta.url).pathname, '--child', dir, keys, String(rounds)], { stdio: ['ignore', 'pipe', 'inherit'] })
  const walls = []
  let first = null
  const last = new Map()
  let lines = ''
  child.stdout.setEncoding('utf8').on('data', (chunk) => {
    lines += chunk
    for (let at = lines.indexOf('\n'); at !== -1; at = lines.indexOf('\n')) {
      const line = lines.slice(0, at)
      lines = lines.slice(at + 1)
      if (line === 'ready') first = new Set(sample(child.pid, last).keys())
      else if (line.startsWith('restore ')) walls.push(Number(line.slice(8)))
    }
  })
  const closed = new Promise((resolve) => child.once('close', resolve))
  let done = false
  closed.then(() => { done = true })
  while (!done) {
    sample(child.pid, last)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  const atReady = first ?? new Set()
  let main = 0
  let readers = 0
  let others = 0
  for (const [tid, { cpu, base }] of last) {
    const used = cpu - (atReady.has(tid) ? base : 0)
    if (tid === String(child.pid)) main += used
    else if (atReady.has(tid)) others += used
    else readers += used
  }
  walls.sort((a, b) => a - b)
  return { wall: walls[Math.floor(walls.length / 2)] ?? 0, main, readers, others }
}

/** Every thread's CPU ms now; `base` is its CPU at the first sight after `ready` (for threads there before). */
function sample (pid, last) {
  let tids = []
  try {
    tids = readdirSync(`/proc/${pid}/task`)
  } catch {
    return last
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const cpu = (Number(fields[11]) + Number(fields[12])) * 10
      const known = last.get(tid)
      last.set(tid, { cpu, base: known?.base ?? cpu })
    } catch {
      // Gone between the listing and the read.
    }
  }
  return last
}

/** Functions TurboFan compiled over the child's restores, and the time its compile phase took. */
async function compiles (dir, keys) {
  const child = spawn(process.execPath, ['--trace-opt', new URL(import.meta.url).pathname, '--child', dir, keys, String(rounds)], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (chunk) => { out += chunk })
  await new Promise((resolve) => child.once('close', resolve))
  // Only what ran after `ready`: the restores, not the loading of the modules.
  const after = out.slice(out.indexOf('ready\n'))
  let count = 0
  let ms = 0
  for (const match of after.matchAll(/completed compiling .*\(target TURBOFAN\) - took [\d.]+, ([\d.]+), [\d.]+ ms/g)) {
    count++
    ms += Number(match[1])
  }
  return { count, ms }
}
