import { TASK_TYPES, type TaskType } from '../../schemas/session.js'
import { AgentError } from '../errors.js'
import { commandAgent, DEFAULT_COMMAND_RUNTIME, type CommandRuntime } from './agents/command.js'
import { openaiAgent } from './agents/openai.js'
import { AGENT_KEYS, DEFAULT_AGENTS, DEFAULT_POLICY, checkPolicy, type AgentKey, type AgentPolicy, type AgentSpec, type AgentsConfig } from './agents/spec.js'
import { webhookAgent } from './agents/webhook.js'

import type { ExecutionResult, Executor } from './agents/types.js'

export type { AgentPolicy, AgentsConfig }
export type { ExecutionContext, ExecutionResult, Executor } from './agents/types.js'

/** A programmatic agent with its own call policy. */
export interface ExecutorDefinition extends Partial<AgentPolicy> {
  run: Executor
}

/** Programmatic agents by task type or `default`; they take precedence over TASK_AGENTS. */
export type Executors = Partial<Record<AgentKey, Executor | ExecutorDefinition>>

/** A configured agent: what runs, how it is named in logs and metrics, and its call policy. */
export interface Agent {
  /** The routing key that chose it: a task type or `default`. */
  key: AgentKey
  kind: string
  run: Executor
  policy: AgentPolicy
}

export type AgentRoutes = { default: Agent } & Partial<Record<TaskType, Agent>>

export { DEFAULT_POLICY }

/** Demo agent: answers with the instruction itself. Real agents are configured per task type. */
export const echoExecutor: Executor = async (task) => ({ result: task.instruction, confidence: 1 })

/**
 * Builds the routing table: per key, a programmatic executor if one is given, else the
 * configured agent. Without TASK_AGENTS (`config` undefined), `default` falls back to the echo
 * demo agent; with it, a type it leaves out and no `default` fails its tasks (`unrouted`):
 * echoing instructions back as results would pass for work done.
 */
export function resolveAgents (executors: Executors = {}, config: AgentsConfig | undefined = undefined, env: NodeJS.ProcessEnv = process.env, command: CommandRuntime = DEFAULT_COMMAND_RUNTIME): AgentRoutes {
  const routes: Partial<Record<AgentKey, Agent>> = {}
  for (const key of AGENT_KEYS) {
    const given = executors[key]
    const spec = (config ?? DEFAULT_AGENTS)[key]
    if (given !== undefined) routes[key] = programmatic(key, given)
    else if (spec !== undefined) routes[key] = fromSpec(key, spec, env, command)
  }
  routes.default ??= config === undefined ? { key: 'default', kind: 'echo', run: echoExecutor, policy: DEFAULT_POLICY } : unrouted
  return routes as AgentRoutes
}

/** The task types `routes` sends nowhere (TASK_AGENTS without a `default`, nor an agent for them). */
export function unroutedTypes (routes: AgentRoutes): TaskType[] {
  return routes.default === unrouted ? TASK_TYPES.filter((type) => routes[type] === undefined) : []
}

/** The task types `routes` sends to the echo demo agent (what runs when TASK_AGENTS is unset and no executor covers them). */
export function echoedTypes (routes: AgentRoutes): TaskType[] {
  return TASK_TYPES.filter((type) => agentFor(routes, type).kind === 'echo')
}

/** What runs a task TASK_AGENTS gave no agent: it fails at once, naming the fix. */
const unrouted: Agent = {
  key: 'default',
  kind: 'none',
  run: async (task) => {
    throw new AgentError(`no agent for ${task.task_type} tasks: TASK_AGENTS has no "${task.task_type}" and no "default" entry`)
  },
  policy: DEFAULT_POLICY
}

export function agentFor (routes: AgentRoutes, type: TaskType): Agent {
  return routes[type] ?? routes.default
}

function programmatic (key: AgentKey, given: Executor | ExecutorDefinition): Agent {
  if (typeof given === 'function') return { key, kind: 'function', run: given, policy: DEFAULT_POLICY }
  const { run, ...policy } = given
  if (typeof run !== 'function') throw new TypeError(`executors.${key}.run must be a function`)
  return { key, kind: 'function', run, policy: checkPolicy(key, policy, DEFAULT_POLICY) }
}

function fromSpec (key: AgentKey, spec: AgentSpec, env: NodeJS.ProcessEnv, command: CommandRuntime): Agent {
  const policy: AgentPolicy = { timeout_ms: spec.timeout_ms, max_attempts: spec.max_attempts, backoff_ms: spec.backoff_ms, max_backoff_ms: spec.max_backoff_ms }
  switch (spec.kind) {
    case 'echo': return { key, kind: spec.kind, run: echoExecutor, policy }
    case 'webhook': return { key, kind: spec.kind, run: webhookAgent(key, spec, env), policy }
    case 'openai': return { key, kind: spec.kind, run: openaiAgent(key, spec, env), policy }
    case 'command': return { key, kind: spec.kind, run: commandAgent(spec, env, command), policy }
  }
}

/** Checks what an executor resolved with, since executors are user code. */
export function checkExecutionResult (value: unknown): ExecutionResult {
  if (typeof value !== 'object' || value === null) throw new Error('agent returned no result object')
  const { result, confidence, truncated } = value as Record<string, unknown>
  if (typeof result !== 'string') throw new Error('agent result must be a string')
  if (confidence !== undefined && confidence !== null &&
    (typeof confidence !== 'number' || !Number.isFinite(confidence) || confidence < 0 || confidence > 1)) {
    throw new Error('agent confidence must be a number from 0 to 1')
  }
  return { result, confidence: (confidence as number | null | undefined) ?? null, truncated: truncated === true }
}

/**
 * Wait before call `attempt + 1`: backoff doubling per call with equal jitter (half fixed, half
 * random), or the agent's Retry-After when it asked for longer; never above max_backoff_ms.
 */
export function retryDelay (policy: AgentPolicy, attempt: number, retryAfterMs: number | null, random = Math.random): number {
  const base = Math.min(policy.max_backoff_ms, policy.backoff_ms * 2 ** Math.min(attempt - 1, 30))
  const jittered = base / 2 + (base / 2) * random()
  return Math.min(policy.max_backoff_ms, Math.max(jittered, retryAfterMs ?? 0))
}
