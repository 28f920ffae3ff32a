"""PPG on RLlib's new API stack: ``PPGConfig`` (builder style, like ``PPOConfig``) and ``PPG.training_step``.

One iteration (docs/rl-design.md §2.3):

1. (elastic env runners: the hook at the top, :meth:`PPG._rescale_env_runners`);
2. collect ``batch_size * batches_per_iteration`` rows from the env runners asynchronously (they keep sampling
   while the learners train); rows more than ``max_staleness`` policy versions old are dropped (or down-weighted);
   a runner that died is restored while we wait, so its iteration is not lost;
3. wake phase on the learners (equal shards), then ``sleep_cycles`` sleep passes over each learner's buffer;
4. ``rho *= rho_decay``, new weights to the env runners.

``PPGConfig.from_spec(task, init=..., kl=...)`` builds the whole config from the task's ``rl:`` section
(:class:`vpt_ray.rl.config.RLSpec`), the one source of truth for every hyperparameter.

Results: ``algo.train()`` returns RLlib's result dict; :func:`iteration_scalars` turns it into the flat
TensorBoard tags of :mod:`vpt_ray.rl.metrics` (episode return/length, per-item fractions, losses, KLs, rho,
explained variance, frames/s, env failures, dropped rows, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray
import tree
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.connectors.common import AddStatesFromEpisodesToBatch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.env_runner import NUM_ENV_STEP_FAILURES_LIFETIME
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    WEIGHTS_SEQ_NO,
)

from vpt_ray.config import ConfigError, load_config
from vpt_ray.rl.config import RLSpec, ServeSpec, check_policy_fits_env
from vpt_ray.rl.connectors import VPTMemoryIn, VPTMemoryOut
from vpt_ray.rl.continuing_env import make_rl_env
from vpt_ray.rl.env_runner import VPTEnvRunner
from vpt_ray.rl.learner import LOSS_WEIGHT, PPGTorchLearner, concat_rows
from vpt_ray.rl.module import VPTRLModule, load_pretrained_weights, module_model_config

logger = logging.getLogger(__name__)

SUMMARY = "vpt"  # result key of the driver's per-iteration summary (flat TensorBoard tags)
SLEEP_RESULTS = "sleep"
RESTORE_EVERY_S = 2.0  # while collecting, look for restarted env runners at most this often
POLL_S = 0.5  # how long one fetch of ready rows waits
PROBE_DEAD_S = 0.5  # how long to wait for a failed runner's ping when telling dead runners from restarting ones


RL_ENV_NAME = "vpt_ray_rl"  # registered with Tune: ContinuingEnv(PolicyActionEnv(task env)); env_config {"task"}


def register_rl_env() -> str:
    from ray.tune.registry import register_env

    register_env(RL_ENV_NAME, make_rl_env)
    return RL_ENV_NAME


def _sample_rows(env_runner):
    return env_runner.sample_rows()


class PPGConfig(AlgorithmConfig):
    """Builder-style config of :class:`PPG`; defaults are :class:`RLSpec`'s (VPT Table 6)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or PPG)
        self._apply_rl_spec(RLSpec())
        self.env = register_rl_env()
        self.pretrained_checkpoint: str | None = None  # initial weights (a BC checkpoint); None: random init
        self.pretrained_app_name: str | None = None  # Serve app of the frozen policy: set = the KL term is on
        self.pretrained_serve = ServeSpec()
        self.pretrained_timeout_s = self.pretrained_serve.request_timeout_s
        self.max_env_runners: int | None = None  # elastic upper bound (None: num_env_runners)
        # RLlib settings the design relies on (docs/rl-design.md §4, §8)
        self.env_runner_cls = VPTEnvRunner
        self.batch_mode = "truncate_episodes"
        self.merge_env_runner_states = False  # stateless connectors: nothing to merge, and syncing would block
        self.broadcast_env_runner_states = False  # behind in-flight samples every iteration
        self.env_runner_health_probe_timeout_s = 2.0  # probing a restarting runner stalls the loop this long
        self.restart_failed_env_runners = True
        self.restart_failed_sub_environments = True  # an env that still raises after the robust wrapper is rebuilt
        self.grad_clip_by = "global_norm"

    def _apply_rl_spec(self, rl: RLSpec, *, kl: bool = True) -> None:
        self.lr = rl.learning_rate(kl)
        self.weight_decay = rl.weight_decay
        self.rows_per_minibatch = rl.batch_size
        self.minibatches_per_iteration = rl.batches_per_iteration
        self.gamma = rl.gamma
        self.lambda_ = rl.gae_lambda
        self.clip_param = rl.ppo_clip
        self.grad_clip = rl.max_grad_norm
        self.max_staleness = rl.max_staleness
        self.staleness_mode = rl.staleness_mode
        self.stale_row_weight = rl.stale_row_weight
        self.sleep_cycles = rl.sleep_cycles
        self.sleep_max_sample_reuse = rl.sleep_max_sample_reuse
        self.sleep_vf_coeff = rl.sleep_value_coef
        self.sleep_aux_vf_coeff = rl.sleep_aux_value_coef
        self.sleep_kl_coeff = rl.sleep_kl_coef
        self.rho = rl.rho
        self.rho_decay = rl.rho_decay
        self.wake_value_coeff = rl.wake_value_coef
        self.entropy_coeff = rl.entropy_coef
        self.sample_timeout_s = rl.sample_timeout_s

    # --------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_spec(cls, task, *, init: str | Path | None = None, kl: bool = True, run_id: str = "run",
                  num_env_runners: int | None = None) -> PPGConfig:  # fmt: skip
        """The config of task spec ``task`` (a ``TaskSpec`` with an ``rl:`` section).

        ``init``: a BC checkpoint (``vpt_ray.models.save_checkpoint`` dir) for the initial weights and, with
        ``kl``, the frozen KL target served on Ray Serve as app ``vpt-pretrained-<run_id>``. No ``init``: the
        scratch baseline from ``rl.policy`` (random init, entropy bonus, no KL). ``num_env_runners``: how many to
        start with (default: the spec's maximum).
        """
        from vpt_ray.models import ModelConfig, load_preset
        from vpt_ray.models.checkpoint import MODEL_FILE
        from vpt_ray.spec import task_to_dict

        rl = task.rl
        if rl is None:
            raise ConfigError(f"task {task.name!r} has no 'rl:' section (PPG hyperparameters and scale)")
        if init is not None:
            init = str(Path(init).resolve())
            model = load_config(ModelConfig, Path(init) / MODEL_FILE)
            check_policy_fits_env(model, task.env, init, "model")
        elif rl.policy is None:
            raise ConfigError(f"task {task.name!r}: field 'rl.policy' is empty: a run from scratch needs a policy "
                              "preset (or start from a BC checkpoint with --init)")  # fmt: skip
        else:
            model = load_preset(rl.policy)
        use_kl = init is not None and kl
        scale = rl.scale
        runners = scale.env_runners if num_env_runners is None else num_env_runners
        config = (
            cls()
            .environment(env=RL_ENV_NAME, env_config={"task": task_to_dict(task)})
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=scale.envs_per_env_runner,
                         num_cpus_per_env_runner=scale.cpus_per_env_runner, rollout_fragment_length=rl.context_len,
                         custom_resources_per_env_runner=dict(scale.env_runner_resources),
                         create_local_env_runner=runners == 0)  # fmt: skip
            .learners(num_learners=scale.num_learners, num_cpus_per_learner=scale.cpus_per_learner,
                      num_gpus_per_learner=scale.gpus_per_learner,
                      custom_resources_per_learner=dict(scale.learner_resources))  # fmt: skip
            .rl_module(rl_module_spec=RLModuleSpec(
                module_class=VPTRLModule,
                model_config={**module_model_config(model, value_norm_beta=rl.value_norm_beta, seed=rl.seed),
                              "max_seq_len": rl.context_len},
            ))  # fmt: skip
            .debugging(seed=rl.seed)
        )
        config._apply_rl_spec(rl, kl=use_kl)
        config.max_env_runners = scale.env_runners
        return config.pretrained(checkpoint=init, app_name=f"vpt-pretrained-{run_id}" if use_kl else None,
                                 serve=scale.serve)  # fmt: skip

    def training(self, *, rows_per_minibatch=NotProvided, minibatches_per_iteration=NotProvided,
                 clip_param=NotProvided, weight_decay=NotProvided, max_staleness=NotProvided,
                 staleness_mode=NotProvided, stale_row_weight=NotProvided, sleep_cycles=NotProvided,
                 sleep_max_sample_reuse=NotProvided, sleep_vf_coeff=NotProvided, sleep_aux_vf_coeff=NotProvided,
                 sleep_kl_coeff=NotProvided, rho=NotProvided, rho_decay=NotProvided, wake_value_coeff=NotProvided,
                 entropy_coeff=NotProvided, **kwargs) -> PPGConfig:  # fmt: skip
        """RLlib's ``training()`` plus PPG's hyperparameters (names as the attributes; see ``_apply_rl_spec``). The
        value normaliser's EWMA beta belongs to the module: ``rl_module(model_config=...)``."""
        super().training(**kwargs)
        given = dict(rows_per_minibatch=rows_per_minibatch, minibatches_per_iteration=minibatches_per_iteration,
                     clip_param=clip_param, weight_decay=weight_decay, max_staleness=max_staleness,
                     staleness_mode=staleness_mode, stale_row_weight=stale_row_weight, sleep_cycles=sleep_cycles,
                     sleep_max_sample_reuse=sleep_max_sample_reuse, sleep_vf_coeff=sleep_vf_coeff,
                     sleep_aux_vf_coeff=sleep_aux_vf_coeff, sleep_kl_coeff=sleep_kl_coeff, rho=rho, rho_decay=rho_decay,
                     wake_value_coeff=wake_value_coeff, entropy_coeff=entropy_coeff)  # fmt: skip
        for name, value in given.items():
            if value is not NotProvided:
                setattr(self, name, value)
        return self

    def pretrained(self, *, checkpoint=NotProvided, app_name=NotProvided, serve: ServeSpec | Any = NotProvided,
                   timeout_s=NotProvided) -> PPGConfig:  # fmt: skip
        """The BC checkpoint (initial weights) and the Serve app of the frozen policy (``app_name``: KL on)."""
        if checkpoint is not NotProvided:
            self.pretrained_checkpoint = None if checkpoint is None else str(checkpoint)
        if app_name is not NotProvided:
            self.pretrained_app_name = app_name
        if serve is not NotProvided:
            self.pretrained_serve = serve
            self.pretrained_timeout_s = serve.request_timeout_s
        if timeout_s is not NotProvided:
            self.pretrained_timeout_s = timeout_s
        return self

    # ------------------------------------------------------------------------------------------ derived values
    @property
    def use_kl(self) -> bool:
        return self.pretrained_app_name is not None

    @property
    def rows_per_iteration(self) -> int:
        return self.rows_per_minibatch * self.minibatches_per_iteration

    @property
    def rows_per_learner_minibatch(self) -> int:
        return self.rows_per_minibatch // max(1, self.num_learners)

    @property
    def sleep_buffer_iterations(self) -> int:
        return self.sleep_max_sample_reuse // self.sleep_cycles if self.sleep_cycles else 0

    # ------------------------------------------------------------------------------------------- RLlib hooks
    def get_default_learner_class(self):
        return PPGTorchLearner

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=VPTRLModule)

    def build_env_to_module_connector(self, env=None, spaces=None, device=None):
        pipeline = super().build_env_to_module_connector(env=env, spaces=spaces, device=device)
        # Inserted, not prepended: AddTimeDimToBatchAndZeroPad (before it) must still add the time rank.
        pipeline.insert_before(AddStatesFromEpisodesToBatch, VPTMemoryIn())
        return pipeline

    def build_module_to_env_connector(self, env=None, spaces=None):
        pipeline = super().build_module_to_env_connector(env=env, spaces=spaces)
        pipeline.insert_before("NormalizeAndClipActions", VPTMemoryOut())
        return pipeline

    def validate(self) -> None:
        super().validate()
        if self.in_evaluation:  # RLlib derives an evaluation config (complete episodes); PPG never evaluates
            return
        if self.batch_mode != "truncate_episodes":
            self._value_error("PPG samples rows of exactly rollout_fragment_length steps: batch_mode must be "
                              "'truncate_episodes'")  # fmt: skip
        if self.rows_per_minibatch % max(1, self.num_learners):
            self._value_error(f"rows_per_minibatch ({self.rows_per_minibatch}) must be divisible by num_learners "
                              f"({self.num_learners})")  # fmt: skip
        if self.sleep_cycles and self.sleep_max_sample_reuse % self.sleep_cycles:
            self._value_error(f"sleep_max_sample_reuse ({self.sleep_max_sample_reuse}) must be a multiple of "
                              f"sleep_cycles ({self.sleep_cycles})")  # fmt: skip
        if self.staleness_mode not in ("drop", "downweight"):
            self._value_error(f"staleness_mode must be 'drop' or 'downweight', got {self.staleness_mode!r}")


class PPG(Algorithm):
    """Phasic Policy Gradient with a KL penalty to a frozen pretrained policy; see the module docstring."""

    @classmethod
    def get_default_config(cls) -> PPGConfig:
        return PPGConfig()

    def setup(self, config: PPGConfig) -> None:
        super().setup(config)
        self._rho = float(config.rho)
        self._version = 0  # policy versions trained = the learners' weights_seq_no
        self._lifetime: dict[str, float] = {"episodes": 0, "env_failures": 0, "env_steps": 0, "dropped_stale_rows": 0,
                                            "downweighted_rows": 0, "restored_env_runners": 0, "replaced_env_runners": 0}  # fmt: skip
        self._item_counts_lifetime: dict[str, int] = {}
        self._leftover: list[dict[str, Any]] = []  # fresh rows beyond an iteration's need: the next one's first
        self._last_restore = 0.0
        self.desired_env_runners: int | None = None  # set by the job from the ledger (`vpt-ray scale`)
        self._pretrained_app = None
        if config.pretrained_checkpoint is not None:
            self._load_pretrained_weights(config.pretrained_checkpoint)
        # Remote runners build their own random module; every run starts them on the learners' weights.
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        if config.use_kl:
            self._pretrained_app = self._start_pretrained_app()

    def _start_pretrained_app(self):
        """The frozen BC policy on Serve; an app of this run's name left by a crashed earlier job is replaced."""
        from ray import serve

        from vpt_ray.rl.serving import PretrainedApp

        cfg: PPGConfig = self.config
        if cfg.pretrained_app_name in serve.status().applications:
            logger.warning("deleting Serve app %s left by an earlier job of this run", cfg.pretrained_app_name)
            PretrainedApp(cfg.pretrained_app_name).stop()
        s = cfg.pretrained_serve
        return PretrainedApp.start(cfg.pretrained_checkpoint, name=cfg.pretrained_app_name, num_replicas=s.replicas,
                                   num_cpus=s.cpus_per_replica, num_gpus=s.gpus_per_replica,
                                   max_batch_size=s.max_batch_size, batch_wait_timeout_s=s.batch_wait_timeout_s)  # fmt: skip

    def _load_pretrained_weights(self, checkpoint: str) -> None:
        """BC weights into every learner (the driver reads the file once; learners may be on other nodes)."""
        from vpt_ray.models.checkpoint import WEIGHTS_FILE, read_weights

        where = str(Path(checkpoint) / WEIGHTS_FILE)
        refs = [ray.put(read_weights(where))]  # in a list: Ray would resolve a bare ref only for remote learners

        def load(learner, refs):
            load_pretrained_weights(learner.module[DEFAULT_MODULE_ID].unwrapped().policy, ray.get(refs[0]), where)

        for result in self.learner_group.foreach_learner(load, refs=refs).result_or_errors:
            result.get()

    def cleanup(self) -> None:
        if self._pretrained_app is not None:
            self._pretrained_app.stop()
            self._pretrained_app = None
        from vpt_ray.rl.elastic import stop_waiting_env_runners

        stop_waiting_env_runners(self)  # RLlib's stop would wait forever on a runner that has no node
        super().cleanup()
        # Tune's Trainable makes an empty ~/ray_results/<time> dir for every algorithm; PPG's results go to the
        # job's run directory instead.
        with contextlib.suppress(OSError):
            os.rmdir(self.logdir)

    # --------------------------------------------------------------------------------------------- iteration
    def training_step(self) -> None:
        self._rescale_env_runners()
        cfg: PPGConfig = self.config
        t0 = time.perf_counter()
        rows, collected = self._collect_rows()
        t1 = time.perf_counter()

        num_learners = max(1, cfg.num_learners)
        shards = [tree.map_structure(lambda x, i=i: x[i::num_learners], rows) for i in range(num_learners)]
        refs = [ray.put(MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(s)}, env_steps=s[LOSS_WEIGHT].size))
                for s in shards]  # fmt: skip
        steps_sampled = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        wake = self.learner_group.update(batch_refs=refs, rho=self._rho,
                                         timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: steps_sampled})  # fmt: skip
        self.metrics.aggregate(wake, key=LEARNER_RESULTS)
        t2 = time.perf_counter()
        if cfg.sleep_cycles > 0:
            sleep = self.learner_group.foreach_learner(lambda learner, n: learner.sleep(n), n=cfg.sleep_cycles)
            self.metrics.aggregate([r.get() for r in sleep.result_or_errors], key=SLEEP_RESULTS)
        t3 = time.perf_counter()

        self._version += 1
        self._rho *= cfg.rho_decay
        self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

        trained_steps = rows[LOSS_WEIGHT].size
        self._log_summary({
            **collected,
            "ppg/rho": self._rho,  # the coefficient the next iteration trains with
            "ppg/rho_trained": self._rho / cfg.rho_decay,
            "ppg/policy_version": self._version,
            "value/explained_variance": explained_variance(rows),
            "perf/collect_s": t1 - t0,
            "perf/wake_s": t2 - t1,
            "perf/sleep_s": t3 - t2,
            "perf/frames_trained_per_s": trained_steps / max(t2 - t1, 1e-9),
            "perf/frames_sampled_per_s": collected["env/steps"] / max(t3 - t0, 1e-9),
        })  # fmt: skip

    def _rescale_env_runners(self) -> None:
        """Elastic env runners, called once at the top of every iteration (vpt_ray.rl.elastic grows or shrinks the
        group towards ``self.desired_env_runners``); reports the group's size."""
        from vpt_ray.rl.elastic import rescale_env_runners

        self._log_summary(rescale_env_runners(self, self.desired_env_runners))

    def _restore_env_runners_while_collecting(self) -> None:
        """RLlib probes failed runners only between iterations; a job waiting on rows probes while it waits.

        A runner that Ray restarts (its process died) is given the current weights when it answers again. A
        runner Ray will never bring back (``ray.kill``, restarts used up) is replaced by a new one.
        """
        if time.monotonic() - self._last_restore < RESTORE_EVERY_S:
            return
        self._last_restore = time.monotonic()
        restored = self.restore_env_runners(self.env_runner_group)
        if restored:
            self._lifetime["restored_env_runners"] += len(restored)
            logger.warning("env runners %s restored and given the current weights", restored)
        self._replace_dead_env_runners()

    def _replace_dead_env_runners(self) -> None:
        group = self.env_runner_group
        manager = group._worker_manager  # RLlib 2.60 has no public way to drop one runner (docs/rl-design.md §8)
        unhealthy = [i for i in manager.actor_ids() if not manager.is_actor_healthy(i)]
        if not unhealthy:
            return
        # A restarting runner's ping waits for the restart; only a dead one fails at once with ActorDiedError.
        pings = manager.foreach_actor(lambda runner: runner.ping(), remote_actor_ids=unhealthy, healthy_only=False,
                                      timeout_seconds=PROBE_DEAD_S)  # fmt: skip
        dead = [r.actor_id for r in pings if not r.ok and isinstance(r.get(), ray.exceptions.ActorDiedError)]
        if not dead:
            return
        for actor_id in dead:
            manager.remove_actor(actor_id)
        from vpt_ray.rl.elastic import add_env_runners

        add_env_runners(self, len(dead))  # unused worker indices (add_workers reuses a live one's: same seeds)
        self._lifetime["replaced_env_runners"] += len(dead)
        logger.warning("env runners %s are dead for good; started %d new ones", dead, len(dead))

    def _collect_rows(self) -> tuple[dict[str, Any], dict[str, float]]:
        """Rows for one iteration (exactly ``rows_per_iteration``) and the iteration's sampling summary."""
        cfg: PPGConfig = self.config
        needed = cfg.rows_per_iteration
        kept: list[dict[str, Any]] = []
        episodes: list[dict] = []
        counts = {"env_failures": 0, "steps": 0, "dropped": 0, "downweighted": 0}
        staleness: list[np.ndarray] = []

        def admit(rows: dict[str, Any]) -> None:
            stale_e = self._version - rows[WEIGHTS_SEQ_NO].min(axis=1)
            over_e = stale_e - cfg.max_staleness
            if cfg.staleness_mode == "drop":
                keep_e = over_e <= 0
                counts["dropped"] += int((~keep_e).sum())
                rows = tree.map_structure(lambda x: x[keep_e], rows)
                stale_e, over_e = stale_e[keep_e], over_e[keep_e]
            row_weight_e = cfg.stale_row_weight ** np.maximum(over_e, 0)
            counts["downweighted"] += int((over_e > 0).sum())
            rows[LOSS_WEIGHT] = (~rows["reset_step"]).astype(np.float32) * row_weight_e[:, None].astype(np.float32)
            staleness.append(stale_e)
            if len(rows[LOSS_WEIGHT]):
                kept.append(rows)

        for rows in self._leftover:
            rows.pop(LOSS_WEIGHT)
            admit(rows)
        self._leftover = []
        env_runner_metrics = []
        sampled_by: set[int] = set()  # runners whose rows arrived this iteration (a new one shows it samples)
        last_rows = time.monotonic()
        while sum(len(r[LOSS_WEIGHT]) for r in kept) < needed:
            if self.env_runner_group.num_remote_env_runners() > 0:
                self._restore_env_runners_while_collecting()
                results = self.env_runner_group.foreach_env_runner_async_fetch_ready(
                    func=_sample_rows, tag="rows", timeout_seconds=POLL_S, return_actor_ids=True)
            else:
                results = [(0, self.env_runner.sample_rows())]
            for runner_id, (rows, stats, metrics) in results:
                last_rows = time.monotonic()
                sampled_by.add(runner_id)
                env_runner_metrics.append(metrics)
                episodes.extend(stats["episodes"])
                counts["env_failures"] += stats["env_failures"]
                counts["steps"] += stats["steps"]
                admit(rows)
            if time.monotonic() - last_rows > cfg.sample_timeout_s:
                raise RuntimeError(
                    f"no env runner returned rows for {cfg.sample_timeout_s:.0f} s (healthy runners: "
                    f"{self.env_runner_group.num_healthy_remote_workers()} of "
                    f"{self.env_runner_group.num_remote_workers()}); see the runners' logs"
                )
        if env_runner_metrics:
            self.metrics.aggregate(env_runner_metrics, key=ENV_RUNNER_RESULTS)

        rows = concat_rows(kept)
        self._leftover = [tree.map_structure(lambda x: x[needed:], rows)] if len(rows[LOSS_WEIGHT]) > needed else []
        rows = tree.map_structure(lambda x: x[:needed], rows)
        stale_all = np.concatenate(staleness)[:needed]
        counts["runners"] = len(sampled_by)
        return rows, self._sampling_summary(episodes, counts, stale_all)

    def _sampling_summary(self, episodes: list[dict], counts: dict[str, int], staleness: np.ndarray) -> dict[str, float]:
        life = self._lifetime
        life["episodes"] += len(episodes)
        life["env_failures"] += counts["env_failures"]
        life["env_steps"] += counts["steps"]
        life["dropped_stale_rows"] += counts["dropped"]
        life["downweighted_rows"] += counts["downweighted"]
        summary = {
            "episode/count": len(episodes),
            "episode/count_lifetime": life["episodes"],
            "env/steps": counts["steps"],
            "env/steps_lifetime": life["env_steps"],
            "env/failures": counts["env_failures"],
            "env/failures_lifetime": life["env_failures"],
            "env_runners/restored_lifetime": life["restored_env_runners"],
            "env_runners/replaced_lifetime": life["replaced_env_runners"],
            "env_runners/sampled": counts["runners"],
            "ppg/dropped_stale_rows": counts["dropped"],
            "ppg/dropped_stale_rows_lifetime": life["dropped_stale_rows"],
            "ppg/downweighted_rows": counts["downweighted"],
            "ppg/staleness_mean": float(staleness.mean()),
            "ppg/staleness_max": float(staleness.max()),
        }
        if episodes:
            summary["episode/return_mean"] = float(np.mean([e["return"] for e in episodes]))
            summary["episode/length_mean"] = float(np.mean([e["length"] for e in episodes]))
            for item in episodes[0]["items"]:
                got = sum(e["items"][item] for e in episodes)
                summary[f"items/{item}"] = got / len(episodes)
                self._item_counts_lifetime[item] = self._item_counts_lifetime.get(item, 0) + got
        for item, got in self._item_counts_lifetime.items():
            summary[f"items_lifetime/{item}"] = got / max(1, life["episodes"])
        return summary

    def _log_summary(self, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.metrics.log_value((SUMMARY, tag), float(value), reduce="item")

    # ------------------------------------------------------------------------------------------ checkpoints
    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        state["ppg"] = {"rho": self._rho, "version": self._version, "lifetime": dict(self._lifetime),
                        "item_counts_lifetime": dict(self._item_counts_lifetime)}  # fmt: skip
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        if "ppg" in state:
            ppg = state["ppg"]
            self._rho = float(ppg["rho"])
            self._version = int(ppg["version"])
            self._lifetime.update(ppg["lifetime"])
            self._item_counts_lifetime = dict(ppg["item_counts_lifetime"])

    @property
    def rho(self) -> float:
        """The KL coefficient the next iteration trains with."""
        return self._rho

    @property
    def policy_version(self) -> int:
        return self._version


def explained_variance(rows: Mapping[str, Any]) -> float:
    """1 - Var(target - prediction) / Var(target) of the behaviour values over the rows' valid steps."""
    valid = rows[LOSS_WEIGHT] > 0
    target = rows[Columns.VALUE_TARGETS][valid]
    var = float(np.var(target))
    if target.size == 0 or var == 0:
        return float("nan")
    return 1.0 - float(np.var(target - rows[Columns.VF_PREDS][valid])) / var


def iteration_scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat TensorBoard tags of one ``train()`` result: the driver's summary, wake (learner) and sleep metrics."""
    # A tag logged in an earlier iteration but not in this one (no episode ended) reduces to None: no point.
    scalars = {tag: float(v) for tag, v in result.get(SUMMARY, {}).items() if v is not None}
    for key, phase in ((LEARNER_RESULTS, "wake"), (SLEEP_RESULTS, "sleep")):
        results = result.get(key, {})
        scalars.update({tag: float(v) for tag, v in results.get(phase, {}).items()})
        grad_norm = results.get(DEFAULT_MODULE_ID, {}).get("gradients_default_optimizer_global_norm")
        if grad_norm is not None:
            scalars[f"grad_norm/{phase}"] = float(grad_norm)
    # sub-envs RLlib rebuilt because a step still raised after the robust wrapper (restart_failed_sub_environments)
    step_failures = result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEP_FAILURES_LIFETIME)
    if step_failures is not None:
        scalars["env/runner_env_rebuilds_lifetime"] = float(step_failures)
    scalars["ppg/iteration"] = float(result.get("training_iteration", 0))
    return scalars


__all__ = ["PPG", "PPGConfig", "RL_ENV_NAME", "register_rl_env", "explained_variance", "iteration_scalars"]
