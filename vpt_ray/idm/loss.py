"""The IDM training loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def idm_loss(logprobs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
             valid_bt: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Sum over heads (and their factors) of the NLL of the labels, averaged over valid frames.

    ``logprobs``: head -> (B, T, factors, classes); ``labels``: head -> int64 (B, T, factors); returns
    (loss, head -> that head's mean NLL) — the heads' parts add up to the loss.
    """
    weight_bt = valid_bt.to(torch.float32)
    frames = weight_bt.sum().clamp_min(1.0)
    parts = {}
    for head, lp in logprobs.items():
        nll_bt = -lp.gather(-1, labels[head].unsqueeze(-1)).squeeze(-1).sum(-1)
        parts[head] = (nll_bt * weight_bt).sum() / frames
    return sum(parts.values()), parts
