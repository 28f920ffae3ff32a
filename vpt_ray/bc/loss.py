"""The BC loss and held-out metrics.

Loss: the negative log-likelihood of the labeled action under the policy, summed over heads, each head masked
by ``action_space.policy_loss_masks`` (Minecraft: no camera term where the label's camera meta button is off),
averaged over the valid frames::

    nll_bt = sum_head  mask_head_bt * -log pi_head(label_head_bt)
    loss   = sum_bt(valid_bt * nll_bt) / sum_bt(valid_bt)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vpt_ray.actions import ActionSpace
from vpt_ray.training.metrics import SummedMetrics


def head_masks(action_space: ActionSpace, labels: Mapping[str, torch.Tensor], camera_mask: bool) -> dict[str, torch.Tensor]:
    """Per-head loss weights (B, T): the action space's masks, or all ones when ``camera_mask`` is off."""
    if camera_mask:
        return action_space.policy_loss_masks(dict(labels))
    return {k: torch.ones(v.shape, dtype=torch.float32, device=v.device) for k, v in labels.items()}


def bc_loss(action_space: ActionSpace, logprobs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
            valid_bt: torch.Tensor, camera_mask: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """(loss, head -> that head's share of it); ``logprobs`` head -> (B, T, n), ``labels`` head -> int64 (B, T)."""
    masks = head_masks(action_space, labels, camera_mask)
    weight_bt = valid_bt.to(torch.float32)
    frames = weight_bt.sum().clamp_min(1.0)
    parts = {}
    for head, lp in logprobs.items():
        nll_bt = -lp.gather(-1, labels[head].unsqueeze(-1)).squeeze(-1)
        parts[head] = (masks[head] * nll_bt * weight_bt).sum() / frames
    return sum(parts.values()), parts


class BCMetrics(SummedMetrics):
    """Sums over held-out frames: NLL, per-head accuracy where the head counts, exact-action accuracy, and how
    often the policy's most likely action is the null action (the failure null filtering prevents)."""

    def __init__(self, action_space: ActionSpace, camera_mask: bool = True):
        self.action_space = action_space
        self.camera_mask = camera_mask
        heads = list(action_space.policy_heads)
        keys = ["frames", "nll", "exact", "pred_null", "label_null"]
        keys += [f"{h}/{s}" for h in heads for s in ("correct", "counted")]
        self.sums = {k: 0.0 for k in sorted(keys)}

    @torch.no_grad()
    def update(self, logprobs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor], valid_bt: torch.Tensor) -> None:
        space = self.action_space
        valid = valid_bt.bool()
        masks = head_masks(space, labels, self.camera_mask)
        pred = {k: lp.argmax(-1) for k, lp in logprobs.items()}
        nll_bt = sum(masks[k] * -lp.gather(-1, labels[k].unsqueeze(-1)).squeeze(-1) for k, lp in logprobs.items())
        exact = valid.clone()
        for k in logprobs:
            counted = valid & (masks[k] > 0)
            correct = counted & (pred[k] == labels[k])
            exact &= correct | ~counted
            self.sums[f"{k}/correct"] += float(correct.sum())
            self.sums[f"{k}/counted"] += float(counted.sum())
        self.sums["frames"] += float(valid.sum())
        self.sums["nll"] += float(nll_bt[valid].sum())
        self.sums["exact"] += float(exact.sum())
        v = valid.cpu().numpy()
        pred_env = space.from_policy({k: p.cpu().numpy() for k, p in pred.items()})
        label_env = space.from_policy({k: p.cpu().numpy() for k, p in labels.items()})
        self.sums["pred_null"] += float(np.asarray(space.is_null(pred_env))[v].sum())
        self.sums["label_null"] += float(np.asarray(space.is_null(label_env))[v].sum())


    def compute(self) -> dict[str, float]:
        s = self.sums
        n = s["frames"]
        if n == 0:
            return {}
        out = {"frames": n, "nll": s["nll"] / n, "accuracy": s["exact"] / n,
               "pred_null_rate": s["pred_null"] / n, "label_null_rate": s["label_null"] / n}  # fmt: skip
        if len(self.action_space.policy_heads) > 1:
            for k in self.action_space.policy_heads:
                if s[f"{k}/counted"]:
                    out[f"{k}/accuracy"] = s[f"{k}/correct"] / s[f"{k}/counted"]
        return out
