"""The classifier engine's start and stop: what it tells the operator, what it waits for."""

from __future__ import annotations

import logging
import re
import threading

from safegen.moderation.engine import ClassifierEngine
from tests.support.engines import engine_config


def tiny_torch_engine(model_dir) -> ClassifierEngine:
    return ClassifierEngine(engine_config(model_dir, device="cpu", backend="torch",
                                          precision="fp32"))


async def test_the_ready_line_names_what_was_loaded_and_where(tiny_vit_dir, caplog):
    caplog.set_level(logging.INFO, logger="safegen.moderation")
    async with tiny_torch_engine(tiny_vit_dir):
        pass
    ready = [r.getMessage() for r in caplog.records if "ready" in r.getMessage()]
    assert len(ready) == 1
    assert re.fullmatch(rf"classifier ready: model={re.escape(str(tiny_vit_dir))} backend=torch "
                        r"precision=fp32 device=cpu in \d+\.\ds", ready[0]), ready[0]


async def test_stop_returns_once_the_model_thread_has_finished_its_work(tiny_vit_dir):
    # A forward pass given up at shutdown still runs on the model thread: stop() waits for it,
    # so nothing uses the model once the engine says it has stopped.
    engine = tiny_torch_engine(tiny_vit_dir)
    await engine.start()
    release, finished = threading.Event(), threading.Event()

    def pass_in_flight() -> None:
        release.wait(30)
        finished.set()

    engine._model_thread.submit(pass_in_flight)
    threading.Timer(0.2, release.set).start()
    await engine.stop()
    assert finished.is_set()


async def test_stop_drops_decodes_still_waiting_for_a_thread(tiny_vit_dir):
    # Decoding for requests that will never be scored is wasted CPU, and the interpreter's exit
    # would wait for every queued one: stop() cancels them; those already running finish.
    engine = tiny_torch_engine(tiny_vit_dir)
    await engine.start()
    release = threading.Event()
    running = [engine._decode_pool.submit(release.wait, 30) for _ in range(engine.decode_threads)]
    queued = engine._decode_pool.submit(lambda: None)
    await engine.stop()
    release.set()
    assert all(future.result(30) for future in running)
    assert queued.cancelled()
