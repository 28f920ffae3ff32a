"""The IDM training config (a recipe YAML in ``vpt_ray/training/recipes/idm-*.yaml``)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from vpt_ray.models.precision import Precision
from vpt_ray.training.config import AugmentConfig, OptimConfig, ScalingSpec, ScheduleSpec


@dataclasses.dataclass(frozen=True)
class IDMTrainConfig:
    """``model``: a model preset name (``policies/<name>.yaml``) or YAML path of kind ``idm``.
    ``batch_size``: clips per optimizer step over all workers; ``clip_len``: frames per clip (null: the model's
    ``timesteps``). ``val_fraction`` of the episodes (by id, at least one) is held out for the metrics unless a
    separate held-out set is given to the job. ``precision``: ``vpt_ray.models.precision`` (auto: bf16 autocast
    on GPUs, fp32 on CPUs); ``compile``: ``torch.compile`` the model for training (off unless measured to help:
    ``benchmarks/bench_gpu.py``)."""

    model: str
    optim: OptimConfig
    batch_size: int = 8
    clip_len: Optional[int] = None
    schedule: ScheduleSpec = ScheduleSpec()
    augment: AugmentConfig = AugmentConfig()
    val_fraction: float = 0.1
    seed: int = 0
    scaling: ScalingSpec = ScalingSpec()
    precision: Precision = "auto"
    compile: bool = False

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size % self.scaling.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of scaling.num_workers "
                             f"{self.scaling.num_workers} (each worker takes an equal share)")  # fmt: skip
        if self.clip_len is not None and self.clip_len < 1:
            raise ValueError(f"clip_len must be >= 1 or null, got {self.clip_len}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
