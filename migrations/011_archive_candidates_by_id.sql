-- taskvault 011: archive candidates ordered by finish time and then session id, as a pass pages
-- through them (leases-sql archivableSessions). 001's index held the finish time only: past many
-- sessions that finished at one instant (an import, a batch of one-task sessions), each page read
-- and sorted every one of them, so a pass over n such sessions read some n²/page rows.
-- Built first under a new name (reads go on, writes wait), then swapped in, as 010 does.

CREATE INDEX sessions_archive_candidates_by_id_idx ON sessions (finished_at, session_id)
  WHERE archived_at IS NULL AND finished_at IS NOT NULL;
DROP INDEX sessions_archive_candidates_idx;
ALTER INDEX sessions_archive_candidates_by_id_idx RENAME TO sessions_archive_candidates_idx;
