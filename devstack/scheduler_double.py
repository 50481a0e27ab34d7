"""A local double of the Cloud Scheduler REST API (v1 jobs: get, create, patch), for the client
`functions.lib.scheduler` builds with `transport="rest"` and `client_options={"api_endpoint": url}`.

Jobs live in memory, keyed by name, so a test sees both the exact requests and what they left.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devstack.doubles import Received, _Double

JOB = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/jobs/[^/:]+)$")
JOBS = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/jobs$")


def _error(code: int, status: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"code": code, "status": status, "message": message}}


def _camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(word.title() for word in rest)


@dataclass
class SchedulerDouble(_Double):
    """`hide_from_get` answers 404 to every GET, as if another deploy created the job in between;
    mode "denied" answers 403 to everything, as for a caller without cloudscheduler.jobs permissions."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    hide_from_get: bool = False

    def requests(self) -> list[tuple[str, str]]:
        """(method, path without query) of every request received, in order."""
        return [(r.method, urlsplit(r.path).path) for r in self.received]

    def answer(self, req: Received) -> tuple[int, dict[str, Any]]:
        if self.mode == "denied":
            return _error(403, "PERMISSION_DENIED", "The caller does not have permission")
        url = urlsplit(req.path)
        job = JOB.match(url.path)
        jobs = JOBS.match(url.path)
        if req.method == "GET" and job:
            return self.get_job(job[1])
        if req.method == "POST" and jobs:
            return self.create_job(jobs[1], json.loads(req.body or b"{}"))
        if req.method == "PATCH" and job:
            mask = [m for value in parse_qs(url.query).get("updateMask", []) for m in value.split(",") if m]
            return self.patch_job(job[1], json.loads(req.body or b"{}"), mask)
        return _error(404, "NOT_FOUND", f"No route for {req.method} {url.path}")

    def get_job(self, name: str) -> tuple[int, dict[str, Any]]:
        if name not in self.jobs or self.hide_from_get:
            return _error(404, "NOT_FOUND", f"Job not found: {name}")
        return 200, self.jobs[name]

    def create_job(self, parent: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body.get("name", "")
        if not name.startswith(parent + "/jobs/"):
            return _error(400, "INVALID_ARGUMENT", "Job name must be under the parent.")
        if name in self.jobs:
            return _error(409, "ALREADY_EXISTS", f"Job {name} already exists.")
        self.jobs[name] = {**body, "state": "ENABLED"}
        return 200, self.jobs[name]

    def patch_job(self, name: str, body: dict[str, Any], mask: list[str]) -> tuple[int, dict[str, Any]]:
        if name not in self.jobs:
            return _error(404, "NOT_FOUND", f"Job not found: {name}")
        stored = self.jobs[name]
        for field_name in [_camel(m) for m in mask] or list(body):
            if field_name in body:
                stored[field_name] = body[field_name]
            else:
                stored.pop(field_name, None)
        return 200, stored
