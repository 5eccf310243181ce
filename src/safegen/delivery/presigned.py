"""Presigned URLs as text: rename the object, redact for logs, read the expiry.

Everything here is string surgery on the URL as the client sent it. A presigned URL's query string
carries a signature computed over exact bytes, so it is never decoded and re-encoded: the only part
ever changed is the last path segment, and only by :func:`rename_object`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

from safegen.errors import UploadTargetRejected

# A new object name is inserted verbatim, so it must need no percent-encoding (RFC 3986 unreserved).
_OBJECT_NAME = re.compile(r"[A-Za-z0-9._~-]{1,255}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
# Query parameters whose values are secrets or let someone replay the request.
_SENSITIVE_EXACT = frozenset({"sig", "key", "code"})
_SENSITIVE_PARTS = (
    "signature", "credential", "token", "secret", "password", "passwd", "accesskey", "apikey",
)
REDACTED = "REDACTED"


def split_url(url: str) -> tuple[str, str, str, str]:
    """Split ``url`` into ``(scheme://authority, path, query, fragment)`` without decoding.

    ``query`` and ``fragment`` keep their leading ``?`` / ``#`` so that joining the four parts gives
    back ``url`` exactly.
    """
    if not isinstance(url, str) or "://" not in url:
        raise UploadTargetRejected("upload URL must be an absolute http(s) URL")
    scheme, rest = url.split("://", 1)
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            end = min(end, pos)
    origin, rest = f"{scheme}://{rest[:end]}", rest[end:]
    fragment = ""
    if "#" in rest:
        rest, fragment = rest.split("#", 1)
        fragment = "#" + fragment
    path, query = rest, ""
    if "?" in rest:
        path, query = rest.split("?", 1)
        query = "?" + query
    return origin, path, query, fragment


def object_name(url: str) -> str:
    """The last path segment of ``url`` (the placeholder name, e.g. ``1.png``), still encoded."""
    _, path, _, _ = split_url(url)
    return path.rsplit("/", 1)[-1]


def rename_object(url: str, new_name: str) -> str:
    """Return ``url`` with its last path segment replaced by ``new_name``.

    Scheme, host, the rest of the path and the query string are kept byte for byte. A URL whose path
    ends with ``/`` (a prefix) gets ``new_name`` appended. ``new_name`` must consist of unreserved
    characters (letters, digits, ``.``, ``_``, ``~``, ``-``), so it is inserted without encoding.
    """
    valid = isinstance(new_name, str) and _OBJECT_NAME.fullmatch(new_name)
    if not valid or new_name in {".", ".."}:
        raise UploadTargetRejected("object name must be 1-255 characters from A-Z a-z 0-9 . _ ~ -")
    origin, path, query, fragment = split_url(url)
    if fragment:
        raise UploadTargetRejected("upload URL must not contain a fragment ('#')")
    if not path:
        path = "/"
    head = path.rsplit("/", 1)[0]
    return f"{origin}{head}/{new_name}{query}"


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of a raw query; names decoded, values left raw."""
    query = query.removeprefix("?")
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((unquote(name.replace("+", " ")), value))
    return pairs


def is_sigv4(url: str) -> bool:
    """Whether ``url`` is an AWS Signature Version 4 presigned URL (signs only listed headers)."""
    try:
        _, _, query, _ = split_url(url)
    except UploadTargetRejected:
        return False
    return any(name.lower() == "x-amz-signature" for name, _ in _query_pairs(query))


def _is_sensitive(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SENSITIVE_EXACT or any(part in lowered for part in _SENSITIVE_PARTS)


def redact(url: str) -> str:
    """A form of ``url`` safe for logs: secrets in the query become ``REDACTED``.

    Userinfo and fragment are dropped. Never raises: anything unparseable becomes a fixed string.
    """
    try:
        origin, path, query, _ = split_url(url)
    except UploadTargetRejected:
        return "<unparseable url>"
    scheme, authority = origin.split("://", 1)
    authority = authority.rsplit("@", 1)[-1]  # user:password@ never reaches a log
    items = []
    for item in query.removeprefix("?").split("&"):
        if not item:
            continue
        raw_name, eq, _ = item.partition("=")
        name = unquote(raw_name.replace("+", " "))
        items.append(f"{raw_name}={REDACTED}" if eq and _is_sensitive(name) else item)
    redacted_query = ("?" + "&".join(items)) if items else ""
    return f"{scheme}://{authority}{path}{redacted_query}"


def _single(pairs: list[tuple[str, str]], name: str) -> str | None:
    """The value of parameter ``name`` (case-insensitive); refuses conflicting repeats."""
    values = {unquote(v) for k, v in pairs if k.lower() == name.lower()}
    if len(values) > 1:
        raise UploadTargetRejected(f"upload URL has conflicting '{name}' parameters")
    return values.pop() if values else None


def _seconds(value: str, name: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise UploadTargetRejected(f"upload URL parameter '{name}' must be a whole number")
    return int(value)


def _v4_expiry(pairs: list[tuple[str, str]], vendor: str) -> datetime | None:
    date_name, expires_name = f"X-{vendor}-Date", f"X-{vendor}-Expires"
    date, lifetime = _single(pairs, date_name), _single(pairs, expires_name)
    if date is None and lifetime is None:
        return None
    if date is None or lifetime is None:
        raise UploadTargetRejected(
            f"upload URL has one of '{date_name}' and '{expires_name}' without the other"
        )
    bad_date = UploadTargetRejected(f"upload URL parameter '{date_name}' is not YYYYMMDDTHHMMSSZ")
    if not _AMZ_DATE.fullmatch(date):
        raise bad_date
    try:
        signed = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        return signed + timedelta(seconds=_seconds(lifetime, expires_name))
    except ValueError:
        raise bad_date from None
    except OverflowError:
        raise UploadTargetRejected(f"upload URL parameter '{expires_name}' is too large") from None


def expires_at(url: str) -> datetime | None:
    """When the presigned ``url`` stops working (UTC), or ``None`` if it carries no expiry.

    Understands SigV2 (``Expires`` = epoch seconds) and SigV4 (``X-Amz-Date`` =
    ``YYYYMMDDTHHMMSSZ`` plus ``X-Amz-Expires`` = seconds), and Google's ``X-Goog-*`` twins of the
    latter. If several are present the earliest wins. Malformed values raise
    :class:`UploadTargetRejected`.
    """
    _, _, query, _ = split_url(url)
    pairs = _query_pairs(query)
    found: list[datetime] = []
    v2 = _single(pairs, "Expires")
    if v2 is not None:
        try:
            found.append(datetime.fromtimestamp(_seconds(v2, "Expires"), tz=timezone.utc))
        except (OverflowError, OSError, ValueError):
            raise UploadTargetRejected("upload URL parameter 'Expires' is too large") from None
    for vendor in ("Amz", "Goog"):
        v4 = _v4_expiry(pairs, vendor)
        if v4 is not None:
            found.append(v4)
    return min(found) if found else None


def post_policy_expires_at(fields: dict[str, str]) -> datetime | None:
    """The ``expiration`` of a presigned POST's base64 JSON ``policy`` field, or ``None``."""
    encoded = next((v for k, v in fields.items() if k.lower() == "policy"), None)
    if encoded is None:
        return None
    try:
        policy = json.loads(base64.b64decode(encoded, validate=True))
        expiration = policy["expiration"]
        when = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        raise UploadTargetRejected("presigned POST 'policy' field is malformed") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
