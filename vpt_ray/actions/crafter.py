"""Crafter's discrete action space and the keyboard keys a human would press for each action.

Crafter takes one of 17 actions per step (the order of ``crafter.constants.actions``). The key mapping is the
one of Crafter's own GUI (``crafter/run_gui.py``), written with contractor-style key names so that recordings
of Crafter carry ``keyboard.keys`` like the Minecraft contractor data. When several mapped keys are held, the
first one in keymap order wins, as in the GUI; no mapped key means ``noop``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

# Checked against crafter.constants.actions by the tests; hard-coded so that importing the action space does not
# import crafter (and its rendering dependencies).
CRAFTER_ACTIONS: tuple[str, ...] = (
    "noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep",
    "place_stone", "place_table", "place_furnace", "place_plant",
    "make_wood_pickaxe", "make_stone_pickaxe", "make_iron_pickaxe",
    "make_wood_sword", "make_stone_sword", "make_iron_sword",
)  # fmt: skip
CRAFTER_ACTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(CRAFTER_ACTIONS)}
NOOP = CRAFTER_ACTION_INDEX["noop"]

# Crafter GUI keymap, in its order (which decides ties).
CRAFTER_KEYMAP: dict[str, str] = {
    "key.keyboard.a": "move_left",
    "key.keyboard.d": "move_right",
    "key.keyboard.w": "move_up",
    "key.keyboard.s": "move_down",
    "key.keyboard.space": "do",
    "key.keyboard.tab": "sleep",
    "key.keyboard.r": "place_stone",
    "key.keyboard.t": "place_table",
    "key.keyboard.f": "place_furnace",
    "key.keyboard.p": "place_plant",
    "key.keyboard.1": "make_wood_pickaxe",
    "key.keyboard.2": "make_stone_pickaxe",
    "key.keyboard.3": "make_iron_pickaxe",
    "key.keyboard.4": "make_wood_sword",
    "key.keyboard.5": "make_stone_sword",
    "key.keyboard.6": "make_iron_sword",
}
_ACTION_KEY: dict[str, str] = {action: key for key, action in CRAFTER_KEYMAP.items()}


def check_crafter_action(action: Any) -> int:
    """An action index as a Python int; anything else (floats, bools, out of range) is a clear error."""
    try:
        if isinstance(action, bool):
            raise TypeError
        index = operator.index(action)
    except TypeError:
        raise ValueError(f"crafter action must be an integer, got {action!r}") from None
    if not 0 <= index < len(CRAFTER_ACTIONS):
        raise ValueError(f"crafter action must lie in [0, {len(CRAFTER_ACTIONS)}), got {index}")
    return index


def crafter_keys_to_action(keys: Iterable[str]) -> int:
    """Held keys -> Crafter action index (first mapped key in keymap order; unmapped keys are ignored)."""
    held = set(keys)
    for key, action in CRAFTER_KEYMAP.items():
        if key in held:
            return CRAFTER_ACTION_INDEX[action]
    return NOOP


def crafter_action_to_keys(action: int) -> list[str]:
    """Crafter action index -> the keys to hold for it (``[]`` for noop)."""
    name = CRAFTER_ACTIONS[check_crafter_action(action)]
    return [] if name == "noop" else [_ACTION_KEY[name]]


def crafter_json_action_to_env_action(step: Mapping[str, Any]) -> int:
    """A recorded step (``{"keyboard": {"keys": [...]}, ...}``) -> Crafter action index."""
    keyboard = step.get("keyboard") if isinstance(step, Mapping) else None
    keys = keyboard.get("keys") if isinstance(keyboard, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError(f"recorded step needs a list field 'keyboard.keys', got step {step!r}")
    return crafter_keys_to_action(keys)
