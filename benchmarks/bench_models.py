"""Forward throughput of the VPT networks (frames/s), ours against a bare-torch reference in the same run. Prints JSON.

Modes
* ``infer``: policies make N calls of T=1 carrying the recurrent state (what env runners do; ``infer:BxN``), no
  grad; an IDM has no state, so its ``infer:BxT`` is one no-grad call on a B x T clip (what labeling does).
* ``train``: one forward + backward on a B x T chunk (what BC/RL learners do).

Baseline ("bare"): see BASELINE below. Frames/s are given per wall-clock second and per CPU-second of this
process (steadier on a shared machine). The default is one torch thread: numbers are per core, which is how
env runners run the policy, and small models lose to thread synchronisation on a busy 2-core machine.

    python benchmarks/bench_models.py                       # default: small presets + vpt-1x at small batch
    python benchmarks/bench_models.py --presets vpt-1x --settings infer:1x1 infer:8x1 train:2x128
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.nn import functional as F

from vpt_ray.models import InverseDynamicsModel, VPTPolicy, build_model, load_preset
from vpt_ray.models.attention import clipped_causal_mask, episode_ids

BASELINE = (
    "bare: the same modules with the same weights called directly (Impala CNN, dense layers, each block's layer "
    "norm, attention core over the same memory length, MLP, last layer, heads) with one precomputed "
    "clipped-causal band mask and none of our wrapper's work (input checks, per-call episode masks, state "
    "update and stacking, value denormalisation, output dataclass); ours_over_bare near 1 means the wrapper "
    "costs nothing noticeable. Ours and bare are timed alternately so that both see the same machine load."
)
DEFAULT_SETTINGS = {
    "crafter-policy-small": ["infer:1x8", "infer:16x8", "train:16x32"],
    "crafter-idm-small": ["infer:4x32", "train:4x32"],
    # The released chunk is 128 frames; on 2 CPU cores a 1x128 training step takes minutes, so the default
    # uses short chunks (pass --settings train:1x128 on a bigger machine).
    "vpt-1x": ["infer:1x4", "infer:4x2", "train:1x8"],
}


def bare_policy(model: VPTPolicy, frames, mem_k, mem_v, allowed):
    """The policy's math with the modules called directly (no checks, no episode masks, no state update)."""
    net = model.net
    x = net.img_process(frames.float() / 255.0)
    if net.pre_lstm_ln is not None:
        x = net.pre_lstm_ln(x)
    for i, block in enumerate(net.recurrent_layer.blocks):
        x, _, _ = block.r.orc_block(block.pre_r_ln(x), mem_k[:, i], mem_v[:, i], allowed)
        if block.use_pointwise_layer:
            x = x + block.mlp1(block.mlp0(x))
    latent = net.final_ln(net.lastlayer(F.relu(x)))
    logprobs = {k: head(latent, model.config.temperature) for k, head in model.pi_head.items()}
    return logprobs, model.value_head(latent)


def bare_idm(model: InverseDynamicsModel, frames, mem_k, mem_v):
    net = model.net
    x = frames.float() / 255.0
    if net.conv3d_layer is not None:
        x = net.conv3d_layer(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
    x = net.img_process(x)
    for i, block in enumerate(net.recurrent_layer.blocks):
        x, _, _ = block.r.orc_block(block.pre_r_ln(x), mem_k[:, i], mem_v[:, i], None)
        if block.use_pointwise_layer:
            x = x + block.mlp1(block.mlp0(x))
    latent = net.final_ln(F.relu(x))
    return {k: head(latent, model.config.temperature) for k, head in model.pi_head.items()}


def loss_of(logprobs, vpred=None):
    total = sum(lp[..., 0].sum() for lp in logprobs.values())
    return total + vpred.sum() if vpred is not None else total


def make_runs(model, mode: str, b: int, t: int):
    """-> (ours, bare, frames per call): two zero-argument callables doing the same work."""
    h, w, _ = model.config.net.img_shape
    frames = torch.randint(0, 256, (b, t, h, w, 3), dtype=torch.uint8)
    state = model.net.initial_state(b)
    mem_k, mem_v = state["k"], state["v"]
    if isinstance(model, InverseDynamicsModel):
        if mode == "infer":
            return (lambda: model(frames)), (lambda: bare_idm(model, frames, mem_k, mem_v)), b * t
        return (
            lambda: loss_of(model(frames)).backward(),
            lambda: loss_of(bare_idm(model, frames, mem_k, mem_v)).backward(),
            b * t,
        )
    first = torch.zeros(b, t, dtype=torch.bool)
    all_valid = torch.ones_like(state["mask"][:, 0])
    if mode == "infer":
        step_frames, step_first = frames[:, :1], first[:, :1]
        step_allowed = clipped_causal_mask(episode_ids(step_first), all_valid, model.memory_len)

        def ours():
            s = state
            for _ in range(t):
                s = model(step_frames, step_first, s).state

        def bare():
            for _ in range(t):
                bare_policy(model, step_frames, mem_k, mem_v, step_allowed)

        return ours, bare, b * t

    allowed = clipped_causal_mask(episode_ids(first), all_valid, model.memory_len)

    def ours_train():
        out = model(frames, first, state)
        loss_of(out.logprobs, out.vpred).backward()

    def bare_train():
        loss_of(*bare_policy(model, frames, mem_k, mem_v, allowed)).backward()

    return ours_train, bare_train, b * t


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(model, mode: str, b: int, t: int, budget_s: float) -> dict:
    ours, bare, frames = make_runs(model, mode, b, t)
    grad = torch.enable_grad() if mode == "train" else torch.no_grad()
    samples = {"ours": [], "bare": []}
    with grad:
        for fn in (ours, bare):  # warm-up (allocator, kernels)
            fn()
            model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        while len(samples["ours"]) < 2 or (time.perf_counter() - start < budget_s and len(samples["ours"]) < 20):
            for name, fn in (("ours", ours), ("bare", bare)):
                samples[name].append(timed(fn))
                model.zero_grad(set_to_none=True)
            if time.perf_counter() - start > budget_s:
                break
    result = {"mode": mode, "batch": b, "T": t, "frames_per_call": frames, "reps": len(samples["ours"])}
    for name, runs in samples.items():
        wall = sorted(r[0] for r in runs)[len(runs) // 2]
        cpu = sorted(r[1] for r in runs)[len(runs) // 2]
        result[f"{name}_fps_wall"] = round(frames / wall, 2)
        result[f"{name}_fps_per_cpu_s"] = round(frames / cpu, 2)
    result["ours_over_bare_wall"] = round(result["ours_fps_wall"] / result["bare_fps_wall"], 3)
    result["ours_over_bare_cpu"] = round(result["ours_fps_per_cpu_s"] / result["bare_fps_per_cpu_s"], 3)
    return result


def parse_setting(text: str) -> tuple[str, int, int]:
    mode, _, size = text.partition(":")
    b, _, t = size.partition("x")
    if mode not in ("infer", "train") or not b.isdigit() or not t.isdigit():
        raise argparse.ArgumentTypeError(f"setting {text!r} must look like infer:16x1 or train:16x32")
    return mode, int(b), int(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_SETTINGS))
    parser.add_argument("--settings", nargs="+", type=parse_setting,
                        help="mode:BxT for every preset (default: per-preset settings)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timed runs per setting (after warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: per-core numbers)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    t_start = time.perf_counter()
    for name in args.presets:
        cfg = load_preset(name)
        model = build_model(cfg)
        settings = args.settings or [parse_setting(s) for s in DEFAULT_SETTINGS.get(name, ["infer:1x1"])]
        n_params = sum(p.numel() for p in model.parameters())
        for mode, b, t in settings:
            model.train(mode == "train")
            results.append({"preset": name, "params": n_params, **measure(model, mode, b, t, args.budget)})
    report = {
        "benchmark": "vpt_ray.models forward throughput (frames/s)",
        "baseline": BASELINE,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()
                    or platform.machine(), "device": "cpu"},  # fmt: skip
        "results": results,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
