import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import { resolve } from 'node:path'
import pLimit from 'p-limit'
import type pg from 'pg'
import { CommandFailedError } from '../../services/errors.js'
import { noop } from '../../services/noop.js'
import { archiveSession } from '../../services/store/postgres/archive-sql.js'
import { ALL_ARCHIVED_KNOWN, deriveColumns, insertSession, updateSession, type DerivedColumns } from '../../services/store/postgres/sessions-sql.js'
import type { SessionFile } from '../../services/session/session.js'
import { kidRecord, type Clear, type Keyring } from '../../services/store/keyring.js'
import { ARCHIVED_FILE, parseSessionFile, sessionText } from '../../services/store/session-files.js'
import { COMMON_HELP, type Command, type CommandContext, type CommandResult } from '../command.js'
import { DATABASE_HELP, DATABASE_OPTIONS, requiredDatabase, withDatabase, type DatabaseTarget } from '../database.js'
import { assertNoWriter, assertUsedFolder, checkStoredFile, folderKeys, ignoredByServer, keyWarnings, listStoredFiles, needKey, sameState, type KeysNeeded, type KidProofs, type StoredFile } from '../folder.js'
import { insertArchived, rowDocuments, rowName, rowsOf, type ExistingRow } from '../rows.js'

/**
 * A session file of the folder that reads, with what the row needs; its bytes are read again
 * when needed (and must not have changed: `digest`), so the import holds a few at a time.
 */
interface FolderFile {
  stored: StoredFile
  rel: string
  sessionId: string
  archived: boolean
  /** An archived copy's place among its session's copies: the number in `<id>.<n>.json`, 0 for `<id>.json`. */
  stamp: number
  bytes: number
  /** SHA-256 of its bytes when first read, hex: as the row's digest (rowsOf) gives a stored text's. */
  digest: string
  updatedAt: string
  /** The row's columns, derived from the file (or its clear fields, when `missingKid`). */
  columns: DerivedColumns
  /** The kid it is sealed under when TASK_ENCRYPTION_KEYS does not hold it: loaded as it is. */
  missingKid: string | null
}

/** A file read again: its bytes, and what it holds when a row must be compared with it (else null). */
interface LoadedFile extends FolderFile {
  data: Buffer
  file: SessionFile | null
}

type Action = 'insert' | 'replace' | 'add-archived' | 'archive-active' | 'archive-row' | 'unchanged'

interface Planned {
  item: LoadedFile
  action: Action
  /** The active row a replace overwrites, or an archive-active archives first, at the version read. */
  row?: ExistingRow
}

/** Sessions judged against their rows together: their files up to this many, or bytes (a session's files are never split). */
const CHUNK_FILES = 256
const CHUNK_BYTES = 8 * 1024 * 1024
/** Files of a chunk read at once. */
const READS_AT_ONCE = 16

interface Conflict {
  file: string
  reason: string
}

export const importCommand: Command = {
  name: 'import',
  summary: 'load a storage folder (active and archive/) into the PostgreSQL store',
  help: `Usage: taskvault import DIR --database-url URL [--schema NAME] [--force] [--json]

Loads every session file of the storage folder DIR (its active <id>.json files and archive/)
into the PostgreSQL store, each row holding exactly the file's bytes. Applies the migrations
first (creating the schema when it is missing).

Every file is read and judged first, as a server's restore would: a file that does not read
stops the import before anything is written (see 'taskvault validate DIR'). Then each file is
compared with the rows of its session, and only then is anything written, in one transaction:
  - a file identical to a row already there is skipped, so running the import again is safe; so
    is one with the same updated_at that holds the same session in another form (sealed since
    under a new key by 'taskvault seal'), and one with the same updated_at and other content, or
    that cannot be compared (sealed under a key TASK_ENCRYPTION_KEYS does not hold), is a conflict;
  - an active file replaces the session's active row when that row is older (updated_at);
  - an archived file is added as an archived copy (oldest first, so the folder's newest copy is
    the newest row); when the folder has no active file of the session, an active row no newer
    than the file is archived first (the session was archived in the folder since an earlier
    import: the folder shows it archived, and so does the database then; a row holding the
    file's very bytes is only archived);
  - a file sealed under a key TASK_ENCRYPTION_KEYS does not hold is loaded as it is, its row's
    times and sealed_kid from its clear fields; its task counts, unknown here, are 0 (an active
    row gets them at its next save, an archived copy keeps 0 in lists). A warning names the kid:
    an active one stops the servers' start until they hold the key;
  - a row of the session that is newer than the file (later updated_at) is a conflict: each is
    reported and nothing is written, unless --force, which writes the folder's files anyway.
A server on the database does not see rows written under it: stop the servers first. The
import refuses a folder a live server holds (whose archive pass would move files while they are
read); it only reads the folder, so a read-only mount or a snapshot imports as it is.

Options:
${DATABASE_HELP.replace('work on the PostgreSQL store at URL instead of a folder', 'the PostgreSQL store to load into (default: DATABASE_URL)')}
  --force             write the folder's files over newer rows

Exit status 1 on a conflict (without --force), a file that does not read, or a failure.

${COMMON_HELP}`,
  options: { ...DATABASE_OPTIONS, force: { type: 'boolean', default: false } },
  positionals: { min: 1, max: 1, names: 'DIR' },
  async run (args, context) {
    const { settings } = context
    const target = requiredDatabase(args, settings)
    const dir = resolve(args.positionals[0] as string)
    const force = args.values.force === true
    // Not beside a live server: its archive pass moves files while they are read, and those would
    // be left out. The folder is only read (a read-only mount or a snapshot imports as it is). An
    // empty folder without a marker (a volume that did not mount) would import as "0 new": refused.
    await assertUsedFolder(dir, 'nothing was written')
    await assertNoWriter(dir, settings)
    return importFolder(dir, target, force, context)
  }
}

/** The import itself, run holding the folder's lock. */
async function importFolder (dir: string, target: DatabaseTarget, force: boolean, { settings, keyring, warn }: CommandContext): Promise<CommandResult> {
  // A key under a kid other than the one the folder first had is refused, as stats and backup refuse it.
  const { proofs } = await folderKeys(dir, keyring)
  const { files, bad } = await checkFolder(dir, keyring, proofs)
  const where = `${target.where} (schema ${target.schema})`
  if (bad.length > 0) {
    const lines = bad.map(({ file, reason }) => `❌ ${file}: ${reason}`)
    // A kid none of whose files opens: the key given under it is the suspect, not the files.
    const wrongKey = proofs.failure('nothing was written')
    lines.push(wrongKey !== null ? wrongKey.message : `Refused: ${bad.length} files of ${dir} do not read; nothing was written (set the bad ones aside with 'taskvault validate ${dir} --fix')`)
    return { code: 1, json: { dir, database: target.where, schema: target.schema, inserted: 0, replaced: 0, archived: 0, archived_rows: 0, unchanged: 0, unreadable: bad, conflicts: [] }, lines }
  }
  return withDatabase(target, settings, keyring, false, async (client) => {
    await client.query('BEGIN')
    try {
      // A chunk of sessions at a time: their files read again, their rows read (and locked), judged
      // and written, then let go. A conflict (without --force) stops the writing, not the judging,
      // and the end rolls everything back: nothing is written.
      const conflicts: Conflict[] = []
      const counts = { inserted: 0, replaced: 0, archived: 0, archived_rows: 0, unchanged: 0 }
      const needsKeys: KeysNeeded = kidRecord()
      const reads = pLimit(READS_AT_ONCE)
      for (const chunk of sessionChunks(files)) {
        const loaded = await Promise.all(chunk.map(async (item) => reads(async () => load(item))))
        const existing = await rowsToJudge(client, loaded, keyring)
        const judged = plan(loaded, existing, keyring)
        conflicts.push(...judged.conflicts)
        if (conflicts.length > 0 && !force) continue
        for (const step of judged.planned) {
          await write(client, step, counts)
          if (step.item.missingKid !== null && step.action !== 'unchanged') needKey(needsKeys, step.item.missingKid, step.item.archived)
        }
      }
      if (conflicts.length > 0 && !force) {
        for (const key of Object.keys(counts) as Array<keyof typeof counts>) counts[key] = 0
        await client.query('ROLLBACK')
        const lines = conflicts.map(({ file, reason }) => `❌ ${file}: ${reason}`)
        lines.push(`Refused: ${conflicts.length} files would replace newer rows in ${where}; nothing was written (give --force to write them anyway)`)
        return { code: 1, json: { dir, database: target.where, schema: target.schema, ...counts, conflicts, forced: false }, lines }
      }
      await client.query('COMMIT')
      for (const line of keyWarnings(needsKeys, where, 'database')) warn(line)
      const lines = [`Imported ${dir} into ${where}: ${counts.inserted} new, ${counts.replaced} replaced, ${counts.archived} archived copies added${counts.archived_rows > 0 ? ` (${counts.archived_rows} active rows archived first)` : ''}, ${counts.unchanged} already identical` +
        (conflicts.length > 0 ? `; ${conflicts.length} newer rows overwritten (--force)` : '')]
      return { code: 0, json: { dir, database: target.where, schema: target.schema, ...counts, conflicts, forced: conflicts.length > 0, needs_keys: needsKeys }, lines }
    } catch (err) {
      await client.query('ROLLBACK').catch(noop)
      throw err
    }
  })
}

/**
 * Every session file of the folder, read and judged as restore does, kept without its bytes;
 * archived copies oldest first, a session's files together.
 */
async function checkFolder (dir: string, keyring: Keyring | null, proofs: KidProofs): Promise<{ files: FolderFile[], bad: Conflict[] }> {
  const files: FolderFile[] = []
  const bad: Conflict[] = []
  for (const stored of await listStoredFiles(dir)) {
    const checked = await checkStoredFile(stored, keyring)
    // Removed since the listing (by hand: no live server holds the folder); or a file the server never reads (it holds no session).
    if (checked.ok === null || ignoredByServer(stored)) continue
    proofs.note(stored, checked)
    const place = { stored, rel: stored.rel, sessionId: stored.sessionId as string, archived: stored.archived, stamp: stampOf(stored) }
    if (checked.ok) {
      files.push({ ...place, bytes: checked.data.length, digest: digestOf(checked.data), updatedAt: checked.file.updated_at, columns: deriveColumns(checked.file, checked.kid), missingKid: null })
    } else if (checked.keyMissing === true) {
      // Whole, only unopened here (the backups and exports of a folder carry such files): loaded as it is.
      files.push({ ...place, bytes: checked.data.length, digest: digestOf(checked.data), updatedAt: checked.clear.updated_at, columns: clearColumns(checked.clear, checked.kid), missingKid: checked.kid })
    } else {
      bad.push({ file: stored.rel, reason: checked.reason })
    }
  }
  files.sort((a, b) => (a.sessionId < b.sessionId ? -1 : a.sessionId > b.sessionId ? 1 : Number(a.archived) - Number(b.archived) || a.stamp - b.stamp))
  return { files, bad }
}

/** The files in chunks of whole sessions, CHUNK_FILES or CHUNK_BYTES each (one session alone may pass them). */
function * sessionChunks (files: FolderFile[]): Generator<FolderFile[]> {
  let chunk: FolderFile[] = []
  let bytes = 0
  for (const [index, item] of files.entries()) {
    chunk.push(item)
    bytes += item.bytes
    const sessionEnds = files[index + 1]?.sessionId !== item.sessionId
    if (sessionEnds && (chunk.length >= CHUNK_FILES || bytes >= CHUNK_BYTES)) {
      yield chunk
      chunk = []
      bytes = 0
    }
  }
  if (chunk.length > 0) yield chunk
}

/**
 * A file's bytes read again, as they were when checked (its content is parsed only where a row
 * must be compared with it: rowsToJudge); one changed since stops the import, nothing written.
 */
async function load (item: FolderFile): Promise<LoadedFile> {
  let data: Buffer
  try {
    const handle = await open(item.stored.path, constants.O_RDONLY | constants.O_NOFOLLOW)
    try {
      data = await handle.readFile()
    } finally {
      await handle.close()
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new CommandFailedError(`${item.rel} ${code === 'ENOENT' ? 'was removed' : `could not be read again (${code ?? (err as Error).message})`} while the import read the folder; nothing was written, run the import again`)
  }
  if (digestOf(data) !== item.digest) throw new CommandFailedError(`${item.rel} changed while the import read the folder; nothing was written, run the import again`)
  return { ...item, data, file: null }
}

/**
 * The rows of the chunk's sessions (locked for the transaction), with the document only of
 * those a file must be compared with in content (the same updated_at, other bytes); those
 * files are parsed then too. A row whose bytes a file holds needs neither.
 */
async function rowsToJudge (client: pg.Client, loaded: LoadedFile[], keyring: Keyring | null): Promise<ExistingRow[]> {
  const rows = (await client.query<ExistingRow>(rowsOf([...new Set(loaded.map((item) => item.sessionId))]))).rows
  const bySession = new Map<string, LoadedFile[]>()
  for (const item of loaded) {
    const mine = bySession.get(item.sessionId)
    if (mine === undefined) bySession.set(item.sessionId, [item])
    else mine.push(item)
  }
  const compared = (row: ExistingRow, item: LoadedFile): boolean => row.digest !== item.digest && row.updated_at.getTime() === Date.parse(item.updatedAt)
  const wanted = rows.filter((row) => bySession.get(row.session_id)?.some((item) => compared(row, item)) === true)
  if (wanted.length > 0) {
    const documents = await client.query<{ row_id: string, document: string }>(rowDocuments(wanted.map((row) => row.row_id)))
    const byRow = new Map(documents.rows.map((row) => [row.row_id, row.document]))
    for (const row of wanted) row.document = byRow.get(row.row_id)
    for (const item of loaded) {
      if (item.missingKid === null && wanted.some((row) => row.session_id === item.sessionId && compared(row, item))) {
        item.file = parseSessionFile(item.rel, sessionText(item.rel, item.data), item.sessionId, keyring)
      }
    }
  }
  return rows
}

function digestOf (data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/** What a row holds, or why it does not open here (sealed under a key not configured, damaged). */
function opened (row: ExistingRow, keyring: Keyring | null): { file: SessionFile } | { why: string } {
  try {
    return { file: parseSessionFile(rowName(row), row.document ?? '', row.session_id, keyring) }
  } catch (err) {
    return { why: (err as Error).message }
  }
}

function stampOf (stored: StoredFile): number {
  if (!stored.archived) return 0
  return Number(ARCHIVED_FILE.exec(stored.rel.slice('archive/'.length))?.[2] ?? 0)
}

/**
 * What each file does to the rows (nothing is written here). A file identical to a row of its
 * kind is unchanged; anything else is written, and is a conflict when a row of the same
 * session (active or archived) is newer than it: writing it would put an older state in front.
 */
function plan (files: LoadedFile[], existing: ExistingRow[], keyring: Keyring | null): { planned: Planned[], conflicts: Conflict[] } {
  const rows = new Map<string, ExistingRow[]>()
  for (const row of existing) rows.set(row.session_id, [...(rows.get(row.session_id) ?? []), row])
  const activeInFolder = new Set(files.filter((item) => !item.archived).map((item) => item.sessionId))
  /** Sessions whose active row an earlier step archives. */
  const archiving = new Set<string>()
  const planned: Planned[] = []
  const conflicts: Conflict[] = []
  for (const item of files) {
    const mine = rows.get(item.sessionId) ?? []
    const active = mine.find((row) => !row.archived)
    const updatedAt = Date.parse(item.updatedAt)
    // The same state: the same bytes, or with the same updated_at the same session in another form
    // (sealed since under a new key by `taskvault seal`); null when that cannot be told here.
    // Judged once per row: a row may be opened (and deciphered) to tell.
    const judged = new Map<ExistingRow, { same: boolean | null, why?: string }>()
    const judge = (row: ExistingRow): { same: boolean | null, why?: string } => {
      let verdict = judged.get(row)
      if (verdict !== undefined) return verdict
      if (row.digest === item.digest) verdict = { same: true }
      else if (row.updated_at.getTime() !== updatedAt || row.document === undefined) verdict = { same: false }
      else {
        // Its document was read for this (rowsToJudge), and the file parsed.
        const data = Buffer.from(row.document, 'utf8')
        const content = opened(row, keyring)
        const why = 'why' in content ? `the database's copy does not open here (${content.why})` : item.file === null ? `the file is sealed under key '${item.missingKid ?? ''}', which TASK_ENCRYPTION_KEYS does not hold` : undefined
        verdict = { same: sameState({ data, file: 'file' in content ? content.file : null }, { data: item.data, file: item.file }), ...(why !== undefined && { why }) }
      }
      judged.set(row, verdict)
      return verdict
    }
    const same = (row: ExistingRow): boolean | null => judge(row).same
    if (item.archived ? mine.some((row) => row.archived && same(row) === true) : active !== undefined && same(active) === true) {
      planned.push({ item, action: 'unchanged' })
      continue
    }
    for (const row of mine) {
      if (row.updated_at.getTime() > updatedAt) {
        conflicts.push({ file: item.rel, reason: `the database's ${rowName(row)} is newer (updated_at ${row.updated_at.toISOString()}, file ${item.updatedAt})` })
      } else if (row.updated_at.getTime() === updatedAt && row.archived === item.archived) {
        // Not the same state (that was skipped above): writing it would put other content under the same stamp.
        conflicts.push({
          file: item.rel,
          reason: same(row) === false
            ? `the database's ${rowName(row)} holds other content under the same updated_at (${item.updatedAt})`
            : `the database's ${rowName(row)} differs from the file under the same updated_at (${item.updatedAt}), and ${judge(row).why ?? 'one of them does not open here'}, so they cannot be compared`
        })
      }
    }
    if (item.archived && active !== undefined && !activeInFolder.has(item.sessionId) && !archiving.has(item.sessionId) && active.updated_at.getTime() <= updatedAt) {
      // Archived in the folder since the row was imported: left active, the row would hide this copy.
      archiving.add(item.sessionId)
      // Archived unchanged: the row, archived in place, is that copy.
      planned.push({ item, action: same(active) === true ? 'archive-row' : 'archive-active', row: active })
      continue
    }
    planned.push(item.archived ? { item, action: 'add-archived' } : active === undefined ? { item, action: 'insert' } : { item, action: 'replace', row: active })
  }
  return { planned, conflicts }
}

/**
 * Writes one planned file: its bytes exactly, as a Buffer (binary format: json's is its text).
 * A write that touches no row means someone changed the session since it was read.
 */
async function write (client: pg.Client, { item, action, row }: Planned, counts: Record<'inserted' | 'replaced' | 'archived' | 'archived_rows' | 'unchanged', number>): Promise<void> {
  if (action === 'unchanged') {
    counts.unchanged++
    return
  }
  if ((action === 'archive-active' || action === 'archive-row') && row !== undefined) {
    if ((await client.query(archiveSession(item.sessionId, { row: row.row_id, version: row.version }))).rowCount !== 1) {
      throw new CommandFailedError(`session '${item.sessionId}' changed in the database during the import (or a server runs it); nothing was written, run the import again`)
    }
    counts.archived_rows++
    if (action === 'archive-row') return
  }
  const derived = item.columns
  const data = item.data
  let result: pg.QueryResult
  try {
    if (action === 'insert') result = await client.query(insertSession(item.sessionId, data, derived, ALL_ARCHIVED_KNOWN))
    else if (action === 'replace' && row !== undefined) result = await client.query(updateSession({ row: row.row_id, version: row.version }, data, derived, null))
    else result = await client.query(insertArchived(item.sessionId, data, derived))
  } catch (err) {
    const code = (err as { code?: unknown }).code
    // Class 22 (data exception): the json type refuses the text as it is, which is never rewritten.
    if (typeof code === 'string' && code.startsWith('22')) throw new CommandFailedError(`${item.rel}: PostgreSQL refuses its bytes (${(err as Error).message}); nothing was written`)
    throw err
  }
  if (result.rowCount !== 1) throw new CommandFailedError(`session '${item.sessionId}' changed in the database during the import; nothing was written, run the import again`)
  if (action === 'insert') counts.inserted++
  else if (action === 'replace') counts.replaced++
  else counts.archived++
}

/**
 * The columns of a file sealed under a missing key: what its clear fields say (times, kid). Its
 * task counts are unknown here, so 0, and it counts as unfinished: an active row is corrected by
 * its next save (which needs the key anyway); an archived copy is never rewritten.
 */
function clearColumns (clear: Clear, kid: string): DerivedColumns {
  return { sealedKid: kid, createdAt: clear.created_at, updatedAt: clear.updated_at, finishedAt: null, total: 0, completed: 0, failed: 0, pending: 0, inProgress: 0, hasBackgroundRun: false }
}
