-- Performance: the enqueue and claim functions were rewritten for speed here (now in
-- runner/sql/). What stays of this migration is an index fewer.

-- Every claim inserts each claimed job into every index whose predicate matches a running job.
-- Counting a tenant's running jobs (for max_running) walks the lease index instead: running
-- jobs are bounded by the runners' concurrency, and only limited tenants are counted.
DROP INDEX jobrunner.jobs_running_by_tenant;
