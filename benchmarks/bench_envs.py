"""Crafter env throughput and reset time: our env (robust wrapper off, in-process, process-isolated) against the
raw ``crafter.Env`` measured in the same run. Prints JSON.

Steps/s include resets (episodes are cut at ``--episode-steps``, deaths end them earlier) and random actions.
"Per core" = steps per CPU-second of every process involved (the env process included), so process isolation
pays for its IPC there; wall-clock steps/s is reported too.

    python benchmarks/bench_envs.py [--steps 3000] [--episode-steps 500]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


class _Variant:
    """One env under test; measured in chunks so that every variant sees the same machine load."""

    def __init__(self, make, pids):
        self.env, self.step, self.reset = make()
        self.pids = pids(self.env)
        self.rng = np.random.default_rng(0)
        self.steps, self.wall, self.cpu, self.reset_s = 0, 0.0, 0.0, []
        self._timed_reset()

    def _timed_reset(self):
        t = time.perf_counter()
        self.reset()
        self.reset_s.append(time.perf_counter() - t)

    def run(self, steps: int) -> None:
        cpu0, wall0 = _cpu_seconds(self.pids), time.perf_counter()
        for _ in range(steps):
            if self.step(int(self.rng.integers(17))):
                self._timed_reset()
        self.wall += time.perf_counter() - wall0
        self.cpu += _cpu_seconds(self.pids) - cpu0
        self.steps += steps

    def result(self) -> dict:
        if hasattr(self.env, "close"):
            self.env.close()
        return {
            "steps_per_s": round(self.steps / self.wall, 1),
            "steps_per_cpu_s": round(self.steps / self.cpu, 1),
            "episodes": len(self.reset_s) - 1,
            "reset_ms_median": round(1000 * float(np.median(self.reset_s)), 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps per variant")
    parser.add_argument("--rounds", type=int, default=6, help="round-robin chunks the steps are split into")
    parser.add_argument("--episode-steps", type=int, default=500)
    parser.add_argument("--task", default="crafter-tech-tree")
    args = parser.parse_args()

    import crafter

    from vpt_ray.envs import make_env
    from vpt_ray.spec import load_task

    task = load_task(args.task)
    env_spec = dataclasses.replace(task.env, max_steps=args.episode_steps)
    me = [os.getpid()]

    def raw():
        h, w = env_spec.frame_size
        env = crafter.Env(area=env_spec.crafter.area, size=(w, h), length=args.episode_steps, seed=0)
        return env, lambda a: env.step(a)[2], env.reset

    def ours(robust: bool, isolation: str = "inprocess"):
        def make():
            robust_options = dataclasses.replace(env_spec.robust, isolation=isolation)
            spec = dataclasses.replace(task, env=dataclasses.replace(env_spec, robust=robust_options))
            env = make_env(spec, seed=0, robust=robust)

            def step(a):
                _, _, terminated, truncated, _ = env.step(a)
                return terminated or truncated

            return env, step, env.reset

        return make

    def with_child(env):
        backend = getattr(env.sim, "_backend", None)
        return me + ([backend.proc.pid] if hasattr(backend, "proc") else [])

    variants = {
        "raw_crafter": _Variant(raw, lambda env: me),
        "ours_robust_off": _Variant(ours(False), lambda env: me),
        "ours_robust_inprocess": _Variant(ours(True, "inprocess"), lambda env: me),
        "ours_robust_process": _Variant(ours(True, "process"), with_child),
    }
    for _ in range(args.rounds):
        for variant in variants.values():
            variant.run(args.steps // args.rounds)
    results = {name: variant.result() for name, variant in variants.items()}
    base = results["raw_crafter"]["steps_per_cpu_s"]
    for name, r in results.items():
        r["per_core_vs_raw"] = round(r["steps_per_cpu_s"] / base, 3)
    # Our layer (rewards, item bookkeeping, info) must cost little against the simulator itself.
    limit = 0.85
    print(
        json.dumps(
            {
                "benchmark": "crafter_env_throughput",
                "task": task.name,
                "frame_size": list(env_spec.frame_size),
                "area": list(env_spec.crafter.area),
                "episode_steps": args.episode_steps,
                "steps_per_variant": args.steps // args.rounds * args.rounds,
                "results": results,
                "limit_per_core_vs_raw": limit,
                "pass": results["ours_robust_inprocess"]["per_core_vs_raw"] >= limit,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
