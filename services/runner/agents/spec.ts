import { accessSync, constants, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { Type, type Static, type TOptional, type TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { Value } from '@sinclair/typebox/value'
import { TASK_TYPES } from '../../../schemas/session.js'
import { InvalidAgentConfigError } from '../../errors.js'
import { readSettingFile } from '../../setting-file.js'

// Node timers hold at most 2^31-1 ms; larger values would fire at once.
const MAX_TIMER_MS = 2_147_483_647
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const EnvName = Type.String({ pattern: ENV_NAME.source, description: 'Name of an environment variable' })

/** What every agent takes: how long one call may run, and how failed calls are retried. */
/** The most an answer may be: it is decoded into one string, and V8's strings end near 512 M characters. */
const MAX_TEXT_BYTES = 256 * 1024 * 1024

const Policy = {
  timeout_ms: Type.Integer({ minimum: 1, maximum: MAX_TIMER_MS, default: 120_000, description: 'One call; a call over it fails (and may be retried)' }),
  max_attempts: Type.Integer({ minimum: 1, maximum: 100, default: 1, description: 'Calls per execution of a task, the first included' }),
  backoff_ms: Type.Integer({ minimum: 0, maximum: MAX_TIMER_MS, default: 1000, description: 'Wait before the 2nd call; doubles each time, with jitter' }),
  max_backoff_ms: Type.Integer({ minimum: 0, maximum: MAX_TIMER_MS, default: 60_000, description: 'Cap on any wait, Retry-After included' })
}

/** The call policy as a programmatic executor gives it (`{ run, ...policy }`): every field optional, its default otherwise. */
export const PolicyOptions = Object.fromEntries(Object.entries(Policy).map(([field, schema]) => [field, Type.Optional(schema)])) as { [F in keyof typeof Policy]: TOptional<(typeof Policy)[F]> }

const HttpLimits = {
  max_response_bytes: Type.Integer({ minimum: 1024, maximum: MAX_TEXT_BYTES, default: 4 * 1024 * 1024, description: 'A longer answer fails the call' })
}

const spec = <K extends string, T extends Record<string, TSchema>>(kind: K, fields: T) =>
  Type.Object({ kind: Type.Literal(kind), ...Policy, ...fields }, { additionalProperties: false })

export const EchoAgentSpec = spec('echo', {})

export const WebhookAgentSpec = spec('webhook', {
  url: Type.String({ pattern: '^https?://', description: 'Receives POST {session_id, task}' }),
  headers_env: Type.Optional(EnvName),
  ...HttpLimits
})

export const OpenAIAgentSpec = spec('openai', {
  base_url: Type.String({ pattern: '^https?://', description: 'e.g. https://api.openai.com/v1 or http://127.0.0.1:11434/v1' }),
  model: Type.String({ minLength: 1 }),
  api_key_env: Type.Optional(EnvName),
  system_prompt: Type.Optional(Type.String()),
  temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2 })),
  max_tokens: Type.Optional(Type.Integer({ minimum: 1 })),
  logprobs: Type.Boolean({ default: true, description: 'Ask for token logprobs, the source of confidence' }),
  ...HttpLimits
})

export const CommandAgentSpec = spec('command', {
  argv: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'Program and arguments; no shell' }),
  cwd: Type.Optional(Type.String({ minLength: 1 })),
  env: Type.Optional(Type.Record(Type.String({ pattern: ENV_NAME.source }), Type.String())),
  max_output_bytes: Type.Integer({ minimum: 1, maximum: MAX_TEXT_BYTES, default: 1024 * 1024, description: 'stdout beyond this is cut' }),
  drain_ms: Type.Optional(Type.Integer({ minimum: 0, maximum: 60_000, description: 'After the program exits, how long its output may take to end; unset: TASK_COMMAND_DRAIN_MS' }))
})

export const AgentSpec = Type.Union([EchoAgentSpec, WebhookAgentSpec, OpenAIAgentSpec, CommandAgentSpec])
export type AgentSpec = Static<typeof AgentSpec>
export type EchoAgentSpec = Static<typeof EchoAgentSpec>
export type WebhookAgentSpec = Static<typeof WebhookAgentSpec>
export type OpenAIAgentSpec = Static<typeof OpenAIAgentSpec>
export type CommandAgentSpec = Static<typeof CommandAgentSpec>
export type AgentPolicy = Pick<AgentSpec, keyof typeof Policy>

/** A programmatic executor's policy as given: each field optional, no other (a misspelt `max_attempt` would leave the default in force without a word). */
const checkGivenPolicy = TypeCompiler.Compile(Type.Object(PolicyOptions, { additionalProperties: false }))

/** The call policy of an agent that names none: the defaults above, in one place. */
export const DEFAULT_POLICY = Value.Create(Type.Object(Policy)) as AgentPolicy

/**
 * Checks the call policy of a programmatic executor (`executors.<key>`), with the bounds of
 * TASK_AGENTS specs: undefined fields take the defaults, anything else must be in range.
 */
export function checkPolicy (key: string, given: Record<string, unknown>, defaults: AgentPolicy): AgentPolicy {
  const first = checkGivenPolicy.Errors(given).First()
  if (first !== undefined) {
    throw new InvalidAgentConfigError(`executors.${key}${first.path.replaceAll('/', '.')}: ${first.message}`)
  }
  const merged: Record<string, unknown> = { ...defaults }
  for (const field of Object.keys(Policy)) if (given[field] !== undefined) merged[field] = given[field]
  return merged as AgentPolicy
}

export const AGENT_KEYS = ['default', ...TASK_TYPES] as const
export type AgentKey = (typeof AGENT_KEYS)[number]
export type AgentsConfig = Partial<Record<AgentKey, AgentSpec>>

const KIND_SCHEMAS: Record<string, TSchema> = {
  echo: EchoAgentSpec, webhook: WebhookAgentSpec, openai: OpenAIAgentSpec, command: CommandAgentSpec
}
const checkers = Object.fromEntries(Object.entries(KIND_SCHEMAS).map(([kind, schema]) => [kind, TypeCompiler.Compile(schema)]))

export const DEFAULT_AGENTS: AgentsConfig = { default: withDefaults({ kind: 'echo' }) as AgentSpec }

function withDefaults (value: object): unknown {
  const schema = KIND_SCHEMAS[(value as { kind?: string }).kind ?? '']
  return schema === undefined ? value : Value.Default(schema, structuredClone(value))
}

/**
 * Reads TASK_AGENTS: JSON inline, or `@path/to/agents.json`. Each key is a task type or
 * `default`; each value an agent spec. Errors name the key and field, so a bad boot says what to fix.
 * Environment variables the specs name must exist, so a missing secret fails the boot, not the first task.
 */
export function parseAgentsConfig (source: string | object, env: NodeJS.ProcessEnv = process.env): AgentsConfig {
  let raw: unknown = source
  if (typeof source === 'string') {
    const text = source.trim()
    let json = text
    if (text.startsWith('@')) {
      const path = resolve(text.slice(1))
      try {
        // A byte-order mark (a Windows editor's UTF-8) is no part of the JSON.
        json = readSettingFile(path).replace(/^\uFEFF/u, '')
      } catch (err) {
        throw new InvalidAgentConfigError(`TASK_AGENTS: cannot read ${path}: ${(err as Error).message}`)
      }
    }
    try {
      raw = JSON.parse(json)
    } catch (err) {
      throw new InvalidAgentConfigError(`TASK_AGENTS: not valid JSON: ${(err as Error).message}`)
    }
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new InvalidAgentConfigError('TASK_AGENTS: must be a JSON object mapping a task type or "default" to an agent spec')
  }
  const config: AgentsConfig = {}
  for (const [key, value] of Object.entries(raw)) {
    if (!(AGENT_KEYS as readonly string[]).includes(key)) {
      throw new InvalidAgentConfigError(`TASK_AGENTS.${key}: unknown key; use one of ${AGENT_KEYS.join(', ')}`)
    }
    config[key as AgentKey] = checkSpec(key, value, env)
  }
  if (Object.keys(config).length === 0) throw new InvalidAgentConfigError('TASK_AGENTS: names no agent')
  return config
}

/**
 * A command agent's folder and program exist, so a typo stops the boot rather than failing
 * every task (and a missing `cwd` is not reported as the program not starting, which is how
 * spawn tells it). The program: a path (taken from `cwd`), or a name found on PATH, executable.
 */
function checkProgram (key: string, argv: readonly string[], cwd: string | undefined, path: string): void {
  if (cwd !== undefined && statSync(cwd, { throwIfNoEntry: false })?.isDirectory() !== true) {
    throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.cwd: ${cwd} is not a folder`)
  }
  const program = argv[0] as string
  const candidates = program.includes('/')
    ? [resolve(cwd ?? '.', program)]
    : path.split(':').filter((dir) => dir !== '').map((dir) => join(resolve(cwd ?? '.', dir), program))
  const runnable = candidates.some((file) => {
    try {
      accessSync(file, constants.X_OK)
      return statSync(file).isFile()
    } catch {
      return false
    }
  })
  if (!runnable) throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.argv: ${program} ${program.includes('/') ? 'is not an executable file' : 'is not an executable file on PATH'}`)
}

function checkSpec (key: string, value: unknown, env: NodeJS.ProcessEnv): AgentSpec {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidAgentConfigError(`TASK_AGENTS.${key}: must be an object with a "kind"`)
  }
  const kind = (value as { kind?: unknown }).kind
  const checker = typeof kind === 'string' ? checkers[kind] : undefined
  if (checker === undefined) {
    throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.kind: must be one of ${Object.keys(KIND_SCHEMAS).join(', ')}`)
  }
  const spec = withDefaults(value)
  const first = checker.Errors(spec).First()
  if (first !== undefined) {
    const field = first.path === '' ? '' : first.path.replace(/^\//, '.').replaceAll('/', '.')
    throw new InvalidAgentConfigError(`TASK_AGENTS.${key}${field}: ${first.message}`)
  }
  const checked = spec as AgentSpec
  // Type.Record does not hold its keys to the pattern, so environment names are checked here.
  if (checked.kind === 'command') {
    const bad = Object.keys(checked.env ?? {}).find((name) => !ENV_NAME.test(name))
    if (bad !== undefined) throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.env: '${bad}' is not an environment variable name`)
    // A NUL byte no program can be given (spawn refuses it, quoting the value into every task's error).
    const nul = [
      ...checked.argv.map((arg, index) => [`argv.${index}`, arg] as const),
      ['cwd', checked.cwd ?? ''] as const,
      ...Object.entries(checked.env ?? {}).map(([name, text]) => [`env.${name}`, text] as const)
    ].find(([, text]) => text.includes('\u0000'))
    if (nul !== undefined) throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.${nul[0]}: holds a NUL byte, which no program can be given`)
    // With no PATH, spawn looks in /usr/bin and /bin (libuv's default), and so does this check.
    checkProgram(key, checked.argv, checked.cwd, checked.env?.PATH ?? env.PATH ?? '/usr/bin:/bin')
  }
  // A password in an agent's URL would go out in clear in every error about it (fetch refuses
  // such a URL, naming it whole): credentials belong in headers_env or api_key_env.
  if (checked.kind === 'webhook' || checked.kind === 'openai') {
    const field = checked.kind === 'webhook' ? 'url' : 'base_url'
    let url: URL
    try {
      url = new URL(checked.kind === 'webhook' ? checked.url : checked.base_url)
    } catch {
      throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.${field}: not a valid URL`)
    }
    if (url.username !== '' || url.password !== '') {
      throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.${field}: must not hold a user name or password; put credentials in ${checked.kind === 'webhook' ? 'headers_env' : 'api_key_env'}`)
    }
  }
  for (const field of ['api_key_env', 'headers_env'] as const) {
    const name = (checked as Record<string, unknown>)[field]
    if (typeof name === 'string' && (env[name] === undefined || env[name] === '')) {
      throw new InvalidAgentConfigError(`TASK_AGENTS.${key}.${field}: environment variable ${name} is not set`)
    }
  }
  return checked
}
