-- Enqueue: the functions every client calls, and the announcements that wake idle runners.
--
-- jobrunner.enqueue_many checks the tenant policy's job types, marks the transaction as
-- enqueuing (so the INSERT trigger keeps quiet), calls enqueue_many_unchecked (the inputs, the
-- unique keys and the INSERT), then announces the new jobs with one notification for the whole
-- call.

-- Checks the inputs and inserts the jobs. Arrays are parallel, one element per job. A job whose
-- (tenant, unique key) matches a pending job is not inserted: its row reports the pending job's
-- id with inserted = false. With deduplicate and no explicit key, the key is the MD5 of the job
-- type and the canonical (jsonb) text of the payload. `at` is the caller's clock. `parent_ids`
-- (NULL, or NULL elements) records the job whose attempt enqueued each one, `schedules` the
-- schedule whose tick did.
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
    parent_ids    bigint[] DEFAULT NULL,
    schedules     text[] DEFAULT NULL,
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
                WHERE c.len IS DISTINCT FROM n)
       OR (parent_ids IS NOT NULL AND cardinality(parent_ids) IS DISTINCT FROM n)
       OR (schedules IS NOT NULL AND cardinality(schedules) IS DISTINCT FROM n) THEN
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
                SELECT nextval(id_seq) AS new_id, t.*, parent_ids[t.ord] AS parent_id,
                       schedules[t.ord] AS schedule
                  FROM unnest(job_types, payloads, run_ats, tenants, priorities, max_attempts)
                       WITH ORDINALITY AS t(job_type, payload, run_at, tenant, priority,
                                            max_attempts, ord)
            ),
            added AS (
                INSERT INTO jobrunner.jobs
                       (id, job_type, tenant, payload, priority, run_at, max_attempts,
                        parent_id, schedule, created_at, updated_at)
                SELECT i.new_id, i.job_type, i.tenant, i.payload, i.priority, i.run_at,
                       i.max_attempts, i.parent_id, i.schedule, at, at
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
                       parent_ids[t.ord] AS parent_id, schedules[t.ord] AS schedule,
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
                        unique_key, parent_id, schedule, created_at, updated_at)
                SELECT i.new_id, i.job_type, i.tenant, i.payload, i.priority, i.run_at,
                       i.max_attempts, i.key, i.parent_id, i.schedule, at, at
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

-- Enqueues many jobs in one statement (see enqueue_many_unchecked for the arguments and the
-- unique keys) and announces them, after commit, on the wake-up channel. Refuses the whole
-- call if a job's type is not allowed by its tenant's policy, naming the first such job.
CREATE OR REPLACE FUNCTION jobrunner.enqueue_many(
    job_types     text[],
    payloads      jsonb[],
    run_ats       timestamptz[],
    tenants       text[],
    priorities    integer[],
    max_attempts  integer[],
    unique_keys   text[],
    deduplicate   boolean[],
    at            timestamptz DEFAULT now(),
    parent_ids    bigint[] DEFAULT NULL,
    schedules     text[] DEFAULT NULL,
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
    PERFORM set_config('jobrunner.enqueuing', 'on', true);
    RETURN QUERY SELECT e.job_id, e.inserted
                   FROM jobrunner.enqueue_many_unchecked(job_types, payloads, run_ats, tenants,
                                                         priorities, max_attempts, unique_keys,
                                                         deduplicate, at, parent_ids,
                                                         schedules) AS e;
    PERFORM set_config('jobrunner.enqueuing', 'off', true);
    PERFORM jobrunner.announce_jobs((SELECT min(p) FROM unnest(priorities) AS p),
                                    (SELECT min(r) FROM unnest(run_ats) AS r),
                                    0);
END;
$$;

-- Enqueues one job and returns its id (the pending duplicate's id when the unique key matches).
-- Callable from any language, inside the caller's transaction:
--   SELECT jobrunner.enqueue('send-email', '{"to": "a@example.com"}', tenant => 'acme');
-- max_attempts NULL means the runner's default. deduplicate => false opts out of unique keys.
CREATE OR REPLACE FUNCTION jobrunner.enqueue(
    job_type     text,
    payload      jsonb,
    run_at       timestamptz DEFAULT now(),
    tenant       text DEFAULT 'default',
    priority     integer DEFAULT 0,
    max_attempts integer DEFAULT NULL,
    unique_key   text DEFAULT NULL,
    deduplicate  boolean DEFAULT true
) RETURNS bigint
LANGUAGE sql
AS $$
    SELECT e.job_id
      FROM jobrunner.enqueue_many(ARRAY[job_type], ARRAY[payload], ARRAY[run_at], ARRAY[tenant],
                                  ARRAY[priority], ARRAY[max_attempts], ARRAY[unique_key],
                                  ARRAY[deduplicate]) AS e
$$;

-- Announces jobs that became available: one notification carrying a key no greater than any
-- of theirs, in any tenant (the minimum of each column: cheap to compute, and below every
-- floor that any of them is below). Nothing for no jobs.
CREATE OR REPLACE FUNCTION jobrunner.announce_jobs(priority integer, run_at timestamptz, id bigint)
RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_notify('jobrunner_jobs', json_build_array(priority, run_at, id)::text)
     WHERE id IS NOT NULL
$$;

-- Wakes idle runners when rows are inserted any other way than through enqueue_many (by hand):
-- one NOTIFY per statement, whatever the number of rows, with an empty payload ("anything may
-- have changed"). Postgres folds identical notifications of one transaction into one.
CREATE OR REPLACE FUNCTION jobrunner.notify_jobs_added() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('jobrunner_jobs', '');
    RETURN NULL;
END;
$$;

-- (The enqueue functions announce their jobs themselves, from the arrays they came in: cheaper
-- than collecting the inserted rows, a trigger's transition table made bulk enqueues 7% slower.)
CREATE OR REPLACE TRIGGER jobs_added AFTER INSERT ON jobrunner.jobs
    FOR EACH STATEMENT
    WHEN (current_setting('jobrunner.enqueuing', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION jobrunner.notify_jobs_added();
