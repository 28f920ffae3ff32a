"""MineRL adapter without the game: the clear error, VPT settings, action conversion, and Table 7 rewards and
episode bookkeeping from a recorded sequence of MineRL observations replayed through the adapter."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vpt_ray.actions import get_action_space
from vpt_ray.envs import make_env
from vpt_ray.envs.minerl_env import (
    InventoryGains,
    MineRLSim,
    MineRLUnavailableError,
    complete_action,
    human_survival_kwargs,
    minerl_action_space,
    resize_frame,
)
from vpt_ray.envs.task_env import TaskEnv
from vpt_ray.spec import load_task

TASK = load_task("minerl-diamond-pickaxe")
# A slice of MineRL's inventory observation: every item listed, zeros included, as 0-d arrays.
ITEM_IDS = ["oak_log", "birch_log", "oak_planks", "birch_planks", "stick", "crafting_table", "wooden_pickaxe",
            "cobblestone", "dirt", "diamond"]  # fmt: skip


def _obs(step: int, **counts) -> dict:
    pov = np.full((360, 640, 3), step % 256, np.uint8)
    return {"pov": pov, "inventory": {i: np.array(counts.get(i, 0)) for i in ITEM_IDS}}


class RecordedGame:
    """Replays recorded MineRL observations with MineRL 1.0's old gym API; keeps the actions it was sent."""

    def __init__(self, observations):
        self.observations = observations
        self.actions, self.seeds, self.t = [], [], 0

    def seed(self, seed):
        self.seeds.append(seed)

    def reset(self):
        self.t = 0
        return self.observations[0]

    def step(self, action):
        self.actions.append(action)
        self.t += 1
        return self.observations[min(self.t, len(self.observations) - 1)], 0.0, False, {}

    def close(self):
        pass


def test_without_minerl_one_clear_error():
    t0 = time.monotonic()
    with pytest.raises(MineRLUnavailableError) as e:
        make_env("minerl-diamond-pickaxe")
    assert time.monotonic() - t0 < 5  # refused up front, no env process started
    message = str(e.value)
    assert "docker/rollout.Dockerfile" in message and "pip install vpt-ray[minerl]" in message
    assert "Java 8" in message
    assert e.value.__cause__ is None and e.value.__context__ is None  # one error, not a chain
    assert isinstance(e.value, ImportError)


def test_vpt_settings():
    kwargs = human_survival_kwargs(TASK.env.minerl)
    assert kwargs == {
        "fov_range": [70, 70], "gamma_range": [2, 2], "guiscale_range": [2, 2], "cursor_size_range": [16, 16],
        "resolution": [640, 360], "frameskip": 1,
    }  # fmt: skip
    pov = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    frame = resize_frame(pov, TASK.env.frame_size)
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    # Bilinear: a horizontal ramp stays a ramp (INTER_AREA or NEAREST would give other values).
    ramp = np.tile(np.linspace(0, 255, 640).astype(np.uint8)[None, :, None], (360, 1, 3))
    row = resize_frame(ramp, (128, 128))[64, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0) and row[0] <= 2 and row[-1] >= 253


def test_action_conversion_policy_to_minerl():
    space = get_action_space("minecraft")
    gym_space = minerl_action_space()
    rng = np.random.default_rng(0)
    policy = {"buttons": rng.integers(0, 8641, 32), "camera": rng.integers(0, 121, 32)}
    arrays = space.from_policy(policy)
    for i in range(32):
        action = complete_action(space.to_env_action(arrays, i))
        assert gym_space.contains({k: (np.asarray(v, np.float32) if k == "camera" else v) for k, v in action.items()})
        assert action["ESC"] == action["pickItem"] == action["swapHands"] == 0
        back = space.from_env_action(action)
        np.testing.assert_array_equal(back["buttons"][0], arrays["buttons"][i])
    # Hand-written partial actions are completed: absent keys are not pressed.
    action = complete_action({"forward": 1, "camera": [0.0, 5.0]})
    assert set(action) == set(gym_space.spaces) and action["forward"] == 1 and action["attack"] == 0
    with pytest.raises(ValueError, match="unknown keys"):
        complete_action({"fly": 1, "camera": [0, 0]})
    with pytest.raises(ValueError, match="must be 0 or 1"):
        complete_action({"jump": 2, "camera": [0, 0]})


def test_inventory_gains_sum_wood_types_and_count_pickups_after_death():
    gains = InventoryGains()
    gains.reset({})
    assert gains.update({"oak_log": 2, "birch_log": 1}) == {"log": 3, "oak_log": 2, "birch_log": 1}
    assert gains.update({"oak_log": 1, "birch_log": 1, "oak_planks": 4}) == {"planks": 4, "oak_planks": 4}
    assert gains.update({}) == {}  # death: the inventory drops
    assert gains.update({"oak_planks": 4}) == {"planks": 4, "oak_planks": 4}  # picked up again


def test_recorded_episode_rewards_and_bookkeeping():
    # A recorded start: logs of two species, planks crafted from them, sticks, a table, a pickaxe, a death
    # (inventory emptied, the episode goes on), then the items picked up again and a diamond.
    recording = [
        _obs(0),
        _obs(1, oak_log=1),
        _obs(2, oak_log=3, birch_log=2),
        _obs(3, oak_log=2, birch_log=2, oak_planks=4),
        _obs(4, oak_log=2, birch_log=2, oak_planks=2, stick=4),
        _obs(5, oak_log=2, birch_log=2, crafting_table=1, stick=4, dirt=5),
        _obs(6, oak_log=2, birch_log=2, crafting_table=1, stick=2, wooden_pickaxe=1),
        _obs(7),  # died
        _obs(8, oak_log=2, birch_log=2, stick=2, wooden_pickaxe=1),
        _obs(9, oak_log=2, birch_log=2, stick=2, wooden_pickaxe=1, diamond=2),
    ]
    expected = [
        1 / 8,  # 1 log
        4 / 8,  # 4 more logs, of two species
        4 / 20,  # 4 planks (logs used up obtain nothing)
        4 / 16,  # 4 sticks (planks used up)
        1,  # crafting table (the dirt is not in the table)
        1,  # wooden pickaxe
        0,  # death
        3 / 8 + 2 / 16,  # picked up again: 4 logs of which 3 fill the quantity of 8, 2 sticks (6 of 16)
        2 * 8 / 3,  # 2 diamonds, unlimited
    ]
    game = RecordedGame(recording)
    env = TaskEnv(TASK, MineRLSim(TASK.env, game=game), seed=5)
    obs, info = env.reset()
    assert obs.shape == (128, 128, 3) and game.seeds and info["inventory"] == {}
    space = get_action_space("minecraft")
    noop = space.to_env_action(space.noop(1), 0)
    rewards = []
    for t in range(1, len(recording)):
        obs, reward, terminated, truncated, info = env.step(noop)
        assert not terminated and not truncated  # a death does not end the episode
        rewards.append(reward)
    np.testing.assert_allclose(rewards, expected, rtol=1e-12)
    assert info["inventory"]["diamond"] == 2 and info["new_items"] == {"diamond": 2}
    assert len(game.actions) == 9 and game.actions[0]["ESC"] == 0
    # The recording holds its last frame; the episode is truncated at 12,000 steps, as in VPT.
    while not truncated:
        *_, terminated, truncated, info = env.step(noop)
    episode = info["episode"]
    assert episode["length"] == 12_000 and not terminated and episode["env_failures"] == 0
    assert episode["return"] == pytest.approx(sum(expected))
    assert [item for item, got in episode["items"].items() if got] == [
        "log", "planks", "stick", "crafting_table", "wooden_pickaxe", "diamond",
    ]  # fmt: skip
    assert episode["item_steps"]["log"] == 1 and episode["item_steps"]["wooden_pickaxe"] == 6
    assert episode["item_steps"]["diamond"] == 9 and episode["item_steps"]["iron_pickaxe"] is None
