"""PPG losses against a direct computation: wake (PPO clip + value + rho * KL to the pretrained policy, or the
entropy bonus without it) and sleep (value + aux value + KL to the pre-sleep policy)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

from vpt_ray.rl.env_runner import PRETRAINED_LOGPROBS
from vpt_ray.rl.learner import LOSS_WEIGHT, SLEEP, TRAIN_COLUMNS, WAKE
from vpt_ray.rl.module import FIRST

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _algo(rl_task):
    from vpt_ray.rl.algorithm import PPGConfig
    from vpt_ray.spec import load_task

    task = load_task(rl_task(context_len=8, ppo_clip=0.1, wake_value_coef=0.7, entropy_coef=0.03,
                             sleep_value_coef=0.4, sleep_aux_value_coef=0.6, sleep_kl_coef=1.5))  # fmt: skip
    return PPGConfig.from_spec(task, num_env_runners=0).build_algo()


@pytest.fixture
def batch_and_learner(ray_local, rl_task):
    algo = _algo(rl_task)
    rows, _, _ = algo.env_runner.sample_rows()
    rows, _, _ = algo.env_runner.sample_rows()  # a second row: state_in carries memory
    rng = np.random.default_rng(0)
    rows[LOSS_WEIGHT] = (~rows["reset_step"]).astype(np.float32) * rng.uniform(0.5, 1.0, (len(rows["reset_step"]), 1))
    # A behaviour policy that differs from the current one (ratios != 1, some clipped) and non-trivial advantages
    rows[Columns.ACTION_LOGP] = rows[Columns.ACTION_LOGP] + rng.normal(0, 0.2, rows[Columns.ACTION_LOGP].shape).astype(np.float32)
    rows[Columns.ADVANTAGES] = rng.normal(0.3, 1.0, rows[Columns.ADVANTAGES].shape).astype(np.float32)
    rows[Columns.VALUE_TARGETS] = rng.normal(2.0, 0.5, rows[Columns.VALUE_TARGETS].shape).astype(np.float32)
    pre = torch.log_softmax(torch.as_tensor(rng.normal(0, 1, (*rows[FIRST].shape, 17)), dtype=torch.float32), -1)
    rows[PRETRAINED_LOGPROBS] = {"action": pre.numpy().astype(np.float16)}
    learner = algo.learner_group._learner
    learner.policy.value_normalizer.update(torch.tensor([1.0, 3.0]))
    batch = {k: ({h: torch.as_tensor(a) for h, a in v.items()} if isinstance(v, dict) else torch.as_tensor(v))
             for k, v in rows.items() if k in TRAIN_COLUMNS}  # fmt: skip
    yield learner, batch
    algo.stop()


def _config(learner, kl: bool):
    """The loss reads the KL switch from the config it is given: the pretrained targets come with the batch here
    rather than from a Serve app."""
    return learner.config.copy(copy_frozen=False).pretrained(app_name="kl-on" if kl else None)


def _weighted_mean(x, w):
    return float((x * w).sum() / w.sum())


def test_wake_loss_equals_a_direct_computation_with_the_kl_term_and_with_the_entropy_bonus(batch_and_learner):
    learner, batch = batch_and_learner
    for kl in (False, True):  # scratch first: its logged metrics must not contain a KL
        _check_wake_loss(learner, batch, kl)


def _check_wake_loss(learner, batch, kl: bool) -> None:
    cfg = _config(learner, kl)
    module = learner.module[DEFAULT_MODULE_ID]
    learner._phase, learner._rho = WAKE, 0.3
    fwd = module.forward_train(batch)
    loss = learner.compute_loss_for_module(module_id=DEFAULT_MODULE_ID, config=cfg, batch=batch, fwd_out=fwd)

    # Direct computation in float64 numpy from the module's own outputs.
    lp = fwd["logprobs"]["action"].detach().double().numpy()  # (B, T, 17)
    w = batch[LOSS_WEIGHT].double().numpy()
    taken = np.take_along_axis(lp, batch[Columns.ACTIONS]["action"].numpy()[..., None], -1)[..., 0]
    ratio = np.exp(taken - batch[Columns.ACTION_LOGP].double().numpy())
    adv = batch[Columns.ADVANTAGES].double().numpy()
    valid = (w > 0).astype(float)
    mean = (adv * valid).sum() / valid.sum()
    adv = (adv - mean) / (np.sqrt((((adv - mean) ** 2) * valid).sum() / valid.sum()) + 1e-8)
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - 0.1, 1 + 0.1))
    norm_mean, norm_var = 2.0, max(5.0 - 4.0, 1e-2)  # one EWMA update with [1, 3]: mean 2, mean of squares 5
    target = (batch[Columns.VALUE_TARGETS].double().numpy() - norm_mean) / np.sqrt(norm_var)
    value = 0.5 * (fwd["vpred"].detach().double().numpy() - target) ** 2
    p = np.exp(lp)
    if kl:
        pre = batch[PRETRAINED_LOGPROBS]["action"].double().numpy()
        pre = pre - np.log(np.exp(pre).sum(-1, keepdims=True))  # stored in fp16, renormalised
        regulariser = 0.3 * (np.exp(pre) * (pre - lp)).sum(-1)  # rho * KL(pi_pretrained || pi_theta)
    else:
        regulariser = -0.03 * -(p * lp).sum(-1)  # - entropy_coef * entropy
    expected = _weighted_mean(pg + 0.7 * value + regulariser, w)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert 0 < np.mean(np.abs(ratio - 1) > 0.1) < 1  # the clip was exercised both ways

    logged = learner.metrics.reduce()[WAKE]
    assert logged["loss/wake_policy"].peek() == pytest.approx(_weighted_mean(pg, w), rel=1e-4, abs=1e-6)
    assert ("kl/pretrained" in logged) is kl
    if kl:
        assert logged["kl/pretrained"].peek() == pytest.approx(_weighted_mean(regulariser / 0.3, w), rel=1e-4)


def test_sleep_loss_equals_a_direct_computation_and_starts_with_zero_kl(batch_and_learner):
    learner, batch = batch_and_learner
    cfg = _config(learner, kl=False)
    module = learner.module[DEFAULT_MODULE_ID]
    learner._pre_sleep = copy.deepcopy(learner.policy).requires_grad_(False)
    learner._phase = SLEEP
    fwd = module.forward_train(batch)
    loss = learner.compute_loss_for_module(module_id=DEFAULT_MODULE_ID, config=cfg, batch=batch, fwd_out=fwd)
    w = batch[LOSS_WEIGHT].double().numpy()
    target = (batch[Columns.VALUE_TARGETS].double().numpy() - 2.0) / 1.0
    value = 0.5 * (fwd["vpred"].detach().double().numpy() - target) ** 2
    aux = 0.5 * (fwd["aux_vpred"].detach().double().numpy() - target) ** 2
    # The pre-sleep policy equals the current one: the KL term is 0 (and its gradient too) at the start.
    assert float(loss.detach()) == pytest.approx(_weighted_mean(0.4 * value + 0.6 * aux, w), rel=1e-4, abs=1e-6)
    assert learner.metrics.reduce()[SLEEP]["kl/sleep"].peek() == pytest.approx(0.0, abs=1e-6)

    # After the policy moved, the KL term is KL(pi_before || pi_now) weighted by sleep_kl_coef.
    with torch.no_grad():
        for param in learner.policy.pi_head.parameters():
            param.add_(0.3 * torch.randn_like(param))
    fwd = module.forward_train(batch)
    loss = learner.compute_loss_for_module(module_id=DEFAULT_MODULE_ID, config=cfg, batch=batch, fwd_out=fwd)
    before = learner._pre_sleep(batch[Columns.OBS], batch[FIRST], batch[Columns.STATE_IN]).logprobs["action"]
    before = before.detach().double().numpy()
    now = fwd["logprobs"]["action"].detach().double().numpy()
    kl = (np.exp(before) * (before - now)).sum(-1)
    value = 0.5 * (fwd["vpred"].detach().double().numpy() - target) ** 2
    aux = 0.5 * (fwd["aux_vpred"].detach().double().numpy() - target) ** 2
    assert _weighted_mean(kl, w) > 1e-3
    assert float(loss.detach()) == pytest.approx(_weighted_mean(0.4 * value + 0.6 * aux + 1.5 * kl, w), rel=1e-4)
