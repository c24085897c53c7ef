-- no-transaction
-- Pages of finished jobs by tenant, as 0019 by type.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_finished_by_tenant ON jobrunner.jobs (tenant, id)
    WHERE state IN ('completed', 'failed', 'cancelled');
