-- Payload limits that hold at every door, the SQL functions and hand-written INSERTs included.
-- NOT VALID: existing rows are not rescanned.
--
-- At most 16 MiB (job::MAX_PAYLOAD_BYTES): runners load claimed payloads in batches, so one
-- huge payload could exhaust a runner's memory. The binary size costs nothing to read; only a
-- payload that is large in binary form pays for measuring its text.
ALTER TABLE jobrunner.jobs
    ADD CONSTRAINT payload_at_most_16_mib
    CHECK (pg_column_size(payload) <= 16777216 OR octet_length(payload::text) <= 16777216)
    NOT VALID;

-- Nested at most 127 deep, as serde_json parses by default: deeper payloads
-- cannot be read back by the runner's admin commands nor by most guests. Nesting that deep
-- takes at least 8 bytes a level, so small payloads skip the walk.
ALTER TABLE jobrunner.jobs
    ADD CONSTRAINT payload_nested_at_most_127_deep
    CHECK (pg_column_size(payload) < 1000
           OR NOT jsonb_path_exists(payload, 'strict $.**{127 to last}'))
    NOT VALID;
