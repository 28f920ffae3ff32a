"""The BC training config (a recipe YAML in ``vpt_ray/training/recipes/bc-*.yaml``)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from vpt_ray.models.precision import Precision
from vpt_ray.training.config import OptimConfig, ScalingSpec, ScheduleSpec


@dataclasses.dataclass(frozen=True)
class NullFilterConfig:
    """Drop null actions that occur in runs of ``min_run`` or more consecutive frames (method doc §5)."""

    enabled: bool = True
    min_run: int = 3

    def __post_init__(self):
        if self.min_run < 1:
            raise ValueError(f"null_filter.min_run must be >= 1, got {self.min_run}")


@dataclasses.dataclass(frozen=True)
class BCTrainConfig:
    """Behavioral cloning (foundation training or fine-tuning) on labeled shards.

    ``model``: a policy preset name/path to train from scratch; ``init``: a checkpoint to start from instead
    (a ``vpt_ray.models`` checkpoint directory, or a released ``.model`` file with its ``.weights`` next to
    it) — fine-tuning. Exactly one of the two is needed. ``batch_size``: parallel streams (sequences of
    ``chunk_len`` consecutive frames; null: the model's ``timesteps``) per optimizer step over all workers.
    ``camera_mask``: mask the camera head's loss where the camera meta button is off (the paper does; the
    released BC code did not). ``split_frames``: play episodes longer than this as several streams (each starts
    with an empty memory) to balance rows when there are few long videos; null: only when there are fewer than
    two episodes per stream (then about two pieces per stream). ``precision``: ``vpt_ray.models.precision``
    (auto: bf16 autocast on GPUs, fp32 on CPUs); ``compile``: ``torch.compile`` the policy for training (off
    unless measured to help: ``benchmarks/bench_gpu.py``)."""

    optim: OptimConfig
    model: Optional[str] = None
    init: Optional[str] = None
    batch_size: int = 8
    chunk_len: Optional[int] = None
    schedule: ScheduleSpec = ScheduleSpec()
    null_filter: NullFilterConfig = NullFilterConfig()
    camera_mask: bool = True
    split_frames: Optional[int] = None
    val_fraction: float = 0.1
    seed: int = 0
    scaling: ScalingSpec = ScalingSpec()
    precision: Precision = "auto"
    compile: bool = False

    def __post_init__(self):
        if (self.model is None) == (self.init is None):
            raise ValueError("give exactly one of model (train from scratch) and init (fine-tune a checkpoint), "
                             f"got model={self.model!r}, init={self.init!r}")  # fmt: skip
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size % self.scaling.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of scaling.num_workers "
                             f"{self.scaling.num_workers} (each worker takes an equal share)")  # fmt: skip
        if self.chunk_len is not None and self.chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1 or null, got {self.chunk_len}")
        if self.split_frames is not None and self.split_frames < 1:
            raise ValueError(f"split_frames must be >= 1 or null, got {self.split_frames}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
