"""The ``rl:`` section of a task spec: every PPG hyperparameter (VPT's Table 6 and the rest) and the job's scale.

One source of truth: :class:`RLSpec` is read from the task YAML (``rollouts/<task>.yaml``), validated on load
(errors name the file and field), and :class:`vpt_ray.rl.algorithm.PPGConfig` is built from it. The defaults are
VPT's Table 6 (method doc §6); Crafter tasks override them with CPU-sized values.

Units: ``batch_size`` counts *rows* (``context_len`` consecutive env steps of one sub-env, crossing episode
boundaries), so one minibatch is ``batch_size * context_len`` steps and one iteration's wake phase trains on
``batch_size * batches_per_iteration`` rows, each used once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vpt_ray.config import ConfigError

# The action space each env kind plays in (the policy's heads must be that space's).
ACTION_SPACE_OF_ENV = {"crafter": "crafter", "minerl": "minecraft"}


@dataclass(frozen=True)
class ServeSpec:
    """The frozen BC policy on Ray Serve (the KL targets), used only when training with the KL term."""

    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch_size: int = 16  # rows (of all env runners) per forward pass
    batch_wait_timeout_s: float = 0.02
    request_timeout_s: float = 120.0  # retries (replica restarts) give up after this long

    def __post_init__(self):
        if self.replicas < 1 or self.max_batch_size < 1:
            raise ValueError(f"replicas and max_batch_size must be >= 1, got {self.replicas}, {self.max_batch_size}")
        if self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ValueError("cpus_per_replica and gpus_per_replica must be >= 0")
        if self.batch_wait_timeout_s < 0 or self.request_timeout_s <= 0:
            raise ValueError("batch_wait_timeout_s must be >= 0 and request_timeout_s > 0")


@dataclass(frozen=True)
class ScaleSpec:
    env_runners: int = 1  # the most env runners; fewer run while CPUs are short (and `vpt-ray scale` can lower it)
    envs_per_env_runner: int = 2  # sub-envs stepped in lockstep by one runner: rows per sample call
    cpus_per_env_runner: float = 1.0
    # Custom Ray resources per env runner, e.g. {rollout: 1} to keep runners on the cluster's rollout nodes.
    env_runner_resources: dict[str, float] = field(default_factory=dict)
    num_learners: int = 0  # 0: one learner in the driver process; 1: one learner actor; >= 2: DDP
    cpus_per_learner: float = 1.0
    gpus_per_learner: float = 0.0
    learner_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per learner
    serve: ServeSpec = field(default_factory=ServeSpec)

    def __post_init__(self):
        if self.env_runners < 1 or self.envs_per_env_runner < 1:
            raise ValueError(f"env_runners and envs_per_env_runner must be >= 1, got {self.env_runners}, "
                             f"{self.envs_per_env_runner}")  # fmt: skip
        if self.num_learners < 0:
            raise ValueError(f"num_learners must be >= 0, got {self.num_learners}")
        if self.cpus_per_env_runner <= 0 or self.cpus_per_learner < 0 or self.gpus_per_learner < 0:
            raise ValueError("cpus_per_env_runner must be > 0, cpus/gpus_per_learner >= 0")
        for what, resources in (("env_runner_resources", self.env_runner_resources),
                                ("learner_resources", self.learner_resources)):  # fmt: skip
            bad = {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory") or not v > 0}
            if bad:
                raise ValueError(f"{what}: custom resources need positive amounts and no CPU/GPU/memory "
                                 f"(those have their own fields), got {bad}")  # fmt: skip


@dataclass(frozen=True)
class RLSpec:
    # Model of a run from scratch (no --init): a preset name (policies/<name>.yaml) or a YAML path. A run from a BC
    # checkpoint takes the checkpoint's architecture instead.
    policy: str | None = None
    iterations: int = 4000
    checkpoint_every: int = 10  # iterations
    keep_checkpoints: int = 3
    seed: int = 0

    # ---- VPT Table 6
    lr: float = 2e-5
    weight_decay: float = 0.04
    batch_size: int = 40  # rows per minibatch (all learners together)
    batches_per_iteration: int = 48  # wake minibatches per iteration
    context_len: int = 128  # steps per row
    gamma: float = 0.999
    gae_lambda: float = 0.95
    ppo_clip: float = 0.2
    max_grad_norm: float = 5.0
    max_staleness: int = 2  # policy versions a row may lag behind the learner
    sleep_cycles: int = 2  # passes over the sleep buffer per iteration (0: no sleep phase, i.e. plain PPO)
    sleep_value_coef: float = 0.5
    sleep_aux_value_coef: float = 0.5
    sleep_kl_coef: float = 1.0  # KL to the policy of before the sleep phase
    sleep_max_sample_reuse: int = 6  # sleep passes a row gets in all: buffer = reuse / cycles iterations
    rho: float = 0.2  # coefficient of KL(pi_pretrained || pi_theta)
    rho_decay: float = 0.9995  # rho *= rho_decay after every iteration

    # ---- beyond Table 6
    # The paper: without the KL loss the learning rate had to drop to 3e-6. Used by --no-kl and scratch runs
    # when set; null: lr.
    lr_without_kl: float | None = None
    wake_value_coef: float = 0.5
    entropy_coef: float = 0.01  # entropy bonus, only without the KL term (the scratch baseline)
    value_norm_beta: float = 0.99  # EWMA weight of the value-target normaliser, one update per iteration
    # Rows older than max_staleness: "drop" them, or "downweight" them by stale_row_weight per extra version.
    staleness_mode: Literal["drop", "downweight"] = "drop"
    stale_row_weight: float = 0.5
    sample_timeout_s: float = 600.0  # no rows from any env runner for this long: the job fails
    scale: ScaleSpec = field(default_factory=ScaleSpec)

    def __post_init__(self):
        positive = {"lr": self.lr, "ppo_clip": self.ppo_clip, "max_grad_norm": self.max_grad_norm,
                    "sample_timeout_s": self.sample_timeout_s}  # fmt: skip
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.lr_without_kl is not None and not self.lr_without_kl > 0:
            raise ValueError(f"lr_without_kl must be > 0 or null, got {self.lr_without_kl}")
        at_least_one = {"iterations": self.iterations, "checkpoint_every": self.checkpoint_every,
                        "keep_checkpoints": self.keep_checkpoints, "batch_size": self.batch_size,
                        "batches_per_iteration": self.batches_per_iteration, "context_len": self.context_len}  # fmt: skip
        for name, value in at_least_one.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        non_negative = {"weight_decay": self.weight_decay, "max_staleness": self.max_staleness,
                        "sleep_cycles": self.sleep_cycles, "sleep_value_coef": self.sleep_value_coef,
                        "sleep_aux_value_coef": self.sleep_aux_value_coef, "sleep_kl_coef": self.sleep_kl_coef,
                        "rho": self.rho, "wake_value_coef": self.wake_value_coef, "entropy_coef": self.entropy_coef}  # fmt: skip
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gamma must be in (0, 1] and gae_lambda in [0, 1], got {self.gamma}, {self.gae_lambda}")
        if not 0 < self.rho_decay <= 1:
            raise ValueError(f"rho_decay must be in (0, 1], got {self.rho_decay}")
        if not 0 < self.value_norm_beta < 1:
            raise ValueError(f"value_norm_beta must be in (0, 1), got {self.value_norm_beta}")
        if not 0 < self.stale_row_weight <= 1:
            raise ValueError(f"stale_row_weight must be in (0, 1], got {self.stale_row_weight}")
        if self.sleep_cycles > 0 and (
            self.sleep_max_sample_reuse < self.sleep_cycles or self.sleep_max_sample_reuse % self.sleep_cycles
        ):
            raise ValueError(
                f"sleep_max_sample_reuse ({self.sleep_max_sample_reuse}) must be a positive multiple of sleep_cycles "
                f"({self.sleep_cycles}): the sleep buffer holds reuse / cycles iterations"
            )
        learners = max(1, self.scale.num_learners)
        if self.batch_size % learners:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by scale.num_learners ({learners}): "
                             "every learner trains on equal minibatches")  # fmt: skip

    # ------------------------------------------------------------------------------------------ derived values
    @property
    def sleep_buffer_iterations(self) -> int:
        """Iterations of rows the sleep phase trains on: each row gets ``sleep_max_sample_reuse`` sleep passes."""
        return self.sleep_max_sample_reuse // self.sleep_cycles if self.sleep_cycles else 0

    @property
    def rows_per_iteration(self) -> int:
        return self.batch_size * self.batches_per_iteration

    @property
    def steps_per_iteration(self) -> int:
        return self.rows_per_iteration * self.context_len

    def learning_rate(self, kl: bool) -> float:
        return self.lr if kl or self.lr_without_kl is None else self.lr_without_kl


def check_policy_fits_env(model, env, where: str, field_name: str) -> None:
    """A policy (``ModelConfig``) must play the env's action space at the env's frame size."""
    want = ACTION_SPACE_OF_ENV[env.kind]
    if model.kind != "policy":
        raise ConfigError(f"{where}: field '{field_name}': a model of kind {model.kind!r}, not a policy")
    if model.action_space != want:
        raise ConfigError(f"{where}: field '{field_name}': the policy acts in the {model.action_space!r} action "
                          f"space, a {env.kind} env needs {want!r}")  # fmt: skip
    if tuple(model.net.img_shape[:2]) != tuple(env.frame_size):
        raise ConfigError(f"{where}: field '{field_name}': the policy sees {list(model.net.img_shape[:2])} frames, "
                          f"env.frame_size is {list(env.frame_size)}")  # fmt: skip


def check_rl_section(rl: RLSpec, env, where: str) -> None:
    """Cross-field checks of a task's ``rl:`` section against its env (the scratch policy preset must fit)."""
    if rl.policy is None:
        return
    from vpt_ray.models.config import load_preset

    try:
        model = load_preset(rl.policy)
    except ConfigError as e:
        raise ConfigError(f"{where}: field 'rl.policy': {e}") from None
    check_policy_fits_env(model, env, where, "rl.policy")


__all__ = ["ACTION_SPACE_OF_ENV", "RLSpec", "ScaleSpec", "ServeSpec", "check_policy_fits_env", "check_rl_section"]
