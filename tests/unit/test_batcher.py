"""The batcher with a fake model: batching across concurrent requests, limits and failures."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from safegen.errors import InferenceFailed, NotReady, Overloaded
from safegen.moderation.batcher import Batcher


class FakeModel:
    """Doubles its inputs; records batch sizes and the thread it ran on; can fail or stall."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.fail_when: int | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()  # set once a forward pass has begun

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay_s)
        self.batches.append(list(items))
        if self.fail_when is not None and self.fail_when in items:
            raise RuntimeError("boom")
        return [2 * i for i in items]


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(1, "test-model")
    yield pool
    pool.shutdown(wait=True)


async def in_forward_pass(model: FakeModel) -> None:
    """Wait until the model thread holds a batch (so the queue holds only what comes next)."""
    assert await asyncio.to_thread(model.entered.wait, 5), "the model was never called"


async def until(condition, timeout_s: float = 5.0) -> None:
    """Wait for ``condition()`` to hold, checking on each turn of the event loop."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0)


async def started(model, executor, **kw) -> Batcher[int, int]:
    options = {"max_batch_size": 8, "max_wait_s": 0.05, "max_queue": 100} | kw
    batcher: Batcher[int, int] = Batcher(model, executor, **options)
    await batcher.start()
    return batcher


async def test_concurrent_requests_share_batches(executor):
    model = FakeModel(delay_s=0.05)
    batcher = await started(model, executor)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    await batcher.stop()
    assert results == [2 * i for i in range(20)]
    assert max(len(b) for b in model.batches) == 8  # never above max_batch_size
    assert len(model.batches) < 20  # formed across requests
    assert model.threads == {"test-model_0"}  # never on the event loop thread


async def test_lone_request_does_not_wait_for_a_batch(executor):
    model = FakeModel()
    batcher = await started(model, executor, max_wait_s=60.0)
    began = time.monotonic()
    assert await batcher.submit(3) == 6
    assert time.monotonic() - began < 30.0  # nothing else expected: no 60 s wait
    await batcher.stop()


async def test_waits_up_to_max_wait_for_arriving_items(executor):
    model = FakeModel()
    arriving = {"n": 1}
    asked = asyncio.Event()  # the batcher holds item 1 and asks whether more are on the way

    def still_arriving() -> int:
        asked.set()
        return arriving["n"]

    batcher = await started(model, executor, max_wait_s=60.0, arriving=still_arriving)
    (first,) = batcher.submit_many([1])
    await asyncio.wait_for(asked.wait(), 5)
    arriving["n"] = 0
    (second,) = batcher.submit_many([2])
    assert await asyncio.gather(first, second) == [2, 4]
    assert model.batches == [[1, 2]]  # the arriving item joined the first batch
    await batcher.stop()


async def test_max_wait_bounds_the_wait(executor):
    model = FakeModel()
    batcher = await started(model, executor, max_wait_s=0.1, arriving=lambda: 1)
    began = time.monotonic()
    assert await batcher.submit(5) == 10
    assert 0.09 <= time.monotonic() - began < 1.5
    await batcher.stop()


async def test_failing_batch_fails_only_its_requests_and_loop_lives(executor):
    model = FakeModel()
    model.gate = threading.Event()
    model.fail_when = 13
    batcher = await started(model, executor, max_batch_size=2, max_wait_s=0)
    (blocked,) = batcher.submit_many([0])  # occupies the model
    await in_forward_pass(model)
    bad = batcher.submit_many([13, 1])
    good = batcher.submit_many([2, 3])
    model.gate.set()
    assert await blocked == 0
    for future in bad:
        with pytest.raises(InferenceFailed):
            await future
    assert [await f for f in good] == [4, 6]
    assert await batcher.submit(7) == 14  # the loop is still alive
    await batcher.stop()


async def test_wrong_number_of_outputs_fails_the_batch(executor):
    batcher = await started(lambda items: items[:-1], executor)
    with pytest.raises(InferenceFailed):
        await batcher.submit(1)
    await batcher.stop()


async def test_cancelled_requests_are_skipped(executor):
    model = FakeModel()
    model.gate = threading.Event()
    batcher = await started(model, executor, max_wait_s=0)
    (blocker,) = batcher.submit_many([100])
    await in_forward_pass(model)
    (abandoned,) = batcher.submit_many([1])
    (kept,) = batcher.submit_many([2])
    abandoned.cancel()  # what a client that goes away does to its future
    model.gate.set()
    assert await blocker == 200
    assert await kept == 4
    assert all(1 not in batch for batch in model.batches)
    await batcher.stop()


async def test_full_queue_is_refused_at_once(executor):
    model = FakeModel()
    model.gate = threading.Event()
    batcher = await started(model, executor, max_queue=3, max_wait_s=0)
    (running,) = batcher.submit_many([0])
    await in_forward_pass(model)  # taken by the model: queue empty again
    queued = batcher.submit_many([1, 2, 3])
    with pytest.raises(Overloaded) as refused:
        batcher.submit_many([4])
    assert "SAFEGEN_MAX_QUEUE_IMAGES" in refused.value.message
    model.gate.set()
    assert await running == 0
    assert await asyncio.gather(*queued) == [2, 4, 6]
    await batcher.stop()


async def test_stop_fails_what_cannot_finish_in_the_grace_period(executor):
    model = FakeModel()
    model.gate = threading.Event()
    batcher = await started(model, executor, max_batch_size=1, max_wait_s=0)
    (running,) = batcher.submit_many([0])
    await in_forward_pass(model)
    (waiting,) = batcher.submit_many([1])
    await batcher.stop(grace_s=0.1)
    model.gate.set()
    for future in (running, waiting):
        with pytest.raises(NotReady):
            await future
    with pytest.raises(NotReady):
        await batcher.submit(2)


async def test_a_stalled_model_fails_requests_instead_of_hanging_and_recovers(executor):
    model = FakeModel()
    model.gate = threading.Event()
    batcher = await started(model, executor, max_batch_size=1, max_wait_s=0,
                            stall_timeout_s=0.2)
    stuck, queued = batcher.submit_many([1, 2])  # batches of one: 2 waits behind the stuck 1
    for future in (stuck, queued):
        with pytest.raises(InferenceFailed, match="SAFEGEN_INFERENCE_TIMEOUT_S"):
            await asyncio.wait_for(future, 2)
    assert batcher.stalled
    with pytest.raises(NotReady):  # refused at once while the model is stuck
        await batcher.submit(3)
    assert batcher.depth == 0  # the queued request failed with it, and left the queue
    model.gate.set()
    await until(lambda: not batcher.stalled)
    assert await batcher.submit(4) == 8
    assert model.batches == [[1], [4]]  # no work for requests already answered
    await batcher.stop()


async def test_a_request_cancelled_during_its_forward_pass_leaves_the_others_answered(executor):
    model = FakeModel()
    model.gate = threading.Event()
    batcher = await started(model, executor, max_wait_s=0)
    first, gone, last = batcher.submit_many([1, 2, 3])  # queued together: one batch
    await in_forward_pass(model)
    gone.cancel()  # its client went away while the batch ran
    model.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, last), 5) == [2, 6]
    assert model.batches == [[1, 2, 3]]
    assert [task.get_name() for task in asyncio.all_tasks()].count("safegen-batcher") == 1
    await batcher.stop()


async def test_queue_time_does_not_count_towards_the_stall_timeout(executor):
    model = FakeModel(delay_s=0.2)  # each pass is well under the timeout, the last wait is not
    batcher = await started(model, executor, max_batch_size=1, max_wait_s=0,
                            stall_timeout_s=1.0)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    assert results == [2 * i for i in range(8)]
    await batcher.stop()


async def test_an_exception_in_place_of_an_output_fails_that_item_alone(executor):
    def model(items: list[int]) -> list[int | BaseException]:
        return [ValueError(f"bad {i}") if i < 0 else 2 * i for i in items]

    batcher = await started(model, executor)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, -1, 3)),
                                   return_exceptions=True)
    await batcher.stop()
    assert results[0] == 2
    assert results[2] == 6
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "bad -1"


async def test_refusals_and_failures_say_why(executor, caplog):
    """The words a client reads in its 503 or its image's error, each naming what to do, and
    the operator's log lines for a stalled model and a failed batch."""
    caplog.set_level(logging.WARNING, logger="safegen.moderation.batcher")
    model = FakeModel()
    model.gate = threading.Event()
    batcher = Batcher(model, executor, max_batch_size=1, max_wait_s=0, max_queue=2,
                      stall_timeout_s=0.2)
    with pytest.raises(NotReady) as before_start:
        batcher.submit_many([1])
    assert before_start.value.message == "the classifier is not running"
    await batcher.start()
    stuck, queued = batcher.submit_many([1, 2])
    with pytest.raises(Overloaded) as full:
        batcher.submit_many([3])
    assert full.value.message == (
        "the classifier queue is full (2 images, SAFEGEN_MAX_QUEUE_IMAGES); retry shortly")
    for future in (stuck, queued):
        with pytest.raises(InferenceFailed) as stalled:
            await asyncio.wait_for(future, 5)
        assert stalled.value.message == (
            "the model did not answer within 0.2 s (SAFEGEN_INFERENCE_TIMEOUT_S)")
    with pytest.raises(NotReady) as not_answering:
        batcher.submit_many([4])
    assert not_answering.value.message == "the model is not answering; retry shortly"
    model.gate.set()
    await until(lambda: not batcher.stalled)
    model.fail_when = 5
    with pytest.raises(InferenceFailed) as failed:
        await batcher.submit(5)
    assert failed.value.message == "the model failed on this batch"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "the model has not answered for 0.2 s; failing requests"),
        ("ERROR", "batch of 1 failed"),
    ]
    assert caplog.records[1].exc_info is not None  # the traceback goes to the log, not a client
    model.gate.clear()
    model.entered.clear()
    cut_off, still_queued = batcher.submit_many([6, 7])
    await in_forward_pass(model)
    await batcher.stop()  # no grace: the pass in flight is given up, the queue is failed
    model.gate.set()
    for future in (cut_off, still_queued):
        with pytest.raises(NotReady) as shutting_down:
            await future
        assert shutting_down.value.message == "the service is shutting down"
    with pytest.raises(NotReady) as after_stop:
        batcher.submit_many([7])
    assert after_stop.value.message == "the classifier is not running"


async def test_stop_lets_running_and_queued_work_finish_within_the_grace_period(executor):
    model = FakeModel(delay_s=0.2)
    model.gate = threading.Event()
    batcher = await started(model, executor, max_batch_size=1, max_wait_s=0)
    running, queued = batcher.submit_many([1, 2])
    await in_forward_pass(model)
    stopping = asyncio.create_task(batcher.stop(grace_s=60))
    await asyncio.sleep(0)  # one turn of the loop: the stop has begun and refuses new work
    with pytest.raises(NotReady):
        batcher.submit_many([3])
    model.gate.set()
    await stopping
    assert (await running, await queued) == (2, 4)
    assert model.batches == [[1], [2]]


async def test_batches_and_queue_depth_are_reported(executor):
    """``on_batch`` gets each batch's size and model seconds, ``on_depth`` every queue change
    (the metrics safegen_batch_size, safegen_inference_seconds and safegen_queue_depth)."""
    model = FakeModel(delay_s=0.05)
    model.gate = threading.Event()
    batches: list[tuple[int, float]] = []
    depths: list[int] = []
    batcher = await started(model, executor, max_batch_size=2, max_wait_s=0,
                            on_batch=lambda n, s: batches.append((n, s)), on_depth=depths.append)
    (first,) = batcher.submit_many([0])
    await in_forward_pass(model)
    rest = batcher.submit_many([1, 2, 3])
    assert batcher.depth == 3
    model.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 2, 4, 6]
    await until(lambda: len(batches) == 3)
    assert [size for size, _ in batches] == [1, 2, 1]
    assert all(0.05 <= seconds < 30 for _, seconds in batches), batches
    # queued 1, taken 0, queued 3, a batch of 2 taken 1, the last taken 0
    assert depths == [1, 0, 3, 1, 0]
    await batcher.stop()
    assert depths[-1] == 0
