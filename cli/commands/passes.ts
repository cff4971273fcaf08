import type { ArchivePassOptions } from '../../services/archive/archive-scheduler.js'
import type { Logger } from '../../services/task-manager.js'
import { operatorMessage } from '../../services/errors.js'
import { UsageError, daysOption, type ParsedCommand } from '../args.js'
import { DATABASE_HELP, DATABASE_OPTIONS, assertTargetNamed, databaseTarget, withStore } from '../database.js'
import { COMMON_HELP, type Command, type CommandContext, type CommandResult } from '../command.js'

export const archiveCommand: Command = {
  name: 'archive',
  summary: 'move finished sessions older than N days into archive/ (the scheduler\'s archive pass)',
  help: `Usage: taskvault archive [dir | --database-url URL] [--days N] [--json]

Runs the server's archive pass once: every session whose tasks are all Completed or Failed,
and whose last completion is more than N days old, moves to <dir>/archive/. The folder is
loaded as the server loads it at start (an interrupted task goes back to Pending, an unreadable
file is set aside in corrupt/), but no task runs: a background run keeps its record for the
server to carry on. Refused while a server holds the folder. With --database-url
the same pass runs on the PostgreSQL store (rows are archived where they lie; a row that does
not read is reported and left alone). There is no lock there: stop the servers first.

Options:
  --days N    age in days since the last completion; 0 archives every finished session
              (default TASK_ARCHIVE_DAYS, 30)
${DATABASE_HELP}

${COMMON_HELP}`,
  options: { days: { type: 'string' }, ...DATABASE_OPTIONS },
  positionals: { min: 0, max: 1, names: 'dir' },
  async run (args, context) {
    assertPassTarget(args, context)
    const days = daysOption(args.values, 'days', 0) ?? context.settings.TASK_ARCHIVE_DAYS
    if (days === 0 && args.values.days === undefined) throw new UsageError('archiving is off (TASK_ARCHIVE_DAYS=0); give --days N')
    const { pass, errors, dir } = await runPass(args, context, { archiveOlderThanDays: days, retention: null })
    // With errors, "none finished" may be untrue: a session the pass failed on is not counted.
    const none = errors > 0 ? 'Nothing archived' : `No session finished more than ${days} days ago; nothing archived`
    const lines = [pass.archived.length === 0 ? none : `Archived ${pass.archived.length} sessions: ${pass.archived.join(', ')}`]
    return result(errors, { dir, days, archived: pass.archived.length, archived_ids: pass.archived }, lines)
  }
}

export const pruneCommand: Command = {
  name: 'prune',
  summary: 'delete archived sessions finished more than N days ago (the scheduler\'s retention pass)',
  help: `Usage: taskvault prune [dir | --database-url URL] [--days N] [--failed-days M] [--json]

Runs the server's retention pass once: archived sessions whose last completion is more than
N days old are deleted from <dir>/archive/ (with --database-url: archived rows of the
PostgreSQL store). Active sessions are never touched. Refused while a server holds the folder;
stop the servers of a database first.

Options:
  --days N         retention in days, at least 1 (default TASK_ARCHIVE_RETENTION_DAYS)
  --failed-days M  retention for sessions with a Failed task
                   (default TASK_ARCHIVE_FAILED_RETENTION_DAYS; 0 means the same as --days)
${DATABASE_HELP}

${COMMON_HELP}`,
  options: { days: { type: 'string' }, 'failed-days': { type: 'string' }, ...DATABASE_OPTIONS },
  positionals: { min: 0, max: 1, names: 'dir' },
  async run (args, context) {
    assertPassTarget(args, context)
    const retention = {
      days: daysOption(args.values, 'days', 1) ?? context.settings.TASK_ARCHIVE_RETENTION_DAYS,
      failedDays: daysOption(args.values, 'failed-days', 0) ?? context.settings.TASK_ARCHIVE_FAILED_RETENTION_DAYS
    }
    if (retention.days === 0 && retention.failedDays === 0) throw new UsageError('retention is off (TASK_ARCHIVE_RETENTION_DAYS=0); give --days N')
    const { pass, errors, dir } = await runPass(args, context, { archiveOlderThanDays: null, retention })
    const none = errors > 0 ? 'Nothing deleted' : 'No archived session is past retention; nothing deleted'
    const lines = [pass.deleted.length === 0 ? none : `Deleted ${pass.deleted.length} archived sessions: ${pass.deleted.join(', ')}`]
    return result(errors, { dir, days: retention.days, failed_days: retention.failedDays, deleted: pass.deleted.length, deleted_ids: pass.deleted }, lines)
  }
}

/**
 * Loads the store into a task manager (no HTTP), the folder holding its lock, and runs the
 * scheduler's pass once. `dir` is where it ran: the folder, or the database (password hidden).
 */
async function runPass (args: ParsedCommand, context: CommandContext, options: ArchivePassOptions) {
  const { settings, warn } = context
  let errors = 0
  const logger: Logger = {
    info () {},
    warn: (obj, msg) => warn(describe('warning', obj, msg)),
    error: (obj, msg) => {
      errors++
      warn(describe('error', obj, msg))
    }
  }
  // The task manager (and all it runs on) is loaded by the two commands that need it only.
  const [{ TaskManager }, { ArchiveScheduler }] = await Promise.all([import('../../services/task-manager.js'), import('../../services/archive/archive-scheduler.js')])
  let dir = ''
  const pass = await withStore(args, context, databaseTarget(args, settings), async (store, where) => {
    dir = where
    // Passive: a background run a server left behind keeps its record for the server to carry
    // on with its agents; this pass runs no task (it has no agents but the demo echo).
    const manager = new TaskManager({ store, restoreConcurrency: settings.TASK_RESTORE_CONCURRENCY, logger, passive: true })
    try {
      await manager.restore()
      return await new ArchiveScheduler({ manager, archiveDays: 0, intervalMs: 60_000, logger }).runOnce(options)
    } finally {
      await manager.close()
    }
  })
  return { pass, errors, dir }
}

/** The servers on a database run these passes themselves; one from here needs its target named (before any other check: that is what to fix first). */
function assertPassTarget (args: ParsedCommand, context: CommandContext): void {
  assertTargetNamed(context.settings, args.positionals.length > 0 || args.values['database-url'] !== undefined, 'the servers archive and prune it themselves (POST /api/v1/tasks/archive); to run a pass from here, stop them and give --database-url')
}

function result (errors: number, json: Record<string, unknown>, lines: string[]): CommandResult {
  if (errors > 0) lines.push(`Problems reported on stderr: ${errors}`)
  return { code: errors > 0 ? 1 : 0, json: { ...json, errors }, lines }
}

function describe (level: string, obj: object, msg?: string): string {
  const detail = Object.entries(obj).map(([key, value]) => `${key}=${value instanceof Error ? operatorMessage(value) : JSON.stringify(value)}`).join(' ')
  return `taskvault: ${level}: ${msg ?? ''}${detail === '' ? '' : ` (${detail})`}`
}
