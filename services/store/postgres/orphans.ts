/**
 * Statements of ours whose connection broke after they were sent. PostgreSQL carries on with a
 * statement whose client has gone, and commits it: until its server process has ended, a read
 * may find a row as it was before a write that lands later, and the store would settle an
 * unknown outcome on the wrong answer (a create answered 503, found absent, then there). So
 * before its next statement the store ends those processes (pg_terminate_backend: a statement
 * not yet committed rolls back) and waits until they are gone; only then do reads tell what landed.
 */
import type pg from 'pg'
import { pooledQuery, QueryFailure } from './pooled-query.js'

/** How often to look again for processes told to end. */
const POLL_MS = 10

/**
 * The server processes among `pids` still there, each told to end. Only ones of our own role
 * and pool (its application_name), never this connection's: a process id another program's
 * connection took over since is left alone.
 */
function endProcesses (pids: number[]): pg.QueryConfig {
  return {
    text: `SELECT pid, pg_terminate_backend(pid) AS told FROM pg_stat_activity
      WHERE pid = ANY($1::int[]) AND pid <> pg_backend_pid() AND usename = current_user
        AND application_name = current_setting('application_name')`,
    values: [pids]
  }
}

export class Orphans {
  private readonly pids = new Set<number>()
  private settling: Promise<void> | null = null

  /** `waitMs`: how long processes told to end may take before the statement waiting on them fails. */
  constructor (private readonly pool: pg.Pool, private readonly waitMs: number) {}

  /** A statement's connection broke after it was sent: its process may still be running it. */
  add (failure: QueryFailure): void {
    if (failure.sent && failure.backend !== null) this.pids.add(failure.backend)
  }

  /**
   * Resolves once no statement of ours whose connection broke can still be running; rejects
   * with a QueryFailure (nothing sent) when the database cannot tell or they outlast `waitMs`.
   */
  async settled (): Promise<void> {
    if (this.pids.size === 0) return
    this.settling ??= this.settle().finally(() => { this.settling = null })
    return this.settling
  }

  private async settle (): Promise<void> {
    const deadline = performance.now() + this.waitMs
    for (;;) {
      const asked = [...this.pids]
      let rows: Array<{ pid: number }>
      try {
        rows = (await pooledQuery<{ pid: number }>(this.pool, endProcesses(asked))).rows
      } catch (err) {
        // Ending processes changes no data: whatever became of this statement, nothing of ours waits on it.
        throw new QueryFailure(err instanceof QueryFailure ? err.cause : err, false)
      }
      const running = new Set(rows.map((row) => row.pid))
      for (const pid of asked) if (!running.has(pid)) this.pids.delete(pid)
      if (this.pids.size === 0) return
      if (performance.now() > deadline) {
        throw new QueryFailure(new Error(`statements of connections that broke are still running (server processes ${[...this.pids].join(', ')})`), false)
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS))
    }
  }
}
