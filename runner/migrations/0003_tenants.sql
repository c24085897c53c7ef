-- Tenants: the policy runners publish from their config file, the token buckets behind rate
-- limits, enqueue refusing job types a tenant may not use, and a claim that shares every batch
-- fairly among the tenants with ripe jobs while holding each to its limits across all runners.

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

-- Claims walk ripe jobs tenant by tenant, in priority order within each tenant.
DROP INDEX jobrunner.jobs_claim_order;
CREATE INDEX jobs_claim_order ON jobrunner.jobs (tenant, priority, run_at, id)
    WHERE state = 'available';

-- Counting a tenant's running jobs against its max_running.
CREATE INDEX jobs_running_by_tenant ON jobrunner.jobs (tenant) WHERE state = 'running';

-- The policy that applies to `for_tenant`: its own row, else the defaults, else NULL.
CREATE FUNCTION jobrunner.tenant_policy(for_tenant text) RETURNS jobrunner.tenant_policies
LANGUAGE sql STABLE
AS $$
    SELECT p FROM jobrunner.tenant_policies AS p
     WHERE p.tenant IN (for_tenant, '*')
     ORDER BY p.tenant = '*'
     LIMIT 1
$$;

-- Enqueue checks each job's type against its tenant's policy before inserting anything; the
-- checks and inserts of 0001 run unchanged behind it.
ALTER FUNCTION jobrunner.enqueue_many(text[], jsonb[], timestamptz[], text[], integer[],
                                      integer[], text[], boolean[], timestamptz)
    RENAME TO enqueue_many_unchecked;

CREATE FUNCTION jobrunner.enqueue_many(
    job_types     text[],
    payloads      jsonb[],
    run_ats       timestamptz[],
    tenants       text[],
    priorities    integer[],
    max_attempts  integer[],
    unique_keys   text[],
    deduplicate   boolean[],
    at            timestamptz DEFAULT now(),
    OUT job_id    bigint,
    OUT inserted  boolean
) RETURNS SETOF record
LANGUAGE plpgsql
AS $$
DECLARE
    problem text;
BEGIN
    IF EXISTS (SELECT FROM jobrunner.tenant_policies AS p WHERE p.job_types IS NOT NULL) THEN
        SELECT format('tenant %s may not enqueue job type %s (its policy allows %s)',
                      to_json(t.tenant), to_json(t.job_type), to_json((t.policy).job_types))
          INTO problem
          FROM (SELECT u.job_type, u.tenant, u.ord, jobrunner.tenant_policy(u.tenant) AS policy
                  FROM unnest(job_types, tenants) WITH ORDINALITY AS u(job_type, tenant, ord))
               AS t
         WHERE NOT t.job_type = ANY((t.policy).job_types)
         ORDER BY t.ord
         LIMIT 1;
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'jobrunner.enqueue: %', problem
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN QUERY SELECT e.job_id, e.inserted
                   FROM jobrunner.enqueue_many_unchecked(job_types, payloads, run_ats, tenants,
                                                         priorities, max_attempts, unique_keys,
                                                         deduplicate, at) AS e;
END;
$$;

-- Claims up to `lim` ripe jobs of `types` for `owner`, shared fairly among tenants.
--
-- 1. Types with a concurrency cap are locked (advisory, in name order) and get room = cap minus
--    their running jobs on every runner.
-- 2. Tenants with ripe jobs are found by skipping through the claim index one tenant at a
--    time, starting after `after_tenant`, at most `lim` of them.
-- 3. Tenants with max_running or a rate are locked (advisory, in name order, after the type
--    locks, so claimers never wait in a cycle) and get room = max_running minus their running
--    jobs, and at most the whole tokens in their bucket.
-- 4. Each tenant's quota is its weighted share of `lim` (at least one job; when more tenants
--    than `lim` are ripe, one job each, `lim` tenants per claim in turn), within its room.
--    One statement takes each tenant's quota in priority order, skipping locked rows, trims
--    the types to their room, and marks the jobs running.
--
-- Returns the claimed jobs, then one status row whose id is NULL: `more` says ripe jobs may be
-- left that this claim's quotas did not reach (claim again at once for the slots left), `wait_ms` when
-- the next token comes for a tenant held back by its rate, `held` whether a tenant was held
-- back by max_running, and `next_tenant` where the next claim's tenant scan should start.
CREATE FUNCTION jobrunner.claim(
    at               timestamptz,
    claimer          text,
    lease_until      timestamptz,
    types            text[],
    type_attempts    integer[],
    type_caps        integer[],
    default_attempts integer,
    lim              integer,
    after_tenant     text DEFAULT NULL
) RETURNS TABLE (
    id           bigint,
    job_type     text,
    tenant       text,
    payload      text,
    priority     integer,
    attempt      integer,
    max_attempts integer,
    run_at       timestamptz,
    created_at   timestamptz,
    more         boolean,
    wait_ms      bigint,
    held         boolean,
    next_tenant  text
)
LANGUAGE plpgsql
-- Every scan here walks an index in its order and stops early. Without statistics (a fresh
-- table, autovacuum off) the planner guesses a few rows and picks bitmap scans that read the
-- whole backlog instead.
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
DECLARE
    open_types text[] := types;
    open_room  integer[];
    scanned    text[] := '{}';
    limited    boolean;
    scan_from  text;
    claimed    integer := 0;
    first_p    integer[];
    first_r    timestamptz[];
    first_i    bigint[];
    picked       bigint[];
    picked_types text[];
    picked_ords  bigint[];
    n          integer;
    weights    integer[];
    caps       integer[];
    rates      double precision[];
    bursts     double precision[];
    rooms      integer[];
    tokens     double precision[];
    cap_rooms  integer[];
    share      integer;
    refilled   double precision;
    quotas     integer[];
    got        integer[];
    total_w    double precision;
    excess     integer;
    idx        integer;
    r          record;
BEGIN
    more := false;
    held := false;
    IF lim < 1 OR cardinality(types) IS NULL OR cardinality(types) = 0 THEN
        id := NULL;
        RETURN NEXT;
        RETURN;
    END IF;

    -- 1. Type caps.
    IF cardinality(array_remove(type_caps, NULL)) > 0 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('jobrunner.concurrency:' || s.t, 0))
           FROM (SELECT u.t FROM unnest(types, type_caps) AS u(t, cap)
                  WHERE u.cap IS NOT NULL ORDER BY u.t) AS s;
        SELECT coalesce(array_agg(u.t), '{}'), coalesce(array_agg(u.room), '{}')
          INTO open_types, open_room
          FROM (SELECT c.t, c.cap - (SELECT count(*) FROM jobrunner.jobs AS j
                                      WHERE j.state = 'running' AND j.job_type = c.t) AS room
                  FROM unnest(types, type_caps) AS c(t, cap)) AS u
         WHERE u.room IS NULL OR u.room > 0;
    END IF;

    -- 2. Ripe tenants after after_tenant, one index descent each, with their policies and
    --    their first ripe job: the claim starts there rather than wading again through the
    --    index entries of jobs already taken that vacuum has not yet removed. None after
    --    after_tenant: that turn is over, the next starts from the first tenant.
    scan_from := after_tenant;
    LOOP
        WITH RECURSIVE walk(t, p, r, i, k) AS (
            (SELECT j.tenant, j.priority, j.run_at, j.id, 1
               FROM jobrunner.jobs AS j
              WHERE j.state = 'available' AND j.tenant > coalesce(scan_from, '')
                AND j.run_at <= at AND j.job_type = ANY(open_types)
              ORDER BY j.tenant, j.priority, j.run_at, j.id
              LIMIT 1)
            UNION ALL
            SELECT nxt.tenant, nxt.priority, nxt.run_at, nxt.id, w.k + 1
              FROM walk AS w
             CROSS JOIN LATERAL (
                   SELECT j.tenant, j.priority, j.run_at, j.id
                     FROM jobrunner.jobs AS j
                    WHERE j.state = 'available' AND j.tenant > w.t
                      AND j.run_at <= at AND j.job_type = ANY(open_types)
                    ORDER BY j.tenant, j.priority, j.run_at, j.id
                    LIMIT 1
             ) AS nxt
             WHERE w.k < lim
        )
        SELECT coalesce(array_agg(w.t ORDER BY w.k), '{}'),
               array_agg(w.p ORDER BY w.k), array_agg(w.r ORDER BY w.k),
               array_agg(w.i ORDER BY w.k),
               array_agg(coalesce(p.weight, 1) ORDER BY w.k),
               array_agg(p.max_running ORDER BY w.k),
               array_agg(p.rate ORDER BY w.k),
               array_agg(coalesce(p.burst, 1) ORDER BY w.k),
               coalesce(bool_or(p.max_running IS NOT NULL OR p.rate IS NOT NULL), false)
          INTO scanned, first_p, first_r, first_i, weights, caps, rates, bursts, limited
          FROM walk AS w
          LEFT JOIN LATERAL (SELECT q.weight, q.max_running, q.rate, q.burst
                               FROM jobrunner.tenant_policies AS q
                              WHERE q.tenant IN (w.t, '*')
                              ORDER BY q.tenant = '*'
                              LIMIT 1) AS p ON true
         WHERE cardinality(open_types) > 0;
        n := cardinality(scanned);
        EXIT WHEN n > 0 OR scan_from IS NULL;
        scan_from := NULL;
    END LOOP;
    -- A full scan may have left ripe tenants unseen: the next claim starts after the last
    -- one. A scan that started after a tenant skipped those before it: claim again.
    next_tenant := CASE WHEN n >= lim THEN scanned[n] END;
    more := next_tenant IS NOT NULL OR scan_from IS NOT NULL;
    IF n = 0 THEN
        id := NULL;
        RETURN NEXT;
        RETURN;
    END IF;

    -- 3. Locks and room.
    rooms := array_fill(lim, ARRAY[n]);
    cap_rooms := rooms;
    tokens := array_fill(NULL::double precision, ARRAY[n]);
    IF limited THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('jobrunner.tenant:' || s.t, 0))
           FROM (SELECT u.t FROM unnest(scanned, caps, rates) AS u(t, cap, rate)
                  WHERE u.cap IS NOT NULL OR u.rate IS NOT NULL ORDER BY u.t) AS s;
    END IF;
    FOR i IN 1..n LOOP
        CONTINUE WHEN NOT limited;
        IF caps[i] IS NOT NULL THEN
            rooms[i] := greatest(0, caps[i] - (SELECT count(*) FROM jobrunner.jobs AS j
                                                WHERE j.state = 'running'
                                                  AND j.tenant = scanned[i]));
        END IF;
        cap_rooms[i] := rooms[i];
        IF rates[i] IS NOT NULL THEN
            SELECT least(bursts[i], b.tokens + rates[i] * greatest(0,
                         extract(epoch FROM at - b.refilled_at)))
              INTO refilled
              FROM jobrunner.tenant_buckets AS b WHERE b.tenant = scanned[i];
            tokens[i] := coalesce(refilled, bursts[i]);
            rooms[i] := least(rooms[i], floor(tokens[i])::integer);
            IF tokens[i] < 1 THEN
                wait_ms := least(wait_ms, ceil((1 - tokens[i]) / rates[i] * 1000)::bigint);
            END IF;
        END IF;
    END LOOP;

    -- 4. Quotas, at most lim in all, then one claim for all of them.
    total_w := 0;
    FOR i IN 1..n LOOP
        total_w := total_w + weights[i];
    END LOOP;
    quotas := array_fill(0, ARRAY[n]);
    got := array_fill(0, ARRAY[n]);
    excess := -lim;
    FOR i IN 1..n LOOP
        -- Taking turns (more ripe tenants than lim): one job each, the tail of the turn too.
        share := CASE WHEN n >= lim OR scan_from IS NOT NULL THEN 1
                      ELSE greatest(1, floor(lim * weights[i] / total_w)) END;
        quotas[i] := least(rooms[i], share);
        -- max_running keeps the tenant below its share: a completion anywhere makes room.
        held := held OR cap_rooms[i] < share;
        excess := excess + quotas[i];
    END LOOP;
    -- Raising small shares to one job can overshoot: the biggest shares give way.
    WHILE excess > 0 LOOP
        idx := array_position(quotas, (SELECT max(x) FROM unnest(quotas) AS x));
        quotas[idx] := quotas[idx] - 1;
        excess := excess - 1;
    END LOOP;
    -- Each tenant's quota in claim order, locked; in tenant order, then claim order.
    SELECT coalesce(array_agg(c.id ORDER BY q.ord, c.priority, c.run_at, c.id), '{}'),
           array_agg(c.job_type ORDER BY q.ord, c.priority, c.run_at, c.id),
           array_agg(q.ord ORDER BY q.ord, c.priority, c.run_at, c.id)
      INTO picked, picked_types, picked_ords
      FROM unnest(quotas, first_p, first_r, first_i) WITH ORDINALITY AS q(quota, p, r, i, ord)
     CROSS JOIN LATERAL (
           SELECT j.id, j.job_type, j.priority, j.run_at
             FROM jobrunner.jobs AS j
            WHERE j.state = 'available' AND j.tenant = scanned[q.ord]
              AND (j.priority, j.run_at, j.id) >= (q.p, q.r, q.i)
              AND j.run_at <= at AND j.job_type = ANY(open_types)
            ORDER BY j.priority, j.run_at, j.id
            LIMIT q.quota
              FOR UPDATE SKIP LOCKED
     ) AS c
     WHERE q.quota > 0;
    IF open_room IS NOT NULL THEN
        -- Types with a cap keep their room's worth, the tenants taking turns by weight.
        SELECT coalesce(array_agg(u.id ORDER BY u.n), '{}') INTO picked
          FROM (SELECT u.id, u.jt, u.n,
                       row_number() OVER (PARTITION BY u.jt ORDER BY u.turn, u.ord) AS k
                  FROM (SELECT u.*,
                               row_number() OVER (PARTITION BY u.ord ORDER BY u.n)
                                   ::double precision / weights[u.ord] AS turn
                          FROM unnest(picked, picked_types, picked_ords)
                               WITH ORDINALITY AS u(id, jt, ord, n)) AS u) AS u
          JOIN unnest(open_types, open_room) AS o(t, room) ON o.t = u.jt
         WHERE o.room IS NULL OR u.k <= o.room;
    END IF;

    FOR r IN
        UPDATE jobrunner.jobs AS j
           SET state = 'running', attempt = j.attempt + 1, lease_owner = claimer,
               lease_expires_at = lease_until, updated_at = at
          FROM unnest(types, type_attempts) AS ty(t, max_attempts)
         WHERE j.id = ANY(picked) AND ty.t = j.job_type
     RETURNING j.id, j.job_type, j.tenant, j.payload::text AS payload, j.priority, j.attempt,
               coalesce(j.max_attempts, ty.max_attempts, default_attempts) AS max_attempts,
               j.run_at, j.created_at
    LOOP
        id := r.id; job_type := r.job_type; tenant := r.tenant; payload := r.payload;
        priority := r.priority; attempt := r.attempt; max_attempts := r.max_attempts;
        run_at := r.run_at; created_at := r.created_at;
        RETURN NEXT;
        idx := array_position(scanned, r.tenant);
        got[idx] := got[idx] + 1;
        claimed := claimed + 1;
    END LOOP;

    -- Nothing claimed: every tenant seen is held back or taken by other claimers; claiming
    -- again at once would only spin.
    more := more AND claimed > 0;
    FOR i IN 1..n LOOP
        more := more OR (got[i] = quotas[i] AND quotas[i] > 0 AND got[i] < rooms[i]);
        IF rates[i] IS NOT NULL AND got[i] > 0 THEN
            INSERT INTO jobrunner.tenant_buckets AS b (tenant, tokens, refilled_at)
            VALUES (scanned[i], tokens[i] - got[i], at)
            ON CONFLICT ON CONSTRAINT tenant_buckets_pkey DO UPDATE
               SET tokens = excluded.tokens, refilled_at = excluded.refilled_at;
            IF tokens[i] - got[i] < 1 AND got[i] > 0 THEN
                wait_ms := least(wait_ms,
                                 ceil((1 - (tokens[i] - got[i])) / rates[i] * 1000)::bigint);
            END IF;
        END IF;
    END LOOP;
    id := NULL; job_type := NULL; tenant := NULL; payload := NULL; priority := NULL;
    attempt := NULL; max_attempts := NULL; run_at := NULL; created_at := NULL;
    RETURN NEXT;
END;
$$;
