"""Delivery of generated images to object storage through presigned URLs.

``presigned`` rewrites and redacts URLs, ``targets`` decides where bytes may go (SSRF defence),
``uploader`` sends them with retries. Nothing here imports the web layer.
"""

from safegen.delivery.config import UploadConfig
from safegen.delivery.outcomes import AttemptRecord, UploadResult
from safegen.delivery.presigned import expires_at, object_name, redact, rename_object
from safegen.delivery.targets import (
    HostUnresolvable,
    ResolvedTarget,
    UploadTargetPolicy,
    resolve_target,
)
from safegen.delivery.uploader import Uploader, content_md5_header

__all__ = [
    "AttemptRecord",
    "HostUnresolvable",
    "ResolvedTarget",
    "UploadConfig",
    "UploadResult",
    "UploadTargetPolicy",
    "Uploader",
    "content_md5_header",
    "expires_at",
    "object_name",
    "redact",
    "rename_object",
    "resolve_target",
]
