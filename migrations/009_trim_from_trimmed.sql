-- taskvault 009: the event log's trim starts where the last one ended. 004 deleted
-- `WHERE id <= newest - keep`, which PostgreSQL answers by reading the whole table, every event
-- trimmed before included until a vacuum reclaims them. With autovacuum off, or behind (its naptime
-- is a minute), that grows by every event published: POST /create on the bench machine slowed
-- from 2,100 to 1,400 req/s within 30 s. Every id up to `trimmed` is gone, so the delete now
-- starts past it, on the key, and reads only the events it deletes.

CREATE OR REPLACE FUNCTION publish_events(names text[], datas json[], keep bigint, channel text, payload text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  newest bigint;
  done bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '.events'));
  INSERT INTO events (name, data) SELECT n, d FROM unnest(names, datas) AS e(n, d);
  SELECT max(id) INTO newest FROM events;
  -- Trimmed now and then, not on every batch: each trim is one range delete on the key.
  IF newest % 64 < cardinality(names) AND newest > keep THEN
    SELECT trimmed INTO done FROM event_stream;
    -- Only forward: replicas may keep buffers of different sizes.
    IF newest - keep > done THEN
      UPDATE event_stream SET trimmed = newest - keep;
      DELETE FROM events WHERE id > done AND id <= newest - keep;
    END IF;
  END IF;
  PERFORM pg_notify(channel, payload);
  RETURN newest;
END
$$;
