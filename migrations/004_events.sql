-- taskvault 004: the live view's events, shared by every replica on the schema (issue 14).
-- Each replica writes the events of its own changes here; every replica reads them back in id
-- order and streams them, so a client sees every replica's events on any of them, and the id it
-- resumes from (Last-Event-ID) means the same everywhere.

CREATE TABLE events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL,
  -- The event's data as the stream sends it (ids, statuses, counts; never a result).
  data json NOT NULL,
  at timestamptz NOT NULL DEFAULT now()
);

-- What makes an event id from this schema tell itself apart from one of another database (or
-- of this schema dropped and made again): part of every id a client sees.
-- `trimmed`: every id up to it was deleted (kept: the newest TASK_EVENTS_BUFFER), so a reader
-- behind it knows events were lost to it, rather than taking the hole for rolled-back ids.
CREATE TABLE event_stream (token text NOT NULL, trimmed bigint NOT NULL DEFAULT 0);
INSERT INTO event_stream (token) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 8));

-- Publishes a batch: under a transaction-scoped lock, so batches commit one at a time in id
-- order and a reader that has seen id N has seen every committed id below it (no event is
-- skipped because a smaller id committed later). Keeps the newest `keep` events, and wakes the
-- readers (NOTIFY, at commit).
CREATE FUNCTION publish_events(names text[], datas json[], keep bigint, channel text, payload text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  newest bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '.events'));
  INSERT INTO events (name, data) SELECT n, d FROM unnest(names, datas) AS e(n, d);
  SELECT max(id) INTO newest FROM events;
  -- Trimmed now and then, not on every batch: each trim is one range delete on the key.
  IF newest % 64 < cardinality(names) AND newest > keep THEN
    UPDATE event_stream SET trimmed = greatest(trimmed, newest - keep);
    DELETE FROM events WHERE id <= newest - keep;
  END IF;
  PERFORM pg_notify(channel, payload);
  RETURN newest;
END
$$;
