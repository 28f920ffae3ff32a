"""PPG rows from the env runner: GAE with reset steps, exact T-step rows across episodes, replay from state_in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from vpt_ray.rl.env_runner import gae
from vpt_ray.rl.module import FIRST

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------------- GAE
def test_gae_matches_a_hand_computation_with_truncation_termination_and_reset_steps():
    gamma, lam = 0.9, 0.8
    # t0 step, t1 truncated (episode end without termination), t2 reset step (V = V(final obs of episode 1)),
    # t3 step, t4 terminated (death), t5 reset step; then the row ends (bootstrap 1.1 belongs to the next episode).
    rewards = np.array([[1.0, 2.0, 0.0, 3.0, 4.0, 0.0]])
    vpred = np.array([[0.5, 0.6, 0.7, 0.8, 0.9, 1.0]])
    done = np.array([[0, 1, 0, 0, 1, 0]], bool)
    terminated = np.array([[0, 0, 0, 0, 1, 0]], bool)
    reset_step = np.array([[0, 0, 1, 0, 0, 1]], bool)
    adv = gae(rewards, vpred, np.array([1.1]), done, terminated, reset_step, gamma, lam)
    # By hand: delta_t = r_t + gamma * V_{t+1} * (1 - terminated_t) - V_t; A_t = delta_t + gamma*lam*(1-done_t)*A_{t+1}
    a5 = 0.0  # reset step
    a4 = 4.0 + 0.0 - 0.9  # terminated: no bootstrap from the reset step's value
    a3 = (3.0 + 0.9 * 0.9 - 0.8) + 0.72 * a4
    a2 = 0.0  # reset step
    a1 = 2.0 + 0.9 * 0.7 - 0.6  # truncated: bootstraps from V(final obs) = the reset step's value; nothing flows back
    a0 = (1.0 + 0.9 * 0.6 - 0.5) + 0.72 * a1
    np.testing.assert_allclose(adv[0], [a0, a1, a2, a3, a4, a5], rtol=1e-6)


def test_gae_bootstraps_a_row_that_ends_mid_episode():
    adv = gae(np.array([[1.0, 1.0]]), np.array([[0.5, 0.5]]), np.array([2.0]), np.zeros((1, 2), bool),
              np.zeros((1, 2), bool), np.zeros((1, 2), bool), 0.9, 0.8)  # fmt: skip
    a1 = 1.0 + 0.9 * 2.0 - 0.5
    np.testing.assert_allclose(adv[0], [1.0 + 0.9 * 0.5 - 0.5 + 0.72 * a1, a1], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- rows
@pytest.fixture
def local_runner_algo(ray_local, rl_task):
    """PPG with its env runner in this process (no remote runners): rows can be compared with the module."""
    from vpt_ray.rl.algorithm import PPGConfig
    from vpt_ray.spec import load_task

    # 10-step episodes and 8-step rows: episode ends (and `first` flags) land mid-row and at row edges.
    task = load_task(rl_task(env={"max_steps": 10}, context_len=8, scale={"envs_per_env_runner": 3}))
    algo = PPGConfig.from_spec(task, num_env_runners=0).build_algo()
    yield algo
    algo.stop()


def test_rows_are_exactly_t_steps_cross_episodes_and_replay_from_their_start_state(local_runner_algo):
    runner = local_runner_algo.env_runner
    rows = [runner.sample_rows() for _ in range(4)]
    t_len, n_envs = 8, 3

    episodes = [ep for _, stats, _ in rows for ep in stats["episodes"]]
    assert episodes and all(1 <= ep["length"] <= 10 for ep in episodes)
    assert set(episodes[0]["items"]) == {"wood", "table"}
    for r, stats, _ in rows:
        assert r[Columns.OBS].shape == (n_envs, t_len, 64, 64, 3) and r[Columns.OBS].dtype == np.uint8
        for key in (FIRST, "done", "terminated", "reset_step", Columns.REWARDS, Columns.ACTION_LOGP, Columns.VF_PREDS,
                    Columns.ADVANTAGES, Columns.VALUE_TARGETS, WEIGHTS_SEQ_NO):  # fmt: skip
            assert r[key].shape == (n_envs, t_len), key
        assert r[Columns.ACTIONS]["action"].shape == (n_envs, t_len)
        assert stats["steps"] == n_envs * t_len
        # A reset step is a dummy transition: no reward, no advantage; it follows every episode end.
        assert np.all(r[Columns.REWARDS][r["reset_step"]] == 0) and np.all(r[Columns.ADVANTAGES][r["reset_step"]] == 0)
        np.testing.assert_allclose(r[Columns.VALUE_TARGETS], r[Columns.ADVANTAGES] + r[Columns.VF_PREDS], rtol=1e-6)
    cat = {k: np.concatenate([r[k] for r, _, _ in rows], axis=1) for k in (FIRST, "done", "reset_step")}
    # Episode k ends (done) -> the next step is a reset step -> the observation after it is `first`.
    np.testing.assert_array_equal(cat["reset_step"][:, 1:], cat["done"][:, :-1])
    np.testing.assert_array_equal(cat[FIRST][:, 1:], cat["reset_step"][:, :-1])
    mid_row_firsts = [r[FIRST][:, 1:].any() for r, _, _ in rows]
    assert any(mid_row_firsts), "no episode started inside a row"

    # Replaying a row from its state_in reproduces what the runner's policy computed, and ends in the next row's
    # state_in; the next row's first value is the bootstrap GAE used.
    policy = runner.module.policy
    for (r, _, _), (nxt, _, _) in zip(rows, rows[1:]):
        state = {k: torch.as_tensor(v) for k, v in r[Columns.STATE_IN].items()}
        with torch.no_grad():
            out = policy(torch.as_tensor(r[Columns.OBS]), torch.as_tensor(r[FIRST]), state)
            logp = policy.log_prob(out.logprobs, {h: torch.as_tensor(a) for h, a in r[Columns.ACTIONS].items()})
        np.testing.assert_allclose(logp.numpy(), r[Columns.ACTION_LOGP], atol=1e-4)
        np.testing.assert_allclose(out.value.numpy(), r[Columns.VF_PREDS], atol=1e-5)
        for key, value in out.state.items():
            np.testing.assert_allclose(value.numpy(), nxt[Columns.STATE_IN][key], atol=1e-4, err_msg=key)
        expected = gae(r[Columns.REWARDS], r[Columns.VF_PREDS], nxt[Columns.VF_PREDS][:, 0], r["done"], r["terminated"],
                       r["reset_step"], local_runner_algo.config.gamma, local_runner_algo.config.lambda_)  # fmt: skip
        np.testing.assert_allclose(r[Columns.ADVANTAGES], expected, rtol=1e-5, atol=1e-6)

    # The memory is never stored per step: only these extra model outputs are.
    chunk = runner._ongoing_episodes[0]
    assert set(chunk.extra_model_outputs) == {Columns.ACTION_LOGP, Columns.VF_PREDS, WEIGHTS_SEQ_NO}
