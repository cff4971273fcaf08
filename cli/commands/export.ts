import { lstat, mkdir, readFile, readdir } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { CorruptSessionFileError, SealNotOpenedError } from '../../services/errors.js'
import { nodeFs } from '../../services/store/fs-seam.js'
import { clearUpdatedAt } from '../../services/store/store.js'
import { ARCHIVED_FILE, fsyncDir, readSessionDocument, tempNames, writeAndRename } from '../../services/store/session-files.js'
import { nestedStorageFolder, readMarker, writeMarker } from '../../services/store/storage-folder.js'
import { CommandFailedError } from '../args.js'
import { COMMON_HELP, type Command } from '../command.js'
import { DATABASE_HELP, DATABASE_OPTIONS, requiredDatabase, withDatabase } from '../database.js'
import { KidProofs, assertNoCaseTwins, folderSessionFiles, withWriteLock, writing } from '../folder.js'
import { ARCHIVED_COPIES, rowName, rowsPage, type StoredRow } from '../rows.js'

/** Rows read per round trip. */
const PAGE_ROWS = 500

interface LeftOut {
  row: string
  reason: string
}

export const exportCommand: Command = {
  name: 'export',
  summary: 'write the PostgreSQL store\'s sessions into a storage folder, byte for byte',
  help: `Usage: taskvault export --database-url URL DIR [--schema NAME] [--force] [--json]

Writes every session of the PostgreSQL store into DIR in the file store's layout, each file
holding exactly the bytes stored in its row, all read in one snapshot (a server may keep working): active sessions as DIR/<id>.json, archived ones
under DIR/archive/ (the oldest copy of a session as <id>.json, later copies as <id>.1.json,
<id>.2.json, ... in the order they were archived, as the file store names them). Each file is
written durably (temp file, fsync, rename, folder fsync) and DIR is marked as a taskvault
folder, so a server (TASK_STORE=file) or 'taskvault import' can use it as it is.

DIR is created when missing. A DIR that holds anything but is not a taskvault folder is refused
unless --force. In a taskvault folder, files of the same names are replaced and other files are
left as they are, but for DIR/<id>.json of a session now archived only, and any other copy in
DIR/archive/ of a session whose copies are written (at a copy's name that was left out, one
whose updated_at is not that copy's), which would hide its archived copies: removed. Export
into a new folder for an exact copy. Refused while a server holds DIR.
A row that does not read (see 'taskvault validate --database-url') is left out and reported;
a row sealed under a key that is not configured is exported as it is.

Options:
${DATABASE_HELP.replace('work on the PostgreSQL store at URL instead of a folder', 'the PostgreSQL store to export (default: DATABASE_URL)')}
  --force             write into a non-empty folder that is not a taskvault folder

Exit status 1 when a row was left out, or the database or the folder fails.

${COMMON_HELP}`,
  options: { ...DATABASE_OPTIONS, force: { type: 'boolean', default: false } },
  positionals: { min: 1, max: 1, names: 'DIR' },
  async run (args, { settings, keyring }) {
    const target = requiredDatabase(args, settings)
    const dir = resolve(args.positionals[0] as string)
    let active = 0
    let archived = 0
    let hiding = 0
    const leftOut: LeftOut[] = []
    const proofs = new KidProofs('rows', keyring?.activeKid ?? null)
    await withDatabase(target, settings, keyring, true, async (client) => {
      // The database answers first: an export that cannot read it makes no folder.
      await claimFolder(dir, args.values.force === true)
      await withWriteLock(dir, settings, keyring, true, async (store) => {
        // One snapshot: the names and the rows agree, and a server working meanwhile is seen at one instant.
        await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        const names = archivedNames((await client.query<{ row_id: string, session_id: string }>(ARCHIVED_COPIES)).rows)
        if (store.caseless) {
          const active = (await client.query<{ session_id: string }>('SELECT session_id FROM sessions WHERE archived_at IS NULL')).rows.map((row) => `${row.session_id}.json`)
          assertNoCaseTwins(dir, [...active, ...[...names.values()].map((name) => `archive/${name}`)], await folderSessionFiles(dir), 'the database')
        }
        const archiveDir = join(dir, 'archive')
        if (names.size > 0) await realFolder(dir, archiveDir)
        const tempName = tempNames()
        const left = (): string => `${active + archived} sessions were exported before it, each whole; run the export again once storage works`
        /** Sessions with an active row in the snapshot (exported or left out), and those with archived copies. */
        const activeIds = new Set<string>()
        const archivedIds = new Set<string>()
        /** The names of the archived copies left out (unreadable), with each row's time. */
        const unwritten = new Map<string, Date>()
        for (let after = '0'; ;) {
          const { rows } = await client.query<StoredRow>(rowsPage(after, PAGE_ROWS))
          for (const row of rows) {
            // An active row counts even left out (its file stays); an archived copy only once written (it hides nothing otherwise).
            if (!row.archived) activeIds.add(row.session_id)
            const problem = unreadable(row, keyring, proofs)
            if (problem !== null) {
              leftOut.push({ row: rowName(row), reason: problem })
              const name = row.archived ? names.get(row.row_id) : undefined
              if (name !== undefined) unwritten.set(name, row.updated_at)
              continue
            }
            const name = row.archived ? names.get(row.row_id) : `${row.session_id}.json`
            if (name === undefined) throw new CommandFailedError(`${rowName(row)}: not among the archived copies of the same snapshot`)
            const folder = row.archived ? archiveDir : dir
            // The store's temp-file name: an export cut short leaves only files a server removes at start.
            const temp = join(folder, tempName(row.session_id))
            await writing(join(folder, name), left, () => writeAndRename(nodeFs, temp, join(folder, name), Buffer.from(row.document, 'utf8'), undefined, () => store.confirmLock()))
            if (row.archived) {
              archived++
              archivedIds.add(row.session_id)
            } else active++
          }
          const last = rows.at(-1)
          // A page may end early at its bytes: only an empty one is the end.
          if (last === undefined) break
          after = last.row_id
        }
        // An active file an earlier export left, of a session the database now holds archived
        // only, would hide the archived copies just written (a server shows the active file).
        for (const sessionId of archivedIds) {
          if (activeIds.has(sessionId)) continue
          const path = join(dir, `${sessionId}.json`)
          if (await writing(path, left, async () => removed(path))) hiding++
        }
        // So would another copy of such a session an earlier export left in archive/ (the copy of
        // a session since deleted whose id came back, say): the file store reads the copy with
        // the highest number as the session, which may be that stale one.
        if (archivedIds.size > 0) {
          const assigned = new Set(names.values())
          for (const name of await readdir(archiveDir)) {
            const sessionId = ARCHIVED_FILE.exec(name)?.[1]
            if (sessionId === undefined || !archivedIds.has(sessionId)) continue
            const path = join(archiveDir, name)
            // A name given to a copy written now is that copy's. One given to a copy left out
            // (unreadable) keeps the earlier export's file only if that is the same copy, by its time.
            if (assigned.has(name) && !await staleCopy(path, unwritten.get(name))) continue
            if (await writing(path, left, async () => removed(path))) hiding++
          }
        }
        await client.query('COMMIT')
        await writing(dir, left, () => fsyncDir(nodeFs, dir))
        if (names.size > 0) await writing(archiveDir, left, () => fsyncDir(nodeFs, archiveDir))
      })
    })
    const lines = [`Exported ${active} active and ${archived} archived sessions from ${target.where} (schema ${target.schema}) into ${dir}`]
    if (hiding > 0) lines.push(`Removed ${hiding} file${hiding === 1 ? '' : 's'} an earlier export left of sessions now archived (an active file, or another archived copy): ${hiding === 1 ? 'it' : 'they'} would hide the archived copies`)
    for (const { row, reason } of leftOut) lines.push(`❌ ${row}: ${reason} (left out)`)
    // Rows no key of theirs opens are whole: the key is wrong, which the rows' reasons alone do not say.
    const wrongKey = proofs.failure('those rows were left out of the export; export again with the right key')
    if (wrongKey !== null) lines.push(`❌ ${wrongKey.message}`)
    if (leftOut.length > 0) lines.push(`${leftOut.length} rows left out; see 'taskvault validate --database-url'`)
    return {
      code: leftOut.length > 0 ? 1 : 0,
      json: { database: target.where, schema: target.schema, dir, active, archived, removed_hiding: hiding, left_out: leftOut },
      lines
    }
  }
}

/** Removes the file at `path`: true if it was there. */
async function removed (path: string): Promise<boolean> {
  return nodeFs.unlink(path).then(() => true, (err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return false
    throw err
  })
}

/**
 * Whether the file at `path`, named for an archived copy left out that was last changed at
 * `rowTime`, is another copy (its clear `updated_at` differs). A copy written now (no
 * `rowTime`), or a file that does not say, is not stale: nothing is removed in doubt.
 */
async function staleCopy (path: string, rowTime: Date | undefined): Promise<boolean> {
  if (rowTime === undefined) return false
  const text = await readFile(path, 'utf8').catch(() => null)
  const fileTime = text === null ? new Date(0) : clearUpdatedAt(text)
  // Within a millisecond is the same time: the column keeps microseconds (rounded), a Date milliseconds (truncated).
  return fileTime.getTime() !== 0 && Math.abs(fileTime.getTime() - rowTime.getTime()) > 1
}

/**
 * The file name of every archived copy (by row id): a session's oldest copy `<id>.json`, the
 * next ones `<id>.<n>.json`, n counting up. The file store reads the highest number as the
 * newest copy, as the database reads the highest row id, so the order survives the round trip.
 */
function archivedNames (rows: Array<{ row_id: string, session_id: string }>): Map<string, string> {
  const names = new Map<string, string>()
  const seen = new Map<string, number>()
  for (const row of rows) {
    const n = seen.get(row.session_id) ?? 0
    seen.set(row.session_id, n + 1)
    names.set(row.row_id, n === 0 ? `${row.session_id}.json` : `${row.session_id}.${n}.json`)
  }
  return names
}

/**
 * Why a row would not load in a server (left out), or null. A missing key is no reason: the row
 * is whole. `proofs` learns which kids' keys open their rows.
 */
function unreadable (row: StoredRow, keyring: Parameters<typeof readSessionDocument>[3], proofs: KidProofs): string | null {
  const name = rowName(row)
  try {
    proofs.opens(readSessionDocument(name, row.document, row.session_id, keyring).kid)
    return null
  } catch (err) {
    if (err instanceof SealNotOpenedError) proofs.failsUnder(err.kid, row.archived)
    if (err instanceof CorruptSessionFileError) return err.message.replace(`${name}: `, '')
    return null
  }
}

/**
 * A non-empty folder that is not a taskvault folder is refused unless `force`, which marks it
 * (the file store's init would otherwise judge its files). A missing folder is made by the lock.
 */
async function claimFolder (dir: string, force: boolean): Promise<void> {
  const stat = await lstat(dir).catch(() => null)
  if (stat === null) return
  if (!stat.isDirectory()) throw new CommandFailedError(`${dir} is not a folder`)
  if (await readMarker(nodeFs, dir) !== null) return
  const entries = await readdir(dir)
  if (entries.length === 0) return
  if (!force) throw new CommandFailedError(`${dir} is not empty and not a taskvault folder (no .taskvault marker); export into a new or empty folder, or give --force`)
  // Marked only where the store will open it: never another storage folder's archive/ or corrupt/.
  const nested = await nestedStorageFolder(nodeFs, dir)
  if (nested !== null) throw new CommandFailedError(nested)
  await writeMarker(nodeFs, dir, tempNames()('taskvault'))
}

async function realFolder (parent: string, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
  // A symlink here could lead out of the folder.
  if (!(await lstat(dir)).isDirectory()) throw new CommandFailedError(`${dir} is not a real folder (a symlink?); refusing to write into it`)
  await fsyncDir(nodeFs, parent)
}
