"""SIGTERM on a real ``safegen serve`` process while a /generate job is in flight.

What a rolling deploy needs (README "Nothing lost", docs/deploy.md "Stopping"):
- ``/readyz`` answers 503 from the moment of the signal (then the port closes), while work is in
  flight;
- a request in flight completes (its upload done, answered 200);
- a job whose client has gone still delivers its image before the process exits 0, even when it
  outlasts uvicorn's wait for open requests: the service's own drain keeps it;
- a job that outlasts every phase of the drain does not hold the process: it exits within the
  phases' grace periods and the log says what was abandoned.

Every wait is on an event: the storage's record of a request or an answer (the fault server holds
its answer until the test opens its gate), a log line of the server, the kernel's record that the
process is stopped, or the process's exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.app_client import AUTH, ServerProcess
from tests.support.faultserver import FaultServer, Step

LONG_GRACE_S = 15  # never reached when the job finishes in time
SHORT_GRACE_S = 2  # whole seconds: uvicorn's own wait is int(SAFEGEN_SHUTDOWN_GRACE_S)
# Engine and interpreter teardown after the last phase (measured 1.4-3 s), room for a busy host.
EXIT_MARGIN_S = 10
EVENT_TIMEOUT_S = 60  # upper bound for an event that should come within seconds

pytestmark = pytest.mark.slow


def _generation_env(tiny_vit_dir: Path, tiny_sd_dir: Path, grace_s: int) -> dict[str, str]:
    return {
        "SAFEGEN_NSFW_MODEL": str(tiny_vit_dir), "SAFEGEN_GENERATOR_MODEL": str(tiny_sd_dir),
        "SAFEGEN_UPSCALER": "none", "SAFEGEN_UPLOAD_ALLOWED_SCHEMES": "http,https",
        "SAFEGEN_UPLOAD_ALLOW_LOOPBACK": "true", "SAFEGEN_SHUTDOWN_GRACE_S": str(grace_s),
        "SAFEGEN_MAX_BATCH_SIZE": "4", "SAFEGEN_RATE_LIMIT": "",
        # The held upload is one slow attempt, never a read timeout and a retry.
        "SAFEGEN_UPLOAD_TIMEOUT_S": "300",
    }


def _generate_body(storage: FaultServer) -> dict[str, Any]:
    return {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 1,
            "s3_prefix": f"{storage.url}/b/1.png"}


def _log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def _wait_for_log(server: ServerProcess, text: str, timeout_s: float = EVENT_TIMEOUT_S) -> str:
    """The first log message containing ``text``, once the server has written it."""
    deadline = time.monotonic() + timeout_s
    while True:
        exited = server.process.poll() is not None
        for line in _log_lines(server):
            if text in line["message"]:
                return str(line["message"])
        if exited or time.monotonic() >= deadline:
            break  # it exited without saying it, or it is late
        time.sleep(0.02)  # the log is a file: look again shortly
    raise AssertionError(f"no log line with {text!r}:\n{server.log()[-4000:]}")


def _wait_until_stopped(pid: int, timeout_s: float = EVENT_TIMEOUT_S) -> None:
    """Until the kernel reports every thread of ``pid`` stopped (state T)."""
    deadline = time.monotonic() + timeout_s
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        states = []
        for task in tasks.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that has just ended
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state == "T" for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


def _sigterm_main_thread(pid: int) -> None:
    """SIGTERM aimed at the main thread, as the kernel delivers a plain ``kill`` to a running
    process. While the process is stopped a plain ``kill`` would be left for whichever thread
    resumes first; the main thread runs the Python handler, so it must be the one to take it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, pid, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


@contextmanager
def _frozen(pid: int) -> Iterator[None]:
    """Stop the process (SIGSTOP) for the block, then let it run on (SIGCONT)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        _wait_until_stopped(pid)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _readyz(probe: HTTPConnection) -> tuple[int, dict[str, Any]]:
    probe.request("GET", "/readyz")
    answer = probe.getresponse()
    return answer.status, json.loads(answer.read())


def _sigterm_and_probe_readiness(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    """SIGTERM, then a readiness probe that the server reads right after the signal.

    uvicorn closes its listener and its idle connections on its next 0.1 s tick after a signal,
    so a probe racing that tick proves nothing. Instead the process is frozen, the signal and a
    probe on an open keep-alive connection are both made to wait for it, and it is thawed: its
    main thread takes the signal before it reads the probe, and a request already read is
    answered even once the tick closes the listener.
    """
    probe = HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    try:
        status, body = _readyz(probe)
        assert (status, body["status"]) == (200, "ready"), body  # ready while the job runs
        with _frozen(server.process.pid):
            _sigterm_main_thread(server.process.pid)
            probe.request("GET", "/readyz")
        answer = probe.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        probe.close()


def _wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float]:
    """(exit status, seconds) once the process has exited; fails the test if it hangs."""
    started = time.monotonic()
    try:
        code = process.wait(max(timeout_s, 0.01))
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the server was still running {timeout_s} s after SIGTERM")
    return code, time.monotonic() - started


def _uploads_succeeded(server: ServerProcess) -> list[dict[str, Any]]:
    return [line for line in _log_lines(server) if line["message"].startswith("upload succeeded")]


def _start_generate(server: ServerProcess, storage: FaultServer) -> Callable[[], object]:
    """POST /generate from a client that stays connected; returns a getter for its outcome."""
    outcome: dict[str, object] = {}

    def generate() -> None:
        try:
            outcome["response"] = httpx.post(f"{server.url}/generate", headers=AUTH,
                                             timeout=120, json=_generate_body(storage))
        except httpx.HTTPError as exc:  # recorded, so the assertion names it
            outcome["error"] = repr(exc)

    client = threading.Thread(target=generate, daemon=True)
    client.start()

    def result() -> object:
        client.join(EVENT_TIMEOUT_S)
        assert not client.is_alive(), "the client never got an answer"
        return outcome.get("response", outcome.get("error"))

    return result


def _post_and_leave(server: ServerProcess, storage: FaultServer) -> socket.socket:
    """Send POST /generate on a raw connection and return it; closing it is the client leaving."""
    body = json.dumps(_generate_body(storage)).encode()
    head = (f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {AUTH['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    port = int(server.url.rsplit(":", 1)[1])
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(head + body)
    return connection


def test_sigterm_answers_503_then_finishes_the_request_in_flight_and_exits_0(
    server_process, tiny_vit_dir, tiny_sd_dir, fault_server
):
    server = server_process(_generation_env(tiny_vit_dir, tiny_sd_dir, LONG_GRACE_S))
    upload = threading.Event()
    fault_server.script(Step(200, hold=upload))
    response = _start_generate(server, fault_server)
    fault_server.wait_for_requests(1, EVENT_TIMEOUT_S)  # the image exists; its upload is held

    status, body = _sigterm_and_probe_readiness(server)
    assert (status, body["status"]) == (503, "stopping"), body
    _wait_for_log(server, "Shutting down")  # uvicorn's tick: the port is closed from here on
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/readyz", timeout=5)

    upload.set()
    code, seconds = _wait_for_exit(server.process, LONG_GRACE_S)
    answer = response()
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["s3_upload_status"] == 200
    assert code == 0, server.log()[-3000:]
    assert [(r.method, r.status) for r in fault_server.answered] == [("PUT", 200)]
    assert len(_uploads_succeeded(server)) == 1
    print(f"exit {code} {seconds:.2f} s after the upload was released")


def test_jobs_whose_clients_left_are_drained_up_to_the_grace_then_the_process_exits_0(
    server_process, tiny_vit_dir, tiny_sd_dir, fault_server
):
    """Two jobs whose clients have gone, both outliving uvicorn's wait for their requests (it
    cancels the handlers at the grace): only ``GenerateService.drain`` keeps them. The first
    one's storage answers during that drain: its image is delivered before the process exits.
    The second one's storage never answers: the process does not wait for it past the drain's
    own grace, exits 0 and says in its log what it gave up. The stop is bounded by the drain's
    phases (docs/deploy.md: uvicorn's wait for requests, then the service's wait for jobs, each
    ``SAFEGEN_SHUTDOWN_GRACE_S``; the batcher's, empty here, adds nothing)."""
    server = server_process(_generation_env(tiny_vit_dir, tiny_sd_dir, SHORT_GRACE_S))
    first_upload, never = threading.Event(), threading.Event()
    fault_server.script(Step(200, hold=first_upload), Step(200, hold=never))
    first = _post_and_leave(server, fault_server)
    fault_server.wait_for_requests(1, EVENT_TIMEOUT_S)
    second = _post_and_leave(server, fault_server)
    first_put, _ = fault_server.wait_for_requests(2, EVENT_TIMEOUT_S)
    first.close()  # both clients go away while their uploads are in flight
    second.close()

    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _wait_for_log(server, "timeout graceful shutdown exceeded")  # uvicorn gave the requests up
    _wait_for_log(server, "waiting for 2 generation job(s) to finish")  # the service did not
    first_upload.set()
    bound_s = 2 * SHORT_GRACE_S + EXIT_MARGIN_S  # from the signal
    code, _ = _wait_for_exit(server.process, signalled + bound_s - time.monotonic())
    seconds = time.monotonic() - signalled
    print(f"exit {code} {seconds:.2f} s after SIGTERM")

    assert code == 0, server.log()[-3000:]
    assert [r.status for r in fault_server.answered] == [200]  # the storage has the first image
    (succeeded,) = _uploads_succeeded(server)
    assert f"{succeeded['image_hash']}.jpg" in first_put.target  # that object is the first job's
    assert first_put.body[:2] == b"\xff\xd8"  # a JPEG, delivered in full
    assert len(first_put.body) == int(first_put.headers["content-length"])
    abandoned = _wait_for_log(server, "still running after", timeout_s=0)
    assert "1 generation job(s)" in abandoned
    assert "SAFEGEN_SHUTDOWN_GRACE_S" in abandoned
    assert seconds >= 2 * SHORT_GRACE_S  # it did wait for the second job, phase by phase
