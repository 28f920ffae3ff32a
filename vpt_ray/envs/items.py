"""Item vocabularies: the names a task's reward table may use, per environment kind.

A reward table names *items*; each env adapter reports ``new_items`` (units newly obtained this step) under
these names, so the table never has to know how a simulator counts things.

* Crafter: every inventory item that is not a vital stat, plus ``table`` and ``furnace``, which Crafter has the
  player *place* rather than carry (obtained = one more ``place_table`` / ``place_furnace`` achievement count).
* Minecraft: the item ids of MineRL's inventory for the tech tree and its neighbours, plus the groups of
  VPT's Table 7 (``log`` = any overworld log, ``planks`` = any planks), which sum several ids.
"""

from __future__ import annotations

# Crafter's inventory entries that are stats of the player, not items: never rewarded, never "obtained".
CRAFTER_VITALS: tuple[str, ...] = ("health", "food", "drink", "energy")

# Crafter's carried items, in crafter/data.yaml order (tests check this against the installed package).
CRAFTER_INVENTORY_ITEMS: tuple[str, ...] = (
    "sapling", "wood", "stone", "coal", "iron", "diamond",
    "wood_pickaxe", "stone_pickaxe", "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword",
)

# Placed structures -> the achievement whose counter goes up by one per placement.
CRAFTER_PLACED_ITEMS: dict[str, str] = {"table": "place_table", "furnace": "place_furnace"}

CRAFTER_ITEMS: frozenset[str] = frozenset(CRAFTER_INVENTORY_ITEMS) | frozenset(CRAFTER_PLACED_ITEMS)

_WOODS = ("oak", "spruce", "birch", "jungle", "acacia", "dark_oak")

# Table 7 counts "log" and "planks" whatever the tree species.
MINECRAFT_ITEM_GROUPS: dict[str, tuple[str, ...]] = {
    "log": tuple(f"{w}_log" for w in _WOODS),
    "planks": tuple(f"{w}_planks" for w in _WOODS),
}

_TOOLS = ("pickaxe", "axe", "shovel", "sword", "hoe")
MINECRAFT_ITEMS: frozenset[str] = frozenset(
    [*MINECRAFT_ITEM_GROUPS, *(i for ids in MINECRAFT_ITEM_GROUPS.values() for i in ids)]
    + [f"{m}_{t}" for m in ("wooden", "stone", "iron", "golden", "diamond") for t in _TOOLS]
    + [
        "stick", "crafting_table", "cobblestone", "stone", "furnace", "coal", "charcoal", "torch",
        "iron_ore", "iron_ingot", "gold_ore", "gold_ingot", "diamond", "redstone", "lapis_lazuli", "emerald",
        "dirt", "sand", "gravel", "flint", "apple", "wheat_seeds", "chest", "ladder", "bucket", "water_bucket",
        "oak_sapling", "string", "feather", "bone", "leather", "beef", "porkchop", "chicken", "mutton",
    ]
)

ITEMS_BY_KIND: dict[str, frozenset[str]] = {"crafter": CRAFTER_ITEMS, "minerl": MINECRAFT_ITEMS}


# MineRL item id -> the names it counts toward (itself and its Table 7 group).
_NAMES_OF_ID: dict[str, tuple[str, ...]] = {
    i: (i, *(group for group, ids in MINECRAFT_ITEM_GROUPS.items() if i in ids)) for i in MINECRAFT_ITEMS
}


def minecraft_item_counts(inventory: dict[str, int]) -> dict[str, int]:
    """Counts of the known item names (group names summed over their ids) that a MineRL inventory holds."""
    counts: dict[str, int] = {}
    for item_id, n in inventory.items():
        for name in _NAMES_OF_ID.get(item_id, ()):
            counts[name] = counts.get(name, 0) + int(n)
    return counts
