import { Kind, Type, TypeRegistry, type SchemaOptions, type Static, type TNull, type TSchema, type TString, type TUnion } from '@sinclair/typebox'
import { IDEMPOTENCY_KEY_PATTERN, SESSION_ID_PATTERN, SessionId, TASK_TYPES, Task, TaskStatus, Timestamp } from './session.js'

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])

// One `enum`, not TypeBox's anyOf of literals: Swagger UI then offers every value in a list.
TypeRegistry.Set<{ enum: readonly string[] }>('StringEnum', (schema, value) => typeof value === 'string' && schema.enum.includes(value))
const StringEnum = <const T extends readonly string[]>(values: T, options: SchemaOptions = {}) =>
  Type.Unsafe<T[number]>({ ...options, [Kind]: 'StringEnum', type: 'string', enum: [...values] })

// Examples, shown in the OpenAPI document; test/docs.test.ts checks each against its schema.
const exampleTask = {
  id: 'task_1_1730707200',
  instruction: 'Write binary search',
  task_type: 'Coding',
  status: 'Completed',
  result: 'fn binary_search(items, target) { ... }',
  error: null,
  confidence: 0.95,
  created_at: '2025-11-04T08:00:00.000Z',
  started_at: '2025-11-04T08:00:05.000Z',
  completed_at: '2025-11-04T08:00:15.000Z',
  attempts: 1
}
const pendingTask = { ...exampleTask, id: 'task_2_1730707200', instruction: 'Explain its complexity', task_type: 'Analysis', status: 'Pending', result: null, confidence: null, started_at: null, completed_at: null, attempts: 0 }
const exampleProgress = { total: 2, completed: 1, failed: 0, pending: 1, in_progress: 0, all_done: false, percentage: 50 }
const executed = (task: typeof exampleTask) => ({ task_id: task.id, instruction: task.instruction, status: task.status, result: task.result, error: task.error, confidence: task.confidence })

interface ErrorExample { code: string, error: string, message: string }

/** What each error status typically says; the shape is always Fastify's. A route whose own answer differs says so (ROUTE_ERRORS). */
const ERROR_EXAMPLES: Readonly<Record<number, ErrorExample>> = {
  400: { code: 'FST_ERR_VALIDATION', error: 'Bad Request', message: 'body/session_id must match pattern "^[A-Za-z0-9_-]{1,128}$"' },
  401: { code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'missing Authorization: Bearer <key> header' },
  403: { code: 'HOST_NOT_ALLOWED', error: 'Forbidden', message: "with no API key this server answers only to addresses, loopback names and TASK_ALLOWED_HOSTS, not 'evil.example'" },
  404: { code: 'SESSION_NOT_FOUND', error: 'Not Found', message: "session 'important_work' not found" },
  408: { code: 'REQUEST_TIMEOUT', error: 'Request Timeout', message: 'the request did not arrive in full within TASK_REQUEST_TIMEOUT_MS' },
  409: { code: 'NO_PENDING_TASK', error: 'Conflict', message: "session 'important_work' has no pending task" },
  413: { code: 'FST_ERR_CTP_BODY_TOO_LARGE', error: 'Payload Too Large', message: 'Request body is too large' },
  414: { code: 'FST_ERR_MAX_PARAM_LENGTH', error: 'URI Too Long', message: 'a part of the path is longer than 4096 characters' },
  415: { code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE', error: 'Unsupported Media Type', message: "Unsupported Media Type ('application/x-www-form-urlencoded'): send the body as JSON with the header Content-Type: application/json (curl: -H 'content-type: application/json')" },
  417: { code: 'EXPECTATION_FAILED', error: 'Expectation Failed', message: "Expect 'foo' is not supported (only 100-continue is)" },
  422: { code: 'IDEMPOTENCY_KEY_REUSED', error: 'Unprocessable Entity', message: "session 'important_work' already answered a create under Idempotency-Key '4f1c2a' with other tasks; a new request needs a new key" },
  431: { code: 'REQUEST_HEADER_FIELDS_TOO_LARGE', error: 'Request Header Fields Too Large', message: 'the request line and headers are larger than the server takes (a query string too long?)' },
  503: { code: 'STORAGE_UNAVAILABLE', error: 'Service Unavailable', message: "saving session 'important_work' failed: storage is unavailable (EIO)" },
  507: { code: 'STORAGE_FULL', error: 'Insufficient Storage', message: "saving session 'important_work' failed: storage is full (ENOSPC)" }
}

/** The examples of routes whose answer under a status is not the usual one (ERROR_EXAMPLES). */
const ROUTE_ERRORS = {
  query400: { code: 'FST_ERR_VALIDATION', error: 'Bad Request', message: 'querystring/session_id must match pattern "^[A-Za-z0-9_-]{1,128}$"' },
  noQuery400: { code: 'FST_ERR_VALIDATION', error: 'Bad Request', message: 'querystring must NOT have additional properties ("session_id" is not one of its fields)' },
  host400: { code: 'MISSING_HOST', error: 'Bad Request', message: 'an HTTP/1.1 request must carry a Host header' },
  busy409: { code: 'SESSION_BUSY', error: 'Conflict', message: "session 'important_work' is already executing" },
  unreadable409: { code: 'VERSION_CONFLICT', error: 'Conflict', message: "reading session 'important_work' refused: session 'important_work' has a stored row that does not read (important_work@7: does not match the session file format at '/session/tasks'); fix or delete that row first; nothing was written" },
  notRunning409: { code: 'NOT_RUNNING', error: 'Conflict', message: "session 'important_work' has no execution running" },
  notFailed409: { code: 'TASK_NOT_FAILED', error: 'Conflict', message: "session 'important_work' has no failed task" },
  notReady503: { code: 'NOT_READY', error: 'Service Unavailable', message: 'sessions are still being restored' },
  streams503: { code: 'TOO_MANY_STREAMS', error: 'Service Unavailable', message: '1000 event streams are open already (TASK_EVENTS_MAX_CLIENTS); try again later' },
  backups503: { code: 'TOO_MANY_BACKUPS', error: 'Service Unavailable', message: '4 backups are being sent already (TASK_BACKUP_MAX_CLIENTS); try again later' }
} satisfies Record<string, ErrorExample>

/** Fastify's error shape, used for every 4xx and 5xx. */
export const ErrorResponse = Type.Object({
  statusCode: Type.Integer(),
  code: Type.Optional(Type.String()),
  error: Type.String(),
  message: Type.String()
}, { description: 'Fastify error shape' })

/**
 * The error answers of a route: Fastify's shape under each status, with that status's example.
 * Every route may answer, before it runs: 403 HOST_NOT_ALLOWED (a Host name not allowed, without
 * API keys: see TASK_ALLOWED_HOSTS), 400 (MISSING_HOST, besides each route's own), and Node's
 * client errors (http/client-errors.ts): 408 (TASK_REQUEST_TIMEOUT_MS), 417 (an Expect other than
 * 100-continue) and 431 (headers too large).
 */
const errors = (codes: number[], own: Readonly<Record<number, ErrorExample>> = {}) => Object.fromEntries([...new Set([400, 403, 408, 417, 431, ...codes])].sort((a, b) => a - b).map((code) => {
  const example = own[code] ?? ERROR_EXAMPLES[code]
  return [code, example === undefined ? ErrorResponse : { ...ErrorResponse, examples: [{ statusCode: code, ...example }] }]
}))

export const SessionIdBody = Type.Object({ session_id: SessionId }, { additionalProperties: false, examples: [{ session_id: 'important_work' }] })
export type SessionIdBody = Static<typeof SessionIdBody>

export const TaskInput = Type.Object({
  instruction: Type.String({ minLength: 1 }),
  task_type: Type.Optional(StringEnum(TASK_TYPES, { description: 'Left out: classified from the instruction' }))
}, { additionalProperties: false })

export const CreateBody = Type.Object({
  session_id: SessionId,
  instructions: Type.Optional(Type.String({ description: 'Free text: numbered or bulleted lists, "Task 1: ...", "first ... then ...", or one task' })),
  // Bounded by TASK_MAX_TASKS_PER_SESSION (checked with the session's tasks) and the body limit.
  tasks: Type.Optional(Type.Array(TaskInput, { minItems: 1 }))
}, {
  additionalProperties: false,
  // Exactly one of the two, for clients; the route checks it itself (see routes/validation.ts).
  oneOf: [{ required: ['instructions'] }, { required: ['tasks'] }],
  examples: [
    { session_id: 'important_work', instructions: '1. Write binary search\n2. Explain its complexity' },
    { session_id: 'important_work', tasks: [{ instruction: 'Write binary search', task_type: 'Coding' }, { instruction: 'Explain its complexity' }] }
  ]
})
export type CreateBody = Static<typeof CreateBody>

export const CreateHeaders = Type.Object({
  'idempotency-key': Type.Optional(Type.String({
    pattern: IDEMPOTENCY_KEY_PATTERN,
    description: 'Makes a retried create safe: the same key with the same tasks, sent again to the same session, is answered as the first time (with `Idempotent-Replayed: true`) and adds nothing; with other tasks it is refused (422). 1 to 128 visible ASCII characters, a UUID for instance; each session remembers its newest TASK_IDEMPOTENCY_KEYS keys'
  }))
})

export const CreateResponse = Type.Object({
  session_id: SessionId,
  task_ids: Type.Array(Type.String()),
  total_tasks: Type.Integer({ description: 'Tasks this call added' }),
  tasks: Type.Array(Task)
}, {
  // Documented for clients (OpenAPI response headers); the serializer ignores it.
  headers: { 'idempotent-replayed': Type.Literal('true', { description: 'Sent only on a replay: the answer this Idempotency-Key had, and nothing added' }) },
  examples: [{ session_id: 'important_work', task_ids: [exampleTask.id, pendingTask.id], total_tasks: 2, tasks: [{ ...exampleTask, status: 'Pending', result: null, confidence: null, started_at: null, completed_at: null, attempts: 0 }, pendingTask] }]
})

export const Progress = Type.Object({
  total: Type.Integer(),
  completed: Type.Integer(),
  failed: Type.Integer(),
  pending: Type.Integer(),
  in_progress: Type.Integer(),
  all_done: Type.Boolean(),
  percentage: Type.Number()
})

/** Present only while a background run waits for storage. */
const Waiting = Type.Optional(Type.Literal('storage', { description: 'The background run is waiting for storage (a full or failing disk) and goes on by itself once saves succeed' }))

/** Present (and true) only on archived sessions. */
const Archived = Type.Optional(Type.Literal(true, { description: 'The session is in the archive' }))

export const ProgressResponse = Type.Composite([
  Type.Object({ session_id: SessionId }),
  Progress,
  Type.Object({
    running: Type.Boolean({ description: 'An execution (foreground or background) holds the session now' }),
    waiting: Waiting,
    archived: Archived
  })
], { examples: [{ session_id: 'important_work', ...exampleProgress, running: false }] })

export const ExecutedTask = Type.Object({
  task_id: Type.String(),
  instruction: Type.String(),
  status: TaskStatus,
  result: Nullable(Type.String()),
  error: Nullable(Type.String()),
  confidence: Nullable(Type.Number()),
  result_truncated: Type.Optional(Type.Boolean())
})

export const ExecuteResponse = Type.Composite([ExecutedTask, Type.Object({ progress: Progress })], { examples: [{ ...executed(exampleTask), progress: exampleProgress }] })

export const ExecuteAllResponse = Type.Object({
  session_id: SessionId,
  total_executed: Type.Integer(),
  results: Type.Array(ExecutedTask),
  progress: Progress
}, { examples: [{ session_id: 'important_work', total_executed: 1, results: [executed(exampleTask)], progress: { ...exampleProgress, completed: 2, pending: 0, all_done: true, percentage: 100 } }] })

export const ExecuteAllBody = Type.Object({
  session_id: SessionId,
  wait: Type.Optional(Type.Boolean({ default: true, description: 'false: answer 202 at once and run in the background; a restart resumes the run' }))
}, { additionalProperties: false, examples: [{ session_id: 'important_work' }, { session_id: 'important_work', wait: false }] })
export type ExecuteAllBody = Static<typeof ExecuteAllBody>

export const BackgroundRunResponse = Type.Object({
  session_id: SessionId,
  status: Type.Literal('running'),
  progress: Progress
}, { examples: [{ session_id: 'important_work', status: 'running', progress: exampleProgress }] })

export const CancelResponse = Type.Object({
  session_id: SessionId,
  cancelled_task_id: Nullable(Type.String({ description: 'The task failed with "cancelled", if one was running' })),
  progress: Progress
}, { examples: [{ session_id: 'important_work', cancelled_task_id: exampleTask.id, progress: { ...exampleProgress, completed: 0, failed: 1 } }] })

// Query and path parameters are documented one by one, so their examples sit on each field.
const sessionIdParam = (description: string, examples: string[]) => Type.String({ pattern: SESSION_ID_PATTERN, description, examples })
const SessionIdParam = sessionIdParam('Letters, digits, _ and -, 1 to 128 characters', ['important_work'])

export const SessionQuery = Type.Object({ session_id: SessionIdParam }, { additionalProperties: false })

/** The query of a route that takes none: a parameter given is a 400, as an unknown field anywhere. */
export const NoQuery = Type.Object({}, { additionalProperties: false })
export type SessionQuery = Static<typeof SessionQuery>

export const ARCHIVED_FILTERS = ['exclude', 'include', 'only'] as const

/** What `GET /list` uses for a parameter left out; the validator fills them in too (useDefaults). */
export const LIST_DEFAULTS = { archived: 'exclude', limit: 100, offset: 0 } as const

// Optional, so generated clients do not demand them; the defaults apply.
export const ListQuery = Type.Object({
  session_id: sessionIdParam('A session id, or `all` for every session', ['important_work', 'all']),
  archived: Type.Optional(StringEnum(ARCHIVED_FILTERS, { default: LIST_DEFAULTS.archived, description: 'With session_id=all: leave out archived sessions, include them, or list only them', examples: ['include'] })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: LIST_DEFAULTS.limit, description: 'Sessions per page (with `session_id=all`)', examples: [10] })),
  offset: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000_000, default: LIST_DEFAULTS.offset, description: 'Sessions to skip (with `session_id=all`)', examples: [0] }))
}, { additionalProperties: false })
export type ListQuery = Static<typeof ListQuery>

export const SessionDetail = Type.Object({
  session_id: SessionId,
  created_at: Timestamp,
  updated_at: Timestamp,
  current_index: Type.Integer(),
  total: Type.Integer(),
  tasks: Type.Array(Task),
  archived: Archived
})

export const SessionSummary = Type.Composite([
  Type.Object({ session_id: SessionId, created_at: Timestamp, updated_at: Timestamp }),
  Progress,
  Type.Object({ archived: Archived, running: Type.Optional(Type.Boolean({ description: 'An execution holds the session now (active sessions)' })), waiting: Waiting })
])

export const SessionList = Type.Object({
  total: Type.Integer(),
  offset: Type.Integer(),
  limit: Type.Integer(),
  sessions: Type.Array(SessionSummary)
})

export const ListResponse = Type.Union([SessionDetail, SessionList], {
  description: 'One session with every task (`session_id=<id>`), or a page of session summaries (`session_id=all`)',
  examples: [
    { session_id: 'important_work', created_at: exampleTask.created_at, updated_at: exampleTask.completed_at, current_index: 1, total: 2, tasks: [exampleTask, pendingTask] },
    { total: 1, offset: 0, limit: 10, sessions: [{ session_id: 'important_work', created_at: exampleTask.created_at, updated_at: exampleTask.completed_at, ...exampleProgress }] }
  ]
})

export const StatsResponse = Type.Object({
  total_sessions: Type.Integer(),
  active_sessions: Type.Integer(),
  completed_sessions: Type.Integer(),
  total_tasks: Type.Integer(),
  completed_tasks: Type.Integer(),
  failed_tasks: Type.Integer(),
  pending_tasks: Type.Integer(),
  in_progress_tasks: Type.Integer(),
  archived_sessions: Type.Integer({ description: 'Sessions in the archive (not counted above)' }),
  storage: Type.Object({
    kind: StringEnum(['file', 'postgres'] as const, { description: 'Which store holds the sessions (TASK_STORE)' }),
    dir: Type.Optional(Type.String({ description: 'The file store: its folder' })),
    database: Type.Optional(Type.String({ description: 'PostgreSQL: the database, its password hidden' })),
    schema: Type.Optional(Type.String({ description: 'PostgreSQL: the schema of taskvault\'s tables' })),
    rows: Type.Optional(Type.Integer({ description: 'PostgreSQL: stored copies of sessions, active and archived' })),
    document_bytes: Type.Optional(Type.Integer({ description: 'PostgreSQL: bytes of the active sessions\' documents' })),
    replicas: Type.Optional(Type.Array(Type.String(), { description: 'PostgreSQL: the servers on this schema heard from within TASK_LEASE_MS (TASK_REPLICA_ID), this one included' })),
    bytes: Type.Integer({ description: 'The file store: bytes of the active session files; PostgreSQL: the table\'s size on disk (pg_total_relation_size)' }),
    files: Type.Optional(Type.Integer({ description: 'The file store: active session files' })),
    archive_bytes: Type.Integer(),
    failed_loads: Type.Integer(),
    restore_ms: Type.Number(),
    // Absent when the store does not report them (its space is a database's concern).
    free_bytes: Type.Optional(Type.Integer({ description: 'Bytes still free on the filesystem holding the storage folder (for the service: statfs bavail)' })),
    total_bytes: Type.Optional(Type.Integer({ description: 'Size of that filesystem' })),
    free_ratio: Type.Optional(Type.Number({ minimum: 0, maximum: 1, description: 'free_bytes / total_bytes; the log warns below TASK_DISK_WARN_RATIO' }))
  }),
  encryption: Type.Object({
    enabled: Type.Boolean({ description: 'Session content is sealed at rest (TASK_ENCRYPTION_KEYS)' }),
    active_kid: Type.Optional(Type.String({ description: 'The key every write is sealed under' })),
    sealed_sessions: Type.Optional(Type.Record(Type.String(), Type.Integer(), { description: 'Active sessions by the key that sealed them: a key with none left (archive aside: see taskvault validate) can go' })),
    plaintext_sessions: Type.Optional(Type.Integer({ description: 'Active sessions not sealed yet (they are sealed as they change, or by taskvault seal)' }))
  })
}, {
  examples: [{
    total_sessions: 1,
    active_sessions: 1,
    completed_sessions: 0,
    total_tasks: 2,
    completed_tasks: 1,
    failed_tasks: 0,
    pending_tasks: 1,
    in_progress_tasks: 0,
    archived_sessions: 0,
    storage: { kind: 'file', dir: '/app/data/tasks', bytes: 1712, files: 1, archive_bytes: 0, failed_loads: 0, restore_ms: 3.1, free_bytes: 9663676416, total_bytes: 10737418240, free_ratio: 0.9 },
    encryption: { enabled: false }
  }]
})

export const SessionParams = Type.Object({ session_id: SessionIdParam }, { additionalProperties: false })
export type SessionParams = Static<typeof SessionParams>

export const ArchiveBody = Type.Object({
  older_than_days: Type.Optional(Type.Number({ minimum: 0, description: 'Archive sessions finished more than this many days ago (0: every finished session); default TASK_ARCHIVE_DAYS' }))
}, { additionalProperties: false, examples: [{}, { older_than_days: 7 }] })
export type ArchiveBody = Static<typeof ArchiveBody>

export const ArchiveResponse = Type.Object({
  archived: Type.Integer({ description: 'Sessions moved to the archive' }),
  deleted: Type.Integer({ description: 'Archived sessions deleted past retention' }),
  archived_ids: Type.Array(SessionId),
  deleted_ids: Type.Array(SessionId)
}, { examples: [{ archived: 1, deleted: 0, archived_ids: ['important_work'], deleted_ids: [] }] })

// Live view: retrying failed tasks, and the event stream.
export const RetryBody = Type.Object({
  session_id: SessionId,
  task_id: Type.Optional(Type.String({ minLength: 1, maxLength: 256, description: 'One failed task; left out: every failed task of the session' }))
}, { additionalProperties: false, examples: [{ session_id: 'important_work' }, { session_id: 'important_work', task_id: exampleTask.id }] })
export type RetryBody = Static<typeof RetryBody>

export const RetryResponse = Type.Object({
  session_id: SessionId,
  task_ids: Type.Array(Type.String(), { description: 'The tasks now Pending again' }),
  progress: Progress
}, { examples: [{ session_id: 'important_work', task_ids: [exampleTask.id], progress: { ...exampleProgress, completed: 0, pending: 2 } }] })

export const EventsQuery = Type.Object({
  session_id: Type.Optional(sessionIdParam('Only this session\'s events; left out, or `all`: every session\'s', ['important_work', 'all']))
}, { additionalProperties: false })
export type EventsQuery = Static<typeof EventsQuery>

export const EventsHeaders = Type.Object({
  'last-event-id': Type.Optional(Type.String({ description: 'The id of the last event received: the events after it are sent first, or `event: reset` when they are no longer held (or it is no id this service gave)' }))
})

const EventStream = {
  description: 'Server-Sent Events: `id: <lifetime>-<n>`, `event: <name>` (session.created, tasks.added, tasks.retried, task.started, task.completed, task.failed, task.retrying, run.started, run.finished, run.cancelled, session.archived, session.unarchived, session.deleted, progress, reset), `data: <JSON>` holding `session_id`; first a `: connected, heartbeat every <ms> ms` comment, then a `: heartbeat` comment every TASK_EVENTS_HEARTBEAT_MS (silence for a few of them means the connection is dead)',
  content: { 'text/event-stream': { schema: Type.String({ examples: ['id: 9f86d081-42\nevent: task.completed\ndata: {"session_id":"important_work","task_id":"task_1_1730707200","status":"Completed"}\n\n'] }) } }
}

export const HealthResponse = Type.Object({ status: Type.Literal('ok'), uptime_s: Type.Number() }, { examples: [{ status: 'ok', uptime_s: 3600 }] })
const Path = (what: string): TUnion<[TString, TNull]> => Type.Union([Type.String(), Type.Null()], { description: `Where ${what} is served; null when turned off` })
export const IndexResponse = Type.Object({
  service: Type.Literal('taskvault'),
  api: Type.String({ description: 'The API\'s prefix' }),
  dashboard: Path('the dashboard'),
  documentation: Path('the OpenAPI UI (its document at `<path>/json`)'),
  metrics: Path('Prometheus metrics'),
  health: Type.String(),
  ready: Type.String()
}, { examples: [{ service: 'taskvault', api: '/api/v1/tasks', dashboard: '/dashboard/', documentation: '/documentation', metrics: '/metrics', health: '/health', ready: '/ready' }] })
export type IndexResponse = Static<typeof IndexResponse>
export const ReadyResponse = Type.Object({ status: Type.Literal('ready'), sessions: Type.Integer() }, { examples: [{ status: 'ready', sessions: 42 }] })

export const responses = {
  // 409: the session is being archived at that moment (retried a few times first), or another replica changed it (PostgreSQL).
  create: { 200: CreateResponse, ...errors([400, 401, 409, 413, 415, 422, 503, 507], { 409: { code: 'SESSION_BUSY', error: 'Conflict', message: "session 'important_work' is being archived or brought back right now; try again" } }) },
  execute: { 200: ExecuteResponse, ...errors([400, 401, 404, 409, 413, 415, 503, 507]) },
  executeAll: { 200: ExecuteAllResponse, 202: BackgroundRunResponse, ...errors([400, 401, 404, 409, 413, 415, 503, 507], { 409: ROUTE_ERRORS.busy409 }) },
  cancel: { 200: CancelResponse, ...errors([400, 401, 404, 409, 413, 415, 503, 507], { 409: ROUTE_ERRORS.notRunning409 }) },
  // 503: an archived copy sealed under a key this server lacks, a database that does not answer, shutdown.
  // 409: the session's stored row does not read (PostgreSQL).
  progress: { 200: ProgressResponse, ...errors([400, 401, 404, 409, 503], { 400: ROUTE_ERRORS.query400, 409: ROUTE_ERRORS.unreadable409, 503: ROUTE_ERRORS.notReady503 }) },
  list: { 200: ListResponse, ...errors([400, 401, 404, 409, 503], { 400: ROUTE_ERRORS.query400, 409: ROUTE_ERRORS.unreadable409, 503: ROUTE_ERRORS.notReady503 }) },
  stats: { 200: StatsResponse, ...errors([400, 401, 503], { 400: ROUTE_ERRORS.noQuery400, 503: ROUTE_ERRORS.notReady503 }) },
  // 414: the id in the path is longer than the router takes (ids are 128 characters at most).
  remove: { 204: Type.Null({ description: 'Deleted; no body' }), ...errors([400, 401, 404, 409, 413, 414, 415, 503, 507], { 400: { code: 'FST_ERR_VALIDATION', error: 'Bad Request', message: 'params/session_id must match pattern "^[A-Za-z0-9_-]{1,128}$"' }, 409: ROUTE_ERRORS.busy409 }) },
  archive: { 200: ArchiveResponse, ...errors([400, 401, 413, 415, 503, 507]) },
  // A stream, never serialized: the schema only documents it.
  backup: {
    200: { description: 'A tar.gz of every session: `<id>.json` and `archive/<name>.json`', content: { 'application/gzip': { schema: Type.String({ format: 'binary' }) } } },
    ...errors([400, 401, 503], { 400: ROUTE_ERRORS.noQuery400, 503: ROUTE_ERRORS.backups503 })
  },
  retry: { 200: RetryResponse, ...errors([400, 401, 404, 409, 413, 415, 503, 507], { 409: ROUTE_ERRORS.notFailed409 }) },
  events: { 200: EventStream, ...errors([400, 401, 503], { 400: ROUTE_ERRORS.query400, 503: ROUTE_ERRORS.streams503 }) },
  // No body: `Location` says where (Type.Null keeps the document from naming a JSON one).
  index: { 200: IndexResponse, 302: Type.Null({ description: 'A browser (Accept: text/html) is sent to the dashboard, named by the Location header', headers: { location: Type.String({ description: "The dashboard's address (/dashboard/ under the server's own prefix)" }) } }), ...errors([], { 400: ROUTE_ERRORS.host400 }) },
  health: { 200: HealthResponse, ...errors([], { 400: ROUTE_ERRORS.host400 }) },
  ready: { 200: ReadyResponse, ...errors([503], { 400: ROUTE_ERRORS.host400, 503: ROUTE_ERRORS.notReady503 }) }
}
