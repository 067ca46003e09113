"""Built-in tasks on real videos that no single frame can solve.

Every source video gives ``clips_per_video`` clips, each shown twice: once as
played (label 0) and once altered (label 1). The ``direction`` task alters a
clip by reversing it, the ``order`` task by shuffling its frames, and the
``cut`` task by replacing its second part with frames of another source video
(a splice between two shots). The classes are balanced and a single frame
carries no information about the label, so the model has to compare frames.
Training and evaluation use different source videos (``split: videos``) or
different time segments of the same videos (``split: time``).

Reversal is hard to detect in scenes without a clear arrow of time, because
people arm wrestling look much the same played backwards. Shuffling breaks
the smooth motion of any scene that moves: the ratio of the mean change
between neighbouring frames to the change two frames apart separates in-order
from shuffled clips of these videos with an AUC of about 0.95 (stride 2, 64
pixels), while for reversed clips it stays at 0.5.

Still, a tiny ViT trained from scratch on the order task stayed at chance for
3,000 steps, and so did a plain PyTorch Transformer encoder of the same size.
A small 3D CNN did fit the training clips. Frame-to-frame changes in these
videos are small next to the scene content, whereas a splice changes every
patch, and the same ViT learns the ``cut`` task within a few hundred steps.
The built-in config therefore uses ``cut``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset

from .registry import DataOption, DatasetBundle, register_dataset
from .video import CLIP_OPTIONS, _check_on_error, _decode_short_side, _sampler, _transform, check_videos, load_video_input
from .video_decode import read_all_frames, read_frames
from .video_transforms import ClipTransform, FrameSampler

logger = logging.getLogger(__name__)

TASKS = {"direction": ("forward", "reversed"), "order": ("in_order", "shuffled"), "cut": ("one_shot", "two_shots")}

# Scenes of the six demo videos: arm wrestling (demo, demo_spatiotemporal_det), a pool
# being cleaned (test.mp4, rawvideo_dataset_part_0), make-up (test.avi) and two people
# standing (demo_skeleton). Training uses the first two scenes, evaluation the last two.
DEFAULT_TRAIN_VIDEOS = ["demo.mp4", "demo_spatiotemporal_det.mp4", "test.mp4", "rawvideo_dataset_part_0.mp4"]
DEFAULT_VAL_VIDEOS = ["test.avi", "demo_skeleton.mp4"]


class VideoDirectionDataset(Dataset):
    """Clips of a few videos as played and altered (reversed, shuffled or spliced).

    Item order: video, clip, label (as played, altered), crop. Training
    clips start at random frames and are shuffled at random; evaluation
    clips start at ``clips_per_video`` fixed frames spread over each video
    and are shuffled with a fixed permutation per clip.

    Args:
        paths: Source videos.
        sampler: Frame-index sampler (dense clips are the natural choice).
        transform: Clip transform.
        clips_per_video: Clips per source video (each yields two items).
        train: Random clip starts and augmentation.
        num_crops: Evaluation crops per clip.
        short_side: Decode-time short side in pixels.
        cache_videos: Decode each video once per process and keep its frames
            (a few MB each at a small ``short_side``). Without it, every item
            seeks and decodes its own frames.
        task: ``"direction"`` (label 1: reversed), ``"order"`` (label 1:
            frames shuffled, never left in order) or ``"cut"`` (label 1: the
            frames from a random point on come from another source video,
            the middle frame in evaluation).
        segment: The part of every video that clips come from, as fractions
            of its length, e.g. ``(0.0, 0.7)`` for training and ``(0.7, 1.0)``
            for evaluation on the same videos.
    """

    def __init__(
        self,
        paths: Sequence[str],
        sampler: FrameSampler,
        transform: ClipTransform,
        clips_per_video: int,
        train: bool = False,
        num_crops: int = 1,
        short_side: Optional[int] = None,
        cache_videos: bool = True,
        task: str = "direction",
        segment: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if not 0.0 <= segment[0] < segment[1] <= 1.0:
            raise ValueError(f"segment={segment} must be two fractions 0 <= start < end <= 1")
        self.segment = (float(segment[0]), float(segment[1]))
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not supported; use one of {sorted(TASKS)}")
        self.task = task
        self.paths = list(paths)
        self.sampler = sampler
        self.transform = transform
        self.clips_per_video = clips_per_video
        self.train = train
        self.num_crops = 1 if train else num_crops
        self.short_side = short_side
        self.cache_videos = cache_videos
        self._frames: dict[str, torch.Tensor] = {}
        self._lengths: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.paths) * self.clips_per_video * 2 * self.num_crops

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_frames"] = {}  # workers decode their own copy instead of receiving a pickled one
        return state

    def _num_frames(self, path: str) -> int:
        if path not in self._lengths:
            from .video_decode import probe_video

            self._lengths[path] = probe_video(path).num_frames
        return self._lengths[path]

    def _read(self, path: str, indices: list[int]) -> torch.Tensor:
        if not self.cache_videos:
            return read_frames(path, indices, short_side=self.short_side)
        if path not in self._frames:
            self._frames[path] = read_all_frames(path, short_side=self.short_side)
        return self._frames[path][indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item, crop = divmod(index, self.num_crops)
        video, rest = divmod(item, self.clips_per_video * 2)
        clip, altered = divmod(rest, 2)
        path = self.paths[video]
        rng = random.Random(random.getrandbits(64)) if self.train else None

        indices = self._clip(path, clip, rng)
        if altered and self.task == "cut":
            return self._spliced(video, clip, path, indices, crop, rng), altered
        if altered:
            # Evaluation seeds the shuffle by video and clip, so every epoch sees the same permutation.
            indices = self._alter(indices, rng or random.Random(video * 100_003 + clip))
        frames = self._read(path, indices)
        return self.transform(frames, crop=crop, num_crops=self.num_crops, rng=rng), altered

    def _spliced(
        self, video: int, clip: int, path: str, indices: list[int], crop: int, rng: Optional[random.Random]
    ) -> torch.Tensor:
        """Return a clip whose frames from a cut point on come from another source video."""
        if len(self.paths) < 2:
            # data.on_error: skip can leave fewer readable videos than the config lists.
            raise ValueError("the cut task needs at least two readable source videos per split; add or fix videos")
        if rng is None:
            # Fixed evaluation clips: the next video in the list, cut in the middle.
            other_index, cut = (video + 1) % len(self.paths), len(indices) // 2
            other_clip = self._clip(self.paths[other_index], clip, None)
        else:
            other_index = rng.choice([i for i in range(len(self.paths)) if i != video])
            cut = rng.randint(1, len(indices) - 1)
            other_clip = self._clip(self.paths[other_index], clip, rng)
        # Both parts get the same crop, flip and normalization: one transform state for the two.
        state = rng.getstate() if rng is not None else None
        first = self.transform(self._read(path, indices[:cut]), crop=crop, num_crops=self.num_crops, rng=rng)
        if state is not None:
            rng.setstate(state)
        second = self.transform(
            self._read(self.paths[other_index], other_clip[cut:]), crop=crop, num_crops=self.num_crops, rng=rng
        )
        return torch.cat([first, second], dim=1)  # (C, T, H, W)

    def _clip(self, path: str, clip: int, rng: Optional[random.Random]) -> list[int]:
        """Return the frame indices of one clip inside this dataset's segment of ``path``."""
        total = len(self._frames[path]) if path in self._frames else self._num_frames(path)
        start = int(round(self.segment[0] * total))
        end = max(start + 1, int(round(self.segment[1] * total)))
        indices = self.sampler(end - start, clip=clip, num_clips=self.clips_per_video, rng=rng)
        return [start + i for i in indices]

    def _alter(self, indices: list[int], rng: random.Random) -> list[int]:
        """Return the indices reversed (``direction``) or shuffled out of order (``order``)."""
        if self.task == "direction":
            return indices[::-1]
        if len(set(indices)) < 2:
            raise ValueError("the order task needs clips of at least two distinct frames; raise num_frames")
        shuffled = list(indices)
        while shuffled == indices:
            rng.shuffle(shuffled)
        return shuffled


def validate_video_direction(options: dict[str, Any]) -> None:
    """Check the options of ``video_direction`` together, before any video is read."""
    _check_on_error(options["on_error"])
    if options["task"] not in TASKS:
        raise ValueError(f"data.task={options['task']!r} is not supported; use one of {sorted(TASKS)}")
    if options["sampling"] != "dense":
        raise ValueError(
            "video_direction needs data.sampling: dense (uniform segments of a reversed clip are not a played clip)"
        )
    if options["split"] not in ("videos", "time"):
        raise ValueError(f"data.split={options['split']!r} is not supported; use 'videos' or 'time'")
    fraction = options["train_fraction"]
    if options["split"] == "time" and not 0.0 < fraction < 1.0:
        raise ValueError(f"data.train_fraction={fraction} must lie strictly between 0 and 1")
    if options["split"] == "videos":
        overlap = set(options["train_videos"]) & set(options["val_videos"])
        if overlap:
            raise ValueError(
                f"data.train_videos and data.val_videos share {sorted(overlap)}; list different videos, "
                "or set data.split: time to split every video in time"
            )
        lists = {"data.train_videos": options["train_videos"], "data.val_videos": options["val_videos"]}
    else:
        lists = {"data.train_videos + data.val_videos": [*options["train_videos"], *options["val_videos"]]}
    for key, names in lists.items():
        if not names:
            raise ValueError(f"{key} is empty; list at least one video file name")
        if options["task"] == "cut" and len(set(names)) < 2:
            raise ValueError(f"the cut task needs at least two videos in {key}, one to splice into the other")


@register_dataset(
    "video_direction",
    options={
        "root": DataOption(str, "../shared/data/videos", "folder with the source videos", is_path=True),
        "train_videos": DataOption(list, DEFAULT_TRAIN_VIDEOS, "training videos (file names under root); with split: time, used for both"),
        "val_videos": DataOption(list, DEFAULT_VAL_VIDEOS, "evaluation videos (file names under root); with split: time, used for both"),
        "train_clips_per_video": DataOption(int, 32, "training clips per source video and epoch, each shown as played and altered"),
        "val_clips_per_video": DataOption(int, 16, "evaluation clips per source video, each shown as played and altered"),
        "cache_videos": DataOption(bool, True, "decode each source video once per worker and keep the frames"),
        "split": DataOption(str, "videos", "'videos' (train_videos and val_videos) or 'time' (every listed "
                            "video, its first train_fraction for training and the rest for evaluation)"),
        "train_fraction": DataOption(float, 0.7, "with split: time, the leading part of each video used for training"),
        "task": DataOption(str, "direction", "'direction' (forward or reversed), 'order' (in order or shuffled) "
                           "or 'cut' (one shot or two spliced)"),
        **{**CLIP_OPTIONS, "num_frames": DataOption(int, 8, "frames per clip"),
           "stride": DataOption(int, 2, "frame step of dense clips"),
           "img_size": DataOption(int, 64, "clip height and width in pixels")},
    },
    help="clips of real videos as played or altered (reversed, shuffled or spliced), evaluated on other videos "
         "or later time segments",
    load_input=load_video_input,
    validate=validate_video_direction,
)
def build_video_direction(options: dict[str, Any]) -> DatasetBundle:
    """Build the direction, order or cut task from the videos under ``root``."""
    validate_video_direction(options)
    root = Path(options["root"])
    fraction = options["train_fraction"]

    def resolve(names: Sequence[str], what: str) -> list[str]:
        samples = [(str(root / name), 0) for name in names]
        if options["check_videos"]:
            samples = check_videos(samples, options["num_frames"], options["on_error"], what)
        return [path for path, _ in samples]

    if options["split"] == "time":
        # The same videos on both sides, split in time: clips never cross the boundary.
        names = list(dict.fromkeys([*options["train_videos"], *options["val_videos"]]))
        train_paths = val_paths = resolve(names, "source videos")
        train_segment, val_segment = (0.0, fraction), (fraction, 1.0)
    else:
        train_paths = resolve(options["train_videos"], "training videos")
        val_paths = resolve(options["val_videos"], "evaluation videos")
        train_segment = val_segment = (0.0, 1.0)
    common = dict(sampler=_sampler(options), short_side=_decode_short_side(options), cache_videos=options["cache_videos"],
                  task=options["task"])
    train = VideoDirectionDataset(
        train_paths, transform=_transform(options, True), clips_per_video=options["train_clips_per_video"],
        train=True, segment=train_segment, **common,
    )
    val = VideoDirectionDataset(
        val_paths, transform=_transform(options, False), clips_per_video=options["val_clips_per_video"],
        num_crops=options["num_crops"], segment=val_segment, **common,
    )
    logger.info(
        "video_direction (%s task): %d training clips from %d videos, %d evaluation clips from %d videos",
        options["task"], len(train), len(train_paths), len(val), len(val_paths),
    )
    return DatasetBundle(
        train=train, val=val, num_classes=2, class_names=list(TASKS[options["task"]]),
        model_kwargs={"num_frames": options["num_frames"], "img_size": options["img_size"]},
        eval_views=val.num_crops,
    )
