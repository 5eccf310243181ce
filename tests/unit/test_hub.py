"""Model resolution and the one-line "missing weights" error, with the hub unreachable."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from safegen.errors import ModelUnavailable
from safegen.hub import (
    download,
    is_local,
    load_failed_message,
    missing_weights_message,
    model_unavailable,
    resolve_model,
)

HUB_ID = "someorg/not-downloaded-model"


def _fake_cached_snapshot(cache: Path, repo_id: str) -> Path:
    """Lay out the hub cache the way huggingface_hub leaves it after a download."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    return snapshot


def test_missing_weights_message_is_the_documented_line() -> None:
    message = missing_weights_message(
        "Falconsai/nsfw_image_detection", "NSFW classifier", "SAFEGEN_NSFW_MODEL"
    )
    assert message == (
        "NSFW classifier 'Falconsai/nsfw_image_detection' is not available offline: run "
        "`safegen download Falconsai/nsfw_image_detection` on a connected machine (fills the "
        "Hugging Face cache) or set SAFEGEN_NSFW_MODEL to a local directory holding the model."
    )
    assert missing_weights_message("a/b", "image generator", "X").startswith(
        "Image generator 'a/b'"
    )


def test_is_local(tmp_path: Path) -> None:
    (tmp_path / "file.bin").write_bytes(b"x")
    assert is_local(str(tmp_path))
    assert not is_local(str(tmp_path / "file.bin"))
    assert not is_local(str(tmp_path / "absent"))
    assert not is_local(HUB_ID)


def test_local_directory_resolves_to_its_absolute_path(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path), kind="k", env_var="E", cache_dir=None) == str(
        tmp_path.resolve()
    )


@pytest.mark.parametrize("path", ["/nonexistent/models/sd", "./models/sd", "a/b/c", "~/nope"])
def test_missing_directory_names_the_setting(path: str) -> None:
    with pytest.raises(ModelUnavailable) as info:
        resolve_model(
            path, kind="image generator", env_var="SAFEGEN_GENERATOR_MODEL", cache_dir=None
        )
    message = info.value.message
    assert "\n" not in message
    assert path in message
    assert "SAFEGEN_GENERATOR_MODEL" in message
    assert message.startswith("Image generator directory")


def test_hub_id_offline_and_not_cached_is_unavailable(hf_offline: Path) -> None:
    with pytest.raises(ModelUnavailable) as info:
        resolve_model(HUB_ID, kind="NSFW classifier", env_var="SAFEGEN_NSFW_MODEL", cache_dir=None)
    assert info.value.message == missing_weights_message(
        HUB_ID, "NSFW classifier", "SAFEGEN_NSFW_MODEL"
    )
    assert "\n" not in info.value.message


def test_hub_id_offline_but_cached_resolves(hf_offline: Path) -> None:
    _fake_cached_snapshot(hf_offline, HUB_ID)
    assert resolve_model(HUB_ID, kind="k", env_var="E", cache_dir=hf_offline) == HUB_ID
    # The default cache (HF_HUB_CACHE) is consulted when no cache_dir is given.
    assert resolve_model(HUB_ID, kind="k", env_var="E", cache_dir=None) == HUB_ID


def test_hub_id_online_is_left_to_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert resolve_model(HUB_ID, kind="k", env_var="E", cache_dir=None) == HUB_ID


def test_download_with_the_hub_unreachable(hf_offline: Path) -> None:
    with pytest.raises(ModelUnavailable) as info:
        download(HUB_ID, cache_dir=hf_offline)
    message = info.value.message
    assert "\n" not in message
    assert HUB_ID in message
    assert "HF_HUB_OFFLINE" in message
    assert "Cannot reach" not in message  # no library text


def test_download_of_a_local_directory_is_a_no_op(tmp_path: Path) -> None:
    assert download(str(tmp_path)) == tmp_path.resolve()


def test_model_unavailable_picks_the_message_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="safegen.hub"):
        missing = model_unavailable(HUB_ID, kind="k", env_var="E", exc=OSError("no file secret"))
    assert missing.message == missing_weights_message(HUB_ID, "k", "E")
    assert "secret" not in missing.message
    assert any(r.exc_info and "no file secret" in str(r.exc_info[1]) for r in caplog.records)

    broken = model_unavailable(HUB_ID, kind="k", env_var="E", exc=ValueError("bad config"))
    assert broken.message == load_failed_message(HUB_ID, "k", "E")
    # A local directory is never "not available offline", whatever the error.
    local = model_unavailable(str(tmp_path), kind="k", env_var="E", exc=OSError("missing"))
    assert local.message == load_failed_message(str(tmp_path), "k", "E")


# --- a local model this process may not read (a volume filled by another user) ----------------

# Imports first (this interpreter may live in root's home), then only the effective ids change:
# what the process may open is decided by them, so that is what the check must look at.
_RESOLVE_AS_OTHER_USER = """
import json, os, sys
from safegen.errors import ModelUnavailable
from safegen.hub import resolve_model
uid = int(sys.argv[2])
if os.geteuid() != uid:
    os.setegid(uid)
    os.seteuid(uid)
try:
    print(json.dumps({"resolved": resolve_model(
        sys.argv[1], kind="NSFW classifier", env_var="SAFEGEN_NSFW_MODEL", cache_dir=None)}))
except ModelUnavailable as exc:
    print(json.dumps({"error": exc.message}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is private to its owner)."""
    with tempfile.TemporaryDirectory(prefix="safegen-hub-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def _unprivileged_uid() -> int:
    # As root: a user that owns nothing here. Otherwise: ourselves (files are made unreadable to
    # their owner as well, below).
    return 65534 if os.geteuid() == 0 else os.geteuid()


def _resolve_as(uid: int, model: Path) -> dict[str, str]:
    completed = subprocess.run(
        [sys.executable, "-c", _RESOLVE_AS_OTHER_USER, str(model), str(uid)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def _saved_model(parent: Path) -> Path:
    model = parent / "nsfw"
    (model / "sub").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "sub/extra.json"):
        (model / name).write_text("{}")
    for path in (parent, model, model / "sub"):
        path.chmod(0o755)
    for name in ("config.json", "model.safetensors", "sub/extra.json"):
        (model / name).chmod(0o644)
    return model


def test_readable_local_model_resolves_for_another_user(shared_dir: Path) -> None:
    model = _saved_model(shared_dir)
    assert _resolve_as(_unprivileged_uid(), model) == {"resolved": str(model.resolve())}


@pytest.mark.parametrize("unreadable", ["model.safetensors", "sub/extra.json"])
def test_unreadable_model_file_is_one_line_naming_file_and_user(
    shared_dir: Path, unreadable: str
) -> None:
    model = _saved_model(shared_dir)
    # What save_pretrained leaves behind: mode 600, owned by whoever wrote it (root here).
    mode = 0o600 if os.geteuid() == 0 else 0o000
    (model / unreadable).chmod(mode)
    uid = _unprivileged_uid()

    outcome = _resolve_as(uid, model)

    assert "error" in outcome, outcome
    message = outcome["error"]
    assert "\n" not in message
    assert message.startswith(f"NSFW classifier file {model / unreadable} is not readable by ")
    assert f"(uid {uid})" in message
    assert f"owner uid {os.geteuid()}, mode {mode:o}" in message
    assert f"chmod -R a+rX {model}" in message
    if os.geteuid() == 0:  # the files are root's: serving as root is never suggested
        assert "run safegen as" not in message
    else:
        assert f"run safegen as uid {os.geteuid()}" in message
    assert "No such file" not in message


def test_unreadable_model_directory_and_closed_parent(shared_dir: Path) -> None:
    uid = _unprivileged_uid()
    model = _saved_model(shared_dir / "volume")
    (model / "sub").chmod(0o700 if os.geteuid() == 0 else 0o000)
    message = _resolve_as(uid, model)["error"]
    assert message.startswith(f"NSFW classifier directory {model / 'sub'} is not readable by ")

    (model / "sub").chmod(0o755)
    model.parent.chmod(0o700 if os.geteuid() == 0 else 0o000)  # the model is behind a closed door
    try:
        message = _resolve_as(uid, model)["error"]
    finally:
        model.parent.chmod(0o755)
    assert message.startswith(f"NSFW classifier directory {model.parent} is not readable by ")
    assert f"chmod a+x {model.parent}" in message
    assert "does not exist" not in message


def test_hidden_folders_and_broken_links_are_left_to_the_loaders(shared_dir: Path) -> None:
    model = _saved_model(shared_dir)
    (model / ".cache").mkdir(mode=0o700)
    (model / ".cache" / "lock").write_text("")
    (model / "dangling.json").symlink_to(model / "absent.json")
    if os.geteuid() != 0:
        (model / ".cache").chmod(0o000)
    assert _resolve_as(_unprivileged_uid(), model) == {"resolved": str(model.resolve())}
