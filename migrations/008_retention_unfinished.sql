-- taskvault 008: retention's third index. An archived session with no finish time (imported
-- without its key, or with tasks never run) is judged by when it was last updated; 001's
-- retention indexes hold finish times only. Without this one a pass that finds nothing would
-- walk every archived row older than the cutoff, which with a retention for failed sessions
-- only is the whole archive.

CREATE INDEX sessions_retention_unfinished_idx ON sessions (updated_at)
  WHERE archived_at IS NOT NULL AND finished_at IS NULL;
