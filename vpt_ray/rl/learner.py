"""PPGTorchLearner: Phasic Policy Gradient's wake and sleep phases (method doc §6, docs/rl-design.md §2.4).

- **Wake** (:meth:`PPGTorchLearner.update`, once per iteration): one pass over the iteration's rows in minibatches
  (each sample used once): PPO's clipped policy loss + value loss + ``rho * KL(pi_pretrained || pi_theta)``, the
  KL to the frozen BC policy *replacing* the entropy bonus; without a pretrained policy (the scratch baseline,
  ``--no-kl``) an entropy bonus instead. The rows then join the sleep buffer.
- **Sleep** (:meth:`PPGTorchLearner.sleep`): ``sleep_cycles`` shuffled passes over the buffer (the last
  ``sleep_max_sample_reuse / sleep_cycles`` iterations' rows): value loss + auxiliary value loss + KL to the policy
  of before the sleep phase, which keeps the policy where it was while the trunk learns values.

Value targets are normalised by the policy's EWMA normaliser, updated once per iteration from the iteration's
targets (moments all-reduced across learners, so every rank holds the same normaliser). DDP-safe: the auxiliary
value head takes part in the wake loss with weight 0 (DDP needs every parameter in the graph), and every learner
takes the same number of minibatch steps.

Metrics are logged under the phase's name (``wake`` / ``sleep``) with TensorBoard tags as keys: one learner
MetricsLogger serves both phases, and each phase's results must not carry the other's (emptied) stats.

Every step of a row carries a loss weight: 0 on reset steps (dummy transitions), 1 otherwise, less on stale rows
the ``downweight`` staleness mode keeps. Losses are weighted means over the minibatch's steps.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import tree
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from vpt_ray.rl.env_runner import PRETRAINED_LOGPROBS
from vpt_ray.rl.module import FIRST

LOSS_WEIGHT = "loss_weight"
WAKE, SLEEP = "wake", "sleep"
# What a minibatch needs on the learner's device; the rest of a row (rewards, flags) stays on the host.
TRAIN_COLUMNS = (Columns.OBS, FIRST, Columns.STATE_IN, Columns.ACTIONS, Columns.ACTION_LOGP, Columns.ADVANTAGES,
                 Columns.VALUE_TARGETS, LOSS_WEIGHT, PRETRAINED_LOGPROBS)  # fmt: skip
PHASE_MEAN = 1_000_000  # metrics window: more than any phase's minibatches (the mean over all of them)


def weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x * weight).sum() / weight.sum().clamp(min=1e-8)


def normalize_advantages(adv: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the minibatch's valid steps (weight > 0)."""
    valid = (weight > 0).float()
    mean = weighted_mean(adv, valid)
    std = weighted_mean((adv - mean) ** 2, valid).sqrt()
    return (adv - mean) / (std + 1e-8)


def concat_rows(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return tree.map_structure(lambda *xs: np.concatenate(xs), *parts)


class PPGTorchLearner(TorchLearner):
    """See the module docstring. Config attributes read (:class:`vpt_ray.rl.algorithm.PPGConfig`): ``clip_param``,
    ``wake_value_coeff``, ``entropy_coeff``, ``use_kl``, ``sleep_*``, ``weight_decay``, ``rows_per_minibatch``."""

    def build(self) -> None:
        super().build()
        cfg = self.config
        self._phase = WAKE
        self._rho = 0.0
        self._sleep_buffer: deque[dict[str, Any]] = deque(maxlen=max(1, cfg.sleep_buffer_iterations))
        self._pre_sleep = None  # frozen copy of the policy at sleep start (not a module: outside DDP)
        self._rng = np.random.default_rng(cfg.seed)

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        params = self.get_parameters(self._module[module_id])
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=config.lr)

    @property
    def policy(self):
        return self.module[DEFAULT_MODULE_ID].unwrapped().policy

    # ------------------------------------------------------------------------------------------------- phases
    def update(self, training_data=None, *, timesteps: dict | None = None, rho: float = 0.0, **kwargs):
        """The wake phase on this learner's shard of the iteration's rows (one policy version)."""
        self._check_is_built()
        rows = self._rows_of(training_data)
        self.before_gradient_based_update(timesteps=timesteps or {})
        self._weights_seq_no += 1
        self._update_value_normalizer(rows)
        self._phase, self._rho = WAKE, float(rho)
        self._minibatch_loop(rows, passes=1)
        if self.config.sleep_cycles > 0:
            self._sleep_buffer.append(rows)
        self.after_gradient_based_update(timesteps=timesteps or {})
        mean, var = self.policy.value_normalizer.mean_var()
        self.metrics.log_dict({"value/normalizer_mean": float(mean), "value/normalizer_std": float(var.sqrt()),
                               "ppg/optimizer_steps": self._optimizer_steps(), "ppg/rho_learner": self._rho},
                              key=WAKE, window=1)  # fmt: skip
        return self.metrics.reduce()

    def sleep(self, num_cycles: int):
        """The sleep phase: ``num_cycles`` shuffled passes over the sleep buffer."""
        policy = self.policy
        if self._pre_sleep is None:
            self._pre_sleep = copy.deepcopy(policy).requires_grad_(False).eval()
        self._pre_sleep.load_state_dict(policy.state_dict())
        rows = concat_rows(list(self._sleep_buffer))
        self._phase = SLEEP
        self._minibatch_loop(rows, passes=num_cycles)
        self.metrics.log_dict({"ppg/sleep_buffer_rows": len(rows[Columns.OBS]),
                               "ppg/sleep_buffer_iterations": len(self._sleep_buffer)}, key=SLEEP, window=1)  # fmt: skip
        return self.metrics.reduce()

    @property
    def sleep_buffer_rows(self) -> list[int]:
        """Rows per buffered iteration, oldest first."""
        return [len(r[Columns.OBS]) for r in self._sleep_buffer]

    # -------------------------------------------------------------------------------------------- machinery
    @staticmethod
    def _rows_of(training_data) -> dict[str, Any]:
        training_data.solve_refs()
        batches = [training_data.batch] if training_data.batch is not None else training_data.batches
        return concat_rows([{k: b.policy_batches[DEFAULT_MODULE_ID][k] for k in TRAIN_COLUMNS
                             if k in b.policy_batches[DEFAULT_MODULE_ID]} for b in batches])  # fmt: skip

    def _all_reduce(self, values: list[float], op) -> torch.Tensor:
        x = torch.tensor(values, dtype=torch.float64, device=self._device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(x, op=op)
        return x.cpu()

    def _update_value_normalizer(self, rows: dict[str, Any]) -> None:
        """One EWMA step from the iteration's value targets (valid steps of all learners' shards)."""
        valid = rows[LOSS_WEIGHT] > 0
        targets = rows[Columns.VALUE_TARGETS][valid].astype(np.float64)
        total, total_sq, count = self._all_reduce([targets.sum(), (targets**2).sum(), targets.size], dist.ReduceOp.SUM)
        if count == 0:
            return
        mean, mean_sq = float(total / count), float(total_sq / count)
        std = math.sqrt(max(mean_sq - mean**2, 0.0))
        # update() takes a sample's first two moments; this two-point sample has exactly the all-reduced ones.
        self.policy.value_normalizer.update(torch.tensor([mean - std, mean + std], device=self._device))
        self.metrics.log_dict({"value/target_mean": mean, "value/target_std": std}, key=WAKE, window=1)

    def _minibatch_loop(self, rows: dict[str, Any], passes: int) -> None:
        n = len(rows[Columns.OBS])
        size = self.config.rows_per_learner_minibatch
        # DDP: every rank must take the same number of steps (shards are equal; a lost one must not hang the rest).
        steps = int(self._all_reduce([n // size], dist.ReduceOp.MIN)[0])
        for _ in range(passes):
            order = self._rng.permutation(n)
            for i in range(steps):
                idx = order[i * size:(i + 1) * size]
                batch = tree.map_structure(lambda x: torch.as_tensor(x[idx], device=self._device), rows)
                self._update({DEFAULT_MODULE_ID: batch})
                self.metrics.log_value((self._phase, f"ppg/{self._phase}_minibatches"), 1, reduce="sum")

    def _optimizer_steps(self) -> int:
        optimizer = self.get_optimizer(DEFAULT_MODULE_ID)
        states = list(optimizer.state.values())
        return int(states[0]["step"]) if states else 0

    # ------------------------------------------------------------------------------------------------- losses
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out) -> torch.Tensor:
        policy = self.module[module_id].unwrapped().policy
        weight = batch[LOSS_WEIGHT]
        value_target = policy.value_normalizer.normalize(batch[Columns.VALUE_TARGETS])
        value_loss = 0.5 * (fwd_out["vpred"] - value_target) ** 2
        if self._phase == WAKE:
            return self._wake_loss(config, policy, batch, fwd_out, weight, value_loss)
        return self._sleep_loss(config, policy, batch, fwd_out, weight, value_target, value_loss)

    def _wake_loss(self, config, policy, batch, fwd_out, weight, value_loss) -> torch.Tensor:
        logprobs = fwd_out["logprobs"]
        # PPO's clipped surrogate on normalised advantages
        new_logp = policy.log_prob(logprobs, batch[Columns.ACTIONS])
        log_ratio = new_logp - batch[Columns.ACTION_LOGP]
        ratio = log_ratio.exp()
        adv = normalize_advantages(batch[Columns.ADVANTAGES], weight)
        clipped_ratio = ratio.clamp(1.0 - config.clip_param, 1.0 + config.clip_param)
        policy_loss = torch.max(-adv * ratio, -adv * clipped_ratio)
        entropy = policy.entropy(logprobs)
        # KL to the frozen pretrained policy replaces the entropy bonus; the scratch baseline keeps the bonus
        if config.use_kl:
            # stored in fp16: renormalised in fp32, so the KL of identical policies is 0, never slightly negative
            pretrained = {head: torch.log_softmax(lp.float(), dim=-1) for head, lp in batch[PRETRAINED_LOGPROBS].items()}
            kl_pretrained = policy.kl(pretrained, logprobs)  # KL(pi_pretrained || pi_theta)
            regulariser = self._rho * kl_pretrained
        else:
            regulariser = -config.entropy_coeff * entropy
        loss = weighted_mean(policy_loss + config.wake_value_coeff * value_loss + regulariser, weight)
        # DDP: the auxiliary value head (sleep only) must be in every graph; weight 0 leaves the loss as it is
        loss = loss + 0.0 * fwd_out["aux_vpred"].sum()

        with torch.no_grad():
            logged = {
                "loss/wake_policy": weighted_mean(policy_loss, weight),
                "loss/wake_value": weighted_mean(value_loss, weight),
                "loss/wake_total": loss,
                "policy/entropy": weighted_mean(entropy, weight),
                "policy/clip_fraction": weighted_mean(((ratio - 1.0).abs() > config.clip_param).float(), weight),
                "kl/behaviour": weighted_mean((ratio - 1.0) - log_ratio, weight),  # k3 estimate of KL(old || new)
            }
            if config.use_kl:
                logged["kl/pretrained"] = weighted_mean(kl_pretrained, weight)
        self.metrics.log_dict({k: v.detach() for k, v in logged.items()}, key=WAKE, window=PHASE_MEAN)
        return loss

    def _sleep_loss(self, config, policy, batch, fwd_out, weight, value_target, value_loss) -> torch.Tensor:
        logprobs = fwd_out["logprobs"]
        with torch.no_grad():
            before = self._pre_sleep(batch[Columns.OBS], batch[FIRST], batch[Columns.STATE_IN]).logprobs
        kl_before = policy.kl(before, logprobs)  # KL(pi_before_sleep || pi_theta): the policy stays put
        aux_value_loss = 0.5 * (fwd_out["aux_vpred"] - value_target) ** 2
        loss = weighted_mean(
            config.sleep_vf_coeff * value_loss
            + config.sleep_aux_vf_coeff * aux_value_loss
            + config.sleep_kl_coeff * kl_before,
            weight,
        )

        with torch.no_grad():
            logged = {
                "loss/sleep_value": weighted_mean(value_loss, weight),
                "loss/sleep_aux_value": weighted_mean(aux_value_loss, weight),
                "loss/sleep_total": loss,
                "kl/sleep": weighted_mean(kl_before, weight),
            }
        self.metrics.log_dict({k: v.detach() for k, v in logged.items()}, key=SLEEP, window=PHASE_MEAN)
        return loss


__all__ = ["LOSS_WEIGHT", "PPGTorchLearner", "concat_rows", "normalize_advantages", "weighted_mean"]
