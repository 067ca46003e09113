"""Decoding audio files: soundfile first, torchaudio as a fallback, clear errors otherwise."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# A RIFF size field with one of these values means "unknown" (streaming writers).
_PLACEHOLDER_SIZES = (0, 0xFFFFFFFF)


class AudioDecodeError(ValueError):
    """An audio file is empty, corrupt, truncated or in a format no decoder reads."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read audio file {self.path}: {reason}")


def _declared_wav_data_end(path: Path) -> int | None:
    """Return the byte offset where a RIFF/WAVE file's ``data`` chunk should end, if declared.

    ``None`` for non-WAV files, placeholder sizes and files whose chunk list ends
    before a ``data`` chunk (libsndfile reports those itself).
    """
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        offset = 12
        while True:
            handle.seek(offset)
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                return None if size in _PLACEHOLDER_SIZES else offset + 8 + size
            offset += 8 + size + (size & 1)  # chunks are padded to even sizes


def _check_file(path: Path) -> None:
    """Raise for a missing, empty or truncated file before any decoder opens it."""
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise AudioDecodeError(path, "the file is empty (0 bytes)")

    declared_end = _declared_wav_data_end(path)
    if declared_end is not None and declared_end > size:
        # libsndfile would silently return only the samples present.
        raise AudioDecodeError(
            path,
            f"the WAV file is truncated: its header declares {declared_end} bytes, the file has {size}; "
            "re-export or remove it",
        )


def _read_soundfile(path: Path) -> tuple[torch.Tensor, int]:
    import soundfile as sf

    data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


def _read_torchaudio(path: Path) -> tuple[torch.Tensor, int]:
    import torchaudio

    waveform, sample_rate = torchaudio.load(str(path))  # (C, S), float in [-1, 1]
    return waveform.to(torch.float32), int(sample_rate)


def load_audio(path: PathLike) -> tuple[torch.Tensor, int]:
    """Decode an audio file into a float32 waveform ``(channels, samples)`` in [-1, 1] and its rate.

    soundfile (libsndfile) reads WAV, FLAC, OGG and the other formats it
    supports; torchaudio (which needs its decoding backend installed) is tried
    for the rest.

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        AudioDecodeError: For an empty file, a WAV whose data chunk is cut short,
            a file no decoder reads, or a file with no samples.
    """
    path = Path(path)
    _check_file(path)

    try:
        waveform, sample_rate = _read_soundfile(path)
    except Exception as sf_error:  # libsndfile raises LibsndfileError, RuntimeError or TypeError
        try:
            waveform, sample_rate = _read_torchaudio(path)
        except Exception as ta_error:  # torchaudio raises RuntimeError or ImportError (no backend)
            raise AudioDecodeError(
                path,
                f"soundfile failed ({sf_error}) and torchaudio failed "
                f"({type(ta_error).__name__}: {ta_error}); re-encode it as WAV or FLAC, or remove it from the dataset",
            ) from ta_error
        logger.debug("%s: decoded by torchaudio after soundfile failed (%s)", path, sf_error)

    if waveform.shape[-1] == 0:
        raise AudioDecodeError(path, "the file contains no audio samples")
    if not torch.isfinite(waveform).all():
        raise AudioDecodeError(path, "the decoded samples contain NaN or infinity")
    return waveform, sample_rate


def probe_audio(path: PathLike) -> None:
    """Check cheaply that a file looks decodable (header only when soundfile reads it).

    Raises:
        FileNotFoundError, AudioDecodeError: As :func:`load_audio` would for the
            problems visible without decoding all samples.
    """
    import soundfile as sf

    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except Exception:  # not a libsndfile format: decode fully, which tries torchaudio
        load_audio(path)
        return
    if info.frames == 0:
        raise AudioDecodeError(path, "the file contains no audio samples")


__all__ = ["AudioDecodeError", "load_audio", "probe_audio"]
