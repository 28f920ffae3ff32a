"""Held-out metrics kept as sums over frames, so that data-parallel workers' shares add up exactly."""

from __future__ import annotations

import numpy as np


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
