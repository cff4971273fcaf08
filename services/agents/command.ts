import { spawn } from 'node:child_process'
import { basename } from 'node:path'
import { AgentError } from '../errors.js'
import type { Executor } from '../executors.js'
import { truncateUtf8 } from '../session.js'
import type { CommandAgentSpec } from './spec.js'

/** How much of stderr's end goes into the task's error. */
const STDERR_TAIL_BYTES = 1000
/** sysexits' EX_TEMPFAIL: the one exit code that asks to be retried. */
const EX_TEMPFAIL = 75
/** Settings the agent's program must never see. */
const WITHHELD_ENV = ['TASK_API_KEYS']

/**
 * Runs a program per task, without a shell: the instruction on stdin, the result on stdout.
 * It runs in its own process group, so a timeout, cancel or shutdown kills everything it started.
 */
export function commandAgent (spec: CommandAgentSpec, baseEnv: NodeJS.ProcessEnv): Executor {
  const [program, ...args] = spec.argv as [string, ...string[]]
  const who = `command ${basename(program)}`
  const inherited = { ...baseEnv }
  for (const name of WITHHELD_ENV) delete inherited[name]
  return (task, context) => new Promise((resolve, reject) => {
    if (context.signal.aborted) {
      reject(context.signal.reason)
      return
    }
    const child = spawn(program, args, {
      cwd: spec.cwd,
      env: { ...inherited, ...spec.env, TASK_ID: task.id, TASK_TYPE: task.task_type, SESSION_ID: context.session_id, TASK_ATTEMPT: String(context.attempt) },
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true
    })
    const stdout: Buffer[] = []
    let stdoutBytes = 0
    let truncated = false
    let stderrTail = Buffer.alloc(0)
    let settled = false
    const killGroup = (): void => {
      // The group outlives its leader while anything it started still runs, so kill it even after exit.
      if (child.pid === undefined) return
      try {
        process.kill(-child.pid, 'SIGKILL')
      } catch {}
    }
    const finish = (fn: () => void): void => {
      if (settled) return
      settled = true
      context.signal.removeEventListener('abort', onAbort)
      fn()
    }
    const onAbort = (): void => {
      killGroup()
      finish(() => reject(context.signal.reason))
    }
    context.signal.addEventListener('abort', onAbort, { once: true })

    child.stdout.on('data', (chunk: Buffer) => {
      // Keep reading past the cap (a blocked pipe would stall the program), but keep nothing more.
      const room = spec.max_output_bytes + 3 - stdoutBytes
      if (room > 0) stdout.push(room >= chunk.length ? chunk : chunk.subarray(0, room))
      stdoutBytes += chunk.length
      if (stdoutBytes > spec.max_output_bytes) truncated = true
    })
    child.stderr.on('data', (chunk: Buffer) => {
      stderrTail = Buffer.concat([stderrTail, chunk])
      if (stderrTail.length > STDERR_TAIL_BYTES * 2) stderrTail = stderrTail.subarray(-STDERR_TAIL_BYTES)
    })
    // A program that exits without reading stdin makes the write fail with EPIPE; its exit code tells.
    child.stdin.on('error', () => {})
    child.stdin.end(task.instruction)

    child.on('error', (err: NodeJS.ErrnoException) => {
      finish(() => reject(new AgentError(`${who} could not start: ${err.code ?? err.message}`, { cause: err })))
    })
    child.on('close', (code, signal) => {
      finish(() => {
        if (code === 0) {
          const cut = truncateUtf8(Buffer.concat(stdout).toString('utf8'), spec.max_output_bytes)
          resolve({ result: cut.text, confidence: null, ...((truncated || cut.truncated) && { truncated: true }) })
          return
        }
        const tail = stderrTail.subarray(-STDERR_TAIL_BYTES).toString('utf8').trim()
        const how = code === null ? `was killed by ${signal ?? 'a signal'}` : `exited with code ${code}`
        reject(new AgentError(`${who} ${how}${tail === '' ? '' : `: ${tail}`}`, { transient: code === EX_TEMPFAIL }))
      })
    })
  })
}
