"""Contractor recordings (``.jsonl``, one JSON object per frame) -> MineRL env actions.

A step records the keys held (``keyboard.keys``), the mouse buttons held (``mouse.buttons``: 0 attack, 1 use,
2 pickItem), the mouse movement in counts (``mouse.dx``, ``mouse.dy``; 2400 counts = 360 degrees) and the
selected hotbar slot (``hotbar``, 0..8).

Camera: ``[dy, dx] * 0.15`` degrees, kept as float. The released loader writes these into an integer array and
so truncates them toward zero (openai/Video-Pre-Training issue #54: dx = 37.5 counts gives 5 degrees of yaw
instead of 5.625, and anything under one degree becomes 0). ``float_camera=False`` reproduces that truncation,
only to prove parity with the released code.

Episode conversion reproduces the released ``data_loader_worker``:

* "attack stuck": if the first step's ``mouse.newButtons`` is exactly ``[0]``, mouse button 0 is removed from
  every step until a step has 0 in ``newButtons`` again (some recordings start with attack held down);
* the scroll wheel changes the hotbar slot without a key press, so a change of ``hotbar`` (tracked from slot 0)
  sets ``hotbar.<slot+1>``; the tracker advances on null steps too, so a change on a null step is lost;
* null steps (no mapped key, no mouse movement, no mouse button 0/1/2) are dropped. The null test runs before
  the hotbar tracking, so a scroll-only step is null.

Float camera changes only camera values: null flags depend on the raw counts, so both modes keep the same steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpt_ray.actions.minecraft import ENV_KEYS, env_action_to_arrays

KEYBOARD_BUTTON_MAPPING: dict[str, str] = {
    "key.keyboard.escape": "ESC",
    "key.keyboard.s": "back",
    "key.keyboard.q": "drop",
    "key.keyboard.w": "forward",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
    "key.keyboard.e": "inventory",
    "key.keyboard.space": "jump",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.f": "swapHands",
}
MOUSE_BUTTON_MAPPING: dict[int, str] = {0: "attack", 1: "use", 2: "pickItem"}
# MineRL's mouse sensitivity: 2400 counts turn the camera a full circle.
CAMERA_DEG_PER_COUNT = 360.0 / 2400.0
N_HOTBAR_SLOTS = 9


class ContractorActionError(ValueError):
    """A contractor step that lacks a field the conversion reads, or holds a bad value there."""


def _field(step: Mapping[str, Any], *path: str) -> Any:
    value: Any = step
    for i, key in enumerate(path):
        if not isinstance(value, Mapping) or key not in value:
            raise ContractorActionError(f"contractor step has no field {'.'.join(path[: i + 1])!r}")
        value = value[key]
    return value


def _number(step: Mapping[str, Any], *path: str) -> float:
    value = _field(step, *path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ContractorActionError(f"contractor step field {'.'.join(path)!r} must be a finite number, got {value!r}")
    return float(value)


def _list(step: Mapping[str, Any], *path: str) -> list:
    value = _field(step, *path)
    if not isinstance(value, list):
        raise ContractorActionError(f"contractor step field {'.'.join(path)!r} must be a list, got {value!r}")
    return value


def noop_env_action(*, float_camera: bool = True) -> dict[str, Any]:
    action: dict[str, Any] = {key: 0 for key in ENV_KEYS if key != "camera"}
    action["camera"] = np.zeros(2, dtype=np.float64 if float_camera else np.int64)
    return action


def json_action_to_env_action(step: Mapping[str, Any], *, float_camera: bool = True) -> tuple[dict[str, Any], bool]:
    """One contractor step -> (MineRL env action with all 24 keys, is_null).

    ``camera`` is float64 ``[dy, dx] * 0.15`` degrees, or int64 truncated toward zero with ``float_camera=False``.
    ``is_null``: no mapped key, ``dx == dy == 0`` and no mouse button 0/1/2 (unknown keys and buttons are
    ignored).
    """
    action = noop_env_action(float_camera=float_camera)
    is_null = True
    for key in _list(step, "keyboard", "keys"):
        if key in KEYBOARD_BUTTON_MAPPING:
            action[KEYBOARD_BUTTON_MAPPING[key]] = 1
            is_null = False

    dx = _number(step, "mouse", "dx")
    dy = _number(step, "mouse", "dy")
    camera = np.array([dy, dx]) * CAMERA_DEG_PER_COUNT
    action["camera"] = camera if float_camera else np.trunc(camera).astype(np.int64)
    if dx != 0 or dy != 0:
        is_null = False

    for button in _list(step, "mouse", "buttons"):
        if button in MOUSE_BUTTON_MAPPING:
            action[MOUSE_BUTTON_MAPPING[button]] = 1
            is_null = False
    return action, is_null


@dataclass(frozen=True)
class ContractorStep:
    index: int  # position of the step in the episode (its frame number)
    action: dict[str, Any]  # MineRL env action after the episode-level fixes
    is_null: bool  # dropped by the data loader


def convert_episode(steps: Iterable[Mapping[str, Any]], *, float_camera: bool = True) -> list[ContractorStep]:
    """Every step of one episode, with the data loader's attack-stuck and hotbar fixes and its null flag."""
    out: list[ContractorStep] = []
    attack_stuck = False
    last_hotbar = 0
    for i, step in enumerate(steps):
        try:
            if i == 0:
                attack_stuck = _list(step, "mouse", "newButtons") == [0]
            elif attack_stuck and 0 in _list(step, "mouse", "newButtons"):
                attack_stuck = False
            if attack_stuck:
                held = [b for b in _list(step, "mouse", "buttons") if b != 0]
                step = {**step, "mouse": {**step["mouse"], "buttons": held}}
            action, is_null = json_action_to_env_action(step, float_camera=float_camera)

            hotbar = _field(step, "hotbar")
            if isinstance(hotbar, bool) or not isinstance(hotbar, int) or not 0 <= hotbar < N_HOTBAR_SLOTS:
                raise ContractorActionError(
                    f"contractor step field 'hotbar' must be an int in [0, {N_HOTBAR_SLOTS}), got {hotbar!r}"
                )
        except ContractorActionError as e:
            raise ContractorActionError(f"step {i}: {e}") from None
        if hotbar != last_hotbar:
            action[f"hotbar.{hotbar + 1}"] = 1
        last_hotbar = hotbar
        out.append(ContractorStep(index=i, action=action, is_null=is_null))
    return out


def data_loader_actions(
    steps: Iterable[Mapping[str, Any]], *, float_camera: bool = True
) -> list[tuple[int, dict[str, Any]]]:
    """What the released data loader emits for one episode: (step index, env action) for the non-null steps."""
    return [(s.index, s.action) for s in convert_episode(steps, float_camera=float_camera) if not s.is_null]


def episode_env_arrays(
    steps: Iterable[Mapping[str, Any]], *, float_camera: bool = True
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every step of one episode as env arrays (``buttons`` uint8 (N, 20), ``camera`` float32 (N, 2)) and the
    data loader's null flags, bool (N,); frames stay aligned with actions, and callers drop ``is_null`` rows."""
    converted = convert_episode(steps, float_camera=float_camera)
    return env_action_to_arrays([s.action for s in converted]), np.array([s.is_null for s in converted], dtype=bool)
