"""Resume, checkpoints, data parallelism, accumulation and the other training options."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import exdrop.train.checkpoint as checkpoint_module
import exdrop.train.loop as loop
from exdrop.train import ConfigError, train
from exdrop.train.checkpoint import find_resume_checkpoint, list_checkpoints, load_checkpoint
from exdrop.train.schedules import coefficient_factors

REPO = Path(__file__).resolve().parents[1]


def config(tmp_path: Path, name: str, **train_options) -> dict:
    """A tiny explicit-mode run on generated shapes, deterministic for a seed."""
    return {
        "model": {
            "name": "vit_tiny_patch16_224",
            "kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0},
        },
        "dropout": {"mode": "explicit", "rates": 0.1},
        "data": {
            "kind": "synthetic_shapes", "num_train": 96, "num_val": 24, "img_size": 16,
            "batch_size": 16, "num_workers": 0,
        },
        "train": {"epochs": 3, "lr": 2e-3, "warmup_epochs": 1, "plots": False, "tensorboard": False,
                  **train_options},
        "output": {"dir": str(tmp_path), "name": name},
    }


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0.0, atol=atol, msg=key)


def interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    original = loop.Trainer._train_epoch

    def crash(self, current):
        if current == epoch:
            raise KeyboardInterrupt("simulated kill")
        return original(self, current)

    monkeypatch.setattr(loop.Trainer, "_train_epoch", crash)


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    full = train(config(tmp_path, "full", ema=True))

    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            train(config(tmp_path, "split", ema=True))
    split_dir = tmp_path / "split"
    assert [p.name for p in list_checkpoints(split_dir / "checkpoints")] == ["epoch-0001", "epoch-0002"]

    resumed = train(config(tmp_path, "split", ema=True), resume=split_dir)
    assert resumed.run_dir == split_dir
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert_same_weights(weights(full.run_dir), weights(split_dir))
    assert_same_weights(load_file(full.run_dir / "model_ema.safetensors"), load_file(split_dir / "model_ema.safetensors"))
    assert resumed.final["top1"] == full.final["top1"]


def test_checkpoint_contents_and_keep_last(tmp_path):
    result = train(config(tmp_path, "keep", epochs=4, keep_checkpoints=2))
    folder = result.run_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(folder)] == ["epoch-0003", "epoch-0004"]
    assert (folder / "best" / "model.safetensors").is_file()

    saved = load_checkpoint(folder / "epoch-0004")
    state = saved["state"]
    assert state["epoch"] == 4
    assert state["step"] == 4 * (96 // 16)
    assert {"optimizer", "scheduler", "rng", "best"} <= set(state)
    assert "train:" in saved["config_text"]
    assert_same_weights(saved["model"], weights(result.run_dir))
    best_epoch = max(result.history, key=lambda r: r["top1"])["epoch"]
    best = load_checkpoint(folder / "best")["state"]
    assert best["epoch"] == best_epoch


def test_crash_while_writing_checkpoint_keeps_previous(tmp_path, monkeypatch):
    from safetensors.torch import save_file as real_save

    calls = {"n": 0}

    def failing_save(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half written
            Path(path).write_bytes(b"partial")
            raise OSError("disk full")
        return real_save(tensors, path, *args, **kwargs)

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(config(tmp_path, "crash", keep_checkpoints=3))

    folder = tmp_path / "crash" / "checkpoints"
    assert (folder / ".epoch-0002.tmp").exists()
    latest = find_resume_checkpoint(tmp_path / "crash")
    assert latest.name == "epoch-0001"
    assert load_checkpoint(latest)["state"]["epoch"] == 1

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    resumed = train(config(tmp_path, "crash", keep_checkpoints=3), resume=tmp_path / "crash")
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [p.name for p in list_checkpoints(folder)] == ["epoch-0001", "epoch-0002", "epoch-0003"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = loop.task_loss

    def nan_in_epoch_two(logits, targets, multilabel, smoothing):
        loss = original(logits, targets, multilabel, smoothing)
        if torch.is_grad_enabled() and nan_in_epoch_two.epoch == 2:
            return loss * float("nan")
        return loss

    nan_in_epoch_two.epoch = 0
    real_epoch = loop.Trainer._train_epoch

    def track(self, epoch):
        nan_in_epoch_two.epoch = epoch
        return real_epoch(self, epoch)

    monkeypatch.setattr(loop, "task_loss", nan_in_epoch_two)
    monkeypatch.setattr(loop.Trainer, "_train_epoch", track)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 6: \{'task': nan, 'total': .*'q': .*'ffn_out'"):
        train(config(tmp_path, "nan"))
    latest = find_resume_checkpoint(tmp_path / "nan")
    assert latest.name == "epoch-0001"
    assert load_checkpoint(latest)["state"]["step"] == 6


def test_grad_accumulation_matches_large_batch(tmp_path):
    big = train(config(tmp_path, "big", epochs=1, warmup_epochs=0, opt="sgd", lr=0.05))
    cfg = config(tmp_path, "accum", epochs=1, warmup_epochs=0, grad_accum=2, opt="sgd", lr=0.05)
    cfg["data"]["batch_size"] = 8
    accum = train(cfg)
    assert accum.history[0]["step"] == big.history[0]["step"]
    assert_same_weights(weights(big.run_dir), weights(accum.run_dir), atol=1e-5)


def test_two_process_gloo_equals_single_process(tmp_path):
    """torchrun with 2 CPU processes and half the batch each ends with the single-process weights."""
    common = [
        "--config", str(REPO / "configs" / "demo.yaml"), "--no-progress",
        "model.kwargs.depth=1", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2",
        "data.num_train=64", "data.num_val=32", "data.img_size=16", "data.batch_size=16",
        "data.scale=[1.0, 1.0]", "data.ratio=[1.0, 1.0]", "data.hflip=0.0",
        "train.epochs=2", "train.plots=false", "train.tensorboard=false", f"output.dir={tmp_path}",
    ]
    script = str(REPO / "scripts" / "finetune.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, script, *common, "output.name=single"], check=True, env=env,
                   capture_output=True, timeout=300)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
         *common, "output.name=ddp"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "x2" in ddp.stdout  # the run log names 2 processes
    assert_same_weights(weights(tmp_path / "single"), weights(tmp_path / "ddp"), atol=1e-5)
    single_metrics = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    ddp_metrics = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(single_metrics) == len(ddp_metrics) == 2


def test_options_and_reports(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = config(tmp_path, "options", epochs=2, ema=True, layer_decay=0.75, mixup=0.8, cutmix=1.0,
                 label_smoothing=0.1, grad_clip=1.0, coefficient_warmup={"q": 2, "attn": 1},
                 coefficient_warmup_shape="cosine", plots=True, tensorboard=True)
    result = train(cfg)
    run = result.run_dir
    for name in ("metrics.csv", "curves.png", "penalty_components.png", "penalty_layers.png", "model_ema.safetensors"):
        assert (run / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_penalty.q", "train_penalty.ffn_out", "top1", "ema_top1"} <= set(header)
    assert "ema_top1" in result.final


def test_coefficient_warmup_factors():
    linear = coefficient_factors({"q": 2.0}, "linear", 0.5)
    assert linear == {"q": 0.25}
    cosine = coefficient_factors(4.0, "cosine", 2.0)
    assert cosine["ffn"] == pytest.approx(0.5)
    assert coefficient_factors(1.0, "linear", 3.0)["attn"] == 1.0


def test_coefficient_warmup_scales_penalty(tmp_path):
    plain = train(config(tmp_path, "plain", epochs=1, max_steps=1))
    warm = train(config(tmp_path, "warm", epochs=1, max_steps=1, coefficient_warmup={"q": 10}))
    # Step 0 of a 10-epoch warmup: q is switched off, the other terms are unchanged.
    assert warm.history[0]["train_penalty"]["q"] == 0.0
    assert plain.history[0]["train_penalty"]["q"] > 0.0
    assert warm.history[0]["train_penalty"]["k"] == pytest.approx(plain.history[0]["train_penalty"]["k"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"coefficient_warmup": {"qq": 1}}, "unknown component 'qq' in train.coefficient_warmup"),
        ({"coefficient_warmup_shape": "step"}, "coefficient_warmup_shape='step' is invalid"),
        ({"grad_accum": 0}, "train.grad_accum=0 must be >= 1"),
        ({"ema": "yes"}, "train.ema must be of type bool"),
    ],
)
def test_training_option_errors(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        train(config(tmp_path, "bad", **options))


def test_resume_without_checkpoint_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint under"):
        train(config(tmp_path, "x"), resume=tmp_path / "empty")


def test_new_run_never_reuses_checkpointed_folder(tmp_path):
    first = train(config(tmp_path, "same", epochs=1))
    second = train(config(tmp_path, "same", epochs=1, seed=1))
    assert first.run_dir.name == "same"
    assert second.run_dir.name == "same-1"
    assert [p.name for p in list_checkpoints(first.run_dir / "checkpoints")] == ["epoch-0001"]
