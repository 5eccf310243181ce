"""Standard Webhooks signatures: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

The signature is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed by the secret's
bytes (the base64 part of ``whsec_...``). The id stays the same on every retry of one event so
receivers can de-duplicate; the timestamp is the attempt's, so receivers can refuse old replays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the spec asks for 24 to 64 random bytes
MAX_SECRET_BYTES = 64


def parse_secret(secret: str) -> bytes:
    """The key bytes of ``whsec_<base64>``; ``ValueError`` (never echoing the secret) otherwise."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secret must look like whsec_<base64 of 24-64 random bytes>")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret: the part after whsec_ is not valid base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"webhook secret must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes "
            f"(got {len(key)}); make one with: python -c \"import base64, os; "
            "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
        )
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
    }
