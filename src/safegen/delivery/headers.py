"""What can be sent as an HTTP header at all (RFC 9110): checked before any work is done."""

from __future__ import annotations

import re

_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token
_VALUE = re.compile(r"[\t\x20-\x7e]*")  # visible ASCII, space and tab


def is_header_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def is_header_value(value: str) -> bool:
    return _VALUE.fullmatch(value) is not None
