"""The AST frontend: Kaldi-compatible log-mel filterbank features from waveforms.

The steps follow the original AST data loader and transformers'
``ASTFeatureExtractor``. A waveform is mixed down to mono and resampled to
16 kHz. A 128-bin Kaldi fbank is computed from samples in [-1, 1] with a 25 ms
Hanning window, a 10 ms shift, HTK-compatible settings, no energy and dither 0
at evaluation. The frames are zero-padded or cropped to a fixed number and
normalized as ``(x - mean) / (2 * std)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from ..models.ast import AUDIOSET_MEAN, AUDIOSET_STD

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FbankConfig:
    """Feature settings shared by datasets, the waveform frontend and ``predict``.

    Attributes:
        sample_rate: Rate in Hz that waveforms are resampled to before the fbank.
        num_mel_bins: Mel bins (the model's ``input_fdim``).
        target_frames: Frames after padding or cropping (the model's ``input_tdim``).
        mean: Dataset mean of the unnormalized log-mel features.
        std: Dataset standard deviation; features are divided by ``2 * std``.
        frame_length_ms: Window length in milliseconds.
        frame_shift_ms: Hop in milliseconds.
        dither: Kaldi dither amplitude (0 for evaluation and for the AST recipes).
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_frames: int = 1024
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0

    def __post_init__(self) -> None:
        if self.std <= 0:
            raise ValueError(f"feature std must be positive, got {self.std}")
        if self.target_frames < 1 or self.num_mel_bins < 1 or self.sample_rate < 1:
            raise ValueError(
                f"sample_rate, num_mel_bins and target_frames must be positive, got "
                f"{self.sample_rate}, {self.num_mel_bins}, {self.target_frames}"
            )

    @property
    def window_samples(self) -> int:
        """Samples in one analysis window at ``sample_rate``."""
        return int(self.sample_rate * self.frame_length_ms / 1000)


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """Average ``(channels, samples)`` into ``(samples,)``; a 1-D waveform is returned as is."""
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise ValueError(f"expected a waveform (samples,) or (channels, samples), got shape {tuple(waveform.shape)}")
    return waveform.mean(dim=0)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample along the last axis with torchaudio's windowed-sinc filter (identity when rates match)."""
    if orig_rate == new_rate:
        return waveform
    import torchaudio.functional as AF

    return AF.resample(waveform, orig_rate, new_rate)


def kaldi_fbank(waveform: torch.Tensor, config: FbankConfig, dither: Optional[float] = None) -> torch.Tensor:
    """Compute log-mel features ``(frames, num_mel_bins)`` of a mono waveform at ``config.sample_rate``.

    A waveform shorter than one window is zero-padded to one window, giving a
    single frame, because Kaldi's framing yields no frame for it.
    """
    import torchaudio.compliance.kaldi as kaldi

    if waveform.ndim != 1:
        raise ValueError(f"kaldi_fbank expects a mono waveform (samples,), got shape {tuple(waveform.shape)}")
    if waveform.numel() < config.window_samples:
        waveform = torch.nn.functional.pad(waveform, (0, config.window_samples - waveform.numel()))
    return kaldi.fbank(
        waveform.unsqueeze(0).to(torch.float32),
        htk_compat=True,
        sample_frequency=config.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=config.num_mel_bins,
        dither=config.dither if dither is None else dither,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
    )


def pad_or_crop(fbank: torch.Tensor, target_frames: int, start: int = 0) -> torch.Tensor:
    """Zero-pad ``(frames, bins)`` at the end, or keep ``target_frames`` frames from ``start``."""
    frames = fbank.shape[0]
    if frames < target_frames:
        return torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - frames))
    return fbank[start:start + target_frames]


def normalize_fbank(fbank: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Normalize log-mel features as AST does: ``(x - mean) / (2 * std)``."""
    return (fbank - mean) / (2 * std)


def raw_features(waveform: torch.Tensor, sample_rate: int, config: FbankConfig, dither: Optional[float] = None) -> torch.Tensor:
    """Mix down, resample and compute the unpadded, unnormalized fbank ``(frames, bins)``."""
    mono = resample(to_mono(waveform.to(torch.float32)), sample_rate, config.sample_rate)
    return kaldi_fbank(mono, config, dither)


def waveform_to_features(
    waveform: torch.Tensor,
    sample_rate: int,
    config: FbankConfig,
    dither: Optional[float] = None,
    crop_start: int = 0,
) -> torch.Tensor:
    """Turn a waveform ``(samples,)`` or ``(channels, samples)`` into model input ``(target_frames, bins)``."""
    fbank = raw_features(waveform, sample_rate, config, dither)
    fbank = pad_or_crop(fbank, config.target_frames, crop_start)
    return normalize_fbank(fbank, config.mean, config.std)


class FbankFrontend(nn.Module):
    """Batch frontend: waveforms ``(B, samples)`` or ``(B, channels, samples)`` -> features ``(B, T, F)``.

    Args:
        config: Feature settings; ``config.dither`` applies in training mode only.
        input_rate: Sample rate in Hz of the waveforms passed to ``forward``.
    """

    def __init__(self, config: FbankConfig = FbankConfig(), input_rate: int = 16000) -> None:
        super().__init__()
        self.config = config
        self.input_rate = input_rate

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Compute features for each waveform of the batch (Kaldi's fbank works on one at a time)."""
        if waveforms.ndim not in (2, 3):
            raise ValueError(f"expected (batch, samples) or (batch, channels, samples), got {tuple(waveforms.shape)}")
        dither = self.config.dither if self.training else 0.0
        features = [waveform_to_features(w, self.input_rate, self.config, dither) for w in waveforms]
        return torch.stack(features)


class ASTWaveformModel(nn.Module):
    """An AST (or any ``(B, T, F)`` classifier) with the fbank frontend in front, for raw audio.

    Args:
        model: Classifier on features, e.g. :class:`~exdrop.models.ast.ASTModel`.
        frontend: Feature extractor; by default the model's own settings
            (``pretrained_cfg`` mean, std, mel bins and ``input_tdim``).
        input_rate: Sample rate of the waveforms when ``frontend`` is not given.
    """

    def __init__(self, model: nn.Module, frontend: Optional[FbankFrontend] = None, input_rate: int = 16000) -> None:
        super().__init__()
        self.model = model
        self.frontend = frontend or FbankFrontend(fbank_config_for(model), input_rate=input_rate)

    def forward(self, waveforms: torch.Tensor, return_penalty: bool = False) -> Any:
        """Classify waveforms; returns what the wrapped model returns."""
        return self.model(self.frontend(waveforms), return_penalty=return_penalty)


def fbank_config_for(model: nn.Module) -> FbankConfig:
    """Return the feature settings an AST model expects, read from its ``pretrained_cfg``."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return FbankConfig(
        sample_rate=int(cfg.get("sample_rate", 16000)),
        num_mel_bins=int(cfg.get("num_mel_bins", getattr(model, "input_fdim", 128))),
        target_frames=int(cfg.get("input_tdim", getattr(model, "input_tdim", 1024))),
        mean=float(cfg.get("mean", AUDIOSET_MEAN)),
        std=float(cfg.get("std", AUDIOSET_STD)),
    )


__all__ = [
    "ASTWaveformModel",
    "FbankConfig",
    "FbankFrontend",
    "fbank_config_for",
    "kaldi_fbank",
    "normalize_fbank",
    "pad_or_crop",
    "raw_features",
    "resample",
    "to_mono",
    "waveform_to_features",
]
