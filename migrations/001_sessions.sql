-- taskvault 001: one row per session, and the replica heartbeat.
-- Unqualified names: the runner sets search_path to TASK_DB_SCHEMA for this transaction.

-- The row is the truth; every column besides `document` is derived from it on each save,
-- so lists, stats, archiving and leases are answered without parsing documents.
CREATE TABLE sessions (
  session_id text PRIMARY KEY CHECK (session_id ~ '^[A-Za-z0-9_-]{1,128}$'),

  -- The exact bytes the file store writes for this session (serializeSessionFile): plain
  -- sessions in the seed's format, sealed ones as their envelope document.
  -- `json`, not `jsonb`: json keeps the input text as it is (key order, duplicate keys,
  -- indentation, the trailing newline, number spelling such as 0.30000000000000004 or
  -- 1e400, \u0000 escapes), so export returns the file byte for byte. jsonb re-orders keys,
  -- drops whitespace and normalises numbers, which would break that promise. `text` would
  -- keep the bytes too, but json also refuses a document that is not JSON and leaves
  -- ->/->> at hand for ad-hoc queries; nothing we index reads inside the document.
  -- Read it back as `document::text`: node-postgres would otherwise JSON.parse it.
  document json NOT NULL,
  -- The kid a sealed document is sealed under (null: plaintext), for encryption stats.
  sealed_kid text,
  -- Size of the stored form, as a file of it would take.
  bytes integer GENERATED ALWAYS AS (octet_length(document::text)) STORED,

  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  -- Set once every task is Completed or Failed: the latest completed_at (see finishedAt).
  finished_at timestamptz,
  -- Null while active. One row per session: archiving sets this, bringing back clears it.
  archived_at timestamptz,

  tasks_total integer NOT NULL DEFAULT 0,
  tasks_completed integer NOT NULL DEFAULT 0,
  tasks_failed integer NOT NULL DEFAULT 0,
  tasks_pending integer NOT NULL DEFAULT 0,
  tasks_in_progress integer NOT NULL DEFAULT 0,
  -- The document records a background run (execute-all, wait:false) to resume.
  has_background_run boolean NOT NULL DEFAULT false,

  -- Optimistic concurrency: every write is `UPDATE ... WHERE version = $read` and bumps it.
  version bigint NOT NULL DEFAULT 1,

  -- Execution ownership (many replicas): who runs the session, until when, and an epoch
  -- that only grows, so a save carrying an older epoch is refused (fencing).
  owner text,
  epoch bigint NOT NULL DEFAULT 0,
  lease_until timestamptz,

  CONSTRAINT sessions_counts CHECK (
    tasks_completed >= 0 AND tasks_failed >= 0 AND tasks_pending >= 0 AND tasks_in_progress >= 0
    AND tasks_total = tasks_completed + tasks_failed + tasks_pending + tasks_in_progress),
  CONSTRAINT sessions_finished CHECK (
    finished_at IS NULL OR (tasks_total > 0 AND tasks_pending = 0 AND tasks_in_progress = 0)),
  CONSTRAINT sessions_lease CHECK ((owner IS NULL) = (lease_until IS NULL)),
  CONSTRAINT sessions_epoch CHECK (epoch >= 0),
  CONSTRAINT sessions_version CHECK (version >= 1)
);

-- The list: active sessions, newest updated first, paginated (session_id breaks ties).
CREATE INDEX sessions_list_idx ON sessions (updated_at DESC, session_id)
  WHERE archived_at IS NULL;
-- The same order for lists that include the archive (`archived` reads).
CREATE INDEX sessions_archived_list_idx ON sessions (updated_at DESC, session_id)
  WHERE archived_at IS NOT NULL;

-- Archive candidates: active, every task done, finished before a cutoff.
CREATE INDEX sessions_archive_candidates_idx ON sessions (finished_at)
  WHERE archived_at IS NULL AND finished_at IS NOT NULL;

-- Retention: archived sessions finished before a cutoff; the second for the cutoff of
-- sessions with a failed task (TASK_RETENTION for failed ones may differ).
CREATE INDEX sessions_retention_idx ON sessions (finished_at)
  WHERE archived_at IS NOT NULL;
CREATE INDEX sessions_retention_failed_idx ON sessions (finished_at)
  WHERE archived_at IS NOT NULL AND tasks_failed > 0;

-- The sweeper: leases that ran out, oldest first.
CREATE INDEX sessions_lease_idx ON sessions (lease_until)
  WHERE owner IS NOT NULL;

-- Live replicas: each writes its own row now and then; /stats lists the recent ones.
CREATE TABLE replicas (
  replica_id text PRIMARY KEY,
  seen_at timestamptz NOT NULL DEFAULT now()
);
