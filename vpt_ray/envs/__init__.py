"""Environments for task specs: Crafter (embedded default) and real Minecraft through MineRL.

``make_env(task)`` is the one way to build an env: it loads and validates the task, builds the simulator
(optionally behind :class:`RobustSim`, which survives crashes and hangs) and puts the task layer on top
(reward table, length limit, seeding, item progression; the info contract of interfaces.md).

RLlib: ``config.environment(env=rllib_env_creator, env_config={"task": "rollouts/crafter-wood.yaml"})``, or
the registered name :data:`RLLIB_ENV_NAME` after :func:`register_rllib_env`. Gymnasium:
``gymnasium.make("vpt_ray/Task-v0", task=...)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym

from vpt_ray.envs.progress import ItemProgress, item_fractions, summarize_episodes
from vpt_ray.envs.robust import EnvFailureError, RobustSim
from vpt_ray.envs.task_env import TaskEnv, episode_seed
from vpt_ray.spec import EnvSpec, TaskSpec, load_task

GYM_ENV_ID = "vpt_ray/Task-v0"
RLLIB_ENV_NAME = "vpt_ray"


def make_sim(env: EnvSpec) -> gym.Env:
    """The bare simulator of ``env`` (no rewards, no length limit): what runs inside the robust wrapper."""
    if env.kind == "crafter":
        from vpt_ray.envs.crafter_env import CrafterSim

        return CrafterSim(env)
    from vpt_ray.envs.minerl_env import MineRLSim

    return MineRLSim(env)


def make_env(
    task: str | Path | Mapping[str, Any] | TaskSpec, *, seed: int | None = None, robust: bool = True
) -> TaskEnv:
    """A Gymnasium env playing ``task`` (YAML path, bare name from ``rollouts/``, mapping or spec).

    ``robust=True`` runs the simulator behind :class:`RobustSim` with the task's ``env.robust`` options;
    ``seed`` fixes the sequence of worlds (see :mod:`vpt_ray.envs.task_env`).
    """
    spec = load_task(dict(task) if isinstance(task, Mapping) else task)
    if spec.env.kind == "minerl":
        from vpt_ray.envs.minerl_env import require_minerl

        require_minerl()  # one clear error here, not a traceback from inside a child process
    factory = functools.partial(make_sim, spec.env)
    sim = RobustSim(factory, spec.env.robust) if robust else factory()
    return TaskEnv(spec, sim, seed=seed)


def rllib_env_creator(env_config: Mapping[str, Any]) -> TaskEnv:
    """Env creator for RLlib env runners: ``env_config = {"task": path | name | mapping, "robust": bool}``.

    Seeds come from RLlib (``config.debugging(seed=...)`` reaches ``reset(seed=...)``, distinct per env).
    RLlib vectorizes with gymnasium's sync/async vector envs (not ``vector_entry_point``).
    """
    allowed = {"task", "robust"}
    if "task" not in env_config or set(env_config) - allowed:
        raise ValueError(f"env_config needs 'task' and allows {sorted(allowed)}; got keys {sorted(env_config)}")
    return make_env(env_config["task"], robust=bool(env_config.get("robust", True)))


def register_rllib_env(name: str = RLLIB_ENV_NAME) -> str:
    """Register :func:`rllib_env_creator` with Ray Tune under ``name`` (call on the driver); returns the name."""
    from ray.tune.registry import register_env

    register_env(name, rllib_env_creator)
    return name


if GYM_ENV_ID not in gym.registry:
    gym.register(GYM_ENV_ID, entry_point="vpt_ray.envs:make_env", disable_env_checker=True)

__all__ = [
    "GYM_ENV_ID", "RLLIB_ENV_NAME", "EnvFailureError", "ItemProgress", "RobustSim", "TaskEnv", "episode_seed",
    "item_fractions", "make_env", "make_sim", "register_rllib_env", "rllib_env_creator", "summarize_episodes",
]
