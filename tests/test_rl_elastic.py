"""Elastic and fault-tolerant env runners on real multi-node Ray clusters (``ray.cluster_utils.Cluster``: every node
a set of real Ray processes on this machine) with real Crafter and PPG iterations (tiny policy, T=8):

- a node joins: the group grows into it up to the spec's maximum;
- a node leaves mid-iteration: the iteration completes, later ones train on fewer runners, the lost runner waits
  for capacity and comes back when a node joins; ``algo.stop()`` does not hang on a runner that has no node;
- ``vpt-ray scale`` (ledger) lowers and raises the count at the next iteration; removed runners' processes end;
  added runners get unused worker indices and distinct env seeds;
- a simulator that hangs or crashes inside a runner is recreated by the robust wrapper and training goes on.
"""

from __future__ import annotations

import inspect
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from vpt_ray.rl.algorithm import iteration_scalars
from vpt_ray.rl.elastic import (
    MAX_WAITING,
    env_runner_demand,
    free_env_runner_slots,
    plan_rescale,
    target_env_runners,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 4 rows of 8 steps per iteration (1 sleep cycle): iterations stay short, sampling dominates.
TINY = dict(context_len=8, batch_size=2, batches_per_iteration=2, sleep_cycles=1, sleep_max_sample_reuse=2)
NODE = dict(object_store_memory=96 * 1024**2)


# ------------------------------------------------------------------------------------------ planning, no Ray
def test_plan_removes_unhealthy_then_starting_then_newest():
    ids = [1, 2, 3, 5, 7]
    assert plan_rescale(ids, unhealthy=[2], starting=[5], target=3, free_slots=9).remove == (2, 5)
    assert plan_rescale(ids, unhealthy=[], starting=[], target=2, free_slots=0).remove == (7, 5, 3)
    assert plan_rescale(ids, unhealthy=[3, 1], starting=[], target=4, free_slots=0).remove == (3,)
    plan = plan_rescale(ids, unhealthy=[], starting=[], target=5, free_slots=4)
    assert plan.add == 0 and plan.remove == ()


def test_plan_grows_into_free_slots_and_lets_one_runner_wait_for_capacity():
    assert plan_rescale([1], [], [], target=8, free_slots=3).add == 3 + MAX_WAITING
    assert plan_rescale([1], [], [], target=3, free_slots=5).add == 2  # never past the target
    assert plan_rescale([1], [], [], target=3, free_slots=0).add == MAX_WAITING  # an autoscaler's cue
    # A runner already waits (its node left, or it is still starting): only free slots are used.
    assert plan_rescale([1, 2], [2], [], target=4, free_slots=0).add == 0
    assert plan_rescale([1, 2], [], [2], target=4, free_slots=1).add == 1
    assert plan_rescale([1, 2], [], [], target=4, free_slots=0, max_waiting=0).add == 0


def test_free_slots_count_every_resource_a_runner_asks_for_and_rollout_nodes():
    assert free_env_runner_slots({"CPU": 1.0}, {"CPU": 3.5}, {"CPU": 8}) == 3
    assert free_env_runner_slots({"CPU": 0.5}, {"CPU": 1.5}, {"CPU": 8}) == 3
    assert free_env_runner_slots({"CPU": 2.0, "GPU": 0.5}, {"CPU": 9, "GPU": 1.0}, {"CPU": 9, "GPU": 1}) == 2
    # A cluster with rollout nodes: runners are counted onto free `rollout` units (one per runner CPU) ...
    assert free_env_runner_slots({"CPU": 1.0}, {"CPU": 40.0, "rollout": 6.0}, {"CPU": 99, "rollout": 64}) == 6
    # ... also when none is free (the head's CPUs are not for runners), or the runners ask for it themselves.
    assert free_env_runner_slots({"CPU": 1.0}, {"CPU": 4.0}, {"CPU": 4, "rollout": 64}) == 0
    assert free_env_runner_slots({"CPU": 1.0, "rollout": 2.0}, {"CPU": 8, "rollout": 5}, {"rollout": 64}) == 2
    with pytest.raises(ValueError, match="no resources"):
        free_env_runner_slots({}, {"CPU": 4}, {"CPU": 4})


def test_target_is_the_desired_count_within_one_and_the_spec_maximum():
    from vpt_ray.rl.algorithm import PPGConfig

    config = PPGConfig().env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5,
                                     custom_resources_per_env_runner={"rollout": 0.5})  # fmt: skip
    config.max_env_runners = 5
    assert [target_env_runners(config, d) for d in (None, 3, 9, 0, 1)] == [5, 3, 5, 1, 1]
    config.max_env_runners = None  # a config built by hand: the starting count is the maximum
    assert target_env_runners(config, None) == 2
    assert env_runner_demand(config) == {"CPU": 0.5, "rollout": 0.5}


def test_rllib_private_apis_used_for_elasticity_still_exist():
    """Growing with unused worker indices and shrinking one runner use RLlib internals (pinned to 2.60): an
    upgrade that renames them must fail here, not in a running job."""
    from ray.rllib.env.env_runner_group import EnvRunnerGroup
    from ray.rllib.utils.actor_manager import FaultTolerantActorManager

    params = inspect.signature(EnvRunnerGroup._make_worker).parameters
    assert {"env_creator", "validate_env", "worker_index", "num_workers", "config"} <= set(params)
    source = inspect.getsource(EnvRunnerGroup.__init__) + inspect.getsource(EnvRunnerGroup._setup)
    for name in ("self._worker_manager", "self._env_creator", "self._remote_config_obj_ref"):
        assert name in source, name
    manager = FaultTolerantActorManager(init_id=1)  # as EnvRunnerGroup builds it: ids 1, 2, ... never reused
    assert manager._next_id == 1 and manager.actor_ids() == []
    assert "init_id=1" in source
    assert list(inspect.signature(FaultTolerantActorManager.remove_actor).parameters) == ["self", "actor_id"]
    assert "self._next_id += 1" in inspect.getsource(FaultTolerantActorManager.add_actors)
    # RLlib's stop waits without a timeout on every runner (why the algorithm drops runners without a node first).
    assert "healthy_only=False" in inspect.getsource(EnvRunnerGroup.stop)


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def cluster():
    """A fresh multi-node cluster of our own (the session's local Ray is shut down first)."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    c = Cluster()
    yield c
    ray.shutdown()
    c.shutdown()


def _start(cluster, head_cpus: int):
    import ray

    cluster.add_node(num_cpus=head_cpus, include_dashboard=False, **NODE)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)


def _algo(task_path, num_env_runners: int):
    from vpt_ray.rl.algorithm import PPGConfig
    from vpt_ray.spec import load_task

    return PPGConfig.from_spec(load_task(task_path), num_env_runners=num_env_runners).build_algo()


def _train(algo) -> dict[str, float]:
    s = iteration_scalars(algo.train())
    print({k: s[k] for k in s if k.startswith("env_runners/")}, "iteration", s["ppg/iteration"],
          "steps", s["env/steps"], flush=True)  # fmt: skip
    return s


def _train_until(algo, done, results: list, timeout_s: float = 180.0) -> dict[str, float]:
    """Train until ``done(scalars)`` (runner processes take 10-60 s to start on 2 busy cores); returns the last."""
    deadline = time.monotonic() + timeout_s
    while True:
        results.append(_train(algo))
        if done(results[-1]) or time.monotonic() > deadline:
            return results[-1]


def _runner_info(algo) -> dict[int, tuple]:
    """actor id -> (worker index, env seed, node id, pid) of every runner that is up."""
    import ray

    group = algo.env_runner_group
    ids = group.healthy_env_runner_ids()
    info = group.foreach_env_runner(
        lambda er: (er.worker_index, er._seed, ray.get_runtime_context().get_node_id(), os.getpid()),
        local_env_runner=False, remote_worker_ids=ids, timeout_seconds=60,
    )  # fmt: skip
    return dict(zip(ids, info))


def _steps_sampled(algo) -> list[int]:
    """Env steps each runner has taken (its sub-env's episode never ends for RLlib: ContinuingEnv)."""
    return algo.env_runner_group.foreach_env_runner(
        lambda er: er._ongoing_episodes[0].t_started if er._ongoing_episodes[0] is not None else 0,
        local_env_runner=False, timeout_seconds=60,
    )  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -------------------------------------------------------------------------------------------- scenarios
@pytest.mark.slow
def test_a_joining_node_is_filled_up_to_the_spec_maximum(cluster, rl_task):
    _start(cluster, head_cpus=1)  # room for the first runner only
    algo = _algo(rl_task(**TINY, scale={"env_runners": 3, "envs_per_env_runner": 1}), num_env_runners=1)
    try:
        first = _train(algo)
        # No free CPU: one runner waits for capacity (the demand an autoscaler answers), training goes on.
        assert (first["env_runners/total"], first["env_runners/healthy"], first["env_runners/desired"]) == (2, 1, 3)
        assert first["env_runners/added"] == 1 and first["env_runners/free_slots"] == 0
        cluster.add_node(num_cpus=2, **NODE)
        history = []
        _train_until(algo, lambda s: s["env_runners/healthy"] == 3, history)
        _train_until(algo, lambda s: min(_steps_sampled(algo)) > 0, history, timeout_s=60)
        info = _runner_info(algo)
        steps = _steps_sampled(algo)
    finally:
        algo.stop()
    last = history[-1]
    assert (last["env_runners/total"], last["env_runners/healthy"], last["env_runners/waiting"]) == (3, 3, 0)
    assert max(s["env_runners/total"] for s in history) == 3  # never past the maximum
    assert last["env_runners/added_lifetime"] == 2 and last["env_runners/removed_lifetime"] == 0
    assert [s["ppg/iteration"] for s in [first, *history]] == list(range(1, len(history) + 2))
    assert all(s["ppg/wake_minibatches"] == 2 and s["env/steps"] > 0 for s in [first, *history])  # full batches
    # All three sample, two of them on the new node, each with its own worker index and env seed.
    assert len(info) == 3 and all(n > 0 for n in steps)
    assert len({i[0] for i in info.values()}) == 3 and len({i[1] for i in info.values()}) == 3
    assert len({i[2] for i in info.values()}) == 2


@pytest.mark.slow
def test_a_leaving_node_loses_no_iteration_and_its_runner_returns_with_capacity(cluster, rl_task):
    _start(cluster, head_cpus=1)
    node = cluster.add_node(num_cpus=1, **NODE)
    cluster.wait_for_nodes()
    algo = _algo(rl_task(**TINY, scale={"env_runners": 2, "envs_per_env_runner": 1}), num_env_runners=2)
    try:
        results = [_train(algo)]
        assert (results[0]["env_runners/total"], results[0]["env_runners/healthy"]) == (2, 2)
        # The node leaves while the next iteration samples.
        remover = threading.Timer(0.5, cluster.remove_node, args=(node,))
        remover.start()
        results.append(_train(algo))
        remover.join()
        # Ray notices the node's death within seconds (health checks); the runner then waits for a node.
        _train_until(algo, lambda s: s["env_runners/waiting"] == 1, results, timeout_s=120)
        results.append(_train(algo))  # an iteration sampled by the one runner left
        # Fewer runners, same target: the lost one waits (unhealthy, pending) and nothing new is started for it.
        assert all(s["env_runners/total"] == 2 and s["env_runners/desired"] == 2 for s in results)
        assert results[-1]["env_runners/healthy"] == 1 and results[-1]["env_runners/waiting"] == 1
        assert results[-1]["env_runners/added_lifetime"] == 0
        # Capacity returns: Ray schedules the waiting runner there and RLlib's probe brings it back.
        cluster.add_node(num_cpus=1, **NODE)
        assert _train_until(algo, lambda s: s["env_runners/healthy"] == 2, results)["env_runners/healthy"] == 2
        # A node leaves again, and the job is stopped while the runner waits for a node: stop() must not hang.
        [far] = [n for n in cluster.worker_nodes if n.node_id != cluster.head_node.node_id]
        cluster.remove_node(far)
        _train_until(algo, lambda s: s["env_runners/waiting"] == 1, results, timeout_s=120)
        restarts = algo.env_runner_group.num_remote_worker_restarts()
    finally:
        t0 = time.monotonic()
        algo.stop()
        stop_s = time.monotonic() - t0
    assert stop_s < 60
    # No iteration lost: every train() call was one iteration with its full rows.
    assert [s["ppg/iteration"] for s in results] == list(range(1, len(results) + 1))
    assert all(s["ppg/wake_minibatches"] == 2 and s["env/steps"] > 0 for s in results)
    assert restarts >= 1  # the same runner came back (restarted by Ray), no new one was started for it
    assert results[-1]["env_runners/added_lifetime"] == 0


@pytest.mark.slow
def test_vpt_ray_scale_applies_at_the_next_iteration_down_and_up(ray_local, rl_task, tmp_path, capsys):
    import argparse

    from vpt_ray.cli import scale
    from vpt_ray.ledger import open_ledger

    db = tmp_path / "ledger.sqlite"
    ledger = open_ledger(path=db)
    ledger.register_run("elastic-run", "rl", {}, tmp_path)
    ledger.update_run("elastic-run", status="running")

    def scale_to(n: int) -> None:
        args = argparse.Namespace(run="elastic-run", env_runners=n, ledger=str(db))
        assert scale.run(args) == 0, capsys.readouterr().err

    # 3 runners of 1 CPU fit the 4-CPU local cluster (the learner runs in the driver).
    algo = _algo(rl_task(**TINY, scale={"env_runners": 3, "envs_per_env_runner": 1}), num_env_runners=3)

    def iteration() -> dict[str, float]:
        algo.desired_env_runners = ledger.get_desired_env_runners("elastic-run")  # what the job does
        return _train(algo)

    try:
        results = [iteration()]
        before = _runner_info(algo)
        scale_to(1)
        results.append(down := iteration())
        after_down = _runner_info(algo)
        scale_to(2)
        results.append(up := iteration())
        assert (up["env_runners/total"], up["env_runners/added"]) == (2, 1)  # at once, while it starts
        deadline = time.monotonic() + 180  # a runner process takes 10-60 s to start on 2 busy cores
        while up["env_runners/healthy"] < 2 and time.monotonic() < deadline:
            results.append(up := iteration())
        after_up = _runner_info(algo)
        scale_to(7)  # above the spec's maximum: capped
        results.append(capped := iteration())
    finally:
        algo.stop()
        ledger.close()
    first = results[0]
    assert (first["env_runners/total"], first["env_runners/desired"]) == (3, 3)
    assert (down["env_runners/total"], down["env_runners/desired"], down["env_runners/removed"]) == (1, 1, 2)
    assert list(after_down) == [1]  # the newest went first
    assert _wait_until(lambda: not any(_alive(before[i][3]) for i in (2, 3)))  # removed runners' processes end
    assert (up["env_runners/total"], up["env_runners/healthy"], up["env_runners/desired"]) == (2, 2, 2)
    # The new runner has an index no runner had before (add_workers would reuse 2) and its own env seeds.
    assert sorted(after_up) == [1, 4] and after_up[4][0] == 4
    assert after_up[4][1] not in {v[1] for v in before.values()}
    assert (capped["env_runners/desired"], capped["env_runners/total"]) == (3, 3)
    assert [s["ppg/iteration"] for s in results] == list(range(1, len(results) + 1))
    assert all(s["ppg/wake_minibatches"] == 2 and s["env/steps"] > 0 for s in results)


def _wait_until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_a_hanging_and_a_crashing_simulator_are_recreated_and_training_goes_on(ray_local, rl_task):
    # Simulators in child processes (the robust wrapper's process isolation): a hung step is killed after 3 s.
    robust = {"isolation": "process", "start_timeout_s": 120, "step_timeout_s": 3, "reset_timeout_s": 120}
    algo = _algo(rl_task(**TINY, env={"robust": robust}, scale={"env_runners": 1, "envs_per_env_runner": 2}),
                 num_env_runners=1)  # fmt: skip
    try:
        results = [_train(algo)]
        [(_, _, _, runner_pid)] = _runner_info(algo).values()
        sims = [p for p in _children(runner_pid) if "_child_main" in _cmdline(p)]
        assert len(sims) == 2, [_cmdline(p) for p in _children(runner_pid)]
        hung, crashed = sims
        os.kill(hung, signal.SIGSTOP)  # the game freezes: its next step never answers
        os.kill(crashed, signal.SIGKILL)  # the game dies
        _train_until(algo, lambda s: s["env/failures_lifetime"] >= 2, results, timeout_s=120)
        new_sims = [p for p in _children(runner_pid) if "_child_main" in _cmdline(p)]
        [(_, _, _, pid_after)] = _runner_info(algo).values()
    finally:
        if _alive(hung):
            os.kill(hung, signal.SIGKILL)
        algo.stop()
    assert results[-1]["env/failures_lifetime"] >= 2
    assert sum(s["env/failures"] for s in results) == results[-1]["env/failures_lifetime"]
    assert pid_after == runner_pid  # the wrapper recovered inside the runner; RLlib did not have to restart it
    assert len(new_sims) == 2 and not {hung, crashed} & set(new_sims)
    assert _wait_until(lambda: not _alive(hung) and not _alive(crashed))
    assert [s["ppg/iteration"] for s in results] == list(range(1, len(results) + 1))
    assert all(s["ppg/wake_minibatches"] == 2 and s["env/steps"] > 0 for s in results)
