"""Explicit dropout terms as plain tensor functions.

Every term is the expected squared perturbation that an inverted-dropout mask
``m / (1 - p)``, ``m ~ Bernoulli(1 - p)``, would cause at the first linear map
after the dropout point. With ``rho = p / (1 - p)`` and independent zero-mean
perturbations, ``E ||W (u~ - u)||^2 = rho * sum_i u_i^2 ||W[:, i]||^2``.

Each function returns the mean over batch and tokens of the per-token term, in
float32 whatever the input dtype, and keeps the graph to both the activations
and the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def column_sq_norms(weight: torch.Tensor) -> torch.Tensor:
    """Return ``||W[:, i]||^2`` for a Linear weight of shape ``(out, in)``, in float32."""
    return _fp32(weight).square().sum(dim=0)


def linear_input_term(u: torch.Tensor, weight: torch.Tensor, rho: float) -> torch.Tensor:
    """Term for dropout on ``u`` feeding ``Linear(weight)``.

    Args:
        u: Activations ``(..., in_features)``, for example ``(B, N, C)``.
        weight: The Linear weight ``(out_features, in_features)``, or a row block
            of a fused weight such as one third of timm's ``qkv.weight``.
        rho: ``p / (1 - p)``.
    """
    with torch.autocast(device_type=u.device.type, enabled=False):
        per_token = _fp32(u).square() @ column_sq_norms(weight)  # (...)
        return rho * per_token.mean()


def output_term(y: torch.Tensor, rho: float) -> torch.Tensor:
    """Term for dropout on a residual-branch output ``y`` ``(..., C)`` (identity map next)."""
    with torch.autocast(device_type=y.device.type, enabled=False):
        return rho * _fp32(y).square().sum(dim=-1).mean()


def attn_probs_term(attn: torch.Tensor, v: torch.Tensor, rho: float) -> torch.Tensor:
    """Term for dropout on materialized attention probabilities.

    Args:
        attn: Softmax probabilities ``(B, H, N_q, N_k)``.
        v: Values ``(B, H, N_k, D)``.
        rho: ``p / (1 - p)``.

    Returns:
        ``rho * mean_{b, t} sum_h sum_j A_tj^2 ||v_j||^2``.
    """
    with torch.autocast(device_type=attn.device.type, enabled=False):
        v_sq = _fp32(v).square().sum(dim=-1, keepdim=True)  # (B, H, N_k, 1)
        per_query = (_fp32(attn).square() @ v_sq).squeeze(-1)  # (B, H, N_q)
        return rho * per_query.sum(dim=1).mean()


def _chunk_attn_sq_weighted(
    q_chunk: torch.Tensor, k: torch.Tensor, v_sq: torch.Tensor, scale: float
) -> torch.Tensor:
    """``sum_j A_tj^2 c_j`` for one block of queries, ``(B, H, n)``.

    Uses ``sum_j A_tj^2 c_j = exp(lse2 - 2 lse) * sum_j softmax(2 s)_j c_j`` so
    that no squared probability underflows before the weighted sum.
    """
    scores = (q_chunk @ k.transpose(-2, -1)) * scale  # (B, H, n, N_k)
    lse = torch.logsumexp(scores, dim=-1)
    lse2 = torch.logsumexp(2.0 * scores, dim=-1)
    weighted = F.softmax(2.0 * scores, dim=-1) @ v_sq  # (B, H, n, 1)
    return torch.exp(lse2 - 2.0 * lse) * weighted.squeeze(-1)


def attn_probs_term_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rho: float,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Exact ``attn`` term without keeping the ``N x N`` probabilities.

    Queries are processed ``chunk_size`` at a time and each chunk is
    recomputed in the backward pass (activation checkpointing), so memory grows
    linearly with the sequence length. The result equals
    :func:`attn_probs_term` on ``softmax(q k^T * scale)``.

    Args:
        q, k, v: ``(B, H, N, D)`` after any q/k normalization.
        scale: Score scale, usually ``D ** -0.5``.
        rho: ``p / (1 - p)``.
        chunk_size: Queries per chunk.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = _fp32(q), _fp32(k)
        v_sq = _fp32(v).square().sum(dim=-1, keepdim=True)  # (B, H, N_k, 1)
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v_sq.requires_grad)
        parts = []
        for start in range(0, q.shape[-2], chunk_size):
            q_chunk = q[..., start:start + chunk_size, :]
            if needs_grad:
                part = checkpoint(_chunk_attn_sq_weighted, q_chunk, k, v_sq, scale, use_reentrant=False)
            else:
                part = _chunk_attn_sq_weighted(q_chunk, k, v_sq, scale)
            parts.append(part)
        per_query = torch.cat(parts, dim=-1)  # (B, H, N_q)
        return rho * per_query.sum(dim=1).mean()
