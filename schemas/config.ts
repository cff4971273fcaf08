import { Type, type Static } from '@sinclair/typebox'

// Node timers hold at most 2^31-1 ms; larger values would fire at once.
const MAX_TIMER_MS = 2_147_483_647
const HOUR_MS = 3_600_000

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** Every setting, with its default. Read from the environment and `.env`; a bad value stops the boot. */
export const ConfigSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 7000 }),
  HOST: Type.String({ minLength: 1, default: '127.0.0.1' }),
  TASK_STORAGE_DIR: Type.String({ minLength: 1, default: 'data/tasks' }),
  // The store: one JSON file per session in TASK_STORAGE_DIR, or PostgreSQL (issue 13).
  TASK_STORE: Type.Union([Type.Literal('file'), Type.Literal('postgres')], { default: 'file', description: 'file: one JSON file per session in TASK_STORAGE_DIR; postgres: rows in DATABASE_URL' }),
  DATABASE_URL: Type.String({ default: '', description: 'postgres://user:password@host:5432/database; required with TASK_STORE=postgres. Its password is never logged' }),
  TASK_DB_SCHEMA: Type.String({ pattern: '^[a-z_][a-z0-9_]{0,62}$', default: 'taskvault', description: 'The PostgreSQL schema holding taskvault\'s tables (lower case, created if missing)' }),
  TASK_DB_POOL_MAX: Type.Integer({ minimum: 1, maximum: 1000, default: 10, description: 'Connections in the pool' }),
  TASK_DB_STATEMENT_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: HOUR_MS, default: 15_000, description: 'A statement running longer is cancelled and its request fails with 503' }),
  TASK_DB_PING_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: HOUR_MS, default: 2000, description: '/ready\'s database check answers 503 once it has waited this long (for a connection of the pool, or for a table lock), so probes never pile up on a stalled database; shutdown waits as long on it for each of its last steps; keep it under the probe\'s own timeout' }),
  TASK_DB_SAVE_BATCH: Type.Integer({ minimum: 1, maximum: 10_000, default: 50, description: 'Saves that queue while every connection is busy are written together, this many sessions per statement and commit; 1 writes each alone' }),
  TASK_DB_SAVE_BATCH_BYTES: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, default: 4 * 1024 * 1024, description: 'Stored bytes in one such statement (a bigger session is written alone)' }),
  TASK_REPLICA_ID: Type.String({ pattern: '^([A-Za-z0-9_.-]{1,128})?$', default: '', description: 'This server\'s name among the replicas on one PostgreSQL schema (a Kubernetes pod name is ideal); empty: hostname-pid' }),
  TASK_LEASE_MS: Type.Integer({ minimum: 1000, maximum: HOUR_MS, default: 30_000, description: 'PostgreSQL: how long a replica\'s lease on a session it runs lasts; it renews every lease (and its heartbeat) every third of this, in one statement' }),
  TASK_SWEEP_INTERVAL_MS: Type.Integer({ minimum: 100, maximum: HOUR_MS, default: 5000, description: 'PostgreSQL: how often each replica claims sessions whose lease ran out (a dead replica\'s runs) and carries them on' }),
  TASK_SWEEP_BATCH: Type.Integer({ minimum: 1, maximum: 10_000, default: 100, description: 'PostgreSQL: sessions one sweep claims at most; also the page an archive or retention pass reads its candidates in' }),
  TASK_SWEEP_RECHECK: Type.Integer({ minimum: 0, maximum: 100_000, default: 1000, description: 'PostgreSQL: sessions this replica holds that each sweep checks against the database, in turn: a copy of one another replica deleted or archived is dropped, one it changed is brought up to date; 0: never' }),
  TASK_SWEEP_BACKOFF_MAX_MS: Type.Integer({ minimum: 100, maximum: 24 * HOUR_MS, default: 300_000, description: 'PostgreSQL: a session a sweep could not take over (unreadable, or its save fails) is claimed again after one interval, then twice as long each time, up to this' }),
  TASK_DB_CONNECT_TIMEOUT_MS: Type.Integer({ minimum: 1000, maximum: HOUR_MS, default: 60_000, description: 'At boot, how long to wait (retrying with backoff) for an unreachable database, for a migration\'s table lock another session holds, or for the database to answer again when it goes away during the restore, before exiting 1 (at least 1000: it bounds the first attempt too)' }),
  TASK_AUTO_SAVE: Type.Boolean({ default: true }),
  TASK_ARCHIVE_DAYS: Type.Number({ minimum: 0, default: 30, description: '0 turns archiving off' }),
  TASK_ARCHIVE_RETENTION_DAYS: Type.Number({ minimum: 0, default: 0, description: 'archived sessions finished longer ago are deleted; 0 keeps them forever' }),
  TASK_ARCHIVE_FAILED_RETENTION_DAYS: Type.Number({ minimum: 0, default: 0, description: 'the same for sessions with a Failed task; 0 means TASK_ARCHIVE_RETENTION_DAYS' }),
  // GET /api/v1/tasks/backup: each one being sent holds a session or more in memory.
  TASK_BACKUP_MAX_CLIENTS: Type.Integer({ minimum: 1, maximum: 10_000, default: 4, description: 'GET /backup answers being sent at once; one more answers 503' }),
  TASK_BACKUP_STALL_MS: Type.Integer({ minimum: 100, maximum: MAX_TIMER_MS, default: 60_000, description: 'A GET /backup whose client takes no byte for this long is cut, so a client that stopped reading holds neither memory nor a TASK_BACKUP_MAX_CLIENTS place' }),
  TASK_ANSWER_STALL_MS: Type.Integer({ minimum: 100, maximum: MAX_TIMER_MS, default: 60_000, description: 'A large answer (a whole session, an execute-all\'s results) is sent as its client reads it; one whose client takes no byte of it for this long is cut, so a client that stopped reading holds no memory' }),
  TASK_BACKUP_READ_AHEAD: Type.Integer({ minimum: 1, maximum: 1000, default: 32, description: 'PostgreSQL: active sessions a GET /backup reads ahead of the one it sends, in one statement, held in memory meanwhile' }),
  TASK_ARCHIVE_INTERVAL_MINUTES: Type.Number({ minimum: 0.01, maximum: Math.floor(MAX_TIMER_MS / 60_000), default: 60, description: 'How often the archiver runs; at least 0.01 (0.6 s), so a pass over every session cannot start every millisecond' }),
  TASK_RESTORE_CONCURRENCY: Type.Integer({ minimum: 1, maximum: 64, default: 2, description: 'Reader threads at startup; each reads batches of session files in turn' }),
  TASK_SHUTDOWN_GRACE_MS: Type.Integer({ minimum: 0, maximum: HOUR_MS, default: 10_000 }),
  BODY_LIMIT: Type.Integer({ minimum: 1024, maximum: 1024 * 1024 * 1024, default: 1024 * 1024 }),
  TASK_MAX_SESSIONS: Type.Integer({ minimum: 1, default: 100_000 }),
  TASK_MAX_TASKS_PER_SESSION: Type.Integer({ minimum: 1, default: 1000 }),
  TASK_MAX_INSTRUCTION_BYTES: Type.Integer({ minimum: 1, default: 64 * 1024 }),
  TASK_MAX_RESULT_BYTES: Type.Integer({ minimum: 1, default: 1024 * 1024 }),
  // A stored session is read back whole at restore, as one string: V8 caps strings near 512 M characters.
  TASK_MAX_SESSION_BYTES: Type.Integer({ minimum: 64 * 1024, maximum: 256 * 1024 * 1024, default: 64 * 1024 * 1024, description: 'A session whose stored form would pass this is refused (400 LIMIT_EXCEEDED); a result that would pass it fails its task' }),
  TASK_ENCRYPTION_KEYS: Type.String({ default: '', description: 'kid:base64key,... (32-byte keys; the first seals every write, the others only open) or @/path/to/keys; empty: no encryption' }),
  TASK_API_KEYS: Type.String({ default: '', description: 'Comma-separated bearer keys; empty leaves the API open' }),
  TASK_ALLOWED_HOSTS: Type.String({ default: '', description: 'While TASK_API_KEYS is empty and the server listens on loopback, requests whose Host header is not a loopback name are refused (403), so a web page cannot reach the server by DNS rebinding: comma-separated further names to answer to (listing any turns the check on wherever it listens); * answers every name' }),
  TASK_LOCK_REFRESH_MS: Type.Integer({ minimum: 100, maximum: HOUR_MS, default: 10_000 }),
  TASK_LOCK_STALE_MS: Type.Integer({ minimum: 1000, maximum: MAX_TIMER_MS, default: 60_000 }),
  TASK_AGENTS: Type.String({ default: '', description: 'JSON (or @file.json) mapping a task type or "default" to an agent spec; empty: the echo demo agent' }),
  TASK_IDEMPOTENCY_KEYS: Type.Integer({ minimum: 0, maximum: 10_000, default: 100, description: 'Idempotency-Key values of POST /create each session remembers (the newest); 0 keeps none, so every create adds its tasks' }),
  TASK_MAX_INTERRUPTIONS: Type.Integer({ minimum: 1, maximum: 1000, default: 3, description: 'Restarts that may find a task running before it is failed' }),
  TASK_RUN_RETRY_MS: Type.Integer({ minimum: 10, maximum: HOUR_MS, default: 1000, description: 'A background run stopped by a storage fault, and a failed change\'s write-back of the acknowledged state, try again after this, doubling each time' }),
  TASK_RUN_RETRY_MAX_MS: Type.Integer({ minimum: 10, maximum: HOUR_MS, default: 60_000, description: 'The longest wait between those tries' }),
  TASK_RESUME_ON_START: Type.Boolean({ default: true, description: 'Resume background runs a restart interrupted' }),
  TASK_MAX_AGENT_CALLS: Type.Integer({ minimum: 1, maximum: 100_000, default: 64, description: 'Agent calls in flight at once, over every session; more wait their turn (their tasks stay Pending meanwhile)' }),
  TASK_COMMAND_DRAIN_MS: Type.Integer({ minimum: 0, maximum: 60_000, default: 200, description: 'After a command agent\'s program exits, how long its output may take to end before what it left is killed' }),
  TASK_COMMAND_CGROUP: Type.Union([Type.Literal('auto'), Type.Literal('off')], { default: 'auto', description: 'auto: each command call runs in its own cgroup (v2) when the host allows, so setsid cannot escape; off: its process group only' }),
  LOG_LEVEL: Type.Union(LOG_LEVELS.map((level) => Type.Literal(level)), { default: 'info' }),
  LOG_PRETTY: Type.Boolean({ default: false, description: 'Human-readable logs through pino-pretty, for local use' }),
  LOG_QUEUE_BYTES: Type.Integer({ minimum: 64 * 1024, maximum: 1024 * 1024 * 1024, default: 16 * 1024 * 1024, description: 'Log lines waiting to be written to stdout, in bytes at most: past it (a reader that does not keep up, a log that cannot be written) lines are dropped, and counted in a warning once writing works again' }),
  TASK_DOCS: Type.Boolean({ default: true, description: 'OpenAPI document at /documentation/json and its UI at /documentation' }),
  TASK_METRICS: Type.Boolean({ default: true, description: 'Prometheus metrics at /metrics' }),
  TASK_METRICS_AUTH: Type.Boolean({ default: false, description: '/metrics needs an API key too (when TASK_API_KEYS is set)' }),
  // Connections: how long a request may take to arrive, how long an idle keep-alive socket stays, how many sockets at once.
  TASK_REQUEST_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: MAX_TIMER_MS, default: 30_000, description: 'Time to receive a whole request (headers and body); 408 and closed after it' }),
  TASK_KEEP_ALIVE_TIMEOUT_MS: Type.Integer({ minimum: 1, maximum: MAX_TIMER_MS, default: 65_000, description: 'An idle keep-alive socket is closed after this; above the 60 s idle timeout of common proxies' }),
  TASK_MAX_CONNECTIONS: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 512, description: 'Open client sockets, so storage keeps its file descriptors; one more closes the oldest with no request being answered (the newcomer when every socket is answering)' }),
  TASK_MAX_PIPELINED: Type.Integer({ minimum: 1, maximum: 100_000, default: 32, description: 'Requests one connection may pipeline behind an unanswered change (they wait their turn, parsed already); past it the connection is closed, so one client cannot grow memory without end' }),
  TASK_RESERVED_FILES: Type.Integer({ minimum: 16, maximum: 1_000_000, default: 256, description: 'File descriptors kept for session files, the database pool and the process: when the open file limit (ulimit -n) is below TASK_MAX_CONNECTIONS + TASK_EVENTS_MAX_CLIENTS + this, those two are lowered in proportion' }),
  TASK_MAX_WRITES: Type.Integer({ minimum: 1, maximum: 100_000, default: 128, description: 'File store: session files written at once, each holding a file descriptor; more saves wait their turn, so a burst (a restart resetting thousands of interrupted tasks) stays within TASK_RESERVED_FILES' }),
  // Disk figures (issue 18): free space of the filesystem holding the storage folder.
  TASK_DISK_WARN_RATIO: Type.Number({ minimum: 0, maximum: 1, default: 0.1, description: 'The log warns once when the free share of the storage filesystem falls below this, and again when it recovers; 0 never warns' }),
  TASK_DISK_CHECK_INTERVAL_MS: Type.Integer({ minimum: 0, maximum: MAX_TIMER_MS, default: 60_000, description: 'How often free space is checked besides at /stats and /metrics; 0 checks only then' }),
  TASK_DISK_MAX_AGE_MS: Type.Integer({ minimum: 0, maximum: HOUR_MS, default: 1000, description: '/stats and /metrics reuse a free-space reading this recent instead of asking the filesystem again; 0: always ask' }),
  // Live view: the event stream (GET /api/v1/tasks/events) and the dashboard.
  TASK_EVENTS_BUFFER: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 10_000, description: 'Latest events kept for clients resuming with Last-Event-ID; older ids get a reset' }),
  TASK_EVENTS_BUFFER_BYTES: Type.Integer({ minimum: 64 * 1024, maximum: 1024 * 1024 * 1024, default: 32 * 1024 * 1024, description: 'The kept events\' frames in bytes at most: past it the oldest go (fewer than TASK_EVENTS_BUFFER), so events naming many tasks hold bounded memory' }),
  TASK_EVENTS_HEARTBEAT_MS: Type.Integer({ minimum: 10, maximum: HOUR_MS, default: 15_000, description: 'A heartbeat comment on every stream this often' }),
  TASK_EVENTS_MAX_CLIENTS: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1000, description: 'Concurrent event streams; past it 503. Their sockets come on top of TASK_MAX_CONNECTIONS' }),
  TASK_EVENTS_MAX_QUEUED_BYTES: Type.Integer({ minimum: 1024, maximum: 1024 * 1024 * 1024, default: 1024 * 1024, description: 'A stream client with more bytes waiting to be sent is cut off with a reset' }),
  TASK_EVENTS_FLUSH_MS: Type.Integer({ minimum: 0, maximum: 1000, default: 25, description: 'Events are written to stream clients at most this often, batched; 0: once per event-loop turn' }),
  TASK_EVENTS_FLUSH_MAX_MS: Type.Integer({ minimum: 0, maximum: 10_000, default: 250, description: 'When the rest of the server leaves the event loop no idle time, event writes spread out up to this far apart (never closer than TASK_EVENTS_FLUSH_MS)' }),
  TASK_EVENTS_FANOUT_SHARE: Type.Number({ minimum: 0.01, maximum: 1, default: 0.05, description: 'The share of a busy event loop that writing events to stream clients keeps; with idle time they take what is idle' }),
  TASK_EVENTS_BUSY_CHANGES: Type.Number({ minimum: 0, maximum: 100_000, default: 4, description: 'Changes (requests other than GET, HEAD and OPTIONS) in progress on average past which the server counts as busy however idle its event loop looks (changes waiting on the disk leave it idle): event writes then keep TASK_EVENTS_FANOUT_SHARE of it; 0: the event loop alone decides' }),
  TASK_EVENTS_CUT_GRACE_MS: Type.Integer({ minimum: 0, maximum: HOUR_MS, default: 5000, description: 'A stream client cut off for not reading has this long to read its reset before its connection is closed (its queued bytes with it)' }),
  TASK_EVENTS_FANOUT_SLICE_MS: Type.Number({ minimum: 0, maximum: 1000, default: 15, description: 'A batch of event writes holds the event loop this long at most before letting requests through, then goes on at the next turn (1,000 clients: one slice, mostly); 0: 16 clients per turn' }),
  TASK_EVENTS_POLL_MS: Type.Integer({ minimum: 50, maximum: HOUR_MS, default: 1000, description: 'PostgreSQL replicas: each reads the shared event log this often besides when notified (a notification is lost with its connection)' }),
  TASK_EVENTS_PUBLISH_WAIT_MS: Type.Integer({ minimum: 0, maximum: 60_000, default: 1000, description: 'PostgreSQL replicas: how long an answer waits for its change\'s live-view events to reach the shared event log, so a session\'s events keep their order when the next change goes through another replica; 0: no wait' }),
  TASK_EVENTS_CLOSE_MS: Type.Integer({ minimum: 0, maximum: HOUR_MS, default: 2000, description: 'At shutdown, how long the last live-view events may take to reach stream clients, through the shared event log (PostgreSQL replicas) and out of the process (a slow reader), before the streams end without them' }),
  TASK_DASHBOARD: Type.Boolean({ default: true, description: 'The dashboard at /dashboard' })
})
export type Config = Static<typeof ConfigSchema>

/** What Ajv reports of a bad setting (the fields used here). */
export interface SettingError {
  instancePath: string
  keyword: string
  message?: string
}

/**
 * Ajv's errors as one line per bad setting, `NAME problem`. A choice list is an anyOf of
 * constants, which Ajv reports as one "must be equal to constant" per choice plus an anyOf
 * summary: that becomes "must be one of a, b, c", so the line says what would do.
 */
export function describeSettingErrors (errors: readonly SettingError[]): string[] {
  const lines = new Map<string, string>()
  for (const error of errors) {
    const name = error.instancePath.replace(/^\//u, '')
    if (lines.has(name)) continue
    const choices = settingChoices(name)
    lines.set(name, `${name} ${choices !== null ? `must be one of ${choices.join(', ')}` : error.message ?? 'is invalid'}`)
  }
  return [...lines.values()]
}

/**
 * Number and boolean settings given as text Ajv's coercion reads loosely, one line each. Blank
 * ("  ") reads as 0 where an empty one is refused: a templated `PORT=" $P"` with P unset would
 * start the server on a random port, or turn a bound off, without a word. A number not in decimal
 * digits (`0x10`, `1e3`, `+5`; spaces around it are fine) is read as JavaScript reads it, which
 * no one writing a setting means: refused as the API refuses such a `limit`.
 */
export function settingTextErrors (values: Readonly<Record<string, unknown>>): string[] {
  return Object.entries(ConfigSchema.properties as Record<string, { type?: string }>).flatMap(([name, schema]) => {
    const value = values[name]
    if (typeof value !== 'string' || value === '') return []
    const typed = schema.type === 'integer' || schema.type === 'number' || schema.type === 'boolean'
    if (typed && value.trim() === '') return [`${name} must be ${schema.type ?? ''}, not blank`]
    const decimal = schema.type === 'integer' ? /^-?\d+$/u : /^-?\d+(\.\d+)?$/u
    if ((schema.type === 'integer' || schema.type === 'number') && !decimal.test(value.trim())) {
      return [`${name} must be ${schema.type === 'integer' ? 'a whole number' : 'a number'} in decimal digits, not '${value.slice(0, 40)}'`]
    }
    return []
  })
}

/** The values a choice-list setting allows; null for any other setting. */
export function settingChoices (name: string): string[] | null {
  const schema = (ConfigSchema.properties as Record<string, { anyOf?: Array<{ const?: unknown }> }>)[name]
  const consts = schema?.anyOf?.map((branch) => branch.const)
  return consts !== undefined && consts.every((value) => typeof value === 'string') ? consts as string[] : null
}

/**
 * Names shaped like taskvault's (`TASK_*`) that name no setting, one line each with the setting
 * it likely meant: a misspelt one (`TASK_API_KEY`, `TASK_PORT`) is ignored, its setting left at
 * the default without a word, an open API among them.
 */
export function strayTaskNames (names: Iterable<string>): string[] {
  const known = Object.keys(ConfigSchema.properties)
  const stray = (name: string): boolean => name.startsWith('TASK_') && !Object.hasOwn(ConfigSchema.properties, name) && !NAMED_ELSEWHERE.test(name)
  return [...new Set(names)].filter(stray).sort().map((name) => {
    // PORT, HOST, DATABASE_URL and the LOG_ ones carry no prefix: `TASK_PORT` means PORT.
    const ranked = known.map((setting) => ({ setting, distance: Math.min(editDistance(name, setting), editDistance(name, `TASK_${setting}`)) }))
      .sort((a, b) => a.distance - b.distance)
    const near = ranked[0] !== undefined && ranked[0].distance <= Math.max(1, Math.floor(name.length / STRAY_LETTERS_PER_EDIT)) ? `; did you mean ${ranked[0].setting}?` : ''
    return `${name} is set but names no setting, so it is ignored${near}`
  })
}

/**
 * `TASK_` names taskvault gives meaning to elsewhere: what a command agent's program is told
 * (services/runner/agents/command.ts; a program may run the CLI) and the tests' own settings.
 */
const NAMED_ELSEWHERE = /^TASK_(ID|TYPE|ATTEMPT|RETRIES|TEST_[A-Z0-9_]*)$/u

/** A stray name is taken to mean a setting within one edit (a letter added, dropped or changed) per so many of its letters. */
const STRAY_LETTERS_PER_EDIT = 5

/** Levenshtein distance, one row at a time. */
function editDistance (a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    const next = [i]
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min((row[j] as number) + 1, (next[j - 1] as number) + 1, (row[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    row = next
  }
  return row[b.length] as number
}
