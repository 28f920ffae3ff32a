"""Crafter envs from task specs: the interfaces.md info contract, our reward table, seeding, registrations."""

from __future__ import annotations

import crafter
import gymnasium as gym
import numpy as np
import pytest

from vpt_ray.envs import GYM_ENV_ID, ItemProgress, item_fractions, make_env, rllib_env_creator, summarize_episodes
from vpt_ray.spec import load_task, task_to_dict

NOOP = crafter.constants.actions.index("noop")
PLACE_TABLE = crafter.constants.actions.index("place_table")
# Moving, "do" (collects what the player faces) and placing a table: random play that finds wood.
MOVE_DO_PLACE = [
    crafter.constants.actions.index(a)
    for a in ("move_left", "move_right", "move_up", "move_down", "do", "do", "place_table")
]


def _task(**env):
    d = task_to_dict(load_task("crafter-wood"))
    d["env"].update(env)
    d.pop("rl")  # its policy sees the task's own frame size; these tests change it
    return d


def _run_episode(env, rng, actions=None):
    """Random actions (from ``actions``, default all) until the episode ends; returns the step tuples."""
    steps = []
    while True:
        action = rng.choice(actions) if actions is not None else rng.integers(env.action_space.n)
        steps.append(env.step(int(action)))
        if steps[-1][2] or steps[-1][3]:
            return steps


def test_observation_and_info_contract():
    env = make_env(_task(frame_size=[48, 80], max_steps=25), seed=0, robust=False)
    assert env.unwrapped.action_space_name == "crafter"
    assert env.observation_space == gym.spaces.Box(0, 255, (48, 80, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(17)
    obs, info = env.reset()
    assert obs.shape == (48, 80, 3) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    assert info["env_failure"] is False and info["new_items"] == {} and info["inventory"]["health"] == 9
    for t in range(1, 26):
        obs, reward, terminated, truncated, info = env.step(NOOP)
        assert obs.shape == (48, 80, 3) and obs.dtype == np.uint8
        assert set(info) >= {"inventory", "new_items", "env_failure"} and info["env_failure"] is False
        assert isinstance(info["inventory"]["wood"], int)
        assert truncated == ("episode" in info) == (t == 25), t  # truncation exactly at max_steps
    assert not terminated
    assert info["episode"] == {
        "return": 0.0, "length": 25, "items": {"wood": False, "table": False},
        "item_steps": {"wood": None, "table": None}, "env_failures": 0,
    }  # fmt: skip
    with pytest.raises(RuntimeError, match="crafter-wood: step\\(\\) called"):
        env.step(NOOP)


def test_death_terminates():
    env = make_env(_task(max_steps=400), seed=1, robust=False)
    rng = np.random.default_rng(0)
    for _ in range(20):
        env.reset()
        _, _, terminated, truncated, info = _run_episode(env, rng)[-1]
        if terminated:
            break
    assert terminated and not truncated
    assert info["inventory"]["health"] <= 0 and info["episode"]["length"] < 400


def test_rewards_come_from_the_table_not_from_crafter():
    # Crafter would pay +1 per new achievement and +-0.1 per health change; the table pays 1/5 per wood (up to 5)
    # and 1 for the first table placed.
    env = make_env("crafter-wood", seed=0, robust=False)
    env.reset()
    player = env.unwrapped.sim.game._player
    player.inventory["wood"] = 7  # 7 units newly in the inventory: 5 are paid
    _, reward, *_, info = env.step(NOOP)
    assert info["new_items"] == {"wood": 7} and reward == pytest.approx(1.0)
    _, reward, *_, info = env.step(PLACE_TABLE)  # the player faces grass after reset
    assert info["new_items"] == {"table": 1} and reward == pytest.approx(1.0)
    assert info["inventory"]["wood"] == 7 - crafter.constants.place["table"]["uses"]["wood"]
    _, reward, *_, info = env.step(PLACE_TABLE)  # the cell is taken now: nothing happens
    assert info["new_items"] == {} and reward == 0.0
    player.inventory["wood"] = 9
    _, reward, *_, info = env.step(NOOP)  # wood beyond the quantity is counted but not paid
    assert info["new_items"] == {"wood": 4} and reward == 0.0
    while not (out := env.step(NOOP))[3] and not out[2]:
        pass
    episode = out[4]["episode"]
    assert episode["return"] == pytest.approx(2.0)
    assert episode["items"] == {"wood": True, "table": True}
    assert episode["item_steps"] == {"wood": 1, "table": 2}


def test_random_play_reward_matches_new_items():
    env = make_env("crafter-wood", seed=3, robust=False)
    rng = np.random.default_rng(3)
    episodes, got_wood = [], False
    for _ in range(6):
        env.reset()
        steps = _run_episode(env, rng, actions=MOVE_DO_PLACE)
        wood_seen = tables_seen = 0
        for t, (_, reward, _, _, info) in enumerate(steps, start=1):
            n = info["new_items"].get("wood", 0)
            table_paid = 1.0 if info["new_items"].get("table") and not tables_seen else 0.0
            tables_seen += info["new_items"].get("table", 0)
            assert reward == pytest.approx(0.2 * (min(wood_seen + n, 5) - min(wood_seen, 5)) + table_paid)
            if n and not wood_seen:
                first_wood = t
            wood_seen += n
        episode = steps[-1][4]["episode"]
        assert episode["return"] == pytest.approx(sum(s[1] for s in steps))
        assert episode["length"] == len(steps)
        assert episode["items"]["wood"] == (wood_seen > 0)
        if wood_seen:
            got_wood = True
            assert episode["item_steps"]["wood"] == first_wood
        episodes.append(episode)
    assert got_wood  # random play finds wood in some of these seeded episodes
    summary = summarize_episodes(episodes)
    assert summary["episodes"] == 6 and summary["items"]["wood"] == np.mean([e["items"]["wood"] for e in episodes])


def test_seeding_is_deterministic_and_continues_across_episodes():
    def firsts(env, n, **kw):
        return [env.reset(**kw)[0] if i == 0 else env.reset()[0] for i in range(n)]

    a = make_env("crafter-wood", seed=7, robust=False)
    b = make_env("crafter-wood", seed=7, robust=True)  # the robust wrapper plays the same worlds
    frames_a, frames_b = firsts(a, 3), firsts(b, 3)
    for fa, fb in zip(frames_a, frames_b):
        np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(frames_a[0], frames_a[1])  # a new world every episode
    again = firsts(a, 2, seed=7)  # reset(seed=...) restarts the sequence
    np.testing.assert_array_equal(again[1], frames_a[1])
    other = make_env("crafter-wood", seed=8, robust=False).reset()[0]
    assert not np.array_equal(other, frames_a[0])
    # Same seed and actions -> same trajectory.
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    a.reset(seed=11)
    b.reset(seed=11)
    for _ in range(50):
        oa, ra, *_ = a.step(int(rng_a.integers(17)))
        ob, rb, *_ = b.step(int(rng_b.integers(17)))
        np.testing.assert_array_equal(oa, ob)
        assert ra == rb
    b.close()


def test_gymnasium_registration_and_rllib_creator():
    env = gym.make(GYM_ENV_ID, task="crafter-wood", seed=0, robust=False)
    obs, _ = env.reset()
    assert obs.shape == (64, 64, 3) and env.unwrapped.action_space_name == "crafter"
    env.close()
    env = rllib_env_creator({"task": task_to_dict(load_task("crafter-wood")), "robust": False})
    obs, info = env.reset(seed=5)
    assert obs.shape == (64, 64, 3) and "inventory" in info
    with pytest.raises(ValueError, match="env_config needs 'task'"):
        rllib_env_creator({"task": "crafter-wood", "seed": 1})


def test_item_progress_caps_unlimited_and_first_steps():
    table = load_task("minerl-diamond-pickaxe").rewards
    progress = ItemProgress(table)
    assert progress.update({"log": 3}, step=4) == pytest.approx(3 / 8)
    assert progress.update({"log": 10, "stick": 1}, step=9) == pytest.approx(5 / 8 + 1 / 16)  # log capped at 8
    assert progress.update({"log": 1}, step=10) == 0.0
    assert progress.update({"diamond": 5}, step=20) == pytest.approx(5 * 8 / 3)  # unlimited
    assert progress.update({"dirt": 64}, step=21) == 0.0  # not in the table
    assert progress.first_step["log"] == 4 and progress.first_step["stick"] == 9
    assert progress.first_step["torch"] is None
    assert progress.counts["log"] == 14
    items = progress.items
    assert list(items) == list(table.item_names) and items["diamond"] and not items["planks"]
    progress.reset()
    assert not any(progress.items.values())


def test_item_fractions():
    eps = [
        {"items": {"wood": True, "table": False}},
        {"items": {"wood": True, "table": True}},
        {"items": {"wood": False, "table": False}},
        {"items": {"wood": True, "table": False}},
    ]
    assert item_fractions(eps) == {"wood": 0.75, "table": 0.25}
    assert item_fractions(eps, ["table"]) == {"table": 0.25}
    assert item_fractions([], ["wood"]) == {"wood": 0.0}
