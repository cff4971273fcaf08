import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { progressOf, type SessionFile } from '../../services/session/session.js'
import { FileSessionStore } from '../../services/store/file-store.js'
import { kidRecord, type Keyring } from '../../services/store/keyring.js'
import type { EncryptionStats } from '../../services/store/store.js'
import { assertFolder, folderKeys, ignoredByServer, readOnce, readSettled, storageDir } from '../folder.js'
import { CommandFailedError, UsageError, type ParsedCommand } from '../args.js'
import { COMMON_HELP, type Command, type CommandContext, type CommandResult } from '../command.js'
import type { PostgresSessionStore } from '../../services/store/postgres/postgres-store.js'
import { DATABASE_HELP, DATABASE_OPTIONS, readTarget, withStore } from '../database.js'

export const statsCommand: Command = {
  name: 'stats',
  summary: "the stats endpoint's figures, from the files, with storage used",
  help: `Usage: taskvault stats [dir | --database-url URL] [--json]

Reads every session file and prints what GET /api/v1/tasks/stats would show for the folder:
session and task counts (active sessions; archived ones are counted apart), the bytes of
active and archived files, how many files cannot be loaded, and the storage used by everything
under the folder (corrupt/ included), and with TASK_ENCRYPTION_KEYS set the active sessions
by the key that sealed them (active key, per kid, plaintext). Read-only; safe while a server runs.
An active file sealed under a key TASK_ENCRYPTION_KEYS does not hold fails it (exit 1), as it
stops the server's start, and so does a key given under a kid the folder first had another key
for; an archived one is counted as archived and listed as needing its key.

With --database-url the same counts come from the PostgreSQL store, read through the store
as a server reads it at start: active rows, archived copies, their bytes (a row's bytes are
those of the file it would be), rows that cannot be read, and archived rows sealed under a key
TASK_ENCRYPTION_KEYS does not hold. Nothing is written but what a server's start writes too: a
row's count and time columns that do not match its document are set from it.

Options:
${DATABASE_HELP}

${COMMON_HELP}`,
  options: { ...DATABASE_OPTIONS },
  positionals: { min: 0, max: 1, names: 'dir' },
  async run (args, context) {
    const { settings, keyring } = context
    if (readTarget(args, settings) !== null) return databaseStats(args, context)
    const dir = storageDir(args.positionals[0], settings)
    await assertFolder(dir)
    // A key under a kid other than the one the folder first had refuses the server's start: stats fails as it does.
    const { proofs } = await folderKeys(dir, keyring)
    const counts = zeroCounts()
    const storage = { kind: 'file' as const, dir, bytes: 0, files: 0, archive_bytes: 0, archive_files: 0, failed_loads: 0, corrupt_files: 0, used_bytes: 0 }
    const archivedIds = new Set<string>()
    const activeIds = new Set<string>()
    // Files sealed under a key TASK_ENCRYPTION_KEYS does not hold, by kid: active ones stop the
    // server's start (so this fails too); archived ones are read on demand, so they only need listing.
    const missingKeys = new Map<string, { active: number, archived: number }>()
    /** Active files by the key that sealed them ('' plaintext): GET /stats's `encryption`. */
    const kids = new Map<string, number>()
    // An active file a running server archives before it is read is counted from archive/, not
    // left out; a session counted already is not counted again from where it moved.
    const once = readOnce()
    for await (const { stored, checked } of readSettled(dir, keyring, once.skip)) {
      once.seen(stored)
      proofs.note(stored, checked)
      if (checked.ok === false && checked.keyMissing === true) {
        const need = missingKeys.get(checked.kid) ?? { active: 0, archived: 0 }
        need[stored.archived ? 'archived' : 'active']++
        missingKeys.set(checked.kid, need)
        if (stored.archived) {
          // Whole, only unopened here: the server counts it in its archive as it is.
          archivedIds.add(checked.clear.session_id)
          storage.archive_bytes += checked.data.length
          storage.archive_files++
        }
        continue
      }
      if (!checked.ok) {
        // A file not named like a session, or not a regular file, is not one the server fails to load: it ignores it.
        if (ignoredByServer(stored)) continue
        if (stored.archived) {
          // The server reads an archived file only when asked for it: until then it counts it in its archive as it is.
          archivedIds.add(stored.sessionId as string)
          storage.archive_bytes += (await lstat(stored.path).catch(() => null))?.size ?? 0
          storage.archive_files++
          continue
        }
        storage.failed_loads++
        continue
      }
      if (stored.archived) {
        archivedIds.add(checked.file.session_id)
        storage.archive_bytes += checked.data.length
        storage.archive_files++
        continue
      }
      activeIds.add(checked.file.session_id)
      count(counts, checked.file)
      kids.set(checked.kid ?? '', (kids.get(checked.kid ?? '') ?? 0) + 1)
      storage.bytes += checked.data.length
      storage.files++
    }
    const stopping = [...missingKeys].filter(([, need]) => need.active > 0)
    if (stopping.length > 0) {
      // Counts without them would be wrong, as the server (which refuses to start) would say.
      const counts = stopping.map(([kid, { active: n }]) => `${n} session${n === 1 ? ' needs' : 's need'} key '${kid}'`).join(', ')
      throw new CommandFailedError(`cannot count ${dir}: ${counts}, which TASK_ENCRYPTION_KEYS does not hold`)
    }
    // Counted as unloadable, they would look damaged: the server refuses to start instead.
    const wrongKey = proofs.failure('nothing was counted')
    if (wrongKey !== null) throw wrongKey
    storage.corrupt_files = (await readdir(join(dir, 'corrupt')).catch(() => [])).length
    storage.used_bytes = await usedBytes(dir)
    // The same free-space figures as GET /stats, from the same statfs.
    const space = await new FileSessionStore({ dir }).space()
    // An archived copy behind an active session is hidden by it (the server shows the active one):
    // the session counts as active only, as GET /stats counts it.
    for (const sessionId of activeIds) archivedIds.delete(sessionId)
    const needsKeys = Object.fromEntries([...missingKeys].map(([kid, need]) => [kid, need.archived]))
    const encryption = encryptionOf(keyring === null ? null : kidStats(keyring, kids))
    const json = { ...counts, archived_sessions: archivedIds.size, storage: { ...storage, ...space, archived_needing_keys: needsKeys }, encryption }
    const lines = [
      `storage folder      ${dir}`,
      ...countLines(counts, archivedIds.size, storage),
      `session files       ${storage.files} (${formatBytes(storage.bytes)})`,
      ...encryptionLines(encryption),
      `unloadable files    ${storage.failed_loads}${storage.corrupt_files > 0 ? `; ${storage.corrupt_files} set aside in corrupt/` : ''}`,
      ...[...missingKeys].map(([kid, { archived: n }]) => `needs a key         ${n} archived file${n === 1 ? '' : 's'} sealed under key '${kid}', which TASK_ENCRYPTION_KEYS does not hold (served only once it is back)`),
      `storage used        ${formatBytes(storage.used_bytes)}`,
      `filesystem free     ${formatBytes(space.free_bytes)} of ${formatBytes(space.total_bytes)} (${(space.free_ratio * 100).toFixed(1)}%)`
    ]
    return { code: 0, json, lines }
  }
}

type Counts = ReturnType<typeof zeroCounts>

function zeroCounts () {
  return { total_sessions: 0, active_sessions: 0, completed_sessions: 0, total_tasks: 0, completed_tasks: 0, failed_tasks: 0, pending_tasks: 0, in_progress_tasks: 0 }
}

/** Adds an active session to the counts, as GET /stats counts it. */
function count (counts: Counts, file: SessionFile): void {
  const progress = progressOf(file.session.tasks)
  counts.total_sessions++
  if (progress.all_done) counts.completed_sessions++
  else counts.active_sessions++
  counts.total_tasks += progress.total
  counts.completed_tasks += progress.completed
  counts.failed_tasks += progress.failed
  counts.pending_tasks += progress.pending
  counts.in_progress_tasks += progress.in_progress
}

function countLines (counts: Counts, archived: number, storage: { archive_files: number, archive_bytes: number }): string[] {
  return [
    `sessions            ${counts.total_sessions} (${counts.active_sessions} active, ${counts.completed_sessions} completed)`,
    `tasks               ${counts.total_tasks} (${counts.completed_tasks} completed, ${counts.failed_tasks} failed, ${counts.pending_tasks} pending, ${counts.in_progress_tasks} in progress)`,
    `archived sessions   ${archived} (${storage.archive_files} files, ${formatBytes(storage.archive_bytes)})`
  ]
}

/**
 * stats on the PostgreSQL store, through the store contract: loadAll (the active rows, and the
 * ones that do not read) and openArchive (the archive's totals, from the rows' columns).
 */
async function databaseStats (args: ParsedCommand, context: CommandContext): Promise<CommandResult> {
  if (args.positionals.length > 0) throw new UsageError(`give a folder or --database-url, not both (got '${args.positionals[0] ?? ''}')`)
  return withStore(args, context, readTarget(args, context.settings), async (store, where, target) => {
    const loaded = await store.loadAll({ concurrency: 1 })
    const archive = await store.openArchive({ concurrency: 1 })
    // Archived rows are read on demand: one sealed under a key TASK_ENCRYPTION_KEYS lacks waits for it, listed as in a folder.
    const configured = new Set(context.keyring?.kids ?? [])
    // By kind, not instanceof: a value import of the store would load pg into every command.
    const byKid = store.kind === 'postgres' ? await (store as PostgresSessionStore).archivedByKid() : new Map<string, number>()
    const needsKeys = kidRecord([...byKid].filter(([kid]) => !configured.has(kid)))
    const counts = zeroCounts()
    let bytes = 0
    for (const session of loaded.sessions) {
      count(counts, session.file)
      bytes += session.bytes
    }
    const storage = { kind: 'postgres', database: target?.where, schema: target?.schema, bytes, files: loaded.sessions.length, archive_bytes: archive.bytes, archive_files: archive.files, failed_loads: loaded.failures.length, archived_needing_keys: needsKeys }
    // The store counted the active rows by key as it loaded them, as a server's does for GET /stats.
    const encryption = encryptionOf(store.encryption())
    const lines = [
      `database            ${where}`,
      ...countLines(counts, archive.sessions, storage),
      `session rows        ${storage.files} (${formatBytes(bytes)})`,
      ...encryptionLines(encryption),
      `unloadable rows     ${storage.failed_loads}`,
      ...Object.entries(needsKeys).map(([kid, n]) => `needs a key         ${n} archived row${n === 1 ? '' : 's'} sealed under key '${kid}', which TASK_ENCRYPTION_KEYS does not hold (served only once it is back)`)
    ]
    return { code: 0, json: { ...counts, archived_sessions: archive.sessions, storage, encryption }, lines }
  })
}

type Encryption = { enabled: false } | ({ enabled: true } & EncryptionStats)

/** GET /stats's `encryption` object. */
function encryptionOf (stats: EncryptionStats | null): Encryption {
  return stats === null ? { enabled: false } : { enabled: true, ...stats }
}

/**
 * Active sessions by the key that sealed them, as the stores count them for GET /stats: every
 * configured kid (0 when nothing is under it, so an operator sees when an old key can go).
 */
function kidStats (keyring: Keyring, kids: ReadonlyMap<string, number>): EncryptionStats {
  const sealed = kidRecord<number>()
  for (const kid of keyring.kids) sealed[kid] = 0
  for (const [kid, n] of kids) if (kid !== '') sealed[kid] = n
  return { active_kid: keyring.activeKid, sealed_sessions: sealed, plaintext_sessions: kids.get('') ?? 0 }
}

function encryptionLines (encryption: Encryption): string[] {
  if (!encryption.enabled) return ['encryption          off (TASK_ENCRYPTION_KEYS not set)']
  const sealed = Object.entries(encryption.sealed_sessions).map(([kid, n]) => `${n} under ${kid}`).join(', ')
  return [`encryption          active key ${encryption.active_kid}; active sessions: ${sealed}, ${encryption.plaintext_sessions} plaintext`]
}

/** Bytes of every regular file under `dir`, without following symlinks. */
async function usedBytes (dir: string): Promise<number> {
  let total = 0
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) total += await usedBytes(path)
    else if (entry.isFile()) total += (await lstat(path).catch(() => ({ size: 0 }))).size
  }
  return total
}

export function formatBytes (bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes
  let unit = -1
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${value.toFixed(1)} ${units[unit] ?? 'TiB'}`
}
