/** An operation extension (copied by @fastify/swagger) that plugins/docs.ts turns into `requestBody.required: false`. */
export const BODY_OPTIONAL = 'x-taskvault-body-optional'

/**
 * What the OpenAPI document says about each task route beyond its schemas: tags (by
 * resource), a summary, and the operationId a generated client names its method after.
 * Keyed by method and path below the plugin's prefix; the taskvault plugin attaches them as
 * the routes are added, and test/docs.test.ts fails for a route without an entry.
 */
export interface RouteDoc {
  operationId: string
  tags: string[]
  summary: string
  description?: string
  [BODY_OPTIONAL]?: boolean
}

export const TAGS = [
  { name: 'tasks', description: 'Add tasks to a session and run them' },
  { name: 'sessions', description: 'Read and delete sessions' },
  { name: 'stats', description: 'Counts and storage figures' },
  { name: 'archive', description: 'Archiving and retention of finished sessions' },
  { name: 'backup', description: 'Backups of every session' },
  { name: 'events', description: 'The live event stream' },
  { name: 'health', description: 'Probes for load balancers and Kubernetes' }
]

export const ROUTE_DOCS: Readonly<Record<string, RouteDoc>> = {
  'POST /create': {
    operationId: 'createTasks',
    tags: ['tasks'],
    summary: 'Add tasks to a session (created if new)',
    description: 'Send free-text `instructions` (split into typed tasks) or an explicit `tasks` list, not both. Answered once the tasks are on disk.'
  },
  'POST /execute': {
    operationId: 'executeNext',
    tags: ['tasks'],
    summary: 'Run the next pending task of a session',
    description: '409 when nothing is pending or the session is already executing.'
  },
  'POST /execute-all': {
    operationId: 'executeAll',
    tags: ['tasks'],
    summary: 'Run every pending task of a session, in order',
    description: 'With `"wait": false` it answers 202 at once and runs in the background (read progress with `GET /progress`); the run is recorded in the session file and resumes after a restart.'
  },
  'POST /cancel': {
    operationId: 'cancelRun',
    tags: ['tasks'],
    summary: "Stop a session's running execution",
    description: 'The agent call is aborted and its task fails with "cancelled"; a background run stops. 409 when nothing is running.'
  },
  'GET /progress': { operationId: 'getProgress', tags: ['sessions'], summary: 'Progress counts of a session' },
  'GET /list': {
    operationId: 'listSessions',
    tags: ['sessions'],
    summary: 'One session with its tasks, or a page of all sessions',
    description: '`session_id=all` lists every session, newest first, with `limit` and `offset`. One session whose tasks hold more than 1 MiB of text is sent as the client reads it (chunked); a client that takes nothing of it for TASK_ANSWER_STALL_MS is cut.'
  },
  'DELETE /sessions/:session_id': { operationId: 'deleteSession', tags: ['sessions'], summary: 'Delete a session and its file, active or archived', description: '409 while it executes.' },
  'POST /archive': {
    operationId: 'runArchivePass',
    tags: ['archive'],
    summary: 'Run an archive and retention pass now',
    description: 'Moves sessions finished more than `older_than_days` ago (default TASK_ARCHIVE_DAYS) to the archive, and deletes archived sessions past retention. The body may be left out.',
    // The route takes no body as `{}`.
    [BODY_OPTIONAL]: true
  },
  'GET /stats': { operationId: 'getStats', tags: ['stats'], summary: 'Session and task counts, storage figures' },
  'GET /backup': {
    operationId: 'downloadBackup',
    tags: ['backup'],
    summary: 'Download a consistent backup of every session (tar.gz)',
    description: 'Streams a tar.gz of every active and archived session, each as its last completed write left it, named in Content-Disposition. `taskvault restore` reads it. 503 past TASK_BACKUP_MAX_CLIENTS backups being sent; a client that takes nothing for TASK_BACKUP_STALL_MS is cut.'
  },
  'POST /retry': {
    operationId: 'retryFailed',
    tags: ['tasks'],
    summary: 'Put one failed task, or every failed task, back to Pending',
    description: '`attempts` and `interruptions` are kept, `retries` counts it (a webhook agent\'s next call has a new Idempotency-Key); the tasks run next. 404 for an unknown session or task, 409 while the session executes or when the task is not Failed.'
  },
  'GET /events': {
    operationId: 'streamEvents',
    tags: ['events'],
    summary: 'Live events of every session, or of one (Server-Sent Events)',
    description: 'Each event is sent once its change is durable. Reconnect with `Last-Event-ID` to get the events after it (at least once, in order per session, within the last TASK_EVENTS_BUFFER events, fewer past TASK_EVENTS_BUFFER_BYTES); `event: reset` means they are gone: refetch. 503 past TASK_EVENTS_MAX_CLIENTS streams.'
  }
}
