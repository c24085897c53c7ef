-- Schedules: cron expressions that enqueue a job per tick, managed from SQL, the Rust client
-- and the CLI, or declared in a plugin manifest.
--
-- Runners compute the ticks (cron in a time zone is Rust's job, with croner and chrono-tz) and
-- fire them with jobrunner.fire_schedule, which enqueues each tick's job in the same statement
-- that advances the schedule's last_tick, and only if last_tick is still what the runner read:
-- of any number of runners firing the same tick, exactly one enqueues it, with no leader.
-- Every change notifies channel jobrunner_schedules, which wakes the runners' schedulers.

-- What is wrong with a cron expression's comma-separated item of field `field` (1 second,
-- 2 minute, 3 hour, 4 day of month, 5 month, 6 day of week), or NULL. The grammar and the
-- messages are those of the Rust client (runner/client/src/cron.rs).
CREATE OR REPLACE FUNCTION jobrunner.cron_item_problem(item text, field integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    top      integer := (ARRAY[59, 59, 23, 31, 12, 7])[field];
    slash    integer := strpos(item, '/');
    base     text := CASE WHEN slash > 0 THEN left(item, slash - 1) ELSE item END;
    step     text := CASE WHEN slash > 0 THEN substr(item, slash + 1) END;
    dash     integer := strpos(base, '-');
    low      record;
    high     record;
BEGIN
    IF step IS NOT NULL THEN
        IF step !~ '^[0-9]{1,4}$' THEN
            RETURN format('step %s is not a number', to_json(step));
        END IF;
        IF step::integer = 0 OR step::integer > greatest(top, 1) THEN
            RETURN format('step %s is out of range 1-%s', step::integer, greatest(top, 1));
        END IF;
    END IF;
    IF base = '*' THEN
        RETURN NULL;
    END IF;
    IF dash = 0 THEN
        IF step IS NOT NULL THEN
            RETURN format('a step needs * or a range before it, not %s', to_json(base));
        END IF;
        RETURN (jobrunner.cron_value(base, field)).problem;
    END IF;
    low := jobrunner.cron_value(left(base, dash - 1), field);
    IF low.problem IS NOT NULL THEN
        RETURN low.problem;
    END IF;
    high := jobrunner.cron_value(substr(base, dash + 1), field);
    IF high.problem IS NOT NULL THEN
        RETURN high.problem;
    END IF;
    IF low.value > high.value THEN
        RETURN format('range %s runs backwards', base);
    END IF;
    RETURN NULL;
END;
$$;

-- One value of field `field` (see cron_item_problem): a number in range, or a month or
-- weekday name.
CREATE OR REPLACE FUNCTION jobrunner.cron_value(text_value text, field integer,
                                                OUT value integer, OUT problem text)
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    bottom integer := (ARRAY[0, 0, 0, 1, 1, 0])[field];
    top    integer := (ARRAY[59, 59, 23, 31, 12, 7])[field];
    names  text[] := CASE field
                         WHEN 5 THEN ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL',
                                           'AUG', 'SEP', 'OCT', 'NOV', 'DEC']
                         WHEN 6 THEN ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT']
                     END;
    named  integer := array_position(names, upper(text_value));
BEGIN
    IF named IS NOT NULL THEN
        value := named - 1 + CASE field WHEN 5 THEN 1 ELSE 0 END;
    ELSIF text_value = '' THEN
        problem := 'empty value';
    ELSIF text_value !~ '^[0-9]{1,4}$' THEN
        problem := format('%s is not a number%s', to_json(text_value),
                          CASE WHEN names IS NOT NULL
                               THEN format(' or a name (%s-%s)', names[1],
                                           names[cardinality(names)])
                               ELSE '' END);
    ELSIF text_value::integer NOT BETWEEN bottom AND top THEN
        problem := format('%s is out of range %s-%s', text_value::integer, bottom, top);
    ELSE
        value := text_value::integer;
    END IF;
END;
$$;

-- What is wrong with a cron expression, or NULL: 5 fields, 6 with seconds first, or a
-- shorthand (@hourly, @daily, @weekly, @monthly, @yearly, @annually).
CREATE OR REPLACE FUNCTION jobrunner.cron_problem(expression text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    trimmed text := btrim(expression, E' \t\n\r');
    names   text[] := ARRAY['second', 'minute', 'hour', 'day of month', 'month', 'day of week'];
    parts   text[];
    first   integer;
    item    text;
    problem text;
BEGIN
    IF expression IS NULL THEN
        RETURN 'must not be NULL';
    ELSIF length(trimmed) > 200 THEN
        RETURN 'longer than 200 characters';
    ELSIF left(trimmed, 1) = '@' THEN
        IF lower(trimmed) IN ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@hourly')
        THEN
            RETURN NULL;
        END IF;
        RETURN 'unknown shorthand; expected one of @yearly, @annually, @monthly, @weekly, '
               '@daily, @hourly';
    END IF;
    parts := CASE WHEN trimmed = '' THEN '{}'::text[]
                  ELSE regexp_split_to_array(trimmed, '\s+') END;
    IF cardinality(parts) NOT IN (5, 6) THEN
        RETURN format('expected 5 fields (minute hour day-of-month month day-of-week), or 6 '
                      'with seconds first; found %s', cardinality(parts));
    END IF;
    first := 7 - cardinality(parts);
    FOR i IN 1 .. cardinality(parts) LOOP
        FOREACH item IN ARRAY string_to_array(parts[i], ',') LOOP
            problem := jobrunner.cron_item_problem(item, first + i - 1);
            IF problem IS NOT NULL THEN
                RETURN format('%s field %s: %s', names[first + i - 1], to_json(parts[i]), problem);
            END IF;
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;

-- Checks a schedule's fields and its tenant's policy; raises invalid_parameter_value naming
-- the problem, prefixed by `door`.
CREATE OR REPLACE FUNCTION jobrunner.check_schedule(door text, s jobrunner.schedules)
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    problem text;
    allowed text[];
BEGIN
    problem := CASE
        WHEN s.name IS NULL OR s.name = '' THEN 'name must not be empty'
        WHEN length(s.name) > 200 THEN 'name is longer than 200 characters'
        WHEN s.tenant IS NULL OR s.tenant = '' THEN 'tenant must not be empty'
        WHEN length(s.tenant) > 200 THEN 'tenant is longer than 200 characters'
        WHEN s.job_type IS NULL OR s.job_type = '' THEN 'job_type must not be empty'
        WHEN length(s.job_type) > 200 THEN 'job_type is longer than 200 characters'
        WHEN jobrunner.cron_problem(s.cron) IS NOT NULL
            THEN format('invalid cron expression %s: %s', to_json(s.cron),
                        jobrunner.cron_problem(s.cron))
        WHEN s.time_zone IS NULL
          OR NOT EXISTS (SELECT FROM pg_timezone_names AS z WHERE z.name = s.time_zone)
            THEN format('unknown time zone %s: expected an IANA name such as Europe/Berlin or UTC',
                        coalesce(to_json(s.time_zone)::text, 'NULL'))
        WHEN s.payload IS NULL THEN 'payload must be JSON, not NULL'
        WHEN s.priority IS NULL THEN 'priority must not be NULL'
        WHEN s.max_attempts < 1 THEN 'max_attempts must be at least 1'
        WHEN s.unique_key = '' THEN 'unique_key must not be empty'
        WHEN s.overlap IS NULL OR s.overlap NOT IN ('allow', 'skip')
            THEN format('overlap must be allow or skip, not %s', coalesce(s.overlap, 'NULL'))
        WHEN s.catch_up IS NULL OR s.catch_up NOT IN ('none', 'latest', 'all')
            THEN format('catch_up must be none, latest or all, not %s', coalesce(s.catch_up, 'NULL'))
        WHEN s.catch_up_within IS NULL OR s.catch_up_within <= '0'
            THEN 'catch_up_within must be positive'
    END;
    IF problem IS NULL THEN
        allowed := (jobrunner.tenant_policy(s.tenant)).job_types;
        IF allowed IS NOT NULL AND NOT s.job_type = ANY (allowed) THEN
            problem := format('tenant %s may not enqueue job type %s (its policy allows %s)',
                              to_json(s.tenant), to_json(s.job_type), to_json(allowed));
        END IF;
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%: %', door, problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- Adds a schedule; refuses (invalid_parameter_value) a bad field, a job type the tenant's
-- policy forbids, or a name the tenant already uses:
--   SELECT jobrunner.add_schedule('weekday-reminders', '0 9 * * 1-5', 'pr-reminders',
--                                 time_zone => 'Europe/Berlin', tenant => 'acme');
-- unique_key is a template ({tick}: the tick as RFC 3339 UTC, {schedule}: the name); without
-- one, every tick enqueues a job of its own. Ticks after `at` are due.
CREATE OR REPLACE FUNCTION jobrunner.add_schedule(
    name            text,
    cron            text,
    job_type        text,
    payload         jsonb DEFAULT '{}',
    time_zone       text DEFAULT 'UTC',
    tenant          text DEFAULT 'default',
    priority        integer DEFAULT 0,
    max_attempts    integer DEFAULT NULL,
    unique_key      text DEFAULT NULL,
    overlap         text DEFAULT 'allow',
    catch_up        text DEFAULT 'none',
    catch_up_within interval DEFAULT '1 day',
    at              timestamptz DEFAULT now()
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    s jobrunner.schedules;
BEGIN
    s := ROW(tenant, name, btrim(cron, E' \t\n\r'), time_zone, job_type, payload, priority,
             max_attempts, unique_key, overlap, catch_up, catch_up_within, false, 'api', 1, at,
             NULL, NULL, NULL, at, at);
    PERFORM jobrunner.check_schedule('jobrunner.add_schedule', s);
    INSERT INTO jobrunner.schedules SELECT s.*;
    PERFORM pg_notify('jobrunner_schedules', '');
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'jobrunner.add_schedule: tenant % has a schedule named % already',
                    to_json(s.tenant), to_json(s.name)
        USING ERRCODE = 'invalid_parameter_value';
END;
$$;

-- The schedule, locked; raises no_data_found naming it if there is none.
CREATE OR REPLACE FUNCTION jobrunner.schedule_for_update(schedule_name text, schedule_tenant text)
RETURNS jobrunner.schedules
LANGUAGE plpgsql
AS $$
DECLARE
    s jobrunner.schedules;
BEGIN
    SELECT * INTO s FROM jobrunner.schedules AS x
     WHERE x.tenant = schedule_tenant AND x.name = schedule_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % has no schedule named %', to_json(schedule_tenant),
                        to_json(schedule_name)
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN s;
END;
$$;

-- Pauses (true) or resumes (false) a schedule. A resumed schedule's ticks are due from `at`:
-- those that passed while it was paused are not missed ticks, they never fire.
CREATE OR REPLACE FUNCTION jobrunner.pause_schedule(
    name    text,
    tenant  text DEFAULT 'default',
    paused  boolean DEFAULT true,
    at      timestamptz DEFAULT now()
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    s jobrunner.schedules := jobrunner.schedule_for_update(name, tenant);
BEGIN
    IF s.paused = pause_schedule.paused THEN
        RETURN;
    END IF;
    UPDATE jobrunner.schedules AS x
       SET paused = pause_schedule.paused, version = x.version + 1, updated_at = at,
           since = CASE WHEN pause_schedule.paused THEN x.since ELSE at END
     WHERE x.tenant = s.tenant AND x.name = s.name;
    PERFORM pg_notify('jobrunner_schedules', '');
END;
$$;

-- Resumes a paused schedule: jobrunner.pause_schedule(name, tenant, false).
CREATE OR REPLACE FUNCTION jobrunner.resume_schedule(
    name    text,
    tenant  text DEFAULT 'default',
    at      timestamptz DEFAULT now()
) RETURNS void
LANGUAGE sql
AS $$
    SELECT jobrunner.pause_schedule(name, tenant, false, at)
$$;

-- Removes a schedule; its jobs stay, and still name it.
CREATE OR REPLACE FUNCTION jobrunner.remove_schedule(name text, tenant text DEFAULT 'default')
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    s jobrunner.schedules := jobrunner.schedule_for_update(name, tenant);
BEGIN
    DELETE FROM jobrunner.schedules AS x WHERE x.tenant = s.tenant AND x.name = s.name;
    PERFORM pg_notify('jobrunner_schedules', '');
END;
$$;

-- Enqueues the jobs of a schedule's ticks (due at each tick; the tick's time goes into the
-- unique-key template), recording the schedule; returns their ids, in order.
CREATE OR REPLACE FUNCTION jobrunner.enqueue_ticks(s jobrunner.schedules, ticks timestamptz[],
                                                   at timestamptz)
RETURNS bigint[]
LANGUAGE sql
AS $$
    SELECT array_agg(e.job_id ORDER BY e.ord)
      FROM jobrunner.enqueue_many(
               array_fill(s.job_type, ARRAY[cardinality(ticks)]),
               array_fill(s.payload, ARRAY[cardinality(ticks)]),
               ticks,
               array_fill(s.tenant, ARRAY[cardinality(ticks)]),
               array_fill(s.priority, ARRAY[cardinality(ticks)]),
               array_fill(s.max_attempts, ARRAY[cardinality(ticks)]),
               ARRAY(SELECT replace(replace(s.unique_key, '{tick}',
                                            to_char(t.tick AT TIME ZONE 'UTC',
                                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
                                    '{schedule}', s.name)
                       FROM unnest(ticks) WITH ORDINALITY AS t(tick, ord) ORDER BY t.ord),
               array_fill(s.unique_key IS NOT NULL, ARRAY[cardinality(ticks)]),
               at,
               NULL,
               array_fill(s.name, ARRAY[cardinality(ticks)])
           ) WITH ORDINALITY AS e(job_id, inserted, ord)
$$;

-- Fires a schedule: advances last_tick from `seen_last_tick` to `new_last_tick` and enqueues
-- the jobs of `ticks` (those of the ticks up to new_last_tick that the catch-up policy keeps),
-- all or nothing, and only if the schedule is still the version the caller read and its
-- last_tick what it saw. `fired` is false when another runner got there first (or the schedule
-- changed): the caller reads it again. With overlap = skip, ticks are skipped while the last
-- job is pending or running, and at most one is enqueued. A job the tenant's policy or the
-- payload limits refuse is not enqueued; its tick still counts, and `error` says why (also
-- kept in last_error).
CREATE OR REPLACE FUNCTION jobrunner.fire_schedule(
    schedule_tenant text,
    schedule_name   text,
    seen_version    bigint,
    seen_last_tick  timestamptz,
    new_last_tick   timestamptz,
    ticks           timestamptz[],
    at              timestamptz,
    OUT fired       boolean,
    OUT job_ids     bigint[],
    OUT skipped     integer,
    OUT error       text
)
LANGUAGE plpgsql
AS $$
DECLARE
    s jobrunner.schedules;
    n integer := coalesce(cardinality(ticks), 0);
BEGIN
    fired := false;
    job_ids := '{}';
    skipped := 0;
    UPDATE jobrunner.schedules AS x
       SET last_tick = new_last_tick, updated_at = at
     WHERE x.tenant = schedule_tenant AND x.name = schedule_name AND x.version = seen_version
       AND NOT x.paused AND x.last_tick IS NOT DISTINCT FROM seen_last_tick
    RETURNING x.* INTO s;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    fired := true;
    IF n > 0 AND s.overlap = 'skip' THEN
        IF EXISTS (SELECT FROM jobrunner.jobs AS j
                    WHERE j.id = s.last_job_id AND j.state IN ('available', 'running')) THEN
            skipped := n;
            RETURN;
        END IF;
        skipped := n - 1;
        ticks := ticks[n:n];
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    BEGIN
        job_ids := jobrunner.enqueue_ticks(s, ticks, at);
        UPDATE jobrunner.schedules AS x
           SET last_job_id = job_ids[cardinality(job_ids)], last_error = NULL
         WHERE x.tenant = s.tenant AND x.name = s.name;
    EXCEPTION WHEN invalid_parameter_value OR check_violation THEN
        error := SQLERRM;
        job_ids := '{}';
        UPDATE jobrunner.schedules AS x
           SET last_error = fire_schedule.error
         WHERE x.tenant = s.tenant AND x.name = s.name;
    END;
END;
$$;

-- Enqueues a schedule's job now, outside its cadence (the operator's "run now"): due at `at`,
-- recorded as the schedule's last job, last_tick unchanged. Returns the job's id (a pending
-- duplicate's, when the unique-key template matches one).
CREATE OR REPLACE FUNCTION jobrunner.run_schedule_now(
    name   text,
    tenant text DEFAULT 'default',
    at     timestamptz DEFAULT now()
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    s  jobrunner.schedules := jobrunner.schedule_for_update(name, tenant);
    id bigint;
BEGIN
    id := (jobrunner.enqueue_ticks(s, ARRAY[at], at))[1];
    UPDATE jobrunner.schedules AS x
       SET last_job_id = id, last_error = NULL, updated_at = at
     WHERE x.tenant = s.tenant AND x.name = s.name;
    RETURN id;
END;
$$;

-- Makes job type `job_type`'s manifest schedules those of `declared` (a JSON array of objects
-- with the columns of jobrunner.schedules; absent keys take the column defaults): adds the new
-- ones, updates the changed ones (a new cron or time zone is due from `at`), removes the ones
-- no longer declared. A schedule of the same name made by the CLI, SQL or the client, or
-- declared by another job type's manifest, is never touched: it is reported as 'conflict'.
-- Returns one row per schedule added, changed, removed or in conflict.
CREATE OR REPLACE FUNCTION jobrunner.sync_manifest_schedules(
    manifest_job_type text,
    declared          jsonb,
    at                timestamptz DEFAULT now()
) RETURNS TABLE (tenant text, name text, action text)
LANGUAGE plpgsql
AS $$
DECLARE
    d       jobrunner.schedules;
    x       jobrunner.schedules;
    changed boolean := false;
    removed bigint;
BEGIN
    FOR d IN
        SELECT (jsonb_populate_record(
                    ROW(NULL, NULL, NULL, 'UTC', NULL, '{}', 0, NULL, NULL, 'allow', 'none',
                        '1 day', false, 'manifest', 1, at, NULL, NULL, NULL, at,
                        at)::jobrunner.schedules,
                    item || jsonb_build_object('job_type', manifest_job_type, 'origin',
                                               'manifest'))).*
          FROM jsonb_array_elements(declared) AS item
    LOOP
        d.tenant := coalesce(d.tenant, 'default');
        PERFORM jobrunner.check_schedule(
            format('schedule %s of the %s manifest', to_json(d.name), manifest_job_type), d);
        SELECT * INTO x FROM jobrunner.schedules AS s
         WHERE s.tenant = d.tenant AND s.name = d.name
           FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO jobrunner.schedules SELECT d.*;
            tenant := d.tenant; name := d.name; action := 'added'; changed := true;
            RETURN NEXT;
        ELSIF x.origin <> 'manifest' OR x.job_type <> manifest_job_type THEN
            tenant := d.tenant; name := d.name; action := 'conflict';
            RETURN NEXT;
        ELSIF (x.cron, x.time_zone, x.payload, x.priority, x.max_attempts, x.unique_key,
               x.overlap, x.catch_up, x.catch_up_within)
              IS DISTINCT FROM
              (d.cron, d.time_zone, d.payload, d.priority, d.max_attempts, d.unique_key,
               d.overlap, d.catch_up, d.catch_up_within) THEN
            UPDATE jobrunner.schedules AS s
               SET cron = d.cron, time_zone = d.time_zone, payload = d.payload,
                   priority = d.priority, max_attempts = d.max_attempts,
                   unique_key = d.unique_key, overlap = d.overlap, catch_up = d.catch_up,
                   catch_up_within = d.catch_up_within, version = s.version + 1,
                   updated_at = at,
                   since = CASE WHEN (s.cron, s.time_zone) = (d.cron, d.time_zone) THEN s.since
                                ELSE greatest(s.since, at) END
             WHERE s.tenant = d.tenant AND s.name = d.name;
            tenant := d.tenant; name := d.name; action := 'changed'; changed := true;
            RETURN NEXT;
        END IF;
    END LOOP;
    RETURN QUERY
        DELETE FROM jobrunner.schedules AS s
         WHERE s.origin = 'manifest' AND s.job_type = manifest_job_type
           AND (s.tenant, s.name) NOT IN
               (SELECT coalesce(item ->> 'tenant', 'default'), item ->> 'name'
                  FROM jsonb_array_elements(declared) AS item)
        RETURNING s.tenant, s.name, 'removed'::text;
    GET DIAGNOSTICS removed = ROW_COUNT;
    IF changed OR removed > 0 THEN
        PERFORM pg_notify('jobrunner_schedules', '');
    END IF;
END;
$$;
