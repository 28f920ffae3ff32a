"""The env RLlib sees in RL fine-tuning: policy-head actions in, and episodes that never end.

:class:`PolicyActionEnv` turns the task env's native actions into the policy's heads (``gymnasium.spaces.Dict``
of ``Discrete``), mapped through :class:`vpt_ray.actions.ActionSpace`, so RLlib stores and replays exactly what
the policy sampled.

:class:`ContinuingEnv` hides episode ends from RLlib (docs/rl-design.md §1.3). RLlib then returns exactly
``rollout_fragment_length`` steps per sub-env from every ``sample()``: rows of exactly ``context_len`` steps that
cross episode boundaries, with the memory state carried per sub-env. When the inner episode ends, the *next*
``step()`` is a **reset step**: its action is ignored, its reward is 0, it is masked out of every loss, and the
observation it was taken on is the episode's final observation, so its value prediction (made with the old
episode's memory) is the truncation bootstrap. Per step, ``info["vpt"]`` says:

- ``first``: the returned observation starts an episode (the policy cuts its memory there);
- ``done`` / ``terminated``: this step ended the episode (terminated: no bootstrap, e.g. death in Crafter);
- ``reset_step``: this step was a reset step;
- ``episode`` (only when ``done``): the task env's episode summary (return, length, items, item_steps, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from vpt_ray.actions import get_action_space

VPT_INFO = "vpt"


class PolicyActionEnv(gym.ActionWrapper):
    """Actions as policy-head indices ``{head: int}``; the wrapped env gets its native action."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.space = get_action_space(env.unwrapped.action_space_name)
        self.action_space = gym.spaces.Dict({head: gym.spaces.Discrete(n) for head, n in self.space.policy_heads.items()})

    def action(self, action: Mapping[str, Any]):
        policy_idx = {head: np.asarray(action[head], dtype=np.int64).reshape(1) for head in self.space.policy_heads}
        return self.space.to_env_action(self.space.from_policy(policy_idx), 0)


class ContinuingEnv(gym.Wrapper):
    """Never terminates or truncates; an inner episode end becomes a reset step (see the module docstring)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._pending_reset = False

    @staticmethod
    def _flags(*, first: bool, done: bool = False, terminated: bool = False, reset_step: bool = False) -> dict:
        return {"first": first, "done": done, "terminated": terminated, "reset_step": reset_step}

    @staticmethod
    def _info(info: Mapping[str, Any], flags: dict) -> dict:
        # Only what training reads: RLlib keeps every step's info, and the vector env merges them key by key.
        return {"env_failure": bool(info.get("env_failure", False)), VPT_INFO: flags}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._pending_reset = False
        return obs, self._info(info, self._flags(first=True))

    def step(self, action):
        if self._pending_reset:
            obs, info = self.env.reset()
            self._pending_reset = False
            return obs, 0.0, False, False, self._info(info, self._flags(first=True, reset_step=True))
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        self._pending_reset = done
        flags = self._flags(first=False, done=done, terminated=bool(terminated))
        if done:
            flags["episode"] = info["episode"]
        return obs, float(reward), False, False, self._info(info, flags)


def make_rl_env(env_config: Mapping[str, Any]) -> ContinuingEnv:
    """RLlib env creator: ``env_config = {"task": task mapping (vpt_ray.spec.task_to_dict)}``; robust envs."""
    from vpt_ray.envs import make_env

    return ContinuingEnv(PolicyActionEnv(make_env(env_config["task"], robust=True)))


__all__ = ["VPT_INFO", "ContinuingEnv", "PolicyActionEnv", "make_rl_env"]
