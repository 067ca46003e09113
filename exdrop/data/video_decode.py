"""Video decoding with PyAV: probing, frame-exact seeking and decode-time resizing.

Frame ``i`` of a video is the ``i``-th frame in presentation order, the frame
a full sequential decode would return at position ``i``. Its timestamp comes
from the container's packet index (a demux pass reads packet headers without
decoding), so :func:`read_frames` can seek to the keyframe before the first
requested frame instead of decoding everything before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Containers whose decoded frames carry their packets' presentation timestamps.
# AVI does not guarantee it: MPEG-4 Part 2 AVIs with packed B-frames (placeholder
# packets of a few bytes) decode frames whose timestamps are out of order, so
# AVI and other containers are decoded from the start.
SEEKABLE_FORMATS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm"})


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded; ``path`` names it."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class VideoTooShortError(VideoDecodeError):
    """A video has fewer frames than a clip needs."""


@dataclass(frozen=True)
class VideoInfo:
    """Stream properties of one video file.

    Attributes:
        path: The file.
        num_frames: Frames in the video stream (from the packet index).
        fps: Average frame rate.
        width: Frame width in pixels.
        height: Frame height in pixels.
        codec: Video codec name (``h264``, ``mpeg4``, ...).
        container: Container format name.
        has_audio: The file also has an audio stream (it is ignored).
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str
    container: str
    has_audio: bool


def _open(path: PathLike):
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoDecodeError(path, f"not a readable video container ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "the file has no video stream")
    return container


def frame_timestamps(container, stream) -> Optional[list[int]]:
    """Return the presentation timestamps of all frames, sorted, or ``None`` if packets lack them."""
    timestamps = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
            continue
        if packet.pts is None:
            return None
        timestamps.append(int(packet.pts))
    return sorted(timestamps)


def probe_video(path: PathLike) -> VideoInfo:
    """Read stream properties and count the frames (packet index, no decoding).

    Raises:
        VideoDecodeError: The file is missing, not a video, or has no decodable frame.
    """
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            timestamps = frame_timestamps(container, stream)
            num_frames = len(timestamps) if timestamps is not None else stream.frames
            container.seek(0)
            next(container.decode(stream))  # the codec must accept at least the first frame
        except (av.error.FFmpegError, StopIteration) as err:
            raise VideoDecodeError(path, f"no decodable video frame ({err or 'empty stream'})") from err
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            path=str(path),
            num_frames=int(num_frames),
            fps=float(rate) if rate else 0.0,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            container=container.format.name,
            has_audio=bool(container.streams.audio),
        )
    finally:
        container.close()


def _target_size(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    """Size with the short side at ``short_side`` (downscale only, even numbers for swscale)."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def read_frames(
    path: PathLike,
    indices: Sequence[int],
    short_side: Optional[int] = None,
) -> torch.Tensor:
    """Decode the frames at ``indices`` (any order, repeats allowed) as uint8 ``(T, H, W, 3)`` RGB.

    Seeks to the keyframe before the first needed frame when the container
    has packet timestamps, and falls back to decoding from the start when it
    has none or the seek lands after the target. ``short_side`` scales frames
    down during decoding (swscale), which is much cheaper than decoding a
    1080p frame and resizing it afterwards.

    Raises:
        VideoTooShortError: An index is past the last frame.
        VideoDecodeError: The file cannot be opened or decoded.
    """
    import av

    if len(indices) == 0:
        raise ValueError("read_frames needs at least one frame index")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            timestamps = frame_timestamps(container, stream)
            num_frames = len(timestamps) if timestamps is not None else stream.frames
            if max(indices) >= num_frames:
                raise VideoTooShortError(
                    path, f"frame {max(indices)} requested, but the video has {num_frames} frames"
                )
            wanted = set(indices)
            seekable = bool(timestamps) and bool(SEEKABLE_FORMATS & set(container.format.name.split(",")))
            frames = _decode_seeking(container, stream, timestamps, wanted, short_side) if seekable else None
            if frames is None:
                frames = _decode_sequential(container, stream, wanted, short_side)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(path, f"decoding failed ({err})") from err
    finally:
        container.close()
    missing = wanted - set(frames)
    if missing:
        raise VideoTooShortError(path, f"frames {sorted(missing)[:5]} could not be decoded; the file may be truncated")
    return torch.from_numpy(np.stack([frames[i] for i in indices]))


def _to_rgb(frame, short_side: Optional[int]) -> np.ndarray:
    width, height = _target_size(frame.width, frame.height, short_side)
    return frame.to_ndarray(format="rgb24", width=width, height=height)


def _decode_seeking(container, stream, timestamps, wanted, short_side) -> Optional[dict[int, np.ndarray]]:
    """Seek to the keyframe before the first wanted frame; ``None`` if the timestamps do not line up."""
    index_of = {pts: i for i, pts in enumerate(timestamps)}
    first, last = min(wanted), max(wanted)
    container.seek(timestamps[first], stream=stream, backward=True, any_frame=False)
    frames: dict[int, np.ndarray] = {}
    previous = -1
    for frame in container.decode(stream):
        index = index_of.get(frame.pts)
        if index is None or index <= previous or (previous < 0 and index > first):
            return None  # unknown or out-of-order timestamp, or the seek landed after the target
        previous = index
        if index in wanted:
            frames[index] = _to_rgb(frame, short_side)
        if index >= last:
            break
    return frames


def _decode_sequential(container, stream, wanted, short_side) -> dict[int, np.ndarray]:
    container.seek(0)
    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted:
            frames[index] = _to_rgb(frame, short_side)
        if index >= last:
            break
    return frames


def read_all_frames(path: PathLike, short_side: Optional[int] = None) -> torch.Tensor:
    """Decode every frame of a video as uint8 ``(T, H, W, 3)``."""
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            frames = [_to_rgb(frame, short_side) for frame in container.decode(stream)]
        except av.error.FFmpegError as err:
            raise VideoDecodeError(path, f"decoding failed ({err})") from err
    finally:
        container.close()
    if not frames:
        raise VideoDecodeError(path, "no decodable video frame")
    return torch.from_numpy(np.stack(frames))
