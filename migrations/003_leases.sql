-- taskvault 003: what many replicas need besides the lease columns of 001.

-- A cancel asked on a replica that does not run the session: the owner sees it (NOTIFY, or
-- its next lease renewal) and cancels; if the owner is dead, whoever claims the session does.
-- Cleared when the lease is taken or given back.
ALTER TABLE sessions ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

-- The sweeper's second kind of work: active sessions nobody runs that hold a recorded
-- background run or a task left InProgress (another replica shut down mid-task).
CREATE INDEX sessions_orphan_idx ON sessions (session_id)
  WHERE owner IS NULL AND archived_at IS NULL AND (has_background_run OR tasks_in_progress > 0);
