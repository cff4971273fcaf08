import { createHash } from 'node:crypto'
import { hostname } from 'node:os'
import { Counter, Gauge, Histogram, type Metric, type Registry } from 'prom-client'
import { TASK_STATUSES } from '../../schemas/session.js'
import type { SaveEvent, SessionStore, StoreTotals } from '../store/store.js'
import type { TaskManager } from '../task-manager.js'
import { orLate } from '../deadline.js'
import { ReadingGauge } from './reading-gauge.js'
import type { AgentCallEvent, TaskFinishedEvent } from '../types.js'

export interface TaskvaultMetricsOptions {
  registry: Registry
  manager: TaskManager
  store: SessionStore
  /** Prefix of every metric name. */
  prefix: string
  /** Event streams open now (none when the live view is not there). */
  streams?: () => number
  /**
   * How long a scrape waits for the store's counts (TASK_DB_PING_TIMEOUT_MS): past it they are
   * left out, so a stalled database gaps those series only, not the whole scrape.
   */
  readWithinMs?: number
}

/** Saves are fsyncs: sub-millisecond on fast disks, up to seconds on a sick one. */
const SAVE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
/** Agent calls range from an echo to a minutes-long model run. */
const AGENT_BUCKETS = [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]

/**
 * taskvault's metrics in `registry`. Counts (sessions, tasks, in flight, restore) are read
 * from the manager at scrape time, so they are right whenever the registry was attached;
 * saves and agent calls are observed as events. Returns a function that detaches them all.
 */
export function registerTaskvaultMetrics (options: TaskvaultMetricsOptions): () => void {
  const { registry } = options
  // Names held before: one taken partway (a host's own metric) stops the registration, and only those made here go.
  const before = new Set(registry.getMetricsAsArray().map((metric) => metric.name))
  const names: string[] = []
  let detach: () => void
  try {
    detach = createMetrics(options, names)
  } catch (err) {
    for (const name of names) if (!before.has(name)) registry.removeSingleMetric(name)
    throw err
  }
  // Only this registration's own metrics, once: the names may be another registration's by the time it is called.
  const own = names.map((name) => [name, registry.getSingleMetric(name)] as const)
  return () => {
    detach()
    for (const [name, metric] of own) if (registry.getSingleMetric(name) === metric) registry.removeSingleMetric(name)
  }
}

/** Creates the metrics, their names pushed to `names` as each is made; returns what detaches their listeners. */
function createMetrics ({ registry, manager, store, prefix, streams, readWithinMs = Number.POSITIVE_INFINITY }: TaskvaultMetricsOptions, names: string[]): () => void {
  const registers = [registry]
  const name = (suffix: string): string => {
    names.push(prefix + suffix)
    return prefix + suffix
  }

  const saveDuration = new Histogram({ name: name('session_save_duration_seconds'), help: 'Durable session saves (write, fsync, rename, folder fsync), failed ones included', buckets: SAVE_BUCKETS, registers })
  const saveFailures = new Counter({ name: name('session_save_failures_total'), help: 'Session saves storage failed (answered 503 or 507); saves refused by rule (a bound, another version stored) are not counted', registers })
  const onSave = (event: SaveEvent): void => {
    saveDuration.observe(event.ms / 1000)
    if (event.outcome === 'failed') saveFailures.inc()
  }

  const agentDuration = new Histogram({ name: name('agent_call_duration_seconds'), help: 'Agent calls by agent (task type, or default) and outcome', labelNames: ['agent', 'outcome'], buckets: AGENT_BUCKETS, registers })
  const agentFailures = new Counter({ name: name('agent_call_failures_total'), help: 'Agent calls that did not return a result, by agent and outcome', labelNames: ['agent', 'outcome'], registers })
  const onAgentCall = (event: AgentCallEvent): void => {
    const labels = { agent: event.agent, outcome: event.outcome }
    agentDuration.observe(labels, event.ms / 1000)
    if (event.outcome !== 'ok') agentFailures.inc(labels)
  }

  new Gauge({
    name: name('sessions'),
    help: 'Sessions by state: active (work left), completed (all tasks done), archived (moved to archive/)',
    labelNames: ['state'],
    registers,
    collect () {
      const stats = manager.stats()
      this.set({ state: 'active' }, stats.active_sessions)
      this.set({ state: 'completed' }, stats.completed_sessions)
      // Counted by the archive once it keeps a count; absent until then. A shared store's archive
      // changes under other replicas, unseen by this one's index: taskvault_stored_sessions counts it.
      const archived = (stats as { archived_sessions?: unknown }).archived_sessions
      if (typeof archived === 'number' && store.shared === undefined) this.set({ state: 'archived' }, archived)
    }
  })
  new Gauge({
    name: name('tasks'),
    help: 'Tasks of live sessions by status',
    labelNames: ['status'],
    registers,
    collect () {
      const tasks = byStatus(manager.stats())
      for (const status of TASK_STATUSES) this.set({ status }, tasks[status])
    }
  })
  // What the store holds, where taskvault_sessions and _tasks are what this process holds: on
  // replicas of one database each holds copies of what it served, so summed over replicas they
  // count a session once per copy. These read the rows (every replica the same, as /stats), and
  // `store` names the store, so a dashboard takes one per store and adds the stores up.
  // A shared store is named by its event log's identity (a token made with the schema, and the
  // log table's oid), the same on every replica whatever URL each was given; null until read.
  // A store of one process (the file store, or PostgreSQL without replicas) by where it is.
  const shared = store.shared
  let storeLabel: string | null = shared !== undefined ? null : digestName(store.kind, store.totals === undefined ? `${hostname()}:${store.location}` : store.location)
  let naming: Promise<string | null> | null = null
  const storeName = async (): Promise<string | null> => {
    if (storeLabel !== null || shared === undefined) return storeLabel
    // One read at a time (a scrape's gauges ask at once); a failed one is tried again at the next scrape.
    naming ??= shared.eventLog().then(({ token }) => (storeLabel = digestName(store.kind, token)), () => null).finally(() => { naming = null })
    return Number.isFinite(readWithinMs) ? await orLate(naming, readWithinMs, null) : await naming
  }
  let counting: Promise<StoreTotals | null> | null = null
  // One count of the rows per scrape, whichever gauge asks first (a scrape collects them at once).
  const storedTotals = async (): Promise<StoreTotals | null> => {
    if (store.totals === undefined) return null
    // A count still running when the next scrape comes is waited for again, not started twice.
    counting ??= store.totals().catch(() => null).finally(() => { counting = null })
    return Number.isFinite(readWithinMs) ? await orLate(counting, readWithinMs, null) : await counting
  }
  /** The counts over the store: the rows of a shared one (null while it does not answer), else this process's, which hold everything. */
  const storedCounts = async (): Promise<Omit<StoreTotals, 'encryption' | 'storage'> | null> =>
    store.totals === undefined ? manager.stats() : storedTotals()
  new Gauge({
    name: name('stored_sessions'),
    help: 'Sessions in the store by state (active, completed, archived), the same on every replica sharing it; store names the store',
    labelNames: ['state', 'store'],
    registers,
    async collect () {
      this.reset()
      const [counts, name] = await Promise.all([storedCounts(), storeName()])
      // Absent while a database does not answer, rather than this replica's guess.
      if (counts === null || name === null) return
      this.set({ state: 'active', store: name }, counts.active_sessions)
      this.set({ state: 'completed', store: name }, counts.completed_sessions)
      this.set({ state: 'archived', store: name }, counts.archived_sessions)
    }
  })
  new Gauge({
    name: name('stored_tasks'),
    help: 'Tasks of the active sessions in the store by status, the same on every replica sharing it; store names the store',
    labelNames: ['status', 'store'],
    registers,
    async collect () {
      this.reset()
      const [counts, name] = await Promise.all([storedCounts(), storeName()])
      if (counts === null || name === null) return
      const tasks = byStatus(counts)
      for (const status of TASK_STATUSES) this.set({ status, store: name }, tasks[status])
    }
  })
  if (streams !== undefined) new Gauge({ name: name('event_streams'), help: 'Event streams (GET /events) open now, or waiting behind other answers on their connection; past TASK_EVENTS_MAX_CLIENTS one more answers 503', registers, collect () { this.set(streams()) } })
  new Gauge({ name: name('executions_in_flight'), help: 'Executions (execute, execute-all) running now', registers, collect () { this.set(manager.runningCount) } })
  new Gauge({ name: name('storage_bytes'), help: 'Bytes of the live session files this process holds (PostgreSQL: of the sessions this replica holds copies of)', registers, collect () { this.set(manager.stats().storage.bytes) } })
  new Gauge({ name: name('restore_duration_seconds'), help: 'How long the restore at startup took', registers, collect () { this.set(manager.stats().storage.restore_ms / 1000) } })
  new Gauge({ name: name('encryption_enabled'), help: '1 when session content is sealed at rest (TASK_ENCRYPTION_KEYS)', registers, collect () { this.set(store.encryption() === null ? 0 : 1) } })
  new Gauge({
    name: name('sealed_sessions'),
    help: 'Active sessions by the key (kid) that sealed them; kid="" counts plaintext ones',
    labelNames: ['kid'],
    registers,
    async collect () {
      this.reset()
      // A shared store counts its rows (every replica's, and `taskvault seal`'s): every replica
      // reports the same. While the database does not answer, absent rather than this replica's guess.
      const encryption = store.totals === undefined ? store.encryption() : (await storedTotals())?.encryption ?? null
      if (encryption === null) return
      // Every configured kid is there, 0 when no session is under it: a rotation alert tells "done" from "no data".
      for (const [kid, count] of Object.entries(encryption.sealed_sessions)) this.set({ kid }, count)
      this.set({ kid: '' }, encryption.plaintext_sessions)
    }
  })
  new Gauge({
    name: name('encryption_active_kid'),
    help: 'The key (kid) every write is sealed under: 1 for that kid; absent without encryption',
    labelNames: ['kid'],
    registers,
    collect () {
      this.reset()
      const encryption = store.encryption()
      if (encryption !== null) this.set({ kid: encryption.active_kid }, 1)
    }
  })
  new Gauge({ name: name('restore_failed_loads'), help: 'Session files that did not load since the start: set aside by the restore, or archived ones found unreadable when first read', registers, collect () { this.set(manager.stats().storage.failed_loads) } })
  // Issue 18: readiness and free space, for the rules in deploy/prometheus/alerts.yml.
  // The same check as GET /ready, store round trip included: a database (or a storage folder) gone
  // while nothing is saved must still read 0.
  new Gauge({ name: name('ready'), help: '1 once sessions are restored and until shutdown begins, while the storage answers (what GET /ready answers 200 to), else 0', registers, async collect () { this.set((await manager.checkReady().catch(() => new Error('check failed'))) === null ? 1 : 0) } })
  const finished = new Counter({ name: name('tasks_finished_total'), help: 'Tasks that reached Completed or Failed (once durable), by status', labelNames: ['status'], registers })
  for (const status of ['Completed', 'Failed']) finished.inc({ status }, 0)
  const onFinished = (event: TaskFinishedEvent): void => { finished.inc({ status: event.status }) }
  if (store.space !== undefined) {
    // Left out for a store that reports no space, and on a scrape whose reading failed (the
    // folder gone, as /stats leaves them out): a 0, or the last reading, would look like a fact.
    registry.registerMetric(new ReadingGauge(name('storage_free_bytes'), 'Bytes still free on the filesystem holding the storage folder', async () => (await manager.disk.read())?.free_bytes ?? null) as unknown as Metric)
    registry.registerMetric(new ReadingGauge(name('storage_capacity_bytes'), 'Size of the filesystem holding the storage folder', async () => (await manager.disk.read())?.total_bytes ?? null) as unknown as Metric)
  }

  // Listening only once every metric is made: a registration stopped partway leaves no listener.
  store.events?.on('save', onSave)
  manager.events.on('agent-call', onAgentCall)
  manager.events.on('task-finished', onFinished)
  return () => {
    store.events?.off('save', onSave)
    manager.events.off('agent-call', onAgentCall)
    manager.events.off('task-finished', onFinished)
  }
}

/** Task counts by status, from counts named as /stats names them. */
function byStatus (counts: Pick<StoreTotals, 'pending_tasks' | 'in_progress_tasks' | 'completed_tasks' | 'failed_tasks'>): Record<(typeof TASK_STATUSES)[number], number> {
  return { Pending: counts.pending_tasks, InProgress: counts.in_progress_tasks, Completed: counts.completed_tasks, Failed: counts.failed_tasks }
}

/**
 * A store's name in `store` labels: its kind and a digest of what tells it apart (a database's
 * event log identity; a folder on this host), so nothing of an address shows in an
 * unauthenticated /metrics.
 */
function digestName (kind: string, identity: string): string {
  return `${kind}:${createHash('sha256').update(identity).digest('hex').slice(0, 12)}`
}
