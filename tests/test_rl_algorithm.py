"""PPG iterations on a real local Ray with a remote env runner and real Crafter: rho decay, the sleep buffer's
cap, staleness (drop / downweight), and a killed env runner replaced without losing the iteration."""

from __future__ import annotations

import os
import signal
import time

import pytest

from vpt_ray.rl.algorithm import iteration_scalars

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(rl_task, **rl):
    from vpt_ray.rl.algorithm import PPGConfig
    from vpt_ray.spec import load_task

    return PPGConfig.from_spec(load_task(rl_task(**rl))).build_algo()


def test_iterations_decay_rho_exactly_and_cap_the_sleep_buffer(ray_local, rl_task):
    # 2 sleep cycles x a buffer of 4 / 2 = 2 iterations of 8 rows; minibatches of 4 rows.
    algo = _build(rl_task, context_len=8, batch_size=4, batches_per_iteration=2, sleep_cycles=2,
                  sleep_max_sample_reuse=4, rho=0.25, rho_decay=0.9)  # fmt: skip
    try:
        results = [iteration_scalars(algo.train()) for _ in range(4)]
        learner_buffer = algo.learner_group.foreach_learner(lambda l: l.sleep_buffer_rows).result_or_errors[0].get()
    finally:
        algo.stop()
    for k, s in enumerate(results, start=1):
        assert s["ppg/iteration"] == k
        assert s["ppg/rho_trained"] == pytest.approx(0.25 * 0.9 ** (k - 1), rel=1e-12)  # what this iteration used
        assert s["ppg/rho"] == pytest.approx(0.25 * 0.9**k, rel=1e-12)  # what the next one uses
        assert s["ppg/rho_learner"] == pytest.approx(s["ppg/rho_trained"], rel=1e-6)  # the learner got it
        assert s["ppg/wake_minibatches"] == 2  # each row once
        assert s["env/steps"] >= 8 * 8
    assert [s["ppg/sleep_buffer_rows"] for s in results] == [8, 16, 16, 16]
    assert [s["ppg/sleep_minibatches"] for s in results] == [2 * 2, 2 * 4, 2 * 4, 2 * 4]
    assert learner_buffer == [8, 8]
    # Adam took every wake and sleep step (counted after the last wake phase, before its sleep phase).
    steps = sum(s["ppg/wake_minibatches"] + s["ppg/sleep_minibatches"] for s in results) - results[-1]["ppg/sleep_minibatches"]
    assert results[-1]["ppg/optimizer_steps"] == steps
    assert [s["ppg/policy_version"] for s in results] == [1, 2, 3, 4]


@pytest.mark.parametrize("mode", ["drop", "downweight"])
def test_rows_older_than_max_staleness_are_dropped_or_downweighted(ray_local, rl_task, mode):
    # The runner keeps sampling while the learner trains, so rows of the previous policy arrive one version late.
    algo = _build(rl_task, context_len=8, batch_size=4, batches_per_iteration=1, sleep_cycles=0, max_staleness=0,
                  staleness_mode=mode, scale={"envs_per_env_runner": 2})  # fmt: skip
    try:
        results = [iteration_scalars(algo.train()) for _ in range(4)]
    finally:
        algo.stop()
    late = sum(s["ppg/dropped_stale_rows" if mode == "drop" else "ppg/downweighted_rows"] for s in results)
    assert late > 0, "no row arrived stale: sampling was not asynchronous"
    if mode == "drop":
        assert all(s["ppg/staleness_max"] == 0 for s in results)  # none of the trained rows is stale
        assert results[-1]["ppg/dropped_stale_rows_lifetime"] == late
        assert all(s["ppg/downweighted_rows"] == 0 for s in results)
    else:
        assert any(s["ppg/staleness_max"] >= 1 for s in results)  # stale rows were trained on, with less weight
        assert all(s["ppg/dropped_stale_rows"] == 0 for s in results)


@pytest.mark.parametrize("how", ["os.kill", "ray.kill"])
def test_killed_env_runner_is_replaced_and_the_iteration_completes(ray_local, rl_task, how):
    import ray

    # A long enough iteration (32 vector steps) that the kill lands while the runner is sampling it.
    algo = _build(rl_task, context_len=16, batch_size=4, batches_per_iteration=2, sleep_cycles=0,
                  sample_timeout_s=120.0, scale={"envs_per_env_runner": 2})  # fmt: skip
    try:
        first = iteration_scalars(algo.train())
        group = algo.env_runner_group
        [actor_id] = group.healthy_env_runner_ids()
        pid = group.foreach_env_runner(lambda er: os.getpid(), local_env_runner=False)[0]
        killer = __import__("threading").Timer(1.0, lambda: (
            os.kill(pid, signal.SIGKILL) if how == "os.kill" else ray.kill(group._worker_manager._actors[actor_id])))
        killer.start()
        t0 = time.monotonic()
        second = iteration_scalars(algo.train())  # waits for the restarted runner instead of failing
        killer.join()
        third = iteration_scalars(algo.train())
        new_pid = group.foreach_env_runner(lambda er: os.getpid(), local_env_runner=False)[0]
        seq_nos = group.foreach_env_runner(lambda er: er._weights_seq_no, local_env_runner=False)
    finally:
        algo.stop()
    assert first["ppg/iteration"] == 1 and second["ppg/iteration"] == 2 and third["ppg/iteration"] == 3
    assert new_pid != pid
    # os.kill: Ray restarts the process and the probe restores it; ray.kill: Ray never will, a new runner replaces it.
    back = "env_runners/restored_lifetime" if how == "os.kill" else "env_runners/replaced_lifetime"
    assert third[back] >= 1
    assert second["env/steps"] >= 8 * 16 and time.monotonic() - t0 < 120
    # The replacement samples with the current weights (restore pushed them; the last sync too).
    assert seq_nos == [3]


@pytest.mark.slow
def test_two_ddp_learners_stay_identical_through_wake_and_sleep(ray_local, rl_task):
    # gloo DDP on CPU: every parameter must be in every graph (the aux head joins the wake loss with weight 0), the
    # minibatch counts must match, and the value normalisers must see the same all-reduced moments.
    algo = _build(rl_task, context_len=8, batch_size=4, batches_per_iteration=2, sleep_cycles=1,
                  sleep_max_sample_reuse=2, scale={"num_learners": 2, "cpus_per_learner": 1, "envs_per_env_runner": 4})  # fmt: skip
    try:
        results = [iteration_scalars(algo.train()) for _ in range(2)]

        def fingerprint(learner):
            policy = learner.policy
            params = [float(p.detach().double().sum()) for p in policy.parameters()]
            mean, var = policy.value_normalizer.mean_var()
            return params, float(mean), float(var), learner._optimizer_steps(), learner.sleep_buffer_rows

        prints = [r.get() for r in algo.learner_group.foreach_learner(fingerprint).result_or_errors]
    finally:
        algo.stop()
    assert len(prints) == 2
    (params_a, *rest_a), (params_b, *rest_b) = prints
    assert params_a == pytest.approx(params_b, rel=1e-6, abs=1e-6)
    assert rest_a == rest_b
    assert rest_a[3] == [4, 4]  # each learner's own half of each iteration's 8 rows
    # 2 steps of 2 rows on each learner (4-row minibatches split in two), summed over both learners
    assert [r["ppg/wake_minibatches"] for r in results] == [4, 4]
