"""Errors of the jobs API; the edge maps them to HTTP with the other domain errors."""

from __future__ import annotations

from safegen.errors import Overloaded, SafegenError, TooManyJobs

__all__ = ["JobNotCancelable", "JobNotFound", "StorageUnavailable", "TooManyJobs"]


class JobNotFound(SafegenError):
    """No such job for this API key (another key's jobs are not found either) (HTTP 404)."""

    code = "job_not_found"


class JobNotCancelable(SafegenError):
    """Only a job that has not started can be canceled (HTTP 409)."""

    code = "job_not_cancelable"


class StorageUnavailable(Overloaded):
    """The job store (Redis) cannot be reached; nothing was recorded (HTTP 503 + Retry-After)."""

    code = "job_storage_unavailable"
