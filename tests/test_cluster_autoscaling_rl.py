"""An RL job on the local autoscaling cluster of cluster/vpt.yaml (Ray's fake multi-node provider): `vpt-ray scale`
asks a running `vpt-ray rl` job for another env runner, the autoscaler adds a rollout node for it, the runner
samples there, and the job trains on throughout; when the job ends, the rollout nodes are given back.

The job is the real CLI (`vpt-ray rl --address HEAD`) in its own process, on a tiny crafter-wood task whose env
runners ask for `{"CPU": 1, "rollout": 1}` as the cluster's spec does; the head has no CPU (as in vpt.yaml), so
every runner needs a rollout node, which starts at 0 nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_cluster_autoscaling import _node_types, _wait, fake_autoscaling_cluster

from vpt_ray.rl.job import PROGRESS_FILE

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "autoscaled-rl"
# 4 rows of 8 steps per iteration, one sleep pass, one env per runner: iterations stay short on 2 busy cores.
TINY = dict(context_len=8, batch_size=2, batches_per_iteration=2, sleep_cycles=1, sleep_max_sample_reuse=2,
            checkpoint_every=1000)  # fmt: skip
# Ample for the second runner to come (it takes 4-5 iterations on 2 busy cores) and train a while.
ITERATIONS = 30


def _progress(run_dir: Path) -> list[dict]:
    path = run_dir / PROGRESS_FILE
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # the job may be writing the last one


def _runner_nodes() -> dict[str, str]:
    """Live env runner actors of any job -> the node each runs on (Ray's actor table in the GCS)."""
    from ray._private.state import actors

    return {a["ActorID"]: a["Address"]["NodeID"] for a in actors().values()
            if a["ActorClassName"] == "VPTEnvRunner" and a["State"] == "ALIVE"}  # fmt: skip


def _rollout_node_ids(ray) -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and "rollout" in n["Resources"]}


@pytest.mark.parametrize("cluster_yaml", ["vpt.yaml", "vpt-gcp.yaml"])
def test_the_cluster_spec_asks_env_runners_for_what_only_rollout_nodes_have(cluster_yaml):
    from vpt_ray.spec import load_task

    scale = load_task("minerl-diamond-pickaxe").rl.scale
    assert (scale.cpus_per_env_runner, scale.env_runner_resources) == (1, {"rollout": 1})
    types = yaml.safe_load((REPO / "cluster" / cluster_yaml).read_text())["available_node_types"]
    rollout = {name: t for name, t in types.items() if set(scale.env_runner_resources) <= set(t["resources"])}
    assert rollout and sorted(rollout) == sorted(name for name in types if name.startswith("cpu_rollout"))
    # `rollout` counts vCPUs (where the file states them): one runner per core; the spec's maximum fits them all.
    for t in rollout.values():
        assert t["resources"]["rollout"] == t["resources"].get("CPU", t["resources"]["rollout"])
    assert scale.env_runners <= sum(t["max_workers"] * t["resources"]["rollout"] for t in rollout.values())
    readme = (REPO / "cluster" / "README.md").read_text()
    assert '`{"CPU": 1, "rollout": 1}`' in readme and "`rl.scale.env_runner_resources: {rollout: 1}`" in readme


@pytest.mark.slow
def test_vpt_ray_scale_grows_rollout_nodes_for_a_running_rl_job(rl_task, tmp_path):
    from vpt_ray.cli import main as cli
    from vpt_ray.ledger import open_ledger
    from vpt_ray.rl.metrics import read_scalars

    t0 = time.monotonic()
    task = rl_task("rl-autoscale", **TINY, scale={"env_runners": 2, "envs_per_env_runner": 1,
                                                   "env_runner_resources": {"rollout": 1}})  # fmt: skip
    run_dir, db = tmp_path / "run", tmp_path / "ledger.sqlite"
    # The operator starts the run small: one env runner until `vpt-ray scale` asks for more (the spec allows 2).
    with open_ledger(path=db) as ledger:
        ledger.register_run(RUN_ID, "rl", {}, run_dir)
    assert cli(["scale", RUN_ID, "--env-runners", "1", "--ledger", str(db)]) == 0
    timeline = []  # (seconds since the start, rollout nodes, iterations done) at each change: for the record

    with fake_autoscaling_cluster(head_cpus=0) as (ray, address):
        assert _node_types(ray) == []
        env = {**os.environ, "VPT_LEDGER": str(db), "VPT_RUN_ID": RUN_ID,
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        env.pop("RAY_ADDRESS", None)
        log_path = tmp_path / "job.log"
        log = open(log_path, "w")
        job = subprocess.Popen(
            [str(Path(sys.executable).with_name("vpt-ray")), "rl", "--address", address, "--task", str(task),
             "--out", str(run_dir), "--iterations", str(ITERATIONS)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

        def running_until(predicate):
            def check():
                if job.poll() is not None:
                    raise AssertionError(f"the job ended early: {log_path.read_text()[-3000:]}")
                progress = _progress(run_dir)
                now = (len(_rollout_node_ids(ray)), len(progress))
                if not timeline or timeline[-1][1:] != now:
                    timeline.append((round(time.monotonic() - t0), *now))
                return predicate(progress)

            return check

        try:
            # The job's first runner needs a rollout node: the autoscaler adds one and the job trains on it.
            _wait(running_until(lambda p: len(p) >= 2), 240, "the job's first two iterations")
            first_node = _rollout_node_ids(ray)
            assert _node_types(ray) == ["rollout"]
            assert list(_runner_nodes().values()) == list(first_node)
            scaled_after = len(_progress(run_dir))

            # A second runner through the ledger, applied at the job's next iteration: it waits for capacity, the
            # autoscaler adds a node for it, it starts there and samples while the job keeps iterating.
            assert cli(["scale", RUN_ID, "--env-runners", "2", "--ledger", str(db)]) == 0
            t_scale = time.monotonic()
            _wait(running_until(lambda p: p[-1]["env_runners/sampled"] == 2), 240, "rows from the second runner")
            t_sampled = time.monotonic()
            peak_nodes, peak_types, runners = _rollout_node_ids(ray), _node_types(ray), _runner_nodes()

            rc = job.wait(timeout=300)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
            log.close()
        out = log_path.read_text()
        assert rc == 0, out[-3000:]
        t_end = time.monotonic()
        # Its runners gone, the rollout nodes idle out (6 s here) and are removed.
        _wait(lambda: _node_types(ray) == [], 120, "idle rollout nodes to be removed")
        t_down = time.monotonic()

    print("timeline (s, rollout nodes, iterations):", timeline)
    print(f"scale -> second runner's rows {t_sampled - t_scale:.0f} s, job end -> nodes removed "
          f"{t_down - t_end:.0f} s, total {time.monotonic() - t0:.0f} s")
    progress = _progress(run_dir)
    # Each iteration reads the ledger as it starts: the one under way during the scale may still run with 1.
    grown = next(i for i, p in enumerate(progress) if p["env_runners/desired"] == 2)
    assert grown in (scaled_after, scaled_after + 1)
    before, after = progress[:grown], progress[grown:]
    # One runner on one rollout node before the scale.
    assert all((p["env_runners/desired"], p["env_runners/total"], p["env_runners/healthy"], p["env_runners/sampled"])
               == (1, 1, 1, 1) for p in before)  # fmt: skip
    # Then a second node for the second runner (one runner per node), nothing else: no learner node.
    assert peak_types == ["rollout", "rollout"] and first_node < peak_nodes
    assert sorted(runners.values()) == sorted(peak_nodes)
    assert (after[0]["env_runners/desired"], after[0]["env_runners/total"], after[0]["env_runners/added"]) == (2, 2, 1)
    # The job trained on while the node came: iterations sampled by the first runner, the new one waiting.
    waited = [p for p in after if p["env_runners/waiting"] == 1]
    assert waited and waited[0]["env_runners/sampled"] == 1
    # Once up, both runners deliver rows (nearly every iteration: 4 rows can come from one of them) to the end.
    both = [p for p in after if p["env_runners/healthy"] == 2]
    assert both and all(p["env_runners/total"] == 2 for p in after)
    assert sum(p["env_runners/sampled"] == 2 for p in both) >= 0.75 * len(both)
    # TensorBoard shows the same.
    healthy = [v for _, v in read_scalars(run_dir / "tensorboard")["env_runners/healthy"]]
    assert healthy == [p["env_runners/healthy"] for p in progress]
    # Every iteration, consecutive, with full minibatches; the job ended by itself and says so in the ledger.
    assert [p["iteration"] for p in progress] == list(range(1, ITERATIONS + 1))
    assert all(p["ppg/wake_minibatches"] == 2 and p["env/steps"] > 0 for p in progress)
    assert (run_dir / "final" / "model.yaml").is_file()
    with open_ledger(path=db) as ledger:
        record = ledger.get_run(RUN_ID)
    assert (record.status, record.iteration, record.desired_env_runners) == ("succeeded", ITERATIONS, 2)
