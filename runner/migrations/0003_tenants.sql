-- Tenants: the policy runners publish from their config file and the token buckets behind rate
-- limits (enqueue and claim read them: runner/sql/tenants.sql, enqueue.sql, claim.sql).

-- One row per tenant named in the policy, already merged with the defaults; the row '*' holds
-- the defaults for every tenant not named. No rows: no limits at all.
CREATE TABLE jobrunner.tenant_policies (
    tenant        text PRIMARY KEY,
    -- Most of the tenant's jobs running at once, on all runners together.
    max_running   integer CHECK (max_running >= 1),
    -- Jobs started per second (a token bucket holding at most `burst` starts).
    rate          double precision CHECK (rate > 0),
    burst         double precision CHECK (burst >= 1),
    -- The tenant's share of each claim, relative to the other tenants with ripe jobs.
    weight        integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    -- The job types the tenant may enqueue and run; NULL: all.
    job_types     text[],
    -- Sandbox limit overrides (bytes, milliseconds); each runner caps them at its own maxima.
    memory        bigint CHECK (memory > 0),
    cpu_budget_ms bigint CHECK (cpu_budget_ms > 0),
    timeout_ms    bigint CHECK (timeout_ms > 0),
    published_by  text NOT NULL,
    published_at  timestamptz NOT NULL
);

CREATE TABLE jobrunner.tenant_buckets (
    tenant      text PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL
);

-- Claims walk ripe jobs tenant by tenant, in priority order within each tenant. Not rebuilt
-- CONCURRENTLY: a migration runs in a transaction, and this one shipped before the queue had
-- users with large tables.
DROP INDEX jobrunner.jobs_claim_order;
CREATE INDEX jobs_claim_order ON jobrunner.jobs (tenant, priority, run_at, id)
    WHERE state = 'available';

-- Counting a tenant's running jobs against its max_running.
CREATE INDEX jobs_running_by_tenant ON jobrunner.jobs (tenant) WHERE state = 'running';
