"""SIGTERM on a real ``safegen serve`` process while a /generate upload is in flight.

What a rolling deploy needs: the in-flight request completes (its upload done, answered 200), no
new work is taken during the drain (``/readyz`` 503 or the listener closed), and the process exits
0 within the grace period.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from tests.support.app_client import AUTH
from tests.support.faultserver import Step

GRACE_S = 15
UPLOAD_DELAY_S = 2.0
UVICORN_TICK_S = 0.25  # uvicorn's main loop checks for a stop request every 0.1 s; some slack


def _generation_env(tiny_vit_dir, tiny_sd_dir) -> dict[str, str]:
    return {
        "SAFEGEN_NSFW_MODEL": str(tiny_vit_dir), "SAFEGEN_GENERATOR_MODEL": str(tiny_sd_dir),
        "SAFEGEN_UPSCALER": "none", "SAFEGEN_UPLOAD_ALLOWED_SCHEMES": "http,https",
        "SAFEGEN_UPLOAD_ALLOW_LOOPBACK": "true", "SAFEGEN_SHUTDOWN_GRACE_S": str(GRACE_S),
        "SAFEGEN_MAX_BATCH_SIZE": "4",
    }


@pytest.mark.slow
def test_sigterm_drains_an_in_flight_upload_then_exits_0(
    server_process, tiny_vit_dir, tiny_sd_dir, fault_server
):
    server = server_process(_generation_env(tiny_vit_dir, tiny_sd_dir))
    fault_server.script(Step(200, delay_s=UPLOAD_DELAY_S))
    outcome: dict[str, object] = {}

    def generate() -> None:
        try:
            outcome["response"] = httpx.post(f"{server.url}/generate", headers=AUTH, timeout=60,
                                             json={"prompt": "x", "width": 64, "height": 64,
                                                   "num_inference_steps": 1,
                                                   "s3_prefix": f"{fault_server.url}/b/1.png"})
        except httpx.HTTPError as exc:  # recorded, so the assertion below names it
            outcome["error"] = repr(exc)

    client = threading.Thread(target=generate)
    client.start()
    deadline = time.monotonic() + 30
    while not fault_server.requests and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until the image exists and its upload is being answered slowly
    assert fault_server.requests, "the upload never started"
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)

    readiness: list[tuple[float, int | str]] = []  # (seconds after SIGTERM, answer)
    while client.is_alive() and time.monotonic() - signalled < GRACE_S:
        sent = time.monotonic() - signalled
        try:
            readiness.append((sent, httpx.get(f"{server.url}/readyz", timeout=1).status_code))
        except httpx.TransportError:
            readiness.append((sent, "closed"))
        time.sleep(0.1)
    client.join(GRACE_S)
    exit_code = server.process.wait(GRACE_S + 5)
    stopped_after = time.monotonic() - signalled
    print(f"readiness after SIGTERM: {readiness[:4]}...; exit {exit_code} after "
          f"{stopped_after:.2f} s")

    assert "error" not in outcome, (outcome, server.log()[-3000:])
    response = outcome["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["s3_upload_status"] == 200
    # uvicorn notices the signal on its next 0.1 s tick; from then on no new work is taken.
    draining = [status for sent, status in readiness if sent > UVICORN_TICK_S]
    assert draining, readiness
    assert all(status in (503, "closed") for status in draining), readiness
    assert exit_code == 0, server.log()[-3000:]
    assert stopped_after < GRACE_S
    puts = [r for r in fault_server.requests if r.method == "PUT"]
    assert len(puts) == 1
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert any(line["message"].startswith("upload succeeded") for line in lines)
