-- taskvault 007: which process holds a replica id. Two servers given the same TASK_REPLICA_ID
-- would renew each other's leases and run the same sessions: a server now claims its id at boot
-- (refused while another live process beats under it) and beats only as that process, so one
-- that finds its id taken over stops writing. `host`, `pid` and `started_at` tell a restart of
-- the same process slot (a container's pid 1 again) from another process. Rows of older servers
-- have none of them.

ALTER TABLE replicas
  ADD COLUMN instance text,
  ADD COLUMN host text,
  ADD COLUMN pid integer,
  ADD COLUMN started_at timestamptz;
