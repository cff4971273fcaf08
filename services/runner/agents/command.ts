import { spawn } from 'node:child_process'
import { basename } from 'node:path'
import type { Readable, Writable } from 'node:stream'
import { AgentError } from '../../errors.js'
import { GrowableBytes } from '../../growable-bytes.js'
import { orLate } from '../../deadline.js'
import type { ExecutionResult, Executor } from './types.js'
import { truncateUtf8 } from '../../session/session.js'
import { WRAPPER_NAME, type CallCgroups } from './cgroup.js'
import type { CommandAgentSpec } from './spec.js'

/** How much of stderr's end goes into the task's error. */
const STDERR_TAIL_BYTES = 1000
/** stdout is read into this much at first, grown as it comes (up to the cap): small, as it is held for the whole call. */
const FIRST_STDOUT_BYTES = 1024
/** Why a spawn may fail for now and work on a later attempt. */
const TRANSIENT_START_ERRORS = new Set(['EAGAIN', 'ENOMEM', 'EMFILE', 'ENFILE'])
/** sysexits' EX_TEMPFAIL: the one exit code that asks to be retried. */
const EX_TEMPFAIL = 75
/**
 * The server's own secrets, which the agent's program must never see: its keys, and the
 * database's (node-postgres reads the libpq variables too: a password kept out of DATABASE_URL is in PGPASSWORD).
 */
const WITHHELD_ENV = ['TASK_API_KEYS', 'TASK_ENCRYPTION_KEYS', 'DATABASE_URL', 'PGPASSWORD', 'PGPASSFILE', 'PGSSLKEY', 'PGSSLPASSWORD']

/** What every command agent shares: the server's settings for them. */
export interface CommandRuntime {
  /** TASK_COMMAND_DRAIN_MS: after the program exits, how long its output may take to end. */
  drainMs: number
  /** Per-call cgroups when the host allows them (TASK_COMMAND_CGROUP); null: the process group only. */
  cgroups: CallCgroups | null
  /** The calls running now, killed if the process exits before they end. */
  running?: RunningCalls
}

/**
 * The kills (synchronous) of the command calls running now, run when the process exits before
 * they end (a second signal during shutdown, a shutdown past its time), so that no program
 * outlives the server. The process's exit listener is there only while a call runs.
 */
export class RunningCalls {
  private readonly kills = new Set<() => void>()
  private readonly onExit = (): void => { for (const kill of this.kills) kill() }
  /** Calls not yet ended, cleanup included: one abandoned at shutdown still removes its cgroup. */
  private readonly calls = new Set<Promise<unknown>>()

  add (kill: () => void): void {
    if (this.kills.size === 0) process.on('exit', this.onExit)
    this.kills.add(kill)
  }

  delete (kill: () => void): void {
    if (this.kills.delete(kill) && this.kills.size === 0) process.off('exit', this.onExit)
  }

  track (call: Promise<unknown>): void {
    this.calls.add(call)
    const done = (): void => { this.calls.delete(call) }
    call.then(done, done)
  }

  /**
   * Resolves once every call has ended, its cleanup done, or after `ms`: at shutdown, a call
   * the manager abandoned (past the grace period) is killed already and only removes its cgroup.
   */
  async ended (ms: number): Promise<void> {
    if (this.calls.size === 0) return
    await orLate(Promise.allSettled([...this.calls]), ms, undefined)
  }
}

/** How long a shutdown waits for abandoned calls' cleanup: their cgroup emptying (2 s at most) and its removal. */
export const CALL_CLEANUP_WAIT_MS = 3000

export const DEFAULT_COMMAND_RUNTIME: CommandRuntime = { drainMs: 200, cgroups: null }

type Ending =
  | { kind: 'exit', code: number | null, signal: NodeJS.Signals | null }
  | { kind: 'aborted' }
  | { kind: 'error', err: NodeJS.ErrnoException }

/** What the program wrote: stdout up to the cap (and how much there was), the end of stderr. */
interface Output {
  stdout: GrowableBytes
  stdoutBytes: number
  stderrTail: Buffer
}

interface ProcessCall {
  running: RunningCalls | undefined
  argv: string[]
  cwd: string | undefined
  env: NodeJS.ProcessEnv
  input: string
  signal: AbortSignal
  drainMs: number
  maxOutputBytes: number
  /** Kills what the program left in its cgroup, if it has one. */
  killCgroup: () => void
}

/**
 * Runs a program per task, without a shell: the instruction on stdin, the result on stdout.
 * The call ends when the program exits (plus the drain for its output); then everything it
 * left is killed: its process group, and its cgroup when there is one (setsid cannot leave that).
 */
export function commandAgent (spec: CommandAgentSpec, baseEnv: NodeJS.ProcessEnv, runtime: CommandRuntime = DEFAULT_COMMAND_RUNTIME): Executor {
  const who = `command ${basename(spec.argv[0] as string)}`
  const drainMs = spec.drain_ms ?? runtime.drainMs
  const inherited = { ...baseEnv }
  for (const name of WITHHELD_ENV) delete inherited[name]
  const call: Executor = async (task, context) => {
    context.signal.throwIfAborted()
    const { cgroups } = runtime
    const cgroup = cgroups === null
      ? null
      : await cgroups.create().catch((err: NodeJS.ErrnoException) => {
        throw new AgentError(`${who} could not make its cgroup: ${err.code ?? err.message}`, { cause: err, transient: true })
      })
    const output: Output = { stdout: new GrowableBytes(Math.min(spec.max_output_bytes + 3, FIRST_STDOUT_BYTES), spec.max_output_bytes + 3), stdoutBytes: 0, stderrTail: Buffer.alloc(0) }
    let ending: Ending
    try {
      ending = context.signal.aborted
        ? { kind: 'aborted' }
        : await runProcess({
          argv: cgroups === null || cgroup === null ? spec.argv : cgroups.wrap(cgroup, spec.argv),
          cwd: spec.cwd,
          env: { ...inherited, ...spec.env, TASK_ID: task.id, TASK_TYPE: task.task_type, SESSION_ID: context.session_id, TASK_ATTEMPT: String(context.attempt), TASK_RETRIES: String(task.retries ?? 0) },
          input: task.instruction,
          signal: context.signal,
          drainMs,
          maxOutputBytes: spec.max_output_bytes,
          killCgroup: () => { if (cgroup !== null) cgroups?.kill(cgroup) },
          running: runtime.running
        }, output)
    } finally {
      if (cgroup !== null) await cgroups?.destroy(cgroup)
    }
    if (ending.kind === 'aborted') throw context.signal.reason
    return answer(ending, output, { who, maxOutputBytes: spec.max_output_bytes, wrapped: cgroup !== null })
  }
  return (task, context) => {
    const running = call(task, context)
    runtime.running?.track(running)
    return running
  }
}

/** Spawns the program and resolves with how its call ended; `output` fills as it writes. */
function runProcess (call: ProcessCall, output: Output): Promise<Ending> {
  return new Promise<Ending>((resolve) => {
    let child: ReturnType<typeof spawn>
    try {
      child = spawn(call.argv[0] as string, call.argv.slice(1), { cwd: call.cwd, env: call.env, stdio: ['pipe', 'pipe', 'pipe'], detached: true })
    } catch (err) {
      // Refused before any process: arguments and environment too large for the kernel (E2BIG).
      resolve({ kind: 'error', err: err as NodeJS.ErrnoException })
      return
    }
    // First: a spawn out of file descriptors (EMFILE, ENFILE) emits 'error' on the next tick and
    // has no pipes; unheard, that error would be an uncaught exception.
    child.on('error', (err: NodeJS.ErrnoException) => end({ kind: 'error', err }))
    const { stdin, stdout, stderr } = child as { stdin?: Writable | null, stdout?: Readable | null, stderr?: Readable | null }
    let ended = false
    let drain: NodeJS.Timeout | undefined
    const kill = (): void => {
      // The group outlives its leader while anything it started still runs, so kill it even after exit.
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL')
        } catch {}
      }
      call.killCgroup()
    }
    call.running?.add(kill)
    const end = (how: Ending): void => {
      if (ended) return
      ended = true
      clearTimeout(drain)
      call.signal.removeEventListener('abort', onAbort)
      call.running?.delete(kill)
      kill()
      // Our ends of the pipes close too: a leftover that holds them must not hold the call.
      stdin?.destroy()
      stdout?.destroy()
      stderr?.destroy()
      resolve(how)
    }
    const onAbort = (): void => end({ kind: 'aborted' })
    call.signal.addEventListener('abort', onAbort, { once: true })
    // No pipes: the spawn failed, and its 'error' ends the call.
    if (stdin == null || stdout == null || stderr == null) return
    stdout.on('data', (chunk: Buffer) => {
      // Keep reading past the cap (a blocked pipe would stall the program), but keep nothing more.
      const room = call.maxOutputBytes + 3 - output.stdoutBytes
      if (room > 0) output.stdout.append(room >= chunk.length ? chunk : chunk.subarray(0, room))
      output.stdoutBytes += chunk.length
    })
    stderr.on('data', (chunk: Buffer) => {
      output.stderrTail = Buffer.concat([output.stderrTail, chunk])
      if (output.stderrTail.length > STDERR_TAIL_BYTES * 2) output.stderrTail = stderrTail(output.stderrTail)
    })
    // A program that exits without reading stdin makes the write fail with EPIPE; its exit code tells.
    stdin.on('error', () => {})
    stdin.end(call.input)
    // The program's exit ends the call: what it started may keep the pipes open forever.
    child.on('exit', (code, signal) => {
      if (ended) return
      // setImmediate: one more poll of the pipes, so output written before the exit is read even with no drain.
      drain = setTimeout(() => setImmediate(() => end({ kind: 'exit', code, signal })), call.drainMs)
    })
    child.on('close', (code, signal) => end({ kind: 'exit', code, signal }))
  })
}

/** The call's answer: stdout on exit 0, else an AgentError (retried on EX_TEMPFAIL) ending with stderr's tail. */
function answer (ending: Exclude<Ending, { kind: 'aborted' }>, output: Output, call: { who: string, maxOutputBytes: number, wrapped: boolean }): ExecutionResult {
  const { who } = call
  if (ending.kind === 'error') {
    // Out of processes, memory or file descriptors for now: worth another attempt, as a failed cgroup is.
    const transient = TRANSIENT_START_ERRORS.has(ending.err.code ?? '')
    throw new AgentError(`${who} could not start: ${ending.err.code ?? ending.err.message}`, { cause: ending.err, transient })
  }
  const { code, signal } = ending
  const tail = stderrTail(output.stderrTail).toString('utf8').trim()
  if (code === 0) {
    const text = output.stdout.view().toString('utf8')
    // Cut only output past the cap: bytes that are not UTF-8 decode to a 3-byte U+FFFD each, so
    // the decoded text of output within the cap may be longer than the cap and is still whole.
    if (output.stdoutBytes <= call.maxOutputBytes) return { result: text, confidence: null }
    return { result: truncateUtf8(text, call.maxOutputBytes).text, confidence: null, truncated: true }
  }
  // The cgroup wrapper's exec failed: the program could not start (126 not executable, 127 not found).
  if (call.wrapped && (code === 126 || code === 127) && tail.startsWith(`${WRAPPER_NAME}:`)) {
    throw new AgentError(`${who} could not start: ${code === 127 ? 'ENOENT' : 'EACCES'} (${tail})`)
  }
  const how = code === null ? `was killed by ${signal ?? 'a signal'}` : `exited with code ${code}`
  throw new AgentError(`${who} ${how}${tail === '' ? '' : `: ${tail}`}`, { transient: code === EX_TEMPFAIL })
}

/** stderr's last STDERR_TAIL_BYTES, starting on a character: a cut inside one would show U+FFFD. */
function stderrTail (bytes: Buffer): Buffer {
  if (bytes.length <= STDERR_TAIL_BYTES) return bytes
  let start = bytes.length - STDERR_TAIL_BYTES
  // UTF-8 continuation bytes are 10xxxxxx; a character has at most three of them.
  for (let skipped = 0; skipped < 3 && ((bytes[start] as number) & 0xc0) === 0x80; skipped++) start++
  return bytes.subarray(start)
}
