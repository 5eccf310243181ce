"""The state of one ``classify`` run over many requests: results by index, progress, and the
first failure that stops it (what finished before it is kept)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from safegen.client.errors import IncompleteClassification, SafegenClientError
from safegen.client.inputs import Source
from safegen.client.models import ImageResult
from safegen.client.progress import Progress
from safegen.client.wire import not_classified

ProgressCallback = Callable[[int, int], None]  # (images done, images in all)


class BatchRun:
    """Shared by the request workers of one run (threads or tasks)."""

    def __init__(
        self, sources: list[Source], progress: Progress, on_progress: ProgressCallback | None
    ) -> None:
        self.sources = sources
        self.results: list[ImageResult | None] = [None] * len(sources)
        self.failure: SafegenClientError | None = None
        self._progress = progress
        self._on_progress = on_progress
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self.failure is not None

    def record(self, results: list[ImageResult]) -> None:
        with self._lock:
            for result in results:
                self.results[result.index] = result
        self._progress.update(len(results))
        if self._on_progress is not None:
            self._on_progress(self._progress.done, len(self.sources))

    def fail(self, error: SafegenClientError) -> None:
        with self._lock:
            if self.failure is None:  # the first cause is the one worth reporting
                self.failure = error

    def outcome(self) -> list[ImageResult]:
        """Every result in input order, or ``IncompleteClassification`` keeping what finished."""
        results = [
            r if r is not None else not_classified(s)
            for s, r in zip(self.sources, self.results, strict=True)
        ]
        if self.failure is not None:
            raise IncompleteClassification(results, self.failure)
        return results
