"""pr-reminders-python: the `pr-reminders` job in Python, doing exactly what the Rust one does
(example-plugins/rust/pr-reminders): for each repository of the config value `repos`, read the
open pull requests from the GitHub API at `github_api` with the secret `github_token`, group
them by requested reviewer, and enqueue one `slack-notify` job per reviewer with the
`review-reminder` payload and the unique key `review-reminder:{login}:{day}`.
"""

import json
from datetime import datetime, timezone

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.jobrunner_plugin_types import Job, JobError_Fail, JobError_Retry

import http_get
import jobrunner

MAX_PAGES = 10


class WitWorld(wit_world.WitWorld):
    def run(self, job: Job) -> str | None:
        api = jobrunner.require("github_api")
        token = jobrunner.require("github_token")
        repos = parse_repos(jobrunner.require("repos"))
        now = datetime.now(timezone.utc)
        waiting: dict[str, list[dict]] = {}
        count = 0
        for repo in repos:
            for pull in open_pulls(api, repo, token):
                count += 1
                age_days = max(0, (now - parse_time(pull["created_at"])).days)
                for reviewer in pull.get("requested_reviewers") or []:
                    waiting.setdefault(reviewer["login"], []).append(
                        {"title": pull["title"], "url": pull["html_url"], "age_days": age_days})
        day = now.strftime("%Y-%m-%d")
        for user in sorted(waiting):
            reminder = {"user": user, "pull_requests": waiting[user]}
            try:
                jobrunner.enqueue("slack-notify", reminder,
                                  unique_key=f"review-reminder:{user}:{day}")
            except jobrunner.Refused as refused:
                raise Err(JobError_Fail(str(refused)))
        host.log(host.Level.INFO, f"{count} open pull requests in {len(repos)} repositories; "
                                  f"reminding {len(waiting)} reviewers")
        return json.dumps({"repos": len(repos), "pull_requests": count,
                           "reviewers": sorted(waiting)})


def parse_repos(value: str) -> list[str]:
    repos = [r.strip() for r in value.split(",") if r.strip()]
    for repo in repos:
        if repo.count("/") != 1:
            raise Err(JobError_Fail(f"config repos: {repo!r} is not owner/repo"))
    if not repos:
        raise Err(JobError_Fail("config repos lists no repository"))
    return repos


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def open_pulls(api: str, repo: str, token: str) -> list[dict]:
    url = f"{api.rstrip('/')}/repos/{repo}/pulls?state=open&per_page=100"
    pulls = []
    for _ in range(MAX_PAGES):
        reply = github_get(url, token)
        try:
            pulls.extend(json.loads(reply.body))
        except ValueError as error:
            raise Err(JobError_Retry(f"{repo}: unexpected answer from GitHub: {error}"))
        url = next_page(reply.header("link"))
        if url is None:
            break
    return pulls


def github_get(url: str, token: str) -> http_get.Reply:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
               "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "jobrunner-pr-reminders"}
    try:
        reply = http_get.get(url, headers)
    except http_get.HttpError as error:
        raise Err(JobError_Fail(str(error)) if error.refused
                  else JobError_Retry(f"GitHub did not answer: {error}"))
    if 200 <= reply.status < 300:
        return reply
    if reply.status == 429 or reply.status >= 500:
        if (delay := reply.retry_after()) is not None:
            jobrunner.retry_after(delay)
        raise Err(JobError_Retry(f"GitHub answered {reply.status}"))
    text = reply.body.decode(errors="replace")[:300]
    raise Err(JobError_Fail(f"GitHub answered {reply.status}: {text}"))


def next_page(link: str | None) -> str | None:
    for part in (link or "").split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params:
            return url.strip().lstrip("<").rstrip(">")
    return None
