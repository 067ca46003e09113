"""Checkpoint files, the offline hub cache, from_timm and the model registry."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import exdrop
from exdrop.models.checkpoint import read_state_dict
from exdrop.models.vit_zoo import timm_pretrained_cfg

NAME = "vit_tiny_patch16_224"
SMALL = dict(depth=1, img_size=32, num_classes=5)


def small_model(seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return exdrop.create_model(NAME, **{**SMALL, **kwargs}).eval()


def small_input(seed: int = 1, size: int = 32) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, 3, size, size)


def assert_same_outputs(model: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = reference(x)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=0.0, atol=1e-6)


# --- checkpoint files -------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path: Path) -> None:
    source = small_model(seed=0)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))

    loaded = exdrop.create_model(NAME, checkpoint_path=str(path), **SMALL).eval()

    assert_same_outputs(loaded, source, small_input())
    assert not torch.equal(small_model(seed=1).pos_embed, loaded.pos_embed)  # the file, not the seed


def test_pth_plain_state_dict(tmp_path: Path) -> None:
    source = small_model(seed=0)
    path = tmp_path / "model.pth"
    torch.save(source.state_dict(), path)

    loaded = exdrop.create_model(NAME, checkpoint_path=path, **SMALL).eval()

    assert_same_outputs(loaded, source, small_input())


def test_pth_training_wrapper_with_module_prefix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = small_model(seed=0)
    wrapped = {
        "epoch": 3,
        "state_dict": {f"module.{key}": value for key, value in source.state_dict().items()},
        "optimizer": {"lr": torch.tensor(0.1)},
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(wrapped, path)

    with caplog.at_level(logging.INFO, logger="exdrop"):
        loaded = exdrop.create_model(NAME, checkpoint_path=str(path), **SMALL).eval()

    assert_same_outputs(loaded, source, small_input())
    assert "renamed: module.cls_token -> cls_token" in caplog.text
    assert "missing from checkpoint" not in caplog.text


def test_pth_needing_pickled_code_rejected(tmp_path: Path) -> None:
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": small_model().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)

    with pytest.raises(ValueError, match="weights_only=True") as info:
        exdrop.create_model(NAME, checkpoint_path=str(path), **SMALL)
    assert str(path) in str(info.value)


def test_missing_checkpoint_rejected(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"

    with pytest.raises(FileNotFoundError, match="not found") as info:
        exdrop.create_model(NAME, checkpoint_path=str(path), **SMALL)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_empty_checkpoint_rejected(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"empty{suffix}"
    path.touch()

    with pytest.raises(ValueError, match="empty") as info:
        exdrop.create_model(NAME, checkpoint_path=str(path), **SMALL)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_corrupt_checkpoint_rejected(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"\x93NUMPY this is not a checkpoint" * 8)

    with pytest.raises(ValueError) as info:
        exdrop.create_model(NAME, checkpoint_path=str(path), **SMALL)
    assert str(path) in str(info.value)


def test_truncated_safetensors_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(small_model().state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(ValueError, match="safetensors") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_unsupported_suffix_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"PK\x03\x04")

    with pytest.raises(ValueError, match="'.npz'") as info:
        exdrop.create_model(NAME, checkpoint_path=str(path), **SMALL)
    assert ".safetensors" in str(info.value)


def test_non_vit_checkpoint_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(5, 8)}, str(path))

    with pytest.raises(ValueError, match="not a timm ViT/DeiT checkpoint") as info:
        exdrop.create_model(NAME, checkpoint_path=str(path), **SMALL)
    assert str(path) in str(info.value)


def test_pth_without_tensors_rejected(tmp_path: Path) -> None:
    path = tmp_path / "metadata.pth"
    torch.save({"epoch": 3, "best": 0.5}, path)

    with pytest.raises(ValueError, match="no state dict found") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


# --- pretrained=True through an offline hub cache ----------------------------------------------


@pytest.mark.parametrize("name", [NAME, "deit_tiny_distilled_patch16_224.fb_in1k"])
def test_pretrained_from_hub_cache(name: str, hf_cache, tmp_path: Path) -> None:
    base, _, tag = name.partition(".")
    cfg = timm_pretrained_cfg(base, tag or None)
    torch.manual_seed(0)
    reference = timm.create_model(base, depth=1).eval()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    cached = hf_cache.add(cfg.hf_hub_id, path)

    model = exdrop.create_model(name, pretrained=True, depth=1).eval()
    # timm reads the same cache entry, which confirms the layout is the real one.
    timm_loaded = timm.create_model(name, pretrained=True, depth=1).eval()

    assert cached.is_file()
    x = torch.randn(2, *reference.pretrained_cfg["input_size"])
    assert_same_outputs(model, reference, x)
    assert_same_outputs(timm_loaded, reference, x)
    assert model.pretrained_cfg["mean"] == reference.pretrained_cfg["mean"]
    assert model.pretrained_cfg["std"] == reference.pretrained_cfg["std"]


def test_pretrained_not_cached_names_repo(hf_cache) -> None:
    cfg = timm_pretrained_cfg(NAME, None)

    with pytest.raises(FileNotFoundError) as info:
        exdrop.create_model(NAME, pretrained=True, depth=1)
    message = str(info.value)
    assert repr(cfg.hf_hub_id) in message
    assert "checkpoint_path" in message
    assert "HF_HUB_OFFLINE" in message


def test_pretrained_unknown_tag_rejected() -> None:
    with pytest.raises(ValueError, match="unknown pretrained tag 'no_such_tag'"):
        exdrop.create_model(f"{NAME}.no_such_tag", pretrained=True, depth=1)


def test_checkpoint_path_wins_over_pretrained(hf_cache, tmp_path: Path) -> None:
    # The cache is empty: a lookup there would raise.
    source = small_model(seed=3)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))

    loaded = exdrop.create_model(NAME, pretrained=True, checkpoint_path=str(path), **SMALL).eval()

    assert_same_outputs(loaded, source, small_input())


# --- from_timm ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", [
    ("deit_small_patch16_224", dict(depth=2)),
    ("deit3_small_patch16_224", dict(depth=1, img_size=64)),
    ("test_vit", {}),
    ("test_vit2", {}),
])
def test_from_timm_same_eval_outputs(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    reference = timm.create_model(name, **kwargs).eval()

    model = exdrop.from_timm(reference)

    height, width = reference.patch_embed.img_size
    x = torch.randn(2, reference.patch_embed.proj.in_channels, height, width)

    assert not model.training
    assert set(model.state_dict()) == set(reference.state_dict())
    assert_same_outputs(model, reference, x)


def test_from_timm_explicit_penalty_in_train() -> None:
    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_patch16_224", depth=2, img_size=64).train()

    model = exdrop.from_timm(reference, dropout={"mode": "explicit", "rates": 0.1})
    logits, penalty = model(torch.randn(2, 3, 64, 64), return_penalty=True)
    (logits.square().mean() + penalty.total).backward()

    assert model.training
    assert penalty.total.item() > 0.0
    assert set(penalty.terms) == set(exdrop.COMPONENTS)
    assert model.blocks[0].attn.qkv.weight.grad is not None
    # The timm model is not shared: training the copy leaves it unchanged.
    assert reference.blocks[0].attn.qkv.weight.grad is None


@pytest.mark.parametrize("name, kwargs, match", [
    ("vit_base_patch16_siglip_224", dict(depth=1), "attention pooling"),
    ("test_resnet", {}, "expects a timm VisionTransformer"),
    ("test_vit4", {}, "RmsNorm"),
])
def test_from_timm_unsupported_rejected(name: str, kwargs: dict, match: str) -> None:
    reference = timm.create_model(name, **kwargs)

    with pytest.raises(ValueError, match=match):
        exdrop.from_timm(reference)


# --- registry ----------------------------------------------------------------------------------

REQUIRED_NAMES = [
    f"vit_{size}_patch{patch}_{res}"
    for size in ("tiny", "small", "base", "large")
    for patch in (16, 32)
    for res in (224, 384)
    if not (size == "tiny" and patch == 32)  # timm has no tiny model with 32-pixel patches
] + [
    "vit_tiny_patch16_224", "vit_tiny_patch16_384",
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224", "deit_base_patch16_384",
    "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224", "deit_base_distilled_patch16_384",
    "deit3_small_patch16_224", "deit3_base_patch16_224", "deit3_large_patch16_224",
    "deit3_small_patch16_384", "deit3_base_patch16_384", "deit3_large_patch16_384",
]


def test_list_models_includes_standard_names() -> None:
    names = exdrop.list_models()

    missing = [name for name in REQUIRED_NAMES if name not in names]
    assert missing == []
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_list_models_pattern_filters() -> None:
    deit3 = exdrop.list_models("deit3_*")
    distilled = exdrop.list_models("*distilled*")

    assert deit3
    assert all(name.startswith("deit3_") for name in deit3)
    assert "deit3_small_patch16_224" in deit3
    assert set(distilled) >= {"deit_tiny_distilled_patch16_224", "deit_base_distilled_patch16_384"}
    assert all("distilled" in name for name in distilled)
    assert exdrop.list_models("no_such_model_*") == []
    assert set(exdrop.list_models("*", family="vit")) >= set(REQUIRED_NAMES)


def test_list_models_skips_unsupported_timm_names() -> None:
    names = set(exdrop.list_models())

    # 'map' attention pooling and non-ViT blocks have no exdrop implementation.
    assert "vit_base_patch16_siglip_224" not in names
    assert "vit_base_patch16_siglip_gap_224" in names


def test_unknown_model_name_suggests() -> None:
    with pytest.raises(ValueError, match="unknown model name 'vit_tiny_patch16_999'") as info:
        exdrop.create_model("vit_tiny_patch16_999")
    assert "list_models" in str(info.value)


def test_unsupported_argument_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported VisionTransformer argument block_fn"):
        exdrop.create_model(NAME, block_fn=object(), **SMALL)


def test_mismatched_checkpoint_is_rejected(tmp_path):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("vit_small_patch16_224", depth=2, num_classes=10)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="does not match this model"):
        exdrop.create_model("vit_tiny_patch16_224", depth=3, embed_dim=64, num_heads=2, checkpoint_path=str(path))
