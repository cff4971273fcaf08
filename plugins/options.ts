import { Type, type Static, type TObject, type TSchema, type TUnsafe } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import type { FastifyInstance } from 'fastify'
import type { Config } from '../schemas/config.js'
import { SETTING_DEFAULTS } from '../schemas/options.js'
import { InvalidAgentConfigError, InvalidApiKeysError, InvalidDatabaseSettingError, InvalidEncryptionKeysError, InvalidLockSettingsError, InvalidOptionsError } from '../services/errors.js'

/**
 * Plugin options: what a plugin is told at register time comes first; a missing option falls
 * back to the app's TASK_* setting when taskvault's own config plugin is registered (the
 * standalone server), and to the setting's default otherwise (a host embedding the plugin).
 * Not a plugin: helpers shared by the plugins in this folder.
 */

/**
 * A key Fastify itself reads from register options; any plugin may be given it. Fastify's
 * logLevel and logSerializers are not: a fastify-plugin has no context of its own for them to
 * apply to, so they would be ignored (the taskvault plugin declares and honours them).
 */
const FASTIFY_KEYS = ['prefix']

/** A function-valued option (executors, clocks); only its type can be checked. */
export const functionOption = <F extends (...args: never[]) => unknown>(): TUnsafe<F> => Type.Unsafe<F>({ typeof: 'function' })
export const FunctionOption = functionOption()

/** What options fall back to: the app's settings when taskvault's config plugin is registered, else the defaults. */
export function appSettings (app: FastifyInstance): Readonly<Config> {
  return app.hasPlugin('taskvault-config') ? app.taskvaultConfig : SETTING_DEFAULTS
}

/** The errors a service throws for a bad setting, naming the setting. */
const SETTING_ERRORS = [InvalidAgentConfigError, InvalidApiKeysError, InvalidDatabaseSettingError, InvalidEncryptionKeysError, InvalidLockSettingsError]

/**
 * Runs a plugin's setup. Embedded (no taskvault config plugin), taskvault read no environment
 * variable, so a bad setting found there is a bad option: it is thrown again as an
 * InvalidOptionsError that names the options of `map` (option → setting) instead.
 */
export async function withOptionErrors<T> (app: FastifyInstance, plugin: string, map: Readonly<Record<string, keyof Config>>, setup: () => Promise<T>): Promise<T> {
  try {
    return await setup()
  } catch (err) {
    if (app.hasPlugin('taskvault-config') || !SETTING_ERRORS.some((type) => err instanceof type)) throw err
    throw new InvalidOptionsError(plugin, inTermsOf(app, map, (err as Error).message), { cause: err })
  }
}

/**
 * `text` with the settings of `map` named as options when embedded: `TASK_AGENTS.x.url` reads
 * `option 'agents.x.url'`, `TASK_STORE=postgres` reads `store: 'postgres'`. The standalone
 * server's text is left as it is, since its settings are what its operator sets.
 */
export function inTermsOf (app: FastifyInstance, map: Readonly<Record<string, keyof Config>>, text: string): string {
  if (app.hasPlugin('taskvault-config')) return text
  const options = new Map<string, string>(Object.entries(map).map(([option, setting]) => [setting, option]))
  return text.replace(/\b([A-Z][A-Z0-9_]*[A-Z0-9])((?:\.[\w-]+)*)(?:=(\w+))?/gu, (whole, setting: string, path: string, value: string | undefined) => {
    const option = options.get(setting)
    if (option === undefined) return whole
    return value === undefined ? `option '${option}${path}'` : `${option}${path}: '${value}'`
  })
}

/** The options of `schema` among `options`: how a composite plugin hands each part its own. */
export function pick<S extends TObject> (schema: S, options: object): Static<S> {
  const own = options as Record<string, unknown>
  return Object.fromEntries(Object.keys(schema.properties).filter((key) => own[key] !== undefined).map((key) => [key, own[key]])) as Static<S>
}

/**
 * Checks `options` against `schema` (which must refuse unknown keys) and throws an
 * InvalidOptionsError naming the first bad option; Fastify's own keys are let through
 * unless the schema declares them.
 */
export function checkOptions (plugin: string, schema: TObject, options: object | undefined): void {
  const own: Record<string, unknown> = { ...options }
  for (const key of FASTIFY_KEYS) if (!Object.hasOwn(schema.properties, key)) delete own[key]
  const problem = firstProblem(schema, own)
  if (problem !== null) throw new InvalidOptionsError(plugin, problem)
}

function firstProblem (schema: TObject, options: Record<string, unknown>): string | null {
  for (const [key, value] of Object.entries(options)) {
    if (!Object.hasOwn(schema.properties, key)) return `unknown option '${key}' (known: ${Object.keys(schema.properties).join(', ')})`
    if (value === undefined) continue
    const problem = valueProblem(schema.properties[key] as TSchema, value, key)
    if (problem !== null) return problem
  }
  return null
}

function valueProblem (schema: TSchema, value: unknown, path: string): string | null {
  if ((schema as { typeof?: string }).typeof === 'function') {
    return typeof value === 'function' ? null : `option '${path}' must be a function (got ${describe(value)})`
  }
  // A union (a function, or an object with one): the value must fit one branch.
  const branches = (schema as { anyOf?: TSchema[] }).anyOf
  if (branches !== undefined) {
    const problems = branches.map((branch) => valueProblem(branch, value, path))
    if (problems.includes(null)) return null
    // A choice list (store, logLevel, commandCgroup): every choice, not the first one alone.
    const choices = branches.map((branch) => (branch as { const?: unknown }).const)
    if (choices.every((choice) => typeof choice === 'string')) return `option '${path}' must be one of ${choices.map((choice) => `'${String(choice)}'`).join(', ')} (got ${describe(value)})`
    // The problem of the branch of the value's kind (an object's misspelt field, not "must be a function").
    const kind = branches.findIndex((branch) => (branch as { typeof?: string }).typeof === 'function' ? typeof value === 'function' : branch.type === 'object' && typeof value === 'object' && value !== null)
    return problems[kind] ?? problems[0] ?? null
  }
  const properties = schema.properties as Record<string, TSchema> | undefined
  if (schema.type === 'object' && properties !== undefined) {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return `option '${path}' must be an object (got ${describe(value)})`
    // Nested options (executors by task type, a registry's methods): the same rules, one level down.
    const record = value as Record<string, unknown>
    const required: string[] = schema.required ?? []
    for (const [key, property] of Object.entries(properties)) {
      const item = record[key]
      if (item === undefined) {
        if (required.includes(key)) return `option '${path}' has no '${key}'`
        continue
      }
      const problem = valueProblem(property, item, `${path}.${key}`)
      if (problem !== null) return problem
    }
    if (schema.additionalProperties === false) {
      const unknown = Object.keys(record).find((key) => !Object.hasOwn(properties, key))
      if (unknown !== undefined) return `unknown key '${unknown}' in option '${path}' (known: ${Object.keys(properties).join(', ')})`
    }
    // Keys of the caller's choosing (log serializers by name): each value held to the schema of all of them.
    const rest = schema.additionalProperties
    if (typeof rest === 'object' && rest !== null) {
      for (const [key, item] of Object.entries(record)) {
        if (Object.hasOwn(properties, key) || item === undefined) continue
        const problem = valueProblem(rest as TSchema, item, `${path}.${key}`)
        if (problem !== null) return problem
      }
    }
    return null
  }
  const error = Value.Errors(schema, value).First()
  if (error === undefined) return null
  const where = error.path === '' ? '' : ` at '${error.path}'`
  return `option '${path}'${where}: ${error.message.replace(/^Expected/u, 'expected')} (got ${describe(error.value)})`
}

function describe (value: unknown): string {
  if (typeof value === 'function') return 'a function'
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}...` : value)
  if (typeof value === 'number' || typeof value === 'boolean' || value === null || value === undefined) return String(value)
  return Array.isArray(value) ? 'an array' : 'an object'
}
