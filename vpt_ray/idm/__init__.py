"""Inverse dynamics model training (Ray Train job), inference over whole videos, and held-out metrics.

``train_idm(IDMTrainConfig, data, run_dir)``; ``predict_video(idm, frames_thwc)``; ``IDMMetrics``;
``idm_loss``; ``IDMClips`` (the training clips).
"""

from vpt_ray.idm.config import IDMTrainConfig
from vpt_ray.idm.data import IDMClips
from vpt_ray.idm.infer import idm_loss, predict_video
from vpt_ray.idm.metrics import IDMMetrics
from vpt_ray.idm.train import evaluate_idm, train_idm

__all__ = ["IDMClips", "IDMMetrics", "IDMTrainConfig", "evaluate_idm", "idm_loss", "predict_video", "train_idm"]
