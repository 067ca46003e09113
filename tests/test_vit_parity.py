"""Eval-mode parity with timm for registered ViT, DeiT and DeiT III names.

Each reference is a randomly initialized timm model with few blocks. Its state
dict loads strictly into the exdrop model of the same name, and also through
exdrop's checkpoint loader from a safetensors file. The float32 logits must
agree to 1e-5.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import exdrop
from exdrop.models import load_timm_checkpoint

TOLERANCE = 1e-5

# name -> the architecture feature it covers. Each test cuts the depth to keep the model small.
PARITY_NAMES = {
    "vit_tiny_patch16_224": "class token, plain ViT",
    "vit_small_patch32_224": "patch size 32",
    "vit_base_patch16_384": "384 input, 576 patches",
    "vit_large_patch16_224": "large width (one block)",
    "deit_tiny_distilled_patch16_224": "distillation token and head",
    "deit_small_patch16_224": "DeiT without distillation",
    "deit3_small_patch16_224": "LayerScale, position embedding without the class token",
    "vit_base_patch16_reg4_gap_256": "register tokens, average pooling, no class token",
    "vit_medium_patch16_gap_256": "average pooling with LayerScale and no fc_norm",
    "vit_base_patch16_clip_quickgelu_224": "pre-norm, QuickGELU, LayerNorm eps 1e-5",
    "vit_small_patch14_reg4_dinov2": "registers with LayerScale, patch 14 at 518",
    "vit_base_patch16_siglip_gap_224": "average pooling without class token",
}


def timm_reference(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def random_input(model: torch.nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", sorted(PARITY_NAMES))
def test_eval_logits_match_timm(name: str, tmp_path: Path) -> None:
    depth = 2 if "tiny" in name or "small" in name else 1
    reference = timm_reference(name, depth=depth)
    model = exdrop.create_model(name, depth=depth).eval()
    x = random_input(reference)

    model_state, reference_state = model.state_dict(), reference.state_dict()
    assert set(model_state) == set(reference_state)
    for key, value in reference_state.items():
        assert model_state[key].shape == value.shape, key
    model.load_state_dict(reference_state, strict=True)

    with torch.no_grad():
        expected = reference(x)
        got = model(x)
    assert got.shape == expected.shape
    assert max_abs_diff(got, expected) < TOLERANCE

    # The same weights through the file loader: nothing renamed, resampled, dropped or missing.
    path = tmp_path / f"{name}.safetensors"
    save_file(reference_state, str(path))
    loaded = exdrop.create_model(name, depth=depth).eval()
    report = load_timm_checkpoint(loaded, path)
    assert (report.renamed, report.resampled, report.dropped, report.missing) == ([], [], [], [])
    with torch.no_grad():
        assert max_abs_diff(loaded(x), expected) < TOLERANCE


def test_features_and_pre_logits_match_timm() -> None:
    name = "deit3_small_patch16_224"
    reference = timm_reference(name, depth=2)
    model = exdrop.create_model(name, depth=2).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = random_input(reference)

    with torch.no_grad():
        expected_tokens = reference.forward_features(x)
        tokens, raw_terms = model.forward_features(x)
        expected_pooled = reference.forward_head(expected_tokens, pre_logits=True)
        pooled = model.forward_head(tokens, pre_logits=True)

    assert raw_terms == [{}, {}]
    assert max_abs_diff(tokens, expected_tokens) < TOLERANCE
    assert max_abs_diff(pooled, expected_pooled) < TOLERANCE


def cifar_batch(shared_data: Path, size: int, mean, std) -> torch.Tensor:
    """Read one CIFAR-10 test JPEG per class, resized to ``size`` and normalized, ``(10, 3, size, size)``."""
    folder = shared_data / "cifar10" / "test"
    images = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        path = sorted(class_dir.glob("*.jpg"))[0]
        image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1))
    batch = torch.stack(images)
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_real_images_match_timm(shared_data: Path, tmp_path: Path) -> None:
    name = "deit_tiny_distilled_patch16_224"
    reference = timm_reference(name, depth=2)
    path = tmp_path / "deit.safetensors"
    save_file(reference.state_dict(), str(path))
    model = exdrop.create_model(name, depth=2, checkpoint_path=str(path)).eval()
    cfg = model.pretrained_cfg
    x = cifar_batch(shared_data, cfg["input_size"][-1], cfg["mean"], cfg["std"])

    with torch.no_grad():
        expected = reference(x)
        got = model(x)

    assert x.shape == (10, 3, 224, 224)
    assert max_abs_diff(got, expected) < TOLERANCE
    assert cfg["mean"] == reference.pretrained_cfg["mean"]


@pytest.mark.parametrize(
    "name, img_size",
    [("deit3_small_patch16_224", 160), ("vit_tiny_patch16_224", 288), ("vit_base_patch16_reg4_gap_256", (128, 192))],
)
def test_checkpoint_at_other_img_size_matches_timm(
    name: str, img_size, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    depth = 1
    path = tmp_path / "weights.safetensors"
    save_file(timm_reference(name, depth=depth).state_dict(), str(path))

    # timm resamples the position embedding itself when loading the file at another size.
    reference = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), img_size=img_size, depth=depth
    ).eval()
    with caplog.at_level(logging.INFO, logger="exdrop"):
        model = exdrop.create_model(name, checkpoint_path=str(path), img_size=img_size, depth=depth).eval()
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    torch.manual_seed(1)
    x = torch.randn(2, 3, height, width)

    assert model.pos_embed.shape == reference.pos_embed.shape
    assert model.pretrained_cfg["input_size"] == (3, height, width)
    assert "resampled pos_embed" in caplog.text
    with torch.no_grad():
        assert max_abs_diff(model(x), reference(x)) < TOLERANCE


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_other_num_classes_drops_head(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = timm_reference(name, depth=1)
    path = tmp_path / "weights.safetensors"
    save_file(reference.state_dict(), str(path))

    with caplog.at_level(logging.INFO, logger="exdrop"):
        model = exdrop.create_model(name, checkpoint_path=str(path), num_classes=7, depth=1).eval()
    x = random_input(reference)

    heads = ["head"] + (["head_dist"] if "distilled" in name else [])
    for head in heads:
        for param in ("weight", "bias"):
            assert f"dropped {head}.{param} (shape" in caplog.text
        assert getattr(model, head).out_features == 7
    assert "missing from checkpoint" in caplog.text
    model_state = model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("head"):
            assert torch.equal(model_state[key], value), key
    with torch.no_grad():
        tokens, _ = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert model(x).shape == (2, 7)
    assert max_abs_diff(pooled, expected) < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_base_patch16_224", "deit_base_distilled_patch16_224", "deit3_base_patch16_224"])
def test_full_depth_logits_match_timm(name: str) -> None:
    reference = timm_reference(name)
    model = exdrop.create_model(name).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = random_input(reference)

    with torch.no_grad():
        assert max_abs_diff(model(x), reference(x)) < TOLERANCE
