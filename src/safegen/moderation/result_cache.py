"""Same bytes, same answer: an exact-duplicate cache of scores, keyed by SHA-256 of the upload.

Moderation traffic repeats (reposts, avatars, retries); a repeat costs a hash instead of a decode
and a forward pass. The key also holds everything that can change a score for the same bytes
(model, backend path and precision, input size, decode mode, frames scored), so a cache never
answers for another configuration. Bounded in entries, least recently used first out; size 0
turns it off. Only scores are kept: an error may be transient (an overloaded queue).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable

from safegen.moderation.base import Score


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class ResultCache:
    """``scope`` + SHA-256 digest -> :class:`Score`, at most ``max_entries`` of them."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Hashable, bytes], Score] = OrderedDict()
        self._lock = threading.Lock()  # read from decode threads, written from the event loop

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, scope: Hashable, key: bytes) -> Score | None:
        with self._lock:
            score = self._entries.get((scope, key))
            if score is not None:
                self._entries.move_to_end((scope, key))
            return score

    def put(self, scope: Hashable, key: bytes, score: Score) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._entries[(scope, key)] = score
            self._entries.move_to_end((scope, key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
