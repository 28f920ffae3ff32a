"""The scripted Crafter player: tech-tree progress on real worlds, shortest paths, lava safety, shelters."""

from __future__ import annotations

import collections

import crafter
import pytest

from vpt_ray.actions.crafter import CRAFTER_ACTIONS
from vpt_ray.envs import make_env
from vpt_ray.envs.crafter_scripted import MOVES, CrafterDemonstrator, DemonstratorConfig, unwrap_crafter

TASK = {
    "name": "demo-test",
    "env": {"kind": "crafter", "frame_size": [64, 64], "max_steps": 250, "robust": {"isolation": "inprocess"}},
    "rewards": {"items": [{"item": i, "quantity": 1, "reward": 1} for i in
                          ("wood", "table", "wood_pickaxe", "stone", "stone_pickaxe")]},
}  # fmt: skip
QUIET = DemonstratorConfig(epsilon=0.0, hesitation=0.0, omniscient=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_wood_table_and_wood_pickaxe(seed):
    env = make_env(TASK, robust=False)
    _, info = env.reset(seed=seed)
    player = CrafterDemonstrator(seed=seed)  # default noise: the recorded player
    done = False
    while not done:
        action = player.act(env)
        assert isinstance(action, int) and 0 <= action < len(CRAFTER_ACTIONS)
        _, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    items = info["episode"]["items"]
    assert items["wood"] and items["table"] and items["wood_pickaxe"], info["episode"]


def test_finds_the_robust_wrapper_game_and_refuses_what_it_cannot_read():
    env = make_env(TASK)  # robust, in-process: the game is still readable
    env.reset(seed=0)
    assert isinstance(unwrap_crafter(env), crafter.Env)
    with pytest.raises(TypeError, match="robust=False"):
        unwrap_crafter(object())


def _flat_world(size=24, seed=0):
    """A real crafter.Env turned into an empty meadow (no creatures, none spawning) to draw scenarios on."""
    env = crafter.Env(area=(size, size), seed=seed)
    env.reset()
    world = env._world
    for obj in list(world.objects):
        if obj is not env._player:
            world.remove(obj)
    for x in range(size):
        for y in range(size):
            world[x, y] = "grass"
    env._balance_chunk = lambda *args: None
    return env


def _bfs(env, start, goals, blocked):
    dist = {start: 0}
    queue = collections.deque([start])
    while queue:
        p = queue.popleft()
        if p in goals:
            return dist[p]
        for d in MOVES:
            q = (p[0] + d[0], p[1] + d[1])
            if q not in dist and 0 <= q[0] < env._world.area[0] and 0 <= q[1] < env._world.area[1] and q not in blocked:
                dist[q] = dist[p] + 1
                queue.append(q)
    raise AssertionError("unreachable")


def test_takes_the_shortest_path_around_water_and_never_onto_lava():
    env = _flat_world()
    world, me = env._world, env._player
    x0, y0 = (int(v) for v in me.pos)  # (12, 12)
    water = {(x0 + 3, y) for y in range(2, 22) if y != 5}  # a river with one ford, north of the player
    lava = {(x0 + 1, y0), (x0 + 2, y0), (x0 + 1, y0 - 1)}  # a lava pool on the straight line
    tree = (x0 + 6, y0)
    for p in water:
        world[p] = "water"
    for p in lava:
        world[p] = "lava"
    world[tree] = "tree"
    blocked = water | lava | {tree}
    stand = {(tree[0] + d[0], tree[1] + d[1]) for d in MOVES}
    shortest = _bfs(env, (x0, y0), stand, blocked)

    player = CrafterDemonstrator(QUIET, seed=0)
    visited = []
    for step in range(shortest + 3):  # walk, turn to the tree, hit it
        env.step(player.act(env))
        visited.append(tuple(int(v) for v in me.pos))
        if me.inventory["wood"]:
            break
    assert me.inventory["wood"] == 1, (player.goal, visited)
    assert step + 1 <= shortest + 2
    assert not lava & set(visited) and me.health > 0


def test_random_actions_never_step_into_lava():
    env = _flat_world()
    world, me = env._world, env._player
    x0, y0 = (int(v) for v in me.pos)
    for p in [(x0 - 1, y0), (x0 + 1, y0), (x0, y0 - 1)]:
        world[p] = "lava"
    player = CrafterDemonstrator(DemonstratorConfig(epsilon=1.0, hesitation=0.0), seed=3)
    actions = collections.Counter()
    for _ in range(300):
        action = player.act(env)
        actions[CRAFTER_ACTIONS[action]] += 1
        env.step(action)
        assert world[me.pos][0] != "lava" and me.health > 0
    assert len(actions) >= 12  # the noise covers (nearly) every action, as the IDM needs


def test_seals_itself_into_the_rock_and_sleeps_when_tired():
    env = _flat_world()
    world, me = env._world, env._player
    x0, y0 = (int(v) for v in me.pos)
    for x in range(x0 + 2, 24):
        for y in range(24):
            world[x, y] = "stone"
    me.inventory.update(wood_pickaxe=1, energy=2)
    player = CrafterDemonstrator(QUIET, seed=0)
    for _ in range(40):
        env.step(player.act(env))
        if me.sleeping:
            break
    assert me.sleeping, player.goal
    # Nothing can walk in: the walkable tiles reachable from the player are the two-tile pocket it dug.
    region, todo = {tuple(int(v) for v in me.pos)}, [tuple(int(v) for v in me.pos)]
    while todo:
        p = todo.pop()
        for d in MOVES:
            q = (p[0] + d[0], p[1] + d[1])
            if q not in region and world[q][0] in ("grass", "sand", "path"):
                region.add(q)
                todo.append(q)
    assert len(region) <= 2, region
    assert all(world[p][0] == "path" for p in region)  # dug out of the stone


def test_config_is_validated():
    with pytest.raises(ValueError, match="epsilon"):
        DemonstratorConfig(epsilon=1.5)
    with pytest.raises(ValueError, match="max_pause"):
        DemonstratorConfig(max_pause=0)


def test_same_seed_same_noise():
    """Two players with one seed make the same choices on the same state (crafter's own creature updates vary
    between processes, so the test compares decisions, not whole episodes)."""
    env = _flat_world()
    env._world[env._player.pos[0] + 3, env._player.pos[1]] = "tree"
    a, b = CrafterDemonstrator(seed=7), CrafterDemonstrator(seed=7)
    for _ in range(50):
        action = a.act(env)
        assert b.act(env) == action
        env.step(action)
