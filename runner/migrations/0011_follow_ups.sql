-- Follow-up jobs and config: a job enqueued by another job's attempt records that job
-- (`parent_id`; no foreign key, since completed parents are deleted), and a tenant's policy may
-- override its plugins' config values (the `[config]` table of `[tenants.<name>]`, as JSON).
-- Its index is built without blocking writes, by migration 0017.
ALTER TABLE jobrunner.jobs ADD COLUMN parent_id bigint;
ALTER TABLE jobrunner.tenant_policies ADD COLUMN config jsonb NOT NULL DEFAULT '{}';

-- enqueue_many and enqueue_many_unchecked take parent ids as a last argument (runner/sql/
-- enqueue.sql). A new argument makes a new function, so the old ones go first: clients that
-- pass the earlier arguments call the new ones unchanged.
DROP FUNCTION IF EXISTS jobrunner.enqueue_many(text[], jsonb[], timestamptz[], text[], integer[],
                                               integer[], text[], boolean[], timestamptz);
DROP FUNCTION IF EXISTS jobrunner.enqueue_many_unchecked(text[], jsonb[], timestamptz[], text[],
                                                         integer[], integer[], text[], boolean[],
                                                         timestamptz);
