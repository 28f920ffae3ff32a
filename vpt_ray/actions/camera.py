"""Mu-law camera quantiser: relative camera degrees <-> discrete bins per axis.

VPT quantises each camera axis (pitch, yaw) independently: clip to +-maxval, compress with mu-law so that small
movements get fine bins, then cut the compressed range into bins of width ``binsize``. The released settings
(maxval 10, binsize 2, mu 10) give 11 bins with centres -10, -5.81, -3.22, -1.61, -0.62, 0, 0.62, ... degrees;
bin 5 means "no movement".

Everything is computed in float64 and rounded with numpy's half-to-even rule, which is what the released code
does, so inputs that sit exactly between two bins land where the released models expect them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraQuantizer:
    maxval: float = 10.0
    binsize: float = 2.0
    mu: float = 10.0

    def __post_init__(self) -> None:
        if not (self.maxval > 0 and self.binsize > 0 and self.mu > 0):
            raise ValueError(
                f"CameraQuantizer: maxval, binsize and mu must be > 0, got maxval={self.maxval}, "
                f"binsize={self.binsize}, mu={self.mu}"
            )
        half = self.maxval / self.binsize
        if half != int(half):
            # The zero bin must sit exactly on 0 degrees, so the range must hold a whole number of bins per side.
            raise ValueError(
                f"CameraQuantizer: maxval / binsize must be a whole number, got {self.maxval} / {self.binsize}"
            )

    @property
    def n_bins(self) -> int:
        return 2 * int(self.maxval / self.binsize) + 1

    @property
    def zero_bin(self) -> int:
        """The bin of a camera that does not move (5 for the released settings)."""
        return self.n_bins // 2

    def discretize(self, degrees) -> np.ndarray:
        """Degrees (any shape) -> int64 bin indices in [0, n_bins)."""
        x = np.asarray(degrees, dtype=np.float64)
        if np.isnan(x).any():
            raise ValueError(f"camera contains NaN: {x}")
        x = np.clip(x, -self.maxval, self.maxval) / self.maxval
        encoded = np.sign(x) * (np.log(1.0 + self.mu * np.abs(x)) / np.log(1.0 + self.mu)) * self.maxval
        return np.round((encoded + self.maxval) / self.binsize).astype(np.int64)

    def undiscretize(self, bins) -> np.ndarray:
        """Bin indices (any shape) -> float64 degrees of the bin centres."""
        b = np.asarray(bins)
        if b.size and (b.min() < 0 or b.max() >= self.n_bins):
            raise ValueError(f"camera bins must lie in [0, {self.n_bins}), got min {b.min()} max {b.max()}")
        u = (b.astype(np.float64) * self.binsize - self.maxval) / self.maxval
        return np.sign(u) * ((1.0 + self.mu) ** np.abs(u) - 1.0) / self.mu * self.maxval

    @property
    def bin_centres(self) -> np.ndarray:
        return self.undiscretize(np.arange(self.n_bins))

    @property
    def switch_points(self) -> np.ndarray:
        """Positive degrees where the bin index changes (the negative side mirrors them)."""
        u = (np.arange(self.zero_bin) + 0.5) * self.binsize / self.maxval
        return ((1.0 + self.mu) ** u - 1.0) / self.mu * self.maxval


# The settings of the released VPT models.
VPT_CAMERA = CameraQuantizer(maxval=10.0, binsize=2.0, mu=10.0)
