import type pg from 'pg'
import { finishedAt, progressOf, type SessionFile } from '../../session/session.js'
import { idTakenBy } from './leases-sql.js'

/**
 * The SQL of active session rows (`archived_at IS NULL`; at most one per session id, see
 * migrations/002). Every statement is parameterised and names tables unqualified: the pool
 * sets search_path to TASK_DB_SCHEMA at connection start. Statements on the hot path are
 * named, so each connection prepares them once.
 *
 * Every write names the state it expects, (row_id, version), and bumps the version: a row
 * changed by anyone else since makes the statement touch nothing, which the store reports
 * as a version conflict. Row ids are never reused, so a session deleted and created again
 * is never mistaken for the one that was read.
 */

/** What a session's row holds besides its document: derived from the file on every save. */
export interface DerivedColumns {
  sealedKid: string | null
  createdAt: string
  updatedAt: string
  finishedAt: string | null
  total: number
  completed: number
  failed: number
  pending: number
  inProgress: number
  hasBackgroundRun: boolean
}

/** The columns derived from a session on every write; `sealedKid` is the key its document is sealed under, or null. */
export function deriveColumns (file: SessionFile, sealedKid: string | null): DerivedColumns {
  const progress = progressOf(file.session.tasks)
  return {
    sealedKid,
    createdAt: file.created_at,
    updatedAt: file.updated_at,
    finishedAt: finishedAt(file),
    total: progress.total,
    completed: progress.completed,
    failed: progress.failed,
    pending: progress.pending,
    inProgress: progress.in_progress,
    hasBackgroundRun: file.background_run !== undefined
  }
}

/** The state of a row a write expects to find. */
export interface RowVersion {
  /** bigints travel as strings (node-postgres's default): they pass 2^53 in theory. */
  row: string
  version: string
}

/** The version a successful updateSession leaves. */
export function nextVersion (expected: RowVersion): RowVersion {
  return { row: expected.row, version: String(BigInt(expected.version) + 1n) }
}

const derivedValues = (c: DerivedColumns): unknown[] => [
  c.sealedKid, c.createdAt, c.updatedAt, c.finishedAt,
  c.total, c.completed, c.failed, c.pending, c.inProgress, c.hasBackgroundRun
]

/**
 * Rows that keep a new session from being inserted: an active one (someone created it since we
 * looked, or we never read it: not ours to overwrite), and an archived copy newer than the one
 * this replica knows of (`known`: its row id, or null), as another replica archived it since
 * it looked: the create must bring that copy back, not start again beside it. Two parts, so
 * that each reads its partial index on session_id (an OR of both read the whole table).
 */
const BLOCKING_ROW = (id: string, known: string): string => `SELECT 1 FROM sessions o WHERE o.session_id = ${id} AND o.archived_at IS NULL
  UNION ALL SELECT 1 FROM sessions o WHERE o.session_id = ${id} AND o.archived_at IS NOT NULL AND (${known} IS NULL OR o.row_id > ${known})`

/** `knownArchived` for a writer that means to put a session beside every archived copy it has (`taskvault import`). */
export const ALL_ARCHIVED_KNOWN = '9223372036854775807'

/**
 * A new active row, unless a row blocks it (BLOCKING_ROW): then nothing is written and no row
 * comes back. The document goes as a Buffer, which node-postgres sends in binary format:
 * json's binary form is its text, so the bytes are stored exactly as given.
 */
export function insertSession (sessionId: string, document: Buffer, c: DerivedColumns, knownArchived: string | null): pg.QueryConfig {
  return {
    name: 'taskvault_insert_session',
    // ON CONFLICT still guards a create committed after this statement's snapshot.
    text: `INSERT INTO sessions (session_id, document, sealed_kid, created_at, updated_at, finished_at,
        tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress, has_background_run)
      SELECT $1::text, $2::json, $3::text, $4::timestamptz, $5::timestamptz, $6::timestamptz, $7::integer, $8::integer, $9::integer,
        $10::integer, $11::integer, $12::boolean
      WHERE NOT EXISTS (${BLOCKING_ROW('$1::text', '$13::bigint')})
      ON CONFLICT (session_id) WHERE archived_at IS NULL DO NOTHING
      RETURNING row_id, version`,
    values: [sessionId, document, ...derivedValues(c), knownArchived]
  }
}

/** The write of updateSession: $1 and $2 the row and version expected, $3 the document, $4 to $13 the derived columns. */
const UPDATE_DOCUMENT = `UPDATE sessions SET document = $3::json, sealed_kid = $4, created_at = $5::timestamptz, updated_at = $6::timestamptz,
        finished_at = $7::timestamptz, tasks_total = $8, tasks_completed = $9, tasks_failed = $10, tasks_pending = $11,
        tasks_in_progress = $12, has_background_run = $13, version = version + 1`

/**
 * Replaces the document of the active row at `expected`, bumping its version by one: it
 * changes one row, or none when the row is not at `expected`. Nothing comes back (the new
 * version is expected + 1), which spares every save a row description and a data row.
 */
export function updateSession (expected: RowVersion, document: Buffer, c: DerivedColumns, fence: Fence | null): pg.QueryConfig {
  return {
    name: 'taskvault_update_session',
    text: `${UPDATE_DOCUMENT}
      WHERE row_id = $1 AND version = $2 AND archived_at IS NULL AND ($14::text IS NULL OR (owner = $14 AND epoch = $15 AND lease_until > now()))`,
    values: [expected.row, expected.version, document, ...derivedValues(c), fence?.owner ?? null, fence?.epoch ?? null]
  }
}

/**
 * The lease is `replicaId`'s (SQL of `id` and `instance`): the row names it, and no other process
 * claimed that id since (`instance` being this one's: the lease is then that process's).
 */
const leaseOurs = (id: string, instance: string): string => `(owner = ${id} AND NOT ${idTakenBy(id, instance)})`

/** The row may be written or deleted by that replica: nobody holds a live lease on it, or it does (leaseOurs). */
const leaseFreeFor = (id: string, instance: string): string => `(owner IS NULL OR lease_until < now() OR ${leaseOurs(id, instance)})`

/**
 * updateSession that lands only while no other replica holds a live lease on the session
 * (SaveOptions.leaseFree), by deleteSession's rule. Answers one row: `updated` (0 or 1), and
 * `busy`, the other replica whose live lease refused it (null: the row was at another version, or gone).
 */
export function updateLeaseFreeSession (expected: RowVersion, document: Buffer, c: DerivedColumns, replicaId: string, instance: string | null): pg.QueryConfig {
  return {
    text: `WITH before AS (SELECT owner, lease_until FROM sessions WHERE row_id = $1 AND archived_at IS NULL),
        updated AS (${UPDATE_DOCUMENT}
          WHERE row_id = $1 AND version = $2 AND archived_at IS NULL AND ${leaseFreeFor('$14', '$15::text')} RETURNING 1)
      SELECT (SELECT count(*) FROM updated)::int AS updated,
        (SELECT owner FROM before WHERE lease_until >= now() AND NOT coalesce(${leaseOurs('$14', '$15::text')}, false)) AS busy`,
    values: [expected.row, expected.version, document, ...derivedValues(c), replicaId, instance]
  }
}

/**
 * A save made under an execution lease: it lands only while `owner` still holds the lease at
 * `epoch` and the lease has not run out, so a replica that lost the session (paused, cut off)
 * can never overwrite the work of the one that took it over.
 */
export interface Fence {
  owner: string
  epoch: string
}

/** One session of a batched save: its row as last known (null: not stored yet), its document and columns. */
export interface BatchedSave {
  sessionId: string
  expected: RowVersion | null
  document: Buffer
  columns: DerivedColumns
  fence: Fence | null
  /** For a new session: the row id of its newest archived copy known here (see BLOCKING_ROW). */
  knownArchived: string | null
}

/**
 * Several sessions saved in one statement (one commit): each known row updated at the version
 * it was read (the same rule as updateSession), each new one inserted unless a row blocks it
 * (as insertSession). Rows come back for the sessions written; a session
 * that gets none met a conflict. The values travel as one array per column, so the statement's
 * text is the same for any number of sessions and each connection prepares it once. Documents
 * go as text (node-postgres would send Buffers in an array as bytea) and are cast to json, which
 * keeps the text as given, byte for byte.
 */
export function saveBatch (saves: readonly BatchedSave[]): pg.QueryConfig {
  const column = <V>(pick: (save: BatchedSave) => V): V[] => saves.map(pick)
  return {
    name: 'taskvault_save_batch',
    text: `WITH v AS (
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[],
          $8::timestamptz[], $9::int[], $10::int[], $11::int[], $12::int[], $13::int[], $14::boolean[],
          $15::text[], $16::bigint[], $17::bigint[])
          AS v(session_id, row_id, version, document, sealed_kid, created_at, updated_at, finished_at,
            total, completed, failed, pending, in_progress, background, owner, epoch, known_archived)
      ), updated AS (
        UPDATE sessions s SET document = v.document::json, sealed_kid = v.sealed_kid, created_at = v.created_at,
            updated_at = v.updated_at, finished_at = v.finished_at, tasks_total = v.total, tasks_completed = v.completed,
            tasks_failed = v.failed, tasks_pending = v.pending, tasks_in_progress = v.in_progress,
            has_background_run = v.background, version = s.version + 1
          FROM v WHERE v.row_id IS NOT NULL AND s.row_id = v.row_id AND s.version = v.version AND s.archived_at IS NULL
            AND (v.owner IS NULL OR (s.owner = v.owner AND s.epoch = v.epoch AND s.lease_until > now()))
          RETURNING s.session_id, s.row_id, s.version
      ), inserted AS (
        INSERT INTO sessions (session_id, document, sealed_kid, created_at, updated_at, finished_at,
            tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress, has_background_run)
          SELECT session_id, document::json, sealed_kid, created_at, updated_at, finished_at,
            total, completed, failed, pending, in_progress, background FROM v WHERE v.row_id IS NULL
            AND NOT EXISTS (${BLOCKING_ROW('v.session_id', 'v.known_archived')})
          ON CONFLICT (session_id) WHERE archived_at IS NULL DO NOTHING
          RETURNING session_id, row_id, version
      )
      SELECT session_id, row_id, version FROM updated UNION ALL SELECT session_id, row_id, version FROM inserted`,
    values: [
      column((s) => s.sessionId),
      column((s) => s.expected?.row ?? null),
      column((s) => s.expected?.version ?? null),
      column((s) => s.document.toString('utf8')),
      column((s) => s.columns.sealedKid),
      column((s) => s.columns.createdAt),
      column((s) => s.columns.updatedAt),
      column((s) => s.columns.finishedAt),
      column((s) => s.columns.total),
      column((s) => s.columns.completed),
      column((s) => s.columns.failed),
      column((s) => s.columns.pending),
      column((s) => s.columns.inProgress),
      column((s) => s.columns.hasBackgroundRun),
      column((s) => s.fence?.owner ?? null),
      column((s) => s.fence?.epoch ?? null),
      column((s) => s.knownArchived)
    ]
  }
}

/**
 * Deletes the session's active row: the one at `expected` when given, else whatever is there.
 * Answers one row: `found`, the version of the active row before (null: there was none), and
 * `deleted`. A row found but not deleted was at another version, or leased by another replica
 * (`replicaId` may delete what it holds itself, or what nobody holds any more; not once another
 * process claimed that id, `instance` being this one's: the lease is then that process's). When there is no
 * active row and the row at `expected` was archived since (by another replica), the session is
 * deleted from the archive instead, as a delete of an archived session is: its copies up to that
 * row, unless a newer one exists (`archived`: how many). When the active row goes, so do the
 * session's archived copies (an import may leave some beside it, which this replica's index
 * may not know): a deleted session leaves nothing to come back.
 */
export function deleteSession (sessionId: string, expected: RowVersion | null, replicaId: string | null, instance: string | null): pg.QueryConfig {
  const ours = leaseOurs('$4', '$5::text')
  return {
    text: `WITH before AS (SELECT row_id, version, owner, lease_until FROM sessions WHERE session_id = $1 AND archived_at IS NULL),
        gone AS (DELETE FROM sessions WHERE session_id = $1 AND archived_at IS NULL
          AND ($2::bigint IS NULL OR (row_id = $2 AND version = $3))
          AND ${leaseFreeFor('$4', '$5::text')} RETURNING row_id),
        archived AS (DELETE FROM sessions WHERE session_id = $1 AND archived_at IS NOT NULL AND $2::bigint IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM before)
          AND EXISTS (SELECT 1 FROM sessions r WHERE r.session_id = $1 AND r.row_id = $2 AND r.archived_at IS NOT NULL)
          AND NOT EXISTS (SELECT 1 FROM sessions n WHERE n.session_id = $1 AND n.archived_at IS NOT NULL AND n.row_id > $2)
          RETURNING row_id),
        beside AS (DELETE FROM sessions WHERE session_id = $1 AND archived_at IS NOT NULL AND EXISTS (SELECT 1 FROM gone) RETURNING row_id)
      SELECT (SELECT version FROM before) AS found, (SELECT count(*) FROM gone)::int AS deleted,
        (SELECT owner FROM before WHERE lease_until >= now() AND NOT coalesce(${ours}, false)) AS busy,
        (SELECT count(*) FROM archived)::int + (SELECT count(*) FROM beside)::int AS archived`,
    values: [sessionId, expected?.row ?? null, expected?.version ?? null, replicaId, instance]
  }
}

/** The active row of a session as it is now (after an uncertain write, to tell whether it landed). */
export function currentSession (sessionId: string): pg.QueryConfig {
  return {
    text: 'SELECT row_id, version, document::text AS document FROM sessions WHERE session_id = $1 AND archived_at IS NULL',
    values: [sessionId]
  }
}

/** The columns a read checks against the row's document (see columnsHold): what `import` without the key leaves wrong. */
export interface StoredColumns {
  tasks_total: number
  tasks_in_progress: number
  has_background_run: boolean
  finished: boolean
  sealed_kid: string | null
}

/** StoredColumns in a SELECT list. */
export const STORED_COLUMNS = 'tasks_total, tasks_in_progress, has_background_run, finished_at IS NOT NULL AS finished, sealed_kid'

/** Whether a row's columns are those its document gives. */
export function columnsHold (row: StoredColumns, c: DerivedColumns): boolean {
  return row.tasks_total === c.total && row.tasks_in_progress === c.inProgress &&
    row.has_background_run === c.hasBackgroundRun && row.finished === (c.finishedAt !== null) && row.sealed_kid === c.sealedKid
}

export interface ActiveRow extends StoredColumns {
  row_id: string
  session_id: string
  version: string
  sealed_kid: string | null
  bytes: number
  /** As stored: `document::text`, or node-postgres would JSON.parse it. */
  document: string
}

/**
 * Rows' columns set from their documents, each if the row is still at its version, in one
 * statement. The version is kept: the document does not change. For rows whose columns are not
 * their document's: those `taskvault import` wrote without the key they are sealed under
 * (counts of 0, no finish, no run).
 */
export function correctColumns (rows: ReadonlyArray<{ expected: RowVersion, columns: DerivedColumns }>): pg.QueryConfig {
  const column = <T>(pick: (row: { expected: RowVersion, columns: DerivedColumns }) => T): T[] => rows.map(pick)
  return {
    text: `UPDATE sessions s SET sealed_kid = v.sealed_kid, created_at = v.created_at, updated_at = v.updated_at, finished_at = v.finished_at,
        tasks_total = v.total, tasks_completed = v.completed, tasks_failed = v.failed, tasks_pending = v.pending,
        tasks_in_progress = v.in_progress, has_background_run = v.has_run
      FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[],
        $7::int[], $8::int[], $9::int[], $10::int[], $11::int[], $12::boolean[])
        AS v(row_id, version, sealed_kid, created_at, updated_at, finished_at, total, completed, failed, pending, in_progress, has_run)
      WHERE s.row_id = v.row_id AND s.version = v.version AND s.archived_at IS NULL`,
    values: [
      column((row) => row.expected.row), column((row) => row.expected.version), column((row) => row.columns.sealedKid),
      column((row) => row.columns.createdAt), column((row) => row.columns.updatedAt), column((row) => row.columns.finishedAt),
      column((row) => row.columns.total), column((row) => row.columns.completed), column((row) => row.columns.failed),
      column((row) => row.columns.pending), column((row) => row.columns.inProgress), column((row) => row.columns.hasBackgroundRun)
    ]
  }
}

/**
 * One page of the active rows, by session id after `after` (keyset pagination on the unique
 * index of active ids: each page is an index range scan, however many rows there are).
 */
export function activePage (after: string, limit: number): pg.QueryConfig {
  return {
    name: 'taskvault_active_page',
    text: `SELECT row_id, session_id, version, bytes, ${STORED_COLUMNS}, document::text AS document FROM sessions
      WHERE archived_at IS NULL AND session_id > $1 ORDER BY session_id LIMIT $2`,
    values: [after, limit]
  }
}

/** Turns synchronous_commit on for this connection when the role, database or server turned it off; leaves stronger settings alone. */
export const SYNCHRONOUS_COMMIT_ON = "SELECT set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off'"

/** What init checks: durability of commits, and that unqualified names reach our schema. */
export const CONNECTION_SETTINGS = "SELECT current_setting('synchronous_commit') AS synchronous_commit, current_schema() AS schema"

/**
 * The counts /stats serves, from the rows (active ones; archived ones separately): one scan of
 * the table's narrow columns, never of the documents, grouped by the key a row is sealed under
 * so that `kids` counts the active rows per kid ('' for plaintext) in the same pass. `bytes` is
 * the table's size on disk.
 */
export const ROW_TOTALS = `WITH by_kid AS (SELECT coalesce(sealed_kid, '') AS kid,
      count(*) FILTER (WHERE archived_at IS NULL) AS total_sessions,
      count(*) FILTER (WHERE archived_at IS NULL AND finished_at IS NULL) AS active_sessions,
      count(*) FILTER (WHERE archived_at IS NULL AND finished_at IS NOT NULL) AS completed_sessions,
      sum(tasks_total) FILTER (WHERE archived_at IS NULL) AS total_tasks,
      sum(tasks_completed) FILTER (WHERE archived_at IS NULL) AS completed_tasks,
      sum(tasks_failed) FILTER (WHERE archived_at IS NULL) AS failed_tasks,
      sum(tasks_pending) FILTER (WHERE archived_at IS NULL) AS pending_tasks,
      sum(tasks_in_progress) FILTER (WHERE archived_at IS NULL) AS in_progress_tasks,
      sum(bytes) FILTER (WHERE archived_at IS NULL) AS document_bytes,
      count(*) FILTER (WHERE archived_at IS NOT NULL) AS archived_rows,
      sum(bytes) FILTER (WHERE archived_at IS NOT NULL) AS archive_bytes
    FROM sessions GROUP BY 1)
  SELECT
    coalesce(sum(total_sessions), 0)::int AS total_sessions,
    coalesce(sum(active_sessions), 0)::int AS active_sessions,
    coalesce(sum(completed_sessions), 0)::int AS completed_sessions,
    coalesce(sum(total_tasks), 0)::bigint AS total_tasks,
    coalesce(sum(completed_tasks), 0)::bigint AS completed_tasks,
    coalesce(sum(failed_tasks), 0)::bigint AS failed_tasks,
    coalesce(sum(pending_tasks), 0)::bigint AS pending_tasks,
    coalesce(sum(in_progress_tasks), 0)::bigint AS in_progress_tasks,
    coalesce(sum(document_bytes), 0)::bigint AS document_bytes,
    coalesce(sum(archived_rows), 0)::int AS archived_rows,
    coalesce(sum(archive_bytes), 0)::bigint AS archive_bytes,
    coalesce(json_object_agg(kid, total_sessions) FILTER (WHERE total_sessions > 0), '{}')::text AS kids,
    pg_total_relation_size('sessions')::bigint AS table_bytes
  FROM by_kid`

/**
 * A round trip that proves the database answers (readiness), and that the sessions table can be
 * read: planning it takes the table's share lock, so a table another session holds locked (a
 * `LOCK TABLE`, an `ALTER TABLE` waiting on a long transaction) answers with the statement
 * timeout, as every request would. It reads no row.
 */
export const PING = 'SELECT 1 FROM sessions WHERE false'

/** The encryption key checks of these kids (migration 006). */
export function keyChecksOf (kids: string[]): pg.QueryConfig {
  return { text: 'SELECT kid, key_check FROM key_checks WHERE kid = ANY($1::text[])', values: [kids] }
}

/** Adds key checks for kids that have none; a kid another replica added meanwhile keeps its own. */
export function addKeyChecks (checks: Record<string, string>): pg.QueryConfig {
  return {
    text: 'INSERT INTO key_checks (kid, key_check) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (kid) DO NOTHING',
    values: [Object.keys(checks), Object.values(checks)]
  }
}
