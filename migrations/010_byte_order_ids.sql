-- taskvault 010: session ids compare byte by byte (COLLATE "C"), whatever the database's
-- collation. Lists break ties of `updated_at` by id, and the file store orders ids by their code
-- units; under a linguistic collation (en_US.utf8, the postgres image's default) `_z a A a_b`
-- came back in another order than the file store's `A Z _z a a_b`, so a client moving between
-- the stores met other pages. The ids are ASCII ([A-Za-z0-9_-]): byte order is code unit order.
-- The indexes on the column are rebuilt; no row changes.

ALTER TABLE sessions ALTER COLUMN session_id TYPE text COLLATE "C";
