-- taskvault 008: retention's indexes, one per part of its candidates (archived sessions with a
-- failed task or without, finished or never finished: imported without their key, or with tasks
-- never run, judged by their last update), each ordered by the time the part is judged by and
-- then the row, as a pass pages through it. A pass reads its candidates and no other part's rows,
-- and many copies sharing one time cost no more than the page. They replace 001's two, which held
-- finish times only and which no query used.

DROP INDEX sessions_retention_idx;
DROP INDEX sessions_retention_failed_idx;
CREATE INDEX sessions_retention_passed_idx ON sessions (finished_at, row_id)
  WHERE archived_at IS NOT NULL AND finished_at IS NOT NULL AND tasks_failed = 0;
CREATE INDEX sessions_retention_failed_idx ON sessions (finished_at, row_id)
  WHERE archived_at IS NOT NULL AND finished_at IS NOT NULL AND tasks_failed > 0;
CREATE INDEX sessions_retention_unfinished_passed_idx ON sessions (updated_at, row_id)
  WHERE archived_at IS NOT NULL AND finished_at IS NULL AND tasks_failed = 0;
CREATE INDEX sessions_retention_unfinished_failed_idx ON sessions (updated_at, row_id)
  WHERE archived_at IS NOT NULL AND finished_at IS NULL AND tasks_failed > 0;
