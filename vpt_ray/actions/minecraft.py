"""Minecraft keyboard-and-mouse actions and VPT's joint hierarchical action space.

Three forms of the same action:

* **env action**: the MineRL dict (20 policy buttons + ESC, pickItem, swapHands as 0/1, ``camera`` = relative
  [pitch, yaw] degrees). Batched when every value carries a leading batch shape.
* **factored** (what the IDM predicts): the 20 buttons as 0/1 in :data:`BUTTONS` order and the two camera bins
  (pitch, yaw) of the mu-law quantiser.
* **joint** (what the policy predicts): one of 8641 button classes and one of 121 camera classes.

Joint button classes: one option per group (hotbar, forward/back, left/right, sprint/sneak, use, drop, attack,
jump, camera meta), index = row-major position in the product of the groups with the last group changing
fastest, 0..8639; class 8640 is "inventory" alone. Camera class = 11 * pitch_bin + yaw_bin (60 = centre).

Factored -> joint resolves conflicts: forward+back (and left+right) means neither, otherwise the option listed
later in its group wins (sprint+sneak -> sneak, hotbar.2+hotbar.7 -> hotbar.7); inventory overrides every other
button and forces the camera class to the centre. Joint -> factored zeroes the camera where the meta button is
off; for the inventory class the meta button counts as on, as in the released code, so its camera class is
applied (``policy_to_env_cases`` in the reference vectors pin this asymmetry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vpt_ray.actions.camera import VPT_CAMERA

BUTTONS: tuple[str, ...] = (
    "attack", "back", "forward", "jump", "left", "right", "sneak", "sprint", "use", "drop", "inventory",
    *(f"hotbar.{i}" for i in range(1, 10)),
)  # fmt: skip
# MineRL keys the policy never presses; env actions we build set them to 0, and reading ignores them.
EXTRA_ENV_KEYS: tuple[str, ...] = ("ESC", "pickItem", "swapHands")
ENV_KEYS: tuple[str, ...] = (*BUTTONS, *EXTRA_ENV_KEYS, "camera")
BUTTON_INDEX: dict[str, int] = {name: i for i, name in enumerate(BUTTONS)}

# Exclusive groups in joint-index order; option 0 of every group is "none".
BUTTON_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hotbar", tuple(f"hotbar.{i}" for i in range(1, 10))),
    ("fore_back", ("forward", "back")),
    ("left_right", ("left", "right")),
    ("sprint_sneak", ("sprint", "sneak")),
    ("use", ("use",)),
    ("drop", ("drop",)),
    ("attack", ("attack",)),
    ("jump", ("jump",)),
)
# Opposite directions cancel; other multi-press groups keep the later-listed option.
_CANCELLING_GROUPS = frozenset({"fore_back", "left_right"})
_GROUP_SIZES: tuple[int, ...] = (*(len(options) + 1 for _, options in BUTTON_GROUPS), 2)  # + camera meta

N_CAMERA_BINS = VPT_CAMERA.n_bins
CAMERA_ZERO_BIN = VPT_CAMERA.zero_bin
INVENTORY_BUTTON_IDX = int(np.prod(_GROUP_SIZES))  # 8640
N_BUTTON_CLASSES = INVENTORY_BUTTON_IDX + 1  # 8641
N_CAMERA_CLASSES = N_CAMERA_BINS * N_CAMERA_BINS  # 121
NULL_BUTTON_IDX = 0
CAMERA_NULL_IDX = CAMERA_ZERO_BIN * N_CAMERA_BINS + CAMERA_ZERO_BIN  # 60


def _build_joint_tables() -> tuple[np.ndarray, np.ndarray]:
    digits = np.unravel_index(np.arange(INVENTORY_BUTTON_IDX), _GROUP_SIZES)
    buttons = np.zeros((N_BUTTON_CLASSES, len(BUTTONS)), dtype=np.uint8)
    for (_, options), choice in zip(BUTTON_GROUPS, digits[:-1]):
        for k, name in enumerate(options, start=1):
            buttons[:INVENTORY_BUTTON_IDX, BUTTON_INDEX[name]] = choice == k
    buttons[INVENTORY_BUTTON_IDX, BUTTON_INDEX["inventory"]] = 1
    meta_on = np.ones(N_BUTTON_CLASSES, dtype=bool)
    meta_on[:INVENTORY_BUTTON_IDX] = digits[-1] == 1
    return buttons, meta_on


# JOINT_BUTTON_TABLE (8641, 20) uint8: the buttons each joint button class presses.
# CAMERA_META_ON (8641,) bool: whether the camera head acts for each joint button class (True for inventory).
JOINT_BUTTON_TABLE, CAMERA_META_ON = _build_joint_tables()
# JOINT_CAMERA_TABLE (121, 2) int64: [pitch_bin, yaw_bin] of each joint camera class.
JOINT_CAMERA_TABLE = np.stack(np.divmod(np.arange(N_CAMERA_CLASSES), N_CAMERA_BINS), axis=-1).astype(np.int64)
for _table in (JOINT_BUTTON_TABLE, CAMERA_META_ON, JOINT_CAMERA_TABLE):
    _table.flags.writeable = False


def _is_binary(values: np.ndarray) -> bool:
    return bool(((values == 0) | (values == 1)).all())


def check_factored(buttons: np.ndarray, camera_bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factored arrays as numpy, or a ValueError naming the bad shape or value."""
    buttons = np.asarray(buttons)
    camera_bins = np.asarray(camera_bins)
    if buttons.shape[-1:] != (len(BUTTONS),):
        raise ValueError(f"buttons must have shape (..., {len(BUTTONS)}), got {buttons.shape}")
    if camera_bins.shape != buttons.shape[:-1] + (2,):
        raise ValueError(f"camera bins must have shape {buttons.shape[:-1] + (2,)}, got {camera_bins.shape}")
    if not _is_binary(buttons):
        raise ValueError(f"buttons must be 0 or 1, got values {np.unique(buttons)}")
    if camera_bins.size and (camera_bins.min() < 0 or camera_bins.max() >= N_CAMERA_BINS):
        raise ValueError(f"camera bins must lie in [0, {N_CAMERA_BINS}), got {np.unique(camera_bins)}")
    return buttons, camera_bins


def factored_to_joint(buttons, camera_bins) -> tuple[np.ndarray, np.ndarray]:
    """Factored (buttons (..., 20) 0/1, camera bins (..., 2)) -> joint (button_idx, camera_idx), int64 (...)."""
    buttons, camera_bins = check_factored(buttons, camera_bins)
    pressed_all = buttons.astype(bool)
    joint = np.zeros(buttons.shape[:-1], dtype=np.int64)
    for (group, options), size in zip(BUTTON_GROUPS, _GROUP_SIZES):
        pressed = pressed_all[..., [BUTTON_INDEX[name] for name in options]]
        if group in _CANCELLING_GROUPS:
            pressed = pressed & ~pressed.all(axis=-1, keepdims=True)
        # Option k (1-based) scores k when pressed, so the max picks the later-listed option.
        choice = (pressed * np.arange(1, len(options) + 1)).max(axis=-1)
        joint = joint * size + choice
    camera_on = (camera_bins != CAMERA_ZERO_BIN).any(axis=-1)
    joint = joint * 2 + camera_on
    camera = camera_bins[..., 0].astype(np.int64) * N_CAMERA_BINS + camera_bins[..., 1]
    inventory = pressed_all[..., BUTTON_INDEX["inventory"]]
    joint = np.where(inventory, INVENTORY_BUTTON_IDX, joint)
    camera = np.where(inventory, CAMERA_NULL_IDX, camera)
    return joint, camera


def check_joint(button_idx, camera_idx) -> tuple[np.ndarray, np.ndarray]:
    """Joint indices as numpy, or a ValueError naming the head and the bad value."""
    button_idx = np.asarray(button_idx)
    camera_idx = np.asarray(camera_idx)
    for name, idx, n in (("buttons", button_idx, N_BUTTON_CLASSES), ("camera", camera_idx, N_CAMERA_CLASSES)):
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"joint {name} index must be an integer array, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"joint {name} index must lie in [0, {n}), got min {idx.min()} max {idx.max()}")
    if button_idx.shape != camera_idx.shape:
        raise ValueError(f"joint buttons {button_idx.shape} and camera {camera_idx.shape} shapes differ")
    return button_idx, camera_idx


def joint_to_factored(button_idx, camera_idx) -> tuple[np.ndarray, np.ndarray]:
    """Joint (button_idx, camera_idx) of any shape -> (buttons uint8 (..., 20), camera bins int64 (..., 2))."""
    button_idx, camera_idx = check_joint(button_idx, camera_idx)
    buttons = JOINT_BUTTON_TABLE[button_idx]
    bins = np.where(CAMERA_META_ON[button_idx][..., None], JOINT_CAMERA_TABLE[camera_idx], CAMERA_ZERO_BIN)
    return buttons, bins


def is_null_factored(buttons, camera_bins) -> np.ndarray:
    """The intended VPT null test on raw buttons: nothing pressed and both camera bins centred.

    It looks at the raw buttons, so forward+back alone is not null even though it maps to joint class 0.
    """
    buttons, camera_bins = check_factored(buttons, camera_bins)
    return ~buttons.astype(bool).any(axis=-1) & (camera_bins == CAMERA_ZERO_BIN).all(axis=-1)


# --- env action dicts -------------------------------------------------------------------------------------------


def _dict_to_buttons_camera(action: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    unknown = set(action) - set(ENV_KEYS)
    if unknown:
        raise ValueError(f"env action has unknown keys {sorted(unknown)}; expected a subset of {list(ENV_KEYS)}")
    if "camera" not in action:
        raise ValueError("env action has no 'camera' key")
    camera = np.asarray(action["camera"], dtype=np.float64)
    if camera.shape[-1:] != (2,):
        raise ValueError(f"env action 'camera' must have shape (..., 2), got {camera.shape}")
    batch_shape = camera.shape[:-1]
    buttons = np.zeros(batch_shape + (len(BUTTONS),), dtype=np.uint8)
    for i, name in enumerate(BUTTONS):
        if name not in action:
            continue  # MineRL omits nothing, but hand-written actions may: absent means not pressed
        value = np.asarray(action[name])
        if value.shape != batch_shape:
            raise ValueError(f"env action {name!r} has shape {value.shape}, camera implies {batch_shape}")
        if not _is_binary(value):
            raise ValueError(f"env action {name!r} must be 0 or 1, got {value}")
        buttons[..., i] = value
    return buttons, camera


def env_action_to_arrays(action: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """MineRL env action (one dict, batched or not, or a list of dicts) -> env arrays.

    Env arrays: ``{"buttons": uint8 (..., 20), "camera": float32 (..., 2)}``; a list of N dicts gives N rows.
    """
    if isinstance(action, Mapping):
        buttons, camera = _dict_to_buttons_camera(action)
    else:
        pairs = [_dict_to_buttons_camera(a) for a in action]
        buttons = np.stack([b for b, _ in pairs]) if pairs else np.zeros((0, len(BUTTONS)), np.uint8)
        camera = np.stack([c for _, c in pairs]) if pairs else np.zeros((0, 2))
    return {"buttons": buttons, "camera": camera.astype(np.float32)}


def arrays_to_env_action(buttons, camera) -> dict[str, Any]:
    """Buttons (..., 20) and camera degrees (..., 2) -> the full MineRL dict (extra keys 0).

    Unbatched input gives Python ints for the buttons; the camera keeps its dtype.
    """
    buttons = np.asarray(buttons)
    camera = np.asarray(camera)
    if buttons.shape[-1:] != (len(BUTTONS),) or camera.shape != buttons.shape[:-1] + (2,):
        raise ValueError(f"buttons (..., 20) and camera (..., 2) expected, got {buttons.shape} and {camera.shape}")
    batch_shape = buttons.shape[:-1]
    out: dict[str, Any] = {}
    for i, name in enumerate(BUTTONS):
        out[name] = int(buttons[i]) if not batch_shape else buttons[..., i].astype(np.int64)
    for name in EXTRA_ENV_KEYS:
        out[name] = 0 if not batch_shape else np.zeros(batch_shape, dtype=np.int64)
    out["camera"] = camera
    return out


def env_action_to_policy(action: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """MineRL env action dict (batched or not) -> joint ``{"buttons", "camera"}`` int64 indices.

    The camera is quantised from the dict's own precision (float64 for the reference vectors), not from the
    float32 of stored env arrays.
    """
    buttons, camera = _dict_to_buttons_camera(action)
    button_idx, camera_idx = factored_to_joint(buttons, VPT_CAMERA.discretize(camera))
    return {"buttons": button_idx, "camera": camera_idx}


def policy_to_env_action(button_idx, camera_idx) -> dict[str, Any]:
    """Joint indices (scalars or arrays) -> MineRL env action dict; camera in float64 degrees (bin centres)."""
    buttons, bins = joint_to_factored(button_idx, camera_idx)
    return arrays_to_env_action(buttons, VPT_CAMERA.undiscretize(bins))


def is_null_env_action(action: Mapping[str, Any]) -> np.ndarray:
    """Intended VPT null test of a MineRL env action dict (see :func:`is_null_factored`)."""
    buttons, camera = _dict_to_buttons_camera(action)
    return is_null_factored(buttons, VPT_CAMERA.discretize(camera))
