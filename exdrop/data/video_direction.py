"""Built-in task on real videos: is a clip played forward or reversed?

Every source video gives ``clips_per_video`` clips, each shown forward (label
0) and reversed (label 1), so the classes are balanced and a single frame
carries no information about the label: the model has to use the order of
frames. Training and evaluation use different source videos with different
scenes.
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

CLASS_NAMES = ("forward", "reversed")

# Scenes of the six demo videos: arm wrestling (demo, demo_spatiotemporal_det), a pool
# being cleaned (test.mp4, rawvideo_dataset_part_0), make-up (test.avi) and two people
# standing (demo_skeleton). Training uses the first two scenes, evaluation the last two.
DEFAULT_TRAIN_VIDEOS = ["demo.mp4", "demo_spatiotemporal_det.mp4", "test.mp4", "rawvideo_dataset_part_0.mp4"]
DEFAULT_VAL_VIDEOS = ["test.avi", "demo_skeleton.mp4"]


class VideoDirectionDataset(Dataset):
    """Forward and reversed clips of a few videos.

    Item order: video, clip, direction (forward, reversed), crop. Training
    clips start at random frames; evaluation clips start at
    ``clips_per_video`` fixed frames spread over each video.

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
    ) -> None:
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
        clip, reverse = divmod(rest, 2)
        path = self.paths[video]
        rng = random.Random(random.getrandbits(64)) if self.train else None

        num_frames = len(self._frames[path]) if path in self._frames else self._num_frames(path)
        indices = self.sampler(num_frames, clip=clip, num_clips=self.clips_per_video, rng=rng)
        if reverse:
            indices = indices[::-1]
        frames = self._read(path, indices)
        return self.transform(frames, crop=crop, num_crops=self.num_crops, rng=rng), reverse


@register_dataset(
    "video_direction",
    options={
        "root": DataOption(str, "../shared/data/videos", "folder with the source videos", is_path=True),
        "train_videos": DataOption(list, DEFAULT_TRAIN_VIDEOS, "file names of the training source videos"),
        "val_videos": DataOption(list, DEFAULT_VAL_VIDEOS, "file names of the evaluation source videos"),
        "train_clips_per_video": DataOption(int, 32, "training clips per source video and epoch (x2 directions)"),
        "val_clips_per_video": DataOption(int, 16, "evaluation clips per source video (x2 directions)"),
        "cache_videos": DataOption(bool, True, "decode each source video once per worker and keep the frames"),
        **{**CLIP_OPTIONS, "num_frames": DataOption(int, 8, "frames per clip"),
           "stride": DataOption(int, 2, "frame step of dense clips"),
           "img_size": DataOption(int, 64, "clip height and width in pixels")},
    },
    help="clips of real videos played forward or reversed; separate source videos for evaluation",
    load_input=load_video_input,
)
def build_video_direction(options: dict[str, Any]) -> DatasetBundle:
    """Build the forward/reversed task from the videos under ``root``."""
    _check_on_error(options["on_error"])
    root = Path(options["root"])
    if options["sampling"] != "dense":
        raise ValueError("video_direction needs sampling: dense (uniform segments of a reversed clip are not a played clip)")
    overlap = set(options["train_videos"]) & set(options["val_videos"])
    if overlap:
        raise ValueError(f"train_videos and val_videos share {sorted(overlap)}; use different source videos")

    def resolve(names: Sequence[str], what: str) -> list[str]:
        samples = [(str(root / name), 0) for name in names]
        if options["check_videos"]:
            samples = check_videos(samples, options["num_frames"], options["on_error"], what)
        return [path for path, _ in samples]

    train_paths = resolve(options["train_videos"], "training videos")
    val_paths = resolve(options["val_videos"], "evaluation videos")
    common = dict(sampler=_sampler(options), short_side=_decode_short_side(options), cache_videos=options["cache_videos"])
    train = VideoDirectionDataset(
        train_paths, transform=_transform(options, True), clips_per_video=options["train_clips_per_video"],
        train=True, **common,
    )
    val = VideoDirectionDataset(
        val_paths, transform=_transform(options, False), clips_per_video=options["val_clips_per_video"],
        num_crops=options["num_crops"], **common,
    )
    logger.info(
        "video_direction: %d training clips from %d videos, %d evaluation clips from %d videos",
        len(train), len(train_paths), len(val), len(val_paths),
    )
    return DatasetBundle(
        train=train, val=val, num_classes=2, class_names=list(CLASS_NAMES),
        model_kwargs={"num_frames": options["num_frames"], "img_size": options["img_size"]},
        eval_views=val.num_crops,
    )
