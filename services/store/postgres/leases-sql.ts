import type pg from 'pg'
import { LOG_GAP } from '../store.js'
import { documentHead } from './document-times.js'

/**
 * The SQL of execution leases (issue 14): which replica runs a session (`owner`), until when
 * (`lease_until`, set by the database's clock), and an `epoch` that grows on every claim so a
 * save carrying an older one is refused (fencing; see fence in sessions-sql.ts). Unqualified
 * names (search_path), like the other *-sql.ts files.
 */

const LEASE_UNTIL = 'now() + make_interval(secs => $LEASE::float8 / 1000)'
const until = (param: string): string => LEASE_UNTIL.replace('$LEASE', param)

/** A heartbeat's time as a whole number of microseconds, which text of a timestamp is not under every DateStyle: a beat read is matched exactly. */
export const BEAT = '(extract(epoch FROM seen_at) * 1000000)::bigint'

/**
 * Takes the session's lease in one statement: free, run out, or already this replica's (a
 * restarted process keeping its TASK_REPLICA_ID, or a run taking over from this replica's
 * sweep). A cancel asked before belongs to an earlier run and is cleared, unless this replica
 * holds the lease live already (then it is asked of this very run, and comes back in
 * `cancel_requested`). `epoch` is null when the lease is held elsewhere (`owner` names the
 * holder); `found` is false when there is no active row.
 */
export function acquireLease (sessionId: string, replicaId: string, leaseMs: number, instance: string): pg.QueryConfig {
  return {
    name: 'taskvault_acquire_lease',
    // Never while another process has claimed the replica id: this one would take that one's
    // live lease (the row names the id, not the process) before its next renewal tells it.
    text: `WITH taken AS (
        UPDATE sessions SET owner = $2, epoch = epoch + 1, lease_until = ${until('$3')},
            cancel_requested = (cancel_requested AND owner = $2 AND lease_until >= now())
          WHERE session_id = $1 AND archived_at IS NULL AND (owner IS NULL OR lease_until < now() OR owner = $2)
            AND NOT ${idTakenBy('$2', '$4')}
          RETURNING epoch, cancel_requested)
      SELECT (SELECT epoch FROM taken) AS epoch, (SELECT cancel_requested FROM taken) AS cancel_requested,
        (SELECT owner FROM sessions WHERE session_id = $1 AND archived_at IS NULL) AS owner,
        EXISTS (SELECT 1 FROM sessions WHERE session_id = $1 AND archived_at IS NULL) AS found,
        ${idTakenBy('$2', '$4')} AS id_taken`,
    values: [sessionId, replicaId, leaseMs, instance]
  }
}

/** Gives the lease back (a run ended); only the holder at that epoch can. A pending cancel is done with. */
export function releaseLease (sessionId: string, replicaId: string, epoch: string): pg.QueryConfig {
  return {
    name: 'taskvault_release_lease',
    text: `UPDATE sessions SET owner = NULL, lease_until = NULL, cancel_requested = false
      WHERE session_id = $1 AND archived_at IS NULL AND owner = $2 AND epoch = $3`,
    values: [sessionId, replicaId, epoch]
  }
}

/**
 * Gives back a lease this replica gave up or lost (its run has let go): like releaseLease, but a
 * pending cancel stays in the row, since the run it was asked of did not record it; the sweeper
 * that claims the session next applies it. At another epoch (taken over) it changes nothing.
 */
export function abandonLease (sessionId: string, replicaId: string, epoch: string): pg.QueryConfig {
  return {
    name: 'taskvault_abandon_lease',
    text: `UPDATE sessions SET owner = NULL, lease_until = NULL
      WHERE session_id = $1 AND archived_at IS NULL AND owner = $2 AND epoch = $3`,
    values: [sessionId, replicaId, epoch]
  }
}

/** The process that holds a replica id (migrations/007), as its heartbeat row names it. */
export interface ReplicaProcess {
  /** Random per process: only the process that claimed the id beats under it. */
  instance: string
  host: string
  pid: number
  /** When the process started (ISO time). */
  startedAt: string
  /** The machine's boot id and the pid namespace ('' where unknown): where `pid` means this process. */
  boot: string
  pidNamespace: string
}

/** The replica id's row names another process (one that claimed the id since), as SQL of `$id` and `$instance`. */
export const idTakenBy = (id: string, instance: string): string =>
  `EXISTS (SELECT 1 FROM replicas WHERE replica_id = ${id} AND instance IS DISTINCT FROM ${instance})`

/**
 * One statement per renewal period, whatever the number of sessions held: the replica's
 * heartbeat row, and every lease it holds (at the epoch it holds it) pushed out. A session
 * that does not come back was lost (taken over after this replica fell silent); each one that
 * does says whether a cancel is waiting for it (the polling fallback of NOTIFY). The beat only
 * counts while the row names this process: when another process has claimed the id since (it
 * found this one silent past the lease), nothing is renewed and the one row back has a null
 * `session_id` (`taken`). A row cleared meanwhile (this replica was judged lost) is written anew.
 */
export function renewLeases (replicaId: string, leaseMs: number, held: ReadonlyArray<readonly [string, string]>, me: ReplicaProcess): pg.QueryConfig {
  return {
    name: 'taskvault_renew_leases',
    text: `WITH beat AS (
        INSERT INTO replicas (replica_id, seen_at, instance, host, pid, started_at, boot, pid_ns) VALUES ($1, now(), $5, $6, $7, $8, $9, $10)
          ON CONFLICT (replica_id) DO UPDATE SET seen_at = now() WHERE replicas.instance = $5
          RETURNING 1),
      renewed AS (
        UPDATE sessions s SET lease_until = ${until('$2')}
          FROM unnest($3::text[], $4::bigint[]) AS h(session_id, epoch)
          WHERE s.session_id = h.session_id AND s.archived_at IS NULL AND s.owner = $1 AND s.epoch = h.epoch
            -- A lease past its time stays run out: its holder gave it up already (a late renewal
            -- would otherwise keep it live for a run that has stopped).
            AND s.lease_until > now()
            AND EXISTS (SELECT 1 FROM beat)
          RETURNING s.session_id, s.cancel_requested)
      SELECT session_id, cancel_requested FROM renewed
      UNION ALL SELECT NULL::text, NULL::boolean WHERE NOT EXISTS (SELECT 1 FROM beat)`,
    values: [replicaId, leaseMs, held.map(([id]) => id), held.map(([, epoch]) => epoch), me.instance, me.host, me.pid, me.startedAt, me.boot, me.pidNamespace]
  }
}

/**
 * The sweeper's claim: up to `limit` sessions whose lease ran out, or that nobody owns but hold
 * a background run or a task left InProgress (another replica shut down mid-run), and with
 * `mine` (the first sweep, before this process runs anything) those this replica id owns: an
 * earlier process of the same id died holding them; never those of `skip` (their takeover failed
 * here lately); those with only a background run's record only when `runs` (this replica resumes runs). Each is claimed by one sweeper only: rows another transaction has locked are skipped.
 */
export function sweepLeases (replicaId: string, leaseMs: number, limit: number, mine: boolean, skip: readonly string[], runs: boolean, instance: string): pg.QueryConfig {
  return {
    name: 'taskvault_sweep_leases',
    text: `WITH due AS (
        SELECT row_id FROM sessions
          WHERE NOT ${idTakenBy('$1', '$7')} AND archived_at IS NULL AND (
            (owner IS NOT NULL AND (lease_until < now() OR (owner = $1 AND $4::boolean)))
            OR (owner IS NULL AND (($6::boolean AND has_background_run) OR tasks_in_progress > 0)))
            AND session_id <> ALL($5::text[])
          ORDER BY lease_until NULLS FIRST
          LIMIT $3
          FOR UPDATE SKIP LOCKED)
      UPDATE sessions s SET owner = $1, epoch = s.epoch + 1, lease_until = ${until('$2')}
        FROM due WHERE s.row_id = due.row_id
        RETURNING s.session_id, s.epoch, s.cancel_requested`,
    values: [replicaId, leaseMs, limit, mine, skip, runs, instance]
  }
}

/**
 * Asks the live holder of the session's lease to cancel its run: the request is kept in the
 * row (the holder's next renewal sees it, and whoever claims the session if the holder died)
 * and notified at commit. No row back: nobody holds a live lease, or only `strayOwner` (this
 * replica, when nothing of its process holds the lease: one whose giving back failed).
 */
export function requestCancel (sessionId: string, channel: string, payload: string, strayOwner: string | null): pg.QueryConfig {
  return {
    text: `WITH asked AS (
        UPDATE sessions SET cancel_requested = true
          WHERE session_id = $1 AND archived_at IS NULL AND owner IS NOT NULL AND lease_until > now()
            AND owner IS DISTINCT FROM $4
          RETURNING owner, epoch)
      SELECT owner, epoch, pg_notify($2, $3) FROM asked`,
    values: [sessionId, channel, payload, strayOwner]
  }
}

/** Whether another process claimed the replica id since this one did (`instance`: this process's). */
export function replicaIdTaken (replicaId: string, instance: string): pg.QueryConfig {
  return { text: `SELECT ${idTakenBy('$1', '$2::text')} AS id_taken`, values: [replicaId, instance] }
}

/** Who holds the session's lease now: owner, epoch, and whether it is still live. */
export function leaseHolder (sessionId: string): pg.QueryConfig {
  return {
    name: 'taskvault_lease_holder',
    text: `SELECT owner, epoch, (owner IS NOT NULL AND lease_until > now()) AS live, cancel_requested
      FROM sessions WHERE session_id = $1 AND archived_at IS NULL`,
    values: [sessionId]
  }
}

/**
 * The active row as stored now, its document only when it is not at the row and version the
 * caller knows (a replica validating its copy: one index lookup, and no document when nothing
 * changed). The lease columns say whether a live run holds it.
 */
export function refreshSession (sessionId: string, known: { row: string, version: string } | null): pg.QueryConfig {
  return {
    name: 'taskvault_refresh_session',
    text: `SELECT row_id, version, bytes, owner, (owner IS NOT NULL AND lease_until > now()) AS live,
        CASE WHEN row_id = $2 AND version = $3 THEN NULL ELSE document::text END AS document
      FROM sessions WHERE session_id = $1 AND archived_at IS NULL`,
    values: [sessionId, known?.row ?? null, known?.version ?? null]
  }
}

/** refreshSession for several sessions in one statement: a row back for each that has an active row. */
export function refreshSessions (known: ReadonlyArray<{ sessionId: string, row: string | null, version: string | null }>): pg.QueryConfig {
  return {
    name: 'taskvault_refresh_sessions',
    text: `SELECT s.session_id, s.row_id, s.version, s.bytes, s.owner, (s.owner IS NOT NULL AND s.lease_until > now()) AS live,
        CASE WHEN s.row_id = k.row_id AND s.version = k.version THEN NULL ELSE s.document::text END AS document
      FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS k(session_id, row_id, version)
      JOIN sessions s ON s.session_id = k.session_id AND s.archived_at IS NULL`,
    values: [known.map((k) => k.sessionId), known.map((k) => k.row), known.map((k) => k.version)]
  }
}

/** The active sessions, newest updated first, from their columns (the list endpoint, every replica alike). */
export function activeSummaries (offset: number, limit: number): pg.QueryConfig {
  return {
    name: 'taskvault_active_summaries',
    text: `SELECT session_id, created_at, updated_at, tasks_total, tasks_completed, tasks_failed, tasks_pending, tasks_in_progress,
        (owner IS NOT NULL AND lease_until > now()) AS running
      FROM sessions WHERE archived_at IS NULL ORDER BY updated_at DESC, session_id COLLATE "C" LIMIT $1 OFFSET $2`,
    values: [limit, offset]
  }
}

/** How many active sessions there are (the list's total). */
export const ACTIVE_COUNT = 'SELECT count(*)::int AS total FROM sessions WHERE archived_at IS NULL'

/**
 * Archived copies a list shows and retention judges: a session's newest (highest row id), and
 * none of a session that is active again (a copy left behind by a bring-back, or an archive in doubt).
 */
export const SHOWN_ARCHIVED = `sessions a WHERE a.archived_at IS NOT NULL
  AND NOT EXISTS (SELECT FROM sessions n WHERE n.session_id = a.session_id AND n.archived_at IS NOT NULL AND n.row_id > a.row_id)
  AND NOT EXISTS (SELECT FROM sessions s WHERE s.session_id = a.session_id AND s.archived_at IS NULL)`

/**
 * A page of the sessions a list with archived ones shows (`include`: active and archived; `only`:
 * archived), newest updated first, then by id whether archived or not (a session archived keeps its
 * place: pages do not repeat or skip it), active first of one id. Each side is read in
 * its list index's order, so the statement reads offset + limit entries of each at most, never the
 * whole archive; the first bytes of the page's archived documents are read (their times as written: document-times.ts).
 */
export function listedSummaries (offset: number, limit: number, filter: 'include' | 'only'): pg.QueryConfig {
  const archived = `SELECT a.row_id, a.updated_at, a.session_id, true AS archived FROM ${SHOWN_ARCHIVED} ORDER BY a.updated_at DESC, a.session_id COLLATE "C"`
  const listed = filter === 'only'
    ? `${archived} LIMIT $1 OFFSET $2`
    : `SELECT row_id, archived FROM (
        (SELECT row_id, updated_at, session_id, false AS archived FROM sessions WHERE archived_at IS NULL ORDER BY updated_at DESC, session_id COLLATE "C" LIMIT $1::int + $2::int)
        UNION ALL (${archived} LIMIT $1::int + $2::int)
      ) listed ORDER BY updated_at DESC, session_id COLLATE "C", archived LIMIT $1 OFFSET $2`
  return {
    name: `taskvault_listed_summaries_${filter}`,
    text: `WITH page AS (${listed})
      SELECT s.session_id, s.created_at, s.updated_at, s.tasks_total, s.tasks_completed, s.tasks_failed, s.tasks_pending, s.tasks_in_progress,
        page.archived, NOT page.archived AND s.owner IS NOT NULL AND s.lease_until > now() AS running,
        CASE WHEN page.archived THEN s.row_id END AS row_id, CASE WHEN page.archived THEN s.bytes END AS bytes,
        CASE WHEN page.archived THEN ${documentHead('s.document')} END AS head
      FROM page JOIN sessions s USING (row_id) ORDER BY s.updated_at DESC, s.session_id COLLATE "C", page.archived`,
    values: [limit, offset]
  }
}

/** How many sessions a list with archived ones shows (listedSummaries's total). */
export function listedCount (filter: 'include' | 'only'): string {
  const archived = `SELECT count(DISTINCT a.session_id)::int FROM sessions a WHERE a.archived_at IS NOT NULL
    AND NOT EXISTS (SELECT FROM sessions s WHERE s.session_id = a.session_id AND s.archived_at IS NULL)`
  return filter === 'only' ? `SELECT (${archived}) AS total` : `SELECT (${archived}) + (SELECT count(*)::int FROM sessions WHERE archived_at IS NULL) AS total`
}

/** Active sessions nobody runs whose every task ended before `cutoff`: an archive pass's candidates. */
export function archivableSessions (cutoff: Date, limit: number, after: { finishedAt: string, sessionId: string } | null): pg.QueryConfig {
  return {
    // The cursor's time as JSON gives it: `::text` follows DateStyle, whose zone abbreviations may read back otherwise.
    // Ordered by the columns, named as such: `finished_at` alone there is the text above, which
    // sorts every candidate on every page and, where an offset changes (summer time's end), out of order.
    // Two texts, not `$3 IS NULL OR ...`: a generic plan (plan_cache_mode) cannot seek the index past an OR.
    text: `SELECT session_id, to_json(finished_at)#>>'{}' AS finished_at FROM sessions
      WHERE archived_at IS NULL AND finished_at IS NOT NULL AND finished_at < $1 AND owner IS NULL
        ${after === null ? '' : 'AND (finished_at, session_id) > ($3::timestamptz, $4::text)'}
      ORDER BY sessions.finished_at, sessions.session_id LIMIT $2`,
    values: after === null ? [cutoff, limit] : [cutoff, limit, after.finishedAt, after.sessionId]
  }
}

/** Taken by a maintenance pass for its transaction: false when another replica's pass holds it. */
export function passLock (key: number): pg.QueryConfig {
  return { text: 'SELECT pg_try_advisory_xact_lock($1::bigint) AS locked', values: [key] }
}

/**
 * The event log's identity and its newest id (0 when empty). The identity is the stored token
 * and the log table's oid: a schema restored from a dump keeps the token but gets new tables,
 * and its ids, gone back to the dump's, are handed out again for other events; a client
 * resuming with one from before must get a reset, not those.
 */
export const EVENT_LOG = `SELECT (SELECT token FROM event_stream LIMIT 1) || '.' || 'events'::regclass::oid AS token,
  coalesce((SELECT max(id) FROM events), 0)::bigint AS latest`

/**
 * Clears the rows of replicas silent past the lease (and, with `ownBeat`, this replica id's
 * row as last read at that beat (BEAT): an earlier process of it that did not leave cleanly), and when
 * it cleared any, logs a gap. A replica that stops without leaving (kill -9, a lost node) may
 * have committed changes whose events it never published: readers of the log reset their
 * clients at the gap, and they refetch. One statement, so a gap is logged exactly when rows were cleared.
 */
export function clearLostReplicas (replicaId: string, leaseMs: number, ownBeat: string | null, channel: string, schema: string): pg.QueryConfig {
  return {
    name: 'taskvault_clear_lost_replicas',
    text: `WITH lost AS (
        DELETE FROM replicas
          WHERE (replica_id = $1 AND ${BEAT} = $3::bigint)
            OR (replica_id <> $1 AND seen_at < now() - make_interval(secs => $2::float8 / 1000))
          RETURNING replica_id)
      SELECT array_agg(replica_id ORDER BY replica_id) AS lost,
          -- No trimming here (the largest keep): the publishing replicas trim to their buffer.
          publish_events(ARRAY['${LOG_GAP}'], ARRAY[json_build_object('replicas', array_agg(replica_id ORDER BY replica_id))], 9223372036854775807, $4, $5) AS newest
        FROM lost HAVING count(*) > 0`,
    values: [replicaId, leaseMs, ownBeat, channel, schema]
  }
}

/** Appends a batch of events (publish_events in migrations/004: in id order across replicas) and notifies; `newest`: the batch's last id. */
export function publishEvents (names: string[], data: string[], keep: number, channel: string, schema: string): pg.QueryConfig {
  return {
    name: 'taskvault_publish_events',
    text: 'SELECT publish_events($1::text[], $2::json[], $3::bigint, $4, $5) AS newest',
    values: [names, data, keep, channel, schema]
  }
}

/** Events after `id`, oldest first, each with how far the log has been trimmed. */
export function eventsAfter (id: number, limit: number): pg.QueryConfig {
  return {
    name: 'taskvault_events_after',
    text: 'SELECT id, name, data::text AS data, (SELECT trimmed FROM event_stream LIMIT 1) AS trimmed FROM events WHERE id > $1 ORDER BY id LIMIT $2',
    values: [id, limit]
  }
}
