"""VPTEnvRunner: RLlib's single-agent env runner, returning complete PPG rows (docs/rl-design.md §1.3, §3).

One :meth:`VPTEnvRunner.sample_rows` call steps every sub-env exactly ``context_len`` (T) times
(:class:`~vpt_ray.rl.continuing_env.ContinuingEnv` never ends an episode for RLlib) and returns one **row** per
sub-env: T consecutive steps crossing episode boundaries (``first`` at any t), with

- ``state_in``: the policy's memory at the row's start (replaying the row from it reproduces the behaviour
  log-probs), and ``action_logp`` / ``vpred`` (denormalised) / ``weights_seq_no`` of the sampling policy;
- ``advantages`` and ``value_targets`` from GAE (:func:`gae`) with the reset steps and one bootstrap value;
- ``pretrained_logprobs`` (with the KL term): the frozen BC policy's full log-probs per step from Ray Serve, the
  frozen model's own memory carried per sub-env between rows.

The episodes that ended during the call come back as their ``info["episode"]`` summaries.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import ray
import torch
import tree
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from vpt_ray.rl.connectors import STATE_AT_CHUNK_START
from vpt_ray.rl.continuing_env import VPT_INFO
from vpt_ray.rl.module import FIRST

FROZEN_STATE = "vpt_frozen_state"  # custom_data key: the frozen BC policy's memory after the last row
PRETRAINED_LOGPROBS = "pretrained_logprobs"
STEP_FLAGS = ("done", "terminated", "reset_step")


def gae(rewards_et: np.ndarray, vpred_et: np.ndarray, bootstrap_e: np.ndarray, done_et: np.ndarray,
        terminated_et: np.ndarray, reset_step_et: np.ndarray, gamma: float, lam: float) -> np.ndarray:  # fmt: skip
    """Generalized advantage estimates of rows (E, T) that cross episode boundaries.

    ``vpred`` are the behaviour values V(o_t); ``bootstrap`` is V(o_T) after the row. A step that ended its episode
    (``done``) bootstraps from the next step's value, which is the reset step's V(final observation) made with the
    old episode's memory, unless it ``terminated`` (no future). Advantages never flow back across an episode end,
    and reset steps (dummy transitions) get 0.
    """
    e, t_len = rewards_et.shape
    next_v_et = np.concatenate([vpred_et[:, 1:], bootstrap_e[:, None]], axis=1)
    delta_et = rewards_et + gamma * next_v_et * (1.0 - terminated_et) - vpred_et
    adv_et = np.zeros((e, t_len), np.float32)
    running_e = np.zeros(e, np.float32)
    for t in reversed(range(t_len)):
        running_e = delta_et[:, t] + gamma * lam * (1.0 - done_et[:, t]) * running_e
        running_e = np.where(reset_step_et[:, t], 0.0, running_e)
        adv_et[:, t] = running_e
    return adv_et


def _stack(items: list) -> Any:
    return tree.map_structure(lambda *xs: np.stack(xs), *items)


def _plain_episode(summary: dict) -> dict:
    """An ``info["episode"]`` summary as plain Python values (the vector env turns them into numpy scalars)."""
    return {
        "return": float(summary["return"]),
        "length": int(summary["length"]),
        "items": {k: bool(v) for k, v in summary["items"].items()},
        "item_steps": {k: None if v is None else int(v) for k, v in summary["item_steps"].items()},
        "env_failures": int(summary["env_failures"]),
    }


class VPTEnvRunner(SingleAgentEnvRunner):
    """See the module docstring. Config attributes read: ``gamma``, ``lambda_``, ``pretrained_app_name``,
    ``pretrained_timeout_s`` (:class:`vpt_ray.rl.algorithm.PPGConfig`)."""

    def __init__(self, *, config, **kwargs):
        self._env_builds = 0
        super().__init__(config=config, **kwargs)
        self._pretrained = None
        if self.env is not None:
            torch.manual_seed(self._seed)  # action sampling, distinct per runner and per restart

    def make_env(self) -> None:
        """Build the sub-envs; every build (a restarted runner, a recreated env) plays new worlds.

        RLlib seeds runner ``i`` with ``seed + i`` and its sub-env ``j`` with ``seed + i + j``: neighbouring runners
        would share worlds, and a restarted runner would replay its own. Seeds here come from
        ``(seed, worker index, build count, fresh entropy if the actor was restarted)``.
        """
        super().make_env()
        self._env_builds += 1
        entropy = []
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            with warnings.catch_warnings():  # Ray 2.60 warns about its own use of a deprecated property here
                warnings.simplefilter("ignore", DeprecationWarning)
                restarted = ray.get_runtime_context().was_current_actor_reconstructed
            if restarted:
                entropy = [int(np.random.SeedSequence().entropy)]
        words = [int(self.config.seed or 0), int(self.worker_index or 0), self._env_builds, *entropy]
        self._seed = int(np.random.SeedSequence(words).generate_state(1)[0] % 2**31)

    # ------------------------------------------------------------------------------------------------ rows
    def sample_rows(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Sample one row per sub-env; returns ``(rows, stats, rllib_metrics)`` (see the module docstring).

        ``stats``: ``episodes`` (finished episodes' summaries), ``env_failures`` (steps on which a simulator was
        recreated), ``steps``, ``sample_s``, ``pretrained_s``.
        """
        try:
            return self._sample_rows()
        except BaseException:
            # The episodes may be cut mid-row or miss their frozen-policy memory: start every sub-env afresh on the
            # next call (RLlib marks this runner unhealthy; the driver's probe brings it back).
            self._needs_initial_reset = True
            raise

    def _sample_rows(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        t_len = self.config.get_rollout_fragment_length()
        t0 = time.perf_counter()
        chunks = self.sample()
        # RLlib keeps every returned chunk of an unfinished episode for its episode metrics; ours never finish.
        self._ongoing_episodes_for_metrics.clear()
        lengths = [len(c) for c in chunks]
        if lengths != [t_len] * self.num_envs:
            raise RuntimeError(f"expected {self.num_envs} chunks of {t_len} steps, got lengths {lengths}")
        bootstrap_e = self.module.compute_values(self._cached_to_module)[:, 0].cpu().numpy()

        infos = [c.get_infos() for c in chunks]  # T + 1 each: infos[t] is about o_t; infos[t + 1] flags step t
        flags = {k: np.array([[i[t + 1][VPT_INFO][k] for t in range(t_len)] for i in infos]) for k in STEP_FLAGS}
        rows = {
            Columns.OBS: np.stack([c.get_observations(slice(0, t_len)) for c in chunks]),
            FIRST: np.array([[i[t][VPT_INFO]["first"] for t in range(t_len)] for i in infos]),
            Columns.ACTIONS: _stack([c.get_actions() for c in chunks]),
            Columns.REWARDS: np.stack([c.get_rewards() for c in chunks]).astype(np.float32),
            Columns.ACTION_LOGP: np.stack([c.get_extra_model_outputs(Columns.ACTION_LOGP) for c in chunks]).astype(np.float32),
            Columns.VF_PREDS: np.stack([c.get_extra_model_outputs(Columns.VF_PREDS) for c in chunks]).astype(np.float32),
            WEIGHTS_SEQ_NO: np.stack([c.get_extra_model_outputs(WEIGHTS_SEQ_NO) for c in chunks]).astype(np.int64),
            Columns.STATE_IN: _stack([c.custom_data[STATE_AT_CHUNK_START] for c in chunks]),
            **flags,
        }  # fmt: skip
        adv = gae(rows[Columns.REWARDS], rows[Columns.VF_PREDS], bootstrap_e, flags["done"], flags["terminated"],
                  flags["reset_step"], self.config.gamma, self.config.lambda_)  # fmt: skip
        rows[Columns.ADVANTAGES] = adv
        rows[Columns.VALUE_TARGETS] = adv + rows[Columns.VF_PREDS]
        t1 = time.perf_counter()
        if self.config.pretrained_app_name is not None:
            rows[PRETRAINED_LOGPROBS] = self._pretrained_logprobs(chunks, rows)
        stats = {
            "episodes": [_plain_episode(info[VPT_INFO]["episode"]) for i in infos for info in i[1:]
                         if "episode" in info[VPT_INFO]],
            "env_failures": int(sum(info["env_failure"] for i in infos for info in i[1:])),
            "steps": self.num_envs * t_len,
            "sample_s": t1 - t0,
            "pretrained_s": time.perf_counter() - t1,
        }  # fmt: skip
        return rows, stats, self.get_metrics()

    def _pretrained_logprobs(self, chunks: list, rows: dict[str, Any]) -> dict[str, np.ndarray]:
        """The frozen BC policy's log-probs {head: float16 (E, T, n)}; its memory carries on per sub-env."""
        if self._pretrained is None:
            from vpt_ray.rl.serving import PretrainedClient

            self._pretrained = PretrainedClient(self.config.pretrained_app_name, timeout_s=self.config.pretrained_timeout_s)
        requests = [
            {"frames": rows[Columns.OBS][i], "first": rows[FIRST][i], "state": c.custom_data.get(FROZEN_STATE)}
            for i, c in enumerate(chunks)
        ]
        replies = self._pretrained.logprobs(requests)
        continuations = {c.id_: c for c in self._ongoing_episodes}
        for chunk, reply in zip(chunks, replies):
            continuations[chunk.id_].custom_data[FROZEN_STATE] = reply["state"]
        # fp16 halves the rows' largest column (Minecraft: 8,762 log-probs per step); the loss computes in fp32.
        return {head: np.stack([r["logprobs"][head] for r in replies]).astype(np.float16) for head in replies[0]["logprobs"]}


__all__ = ["FROZEN_STATE", "PRETRAINED_LOGPROBS", "VPTEnvRunner", "gae"]
