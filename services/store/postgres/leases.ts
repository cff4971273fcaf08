import { randomUUID } from 'node:crypto'
import type { EventEmitter } from 'node:events'
import { hostname } from 'node:os'
import type pg from 'pg'
import { LeaseLostError, ReplicaIdTakenError, SessionBusyError, SessionNotFoundError } from '../../errors.js'
import { noop } from '../../noop.js'
import { PROCESS_STARTED_MS, processPlace } from '../../pid.js'
import type { SessionStoreEvents, SweptSession } from '../store.js'
import { abandonLease, acquireLease, clearLostReplicas, leaseHolder, releaseLease, renewLeases, replicaIdTaken, requestCancel, sweepLeases, type ReplicaProcess } from './leases-sql.js'
import { claimReplicaId } from './replica-claim.js'
import type { Fence } from './sessions-sql.js'

/** NOTIFY's channel for cancels; the payload is `<schema>.<session id>`, far below NOTIFY's 8,000 bytes. */
export const CANCEL_CHANNEL = 'taskvault_cancel'
/** NOTIFY's channel for new events in a schema's event log; the payload is the schema. */
export const EVENTS_CHANNEL = 'taskvault_events'

export interface LeaseKeeperOptions {
  replicaId: string
  /** TASK_LEASE_MS. */
  leaseMs: number
  schema: string
  /** Runs a statement; rejects when it fails (the store's query, as a StorageError). */
  query: <R extends pg.QueryResultRow>(operation: string, config: pg.QueryConfig) => Promise<pg.QueryResult<R>>
  /**
   * Runs a renewal on a pooled connection, in a transaction the database cancels past
   * `statementMs`, and not at all unless `wanted()` once a connection is free.
   */
  renewPooled: <R extends pg.QueryResultRow>(config: pg.QueryConfig, statementMs: number, wanted: () => boolean) => Promise<pg.QueryResult<R>>
  /**
   * A connection of its own to LISTEN and renew on, held until it fails or the keeper closes;
   * opening it gives up after `timeoutMs` (a fresh connection; a host's pool may wait longer).
   */
  connect: (timeoutMs: number) => Promise<KeeperConnection>
  /** connect() draws from the pool the store's statements use (a host's pool) rather than opening a connection of its own. */
  pooled: boolean
  events: EventEmitter<SessionStoreEvents>
}

/** The keeper's own connection: released (destroyed, never reused) once it fails or the keeper closes. */
export type KeeperConnection = pg.ClientBase & { release: (destroy?: boolean) => void | Promise<void> }

/** A lease this process holds: at which epoch, and until when at the latest (this process's clock). */
interface Held {
  epoch: string
  /** performance.now() by which the lease has surely not run out: when its last renewal was sent, plus the lease. */
  validUntil: number
  /** Given up or taken over: kept (for its fence) until its run lets go of it. */
  lost: boolean
  /** Taken by acquire (a run, or a cancel applied here), not by a sweep. */
  run: boolean
}

/**
 * The execution leases of one replica. Renewal is batched: one statement every third of the
 * lease renews every lease the replica holds and its heartbeat, however many sessions it runs.
 * A lease that could not be renewed in time is given up before it runs out ('lease-lost'), so
 * the run aborts its agent call while no other replica can have the session yet. Cancels asked
 * on other replicas arrive by NOTIFY, and by the renewal's answer when a notification was lost.
 */
export class LeaseKeeper {
  private readonly held = new Map<string, Held>()
  /** Sessions whose acquire is on its way to the database. */
  private readonly acquiring = new Set<string>()
  private readonly replicaId: string
  private readonly leaseMs: number
  private readonly options: LeaseKeeperOptions
  private timer: NodeJS.Timeout | null = null
  private lastRenewal = -Infinity
  private renewing = false
  /**
   * Renewal statements sent and not answered yet, the loser of a retry's race among them: close()
   * waits for them, so that no heartbeat lands after the row is deleted and brings it back.
   */
  private readonly unanswered = new Set<Promise<unknown>>()
  private listener: KeeperConnection | null = null
  private listening: Promise<void> | null = null
  private closed = false
  /** This process, as the replica id's row names the one that claimed it. */
  readonly me: ReplicaProcess = { instance: randomUUID(), host: hostname(), pid: process.pid, startedAt: new Date(PROCESS_STARTED_MS).toISOString(), ...processPlace() }
  /** Set once another process claimed the replica id: from then on this one holds no lease and writes nothing. */
  private takenBy: ReplicaIdTakenError | null = null

  constructor (options: LeaseKeeperOptions) {
    this.options = options
    this.replicaId = options.replicaId
    this.leaseMs = options.leaseMs
  }

  /** Why this process may write nothing more (another process claimed its replica id), or null. */
  get taken (): ReplicaIdTakenError | null {
    return this.takenBy
  }

  /** Renews (and heartbeats) now, then on a timer; starts listening for cancels. */
  async start (): Promise<void> {
    // Before anything is taken over: the id must be this process's alone.
    await claimReplicaId({
      replicaId: this.replicaId,
      leaseMs: this.leaseMs,
      me: this.me,
      query: this.options.query,
      clearLost: async (beat) => this.clearLost(beat),
      report: (event) => { this.options.events.emit('replica-id', event) },
      stopped: () => this.closed
    })
    // The first beat on the keeper's own connection when it opens in time, as every later one.
    await this.relisten()
    // A first beat that fails (the database gone again since init) is only a missed beat.
    await this.renew().catch(noop)
    // Checked every twelfth of the lease: renewals every third, and a failed one tried again at
    // the next check. Leases are given up with a sixth left, so a check may run up to a twelfth
    // late (a loaded event loop) and still give them up before they run out.
    this.timer ??= setInterval(() => { this.tick() }, Math.max(1, Math.floor(this.leaseMs / 12)))
    this.timer.unref()
    this.listen()
  }

  /** The fence a save of this session carries while this process holds (or held and lost) its lease; null when it holds none. */
  fence (sessionId: string): Fence | null {
    const held = this.held.get(sessionId)
    return held === undefined ? null : { owner: this.replicaId, epoch: held.epoch }
  }

  /**
   * Why a save of this session must not be sent: its lease was given up or lost. Even with no
   * other replica holding the session yet, the run that had it must not write any more.
   */
  refusal (sessionId: string): LeaseLostError | null {
    return this.held.get(sessionId)?.lost === true ? new LeaseLostError(sessionId, 'saving refused: this replica gave up or lost its lease') : null
  }

  /**
   * Whether a lease the row names this replica for is none of this process's: neither held (by a
   * run or a sweep) nor being taken. It is one whose giving back failed (the database was away),
   * or an earlier process's under this replica id: nothing runs the session.
   */
  private strayed (sessionId: string): boolean {
    return !this.held.has(sessionId) && !this.acquiring.has(sessionId)
  }

  /** Whether this process holds the session's lease and has not lost it. */
  holds (sessionId: string): boolean {
    return this.held.get(sessionId)?.lost === false
  }

  /** Takes the lease; resolves with its epoch, and whether a cancel waits for it (this replica took it again). */
  async acquire (sessionId: string): Promise<{ epoch: string, cancelRequested: boolean }> {
    // A run of this process holds it: a second lease would replace that run's, and giving the
    // second back would leave the run unfenced and unrenewed while another replica claims it.
    // (A lease this process's sweep holds is taken over by the run it resumes.)
    // So would a second acquire while one is on its way (a cancel and an execute at once): both
    // would succeed, the row naming this replica, and the first given back would free the other's.
    if (this.takenBy !== null) throw this.takenBy
    const held = this.held.get(sessionId)
    if ((held !== undefined && held.run && !held.lost) || this.acquiring.has(sessionId)) throw new SessionBusyError(sessionId, this.replicaId)
    const sent = performance.now()
    this.acquiring.add(sessionId)
    try {
      const { rows } = await this.options.query<{ epoch: string | null, owner: string | null, found: boolean, cancel_requested: boolean | null, id_taken: boolean }>(
        `taking the lease of session '${sessionId}'`, acquireLease(sessionId, this.replicaId, this.leaseMs, this.me.instance))
      const row = rows[0]
      // Known before the next renewal would tell: nothing more is taken or written.
      if (row?.id_taken === true) throw this.idTaken()
      if (row === undefined || !row.found) throw new SessionNotFoundError(sessionId)
      if (row.epoch === null) throw new SessionBusyError(sessionId, row.owner)
      this.hold(sessionId, row.epoch, sent, true)
      return { epoch: row.epoch, cancelRequested: row.cancel_requested === true }
    } finally {
      this.acquiring.delete(sessionId)
    }
  }

  /**
   * Gives back the lease taken at `epoch`. Only that one: a newer lease of the session (taken
   * since by this process) stays, and its holder gives it back. A lease given up or lost is given
   * back too: given up, the row still names this replica (until it runs out, or longer after a
   * renewal that was on its way), and the epoch keeps the statement off another replica's lease.
   */
  async release (sessionId: string, epoch: string, applied = true): Promise<void> {
    const held = this.held.get(sessionId)
    const lost = held !== undefined && held.epoch === epoch && held.lost
    if (held !== undefined && held.epoch === epoch) this.held.delete(sessionId)
    await this.options.query(`giving back the lease of session '${sessionId}'`,
      lost || !applied ? abandonLease(sessionId, this.replicaId, epoch) : releaseLease(sessionId, this.replicaId, epoch))
  }

  /** The live holder of the lease now (a round trip). */
  /** The live holder of the session's lease, or null; a lease of this replica's that nothing here holds (strayed) is nobody's. */
  async holder (sessionId: string): Promise<string | null> {
    const { rows } = await this.options.query<{ owner: string | null, live: boolean }>(`reading the lease of session '${sessionId}'`, leaseHolder(sessionId))
    const row = rows[0]
    if (row?.live !== true) return null
    if (row.owner !== this.replicaId || !this.strayed(sessionId)) return row.owner
    await this.assertIdOwn(`reading the lease of session '${sessionId}'`)
    return null
  }

  /**
   * Before a lease under this replica id that this process does not hold is taken for nobody's:
   * it is the lease of a process that claimed the id since (this one was paused past the lease),
   * which this one learns here, before its renewal would tell (REPLICA_ID_TAKEN).
   */
  private async assertIdOwn (operation: string): Promise<void> {
    if (this.takenBy !== null) throw this.takenBy
    const { rows } = await this.options.query<{ id_taken: boolean }>(operation, replicaIdTaken(this.replicaId, this.me.instance))
    if (rows[0]?.id_taken === true) throw this.idTaken()
  }

  async cancelPending (sessionId: string): Promise<boolean> {
    const { rows } = await this.options.query<{ cancel_requested: boolean }>(`reading the lease of session '${sessionId}'`, leaseHolder(sessionId))
    return rows[0]?.cancel_requested === true
  }

  /**
   * After a fenced save was refused: true when this process still holds the lease at the
   * epoch it saved with (so the refusal was a plain version conflict); otherwise the lease is
   * marked lost, and false.
   */
  async stillHeld (sessionId: string): Promise<boolean> {
    const held = this.held.get(sessionId)
    if (held === undefined || held.lost) return false
    const { rows } = await this.options.query<{ owner: string | null, epoch: string }>(`reading the lease of session '${sessionId}'`, leaseHolder(sessionId))
    const row = rows[0] as { owner: string | null, epoch: string, live: boolean } | undefined
    if (row !== undefined && row.owner === this.replicaId && row.epoch === held.epoch && row.live) return true
    this.lose(sessionId, held, row === undefined ? 'the session is gone' : `replica '${row.owner ?? '(none)'}' took the session over`)
    return false
  }

  async sweep (limit: number, earlier: boolean, skip: readonly string[] = [], runs = true): Promise<SweptSession[]> {
    if (this.takenBy !== null) return []
    const mine = earlier && this.held.size === 0
    const sent = performance.now()
    const { rows } = await this.options.query<{ session_id: string, epoch: string, cancel_requested: boolean }>(
      'sweeping leases that ran out', sweepLeases(this.replicaId, this.leaseMs, limit, mine, skip, runs, this.me.instance))
    const swept: SweptSession[] = []
    for (const row of rows) {
      // This process still has a lease of it (a run that lost it and has not let go yet): that
      // run's saves must stay refused, so the claim is given straight back for a later sweep.
      if (this.held.has(row.session_id)) {
        // Its pending cancel stays for that later sweep: the run here never recorded it.
        await this.options.query(`giving back the lease of session '${row.session_id}'`, abandonLease(row.session_id, this.replicaId, row.epoch)).catch(noop)
        continue
      }
      this.hold(row.session_id, row.epoch, sent, false)
      swept.push({ sessionId: row.session_id, epoch: row.epoch, cancelRequested: row.cancel_requested })
    }
    return swept
  }

  /**
   * Clears the replicas silent past the lease (with `ownBeat`, this replica id's row as read at
   * that beat too) and logs a gap in the event log when there were any (clearLostReplicas).
   * Resolves with their ids.
   */
  async clearLost (ownBeat: string | null = null): Promise<string[]> {
    if (this.takenBy !== null) return []
    const { rows } = await this.options.query<{ lost: string[] }>('clearing replicas that stopped without leaving',
      clearLostReplicas(this.replicaId, this.leaseMs, ownBeat, EVENTS_CHANNEL, this.options.schema))
    return rows[0]?.lost ?? []
  }

  async requestCancel (sessionId: string): Promise<string | null> {
    if (this.takenBy !== null) throw this.takenBy
    // A lease of this replica's that nothing here holds (strayed) is nobody's: not asked, so the
    // cancel finds no holder (NOT_RUNNING, or a run left behind taken over and cancelled) rather
    // than waiting for a lease nothing renews to run out.
    const strayed = this.strayed(sessionId)
    if (strayed) await this.assertIdOwn(`asking to cancel session '${sessionId}'`)
    const { rows } = await this.options.query<{ owner: string }>(`asking to cancel session '${sessionId}'`,
      requestCancel(sessionId, CANCEL_CHANNEL, `${this.options.schema}.${sessionId}`, strayed ? this.replicaId : null))
    return rows[0]?.owner ?? null
  }

  async close (): Promise<void> {
    this.closed = true
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    // A heartbeat landing after leave() would bring the row back: the next process under this
    // id (a StatefulSet's pod, rescheduled) would wait on it, then clear it with a gap logged.
    // Each is answered within a renewal's time: the database cancels it first (the keeper's
    // connections' statement_timeout, see listen(); a pooled retry's, in its transaction), so
    // one that timed out cannot land later.
    const deadline = performance.now() + this.renewalTimeoutMs()
    while (this.unanswered.size > 0 && performance.now() < deadline) {
      let timer: NodeJS.Timeout | undefined
      await Promise.race([Promise.allSettled([...this.unanswered]), new Promise((resolve) => { timer = setTimeout(resolve, deadline - performance.now()) })])
      clearTimeout(timer)
    }
    const listener = this.listener
    this.listener = null
    await this.listening?.catch(noop)
    if (listener !== null) await listener.release(true)
  }

  /** Records a lease taken at `sent` (by a run: `run`), unless this process already holds a newer epoch of it. */
  private hold (sessionId: string, epoch: string, sent: number, run: boolean): void {
    const before = this.held.get(sessionId)
    if (before !== undefined && !before.lost && BigInt(before.epoch) > BigInt(epoch)) return
    this.held.set(sessionId, { epoch, validUntil: sent + this.leaseMs, lost: false, run })
  }

  private lose (sessionId: string, held: Held, why: string): void {
    if (held.lost) return
    held.lost = true
    this.options.events.emit('lease-lost', sessionId, why)
  }

  private tick (): void {
    const now = performance.now()
    // Given up while there is still time left before it runs out: a sixth of the lease, twice
    // the gap to the next check, so the run stops before any other replica can claim the session.
    for (const [sessionId, held] of this.held) {
      if (!held.lost && held.validUntil - now <= this.leaseMs / 6 + 50) this.lose(sessionId, held, `its lease could not be renewed for ${Math.round(now - (held.validUntil - this.leaseMs))} ms`)
    }
    if (now - this.lastRenewal >= this.leaseMs / 3 - 50) this.renew().catch(noop)
    this.listen()
  }

  /** Listens anew now (unless it is on its way) and resolves with the connection, or null when none is up within a renewal's time. */
  private async relisten (): Promise<KeeperConnection | null> {
    this.listen()
    let timer: NodeJS.Timeout | undefined
    await Promise.race([this.listening, new Promise((resolve) => { timer = setTimeout(resolve, this.renewalTimeoutMs()) })])
    clearTimeout(timer)
    return this.listener
  }

  /** Lets go of the listening connection once it failed (its state unknown): the next check or renewal opens another. */
  private drop (client: KeeperConnection): void {
    // Once only: a pooled client released twice throws.
    if (this.listener !== client) return
    this.listener = null
    void client.release(true)
  }

  /**
   * One statement: the heartbeat, and every lease this process holds pushed out. Each attempt
   * gives up after a sixth of the lease, whatever TASK_DB_STATEMENT_TIMEOUT_MS (0: none): a hung
   * connection (a half-open one after a failover) must not hold renewals until the leases are given up.
   */
  private async renew (): Promise<void> {
    if (this.renewing || this.closed || this.takenBy !== null) return
    this.renewing = true
    const live = [...this.held].filter(([, held]) => !held.lost)
    try {
      // pg's Client.query honours a query's own query_timeout (its typings leave it out).
      const config: pg.QueryConfig & { query_timeout: number } = {
        ...renewLeases(this.replicaId, this.leaseMs, live.map(([sessionId, held]) => [sessionId, held.epoch] as const), this.me),
        query_timeout: this.renewalTimeoutMs()
      }
      type Renewed = { session_id: string | null, cancel_requested: boolean | null }
      // Each attempt with the time it was sent: a lease holds until then plus the lease, at the latest.
      type Answer = { rows: Renewed[], sent: number }
      const renewOn = async (listener: KeeperConnection | null): Promise<Answer> => {
        if (listener === null) throw new Error('no listening connection')
        const sent = performance.now()
        return this.tracked(listener.query<Renewed>(config)).then((result) => ({ rows: result.rows, sent }), (err: unknown) => {
          // Its state unknown (a timeout, a dropped link): never used again.
          this.drop(listener)
          throw err
        })
      }
      // On the listening connection: it is this keeper's own, so a renewal never waits for a
      // pooled connection behind a burst of saves or slow statements (and loses leases for it).
      let answer = await renewOn(this.listener).catch(() => null)
      // Closing: no second try (close() waits for the first to be answered, or to time out).
      if (answer === null && this.closed) return
      if (answer === null) {
        // Tried again at once, on a pooled connection and on a fresh one of its own together: the
        // pool's may all be busy, and a new connection may not open. The first answer counts.
        const sent = performance.now()
        // Bounded by the database as on the keeper's connections, and never sent once the keeper
        // closed: one landing after close() deleted the replica's row would bring the row back.
        const pooled = this.tracked(this.options.renewPooled<Renewed>(config, this.statementMs(), () => !this.closed)).then((result) => ({ rows: result.rows, sent }))
        answer = this.options.pooled
          ? await pooled
          : await Promise.any([pooled, this.relisten().then(renewOn)]).catch((err: AggregateError) => { throw err.errors[0] })
      }
      const { rows, sent } = answer
      this.lastRenewal = sent
      if (rows.some((row) => row.session_id === null)) {
        this.idTaken()
        return
      }
      const renewed = new Map(rows.map((row) => [row.session_id, row.cancel_requested === true]))
      for (const [sessionId, held] of live) {
        // Released, or taken again at another epoch, while this was on its way.
        if (this.held.get(sessionId) !== held) continue
        const cancel = renewed.get(sessionId)
        if (cancel === undefined) {
          this.lose(sessionId, held, 'another replica took the session over')
          continue
        }
        held.validUntil = Math.max(held.validUntil, sent + this.leaseMs)
        if (cancel) this.options.events.emit('cancel', sessionId)
      }
    } finally {
      this.renewing = false
    }
  }

  /** `statement`, held in `unanswered` until it settles. */
  private tracked<T> (statement: Promise<T>): Promise<T> {
    this.unanswered.add(statement)
    const settled = (): void => { this.unanswered.delete(statement) }
    statement.then(settled, settled)
    return statement
  }

  /** Another process claimed the replica id (it judged this one gone): every lease is lost, and nothing more is renewed or written. */
  private idTaken (): ReplicaIdTakenError {
    if (this.takenBy !== null) return this.takenBy
    const error = new ReplicaIdTakenError(this.replicaId)
    this.takenBy = error
    for (const [sessionId, held] of this.held) this.lose(sessionId, held, `another process claimed this replica id ('${this.replicaId}')`)
    this.options.events.emit('replica-id', { type: 'taken', error })
    return error
  }

  /**
   * How long one renewal attempt may take: a sixth of the lease. Renewals start a third into it
   * and leases are given up at five sixths, so a hung attempt still leaves time for two more.
   */
  private renewalTimeoutMs (): number {
    return Math.max(1, Math.floor(this.leaseMs / 6))
  }

  /** The database's own bound on a renewal: a little under the client's (renewalTimeoutMs), so it gives up first. */
  private statementMs (): number {
    return Math.max(1, Math.floor(this.renewalTimeoutMs() * 3 / 4))
  }

  /**
   * LISTEN on a connection of its own. When it fails, the next check opens another; meanwhile
   * cancels still arrive through the renewal's answer.
   */
  private listen (): void {
    // One listening connection at a time: a second would replace the first and leave it open.
    if (this.closed || this.listener !== null || this.listening !== null) return
    this.listening = (async () => {
      const client = await this.options.connect(this.renewalTimeoutMs())
      const prefix = `${this.options.schema}.`
      const dropped = (): void => { this.drop(client) }
      client.on('error', dropped)
      client.on('end', dropped)
      client.on('notification', (message) => {
        const payload = message.payload ?? ''
        if (message.channel === EVENTS_CHANNEL && payload === this.options.schema) this.options.events.emit('events')
        if (message.channel !== CANCEL_CHANNEL || !payload.startsWith(prefix)) return
        const sessionId = payload.slice(prefix.length)
        if (this.holds(sessionId)) this.options.events.emit('cancel', sessionId)
      })
      try {
        // Bounded as a renewal is, whatever TASK_DB_STATEMENT_TIMEOUT_MS: a hung LISTEN would hold
        // `listening` forever. The database cancels a statement of this connection a little
        // before the client gives up on it: a renewal that timed out (waiting on a lock) must
        // not commit later, after close() deleted the replica's row, and bring the row back.
        const listen: pg.QueryConfig & { query_timeout: number } = { text: `SET statement_timeout = ${this.statementMs()}; LISTEN ${CANCEL_CHANNEL}; LISTEN ${EVENTS_CHANNEL}`, query_timeout: this.renewalTimeoutMs() }
        await client.query(listen)
      } catch (err) {
        client.release(true)
        throw err
      }
      if (this.closed) {
        client.release(true)
        return
      }
      this.listener = client
      // Events published while nobody listened (before, or while the last connection was down).
      this.options.events.emit('events')
    })().catch(noop).finally(() => { this.listening = null })
  }
}
