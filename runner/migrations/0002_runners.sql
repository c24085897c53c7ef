-- Runners announce themselves: the plugin directory each one watches and, per job type, the
-- version it serves and how its last load went (what `runner plugins` shows). A runner
-- refreshes its row every few seconds and deletes it when it stops cleanly; rows left by
-- runners that died are deleted by the others after an hour.
--
-- From this version on, each entry of jobs.errors also names the plugin version that ran
-- the attempt: {"attempt": n, "at": timestamp, "error": text, "plugin_sha256": hex}.

CREATE TABLE jobrunner.runners (
    owner      text        PRIMARY KEY,
    plugin_dir text        NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL,
    plugins    jsonb       NOT NULL DEFAULT '[]'
);
