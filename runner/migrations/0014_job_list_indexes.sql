-- Pages of jobs newest first, filtered by type or tenant, stay an index scan however rare the
-- type or tenant (a filter that matches nothing would otherwise read every job).
CREATE INDEX jobs_type_id ON jobrunner.jobs (job_type, id);
CREATE INDEX jobs_tenant_id ON jobrunner.jobs (tenant, id);

-- States, types and tenants go together (a tenant runs a few types; failed jobs cluster):
-- without these statistics the planner takes them for independent, expects a rare
-- combination to turn up every few rows, and walks the whole table newest first to find it.
CREATE STATISTICS jobrunner.jobs_state_type_tenant (mcv, dependencies)
    ON state, job_type, tenant FROM jobrunner.jobs;
