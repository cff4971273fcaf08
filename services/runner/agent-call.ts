import { AgentError } from '../errors.js'
import { checkExecutionResult, type Agent, type ExecutionResult } from './executors.js'
import type { Task } from '../session/session.js'
import { anySignal } from './signals.js'

export type CallOutcome = 'ok' | 'error' | 'timeout' | 'aborted' | 'cancelled'

export interface AgentCall {
  agent: Agent
  task: Readonly<Task>
  sessionId: string
  /** Aborted by cancel or shutdown; the call adds its own timeout. */
  signal: AbortSignal
  /** Tells a shutdown abort from a cancel. */
  shutdownSignal: AbortSignal
}

/**
 * One call to an agent, bounded by its timeout_ms. Resolves with a checked result or rejects
 * with why: a timeout rejects with a transient AgentError; cancel and shutdown with their reasons.
 * An agent that ignores its signal is abandoned, not awaited.
 */
export async function callAgent (call: AgentCall, report: (outcome: CallOutcome, ms: number) => void): Promise<ExecutionResult> {
  const { agent, task } = call
  // Cancelled (or shut down) before the call began: no call is made, and none is reported.
  call.signal.throwIfAborted()
  const timeout = new AbortController()
  const timer = setTimeout(() => {
    // Named by its routing key: two agents of one kind (Coding's webhook, default's) are told apart.
    timeout.abort(new AgentError(`${agent.kind} agent '${agent.key}' timed out after ${agent.policy.timeout_ms} ms`, { transient: true }))
  }, agent.policy.timeout_ms)
  const { signal, release } = anySignal([call.signal, timeout.signal])
  const started = performance.now()
  let outcome: CallOutcome = 'ok'
  try {
    // Executors are user code: a synchronous throw fails the call like a rejection does.
    const running = Promise.resolve().then(() => agent.run(task, { session_id: call.sessionId, attempt: task.attempts, signal }))
    return checkExecutionResult(await abortable(running, signal))
  } catch (err) {
    if (call.shutdownSignal.aborted) outcome = 'aborted'
    else if (call.signal.aborted) outcome = 'cancelled'
    else if (timeout.signal.aborted) outcome = 'timeout'
    else outcome = 'error'
    throw outcome === 'timeout' ? timeout.signal.reason : err
  } finally {
    clearTimeout(timer)
    release()
    report(outcome, performance.now() - started)
  }
}

/**
 * Settles with the promise, or rejects as soon as the signal aborts. Either way the promise
 * stays observed: a loser that rejects later must not become an unhandled rejection.
 */
export function abortable<T> (promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason)
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

/**
 * When the failure is worth another call (a transient AgentError), what it asks of the wait;
 * else null. Never throws, whatever was thrown: every read of it is made here (`instanceof`
 * throws on a revoked Proxy, and an executor may make any property a getter that throws).
 */
export function transientFailure (err: unknown): { retryAfterMs: number | null } | null {
  try {
    if (!(err instanceof AgentError) || err.transient !== true) return null
  } catch {
    return null
  }
  return { retryAfterMs: waitAsked(err) }
}

/** The wait a transient failure asks for (Retry-After), or null: none, or none that reads as one. */
function waitAsked (err: AgentError): number | null {
  try {
    const after: unknown = err.retryAfterMs
    return typeof after === 'number' && Number.isFinite(after) && after >= 0 ? after : null
  } catch {
    return null
  }
}

/** What an agent call that failed says, as text. */
const NO_TEXT = 'the agent failed with a value that has no text'

/**
 * A failure as text, whatever was thrown: an executor can throw anything (a null-prototype
 * object, an Error whose message is a number or a getter that throws), and the task must still
 * be failed with something to say.
 */
export function errorMessage (err: unknown): string {
  try {
    if (err instanceof Error) {
      const message = readMessage(err)
      return message !== '' ? message : typeof err.name === 'string' && err.name !== '' ? err.name : 'Error'
    }
    return String(err)
  } catch {
    return NO_TEXT
  }
}

function readMessage (err: Error): string {
  try {
    const message: unknown = err.message
    return message === undefined || message === null ? '' : String(message)
  } catch {
    return ''
  }
}
