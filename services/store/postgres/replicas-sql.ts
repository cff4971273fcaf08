import type pg from 'pg'

/**
 * The replicas table (migrations/001): each server on the schema keeps a row of its own fresh
 * (the heartbeat rides on the lease renewal, leases-sql.ts), and /stats lists the ones heard
 * from recently.
 */

/** This replica is leaving (a clean shutdown). */
export function leave (replicaId: string): pg.QueryConfig {
  return { text: 'DELETE FROM replicas WHERE replica_id = $1', values: [replicaId] }
}

/** The replicas heard from within `withinMs`, by id; rows silent for ten times that are cleared on the way. */
export function liveReplicas (withinMs: number): pg.QueryConfig {
  return {
    text: `WITH gone AS (DELETE FROM replicas WHERE seen_at < now() - make_interval(secs => $1::float8 * 10 / 1000))
      SELECT replica_id FROM replicas WHERE seen_at >= now() - make_interval(secs => $1::float8 / 1000) ORDER BY replica_id`,
    values: [withinMs]
  }
}
