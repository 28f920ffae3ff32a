"""What the frozen BC policy on Ray Serve costs an env runner per sampled frame, against computing the same frozen
forward locally in the runner, in the same run. Prints JSON.

N caller actors stand in for env runners. Each round, every caller sends one row of T frames (memory state
carried from its previous row, as ``VPTEnvRunner`` does) and they all send at once, so the replica batches up to
N rows into one forward: ``serve``. In the same round every caller also runs the identical forward on its own
copy of the model with its own carried state: ``local``. All callers do one way, then all the other; rounds
alternate which comes first, so both see the same load.

Reported per setting (medians over rounds, per sampled frame = per row / T):
* ``serve_ms_per_frame`` / ``local_ms_per_frame``: the caller's wall time waiting for the log-probs;
  ``serve_over_local``: their ratio (< 1: Serve is cheaper for the runner than computing locally);
* ``*_caller_cpu_ms_per_frame``: CPU the caller itself spends (Serve frees it for stepping envs);
* ``replica_forward_ms_per_frame``, ``mean_batch_size`` and ``batch_sizes`` from the replica's own stats;
  ``round_trip_overhead_ms`` = the caller's wait per row minus the replica's mean forward time per batch
  (serialisation, routing, the batching wait, waiting behind another batch);
* ``max_abs_logprob_diff``: Serve's answers against the local forward (must be ~1e-6).

On this 2-core machine the callers and the replica share the cores, and on a CPU a batched forward costs about the
same per frame as N separate ones (the Impala CNN dominates): one replica then does all N callers' work while
local computing spreads it over the cores. The numbers say what the round trip adds and what it frees on the
caller, not what a cluster (runners on their own CPUs, replicas on GPUs) would see end to end.

    python benchmarks/bench_serving.py                                     # crafter small: N=1,4,8; vpt-1x: N=2
    python benchmarks/bench_serving.py --presets crafter-policy-small --callers 1 2 4 8 16 --rounds 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray token auth (vpt_ray.ray_session), set before Ray is imported

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from vpt_ray.models import build_model, load_checkpoint, load_preset, save_checkpoint  # noqa: E402
from vpt_ray.rl.serving import PretrainedApp, PretrainedClient  # noqa: E402

# preset -> (row length T, caller counts, rounds). vpt-1x rows are short: a 128-frame row of the 71 M-parameter
# model takes seconds per caller on this CPU (pass --T 128 on a bigger machine).
DEFAULTS = {"crafter-policy-small": (32, [1, 4, 8], 8), "vpt-1x": (16, [2], 3)}


@ray.remote(num_cpus=1)
class Caller:
    """An env runner's view: one stream of rows, its frozen memory carried for both ways of computing."""

    def __init__(self, checkpoint: str, app_name: str, t: int, seed: int):
        torch.set_num_threads(1)  # env runners run one torch thread per CPU
        self.policy = load_checkpoint(checkpoint)
        self.client = PretrainedClient(app_name, timeout_s=600)
        self.rng = np.random.default_rng(seed)
        h, w, _ = self.policy.config.net.img_shape
        self.shape = (t, h, w, 3)
        self.serve_state = None
        self.local_state = None
        self.rows = 0

    def warm_up(self) -> None:
        self.next_row()
        for mode in ("serve", "local"):
            self.step(mode)

    def next_row(self) -> None:
        frames = self.rng.integers(0, 256, self.shape, dtype=np.uint8)
        first = np.zeros(self.shape[0], dtype=bool)
        first[0] = self.rows % 8 == 0  # an episode every 8 rows: memory both carried and cut
        self.rows += 1
        self.row, self.got = (frames, first), {}

    def step(self, mode: str, start_at: float = 0.0) -> dict:
        """The current row's log-probs one way (``serve`` or ``local``), sent at ``start_at`` like every caller."""
        frames, first = self.row
        time.sleep(max(0.0, start_at - time.time()))
        wall, cpu = time.perf_counter(), time.process_time()
        if mode == "serve":
            reply = self.client.logprobs([{"frames": frames, "first": first, "state": self.serve_state}])[0]
            self.serve_state, self.got[mode] = reply["state"], reply["logprobs"]
        else:
            with torch.inference_mode():
                res = self.policy(torch.from_numpy(frames[None]), torch.from_numpy(first[None]), self.local_state)
            self.local_state, self.got[mode] = res.state, {k: v[0].numpy() for k, v in res.logprobs.items()}
        out = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        if len(self.got) == 2:
            out["max_abs_diff"] = max(float(np.abs(self.got["serve"][k] - self.got["local"][k]).max())
                                      for k in self.got["local"])  # fmt: skip
        return out


def bench_setting(checkpoint: Path, app: PretrainedApp, t: int, n: int, rounds: int) -> dict:
    callers = [Caller.remote(str(checkpoint), app.name, t, seed) for seed in range(n)]
    ray.get([c.warm_up.remote() for c in callers])
    before = app.stats()[0]
    samples: dict[str, list[dict]] = {"serve": [], "local": []}
    diffs = []
    for r in range(rounds):
        ray.get([c.next_row.remote() for c in callers])
        for mode in ("serve", "local") if r % 2 == 0 else ("local", "serve"):  # all callers one way, then the other
            start_at = time.time() + 0.2
            for out in ray.get([c.step.remote(mode, start_at) for c in callers]):
                samples[mode].append(out)
                diffs += [out["max_abs_diff"]] if "max_abs_diff" in out else []
    after = app.stats()[0]
    for c in callers:
        ray.kill(c)
    batches = after["batch_sizes"][len(before["batch_sizes"]):]
    frames = after["frames"] - before["frames"]
    forward_s = after["forward_s"] - before["forward_s"]
    serve_wall, local_wall = (statistics.median(s["wall_s"] for s in samples[mode]) for mode in ("serve", "local"))
    forward_per_batch = forward_s / max(len(batches), 1)
    return {
        "T": t,
        "callers": n,
        "rounds": rounds,
        "serve_ms_per_frame": round(1e3 * serve_wall / t, 3),
        "local_ms_per_frame": round(1e3 * local_wall / t, 3),
        "serve_over_local": round(serve_wall / local_wall, 3),
        "serve_caller_cpu_ms_per_frame": round(1e3 * statistics.median(s["cpu_s"] for s in samples["serve"]) / t, 3),
        "local_caller_cpu_ms_per_frame": round(1e3 * statistics.median(s["cpu_s"] for s in samples["local"]) / t, 3),
        "replica_forward_ms_per_frame": round(1e3 * forward_s / max(frames, 1), 3),
        "mean_batch_size": round(sum(batches) / max(len(batches), 1), 2),
        "batch_sizes": batches,
        "round_trip_overhead_ms": round(1e3 * (serve_wall - forward_per_batch), 1),
        "max_abs_logprob_diff": max(diffs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULTS))
    parser.add_argument("--callers", nargs="+", type=int, help="caller counts N (default: per preset)")
    parser.add_argument("--rounds", type=int, help="rows per caller and mode (default: per preset)")
    parser.add_argument("--T", type=int, help="frames per row (default: per preset)")
    parser.add_argument("--batch-wait", type=float, default=0.02, help="Serve batch_wait_timeout_s")
    parser.add_argument("--replica-cpus", type=int, default=os.cpu_count(),
                        help="CPUs (= torch threads) of the replica; default: all cores, which the callers leave "
                             "idle while they wait on Serve")  # fmt: skip
    args = parser.parse_args()

    max_callers = max(args.callers or [n for p in args.presets for n in DEFAULTS.get(p, (0, [1], 0))[1]])
    ray.init(address="local", num_cpus=max_callers + args.replica_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    results, t_start = [], time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
            for preset in args.presets:
                t, counts, rounds = DEFAULTS.get(preset, (16, [1, 4], 5))
                t, counts, rounds = args.T or t, args.callers or counts, args.rounds or rounds
                torch.manual_seed(0)
                model = build_model(load_preset(preset)).eval()
                params = sum(p.numel() for p in model.parameters())
                checkpoint = save_checkpoint(model, Path(tmp) / preset)
                del model
                app = PretrainedApp.start(checkpoint, name=f"bench-serving-{preset}", num_cpus=args.replica_cpus,
                                          max_batch_size=max(counts), batch_wait_timeout_s=args.batch_wait)  # fmt: skip
                try:
                    for n in counts:
                        row = bench_setting(checkpoint, app, t, n, rounds)
                        results.append({"preset": preset, "params": params, **row})
                        print(json.dumps(results[-1]), flush=True)
                finally:
                    app.stop()
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    report = {
        "benchmark": "frozen-policy log-probs from Ray Serve vs the same forward in the caller (ms per frame)",
        "baseline": "local: the identical frozen forward (same row, same carried memory) in the caller process, "
                    "timed in the same rounds as the Serve round trip",
        "machine": {"torch": torch.__version__, "cpus": os.cpu_count(), "cpu": platform.processor()
                    or platform.machine(), "device": "cpu", "batch_wait_timeout_s": args.batch_wait,
                    "replica_cpus": args.replica_cpus},  # fmt: skip
        "results": results,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
