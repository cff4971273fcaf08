#!/usr/bin/env node
/**
 * `taskvault`: the operator's tool for a storage folder (validate, stats, archive, prune,
 * backup, restore, seal) and a PostgreSQL database (migrate, export, import; validate, stats,
 * archive and prune with --database-url), built on the same services as the server.
 */
import { readFile } from 'node:fs/promises'
import { BadSettingError, InvalidEncryptionKeysError, StorageLockedError, TaskvaultError } from '../services/errors.js'
import { Keyring } from '../services/store/keyring.js'
import { UsageError, isGlobalHelp, parseCommand } from './args.js'
import type { Command, CommandResult } from './command.js'
import { archiveCommand, pruneCommand } from './commands/passes.js'
import { backupCommand } from './commands/backup.js'
import { exportCommand } from './commands/export.js'
import { importCommand } from './commands/import.js'
import { migrateCommand } from './commands/migrate.js'
import { restoreCommand } from './commands/restore.js'
import { sealCommand } from './commands/seal.js'
import { statsCommand } from './commands/stats.js'
import { validateCommand } from './commands/validate.js'
import { loadSettings } from './settings.js'

const COMMANDS: readonly Command[] = [validateCommand, statsCommand, archiveCommand, pruneCommand, backupCommand, restoreCommand, sealCommand, migrateCommand, exportCommand, importCommand]

const USAGE = `Usage: taskvault <command> [dir] [options]

Commands:
${COMMANDS.map((command) => `  ${command.name.padEnd(9)} ${command.summary}`).join('\n')}

Run 'taskvault <command> --help' (or 'taskvault help <command>') for a command's options. Every command takes --json.
'taskvault --version' prints the version.
Exit status: 0 done, 1 failed or found a problem, 2 usage error.`

const EXIT = { ok: 0, failed: 1, usage: 2 } as const

async function main (argv: string[]): Promise<number> {
  const wantsJson = argv.includes('--json')
  const bare = argv.filter((arg) => arg !== '--json')
  if (bare.length === 1 && (bare[0] === '--version' || bare[0] === '-v')) {
    const version = await packageVersion()
    process.stdout.write(wantsJson ? `${JSON.stringify({ version })}\n` : `${version}\n`)
    return EXIT.ok
  }
  // `help <command>`: that command's help, as `<command> --help` gives it (an unknown one is a usage error as there).
  if (bare[0] === 'help' && bare.length >= 2) {
    const asked = COMMANDS.find((candidate) => candidate.name === bare[1])
    if (asked === undefined) return fail(new UsageError(`unknown command '${bare[1] ?? ''}'; commands: ${COMMANDS.map((c) => c.name).join(', ')}`), wantsJson, undefined)
    process.stdout.write(asked.help + '\n')
    return EXIT.ok
  }
  if (isGlobalHelp(argv)) {
    const asked = argv.length > 0
    ;(asked ? process.stdout : process.stderr).write(USAGE + '\n')
    return asked ? EXIT.ok : EXIT.usage
  }
  const [name, ...rest] = argv
  const command = COMMANDS.find((candidate) => candidate.name === name)
  try {
    if (command === undefined) throw new UsageError(`unknown command '${name ?? ''}'; commands: ${COMMANDS.map((c) => c.name).join(', ')}`)
    const args = parseCommand(rest, command.options, command.positionals)
    if (args.help) {
      process.stdout.write(command.help + '\n')
      return EXIT.ok
    }
    const { settings, warnings } = loadSettings()
    const warn = (line: string): void => { process.stderr.write(line + '\n') }
    for (const line of warnings) warn(line)
    const keyring = parseKeys(settings.TASK_ENCRYPTION_KEYS)
    const result = await command.run(args, { settings, keyring, warn })
    print(result, args.json)
    return result.code
  } catch (err) {
    return fail(err, wantsJson, command)
  }
}

/** The version of the package this tool came with. */
async function packageVersion (): Promise<string> {
  const { version } = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  return version
}

/** TASK_ENCRYPTION_KEYS, parsed; a bad list is a bad setting (exit 2) like any other. */
function parseKeys (value: string): Keyring | null {
  try {
    return Keyring.parse(value)
  } catch (err) {
    if (err instanceof InvalidEncryptionKeysError) throw new BadSettingError(err.message)
    throw err
  }
}

function print (result: CommandResult, json: boolean): void {
  process.stdout.write(json ? JSON.stringify(result.json, null, 2) + '\n' : result.lines.join('\n') + '\n')
}

/** Reports an error (as JSON on stdout with --json, as text on stderr otherwise) and picks the exit status. */
function fail (err: unknown, json: boolean, command: Command | undefined): number {
  const usage = err instanceof UsageError
  const known = err instanceof TaskvaultError
  const code = known ? err.code : ((err as NodeJS.ErrnoException).code ?? 'ERROR')
  let message = err instanceof Error ? err.message : String(err)
  if (err instanceof StorageLockedError) message += '; stop the server first, or use a read-only command (validate, stats, backup)'
  if (json) process.stdout.write(JSON.stringify({ error: { code, message } }, null, 2) + '\n')
  else {
    process.stderr.write(`taskvault: ${message}\n`)
    if (usage && !(err instanceof BadSettingError)) process.stderr.write(`Run 'taskvault ${command?.name ?? ''}${command === undefined ? '' : ' '}--help' for usage.\n`)
  }
  return usage ? EXIT.usage : EXIT.failed
}

/** Set once output could not be written: the command then exits 1, whatever it did. */
let outputFailed = false

// A reader that stops early (`taskvault validate | head -1`) is no failure of the command: what
// it would not read is dropped, and the command ends as it would have. Any other failure to write
// (a full disk under `> file`) is one: said in one line on stderr (when that works), not as a stack.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE' || outputFailed) return
    outputFailed = true
    process.exitCode = EXIT.failed
    process.stderr.write(`taskvault: cannot write to ${stream === process.stdout ? 'stdout' : 'stderr'}: ${err.message}\n`)
  })
}

const code = await main(process.argv.slice(2))
process.exitCode = outputFailed ? EXIT.failed : code
