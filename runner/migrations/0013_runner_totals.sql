-- Each runner's outcome counts since it started, announced with its plugins, so that any
-- dashboard can chart the cluster's throughput from the runners' rows.
ALTER TABLE jobrunner.runners
    ADD COLUMN completed bigint NOT NULL DEFAULT 0,
    ADD COLUMN failed    bigint NOT NULL DEFAULT 0;
