"""AST model: parity with transformers and the original layout, weight init, lengths, penalties.

References are built locally with random weights: transformers'
``ASTForAudioClassification``, or a timm DeiT wrapped the way the original AST
code wraps it. Each is saved in its own format and loaded through exdrop's
loaders, and the float32 eval logits must agree to 1e-5.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import exdrop
from exdrop.models.ast import ASTModel, patch_grid
from exdrop.models.ast_convert import detect_format, from_transformers_pretrained, load_ast_checkpoint

TOLERANCE = 1e-5
TINY = dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)
TDIM = 100  # frames of the reference checkpoints: patch grid 12 x 9 at stride 10
NAME = "ast_tiny_patch16_224_f10_t10"


def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Perturb every parameter, so zero-initialized tokens and LayerNorm affines are tested too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def features(batch: int = 2, frames: int = TDIM, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed))


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def transformers_ast() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ASTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_length=TDIM, num_mel_bins=128, num_labels=5,
    )
    torch.manual_seed(0)
    model = transformers.ASTForAudioClassification(config)
    randomize_(model)
    return model.eval()


class OriginalAST(nn.Module):
    """The original AST module layout: a timm DeiT as ``v`` and ``mlp_head = Sequential(LayerNorm, Linear)``.

    The forward repeats the original's steps: (B, T, F) -> (B, 1, F, T), the
    strided patch convolution, class and distillation tokens, position
    embeddings, the blocks, the final norm and the mean of the first two tokens.
    """

    def __init__(self, num_classes: int = 7, input_tdim: int = TDIM) -> None:
        super().__init__()
        from timm.models.deit import VisionTransformerDistilled

        self.v = VisionTransformerDistilled(img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0)
        self.v.patch_embed.proj = nn.Conv2d(1, 64, kernel_size=16, stride=(10, 10))
        freq, time = patch_grid(128, input_tdim, 16, 10, 10)
        self.v.pos_embed = nn.Parameter(torch.zeros(1, freq * time + 2, 64))
        self.mlp_head = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1).transpose(2, 3)
        x = self.v.patch_embed.proj(x).flatten(2).transpose(1, 2)
        prefix = torch.cat([self.v.cls_token, self.v.dist_token], dim=1).expand(x.shape[0], -1, -1)
        x = torch.cat([prefix, x], dim=1) + self.v.pos_embed
        for block in self.v.blocks:
            x = block(x)
        x = self.v.norm(x)
        return self.mlp_head((x[:, 0] + x[:, 1]) / 2)


@pytest.fixture(scope="module")
def original_ast() -> OriginalAST:
    torch.manual_seed(0)
    model = OriginalAST()
    randomize_(model, seed=3)
    return model.eval()


def save_original(model: OriginalAST, path: Path) -> Path:
    # The original training script saves a DataParallel state dict: keys start with "module.".
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def test_transformers_safetensors_parity(transformers_ast: nn.Module, tmp_path: Path) -> None:
    transformers_ast.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    x = features()
    with torch.no_grad():
        expected = transformers_ast(x).logits

    model = from_transformers_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_abs_diff(model(x), expected) < TOLERANCE

    created = exdrop.create_model(
        NAME, checkpoint_path=str(tmp_path / "model.safetensors"), num_classes=5, input_tdim=TDIM, **TINY
    ).eval()
    with torch.no_grad():
        assert max_abs_diff(created(x), expected) < TOLERANCE


def test_transformers_folder_other_length(transformers_ast: nn.Module, tmp_path: Path) -> None:
    transformers_ast.save_pretrained(tmp_path)
    model = from_transformers_pretrained(tmp_path, input_tdim=60)

    # config.json gives the trained grid (12 x 9); 60 frames need 12 x 5, cut around the center.
    source = transformers_ast.audio_spectrogram_transformer.embeddings.position_embeddings.detach()
    grid = source[:, 2:].reshape(1, 12, 9, 64)
    expected = torch.cat([source[:, :2], grid[:, :, 2:7].reshape(1, 60, 64)], dim=1)
    assert model.pos_embed.shape == (1, 62, 64)
    assert torch.equal(model.pos_embed.detach(), expected)


def test_transformers_pth_parity(transformers_ast: nn.Module, tmp_path: Path) -> None:
    # state_dict() of transformers 5 has the q_proj/o_proj/mlp.fc1 names, unlike save_pretrained.
    path = tmp_path / "ast.pth"
    torch.save(transformers_ast.state_dict(), path)
    x = features()
    with torch.no_grad():
        expected = transformers_ast(x).logits

    model = ASTModel(num_classes=5, input_tdim=TDIM, norm_eps=1e-12, head_norm_eps=1e-12, **TINY).eval()
    report = load_ast_checkpoint(model, path)
    assert report.missing == []
    assert report.dropped == []
    with torch.no_grad():
        assert max_abs_diff(model(x), expected) < TOLERANCE


def test_original_layout_parity(original_ast: OriginalAST, tmp_path: Path) -> None:
    path = save_original(original_ast, tmp_path / "audioset_model.pth")
    x = features()
    with torch.no_grad():
        expected = original_ast(x)

    model = exdrop.create_model(NAME, checkpoint_path=str(path), num_classes=7, input_tdim=TDIM, **TINY).eval()
    with torch.no_grad():
        assert max_abs_diff(model(x), expected) < TOLERANCE


def test_format_detection(original_ast: OriginalAST, transformers_ast: nn.Module) -> None:
    original = {k: v for k, v in original_ast.state_dict().items()}
    assert detect_format(original) == "original"
    assert detect_format(transformers_ast.state_dict()) == "transformers"
    assert detect_format(ASTModel(input_tdim=TDIM, **TINY).state_dict()) == "exdrop"
    assert detect_format(timm.create_model("deit_tiny_patch16_224", depth=1).state_dict()) == "timm"
    with pytest.raises(ValueError, match="not an AST"):
        detect_format({"encoder.weight": torch.zeros(1)})


@pytest.mark.parametrize("input_tdim", [60, 200])
def test_checkpoint_at_other_length(original_ast: OriginalAST, tmp_path: Path, input_tdim: int) -> None:
    path = save_original(original_ast, tmp_path / "model.pth")
    model = exdrop.create_model(NAME, checkpoint_path=str(path), num_classes=7, input_tdim=input_tdim, **TINY)

    old_time = patch_grid(128, TDIM, 16, 10, 10)[1]
    new_time = patch_grid(128, input_tdim, 16, 10, 10)[1]
    grid = original_ast.v.pos_embed.detach()[:, 2:].reshape(1, 12, old_time, 64).permute(0, 3, 1, 2)
    if new_time < old_time:  # center cut, start old//2 - new//2 as in the original code
        start = old_time // 2 - new_time // 2
        expected = grid[:, :, :, start:start + new_time]
    else:
        expected = F.interpolate(grid, size=(12, new_time), mode="bilinear")
    expected = torch.cat([original_ast.v.pos_embed.detach()[:, :2], expected.flatten(2).transpose(1, 2)], dim=1)

    assert model.pos_embed.shape == (1, 2 + 12 * new_time, 64)
    assert torch.equal(model.pos_embed.detach(), expected)


def test_forward_adapts_to_input_length(original_ast: OriginalAST, tmp_path: Path) -> None:
    path = save_original(original_ast, tmp_path / "model.pth")
    trained_length = exdrop.create_model(NAME, checkpoint_path=str(path), num_classes=7, input_tdim=TDIM, **TINY).eval()
    short = exdrop.create_model(NAME, checkpoint_path=str(path), num_classes=7, input_tdim=60, **TINY).eval()
    x = features(frames=60)
    with torch.no_grad():
        assert max_abs_diff(trained_length(x), short(x)) < TOLERANCE


def _timm_tokens_grid(state: dict[str, torch.Tensor], prefix: int, side: int) -> torch.Tensor:
    return state["pos_embed"][:, prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("timm_name", ["deit_tiny_distilled_patch16_224", "vit_tiny_patch16_224"])
def test_imagenet_init_like_ast(timm_name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False, depth=2)
    randomize_(reference)
    state = reference.state_dict()
    save_file(state, str(tmp_path / "deit.safetensors"))

    model = exdrop.create_model(
        NAME, checkpoint_path=str(tmp_path / "deit.safetensors"), num_classes=3, input_tdim=TDIM, depth=2
    )
    loaded = model.state_dict()
    distilled = "dist_token" in state

    # Patch kernel: RGB summed into one channel.
    assert torch.allclose(loaded["patch_embed.proj.weight"], state["patch_embed.proj.weight"].sum(1, keepdim=True))
    # Patch positions: the 14x14 image grid cut around its center to 12 x 9.
    grid = _timm_tokens_grid(state, 2 if distilled else 1, 14)
    expected = grid[:, :, 7 - 6:7 - 6 + 12, 7 - 4:7 - 4 + 9].flatten(2).transpose(1, 2)
    assert torch.equal(loaded["pos_embed"][:, 2:], expected)
    # Prefix tokens: the distillation token is the class token for a plain ViT.
    expected_dist = state["dist_token"] if distilled else state["cls_token"]
    assert torch.equal(loaded["dist_token"], expected_dist)
    assert torch.equal(loaded["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.equal(loaded["norm.weight"], state["norm.weight"])


def test_pretrained_from_hub_cache(hf_cache, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    hf_cache.add("timm/deit_tiny_distilled_patch16_224.fb_in1k", tmp_path / "model.safetensors")

    model = exdrop.create_model(NAME, pretrained=True, num_classes=4, input_tdim=64)
    assert torch.equal(model.blocks[11].mlp.fc2.weight, reference.blocks[11].mlp.fc2.weight)
    assert model.pos_embed.shape == (1, 2 + 12 * 5, 192)


def test_registered_names_and_strides() -> None:
    names = exdrop.list_models("ast_*")
    for size in ("tiny_patch16_224", "small_patch16_224", "base_patch16_224", "base_patch16_384"):
        assert f"ast_{size}_f10_t10" in names
    model = exdrop.create_model("ast_tiny_patch16_224_f10_t10", num_classes=6, input_tdim=128, depth=1)
    assert model.grid_size == (12, 12)
    assert model.pos_embed.shape == (1, 146, 192)
    assert model(features(frames=128)).shape == (2, 6)

    strided = exdrop.create_model(NAME, input_tdim=128, fstride=16, tstride=12, depth=1)
    assert strided.grid_size == (8, 10)
    assert strided.patch_embed.proj.stride == (16, 12)


def test_invalid_inputs_raise() -> None:
    model = ASTModel(num_classes=3, input_tdim=TDIM, **TINY)
    with pytest.raises(ValueError, match="mel bins"):
        model(torch.zeros(1, TDIM, 64))
    with pytest.raises(ValueError, match="time_frames, mel_bins"):
        model(torch.zeros(1, 1, TDIM, 128))
    with pytest.raises(ValueError, match="smaller than one"):
        model(torch.zeros(1, 8, 128))
    with pytest.raises(ValueError, match="input_tdim"):
        exdrop.create_model(NAME, img_size=224)
    with pytest.raises(ValueError, match="unsupported ASTModel argument"):
        ASTModel(img_size=224)


def test_explicit_penalty_train_and_eval() -> None:
    rates = {c: 0.1 for c in exdrop.COMPONENTS}
    torch.manual_seed(0)
    model = exdrop.create_model(NAME, num_classes=3, input_tdim=TDIM, dropout={"mode": "explicit", "rates": rates}, **TINY)
    x = features()

    model.train()
    logits, penalty = model(x, return_penalty=True)
    assert penalty.total.item() > 0.0
    assert set(penalty.terms) == set(exdrop.COMPONENTS)
    (logits.sum() + penalty.total).backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        eval_logits, eval_penalty = model(x, return_penalty=True)
        model.set_dropout("off")
        plain = model(x)
    assert float(eval_penalty.total) == 0.0
    assert torch.equal(eval_logits, plain)


def test_transformers_folder_without_config_fails(transformers_ast: nn.Module, tmp_path: Path) -> None:
    transformers_ast.save_pretrained(tmp_path / "saved")
    weights = tmp_path / "bare" / "model.safetensors"
    weights.parent.mkdir()
    shutil.copy(tmp_path / "saved" / "model.safetensors", weights)
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_transformers_pretrained(weights)
