"""review-reminder in Python: the reference job (see ../../review-reminder.md).

componentize-py calls `WitWorld.run` for each job. Returning a string completes the job with
that JSON result (None: no result). Raising `Err(JobError_Retry(...))` or `Err(JobError_Fail(...))`
is the job's error; any other exception traps the instance, which the runner retries like a
crash, keeping the traceback the guest printed.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.jobrunner_plugin_types import Job, JobError_Fail, JobError_Retry


class InvalidPayload(Exception):
    """The payload does not have the reference job's shape."""


class WitWorld(wit_world.WitWorld):
    def run(self, job: Job) -> str | None:
        try:
            user, pull_requests, simulate = parse(json.loads(job.payload))
        except (InvalidPayload, json.JSONDecodeError) as error:
            raise Err(JobError_Fail(f"invalid payload: {error}"))
        if not user.strip():
            raise Err(JobError_Fail("user is empty"))
        if simulate == "outage":
            raise Err(JobError_Retry("reminder service unavailable (simulated outage)"))
        if simulate == "crash":
            raise RuntimeError("simulated crash")
        if simulate is not None:
            raise Err(JobError_Fail(f"invalid payload: simulate: unknown value {simulate!r}"))

        # Oldest first; equal ages keep the order they came in (sorted is stable).
        pull_requests = sorted(pull_requests, key=lambda pr: -pr["age_days"])
        text = message(user, pull_requests)
        host.log(host.Level.INFO, text)
        return json.dumps({"user": user, "count": len(pull_requests), "message": text})


def parse(payload):
    if not isinstance(payload, dict):
        raise InvalidPayload("expected an object")
    user = field(payload, "user", str, "a string")
    pull_requests = field(payload, "pull_requests", list, "an array")
    simulate = payload.get("simulate")
    return user, [pull_request(pr, i) for i, pr in enumerate(pull_requests)], simulate


def pull_request(pr, index):
    where = f"pull_requests[{index}]"
    if not isinstance(pr, dict):
        raise InvalidPayload(f"{where}: expected an object")
    age = field(pr, "age_days", int, "a non-negative integer", where)
    if isinstance(age, bool) or not 0 <= age <= 0xFFFF_FFFF:
        raise InvalidPayload(f"{where}.age_days: expected a non-negative integer")
    return {
        "title": field(pr, "title", str, "a string", where),
        "url": field(pr, "url", str, "a string", where),
        "age_days": age,
    }


def field(obj, name, kind, expected, where=None):
    path = f"{where}.{name}" if where else name
    if name not in obj:
        raise InvalidPayload(f"missing field `{path}`")
    if not isinstance(obj[name], kind):
        raise InvalidPayload(f"{path}: expected {expected}")
    return obj[name]


def message(user, pull_requests):
    count = len(pull_requests)
    if count == 0:
        return f"Hi {user}, no pull requests are waiting for your review."
    noun = "pull request is" if count == 1 else "pull requests are"
    lines = [f"Hi {user}, {count} {noun} waiting for your review:"]
    for pr in pull_requests:
        days = "day" if pr["age_days"] == 1 else "days"
        lines.append(f"- {pr['title']} ({pr['age_days']} {days}) {pr['url']}")
    return "\n".join(lines)
