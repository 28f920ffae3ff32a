"""The ``ActionSpace`` interface every stage uses, with its Minecraft and Crafter implementations.

Four forms of an action:

* **env arrays**: the stored form of a batch (recordings decode into it, shards store it).
  Minecraft ``{"buttons": uint8 (..., 20), "camera": float32 (..., 2)}`` (BUTTONS order, [pitch, yaw] degrees);
  Crafter ``{"action": int64 (...)}``.
* **policy indices**: one int64 (...) per policy head (:attr:`ActionSpace.policy_heads` gives class counts).
* **IDM indices**: one int64 (..., factors) per IDM head (:attr:`ActionSpace.idm_heads` gives (factors, classes)).
* **env action**: what one ``env.step`` takes (MineRL dict or Crafter int).

The interface speaks of a batch of N, but every array method accepts any leading shape, e.g. (B, T).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from vpt_ray.actions import crafter as _crafter
from vpt_ray.actions import minecraft as _mc
from vpt_ray.actions.camera import VPT_CAMERA


@functools.cache
def _camera_meta_on(device: Any) -> Any:
    """``CAMERA_META_ON`` as a tensor on ``device``, copied once: a copy from pageable host memory to a GPU waits
    for the GPU's queue, and losses ask for this table at every step."""
    import torch

    return torch.from_numpy(_mc.CAMERA_META_ON.copy()).to(device)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _require_keys(arrays: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    if not isinstance(arrays, Mapping) or set(arrays) != set(keys):
        got = sorted(arrays) if isinstance(arrays, Mapping) else type(arrays).__name__
        raise ValueError(f"{what} must be a dict with keys {list(keys)}, got {got}")


def _int_array(value: Any, what: str) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


class ActionSpace(abc.ABC):
    name: str
    policy_heads: dict[str, int]
    idm_heads: dict[str, tuple[int, int]]

    @abc.abstractmethod
    def to_policy(self, env_arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Env arrays -> policy indices (int64 per head)."""

    @abc.abstractmethod
    def from_policy(self, policy_idx: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Policy indices -> env arrays."""

    @abc.abstractmethod
    def to_idm(self, env_arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Env arrays -> IDM indices (int64 (..., factors) per head)."""

    @abc.abstractmethod
    def from_idm(self, idm_idx: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """IDM indices -> env arrays."""

    @abc.abstractmethod
    def is_null(self, env_arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """bool (...): the action does nothing (VPT drops these from BC data)."""

    @abc.abstractmethod
    def policy_loss_masks(self, policy_idx: Mapping[str, Any]) -> dict[str, Any]:
        """float32 (...) per head: 1 where the head's choice takes effect, 0 where it is ignored.

        Numpy in, numpy out; torch tensors in, torch tensors out on the same device (for losses and KL).
        """

    @abc.abstractmethod
    def to_env_action(self, env_arrays: Mapping[str, np.ndarray], i: int) -> Any:
        """Row ``i`` of env arrays (N,) -> what the gym env's ``step()`` takes."""

    @abc.abstractmethod
    def from_env_action(self, action: Any) -> dict[str, np.ndarray]:
        """One env action -> env arrays with N = 1."""

    @abc.abstractmethod
    def noop(self, n: int) -> dict[str, np.ndarray]:
        """Env arrays of N null actions."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy_heads={self.policy_heads}, idm_heads={self.idm_heads})"


class MinecraftActionSpace(ActionSpace):
    """VPT's keyboard-and-mouse space: joint hierarchical policy heads, factored IDM heads."""

    name = "minecraft"
    policy_heads = {"buttons": _mc.N_BUTTON_CLASSES, "camera": _mc.N_CAMERA_CLASSES}
    idm_heads = {"buttons": (len(_mc.BUTTONS), 2), "camera": (2, _mc.N_CAMERA_BINS)}
    buttons = _mc.BUTTONS
    quantizer = VPT_CAMERA

    def _env(self, env_arrays: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        _require_keys(env_arrays, ("buttons", "camera"), "minecraft env arrays")
        buttons = np.asarray(env_arrays["buttons"])
        camera = np.asarray(env_arrays["camera"])
        if buttons.shape[-1:] != (len(_mc.BUTTONS),) or camera.shape != buttons.shape[:-1] + (2,):
            raise ValueError(
                f"minecraft env arrays need buttons (..., {len(_mc.BUTTONS)}) and camera (..., 2) with the same "
                f"leading shape, got buttons {buttons.shape} and camera {camera.shape}"
            )
        if not np.issubdtype(camera.dtype, np.floating):
            raise ValueError(f"minecraft env arrays 'camera' must be float degrees, got dtype {camera.dtype}")
        return buttons, camera

    def to_policy(self, env_arrays):
        buttons, camera = self._env(env_arrays)
        button_idx, camera_idx = _mc.factored_to_joint(buttons, self.quantizer.discretize(camera))
        return {"buttons": button_idx, "camera": camera_idx}

    def _env_from_factored(self, buttons: np.ndarray, bins: np.ndarray) -> dict[str, np.ndarray]:
        return {"buttons": buttons.astype(np.uint8), "camera": self.quantizer.undiscretize(bins).astype(np.float32)}

    def from_policy(self, policy_idx):
        _require_keys(policy_idx, ("buttons", "camera"), "minecraft policy indices")
        buttons, bins = _mc.joint_to_factored(policy_idx["buttons"], policy_idx["camera"])
        return self._env_from_factored(buttons, bins)

    def to_idm(self, env_arrays):
        buttons, camera = self._env(env_arrays)
        buttons, bins = _mc.check_factored(buttons, self.quantizer.discretize(camera))
        return {"buttons": buttons.astype(np.int64), "camera": bins}

    def from_idm(self, idm_idx):
        _require_keys(idm_idx, ("buttons", "camera"), "minecraft IDM indices")
        buttons = _int_array(idm_idx["buttons"], "minecraft IDM 'buttons'")
        bins = _int_array(idm_idx["camera"], "minecraft IDM 'camera'")
        buttons, bins = _mc.check_factored(buttons, bins)
        return self._env_from_factored(buttons, bins)

    def is_null(self, env_arrays):
        buttons, camera = self._env(env_arrays)
        return _mc.is_null_factored(buttons, self.quantizer.discretize(camera))

    def policy_loss_masks(self, policy_idx):
        _require_keys(policy_idx, ("buttons", "camera"), "minecraft policy indices")
        button_idx = policy_idx["buttons"]
        if _is_torch(button_idx):
            import torch

            camera = _camera_meta_on(button_idx.device)[button_idx].to(torch.float32)
            return {"buttons": torch.ones_like(camera), "camera": camera}
        button_idx, _ = _mc.check_joint(button_idx, policy_idx["camera"])
        camera = _mc.CAMERA_META_ON[button_idx].astype(np.float32)
        return {"buttons": np.ones_like(camera), "camera": camera}

    def to_env_action(self, env_arrays, i):
        buttons, camera = self._env(env_arrays)
        # MineRL's camera space is a float32 Box.
        return _mc.arrays_to_env_action(buttons[i], camera[i].astype(np.float32))

    def from_env_action(self, action):
        if not isinstance(action, Mapping):
            raise ValueError(f"a minecraft env action is a dict of MineRL keys, got {type(action).__name__}")
        arrays = _mc.env_action_to_arrays(action)
        if arrays["buttons"].ndim != 1:
            raise ValueError(f"from_env_action takes one unbatched action, got camera {arrays['camera'].shape}")
        return {key: value[None] for key, value in arrays.items()}

    def noop(self, n):
        return {"buttons": np.zeros((n, len(_mc.BUTTONS)), np.uint8), "camera": np.zeros((n, 2), np.float32)}


class CrafterActionSpace(ActionSpace):
    """Crafter's 17 discrete actions: one policy head, one single-factor IDM head."""

    name = "crafter"
    n_actions = len(_crafter.CRAFTER_ACTIONS)
    policy_heads = {"action": n_actions}
    idm_heads = {"action": (1, n_actions)}
    actions = _crafter.CRAFTER_ACTIONS

    def _actions(self, arrays: Mapping[str, Any], what: str) -> np.ndarray:
        _require_keys(arrays, ("action",), what)
        action = _int_array(arrays["action"], f"{what} 'action'")
        if action.size and (action.min() < 0 or action.max() >= self.n_actions):
            raise ValueError(f"{what} 'action' must lie in [0, {self.n_actions}), got {np.unique(action)}")
        return action

    def to_policy(self, env_arrays):
        return {"action": self._actions(env_arrays, "crafter env arrays").copy()}

    def from_policy(self, policy_idx):
        return {"action": self._actions(policy_idx, "crafter policy indices").copy()}

    def to_idm(self, env_arrays):
        return {"action": self._actions(env_arrays, "crafter env arrays")[..., None].copy()}

    def from_idm(self, idm_idx):
        action = self._actions(idm_idx, "crafter IDM indices")
        if action.shape[-1:] != (1,):
            raise ValueError(f"crafter IDM 'action' must have shape (..., 1), got {action.shape}")
        return {"action": action[..., 0].copy()}

    def is_null(self, env_arrays):
        return self._actions(env_arrays, "crafter env arrays") == _crafter.NOOP

    def policy_loss_masks(self, policy_idx):
        _require_keys(policy_idx, ("action",), "crafter policy indices")
        action = policy_idx["action"]
        if _is_torch(action):
            import torch

            return {"action": torch.ones(action.shape, dtype=torch.float32, device=action.device)}
        return {"action": np.ones(np.shape(action), dtype=np.float32)}

    def to_env_action(self, env_arrays, i):
        return int(self._actions(env_arrays, "crafter env arrays")[i])

    def from_env_action(self, action):
        return {"action": np.array([_crafter.check_crafter_action(action)], dtype=np.int64)}

    def noop(self, n):
        return {"action": np.full(n, _crafter.NOOP, dtype=np.int64)}


_SPACES: dict[str, ActionSpace] = {"minecraft": MinecraftActionSpace(), "crafter": CrafterActionSpace()}


def get_action_space(name: Literal["minecraft", "crafter"]) -> ActionSpace:
    if name not in _SPACES:
        raise ValueError(f"unknown action space {name!r}; choose one of {sorted(_SPACES)}")
    return _SPACES[name]
