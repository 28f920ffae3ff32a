"""The demo's typed config: one preset YAML (``vpt_ray/demo/presets/<name>.yaml``) sizes every stage.

:func:`load_demo_config` reads a preset (name or path), applies ``key.sub=value`` overrides, checks the types and
ranges of every field, and :func:`resolve` then validates everything the stages will build from it (the task
spec with its ``rl:`` section, the model presets, the IDM and BC recipes with their overrides, the filter
configs) so a bad preset is refused before any work starts, with the file and field in the message.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from vpt_ray.config import ConfigError, from_dict, load_yaml, named_yaml, to_dict

DEMO_DIR = Path(__file__).resolve().parent
PRESETS_DIR = DEMO_DIR / "presets"
MODELS_DIR = DEMO_DIR / "models"
RL_ARMS = ("rl_bc_kl", "rl_bc_no_kl", "rl_scratch")


def _at_least(obj: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclasses.dataclass(frozen=True)
class TaskSection:
    """The task every stage plays: a task spec (``rollouts/``) with a shorter episode and the RL section.

    ``rl`` holds the ``rl:`` fields of the spec (``vpt_ray.rl.config.RLSpec``) except ``policy`` and
    ``iterations``, which the demo sets (the demo policy preset, and the iterations of the env-step budget)."""

    base: str = "crafter-tech-tree"
    max_steps: int = 300
    area: tuple[int, int] | None = None  # Crafter world size; None: the base task's
    rl: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _at_least(self, 1, "max_steps")
        for name in ("policy", "iterations"):
            if name in self.rl:
                raise ValueError(f"rl.{name} is set by the demo (models.policy, rl_budget.env_steps), not here")


@dataclasses.dataclass(frozen=True)
class ModelsSection:
    """Model presets: a name in ``vpt_ray/demo/models/`` or ``policies/``, or a YAML path."""

    policy: str = "crafter-policy-small"
    idm: str = "crafter-idm-small"


@dataclasses.dataclass(frozen=True)
class RecordSection:
    """The scripted player's recordings: the labeled "contractor" set (IDM training), held-out labeled episodes
    (accuracy of IDM and BC), the larger unlabeled web-like set (to filter and pseudo-label) and a separate
    web-like set whose ground-truth frame classes train the clean filter (the paper's hand-labeled frames)."""

    labeled_episodes: int = 12
    heldout_episodes: int = 3
    unlabeled_videos: int = 32
    filter_train_videos: int = 12
    episode_steps: int = 300  # the scripted player's episode length while recording
    overlays: bool = True  # web videos get logos, face-cams, intros, menus (and the filter has work to do)
    workers: int = 2

    def __post_init__(self):
        _at_least(self, 1, "labeled_episodes", "heldout_episodes", "unlabeled_videos", "filter_train_videos",
                  "episode_steps", "workers")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FilterSection:
    """``train``: ``vpt_ray.filter.TrainConfig`` fields; ``apply``: ``vpt_ray.filter.FilterConfig`` fields."""

    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    apply: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """A training recipe (``vpt_ray/training/recipes``) and nested overrides (the model is set by the demo)."""

    recipe: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if "model" in self.overrides or "init" in self.overrides:
            raise ValueError("overrides.model/init are set by the demo (models section, the BC checkpoint)")


@dataclasses.dataclass(frozen=True)
class RLBudget:
    """Each RL arm trains for the same number of env steps (rounded up to whole iterations)."""

    env_steps: int = 4096

    def __post_init__(self):
        _at_least(self, 1, "env_steps")


@dataclasses.dataclass(frozen=True)
class EvalSection:
    episodes: int = 48  # per agent
    max_steps: int | None = None  # None: the task's max_steps
    workers: int = 2
    envs_per_worker: int = 8
    seed: int | None = None  # None: vpt_ray.evaluation.EVAL_SEED (worlds no training stage plays)
    bc_labeled_only: bool = True  # also evaluate the BC policy trained on the labeled set alone

    def __post_init__(self):
        _at_least(self, 1, "episodes", "workers", "envs_per_worker")
        if self.max_steps is not None:
            _at_least(self, 1, "max_steps")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    name: str
    task: TaskSection = TaskSection()
    models: ModelsSection = ModelsSection()
    record: RecordSection = RecordSection()
    filter: FilterSection = FilterSection()
    idm: TrainSection = TrainSection("idm-crafter-small")
    bc: TrainSection = TrainSection("bc-crafter-small")
    rl_budget: RLBudget = RLBudget()
    eval: EvalSection = EvalSection()
    num_cpus: int | None = None  # CPUs of the demo's local Ray cluster; None: all of this machine's
    # The training and labeling stages run on a GPU when the demo's Ray cluster has one (precision auto: bf16);
    # false keeps everything on CPUs. How a stage runs, not what it makes: no stage is redone when it changes.
    use_gpus: bool = True
    description: str = ""


def preset_path(name_or_path: str | Path) -> Path:
    return named_yaml(name_or_path, PRESETS_DIR, "demo preset")


def load_demo_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> DemoConfig:
    """A preset by name (``quick``, ``default``, ``full``) or YAML path, nested ``overrides`` merged in."""
    from vpt_ray.training.config import merge

    path = preset_path(name_or_path)
    data = merge(load_yaml(path), overrides or {})
    return from_dict(DemoConfig, data, where=str(path) + (" (with overrides)" if overrides else ""))


def model_preset_path(name_or_path: str, field: str) -> Path:
    """A model preset: a YAML path, a name in ``vpt_ray/demo/models/``, or a name in ``policies/``."""
    from vpt_ray.models.config import PRESET_DIR

    path = Path(name_or_path)
    candidates = [path] if path.suffix in (".yaml", ".yml") else [MODELS_DIR / f"{name_or_path}.yaml",
                                                                  PRESET_DIR / f"{name_or_path}.yaml"]  # fmt: skip
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"field '{field}': no model preset {name_or_path!r} (looked at {[str(c) for c in candidates]})")


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Everything the stages build, validated: the task spec (as a dict ready for YAML) and the typed configs."""

    config: DemoConfig
    task: dict[str, Any]
    rl_iterations: int
    env_steps_per_iteration: int
    policy_preset: Path
    idm_preset: Path
    idm_train: Any  # vpt_ray.idm.IDMTrainConfig
    bc_train: Any  # vpt_ray.bc.BCTrainConfig
    filter_train: Any  # vpt_ray.filter.TrainConfig
    filter_apply: Any  # vpt_ray.filter.FilterConfig


def resolve(config: DemoConfig, where: str = "<demo config>") -> Resolved:
    """Build and validate every stage's config from ``config``; raises ``ConfigError`` naming the field."""
    from vpt_ray.bc import BCTrainConfig
    from vpt_ray.filter import FilterConfig, TrainConfig
    from vpt_ray.idm import IDMTrainConfig
    from vpt_ray.models import load_preset
    from vpt_ray.spec import load_task, task_to_dict
    from vpt_ray.training.config import load_recipe, merge

    policy_preset = model_preset_path(config.models.policy, "models.policy")
    idm_preset = model_preset_path(config.models.idm, "models.idm")
    for preset, kind, field in ((policy_preset, "policy", "models.policy"), (idm_preset, "idm", "models.idm")):
        model = load_preset(str(preset))
        if model.kind != kind or model.action_space != "crafter":
            raise ConfigError(f"{where}: field '{field}': {preset} is a {model.action_space} {model.kind!r} model; "
                              f"the demo needs a crafter {kind!r} model")  # fmt: skip

    base = task_to_dict(load_task(config.task.base))
    if base["env"]["kind"] != "crafter":
        raise ConfigError(f"{where}: field 'task.base': the demo plays Crafter (its scripted player records the "
                          f"demonstrations), {config.task.base!r} is a {base['env']['kind']} task")  # fmt: skip
    base["name"] = f"{base['name']}-demo"
    base["env"]["max_steps"] = config.task.max_steps
    if config.task.area is not None:
        base["env"]["crafter"]["area"] = list(config.task.area)
    rl = merge(base.get("rl") or {}, config.task.rl)
    rl["policy"] = str(policy_preset)
    rl["iterations"] = 1  # replaced below, once the per-iteration env steps are known
    base["rl"] = rl
    spec = load_task(base)  # validates the task and its rl: section (the policy must fit the env)
    steps_per_iteration = spec.rl.batch_size * spec.rl.batches_per_iteration * spec.rl.context_len
    iterations = max(1, math.ceil(config.rl_budget.env_steps / steps_per_iteration))
    base["rl"]["iterations"] = iterations
    task = task_to_dict(load_task(base))

    idm_train = load_recipe(IDMTrainConfig, config.idm.recipe, merge(config.idm.overrides, {"model": str(idm_preset)}))
    bc_train = load_recipe(BCTrainConfig, config.bc.recipe, merge(config.bc.overrides, {"model": str(policy_preset)}))
    if idm_train.schedule.max_steps is None or bc_train.schedule.max_steps is None:
        raise ConfigError(f"{where}: fields 'idm.overrides.schedule.max_steps' and 'bc.overrides.schedule.max_steps' "
                          "must be set: the demo sizes its stages in optimizer steps")  # fmt: skip
    filter_train = from_dict(TrainConfig, dict(config.filter.train), where=f"{where} (filter.train)")
    filter_apply = from_dict(FilterConfig, dict(config.filter.apply), where=f"{where} (filter.apply)")
    return Resolved(config, task, iterations, steps_per_iteration, policy_preset, idm_preset, idm_train, bc_train,
                    filter_train, filter_apply)  # fmt: skip


def config_dict(config: DemoConfig) -> dict[str, Any]:
    return to_dict(config)
