"""Delivery of generated images to object storage through presigned URLs.

``presigned`` reads, rewrites and redacts presigned URLs, ``uploader`` sends bytes with retries
and deadlines through the egress client (:mod:`safegen.egress`: where bytes may go, SSRF
defence), ``outcomes`` says what an attempt came to. Nothing here imports the web layer.
"""

from safegen.delivery.config import UploadConfig
from safegen.delivery.outcomes import AttemptRecord, UploadResult
from safegen.delivery.presigned import (
    expires_at,
    is_sigv4,
    object_name,
    redact,
    rename_object,
)
from safegen.delivery.uploader import Uploader, content_md5_header, retarget

__all__ = [
    "AttemptRecord",
    "UploadConfig",
    "UploadResult",
    "Uploader",
    "content_md5_header",
    "expires_at",
    "is_sigv4",
    "object_name",
    "redact",
    "rename_object",
    "retarget",
]
