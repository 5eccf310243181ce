"""The NSFW verdict: a score at or above a threshold is NSFW; a failed check counts as NSFW.

One rule for ``/v1/classify``, ``/v1/moderations``, ``/generate`` and the CLI, so that no route
invents its own reading of a score. The default threshold is ``SAFEGEN_NSFW_THRESHOLD``; a request
may bring its own, checked here against the same 0..1 range.
"""

from __future__ import annotations

from safegen.errors import InvalidInput


def is_nsfw(score: float, threshold: float) -> bool:
    """At or above the threshold: a threshold of 0 flags everything, 1 only certainties."""
    return score >= threshold


def failsafe_verdict() -> bool:
    """A check that failed or timed out cannot vouch for the image: it counts as NSFW."""
    return True


def choose_threshold(requested: float | None, default: float, field: str = "nsfw_threshold"
                     ) -> float:
    """The request's own threshold when it sent one (0..1), else the configured default."""
    if requested is None:
        return default
    if not 0.0 <= requested <= 1.0:  # NaN fails both comparisons and is refused too
        raise InvalidInput(f"{field} must be between 0 and 1; got {requested}", field=field)
    return requested


def parse_threshold(text: str, field: str = "nsfw_threshold") -> float:
    """A threshold sent as text (a multipart form field)."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{field} must be a number between 0 and 1", field=field) from None
    return choose_threshold(value, 0.0, field)
