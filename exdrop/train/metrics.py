"""Classification metrics: top-k accuracy and mean average precision."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Count samples whose target is among the ``k`` highest logits, for each ``k``.

    ``k`` larger than the number of classes is clipped to it.
    """
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices  # (N, max_k)
    hits = top.eq(targets.view(-1, 1))
    return {k: int(hits[:, : min(k, max_k)].any(dim=1).sum()) for k in ks}


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class average precision ``(C,)`` for multi-hot ``targets`` ``(N, C)``.

    Classes without a positive sample get NaN and are left out of the mean by
    :func:`mean_average_precision`.
    """
    order = scores.argsort(dim=0, descending=True)
    sorted_targets = targets.gather(0, order).float()  # (N, C)
    hits = sorted_targets.cumsum(dim=0)
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float32).unsqueeze(1)
    precision = hits / ranks
    positives = sorted_targets.sum(dim=0)
    ap = (precision * sorted_targets).sum(dim=0) / positives
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of :func:`average_precision` over classes that have a positive sample."""
    ap = average_precision(scores, targets)
    return float(ap[~ap.isnan()].mean()) if (~ap.isnan()).any() else float("nan")
