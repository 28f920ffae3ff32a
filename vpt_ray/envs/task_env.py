"""The task layer every env of :func:`vpt_ray.envs.make_env` has on top: rewards, length limit, seeding, stats.

It wraps a simulator (``CrafterSim``, ``MineRLSim``, or a ``RobustSim`` around either) that reports
``inventory`` and ``new_items``, and adds the interfaces.md info contract: the reward from the task's table,
truncation at ``max_steps``, ``env_failure`` on every step, and ``info["episode"]`` at the episode's end.

Seeding: episode ``k`` after ``reset(seed=s)`` (or ``make_env(seed=s)``) plays a world derived from ``(s, k)``,
and the simulator is always reset with that derived seed, so a simulator recreated after a failure continues
the same sequence of worlds.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from vpt_ray.envs.progress import ItemProgress
from vpt_ray.spec import TaskSpec


def episode_seed(seed: int, episode: int) -> int:
    """The simulator seed of episode ``episode`` (0-based) of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class TaskEnv(gym.Env):
    """A task (reward table + length limit) played in a simulator; see the module docstring."""

    def __init__(self, task: TaskSpec, sim: gym.Env, seed: int | None = None):
        self.task = task
        self.sim = sim
        self.action_space_name: str = sim.action_space_name
        self.observation_space = sim.observation_space
        self.action_space = sim.action_space
        self._progress = ItemProgress(task.rewards)
        # Without a seed, worlds come from OS entropy, never from numpy's global RNG.
        self._seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else int(seed)
        self._episode = 0
        self._needs_reset = True
        self._return = 0.0
        self._length = 0
        self._episode_failures = 0

    @property
    def env_failures_total(self) -> int:
        """Simulator failures survived over this env's lifetime (0 without the robust wrapper)."""
        return getattr(self.sim, "failures_total", 0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        failures_before = self.env_failures_total
        obs, sim_info = self.sim.reset(seed=episode_seed(self._seed, self._episode), options=options)
        self._episode += 1
        self._progress.reset()
        self._return, self._length = 0.0, 0
        self._episode_failures = self.env_failures_total - failures_before
        self._needs_reset = False
        info = {
            "inventory": sim_info["inventory"],
            "new_items": {},
            "env_failure": self._episode_failures > 0,
        }
        return obs, info

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError(f"{self.task.name}: step() called before reset() or after the episode ended")
        failures_before = self.env_failures_total
        obs, _, terminated, truncated, sim_info = self.sim.step(action)
        failed = self.env_failures_total > failures_before
        self._episode_failures += self.env_failures_total - failures_before
        self._length += 1
        reward = self._progress.update(sim_info["new_items"], self._length)
        self._return += reward
        truncated = bool(truncated or failed or self._length >= self.task.env.max_steps)
        terminated = bool(terminated) and not failed
        info = {"inventory": sim_info["inventory"], "new_items": sim_info["new_items"], "env_failure": failed}
        if terminated or truncated:
            self._needs_reset = True
            info["episode"] = {
                "return": self._return,
                "length": self._length,
                "items": self._progress.items,
                "item_steps": dict(self._progress.first_step),
                "env_failures": self._episode_failures,
            }
        return obs, reward, terminated, truncated, info

    def close(self):
        self.sim.close()
