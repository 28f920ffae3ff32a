"""Contractor jsonl steps -> env actions, exact against the official converter and data loader."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from vpt_ray.actions import get_action_space
from vpt_ray.actions.camera import VPT_CAMERA
from vpt_ray.actions.contractor import (
    KEYBOARD_BUTTON_MAPPING,
    MOUSE_BUTTON_MAPPING,
    ContractorActionError,
    convert_episode,
    data_loader_actions,
    episode_env_arrays,
    json_action_to_env_action,
)
from vpt_ray.actions.minecraft import BUTTONS, ENV_KEYS, env_action_to_policy, is_null_env_action

SPACE = get_action_space("minecraft")


@pytest.fixture(scope="module")
def ref(reference_dir):
    return json.loads((reference_dir / "contractor_actions.json").read_text())


def _episodes(ref) -> dict[int, list[dict]]:
    episodes: dict[int, list[dict]] = {}
    for case in sorted(ref["cases"], key=lambda c: (c["episode"], c["step"])):
        episodes.setdefault(case["episode"], []).append(case)
    return episodes


def _plain(action: dict) -> dict:
    return {key: value.tolist() if key == "camera" else value for key, value in action.items()}


def _agent_action(action: dict) -> dict:
    policy = env_action_to_policy(action)
    return {
        "button_idx": int(policy["buttons"]),
        "camera_idx": int(policy["camera"]),
        "camera_bins": VPT_CAMERA.discretize(action["camera"]).tolist(),
        "is_null_intended": bool(is_null_env_action(action)),
    }


def test_mappings_match_reference(ref):
    assert KEYBOARD_BUTTON_MAPPING == ref["keyboard_button_mapping"]
    assert {str(k): v for k, v in MOUSE_BUTTON_MAPPING.items()} == ref["mouse_button_mapping"]
    assert ref["camera_scaler"] == pytest.approx(360 / 2400)


def test_every_case_official_int_camera(ref):
    for case in ref["cases"]:
        step = copy.deepcopy(case["json_step"])
        action, is_null = json_action_to_env_action(step, float_camera=False)
        assert step == case["json_step"], "the converter must not modify its input"
        assert action["camera"].dtype == np.int64
        assert _plain(action) == case["env_action"], case
        assert is_null == case["is_null"], case
        assert _agent_action(action) == case["agent_action_official"], case


def test_every_case_float_camera(ref):
    for case in ref["cases"]:
        action, is_null = json_action_to_env_action(case["json_step"])
        assert action["camera"].dtype == np.float64
        np.testing.assert_allclose(action["camera"], case["camera_float_correct"], atol=1e-6, rtol=0)
        assert {k: v for k, v in _plain(action).items() if k != "camera"} == {
            k: v for k, v in case["env_action"].items() if k != "camera"
        }
        assert is_null == case["is_null"]
        assert _agent_action(action) == case["agent_action_float_camera"], case


def test_float_camera_fixes_truncation_and_changes_labels(ref):
    # The fixture must exercise the bug: some cameras truncate, and some policy labels differ because of it.
    truncated = [c for c in ref["cases"] if c["env_action"]["camera"] != c["camera_float_correct"]]
    relabelled = [c for c in ref["cases"] if c["agent_action_official"] != c["agent_action_float_camera"]]
    assert truncated and relabelled
    step = {"keyboard": {"keys": []}, "mouse": {"dx": 37.5, "dy": -5.0, "buttons": []}}
    assert json_action_to_env_action(step, float_camera=False)[0]["camera"].tolist() == [0, 5]
    np.testing.assert_allclose(json_action_to_env_action(step)[0]["camera"], [-0.75, 5.625])


def test_episodes_through_data_loader_official_mode(ref):
    episodes = _episodes(ref)
    emitted = ref["episodes_through_data_loader_worker"]["emitted"]
    assert len(emitted) == len(episodes) == 3
    for episode in emitted:
        steps = [c["json_step"] for c in episodes[episode["episode"]]]
        assert len(steps) == episode["n_steps"]
        got = data_loader_actions(steps, float_camera=False)
        assert [i for i, _ in got] == [e["step"] for e in episode["emitted"]]
        assert [_plain(a) for _, a in got] == [e["env_action"] for e in episode["emitted"]]


def test_episodes_through_data_loader_float_mode(ref):
    # Float camera only changes camera values: the same steps are kept with the same buttons, and each camera is
    # the correct float value of its step.
    episodes = _episodes(ref)
    for episode in ref["episodes_through_data_loader_worker"]["emitted"]:
        cases = episodes[episode["episode"]]
        got = data_loader_actions([c["json_step"] for c in cases])
        assert [i for i, _ in got] == [e["step"] for e in episode["emitted"]]
        for (i, action), expected in zip(got, episode["emitted"]):
            assert {k: v for k, v in _plain(action).items() if k != "camera"} == {
                k: v for k, v in expected["env_action"].items() if k != "camera"
            }
            np.testing.assert_allclose(action["camera"], cases[i]["camera_float_correct"], atol=1e-6, rtol=0)


def test_reference_episodes_exercise_the_loader_fixes(ref):
    # The loader's output differs from converting each step alone: attack-stuck removal and hotbar tracking
    # both change something in these episodes.
    episodes = _episodes(ref)
    assert episodes[0][0]["json_step"]["mouse"]["newButtons"] == [0]
    changed_attack = changed_hotbar = False
    for episode in ref["episodes_through_data_loader_worker"]["emitted"]:
        cases = episodes[episode["episode"]]
        for e in episode["emitted"]:
            alone = cases[e["step"]]["env_action"]
            changed_attack |= alone["attack"] != e["env_action"]["attack"]
            changed_hotbar |= any(alone[f"hotbar.{k}"] != e["env_action"][f"hotbar.{k}"] for k in range(1, 10))
    assert changed_attack and changed_hotbar


def _step(keys=(), buttons=(), new_buttons=(), dx=0.0, dy=0.0, hotbar=0) -> dict:
    return {
        "mouse": {"dx": dx, "dy": dy, "buttons": list(buttons), "newButtons": list(new_buttons)},
        "keyboard": {"keys": list(keys)},
        "hotbar": hotbar,
    }


def test_attack_stuck_until_pressed_again():
    steps = [
        _step(buttons=[0], new_buttons=[0]),  # attack held from the start: stuck
        _step(buttons=[0], keys=["key.keyboard.w"]),
        _step(buttons=[0, 1]),
        _step(buttons=[0], new_buttons=[0]),  # a real press: no longer stuck
        _step(buttons=[0]),
    ]
    converted = convert_episode(steps)
    assert [s.is_null for s in converted] == [True, False, False, False, False]
    assert [s.action["attack"] for s in converted] == [0, 0, 0, 1, 1]
    assert converted[2].action["use"] == 1
    # Not stuck when the first step's newButtons is anything but exactly [0].
    assert [s.action["attack"] for s in convert_episode([_step(buttons=[0], new_buttons=[0, 1]), *steps[1:]])] == [
        1, 1, 1, 1, 1,
    ]  # fmt: skip


def test_hotbar_tracking_and_lost_change_on_null_step():
    steps = [
        _step(keys=["key.keyboard.w"], hotbar=0),
        _step(keys=["key.keyboard.w"], hotbar=3),  # scrolled to slot 3 while moving: hotbar.4
        _step(hotbar=5),  # scroll only: a null step, dropped, and its change is lost
        _step(keys=["key.keyboard.w"], hotbar=5),
        _step(keys=["key.keyboard.2"], hotbar=1),  # key press and slot change agree
    ]
    converted = convert_episode(steps)
    assert [s.is_null for s in converted] == [False, False, True, False, False]
    hotbars = [[k for k in range(1, 10) if s.action[f"hotbar.{k}"]] for s in converted]
    assert hotbars == [[], [4], [6], [], [2]]
    assert [i for i, _ in data_loader_actions(steps)] == [0, 1, 3, 4]


def test_episode_env_arrays_align_with_frames():
    steps = [_step(keys=["key.keyboard.e"]), _step(), _step(dx=10.0, dy=-200.0, buttons=[1])]
    arrays, is_null = episode_env_arrays(steps)
    assert arrays["buttons"].shape == (3, 20) and arrays["camera"].dtype == np.float32
    assert is_null.tolist() == [False, True, False]
    np.testing.assert_allclose(arrays["camera"][2], [-30.0, 1.5])
    assert arrays["buttons"][0, BUTTONS.index("inventory")] == 1
    policy = SPACE.to_policy(arrays)
    assert policy["buttons"][0] == 8640 and policy["camera"][0] == 60
    np.testing.assert_array_equal(SPACE.is_null(arrays), is_null)


def test_unknown_keys_and_buttons_are_ignored():
    action, is_null = json_action_to_env_action(_step(keys=["key.keyboard.z", "key.mouse.left"], buttons=[3, 4]))
    assert is_null
    assert all(action[k] == 0 for k in ENV_KEYS if k != "camera")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("keyboard"), "'keyboard'"),
        (lambda s: s["mouse"].pop("dx"), "'mouse.dx'"),
        (lambda s: s["mouse"].update(dy="3"), "'mouse.dy' must be a finite number"),
        (lambda s: s["mouse"].update(dy=float("nan")), "'mouse.dy' must be a finite number"),
        (lambda s: s["mouse"].update(buttons=0), "'mouse.buttons' must be a list"),
        (lambda s: s.update(hotbar=9), "'hotbar' must be an int in"),
        (lambda s: s.pop("hotbar"), "'hotbar'"),
    ],
)
def test_bad_steps_name_the_step_and_field(mutate, message):
    steps = [_step(keys=["key.keyboard.w"]), _step(keys=["key.keyboard.w"])]
    mutate(steps[1])
    with pytest.raises(ContractorActionError, match=f"step 1: .*{message}"):
        convert_episode(steps)
