"""Structured logs in the Cloud Logging JSON shape: one JSON object per line on stdout.

Cloud Run turns each line into a log entry: `severity` and `message` are read as such, and
`logging.googleapis.com/trace` links the entry to the request's trace. Nothing here logs tokens,
secrets or prompts; callers pass fields explicitly under `extra={"json_fields": {...}}`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)


def bind(**fields: Any) -> None:
    """Add fields (function, uid, trace) to every log line of the current request."""
    current = dict(_context.get() or {})
    current.update({k: v for k, v in fields.items() if v is not None})
    _context.set(current)


def reset() -> None:
    _context.set({})


def snapshot() -> dict[str, Any]:
    """The current request's fields, for a line written after the request's own code returned."""
    return dict(_context.get() or {})


@contextlib.contextmanager
def restored(fields: dict[str, Any]) -> Iterator[None]:
    """Log with `fields` (a `snapshot`) as the request's fields, whatever this thread serves now."""
    token = _context.set(fields)
    try:
        yield
    finally:
        _context.reset(token)


class CloudLoggingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        context = dict(_context.get() or {})
        trace = context.pop("trace", None)
        if trace:
            entry["logging.googleapis.com/trace"] = trace
        entry.update(context)
        entry.update(getattr(record, "json_fields", {}) or {})
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: int = logging.INFO) -> None:
    """Route the root logger to stdout as JSON lines (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    root.addHandler(handler)
    root.setLevel(level)


def trace_from_header(header: str | None, project: str) -> str | None:
    """`X-Cloud-Trace-Context: TRACE_ID/SPAN;o=1` -> `projects/P/traces/TRACE_ID`."""
    if not header:
        return None
    trace_id = header.split("/", 1)[0].strip()
    if not trace_id or not all(c in "0123456789abcdefABCDEF" for c in trace_id):
        return None
    return f"projects/{project}/traces/{trace_id}"
