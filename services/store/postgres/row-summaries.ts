/** Sessions as lists and the archive show them, from rows' columns rather than documents. */
import type pg from 'pg'
import type { Static } from '@sinclair/typebox'
import type { Progress as ProgressSchema } from '../../../schemas/api.js'
import type { ArchivedSummary } from '../../archive/archive-index.js'
import type { SharedSummary } from '../store.js'
import type { ArchivedRow } from './archive-sql.js'
import { archivedDocuments, headTimes, wholeTimes, type WrittenTimes } from './document-times.js'

/** Whole documents read at once at most, in bytes, when an archived copy's times must come from all of it (document-times.ts). */
const DOCUMENT_PAGE_BYTES = 32 * 1024 * 1024

/** The store's statement runner: a StorageError naming `operation` when it fails. */
export type Run = <R extends pg.QueryResultRow>(operation: string, config: pg.QueryConfig) => Promise<pg.QueryResult<R>>

/**
 * The times archived copies' documents hold (see document-times.ts), by row: from their first
 * bytes, else from the whole documents, read in one statement and parsed here; a time a
 * document does not hold as text is left out (its column stands).
 */
export async function writtenTimes (run: Run, pageRows: number, operation: string, rows: ReadonlyArray<{ row_id: string, bytes?: number | null, head?: string | null, created_at: Date | string, updated_at: Date | string }>): Promise<Map<string, Partial<WrittenTimes>>> {
  const times = new Map<string, Partial<WrittenTimes>>()
  // A page of documents at a time, by rows and by bytes: a foreign archive's copies could be many, and large.
  const pages: string[][] = []
  let page: string[] = []
  let bytes = 0
  for (const row of rows) {
    const head = headTimes(row.head ?? null, row.created_at, row.updated_at)
    if (head !== null) {
      times.set(row.row_id, head)
      continue
    }
    if (page.length >= pageRows || (page.length > 0 && bytes + (row.bytes ?? 0) > DOCUMENT_PAGE_BYTES)) {
      pages.push(page)
      page = []
      bytes = 0
    }
    page.push(row.row_id)
    bytes += row.bytes ?? 0
  }
  if (page.length > 0) pages.push(page)
  for (const ids of pages) {
    const { rows: documents } = await run<{ row_id: string, document: string }>(operation, archivedDocuments(ids))
    for (const { row_id: rowId, document } of documents) times.set(rowId, wholeTimes(document))
  }
  return times
}

/** A list's page and its total, read at once; archived entries with the times their documents hold. */
export async function listPage (run: Run, pageRows: number, page: pg.QueryConfig, count: string): Promise<{ total: number, sessions: SharedSummary[] }> {
  type SummaryRow = TaskCounts & { session_id: string, created_at: Date, updated_at: Date, running: boolean, archived?: boolean, row_id?: string | null, bytes?: number | null, head?: string | null }
  const [{ rows }, counted] = await Promise.all([
    run<SummaryRow>('listing sessions', page),
    run<{ total: number }>('counting sessions', { text: count })
  ])
  const archived = rows.filter((row): row is SummaryRow & { row_id: string } => row.archived === true && typeof row.row_id === 'string')
  const times = await writtenTimes(run, pageRows, 'listing sessions', archived)
  // An archived row is never running (the statement says so).
  const sessions = rows.map((row): SharedSummary => {
    const written = typeof row.row_id === 'string' ? times.get(row.row_id) : undefined
    return {
      session_id: row.session_id,
      created_at: written?.created_at ?? row.created_at.toISOString(),
      updated_at: written?.updated_at ?? row.updated_at.toISOString(),
      ...progressOfRow(row),
      ...(row.archived === true && { archived: true }),
      running: row.running
    }
  })
  return { total: counted.rows[0]?.total ?? 0, sessions }
}

/** The name of a stored copy in failures and the archive index: `<session id>@<row id>`. */
export function archivedLikeName (sessionId: string, rowId: string): string {
  return `${sessionId}@${rowId}`
}

/** The row id an archivedLikeName names; undefined for any other name. */
export function rowOf (name: string): string | undefined {
  return /^[A-Za-z0-9_-]+@(\d+)$/u.exec(name)?.[1]
}

/** An archived row's summary, as summarize() would make it from the document. */
export function summaryOf (row: ArchivedRow, name: string): ArchivedSummary {
  return {
    session_id: row.session_id,
    created_at: row.created_at,
    updated_at: row.updated_at,
    ...progressOfRow(row),
    finished_at: row.finished_at?.toISOString() ?? row.updated_at,
    file: name
  }
}

export type TaskCounts = Record<'tasks_total' | 'tasks_completed' | 'tasks_failed' | 'tasks_pending' | 'tasks_in_progress', number>

/** A row's progress from its task counts, as progressOf() gives it from the tasks. */
export function progressOfRow (row: TaskCounts): Static<typeof ProgressSchema> {
  const done = row.tasks_completed + row.tasks_failed
  return {
    total: row.tasks_total,
    completed: row.tasks_completed,
    failed: row.tasks_failed,
    pending: row.tasks_pending,
    in_progress: row.tasks_in_progress,
    all_done: row.tasks_total > 0 && done === row.tasks_total,
    percentage: row.tasks_total === 0 ? 0 : Math.round((done / row.tasks_total) * 10000) / 100
  }
}
