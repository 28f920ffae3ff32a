"""Crafter action space and key mapping."""

from __future__ import annotations

import crafter
import crafter.constants
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vpt_ray.actions import get_action_space
from vpt_ray.actions.crafter import (
    CRAFTER_ACTIONS,
    CRAFTER_KEYMAP,
    crafter_action_to_keys,
    crafter_json_action_to_env_action,
    crafter_keys_to_action,
)

SPACE = get_action_space("crafter")
actions_st = hnp.arrays(np.int64, st.tuples(st.integers(0, 4), st.integers(0, 5)), elements=st.integers(0, 16))


def test_actions_are_crafters_own_order():
    assert list(CRAFTER_ACTIONS) == crafter.constants.actions
    assert SPACE.policy_heads == {"action": 17} and SPACE.idm_heads == {"action": (1, 17)}


def test_keymap_covers_every_action_but_noop_once():
    assert sorted(CRAFTER_KEYMAP.values()) == sorted(a for a in CRAFTER_ACTIONS if a != "noop")
    assert CRAFTER_KEYMAP["key.keyboard.a"] == "move_left" and CRAFTER_KEYMAP["key.keyboard.space"] == "do"
    assert CRAFTER_KEYMAP["key.keyboard.tab"] == "sleep" and CRAFTER_KEYMAP["key.keyboard.6"] == "make_iron_sword"


def test_several_keys_first_in_keymap_order_wins():
    assert crafter_keys_to_action(["key.keyboard.space", "key.keyboard.a"]) == CRAFTER_ACTIONS.index("move_left")
    assert crafter_keys_to_action(["key.keyboard.z"]) == 0
    assert crafter_keys_to_action([]) == 0
    step = {"keyboard": {"keys": ["key.keyboard.t"]}, "mouse": {}}
    assert crafter_json_action_to_env_action(step) == CRAFTER_ACTIONS.index("place_table")
    with pytest.raises(ValueError, match="keyboard.keys"):
        crafter_json_action_to_env_action({"keyboard": {}})


@given(st.integers(0, 16))
def test_keys_round_trip(action):
    keys = crafter_action_to_keys(action)
    assert len(keys) == (action != 0)
    assert crafter_keys_to_action(keys) == action
    assert crafter_json_action_to_env_action({"keyboard": {"keys": keys}}) == action


@given(actions_st)
def test_space_round_trips(actions):
    env = {"action": actions}
    policy = SPACE.to_policy(env)
    np.testing.assert_array_equal(SPACE.from_policy(policy)["action"], actions)
    idm = SPACE.to_idm(env)
    assert idm["action"].shape == actions.shape + (1,)
    np.testing.assert_array_equal(SPACE.from_idm(idm)["action"], actions)
    np.testing.assert_array_equal(SPACE.is_null(env), actions == 0)
    masks = SPACE.policy_loss_masks(policy)
    assert masks["action"].dtype == np.float32 and (masks["action"] == 1).all()
    assert masks["action"].shape == actions.shape


@given(st.integers(0, 16))
def test_env_action_round_trip(action):
    env = SPACE.from_env_action(action)
    assert env["action"].shape == (1,) and env["action"].dtype == np.int64
    assert SPACE.to_env_action(env, 0) == action and type(SPACE.to_env_action(env, 0)) is int
    assert SPACE.from_env_action(np.int64(action))["action"].tolist() == [action]


def test_env_actions_drive_a_real_crafter_env():
    env = crafter.Env(seed=0)
    env.reset()
    env_arrays = SPACE.from_policy({"action": np.array([CRAFTER_ACTIONS.index(a) for a in ("move_left", "move_up")])})
    facings = []
    for i in range(2):
        env.step(SPACE.to_env_action(env_arrays, i))
        facings.append(tuple(int(v) for v in env._player.facing))
    assert facings == [(-1, 0), (0, -1)]


def test_torch_masks_and_noop():
    masks = SPACE.policy_loss_masks({"action": torch.zeros(2, 3, dtype=torch.long)})
    assert masks["action"].dtype == torch.float32 and masks["action"].shape == (2, 3)
    assert SPACE.is_null(SPACE.noop(4)).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: SPACE.to_policy({"action": np.array([17])}), r"\[0, 17\)"),
        (lambda: SPACE.to_policy({"action": np.array([1.0])}), "integers"),
        (lambda: SPACE.to_policy({"buttons": np.array([1])}), "keys"),
        (lambda: SPACE.from_idm({"action": np.array([1, 2])}), r"\(\.\.\., 1\)"),
        (lambda: SPACE.from_env_action(2.0), "integer"),
        (lambda: SPACE.from_env_action(True), "integer"),
        (lambda: SPACE.from_env_action(-1), r"\[0, 17\)"),
        (lambda: crafter_action_to_keys(99), r"\[0, 17\)"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
