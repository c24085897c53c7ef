-- no-transaction
-- Jobs by schedule (the column is from 0012), built as 0017 says.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_schedule ON jobrunner.jobs (tenant, schedule, id)
    WHERE schedule IS NOT NULL;
