"""PPG with two learners (DDP over gloo on CPU, real Ray learner actors, real Crafter rows): after wake and sleep
phases every parameter and buffer is bit-identical on both learners, training changed them (the auxiliary value
head only trains in the sleep phase, so it moving proves the sleep phase ran under DDP), and both learners took
the same optimizer steps on different halves of the rows."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def test_two_ddp_learners_stay_identical_through_wake_and_sleep(ray_local, rl_task):
    from vpt_ray.rl.algorithm import PPGConfig, iteration_scalars
    from vpt_ray.spec import load_task

    # Defined here: Ray pickles a nested function by value (a test module is not importable on the learners).
    def _learner_state(learner):
        import torch
        from ray.rllib.core import DEFAULT_MODULE_ID

        module = learner.module[DEFAULT_MODULE_ID]
        policy = module.unwrapped().policy
        state = {k: v.detach().cpu().numpy().copy() for k, v in policy.state_dict().items()}
        return {
            "state": state,
            "ddp": isinstance(module, torch.nn.parallel.DistributedDataParallel),
            "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "steps": learner._optimizer_steps(),
            "buffer_rows": learner.sleep_buffer_rows,
            "last_rows_digest": float(np.asarray(learner._sleep_buffer[-1]["obs"], np.float64).sum())
            if learner._sleep_buffer else None,
        }

    # 8 rows per iteration, 4 per learner; minibatches of 2 rows per learner; 2 sleep cycles over 2 iterations.
    task = load_task(rl_task(context_len=8, batch_size=4, batches_per_iteration=2, sleep_cycles=2,
                             sleep_max_sample_reuse=4, scale={"num_learners": 2, "cpus_per_learner": 1,
                                                              "env_runners": 1, "envs_per_env_runner": 4}))  # fmt: skip
    algo = PPGConfig.from_spec(task).build_algo()
    try:
        before = [r.get() for r in algo.learner_group.foreach_learner(_learner_state).result_or_errors]
        results = [iteration_scalars(algo.train()) for _ in range(2)]
        after = [r.get() for r in algo.learner_group.foreach_learner(_learner_state).result_or_errors]
    finally:
        algo.stop()

    assert len(after) == 2 and all(a["ddp"] and a["world_size"] == 2 for a in after)
    first, second = after
    assert first["state"].keys() == second["state"].keys()
    for name in first["state"]:
        np.testing.assert_array_equal(first["state"][name], second["state"][name], err_msg=name)
    # DDP started both from rank 0's weights, and training moved them, the sleep-only aux head included.
    for name in before[0]["state"]:
        np.testing.assert_array_equal(before[0]["state"][name], before[1]["state"][name], err_msg=name)
    moved = {n for n in first["state"] if not np.array_equal(first["state"][n], before[0]["state"][n])}
    assert any(n.startswith("aux_value_head") for n in moved), sorted(moved)
    assert any(n.startswith("value_head") for n in moved) and len(moved) > len(first["state"]) // 2
    # Same number of steps on each rank: wake 2 minibatches per iteration, sleep 2 cycles over 1 then 2 iterations.
    per_rank = (2 + 2) + (2 * 2 + 2 * 4)
    assert first["steps"] == second["steps"] == per_rank
    # The iteration's counts are summed over both ranks.
    assert [s["ppg/wake_minibatches"] for s in results] == [2 * 2, 2 * 2]
    assert [s["ppg/sleep_minibatches"] for s in results] == [2 * 2 * 2, 2 * 2 * 4]
    assert first["buffer_rows"] == second["buffer_rows"] == [4, 4]  # each learner keeps its own half
    assert first["last_rows_digest"] != second["last_rows_digest"]  # ... of different rows
    for s in results:
        assert np.isfinite(s["loss/sleep_total"]) and np.isfinite(s["loss/sleep_aux_value"]) and s["kl/sleep"] >= 0
