"""Images sent inside JSON: base64 text or ``data:`` URLs, decoded to bytes within the size limit.

Shared by ``/v1/classify`` (JSON) and ``/v1/moderations``. A bad item is returned as its error,
so that the caller can report it at its place and still score the others.
"""

from __future__ import annotations

import base64
import binascii

from safegen.errors import ImageError as BadImage
from safegen.errors import SafegenError, TooLarge


def is_data_url(text: str) -> bool:
    return text[:5].lower() == "data:"


def decode_data_url(url: str, max_bytes: int, field: str) -> bytes | SafegenError:
    """``data:image/...;base64,...``: another media type, or no base64, is not an image."""
    header, comma, payload = url.partition(",")
    media = header[5:].split(";")
    if not comma or "base64" not in (p.strip().lower() for p in media[1:]):
        return BadImage("a data URL must be base64 encoded (data:image/...;base64,...)",
                        field=field)
    if media[0] and not media[0].strip().lower().startswith("image/"):
        return BadImage(f"the data URL's media type is {media[0]!r}, not an image", field=field)
    return decode_base64(payload, max_bytes, field)


def decode_base64(text: str, max_bytes: int, field: str) -> bytes | SafegenError:
    """Base64 text (a ``data:`` prefix tolerated), refused unread when it cannot fit the limit."""
    if is_data_url(text):
        text = text.partition(",")[2]
    if len(text) > (max_bytes * 4) // 3 + 4:
        return TooLarge(
            f"image is larger than {max_bytes} bytes (SAFEGEN_MAX_IMAGE_BYTES)", field=field
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return BadImage("not valid base64", field=field)
