"""Video models: transformers parity, image-ViT inflation, resampling and explicit terms."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import save_file

import exdrop
from exdrop.models.video import DividedSpaceTimeTransformer, VideoVisionTransformer
from exdrop.models.video_convert import load_transformers_video, to_model_layout

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, num_frames=4)
# The same architecture as exdrop constructor arguments, for checkpoints without config.json.
TINY_ARGS = dict(img_size=32, num_frames=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)

REFERENCES = {
    "videomae": (
        "videomae_tiny_patch16_16x224",
        lambda: transformers.VideoMAEForVideoClassification(
            transformers.VideoMAEConfig(**TINY, patch_size=16, tubelet_size=2, num_labels=5)
        ),
    ),
    "timesformer": (
        "timesformer_tiny_patch16_8x224",
        lambda: transformers.TimesformerForVideoClassification(
            transformers.TimesformerConfig(**TINY, patch_size=16, num_labels=5)
        ),
    ),
    "vivit": (
        "vivit_tiny_patch16_32x224",
        lambda: transformers.VivitForVideoClassification(
            transformers.VivitConfig(**TINY, tubelet_size=[2, 16, 16], num_labels=5)
        ),
    ),
}


def _reference(kind: str) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    name, build = REFERENCES[kind]
    model = build().eval()
    with torch.no_grad():  # leave no zero-initialized parameter that could hide a wrong mapping
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return name, model


def _max_diff(reference: torch.nn.Module, model: torch.nn.Module) -> tuple[float, torch.Tensor]:
    video = torch.randn(3, 4, 3, 32, 32)  # transformers layout (B, T, C, H, W)
    with torch.no_grad():
        expected = reference(pixel_values=video).logits
        actual = model.eval()(to_model_layout(video, "BTCHW"))
    return float((actual - expected).abs().max()), expected


@pytest.mark.parametrize("kind", sorted(REFERENCES))
def test_transformers_parity_safetensors(kind: str, tmp_path) -> None:
    name, reference = _reference(kind)
    reference.save_pretrained(tmp_path)
    model = exdrop.create_model(name, checkpoint_path=str(tmp_path / "model.safetensors"))
    diff, expected = _max_diff(reference, model)
    assert expected.std() > 1e-3  # logits carry signal, so equality is not trivial
    assert diff < 1e-5


@pytest.mark.parametrize("kind", sorted(REFERENCES))
def test_transformers_parity_pth_without_config(kind: str, tmp_path) -> None:
    name, reference = _reference(kind)
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    model = exdrop.create_model(name, checkpoint_path=str(tmp_path / "weights.pth"), **TINY_ARGS)
    assert model.num_classes == 5  # taken from the checkpoint's classifier
    diff, _ = _max_diff(reference, model)
    assert diff < 1e-5


def test_load_transformers_folder(tmp_path) -> None:
    _, reference = _reference("timesformer")
    reference.save_pretrained(tmp_path)
    model = load_transformers_video(tmp_path)
    assert isinstance(model, DividedSpaceTimeTransformer)
    diff, _ = _max_diff(reference, model)
    assert diff < 1e-5


def test_checkpoint_of_other_architecture_rejected(tmp_path) -> None:
    _, reference = _reference("timesformer")
    reference.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not fit"):
        exdrop.create_model("videomae_tiny_patch16_16x224", checkpoint_path=str(tmp_path / "model.safetensors"))


def _timm_image_vit(tmp_path, **kwargs):
    import timm

    torch.manual_seed(1)
    image = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=4, depth=2, **kwargs
    ).eval()
    with torch.no_grad():
        for parameter in image.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    path = tmp_path / "image_vit.safetensors"
    save_file(image.state_dict(), str(path))
    return image, path


@pytest.mark.parametrize("num_frames", [1, 4])
def test_divided_inflation_matches_image_model(num_frames: int, tmp_path) -> None:
    image, path = _timm_image_vit(tmp_path)
    model = exdrop.create_model(
        "timesformer_tiny_patch16_8x224", checkpoint_path=str(path), num_frames=num_frames, img_size=32,
        depth=2, num_classes=4,
    ).eval()
    frame = torch.randn(2, 3, 32, 32)
    video = frame.unsqueeze(2).repeat(1, 1, num_frames, 1, 1)  # a still clip
    with torch.no_grad():
        expected = image(frame)
        actual = model(video)
    assert float((actual - expected).abs().max()) < 1e-5


def test_divided_inflation_first_block_is_per_frame(tmp_path) -> None:
    image, path = _timm_image_vit(tmp_path)
    model = exdrop.create_model(
        "timesformer_tiny_patch16_8x224", checkpoint_path=str(path), num_frames=3, img_size=32, depth=2, num_classes=4,
    ).eval()
    video = torch.randn(2, 3, 3, 32, 32)  # different frames
    with torch.no_grad():
        frames = video.permute(0, 2, 1, 3, 4).reshape(6, 3, 32, 32)
        tokens = image._pos_embed(image.patch_embed(frames))
        per_frame = image.blocks[0](tokens)[:, 1:]  # (B * T, P, D) patch tokens after block 0
        x = model.patch_embed(frames)
        x = torch.cat([model.cls_token.expand(6, -1, -1), x], dim=1) + model.pos_embed
        x = torch.cat([x[:2, :1], x[:, 1:].reshape(2, -1, x.shape[-1])], dim=1)
        video_tokens, _ = model.blocks[0](x, 3)
    assert torch.allclose(video_tokens[:, 1:].reshape(6, -1, x.shape[-1]), per_frame, atol=1e-5)


@pytest.mark.parametrize("inflation", ["center", "average"])
def test_joint_inflation_still_clip(inflation: str, tmp_path) -> None:
    # Exact for models without a class token: T' copies of each patch token split
    # the attention weight the single image token had.
    image, path = _timm_image_vit(tmp_path, class_token=False, global_pool="avg")
    model = exdrop.create_model(
        "videomae_tiny_patch16_16x224", checkpoint_path=str(path), num_frames=4, img_size=32, depth=2,
        num_classes=4, pos_embed="learn", norm_eps=1e-6, fc_norm_eps=1e-6, inflation=inflation,
    ).eval()
    weight = model.patch_embed.proj.weight
    if inflation == "center":
        assert torch.count_nonzero(weight[:, :, 0]) == 0
    else:
        assert torch.allclose(weight[:, :, 0], weight[:, :, 1])
    frame = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = image(frame)
        actual = model(frame.unsqueeze(2).repeat(1, 1, 4, 1, 1))
    assert float((actual - expected).abs().max()) < 1e-5


def test_joint_inflation_with_class_token(tmp_path) -> None:
    image, path = _timm_image_vit(tmp_path)
    model = exdrop.create_model(
        "vivit_tiny_patch16_32x224", checkpoint_path=str(path), num_frames=4, img_size=32, depth=2, num_classes=4,
    )
    assert torch.equal(model.cls_token, image.cls_token)
    assert torch.equal(model.pos_embed[:, 1:5], image.pos_embed[:, 1:])  # spatial grid, first time step
    assert torch.equal(model.pos_embed[:, 5:9], image.pos_embed[:, 1:])  # and again for the second
    assert torch.equal(model.norm.weight, image.norm.weight)


def test_pretrained_inflates_from_hub_cache(hf_cache, tmp_path) -> None:
    import timm

    torch.manual_seed(2)
    image = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit_tiny.safetensors"
    save_file(image.state_dict(), str(path))
    cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224")
    hf_cache.add(cfg.hf_hub_id, path, cfg.hf_hub_filename or "model.safetensors")

    model = exdrop.create_model("timesformer_tiny_patch16_8x224", pretrained=True, num_frames=2, img_size=32, num_classes=3)
    assert torch.equal(model.blocks[5].attn.qkv.weight, image.blocks[5].attn.qkv.weight)
    assert torch.equal(model.blocks[5].temporal_attn.qkv.weight, image.blocks[5].attn.qkv.weight)
    assert model.pos_embed.shape == (1, 5, 192)  # 14x14 grid resampled to 2x2, plus the class token
    assert model(torch.randn(1, 3, 2, 32, 32)).shape == (1, 3)


def _small_joint(tmp_path):
    torch.manual_seed(3)
    small = VideoVisionTransformer(img_size=32, num_frames=4, tubelet_size=2, patch_size=16, embed_dim=32, depth=1,
                                   num_heads=2, class_token=True, pos_embed="learn", global_pool="token", num_classes=2)
    with torch.no_grad():  # the same spatial grid at both temporal positions
        small.pos_embed[:, 1:] = torch.randn(1, 4, 32).repeat(1, 2, 1)
    path = tmp_path / "joint.safetensors"
    save_file(small.state_dict(), str(path))
    return small, path


def test_joint_pos_embed_resampled_in_time(tmp_path) -> None:
    small, path = _small_joint(tmp_path)
    model = exdrop.create_model(
        "vivit_tiny_patch16_32x224", checkpoint_path=str(path), num_frames=8, img_size=32, embed_dim=32,
        depth=1, num_heads=2,
    )
    assert model.pos_embed.shape == (1, 1 + 4 * 2 * 2, 32)
    assert torch.equal(model.pos_embed[:, 0], small.pos_embed[:, 0])
    for t in range(4):  # linear interpolation keeps a constant-in-time embedding constant
        assert torch.allclose(model.pos_embed[:, 1 + 4 * t:5 + 4 * t], small.pos_embed[:, 1:5], atol=1e-6)
    assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 2)


def test_joint_pos_embed_resampled_in_space(tmp_path) -> None:
    small, path = _small_joint(tmp_path)
    model = exdrop.create_model(
        "vivit_tiny_patch16_32x224", checkpoint_path=str(path), num_frames=4, img_size=48, embed_dim=32,
        depth=1, num_heads=2,
    )
    assert model.pos_embed.shape == (1, 1 + 2 * 3 * 3, 32)
    assert torch.allclose(model.pos_embed[:, 1:10], model.pos_embed[:, 10:19])
    assert model(torch.randn(1, 3, 4, 48, 48)).shape == (1, 2)


def test_joint_pos_embed_ambiguous_grid_rejected(tmp_path) -> None:
    _, path = _small_joint(tmp_path)
    with pytest.raises(ValueError, match="config.json"):
        exdrop.create_model(
            "vivit_tiny_patch16_32x224", checkpoint_path=str(path), num_frames=8, img_size=48, embed_dim=32,
            depth=1, num_heads=2,
        )


def test_divided_time_embed_resampled(tmp_path) -> None:
    torch.manual_seed(4)
    small = DividedSpaceTimeTransformer(img_size=32, num_frames=4, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                        num_classes=2)
    with torch.no_grad():
        small.time_embed.copy_(torch.ones(1, 4, 32) * 0.5)
    torch.save(small.state_dict(), tmp_path / "divided.pth")
    model = exdrop.create_model(
        "timesformer_tiny_patch16_8x224", checkpoint_path=str(tmp_path / "divided.pth"),
        num_frames=6, img_size=48, embed_dim=32, depth=1, num_heads=2,
    )
    assert model.time_embed.shape == (1, 6, 32)
    assert torch.allclose(model.time_embed, torch.full((1, 6, 32), 0.5))
    assert model.pos_embed.shape == (1, 10, 32)
    assert model(torch.randn(1, 3, 6, 48, 48)).shape == (1, 2)


def test_wrong_input_size_names_fix() -> None:
    model = exdrop.create_model("videomae_tiny_patch16_16x224", num_frames=4, img_size=32, depth=1)
    with pytest.raises(ValueError, match="num_frames="):
        model(torch.randn(1, 3, 8, 32, 32))


RATES = {c: 0.2 for c in exdrop.COMPONENTS}


def test_divided_terms_named_by_attention() -> None:
    model = exdrop.create_model(
        "timesformer_tiny_patch16_8x224", num_frames=4, img_size=32, depth=2, num_classes=3,
        dropout={"mode": "explicit", "rates": RATES},
    )
    for block in model.blocks:  # non-zero temporal_fc so that temporal.proj is not trivially 0
        torch.nn.init.normal_(block.temporal_fc.weight, std=0.05)
    video = torch.randn(2, 3, 4, 32, 32)

    model.train()
    logits, penalty = model(video, return_penalty=True)
    expected = {f"{prefix}.{c}" for prefix in ("temporal", "spatial") for c in ("q", "k", "v", "attn", "proj")}
    expected |= {"ffn", "ffn_out"}
    assert set(penalty.terms) == expected
    for name, value in penalty.terms.items():
        assert value > 0, name
    assert len(penalty.per_block) == 2
    penalty.total.backward()
    assert model.blocks[0].temporal_fc.weight.grad is not None

    model.eval()
    eval_logits, eval_penalty = model(video, return_penalty=True)
    assert eval_penalty.terms == {}
    assert float(eval_penalty.total) == 0.0
    assert torch.allclose(eval_logits, model(video))


def test_divided_temporal_coefficient_applied() -> None:
    coefficients = {c: 1.0 for c in exdrop.COMPONENTS}
    coefficients["q"] = 3.0
    model = exdrop.create_model(
        "timesformer_tiny_patch16_8x224", num_frames=2, img_size=32, depth=1, num_classes=3,
        dropout={"mode": "explicit", "rates": RATES, "coefficients": coefficients},
    ).train()
    _, penalty = model(torch.randn(1, 3, 2, 32, 32), return_penalty=True)
    raw = penalty.raw_per_block[0]
    assert torch.allclose(penalty.terms["temporal.q"], 3.0 * raw["temporal.q"])
    assert torch.allclose(penalty.terms["spatial.k"], raw["spatial.k"])


def test_joint_terms_and_implicit_mode() -> None:
    model = exdrop.create_model(
        "videomae_tiny_patch16_16x224", num_frames=4, img_size=32, depth=1, num_classes=3,
        dropout={"mode": "explicit", "rates": RATES},
    ).train()
    video = torch.randn(2, 3, 4, 32, 32)
    _, penalty = model(video, return_penalty=True)
    assert set(penalty.terms) == set(exdrop.COMPONENTS)
    model.set_dropout({"mode": "implicit", "rates": RATES})
    torch.manual_seed(0)
    first = model(video)
    second = model(video)
    assert not torch.allclose(first, second)  # masks are random in implicit mode


def test_video_names_registered() -> None:
    names = exdrop.list_models(family="video")
    for name in ("videomae_base_patch16_16x224", "vivit_base_patch16_32x224", "timesformer_base_patch16_8x224"):
        assert name in names
    for size in ("tiny", "small", "base"):
        assert f"timesformer_{size}_patch16_8x224" in names


def test_to_model_layout() -> None:
    video = torch.randn(2, 5, 7, 8, 3)  # (B, T, H, W, C)
    out = to_model_layout(video, "BTHWC")
    assert out.shape == (2, 3, 5, 7, 8)
    assert torch.equal(out[1, 2, 4], video[1, 4, :, :, 2])


def test_fresh_divided_model_sees_frame_order():
    """A randomly initialized model must not be invariant to playback direction."""
    torch.manual_seed(0)
    model = exdrop.create_model(
        "timesformer_tiny_patch16_8x224", embed_dim=32, depth=2, num_heads=2, img_size=32, num_frames=4, num_classes=2,
    ).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        forward, backward = model(clip), model(clip.flip(2))
    assert (forward - backward).abs().max() > 1e-5
