-- Indexes for pages of jobs: built without blocking writes, one per migration, by 0019-0021.

-- States, types and tenants go together (a tenant runs a few types; failed jobs cluster):
-- without these statistics the planner takes them for independent, expects a rare
-- combination to turn up every few rows, and walks the whole table newest first to find it.
CREATE STATISTICS jobrunner.jobs_state_type_tenant (mcv, dependencies)
    ON state, job_type, tenant FROM jobrunner.jobs;
