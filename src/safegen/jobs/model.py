"""A job's record (what the queue stores) and its public view (what clients and webhooks see)."""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
EVENTS: tuple[str, ...] = ("start", "completed")
DEFAULT_EVENTS: tuple[str, ...] = ("completed",)


def new_job_id() -> str:
    """128 random bits, URL-safe and unguessable (ids are not secrets, but need not be probed)."""
    return secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobRecord:
    """Everything kept about one job. ``job`` is the encoded generate job (it holds the presigned
    URL, so it never leaves the store: the public view does not show it)."""

    id: str
    owner: str  # API key id ("" when authentication is off)
    job: dict[str, Any]
    created_at: float
    urls: dict[str, str]
    webhook: str | None = None
    events: tuple[str, ...] = DEFAULT_EVENTS
    status: str = "queued"
    started_at: float | None = None
    completed_at: float | None = None
    data: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def replace(self, **changes: Any) -> JobRecord:
        return dataclasses.replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The job as GET /v1/generations/{id} returns it and webhooks send it."""
        view: dict[str, Any] = {
            "id": self.id, "status": self.status, "created_at": iso(self.created_at),
            "started_at": iso(self.started_at), "completed_at": iso(self.completed_at),
            "urls": self.urls,
        }
        if self.data is not None:
            view["data"] = self.data
        if self.error is not None:
            view["error"] = self.error
        return view

    def spec_json(self) -> str:
        """The parts fixed at submission, stored once."""
        return json.dumps({"job": self.job, "urls": self.urls, "webhook": self.webhook,
                           "events": list(self.events)}, separators=(",", ":"))

    def result_json(self) -> str:
        return json.dumps({"data": self.data, "error": self.error}, separators=(",", ":"))

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> JobRecord:
        """Rebuild from the stored hash (see :meth:`spec_json`, :meth:`result_json`)."""
        spec = json.loads(fields["spec"])
        result = json.loads(fields.get("result") or "{}")

        def moment(name: str) -> float | None:
            return float(fields[name]) if fields.get(name) else None

        return cls(
            id=fields["id"], owner=fields.get("owner", ""), job=spec["job"],
            created_at=float(fields["created_at"]), urls=spec["urls"], webhook=spec["webhook"],
            events=tuple(spec["events"]), status=fields["status"],
            started_at=moment("started_at"), completed_at=moment("completed_at"),
            data=result.get("data"), error=result.get("error"),
        )


@dataclass(frozen=True)
class WebhookEvent:
    """One notification to send: the same ``message_id`` on every attempt (receivers use it for
    idempotency), the body fixed when the event happened."""

    message_id: str
    url: str
    body: bytes
    job_id: str = ""
    event: str = "completed"

    @classmethod
    def for_job(cls, record: JobRecord, event: str) -> WebhookEvent | None:
        """The event to send for ``record`` now, or None if its job asked for none."""
        if record.webhook is None or event not in record.events:
            return None
        body = json.dumps(record.public(), separators=(",", ":")).encode()
        return cls(f"msg_{record.id}_{event}", record.webhook, body, record.id, event)
