"""Frame sampling and clip transforms; every random choice is shared by all frames of a clip."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

SAMPLING_MODES = ("dense", "uniform")


@dataclass
class FrameSampler:
    """Choose the frame indices of one clip.

    ``"dense"`` takes ``num_frames`` frames ``stride`` apart (VideoMAE): a
    random start in training, and for evaluation ``num_clips`` starts spread
    evenly over the video. When the video is shorter than the span, the
    stride shrinks to fit. ``"uniform"`` splits the video into ``num_frames``
    equal segments and takes one frame from each (TSN): a random one in
    training, and at offset ``(clip + 0.5) / num_clips`` inside every segment
    for evaluation.

    Attributes:
        num_frames: Frames per clip.
        mode: ``"dense"`` or ``"uniform"``.
        stride: Frame step of dense clips.
    """

    num_frames: int
    mode: str = "dense"
    stride: int = 4

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling={self.mode!r} is not supported; use one of {SAMPLING_MODES}")
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"num_frames and stride must be >= 1, got {self.num_frames} and {self.stride}")

    def __call__(
        self, video_frames: int, clip: int = 0, num_clips: int = 1, rng: Optional[random.Random] = None
    ) -> list[int]:
        """Return ``num_frames`` indices into a video of ``video_frames`` frames.

        Args:
            video_frames: Frames in the video; must be >= ``num_frames``.
            clip: Evaluation clip index in ``[0, num_clips)``; ignored with ``rng``.
            num_clips: Evaluation clips per video.
            rng: Random source for training clips; ``None`` gives evaluation clips.
        """
        if video_frames < self.num_frames:
            raise ValueError(f"a video of {video_frames} frames is shorter than a clip of {self.num_frames}")
        if self.mode == "uniform":
            return self._uniform(video_frames, clip, num_clips, rng)
        stride = self.stride
        if (self.num_frames - 1) * stride + 1 > video_frames:
            stride = max(1, (video_frames - 1) // max(1, self.num_frames - 1))
        span = (self.num_frames - 1) * stride + 1
        max_start = video_frames - span
        if rng is not None:
            start = rng.randint(0, max_start)
        elif num_clips == 1:
            start = max_start // 2
        else:
            start = round(max_start * clip / (num_clips - 1))
        return [start + i * stride for i in range(self.num_frames)]

    def _uniform(self, video_frames: int, clip: int, num_clips: int, rng: Optional[random.Random]) -> list[int]:
        segment = video_frames / self.num_frames
        indices = []
        for i in range(self.num_frames):
            low = math.floor(i * segment)
            high = max(low, math.floor((i + 1) * segment) - 1)
            if rng is not None:
                indices.append(rng.randint(low, high))
            else:
                indices.append(min(high, low + int((clip + 0.5) / num_clips * (high - low + 1))))
        return indices


@dataclass
class ClipTransform:
    """Turn uint8 frames ``(T, H, W, 3)`` into a normalized float clip ``(3, T, size, size)``.

    Training: one random resized crop (area ``scale``, aspect ``ratio``) and
    one horizontal flip decision for the whole clip. Evaluation: resize the
    short side to ``size / crop_pct``, then take crop ``crop`` of ``num_crops``
    crops spread along the long side. One crop is the center crop, and three
    are the start, center and end crops.

    Attributes:
        size: Output height and width.
        train: Random augmentation instead of deterministic crops.
        scale: Crop area range, as fractions of the frame.
        ratio: Crop aspect-ratio range.
        hflip: Flip probability in training.
        crop_pct: Evaluation crop fraction of the resized short side.
        mean: Per-channel mean, for pixel values in [0, 1].
        std: Per-channel standard deviation.
    """

    size: int
    train: bool = False
    scale: Sequence[float] = (0.25, 1.0)
    ratio: Sequence[float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_pct: float = 0.875
    mean: Sequence[float] = field(default_factory=lambda: (0.485, 0.456, 0.406))
    std: Sequence[float] = field(default_factory=lambda: (0.229, 0.224, 0.225))

    def __call__(
        self, frames: torch.Tensor, crop: int = 0, num_crops: int = 1, rng: Optional[random.Random] = None
    ) -> torch.Tensor:
        """Transform one clip; ``rng`` drives the training randomness (``random`` module if ``None``)."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got shape {tuple(frames.shape)}")
        rng = rng or random.Random(random.getrandbits(64))
        clip = frames.permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W) in [0, 1]
        if self.train:
            top, left, height, width = self._random_crop_box(clip.shape[-2], clip.shape[-1], rng)
            clip = self._resize(clip[..., top:top + height, left:left + width], (self.size, self.size))
            if rng.random() < self.hflip:
                clip = clip.flip(-1)
        else:
            clip = self._eval_crop(clip, crop, num_crops)
        mean = torch.tensor(self.mean, dtype=clip.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=clip.dtype).view(1, 3, 1, 1)
        clip = (clip - mean) / std
        return clip.permute(1, 0, 2, 3).contiguous()  # (3, T, H, W)

    @staticmethod
    def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(clip.shape[-2:]) == tuple(size):
            return clip
        return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)

    def _random_crop_box(self, height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
        """Sample a crop as torchvision's RandomResizedCrop does, with a center-crop fallback."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                return rng.randint(0, height - crop_h), rng.randint(0, width - crop_w), crop_h, crop_w
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side

    def _eval_crop(self, clip: torch.Tensor, crop: int, num_crops: int) -> torch.Tensor:
        height, width = clip.shape[-2:]
        short = max(self.size, round(self.size / self.crop_pct))
        scale = short / min(height, width)
        clip = self._resize(clip, (max(self.size, round(height * scale)), max(self.size, round(width * scale))))
        height, width = clip.shape[-2:]
        position = 0.5 if num_crops == 1 else crop / (num_crops - 1)
        top = round((height - self.size) * (position if height > width else 0.5))
        left = round((width - self.size) * (position if width >= height else 0.5))
        return clip[..., top:top + self.size, left:left + self.size]
