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

-- Announces jobs that became available: one notification carrying a key no greater than any
-- of theirs, in any tenant (the minimum of each column: cheap to compute, and below every
-- floor that any of them is below). Nothing for no jobs.
CREATE FUNCTION jobrunner.announce_jobs(priority integer, run_at timestamptz, id bigint)
RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_notify('jobrunner_jobs', json_build_array(priority, run_at, id)::text)
     WHERE id IS NOT NULL
$$;

-- Enqueued jobs announce themselves, from the arrays they came in (cheaper than collecting
-- the inserted rows: a trigger's transition table made bulk enqueues 7% slower), with id 0:
-- the least of their priorities and run_ats is already a low enough key. The INSERT trigger
-- stays for rows inserted any other way (by hand), and announces those with an empty payload;
-- it keeps quiet while jobrunner.enqueue_many inserts.
DROP TRIGGER jobs_added ON jobrunner.jobs;
CREATE TRIGGER jobs_added AFTER INSERT ON jobrunner.jobs
    FOR EACH STATEMENT
    WHEN (current_setting('jobrunner.enqueuing', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION jobrunner.notify_jobs_added();

-- 0003's enqueue_many (the tenant policy check) stays as it is, under a new name, inside the
-- announcing one.
ALTER FUNCTION jobrunner.enqueue_many(text[], jsonb[], timestamptz[], text[], integer[],
                                      integer[], text[], boolean[], timestamptz)
    RENAME TO enqueue_many_permitted;

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
BEGIN
    PERFORM set_config('jobrunner.enqueuing', 'on', true);
    RETURN QUERY SELECT e.job_id, e.inserted
                   FROM jobrunner.enqueue_many_permitted(job_types, payloads, run_ats, tenants,
                                                         priorities, max_attempts, unique_keys,
                                                         deduplicate, at) AS e;
    PERFORM set_config('jobrunner.enqueuing', 'off', true);
    PERFORM jobrunner.announce_jobs((SELECT min(p) FROM unnest(priorities) AS p),
                                    (SELECT min(r) FROM unnest(run_ats) AS r),
                                    0);
END;
$$;

-- The fast claim of 0004, starting each known tenant at its floor. The floors come in as four
-- parallel arrays (tenant, priority, run_at, id); tenants without one start at the beginning.
-- Besides the jobs and the status row it returns one floor row per tenant it claimed from
-- (id NULL, tenant, priority, run_at, floor_id): the first available entry at or above the
-- tenant's old floor that this claim did not take, or if none, the last one it took.
-- Merging the floors into the walk and finding the new ones cost up to two index probes per
-- tenant: a claim of one job from each of 500 tenants took 14.5 ms instead of 11.3. Runners
-- use 0004's claim_unlimited (kept, without floors) for such wide claims, and this one for
-- claims from a few tenants, where the probes cost nothing next to the jobs.
CREATE FUNCTION jobrunner.claim_unlimited(
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
AS $$
BEGIN
    -- Asynchronous commit: see 0004.
    PERFORM set_config('synchronous_commit', 'off', true);
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
         WHERE NOT EXISTS (SELECT FROM jobrunner.tenant_policies AS q
                            WHERE q.max_running IS NOT NULL OR q.rate IS NOT NULL
                               OR q.weight <> 1)
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
        SELECT c.id
          FROM hit AS w
         CROSS JOIN seen AS s
         CROSS JOIN LATERAL (
               SELECT j.id
                 FROM jobrunner.jobs AS j
                WHERE j.state = 'available' AND j.tenant = w.t
                  AND (j.priority, j.run_at, j.id) >= (w.p, w.r, w.i)
                  AND j.run_at <= at AND j.job_type = ANY(types)
                ORDER BY j.priority, j.run_at, j.id
                LIMIT CASE WHEN s.n >= lim OR after_tenant <> '' THEN 1 ELSE lim / s.n END
                  FOR UPDATE SKIP LOCKED) AS c
    ),
    claimed AS (
        UPDATE jobrunner.jobs AS j
           SET state = 'running', attempt = j.attempt + 1, lease_owner = claimer,
               lease_expires_at = lease_until, updated_at = at
          FROM picked, unnest(types, type_attempts) AS ty(t, max_attempts)
         WHERE j.id = picked.id AND ty.t = j.job_type
     RETURNING j.id, j.job_type, j.tenant, j.payload::text, j.priority, j.attempt,
               coalesce(j.max_attempts, ty.max_attempts, default_attempts) AS max_attempts, j.run_at,
               j.created_at
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
           EXISTS (SELECT FROM jobrunner.tenant_policies AS q
                    WHERE q.max_running IS NOT NULL OR q.rate IS NOT NULL OR q.weight <> 1),
           NULL
      FROM seen AS s;
END;
$$;
