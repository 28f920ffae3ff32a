"""The robust wrapper around a REAL Crafter simulator that fails: raises, hangs forever, or dies.

The fault fires once, in whichever simulator first reaches the faulty call (a marker file records that it
fired), the way a flaky game does; the recreated simulator then plays normally.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from vpt_ray.envs import EnvFailureError, RobustSim, TaskEnv, make_env, make_sim
from vpt_ray.spec import EnvSpec, RobustOptions, TaskSpec, load_task


class _FaultyCrafter(gym.Wrapper):
    action_space_name = "crafter"

    def __init__(self, env, fault):
        super().__init__(env)
        self.fault = fault
        self.steps = 0
        Path(fault.pid_file).write_text(str(os.getpid()))

    def _maybe_fail(self, where):
        marker = Path(self.fault.marker)
        if where != self.fault.where or (self.fault.once and marker.exists()):
            return
        marker.touch()
        if self.fault.mode == "raise":
            raise RuntimeError(f"injected failure at {where}")
        if self.fault.mode == "hang":
            time.sleep(1e6)
        if self.fault.mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)

    def reset(self, **kwargs):
        self.steps = 0
        self._maybe_fail("reset")
        return self.env.reset(**kwargs)

    def step(self, action):
        self.steps += 1
        self._maybe_fail(f"step {self.steps}")
        return self.env.step(action)


@dataclasses.dataclass(frozen=True)
class FaultyCrafter:
    """Picklable factory: a real CrafterSim that fails (``mode``) at ``where`` ("reset" or "step k")."""

    env: EnvSpec
    mode: str
    where: str
    marker: str
    pid_file: str
    once: bool = True

    def __call__(self):
        return _FaultyCrafter(make_sim(self.env), self)


def _env(tmp_path, mode, where, isolation, once=True, **robust):
    task = load_task("crafter-wood")
    # Short step/reset timeouts for the hangs; a loaded test machine may need many seconds to start a process.
    options = RobustOptions(
        isolation=isolation, **{"start_timeout_s": 120.0, "step_timeout_s": 2.0, "reset_timeout_s": 30.0, **robust}
    )
    spec = dataclasses.replace(task, env=dataclasses.replace(task.env, robust=options, max_steps=60))
    fault = FaultyCrafter(spec.env, mode, where, str(tmp_path / "fired"), str(tmp_path / "pid"), once)
    return TaskEnv(spec, RobustSim(fault, options), seed=0), tmp_path / "pid"


def _noop_episode(env):
    steps = []
    while True:
        steps.append(env.step(0))
        if steps[-1][2] or steps[-1][3]:
            return steps


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child we already reaped is gone; a zombie would still answer kill(0).
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize(
    "mode, isolation",
    [("raise", "inprocess"), ("raise", "process"), ("hang", "process"), ("die", "process")],
)
def test_step_failure_truncates_flags_counts_and_recovers(tmp_path, mode, isolation):
    env, pid_file = _env(tmp_path, mode, "step 5", isolation)
    obs0, _ = env.reset()
    first_pid = int(pid_file.read_text())
    t0 = time.monotonic()
    steps = _noop_episode(env)
    elapsed = time.monotonic() - t0
    obs, reward, terminated, truncated, info = steps[-1]
    assert len(steps) == 5 and truncated and not terminated and reward == 0.0
    assert info["env_failure"] is True and all(not s[4]["env_failure"] for s in steps[:-1])
    assert info["episode"]["env_failures"] == 1 and info["episode"]["length"] == 5
    np.testing.assert_array_equal(obs, steps[-2][0])  # the last good frame
    assert env.env_failures_total == 1
    if mode == "hang":
        assert 2.0 <= elapsed < 10.0  # the 2 s step timeout, not forever
    if isolation == "process":
        assert not _alive(first_pid)  # the hung or broken env process is gone
    # The next episode runs normally on a fresh simulator, to the length limit.
    obs1, info = env.reset()
    assert info["env_failure"] is False
    if isolation == "process":
        assert int(pid_file.read_text()) != first_pid
    steps = _noop_episode(env)
    episode = steps[-1][4]["episode"]
    assert episode["length"] == 60 and episode["env_failures"] == 0 and steps[-1][3]
    assert not any(s[4]["env_failure"] for s in steps)
    assert env.env_failures_total == 1
    env.close()


@pytest.mark.parametrize("mode, isolation", [("raise", "inprocess"), ("hang", "process")])
def test_reset_failure_is_retried_on_a_fresh_simulator(tmp_path, mode, isolation):
    env, _ = _env(tmp_path, mode, "reset", isolation, reset_timeout_s=2.0)
    obs, info = env.reset()
    assert obs.shape == (64, 64, 3) and info["env_failure"] is True
    steps = _noop_episode(env)
    assert steps[-1][4]["episode"]["env_failures"] == 1 and steps[-1][4]["episode"]["length"] == 60
    assert env.env_failures_total == 1
    env.close()


def test_worlds_continue_after_a_failure(tmp_path):
    # Episode 2 after a failure in episode 1 is the world episode 2 of a healthy env with the same seed plays.
    env, _ = _env(tmp_path, "raise", "step 3", "inprocess")
    healthy = make_env("crafter-wood", seed=0, robust=False)
    for _ in range(2):
        faulty_obs, _ = env.reset()
        healthy_obs, _ = healthy.reset()
        np.testing.assert_array_equal(faulty_obs, healthy_obs)
        _noop_episode(env)
        _noop_episode(healthy)


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_consecutive_failures_raise_for_rllib(tmp_path, isolation):
    # A simulator that fails at every first step: after max_consecutive_failures the env gives up with
    # EnvFailureError, so RLlib recreates the env or restarts the env runner.
    env, _ = _env(tmp_path, "raise", "step 1", isolation, once=False, max_consecutive_failures=2)
    env.reset()
    *_, truncated, info = env.step(0)
    assert truncated and info["env_failure"]
    env.reset()  # resets succeed: they do not clear the failure streak
    with pytest.raises(EnvFailureError, match=r"(?s)failed 2 times in a row.*injected failure at step 1"):
        env.step(0)


def test_a_successful_step_clears_the_failure_streak(tmp_path):
    env, _ = _env(tmp_path, "raise", "step 2", "inprocess", once=False, max_consecutive_failures=2)
    for _ in range(4):  # step 1 succeeds every episode, so failures at step 2 never run 2 in a row
        env.reset()
        steps = _noop_episode(env)
        assert len(steps) == 2 and steps[-1][4]["env_failure"]
    assert env.env_failures_total == 4


def test_process_isolation_builds_the_env_in_a_child(tmp_path):
    env = make_env(_process_task(), seed=0)
    pid = env.sim._backend.proc.pid
    assert pid != os.getpid() and _alive(pid)
    env.reset()
    env.step(0)
    env.close()
    assert not _alive(pid)


def _process_task() -> TaskSpec:
    task = load_task("crafter-wood")
    robust = dataclasses.replace(task.env.robust, isolation="process")
    return dataclasses.replace(task, env=dataclasses.replace(task.env, robust=robust))


@pytest.mark.slow
def test_rllib_env_runner_recreates_the_env_after_env_failure_error(tmp_path):
    # max_consecutive_failures=1: the injected failure raises EnvFailureError at once. With
    # restart_failed_sub_environments RLlib recreates the env and goes on sampling; without, sample() raises,
    # which is what makes RLlib restart the env runner.
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.env.env_runner import NUM_ENV_STEP_FAILURES_LIFETIME
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    def creator(env_config):
        return _env(tmp_path / env_config["name"], "raise", "step 20", "inprocess", max_consecutive_failures=1)[0]

    for restart in (True, False):
        (tmp_path / str(restart)).mkdir()
        config = (
            PPOConfig()
            .environment(env=creator, env_config={"name": str(restart)})
            .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
            .fault_tolerance(restart_failed_sub_environments=restart)
            .debugging(seed=0)
        )
        runner = SingleAgentEnvRunner(config=config)
        try:
            if restart:
                episodes = runner.sample(num_timesteps=150, random_actions=True)
                assert sum(len(e) for e in episodes) >= 150
                assert runner.get_metrics()[NUM_ENV_STEP_FAILURES_LIFETIME] == 1
            else:
                with pytest.raises(RuntimeError) as e:
                    runner.sample(num_timesteps=150, random_actions=True)
                assert isinstance(e.value.__cause__, EnvFailureError)
        finally:
            runner.stop()
