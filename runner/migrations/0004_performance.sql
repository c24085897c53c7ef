-- Performance: enqueue skips the unique-key machinery when no job asks for it and never joins
-- quadratically; the claim takes a fast path when no tenant or type limit applies.

CREATE OR REPLACE FUNCTION jobrunner.enqueue_many_unchecked(
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
-- The joins with the inserted rows are hash joins: a nested loop over two CTE scans of a
-- bulk enqueue would be quadratic (the planner cannot estimate them). A duplicate's pending
-- twin is found through the unique index, one row at a time.
SET enable_nestloop = off
AS $$
DECLARE
    n          integer := coalesce(cardinality(job_types), 0);
    ids        bigint[];
    fresh      boolean[];
    problem    text;
    passes     integer := 0;
    id_seq     regclass := pg_get_serial_sequence('jobrunner.jobs', 'id')::regclass;
    r          record;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM unnest(ARRAY[cardinality(payloads), cardinality(run_ats),
                                       cardinality(tenants), cardinality(priorities),
                                       cardinality(max_attempts), cardinality(unique_keys),
                                       cardinality(deduplicate)]) AS c(len)
                WHERE c.len IS DISTINCT FROM n) THEN
        RAISE EXCEPTION 'jobrunner.enqueue_many: all arrays must have % elements', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT CASE WHEN n > 1 THEN format('job %s of %s: ', t.ord, n) ELSE '' END || CASE
               WHEN t.job_type IS NULL OR t.job_type = '' THEN 'job_type must not be empty'
               WHEN length(t.job_type) > 200 THEN 'job_type is longer than 200 characters'
               WHEN t.payload IS NULL THEN 'payload must be JSON, not NULL'
               WHEN t.run_at IS NULL THEN 'run_at must not be NULL'
               WHEN t.tenant IS NULL OR t.tenant = '' THEN 'tenant must not be empty'
               WHEN length(t.tenant) > 200 THEN 'tenant is longer than 200 characters'
               WHEN t.priority IS NULL THEN 'priority must not be NULL'
               WHEN t.max_attempts < 1 THEN 'max_attempts must be at least 1'
               WHEN t.unique_key = '' THEN 'unique_key must not be empty'
               WHEN t.unique_key IS NOT NULL AND t.dedupe IS FALSE
                   THEN 'a unique_key was given but deduplicate is false'
           END
      INTO problem
      FROM unnest(job_types, payloads, run_ats, tenants, priorities, max_attempts,
                  unique_keys, deduplicate)
           WITH ORDINALITY AS t(job_type, payload, run_at, tenant, priority, max_attempts,
                                unique_key, dedupe, ord)
     WHERE t.job_type IS NULL OR t.job_type = '' OR length(t.job_type) > 200
        OR t.payload IS NULL OR t.run_at IS NULL
        OR t.tenant IS NULL OR t.tenant = '' OR length(t.tenant) > 200
        OR t.priority IS NULL OR t.max_attempts < 1 OR t.unique_key = ''
        OR (t.unique_key IS NOT NULL AND t.dedupe IS FALSE)
     ORDER BY t.ord
     LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'jobrunner.enqueue: %', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Nothing to deduplicate (bulk loads usually): one INSERT, no unique-key bookkeeping.
    IF NOT EXISTS (SELECT FROM unnest(deduplicate) AS d(dedupe) WHERE d.dedupe IS NOT FALSE) THEN
        RETURN QUERY
            WITH input AS MATERIALIZED (
                SELECT nextval(id_seq) AS new_id, t.*
                  FROM unnest(job_types, payloads, run_ats, tenants, priorities, max_attempts)
                       WITH ORDINALITY AS t(job_type, payload, run_at, tenant, priority,
                                            max_attempts, ord)
            ),
            added AS (
                INSERT INTO jobrunner.jobs
                       (id, job_type, tenant, payload, priority, run_at, max_attempts,
                        created_at, updated_at)
                SELECT i.new_id, i.job_type, i.tenant, i.payload, i.priority, i.run_at,
                       i.max_attempts, at, at
                  FROM input AS i
            )
            SELECT i.new_id, true FROM input AS i ORDER BY i.ord;
        RETURN;
    END IF;

    ids := array_fill(NULL::bigint, ARRAY[n]);
    fresh := array_fill(false, ARRAY[n]);

    -- Usually one pass. A row stays unresolved only when its duplicate was committed by another
    -- transaction after this statement's snapshot was taken (ON CONFLICT sees it, a plain read
    -- does not); the next pass runs with a fresh snapshot and finds it, or inserts if the
    -- duplicate has finished in the meantime.
    LOOP
        passes := passes + 1;
        FOR r IN
            WITH input AS MATERIALIZED (
                SELECT t.ord, t.job_type, t.payload, t.run_at, t.tenant, t.priority,
                       t.max_attempts,
                       CASE WHEN t.dedupe IS NOT FALSE THEN coalesce(
                           t.unique_key, md5(t.job_type || ':' || t.payload::text)) END AS key,
                       nextval(id_seq) AS new_id
                  FROM unnest(job_types, payloads, run_ats, tenants, priorities, max_attempts,
                              unique_keys, deduplicate)
                       WITH ORDINALITY AS t(job_type, payload, run_at, tenant, priority,
                                            max_attempts, unique_key, dedupe, ord)
                 WHERE ids[t.ord] IS NULL
            ),
            added AS (
                INSERT INTO jobrunner.jobs AS j
                       (id, job_type, tenant, payload, priority, run_at, max_attempts,
                        unique_key, created_at, updated_at)
                SELECT i.new_id, i.job_type, i.tenant, i.payload, i.priority, i.run_at,
                       i.max_attempts, i.key, at, at
                  FROM input i
                 ORDER BY i.ord
                ON CONFLICT (tenant, unique_key)
                   WHERE unique_key IS NOT NULL AND state IN ('available', 'running')
                   DO NOTHING
                RETURNING j.id, j.tenant, j.unique_key
            )
            SELECT i.ord,
                   coalesce(mine.id, twin.id,
                            (SELECT pending.id FROM jobrunner.jobs AS pending
                              WHERE pending.tenant = i.tenant AND pending.unique_key = i.key
                                AND pending.unique_key IS NOT NULL
                                AND pending.state IN ('available', 'running'))) AS id,
                   mine.id IS NOT NULL AS inserted
              FROM input i
              LEFT JOIN added mine ON mine.id = i.new_id
              -- an earlier row of this same call that carried the same key
              LEFT JOIN added twin
                     ON mine.id IS NULL AND twin.tenant = i.tenant AND twin.unique_key = i.key
        LOOP
            ids[r.ord] := r.id;
            fresh[r.ord] := r.inserted;
        END LOOP;

        EXIT WHEN array_position(ids, NULL) IS NULL;
        IF passes >= 50 THEN
            RAISE EXCEPTION 'jobrunner.enqueue: could not settle unique keys after % attempts', passes
                USING ERRCODE = 'serialization_failure';
        END IF;
    END LOOP;

    RETURN QUERY SELECT u.id, u.ins FROM unnest(ids, fresh) WITH ORDINALITY AS u(id, ins, ord)
                 ORDER BY u.ord;
END;
$$;


-- Claims run every few milliseconds on a busy runner. Planning the claim's statements anew on
-- every call (custom plans) cost as much as claiming a hundred jobs; their plans do not depend
-- on the arguments (index scans in index order, see the function's settings).
-- Its disabled scan types inflate plan costs past the JIT threshold: no JIT either.
ALTER FUNCTION jobrunner.claim(timestamptz, text, timestamptz, text[], integer[], integer[],
                               integer, integer, text)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION jobrunner.claim(timestamptz, text, timestamptz, text[], integer[], integer[],
                               integer, integer, text)
    SET jit = off;

-- Every claim inserts each claimed job into every index whose predicate matches a running job.
-- Counting a tenant's running jobs (for max_running) walks the lease index instead: running
-- jobs are bounded by the runners' concurrency, and only limited tenants are counted.
DROP INDEX jobrunner.jobs_running_by_tenant;

-- The claim when no limit applies: no type has a concurrency cap (the caller knows) and no
-- tenant has max_running, a rate or a weight other than 1. The same walk through the ripe
-- tenants and the same equal shares as jobrunner.claim, as one statement: a third of the time
-- for a small claim, which is what an idle runner's start latency waits for. If the policy
-- has limits after all it claims nothing, and its status row says `limited`: the caller then
-- uses jobrunner.claim. The status row (id NULL) also carries how many ripe tenants the walk
-- saw (at most lim) and the last of them; the caller derives `more` and `next_tenant` from
-- those and the jobs, as jobrunner.claim would.
CREATE FUNCTION jobrunner.claim_unlimited(
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
AS $$
BEGIN
    -- The claim commits without waiting for its WAL to reach the disk (a third of an idle
    -- claim's time here). Safe: a claim lost in a server crash leaves the job available, as
    -- if never claimed, and the runner's outcome write, fenced on the claim, then changes
    -- nothing; the job runs again (at least once). An outcome write waits for the disk, and
    -- with it every claim before it.
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH RECURSIVE walk(t, p, r, i, k) AS (
        (SELECT j.tenant, j.priority, j.run_at, j.id, 1
           FROM jobrunner.jobs AS j
          WHERE j.state = 'available' AND j.tenant > after_tenant AND j.run_at <= at
            AND j.job_type = ANY(types)
            AND NOT EXISTS (SELECT FROM jobrunner.tenant_policies AS q
                             WHERE q.max_running IS NOT NULL OR q.rate IS NOT NULL OR q.weight <> 1)
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
        SELECT c.id
          FROM walk AS w
         CROSS JOIN seen AS s
         CROSS JOIN LATERAL (
               SELECT j.id
                 FROM jobrunner.jobs AS j
                WHERE j.state = 'available' AND j.tenant = w.t
                  AND (j.priority, j.run_at, j.id) >= (w.p, w.r, w.i)
                  AND j.run_at <= at AND j.job_type = ANY(types)
                ORDER BY j.priority, j.run_at, j.id
                -- Taking turns (more ripe tenants than lim, or the tail of a turn that
                -- started after a tenant): one job each.
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
    )
    SELECT c.*, NULL::integer, NULL::text, NULL::boolean
      FROM claimed AS c
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, s.n, s.last,
           EXISTS (SELECT FROM jobrunner.tenant_policies AS q
                    WHERE q.max_running IS NOT NULL OR q.rate IS NOT NULL OR q.weight <> 1)
      FROM seen AS s;
END;
$$;
