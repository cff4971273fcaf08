-- taskvault 002: archived copies are rows of their own.
-- The store contract lets a session be archived twice and keep both copies, and lets a session
-- be active while an older archived copy of it exists. With `session_id` as the primary key
-- only one of those rows could exist, so every stored copy gets a row id of its own:
--   * at most one active row per session id (the partial unique index below): the row that
--     saves, leases and fencing (issue 14) address;
--   * any number of archived rows per session id; the newest (highest row_id) is the archived
--     session the API shows, and its row id names the copy (`archivedName`).
-- Row ids come from an identity and are never reused, so (row_id, version) also names one
-- state of a session across a delete and a re-create: a writer holding version 1 of a deleted
-- session cannot overwrite a new session of the same id that starts at version 1 again.

ALTER TABLE sessions ADD COLUMN row_id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE sessions DROP CONSTRAINT sessions_pkey;
ALTER TABLE sessions ADD PRIMARY KEY (row_id);

-- One active row per session; also the conflict target of an insert (ON CONFLICT ... WHERE).
CREATE UNIQUE INDEX sessions_active_id_idx ON sessions (session_id) WHERE archived_at IS NULL;
-- A session's archived copies, newest first (reads, unarchive, deleting a session's archive).
CREATE INDEX sessions_archived_id_idx ON sessions (session_id, row_id) WHERE archived_at IS NOT NULL;
