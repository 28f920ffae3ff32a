"""Task specs: which environment to run and what it pays for (``rollouts/<task>.yaml``).

A task is validated completely before any env starts: unknown fields, non-positive sizes and reward items the
env cannot report are refused with the file and dotted field in the message.

Rewards follow VPT's Table 7 (method doc §6): each listed item pays ``reward`` per newly obtained unit, up to
``quantity`` units per episode (``null`` = unlimited). ``reward`` may be written as a fraction (``1/11``) so the
YAML reads like the paper's table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from vpt_ray.config import ConfigError, from_dict, load_yaml, to_dict
from vpt_ray.rl.config import RLSpec, check_rl_section

# Bare task names ("crafter-wood") resolve to the YAML files shipped in the repository's rollouts/.
ROLLOUTS_DIR = Path(__file__).resolve().parents[1] / "rollouts"


@dataclass(frozen=True)
class CrafterOptions:
    area: tuple[int, int] = (64, 64)  # world size in cells

    def __post_init__(self):
        if min(self.area) < 9:
            raise ValueError(f"area must be at least 9x9 cells (the player's view), got {list(self.area)}")


@dataclass(frozen=True)
class MineRLOptions:
    """MineRL 1.0 HumanSurvival settings; defaults are VPT's (method doc §3, §7)."""

    resolution: tuple[int, int] = (640, 360)  # (width, height) rendered by the game, before resizing
    fov: float = 70.0
    # The paper says GUI scale 2; the released agent's validate_env checks guiscale_range [1, 1].
    gui_scale: int = 2
    gamma: float = 2.0  # brightness
    cursor_size: float = 16.0

    def __post_init__(self):
        if min(self.resolution) <= 0:
            raise ValueError(f"resolution must be positive, got {list(self.resolution)}")
        if not 30 <= self.fov <= 110:
            raise ValueError(f"fov must be within Minecraft's 30..110 degrees, got {self.fov}")


@dataclass(frozen=True)
class RobustOptions:
    """How the robust wrapper (``make_env(robust=True)``) survives a failing simulator."""

    # "process": the simulator runs in a child process, so a hung step is killed after its timeout.
    # "inprocess": cheaper, but only exceptions are caught; a hang cannot be interrupted.
    isolation: Literal["process", "inprocess"] = "process"
    start_timeout_s: float = 600.0  # building the simulator: process start, imports, launching the game
    step_timeout_s: float = 60.0
    reset_timeout_s: float = 600.0
    # Failures in a row (no successful step in between) before the env gives up and raises, so that RLlib's
    # env-runner fault tolerance restarts the runner.
    max_consecutive_failures: int = 3

    def __post_init__(self):
        timeouts = (self.start_timeout_s, self.step_timeout_s, self.reset_timeout_s)
        if min(timeouts) <= 0:
            raise ValueError(f"timeouts must be positive, got start/step/reset {list(timeouts)}")
        if self.max_consecutive_failures < 1:
            raise ValueError(f"max_consecutive_failures must be >= 1, got {self.max_consecutive_failures}")


@dataclass(frozen=True)
class EnvSpec:
    kind: Literal["crafter", "minerl"]
    frame_size: tuple[int, int]  # (height, width) of the observation frames
    max_steps: int  # episode length limit: the episode is truncated after this many steps
    crafter: CrafterOptions | None = None
    minerl: MineRLOptions | None = None
    robust: RobustOptions = field(default_factory=RobustOptions)

    def __post_init__(self):
        if min(self.frame_size) <= 0:
            raise ValueError(f"frame_size must be positive (height, width), got {list(self.frame_size)}")
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        other = "minerl" if self.kind == "crafter" else "crafter"
        if getattr(self, other) is not None:
            raise ValueError(f"'{other}' options given for a {self.kind} env")
        if getattr(self, self.kind) is None:
            object.__setattr__(self, self.kind, CrafterOptions() if self.kind == "crafter" else MineRLOptions())


@dataclass(frozen=True)
class RewardItem:
    item: str
    quantity: int | None  # units rewarded per episode; None = every unit
    reward: float | str  # per unit; a string is a fraction like "1/11" and becomes a float

    def __post_init__(self):
        if self.quantity is not None and self.quantity < 1:
            raise ValueError(f"quantity of '{self.item}' must be >= 1 or null (unlimited), got {self.quantity}")
        reward = self.reward
        if isinstance(reward, str):
            try:
                reward = float(Fraction(reward.replace(" ", "")))
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"reward of '{self.item}' is not a number or fraction: {self.reward!r}") from None
        if not math.isfinite(reward):
            raise ValueError(f"reward of '{self.item}' must be finite, got {reward}")
        object.__setattr__(self, "reward", float(reward))


@dataclass(frozen=True)
class RewardTable:
    items: tuple[RewardItem, ...]  # in progression order: the order item curves are reported in

    def __post_init__(self):
        if not self.items:
            raise ValueError("a reward table needs at least one item")
        names = [r.item for r in self.items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"items listed twice: {dup}")

    @property
    def item_names(self) -> tuple[str, ...]:
        return tuple(r.item for r in self.items)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    env: EnvSpec
    rewards: RewardTable
    description: str = ""
    rl: RLSpec | None = None  # RL fine-tuning hyperparameters and scale (vpt_ray.rl.config), for `vpt-ray rl`

    def validate(self, where: str = "<task>") -> TaskSpec:
        """Cross-field checks (a reward item must be one the env reports); returns self."""
        from vpt_ray.envs.items import ITEMS_BY_KIND  # here: vpt_ray.envs imports this module

        known = ITEMS_BY_KIND[self.env.kind]
        for i, r in enumerate(self.rewards.items):
            if r.item not in known:
                raise ConfigError(
                    f"{where}: field 'rewards.items[{i}].item': {r.item!r} is not an item a {self.env.kind} env "
                    f"reports (known: {sorted(known)})"
                )
        if self.rl is not None:
            check_rl_section(self.rl, self.env, where)
        return self


def task_from_dict(data: dict[str, Any], where: str = "<task>") -> TaskSpec:
    return from_dict(TaskSpec, data, where=where).validate(where)


def resolve_task_path(task: str | Path) -> Path:
    """A path to a YAML file, or a bare task name looked up in the shipped ``rollouts/``."""
    path = Path(task)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    return ROLLOUTS_DIR / f"{task}.yaml"


def load_task(task: str | Path | dict[str, Any] | TaskSpec) -> TaskSpec:
    """A validated :class:`TaskSpec` from a YAML path, a bare task name, a mapping, or a spec."""
    if isinstance(task, TaskSpec):
        return task.validate()
    if isinstance(task, dict):
        return task_from_dict(task)
    path = resolve_task_path(task)
    return task_from_dict(load_yaml(path), where=str(path))


def task_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """Plain mapping that :func:`task_from_dict` turns back into ``spec`` (for RLlib env_config, metadata)."""
    return to_dict(spec)


__all__ = [
    "CrafterOptions", "EnvSpec", "MineRLOptions", "RewardItem", "RewardTable", "RobustOptions", "TaskSpec",
    "load_task", "resolve_task_path", "task_from_dict", "task_to_dict", "ROLLOUTS_DIR",
]
