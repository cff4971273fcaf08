import { AgentError, InvalidAgentConfigError } from '../../errors.js'
import type { Executor } from './types.js'
import { headersFromEnv, postJson } from './http.js'
import type { WebhookAgentSpec } from './spec.js'

/**
 * POSTs each task to a team's own agent service. The Idempotency-Key lets the receiver tell a
 * retry (or a run resumed after a crash) from a new task. Task ids alone repeat (`task_<n>_<unix
 * seconds>`: a session deleted and made again within the second has the same ones), so the key
 * also carries the task's creation time in ms: the same on every call of one task, new for a new one.
 * A failed task put back by POST /retry is asked for a new run, not the answer the receiver may
 * have kept: the key then ends with the count of those retries.
 */
export function webhookAgent (key: string, spec: WebhookAgentSpec, env: NodeJS.ProcessEnv): Executor {
  let headers: Record<string, string>
  try {
    headers = headersFromEnv(spec.headers_env, env)
  } catch (err) {
    throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.headers_env: ${(err as Error).message}`)
  }
  const who = `webhook ${new URL(spec.url).host}`
  return async (task, context) => {
    const answer = await postJson(who, spec.url, {
      session_id: context.session_id,
      task: { id: task.id, instruction: task.instruction, task_type: task.task_type, attempt: context.attempt }
    }, {
      headers: { ...headers, 'idempotency-key': `${context.session_id}:${task.id}:${Date.parse(task.created_at)}${task.retries === undefined ? '' : `:${task.retries}`}` },
      signal: context.signal,
      maxBytes: spec.max_response_bytes
    })
    const body = answer.body as { result?: unknown, confidence?: unknown } | null
    if (typeof body !== 'object' || body === null || typeof body.result !== 'string') {
      throw new AgentError(`${who} answered ${answer.status} without a string "result"${answer.excerpt()}`)
    }
    const confidence = body.confidence
    if (confidence !== undefined && confidence !== null &&
      (typeof confidence !== 'number' || !(confidence >= 0 && confidence <= 1))) {
      throw new AgentError(`${who} answered ${answer.status} with a "confidence" outside 0..1${answer.excerpt()}`)
    }
    return { result: body.result, confidence: confidence ?? null }
  }
}
