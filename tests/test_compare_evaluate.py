"""scripts/compare.py and scripts/evaluate.py on tiny runs."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from exdrop.train import train
from exdrop.train.compare import Setting, compare, summarize, sweep_settings
from exdrop.train.evaluation import confusion_matrix

REPO = Path(__file__).resolve().parents[1]


def base_config() -> dict:
    return {
        "model": {
            "name": "vit_tiny_patch16_224",
            "kwargs": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0},
        },
        "dropout": {"mode": "explicit", "rates": {"q": 0.1, "ffn": 0.2}},
        "data": {"kind": "synthetic_shapes", "num_train": 64, "num_val": 24, "img_size": 16,
                 "batch_size": 16, "num_workers": 0},
        "train": {"epochs": 2, "warmup_epochs": 0, "plots": False, "tensorboard": False},
    }


def test_compare_runs_modes_and_resumes(tmp_path, monkeypatch):
    rows = compare(base_config(), tmp_path, seeds=(0, 1))
    assert [r["setting"] for r in rows] == ["off", "implicit", "explicit"]
    assert all(r["seeds"] == 2 for r in rows)
    assert all(r["top1_std"] >= 0 for r in rows)
    for name in ("comparison.md", "comparison.csv", "comparison.png"):
        assert (tmp_path / name).is_file()
    table = (tmp_path / "comparison.md").read_text()
    assert "| explicit | 2 |" in table

    done = json.loads((tmp_path / "runs" / "explicit-seed1" / "done.json").read_text())
    assert done["mode"] == "explicit"
    assert done["epochs"] == 2
    epoch_times = [json.loads(line)["train_time_s"]
                   for line in (tmp_path / "runs" / "explicit-seed1" / "metrics.jsonl").read_text().splitlines()]
    assert done["train_time_per_epoch_s"] == pytest.approx(statistics.median(epoch_times))

    # Second invocation: nothing is trained again.
    import exdrop.train.compare as compare_module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare_module, "train", no_training)
    again = compare(base_config(), tmp_path, seeds=(0, 1))
    assert again == rows


def test_compare_resumes_interrupted_run(tmp_path, monkeypatch):
    import exdrop.train.compare as compare_module
    import exdrop.train.loop as loop

    original = loop.Trainer._train_epoch

    def crash_second_epoch(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(loop.Trainer, "_train_epoch", crash_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            compare(base_config(), tmp_path, seeds=(0,), modes=("explicit",))
    changed = base_config()
    changed["train"]["lr"] = 0.5
    with pytest.raises(ValueError, match=r"interrupted run .* used another config \(train.lr"):
        compare(changed, tmp_path, seeds=(0,), modes=("explicit",))
    rows = compare(base_config(), tmp_path, seeds=(0,), modes=("explicit",))
    done = json.loads((tmp_path / "runs" / "explicit-seed0" / "done.json").read_text())
    assert done["resumed"] is True
    assert rows[0]["seeds"] == 1


def test_sweep_settings_one_component_at_a_time():
    settings = sweep_settings({"q": 0.1, "ffn": 0.2}, rates=[0.3], coefficients=[2.0], per_component=True)
    names = [s.name for s in settings]
    assert names == [
        "implicit-rate-q-0.3", "explicit-rate-q-0.3", "explicit-coef-q-2",
        "implicit-rate-ffn-0.3", "explicit-rate-ffn-0.3", "explicit-coef-ffn-2",
    ]
    assert settings[0].rates == {"q": 0.3, "ffn": 0.2}
    together = sweep_settings({"q": 0.1}, rates=[0.05])
    assert together[0].rates["attn"] == 0.05
    assert together[0].label == "rate-all-0.05"


def test_summarize_mean_and_std():
    results = [
        {"setting": "explicit", "mode": "explicit", "final": {"top1": 50.0}, "train_time_per_epoch_s": 2.0},
        {"setting": "explicit", "mode": "explicit", "final": {"top1": 60.0}, "train_time_per_epoch_s": 4.0},
    ]
    row = summarize(results)[0]
    assert row["top1_mean"] == 55.0
    assert row["top1_std"] == pytest.approx(7.0710678)
    assert row["epoch_time_s_mean"] == 3.0


def test_confusion_matrix_counts():
    import torch

    matrix = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_evaluate_script_writes_json_and_png(tmp_path):
    cfg = base_config()
    cfg["output"] = {"dir": str(tmp_path), "name": "run"}
    result = train(cfg)
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--run", str(result.run_dir), "--weights", "best"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((result.run_dir / "evaluation.json").read_text())
    assert report["samples"] == 24
    assert set(report["per_class_accuracy"]) == {"horizontal_stripes", "vertical_stripes", "disk", "ring", "cross", "checkerboard"}
    assert sum(map(sum, report["confusion_matrix"])) == 24
    assert (result.run_dir / "confusion_matrix.png").is_file()
    best_top1 = max(r["top1"] for r in result.history)
    assert report["top1"] == pytest.approx(best_top1)

    missing = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--run", str(tmp_path / "nope")],
        capture_output=True, text=True,
    )
    assert missing.returncode == 1
    assert "nope/config.yaml not found" in missing.stderr


def test_compare_rejects_changed_config_for_finished_run(tmp_path):
    compare(base_config(), tmp_path, seeds=(0,), modes=("off",))
    changed = base_config()
    changed["train"]["epochs"] = 3
    with pytest.raises(ValueError, match=r"used another config \(train.epochs: 2 in the saved run, 3 now\)"):
        compare(changed, tmp_path, seeds=(0,), modes=("off",))


def test_compare_ignores_unused_settings_on_reuse(tmp_path, monkeypatch):
    import exdrop.train.compare as compare_module

    compare(base_config(), tmp_path, seeds=(0,), modes=("off", "implicit"))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare_module, "train", no_training)
    retuned = base_config()
    retuned["dropout"]["coefficients"] = 0.3  # explicit-only setting
    retuned["train"]["coefficient_warmup"] = 1
    retuned["train"]["tensorboard"] = True  # reporting only
    compare(retuned, tmp_path, seeds=(0,), modes=("off", "implicit"))

    rerated = base_config()
    rerated["dropout"]["rates"] = {"q": 0.3}  # rates do nothing in off mode
    compare(rerated, tmp_path, seeds=(0,), modes=("off",))
    with pytest.raises(ValueError, match=r"dropout.rates"):
        compare(rerated, tmp_path, seeds=(0,), modes=("implicit",))

    # A mode change is named as such, not as the settings that the mode drops.
    from exdrop.train.compare import _check_same_config

    explicit = base_config()
    explicit["output"] = {"dir": str(tmp_path / "runs"), "name": "off-seed0"}
    explicit["train"]["seed"] = 0
    with pytest.raises(ValueError, match=r"dropout.mode: 'off' in the saved run, 'explicit' now"):
        _check_same_config(tmp_path / "runs" / "off-seed0", explicit)
