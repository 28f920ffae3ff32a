"""Typed pieces shared by the IDM and BC training configs, and named recipes (YAML) with overrides.

A recipe is a YAML file holding one training config (``IDMTrainConfig`` / ``BCTrainConfig``): the method doc's
hyperparameters for the released sizes and small CPU defaults for Crafter live in ``vpt_ray/training/recipes/``;
``load_recipe(cls, name_or_path, overrides)`` loads one by name or path and applies ``key.sub=value`` overrides
(values parsed as YAML) before validation, so a bad override is refused like a bad file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

from vpt_ray.config import ConfigError, from_dict, load_yaml, named_yaml

T = TypeVar("T")

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


def _range(name: str, lo_hi: tuple[float, float], lo_min: float | None = None) -> None:
    lo, hi = lo_hi
    if lo > hi or (lo_min is not None and lo < lo_min):
        raise ValueError(f"{name} must be [low, high] with low <= high" + (f" and low >= {lo_min}" if lo_min is not None else "") + f", got {list(lo_hi)}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear learning-rate decay (method doc §5): lr falls linearly from ``lr`` (after an optional
    linear warm-up) to ``lr * final_lr_fraction`` at the last step. Weight decay applies to weight matrices and
    conv kernels only (not to biases, norms or the relative-position bases)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0
    max_grad_norm: Optional[float] = None  # clip the global gradient norm; None: no clipping

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"optim.final_lr_fraction must lie in [0, 1], got {self.final_lr_fraction}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"optim.max_grad_norm must be positive or null, got {self.max_grad_norm}")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Temporally consistent image augmentation (method doc §5): one random transform per clip, applied to every
    frame of it. Colour: hue shift (fraction of the hue circle), saturation/brightness/contrast factors; geometry:
    rotation, scale, shear (degrees) and translation (pixels) about the frame centre. A range of (1, 1) or a
    magnitude of 0 switches that part off; ``enabled: false`` switches all of it off."""

    enabled: bool = True
    hue: float = 0.2
    saturation: tuple[float, float] = (0.8, 1.2)
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.8, 1.2)
    rotation_deg: float = 2.0
    scale: tuple[float, float] = (0.98, 1.02)
    shear_deg: float = 2.0
    translate_px: float = 2.0

    def __post_init__(self):
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must lie in [0, 0.5] (a fraction of the hue circle), got {self.hue}")
        for name in ("saturation", "brightness", "contrast", "scale"):
            _range(f"augment.{name}", getattr(self, name), lo_min=0.0)
        if self.scale[0] <= 0:
            raise ValueError(f"augment.scale must be positive, got {list(self.scale)}")
        for name in ("rotation_deg", "shear_deg", "translate_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0 (a +- magnitude), got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ScalingSpec:
    """Ray Train scaling: ``num_workers`` data-parallel workers, each with ``cpus_per_worker`` CPUs and a GPU
    when ``use_gpu``. Global batch sizes are split evenly over the workers."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError(f"scaling.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker < 1:
            raise ValueError(f"scaling.cpus_per_worker must be >= 1, got {self.cpus_per_worker}")


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """How long to train and how often to log, evaluate and checkpoint (all in optimizer steps).

    ``max_steps`` wins over ``epochs``; an epoch is the training data's frames divided by the frames of one
    global batch. Evaluation runs on the held-out data at every checkpoint and at the end."""

    epochs: float = 1.0
    max_steps: Optional[int] = None
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_frames: Optional[int] = None  # cap on held-out frames per worker and evaluation; None: all of them

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError(f"schedule.epochs must be positive, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"schedule.max_steps must be >= 1 or null, got {self.max_steps}")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"schedule.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_frames is not None and self.eval_frames < 1:
            raise ValueError(f"schedule.eval_frames must be >= 1 or null, got {self.eval_frames}")

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, round(self.epochs * steps_per_epoch))


def parse_overrides(items: list[str] | tuple[str, ...], where: str = "--set") -> dict[str, Any]:
    """``["optim.lr=1e-3", "augment.enabled=false"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: expected KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: value of {key!r} is not valid YAML: {e}") from None
        if isinstance(value, str):
            # YAML 1.1 reads 2e-4 (no dot) as a string; on a command line it means the number.
            try:
                value = float(value)
            except ValueError:
                pass
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key!r} sets a field inside a value set earlier")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def recipe_path(name_or_path: str | Path) -> Path:
    return named_yaml(name_or_path, RECIPE_DIR, "training recipe")


def load_recipe(cls: type[T], name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """A training config from a named recipe or YAML path, with nested ``overrides`` applied before validation."""
    path = recipe_path(name_or_path)
    data = merge(load_yaml(path), overrides or {})
    where = str(path) + (" (with overrides)" if overrides else "")
    return from_dict(cls, data, where=where)


def known_recipes(prefix: str) -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob(f"{prefix}*.yaml"))
