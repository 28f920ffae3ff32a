"""PPG learns: on a small Crafter task the mean episode return rises well above where the random init starts."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mean_return(results: list[dict]) -> tuple[float, int]:
    """Mean return over the episodes that ended in these iterations (each iteration's mean weighted by its count)."""
    episodes = sum(r["episode/count"] for r in results)
    total = sum(r["episode/return_mean"] * r["episode/count"] for r in results if r["episode/count"])
    return total / max(episodes, 1), int(episodes)


@pytest.mark.slow
def test_scratch_ppg_raises_the_return_on_a_small_crafter_task(ray_local, rl_task):
    from vpt_ray.rl.algorithm import PPGConfig, iteration_scalars
    from vpt_ray.spec import load_task

    # Saplings come from hitting grass (10 % per hit), which the player faces most of the time: a policy that learns
    # to use "do" far more often than 1 in 17 earns several per 64-step episode, a random one about 0.3.
    task = rl_task(
        "rl-saplings",
        env={"max_steps": 64},
        rewards=[{"item": "sapling", "quantity": None, "reward": 0.2}, {"item": "wood", "quantity": 5, "reward": 0.2}],
        context_len=16, batch_size=8, batches_per_iteration=4, lr=1e-3, sleep_cycles=1, sleep_max_sample_reuse=1,
        scale={"envs_per_env_runner": 8},
    )  # fmt: skip
    algo = PPGConfig.from_spec(load_task(task)).build_algo()
    try:
        results = [iteration_scalars(algo.train()) for _ in range(28)]
    finally:
        algo.stop()
    first, first_episodes = _mean_return(results[:6])
    last, last_episodes = _mean_return(results[-6:])
    assert first_episodes >= 8 and last_episodes >= 8
    assert last > first + 0.2 and last > 2 * first, (first, last, [round(r.get("episode/return_mean", -1), 3) for r in results])
    # it learned by becoming more deliberate, not by luck: the policy's entropy fell from uniform (ln 17 = 2.83)
    assert results[-1]["policy/entropy"] < results[0]["policy/entropy"] - 0.3
