"""Config, secrets and follow-up jobs for plugins built with componentize-py: the little a job
needs on top of the world's `wasi:config/store` and `jobs` imports.

    import jobrunner

    token = jobrunner.require("github_token")      # a [config] value or a granted secret
    jobrunner.enqueue("slack-notify", {"user": "ada", "pull_requests": []},
                      unique_key="review-reminder:ada:2026-12-07")
    jobrunner.retry_after(30)                      # if this attempt raises JobError_Retry

A follow-up is enqueued only if the attempt completes; the manifest lists the job types a
plugin may enqueue (`enqueue = [...]`) and the secrets it may read (`secrets = [...]`).
"""

import json

from componentize_py_types import Err
from wit_world.imports import jobs, store
from wit_world.imports.jobrunner_plugin_types import JobError_Fail


def get(key: str) -> str | None:
    """The value of `key`, or None if the plugin is not granted one."""
    try:
        return store.get(key)
    except Err:
        return None


def require(key: str) -> str:
    """The value of `key`, or a permanent failure naming it (a retry cannot mend it)."""
    value = get(key)
    if value is None:
        raise Err(JobError_Fail(
            f"config key {key!r} has no value: the plugin's manifest must list it under "
            "[config] or `secrets`, and the runner must have the secret for this tenant"))
    return value


class Refused(Exception):
    """The runner refused a follow-up (not allowed, invalid, or over the limit)."""


def enqueue(job_type: str, payload, *, delay_seconds: float | None = None,
            priority: int | None = None, unique_key: str | None = None,
            max_attempts: int | None = None) -> None:
    """Keeps a follow-up job of `job_type` with `payload` (serialized to JSON), enqueued in
    this job's tenant when the attempt completes. Raises Refused with the runner's reason."""
    options = jobs.EnqueueOptions(
        run_at=None,
        delay_ms=None if delay_seconds is None else int(delay_seconds * 1000),
        priority=priority, unique_key=unique_key, max_attempts=max_attempts)
    try:
        jobs.enqueue(job_type, json.dumps(payload, ensure_ascii=False), options)
    except Err as error:
        kind = type(error.value).__name__.removeprefix("EnqueueError_")
        raise Refused(f"{kind}: {error.value.value}") from None


def retry_after(seconds: float) -> None:
    """If this attempt raises JobError_Retry, the next one waits `seconds` instead of the
    backoff (up to its cap): an HTTP Retry-After, say."""
    jobs.set_retry_delay(int(seconds * 1000))
