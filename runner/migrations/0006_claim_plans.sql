-- The fast claims' plans are generic (planned once per session, see 0004), so they must not
-- depend on statistics. Their UPDATE joins the picked ids to the jobs table. Seen once on an
-- analyzed table of 200,000 jobs: the generic estimate of the picked rows was 90,000, the
-- planner chose a hash join fed by a scan of the whole primary key, and a claim of 500 jobs
-- took 104 ms instead of 9. Every join in these claims is a lookup by key: nested loops only.
-- (jobrunner.claim updates `WHERE id = ANY(picked)`, an index scan whatever the estimates.)
ALTER FUNCTION jobrunner.claim_unlimited(timestamptz, text, timestamptz, text[], integer[],
                                         integer, integer, text)
    SET enable_hashjoin = off;
ALTER FUNCTION jobrunner.claim_unlimited(timestamptz, text, timestamptz, text[], integer[],
                                         integer, integer, text)
    SET enable_mergejoin = off;
ALTER FUNCTION jobrunner.claim_unlimited(timestamptz, text, timestamptz, text[], integer[],
                                         integer, integer, text, text[], integer[],
                                         timestamptz[], bigint[])
    SET enable_hashjoin = off;
ALTER FUNCTION jobrunner.claim_unlimited(timestamptz, text, timestamptz, text[], integer[],
                                         integer, integer, text, text[], integer[],
                                         timestamptz[], bigint[])
    SET enable_mergejoin = off;
