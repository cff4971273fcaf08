import type { Config } from '../schemas/config.js'
import type { Keyring } from '../services/store/keyring.js'
import type { OptionSpecs, ParsedCommand } from './args.js'

export interface CommandResult {
  /** 0: done; 1: done, but something is wrong (a bad file found, a session skipped). */
  code: 0 | 1
  /** What `--json` prints: one JSON document on stdout. */
  json: Record<string, unknown>
  /** What is printed otherwise, one line each. */
  lines: string[]
}

export interface CommandContext {
  settings: Config
  /** TASK_ENCRYPTION_KEYS, parsed: opens sealed files, and seals what the tool writes anew. */
  keyring: Keyring | null
  /** Warnings and progress for people, on stderr (stdout is the result). */
  warn: (line: string) => void
}

export interface Command {
  name: string
  /** One line for the command list. */
  summary: string
  /** The whole `--help` text. */
  help: string
  options: OptionSpecs
  positionals: { min: number, max: number, names: string }
  run: (args: ParsedCommand, context: CommandContext) => Promise<CommandResult>
}

/** The help footer every command shares. */
export const COMMON_HELP = `Common options:
  --json      print one JSON document on stdout instead of text
  -h, --help  show this help

The storage folder defaults to TASK_STORAGE_DIR (from the environment or ./.env), else data/tasks.
With TASK_STORE=postgres there and no folder given, stats, validate and seal use DATABASE_URL as
--database-url; archive, prune, backup and restore need their target named.
Exit status: 0 done, 1 failed or found a problem, 2 usage error.`
