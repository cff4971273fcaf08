import type { Task } from '../../../schemas/session.js'

/** What every agent kind shares: the call it receives and the answer it gives. */

export interface ExecutionContext {
  session_id: string
  /** 1 for the first call on this task, counting calls before a restart too. */
  attempt: number
  /** Aborted on timeout, cancel, or shutdown after the grace period. */
  signal: AbortSignal
}

export interface ExecutionResult {
  result: string
  /** 0..1, when the agent can tell. */
  confidence?: number | null
  /** The agent already cut its output (a command's stdout cap). */
  truncated?: boolean
}

/** An agent: runs one task. A thrown error fails the call; an AgentError marked transient is retried. */
export type Executor = (task: Readonly<Task>, context: ExecutionContext) => Promise<ExecutionResult>
