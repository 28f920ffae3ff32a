"""The RL engine's speed and memory against limits and baselines measured in the same run. Prints JSON.

Two local PPG runs of a Crafter task (default ``crafter-wood`` and its ``rl:`` section: T=16, 8 rows per iteration)
with ``--runners`` env runners and one learner actor each, alive at the same time: one from scratch (no KL term),
one from a BC checkpoint with the KL term, whose frozen policy Ray Serve serves (``--init``; random weights of the
same preset: the cost does not depend on them). Measurements alternate between them in ``--rounds`` rounds (the
order flips every round) while the other run idles, so load that drifts on a shared machine hits both alike;
medians of the per-round ratios are reported.

* **sampling**: frames/s the runners produce with inference (``sample_rows`` back to back: env steps, a policy
  forward per step, RLlib's connectors, GAE, the bootstrap value) against the **limit** the same runner processes
  show in the same round: the raw env rate (ContinuingEnv(PolicyActionEnv(task env)), random actions, E sub-envs
  stepped in turn) and the batched inference rate of the same module (``forward_exploration`` at batch E, T=1,
  memory carried), combined per runner as one process does them in turn (harmonic: ``1 / (1/env + 1/inference)``)
  and summed over runners (``limit_min``: the slower of the two sums, the bound if stepping and inference
  overlapped). Also the frames/s the job sampled while training.
* **learner**: wake and sleep frames/s (each iteration's ``perf/wake_s``, ``perf/sleep_s``) against a bare
  PyTorch loop run right after each iteration in the learner's own process: a copy of the same model, AdamW,
  forward + backward + clip + step on minibatches of the same size from the learner's own rows, a loss on the
  same heads.
* **memory**: peak RSS (``VmHWM``) of every process of a run (driver, env runners, learner, Serve replica) and a
  same-run floor: a bare Ray actor that imports the same libraries, builds the same E envs and the same model and
  takes one batched step, but runs nothing of RLlib.
* **kl**: the frozen policy's log-probs per sampled frame as the runners time the Serve round trip inside
  ``sample_rows``, and sampling frames/s with the KL term against the rate without it (``added_ms_per_frame``:
  the difference in runner time per frame).

On this 2-core machine the runners, the learner and the replica share the cores: the numbers show the engine's
overheads against what the same processes can do, not cluster throughput.

    python benchmarks/bench_rl.py                                # ~5 min: 2 runners x 4 envs, crafter-wood
    python benchmarks/bench_rl.py --runners 1 --rounds 2 --iterations 3 --sample-s 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray token auth (vpt_ray.ray_session), set before Ray is imported

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402


# ----------------------------------------------------------------------------------------- process probes
def _proc_status(pid: int | str = "self") -> dict[str, float]:
    """Peak and current resident memory of a process in MiB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out["peak_rss_mib" if key == "VmHWM" else "rss_mib"] = round(int(value.split()[0]) / 1024, 1)
    return out


def _probe_runner(er, seconds: float) -> dict:
    """Inside an env runner: raw env steps/s of the runner's task env (its own fresh sub-envs, random actions) and
    the policy's batched inference frames/s (the runner's module, batch = its sub-env count, memory carried)."""
    from ray.rllib.core.columns import Columns

    from vpt_ray.rl.continuing_env import make_rl_env
    from vpt_ray.rl.module import FIRST

    n_envs = er.num_envs
    envs = [make_rl_env(er.config.env_config) for _ in range(n_envs)]
    obs = [env.reset(seed=1000 + i)[0] for i, env in enumerate(envs)]
    for env in envs:
        env.action_space.seed(0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i, env in enumerate(envs):
            obs[i] = env.step(env.action_space.sample())[0]
            steps += 1
    env_s = time.perf_counter() - t0
    for env in envs:
        env.close()

    module = er.module
    state = {k: torch.from_numpy(np.stack([v] * n_envs)) for k, v in module.get_initial_state().items()}
    batch = {Columns.OBS: torch.from_numpy(np.stack(obs)[:, None]), FIRST: torch.zeros(n_envs, 1, dtype=torch.bool)}
    frames, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        out = module.forward_exploration({**batch, Columns.STATE_IN: state})
        state = out[Columns.STATE_OUT]
        frames += n_envs
    inf_s = time.perf_counter() - t0
    return {"envs": n_envs, "env_steps_per_s": steps / env_s, "inference_frames_per_s": frames / inf_s,
            "torch_threads": torch.get_num_threads(), "pid": os.getpid()}  # fmt: skip


@ray.remote(num_cpus=0)
class MemoryFloor:
    """A bare process of one role: the same imports and the same envs / model, doing nothing RLlib does."""

    def __init__(self, task: dict, preset: dict, n_envs: int):
        from vpt_ray.config import from_dict
        from vpt_ray.models import ModelConfig, build_model
        from vpt_ray.rl.continuing_env import make_rl_env

        import ray.rllib  # noqa: F401  (a runner imports it; the floor pays for the import too)

        self.envs = [make_rl_env({"task": task}) for _ in range(n_envs)]
        for i, env in enumerate(self.envs):
            env.reset(seed=i)
            for _ in range(50):
                env.step(env.action_space.sample())
        self.model = None
        if preset:  # the model, and one batched step as a runner takes (the allocator keeps its buffers)
            self.model = build_model(from_dict(ModelConfig, preset)).eval()
            h, w, c = self.model.config.net.img_shape
            with torch.no_grad():
                self.model(torch.zeros(n_envs, 1, h, w, c, dtype=torch.uint8), torch.ones(n_envs, 1, dtype=torch.bool),
                           self.model.initial_state(n_envs))  # fmt: skip

    def memory(self) -> dict:
        return _proc_status()


# ---------------------------------------------------------------------------------------------- phases
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def probe_limit(algo, seconds: float) -> dict:
    """The runners' own limit right now: raw env rate and batched inference rate, combined per runner."""
    probes = algo.env_runner_group.foreach_env_runner(lambda er: _probe_runner(er, seconds), local_env_runner=False)
    return {
        "raw_env_steps_per_s": sum(p["env_steps_per_s"] for p in probes),
        "inference_frames_per_s": sum(p["inference_frames_per_s"] for p in probes),
        # One process steps its envs, then runs the policy: the rates combine harmonically, per runner.
        "harmonic": sum(1.0 / (1.0 / p["env_steps_per_s"] + 1.0 / p["inference_frames_per_s"]) for p in probes),
        # If stepping and inference overlapped (async envs, inference elsewhere) the slower one would bound it.
        "min": min(sum(p["env_steps_per_s"] for p in probes), sum(p["inference_frames_per_s"] for p in probes)),
    }


def sample_only(algo, seconds: float) -> dict:
    """Every runner calls ``sample_rows`` back to back for ``seconds``; frames/s over all of them."""
    group = algo.env_runner_group
    steps = calls = 0
    pretrained_s = sample_s = 0.0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for stats in group.foreach_env_runner_async_fetch_ready(lambda er: er.sample_rows()[1], tag="bench",
                                                                timeout_seconds=0.5):  # fmt: skip
            steps += stats["steps"]
            calls += 1
            sample_s += stats["sample_s"]
            pretrained_s += stats["pretrained_s"]
    # Wait for what is still in flight (counted: it ran inside the window too), so the next window starts idle.
    manager = group._worker_manager
    while manager.num_outstanding_async_reqs(tag="bench"):
        for result in manager.fetch_ready_async_reqs(tags="bench", timeout_seconds=0.5):
            stats = result.get()
            steps += stats["steps"]
            sample_s += stats["sample_s"]
            pretrained_s += stats["pretrained_s"]
    wall = time.perf_counter() - t0
    return {"frames_per_s": steps / wall, "frames": steps, "calls": calls, "seconds": wall,
            "runner_ms_per_frame_sampling": 1e3 * sample_s / max(steps, 1),
            "runner_ms_per_frame_kl_targets": 1e3 * pretrained_s / max(steps, 1)}  # fmt: skip


def bare_training_rate(learner, seconds: float) -> float:
    """In a learner's process: frames/s of forward + backward + AdamW step of a copy of its model on minibatches of
    its own buffered rows (the wake phase's minibatch size)."""
    from ray.rllib.core.columns import Columns

    from vpt_ray.rl.module import FIRST

    policy = copy.deepcopy(learner.policy).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    rows, size = learner._sleep_buffer[-1], learner.config.rows_per_learner_minibatch
    n = len(rows[Columns.OBS])
    frames, t0, i = 0, None, 0
    while t0 is None or time.perf_counter() - t0 < seconds:
        idx = np.arange(i, i + size) % n
        i += size
        obs = torch.as_tensor(rows[Columns.OBS][idx])
        first = torch.as_tensor(rows[FIRST][idx])
        state = {k: torch.as_tensor(v[idx]) for k, v in rows[Columns.STATE_IN].items()}
        actions = {k: torch.as_tensor(v[idx]) for k, v in rows[Columns.ACTIONS].items()}
        out = policy(obs, first, state)
        loss = -policy.log_prob(out.logprobs, actions).mean() + out.vpred.pow(2).mean() + out.aux_vpred.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 5.0)
        optimizer.step()
        if t0 is None:  # the first step (allocations, Adam state) is warm-up
            t0 = time.perf_counter()
            continue
        frames += obs.shape[0] * obs.shape[1]
    return frames / (time.perf_counter() - t0)


def train_and_compare_learner(algo, iterations: int, bare_s: float) -> dict:
    """PPG iterations; after each (from the second: buffers filled, warm) the bare loop runs in the learner's own
    process for ``bare_s``, so each wake/sleep rate has its baseline from the same minute."""
    from vpt_ray.rl.algorithm import iteration_scalars

    cfg = algo.config
    t_len = cfg.get_rollout_fragment_length()
    rows = []
    for k in range(iterations):
        t0 = time.perf_counter()
        s = iteration_scalars(algo.train())
        wall = time.perf_counter() - t0
        row = {"iteration": int(s["ppg/iteration"]), "wall_s": wall, "sampled_frames": s["env/steps"],
               "wake_frames_per_s": cfg.rows_per_iteration * t_len / s["perf/wake_s"],
               "sleep_frames_per_s": s["ppg/sleep_minibatches"] * cfg.rows_per_minibatch * t_len / s["perf/sleep_s"]
               if s.get("perf/sleep_s") else float("nan")}  # fmt: skip
        if k > 0:
            [bare] = [r.get() for r in algo.learner_group.foreach_learner(
                lambda learner: bare_training_rate(learner, bare_s)).result_or_errors]  # fmt: skip
            row["baseline_bare_torch_frames_per_s"] = bare
        rows.append(row)
        log(f"  iteration {row['iteration']}: {wall:.1f} s, wake {row['wake_frames_per_s']:.0f} frames/s, sleep "
            f"{row['sleep_frames_per_s']:.0f} frames/s, bare {row.get('baseline_bare_torch_frames_per_s', 0):.0f}")
    steady = rows[1:] or rows
    paired = [r for r in steady if "baseline_bare_torch_frames_per_s" in r]
    wake = [r["wake_frames_per_s"] / r["baseline_bare_torch_frames_per_s"] for r in paired]
    sleep = [r["sleep_frames_per_s"] / r["baseline_bare_torch_frames_per_s"] for r in paired]
    return {
        "wake_frames_per_s": round(median([r["wake_frames_per_s"] for r in steady]), 1),
        "sleep_frames_per_s": round(median([r["sleep_frames_per_s"] for r in steady]), 1),
        "baseline_bare_torch_frames_per_s": round(median([r["baseline_bare_torch_frames_per_s"] for r in paired]), 1),
        "wake_vs_baseline": round(median(wake), 3),
        "sleep_vs_baseline": round(median(sleep), 3),
        "sampled_frames_per_s_while_training": round(sum(r["sampled_frames"] for r in steady)
                                                     / sum(r["wall_s"] for r in steady), 1),
        "iteration_s_median": round(median([r["wall_s"] for r in steady]), 2),
        "rows_per_minibatch": cfg.rows_per_minibatch, "T": t_len,
        "iterations": [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
    }  # fmt: skip


def memory_report(algo) -> dict:
    """Peak and current RSS of the run's processes: driver, env runners, learner(s), Serve replica(s)."""
    out = {"driver": _proc_status(),
           "env_runners": algo.env_runner_group.foreach_env_runner(lambda er: _proc_status(), local_env_runner=False),
           "learners": [r.get() for r in algo.learner_group.foreach_learner(lambda l: _proc_status()).result_or_errors]}
    app = getattr(algo, "_pretrained_app", None)
    out["serve_replicas"] = [_proc_status(s["pid"]) for s in app.stats()] if app is not None else []
    procs = [out["driver"], *out["env_runners"], *out["learners"], *out["serve_replicas"]]
    out["total_peak_rss_mib"] = round(sum(p["peak_rss_mib"] for p in procs), 1)
    return out


def median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def build(task, runners: int, init: str | None, name: str):
    from vpt_ray.rl.algorithm import PPGConfig

    t0 = time.perf_counter()
    algo = PPGConfig.from_spec(task, init=init, kl=init is not None, run_id=f"bench-{name}",
                               num_env_runners=runners).build_algo()  # fmt: skip
    log(f"[{name}] built in {time.perf_counter() - t0:.0f} s")
    return algo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="crafter-wood", help="a Crafter task with an rl: section")
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--envs-per-runner", type=int, help="default: the task's rl.scale.envs_per_env_runner")
    parser.add_argument("--iterations", type=int, default=6, help="training iterations without KL (a third with)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds (medians reported)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds of sampling per run and round")
    parser.add_argument("--probe-s", type=float, default=4.0, help="seconds per limit probe (env, inference)")
    parser.add_argument("--bare-s", type=float, default=3.0, help="seconds of the bare loop after each iteration")
    args = parser.parse_args()

    import dataclasses

    from vpt_ray.config import to_dict
    from vpt_ray.models import build_model, load_preset, save_checkpoint
    from vpt_ray.spec import load_task, task_to_dict

    task = load_task(args.task)
    if task.rl is None or task.env.kind != "crafter":
        raise SystemExit(f"--task {args.task}: needs a Crafter task with an rl: section")
    scale = task.rl.scale
    if args.envs_per_runner:
        scale = dataclasses.replace(scale, envs_per_env_runner=args.envs_per_runner)
    # One learner actor per run (its own process, measured apart from the driver); a logical CPU for every actor
    # (the physical cores are shared anyway, and each window measures one run while the other idles).
    scale = dataclasses.replace(scale, env_runners=args.runners, num_learners=1, cpus_per_learner=1.0,
                                serve=dataclasses.replace(scale.serve, cpus_per_replica=1.0))  # fmt: skip
    task = dataclasses.replace(task, rl=dataclasses.replace(task.rl, scale=scale))
    preset = load_preset(task.rl.policy)

    ray.init(address="local", num_cpus=2 * args.runners + 3, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    t_start = time.perf_counter()
    runs = {}
    try:
        floors = {}
        for role, n_envs, model in (("env_runner", scale.envs_per_env_runner, to_dict(preset)), ("driver", 0, None)):
            actor = MemoryFloor.remote(task_to_dict(task), model, n_envs)
            floors[role] = ray.get(actor.memory.remote())
            ray.kill(actor)
        with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
            torch.manual_seed(0)
            init = str(save_checkpoint(build_model(preset), Path(tmp) / "bc"))
            # Both runs live at once; every measurement window uses one while the other idles.
            runs["scratch"] = build(task, args.runners, None, "scratch")
            runs["kl"] = build(task, args.runners, init, "kl")
            windows = {"limit": [], "scratch": [], "kl": []}
            for r in range(args.rounds):
                order = ["limit", "scratch", "kl"] if r % 2 == 0 else ["kl", "scratch", "limit"]
                for what in order:
                    if what == "limit":
                        windows[what].append(probe_limit(runs["scratch"], args.probe_s))
                    else:
                        windows[what].append(sample_only(runs[what], args.sample_s))
                log(f"[round {r + 1}] limit {windows['limit'][-1]['harmonic']:.0f} frames/s, sampling "
                    f"{windows['scratch'][-1]['frames_per_s']:.0f}, with KL {windows['kl'][-1]['frames_per_s']:.0f}")
            log("[scratch] training")
            learner = train_and_compare_learner(runs["scratch"], args.iterations, args.bare_s)
            log("[kl] training")
            learner_kl = train_and_compare_learner(runs["kl"], max(2, args.iterations // 3), args.bare_s)
            memory = {name: memory_report(algo) for name, algo in runs.items()}
    finally:
        for algo in runs.values():
            algo.stop()  # deletes the run's Serve app; ray.shutdown() then takes Serve's controller down with Ray
        ray.shutdown()

    lim, smp, kl = windows["limit"], windows["scratch"], windows["kl"]
    sampling_vs_limit = [s["frames_per_s"] / l["harmonic"] for s, l in zip(smp, lim)]
    kl_vs_baseline = [k["frames_per_s"] / s["frames_per_s"] for k, s in zip(kl, smp)]
    added = [1e3 * args.runners * (1 / k["frames_per_s"] - 1 / s["frames_per_s"]) for k, s in zip(kl, smp)]
    runner_floor = floors["env_runner"]["peak_rss_mib"]
    report = {
        "benchmark": "PPG on RLlib: sampling vs env+inference limit, learner vs bare PyTorch, peak memory, "
                     "Serve KL targets per sampled frame",
        "task": task.name, "policy": task.rl.policy, "T": task.rl.context_len, "runners": args.runners,
        "envs_per_runner": scale.envs_per_env_runner, "rounds": args.rounds,
        "sampling": {
            "frames_per_s": round(median([s["frames_per_s"] for s in smp]), 1),
            "limit_frames_per_s": round(median([l["harmonic"] for l in lim]), 1),
            "sampling_vs_limit": round(median(sampling_vs_limit), 3),
            "limit_min_frames_per_s": round(median([l["min"] for l in lim]), 1),
            "raw_env_steps_per_s": round(median([l["raw_env_steps_per_s"] for l in lim]), 1),
            "inference_frames_per_s": round(median([l["inference_frames_per_s"] for l in lim]), 1),
            "runner_ms_per_frame": round(median([s["runner_ms_per_frame_sampling"] for s in smp]), 3),
            "while_training_frames_per_s": learner["sampled_frames_per_s_while_training"],
        },
        "learner": {k: v for k, v in learner.items() if k != "iterations"},
        "memory": {
            "total_peak_rss_mib": memory["scratch"]["total_peak_rss_mib"],
            "total_peak_rss_mib_with_kl": memory["kl"]["total_peak_rss_mib"],
            "env_runner_peak_rss_mib": max(p["peak_rss_mib"] for p in memory["scratch"]["env_runners"]),
            "env_runner_vs_baseline_floor": round(max(p["peak_rss_mib"] for p in memory["scratch"]["env_runners"])
                                                  / runner_floor, 3),
            "learner_peak_rss_mib": max(p["peak_rss_mib"] for p in memory["scratch"]["learners"]),
            "learner_vs_baseline_floor": round(max(p["peak_rss_mib"] for p in memory["scratch"]["learners"])
                                               / runner_floor, 3),
            "serve_replica_peak_rss_mib": max((p["peak_rss_mib"] for p in memory["kl"]["serve_replicas"]),
                                              default=None),
            "baseline_floor_process_mib": runner_floor,
            "baseline_floor_imports_only_mib": floors["driver"]["peak_rss_mib"],
        },
        "kl": {
            "runner_ms_per_frame_kl_targets": round(median([k["runner_ms_per_frame_kl_targets"] for k in kl]), 3),
            "runner_ms_per_frame_sampling_with_kl": round(median([k["runner_ms_per_frame_sampling"] for k in kl]), 3),
            "frames_per_s_with_kl": round(median([k["frames_per_s"] for k in kl]), 1),
            "baseline_frames_per_s_without_kl": round(median([s["frames_per_s"] for s in smp]), 1),
            "kl_vs_baseline": round(median(kl_vs_baseline), 3),
            "added_ms_per_frame_end_to_end": round(median(added), 3),
            "wake_frames_per_s_with_kl": learner_kl["wake_frames_per_s"],
        },
        "details": {"limit_windows": lim, "sampling_windows": smp, "kl_windows": kl, "floors": floors,
                    "memory": memory, "learner_iterations": learner["iterations"],
                    "learner_iterations_with_kl": learner_kl["iterations"]},  # fmt: skip
        "machine": {"torch": torch.__version__, "ray": ray.__version__, "cpus": os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(),
                    "load_avg_1m": round(os.getloadavg()[0], 1)},  # fmt: skip
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
