-- The functions, views and triggers in runner/sql/ are applied after the numbered migrations
-- whenever their text changes, all of them in one transaction. This table holds the text that
-- was applied last, one row per file, so that an unchanged set is not applied again: replacing
-- the trigger locks the jobs table, which every runner start would otherwise do.
CREATE TABLE jobrunner.definitions (
    file       text        PRIMARY KEY,
    sha256     text        NOT NULL,
    applied_at timestamptz NOT NULL
);
