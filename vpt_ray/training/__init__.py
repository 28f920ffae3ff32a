"""Ray Train scaffolding shared by IDM and BC training.

``config`` (OptimConfig, AugmentConfig, ScalingSpec, ScheduleSpec, named recipes with overrides), ``augment``
(temporally consistent clip augmentation), ``optim`` (AdamW + linear LR decay), ``data`` (shard discovery,
held-out split by episode), ``job`` (TorchTrainer driver, worker session: checkpoints, TensorBoard, progress),
``cli`` (shared CLI flags). This package's ``__init__`` stays import-light: the CLI loads ``cli`` at startup.
"""
