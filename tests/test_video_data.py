"""Video decoding, sampling, transforms and datasets, on the real videos and on broken files."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import exdrop
from exdrop.data import video_decode
from exdrop.data.registry import get_dataset_kind
from exdrop.data.video import VideoClipDataset, check_videos, load_video_input, read_video_list
from exdrop.data.video_decode import (
    VideoDecodeError,
    VideoTooShortError,
    probe_video,
    read_all_frames,
    read_frames,
)
from exdrop.data.video_transforms import ClipTransform, FrameSampler

# Frame counts of a full sequential decode (PyAV 18) of each shared video.
EXPECTED = {
    "demo.mp4": (280, 340, 256, "h264"),
    "demo_skeleton.mp4": (72, 1920, 1080, "h264"),
    "demo_spatiotemporal_det.mp4": (57, 340, 256, "h264"),
    "rawvideo_dataset_part_0.mp4": (32, 340, 256, "h264"),
    "test.avi": (164, 320, 240, "mpeg4"),
    "test.mp4": (300, 340, 256, "h264"),
}


@pytest.fixture
def videos(shared_data: Path) -> Path:
    return shared_data / "videos"


def _options(kind: str, **overrides):
    options = {key: option.default for key, option in get_dataset_kind(kind).options.items()}
    options.update(overrides)
    return options


def test_probe_every_video(videos: Path) -> None:
    assert sorted(p.name for p in videos.iterdir()) == sorted(EXPECTED)
    for name, (frames, width, height, codec) in EXPECTED.items():
        info = probe_video(videos / name)
        assert info.num_frames == frames, name
        assert (info.width, info.height, info.codec) == (width, height, codec), name
    assert probe_video(videos / "test.avi").has_audio
    assert not probe_video(videos / "demo.mp4").has_audio


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_read_frames_match_full_decode(videos: Path, name: str) -> None:
    frames, _, _, _ = EXPECTED[name]
    full = read_all_frames(videos / name, short_side=48)
    assert full.shape[0] == frames
    assert full.shape[1] == 48  # short side scaled during decoding
    assert full.shape[-1] == 3
    indices = [frames - 1, frames // 2, frames - 7, frames // 2]  # unordered, with a repeat
    part = read_frames(videos / name, indices, short_side=48)
    for position, index in enumerate(indices):
        assert torch.equal(part[position], full[index]), (name, index)


def test_mp4_seeks_instead_of_decoding_from_start(videos: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded from the start")

    monkeypatch.setattr(video_decode, "_decode_sequential", fail)
    # demo.mp4 has keyframes at 0, 187, 230 and 268: frames 270+ need only the last GOP.
    frames = read_frames(videos / "demo.mp4", [270, 275], short_side=32)
    assert frames.shape == (2, 32, 42, 3)


def test_high_resolution_decoded_at_full_size(videos: Path) -> None:
    frames = read_frames(videos / "demo_skeleton.mp4", [0, 71])
    assert frames.shape == (2, 1080, 1920, 3)
    with pytest.raises(VideoTooShortError, match="demo_skeleton.mp4"):
        read_frames(videos / "demo_skeleton.mp4", [72])


def test_tiny_models_run_on_every_video(videos: Path) -> None:
    options = _options("video_folder", root=str(videos), num_frames=4, img_size=32, num_clips=2, num_crops=3, stride=2)
    torch.manual_seed(0)
    models = [
        exdrop.create_model("videomae_tiny_patch16_16x224", num_classes=3, depth=1, num_frames=4, img_size=32),
        exdrop.create_model("timesformer_tiny_patch16_8x224", num_classes=3, depth=1, num_frames=4, img_size=32),
    ]
    for name in EXPECTED:
        views = load_video_input(str(videos / name), options)
        assert views.shape == (6, 3, 4, 32, 32), name
        assert not torch.equal(views[0], views[2])  # different crops of the same clip
        for model in models:
            with torch.no_grad():
                logits = model.eval()(views)
            assert logits.shape == (6, 3), name
            assert torch.isfinite(logits).all(), name


def _write_video(path: Path, num_frames: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(num_frames):
            image = np.full((48, 64, 3), 40 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def bad_videos(tmp_path: Path, videos: Path) -> dict[str, Path]:
    short = tmp_path / "two_frames.mp4"
    _write_video(short, 2)
    corrupt = tmp_path / "truncated.mp4"
    corrupt.write_bytes((videos / "demo.mp4").read_bytes()[:20_000])
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"not a video" * 100)
    return {"short": short, "corrupt": corrupt, "garbage": garbage, "good": videos / "test.mp4"}


def test_bad_videos_reported_by_path(bad_videos) -> None:
    assert probe_video(bad_videos["short"]).num_frames == 2
    for key in ("corrupt", "garbage"):
        with pytest.raises(VideoDecodeError, match=bad_videos[key].name):
            probe_video(bad_videos[key])
    with pytest.raises(VideoTooShortError, match="two_frames.mp4"):
        check_videos([(str(bad_videos["short"]), 0)], min_frames=4, on_error="fail")


def test_check_videos_skip_logs_count(bad_videos, caplog) -> None:
    samples = [(str(bad_videos[key]), 0) for key in ("good", "short", "corrupt", "garbage")]
    with pytest.raises(VideoDecodeError, match="on_error: skip"):
        check_videos(samples, min_frames=4, on_error="fail")
    with caplog.at_level(logging.WARNING, logger="exdrop.data.video"):
        kept = check_videos(samples, min_frames=4, on_error="skip")
    assert kept == samples[:1]
    assert "skipped 3 of 4" in caplog.text
    for key in ("short", "corrupt", "garbage"):
        assert bad_videos[key].name in caplog.text


def test_dataset_skips_at_decode_time(bad_videos, caplog) -> None:
    samples = [(str(bad_videos["corrupt"]), 0), (str(bad_videos["good"]), 1)]
    common = dict(sampler=FrameSampler(4, stride=2), transform=ClipTransform(32), short_side=32)
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        VideoClipDataset(samples, on_error="fail", **common)[0]
    dataset = VideoClipDataset(samples, on_error="skip", **common)
    with caplog.at_level(logging.WARNING, logger="exdrop.data.video"):
        clip, label = dataset[0]
    assert label == 1
    assert clip.shape == (3, 4, 32, 32)
    assert dataset.skipped == 1
    assert "truncated.mp4" in caplog.text


def test_dense_and_uniform_sampling() -> None:
    dense = FrameSampler(4, "dense", stride=3)
    assert dense(100, clip=0, num_clips=3) == [0, 3, 6, 9]
    assert dense(100, clip=2, num_clips=3) == [90, 93, 96, 99]
    assert dense(7, clip=0, num_clips=1) == [0, 2, 4, 6]  # stride shrinks to fit
    starts = {dense(100, rng=random.Random(seed))[0] for seed in range(50)}
    assert len(starts) > 10
    assert max(starts) <= 90
    uniform = FrameSampler(4, "uniform")
    assert uniform(40) == [5, 15, 25, 35]
    for seed in range(20):
        indices = uniform(40, rng=random.Random(seed))
        assert all(10 * i <= index < 10 * (i + 1) for i, index in enumerate(indices))
    with pytest.raises(ValueError, match="shorter"):
        dense(3)


def test_train_transform_same_for_all_frames() -> None:
    frame = torch.randint(0, 256, (1, 60, 80, 3), dtype=torch.uint8)
    transform = ClipTransform(32, train=True, hflip=0.5)
    for seed in range(10):
        clip = transform(frame.repeat(5, 1, 1, 1), rng=random.Random(seed))
        assert clip.shape == (3, 5, 32, 32)
        for t in range(1, 5):
            assert torch.equal(clip[:, t], clip[:, 0])


def _link_videos(videos: Path, root: Path) -> None:
    layout = {"train/walk": ["demo.mp4", "test.avi"], "train/pool": ["test.mp4"], "val/walk": ["demo_skeleton.mp4"],
              "val/pool": ["rawvideo_dataset_part_0.mp4"]}
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).symlink_to(videos / name)


def test_video_folder_with_workers(videos: Path, tmp_path: Path) -> None:
    _link_videos(videos, tmp_path)
    kind = get_dataset_kind("video_folder")
    bundle = kind.build(_options("video_folder", root=str(tmp_path), num_frames=4, img_size=32, num_clips=2))
    assert bundle.class_names == ["pool", "walk"]
    assert bundle.eval_views == 2
    assert len(bundle.val) == 4
    assert bundle.model_kwargs == {"num_frames": 4, "img_size": 32}
    loader = DataLoader(bundle.train, batch_size=3, num_workers=2)
    clips, labels = next(iter(loader))
    assert clips.shape == (3, 3, 4, 32, 32)
    assert labels.tolist() == [0, 1, 1]


def test_video_list_text_and_csv(videos: Path, tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text(f"demo.mp4 1\n# comment\n{videos / 'test.mp4'} 0\n")
    (tmp_path / "val.csv").write_text("path,label\ntest.avi,1\n")
    rows = read_video_list(tmp_path / "train.txt", data_root=videos)
    assert rows == [(str(videos / "demo.mp4"), "1"), (str(videos / "test.mp4"), "0")]
    options = _options("video_list", train_list=str(tmp_path / "train.txt"), val_list=str(tmp_path / "val.csv"),
                       data_root=str(videos), num_frames=4, img_size=32)
    bundle = get_dataset_kind("video_list").build(options)
    assert bundle.num_classes == 2
    assert [label for _, label in bundle.train.samples] == [1, 0]
    clip, label = bundle.val[0]
    assert clip.shape == (3, 4, 32, 32)
    assert label == 1
    (tmp_path / "broken.txt").write_text("onlyonefield\n")
    with pytest.raises(ValueError, match="broken.txt:1"):
        read_video_list(tmp_path / "broken.txt")


def test_direction_task_reverses_clips(videos: Path) -> None:
    bundle = get_dataset_kind("video_direction").build(
        _options("video_direction", root=str(videos), val_clips_per_video=3, train_clips_per_video=2)
    )
    assert bundle.class_names == ["forward", "reversed"]
    assert len(bundle.train) == 4 * 2 * 2
    assert len(bundle.val) == 2 * 3 * 2
    train_sources = {Path(p).name for p in bundle.train.paths}
    assert not train_sources & {Path(p).name for p in bundle.val.paths}
    for item in range(0, len(bundle.val), 2):
        forward, forward_label = bundle.val[item]
        backward, backward_label = bundle.val[item + 1]
        assert (forward_label, backward_label) == (0, 1)
        assert torch.equal(backward, forward.flip(1))  # the same frames in reverse order
    labels = [bundle.train[i][1] for i in range(len(bundle.train))]
    assert labels.count(0) == labels.count(1)


def test_order_task_shuffles_clip_frames(videos: Path) -> None:
    bundle = get_dataset_kind("video_direction").build(
        _options("video_direction", root=str(videos), task="order", val_clips_per_video=3, train_clips_per_video=2)
    )
    assert bundle.class_names == ["in_order", "shuffled"]
    for item in range(0, len(bundle.val), 2):
        ordered, ordered_label = bundle.val[item]
        shuffled, shuffled_label = bundle.val[item + 1]
        assert (ordered_label, shuffled_label) == (0, 1)
        assert not torch.equal(ordered, shuffled)
        # The same frames, permuted: match each shuffled frame to an ordered one.
        matches = [[torch.equal(shuffled[:, i], ordered[:, j]) for j in range(ordered.shape[1])]
                   for i in range(shuffled.shape[1])]
        assert all(any(row) for row in matches)
        assert torch.equal(bundle.val[item + 1][0], shuffled)  # fixed permutation for evaluation
    with pytest.raises(ValueError, match="data.task='spin'"):
        get_dataset_kind("video_direction").build(_options("video_direction", root=str(videos), task="spin"))


def test_cut_task_splices_two_source_videos(videos: Path) -> None:
    options = _options("video_direction", root=str(videos), task="cut", val_clips_per_video=2, train_clips_per_video=2)
    bundle = get_dataset_kind("video_direction").build(options)
    assert bundle.class_names == ["one_shot", "two_shots"]
    one_shot, one_label = bundle.val[0]
    spliced, spliced_label = bundle.val[1]
    assert (one_label, spliced_label) == (0, 1)
    assert spliced.shape == one_shot.shape
    middle = spliced.shape[1] // 2
    # Evaluation splices cut in the middle: the first half is the clip itself.
    assert torch.equal(spliced[:, :middle], one_shot[:, :middle])
    assert not torch.equal(spliced[:, middle:], one_shot[:, middle:])
    # The second half is the same clip of the next source video.
    next_video = bundle.val[2 * options["val_clips_per_video"]][0]
    assert torch.equal(spliced[:, middle:], next_video[:, middle:])
    clip, _ = bundle.train[1]
    assert clip.shape == one_shot.shape


def test_time_split_keeps_clips_inside_segments(videos: Path) -> None:
    options = _options("video_direction", root=str(videos), split="time", train_fraction=0.6, task="cut",
                       train_videos=["test.mp4"], val_videos=["test.avi"], val_clips_per_video=3)
    bundle = get_dataset_kind("video_direction").build(options)
    assert bundle.train.paths == bundle.val.paths
    for path in bundle.val.paths:
        total = bundle.val._num_frames(path)
        boundary = round(0.6 * total)
        for clip in range(3):
            assert min(bundle.val._clip(path, clip, None)) >= boundary
        for seed in range(20):
            assert max(bundle.train._clip(path, 0, random.Random(seed))) < boundary
    with pytest.raises(ValueError, match="data.train_fraction=1.0"):
        get_dataset_kind("video_direction").build({**options, "train_fraction": 1.0})
    with pytest.raises(ValueError, match="data.split='frames'"):
        get_dataset_kind("video_direction").build({**options, "split": "frames"})


def test_video_direction_options_fail_at_config_time(monkeypatch) -> None:
    from exdrop.train import ConfigError, load_config, resolve_config

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    config = repo / "configs" / "video_direction_tiny.yaml"
    cases = {
        "data.task=spin": "data.task='spin' is not supported",
        "data.split=frames": "data.split='frames' is not supported",
        "data.train_fraction=1.5": "data.train_fraction=1.5 must lie strictly between 0 and 1",
        "data.val_videos=[test.mp4]": None,  # allowed with split: time
    }
    for override, message in cases.items():
        if message is None:
            resolve_config(load_config(config, [override]))
            continue
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            resolve_config(load_config(config, [override]))
    with pytest.raises(ConfigError, match=r"share \['test.mp4'\]; list different videos, or set data.split: time"):
        resolve_config(load_config(config, ["data.split=videos", "data.val_videos=[test.mp4, test.avi]"]))
    with pytest.raises(ConfigError, match="the cut task needs at least two videos in data.val_videos"):
        resolve_config(load_config(config, ["data.split=videos", "data.val_videos=[test.avi]"]))
