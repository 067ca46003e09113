"""Fine-tuning: configs, datasets, the run folder and the scripts, on generated and real images."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import exdrop
from exdrop.data.images import read_cifar
from exdrop.train import ConfigError, load_config, resolve_config, train
from exdrop.train.io import atomic_write, write_text

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10"

TINY_MODEL = {
    "name": "vit_tiny_patch16_224",
    "kwargs": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0},
}


def tiny_config(tmp_path: Path, data: dict, **train_overrides) -> dict:
    return {
        "model": dict(TINY_MODEL),
        "dropout": {"mode": "explicit", "rates": 0.1},
        "data": {"batch_size": 16, "num_workers": 0, **data},
        "train": {"epochs": 1, "lr": 1e-3, "warmup_epochs": 0, **train_overrides},
        "output": {"dir": str(tmp_path / "runs"), "name": "run"},
    }


def write_image_folder(root: Path, per_class: int = 4, size: int = 16) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                pixels[..., label] = 255
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_demo_config_end_to_end(tmp_path):
    """The README's first command: the built-in demo learns well above chance (1/6)."""
    raw = load_config(REPO / "configs" / "demo.yaml", [f"output.dir={tmp_path}"])
    result = train(raw)

    assert result.final["top1"] > 60.0
    run = result.run_dir
    assert (run / "config.yaml").is_file()
    assert (run / "model.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == raw["train"]["epochs"]
    penalty = records[-1]["train_penalty"]
    assert set(exdrop.COMPONENTS) <= set(penalty)
    assert all(penalty[c] > 0 for c in exdrop.COMPONENTS)
    assert len(records[-1]["train_penalty_per_block"]) == raw["model"]["kwargs"]["depth"]
    assert records[-1]["train_samples_per_s"] > 0

    # The saved weights reproduce the final evaluation through create_model.
    info = json.loads((run / "run_info.json").read_text())
    model = exdrop.create_model(
        raw["model"]["name"], num_classes=info["num_classes"],
        checkpoint_path=str(run / "model.safetensors"), **info["model_kwargs"],
    )
    state = load_file(run / "model.safetensors")
    assert set(state) == set(model.state_dict())


@pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/data/cifar10 is missing")
def test_cifar10_short_run_beats_chance(tmp_path):
    """A few hundred real CIFAR-10 JPEGs, three epochs: top-1 must clear chance (10%)."""
    cfg = load_config(REPO / "configs" / "cifar10_vit.yaml", [
        f"output.dir={tmp_path}", "output.name=cifar", "data.max_per_class=60",
        "model.kwargs.depth=2", "model.kwargs.embed_dim=64", "model.kwargs.num_heads=2",
        "train.epochs=4", "train.warmup_epochs=0", "train.lr=2e-3",
    ])
    result = train(cfg)
    assert result.final["top1"] > 17.0


def test_image_folder_training_and_predict_script(tmp_path):
    write_image_folder(tmp_path / "data")
    cfg = tiny_config(tmp_path, {"kind": "image_folder", "root": str(tmp_path / "data"), "img_size": 16})
    result = train(cfg)
    assert set(result.final) == {"epoch", "step", "loss", "top1", "top5"}

    image = next((tmp_path / "data" / "val" / "dog").glob("*.png"))
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "predict.py"), "--run", str(result.run_dir), "--topk", "2", str(image)],
        capture_output=True, text=True, check=True,
    )
    line = out.stdout.strip()
    assert line.startswith(str(image))
    assert "cat" in line
    assert "dog" in line


def test_unreadable_image_named_by_path(tmp_path):
    write_image_folder(tmp_path / "data")
    bad = tmp_path / "data" / "train" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cfg = tiny_config(tmp_path, {"kind": "image_folder", "root": str(tmp_path / "data"), "img_size": 16})
    with pytest.raises(RuntimeError, match="broken.png"):
        train(cfg)


def test_cifar_pickle_layout(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 12), ("data_batch_2", 8), ("test_batch", 6)]:
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)

    train_x, train_y, test_x, test_y, names = read_cifar(root)
    assert train_x.shape == (20, 32, 32, 3)
    assert test_x.shape == (6, 32, 32, 3)
    assert train_y[:3] == [0, 1, 2]
    assert names[3] == "c3"
    # Channel-first rows become channel-last pixels: the first 1024 bytes are red.
    with open(root / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    assert np.array_equal(train_x[0, :, :, 0].reshape(-1), raw[:1024])

    result = train(tiny_config(tmp_path, {"kind": "cifar_pickle", "root": str(root), "img_size": 32}))
    assert 0.0 <= result.final["top1"] <= 100.0

    (root / "test_batch").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="test_batch"):
        read_cifar(root)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train": {"epochz": 3}}, "unknown config key train.epochz"),
        ({"train": {"epochs": "three"}}, "train.epochs must be of type int"),
        ({"train": {"lr": True}}, "train.lr must be of type float"),
        ({"dropout": {"mode": "explicit", "rates": {"qq": 0.1}}}, "unknown dropout component 'qq'"),
        ({"dropout": {"mode": "explicit", "rates": {"q": 1.0}}}, r"'q' = 1.0 is outside the allowed range \[0, 1\)"),
        ({"dropout": {"mode": "sometimes"}}, "unknown dropout mode 'sometimes'"),
        ({"model": {"name": "vit_nonexistent"}}, "unknown model name 'vit_nonexistent'"),
        ({"data": {"kind": "image_folder", "root": "/nonexistent/folder"}}, "data.root: path /nonexistent/folder does not exist"),
        ({"data": {"kind": "no_such_kind"}}, "unknown data.kind 'no_such_kind'"),
        ({"data": {"kind": "synthetic_shapes", "rooot": "x"}}, "unknown config key data.rooot"),
        ({"extra": {}}, "unknown config section 'extra'"),
    ],
)
def test_config_errors_before_data_is_read(tmp_path, monkeypatch, change, message):
    import exdrop.data.images as images

    def fail(*args, **kwargs):
        raise AssertionError("data was read before the config was validated")

    monkeypatch.setattr(images, "generate_shapes", fail)
    monkeypatch.setattr(images, "scan_image_folder", fail)
    cfg = tiny_config(tmp_path, {"kind": "synthetic_shapes"})
    for section, values in change.items():
        if section in ("data", "model") and ("kind" in values or "name" in values):
            cfg[section] = {**({"batch_size": 16} if section == "data" else {}), **values}
        else:
            cfg[section] = {**cfg.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "deit_tiny_patch16_224"}, "data": {"kind": "synthetic_shapes"}}))
    raw = load_config(path, ["train.lr=3e-4", "train.bf16=true", "model.kwargs.depth=2", "data.scale=[0.5, 1.0]"])
    cfg = resolve_config(raw)
    assert cfg["train"]["lr"] == pytest.approx(3e-4)
    assert cfg["train"]["bf16"] is True
    assert cfg["model"]["kwargs"] == {"depth": 2}
    assert cfg["data"]["scale"] == [0.5, 1.0]
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_finetune_script_reports_config_error(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "finetune.py"), "--config", str(REPO / "configs" / "demo.yaml"),
         "--no-progress", "train.epochz=1", f"output.dir={tmp_path}"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "unknown config key train.epochz" in out.stderr
    assert not (tmp_path / "demo").exists()


def test_bf16_training_step_runs(tmp_path):
    cfg = tiny_config(tmp_path, {"kind": "synthetic_shapes", "num_train": 32, "num_val": 12, "img_size": 16},
                      bf16=True, max_steps=2)
    result = train(cfg)
    assert result.history[0]["step"] == 2
    assert result.history[0]["train_penalty"]["total"] > 0


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "weights.bin"
    write_text(target, "old")

    def crash(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_non_finite_loss_names_step_and_parts(tmp_path, monkeypatch):
    import exdrop.train.loop as loop

    monkeypatch.setattr(loop, "task_loss", lambda *a, **k: torch.tensor(float("nan")))
    cfg = tiny_config(tmp_path, {"kind": "synthetic_shapes", "num_train": 32, "num_val": 12, "img_size": 16})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 0: .*'task': nan.*'q'"):
        train(cfg)


def test_unquoted_off_mode_from_yaml(tmp_path):
    raw = load_config(REPO / "configs" / "demo.yaml", ["dropout.mode=off"])
    assert raw["dropout"]["mode"] is False  # PyYAML's reading of an unquoted off
    assert resolve_config(raw)["dropout"]["mode"] == "off"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_resolve(path, monkeypatch):
    monkeypatch.chdir(REPO)  # data roots in the configs are relative to the repository root
    cfg = resolve_config(load_config(path))
    assert cfg["model"]["name"] in exdrop.list_models()


def test_video_config_trains_on_real_clips(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = [
        "train.max_steps=2", "train.epochs=1", "train.plots=false", "train.tensorboard=false",
        "data.train_clips_per_video=2", "data.val_clips_per_video=1", "data.num_workers=0", "data.batch_size=4",
        "model.kwargs.depth=1", f"output.dir={tmp_path}",
    ]
    cfg = resolve_config(load_config(REPO / "configs" / "video_direction_tiny.yaml", overrides))
    assert cfg["data"]["task"] == "cut"
    result = train(cfg)
    record = result.history[0]
    assert record["step"] == 2
    assert record["train_penalty"]["total"] > 0
    # Five videos split in time, one evaluation clip each, shown as one shot and spliced: ten clips.
    assert record["top1"] in {10.0 * k for k in range(11)}
