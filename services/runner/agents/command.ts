import { spawn } from 'node:child_process'
import { basename } from 'node:path'
import { AgentError } from '../../errors.js'
import type { Executor } from './types.js'
import { truncateUtf8 } from '../../session/session.js'
import { WRAPPER_NAME, type CallCgroups } from './cgroup.js'
import type { CommandAgentSpec } from './spec.js'

/** How much of stderr's end goes into the task's error. */
const STDERR_TAIL_BYTES = 1000
/** sysexits' EX_TEMPFAIL: the one exit code that asks to be retried. */
const EX_TEMPFAIL = 75
/** Settings the agent's program must never see. */
const WITHHELD_ENV = ['TASK_API_KEYS', 'TASK_ENCRYPTION_KEYS']

/** What every command agent shares: the server's settings for them. */
export interface CommandRuntime {
  /** TASK_COMMAND_DRAIN_MS: after the program exits, how long its output may take to end. */
  drainMs: number
  /** Per-call cgroups when the host allows them (TASK_COMMAND_CGROUP); null: the process group only. */
  cgroups: CallCgroups | null
}

export const DEFAULT_COMMAND_RUNTIME: CommandRuntime = { drainMs: 200, cgroups: null }

type Ending =
  | { kind: 'exit', code: number | null, signal: NodeJS.Signals | null }
  | { kind: 'aborted' }
  | { kind: 'error', err: NodeJS.ErrnoException }

/**
 * Runs a program per task, without a shell: the instruction on stdin, the result on stdout.
 * The call ends when the program exits (plus the drain for its output); then everything it
 * left is killed: its process group, and its cgroup when there is one (setsid cannot leave that).
 */
export function commandAgent (spec: CommandAgentSpec, baseEnv: NodeJS.ProcessEnv, runtime: CommandRuntime = DEFAULT_COMMAND_RUNTIME): Executor {
  const program = spec.argv[0] as string
  const who = `command ${basename(program)}`
  const drainMs = spec.drain_ms ?? runtime.drainMs
  const inherited = { ...baseEnv }
  for (const name of WITHHELD_ENV) delete inherited[name]
  return async (task, context) => {
    context.signal.throwIfAborted()
    const { cgroups } = runtime
    const cgroup = cgroups === null
      ? null
      : await cgroups.create().catch((err: NodeJS.ErrnoException) => {
        throw new AgentError(`${who} could not make its cgroup: ${err.code ?? err.message}`, { cause: err, transient: true })
      })
    const out = { stdout: [] as Buffer[], stdoutBytes: 0, stderrTail: Buffer.alloc(0) }
    let ending: Ending
    try {
      ending = context.signal.aborted
        ? { kind: 'aborted' }
        : await new Promise<Ending>((resolve) => {
          const argv = cgroups === null || cgroup === null ? spec.argv : cgroups.wrap(cgroup, spec.argv)
          const child = spawn(argv[0] as string, argv.slice(1), {
            cwd: spec.cwd,
            env: { ...inherited, ...spec.env, TASK_ID: task.id, TASK_TYPE: task.task_type, SESSION_ID: context.session_id, TASK_ATTEMPT: String(context.attempt) },
            stdio: ['pipe', 'pipe', 'pipe'],
            detached: true
          })
          let ended = false
          let drain: NodeJS.Timeout | undefined
          const end = (how: Ending): void => {
            if (ended) return
            ended = true
            clearTimeout(drain)
            context.signal.removeEventListener('abort', onAbort)
            // The group outlives its leader while anything it started still runs, so kill it even after exit.
            if (child.pid !== undefined) {
              try {
                process.kill(-child.pid, 'SIGKILL')
              } catch {}
            }
            if (cgroup !== null) cgroups?.kill(cgroup)
            // Our ends of the pipes close too: a leftover that holds them must not hold the call.
            child.stdin.destroy()
            child.stdout.destroy()
            child.stderr.destroy()
            resolve(how)
          }
          const onAbort = (): void => end({ kind: 'aborted' })
          context.signal.addEventListener('abort', onAbort, { once: true })

          child.stdout.on('data', (chunk: Buffer) => {
            // Keep reading past the cap (a blocked pipe would stall the program), but keep nothing more.
            const room = spec.max_output_bytes + 3 - out.stdoutBytes
            if (room > 0) out.stdout.push(room >= chunk.length ? chunk : chunk.subarray(0, room))
            out.stdoutBytes += chunk.length
          })
          child.stderr.on('data', (chunk: Buffer) => {
            out.stderrTail = Buffer.concat([out.stderrTail, chunk])
            if (out.stderrTail.length > STDERR_TAIL_BYTES * 2) out.stderrTail = out.stderrTail.subarray(-STDERR_TAIL_BYTES)
          })
          // A program that exits without reading stdin makes the write fail with EPIPE; its exit code tells.
          child.stdin.on('error', () => {})
          child.stdin.end(task.instruction)

          child.on('error', (err: NodeJS.ErrnoException) => end({ kind: 'error', err }))
          // The program's exit ends the call: what it started may keep the pipes open forever.
          child.on('exit', (code, signal) => {
            if (ended) return
            // setImmediate: one more poll of the pipes, so output written before the exit is read even with no drain.
            drain = setTimeout(() => setImmediate(() => end({ kind: 'exit', code, signal })), drainMs)
          })
          child.on('close', (code, signal) => end({ kind: 'exit', code, signal }))
        })
    } finally {
      if (cgroup !== null) await cgroups?.destroy(cgroup)
    }

    if (ending.kind === 'aborted') throw context.signal.reason
    if (ending.kind === 'error') throw new AgentError(`${who} could not start: ${ending.err.code ?? ending.err.message}`, { cause: ending.err })
    const { code, signal } = ending
    const tail = out.stderrTail.subarray(-STDERR_TAIL_BYTES).toString('utf8').trim()
    if (code === 0) {
      const cut = truncateUtf8(Buffer.concat(out.stdout).toString('utf8'), spec.max_output_bytes)
      const truncated = out.stdoutBytes > spec.max_output_bytes || cut.truncated
      return { result: cut.text, confidence: null, ...(truncated && { truncated: true }) }
    }
    // The cgroup wrapper's exec failed: the program could not start (126 not executable, 127 not found).
    if (cgroup !== null && (code === 126 || code === 127) && tail.startsWith(`${WRAPPER_NAME}:`)) {
      throw new AgentError(`${who} could not start: ${code === 127 ? 'ENOENT' : 'EACCES'} (${tail})`)
    }
    const how = code === null ? `was killed by ${signal ?? 'a signal'}` : `exited with code ${code}`
    throw new AgentError(`${who} ${how}${tail === '' ? '' : `: ${tail}`}`, { transient: code === EX_TEMPFAIL })
  }
}
