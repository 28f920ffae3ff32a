"""Minecraft joint hierarchical action space: exact against the official reference vectors, plus properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vpt_ray.actions import get_action_space
from vpt_ray.actions.camera import VPT_CAMERA
from vpt_ray.actions.minecraft import (
    BUTTONS,
    CAMERA_META_ON,
    CAMERA_NULL_IDX,
    ENV_KEYS,
    EXTRA_ENV_KEYS,
    INVENTORY_BUTTON_IDX,
    JOINT_BUTTON_TABLE,
    JOINT_CAMERA_TABLE,
    N_BUTTON_CLASSES,
    N_CAMERA_CLASSES,
    NULL_BUTTON_IDX,
    env_action_to_arrays,
    env_action_to_policy,
    factored_to_joint,
    is_null_env_action,
    joint_to_factored,
    policy_to_env_action,
)

SPACE = get_action_space("minecraft")


@pytest.fixture(scope="module")
def ref(reference_dir):
    return json.loads((reference_dir / "actions.json").read_text())


def _env_dict(case_input: dict) -> dict:
    """The reference input as the official code got it: every key, int 0/1, float64 camera (2,)."""
    action = {key: np.int64(key in case_input["pressed"]) for key in ENV_KEYS if key != "camera"}
    action["camera"] = np.array(case_input["camera"], dtype=np.float64)
    return action


def _pressed(action: dict) -> list[str]:
    return [name for name in BUTTONS if action[name]]


def _batched_env(cases, camera_dtype) -> dict[str, np.ndarray]:
    return {
        "buttons": np.array([[name in c["input"]["pressed"] for name in BUTTONS] for c in cases], dtype=np.uint8),
        "camera": np.array([c["input"]["camera"] for c in cases], dtype=camera_dtype),
    }


# --- reference vectors ------------------------------------------------------------------------------------------


def test_header_constants(ref):
    assert list(BUTTONS) == ref["button_order"]
    assert list(EXTRA_ENV_KEYS) == ref["extra_env_keys_ignored_by_policy"]
    assert (N_BUTTON_CLASSES, N_CAMERA_CLASSES) == (ref["n_button_classes"], ref["n_camera_classes"])
    assert (INVENTORY_BUTTON_IDX, NULL_BUTTON_IDX, CAMERA_NULL_IDX) == (
        ref["inventory_button_idx"], ref["null_button_idx"], ref["camera_null_idx"],
    )  # fmt: skip
    assert SPACE.policy_heads == {"buttons": 8641, "camera": 121}
    assert SPACE.idm_heads == {"buttons": (20, 2), "camera": (2, 11)}


def test_full_joint_button_table(ref):
    expected = ref["joint_button_table"]["entries"]
    assert len(expected) == N_BUTTON_CLASSES
    ours = ["".join(map(str, row)) + str(int(on)) for row, on in zip(JOINT_BUTTON_TABLE, CAMERA_META_ON)]
    assert ours == expected


def test_full_joint_camera_table(ref):
    np.testing.assert_array_equal(JOINT_CAMERA_TABLE, ref["joint_camera_table"]["entries"])


def test_env_to_policy_cases_unbatched(ref):
    for case in ref["env_to_policy_cases"]:
        action = _env_dict(case["input"])
        policy = env_action_to_policy(action)
        assert (int(policy["buttons"]), int(policy["camera"])) == (case["button_idx"], case["camera_idx"]), case
        assert VPT_CAMERA.discretize(action["camera"]).tolist() == case["camera_bins"], case
        assert bool(is_null_env_action(action)) == case["is_null_intended"], case
        back = policy_to_env_action(policy["buttons"], policy["camera"])
        assert _pressed(back) == case["env_action_back"]["pressed"], case
        np.testing.assert_allclose(back["camera"], case["env_action_back"]["camera"], atol=1e-6, rtol=0)


def test_env_to_policy_cases_batched(ref):
    cases = ref["env_to_policy_cases"]
    batched = {key: np.stack([_env_dict(c["input"])[key] for c in cases]) for key in ENV_KEYS}
    policy = env_action_to_policy(batched)
    np.testing.assert_array_equal(policy["buttons"], [c["button_idx"] for c in cases])
    np.testing.assert_array_equal(policy["camera"], [c["camera_idx"] for c in cases])
    np.testing.assert_array_equal(is_null_env_action(batched), [c["is_null_intended"] for c in cases])
    back = policy_to_env_action(policy["buttons"], policy["camera"])
    assert set(back) == set(ENV_KEYS)
    for i, case in enumerate(cases):
        assert [name for name in BUTTONS if back[name][i]] == case["env_action_back"]["pressed"]
    np.testing.assert_allclose(back["camera"], [c["env_action_back"]["camera"] for c in cases], atol=1e-6, rtol=0)
    for name in EXTRA_ENV_KEYS:
        assert not back[name].any()


def test_action_space_on_reference_cases_float64(ref):
    cases = ref["env_to_policy_cases"]
    env = _batched_env(cases, np.float64)
    policy = SPACE.to_policy(env)
    np.testing.assert_array_equal(policy["buttons"], [c["button_idx"] for c in cases])
    np.testing.assert_array_equal(policy["camera"], [c["camera_idx"] for c in cases])
    np.testing.assert_array_equal(SPACE.is_null(env), [c["is_null_intended"] for c in cases])
    np.testing.assert_array_equal(SPACE.to_idm(env)["camera"], [c["camera_bins"] for c in cases])
    back = SPACE.from_policy(policy)
    assert back["buttons"].dtype == np.uint8 and back["camera"].dtype == np.float32
    expected_buttons = [[name in c["env_action_back"]["pressed"] for name in BUTTONS] for c in cases]
    np.testing.assert_array_equal(back["buttons"], expected_buttons)
    np.testing.assert_allclose(back["camera"], [c["env_action_back"]["camera"] for c in cases], atol=1e-6, rtol=0)


def test_float32_env_arrays_only_move_cases_on_a_bin_edge(ref):
    # Stored env arrays are float32; a camera within 1e-6 of a switch point may then change bin (the fixture
    # README warns of this). Everything else must still be exact.
    cases = ref["env_to_policy_cases"]
    policy = SPACE.to_policy(_batched_env(cases, np.float32))
    moved = [
        c["tags"] for c, b, k in zip(cases, policy["buttons"], policy["camera"])
        if (b, k) != (c["button_idx"], c["camera_idx"])
    ]  # fmt: skip
    assert all("near_bin_edge" in tags for tags in moved)
    assert len(moved) <= sum("near_bin_edge" in c["tags"] for c in cases)


def test_policy_to_env_cases(ref):
    cases = ref["policy_to_env_cases"]
    for case in cases:
        env = policy_to_env_action(case["button_idx"], case["camera_idx"])
        assert _pressed(env) == case["env_action"]["pressed"], case
        np.testing.assert_allclose(env["camera"], case["env_action"]["camera"], atol=1e-6, rtol=0)
        assert bool(CAMERA_META_ON[case["button_idx"]]) == case["camera_meta_on"]
    # The inventory class lets its camera class through (official asymmetry), so the fixture must cover it.
    assert any(c["button_idx"] == INVENTORY_BUTTON_IDX and c["env_action"]["camera"] != [0, 0] for c in cases)
    policy = {
        "buttons": np.array([c["button_idx"] for c in cases]),
        "camera": np.array([c["camera_idx"] for c in cases]),
    }
    env = SPACE.from_policy(policy)
    np.testing.assert_allclose(env["camera"], [c["env_action"]["camera"] for c in cases], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(
        env["buttons"], [[name in c["env_action"]["pressed"] for name in BUTTONS] for c in cases]
    )
    masks = SPACE.policy_loss_masks(policy)
    np.testing.assert_array_equal(masks["camera"], [c["camera_meta_on"] for c in cases])
    np.testing.assert_array_equal(masks["buttons"], np.ones(len(cases)))


# --- the rules, restated independently ----------------------------------------------------------------------------

_GROUPS = [
    [f"hotbar.{i}" for i in range(1, 10)], ["forward", "back"], ["left", "right"], ["sprint", "sneak"],
    ["use"], ["drop"], ["attack"], ["jump"],
]  # fmt: skip


def _reference_joint(pressed: set[str], bins: tuple[int, int]) -> tuple[int, int]:
    """The README's definition, one action at a time."""
    if "inventory" in pressed:
        return 8640, 60
    index = 0
    for options in _GROUPS:
        chosen = [k + 1 for k, name in enumerate(options) if name in pressed]
        if options in (["forward", "back"], ["left", "right"]) and len(chosen) == 2:
            chosen = []
        index = index * (len(options) + 1) + (max(chosen) if chosen else 0)
    index = index * 2 + (bins != (5, 5))
    return index, 11 * bins[0] + bins[1]


buttons_st = hnp.arrays(np.uint8, (20,), elements=st.integers(0, 1))
sparse_buttons_st = st.sets(st.sampled_from(BUTTONS), max_size=4).map(
    lambda names: np.array([name in names for name in BUTTONS], dtype=np.uint8)
)
bins_st = hnp.arrays(np.int64, (2,), elements=st.integers(0, 10))
camera_st = hnp.arrays(np.float64, (2,), elements=st.floats(-30, 30, allow_nan=False, allow_subnormal=False))


@given(st.one_of(buttons_st, sparse_buttons_st), bins_st)
def test_factored_to_joint_follows_the_rules(buttons, bins):
    pressed = {name for name, b in zip(BUTTONS, buttons) if b}
    joint = factored_to_joint(buttons, bins)
    assert (int(joint[0]), int(joint[1])) == _reference_joint(pressed, tuple(int(b) for b in bins))


# --- round trips and null handling --------------------------------------------------------------------------------

button_idx_st = st.integers(0, N_BUTTON_CLASSES - 1)
camera_idx_st = st.integers(0, N_CAMERA_CLASSES - 1)


def _canonical(button_idx: int, camera_idx: int) -> tuple[int, int]:
    """The policy pair that the env action of (button_idx, camera_idx) maps back to."""
    if button_idx == INVENTORY_BUTTON_IDX:
        return button_idx, CAMERA_NULL_IDX
    if not CAMERA_META_ON[button_idx] or camera_idx == CAMERA_NULL_IDX:
        return button_idx & ~1, CAMERA_NULL_IDX  # the meta bit is the lowest digit of the joint index
    return button_idx, camera_idx


@given(st.lists(st.tuples(button_idx_st, camera_idx_st), min_size=1, max_size=16))
def test_policy_env_policy_round_trip(pairs):
    policy = {"buttons": np.array([b for b, _ in pairs]), "camera": np.array([c for _, c in pairs])}
    again = SPACE.to_policy(SPACE.from_policy(policy))
    expected = [_canonical(b, c) for b, c in pairs]
    assert list(zip(again["buttons"].tolist(), again["camera"].tolist())) == expected
    # Canonical pairs are fixed points, and canonicalising twice changes nothing.
    twice = SPACE.to_policy(SPACE.from_policy(again))
    for key in again:
        np.testing.assert_array_equal(twice[key], again[key])


@given(st.lists(st.tuples(st.one_of(buttons_st, sparse_buttons_st), bins_st), min_size=1, max_size=16))
def test_idm_env_idm_round_trip(rows):
    idm = {"buttons": np.stack([b for b, _ in rows]).astype(np.int64), "camera": np.stack([c for _, c in rows])}
    env = SPACE.from_idm(idm)
    again = SPACE.to_idm(env)
    np.testing.assert_array_equal(again["buttons"], idm["buttons"])
    np.testing.assert_array_equal(again["camera"], idm["camera"])
    # Decoding an IDM prediction and encoding it for the policy equals the joint map of the factored prediction.
    joint = factored_to_joint(idm["buttons"], idm["camera"])
    policy = SPACE.to_policy(env)
    np.testing.assert_array_equal(policy["buttons"], joint[0])
    np.testing.assert_array_equal(policy["camera"], joint[1])


@given(st.one_of(buttons_st, sparse_buttons_st), camera_st)
def test_env_idm_env_keeps_buttons_and_snaps_camera_to_bin_centres(buttons, camera):
    env = {"buttons": buttons[None], "camera": camera[None].astype(np.float32)}
    back = SPACE.from_idm(SPACE.to_idm(env))
    np.testing.assert_array_equal(back["buttons"], env["buttons"])
    np.testing.assert_allclose(back["camera"], VPT_CAMERA.undiscretize(VPT_CAMERA.discretize(env["camera"])), atol=1e-6)
    for key, value in SPACE.to_policy(back).items():
        np.testing.assert_array_equal(value, SPACE.to_policy(env)[key])


@given(st.one_of(buttons_st, sparse_buttons_st), camera_st)
def test_null_handling(buttons, camera):
    env = {"buttons": buttons[None], "camera": camera[None]}
    null = bool(SPACE.is_null(env)[0])
    camera_still = (VPT_CAMERA.discretize(camera) == 5).all()
    assert null == (not buttons.any() and camera_still)
    policy = SPACE.to_policy(env)
    maps_to_null = (int(policy["buttons"][0]), int(policy["camera"][0])) == (NULL_BUTTON_IDX, CAMERA_NULL_IDX)
    if null:
        assert maps_to_null
    elif maps_to_null:
        # Only cancelling pairs can press buttons and still give joint class 0.
        pressed = {name for name, b in zip(BUTTONS, buttons) if b}
        assert camera_still and pressed and pressed <= {"forward", "back", "left", "right"}
        assert pressed in ({"forward", "back"}, {"left", "right"}, {"forward", "back", "left", "right"})
    assert SPACE.is_null(SPACE.from_policy({"buttons": np.array([0]), "camera": np.array([60])}))[0]


def test_forward_back_alone_is_not_null_but_maps_to_class_zero():
    env = SPACE.from_env_action({"forward": 1, "back": 1, "camera": [0.0, 0.0]})
    assert not SPACE.is_null(env)[0]
    policy = SPACE.to_policy(env)
    assert (policy["buttons"].tolist(), policy["camera"].tolist()) == ([0], [60])


# --- interface details ----------------------------------------------------------------------------------------------


def test_any_leading_shape():
    rng = np.random.default_rng(0)
    policy = {"buttons": rng.integers(0, 8641, (3, 4)), "camera": rng.integers(0, 121, (3, 4))}
    env = SPACE.from_policy(policy)
    assert env["buttons"].shape == (3, 4, 20) and env["camera"].shape == (3, 4, 2)
    assert SPACE.to_policy(env)["buttons"].shape == (3, 4)
    assert SPACE.to_idm(env)["buttons"].shape == (3, 4, 20)
    assert SPACE.is_null(env).shape == (3, 4)
    assert SPACE.policy_loss_masks(policy)["camera"].shape == (3, 4)


def test_policy_loss_masks_numpy_and_torch():
    buttons = np.array([0, 1, 2, 3, INVENTORY_BUTTON_IDX])
    policy = {"buttons": buttons, "camera": np.full(5, 7)}
    expected = [0.0, 1.0, 0.0, 1.0, 1.0]  # odd joint classes have the meta button on; inventory keeps its camera
    masks = SPACE.policy_loss_masks(policy)
    assert masks["camera"].dtype == np.float32
    np.testing.assert_array_equal(masks["camera"], expected)
    tmasks = SPACE.policy_loss_masks({k: torch.as_tensor(v).reshape(1, 5) for k, v in policy.items()})
    assert tmasks["camera"].dtype == torch.float32 and tmasks["camera"].shape == (1, 5)
    assert tmasks["camera"].flatten().tolist() == expected
    assert tmasks["buttons"].flatten().tolist() == [1.0] * 5


def test_to_env_action_and_back():
    env = SPACE.from_policy({"buttons": np.array([0, 4 + 1]), "camera": np.array([60, 0])})  # attack + camera
    action = SPACE.to_env_action(env, 1)
    assert set(action) == set(ENV_KEYS)
    assert action["attack"] == 1 and type(action["attack"]) is int
    assert sum(action[k] for k in ENV_KEYS if k != "camera") == 1
    assert action["camera"].shape == (2,) and action["camera"].dtype == np.float32
    np.testing.assert_allclose(action["camera"], [-10.0, -10.0])
    back = SPACE.from_env_action(action)
    np.testing.assert_array_equal(back["buttons"], env["buttons"][1:2])
    np.testing.assert_array_equal(back["camera"], env["camera"][1:2])
    # MineRL's extra keys are accepted and ignored.
    assert SPACE.is_null(SPACE.from_env_action({**SPACE.to_env_action(SPACE.noop(1), 0), "ESC": 1}))[0]


def test_env_action_to_arrays_list_and_batched_agree():
    actions = [SPACE.to_env_action(SPACE.from_policy({"buttons": np.array([b]), "camera": np.array([c])}), 0)
               for b, c in [(5, 3), (8640, 60), (1, 100)]]  # fmt: skip
    from_list = env_action_to_arrays(actions)
    batched = {k: np.stack([np.asarray(a[k]) for a in actions]) for k in ENV_KEYS}
    from_batched = env_action_to_arrays(batched)
    for key in ("buttons", "camera"):
        np.testing.assert_array_equal(from_list[key], from_batched[key])
    assert from_list["buttons"].shape == (3, 20) and from_list["camera"].dtype == np.float32


def test_noop_is_null():
    assert SPACE.is_null(SPACE.noop(3)).tolist() == [True] * 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: SPACE.to_policy({"buttons": np.zeros((1, 19), np.uint8), "camera": np.zeros((1, 2))}), "20"),
        (lambda: SPACE.to_policy({"buttons": np.full((1, 20), 2, np.uint8), "camera": np.zeros((1, 2))}), "0 or 1"),
        (lambda: SPACE.to_policy({"buttons": np.zeros((1, 20), np.uint8)}), "keys"),
        (lambda: SPACE.to_policy({"buttons": np.zeros((1, 20), np.uint8), "camera": np.full((1, 2), np.nan)}), "NaN"),
        (lambda: SPACE.from_policy({"buttons": np.array([8641]), "camera": np.array([0])}), r"buttons index .*8641"),
        (lambda: SPACE.from_policy({"buttons": np.array([0]), "camera": np.array([-1])}), r"camera index"),
        (lambda: SPACE.from_policy({"buttons": np.array([0.0]), "camera": np.array([0])}), "integer"),
        (lambda: SPACE.from_idm({"buttons": np.zeros((1, 20), int), "camera": np.full((1, 2), 11)}), r"\[0, 11\)"),
        (lambda: SPACE.from_env_action({"forwrd": 1, "camera": [0, 0]}), "forwrd"),
        (lambda: SPACE.from_env_action({"forward": 1}), "camera"),
        (lambda: SPACE.from_env_action({"forward": 3, "camera": [0, 0]}), "'forward' must be 0 or 1"),
        (lambda: SPACE.from_env_action(3), "dict"),
        (lambda: get_action_space("doom"), "doom"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@settings(max_examples=25)
@given(st.lists(st.tuples(button_idx_st, camera_idx_st), min_size=1, max_size=8))
def test_joint_to_factored_agrees_with_official_policy_to_env(pairs):
    b = np.array([p[0] for p in pairs])
    c = np.array([p[1] for p in pairs])
    buttons, bins = joint_to_factored(b, c)
    env = policy_to_env_action(b, c)
    np.testing.assert_array_equal(np.stack([env[name] for name in BUTTONS], axis=-1), buttons)
    np.testing.assert_allclose(env["camera"], VPT_CAMERA.undiscretize(bins))
