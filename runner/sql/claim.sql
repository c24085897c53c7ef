-- Claiming: the three claim functions. Every one walks the ripe tenants in the claim index
-- (jobs_claim_order) and gives each its share (jobrunner.claim_share) of the claim.
--
-- - jobrunner.claim: any policy; type caps, tenant max_running, rates and weights.
-- - jobrunner.claim_unlimited (8 arguments): no limit anywhere (jobrunner.limiting_policies is
--   empty, no type capped); one statement.
-- - jobrunner.claim_unlimited (12 arguments): the same, starting each tenant at the claimer's
--   floor (below).
--
-- Claim floors: where each tenant's ripe jobs start in the claim index, so that a claim skips
-- the entries of jobs claimed since vacuum last ran.
--
-- A claimed job's entry stays in jobs_claim_order until vacuum removes it. A scan steps over
-- it, and learns from the heap that it is dead; once no snapshot can see the old row version
-- the scan marks the entry killed and later scans skip it cheaply. An old snapshot (a long
-- transaction anywhere in the cluster) prevents both vacuum and killing: every claim then
-- walks every entry claimed since, and gets slower with each job it claims.
--
-- The runner remembers, per tenant, the key (priority, run_at, id) below which its last claim
-- found nothing available, and the next claim starts there. Keys below a floor come back only
-- when a row becomes available there: inserted or made available again (retry, requeue,
-- rescue) by a transaction that committed after the claim's snapshot. Each such write
-- announces a key no greater than its rows' on the wake-up channel, after commit, and runners
-- lower their floors to it on hearing it. An empty payload lowers every floor to the start.
--
-- Batch claims: the two claim_unlimited functions given no lease (lease_until NULL) lock the
-- jobs they pick and change nothing. The caller's batch transaction keeps them locked while
-- they run and writes their outcomes before it commits (runner/sql/batches.sql); the jobs
-- they return carry the attempt they run as. No claim takes a job named by a batch's row
-- (jobrunner.batches): a live batch holds it locked anyway, and a lost batch's jobs wait for
-- the rescuer to count the attempt they were in (a hashed set of at most a few thousand ids,
-- built once per claim).
--
-- The fast claims' plans are generic (planned once per session), so they must not depend on
-- statistics. Their UPDATE joins the picked ids to the jobs table. Seen once on an analyzed
-- table of 200,000 jobs: the generic estimate of the picked rows was 90,000, the planner chose
-- a hash join fed by a scan of the whole primary key, and a claim of 500 jobs took 104 ms
-- instead of 9. Every join in them is a lookup by key: nested loops only (enable_hashjoin and
-- enable_mergejoin off). jobrunner.claim updates `WHERE id = ANY(picked)`, an index scan
-- whatever the estimates.

-- The claim's job types without the paused ones (jobrunner.paused_job_types), with their
-- parallel arrays: every claim function starts with it, so a paused type is claimed by no
-- runner from the moment the pause commits. With nothing paused it costs one index probe.
CREATE OR REPLACE FUNCTION jobrunner.unpaused(
    INOUT types         text[],
    INOUT type_attempts integer[],
    INOUT type_caps     integer[]
)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF EXISTS (SELECT FROM jobrunner.paused_job_types) THEN
        SELECT coalesce(array_agg(u.t ORDER BY u.o), '{}'),
               coalesce(array_agg(u.a ORDER BY u.o), '{}'),
               CASE WHEN type_caps IS NULL THEN NULL
                    ELSE coalesce(array_agg(u.c ORDER BY u.o), '{}') END
          INTO types, type_attempts, type_caps
          FROM unnest(types, type_attempts, coalesce(type_caps, '{}')) WITH ORDINALITY
               AS u(t, a, c, o)
         WHERE u.t IS NOT NULL
           AND NOT EXISTS (SELECT FROM jobrunner.paused_job_types AS p WHERE p.job_type = u.t);
    END IF;
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
CREATE OR REPLACE FUNCTION jobrunner.claim(
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
-- Claims run every few milliseconds on a busy runner. Planning the claim's statements anew on
-- every call (custom plans) cost as much as claiming a hundred jobs; their plans do not depend
-- on the arguments (index scans in index order, see above).
-- Its disabled scan types inflate plan costs past the JIT threshold: no JIT either.
SET plan_cache_mode = force_generic_plan
SET jit = off
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
    SELECT * INTO types, type_attempts, type_caps
      FROM jobrunner.unpaused(types, type_attempts, type_caps);
    open_types := types;
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
        share := jobrunner.claim_share(lim, n, weights[i], total_w, scan_from IS NOT NULL);
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
              AND j.id NOT IN (SELECT unnest(b.job_ids) FROM jobrunner.batches AS b)
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


-- The claim when no limit applies: no type has a concurrency cap (the caller knows) and no
-- tenant has max_running, a rate or a weight other than 1. The same walk through the ripe
-- tenants and the same equal shares as jobrunner.claim, as one statement: a third of the time
-- for a small claim, which is what an idle runner's start latency waits for. If the policy
-- has limits after all it claims nothing, and its status row says `limited`: the caller then
-- uses jobrunner.claim. The status row (id NULL) also carries how many ripe tenants the walk
-- saw (at most lim) and the last of them; the caller derives `more` and `next_tenant` from
-- those and the jobs, as jobrunner.claim would.
CREATE OR REPLACE FUNCTION jobrunner.claim_unlimited(
    at               timestamptz,
    claimer          text,
    lease_until      timestamptz,
    types            text[],
    type_attempts    integer[],
    default_attempts integer,
    lim              integer,
    after_tenant     text
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
    tenants      integer,
    last_tenant  text,
    limited      boolean
)
LANGUAGE plpgsql
-- As for jobrunner.claim: index scans in index order whatever the statistics say, planned once
-- per session. Without JIT: the cost penalty of a disabled scan type (on the tiny policy
-- table) would otherwise make every call JIT-compile its plan, 300 ms.
SET enable_bitmapscan = off
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    SELECT u.types, u.type_attempts INTO types, type_attempts
      FROM jobrunner.unpaused(types, type_attempts, NULL) AS u;
    -- A leasing claim commits without waiting for its WAL to reach the disk (a third of an
    -- idle claim's time here). Safe: a claim lost in a server crash leaves the job available,
    -- as if never claimed, and the runner's outcome write, fenced on the claim, then changes
    -- nothing; the job runs again (at least once). An outcome write waits for the disk, and
    -- with it every claim before it; so does a batch transaction, which writes outcomes.
    IF lease_until IS NOT NULL THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN QUERY
    WITH RECURSIVE walk(t, p, r, i, k) AS (
        (SELECT j.tenant, j.priority, j.run_at, j.id, 1
           FROM jobrunner.jobs AS j
          WHERE j.state = 'available' AND j.tenant > after_tenant AND j.run_at <= at
            AND j.job_type = ANY(types)
            AND NOT EXISTS (SELECT FROM jobrunner.limiting_policies)
          ORDER BY j.tenant, j.priority, j.run_at, j.id
          LIMIT 1)
        UNION ALL
        SELECT nxt.tenant, nxt.priority, nxt.run_at, nxt.id, w.k + 1
          FROM walk AS w
         CROSS JOIN LATERAL (
               SELECT j.tenant, j.priority, j.run_at, j.id
                 FROM jobrunner.jobs AS j
                WHERE j.state = 'available' AND j.tenant > w.t AND j.run_at <= at
                  AND j.job_type = ANY(types)
                ORDER BY j.tenant, j.priority, j.run_at, j.id
                LIMIT 1) AS nxt
         WHERE w.k < lim
    ),
    seen AS (SELECT count(*)::integer AS n, max(w.t) AS last FROM walk AS w),
    picked AS (
        SELECT c.*
          FROM walk AS w
         CROSS JOIN seen AS s
         CROSS JOIN LATERAL (
               SELECT j.id, j.job_type, j.tenant, j.payload::text AS payload, j.priority,
                      j.attempt, j.max_attempts, j.run_at, j.created_at
                 FROM jobrunner.jobs AS j
                WHERE j.state = 'available' AND j.tenant = w.t
                  AND (j.priority, j.run_at, j.id) >= (w.p, w.r, w.i)
                  AND j.run_at <= at AND j.job_type = ANY(types)
                  AND j.id NOT IN (SELECT unnest(b.job_ids) FROM jobrunner.batches AS b)
                ORDER BY j.priority, j.run_at, j.id
                -- Taking turns (more ripe tenants than lim, or the tail of a turn that
                -- started after a tenant): one job each.
                LIMIT jobrunner.claim_share(lim, s.n, 1, s.n, after_tenant <> '')
                  FOR UPDATE SKIP LOCKED) AS c
    ),
    leased AS (
        UPDATE jobrunner.jobs AS j
           SET state = 'running', attempt = j.attempt + 1, lease_owner = claimer,
               lease_expires_at = lease_until, updated_at = at
          FROM picked AS p
         WHERE j.id = p.id AND lease_until IS NOT NULL
     RETURNING p.id, p.job_type, p.tenant, p.payload, p.priority, j.attempt, p.max_attempts,
               p.run_at, p.created_at
    ),
    -- A batch claim: the rows stay as they are, locked.
    claimed AS (
        SELECT c.id, c.job_type, c.tenant, c.payload, c.priority, c.attempt,
               coalesce(c.max_attempts, ty.max_attempts, default_attempts) AS max_attempts,
               c.run_at, c.created_at
          FROM (SELECT * FROM leased
                UNION ALL
                SELECT p.id, p.job_type, p.tenant, p.payload, p.priority, p.attempt + 1,
                       p.max_attempts, p.run_at, p.created_at
                  FROM picked AS p
                 WHERE lease_until IS NULL) AS c
          JOIN unnest(types, type_attempts) AS ty(t, max_attempts) ON ty.t = c.job_type
    )
    SELECT c.*, NULL::integer, NULL::text, NULL::boolean
      FROM claimed AS c
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, s.n, s.last,
           EXISTS (SELECT FROM jobrunner.limiting_policies)
      FROM seen AS s;
END;
$$;

-- The fast claim above, starting each known tenant at its floor. The floors come in as four
-- parallel arrays (tenant, priority, run_at, id); tenants without one start at the beginning.
-- Besides the jobs and the status row it returns one floor row per tenant it claimed from
-- (id NULL, tenant, priority, run_at, floor_id): the first available entry at or above the
-- tenant's old floor that this claim did not take, or if none, the last one it took.
-- Merging the floors into the walk and finding the new ones cost up to two index probes per
-- tenant: a claim of one job from each of 500 tenants took 14.5 ms instead of 11.3. Runners
-- use the claim_unlimited above (without floors) for such wide claims, and this one for
-- claims from a few tenants, where the probes cost nothing next to the jobs.
CREATE OR REPLACE FUNCTION jobrunner.claim_unlimited(
    at               timestamptz,
    claimer          text,
    lease_until      timestamptz,
    types            text[],
    type_attempts    integer[],
    default_attempts integer,
    lim              integer,
    after_tenant     text,
    floor_tenants    text[],
    floor_priorities integer[],
    floor_run_ats    timestamptz[],
    floor_ids        bigint[]
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
    tenants      integer,
    last_tenant  text,
    limited      boolean,
    floor_id     bigint
)
LANGUAGE plpgsql
SET enable_bitmapscan = off
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
SET jit = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    SELECT u.types, u.type_attempts INTO types, type_attempts
      FROM jobrunner.unpaused(types, type_attempts, NULL) AS u;
    -- Asynchronous commit: see the claim_unlimited above.
    IF lease_until IS NOT NULL THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN QUERY
    WITH RECURSIVE
    -- The floors in the index's tenant order: the walk below merges them with the index.
    known AS (
        SELECT coalesce(array_agg(f.t ORDER BY f.t), '{}') AS ts,
               array_agg(f.p ORDER BY f.t) AS ps,
               array_agg(f.r ORDER BY f.t) AS rs,
               array_agg(f.i ORDER BY f.t) AS iz
          FROM unnest(floor_tenants, floor_priorities, floor_run_ats, floor_ids)
               AS f(t, p, r, i)
    ),
    -- The tenants with ripe jobs, in order after after_tenant, up to lim of them (hit). Each
    -- step looks for the next tenant between the previous one and the next known tenant
    -- (nk, ts[k]), from the start of its entries; else in the known tenant, from its floor;
    -- a known tenant with nothing ripe is a miss, and the walk goes on after it. The first
    -- row is a seed, and a miss.
    walk(t, p, r, i, hit, hits, k, fp, fr, fi) AS (
        SELECT after_tenant, NULL::integer, NULL::timestamptz, NULL::bigint, false, 0,
               (SELECT count(*)::integer + 1 FROM unnest(kn.ts) AS x(t) WHERE x.t <= after_tenant),
               NULL::integer, NULL::timestamptz, NULL::bigint
          FROM known AS kn
         WHERE NOT EXISTS (SELECT FROM jobrunner.limiting_policies)
        UNION ALL
        SELECT coalesce(u1.tenant, u2.tenant, nk.t),
               coalesce(u1.priority, u2.priority, kj.priority),
               coalesce(u1.run_at, u2.run_at, kj.run_at),
               coalesce(u1.id, u2.id, kj.id),
               coalesce(u1.id, u2.id, kj.id) IS NOT NULL,
               w.hits + (coalesce(u1.id, u2.id, kj.id) IS NOT NULL)::integer,
               w.k + (u1.id IS NULL AND u2.id IS NULL)::integer,
               CASE WHEN u1.id IS NULL AND u2.id IS NULL THEN nk.p END,
               CASE WHEN u1.id IS NULL AND u2.id IS NULL THEN nk.r END,
               CASE WHEN u1.id IS NULL AND u2.id IS NULL THEN nk.i END
          FROM walk AS w
         CROSS JOIN known AS kn
          -- The next known tenant and its floor, looked up once per step (OFFSET 0 keeps the
          -- planner from inlining the lookups: finding a text array's k-th element walks the
          -- array).
         CROSS JOIN LATERAL (SELECT kn.ts[w.k] AS t, kn.ps[w.k] AS p, kn.rs[w.k] AS r,
                                    kn.iz[w.k] AS i
                             OFFSET 0) AS nk
          -- No known tenant is left: any tenant after the previous one.
          LEFT JOIN LATERAL (
               SELECT j.tenant, j.priority, j.run_at, j.id
                 FROM jobrunner.jobs AS j
                WHERE nk.t IS NULL
                  AND j.state = 'available' AND j.tenant > w.t AND j.run_at <= at
                  AND j.job_type = ANY(types)
                ORDER BY j.tenant, j.priority, j.run_at, j.id
                LIMIT 1) AS u1 ON true
          -- A tenant between the previous one and the next known one.
          LEFT JOIN LATERAL (
               SELECT j.tenant, j.priority, j.run_at, j.id
                 FROM jobrunner.jobs AS j
                WHERE nk.t IS NOT NULL
                  AND j.state = 'available' AND j.tenant > w.t AND j.tenant < nk.t
                  AND j.run_at <= at AND j.job_type = ANY(types)
                ORDER BY j.tenant, j.priority, j.run_at, j.id
                LIMIT 1) AS u2 ON true
          -- Else the next known tenant, from its floor.
          LEFT JOIN LATERAL (
               SELECT j.priority, j.run_at, j.id
                 FROM jobrunner.jobs AS j
                WHERE u1.id IS NULL AND u2.id IS NULL AND nk.t IS NOT NULL
                  AND j.state = 'available' AND j.tenant = nk.t
                  AND (j.priority, j.run_at, j.id) >= (nk.p, nk.r, nk.i)
                  AND j.run_at <= at AND j.job_type = ANY(types)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT 1) AS kj ON true
         WHERE w.hits < lim
           AND (u1.id IS NOT NULL OR u2.id IS NOT NULL OR nk.t IS NOT NULL)
    ),
    hit AS (SELECT * FROM walk AS w WHERE w.hit),
    seen AS (SELECT count(*)::integer AS n, max(h.t) AS last FROM hit AS h),
    picked AS (
        SELECT c.*
          FROM hit AS w
         CROSS JOIN seen AS s
         CROSS JOIN LATERAL (
               SELECT j.id, j.job_type, j.tenant, j.payload::text AS payload, j.priority,
                      j.attempt, j.max_attempts, j.run_at, j.created_at
                 FROM jobrunner.jobs AS j
                WHERE j.state = 'available' AND j.tenant = w.t
                  AND (j.priority, j.run_at, j.id) >= (w.p, w.r, w.i)
                  AND j.run_at <= at AND j.job_type = ANY(types)
                  AND j.id NOT IN (SELECT unnest(b.job_ids) FROM jobrunner.batches AS b)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT jobrunner.claim_share(lim, s.n, 1, s.n, after_tenant <> '')
                  FOR UPDATE SKIP LOCKED) AS c
    ),
    leased AS (
        UPDATE jobrunner.jobs AS j
           SET state = 'running', attempt = j.attempt + 1, lease_owner = claimer,
               lease_expires_at = lease_until, updated_at = at
          FROM picked AS p
         WHERE j.id = p.id AND lease_until IS NOT NULL
     RETURNING p.id, p.job_type, p.tenant, p.payload, p.priority, j.attempt, p.max_attempts,
               p.run_at, p.created_at
    ),
    -- A batch claim: the rows stay as they are, locked.
    claimed AS (
        SELECT c.id, c.job_type, c.tenant, c.payload, c.priority, c.attempt,
               coalesce(c.max_attempts, ty.max_attempts, default_attempts) AS max_attempts,
               c.run_at, c.created_at
          FROM (SELECT * FROM leased
                UNION ALL
                SELECT p.id, p.job_type, p.tenant, p.payload, p.priority, p.attempt + 1,
                       p.max_attempts, p.run_at, p.created_at
                  FROM picked AS p
                 WHERE lease_until IS NULL) AS c
          JOIN unnest(types, type_attempts) AS ty(t, max_attempts) ON ty.t = c.job_type
    ),
    -- Whatever type or ripeness: a job of a type this runner lacks, or one not yet due, holds
    -- the floor where it is.
    floors AS (
        SELECT h.t,
               coalesce(l.priority, top.priority) AS priority,
               coalesce(l.run_at, top.run_at) AS run_at,
               coalesce(l.id, top.id) AS id
          FROM hit AS h
          LEFT JOIN LATERAL (
               SELECT j.priority, j.run_at, j.id
                 FROM jobrunner.jobs AS j
                WHERE j.state = 'available' AND j.tenant = h.t
                  AND (j.priority, j.run_at, j.id)
                      >= (coalesce(h.fp, '-2147483648'::integer),
                          coalesce(h.fr, '-infinity'::timestamptz),
                          coalesce(h.fi, '-9223372036854775808'::bigint))
                  AND j.id NOT IN (SELECT c.id FROM claimed AS c)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT 1) AS l ON true
          LEFT JOIN LATERAL (
               SELECT c.priority, c.run_at, c.id
                 FROM claimed AS c
                WHERE l.id IS NULL AND c.tenant = h.t
                ORDER BY c.priority DESC, c.run_at DESC, c.id DESC
                LIMIT 1) AS top ON true
    )
    SELECT c.*, NULL::integer, NULL::text, NULL::boolean, NULL::bigint
      FROM claimed AS c
    UNION ALL
    SELECT NULL, NULL, f.t, NULL, f.priority, NULL, NULL, f.run_at, NULL, NULL, NULL, NULL, f.id
      FROM floors AS f
     WHERE f.id IS NOT NULL
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, s.n, s.last,
           EXISTS (SELECT FROM jobrunner.limiting_policies),
           NULL
      FROM seen AS s;
END;
$$;
