-- Batch transactions: how a runner runs short jobs for one write each.
--
-- A runner claims a batch by locking ripe rows (jobrunner.claim_unlimited with no lease) in a
-- transaction it keeps open while those jobs run, holding an advisory lock keyed by the batch's
-- id. Before any job starts it commits, on another connection, the batch's row in
-- jobrunner.batches: its jobs, its runner. When the jobs are done, or at the latest after a
-- short bound, the batch transaction writes their outcomes (DELETE for completed, UPDATE
-- otherwise), turns the jobs still running into per-job leases, deletes its batch row and
-- commits. A no-op job thus costs one row lock and one DELETE.
--
-- Fencing by construction: the rows stay locked while the batch lives, so no one else claims
-- them; a batch whose transaction is gone (runner killed, or frozen past the session's
-- idle_in_transaction_session_timeout, or cut off) has lost its locks and, with them, every
-- write it had not committed. Its row stays, and jobrunner.rescue_batches counts the attempts it
-- started.

-- Every job as operators see it: a job inside a batch transaction is running, held by the
-- batch's runner, in the attempt it runs as (the jobs table still says available: the batch
-- has written nothing yet). `batch_id` names the batch; a leased job has none. `parent_id`: the
-- job whose attempt enqueued it; `schedule`: the schedule whose tick did.
--
-- Two views and their union: a page of jobs newest first (the dashboard's, `runner jobs list`)
-- reads each view (by state) with its own ORDER BY id DESC LIMIT, which an index scan
-- answers, where a LIMIT over the union makes the planner read every job.
CREATE OR REPLACE VIEW jobrunner.job_status_unbatched AS
SELECT j.id, j.job_type, j.tenant, j.state, j.payload, j.priority, j.run_at, j.attempt,
       j.max_attempts, j.lease_owner, j.lease_expires_at, j.unique_key, j.errors, j.result,
       j.created_at, j.updated_at, NULL::bigint AS batch_id, j.parent_id, j.schedule,
       j.cancelled_by, j.attempt_logs
  FROM jobrunner.jobs AS j
 WHERE j.state <> 'available'
    OR j.id NOT IN (SELECT unnest(b.job_ids) FROM jobrunner.batches AS b);

-- A job of a batch that died and was claimed again before the rescuer came shows once, in
-- its newest batch.
CREATE OR REPLACE VIEW jobrunner.job_status_batched AS
SELECT *
  FROM (SELECT DISTINCT ON (j.id)
               j.id, j.job_type, j.tenant, 'running'::jobrunner.job_state AS state, j.payload,
               j.priority, j.run_at, j.attempt + 1 AS attempt, j.max_attempts,
               b.owner AS lease_owner, NULL::timestamptz AS lease_expires_at, j.unique_key,
               j.errors, j.result, j.created_at, j.updated_at, b.id AS batch_id, j.parent_id,
               j.schedule, j.cancelled_by, j.attempt_logs
          FROM jobrunner.batches AS b
         CROSS JOIN LATERAL unnest(b.job_ids) AS x(id)
          JOIN jobrunner.jobs AS j ON j.id = x.id AND j.state = 'available'
         ORDER BY j.id, b.started_at DESC) AS held;

CREATE OR REPLACE VIEW jobrunner.job_status AS
SELECT * FROM jobrunner.job_status_unbatched
UNION ALL
SELECT * FROM jobrunner.job_status_batched;

-- Counts the attempts of batches whose transaction ended without committing, up to `lim`
-- jobs: each job of such a batch that is still available gets its attempt counted, with an
-- error naming the runner, and fails if that was its last. Counted whatever its attempt
-- number: another runner may have run it meanwhile and failed, which counted that attempt
-- too. Claims skip the jobs named here, but one claimed again before the row was written
-- (its runner died between the two) may be locked by a live batch or running under a lease:
-- it is counted once that claim has ended, and its batch row keeps it until then. A job that
-- completed meanwhile needs nothing. Max attempts as in jobrunner.claim: the job's, else its type's in
-- `types`/`type_attempts`, else `default_attempts`.
CREATE OR REPLACE FUNCTION jobrunner.rescue_batches(
    at               timestamptz,
    types            text[],
    type_attempts    integer[],
    default_attempts integer,
    lim              integer
) RETURNS TABLE (
    id       bigint,
    job_type text,
    tenant   text,
    attempt  integer,
    owner    text,
    state    text,
    priority integer,
    run_at   timestamptz
)
LANGUAGE plpgsql
AS $$
DECLARE
    b       record;
    free    bigint[];
    pending bigint[];
    counted integer := 0;
BEGIN
    FOR b IN SELECT * FROM jobrunner.batches AS x ORDER BY x.started_at FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN counted >= lim;
        -- A live batch transaction holds this lock from before its row was written.
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(b.id);
        SELECT coalesce(array_agg(s.id), '{}') INTO free
          FROM (SELECT k.id FROM jobrunner.jobs AS k
                 WHERE k.id = ANY(b.job_ids) AND k.state = 'available'
                   FOR UPDATE SKIP LOCKED) AS s;
        RETURN QUERY
        UPDATE jobrunner.jobs AS j
           SET attempt = j.attempt + 1,
               state = (CASE WHEN j.attempt + 1 >= coalesce(
                                  j.max_attempts,
                                  (SELECT u.m FROM unnest(types, type_attempts) AS u(t, m)
                                    WHERE u.t = j.job_type),
                                  default_attempts)
                             THEN 'failed' ELSE 'available' END)::jobrunner.job_state,
               errors = j.errors || jsonb_build_array(jsonb_build_object(
                   'attempt', j.attempt + 1, 'at', at,
                   'error', format('runner %s died while running the job: its batch '
                                   'transaction ended without committing', b.owner))),
               updated_at = at
         WHERE j.id = ANY(free)
     RETURNING j.id, j.job_type, j.tenant, j.attempt, b.owner, j.state::text, j.priority,
               j.run_at;
        counted := counted + cardinality(free);
        SELECT coalesce(array_agg(k.id), '{}') INTO pending
          FROM jobrunner.jobs AS k
         WHERE k.id = ANY(b.job_ids) AND NOT k.id = ANY(free)
           AND k.state IN ('available', 'running');
        IF cardinality(pending) = 0 THEN
            DELETE FROM jobrunner.batches AS x WHERE x.id = b.id;
        ELSE
            UPDATE jobrunner.batches AS x SET job_ids = pending WHERE x.id = b.id;
        END IF;
    END LOOP;
END;
$$;

-- Writes a batch's row: called by the runner on a connection of its own (not the batch
-- transaction's), once the batch transaction holds its jobs and its advisory lock, and before
-- any of its jobs starts. Committed without waiting for the disk, like a leasing claim: a row
-- lost in a server crash leaves its attempts uncounted, and the jobs run again.
CREATE OR REPLACE FUNCTION jobrunner.open_batch(
    batch   bigint,
    claimer text,
    jobs    bigint[],
    at      timestamptz
) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO jobrunner.batches (id, owner, job_ids, started_at)
    VALUES (batch, claimer, jobs, at);
END;
$$;
