"""Behavioral cloning (foundation training and fine-tuning) as a Ray Train job.

``train_bc(BCTrainConfig, data, run_dir)``; ``FilteredStreams`` / ``null_runs_to_drop`` (null-action filtering on
Transformer-XL streams); ``bc_loss`` and ``BCMetrics``; ``load_init`` (fine-tuning start points).
"""

from vpt_ray.bc.config import BCTrainConfig, NullFilterConfig
from vpt_ray.bc.data import FilteredStreams, null_runs_to_drop
from vpt_ray.bc.loss import BCMetrics, bc_loss
from vpt_ray.bc.train import evaluate_bc, load_init, train_bc

__all__ = ["BCMetrics", "BCTrainConfig", "FilteredStreams", "NullFilterConfig", "bc_loss", "evaluate_bc",
           "load_init", "null_runs_to_drop", "train_bc"]
