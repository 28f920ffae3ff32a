"""The device check (issue 15): what the package's own GPU code paths do on one GPU, as one JSON document.

Sections (``SECTIONS`` below; each has a time cap, and a failing section is recorded and the others still run):

* ``env``: torch, CUDA, the GPU, and the bf16 dense peak MFU is computed against (datasheet figure, printed).
* ``matmul_ceiling``: an 8192^3 bf16 matrix product measured in this run (CUDA events): every MFU figure (against
  the datasheet peak) comes with its rate over this measured ceiling too (``of_measured_matmul_ceiling``).
* ``parity``: the fixture models (``fixtures/vpt-reference``) on the GPU vs the CPU: fp32 (TF32 off) within 1e-4
  and against the released code's vectors; fp32 with PyTorch's defaults (TF32 convolutions); bf16 errors.
* ``bc_train``: ``vpt_ray.bc.train.train_step`` (the training loop's own step) on the vpt-2x shapes (248 M
  parameters, 128x128 frames, T=128), fp32 vs bf16: frames/s, MFU from FLOPs counted on the step
  (``torch.utils.flop_counter``), peak memory; bf16 with cuDNN's algorithm search off as a control.
* ``inference``: the vpt-2x policy at batch 64, T=1, memory carried, actions sampled and copied to the host each
  step (what an env runner needs): frames/s (target >= 2,000 on an H100/H200), fp32 vs bf16.
* ``labeling``: ``vpt_ray.labeling.label_clip`` (the labeling actors' compute path) with the idm-4x model on
  a clip of 8 windows of 128 frames: labeled frames/s, IDM frames/s, MFU, bf16 vs fp32 label agreement.
* ``compile_train``: the ``bc_train`` bf16 step with ``torch.compile`` (what ``compile: true`` does) vs eager,
  in a child process (its own time cap): compile seconds, frames/s, speedup.
* ``wake``, ``sleep``, ``serve_replica``: reserved for the PPG learner and the frozen-policy replica (issue 15,
  part B): they will time ``vpt_ray/rl/losses.py``'s pure-torch losses; until then they report ``pending``.

``--cpu-smoke`` runs every section on the CPU at tiny sizes (crafter-sized presets, a few steps): a test runs it
in ``make test`` so this script cannot rot. Without a GPU and without ``--cpu-smoke`` it runs the smoke sizes
and says so. The JSON is printed at the end and written (after every section) to ``--out``; the exit status is
1 when a section failed, timed out or did not fit the time budget, or a correctness check did not hold, 0
otherwise (targets are reported, not enforced).

    benchmarks/gpu_check.sh                          # on the GPU machine: JSON on stdout and in $OUT/
    python benchmarks/bench_gpu.py --cpu-smoke       # every section at tiny sizes on the CPU
    python benchmarks/bench_gpu.py --only env matmul_ceiling parity
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(REPO))

from vpt_ray.models import build_model, config_from_official, load_preset  # noqa: E402
from vpt_ray.models.checkpoint import load_state_strict  # noqa: E402
from vpt_ray.models.device import describe_device, prepare_device, to_device  # noqa: E402
from vpt_ray.models.precision import autocast, logprob_error  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity), by device-name fragment,
# most specific first. MFU is reported against these; the matmul section measures this machine's own ceiling.
PEAK_BF16_TFLOPS = (
    ("H200", 989.4, "NVIDIA H200 SXM datasheet, dense bf16 (the H100 SXM's rate)"),
    ("H100 PCIe", 756.5, "NVIDIA H100 PCIe datasheet, dense bf16"),
    ("H100 NVL", 835.5, "NVIDIA H100 NVL datasheet, dense bf16"),
    ("H100", 989.4, "NVIDIA H100 SXM datasheet, dense bf16"),
    ("A100", 312.0, "NVIDIA A100 datasheet, dense bf16"),
    ("L40S", 362.05, "NVIDIA L40S datasheet, dense bf16"),
    ("L4", 121.0, "NVIDIA L4 datasheet, dense bf16"),
)
DEFAULT_FIXTURES = (REPO.parent / "shared" / "fixtures" / "vpt-reference", REPO / "shared" / "fixtures" / "vpt-reference",
                    REPO / ".carry" / "vpt-reference")  # fmt: skip
PARITY_ATOL = 1e-4  # fp32 GPU vs CPU, and vs the released code's vectors (tests/test_models_parity.py)
# bf16 vs fp32 log-probs: tests/test_models_precision.py's tolerances, measured there on the CPU.
BF16_TOLERANCE = {"max_abs": 0.3, "mean_abs": 0.05, "kl_max": 2e-3}
INFERENCE_TARGET_FPS = 2000.0  # issue 15: frames/s per H100/H200 at batch 64, T=1
MFU_TARGET = 0.40  # issue 15: the 2x learner's bf16 MFU in the wake phase
# Missing on the GPU image (/work/.library/device/KINDS.md): what this script imports must not need them.
NOT_ON_GPU_IMAGE = ("ray", "gymnasium", "crafter", "av", "lz4")


@dataclasses.dataclass(frozen=True)
class Sizes:
    policy: str
    idm: str
    train_batch: int
    train_T: int | None  # None: the model's timesteps
    warmup: int
    reps: int
    infer_batch: int
    infer_warmup: int
    infer_reps: int
    label_windows: int
    label_batch_windows: int
    matmul_n: int
    compile_backend: str


FULL = Sizes(policy="vpt-2x", idm="idm-4x", train_batch=4, train_T=None, warmup=2, reps=4, infer_batch=64,
             infer_warmup=5, infer_reps=30, label_windows=8, label_batch_windows=8, matmul_n=8192,
             compile_backend="inductor")  # fmt: skip
# Tiny sizes for the CPU: every code path, a few steps; aot_eager traces forward and backward like inductor
# does, without generating code (no compiler needed).
SMOKE = Sizes(policy="crafter-policy-small", idm="crafter-idm-small", train_batch=2, train_T=8, warmup=1, reps=2,
              infer_batch=4, infer_warmup=1, infer_reps=3, label_windows=3, label_batch_windows=2, matmul_n=256,
              compile_backend="aot_eager")  # fmt: skip


@dataclasses.dataclass
class Context:
    device: torch.device
    smoke: bool
    sizes: Sizes
    peak_tflops: float | None
    fixtures: Path | None
    results: dict[str, dict[str, Any]]
    models: dict[str, torch.nn.Module] = dataclasses.field(default_factory=dict)

    def model(self, preset: str) -> torch.nn.Module:
        """The preset's model on the device, built once per run (seeded: the same weights every run)."""
        if preset not in self.models:
            torch.manual_seed(0)
            self.models[preset] = build_model(load_preset(preset)).to(self.device)
        return self.models[preset]

    def mfu(self, flops: float, seconds: float) -> dict[str, float | None]:
        """Model FLOPs utilisation against the datasheet peak, and the same rate over this run's measured bf16
        matmul ceiling (None where either is unknown)."""
        ceiling = self.results.get("matmul_ceiling", {}).get("tflops")
        rate = flops / seconds / 1e12 if seconds > 0 else None
        return {"mfu": round(rate / self.peak_tflops, 4) if rate and self.peak_tflops else None,
                "of_measured_matmul_ceiling": round(rate / ceiling, 4) if rate and ceiling else None}  # fmt: skip


class SectionTimeout(Exception):
    pass


# ------------------------------------------------------------------------------------------------ measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], warmup: int, reps: int, device: torch.device) -> dict[str, float]:
    """Run ``step`` ``warmup`` times, then ``reps`` times timed: on a GPU with CUDA events around each step and
    around all of them (no host sync in between), on a CPU with the host clock."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
        marks[0].record()
        for i in range(reps):
            step()
            marks[i + 1].record()
        torch.cuda.synchronize(device)
        per_step = [marks[i].elapsed_time(marks[i + 1]) / 1e3 for i in range(reps)]
        total = marks[0].elapsed_time(marks[-1]) / 1e3
    else:
        per_step = []
        t0 = time.perf_counter()
        for _ in range(reps):
            t = time.perf_counter()
            step()
            per_step.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    return {"seconds_per_step": total / reps, "step_ms_median": round(1e3 * float(np.median(per_step)), 3),
            "step_ms_min": round(1e3 * min(per_step), 3), "reps": reps}  # fmt: skip


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn`` once, counting the FLOPs of its matrix products and convolutions (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, Any]):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        into["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


@contextlib.contextmanager
def no_tf32():
    """CUDA fp32 matrix products and convolutions in full fp32 (restored afterwards). PyTorch's defaults, which
    ``precision: fp32`` runs with, allow TF32 in cuDNN convolutions."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the new API only (mixing both is an error)
        conv = torch.backends.cudnn.conv
        before = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = before
    else:
        before = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _rate(frames: int, timing: dict[str, float]) -> float:
    return round(frames / timing["seconds_per_step"], 1)


# ------------------------------------------------------------------------------------------------ sections


def section_env(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"device": describe_device(ctx.device), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "python": platform.python_version(),
                           "cpu_cores": os.cpu_count(), "smoke": ctx.smoke}  # fmt: skip
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        out.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(ctx.device)),
                   multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    return out


def section_matmul_ceiling(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.matmul_n
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    a, b = (torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16, generator=gen) for _ in range(2))
    timing = time_steps(lambda: a @ b, warmup=3, reps=10, device=ctx.device)
    tflops = 2 * n**3 / timing["seconds_per_step"] / 1e12
    return {"n": n, "dtype": "bfloat16", "data": "random normal", "tflops": round(tflops, 1), **timing,
            "fraction_of_peak": round(tflops / ctx.peak_tflops, 4) if ctx.peak_tflops else None}  # fmt: skip


def _fixture_model(directory: Path, which: str):
    """A fixture model (built from its config.json, the official weights loaded strictly), inputs and outputs."""
    cfg = json.loads((directory / which / "config.json").read_text())
    kind, key = ("policy", "policy_kwargs") if which == "foundation" else ("idm", "idm_net_kwargs")
    model = build_model(config_from_official(cfg[key], cfg["pi_head_kwargs"]["temperature"], kind)).eval()
    weights = directory / which / "state_dict.pt"
    load_state_strict(model, torch.load(weights, weights_only=True), str(weights))
    inputs, outputs = (torch.load(directory / which / f"{n}.pt", weights_only=True) for n in ("inputs", "outputs"))
    return model, inputs, outputs


@torch.no_grad()
def _fixture_outputs(model, inputs, which: str, device: torch.device, precision: str) -> dict[str, torch.Tensor]:
    """name -> float64 CPU tensor: the policy's chunks a then c (memory carried: log-probs, vpred, memory keys),
    or the IDM's log-probs of the fixture clip."""
    model = model.to(device)
    out: dict[str, torch.Tensor] = {}
    if which == "foundation":
        state = None
        for c in "ac":
            with autocast(precision, device):
                res = model(inputs[f"img_{c}"].to(device), inputs[f"first_{c}"].to(device), state)
            state = res.state
            out.update({f"{c}.logprobs.{h}": lp for h, lp in res.logprobs.items()})
            out.update({f"{c}.vpred": res.vpred, f"{c}.state.k": res.state["k"]})
    else:
        with autocast(precision, device):
            out.update({f"logprobs.{h}": lp for h, lp in model(inputs["video"].to(device)).items()})
    return {k: v.double().cpu() for k, v in out.items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _logprobs(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in outputs.items() if ".logprobs." in f".{k}"}


def section_parity(ctx: Context) -> dict[str, Any]:
    if ctx.fixtures is None:
        raise FileNotFoundError(f"fixtures/vpt-reference not found (looked at {[str(p) for p in DEFAULT_FIXTURES]}; "
                                "--fixtures DIR, or carry a copy in .carry/vpt-reference)")  # fmt: skip
    cpu = torch.device("cpu")
    out: dict[str, Any] = {"fixtures": str(ctx.fixtures), "atol": PARITY_ATOL, "bf16_tolerance": BF16_TOLERANCE}
    for which in ("foundation", "idm"):
        model, inputs, ref = _fixture_model(ctx.fixtures, which)
        on_cpu = _fixture_outputs(model, inputs, which, cpu, "fp32")
        with no_tf32():
            dev_fp32 = _fixture_outputs(model, inputs, which, ctx.device, "fp32")
        dev_default = _fixture_outputs(model, inputs, which, ctx.device, "fp32")  # what precision fp32 gets
        dev_bf16 = _fixture_outputs(model, inputs, which, ctx.device, "bf16")
        cpu_bf16 = _fixture_outputs(model, inputs, which, cpu, "bf16")
        if which == "foundation":
            released = {f"{c}.logprobs.{h}": ref[f"{c}_chunk"]["logprobs"][h][:, :, 0].double()
                        for c in "ac" for h in ("buttons", "camera")}  # fmt: skip
        else:
            released = {f"logprobs.{h}": ref["logprobs"][h].double() for h in ("buttons", "camera")}
        entry = {
            "fp32_device_vs_cpu_max_abs": _max_diff(dev_fp32, on_cpu),
            "fp32_device_vs_released_max_abs": _max_diff({k: dev_fp32[k] for k in released}, released),
            "fp32_default_tf32_device_vs_cpu_max_abs": _max_diff(dev_default, on_cpu),
            "bf16_device_vs_fp32_cpu": logprob_error(_logprobs(on_cpu), _logprobs(dev_bf16)),
            "bf16_cpu_vs_fp32_cpu": logprob_error(_logprobs(on_cpu), _logprobs(cpu_bf16)),
        }
        entry["fp32_ok"] = max(entry["fp32_device_vs_cpu_max_abs"], entry["fp32_device_vs_released_max_abs"]) <= PARITY_ATOL
        entry["bf16_within_tolerance"] = all(entry["bf16_device_vs_fp32_cpu"][k] <= v for k, v in BF16_TOLERANCE.items())
        out[which] = entry
    return out


def _stream_batch(space, b: int, t: int, h: int, w: int, rng: np.random.Generator):
    """A synthetic BC chunk (random frames and actions, every frame valid, an episode start in row 0)."""
    from vpt_ray.data.shards import StreamBatch

    first = np.zeros((b, t), bool)
    first[0, 0] = True
    env = space.from_policy({k: rng.integers(0, n, (b, t)) for k, n in space.policy_heads.items()})
    return StreamBatch(frames_bthwc=rng.integers(0, 256, (b, t, h, w, 3), dtype=np.uint8), first_bt=first,
                       valid_bt=np.ones((b, t), bool), null_bt=np.zeros((b, t), bool), actions=env,
                       episode_bt=np.zeros((b, t), np.int64), frame_index_bt=np.zeros((b, t), np.int64))  # fmt: skip


def _bc_step_runner(ctx: Context, model, precision: str, net=None) -> tuple[Callable[[], Any], int]:
    """A closure running ``vpt_ray.bc.train.train_step`` on a fixed synthetic chunk (memory carried), and the
    frames per step."""
    from vpt_ray.bc.config import BCTrainConfig
    from vpt_ray.bc.train import train_step
    from vpt_ray.training.config import OptimConfig
    from vpt_ray.training.optim import build_optimizer

    s = ctx.sizes
    t = s.train_T or model.context_len
    h, w, _ = model.config.net.img_shape
    batch = _stream_batch(model.action_space, s.train_batch, t, h, w, np.random.default_rng(0))
    cfg = BCTrainConfig(optim=OptimConfig(lr=1e-5, weight_decay=0.05, max_grad_norm=1.0), model=s.policy,
                        precision=precision)  # fmt: skip
    optimizer, scheduler = build_optimizer(model, cfg.optim, total_steps=10**6)
    memory: list[Any] = [None]
    net = model if net is None else net

    def step():
        loss, _, _, memory[0] = train_step(net, model, batch, memory[0], optimizer, scheduler, cfg, ctx.device,
                                           precision)  # fmt: skip
        return loss

    return step, s.train_batch * t


def _train_entry(ctx: Context, step: Callable[[], Any], frames: int, warmup: int) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    with peak_memory(ctx.device, entry):
        flops, _ = count_flops(step)  # the first step, counted
        timing = time_steps(step, warmup=max(0, warmup - 1), reps=ctx.sizes.reps, device=ctx.device)
    entry.update(flops_per_step=flops, gflops_per_frame=round(flops / frames / 1e9, 2), **timing,
                 frames_per_s=_rate(frames, timing), **ctx.mfu(flops, timing["seconds_per_step"]))  # fmt: skip
    return entry


def section_bc_train(ctx: Context) -> dict[str, Any]:
    model = ctx.model(ctx.sizes.policy).train()
    out: dict[str, Any] = {"preset": ctx.sizes.policy, "params": sum(p.numel() for p in model.parameters()),
                           "step": "vpt_ray.bc.train.train_step (forward, masked NLL, backward, clip, AdamW)"}  # fmt: skip
    for precision in ("fp32", "bf16"):
        step, frames = _bc_step_runner(ctx, model, precision)
        out[precision] = _train_entry(ctx, step, frames, ctx.sizes.warmup)
    out.update(batch=ctx.sizes.train_batch, T=frames // ctx.sizes.train_batch, frames_per_step=frames)
    out["bf16_speedup_over_fp32"] = round(out["bf16"]["frames_per_s"] / out["fp32"]["frames_per_s"], 3)
    if ctx.device.type == "cuda":  # control: cuDNN's per-shape algorithm search (models.device) off
        torch.backends.cudnn.benchmark = False
        try:
            step, frames = _bc_step_runner(ctx, model, "bf16")
            timing = time_steps(step, warmup=ctx.sizes.warmup, reps=ctx.sizes.reps, device=ctx.device)
            out["bf16_without_cudnn_benchmark"] = {"frames_per_s": _rate(frames, timing), **timing}
        finally:
            torch.backends.cudnn.benchmark = True
    model.zero_grad(set_to_none=True)
    return out


def section_inference(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    model = ctx.model(s.policy).eval()
    h, w, _ = model.config.net.img_shape
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (s.infer_batch, 1, h, w, 3), dtype=np.uint8) for _ in range(4)]
    first = np.zeros((s.infer_batch, 1), bool)
    out: dict[str, Any] = {"preset": s.policy, "batch": s.infer_batch, "T": 1,
                           "step": "host frames -> device, forward with the memory carried, sample, actions -> host"}  # fmt: skip
    for precision in ("bf16", "fp32"):
        state = [model.initial_state(s.infer_batch)]
        calls = [0]

        @torch.no_grad()
        def step():
            calls[0] += 1
            with autocast(precision, ctx.device):
                res = model(to_device(frames[calls[0] % len(frames)], ctx.device), to_device(first, ctx.device),
                            state[0])  # fmt: skip
            state[0] = res.state
            return {k: a.cpu() for k, a in model.sample(res.logprobs).items()}

        entry: dict[str, Any] = {}
        with peak_memory(ctx.device, entry):
            flops, _ = count_flops(step)
            timing = time_steps(step, warmup=s.infer_warmup, reps=s.infer_reps, device=ctx.device)
        entry.update(flops_per_step=flops, **timing, frames_per_s=_rate(s.infer_batch, timing),
                     **ctx.mfu(flops, timing["seconds_per_step"]))  # fmt: skip
        out[precision] = entry
    out["target_frames_per_s"] = INFERENCE_TARGET_FPS
    return out


def section_labeling(ctx: Context) -> dict[str, Any]:
    from vpt_ray.labeling.windows import WindowSpec, label_clip, plan_windows

    s = ctx.sizes
    idm = ctx.model(s.idm).eval()
    spec = WindowSpec.centred(idm.context_len)
    n = spec.stride * s.label_windows + (spec.window - spec.stride)  # exactly label_windows windows
    h, w, _ = idm.config.net.img_shape
    frames = np.random.default_rng(2).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    windows = len(plan_windows(n, spec))
    out: dict[str, Any] = {"preset": s.idm, "clip_frames": n, "windows": windows, "window": spec.window,
                           "stride": spec.stride, "batch_windows": s.label_batch_windows,
                           "step": "vpt_ray.labeling.label_clip (pinned copies, forward, argmax, labels -> host)"}  # fmt: skip
    labels = {}
    for precision, reps in (("bf16", s.reps), ("fp32", 1)):
        run = lambda: label_clip(idm, frames, spec, s.label_batch_windows, precision)  # noqa: E731
        entry: dict[str, Any] = {}
        with peak_memory(ctx.device, entry):
            flops, labels[precision] = count_flops(run)
            timing = time_steps(run, warmup=0, reps=reps, device=ctx.device)
        entry.update(flops_per_clip=flops, **timing, labeled_frames_per_s=_rate(n, timing),
                     idm_frames_per_s=_rate(windows * spec.window, timing),
                     **ctx.mfu(flops, timing["seconds_per_step"]))  # fmt: skip
        out[precision] = entry
    out["bf16_fp32_label_agreement"] = round(float(np.mean([(labels["bf16"][k] == labels["fp32"][k]).mean()
                                                             for k in labels["fp32"]])), 4)  # fmt: skip
    return out


def section_compile_train(ctx: Context) -> dict[str, Any]:
    """Eager vs ``torch.compile`` on the bc_train bf16 step, both in this (child) process."""
    model = ctx.model(ctx.sizes.policy).train()
    out: dict[str, Any] = {"preset": ctx.sizes.policy, "backend": ctx.sizes.compile_backend, "precision": "bf16"}
    step, frames = _bc_step_runner(ctx, model, "bf16")
    timing = time_steps(step, warmup=ctx.sizes.warmup, reps=ctx.sizes.reps, device=ctx.device)
    out["eager"] = {"frames_per_s": _rate(frames, timing), **timing}
    compiled = torch.compile(model, backend=ctx.sizes.compile_backend)
    step, frames = _bc_step_runner(ctx, model, "bf16", net=compiled)
    t0 = time.perf_counter()
    step()
    sync(ctx.device)
    out["first_call_s"] = round(time.perf_counter() - t0, 1)  # tracing and compiling, forward and backward
    timing = time_steps(step, warmup=ctx.sizes.warmup, reps=ctx.sizes.reps, device=ctx.device)
    out["compiled"] = {"frames_per_s": _rate(frames, timing), **timing}
    out["speedup"] = round(out["compiled"]["frames_per_s"] / out["eager"]["frames_per_s"], 3)
    return out


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    cap_s: float  # time cap on the GPU (the CPU smoke run gets the same caps)
    run: Callable[[Context], dict[str, Any]] | None  # None: reserved, reports "pending"
    child: bool = False  # run in a child process (hard time cap; its own compiler state)
    pending: str = ""


# The registry. Part B (issue 15's learner and replica, after the RL engine rework): give wake, sleep and
# serve_replica a ``run`` that times vpt_ray/rl/losses.py's pure-torch PPG losses on the vpt-2x shapes with
# _bc_step_runner's pattern (fp32 vs bf16 frames/s, count_flops -> MFU, peak memory), and add their checks in
# checks() (wake: bf16 MFU >= MFU_TARGET).
SECTIONS: tuple[Section, ...] = (
    Section("env", 15, section_env),
    Section("matmul_ceiling", 20, section_matmul_ceiling),
    Section("parity", 40, section_parity),
    Section("bc_train", 60, section_bc_train),
    Section("inference", 30, section_inference),
    Section("labeling", 45, section_labeling),
    Section("compile_train", 150, section_compile_train, child=True),
    Section("wake", 0, None, pending="PPG wake step (PPO clip + value loss + rho * KL to the frozen BC policy, "
            "vpt_ray/rl/losses.py) on the vpt-2x shapes: fp32 vs bf16 frames/s and MFU; target >= 40 % bf16 MFU"),
    Section("sleep", 0, None, pending="PPG sleep step (auxiliary value + value + KL to the pre-phase policy, "
            "vpt_ray/rl/losses.py): fp32 vs bf16 frames/s and MFU, and the per-phase precision default"),
    Section("serve_replica", 0, None, pending="the frozen-policy Serve replica's KL-target forward (log-probs "
            "of sampled frames) frames/s at its batch size, bf16 vs fp32 and its log-prob error"),
)


# ----------------------------------------------------------------------------------------------- checks


def checks(results: dict[str, dict[str, Any]], gpu: bool) -> list[dict[str, Any]]:
    """Each headline figure next to its limit or same-run reference (``kind``: correctness checks fail the run;
    targets, tolerances and measurements are reported). Targets are for an H100/H200: in a CPU smoke run their
    ``ok`` is null."""
    out: list[dict[str, Any]] = []

    def add(check: str, value, reference: str, reference_value, ok, kind: str) -> None:
        if kind == "target" and not gpu:
            ok = None
        out.append({"check": check, "value": value, "reference": reference, "reference_value": reference_value,
                    "ok": ok, "kind": kind})  # fmt: skip

    heavy = sorted(m for m in NOT_ON_GPU_IMAGE if m in sys.modules)
    add("modules this run imported that the GPU image lacks", heavy, "limit: none", [], not heavy, "correctness")

    parity = results.get("parity", {})
    for which in ("foundation", "idm"):
        if which in parity:
            p = parity[which]
            add(f"parity {which}: fp32 device vs CPU, max |diff|", p["fp32_device_vs_cpu_max_abs"],
                "limit (maximum)", PARITY_ATOL, p["fp32_device_vs_cpu_max_abs"] <= PARITY_ATOL, "correctness")
            add(f"parity {which}: fp32 device vs the released code's vectors, max |diff|",
                p["fp32_device_vs_released_max_abs"], "limit (maximum)", PARITY_ATOL,
                p["fp32_device_vs_released_max_abs"] <= PARITY_ATOL, "correctness")  # fmt: skip
            add(f"parity {which}: bf16 device vs fp32 CPU, max KL per frame", p["bf16_device_vs_fp32_cpu"]["kl_max"],
                "limit (maximum): the CPU tests' bf16 tolerance", BF16_TOLERANCE["kl_max"], p["bf16_within_tolerance"],
                "tolerance")  # fmt: skip
    bc = results.get("bc_train", {})
    if "bf16" in bc:
        add(f"bc_train {bc['preset']} bf16 frames/s", bc["bf16"]["frames_per_s"], "baseline: the fp32 step, same run",
            bc["fp32"]["frames_per_s"], None, "measurement")
        if bc["bf16"]["mfu"] is not None:
            add(f"bc_train {bc['preset']} bf16 MFU", bc["bf16"]["mfu"],
                "limit (minimum): issue 15's 40 % wake-phase target", MFU_TARGET, bc["bf16"]["mfu"] >= MFU_TARGET,
                "target")  # fmt: skip
    inf = results.get("inference", {})
    if "bf16" in inf:
        fps = inf["bf16"]["frames_per_s"]
        add(f"inference {inf['preset']} bf16 frames/s (batch {inf['batch']}, T=1, memory carried)", fps,
            "limit (minimum)", INFERENCE_TARGET_FPS, fps >= INFERENCE_TARGET_FPS, "target")
    lab = results.get("labeling", {})
    if "bf16" in lab:
        add(f"labeling {lab['preset']} bf16 labeled frames/s", lab["bf16"]["labeled_frames_per_s"],
            "baseline: the fp32 labeling, same run", lab["fp32"]["labeled_frames_per_s"], None, "measurement")
    comp = results.get("compile_train", {})
    if "speedup" in comp:
        add("torch.compile speedup of the bc_train bf16 step", comp["speedup"], "baseline: the eager step, same run",
            1.0, None, "measurement")
    return out


# -------------------------------------------------------------------------------------------------- run


def _alarm(_signum, _frame):
    raise SectionTimeout


def run_section(section: Section, ctx: Context, cap_s: float, argv: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        if section.child:
            result = _run_child(section, cap_s, argv)
        else:
            signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, cap_s)
            try:
                result = section.run(ctx)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        result = {"status": "ok", **result}
    except SectionTimeout:
        result = {"status": "timeout", "error": f"over its {cap_s:.0f} s cap"}
    except Exception as e:  # noqa: BLE001 - one section's failure must not cost the others
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
    finally:
        if ctx.device.type == "cuda":
            with contextlib.suppress(Exception):
                sync(ctx.device)
                torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _run_child(section: Section, cap_s: float, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", section.name]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=cap_s, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise SectionTimeout from None
    sys.stderr.write(done.stderr[-4000:])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child process exit status {done.returncode}: {done.stderr.strip()[-1500:]}")
    result = json.loads(lines[-1])
    if result.get("status") != "ok":
        raise RuntimeError(result.get("error", "child section failed"))
    return {k: v for k, v in result.items() if k not in ("status", "seconds")}


def find_fixtures(given: str | None) -> Path | None:
    candidates = [Path(given)] if given else [Path(os.environ["VPT_REFERENCE_DIR"])] if os.environ.get(
        "VPT_REFERENCE_DIR") else list(DEFAULT_FIXTURES)  # fmt: skip
    return next((p.resolve() for p in candidates if (p / "foundation" / "state_dict.pt").is_file()), None)


def peak_for(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "no GPU: MFU is not computed"
    name = torch.cuda.get_device_name(device)
    for fragment, tflops, source in PEAK_BF16_TFLOPS:
        if fragment in name:
            return tflops, source
    return None, f"no datasheet peak known for {name!r}: pass --peak-tflops"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="every section at tiny sizes on the CPU")
    parser.add_argument("--only", nargs="+", metavar="SECTION", help=f"run these sections ({[s.name for s in SECTIONS]})")
    parser.add_argument("--out", type=Path, help="also write the JSON here (after every section)")
    parser.add_argument("--budget-s", type=float, default=285.0,
                        help="the whole run's time budget: a section that no longer fits is skipped (default 285)")  # fmt: skip
    parser.add_argument("--fixtures", help="fixtures/vpt-reference directory (default: ../shared/fixtures/"
                        "vpt-reference, shared/..., .carry/vpt-reference, or $VPT_REFERENCE_DIR)")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak to compute MFU against")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [s.name for s in SECTIONS]
    if args.only and set(args.only) - set(names):
        parser.error(f"no such section {sorted(set(args.only) - set(names))}: sections are {names}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not gpu and not args.cpu_smoke:
        print("bench_gpu: no CUDA device: running the CPU smoke sizes", file=sys.stderr)
    device = prepare_device("cuda:0" if gpu else "cpu")
    peak, peak_source = peak_for(device, args.peak_tflops)
    ctx = Context(device, not gpu, FULL if gpu else SMOKE, peak, find_fixtures(args.fixtures), {})
    child_argv = [a for a in sys.argv[1:] if a != "--child"]
    if args.child:  # one section in this process, its result as one JSON line (run_section's parent side reads it)
        section = next(s for s in SECTIONS if s.name == args.child)
        print(json.dumps(run_section(dataclasses.replace(section, child=False), ctx, section.cap_s, [])))
        return 0
    doc: dict[str, Any] = {
        "benchmark": "vpt_ray device check (issue 15): the package's GPU code paths on one GPU",
        "mode": "gpu" if gpu else "cpu-smoke",
        "peak_bf16_tflops_assumed": peak, "peak_source": peak_source,
        "sizes": dataclasses.asdict(ctx.sizes),
        "sections": {},
    }  # fmt: skip
    failed = False
    for section in SECTIONS:
        if args.only and section.name not in args.only:
            continue
        left = args.budget_s - (time.perf_counter() - t_start)
        cap = min(section.cap_s, left)
        if section.run is None:
            result = {"status": "pending", "part_b": section.pending}
        elif cap < min(10.0, section.cap_s):
            result = {"status": "skipped", "error": f"{left:.0f} s left of the run's {args.budget_s:.0f} s budget"}
        else:
            print(f"bench_gpu: {section.name} (cap {cap:.0f} s) ...", file=sys.stderr, flush=True)
            result = run_section(section, ctx, cap, child_argv)
            print(f"bench_gpu: {section.name}: {result['status']} in {result['seconds']} s"
                  + (f" ({result['error']})" if "error" in result else ""), file=sys.stderr, flush=True)  # fmt: skip
        ctx.results[section.name] = result
        failed |= result["status"] in ("failed", "timeout", "skipped")
        doc["sections"][section.name] = result
        doc["checks"] = checks(ctx.results, gpu)
        doc["total_seconds"] = round(time.perf_counter() - t_start, 1)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1))
    doc["checks"] = checks(ctx.results, gpu)
    wrong = [c["check"] for c in doc["checks"] if c["kind"] == "correctness" and not c["ok"]]
    doc["summary"] = {status: [n for n, r in doc["sections"].items() if r["status"] == status]
                      for status in ("ok", "failed", "timeout", "skipped", "pending")}  # fmt: skip
    doc["summary"]["correctness_failures"] = wrong
    doc["total_seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 1 if failed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
