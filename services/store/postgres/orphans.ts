/**
 * Statements of ours whose connection broke after they were sent. PostgreSQL carries on with a
 * statement whose client has gone, and commits it: until its server process has ended, a read
 * may find a row as it was before a write that lands later, and the store would settle an
 * unknown outcome on the wrong answer (a create answered 503, found absent, then there). So
 * before its next statement the store ends those processes (pg_terminate_backend: a statement
 * not yet committed rolls back) and waits until they are gone; only then do reads tell what landed.
 */
import type pg from 'pg'
import { orLate } from '../../deadline.js'
import { noop } from '../../noop.js'
import { pooledQuery, QueryFailure } from './pooled-query.js'

/** How often to look again for processes told to end. */
const POLL_MS = 10
/** insufficient_privilege: the role we act as may not end the role we log in as (SET ROLE). */
const NOT_PERMITTED = '42501'

/**
 * The processes among `pids` still there, each started before its connection broke `agoMs`
 * ago (by the server's clock: a process that took the id over since is never one); `end`: each
 * told to end as well.
 */
function orphanProcesses (pids: number[], agoMs: number[], end: boolean): pg.QueryConfig {
  return {
    text: `SELECT a.pid${end ? ', pg_terminate_backend(a.pid) AS told' : ''}
      FROM pg_stat_activity a JOIN unnest($1::int[], $2::float8[]) AS o(pid, ago_ms) ON o.pid = a.pid
      WHERE a.pid <> pg_backend_pid() AND a.backend_start < statement_timestamp() - make_interval(secs => o.ago_ms / 1000)`,
    values: [pids, agoMs]
  }
}

export class Orphans {
  /** Server process id -> when its connection broke (performance.now()). */
  private readonly broken = new Map<number, number>()
  private settling: Promise<void> | null = null
  private mayEnd = true

  /** `waitMs`: how long settling may take before the statement waiting on it fails. */
  constructor (private readonly pool: pg.Pool, private readonly waitMs: number) {}

  /** A statement's connection broke after it was sent (`at`, performance.now()): its process may still be running it. */
  add (failure: QueryFailure, at = performance.now()): void {
    if (failure.sent && failure.backend !== null) this.broken.set(failure.backend, at)
  }

  /**
   * Resolves once no statement of ours whose connection broke can still be running; rejects
   * with a QueryFailure (nothing sent) when the database cannot tell within `waitMs`.
   */
  async settled (): Promise<void> {
    if (this.broken.size === 0) return
    this.settling ??= this.settle().finally(() => { this.settling = null })
    return this.settling
  }

  private async settle (): Promise<void> {
    const deadline = performance.now() + this.waitMs
    for (;;) {
      const asked = [...this.broken]
      const now = performance.now()
      const left = deadline - now
      if (left <= 0) {
        throw new QueryFailure(new Error(`statements of connections that broke are still running (server processes ${asked.map(([pid]) => pid).join(', ')})`), false)
      }
      let rows: Array<{ pid: number }>
      try {
        rows = (await within(pooledQuery<{ pid: number }>(this.pool, orphanProcesses(asked.map(([pid]) => pid), asked.map(([, at]) => now - at), this.mayEnd)), left)).rows
      } catch (err) {
        const cause = err instanceof QueryFailure ? err.cause : err
        if ((cause as { code?: unknown } | null)?.code === NOT_PERMITTED && this.mayEnd) {
          // Not ours to end: wait for them to end by themselves (within the statement timeout).
          this.mayEnd = false
          continue
        }
        // Looking changes no data: whatever became of this statement, nothing of ours waits on it.
        throw new QueryFailure(cause, false)
      }
      const running = new Set(rows.map((row) => row.pid))
      for (const [pid] of asked) if (!running.has(pid)) this.broken.delete(pid)
      if (this.broken.size === 0) return
      await new Promise((resolve) => setTimeout(resolve, POLL_MS))
    }
  }
}

/** What `within` gets when the time ran out first. */
const LATE = Symbol('late')

/** `work`, or a QueryFailure (nothing sent) once `ms` have passed; `work` left to end by itself, observed. */
async function within<T> (work: Promise<T>, ms: number): Promise<T> {
  work.catch(noop)
  const answer = await orLate(work, ms, LATE)
  if (answer === LATE) throw new QueryFailure(new Error(`no answer within ${Math.ceil(ms)} ms`), false)
  return answer
}
