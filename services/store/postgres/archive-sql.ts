import type pg from 'pg'
import { documentHead } from './document-times.js'
import { SHOWN_ARCHIVED } from './leases-sql.js'
import type { DerivedColumns, RowVersion } from './sessions-sql.js'

/**
 * The SQL of archived copies: rows with `archived_at` set, any number per session id (see
 * migrations/002), the newest (highest row_id) being the archived session. Parameterised,
 * unqualified names (search_path), like sessions-sql.ts.
 */

/**
 * Archives the session's active row where it lies: `archived_at` set, version bumped. Only
 * the row at `expected` when given. Returns its row id and size; no row when it was not there.
 */
export function archiveSession (sessionId: string, expected: RowVersion | null): pg.QueryConfig {
  return {
    // Never a session some replica runs (or ran and died holding: the sweeper settles it first).
    text: `UPDATE sessions SET archived_at = now(), version = version + 1
      WHERE session_id = $1 AND archived_at IS NULL AND ($2::bigint IS NULL OR (row_id = $2 AND version = $3)) AND owner IS NULL
      RETURNING row_id, bytes`,
    values: [sessionId, expected?.row ?? null, expected?.version ?? null]
  }
}

/**
 * Makes `document` the active session and deletes the archived copy `archivedRow`, in one
 * statement, so both happen or neither: the copy is deleted only when the active row was
 * written (`EXISTS (SELECT 1 FROM revived)`). The active row is inserted (only while the copy is
 * there), or, when the store knows one (`expected`), updated at that version. Returns the active row's id and version
 * and how many copies were deleted (0 when the copy was gone already); no row on a conflict.
 */
export function unarchiveSession (sessionId: string, document: Buffer, c: DerivedColumns, archivedRow: string, expected: RowVersion | null): pg.QueryConfig {
  // A new active row only from a copy still archived, locked first: one another replica deleted
  // meanwhile (or deletes now) is not brought back, and the create starts from the rows again.
  const write = expected === null
    ? `INSERT INTO sessions (session_id, document, sealed_kid, created_at, updated_at, finished_at,
          tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress, has_background_run)
        SELECT $1, $2::json, $3::text, $4::timestamptz, $5::timestamptz, $6::timestamptz, $7::integer, $8::integer, $9::integer,
          $10::integer, $11::integer, $12::boolean FROM source
        ON CONFLICT (session_id) WHERE archived_at IS NULL DO NOTHING
        RETURNING row_id, version`
    : `UPDATE sessions SET document = $2::json, sealed_kid = $3, created_at = $4::timestamptz, updated_at = $5::timestamptz,
          finished_at = $6::timestamptz, tasks_total = $7, tasks_completed = $8, tasks_failed = $9, tasks_pending = $10,
          tasks_in_progress = $11, has_background_run = $12, version = version + 1
        WHERE row_id = $14 AND version = $15 AND archived_at IS NULL
        RETURNING row_id, version`
  return {
    text: `WITH source AS (SELECT row_id FROM sessions WHERE row_id = $13 AND session_id = $1 AND archived_at IS NOT NULL FOR UPDATE),
        revived AS (${write}),
        gone AS (DELETE FROM sessions WHERE row_id = $13 AND session_id = $1 AND archived_at IS NOT NULL
          AND EXISTS (SELECT 1 FROM revived) RETURNING row_id)
      SELECT row_id, version, (SELECT count(*) FROM gone)::int AS removed FROM revived`,
    values: [
      sessionId, document, c.sealedKid, c.createdAt, c.updatedAt, c.finishedAt,
      c.total, c.completed, c.failed, c.pending, c.inProgress, c.hasBackgroundRun,
      archivedRow, ...(expected === null ? [] : [expected.row, expected.version])
    ]
  }
}

/**
 * Undoes an archive of ours whose outcome was unknown: the row it archived is made active again,
 * holding `document`, only if it is archived at the version that archive left (`archivedVersion`;
 * any other means another replica changed it since) and the session has no active row. Returns
 * the row's id and new version; no row when it is not so.
 */
export function reviveArchived (sessionId: string, document: Buffer, c: DerivedColumns, row: string, archivedVersion: string): pg.QueryConfig {
  return {
    text: `UPDATE sessions SET archived_at = NULL, document = $2::json, sealed_kid = $3, created_at = $4::timestamptz, updated_at = $5::timestamptz,
        finished_at = $6::timestamptz, tasks_total = $7, tasks_completed = $8, tasks_failed = $9, tasks_pending = $10,
        tasks_in_progress = $11, has_background_run = $12, version = version + 1
      WHERE row_id = $13 AND session_id = $1 AND version = $14 AND archived_at IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM sessions WHERE session_id = $1 AND archived_at IS NULL)
      RETURNING row_id, version`,
    values: [
      sessionId, document, c.sealedKid, c.createdAt, c.updatedAt, c.finishedAt,
      c.total, c.completed, c.failed, c.pending, c.inProgress, c.hasBackgroundRun, row, archivedVersion
    ]
  }
}

/**
 * Undoes a bring-back of ours whose outcome was unknown and which landed: the active row it made
 * (`expected`, at the version it left) is archived again holding `document`, the copy it came
 * from, only while nobody has changed or leased it since. Returns the row's id and size; no row
 * when it is not so.
 */
export function rearchiveSession (sessionId: string, document: Buffer, c: DerivedColumns, expected: RowVersion): pg.QueryConfig {
  return {
    text: `UPDATE sessions SET archived_at = now(), document = $2::json, sealed_kid = $3, created_at = $4::timestamptz, updated_at = $5::timestamptz,
        finished_at = $6::timestamptz, tasks_total = $7, tasks_completed = $8, tasks_failed = $9, tasks_pending = $10,
        tasks_in_progress = $11, has_background_run = $12, version = version + 1
      WHERE row_id = $13 AND session_id = $1 AND version = $14 AND archived_at IS NULL AND owner IS NULL
      RETURNING row_id, bytes`,
    values: [
      sessionId, document, c.sealedKid, c.createdAt, c.updatedAt, c.finishedAt,
      c.total, c.completed, c.failed, c.pending, c.inProgress, c.hasBackgroundRun, expected.row, expected.version
    ]
  }
}

/** Whether row `row` of the session is archived now (no row: it is gone). */
export function rowArchived (sessionId: string, row: string): pg.QueryConfig {
  return { text: 'SELECT archived_at IS NOT NULL AS archived FROM sessions WHERE row_id = $1 AND session_id = $2', values: [row, sessionId] }
}

export interface ArchivedRow {
  row_id: string
  /** ARCHIVED_ROWS only: the document's first bytes. */
  head?: string
  session_id: string
  bytes: number
  created_at: string
  updated_at: string
  finished_at: Date | null
  tasks_total: number
  tasks_completed: number
  tasks_failed: number
  tasks_pending: number
  tasks_in_progress: number
}

/**
 * What the archive index needs of every archived copy, without the documents: sizes and the
 * summary columns, and the document's first bytes, where its times stand as written (clear in
 * sealed envelopes too), so summaries read the same as the file store's (see document-times.ts).
 */
export const ARCHIVED_ROWS = `SELECT row_id, session_id, bytes, ${documentHead('document')} AS head,
    to_json(created_at)#>>'{}' AS created_at, to_json(updated_at)#>>'{}' AS updated_at,
    finished_at, tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress
  FROM sessions WHERE archived_at IS NOT NULL ORDER BY row_id`

/**
 * Retention's candidates fall in four parts, each read in the order of its own index (migration
 * 008: time, then row), so a pass reads the archived copies past a cutoff and no others:
 * sessions with a failed task or without, finished (by finish time) or not (by last update, as
 * the copy's summary has it).
 */
export interface RetentionPart {
  failed: boolean
  finished: boolean
}

export const RETENTION_PARTS: readonly RetentionPart[] = [
  { failed: false, finished: true },
  { failed: true, finished: true },
  { failed: false, finished: false },
  { failed: true, finished: false }
]

/**
 * A page of one part's candidates: archived sessions that are not active whose newest copy
 * finished (or, unfinished, was last updated) before `cutoff`, in that time's order, after the
 * copy `after` (its time, as this gives it, and row id). The times come from the columns (the
 * documents' instants), in UTC, which retention needs; each copy is judged again when read.
 */
export function retentionCandidates (part: RetentionPart, cutoff: Date, limit: number, after: { at: string, rowId: string } | null): pg.QueryConfig {
  // Each part's conditions are its index's (migration 008), literal, so the planner sees them.
  // The cursor's time as JSON gives it (ISO 8601, numeric offset): `::text` follows DateStyle,
  // whose zone abbreviations do not all read back as the same instant.
  const time = part.finished ? 'a.finished_at' : 'a.updated_at'
  const utc = (column: string): string => `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`
  return {
    text: `SELECT a.row_id, a.session_id, a.bytes, ${utc('a.created_at')} AS created_at, ${utc('a.updated_at')} AS updated_at,
        a.finished_at, a.tasks_total, a.tasks_completed, a.tasks_failed, a.tasks_pending, a.tasks_in_progress, to_json(${time})#>>'{}' AS at
      FROM ${SHOWN_ARCHIVED}
        AND a.finished_at IS ${part.finished ? 'NOT NULL' : 'NULL'} AND a.tasks_failed ${part.failed ? '> 0' : '= 0'}
        AND ${time} < $1 AND ($3::timestamptz IS NULL OR (${time}, a.row_id) > ($3::timestamptz, $4::bigint))
      ORDER BY ${time}, a.row_id LIMIT $2`,
    values: [cutoff, limit, after?.at ?? null, after?.rowId ?? null]
  }
}

/** The newest archived copy of a session older than `before` (a row id; null for the newest of all). */
export function newestArchived (sessionId: string, before: string | null): pg.QueryConfig {
  return {
    text: `SELECT row_id, bytes, document::text AS document FROM sessions
      WHERE session_id = $1 AND archived_at IS NOT NULL AND ($2::bigint IS NULL OR row_id < $2)
      ORDER BY row_id DESC LIMIT 1`,
    values: [sessionId, before]
  }
}

/** Whether a session has an archived copy and no active row (its documents are not read). */
export function isArchived (sessionId: string): pg.QueryConfig {
  return { text: `SELECT EXISTS (SELECT FROM ${SHOWN_ARCHIVED} AND a.session_id = $1) AS archived`, values: [sessionId] }
}

/** Archived copies by the kid they are sealed under (plaintext ones left out): `taskvault stats` lists those whose key is missing. */
export const ARCHIVED_BY_KID = `SELECT sealed_kid AS kid, count(*)::int AS count FROM sessions
  WHERE archived_at IS NOT NULL AND sealed_kid IS NOT NULL AND sealed_kid <> '' GROUP BY sealed_kid ORDER BY sealed_kid`

/** Archived copies sealed under `kid`, newest first, a page of `limit` before row id `before` (null: from the newest). */
export function archivedUnderKid (kid: string, before: string | null, limit: number): pg.QueryConfig {
  return {
    text: `SELECT row_id, session_id, document::text AS document FROM sessions
      WHERE archived_at IS NOT NULL AND sealed_kid = $1 AND ($2::bigint IS NULL OR row_id < $2)
      ORDER BY row_id DESC LIMIT $3`,
    values: [kid, before, limit]
  }
}

/**
 * Deletes every archived copy of a session, or (with `upTo`, a row id) only while that copy is
 * still archived, the newest, and the session not active again; returns their row ids.
 */
export function deleteArchived (sessionId: string, upTo: string | null): pg.QueryConfig {
  return {
    text: `DELETE FROM sessions WHERE session_id = $1 AND archived_at IS NOT NULL
      AND ($2::bigint IS NULL OR (
        EXISTS (SELECT 1 FROM sessions u WHERE u.row_id = $2 AND u.session_id = $1 AND u.archived_at IS NOT NULL)
        AND NOT EXISTS (SELECT 1 FROM sessions n WHERE n.session_id = $1 AND n.archived_at IS NOT NULL AND n.row_id > $2)
        AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = $1 AND s.archived_at IS NULL)))
      RETURNING row_id`,
    values: [sessionId, upTo]
  }
}
