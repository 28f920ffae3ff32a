"""Crafter simulator adapter: the ``crafter`` package as a Gymnasium env reporting newly obtained items.

This is the *simulator* layer (see :mod:`vpt_ray.envs.task_env` for rewards and episode bookkeeping): it
renders frames at the task's size, terminates on death, and turns Crafter's counters into ``new_items`` under
:mod:`vpt_ray.envs.items` names. Crafter's own achievement reward and length limit are switched off.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from vpt_ray.envs.items import CRAFTER_INVENTORY_ITEMS, CRAFTER_PLACED_ITEMS
from vpt_ray.spec import EnvSpec


class CrafterSim(gym.Env):
    action_space_name = "crafter"

    def __init__(self, env: EnvSpec):
        import crafter

        height, width = env.frame_size
        # crafter takes (width, height) and renders (height, width, 3); length=None: we truncate ourselves.
        self._env = crafter.Env(area=env.crafter.area, size=(width, height), reward=False, length=None, seed=0)
        self.observation_space = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(len(crafter.constants.actions))
        self._counts: dict[str, int] = {}

    @property
    def game(self):
        """The ``crafter.Env`` being played (scripted players and tests read its state)."""
        return self._env

    def _obtained_counts(self) -> dict[str, int]:
        player = self._env._player
        counts = {item: int(player.inventory[item]) for item in CRAFTER_INVENTORY_ITEMS}
        counts.update({item: int(player.achievements[a]) for item, a in CRAFTER_PLACED_ITEMS.items()})
        return counts

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            # crafter seeds episode k's world with hash((seed, k)): restarting the count makes `seed` alone
            # decide the world.
            self._env._seed = int(seed)
            self._env._episode = 0
        obs = self._env.reset()
        self._counts = self._obtained_counts()
        return obs, {"inventory": dict(self._env._player.inventory), "new_items": {}}

    def step(self, action):
        obs, _, _, info = self._env.step(int(action))
        counts = self._obtained_counts()
        # Inventory increases and placements; a count going down (crafting uses wood) obtains nothing.
        new_items = {item: n - self._counts[item] for item, n in counts.items() if n > self._counts[item]}
        self._counts = counts
        terminated = self._env._player.health <= 0
        return obs, 0.0, terminated, False, {"inventory": info["inventory"], "new_items": new_items}
