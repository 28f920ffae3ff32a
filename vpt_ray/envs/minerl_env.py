"""MineRL (real Minecraft) adapter: MineRL 1.0 ``HumanSurvival`` with VPT's settings, as a simulator layer.

Settings (method doc §3, §7): 640x360 frames resized with cv2 INTER_LINEAR to the task's frame size, FOV 70,
GUI scale 2, gamma 2, one step per tick; episodes last ``max_steps`` (12,000 for the diamond pickaxe task) and
deaths do not end them (HumanSurvival respawns the player). ``step()`` takes the MineRL action dict that
``get_action_space("minecraft").to_env_action`` builds; it is completed and checked with :mod:`vpt_ray.actions`
(absent keys are not pressed, ESC/pickItem/swapHands default to 0). ``new_items`` are inventory increases of
the Table 7 names (``log`` and ``planks`` summed over wood types).

MineRL needs Java 8 and downloads Minecraft when it is built, so it is imported lazily: where it is missing,
:func:`require_minerl` raises one :class:`MineRLUnavailableError` that says how to get it.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from vpt_ray.actions.minecraft import ENV_KEYS, arrays_to_env_action, env_action_to_arrays
from vpt_ray.envs.items import minecraft_item_counts
from vpt_ray.spec import EnvSpec, MineRLOptions

INSTALL_HINT = (
    "run MineRL tasks in the docker image built from docker/rollout.Dockerfile (it has Java 8 and a built "
    "MineRL), or on a machine with Java 8 (OpenJDK 8 on PATH as `java`) install it with "
    "`pip install vpt-ray[minerl]` (MineRL 1.0.2 downloads and builds Minecraft on install). "
    "Crafter tasks (rollouts/crafter-*.yaml) need neither."
)


class MineRLUnavailableError(ImportError):
    """MineRL or Java is missing; the message says how to get them."""


def require_minerl() -> None:
    """Raise :class:`MineRLUnavailableError` unless MineRL and Java are installed (cheap: imports nothing)."""
    if importlib.util.find_spec("minerl") is None:
        raise MineRLUnavailableError(f"MineRL is not installed: {INSTALL_HINT}")
    if shutil.which("java") is None:
        raise MineRLUnavailableError(f"MineRL is installed but Java is not on PATH: {INSTALL_HINT}")


def human_survival_kwargs(options: MineRLOptions) -> dict[str, Any]:
    """Keyword arguments of MineRL 1.0's ``HumanSurvival`` for ``options`` (each range pinned to one value)."""
    return {
        "fov_range": [options.fov, options.fov],
        "gamma_range": [options.gamma, options.gamma],
        "guiscale_range": [options.gui_scale, options.gui_scale],
        "cursor_size_range": [options.cursor_size, options.cursor_size],
        "resolution": list(options.resolution),
        "frameskip": 1,
    }


def resize_frame(pov: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """A MineRL ``pov`` frame (H, W, 3) resized to ``frame_size`` (height, width) as VPT does (INTER_LINEAR)."""
    height, width = frame_size
    return cv2.resize(np.ascontiguousarray(pov), (width, height), interpolation=cv2.INTER_LINEAR)


def complete_action(action: Mapping[str, Any]) -> dict[str, Any]:
    """A (possibly partial) MineRL action dict -> the full dict MineRL takes; refuses unknown keys and non-0/1."""
    arrays = env_action_to_arrays(action)
    if arrays["buttons"].ndim != 1:
        raise ValueError(f"one unbatched MineRL action expected, got camera shape {arrays['camera'].shape}")
    return arrays_to_env_action(arrays["buttons"], arrays["camera"])


def minerl_action_space() -> gym.spaces.Dict:
    """MineRL 1.0's action space: 0/1 per key (the policy's 20 buttons, ESC, pickItem, swapHands), camera degrees."""
    spaces: dict[str, gym.Space] = {key: gym.spaces.Discrete(2) for key in ENV_KEYS if key != "camera"}
    spaces["camera"] = gym.spaces.Box(-180.0, 180.0, (2,), np.float32)
    return gym.spaces.Dict(spaces)


def _inventory(obs: Mapping[str, Any]) -> dict[str, int]:
    # MineRL lists every item (mostly zeros, as 0-d arrays): keep what the player holds.
    return {name: int(n) for name, n in obs["inventory"].items() if int(n) > 0}


class InventoryGains:
    """Units newly obtained per step = increases of each item's count (group names summed) since the last step."""

    def __init__(self):
        self._counts: dict[str, int] = {}

    def reset(self, inventory: Mapping[str, int]) -> None:
        self._counts = minecraft_item_counts(dict(inventory))

    def update(self, inventory: Mapping[str, int]) -> dict[str, int]:
        counts = minecraft_item_counts(dict(inventory))
        # A death empties the inventory; picking the items up again counts as obtaining them again.
        gains = {item: n - self._counts.get(item, 0) for item, n in counts.items() if n > self._counts.get(item, 0)}
        self._counts = counts
        return gains


class MineRLSim(gym.Env):
    """Simulator layer over a MineRL 1.0 env (old gym API: ``reset() -> obs``, ``step -> obs, r, done, info``).

    ``game`` defaults to a fresh ``HumanSurvival`` built with :func:`human_survival_kwargs`; any object with
    that API can be given (e.g. to replay recorded observations).
    """

    action_space_name = "minecraft"

    def __init__(self, env: EnvSpec, game: Any | None = None):
        if game is None:
            require_minerl()
            from minerl.herobraine.env_specs.human_survival_specs import HumanSurvival

            game = HumanSurvival(**human_survival_kwargs(env.minerl)).make()
        self.game = game
        self.frame_size = env.frame_size
        self.observation_space = gym.spaces.Box(0, 255, (*env.frame_size, 3), np.uint8)
        self.action_space = minerl_action_space()
        self._gains = InventoryGains()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.game.seed(int(seed))  # MineRL applies it to the world generated by the next reset
        obs = self.game.reset()
        inventory = _inventory(obs)
        self._gains.reset(inventory)
        return resize_frame(obs["pov"], self.frame_size), {"inventory": inventory, "new_items": {}}

    def step(self, action: Mapping[str, Any]):
        obs, _, done, _ = self.game.step(complete_action(action))
        inventory = _inventory(obs)
        info = {"inventory": inventory, "new_items": self._gains.update(inventory)}
        return resize_frame(obs["pov"], self.frame_size), 0.0, bool(done), False, info

    def close(self):
        self.game.close()
