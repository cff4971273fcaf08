import type pg from 'pg'
import { BEAT, type ReplicaProcess } from './leases-sql.js'

/**
 * The replicas table (migrations/001, 007): each server on the schema keeps a row of its own
 * fresh (the heartbeat rides on the lease renewal, leases-sql.ts), naming the process that
 * claimed the id, and /stats lists the ones heard from recently.
 */

/** This replica is leaving (a clean shutdown): its row, unless another process has claimed the id since. */
export function leave (replicaId: string, instance: string): pg.QueryConfig {
  return { text: 'DELETE FROM replicas WHERE replica_id = $1 AND instance = $2', values: [replicaId, instance] }
}

/** The row of a replica id as it stands: who beat under it, at which beat (BEAT, as text), and how long ago by the database's clock. */
export function readReplica (replicaId: string): pg.QueryConfig {
  return {
    text: `SELECT instance, host, pid, started_at, boot, pid_ns, ${BEAT}::text AS beat, extract(epoch FROM now() - seen_at) * 1000 AS age_ms
      FROM replicas WHERE replica_id = $1`,
    values: [replicaId]
  }
}

/** Claims a replica id nobody's row names: a row comes back only when this statement wrote it. */
export function claimReplica (replicaId: string, me: ReplicaProcess): pg.QueryConfig {
  return {
    text: `INSERT INTO replicas (replica_id, seen_at, instance, host, pid, started_at, boot, pid_ns) VALUES ($1, now(), $2, $3, $4, $5, $6, $7)
      ON CONFLICT (replica_id) DO NOTHING RETURNING replica_id`,
    values: [replicaId, me.instance, me.host, me.pid, me.startedAt, me.boot, me.pidNamespace]
  }
}

/** The replicas heard from within `withinMs`, by id; rows silent for ten times that are cleared on the way. */
export function liveReplicas (withinMs: number): pg.QueryConfig {
  return {
    text: `WITH gone AS (DELETE FROM replicas WHERE seen_at < now() - make_interval(secs => $1::float8 * 10 / 1000))
      SELECT replica_id FROM replicas WHERE seen_at >= now() - make_interval(secs => $1::float8 / 1000) ORDER BY replica_id`,
    values: [withinMs]
  }
}
