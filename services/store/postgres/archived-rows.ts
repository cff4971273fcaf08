/** The PostgreSQL store's archive: archived rows, and the index of their copies this process keeps. */
import type pg from 'pg'
import type { SessionFile } from '../../../schemas/session.js'
import { ArchiveIndex, summarize, type ArchiveTotals, type ArchivedSummary } from '../../archive/archive-index.js'
import { CorruptSessionFileError, KeyUnavailableError, SealNotOpenedError, StaleArchivedCopyError } from '../../errors.js'
import { noop } from '../../noop.js'
import type { Keyring } from '../keyring.js'
import { readSessionDocument } from '../session-files.js'
import { clearUpdatedAt, type ArchivedSession, type LoadFailure, type StoredCopy } from '../store.js'
import { ARCHIVED_BY_KID, ARCHIVED_ROWS, deleteArchived, newestArchived, type ArchivedRow } from './archive-sql.js'
import { archivedLikeName, rowOf, summaryOf, writtenTimes, type Run } from './row-summaries.js'

export interface ArchivedRowsOptions {
  run: Run
  keyring: Keyring | null
  /** Rows read at once at most (TASK_DATABASE_PAGE_ROWS). */
  pageRows: number
  /** Kids some row opened under at the restore: a copy that does not open under one of them is damaged, not the key wrong. */
  provenKids: ReadonlySet<string>
}

/**
 * Reads and deletes archived rows, keeping the index (every copy's name, size and summary)
 * in step with what the rows hold. Session ids are checked by the store before they come here.
 */
export class ArchivedRows {
  private readonly index = new ArchiveIndex()
  /** Newest copies sealed under a key this process lacks: reported once by list(), then left out. */
  private readonly unopened = new Set<string>()

  constructor (private readonly options: ArchivedRowsOptions) {}

  /** Reads every archived row's summary columns into the index (at boot). */
  async open (): Promise<ArchiveTotals> {
    const { run, pageRows } = this.options
    const { rows } = await run<ArchivedRow>('reading the archive', { text: ARCHIVED_ROWS })
    const times = await writtenTimes(run, pageRows, 'reading the archive', rows)
    for (const row of rows) Object.assign(row, times.get(row.row_id))
    this.index.clear()
    // Oldest first: each copy added is the newest of its session so far and takes the summary.
    for (const row of rows) {
      const name = archivedLikeName(row.session_id, row.row_id)
      this.index.add(row.session_id, { name, bytes: row.bytes, stamp: Number(row.row_id) }, summaryOf(row, name))
    }
    return { ...this.index.stats() }
  }

  newestName (sessionId: string): string | null {
    return this.index.newest(sessionId)?.name ?? null
  }

  /** The row id of the newest archived copy of the session this replica knows of, or null. */
  newestRow (sessionId: string): string | null {
    const stamp = this.index.newest(sessionId)?.stamp
    return stamp === undefined ? null : String(stamp)
  }

  ids (): string[] {
    return this.index.ids()
  }

  totals (): Readonly<ArchiveTotals> {
    return this.index.stats()
  }

  /** Archived copies per kid they are sealed under (plaintext ones left out), from the rows' clear column. */
  async byKid (): Promise<Map<string, number>> {
    const { rows } = await this.options.run<{ kid: string, count: number }>('counting archived copies by key', { text: ARCHIVED_BY_KID })
    return new Map(rows.map((row) => [row.kid, row.count]))
  }

  /** A copy of ours landed as row `row`, holding `file`. */
  added (sessionId: string, row: { row_id: string, bytes: number }, file: Readonly<SessionFile>): void {
    const name = archivedLikeName(sessionId, row.row_id)
    this.index.add(sessionId, { name, bytes: row.bytes, stamp: Number(row.row_id) }, summarize(file, name))
  }

  /** The copy named is no longer archived (brought back, or deleted). */
  removed (sessionId: string, name: string): void {
    this.index.remove(sessionId, name)
  }

  /** Drops the index's copies of a session newer than row `stamp` (all of them for -1): the rows say they are gone. */
  dropAbove (sessionId: string, stamp: number): void {
    for (const copy of [...this.index.files(sessionId)]) if (copy.stamp > stamp) this.index.remove(sessionId, copy.name)
  }

  /**
   * The newest archived copy that reads, from the rows (not the index, which is corrected on
   * the way: copies deleted elsewhere are dropped, one archived elsewhere is added). A copy
   * that does not read is reported and skipped, never deleted; the next older one is tried.
   */
  async read (sessionId: string): Promise<{ session: ArchivedSession | null, failures: LoadFailure[] }> {
    const failures: LoadFailure[] = []
    let before: string | null = null
    for (;;) {
      const result: pg.QueryResult<{ row_id: string, bytes: number, document: string }> =
        await this.options.run(`reading archived session '${sessionId}'`, newestArchived(sessionId, before))
      const row = result.rows[0]
      this.dropAbove(sessionId, row === undefined ? -1 : Number(row.row_id))
      if (row === undefined) return { session: null, failures }
      const name = archivedLikeName(sessionId, row.row_id)
      try {
        const { file } = readSessionDocument(name, row.document, sessionId, this.options.keyring)
        const summary = summarize(file, name)
        if (this.index.newest(sessionId)?.name === name) this.index.setSummary(sessionId, name, summary)
        else this.index.add(sessionId, { name, bytes: row.bytes, stamp: Number(row.row_id) }, summary)
        return { session: { file, bytes: row.bytes, name }, failures }
      } catch (err) {
        if (!(err instanceof CorruptSessionFileError)) throw err
        // One row that does not open, under a kid no row opened under at the restore: the key is
        // more likely wrong than the row damaged, so the session answers so (and a backup carries it).
        if (err instanceof SealNotOpenedError && !this.options.provenKids.has(err.kid)) throw err.keySuspected(name)
        failures.push({ name, reason: err.message, movedTo: null })
        before = row.row_id
      }
    }
  }

  /** A copy as stored (for a backup): the one `name` says, or the newest; null when it is gone. */
  async readStored (sessionId: string, name?: string): Promise<StoredCopy | null> {
    // A copy read() read is `<id>@<row>`: the row, or the newest copy older than the next row id.
    const rowId = name === undefined ? null : rowOf(name)
    if (rowId === undefined) return null
    const { rows } = await this.options.run<{ row_id: string, document: string }>(`reading archived session '${sessionId}'`, newestArchived(sessionId, rowId === null ? null : String(BigInt(rowId) + 1n)))
    const row = rows[0]
    if (row === undefined || (rowId !== null && row.row_id !== rowId)) return null
    return { name: archivedLikeName(sessionId, row.row_id), data: Buffer.from(row.document, 'utf8'), updatedAt: clearUpdatedAt(row.document) }
  }

  /**
   * Every archived session's summary: the index's, after reading the sessions whose newest copy
   * has none yet. One sealed under a key this process lacks is reported once and left out: it
   * must not fail every list and retention pass.
   */
  async list (): Promise<{ sessions: readonly ArchivedSummary[], failures: LoadFailure[] }> {
    const failures: LoadFailure[] = []
    for (const sessionId of this.index.unsummarized()) {
      const name = this.index.newest(sessionId)?.name ?? ''
      if (this.unopened.has(name)) continue
      try {
        failures.push(...(await this.read(sessionId)).failures)
      } catch (err) {
        if (!(err instanceof KeyUnavailableError)) throw err
        this.unopened.add(name)
        failures.push({ name, reason: err.message, movedTo: null, kid: err.kid })
      }
    }
    return { sessions: this.index.summaries(), failures }
  }

  /** Deletes the session's archived copies (up to the one named), returning their row ids. */
  async remove (sessionId: string, upTo?: string): Promise<string[]> {
    const upToRow = upTo === undefined ? null : rowOf(upTo)
    if (upToRow === undefined) throw new StaleArchivedCopyError(sessionId)
    const { rows } = await this.options.run<{ row_id: string }>(`deleting archived session '${sessionId}'`, deleteArchived(sessionId, upToRow))
    // Nothing deleted up to that copy: another replica archived the session again since it was
    // judged (its new copy stays), or brought it back or deleted it. Either way, not this pass's;
    // the index learns what the rows hold now.
    if (rows.length === 0 && upToRow !== null) {
      await this.read(sessionId).catch(noop)
      throw new StaleArchivedCopyError(sessionId)
    }
    this.dropAbove(sessionId, -1)
    return rows.map((row) => row.row_id)
  }
}
