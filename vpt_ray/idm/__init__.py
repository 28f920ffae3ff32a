"""Inverse dynamics model training (Ray Train job) and its held-out metrics.

``train_idm(IDMTrainConfig, data, run_dir)``; ``evaluate_idm`` (held-out metrics of videos labeled as
``vpt-ray label`` does); ``IDMMetrics``; ``idm_loss``; ``IDMClips`` (the training clips).
"""

from vpt_ray.idm.config import IDMTrainConfig
from vpt_ray.idm.data import IDMClips
from vpt_ray.idm.loss import idm_loss
from vpt_ray.idm.metrics import IDMMetrics
from vpt_ray.idm.train import evaluate_idm, train_idm

__all__ = ["IDMClips", "IDMMetrics", "IDMTrainConfig", "evaluate_idm", "idm_loss", "train_idm"]
