/**
 * Crash torture: a real server process (dist/server.js) under concurrent load is killed with
 * SIGKILL at random moments, round after round, and restarted on the same folder each time
 * (taking over the single-writer lock the dead process left behind). The test keeps a model of
 * every request and its answer; after each restart the restored state is checked against it:
 *
 * - every task of a create answered 2xx is there (unless its session may have been deleted
 *   since), every task of an execute answered 2xx is Completed or Failed;
 * - a session whose delete was answered 204 is gone unless a create may have come after it;
 * - a request with no answer (cut by the kill) may or may not have taken effect, but a create
 *   is all or nothing, and nothing appears that no request could have made;
 * - every file parses and matches the session file format, nothing went to corrupt/, no temp
 *   file remains, no task id or session is duplicated, memory equals disk, and /stats agrees
 *   with /list?session_id=all and with the folder;
 * - nothing moves backwards between two restarts (a finished task stays finished, a task or
 *   session only disappears when a delete may have removed it).
 *
 * Bounded by a time budget: TORTURE_SECONDS (default 40) of kill rounds, then a last restart.
 * TORTURE_SEED seeds the random choices (printed in the summary); the interleaving still depends on timing.
 */
import { randomBytes } from 'node:crypto'
import { readFile, readdir, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { isDeepStrictEqual } from 'node:util'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import t from 'tap'
import { SessionFile } from '../schemas/session.js'
import { Keyring } from '../services/store/keyring.js'
import { baseEnv, caller, describe, freePort, logLines, scratch, within, type Reply, type ServerProcess, type TaskView } from './server-process.js'

const API = '/api/v1/tasks'
const BUDGET_MS = Math.max(1, Number(process.env.TORTURE_SECONDS ?? 40)) * 1000
const SEED = Number(process.env.TORTURE_SEED ?? Math.floor(Math.random() * 2 ** 31))
const MIN_ROUNDS = 4
const WORKERS = 8
/** Shared by every worker: creates, executes and deletes of one session race each other. */
const SESSIONS = Array.from({ length: 12 }, (_, i) => `torture-${i}`)
const REQUEST_TIMEOUT_MS = 30_000
const LOCK_FILE = '.taskvault.lock'
/** The folder's marker (services/storage-folder.ts). */
const MARKER_FILE = '.taskvault'
const TAKEOVER_MSG = 'Took over the storage lock of a server that is gone'
const TEMP_FILE = /^\..*\.tmp$/u
const checkFile = TypeCompiler.Compile(SessionFile)

// ---------------------------------------------------------------------------------------
// Randomness (seeded, so a failing sequence of choices can be replayed)
// ---------------------------------------------------------------------------------------

function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}
const random = mulberry32(SEED)
const randInt = (min: number, max: number): number => min + Math.floor(random() * (max - min + 1))
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T

// ---------------------------------------------------------------------------------------
// Server processes (./server-process.ts)
// ---------------------------------------------------------------------------------------

/** warn: the per-request log lines stay out of the hot loop; the lock takeover is a warning. */
const SERVER_ENV = { LOG_LEVEL: 'warn', TASK_ARCHIVE_DAYS: '0' }
const ENCRYPTION_KEYS = `torture:${randomBytes(32).toString('base64')}`
/** Requests under load may take longer than the default timeout. */
const call = caller(REQUEST_TIMEOUT_MS)

// ---------------------------------------------------------------------------------------
// The model: every request, when it was sent and when (if ever) it was answered
// ---------------------------------------------------------------------------------------

type Kind = 'create' | 'execute' | 'execute-all' | 'delete'

interface ExecutedView {
  task_id: string
  instruction: string
  status: string
}

interface Op {
  kind: Kind
  session: string
  round: number
  /** Logical time the request was sent; every later event has a larger tick. */
  start: number
  /** Logical time the answer was read, or the failure seen (after the kill). */
  end: number
  /** 0: no answer (the kill cut it). */
  status: number
  /** create: the instructions sent (unique in the whole run). */
  instructions: string[]
  /** create answered 200: the ids, in the order of `instructions`. */
  ids: string[]
  /** execute / execute-all answered 200. */
  executed: ExecutedView[]
}

let tick = 0
const ops: Op[] = []
/** Every instruction ever sent → the create that carried it. */
const origin = new Map<string, Op>()

const acked = (op: Op): boolean => op.status >= 200 && op.status < 300
/** A request that may have changed state: answered 2xx, or never answered. */
const mayHaveApplied = (op: Op): boolean => op.status === 0 || acked(op)

/** Deletes of `session` that may have taken effect after `op` began. */
function mayBeDeletedAfter (op: Op): boolean {
  return ops.some((d) => d.kind === 'delete' && d.session === op.session && mayHaveApplied(d) && d.end > op.start)
}

/** An acknowledged delete of `session` that certainly came after `op` finished. */
function deletedAfter (op: Op): Op | undefined {
  return ops.find((d) => d.kind === 'delete' && d.session === op.session && acked(d) && d.start > op.end)
}

/** An acknowledged delete after which no create of the session can have taken effect. */
function finalDelete (session: string): Op | undefined {
  const creates = ops.filter((c) => c.kind === 'create' && c.session === session && mayHaveApplied(c))
  return ops.find((d) => d.kind === 'delete' && d.session === session && acked(d) && creates.every((c) => c.end < d.start))
}

interface Snapshot {
  tick: number
  sessions: Map<string, TaskView[]>
}

interface RoundState {
  round: number
  killed: boolean
  acks: number
  target: number
  reached: () => void
  unexpected: string[]
}

/** Sends a modelled request; records the op with its ticks and answer. null when unanswered. */
async function tracked (server: ServerProcess, state: RoundState, op: Op, method: 'POST' | 'DELETE', path: string, body?: unknown): Promise<Reply | null> {
  op.start = ++tick
  ops.push(op)
  try {
    const reply = await call(server, method, path, body)
    op.end = ++tick
    op.status = reply.status
    if (acked(op) && ++state.acks >= state.target) state.reached()
    return reply
  } catch (err) {
    op.end = ++tick
    if (!state.killed) {
      const cause = (err as { cause?: Error }).cause
      state.unexpected.push(`round ${state.round} ${op.kind} ${op.session}: no answer while the server ran: ${(err as Error).message} ${cause?.message ?? ''}`)
    }
    return null
  }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

t.test('crash torture: SIGKILL at random moments under concurrent load loses nothing acknowledged', async (t) => {
  const { dir, spawnRaw: spawnWith, start: startWith } = await scratch(t, { prefix: 'taskvault-torture-', ready: { pollMs: 20 } })
  const storage = join(dir, 'tasks')
  const env: Record<string, string> = { ...SERVER_ENV, TASK_STORAGE_DIR: storage }
  // Halfway through, encryption is turned on over the plaintext folder: from then on every save
  // seals, and restarts load plaintext and sealed files side by side.
  let keyring: Keyring | null = null
  const spawnRaw = async (): Promise<ServerProcess> => spawnWith(baseEnv({ ...env, PORT: String(await freePort()) }))
  const start = async (): Promise<ServerProcess> => startWith(env)

  const unexpected: string[] = []
  let previous: Snapshot | null = null
  let verifications = 0
  let tempFilesLeftByKills = 0
  let killsLeavingTempFiles = 0
  let bootKills = 0
  let takeovers = 0

  /** Reads the restarted server and its folder, and checks both against the model. */
  async function verify (server: ServerProcess, label: string): Promise<void> {
    verifications++
    const verifyTick = ++tick
    // --- The folder: only session files, the lock and the marker; every file in the format. --
    const entries = await readdir(storage, { withFileTypes: true })
    const temps = entries.filter((e) => TEMP_FILE.test(e.name)).map((e) => e.name)
    t.same(temps, [], `${label}: no temp file (.*.tmp) remains`)
    const strays = entries.filter((e) => !(e.isFile() && (e.name.endsWith('.json') || e.name === MARKER_FILE)) && !(e.isSymbolicLink() && e.name === LOCK_FILE) && !TEMP_FILE.test(e.name)).map((e) => e.name)
    t.same(strays, [], `${label}: no corrupt/ folder or other stray entry in the storage folder`)
    const fileProblems: string[] = []
    const onDisk = new Map<string, TaskView[]>()
    let diskBytes = 0
    for (const entry of entries.filter((e) => e.isFile() && e.name.endsWith('.json'))) {
      const raw = await readFile(join(storage, entry.name))
      diskBytes += raw.length
      let parsed: any
      try {
        parsed = JSON.parse(raw.toString('utf8'))
        // Sealed once encryption is on: opened with the test's key (a box that does not verify throws).
        if (typeof parsed === 'object' && parsed !== null && 'sealed' in parsed) {
          if (keyring === null) throw new Error('sealed before encryption was turned on')
          parsed = { session_id: parsed.session_id, created_at: parsed.created_at, updated_at: parsed.updated_at, ...JSON.parse(keyring.open(entry.name, parsed).toString('utf8')) }
        }
      } catch (err) {
        fileProblems.push(`${entry.name}: not JSON, or a sealed box that does not open (${(err as Error).message})`)
        continue
      }
      if (!checkFile.Check(parsed)) {
        const first = checkFile.Errors(parsed).First()
        fileProblems.push(`${entry.name}: not the session file format at ${first?.path ?? '?'}: ${first?.message ?? ''}`)
        continue
      }
      const file = parsed as SessionFile
      if (entry.name !== `${file.session_id}.json` || file.session.session_id !== file.session_id) fileProblems.push(`${entry.name}: holds session ${file.session_id}`)
      const tasks = file.session.tasks as TaskView[]
      const firstOpen = tasks.findIndex((task) => task.status === 'Pending' || task.status === 'InProgress')
      if (file.session.current_index !== (firstOpen === -1 ? tasks.length : firstOpen)) fileProblems.push(`${entry.name}: current_index ${file.session.current_index} is not the first task to run`)
      onDisk.set(file.session_id, tasks)
    }
    t.same(fileProblems, [], `${label}: every session file parses and matches the format`)

    // --- The server: list, each session, stats; memory equals disk. -------------------------
    const all = await call(server, 'GET', `${API}/list?session_id=all&limit=1000`)
    t.equal(all.status, 200, `${label}: list all answers 200`)
    const summaries = (all.body?.sessions ?? []) as Array<Record<string, any>>
    const listedIds = summaries.map((s) => s.session_id as string)
    t.equal(all.body?.total, summaries.length, `${label}: list total equals the sessions listed`)
    t.same(listedIds.filter((id, i) => listedIds.indexOf(id) !== i), [], `${label}: no session is listed twice`)
    t.same([...listedIds].sort(), [...onDisk.keys()].sort(), `${label}: the sessions listed are exactly the session files`)
    t.same(listedIds.filter((id) => !SESSIONS.includes(id)), [], `${label}: no session the load never named`)

    const sessions = new Map<string, TaskView[]>()
    const memoryProblems: string[] = []
    const sums = { total_sessions: 0, active_sessions: 0, completed_sessions: 0, total_tasks: 0, completed_tasks: 0, failed_tasks: 0, pending_tasks: 0, in_progress_tasks: 0 }
    for (const summary of summaries) {
      const id = summary.session_id as string
      const res = await call(server, 'GET', `${API}/list?session_id=${id}`)
      if (res.status !== 200) {
        memoryProblems.push(`${id}: list answered ${res.status}`)
        continue
      }
      const tasks = res.body.tasks as TaskView[]
      sessions.set(id, tasks)
      if (!isDeepStrictEqual(tasks, onDisk.get(id))) memoryProblems.push(`${id}: the tasks served differ from the file`)
      const count = (status: string): number => tasks.filter((task) => task.status === status).length
      const progress = { total: tasks.length, completed: count('Completed'), failed: count('Failed'), pending: count('Pending'), in_progress: count('InProgress') }
      for (const [key, value] of Object.entries(progress)) {
        if (summary[key] !== value) memoryProblems.push(`${id}: list all says ${key}=${String(summary[key])}, the session holds ${value}`)
      }
      sums.total_sessions++
      if (summary.all_done === true) sums.completed_sessions++
      else sums.active_sessions++
      sums.total_tasks += progress.total
      sums.completed_tasks += progress.completed
      sums.failed_tasks += progress.failed
      sums.pending_tasks += progress.pending
      sums.in_progress_tasks += progress.in_progress
    }
    t.same(memoryProblems, [], `${label}: every session served equals its file and its list-all summary`)

    const stats = await call(server, 'GET', `${API}/stats`)
    t.equal(stats.status, 200, `${label}: stats answers 200`)
    const { storage: storageStats, archived_sessions: archivedSessions, encryption: _encryption, ...counts } = stats.body as Record<string, any>
    t.same(counts, sums, `${label}: /stats counts equal what /list?session_id=all reports`)
    t.equal(archivedSessions, 0, `${label}: nothing archived (archiving is off)`)
    t.equal(storageStats?.failed_loads, 0, `${label}: no session file failed to load`)
    t.equal(storageStats?.files, onDisk.size, `${label}: stats files equals the session files`)
    t.equal(storageStats?.bytes, diskBytes, `${label}: stats bytes equals the size of the session files`)
    t.equal(sums.in_progress_tasks, 0, `${label}: no task is InProgress after a restart`)

    // --- Integrity of every task served. --------------------------------------------------
    const integrity: string[] = []
    for (const [id, tasks] of sessions) {
      const ids = tasks.map((task) => task.id)
      if (new Set(ids).size !== ids.length) integrity.push(`${id}: duplicate task ids ${ids.join(',')}`)
      const instructions = tasks.map((task) => task.instruction)
      if (new Set(instructions).size !== instructions.length) integrity.push(`${id}: a task was stored twice`)
      for (const task of tasks) {
        const from = origin.get(task.instruction)
        if (from === undefined || from.session !== id || !mayHaveApplied(from)) {
          integrity.push(`${id}/${task.id}: '${task.instruction.slice(0, 40)}' was never created in this session by a request that may have applied`)
        }
        // The demo agent answers with the instruction itself.
        if (task.status === 'Completed' && task.result !== task.instruction) integrity.push(`${id}/${task.id}: Completed with a result that is not its instruction`)
        if ((task.status === 'Completed' || task.status === 'Failed') && (task.completed_at === null || task.attempts < 1)) integrity.push(`${id}/${task.id}: finished without completed_at or attempts`)
      }
    }
    t.same(integrity, [], `${label}: no duplicated or phantom task, finished tasks well formed`)

    // --- The model. ------------------------------------------------------------------------
    const find = (session: string, instruction: string): TaskView[] => (sessions.get(session) ?? []).filter((task) => task.instruction === instruction)
    const lost: string[] = []
    const resurrected: string[] = []
    const torn: string[] = []
    for (const op of ops) {
      if (op.kind !== 'create' || !mayHaveApplied(op)) continue
      const found = op.instructions.map((instruction) => find(op.session, instruction))
      const present = found.filter((f) => f.length > 0).length
      const deleted = deletedAfter(op)
      if (deleted !== undefined) {
        if (present > 0) resurrected.push(`${op.session}: create of round ${op.round} is back though a delete acknowledged (round ${deleted.round}) came after it`)
        continue
      }
      if (acked(op)) {
        const mayBeGone = mayBeDeletedAfter(op)
        op.instructions.forEach((instruction, i) => {
          const task = found[i]?.[0]
          if (task === undefined) {
            if (!mayBeGone) lost.push(`${op.session}/${op.ids[i] ?? '?'}: acknowledged in round ${op.round}, absent`)
          } else if (task.id !== op.ids[i]) {
            lost.push(`${op.session}: '${instruction}' has id ${task.id}, acknowledged as ${op.ids[i] ?? '?'}`)
          }
        })
        // Tasks of one create are appended together, in order.
        const tasks = sessions.get(op.session) ?? []
        const positions = found.map((f) => (f[0] === undefined ? -1 : tasks.indexOf(f[0])))
        if (present === op.instructions.length && positions.some((p, i) => i > 0 && p !== (positions[i - 1] as number) + 1)) {
          torn.push(`${op.session}: the tasks of a create (round ${op.round}) are not together and in order`)
        }
      }
      if (present !== 0 && present !== op.instructions.length) torn.push(`${op.session}: ${present} of ${op.instructions.length} tasks of a create (round ${op.round}, status ${op.status}) are present`)
    }
    const unfinished: string[] = []
    for (const op of ops) {
      if ((op.kind !== 'execute' && op.kind !== 'execute-all') || !acked(op)) continue
      for (const executed of op.executed) {
        const task = find(op.session, executed.instruction)[0]
        if (task === undefined) {
          if (!mayBeDeletedAfter(op)) unfinished.push(`${op.session}/${executed.task_id}: executed (round ${op.round}) and absent`)
        } else if (task.id !== executed.task_id || (task.status !== 'Completed' && task.status !== 'Failed')) {
          unfinished.push(`${op.session}/${executed.task_id}: executed (round ${op.round}, answered ${executed.status}) but is ${task.id} ${task.status}`)
        }
      }
    }
    const reappeared: string[] = []
    for (const session of SESSIONS) {
      const deleted = finalDelete(session)
      if (deleted !== undefined && sessions.has(session)) reappeared.push(`${session}: deleted (204, round ${deleted.round}) with no create after, yet present`)
    }
    t.same(lost, [], `${label}: every acknowledged created task is present with its id`)
    t.same(unfinished, [], `${label}: every acknowledged executed task is Completed or Failed`)
    t.same(resurrected, [], `${label}: no task of a session deleted later (204) came back`)
    t.same(reappeared, [], `${label}: no acknowledged-deleted session reappears unless re-created`)
    t.same(torn, [], `${label}: creates are all or nothing, their tasks together`)

    // --- Nothing moved backwards since the previous restart. -----------------------------
    if (previous !== null) {
      const since = previous.tick
      const deletedSince = (session: string): boolean => ops.some((d) => d.kind === 'delete' && d.session === session && mayHaveApplied(d) && d.start > since)
      const backwards: string[] = []
      for (const [session, before] of previous.sessions) {
        const now = sessions.get(session)
        if (now === undefined) {
          if (!deletedSince(session)) backwards.push(`${session}: vanished with no delete since the last restart`)
          continue
        }
        for (const old of before) {
          const task = now.find((x) => x.instruction === old.instruction)
          if (task === undefined) {
            if (!deletedSince(session)) backwards.push(`${session}/${old.id}: vanished with no delete since the last restart`)
          } else if (task.id !== old.id || task.created_at !== old.created_at || task.task_type !== old.task_type || task.attempts < old.attempts) {
            backwards.push(`${session}/${old.id}: changed identity or lost attempts`)
          } else if ((old.status === 'Completed' || old.status === 'Failed') &&
            (task.status !== old.status || task.result !== old.result || task.completed_at !== old.completed_at || task.attempts !== old.attempts)) {
            backwards.push(`${session}/${old.id}: was ${old.status}, is now ${task.status}`)
          }
        }
      }
      // A task the previous restart did not have can only come from a request sent since.
      for (const [session, now] of sessions) {
        const before = previous.sessions.get(session) ?? []
        for (const task of now) {
          const from = origin.get(task.instruction)
          if (from !== undefined && from.start < since && !before.some((x) => x.instruction === task.instruction)) {
            backwards.push(`${session}/${task.id}: a create from before the last restart showed up only now`)
          }
        }
      }
      t.same(backwards, [], `${label}: nothing moved backwards since the previous restart`)
    }
    previous = { tick: verifyTick, sessions }
  }

  /** The lock the dead server left is taken over, and the new server holds it. */
  async function checkLock (server: ServerProcess, before: { pid?: unknown } | null, label: string): Promise<void> {
    if (typeof before?.pid === 'number') {
      takeovers++
      const logged = await server.waitForLine((line) => line.includes(TAKEOVER_MSG), 5000)
      const entry = logLines(server.stdout()).find((line) => line.msg === TAKEOVER_MSG)
      t.ok(logged && (entry?.holder as { pid?: unknown } | undefined)?.pid === before.pid,
        `${label}: took over the lock of dead pid ${before.pid}`, { stdout: server.stdout().slice(-2000) })
    }
    const now = await readLock()
    t.equal(now?.pid, server.child.pid, `${label}: the lock names the new server`)
  }

  async function readLock (): Promise<{ pid?: unknown } | null> {
    try {
      // The lock is a symlink whose target names the holder.
      return JSON.parse(await readlink(join(storage, LOCK_FILE))) as { pid?: unknown }
    } catch {
      return null
    }
  }

  async function runLoad (server: ServerProcess, round: number): Promise<void> {
    let reached = (): void => {}
    const target = randInt(3, 60)
    const reachedTarget = new Promise<void>((resolve) => { reached = resolve })
    const state: RoundState = { round, killed: false, acks: 0, target, reached, unexpected }
    let serial = 0

    const worker = async (w: number): Promise<void> => {
      while (!state.killed) {
        const session = pick(SESSIONS)
        const dice = random()
        const op: Op = { kind: 'create', session, round, start: 0, end: 0, status: 0, instructions: [], ids: [], executed: [] }
        if (dice < 0.45) {
          const n = serial++
          // Unique instructions; some long (slower writes, more kills inside a save), some not ASCII.
          op.instructions = Array.from({ length: randInt(1, 3) }, (_, i) => {
            const pad = random() < 0.2 ? ' ' + 'lorem ipsum '.repeat(randInt(50, 400)).trim() : ''
            return `r${round}.w${w}.n${n}.${i} do the thing ✓${pad}`
          })
          for (const instruction of op.instructions) origin.set(instruction, op)
          const reply = await tracked(server, state, op, 'POST', `${API}/create`, { session_id: session, tasks: op.instructions.map((instruction) => ({ instruction })) })
          if (reply === null) continue
          if (reply.status === 200) {
            op.ids = reply.body.task_ids as string[]
            const echoed = (reply.body.tasks as TaskView[]).map((task) => task.instruction)
            if (JSON.stringify(echoed) !== JSON.stringify(op.instructions) || op.ids.length !== op.instructions.length) {
              unexpected.push(`round ${round} create ${session}: answer does not echo the tasks sent`)
            }
          } else if (!(reply.status === 400 && reply.body?.code === 'LIMIT_EXCEEDED')) {
            unexpected.push(`round ${round} create ${session}: ${reply.status} ${JSON.stringify(reply.body).slice(0, 300)}`)
          }
        } else if (dice < 0.80) {
          op.kind = dice < 0.68 ? 'execute' : 'execute-all'
          const reply = await tracked(server, state, op, 'POST', `${API}/${op.kind}`, { session_id: session })
          if (reply === null) continue
          if (reply.status === 200) {
            op.executed = op.kind === 'execute' ? [reply.body as ExecutedView] : reply.body.results as ExecutedView[]
            const bad = op.executed.filter((x) => x.status !== 'Completed' && x.status !== 'Failed')
            if (bad.length > 0) unexpected.push(`round ${round} ${op.kind} ${session}: answered 200 with ${bad.map((x) => x.status).join(',')}`)
          } else if (reply.status !== 404 && reply.status !== 409) {
            // 404: the session does not exist (yet, or any more); 409: busy or nothing pending.
            unexpected.push(`round ${round} ${op.kind} ${session}: ${reply.status} ${JSON.stringify(reply.body).slice(0, 300)}`)
          }
        } else if (dice < 0.88) {
          op.kind = 'delete'
          const reply = await tracked(server, state, op, 'DELETE', `${API}/sessions/${session}`)
          if (reply !== null && reply.status !== 204 && reply.status !== 404 && reply.status !== 409) {
            unexpected.push(`round ${round} delete ${session}: ${reply.status} ${JSON.stringify(reply.body).slice(0, 300)}`)
          }
        } else {
          // Reads under load: never a 5xx.
          const path = random() < 0.5 ? `${API}/progress?session_id=${session}` : `${API}/list?session_id=${random() < 0.5 ? session : 'all'}`
          try {
            const reply = await call(server, 'GET', path)
            if (reply.status !== 200 && reply.status !== 404) unexpected.push(`round ${round} GET ${path}: ${reply.status}`)
          } catch (err) {
            if (!state.killed) unexpected.push(`round ${round} GET ${path}: no answer: ${(err as Error).message}`)
          }
        }
      }
    }

    const workers = Array.from({ length: WORKERS }, (_, w) => worker(w))
    // Some work acknowledged first (an event), then a random moment with requests in flight.
    const ready = await within(Promise.race([reachedTarget.then(() => 'acked' as const), server.exited.then(() => 'exited' as const)]), 20_000)
    t.equal(ready, 'acked', `round ${round}: ${target} requests acknowledged before the kill`, { output: ready === 'acked' ? undefined : describe(server) })
    await sleep(randInt(0, 250))
    t.equal(server.exit(), null, `round ${round}: the server was still running when killed`)
    state.killed = true
    server.child.kill('SIGKILL')
    const exit = await server.exited
    t.equal(exit.signal, 'SIGKILL', `round ${round}: died of SIGKILL`)
    await Promise.all(workers)
  }

  const started = Date.now()
  let rounds = 0
  let sealedFromRound = 0
  while (rounds < MIN_ROUNDS || Date.now() - started < BUDGET_MS) {
    const round = ++rounds
    if (keyring === null && rounds > MIN_ROUNDS / 2 && Date.now() - started >= BUDGET_MS / 2) {
      env.TASK_ENCRYPTION_KEYS = ENCRYPTION_KEYS
      keyring = Keyring.parse(ENCRYPTION_KEYS)
      sealedFromRound = round
    }
    const lockBefore = await readLock()
    if (round > 2 && random() < 0.15) {
      // A kill while the server boots: taking the lock, restoring, resetting interrupted tasks.
      bootKills++
      const server = await spawnRaw()
      const early = await within(server.exited, randInt(50, 700))
      t.equal(early, null, `round ${round}: the booting server did not exit by itself`, { output: early === null ? undefined : describe(server) })
      server.child.kill('SIGKILL')
      await server.exited
      continue
    }
    const server = await start()
    const label = `round ${round}`
    await checkLock(server, lockBefore, label)
    await verify(server, `${label} (after restart)`)
    await runLoad(server, round)
    const left = (await readdir(storage)).filter((name) => TEMP_FILE.test(name)).length
    tempFilesLeftByKills += left
    if (left > 0) killsLeavingTempFiles++
  }
  const lockBefore = await readLock()
  const last = await start()
  await checkLock(last, lockBefore, 'final restart')
  await verify(last, 'final restart')

  t.same(unexpected, [], 'no request failed for another reason than the kill')
  const answered = ops.filter(acked)
  const count = (kind: Kind): number => answered.filter((op) => op.kind === kind).length
  t.ok(count('create') > 0 && count('execute') > 0 && count('execute-all') > 0 && count('delete') > 0, 'every kind of change was acknowledged at least once')
  t.ok(keyring !== null, `encryption was on from round ${sealedFromRound}`)
  t.comment(`torture: seed ${SEED}, ${rounds} rounds (sealed from round ${sealedFromRound}) (${bootKills} killed while booting), ${verifications} restarts verified, ${takeovers} lock takeovers, ` +
    `${answered.length} acknowledged ops (${count('create')} creates, ${count('execute')} executes, ${count('execute-all')} execute-alls, ${count('delete')} deletes), ` +
    `${ops.filter((op) => op.status === 0).length} cut by kills, ${tempFilesLeftByKills} temp files left by ${killsLeavingTempFiles} kills, in ${Date.now() - started} ms`)
})
