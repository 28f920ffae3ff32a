"""Rewards and item progression from ``new_items``, per episode and across episodes.

:class:`ItemProgress` pays a task's reward table (method doc §6: ``reward`` per newly obtained unit, up to
``quantity`` units per episode) and records at which step each item was first obtained. ``item_fractions`` and
``summarize_episodes`` aggregate the ``info["episode"]`` dicts of many episodes (RL metrics, demo report).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vpt_ray.spec import RewardTable


class ItemProgress:
    """One episode's obtained-unit counts, first-obtained steps and reward under a reward table."""

    def __init__(self, table: RewardTable):
        self.table = table
        self.reset()

    def reset(self) -> None:
        self.counts: dict[str, int] = {r.item: 0 for r in self.table.items}
        self.first_step: dict[str, int | None] = {r.item: None for r in self.table.items}

    def update(self, new_items: Mapping[str, int], step: int) -> float:
        """Add this step's newly obtained units (``step`` counts from 1); returns the reward they earn."""
        reward = 0.0
        for r in self.table.items:
            n = int(new_items.get(r.item, 0))
            if n <= 0:
                continue
            before, after = self.counts[r.item], self.counts[r.item] + n
            paid = n if r.quantity is None else max(0, min(after, r.quantity) - min(before, r.quantity))
            reward += paid * r.reward
            self.counts[r.item] = after
            if self.first_step[r.item] is None:
                self.first_step[r.item] = step
        return reward

    @property
    def items(self) -> dict[str, bool]:
        return {item: n > 0 for item, n in self.counts.items()}


def item_fractions(episodes: Iterable[Mapping[str, Any]], items: Sequence[str] | None = None) -> dict[str, float]:
    """Fraction of episodes that obtained each item (``info["episode"]`` dicts), in the task's item order.

    ``items`` defaults to the items of the first episode; an empty ``episodes`` gives 0.0 for each of ``items``.
    """
    episodes = list(episodes)
    if items is None:
        items = list(episodes[0]["items"]) if episodes else []
    if not episodes:
        return {item: 0.0 for item in items}
    return {item: float(np.mean([bool(ep["items"].get(item, False)) for ep in episodes])) for item in items}


def summarize_episodes(episodes: Iterable[Mapping[str, Any]], items: Sequence[str] | None = None) -> dict[str, Any]:
    """Mean return and length, env failures, per-item success fraction and median first-obtained step."""
    episodes = list(episodes)
    fractions = item_fractions(episodes, items)
    median_steps = {}
    for item in fractions:
        steps = [ep["item_steps"][item] for ep in episodes if ep["item_steps"].get(item) is not None]
        median_steps[item] = float(np.median(steps)) if steps else None
    return {
        "episodes": len(episodes),
        "return_mean": float(np.mean([ep["return"] for ep in episodes])) if episodes else 0.0,
        "length_mean": float(np.mean([ep["length"] for ep in episodes])) if episodes else 0.0,
        "env_failures": int(sum(ep["env_failures"] for ep in episodes)),
        "items": fractions,
        "item_steps_median": median_steps,
    }
