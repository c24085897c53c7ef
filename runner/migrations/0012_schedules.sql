-- Schedules: jobs enqueued periodically from a cron expression in a time zone (runner/sql/
-- schedules.sql has the functions that manage and fire them; the runners compute the ticks).
CREATE TABLE jobrunner.schedules (
    tenant          text NOT NULL CHECK (tenant <> '' AND length(tenant) <= 200),
    name            text NOT NULL CHECK (name <> '' AND length(name) <= 200),
    cron            text NOT NULL,
    time_zone       text NOT NULL DEFAULT 'UTC',
    job_type        text NOT NULL CHECK (job_type <> '' AND length(job_type) <= 200),
    payload         jsonb NOT NULL DEFAULT '{}',
    priority        integer NOT NULL DEFAULT 0,
    max_attempts    integer CHECK (max_attempts >= 1),
    -- A template: {tick} and {schedule} are replaced per tick. NULL: ticks are never deduplicated.
    unique_key      text CHECK (unique_key <> ''),
    overlap         text NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip')),
    catch_up        text NOT NULL DEFAULT 'none' CHECK (catch_up IN ('none', 'latest', 'all')),
    catch_up_within interval NOT NULL DEFAULT '1 day' CHECK (catch_up_within > '0'),
    paused          boolean NOT NULL DEFAULT false,
    -- 'manifest': declared in the job type's plugin manifest, synced when it loads; 'api': made
    -- by the CLI, SQL or the Rust client, never touched by a manifest.
    origin          text NOT NULL DEFAULT 'api' CHECK (origin IN ('api', 'manifest')),
    -- Bumped by every change, so that a runner firing a tick from an older reading fires
    -- nothing.
    version         bigint NOT NULL DEFAULT 1,
    -- Ticks after this time are due: creation, resumption or the last change of the cron.
    since           timestamptz NOT NULL,
    -- The last tick handled (enqueued, skipped or refused); ticks up to it are never fired again.
    last_tick       timestamptz,
    last_job_id     bigint,
    -- Why the last tick enqueued nothing, or NULL.
    last_error      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- The schedule a job was enqueued by (its name, in the job's tenant); its index is built
-- without blocking writes, by migration 0018.
ALTER TABLE jobrunner.jobs ADD COLUMN schedule text;

-- enqueue_many and enqueue_many_unchecked take schedule names as a last argument (runner/sql/
-- enqueue.sql): the old ones go first, as in 0011.
DROP FUNCTION IF EXISTS jobrunner.enqueue_many(text[], jsonb[], timestamptz[], text[], integer[],
                                               integer[], text[], boolean[], timestamptz,
                                               bigint[]);
DROP FUNCTION IF EXISTS jobrunner.enqueue_many_unchecked(text[], jsonb[], timestamptz[], text[],
                                                         integer[], integer[], text[], boolean[],
                                                         timestamptz, bigint[]);
