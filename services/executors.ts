import type { Task, TaskType } from '../schemas/session.js'

export interface ExecutionContext {
  session_id: string
  /** 1 for the first call on this task, counting calls before a restart too. */
  attempt: number
  /** Aborted when the service shuts down and the grace period has run out. */
  signal: AbortSignal
}

export interface ExecutionResult {
  result: string
  /** 0..1, when the agent can tell. */
  confidence?: number | null
}

/** An agent: runs one task. A thrown error fails the task with the error's message. */
export type Executor = (task: Readonly<Task>, context: ExecutionContext) => Promise<ExecutionResult>

/** Executors by task type; `default` takes every type without its own. */
export type ExecutorMap = { default: Executor } & Partial<Record<TaskType, Executor>>

/** Demo agent: answers with the instruction itself. Real agents are configured per task type. */
export const echoExecutor: Executor = async (task) => ({ result: task.instruction, confidence: 1 })

export function resolveExecutors (executors: Partial<ExecutorMap> | undefined): ExecutorMap {
  return { ...executors, default: executors?.default ?? echoExecutor }
}

export function executorFor (executors: ExecutorMap, type: TaskType): Executor {
  return executors[type] ?? executors.default
}

/** Checks what an executor resolved with, since executors are user code. */
export function checkExecutionResult (value: unknown): ExecutionResult {
  if (typeof value !== 'object' || value === null) throw new Error('agent returned no result object')
  const { result, confidence } = value as Record<string, unknown>
  if (typeof result !== 'string') throw new Error('agent result must be a string')
  if (confidence !== undefined && confidence !== null &&
    (typeof confidence !== 'number' || !Number.isFinite(confidence) || confidence < 0 || confidence > 1)) {
    throw new Error('agent confidence must be a number from 0 to 1')
  }
  return { result, confidence: (confidence as number | null | undefined) ?? null }
}
