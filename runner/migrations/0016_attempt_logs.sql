-- What the last attempts of a job logged and requested (jobrunner_client::AttemptLog), kept
-- with the job so that it outlives the runner that ran them.
ALTER TABLE jobrunner.jobs ADD COLUMN attempt_logs jsonb NOT NULL DEFAULT '[]';
