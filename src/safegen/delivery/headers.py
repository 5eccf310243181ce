"""Which headers an upload may carry: valid HTTP (RFC 9110) and ones a signer can have signed.

The one place header policy lives: the settings validate ``SAFEGEN_UPLOAD_DEFAULT_HEADERS`` with
:func:`parse_header_line`, and requests' ``upload_headers`` are checked with
:func:`check_upload_header`, both before any work is done.
"""

from __future__ import annotations

import re

from safegen.errors import InvalidInput

_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token
_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII, space and tab

# Headers a signer may have signed; anything else could smuggle requests to the storage.
SIGNABLE_HEADERS = frozenset({
    "x-amz-acl", "content-type", "cache-control", "content-disposition", "content-encoding",
    "content-language", "expires", "x-amz-storage-class", "x-amz-tagging",
    "x-amz-server-side-encryption", "content-md5",
})


def is_header_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def is_header_value(value: str) -> bool:
    return _VALUE.fullmatch(value) is not None


def parse_header_line(line: str) -> tuple[str, str]:
    """``"Name: value"`` -> ``(name, value)``; ``ValueError`` naming what is wrong."""
    name, sep, value = line.partition(":")
    if not sep or not is_header_name(name.strip()):
        raise ValueError(f"header '{line}' must look like 'Name: value'")
    if not is_header_value(value.strip()):
        raise ValueError(f"header '{name.strip()}' value must be printable ASCII")
    return name.strip(), value.strip()


def check_upload_header(name: str, value: str, field: str = "upload_headers") -> None:
    """Refuse a header that could not be sent (after generation) or that no signer signs."""
    if not is_header_name(name):
        raise InvalidInput(f"{field}: a header name is not a valid HTTP token", field=field)
    if name.lower() not in SIGNABLE_HEADERS and not name.lower().startswith("x-amz-meta-"):
        raise InvalidInput(
            f"header '{name}' may not be sent; allowed: x-amz-meta-*, "
            + ", ".join(sorted(SIGNABLE_HEADERS)), field=field,
        )
    if not is_header_value(value):
        raise InvalidInput(
            f"header '{name}' must be printable ASCII (no control or non-ASCII characters)",
            field=field,
        )
