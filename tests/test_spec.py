"""Task specs: the shipped tasks load, Table 7 is exact, bad specs are refused with file and field named."""

from __future__ import annotations

import copy
from fractions import Fraction

import crafter.constants
import pytest
import yaml

from vpt_ray.config import ConfigError
from vpt_ray.envs.items import CRAFTER_INVENTORY_ITEMS, CRAFTER_VITALS
from vpt_ray.spec import ROLLOUTS_DIR, load_task, task_from_dict, task_to_dict

# VPT Table 7 (method doc §6): item, quantity rewarded (None = unlimited), reward per unit.
TABLE_7 = [
    ("log", 8, Fraction(1, 8)), ("planks", 20, Fraction(1, 20)), ("stick", 16, Fraction(1, 16)),
    ("crafting_table", 1, 1), ("wooden_pickaxe", 1, 1), ("cobblestone", 11, Fraction(1, 11)),
    ("stone_pickaxe", 1, 1), ("furnace", 1, 1), ("coal", 5, Fraction(2, 5)), ("torch", 16, Fraction(1, 8)),
    ("iron_ore", 3, Fraction(4, 3)), ("iron_ingot", 3, Fraction(4, 3)), ("iron_pickaxe", 1, 4),
    ("diamond", None, Fraction(8, 3)), ("diamond_pickaxe", None, 8),
]  # fmt: skip

CRAFTER_TREE = [
    "wood", "table", "wood_pickaxe", "stone", "stone_pickaxe", "coal", "iron", "furnace", "iron_pickaxe", "diamond",
]  # fmt: skip


def test_minerl_task_is_table_7_exactly():
    task = load_task("minerl-diamond-pickaxe")
    assert task.env.kind == "minerl" and task.env.max_steps == 12_000
    assert task.env.minerl.resolution == (640, 360) and task.env.minerl.fov == 70 and task.env.minerl.gamma == 2
    got = [(r.item, r.quantity, r.reward) for r in task.rewards.items]
    assert [g[:2] for g in got] == [t[:2] for t in TABLE_7]
    for (_, _, reward), (_, _, expected) in zip(got, TABLE_7):
        assert reward == pytest.approx(float(expected), rel=1e-15)


def test_crafter_tech_tree_tiers():
    task = load_task(ROLLOUTS_DIR / "crafter-tech-tree.yaml")
    assert task.rewards.item_names == tuple(CRAFTER_TREE)
    by_item = {r.item: r for r in task.rewards.items}
    tier = {"wood": 1, "table": 1, "wood_pickaxe": 1, "stone": 1, "stone_pickaxe": 1, "furnace": 1,
            "coal": 2, "iron": 4, "iron_pickaxe": 4}  # fmt: skip
    for item, base in tier.items():  # tier base spread over the units rewarded, as in Table 7
        assert by_item[item].reward * by_item[item].quantity == pytest.approx(base)
    assert by_item["diamond"].quantity is None and by_item["diamond"].reward == 8
    # Quantities are what crafter's recipes need on the way to an iron pickaxe.
    pickaxes = ("wood_pickaxe", "stone_pickaxe", "iron_pickaxe")
    wood = crafter.constants.place["table"]["uses"]["wood"] + sum(
        crafter.constants.make[p]["uses"].get("wood", 0) for p in pickaxes
    )
    stone = (
        crafter.constants.place["furnace"]["uses"]["stone"] + crafter.constants.make["stone_pickaxe"]["uses"]["stone"]
    )
    assert (by_item["wood"].quantity, by_item["stone"].quantity) == (wood, stone)


def test_crafter_item_vocabulary_matches_the_installed_package():
    assert tuple(crafter.constants.items) == CRAFTER_VITALS + CRAFTER_INVENTORY_ITEMS
    assert {"place_table", "place_furnace"} <= set(crafter.constants.achievements)


@pytest.mark.parametrize("name", ["crafter-wood", "crafter-tech-tree", "minerl-diamond-pickaxe"])
def test_shipped_tasks_round_trip(name):
    task = load_task(name)
    assert task.name == name
    assert task_from_dict(task_to_dict(task)) == task


def _wood_dict():
    return yaml.safe_load((ROLLOUTS_DIR / "crafter-wood.yaml").read_text())


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda d: d["rewards"]["items"][0].update(item="log"), "rewards.items[0].item", "not an item a crafter"),
        (lambda d: d["env"].update(frame_size=[0, 64]), "env", "frame_size must be positive"),
        (lambda d: d["env"].update(max_steps=0), "env", "max_steps must be positive"),
        (lambda d: d["env"].update(colour="blue"), "env.colour", "unknown field"),
        (lambda d: d.update(reward_scale=2), "reward_scale", "unknown field"),
        (lambda d: d["rewards"]["items"][1].update(reward="one/2"), "rewards.items[1]", "not a number or fraction"),
        (lambda d: d["rewards"]["items"][1].update(quantity=0), "rewards.items[1]", "quantity"),
        (lambda d: d["rewards"]["items"].append(dict(d["rewards"]["items"][0])), "rewards", "listed twice"),
        (lambda d: d["env"].update(minerl={"fov": 70}), "env", "'minerl' options given for a crafter env"),
        (lambda d: d["env"]["robust"].update(isolation="thread"), "env.robust.isolation", "not one of"),
        (lambda d: d["env"]["robust"].update(step_timeout_s=0), "env.robust", "timeouts must be positive"),
        (lambda d: d["env"].pop("kind"), "env.kind", "required field is missing"),
    ],
)
def test_bad_specs_name_file_and_field(tmp_path, edit, field, words):
    data = _wood_dict()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_task(path)
    assert str(path) in str(e.value) and f"field '{field}'" in str(e.value) and words in str(e.value)


def test_missing_task_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no-such-task.yaml: no such file"):
        load_task("no-such-task")


def test_kind_options_get_defaults():
    data = copy.deepcopy(_wood_dict())
    del data["env"]["crafter"]
    task = task_from_dict(data)
    assert task.env.crafter.area == (64, 64) and task.env.minerl is None
