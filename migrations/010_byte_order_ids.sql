-- taskvault 010: lists break ties of `updated_at` by session id byte by byte (COLLATE "C"),
-- whatever the database's collation, as the file store orders ids by their code units: under a
-- linguistic collation (en_US.utf8, the postgres image's default) `_a` came before `B`, where the
-- file store puts it after, so a client moving between the stores met other pages. The ids are
-- ASCII ([A-Za-z0-9_-]): byte order is code unit order. The list indexes are rebuilt in that
-- order; the column keeps its collation, so the statements replicas of earlier versions have
-- prepared keep their result types (a column's collation changed under them would fail each one).
-- Built first under new names (reads go on, writes wait), then swapped in: dropping an index
-- shuts out reads too, for a moment only.

CREATE INDEX sessions_list_bytes_idx ON sessions (updated_at DESC, session_id COLLATE "C")
  WHERE archived_at IS NULL;
CREATE INDEX sessions_archived_list_bytes_idx ON sessions (updated_at DESC, session_id COLLATE "C")
  WHERE archived_at IS NOT NULL;
DROP INDEX sessions_list_idx;
DROP INDEX sessions_archived_list_idx;
ALTER INDEX sessions_list_bytes_idx RENAME TO sessions_list_idx;
ALTER INDEX sessions_archived_list_bytes_idx RENAME TO sessions_archived_list_idx;
