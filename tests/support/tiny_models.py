"""Small, locally built models for tests and benchmarks (nothing is downloaded).

Plain builder functions (usable from benchmarks and scripts) plus session-scoped pytest fixtures.
Weights are random but seeded, so every build gives the same model and the same outputs.

- ``build_tiny_sd_pipeline``: a complete Stable Diffusion pipeline directory, shaped like the real
  one (VAE 8x downsampling without mid-block attention, UNet with cross-attention only at its
  lowest level) so a 15-step 512x1024 image costs about 2-3 s on 2 CPU cores.
- ``build_tiny_x4_upscaler``: a StableDiffusionUpscalePipeline (4x) directory, for the model-based
  upscaler path.
- ``build_tiny_vit_classifier`` / ``build_full_vit_b16``: ViT classifiers with the labels and the
  preprocessor config of ``Falconsai/nsfw_image_detection``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

NSFW_ID2LABEL = {0: "normal", 1: "nsfw"}
# The original upload stores label2id values as strings; loaders must cope with that.
NSFW_LABEL2ID = {"normal": "0", "nsfw": "1"}
FALCONSAI_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}


def _byte_chars() -> list[str]:
    # GPT-2/CLIP byte-level BPE: every byte maps to one printable unicode character.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = [chr(b) for b in printable], 0
    for byte in range(256):
        if byte not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_clip_tokenizer_files(path: Path) -> Path:
    """Write a small CLIP BPE vocabulary (``vocab.json`` + ``merges.txt``): bytes, a few merges."""
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate([*chars, *(c + "</w>" for c in chars)])}
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("c", "a"), ("ca", "t</w>")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (path / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _text_encoder(tokenizer_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, CLIPTextModel(config).eval()


def build_tiny_sd_pipeline(path: Path) -> Path:
    """Write a StableDiffusionPipeline directory (no safety checker) that diffusers can load."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    with torch.random.fork_rng(devices=[]):
        tokenizer, text_encoder = _text_encoder(write_clip_tokenizer_files(path / "_vocab"))
        torch.manual_seed(1)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64, 64),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        torch.manual_seed(2)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            layers_per_block=1,
            block_out_channels=(8, 16, 32, 32),
            norm_num_groups=8,
            sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            mid_block_add_attention=False,
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        num_train_timesteps=1000,
        timestep_spacing="leading",
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(str(path))
    shutil.rmtree(path / "_vocab")  # the saved tokenizer/ folder holds the vocabulary now
    return path


def build_tiny_x4_upscaler(path: Path) -> Path:
    """Write a tiny StableDiffusionUpscalePipeline (4x) directory."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    with torch.random.fork_rng(devices=[]):
        tokenizer, text_encoder = _text_encoder(write_clip_tokenizer_files(path / "_vocab"))
        torch.manual_seed(3)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=7,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            norm_num_groups=8,
            num_class_embeds=1000,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        torch.manual_seed(4)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            norm_num_groups=8,
            mid_block_add_attention=False,
            scaling_factor=0.08333,
        )
    pipeline = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.eval(),
        low_res_scheduler=DDPMScheduler(),
        max_noise_level=350,
        scheduler=DDIMScheduler(prediction_type="v_prediction", steps_offset=1),
    )
    pipeline.save_pretrained(str(path))
    shutil.rmtree(path / "_vocab")
    return path


def _save_vit(path: Path, **shape: Any) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=224,
        patch_size=16,
        id2label=NSFW_ID2LABEL,
        label2id=NSFW_LABEL2ID,
        problem_type="single_label_classification",
        **shape,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViTForImageClassification(config).eval()
    model.save_pretrained(str(path))
    # Keep label2id values as strings, like the original upload, whatever transformers writes.
    config_file = path / "config.json"
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    saved["label2id"] = dict(NSFW_LABEL2ID)
    saved["id2label"] = {str(k): v for k, v in NSFW_ID2LABEL.items()}
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True), encoding="utf-8")
    preprocessor = json.dumps(FALCONSAI_PREPROCESSOR, indent=2)
    (path / "preprocessor_config.json").write_text(preprocessor, encoding="utf-8")
    return path


def build_tiny_vit_classifier(path: Path) -> Path:
    """A tiny ViTForImageClassification with the Falconsai labels and preprocessor config."""
    return _save_vit(
        path, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )


def build_full_vit_b16(path: Path) -> Path:
    """ViT-B/16 (85.8M parameters, random weights): the real model's compute, for benchmarks."""
    return _save_vit(
        path, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    )


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion pipeline directory, built once per test session."""
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_x4_upscaler_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4x diffusion upscaler directory, built once per test session."""
    return build_tiny_x4_upscaler(tmp_path_factory.mktemp("tiny-x4-upscaler"))


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT NSFW classifier directory (Falconsai labels/preprocessor), built once."""
    return build_tiny_vit_classifier(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hub offline with an empty cache: yields the cache dir. Patches the constant too, because
    huggingface_hub reads HF_HUB_OFFLINE once, at import."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
