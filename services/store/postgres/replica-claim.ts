import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { ReplicaIdInUseError, type ReplicaHolder } from '../../errors.js'
import { PROCESS_STARTED_MS, pidAlive } from '../../pid.js'
import type { ReplicaIdEvent } from '../store.js'
import type { ReplicaProcess } from './leases-sql.js'
import { claimReplica, readReplica } from './replicas-sql.js'

/** How often, at most, a boot looks again at a replica id's row it cannot judge yet (another host's, not silent past the lease). */
const CLAIM_POLL_MS = 1_000

/** A replica id's row as readReplica reads it. */
interface ReplicaRow {
  instance: string | null
  host: string | null
  pid: number | null
  started_at: Date | null
  beat: string
  age_ms: string | number
}

export interface ReplicaClaim {
  replicaId: string
  leaseMs: number
  /** The process claiming it. */
  me: ReplicaProcess
  query: <R extends pg.QueryResultRow>(operation: string, config: pg.QueryConfig) => Promise<pg.QueryResult<R>>
  /** Clears the id's row as read at `beat` (and logs a gap); resolves with the ids cleared. */
  clearLost: (beat: string) => Promise<string[]>
  report: (event: ReplicaIdEvent) => void
}

/**
 * Claims a replica id for this process, before it takes anything over. A row another process
 * keeps beating under stops the boot (ReplicaIdInUseError). A row silent past the lease, or
 * silent since before this process started and of a process of this host that no longer runs (an
 * earlier life of this container, killed), is an earlier process that never left, whose last events may never have been published: it is
 * cleared with a gap logged, then the id claimed. A row that cannot be judged at once (another
 * host's, not silent yet) is watched until it beats again or runs out: a lease at most.
 */
export async function claimReplicaId (claim: ReplicaClaim): Promise<void> {
  const { replicaId, leaseMs, me } = claim
  let watched: string | null = null
  for (;;) {
    const { rows } = await claim.query<ReplicaRow>(`reading replica '${replicaId}'`, readReplica(replicaId))
    const row = rows[0]
    if (row === undefined) {
      const claimed = await claim.query(`claiming replica id '${replicaId}'`, claimReplica(replicaId, me))
      if (claimed.rows.length > 0) return
      // Another process claimed it between the read and the write: judged like any holder.
      continue
    }
    // Claimed by an earlier try of this boot whose answer was lost.
    if (row.instance === me.instance) return
    const holder: ReplicaHolder = { host: row.host, pid: row.pid, startedAt: row.started_at?.toISOString() ?? null }
    // It beat again since it was first read, or another process claimed it meanwhile: alive.
    if (watched !== null && row.beat !== watched) throw new ReplicaIdInUseError(replicaId, holder)
    const silentMs = Math.round(Number(row.age_ms))
    // Only a row silent since before this process started can be an earlier life of it: one that
    // beat since is another process (say a pod of the same name, on a node cut off from the cluster).
    const gone = silentMs > process.uptime() * 1000 && earlierLife(row, me)
    if (silentMs > leaseMs || gone) {
      const lost = await claim.clearLost(row.beat)
      if (lost.includes(replicaId)) claim.report({ type: 'cleared', holder, silentMs, why: gone ? 'gone' : 'silent' })
      watched = null
      continue
    }
    const waitMs = leaseMs - silentMs + 1
    if (watched === null) claim.report({ type: 'waiting', holder, silentMs, waitMs })
    watched = row.beat
    await sleep(Math.min(CLAIM_POLL_MS, Math.max(1, Math.floor(leaseMs / 12)), waitMs))
  }
}

/** The row was written by a process of this host that runs no more: this very pid in an earlier life (a restarted container), or a pid that is gone. */
function earlierLife (row: ReplicaRow, me: ReplicaProcess): boolean {
  if (row.host !== me.host || row.pid === null) return false
  if (row.pid === me.pid) return row.started_at !== null && row.started_at.getTime() < PROCESS_STARTED_MS - 1
  return !pidAlive(row.pid)
}
