-- What operators do to the queue from the CLI or the dashboard.

-- Job types an operator paused: no runner claims their jobs until they are resumed.
CREATE TABLE jobrunner.paused_job_types (
    job_type  text        PRIMARY KEY,
    paused_at timestamptz NOT NULL,
    paused_by text        NOT NULL,

    CONSTRAINT paused_job_type_not_empty CHECK (job_type <> '' AND length(job_type) <= 200)
);

-- Who cancelled a job, or asked the runner running it to stop it.
ALTER TABLE jobrunner.jobs ADD COLUMN cancelled_by text;
