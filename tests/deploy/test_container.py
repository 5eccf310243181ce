"""The container image, built from the repository's Dockerfile and run with rootful podman.

One image per session (``safegen_image``). The server runs hardened the way the Kubernetes
manifests run it (read-only root file system, no capabilities, no privilege escalation), with a
small ViT mounted read-only, and is reached through a port published on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import jpeg
from tests.support.podman import BuiltImage, Podman, published_port
from tests.support.tiny_models import _save_vit

pytestmark = [pytest.mark.container, pytest.mark.slow]

API_KEY = "container-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
IMAGE_UID = 10001
READY_TIMEOUT_S = 180
# Long enough for the in-flight request below on a busy 2-core machine (its 64 forward passes
# took over 20 s under load): past the grace uvicorn cancels it, which is not what is tested here.
SHUTDOWN_GRACE_S = 90
IN_FLIGHT_IMAGES = 64  # SAFEGEN_MAX_FILES_PER_REQUEST's default: one request, 64 forward passes
HARDENING = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges"]


SRC = Path(__file__).resolve().parents[2] / "src"
# A digest of the safegen package's Python sources, wherever it is imported from.
_SOURCE_DIGEST = """
import hashlib, pathlib, safegen
root = pathlib.Path(safegen.__file__).parent
digest = hashlib.sha256()
for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root)).encode() + b"\\0" + path.read_bytes())
print(digest.hexdigest())
"""


def _model_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def small_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT-Ti-sized classifier (Falconsai labels): about 20 ms per image on 2 CPU cores, so a
    64-image request at batch size 1 stays in flight long enough to be caught by a signal."""
    path = _save_vit(
        tmp_path_factory.mktemp("small-vit"),
        hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
    )
    path.chmod(0o755)
    for file in _model_files(path):
        file.chmod(0o644)  # readable by the image's user, whoever wrote it
    return path


@pytest.fixture
def containers(podman: Podman) -> Iterator[list[str]]:
    """Names of the containers a test started; removed (with their volumes) afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        podman.run("rm", "--force", "--volumes", name, check=False, timeout=120)


def _start(podman: Podman, image: BuiltImage, names: list[str], model: Path,
           *env: str) -> str:
    name = f"safegen-test-{uuid.uuid4().hex[:8]}"
    names.append(name)
    environment = [
        "SAFEGEN_NSFW_MODEL=/models/nsfw", f"SAFEGEN_API_KEYS={API_KEY}", "SAFEGEN_DEVICE=cpu",
        "HF_HUB_OFFLINE=1", f"SAFEGEN_SHUTDOWN_GRACE_S={SHUTDOWN_GRACE_S}",
        # One torch thread: two threads spinning at OpenMP barriers on a busy 2-core machine made
        # a forward pass of this small model take seconds instead of tens of milliseconds.
        "SAFEGEN_TORCH_THREADS=1", *env,
    ]
    podman.run(
        "run", "--detach", "--name", name, "--publish", "127.0.0.1::8000", *HARDENING,
        "--volume", f"{model}:/models/nsfw:ro",
        *(arg for item in environment for arg in ("--env", item)),
        image.tag,
    )
    return name


def _running(podman: Podman, name: str) -> bool:
    state = podman.run("inspect", "--format", "{{.State.Running}}", name, check=False)
    return state.stdout.strip() == "true"


def _logs(podman: Podman, name: str) -> str:
    logs = podman.run("logs", name, check=False)
    return (logs.stdout + logs.stderr)[-4000:]


def _wait_ready(podman: Podman, name: str, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/readyz", timeout=2).status_code
            if last == 200:
                return
        except httpx.TransportError as exc:
            last = repr(exc)
            if not _running(podman, name):
                pytest.fail(f"container exited before ready: {_logs(podman, name)}")
        time.sleep(0.1)
    pytest.fail(f"not ready after {READY_TIMEOUT_S} s (last: {last}): {_logs(podman, name)}")


def _queue_depth(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", headers=AUTH, timeout=5)
    metrics.raise_for_status()
    match = re.search(r"^safegen_queue_depth ([0-9.e+-]+)$", metrics.text, re.MULTILINE)
    assert match, "safegen_queue_depth missing from /metrics"
    return float(match.group(1))


def test_image_is_configured_for_deployment(podman: Podman, safegen_image: BuiltImage) -> None:
    image = json.loads(podman.run("image", "inspect", safegen_image.tag).stdout)[0]
    config = image["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert "8000/tcp" in config["ExposedPorts"]
    assert env["SAFEGEN_HOST"] == "0.0.0.0"
    assert env["HF_HOME"] == "/models"
    assert env["XDG_CACHE_HOME"].startswith("/models/")
    assert "/models" in config["Volumes"]
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "safegen"]
    assert config["Cmd"] == ["serve"]
    assert config.get("StopSignal") == "SIGTERM"
    health = image["Healthcheck"]["Test"]
    assert health[0] == "CMD"
    assert any("/healthz" in part for part in health)

    # The runtime stage carries no compiler, no package lists, no pip cache; it has `sleep`
    # (the Kubernetes preStop pause) and the package's own command.
    probe = podman.run(
        "run", "--rm", "--user", "0", "--entrypoint", "sh", safegen_image.tag, "-c",
        "for c in gcc cc c++ g++ clang make; do command -v $c; done; "
        "find /var/lib/apt/lists /var/cache/apt /root/.cache /home/safegen /tmp -mindepth 1 "
        "! -name lock ! -name partial ! -name .bashrc ! -name .profile ! -name .bash_logout; "
        "echo ---; command -v sleep; command -v safegen",
        timeout=120,
    )
    found, _, tools = probe.stdout.partition("---")
    assert found.strip() == "", found
    assert tools.split() == ["/usr/bin/sleep", "/opt/safegen/bin/safegen"]

    # The package in the image is this checkout's (no stale layer from the build cache).
    installed = podman.run(
        "run", "--rm", "--entrypoint", "python3", safegen_image.tag, "-c", _SOURCE_DIGEST,
        timeout=120,
    ).stdout.strip()
    local = subprocess.run(
        [sys.executable, "-c", _SOURCE_DIGEST], capture_output=True, text=True, check=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert installed == local.stdout.strip()


def test_serves_as_non_root_and_drains_an_in_flight_request_on_sigterm(
    podman: Podman, safegen_image: BuiltImage, small_vit_dir: Path, containers: list[str],
    container_report: dict[str, float],
) -> None:
    started = time.monotonic()
    name = _start(podman, safegen_image, containers, small_vit_dir, "SAFEGEN_MAX_BATCH_SIZE=1")
    url = f"http://127.0.0.1:{published_port(podman, name)}"
    _wait_ready(podman, name, url)
    container_report["start_to_ready_s"] = round(time.monotonic() - started, 1)

    # Liveness and a classification through the published port.
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    one = httpx.post(f"{url}/v1/classify", headers=AUTH, timeout=60,
                     files=[("files", ("a.jpg", jpeg(1, (224, 224)), "image/jpeg"))])
    assert one.status_code == 200, one.text
    (result,) = one.json()["results"]
    assert result["label"] in {"normal", "nsfw"}
    assert 0.0 <= result["nsfw_score"] <= 1.0

    # Every process of the container runs as the image's user, with no capabilities.
    top = podman.run("top", name, "user", "capeff", "args").stdout.splitlines()[1:]
    assert top, "podman top listed no process"
    for row in top:
        user, capeff, *_ = row.split()
        assert user in {"safegen", str(IMAGE_UID)}, row
        assert capeff == "none", row
    status = podman.run("exec", name, "cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{IMAGE_UID}\s+{IMAGE_UID}\s+{IMAGE_UID}\s+{IMAGE_UID}$", status,
                     re.MULTILINE), status
    # The image's HEALTHCHECK (podman runs it on demand here: no systemd timers).
    assert podman.run("healthcheck", "run", name, check=False).returncode == 0

    # SIGTERM while a 64-image request is being scored one image per forward pass.
    images = [("files", (f"{i}.jpg", jpeg(i, (224, 224)), "image/jpeg"))
              for i in range(IN_FLIGHT_IMAGES)]
    outcome: dict[str, object] = {}

    def classify() -> None:
        try:
            outcome["response"] = httpx.post(f"{url}/v1/classify", headers=AUTH, files=images,
                                             timeout=120)
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)
        outcome["finished"] = time.monotonic()

    pid = int(podman.run("inspect", "--format", "{{.State.Pid}}", name).stdout)  # tini, on the host
    client = threading.Thread(target=classify)
    client.start()
    deadline = time.monotonic() + 60
    while client.is_alive() and _queue_depth(url) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # until the request's images wait for the model
    assert client.is_alive(), f"the request finished before it was seen queued: {outcome}"
    os.kill(pid, signal.SIGTERM)  # what `podman kill` does, without its start-up time
    signalled = time.monotonic()
    assert client.is_alive(), "the request finished before the signal was sent"

    readiness: list[int | str] = []
    while client.is_alive():
        try:
            readiness.append(httpx.get(f"{url}/readyz", timeout=1).status_code)
        except httpx.TransportError:
            readiness.append("closed")
        time.sleep(0.05)
    client.join()
    exit_code = int(podman.run("wait", name, timeout=SHUTDOWN_GRACE_S * 3 + 30).stdout.strip())
    stopped_s = time.monotonic() - signalled
    container_report["sigterm_to_exit_s"] = round(stopped_s, 1)
    logs = _logs(podman, name)

    assert "error" not in outcome, (outcome, logs)
    response = outcome["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200, (response.text, logs)
    results = response.json()["results"]
    assert len(results) == IN_FLIGHT_IMAGES
    assert all("error" not in r and r["label"] in {"normal", "nsfw"} for r in results), results
    finished = outcome["finished"]
    assert isinstance(finished, float)
    assert finished > signalled
    assert readiness, "no /readyz answer between the signal and the response"
    assert all(status in (503, "closed") for status in readiness), readiness
    assert exit_code == 0, logs
    assert stopped_s < SHUTDOWN_GRACE_S * 3, logs
    assert "Traceback" not in logs, logs


def test_unreadable_model_volume_is_one_line_naming_file_and_user(
    podman: Podman, safegen_image: BuiltImage, small_vit_dir: Path, containers: list[str],
    tmp_path: Path,
) -> None:
    # What `save_pretrained` run as root leaves behind: files of mode 600 owned by root.
    model = tmp_path / "root-only"
    shutil.copytree(small_vit_dir, model)
    model.chmod(0o755)
    for file in _model_files(model):
        file.chmod(0o600)
    name = f"safegen-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)

    run = podman.run(
        "run", "--name", name, *HARDENING, "--volume", f"{model}:/models/nsfw:ro",
        "--env", "SAFEGEN_NSFW_MODEL=/models/nsfw", "--env", f"SAFEGEN_API_KEYS={API_KEY}",
        "--env", "HF_HUB_OFFLINE=1", safegen_image.tag, check=False, timeout=180,
    )

    output = run.stdout + run.stderr
    lines = [line for line in output.splitlines() if line.startswith("safegen: ")]
    assert run.returncode == 2, output
    assert len(lines) == 1, output
    assert re.fullmatch(
        r"safegen: NSFW classifier file /models/nsfw/\S+ is not readable by user safegen "
        rf"\(uid {IMAGE_UID}\) \(owner uid 0, mode 600\): .*chmod -R a\+rX /models/nsfw.*",
        lines[0],
    ), lines[0]
    assert "Traceback" not in output, output
    assert "No such file" not in output, output

