import { lstat, mkdir, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { fsyncDir } from '../../services/store/session-files.js'
import { nodeFs } from '../../services/store/fs-seam.js'
import { readMarker } from '../../services/store/storage-folder.js'
import { assertUsedFolder, ignoredByServer, readOnce, readSettled, setAsideCount, setAsideWarning, storageDir, withWriteLock, type StoredFile } from '../folder.js'
import { CommandFailedError, UsageError, type ParsedCommand } from '../args.js'
import { COMMON_HELP, type Command, type CommandContext, type CommandResult } from '../command.js'
import { DATABASE_HELP, DATABASE_OPTIONS, readTarget, withDatabase, type DatabaseTarget } from '../database.js'
import { CorruptSessionFileError, KeyUnavailableError, SealNotOpenedError } from '../../services/errors.js'
import type { Keyring } from '../../services/store/keyring.js'
import { readSessionDocument } from '../../services/store/session-files.js'
import { rowName, rowsPage, type StoredRow } from '../rows.js'

interface FileReport {
  file: string
  ok: boolean
  /** The key that sealed it; null: plaintext. A bad one has it only when sealed and its box did not open (or its key is missing). */
  kid?: string | null
  reason?: string
  moved_to?: string
  /** Not named like a session file: the server ignores it, so it is reported but not bad. */
  ignored?: true
}

export const validateCommand: Command = {
  name: 'validate',
  summary: 'check every session file (parse and schema), active and archived',
  help: `Usage: taskvault validate [dir] [--fix] [--json]
       taskvault validate --database-url URL [--schema NAME] [--json]

Reads every session file in the storage folder and in its archive/ exactly as the server's
restore would, and prints one line per file: ✅ when it loads, ❌ and the reason when not.
Sealed files (TASK_ENCRYPTION_KEYS) are opened and checked too, and each line names the key
that sealed it, a file that did not open under it too; a file sealed under a key that is not
configured is reported, never moved. Files in <dir>/corrupt/ are not checked: they are counted
(set_aside in --json) with a warning, without failing the run.
Read-only unless --fix; safe while a server runs.

With --database-url it reads every row of the PostgreSQL store, active and archived, the
same way, one line per row (<id>@<row> for an active row, archive/<id>@<row> for an archived
copy). Rows cannot be set aside, so --fix is refused there (a usage error): fix or delete a
bad row with SQL, by its row id.

Options:
  --fix       move each bad session file into <dir>/corrupt/ (files not named <id>.json stay
              where they are; needs the folder: refused while a server holds it)
${DATABASE_HELP}

Exit status 1 when any file is bad (also with --fix, after moving them).

${COMMON_HELP}`,
  options: { fix: { type: 'boolean', default: false }, ...DATABASE_OPTIONS },
  positionals: { min: 0, max: 1, names: 'dir' },
  async run (args, context) {
    const { settings, keyring } = context
    const target = readTarget(args, settings)
    if (target !== null) return validateRows(args, context, target)
    const dir = storageDir(args.positionals[0], settings)
    const fix = args.values.fix === true
    await assertUsedFolder(dir, 'nothing was checked')
    const checks = keyring === null ? null : (await readMarker(nodeFs, dir))?.keyChecks ?? null
    /** The marker keeps the check of the key configured under `kid` (a key the folder had first). */
    const checked = (kid: string): boolean => keyring !== null && checks !== null && keyring.kids.includes(kid) && Object.hasOwn(checks, kid) && checks[kid] === keyring.keyCheck(kid)
    const check = async (): Promise<{ reports: FileReport[], bad: StoredFile[] }> => {
      const reports: FileReport[] = []
      const bad: StoredFile[] = []
      /** Files whose box did not open, by kid: bad only if another file under that kid opened. */
      const unopened = new Map<string, Array<{ stored: StoredFile, report: FileReport }>>()
      // A file a running server moves (archives, brings back) before it is read is read where it
      // went, not left out; one read already is not read again from where it moved.
      const once = readOnce()
      for await (const { stored, checked } of readSettled(dir, keyring, once.skip)) {
        once.seen(stored)
        if (checked.ok) reports.push({ file: stored.rel, ok: true, kid: checked.kid })
        else {
          // The kid is what the rotation runbook greps for: a file under the old key must show it.
          const kid = checked.keyMissing === true ? checked.kid : checked.unopenedKid
          const report: FileReport = { file: stored.rel, ok: false, ...(kid !== undefined && { kid }), reason: checked.reason, ...(ignoredByServer(stored) && { ignored: true as const }) }
          reports.push(report)
          if (checked.keyMissing !== true && checked.unopenedKid !== undefined && !ignoredByServer(stored)) {
            unopened.set(checked.unopenedKid, [...(unopened.get(checked.unopenedKid) ?? []), { stored, report }])
            continue
          }
          // A file sealed under a missing key is fine, only unreadable here; a file the server never
          // reads is not one gone bad; a file we may not read is unknown: all are left where they are.
          if (checked.keyMissing !== true && checked.denied !== true && !ignoredByServer(stored)) bad.push(stored)
        }
      }
      // As the server's restore judges them: when no file under a kid opens and the marker keeps
      // no check that proves its key, the key is wrong, not the files.
      for (const [kid, files] of unopened) {
        if (checked(kid) || reports.some((report) => report.ok && report.kid === kid)) bad.push(...files.map((file) => file.stored))
        else for (const { report } of files) report.reason += ` (left in place: no file sealed under key '${kid}' opens, so the key configured under that kid is likely wrong)`
      }
      // By path, as the folder lists them (readSettled reads active files first).
      reports.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0))
      return { reports, bad }
    }
    const { reports } = fix
      ? await withWriteLock(dir, settings, keyring, false, async () => {
        const result = await check()
        await setAside(dir, result.bad, result.reports)
        return result
      })
      : await check()
    const badCount = reports.filter((report) => !report.ok && report.ignored !== true).length
    // Already set aside, so no failure; but not checked either, and a plaintext one is in clear.
    const inCorrupt = await setAsideCount(dir)
    if (inCorrupt !== 0) context.warn(setAsideWarning(inCorrupt, 'checked'))
    const lines = reportLines(reports)
    lines.push(`${reports.length} files checked, ${badCount} bad`)
    return { code: badCount > 0 ? 1 : 0, json: { dir, checked: reports.length, bad: badCount, set_aside: inCorrupt, files: reports }, lines }
  }
}

function reportLines (reports: FileReport[]): string[] {
  return reports.map((report) => {
    const sealed = typeof report.kid === 'string' ? ` (sealed, key ${report.kid})` : ''
    return report.ok
      ? `✅ ${report.file}${sealed}`
      : report.ignored === true ? `⚠️ ${report.file}: ${report.reason ?? ''}` : `❌ ${report.file}${sealed}: ${report.reason ?? ''}${report.moved_to === undefined ? '' : ` (moved to ${report.moved_to})`}`
  })
}

/** Rows read per round trip. */
const PAGE_ROWS = 500

/**
 * validate on the PostgreSQL store: every row, active and archived, read and judged exactly as
 * the store reads it (readSessionDocument). A row sealed under a key that is not configured is
 * reported, as a file is. Nothing is written.
 */
async function validateRows (args: ParsedCommand, { settings, keyring }: CommandContext, target: DatabaseTarget): Promise<CommandResult> {
  if (args.values.fix === true) throw new UsageError('--fix works on a folder only: rows of the PostgreSQL store cannot be set aside (fix or delete a bad row with SQL, by the row id validate prints)')
  if (args.positionals.length > 0) throw new UsageError(`give a folder or --database-url, not both (got '${args.positionals[0] ?? ''}')`)
  const reports: FileReport[] = []
  await withDatabase(target, settings, keyring, true, async (client) => {
    for (let after = '0'; ;) {
      const { rows } = await client.query<StoredRow>(rowsPage(after, PAGE_ROWS))
      for (const row of rows) reports.push(judgeRow(row, keyring))
      const last = rows.at(-1)
      // A page may end early at its bytes: only an empty one is the end.
      if (last === undefined) break
      after = last.row_id
    }
  })
  reports.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0))
  const badCount = reports.filter((report) => !report.ok).length
  const lines = reportLines(reports)
  lines.push(`${reports.length} rows checked in ${target.where} (schema ${target.schema}), ${badCount} bad`)
  return { code: badCount > 0 ? 1 : 0, json: { database: target.where, schema: target.schema, checked: reports.length, bad: badCount, files: reports }, lines }
}

function judgeRow (row: StoredRow, keyring: Keyring | null): FileReport {
  const file = rowName(row)
  try {
    return { file, ok: true, kid: readSessionDocument(file, row.document, row.session_id, keyring).kid }
  } catch (err) {
    if (!(err instanceof KeyUnavailableError) && !(err instanceof CorruptSessionFileError)) throw err
    // As for a file: a row whose box did not open, or whose key is missing, names its kid.
    const kid = err instanceof SealNotOpenedError || err instanceof KeyUnavailableError ? err.kid : undefined
    return { file, ok: false, ...(kid !== undefined && { kid }), reason: err.message.replace(`${file}: `, '') }
  }
}

/** Moves bad files into corrupt/ under unique names, never deleting anything, then makes the moves durable. */
async function setAside (dir: string, bad: StoredFile[], reports: FileReport[]): Promise<void> {
  if (bad.length === 0) return
  const corruptDir = join(dir, 'corrupt')
  await mkdir(corruptDir, { recursive: true, mode: 0o700 })
  // A symlink here could lead out of the storage folder.
  if (!(await lstat(corruptDir)).isDirectory()) throw new CommandFailedError(`${corruptDir} is not a real folder (a symlink?); refusing to move files into it`)
  const stamp = Date.now()
  let seq = 0
  for (const stored of bad) {
    const name = `${stored.rel.replace('/', '.')}.${stamp}.${process.pid}.${++seq}`
    await rename(stored.path, join(corruptDir, name))
    const report = reports.find((candidate) => candidate.file === stored.rel)
    if (report !== undefined) report.moved_to = `corrupt/${name}`
  }
  await fsyncDir(nodeFs, corruptDir)
  await fsyncDir(nodeFs, dir)
  if (bad.some((stored) => stored.archived)) await fsyncDir(nodeFs, join(dir, 'archive'))
}
