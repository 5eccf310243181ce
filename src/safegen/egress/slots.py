"""At most N holders at once per key (a host, a client): one busy key never blocks the others."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = field(default=0)  # holders and waiters: the entry goes when none is left


class KeyedSlots:
    """``async with slots.hold(key):`` waits (first come, first served) while ``limit`` others
    hold the same key. Keys cost nothing once unused."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a slot limit must be at least 1")
        self.limit = limit
        self._slots: dict[str, _Slot] = {}

    def in_use(self, key: str) -> int:
        """Holders and waiters of ``key``."""
        slot = self._slots.get(key)
        return slot.users if slot else 0

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(asyncio.Semaphore(self.limit))
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[key]
