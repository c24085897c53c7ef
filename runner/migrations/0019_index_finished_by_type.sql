-- no-transaction
-- Pages of finished jobs newest first, filtered by type or tenant, stay an index scan however
-- rare the type or tenant (a filter that matches nothing would otherwise read every job).
-- Partial: finished jobs are where a table grows to millions, and neither an enqueue nor a
-- claim writes to these indexes (full ones cost a fifth of the enqueue rate). Built as 0017
-- says.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_finished_by_type ON jobrunner.jobs (job_type, id)
    WHERE state IN ('completed', 'failed', 'cancelled');
