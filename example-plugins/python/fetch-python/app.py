"""fetch-python: GETs the payload's `url` over the runner's wasi:http and returns the status
and the body's size. A 5xx reply or a failed request retries the job; a request the runner
refuses (host not granted, address blocked) fails it. The manifest beside the plugin
(`fetch-python.toml`) grants the hosts: `[http] allowed_hosts = ["https://example.com"]`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.jobrunner_plugin_types import Job, JobError_Fail, JobError_Retry

import http_get


class WitWorld(wit_world.WitWorld):
    def run(self, job: Job) -> str | None:
        url = json.loads(job.payload).get("url")
        if not isinstance(url, str):
            raise Err(JobError_Fail("payload: expected {\"url\": \"...\"}"))
        try:
            reply = http_get.get(url)
        except http_get.HttpError as error:
            raise Err(JobError_Fail(str(error)) if error.refused else JobError_Retry(str(error)))
        if reply.status >= 500:
            raise Err(JobError_Retry(f"server error: status {reply.status}"))
        host.log(host.Level.INFO, f"fetched {len(reply.body)} bytes, status {reply.status}")
        return json.dumps({"status": reply.status, "bytes": len(reply.body)})
