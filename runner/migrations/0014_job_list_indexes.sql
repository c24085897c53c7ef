-- Pages of finished jobs newest first, filtered by type or tenant, stay an index scan however
-- rare the type or tenant (a filter that matches nothing would otherwise read every job).
-- Partial: finished jobs are where a table grows to millions, and neither an enqueue nor a
-- claim writes to these indexes (full ones cost a fifth of the enqueue rate).
CREATE INDEX jobs_finished_by_type ON jobrunner.jobs (job_type, id)
    WHERE state IN ('completed', 'failed', 'cancelled');
CREATE INDEX jobs_finished_by_tenant ON jobrunner.jobs (tenant, id)
    WHERE state IN ('completed', 'failed', 'cancelled');

-- A range of enqueue times: a page of a narrow one reads just its jobs, through this index,
-- and sorts them. BRIN: enqueue times follow the physical order, so a few blocks per range
-- summarize the table, and it costs next to nothing to keep up.
CREATE INDEX jobs_created_at_brin ON jobrunner.jobs USING brin (created_at);

-- States, types and tenants go together (a tenant runs a few types; failed jobs cluster):
-- without these statistics the planner takes them for independent, expects a rare
-- combination to turn up every few rows, and walks the whole table newest first to find it.
CREATE STATISTICS jobrunner.jobs_state_type_tenant (mcv, dependencies)
    ON state, job_type, tenant FROM jobrunner.jobs;
