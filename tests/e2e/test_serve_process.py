"""A real ``safegen serve`` process: start, classify over TCP, CLI, clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tests.support import images
from tests.support.app_client import AUTH

SIGNATURE = "SeCrEtSiGnAtUrE0123456789abcdef"


def test_real_server_classifies_concurrently_and_stops_cleanly(server_process, tiny_vit_dir):
    server = server_process({"SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
                             "SAFEGEN_MAX_BATCH_SIZE": "8"})
    payloads = [images.jpeg(i, (256, 512)) for i in range(8)]

    def classify(data: bytes) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/classify", files=[("files", ("x.jpg", data))],
                          headers=AUTH, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(classify, payloads))
    assert [r.status_code for r in responses] == [200] * 8
    assert all(0 <= r.json()["results"][0]["nsfw_score"] <= 1 for r in responses)
    # A query string can carry a presigned signature: the access log keeps the path only.
    signed = f"{server.url}/healthz?X-Amz-Signature={SIGNATURE}&Signature={SIGNATURE}"
    assert httpx.get(signed).status_code == 200

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    log_lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert any(line["message"].startswith("classifier ready") for line in log_lines)
    access = [line for line in log_lines if line["logger"] == "safegen.access"]
    assert len(access) >= 9
    assert all("request_id" in line for line in access)
    assert any(line["message"].startswith("GET /healthz 200") for line in access), access
    assert SIGNATURE not in server.log()  # neither our access log nor uvicorn's holds it


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_missing_model_fails_with_one_clear_line(tmp_path, offline):
    env = {k: v for k, v in _env().items() if k != "HF_HUB_OFFLINE"}
    env.update({"SAFEGEN_NSFW_MODEL": "some-org/missing-model", "HF_HOME": str(tmp_path),
                "HF_HUB_CACHE": str(tmp_path), "SAFEGEN_PORT": "1"})
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-m", "safegen", "serve"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "some-org/missing-model" in done.stderr
    assert "safegen download some-org/missing-model" in done.stderr
    assert "SAFEGEN_NSFW_MODEL" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_classify_folder(tmp_path, tiny_vit_dir):
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(images.jpeg(1, (128, 128)))
    (folder / "sub" / "b.png").write_bytes(images.png(2))
    (folder / "sub" / "broken.jpg").write_bytes(b"nope")
    (folder / "readme.txt").write_text("ignored")
    command = [sys.executable, "-m", "safegen", "classify", str(folder), "--model",
               str(tiny_vit_dir), "--quiet"]
    flat = subprocess.run([*command, "--format", "json"], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert flat.returncode == 0, flat.stderr
    assert [r["path"] for r in json.loads(flat.stdout)] == [str(folder / "a.jpg")]
    deep = subprocess.run([*command, "--recursive", "--format", "csv"], capture_output=True,
                          text=True, timeout=120, env=_env())
    lines = deep.stdout.strip().splitlines()
    assert lines[0] == "path,label,nsfw_score,error"
    assert len(lines) == 4
    assert deep.returncode == 1  # one file could not be scored
    assert "not a recognised image" in deep.stdout


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_real_server_generates_with_spec_defaults_to_s3(
    server_process, tiny_vit_dir, tiny_sd_dir, moto_s3
):
    """The spec's request, unchanged, against a real process and a real S3 API."""
    server = server_process({
        "SAFEGEN_NSFW_MODEL": str(tiny_vit_dir),
        "SAFEGEN_GENERATOR_MODEL": str(tiny_sd_dir),
        "SAFEGEN_UPLOAD_ALLOWED_SCHEMES": "http,https",
        "SAFEGEN_UPLOAD_ALLOW_LOOPBACK": "true",
    })
    prefix = moto_s3.presign_put("aiu-character/000/1.png")
    response = httpx.post(f"{server.url}/generate", timeout=120, headers=AUTH, json={
        "prompt": "a girl in a garden, anime style", "width": 512, "height": 1024,
        "num_inference_steps": 15, "response_format": "s3", "upscale": "true",
        "s3_prefix": prefix, "enable_nsfw_check": "true",
    })
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    md5 = data["image_hash"]
    assert data["s3_url"] == prefix.replace("/1.png?", f"/{md5}.jpg?")
    assert data["s3_upload_status"] == 200
    assert 0 <= data["nsfw_score"] <= 1
    stored = moto_s3.get(f"aiu-character/000/{md5}.jpg")
    assert __import__("hashlib").md5(stored).hexdigest() == md5
    signature = prefix.split("Signature=", 1)[1].split("&", 1)[0]
    assert signature not in server.log()  # the presigned signature never reaches the log
    assert "upload succeeded" in server.log()
