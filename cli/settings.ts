import { join } from 'node:path'
import * as util from 'node:util'
import { Ajv } from 'ajv'
import { settingTextErrors, ConfigSchema, describeSettingErrors, strayTaskNames, type Config } from '../schemas/config.js'
import { BadSettingError, InvalidLockSettingsError } from '../services/errors.js'
import { droppedEnvLines, droppedEnvMessage, readDotEnvFile } from '../services/setting-file.js'

/**
 * The server's settings, read the way the server reads them (the environment, then `.env` in
 * the working directory, the environment winning), so that the tool finds the same folder
 * and uses the same archive, retention and lock settings by default. `warnings`: names there
 * shaped like settings that are none (strayTaskNames), as the server logs them at start.
 */
export function loadSettings (env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): { settings: Config, warnings: string[] } {
  const names = Object.keys(ConfigSchema.properties)
  const values: Record<string, unknown> = {}
  const sources = [readDotEnv(cwd), env]
  for (const source of sources) {
    for (const name of names) if (source[name] !== undefined) values[name] = source[name]
  }
  const loose = settingTextErrors(values)[0]
  if (loose !== undefined) throw new BadSettingError(loose)
  const ajv = new Ajv({ coerceTypes: true, useDefaults: true, allErrors: false })
  const validate = ajv.compile(structuredClone(ConfigSchema))
  if (!validate(values)) throw new BadSettingError(describeSettingErrors(validate.errors ?? [])[0] ?? 'invalid')
  for (const [name, value] of Object.entries(values)) {
    if (typeof value === 'number' && !Number.isFinite(value)) throw new BadSettingError(`${name} must be a finite number`)
  }
  const settings = values as Config
  // The pair the lock checks when a command takes it: a bad setting like the others (exit 2), for every command.
  if (settings.TASK_LOCK_REFRESH_MS * 2 > settings.TASK_LOCK_STALE_MS) {
    throw new BadSettingError(new InvalidLockSettingsError(settings.TASK_LOCK_REFRESH_MS, settings.TASK_LOCK_STALE_MS).message)
  }
  const warnings = strayTaskNames(sources.flatMap((source) => Object.keys(source))).map((line) => `⚠️  ${line}`)
  return { settings, warnings }
}

function readDotEnv (cwd: string): Record<string, string | undefined> {
  let text: string | null
  try {
    text = readDotEnvFile(join(cwd, '.env'))
  } catch (err) {
    // Read past, its settings (the folder, the keys, the store) would silently fall back to the defaults, where the server refuses to start.
    throw new BadSettingError(`file ./.env: it cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); fix or remove it`)
  }
  if (text === null) return {}
  const dropped = droppedEnvLines(text)
  if (dropped.length > 0) throw new BadSettingError(droppedEnvMessage(dropped))
  // Node 20.12 or later (package.json's engines).
  return util.parseEnv(text)
}
