import { AgentError, InvalidAgentConfigError } from '../../errors.js'
import type { Executor } from './types.js'
import { postJson, UNSENDABLE, unsendableHeader } from './http.js'
import type { OpenAIAgentSpec } from './spec.js'

/** The seed's two agents: Coding tasks go to a coding agent, the rest to a thinking agent. */
export const CODING_SYSTEM_PROMPT =
  'You are a coding agent. Answer with the code that completes the task, preceded by at most a few lines of reasoning. No filler.'
export const THINKING_SYSTEM_PROMPT =
  'You are a careful thinking agent. Work through the task step by step, then give a clear, self-contained answer.'

interface ChatCompletion {
  choices?: Array<{
    message?: { content?: unknown }
    logprobs?: { content?: Array<{ logprob?: unknown }> | null } | null
  }>
}

/** An OpenAI-compatible chat completions endpoint: OpenAI, Ollama, vLLM, llama.cpp, LM Studio. */
export function openaiAgent (key: string, spec: OpenAIAgentSpec, env: NodeJS.ProcessEnv): Executor {
  const url = `${spec.base_url.replace(/\/+$/, '')}/chat/completions`
  const apiKey = spec.api_key_env === undefined ? undefined : env[spec.api_key_env]
  const headers: Record<string, string> = apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` }
  if (unsendableHeader(headers) !== null) {
    throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.api_key_env: environment variable ${spec.api_key_env as string} holds ${UNSENDABLE}`)
  }
  const who = `openai ${new URL(url).host}`
  return async (task, context) => {
    const systemPrompt = spec.system_prompt ?? (task.task_type === 'Coding' ? CODING_SYSTEM_PROMPT : THINKING_SYSTEM_PROMPT)
    const answer = await postJson(who, url, {
      model: spec.model,
      messages: [{ role: 'system', content: systemPrompt }, { role: 'user', content: task.instruction }],
      ...(spec.temperature !== undefined && { temperature: spec.temperature }),
      ...(spec.max_tokens !== undefined && { max_tokens: spec.max_tokens }),
      ...(spec.logprobs && { logprobs: true })
    }, { headers, signal: context.signal, maxBytes: spec.max_response_bytes })
    const choice = (answer.body as ChatCompletion | null)?.choices?.[0]
    const content = choice?.message?.content
    if (typeof content !== 'string') throw new AgentError(`${who} answered ${answer.status} without choices[0].message.content${answer.excerpt()}`)
    return { result: content, confidence: confidenceFrom(choice?.logprobs?.content) }
  }
}

/** exp(mean token logprob): the geometric mean of token probabilities, in 0..1. */
export function confidenceFrom (tokens: Array<{ logprob?: unknown }> | null | undefined): number | null {
  if (!Array.isArray(tokens) || tokens.length === 0) return null
  let sum = 0
  for (const token of tokens) {
    if (typeof token?.logprob !== 'number' || !Number.isFinite(token.logprob)) return null
    sum += token.logprob
  }
  const value = Math.exp(sum / tokens.length)
  return Math.min(1, Math.max(0, value))
}
