import { CorruptSessionFileError, KeyUnavailableError, ShuttingDownError, UnreadableArchivedError, UnreadableRowError, type TaskvaultError } from '../errors.js'
import { noop } from '../noop.js'
import { SETTING_DEFAULTS } from '../../schemas/options.js'
import type { TarFile } from './tar.js'
import type { SessionStore } from '../store/store.js'
import { ARCHIVED_FILE } from '../store/session-files.js'
import type { SessionFile } from '../session/session.js'
import type { TaskManager } from '../task-manager.js'

/**
 * What the backups taskvault makes have in common, whether the command-line tool writes one
 * from a folder or the server streams one from memory: their names, their layout
 * (`<id>.json` and `archive/<name>.json`, as in the storage folder) and their counts.
 */

/** `tasks_YYYYMMDD.tar.gz`, or `tasks_YYYYMMDD_HHMMSS.tar.gz` when several are made a day (UTC). */
export const BACKUP_FILE = /^tasks_(\d{4})(\d{2})(\d{2})(?:_(\d{2})(\d{2})(\d{2}))?\.tar\.gz$/u

/** The seed's name for a backup made at `now`, with the time of day when `withTime`. */
export function backupFileName (now: Date, withTime = false): string {
  const iso = now.toISOString()
  const day = iso.slice(0, 10).replaceAll('-', '')
  return withTime ? `tasks_${day}_${iso.slice(11, 19).replaceAll(':', '')}.tar.gz` : `tasks_${day}.tar.gz`
}

/** When a backup named by backupFileName was made; null for any other name. */
export function backupTime (name: string): Date | null {
  const match = BACKUP_FILE.exec(name)
  if (match === null) return null
  const [, y, mo, d, h = '00', mi = '00', s = '00'] = match
  const time = new Date(`${y}-${mo}-${d}T${h}:${mi}:${s}Z`)
  // A name such as tasks_20261399.tar.gz is none of ours.
  return Number.isNaN(time.getTime()) || backupFileName(time, match[4] !== undefined) !== name ? null : time
}

export interface BackupCounts {
  active: number
  archived: number
  /** Uncompressed bytes of the session files. */
  bytes: number
}

export const emptyCounts = (): BackupCounts => ({ active: 0, archived: 0, bytes: 0 })

/** Counts a file into `counts` and returns its tar entry. */
export function backupEntry (counts: BackupCounts, rel: string, archived: boolean, data: Buffer, mtime: Date): TarFile {
  counts[archived ? 'archived' : 'active']++
  counts.bytes += data.length
  return { name: rel, data, mtime }
}

/**
 * An archived copy's place in the backup: its file name when it has one (the file store), else
 * `<id>.json` (a PostgreSQL row, named `<id>@<row>`), so that `taskvault restore` takes it.
 */
function archivedEntry (sessionId: string, name: string): string {
  return `archive/${ARCHIVED_FILE.test(name) ? name : `${sessionId}.json`}`
}

/** How often one session is looked for again when it moves between the archive and memory mid-backup. */
const MAX_LOOKUPS = 5

/** A read's outcome, so that one read ahead and never used still has its failure observed. */
type Outcome<T> = { ok: true, value: T } | { ok: false, error: unknown }

const outcome = async <T>(promise: Promise<T>): Promise<Outcome<T>> => promise.then((value) => ({ ok: true as const, value }), (error: unknown) => ({ ok: false as const, error }))

type BackupStore = Pick<SessionStore, 'serialize' | 'readArchivedStored' | 'openArchive' | 'shared'>

/**
 * Every session of a running service, active and archived, each exactly once as its last
 * completed write left it: an active one is taken in its change queue (never half a change),
 * an archived one read from its file (archived files are never rewritten in place). A session
 * that moves between the two while the backup runs is taken from where it moved to; sessions
 * created after the backup started are not in it. An active session is in the form the store
 * writes now (sealed under the active key when keys are set: same content, a new IV); an archived
 * one is its stored bytes exactly. Stops with ShuttingDownError at shutdown.
 *
 * A store shared by several replicas (PostgreSQL) is backed up from its rows, not from this
 * replica's memory: other replicas create, change and archive sessions too. An active row that
 * does not read here (damaged, or sealed under a key this replica lacks) is left out and passed
 * to `leftOut`, as a file store's restore sets such a file aside. Its active sessions are read
 * `readAhead` (TASK_BACKUP_READ_AHEAD) ahead of the one being written: their reads then go to the
 * database together (the store batches concurrent reads into one statement) rather than one round
 * trip each; that bounds the copies held at once besides the one streamed.
 */
export async function * liveSessionFiles (manager: TaskManager, store: BackupStore, counts: BackupCounts, leftOut: (sessionId: string, err: TaskvaultError) => void = noop, readAhead = SETTING_DEFAULTS.TASK_BACKUP_READ_AHEAD): AsyncGenerator<TarFile> {
  const ids = await sessionIds(manager, store)
  const ahead = new Map<string, Promise<Outcome<SessionFile | null>>>()
  for (const [index, sessionId] of ids.entries()) {
    if (manager.shuttingDown) throw new ShuttingDownError('the service is shutting down; the backup was cut short')
    if (store.shared !== undefined) {
      for (const next of ids.slice(index, index + readAhead)) if (!ahead.has(next)) ahead.set(next, outcome(manager.registry.snapshot(next)))
    }
    for (let lookup = 1; lookup <= MAX_LOOKUPS; lookup++) {
      const read = (lookup === 1 ? ahead.get(sessionId) : undefined) ?? outcome(manager.registry.snapshot(sessionId))
      ahead.delete(sessionId)
      const settled = await read
      if (!settled.ok) {
        // Only a shared store reads rows here; the file store's restore set such files aside.
        const err = settled.error instanceof UnreadableRowError ? settled.error.unread : settled.error
        if (!(err instanceof CorruptSessionFileError || err instanceof KeyUnavailableError)) throw settled.error
        leftOut(sessionId, err)
        break
      }
      const active = settled.value
      if (active !== null) {
        const data = await store.serialize(active)
        yield backupEntry(counts, `${sessionId}.json`, false, data, new Date(active.updated_at))
        break
      }
      let archived
      try {
        archived = await manager.archived.read(sessionId)
      } catch (err) {
        // No archived row of it reads: left out, as an unreadable active row is.
        if (err instanceof UnreadableArchivedError) {
          leftOut(sessionId, err)
          break
        }
        // Sealed under a key this server lacks (or whose box does not open): carried as stored.
        if (!(err instanceof KeyUnavailableError)) throw err
        const stored = await store.readArchivedStored(sessionId)
        if (stored === null) continue
        yield backupEntry(counts, archivedEntry(sessionId, stored.name), true, stored.data, stored.updatedAt)
        break
      }
      if (archived !== null) {
        // Read (so a damaged copy is set aside, an older one taken), then carried as stored, byte
        // for byte: under the key that sealed it, in clear when it is plaintext.
        const stored = await store.readArchivedStored(sessionId, archived.name)
        // Removed between the two reads: look again.
        if (stored === null) continue
        yield backupEntry(counts, archivedEntry(sessionId, stored.name), true, stored.data, new Date(archived.file.updated_at))
        break
      }
      // Neither: deleted, or brought back between the two looks (then the next look finds it
      // active); a change still being written (a bring-back) is waited for before that is judged.
      await manager.registry.settle(sessionId)
      if (!manager.archived.has(sessionId) && manager.registry.find(sessionId) === null) break
    }
  }
}

/**
 * The ids to back up, sorted. The file store's are this process's (it is the folder's only
 * writer), those with a change under way included. A shared store's come from its rows: the active ones, the archive read again (as
 * lists do), then the active ones again, so that a session brought back from the archive
 * between the first two looks is still in one of them.
 */
async function sessionIds (manager: TaskManager, store: BackupStore): Promise<string[]> {
  if (store.shared === undefined) return [...new Set([...manager.registry.sessionIdsWithChanges(), ...manager.archivedIds()])].sort()
  const active = async (): Promise<string[]> => (await manager.list(0, Number.MAX_SAFE_INTEGER)).sessions.map((session) => session.session_id)
  const before = await active()
  await store.openArchive({ concurrency: 1 })
  const archived = manager.archivedIds()
  return [...new Set([...before, ...archived, ...await active()])].sort()
}
