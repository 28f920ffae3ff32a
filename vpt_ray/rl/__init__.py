"""RL fine-tuning: Phasic Policy Gradient on RLlib with a KL penalty to the frozen BC policy served by Ray Serve.

Design: ``docs/rl-design.md``. The pieces, each importable on its own (this package imports nothing heavy until
a name below is used):

- :mod:`vpt_ray.rl.config`: ``RLSpec`` (the ``rl:`` section of a task spec: VPT Table 6 and the job's scale);
- :mod:`vpt_ray.rl.algorithm`: ``PPGConfig`` (``PPGConfig.from_spec(task, init=..., kl=...)``), ``PPG``,
  ``iteration_scalars``;
- :mod:`vpt_ray.rl.job`: ``run_rl`` (what ``vpt-ray rl`` runs: run dir, ledger, TensorBoard, checkpoints, resume);
- :mod:`vpt_ray.rl.continuing_env`, :mod:`~vpt_ray.rl.connectors`, :mod:`~vpt_ray.rl.module`,
  :mod:`~vpt_ray.rl.env_runner`, :mod:`~vpt_ray.rl.learner`: the RLlib extension points;
- :mod:`vpt_ray.rl.serving` (the frozen policy on Serve), :mod:`vpt_ray.rl.metrics` (TensorBoard),
  :mod:`vpt_ray.rl.elastic` (env runners following the cluster).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RLSpec": "vpt_ray.rl.config",
    "ScaleSpec": "vpt_ray.rl.config",
    "ServeSpec": "vpt_ray.rl.config",
    "PPG": "vpt_ray.rl.algorithm",
    "PPGConfig": "vpt_ray.rl.algorithm",
    "iteration_scalars": "vpt_ray.rl.algorithm",
    "run_rl": "vpt_ray.rl.job",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vpt_ray.rl' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
