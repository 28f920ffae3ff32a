"""IDM metrics on held-out data, accumulated as sums so several Ray Train workers can add theirs up exactly.

- Accuracy of every IDM factor: Minecraft ``buttons/<button>/accuracy`` (20 keys) and their mean
  ``buttons/accuracy`` (the paper's keypress accuracy), ``camera/{pitch,yaw}/bin_accuracy``; Crafter
  ``action/accuracy`` and the recall of each action ``action/<name>/recall``.
- ``exact_accuracy``: every factor of the frame right.
- Minecraft camera R^2 in degrees (the paper's mouse-movement R^2): predictions are the bin centres of the
  predicted bins, targets the recorded degrees clipped to the quantiser's range (what any bin can express);
  ``camera/r2`` pools both axes (1 - sum of squared errors / sum of squares about each axis' mean),
  ``camera/{pitch,yaw}/r2`` per axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vpt_ray.actions import ActionSpace
from vpt_ray.training.metrics import SummedMetrics

CAMERA_AXES = ("pitch", "yaw")


def factor_names(action_space: ActionSpace) -> dict[str, list[str]]:
    """IDM head -> a name per factor."""
    names = {}
    for head, (factors, _) in action_space.idm_heads.items():
        if head == "buttons":
            names[head] = list(action_space.buttons)
        elif head == "camera":
            names[head] = list(CAMERA_AXES)
        else:
            names[head] = [head] if factors == 1 else [f"{head}{i}" for i in range(factors)]
    return names


class IDMMetrics(SummedMetrics):
    """Sums over frames; :meth:`update` with predictions and targets, :meth:`compute` for the metrics."""

    def __init__(self, action_space: ActionSpace):
        self.action_space = action_space
        self.names = factor_names(action_space)
        self.sums: dict[str, float] = {key: 0.0 for key in self._keys()}

    def _keys(self) -> list[str]:
        keys = ["frames", "exact"]
        for head, names in self.names.items():
            keys += [f"{head}/{n}/correct" for n in names]
        if "camera" in self.action_space.idm_heads:
            for axis in CAMERA_AXES:
                keys += [f"camera/{axis}/{s}" for s in ("sse", "sum", "sumsq")]
        if self.action_space.name == "crafter":
            for name in self.action_space.actions:
                keys += [f"action/{name}/n", f"action/{name}/correct"]
        return sorted(keys)

    def update(self, pred_idm: Mapping[str, np.ndarray], true_env: Mapping[str, np.ndarray]) -> None:
        """``pred_idm``: IDM indices (N, factors) per head; ``true_env``: env arrays (N, ...) of the same frames."""
        space = self.action_space
        true_idm = space.to_idm(true_env)
        n = len(next(iter(true_idm.values())))
        self.sums["frames"] += n
        exact = np.ones(n, bool)
        for head, names in self.names.items():
            correct = np.asarray(pred_idm[head]) == true_idm[head]
            exact &= correct.all(-1)
            for i, name in enumerate(names):
                self.sums[f"{head}/{name}/correct"] += float(correct[:, i].sum())
        self.sums["exact"] += float(exact.sum())
        if "camera" in space.idm_heads:
            pred_deg = np.asarray(space.quantizer.undiscretize(np.asarray(pred_idm["camera"])), np.float64)
            limit = space.quantizer.maxval
            true_deg = np.clip(np.asarray(true_env["camera"], np.float64), -limit, limit)
            for i, axis in enumerate(CAMERA_AXES):
                self.sums[f"camera/{axis}/sse"] += float(((pred_deg[:, i] - true_deg[:, i]) ** 2).sum())
                self.sums[f"camera/{axis}/sum"] += float(true_deg[:, i].sum())
                self.sums[f"camera/{axis}/sumsq"] += float((true_deg[:, i] ** 2).sum())
        if space.name == "crafter":
            truth = true_idm["action"][:, 0]
            hit = np.asarray(pred_idm["action"])[:, 0] == truth
            for a, name in enumerate(space.actions):
                self.sums[f"action/{name}/n"] += float((truth == a).sum())
                self.sums[f"action/{name}/correct"] += float((hit & (truth == a)).sum())


    def compute(self) -> dict[str, float]:
        s = self.sums
        n = s["frames"]
        if n == 0:
            return {}
        out = {"frames": n, "exact_accuracy": s["exact"] / n}
        for head, names in self.names.items():
            accs = [s[f"{head}/{name}/correct"] / n for name in names]
            suffix = "bin_accuracy" if head == "camera" else "accuracy"
            if names != [head]:
                for name, acc in zip(names, accs):
                    out[f"{head}/{name}/{suffix}"] = acc
            out[f"{head}/{suffix}"] = float(np.mean(accs))
        if "camera" in self.action_space.idm_heads:
            sse_all = sst_all = 0.0
            for axis in CAMERA_AXES:
                sse = s[f"camera/{axis}/sse"]
                sst = s[f"camera/{axis}/sumsq"] - s[f"camera/{axis}/sum"] ** 2 / n
                out[f"camera/{axis}/r2"] = 1.0 - sse / sst if sst > 0 else float("nan")
                sse_all, sst_all = sse_all + sse, sst_all + sst
            out["camera/r2"] = 1.0 - sse_all / sst_all if sst_all > 0 else float("nan")
        if self.action_space.name == "crafter":
            for name in self.action_space.actions:
                if s[f"action/{name}/n"] > 0:
                    out[f"action/{name}/recall"] = s[f"action/{name}/correct"] / s[f"action/{name}/n"]
        return out
