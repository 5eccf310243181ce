"""A progress bar on stderr: tqdm when it is installed, a plain counter line otherwise."""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Any


class Progress:
    """Thread-safe ``update(n)``; does nothing when ``enabled`` is false."""

    def __init__(self, total: int, enabled: bool, unit: str = "img") -> None:
        self.total, self.enabled, self.unit = total, enabled, unit
        self.done = 0
        self._lock = threading.Lock()
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # the client does not require tqdm
                self._bar = None
            else:
                self._bar = tqdm(total=self.total, unit=self.unit, file=sys.stderr)
        return self

    def update(self, count: int) -> None:
        with self._lock:
            self.done += count
            if not self.enabled:
                return
            if self._bar is not None:
                self._bar.update(count)
            else:
                sys.stderr.write(f"\r{self.done}/{self.total} {self.unit}")
                sys.stderr.flush()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\n")
