-- no-transaction
-- A range of enqueue times: a page of a narrow one reads just its jobs, through this index,
-- and sorts them. BRIN: enqueue times follow the physical order, so a few blocks per range
-- summarize the table, and it costs next to nothing to keep up. Built as 0017 says.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_created_at_brin ON jobrunner.jobs
    USING brin (created_at);
