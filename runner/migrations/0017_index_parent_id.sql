-- no-transaction
-- Follow-ups by parent (the column is from 0011). Every index on jobs is built CONCURRENTLY,
-- one per migration: it does not block runners' writes while it reads the table, and
-- `runner migrate` drops what an interrupted build left (an invalid index) before retrying.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_parent_id ON jobrunner.jobs (parent_id)
    WHERE parent_id IS NOT NULL;
