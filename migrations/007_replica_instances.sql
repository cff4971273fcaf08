-- taskvault 007: which process holds a replica id. Two servers given the same TASK_REPLICA_ID
-- would renew each other's leases and run the same sessions: a server now claims its id at boot
-- (refused while another live process beats under it) and beats only as that process, so one
-- that finds its id taken over stops writing. `boot` (the machine's boot id) and `pid_ns` (the pid
-- namespace) say where `pid` can be asked whether it still runs; `host` and `started_at` are for
-- the messages, and tell this very pid's earlier life. Rows of older servers have none of them.

ALTER TABLE replicas
  ADD COLUMN instance text,
  ADD COLUMN host text,
  ADD COLUMN pid integer,
  ADD COLUMN started_at timestamptz,
  ADD COLUMN boot text,
  ADD COLUMN pid_ns text;
