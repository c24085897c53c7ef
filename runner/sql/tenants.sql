-- The tenant policy as the enqueue and claim functions read it, and the fairness rule: how a
-- claim is shared among the tenants with ripe jobs.

-- The policy that applies to `for_tenant`: its own row, else the defaults ('*'), else NULL.
-- (jobrunner.claim looks policies up the same way inline, in a lateral join, where a call per
-- tenant would cost a plan per call.)
CREATE OR REPLACE FUNCTION jobrunner.tenant_policy(for_tenant text) RETURNS jobrunner.tenant_policies
LANGUAGE sql STABLE
AS $$
    SELECT p FROM jobrunner.tenant_policies AS p
     WHERE p.tenant IN (for_tenant, '*')
     ORDER BY p.tenant = '*'
     LIMIT 1
$$;

-- The policies that make claims unequal: a cap on running jobs, a rate, or a weight other than
-- 1. While there are none, the fast claims (jobrunner.claim_unlimited) apply; otherwise only
-- jobrunner.claim does. A view, so that the planner folds it into the claims' statements.
CREATE OR REPLACE VIEW jobrunner.limiting_policies AS
    SELECT q.tenant
      FROM jobrunner.tenant_policies AS q
     WHERE q.max_running IS NOT NULL OR q.rate IS NOT NULL OR q.weight <> 1;

-- The fairness rule: how many of a claim's `lim` jobs a tenant with ripe jobs may take, before
-- its room (max_running, rate) is applied. Each of the `ripe_tenants` seen gets its weighted
-- share, and at least one job. When more tenants are ripe than the claim holds, or the claim
-- finishes a turn that started after some tenant (`mid_turn`), each gets one job: tenants then
-- take turns, `lim` of them per claim. Equal weights give each `lim / ripe_tenants` jobs.
-- A plain SQL expression, so that the planner inlines it where it is called.
CREATE OR REPLACE FUNCTION jobrunner.claim_share(
    lim          integer,
    ripe_tenants integer,
    weight       integer,
    total_weight double precision,
    mid_turn     boolean
) RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN ripe_tenants >= lim OR mid_turn THEN 1
                ELSE greatest(1, floor(lim * weight / total_weight))::integer END
$$;
