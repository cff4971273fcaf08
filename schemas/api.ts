import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { SessionId, Task, TaskStatus, TaskType, Timestamp } from './session.js'

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])

/** Fastify's error shape, used for every 4xx and 5xx. */
export const ErrorResponse = Type.Object({
  statusCode: Type.Integer(),
  code: Type.Optional(Type.String()),
  error: Type.String(),
  message: Type.String()
}, { description: 'Fastify error shape' })

const errors = (...codes: number[]) => Object.fromEntries(codes.map((code) => [code, ErrorResponse]))

export const MAX_TASKS_PER_REQUEST = 1000

export const SessionIdBody = Type.Object({ session_id: SessionId }, { additionalProperties: false })
export type SessionIdBody = Static<typeof SessionIdBody>

export const TaskInput = Type.Object({
  instruction: Type.String({ minLength: 1 }),
  task_type: Type.Optional(TaskType)
}, { additionalProperties: false })

export const CreateBody = Type.Object({
  session_id: SessionId,
  instructions: Type.Optional(Type.String({ description: 'Free text: numbered or bulleted lists, "Task 1: ...", "first ... then ...", or one task' })),
  tasks: Type.Optional(Type.Array(TaskInput, { minItems: 1, maxItems: MAX_TASKS_PER_REQUEST }))
}, { additionalProperties: false })
export type CreateBody = Static<typeof CreateBody>

export const CreateResponse = Type.Object({
  session_id: SessionId,
  task_ids: Type.Array(Type.String()),
  total_tasks: Type.Integer({ description: 'Tasks this call added' }),
  tasks: Type.Array(Task)
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

/** Present (and true) only on archived sessions. */
const Archived = Type.Optional(Type.Literal(true, { description: 'The session is in the archive' }))

export const ProgressResponse = Type.Composite([
  Type.Object({ session_id: SessionId }),
  Progress,
  Type.Object({
    running: Type.Boolean({ description: 'An execution (foreground or background) holds the session now' }),
    archived: Archived
  })
])

const ExecutedTask = Type.Object({
  task_id: Type.String(),
  instruction: Type.String(),
  status: TaskStatus,
  result: Nullable(Type.String()),
  error: Nullable(Type.String()),
  confidence: Nullable(Type.Number()),
  result_truncated: Type.Optional(Type.Boolean())
})

export const ExecuteResponse = Type.Composite([ExecutedTask, Type.Object({ progress: Progress })])

export const ExecuteAllResponse = Type.Object({
  session_id: SessionId,
  total_executed: Type.Integer(),
  results: Type.Array(ExecutedTask),
  progress: Progress
})

export const ExecuteAllBody = Type.Object({
  session_id: SessionId,
  wait: Type.Boolean({ default: true, description: 'false: answer 202 at once and run in the background; a restart resumes the run' })
}, { additionalProperties: false })
export type ExecuteAllBody = Static<typeof ExecuteAllBody>

export const BackgroundRunResponse = Type.Object({
  session_id: SessionId,
  status: Type.Literal('running'),
  progress: Progress
})

export const CancelResponse = Type.Object({
  session_id: SessionId,
  cancelled_task_id: Nullable(Type.String({ description: 'The task failed with "cancelled", if one was running' })),
  progress: Progress
})

export const SessionQuery = Type.Object({ session_id: SessionId }, { additionalProperties: false })
export type SessionQuery = Static<typeof SessionQuery>

export const ARCHIVED_FILTERS = ['exclude', 'include', 'only'] as const

export const ListQuery = Type.Object({
  session_id: SessionId,
  archived: Type.Union(ARCHIVED_FILTERS.map((filter) => Type.Literal(filter)), { default: 'exclude', description: 'With session_id=all: leave out archived sessions, include them, or list only them' }),
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  offset: Type.Integer({ minimum: 0, maximum: 1_000_000_000, default: 0 })
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
  Type.Object({ archived: Archived })
])

export const SessionList = Type.Object({
  total: Type.Integer(),
  offset: Type.Integer(),
  limit: Type.Integer(),
  sessions: Type.Array(SessionSummary)
})

export const ListResponse = Type.Union([SessionDetail, SessionList])

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
    dir: Type.String(),
    bytes: Type.Integer(),
    files: Type.Integer(),
    archive_bytes: Type.Integer(),
    failed_loads: Type.Integer(),
    restore_ms: Type.Number()
  })
})

export const SessionParams = Type.Object({ session_id: SessionId }, { additionalProperties: false })
export type SessionParams = Static<typeof SessionParams>

export const ArchiveBody = Type.Object({
  older_than_days: Type.Optional(Type.Number({ minimum: 0, description: 'Archive sessions finished more than this many days ago (0: every finished session); default TASK_ARCHIVE_DAYS' }))
}, { additionalProperties: false })
export type ArchiveBody = Static<typeof ArchiveBody>

export const ArchiveResponse = Type.Object({
  archived: Type.Integer({ description: 'Sessions moved to the archive' }),
  deleted: Type.Integer({ description: 'Archived sessions deleted past retention' }),
  archived_ids: Type.Array(SessionId),
  deleted_ids: Type.Array(SessionId)
})

export const HealthResponse = Type.Object({ status: Type.Literal('ok'), uptime_s: Type.Number() })
export const ReadyResponse = Type.Object({ status: Type.Literal('ready'), sessions: Type.Integer() })

export const responses = {
  create: { 200: CreateResponse, ...errors(400, 401, 413, 415, 503, 507) },
  execute: { 200: ExecuteResponse, ...errors(400, 401, 404, 409, 413, 415, 503, 507) },
  executeAll: { 200: ExecuteAllResponse, 202: BackgroundRunResponse, ...errors(400, 401, 404, 409, 413, 415, 503, 507) },
  cancel: { 200: CancelResponse, ...errors(400, 401, 404, 409, 413, 415, 503, 507) },
  progress: { 200: ProgressResponse, ...errors(400, 401, 404) },
  list: { 200: ListResponse, ...errors(400, 401, 404) },
  stats: { 200: StatsResponse, ...errors(401) },
  remove: { 204: Type.Null(), ...errors(400, 401, 404, 409, 503, 507) },
  archive: { 200: ArchiveResponse, ...errors(400, 401, 413, 415, 503, 507) },
  health: { 200: HealthResponse },
  ready: { 200: ReadyResponse, ...errors(503) }
}
