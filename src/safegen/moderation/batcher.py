"""Dynamic batching across concurrent requests.

One asyncio task collects queued items into batches and hands each batch to a single model thread.
A batch closes when it is full, when ``max_wait`` has passed, or at once when nothing more is on its
way (``arriving()`` is zero): an idle server answers a lone request without waiting for a batch to
fill, while a busy one fills batches from the requests that queued during the previous forward pass.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from safegen.errors import InferenceFailed, NotReady, Overloaded

In = TypeVar("In")
Out = TypeVar("Out")

logger = logging.getLogger("safegen.batcher")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]


class Batcher(Generic[In, Out]):
    """Runs ``predict(list_of_items) -> outputs`` on batches formed from ``submit`` calls.

    ``predict`` runs on ``executor`` (one thread: the model is never run on the event loop nor
    concurrently with itself). A failing batch fails only its own futures; the loop lives on.
    An exception in place of an output fails that item alone (an image the model thread could
    not decode, say).
    """

    def __init__(
        self,
        predict: Callable[[list[In]], Sequence[Out | BaseException]],
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        arriving: Callable[[], int] = lambda: 0,
        stall_timeout_s: float = 30.0,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._arriving = arriving  # images admitted but still being decoded
        self.stall_timeout_s = stall_timeout_s
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._queue: collections.deque[_Pending[In, Out]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False
        self.stalled = False  # a forward pass overran stall_timeout_s and has not returned yet

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="safegen-batcher")

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting, let queued work finish for up to ``grace_s``, then fail the rest."""
        self._closing = True
        deadline = time.monotonic() + grace_s
        while (self._queue or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(NotReady("the service is shutting down"))
        self._report_depth()

    def submit_many(self, items: Sequence[In]) -> list[asyncio.Future[Out]]:
        """Queue all ``items`` or none: a full queue raises ``Overloaded`` at once."""
        if self._closing or self._task is None:
            raise NotReady("the classifier is not running")
        if self.stalled:
            raise NotReady("the model is not answering; retry shortly")
        if len(self._queue) + len(items) > self.max_queue:
            raise Overloaded(
                f"the classifier queue is full ({self.max_queue} images, SAFEGEN_MAX_QUEUE_IMAGES);"
                " retry shortly"
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Out]] = []
        for item in items:
            future: asyncio.Future[Out] = loop.create_future()
            self._queue.append(_Pending(item, future))
            futures.append(future)
        self._report_depth()
        self._wakeup.set()
        return futures

    async def submit(self, item: In) -> Out:
        (future,) = self.submit_many([item])
        return await future

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._execute(batch)

    async def _next_batch(self) -> list[_Pending[In, Out]]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = time.monotonic() + self.max_wait_s
        batch: list[_Pending[In, Out]] = []
        while len(batch) < self.max_batch_size:
            if self._queue:
                pending = self._queue.popleft()
                if not pending.future.cancelled():  # the client went away: skip its work
                    batch.append(pending)
                continue
            remaining = deadline - time.monotonic()
            if self._arriving() <= 0 or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        self._report_depth()
        return batch

    async def _execute(self, batch: list[_Pending[In, Out]]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        self._busy = True
        try:
            running = loop.run_in_executor(self._executor, self._predict, [p.item for p in batch])
            outputs = await self._await_or_fail_stalled(running, batch)
            if len(outputs) != len(batch):
                raise RuntimeError(f"model returned {len(outputs)} outputs for {len(batch)} inputs")
        except asyncio.CancelledError:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(NotReady("the service is shutting down"))
            raise
        except Exception:
            logger.exception("batch of %d failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(InferenceFailed("the model failed on this batch"))
            return
        finally:
            self._busy = False
        if self._on_batch is not None:
            self._on_batch(len(batch), time.monotonic() - started)
        for pending, output in zip(batch, outputs, strict=True):
            if pending.future.done():
                continue
            if isinstance(output, BaseException):
                pending.future.set_exception(output)
            else:
                pending.future.set_result(output)

    async def _await_or_fail_stalled(
        self, running: asyncio.Future[Sequence[Out | BaseException]],
        batch: list[_Pending[In, Out]],
    ) -> Sequence[Out | BaseException]:
        """Wait for a forward pass; if it overruns ``stall_timeout_s``, fail its requests and the
        queued ones at once (a thread cannot be interrupted) and refuse new work until it returns.

        The timeout counts model time only, never time spent queueing behind other batches.
        """
        try:
            return await asyncio.wait_for(asyncio.shield(running), self.stall_timeout_s)
        except asyncio.TimeoutError:
            pass
        logger.error("the model has not answered for %g s; failing requests", self.stall_timeout_s)
        self.stalled = True
        stalled = InferenceFailed(
            f"the model did not answer within {self.stall_timeout_s:g} s "
            "(SAFEGEN_INFERENCE_TIMEOUT_S)"
        )
        waiting = list(self._queue)
        self._queue.clear()
        self._report_depth()
        for pending in [*batch, *waiting]:
            if not pending.future.done():
                pending.future.set_exception(stalled)
        try:
            return await running
        finally:
            self.stalled = False

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._queue))
