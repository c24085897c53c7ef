-- Batch leases. A runner claims short jobs by locking their rows in a batch transaction that
-- stays open while they run and writes their outcomes when it commits (see runner/sql/batches.sql).
-- Before any of them starts, the runner commits one row here naming the batch's jobs; the
-- batch transaction deletes it when it commits. A row whose batch transaction is gone without
-- committing (its runner died, froze or was cut off) is how the attempts it ran are counted.
--
-- `id` is random, chosen by the runner, and also the key of the advisory lock the batch
-- transaction holds from before this row is written until it ends: a rescuer that can take
-- that lock knows the transaction is gone.
CREATE TABLE jobrunner.batches (
    id         bigint      PRIMARY KEY,
    owner      text        NOT NULL,
    job_ids    bigint[]    NOT NULL,
    started_at timestamptz NOT NULL
)
-- A batch of 500 jobs names 4 KB of ids: kept in the row as they are, not compressed (which
-- cost a tenth of the database's time per job) or moved out of line.
WITH (toast_tuple_target = 8160);
