import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { KID_PATTERN } from './patterns.js'

/** Session ids become file names, so this pattern is the only gate to the storage folder. */
export const SESSION_ID_PATTERN = '^[A-Za-z0-9_-]{1,128}$'
/** The same pattern, for checks outside a schema (the stores, the manager). */
export const SESSION_ID = new RegExp(SESSION_ID_PATTERN, 'u')
/** The id that the list and the event stream read as "every session": no session has it. */
export const ALL_SESSIONS = 'all'
export const SessionId = Type.String({ pattern: SESSION_ID_PATTERN, description: 'Letters, digits, _ and -, 1 to 128 characters' })

export const TASK_TYPES = ['Coding', 'Analysis', 'Research', 'Reasoning', 'General'] as const
export const TASK_STATUSES = ['Pending', 'InProgress', 'Completed', 'Failed'] as const

export const TaskType = Type.Union(TASK_TYPES.map((t) => Type.Literal(t)))
export const TaskStatus = Type.Union(TASK_STATUSES.map((s) => Type.Literal(s)))
export type TaskType = (typeof TASK_TYPES)[number]
export type TaskStatus = (typeof TASK_STATUSES)[number]

// ISO 8601 with an explicit offset; written by us always as UTC (`Z`).
export const Timestamp = Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?(Z|[+-]\\d{2}:\\d{2})$' })

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])
const Confidence = Type.Number({ minimum: 0, maximum: 1 })

/** A task as stored and served: every field present, null where unset. */
export const Task = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 256 }),
  instruction: Type.String(),
  task_type: TaskType,
  status: TaskStatus,
  result: Nullable(Type.String()),
  error: Nullable(Type.String()),
  confidence: Nullable(Confidence),
  created_at: Timestamp,
  started_at: Nullable(Timestamp),
  completed_at: Nullable(Timestamp),
  attempts: Type.Integer({ minimum: 0 }),
  /** Set when the agent's result (or, for a failed task, its error message) was longer than TASK_MAX_RESULT_BYTES and was cut. */
  result_truncated: Type.Optional(Type.Boolean()),
  /** Restarts that found this task running; at TASK_MAX_INTERRUPTIONS it is failed instead of run again. */
  interruptions: Type.Optional(Type.Integer({ minimum: 0 })),
  /** Times POST /retry put this task back to Pending after it failed: each is a new run, under a new webhook Idempotency-Key. */
  retries: Type.Optional(Type.Integer({ minimum: 1 }))
})
export type Task = Static<typeof Task>

/** A background run (execute-all with wait:false) in progress; it resumes after a restart. */
export const BackgroundRun = Type.Object({ started_at: Timestamp })

/** Idempotency-Key values: visible ASCII, as clients make them (UUIDs, base64, ULIDs). */
export const IDEMPOTENCY_KEY_PATTERN = '^[!-~]{1,128}$'

/**
 * A `POST /create` answered under an Idempotency-Key: the same key with the same tasks gets
 * this answer again instead of adding them twice. `digest`: SHA-256 of the tasks asked for.
 */
export const KeyedCreate = Type.Object({
  key: Type.String({ pattern: IDEMPOTENCY_KEY_PATTERN }),
  digest: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  task_ids: Type.Array(Type.String({ minLength: 1, maxLength: 256 })),
  /** The replica whose create this was (PostgreSQL): a replay through another one is written (`replayed`). */
  replica: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  /** Answered again by another replica (PostgreSQL): written so, the row is no longer the create's own write. */
  replayed: Type.Optional(Type.Literal(true))
})
export type KeyedCreate = Static<typeof KeyedCreate>

/** The seed's "Session File Format": what every `<session_id>.json` holds. */
export const SessionFile = Type.Object({
  session_id: SessionId,
  created_at: Timestamp,
  updated_at: Timestamp,
  background_run: Type.Optional(BackgroundRun),
  /** Creates answered under an Idempotency-Key, oldest first, the newest TASK_IDEMPOTENCY_KEYS kept. */
  keyed_creates: Type.Optional(Type.Array(KeyedCreate)),
  session: Type.Object({
    session_id: SessionId,
    tasks: Type.Array(Task),
    current_index: Type.Integer({ minimum: 0 })
  })
})
export type SessionFile = Static<typeof SessionFile>

/**
 * What a file on disk may hold: the seed's own example omits `error` and `attempts` and
 * leaves unset fields out, so those are optional here and filled in on load.
 */
const StoredTask = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 256 }),
  instruction: Type.String(),
  task_type: TaskType,
  status: TaskStatus,
  result: Type.Optional(Nullable(Type.String())),
  error: Type.Optional(Nullable(Type.String())),
  confidence: Type.Optional(Nullable(Confidence)),
  created_at: Timestamp,
  started_at: Type.Optional(Nullable(Timestamp)),
  completed_at: Type.Optional(Nullable(Timestamp)),
  attempts: Type.Optional(Type.Integer({ minimum: 0 })),
  result_truncated: Type.Optional(Type.Boolean()),
  interruptions: Type.Optional(Type.Integer({ minimum: 0 })),
  retries: Type.Optional(Type.Integer({ minimum: 1 }))
})

export const StoredSessionFile = Type.Object({
  session_id: SessionId,
  created_at: Timestamp,
  updated_at: Timestamp,
  background_run: Type.Optional(BackgroundRun),
  /** Creates answered under an Idempotency-Key, oldest first, the newest TASK_IDEMPOTENCY_KEYS kept. */
  keyed_creates: Type.Optional(Type.Array(KeyedCreate)),
  session: Type.Object({
    session_id: SessionId,
    tasks: Type.Array(StoredTask),
    current_index: Type.Optional(Type.Integer({ minimum: 0 }))
  })
})
export type StoredSessionFile = Static<typeof StoredSessionFile>

/**
 * A sealed session file (TASK_ENCRYPTION_KEYS): the id and times in clear, everything else in
 * `sealed.data`, AES-256-GCM under key `kid` (base64 fields).
 */
export const SealedSessionFile = Type.Object({
  session_id: SessionId,
  created_at: Timestamp,
  updated_at: Timestamp,
  sealed: Type.Object({
    v: Type.Integer(),
    alg: Type.String(),
    kid: Type.String({ pattern: KID_PATTERN }),
    iv: Type.String(),
    tag: Type.String(),
    data: Type.String()
  })
})
export type SealedSessionFile = Static<typeof SealedSessionFile>
