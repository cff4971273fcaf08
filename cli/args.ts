import { parseArgs, type ParseArgsConfig } from 'node:util'
import { CommandFailedError, UsageError } from '../services/errors.js'

export { CommandFailedError, UsageError }

export type OptionSpecs = NonNullable<ParseArgsConfig['options']>

/** What every command accepts besides its own options. */
const COMMON: OptionSpecs = {
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false }
}

export interface ParsedCommand {
  values: Record<string, string | boolean | undefined>
  positionals: string[]
  json: boolean
  help: boolean
}

/** Parses one command's arguments strictly: unknown options and extra arguments are usage errors. */
export function parseCommand (argv: string[], options: OptionSpecs, positionals: { min: number, max: number, names: string }): ParsedCommand {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: { ...COMMON, ...options }, allowPositionals: true, strict: true })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const values = parsed.values as Record<string, string | boolean | undefined>
  const result = { values, positionals: parsed.positionals, json: values.json === true, help: values.help === true }
  if (result.help) return result
  const count = parsed.positionals.length
  if (count < positionals.min) throw new UsageError(`missing ${positionals.names}`)
  if (count > positionals.max) throw new UsageError(`unexpected argument '${parsed.positionals[positionals.max] ?? ''}'`)
  return result
}

/** A whole number of days from an option, at least `min`; undefined when it is not given. */
export function daysOption (values: ParsedCommand['values'], name: string, min: number): number | undefined {
  const raw = values[name]
  if (raw === undefined) return undefined
  const days = typeof raw === 'string' && /^\d+(\.\d+)?$/u.test(raw.trim()) ? Number(raw) : Number.NaN
  if (!Number.isFinite(days) || days < min) throw new UsageError(`--${name} must be a number of days, at least ${min} (got '${String(raw)}')`)
  return days
}

/** True when `argv` (the whole command line) asks for the list of commands. */
export function isGlobalHelp (argv: string[]): boolean {
  return argv.length === 0 || argv[0] === 'help' || argv[0] === '--help' || argv[0] === '-h'
}
