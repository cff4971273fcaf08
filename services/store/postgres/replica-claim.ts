import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import { ReplicaIdInUseError, ShuttingDownError, type ReplicaHolder } from '../../errors.js'
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
  boot: string | null
  pid_ns: string | null
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
  /** The store closed meanwhile: the claim stops. */
  stopped: () => boolean
}

/**
 * Claims a replica id for this process, before it takes anything over. A row another process
 * keeps beating under stops the boot (ReplicaIdInUseError). A row silent past the lease, or of a
 * process that no longer runs in this machine's boot and pid namespace (killed: a dead pid, or
 * this very pid in an earlier life), is an earlier process that never left, whose last events
 * may never have been published: it is cleared with a gap logged, then the id claimed. A row that
 * cannot be judged at once (another machine's or container's, not silent yet) is watched until it
 * beats again or runs out: a lease at most.
 */
export async function claimReplicaId (claim: ReplicaClaim): Promise<void> {
  const { replicaId, leaseMs, me } = claim
  const pollMs = Math.min(CLAIM_POLL_MS, Math.max(1, Math.floor(leaseMs / 12)))
  let watched: string | null = null
  for (;;) {
    if (claim.stopped()) throw new ShuttingDownError(`the store closed while claiming replica id '${replicaId}'`)
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
    const gone = earlierLife(row, me)
    if (silentMs > leaseMs || gone) {
      const lost = await claim.clearLost(row.beat)
      watched = null
      if (lost.includes(replicaId)) claim.report({ type: 'cleared', holder, silentMs, why: gone ? 'gone' : 'silent' })
      // It beat (or was cleared) meanwhile: read again, after a pause so a row that never matches cannot spin.
      else await sleep(pollMs)
      continue
    }
    const waitMs = leaseMs - silentMs + 1
    if (watched === null) claim.report({ type: 'waiting', holder, silentMs, waitMs })
    watched = row.beat
    await sleep(Math.min(pollMs, waitMs))
  }
}

/**
 * The row was written by a process that runs no more, as this process can tell: in this very
 * machine boot and pid namespace (where a pid names one process), this pid in an earlier life (its
 * holder must be gone, this process has it now), or a pid that is gone. Anywhere else (another
 * machine of the same host name, another container) its pid says nothing: the row is watched.
 */
function earlierLife (row: ReplicaRow, me: ReplicaProcess): boolean {
  if (me.boot === '' || me.pidNamespace === '' || row.boot !== me.boot || row.pid_ns !== me.pidNamespace || row.pid === null) return false
  if (row.pid === me.pid) return row.started_at !== null && row.started_at.getTime() < PROCESS_STARTED_MS - 1
  return !pidAlive(row.pid)
}
