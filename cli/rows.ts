import type pg from 'pg'
import { STORED_COLUMNS, type DerivedColumns, type StoredColumns } from '../services/store/postgres/sessions-sql.js'

/**
 * The SQL the command-line tool runs on the PostgreSQL store's rows itself, where the store
 * contract has no method for it: reading every stored copy as it is (validate, export) and
 * writing a file's exact bytes as an archived copy (import). Parameterised, unqualified names
 * (the connection's search_path is the schema), like services/store/postgres/*-sql.ts.
 */

export interface StoredRow {
  row_id: string
  session_id: string
  archived: boolean
  /** The exact text stored (`document::text`). */
  document: string
  /** The row's `updated_at` column, readable when its document is not. */
  updated_at: Date
}

/**
 * The rows of `filter` after row id `after`, up to `limit`, while the documents before each stay
 * under `maxBytes` (so at least one): rows of megabytes are not read hundreds at a time. `columns`
 * are read from each row (as `s`); `values` fill the filter's $4 on.
 */
function boundedPage (columns: string, filter: string, after: string, limit: number, maxBytes: number, values: unknown[] = []): pg.QueryConfig {
  return {
    text: `SELECT ${columns}
      FROM (SELECT row_id, sum(bytes) OVER (ORDER BY row_id) - bytes AS before
        FROM (SELECT row_id, bytes FROM sessions WHERE row_id > $1 AND ${filter} ORDER BY row_id LIMIT $2) AS next) AS page
      JOIN sessions s USING (row_id) WHERE page.before < $3 ORDER BY s.row_id`,
    values: [after, limit, maxBytes, ...values]
  }
}

/** Every stored copy, active and archived, a page at a time by row id (after `after`), bounded in rows and in bytes (boundedPage). */
export function rowsPage (after: string, limit: number, maxBytes = PAGE_BYTES): pg.QueryConfig {
  return boundedPage('s.row_id, s.session_id, s.archived_at IS NOT NULL AS archived, s.document::text AS document, s.updated_at', 'true', after, limit, maxBytes)
}

/** The documents' bytes a page holds at most, past its first row. */
export const PAGE_BYTES = 16 * 1024 * 1024

/** Every archived copy's id and session, without documents: the order of each session's copies. */
export const ARCHIVED_COPIES = 'SELECT row_id, session_id FROM sessions WHERE archived_at IS NOT NULL ORDER BY session_id, row_id'

export interface ExistingRow {
  row_id: string
  session_id: string
  version: string
  archived: boolean
  updated_at: Date
  /** SHA-256 of the stored text's UTF-8 bytes, hex: compared with a file's without reading the row (sha256, not md5, which a FIPS server refuses). */
  digest: string
  /** The stored text, read only when a file must be compared with it in content (rowDocuments). */
  document?: string
}

/** The rows of these sessions, oldest copy first; FOR UPDATE: an import holds them until it commits. */
export function rowsOf (sessionIds: string[]): pg.QueryConfig {
  return {
    text: `SELECT row_id, session_id, version, archived_at IS NOT NULL AS archived, updated_at,
      encode(sha256(convert_to(document::text, 'UTF8')), 'hex') AS digest
      FROM sessions WHERE session_id = ANY($1::text[]) ORDER BY session_id, row_id FOR UPDATE`,
    values: [sessionIds]
  }
}

/** The documents of rows by id (`document::text`: the exact text stored). */
export function rowDocuments (rowIds: string[]): pg.QueryConfig {
  return { text: 'SELECT row_id, document::text AS document FROM sessions WHERE row_id = ANY($1::bigint[])', values: [rowIds] }
}

/**
 * A new archived copy holding `document` exactly (sent as a Buffer: binary format, which for
 * json is its text as it is). Archived now: the file store keeps no archive time either.
 */
export function insertArchived (sessionId: string, document: Buffer, c: DerivedColumns): pg.QueryConfig {
  return {
    text: `INSERT INTO sessions (session_id, document, sealed_kid, created_at, updated_at, finished_at,
        tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress, has_background_run, archived_at)
      VALUES ($1, $2::json, $3, $4::timestamptz, $5::timestamptz, $6::timestamptz, $7, $8, $9, $10, $11, $12, now())
      RETURNING row_id`,
    values: [sessionId, document, c.sealedKid, c.createdAt, c.updatedAt, c.finishedAt, c.total, c.completed, c.failed, c.pending, c.inProgress, c.hasBackgroundRun]
  }
}

/** A row's name in reports: `<id>@<row>`, `archive/<id>@<row>` for an archived copy (the store's own names). */
export function rowName (row: { session_id: string, row_id: string, archived: boolean }): string {
  return `${row.archived ? 'archive/' : ''}${row.session_id}@${row.row_id}`
}

export interface UnsealedRow extends StoredRow, StoredColumns {
  version: string
}

/**
 * Stored copies, active and archived, not sealed under `kid` (by the sealed_kid column every
 * write keeps), a page at a time by row id (boundedPage): what `seal` has left to do, so a rerun after an
 * interruption only reads the rest. With them, copies sealed under it with no task counted:
 * what `import` wrote without the key (see resealRow), or sessions of no task, which seal
 * passes over once it has read them.
 */
export function unsealedPage (after: string, limit: number, kid: string, maxBytes = PAGE_BYTES): pg.QueryConfig {
  return boundedPage(`s.row_id, s.session_id, s.version, s.archived_at IS NOT NULL AS archived, ${STORED_COLUMNS}, s.document::text AS document`,
    '(sealed_kid IS DISTINCT FROM $4 OR tasks_total = 0)', after, limit, maxBytes, [kid])
}

/**
 * The same session re-stored sealed under `kid`, if the row is still at `version`. The version
 * is left as it is on purpose: the content does not change, only its form, so a server that read
 * the row before goes on saving it without a conflict (its save, newer, replaces this one). The
 * task counts, finish time and run are set from the content: a copy imported under a key that
 * was missing then has 0s, no finish and no run.
 */
export function resealRow (rowId: string, version: string, document: Buffer, c: DerivedColumns): pg.QueryConfig {
  return {
    text: `UPDATE sessions SET document = $3::json, sealed_kid = $4, tasks_total = $5, tasks_completed = $6, tasks_failed = $7,
        tasks_pending = $8, tasks_in_progress = $9, finished_at = $10::timestamptz, has_background_run = $11
      WHERE row_id = $1 AND version = $2 RETURNING row_id`,
    values: [rowId, version, document, c.sealedKid, c.total, c.completed, c.failed, c.pending, c.inProgress, c.finishedAt, c.hasBackgroundRun]
  }
}

/** Stored copies sealed under `kid` (by the sealed_kid column), a page at a time by row id (boundedPage). */
export function sealedPage (after: string, limit: number, kid: string, maxBytes = PAGE_BYTES): pg.QueryConfig {
  return boundedPage('s.row_id, s.session_id, s.archived_at IS NOT NULL AS archived, s.document::text AS document', 'sealed_kid = $4', after, limit, maxBytes, [kid])
}

/** How many stored copies are sealed under `kid`, and how many are not (plaintext or another key). */
export function sealState (kid: string): pg.QueryConfig {
  return {
    text: 'SELECT count(*) FILTER (WHERE sealed_kid = $1)::int AS under_key, count(*) FILTER (WHERE sealed_kid IS DISTINCT FROM $1)::int AS other FROM sessions',
    values: [kid]
  }
}
