-- taskvault 006: a check per encryption key id (kid), so that a replica given another key under a
-- kid already in use (a typo in one deployment's secret) stops at boot instead of sealing
-- sessions the others cannot open. The check is an HMAC of a fixed text under the key: it tells
-- keys apart and reveals nothing of them. Written by the first replica to restore under a kid.

CREATE TABLE key_checks (
  kid text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]+$' AND length(kid) <= 32),
  key_check text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
