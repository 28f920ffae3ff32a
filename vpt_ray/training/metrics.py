"""Training metrics: held-out metrics kept as sums over frames, so that data-parallel workers' shares add up
exactly, and per-step scalars averaged on the device over a reporting interval."""

from __future__ import annotations

import numpy as np
import torch


class StepMeans:
    """Means of per-step scalar tensors (loss, its parts, the gradient norm) over a reporting interval.

    The sums stay on the tensors' device; :meth:`pop` reads them all with one host sync, so the step loop never
    waits for the GPU between reports."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._steps = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._steps += 1

    def pop(self) -> dict[str, float]:
        """The means since the last pop (empty when no step was added), and a fresh start."""
        if not self._steps:
            return {}
        keys = list(self._sums)
        means = (torch.stack([self._sums[k] for k in keys]) / self._steps).tolist()
        self._sums, self._steps = {}, 0
        return dict(zip(keys, means))


class SummedMetrics:
    """Subclasses fill ``self.sums`` (key -> float) in ``update`` and turn them into metrics in ``compute``;
    :meth:`vector` and :meth:`load_vector` carry the sums through an all-reduce."""

    sums: dict[str, float]

    def vector(self) -> np.ndarray:
        """The sums in a fixed (sorted-key) order."""
        return np.array([self.sums[k] for k in sorted(self.sums)], np.float64)

    def load_vector(self, values) -> None:
        for key, value in zip(sorted(self.sums), np.asarray(values, np.float64)):
            self.sums[key] = float(value)

    def compute(self) -> dict[str, float]:
        raise NotImplementedError
