"""Audio decoding, AST features, datasets and augmentations, on real FSDD files and files written here."""

from __future__ import annotations

import csv
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from exdrop.data.audio_augment import Mixup, SpecAugment, random_time_shift
from exdrop.data.audio_features import (
    ASTWaveformModel,
    FbankConfig,
    FbankFrontend,
    raw_features,
    resample,
    to_mono,
    waveform_to_features,
)
from exdrop.data.audio_io import AudioDecodeError, load_audio
from exdrop.data.registry import get_dataset_kind
from exdrop.models.ast import AUDIOSET_MEAN, AUDIOSET_STD, ASTModel

REPO = Path(__file__).resolve().parents[1]


def options_for(kind: str, **given) -> dict:
    """Fill a dataset kind's defaults, as the config loader does."""
    options = {key: option.default for key, option in get_dataset_kind(kind).options.items()}
    options.update(given)
    return options


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def fsdd(shared_data: Path) -> Path:
    root = shared_data / "fsdd"
    if not (root / "recordings").is_dir():
        pytest.skip(f"{root}/recordings is absent")
    return root


# Features


@pytest.mark.parametrize("max_length", [128, 20])  # padding and cropping
def test_features_match_transformers_extractor(fsdd: Path, max_length: int) -> None:
    transformers = pytest.importorskip("transformers")
    waveform, rate = load_audio(fsdd / "recordings" / "3_theo_7.wav")
    assert rate == 8000
    # Both sides get the same 16 kHz waveform: ASTFeatureExtractor does not resample.
    waveform_16k = resample(to_mono(waveform), rate, 16000)
    extractor = transformers.ASTFeatureExtractor(max_length=max_length)
    expected = extractor(waveform_16k.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"][0]

    ours = waveform_to_features(waveform, rate, FbankConfig(target_frames=max_length))
    assert ours.shape == (max_length, 128)
    assert (ours - expected).abs().max().item() < 1e-5


def test_stereo_44k_mixed_down_and_resampled(tmp_path: Path) -> None:
    mono = tone(1.0, 44100)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([mono, mono], axis=1), 44100, subtype="FLOAT")

    waveform, rate = load_audio(path)
    assert waveform.shape == (2, 44100)
    assert rate == 44100
    config = FbankConfig(target_frames=100)
    stereo_features = raw_features(waveform, rate, config)
    assert stereo_features.shape == (98, 128)  # 1 s at 16 kHz: (16000 - 400) // 160 + 1 frames
    mono_features = raw_features(torch.from_numpy(mono), 44100, config)
    assert torch.allclose(stereo_features, mono_features, atol=1e-4)

    # A 440 Hz tone must put its energy in the same mel bin after resampling.
    direct = raw_features(torch.from_numpy(tone(1.0, 16000)), 16000, config)
    assert int(stereo_features.mean(0).argmax()) == int(direct.mean(0).argmax())


def test_flac_decodes_like_wav(tmp_path: Path) -> None:
    samples = tone(0.5, 16000)
    sf.write(tmp_path / "clip.wav", samples, 16000, subtype="PCM_16")
    sf.write(tmp_path / "clip.flac", samples, 16000, subtype="PCM_16")
    wav, wav_rate = load_audio(tmp_path / "clip.wav")
    flac, flac_rate = load_audio(tmp_path / "clip.flac")
    assert wav_rate == flac_rate == 16000
    # libsndfile may round float samples to 16 bits differently per format: allow one step.
    assert wav.shape == flac.shape
    assert (wav - flac).abs().max().item() <= 1 / 32768 + 1e-9


def test_silent_clip_gives_finite_constant_features(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), 16000)
    waveform, rate = load_audio(path)
    x = waveform_to_features(waveform, rate, FbankConfig(target_frames=64))
    assert torch.isfinite(x).all()
    frames = (8000 - 400) // 160 + 1
    # Kaldi floors zero energy at float32 epsilon: log(1.1920929e-07) per bin.
    floor = (np.log(np.finfo(np.float32).eps) - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    assert torch.allclose(x[:frames], torch.full((frames, 128), float(floor)), atol=1e-5)
    assert torch.allclose(x[frames:], torch.full((64 - frames, 128), -AUDIOSET_MEAN / (2 * AUDIOSET_STD)))


def test_clip_shorter_than_one_window(tmp_path: Path) -> None:
    x = waveform_to_features(torch.from_numpy(tone(0.01, 16000)), 16000, FbankConfig(target_frames=32))
    assert x.shape == (32, 128)
    assert torch.isfinite(x).all()


# Decoding errors


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Write each kind of unreadable file the decoder must reject, and return them by case."""
    folder.mkdir(parents=True, exist_ok=True)
    good = tone(1.0, 16000)
    sf.write(folder / "full.wav", good, 16000)
    sf.write(folder / "full.flac", good, 16000)
    data = (folder / "full.wav").read_bytes()
    flac = (folder / "full.flac").read_bytes()
    cases = {
        "empty": folder / "empty.wav",
        "zero_length": folder / "zero_length.wav",
        "truncated_wav": folder / "truncated.wav",
        "truncated_header": folder / "truncated_header.wav",
        "truncated_flac": folder / "truncated.flac",
        "not_audio": folder / "notes.wav",
    }
    cases["empty"].write_bytes(b"")
    sf.write(cases["zero_length"], np.zeros((0,), dtype=np.float32), 16000)
    cases["truncated_wav"].write_bytes(data[: len(data) // 2])
    cases["truncated_header"].write_bytes(data[:20])
    cases["truncated_flac"].write_bytes(flac[: len(flac) // 2])
    cases["not_audio"].write_text("not audio at all\n" * 20)
    (folder / "full.wav").unlink()
    (folder / "full.flac").unlink()
    return cases


@pytest.mark.parametrize(
    "case, reason",
    [
        ("empty", "empty"),
        ("zero_length", "no audio samples"),
        ("truncated_wav", "truncated"),
        ("truncated_header", "soundfile failed"),
        ("truncated_flac", "soundfile failed"),
        ("not_audio", "soundfile failed"),
    ],
)
def test_unreadable_file_error_names_path(tmp_path: Path, case: str, reason: str) -> None:
    path = write_bad_files(tmp_path)[case]
    with pytest.raises(AudioDecodeError, match=reason) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")


# Datasets


def test_fsdd_kind_on_real_files(fsdd: Path) -> None:
    kind = get_dataset_kind("fsdd")
    bundle = kind.build(options_for("fsdd", root=str(fsdd), target_frames=64))
    assert len(bundle.train) == 2250
    assert len(bundle.val) == 250
    assert bundle.class_names == [str(d) for d in range(10)]
    assert bundle.model_kwargs == {"input_tdim": 64, "input_fdim": 128}
    assert all(int(Path(item.path).stem.split("_")[2]) <= 4 for item in bundle.val.items)

    x, y = bundle.val[0]
    assert x.shape == (64, 128)
    assert y == int(Path(bundle.val.items[0].path).name[0])
    assert torch.equal(kind.load_input(bundle.val.items[0].path, options_for("fsdd", target_frames=64)), x)


def test_waveform_model_matches_feature_model(fsdd: Path) -> None:
    waveform, rate = load_audio(fsdd / "recordings" / "7_jackson_3.wav")
    torch.manual_seed(0)
    model = ASTModel(num_classes=10, input_tdim=64, embed_dim=32, depth=1, num_heads=2).eval()
    end_to_end = ASTWaveformModel(model, input_rate=rate).eval()
    features = waveform_to_features(waveform, rate, FbankConfig(target_frames=64))
    with torch.no_grad():
        assert torch.allclose(end_to_end(waveform), model(features.unsqueeze(0)))
    assert FbankFrontend(FbankConfig(target_frames=64), input_rate=rate)(torch.stack([waveform[0]] * 3)).shape == (3, 64, 128)


def make_class_folders(root: Path, per_class: int = 3) -> None:
    for label, freq in (("low", 220.0), ("high", 1760.0)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            sf.write(root / label / f"{label}_{i}.wav", tone(0.3, 16000, freq), 16000)


def test_on_error_fail_and_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "clips"
    make_class_folders(root, per_class=4)
    (root / "low" / "empty.wav").write_bytes(b"")
    good = (root / "high" / "high_0.wav").read_bytes()
    (root / "high" / "cut.wav").write_bytes(good[: len(good) // 3])
    kind = get_dataset_kind("audio_folder")

    failing = kind.build(options_for("audio_folder", root=str(root), val_fraction=0.4, target_frames=32))
    with pytest.raises(AudioDecodeError) as info:
        for dataset in (failing.train, failing.val):
            for index in range(len(dataset)):
                dataset[index]
    assert "empty.wav" in str(info.value) or "cut.wav" in str(info.value)

    caplog.set_level(logging.WARNING)
    skipping = kind.build(options_for("audio_folder", root=str(root), val_fraction=0.4, target_frames=32, on_error="skip"))
    total = len(skipping.train) + len(skipping.val)
    assert total == 8
    counts = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert sum(int(message.split()[1]) for message in counts) == 2
    assert any("empty.wav" in r.getMessage() for r in caplog.records)


def test_skip_substitutes_clip_failing_at_decode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A cut FLAC passes the header probe but fails while decoding, as in a DataLoader worker.
    root = tmp_path / "clips"
    make_class_folders(root, per_class=2)
    sf.write(tmp_path / "full.flac", tone(1.0, 16000), 16000)
    flac = (tmp_path / "full.flac").read_bytes()
    (root / "low" / "low_00_cut.flac").write_bytes(flac[: len(flac) // 2])

    bundle = get_dataset_kind("audio_folder").build(
        options_for("audio_folder", root=str(root), val_fraction=0.5, target_frames=32, on_error="skip")
    )
    dataset = bundle.train if any("cut" in i.path for i in bundle.train.items) else bundle.val
    bad = next(i for i, item in enumerate(dataset.items) if "cut" in item.path)
    caplog.set_level(logging.WARNING)
    x, y = dataset[bad]
    assert x.shape == (32, 128)
    assert dataset.failed == {bad}
    assert any("low_00_cut.flac" in r.getMessage() and "1 skipped" in r.getMessage() for r in caplog.records)


def test_manifest_folds_and_multilabel(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "audio", per_class=3)
    files = sorted((tmp_path / "audio").rglob("*.wav"))
    with open(tmp_path / "esc.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "category"])
        for i, path in enumerate(files):
            writer.writerow([path.relative_to(tmp_path).as_posix(), i % 3 + 1, path.parent.name])
    kind = get_dataset_kind("audio_manifest")
    esc = kind.build(options_for(
        "audio_manifest", manifest=str(tmp_path / "esc.csv"), path_column="filename",
        label_column="category", val_fold=2, target_frames=32,
    ))
    assert len(esc.val) == 2
    assert all(item.fold == "2" for item in esc.val.items)
    assert esc.class_names == ["high", "low"]

    with open(tmp_path / "multi.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for i, path in enumerate(files):
            writer.writerow([str(path), "speech;music" if i % 2 else "music"])
    multi = kind.build(options_for("audio_manifest", manifest=str(tmp_path / "multi.csv"), multilabel=True,
                                   val_fraction=0.34, target_frames=32))
    assert multi.multilabel
    targets = [multi.train.target(i) for i in range(len(multi.train))] + [multi.val.target(i) for i in range(len(multi.val))]
    assert {tuple(t.tolist()) for t in targets} == {(1.0, 0.0), (1.0, 1.0)}  # classes: music, speech

    with pytest.raises(ValueError, match="multilabel: true"):
        kind.build(options_for("audio_manifest", manifest=str(tmp_path / "multi.csv"), val_fraction=0.34))


def test_folder_with_speech_commands_lists(tmp_path: Path) -> None:
    root = tmp_path / "speech_commands"
    make_class_folders(root, per_class=4)
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "noise.wav", tone(1.0, 16000), 16000)
    (root / "validation_list.txt").write_text("low/low_0.wav\nhigh/high_0.wav\n")
    (root / "testing_list.txt").write_text("low/low_1.wav\n")
    options = options_for("audio_folder", root=str(root), val_list="validation_list.txt",
                          test_list="testing_list.txt", target_frames=32)

    test = get_dataset_kind("audio_folder").build(options)
    assert [Path(i.path).name for i in test.val.items] == ["low_1.wav"]
    assert len(test.train) == 5  # 8 clips minus 3 listed; the noise folder is no class
    assert test.class_names == ["high", "low"]
    val = get_dataset_kind("audio_folder").build({**options, "eval_split": "val"})
    assert sorted(Path(i.path).name for i in val.val.items) == ["high_0.wav", "low_0.wav"]


# Augmentations


def test_spec_augment_masks_bands() -> None:
    torch.manual_seed(0)
    features = torch.ones(100, 128)
    masked = [SpecAugment(freq_mask=24, time_mask=30)(features) for _ in range(50)]
    for out in masked:
        zero_rows = int((out == 0).all(dim=1).sum())
        zero_cols = int((out == 0).all(dim=0).sum())
        assert zero_rows <= 30
        assert zero_cols <= 24
    assert any((out == 0).any() for out in masked)
    assert torch.equal(features, torch.ones(100, 128))  # the input is not modified


def test_time_shift_is_a_roll() -> None:
    torch.manual_seed(0)
    features = torch.arange(20.0).unsqueeze(1).repeat(1, 4)
    shifted = random_time_shift(features, 5)
    shift = int(shifted[0, 0].item())
    shift = -shift if shift <= 5 else 20 - shift
    assert torch.equal(shifted, torch.roll(features, shift, dims=0))
    assert torch.equal(random_time_shift(features, 0), features)


def test_mixup_soft_targets() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 16, 128)
    y = torch.arange(8) % 4
    mixed_x, mixed_y = Mixup(num_classes=4, prob=1.0)(x, y)
    assert mixed_y.shape == (8, 4)
    assert torch.allclose(mixed_y.sum(dim=1), torch.ones(8))
    assert not torch.equal(mixed_x, x)
    plain_x, plain_y = Mixup(num_classes=4, prob=0.0)(x, y)
    assert torch.equal(plain_x, x)
    assert torch.equal(plain_y.argmax(dim=1), y)


def test_training_augmentation_from_options(fsdd: Path) -> None:
    bundle = get_dataset_kind("fsdd").build(options_for(
        "fsdd", root=str(fsdd), target_frames=64, freq_mask=16, time_mask=16, time_shift=8, mixup_prob=0.5,
    ))
    assert isinstance(bundle.train_batch_transform, Mixup)
    assert bundle.train.spec_augment == SpecAugment(16, 16, 1)
    torch.manual_seed(0)
    train_x = torch.stack([bundle.train[0][0] for _ in range(4)])
    assert not all(torch.equal(train_x[0], other) for other in train_x[1:])
    assert torch.equal(bundle.val[0][0], bundle.val[0][0])


# Statistics script


def test_audio_stats_matches_direct_computation(fsdd: Path) -> None:
    spec = importlib.util.spec_from_file_location("audio_stats", REPO / "scripts" / "audio_stats.py")
    audio_stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audio_stats)
    dataset = get_dataset_kind("fsdd").build(options_for("fsdd", root=str(fsdd), target_frames=64)).train

    mean, std, count = audio_stats.feature_moments(dataset, include_padding=False, limit=12, progress=False)
    values = torch.cat([dataset.raw_features(i).flatten() for i in range(12)]).double()
    assert count == values.numel()
    assert mean == pytest.approx(values.mean().item(), rel=1e-9)
    assert std == pytest.approx(values.std(unbiased=False).item(), rel=1e-6)

    padded_mean, _, padded_count = audio_stats.feature_moments(dataset, include_padding=True, limit=12, progress=False)
    assert padded_count == 12 * 64 * 128
    assert padded_mean != pytest.approx(mean)
