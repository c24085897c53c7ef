-- Pages of jobs newest first, filtered by type or tenant, stay an index scan however rare the
-- type or tenant (a filter that matches nothing would otherwise read every job). The time
-- range filter uses a BRIN index: enqueue times follow the ids, so a few blocks per range
-- summarize it, and it costs next to nothing to keep up.
CREATE INDEX jobs_type_id ON jobrunner.jobs (job_type, id);
CREATE INDEX jobs_tenant_id ON jobrunner.jobs (tenant, id);
CREATE INDEX jobs_created_at_brin ON jobrunner.jobs USING brin (created_at);
