"""Model resolution and the one-line "missing weights" error, with the hub unreachable."""

from __future__ import annotations

import logging
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
