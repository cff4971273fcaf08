import { Type, type TObject, type TOptional } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { ConfigSchema, type Config } from './config.js'

/**
 * Options backed by a setting. Each map names, once, the setting an option falls back to; the
 * option's type, bounds and default all come from that setting in ConfigSchema. Plugins build
 * their option schemas from these maps, and services fill what they are not given from the
 * same defaults, so no default is written twice.
 */

type Settings = typeof ConfigSchema.properties
type SettingMap = Readonly<Record<string, keyof Config>>

/** Every setting's default, from the one schema that declares them. */
export const SETTING_DEFAULTS: Readonly<Config> = Value.Create(ConfigSchema)

/** The options of a map, all present: what a service runs with once fallbacks are applied. */
export type Resolved<M extends SettingMap> = { -readonly [K in keyof M]: Config[M[K]] }

/** The option schema of a map: each option optional, with its setting's type and bounds. */
export function settingOptions<M extends SettingMap> (map: M): TObject<{ -readonly [K in keyof M]: TOptional<Settings[M[K]]> }> {
  const properties = Object.fromEntries(Object.entries(map).map(([option, key]) => [option, Type.Optional(ConfigSchema.properties[key])]))
  return Type.Object(properties, { additionalProperties: false }) as never
}

/** Every option of `map`: the given value, else the setting's value in `settings` (its default unless told). */
export function resolveSettings<M extends SettingMap> (map: M, given: Partial<Resolved<M>>, settings: Readonly<Config> = SETTING_DEFAULTS): Resolved<M> {
  const resolved: Record<string, unknown> = {}
  for (const [option, key] of Object.entries(map)) resolved[option] = (given as Record<string, unknown>)[option] ?? settings[key]
  return resolved as Resolved<M>
}

/** The store's settings: which store, the file store's folder and lock, PostgreSQL's connection, both's bounds and keys. */
export const STORE_SETTINGS = {
  store: 'TASK_STORE',
  storageDir: 'TASK_STORAGE_DIR',
  databaseUrl: 'DATABASE_URL',
  dbSchema: 'TASK_DB_SCHEMA',
  dbPoolMax: 'TASK_DB_POOL_MAX',
  dbStatementTimeoutMs: 'TASK_DB_STATEMENT_TIMEOUT_MS',
  dbConnectTimeoutMs: 'TASK_DB_CONNECT_TIMEOUT_MS',
  dbPingTimeoutMs: 'TASK_DB_PING_TIMEOUT_MS',
  dbSaveBatch: 'TASK_DB_SAVE_BATCH',
  dbSaveBatchBytes: 'TASK_DB_SAVE_BATCH_BYTES',
  replicaId: 'TASK_REPLICA_ID',
  leaseMs: 'TASK_LEASE_MS',
  lockRefreshMs: 'TASK_LOCK_REFRESH_MS',
  lockStaleMs: 'TASK_LOCK_STALE_MS',
  maxSessionBytes: 'TASK_MAX_SESSION_BYTES',
  maxWrites: 'TASK_MAX_WRITES',
  encryptionKeys: 'TASK_ENCRYPTION_KEYS'
} as const

/** The task manager's settings: bounds, restore, shutdown, background runs and the disk watch. */
export const MANAGER_SETTINGS = {
  autoSave: 'TASK_AUTO_SAVE',
  restoreConcurrency: 'TASK_RESTORE_CONCURRENCY',
  shutdownGraceMs: 'TASK_SHUTDOWN_GRACE_MS',
  maxSessions: 'TASK_MAX_SESSIONS',
  maxTasksPerSession: 'TASK_MAX_TASKS_PER_SESSION',
  maxInstructionBytes: 'TASK_MAX_INSTRUCTION_BYTES',
  maxResultBytes: 'TASK_MAX_RESULT_BYTES',
  maxInterruptions: 'TASK_MAX_INTERRUPTIONS',
  idempotencyKeys: 'TASK_IDEMPOTENCY_KEYS',
  resumeOnStart: 'TASK_RESUME_ON_START',
  runRetryMs: 'TASK_RUN_RETRY_MS',
  runRetryMaxMs: 'TASK_RUN_RETRY_MAX_MS',
  maxAgentCalls: 'TASK_MAX_AGENT_CALLS',
  diskWarnRatio: 'TASK_DISK_WARN_RATIO',
  diskCheckIntervalMs: 'TASK_DISK_CHECK_INTERVAL_MS',
  diskMaxAgeMs: 'TASK_DISK_MAX_AGE_MS',
  sweepIntervalMs: 'TASK_SWEEP_INTERVAL_MS',
  sweepBatch: 'TASK_SWEEP_BATCH',
  sweepRecheck: 'TASK_SWEEP_RECHECK',
  sweepBackoffMaxMs: 'TASK_SWEEP_BACKOFF_MAX_MS'
} as const

/** How command agents end and are contained. */
export const COMMAND_SETTINGS = {
  commandDrainMs: 'TASK_COMMAND_DRAIN_MS',
  commandCgroup: 'TASK_COMMAND_CGROUP'
} as const

/** The archiver's schedule and retention. */
export const ARCHIVER_SETTINGS = {
  archiveDays: 'TASK_ARCHIVE_DAYS',
  archiveIntervalMinutes: 'TASK_ARCHIVE_INTERVAL_MINUTES',
  archiveRetentionDays: 'TASK_ARCHIVE_RETENTION_DAYS',
  archiveFailedRetentionDays: 'TASK_ARCHIVE_FAILED_RETENTION_DAYS'
} as const

/** The task routes' bounds. */
export const ROUTE_SETTINGS = {
  bodyLimit: 'BODY_LIMIT',
  answerStallMs: 'TASK_ANSWER_STALL_MS'
} as const

/** GET /backup's bounds. */
export const BACKUP_SETTINGS = {
  backupMaxClients: 'TASK_BACKUP_MAX_CLIENTS',
  backupStallMs: 'TASK_BACKUP_STALL_MS',
  backupReadAhead: 'TASK_BACKUP_READ_AHEAD'
} as const

/** The live view's event stream. */
export const EVENTS_SETTINGS = {
  eventsBuffer: 'TASK_EVENTS_BUFFER',
  eventsBufferBytes: 'TASK_EVENTS_BUFFER_BYTES',
  eventsHeartbeatMs: 'TASK_EVENTS_HEARTBEAT_MS',
  eventsMaxClients: 'TASK_EVENTS_MAX_CLIENTS',
  eventsMaxQueuedBytes: 'TASK_EVENTS_MAX_QUEUED_BYTES',
  eventsCutGraceMs: 'TASK_EVENTS_CUT_GRACE_MS',
  eventsFlushMs: 'TASK_EVENTS_FLUSH_MS',
  eventsFlushMaxMs: 'TASK_EVENTS_FLUSH_MAX_MS',
  eventsFanoutShare: 'TASK_EVENTS_FANOUT_SHARE',
  eventsBusyChanges: 'TASK_EVENTS_BUSY_CHANGES',
  eventsFanoutSliceMs: 'TASK_EVENTS_FANOUT_SLICE_MS',
  eventsPollMs: 'TASK_EVENTS_POLL_MS',
  eventsCloseMs: 'TASK_EVENTS_CLOSE_MS',
  eventsPublishWaitMs: 'TASK_EVENTS_PUBLISH_WAIT_MS'
} as const

export type ManagerSettings = Resolved<typeof MANAGER_SETTINGS>
export type StoreSettings = Resolved<typeof STORE_SETTINGS>
