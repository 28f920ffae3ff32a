"""Typed configs of the clean-video filter; defaults are the paper's numbers (App. A)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FilterConfig:
    """How a trained frame classifier turns a video into clean segments."""

    sample_fps: float = 3.0  # classify 3 frames per second of video
    min_clean_fraction: float = 0.8  # keep a video only if >= 80 % of its sampled frames are clean
    median_kernel: int = 7  # median filter over the per-sample labels (samples, odd)
    min_segment_s: float = 5.0  # clean segments shorter than this are dropped
    metadata_blacklist: bool = True  # drop videos whose title/description hit the blacklist
    early_game_only: bool = False  # keep only early-game keyword videos (earlygame_keyword) ...
    early_game_s: float = 300.0  # ... and only their first 5 minutes
    batch_size: int = 64  # frames embedded at once (bounds memory per task)

    def __post_init__(self) -> None:
        _positive(self, "sample_fps", "min_segment_s", "early_game_s")
        _fraction(self, "min_clean_fraction")
        if isinstance(self.median_kernel, bool) or self.median_kernel < 1 or self.median_kernel % 2 == 0:
            raise ValueError(f"median_kernel must be a positive odd integer, got {self.median_kernel}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class TrainConfig:
    """How the frame classifier (embedding + RBF SVM) is trained."""

    # frames sampled per class: clean (survival, no artifacts), artifacts (survival with overlays), none
    samples_per_class: tuple[int, int, int] = (2200, 2200, 4400)
    embedding: str = "handcrafted"  # a name in the embedding registry
    embedding_options: dict[str, Any] = field(default_factory=dict)
    mirror_augment: bool = True  # train on left-right mirrored frames too (overlays sit in any corner)
    svm_c: float = 10.0
    svm_gamma: str | float = "scale"  # sklearn's "scale" = 1 / (n_features * X.var()) on standardised features
    holdout_fraction: float = 0.2  # share of training videos held out to measure accuracy
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.samples_per_class) != 3 or any(n < 1 for n in self.samples_per_class):
            raise ValueError(f"samples_per_class needs 3 positive counts, got {list(self.samples_per_class)}")
        _positive(self, "svm_c")
        if isinstance(self.svm_gamma, str):
            if self.svm_gamma not in ("scale", "auto"):
                raise ValueError(f"svm_gamma must be 'scale', 'auto' or a positive number, got {self.svm_gamma!r}")
        elif self.svm_gamma <= 0:
            raise ValueError(f"svm_gamma must be positive, got {self.svm_gamma}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _fraction(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


def replace(cfg, **overrides):
    """``dataclasses.replace`` ignoring None overrides (unset CLI flags), re-validating the result."""
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
