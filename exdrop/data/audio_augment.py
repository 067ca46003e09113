"""Training augmentations for spectrogram features: SpecAugment masks, time shift and mixup.

Masks and shifts act on one clip ``(T, F)`` inside the dataset, drawing from
torch's generator, which DataLoader seeds per worker. Mixup acts on whole
batches as the bundle's ``train_batch_transform``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpecAugment:
    """SpecAugment frequency and time masking (Park et al., Interspeech 2019).

    Attributes:
        freq_mask: Maximum width in mel bins of the frequency mask (0: off).
        time_mask: Maximum width in frames of the time mask (0: off).
        num_masks: Masks of each kind per clip.
    """

    freq_mask: int = 0
    time_mask: int = 0
    num_masks: int = 1

    def __post_init__(self) -> None:
        if self.freq_mask < 0 or self.time_mask < 0 or self.num_masks < 0:
            raise ValueError(
                f"SpecAugment widths and counts must be >= 0, got freq_mask={self.freq_mask}, "
                f"time_mask={self.time_mask}, num_masks={self.num_masks}"
            )

    @property
    def active(self) -> bool:
        """Whether any mask is applied."""
        return self.num_masks > 0 and (self.freq_mask > 0 or self.time_mask > 0)

    def __call__(self, features: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """Return a copy of ``features`` ``(T, F)`` with random bands set to ``value``."""
        out = features.clone()
        for _ in range(self.num_masks):
            _mask_band(out, self.time_mask, axis=0, value=value)
            _mask_band(out, self.freq_mask, axis=1, value=value)
        return out


def _mask_band(features: torch.Tensor, max_width: int, axis: int, value: float) -> None:
    """Set one band of uniform random width in [0, max_width] along ``axis`` to ``value``, in place."""
    size = features.shape[axis]
    if max_width <= 0 or size == 0:
        return
    width = int(torch.randint(0, min(max_width, size) + 1, ()))
    start = int(torch.randint(0, size - width + 1, ()))
    features.narrow(axis, start, width).fill_(value)


def random_time_shift(features: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Roll ``(T, F)`` along time by a uniform random number of frames in [-max_shift, max_shift]."""
    if max_shift <= 0:
        return features
    shift = int(torch.randint(-max_shift, max_shift + 1, ()))
    return torch.roll(features, shifts=shift, dims=0)


class Mixup:
    """Batch mixup (Zhang et al., ICLR 2018) that also turns targets into class probabilities.

    With probability ``prob`` a batch is mixed with a permutation of itself,
    ``x = lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(alpha, alpha)``;
    targets become soft (or multi-hot) float vectors either way, so a training
    loop gets one target type. Beta(10, 10) is the AST recipe's choice.

    Args:
        num_classes: Width of the target vectors.
        prob: Probability of mixing a batch.
        alpha: Beta distribution parameter.
        multilabel: Targets are already multi-hot ``(B, C)`` floats.
    """

    def __init__(self, num_classes: int, prob: float = 1.0, alpha: float = 10.0, multilabel: bool = False) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mixup probability must be in [0, 1], got {prob}")
        if alpha <= 0:
            raise ValueError(f"mixup alpha must be positive, got {alpha}")
        self.num_classes = num_classes
        self.prob = prob
        self.alpha = alpha
        self.multilabel = multilabel

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch ``x`` ``(B, ...)`` and targets ``y`` (indices ``(B,)`` or vectors ``(B, C)``)."""
        if y.ndim == 1:
            y = torch.nn.functional.one_hot(y.long(), self.num_classes).to(x.dtype)
        else:
            y = y.to(x.dtype)
        if x.shape[0] < 2 or float(torch.rand(())) >= self.prob:
            return x, y
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        perm = torch.randperm(x.shape[0], device=x.device)
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


__all__ = ["Mixup", "SpecAugment", "random_time_shift"]
