import * as util from 'node:util'
import fastifyEnv from '@fastify/env'
import { fastify } from 'fastify'
import fp from 'fastify-plugin'
import { Type, type Static } from '@sinclair/typebox'
import { InvalidOptionsError } from '../services/errors.js'
import { checkOptions } from './options.js'
import { settingTextErrors, ConfigSchema, describeSettingErrors, strayTaskNames, type Config, type SettingError } from '../schemas/config.js'
import { droppedEnvLines, droppedEnvMessage, readDotEnvFile } from '../services/setting-file.js'

// Not `config`: the name @fastify/env gives a host's own settings, whose type would clash with this one.
declare module 'fastify' {
  interface FastifyInstance {
    taskvaultConfig: Config
  }
}

export const ConfigPluginOptionsSchema = Type.Object({
  /** Values that override the environment (tests, embedding), by setting name. */
  values: Type.Optional(Type.Unsafe<Partial<Record<keyof Config, string | number | boolean>>>(Type.Object({}, { additionalProperties: Type.Union([Type.String(), Type.Number(), Type.Boolean()]) }))),
  /** Read `process.env` and `.env` (default true). Tests turn this off for isolation. */
  readEnvironment: Type.Optional(Type.Boolean()),
  /** Settings loadConfig() already read and validated: used as they are, not read again. */
  loaded: Type.Optional(Type.Unsafe<Config>(Type.Object({})))
}, { additionalProperties: false })

export type ConfigPluginOptions = Static<typeof ConfigPluginOptionsSchema>

/** Validates every setting at boot; a bad value fails `ready()` with a message naming it. */
const configPlugin = fp<ConfigPluginOptions>(async function configPlugin (app, options) {
  checkOptions('taskvault-config', ConfigPluginOptionsSchema, options)
  // A misspelt setting would otherwise be dropped, the setting left at its default.
  const unknown = Object.keys(options.values ?? {}).find((name) => !Object.hasOwn(ConfigSchema.properties, name))
  if (unknown !== undefined) throw new InvalidOptionsError('taskvault-config', `values names no setting '${unknown}'`)
  if (options.loaded !== undefined) {
    app.decorate('taskvaultConfig', { ...options.loaded })
    return
  }
  const readEnvironment = options.readEnvironment ?? true
  const dotEnv = readEnvironment ? checkDotEnv() : {}
  // Every source @fastify/env reads, the winning value checked (the environment over .env, `values` over both).
  const loose = settingTextErrors({ ...dotEnv, ...(readEnvironment ? process.env : {}), ...options.values })
  if (loose.length > 0) throw new Error(loose.join('; '))
  try {
    await app.register(fastifyEnv, {
      confKey: 'taskvaultConfig',
      schema: structuredClone(ConfigSchema),
      env: readEnvironment,
      dotenv: readEnvironment,
      data: { ...options.values }
    })
  } catch (err) {
    // env-schema joins Ajv's errors as they come (a choice list gives one per choice): one line per setting instead.
    const errors = (err as { errors?: SettingError[] }).errors
    if (errors === undefined || errors.length === 0) throw err
    throw new Error(describeSettingErrors(errors).join('; '), { cause: err })
  }
  // Ajv lets "1e400" (Infinity) past minimum and maximum; a timer or bound of Infinity is never meant.
  for (const [name, value] of Object.entries(app.taskvaultConfig)) {
    if (typeof value === 'number' && !Number.isFinite(value)) throw new Error(`${name} must be a finite number`)
  }
  // LOG_LEVEL is the standalone server's (buildApp applies it): a host's logger keeps its own level.
}, { name: 'taskvault-config', fastify: '5.x' })

export default configPlugin

/**
 * The settings, read and validated exactly as the plugin does, before any app exists: the
 * server needs some of them (LOG_PRETTY, LOG_LEVEL) to build its logger.
 */
export async function loadConfig (options: ConfigPluginOptions = {}): Promise<Config> {
  const probe = fastify({ logger: false })
  try {
    await probe.register(configPlugin, options)
    await probe.ready()
    return { ...probe.taskvaultConfig }
  } finally {
    await probe.close()
  }
}

/** What the environment and ./.env set that looks like a setting and is none (strayTaskNames), to log once the logger exists. */
export function environmentWarnings (): string[] {
  let dotEnv: Record<string, string> = {}
  try {
    dotEnv = checkDotEnv()
  } catch {
    // Refused by loadConfig already, which the start reports.
  }
  return strayTaskNames([...Object.keys(dotEnv), ...Object.keys(process.env)])
}

/** `.env` in the working directory (where @fastify/env reads it), parsed; refused when the parser would drop a line of it. */
function checkDotEnv (): Record<string, string> {
  let text: string | null
  try {
    text = readDotEnvFile('.env')
  } catch (err) {
    // Said here, before @fastify/env opens it blocking (a FIFO would hold the start for ever).
    throw new Error(`./.env cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); fix or remove it`)
  }
  if (text === null) return {}
  const dropped = droppedEnvLines(text)
  if (dropped.length > 0) throw new Error(droppedEnvMessage(dropped))
  // Node 20.12 or later (package.json's engines).
  return util.parseEnv(text) as Record<string, string>
}
