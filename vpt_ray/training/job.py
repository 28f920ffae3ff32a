"""Ray Train scaffolding shared by the IDM and BC jobs.

Driver side, :func:`run_train_job` runs a ``TorchTrainer`` whose Ray Train storage is the run directory::

    RUN_DIR/config.yaml        the resolved training config (a rerun must match it: see resume below)
    RUN_DIR/train/             Ray Train's run storage: checkpoint_<step>/ dirs (model.yaml + weights.pt +
                               train_state.pt; each one loads with vpt_ray.models.load_checkpoint)
    RUN_DIR/tensorboard/       TensorBoard scalars (rank 0)
    RUN_DIR/final/             the last checkpoint's model (vpt_ray.models.save_checkpoint format)
    RUN_DIR/metrics.json       the last reported metrics (held-out metrics included)

Resume: running the same job again with the same run directory continues from the latest Ray Train checkpoint
(Ray Train restores its checkpoint manager from the run storage; the worker loads weights, optimizer, LR
schedule and step from ``ray.train.get_checkpoint()``). The data order restarts with a fresh shuffle (the next
epoch's). Only the scaling and the schedule may change (e.g. more steps to extend a run).

Worker side, :class:`WorkerSession` gives a training loop its rank, device, distributed helpers (sum across
workers), TensorBoard writing and a progress bar on rank 0, and checkpoint save/restore through Ray Train.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from vpt_ray.config import ConfigError
from vpt_ray.training.config import ScalingSpec
from vpt_ray.training.metrics import SummedMetrics

logger = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
RAY_RUN_NAME = "train"
FINAL_DIR = "final"
METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
# Fields that may differ when a run is resumed: how it is scaled and computed (precision, compile: e.g. resumed on
# another machine), and how long it runs and reports (to extend a run; the LR decay is recomputed for the new
# length), not what it trains on or with.
RESUMABLE_CHANGES = frozenset({"scaling", "schedule", "precision", "compile"})


class TrainJobError(RuntimeError):
    """A training job that could not start or did not finish; the message says why and where to look."""


# --------------------------------------------------------------------------------------------- driver side


def prepare_run_dir(run_dir: str | Path, config: dict[str, Any]) -> bool:
    """Create ``run_dir`` and write ``config.yaml``; returns True when it resumes an earlier run.

    An earlier run's config must equal this one except for :data:`RESUMABLE_CHANGES`: resuming with other
    hyperparameters would silently mix two experiments, so it is refused before any work starts.
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    resumed = path.is_file()
    if resumed:
        old = yaml.safe_load(path.read_text()) or {}
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(
                f"{path}: run directory holds a run with a different config (fields {changed}); use a new run "
                "directory, or the same settings to resume it"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return resumed


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS; "auto": the cluster running on this machine), or else start a
    new local cluster without the dashboard (never silently join another job's local cluster)."""
    from vpt_ray.ray_session import init_ray

    init_ray(address, log_to_driver=True)


def ddp_backend(use_gpu: bool) -> str:
    """torch.distributed's backend between the workers: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if use_gpu else "gloo"


def run_train_job(train_fn: Callable[[dict], None], loop_config: dict[str, Any], run_dir: str | Path,
                  scaling: ScalingSpec, keep_checkpoints: int) -> tuple[dict[str, Any], Path]:  # fmt: skip
    """Run ``train_fn(loop_config)`` on ``scaling`` Ray Train workers; returns (last metrics, final model dir).

    ``loop_config`` must be plain data; ``run_dir`` is added to it as ``"run_dir"``.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from vpt_ray.models import load_checkpoint, save_checkpoint

    run_dir = Path(run_dir).resolve()
    trainer = TorchTrainer(
        train_fn,
        train_loop_config={**loop_config, "run_dir": str(run_dir)},
        torch_config=TorchConfig(backend=ddp_backend(scaling.use_gpu)),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=RAY_RUN_NAME,
            storage_path=str(run_dir),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors (TrainingFailedError / WorkerGroupError)
        raise TrainJobError(f"training in {run_dir} failed: {e}") from e
    if result.error is not None:
        raise TrainJobError(f"training in {run_dir} failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise TrainJobError(f"training in {run_dir} finished without a checkpoint")
    final = run_dir / FINAL_DIR
    with result.checkpoint.as_directory() as ckpt_dir:
        save_checkpoint(load_checkpoint(ckpt_dir), final)
    metrics = dict(result.metrics or {})
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics, final


# --------------------------------------------------------------------------------------------- worker side


class WorkerSession:
    """One Ray Train worker's view of the job."""

    def __init__(self, run_dir: str | Path, cpus: int):
        import ray.train
        import ray.train.torch

        self.run_dir = Path(run_dir)
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        from vpt_ray.models.device import prepare_device

        self.device = prepare_device(ray.train.torch.get_device())
        torch.set_num_threads(max(1, cpus))
        self._writer = None
        self._bar = None
        self._last_log = (time.monotonic(), 0)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- model
    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this worker's device: before its optimizer is built or restored, so that the optimizer's
        state lives on the same device as the parameters."""
        return model.to(self.device)

    def wrap_model(self, model: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
        """What the training step calls: the placed model, in DistributedDataParallel when there are several
        workers, through ``torch.compile`` when asked (after DDP, so that its graph breaks at DDP's buckets).

        ``find_unused_parameters``: the IDM discards its last dense layer (BC freezes its unused value heads).
        """
        net = self.place(model)
        if self.world_size > 1:
            import ray.train.torch

            net = ray.train.torch.prepare_model(
                model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
            )
        return torch.compile(net) if compile else net

    def describe(self, precision: str) -> dict[str, Any]:
        """What this worker computes on, for the reported metrics (a run's report names its devices)."""
        from vpt_ray.models.device import describe_device

        return {"device": describe_device(self.device), "precision": precision, "workers": self.world_size}

    def sum_across_workers(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all workers (float64 for exact counts); identity for one worker."""
        values = values.to(torch.float64)
        if self.world_size > 1:
            import torch.distributed as dist

            backend_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            out = values.to(backend_device)
            dist.all_reduce(out)
            return out.cpu()
        return values

    # -- checkpoints
    def restore(self) -> dict[str, Any] | None:
        """The train state of the latest Ray Train checkpoint (None on a fresh start)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            from vpt_ray.models.checkpoint import WEIGHTS_FILE, read_weights

            state = torch.load(Path(d) / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
            state["model"] = read_weights(Path(d) / WEIGHTS_FILE)
        return state

    def report(self, metrics: Mapping[str, float], step: int, save: Callable[[Path], None] | None = None) -> None:
        """Report ``metrics`` to Ray Train (every worker must call this together); with ``save``, rank 0 writes
        a checkpoint directory with it and Ray Train persists it."""
        import ray.train

        if save is None or not self.is_main:
            ray.train.report(dict(metrics))
            return
        with tempfile.TemporaryDirectory(prefix="vpt_ckpt_") as tmp:
            save(Path(tmp))
            ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{step:09d}")  # fmt: skip

    def report_eval(self, metrics: SummedMetrics, step: int, extra: Mapping[str, float],
                    save: Callable[[Path], None]) -> None:  # fmt: skip
        """Sum ``metrics`` over all workers, log them as ``eval/*`` scalars and report them with ``extra`` and a
        checkpoint (every worker must call this together)."""
        metrics.load_vector(self.sum_across_workers(torch.from_numpy(metrics.vector())).numpy())
        results = {f"eval/{k}": v for k, v in metrics.compute().items()}
        self.scalars(results, step)
        self.report({**results, **extra}, step, save)

    # -- logging
    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """TensorBoard scalars (rank 0 only)."""
        if not self.is_main:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))
        for key, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self._writer.add_scalar(key, float(value), step)
        self._writer.flush()

    def progress(self, total: int, initial: int, desc: str) -> None:
        """A progress bar over optimizer steps on rank 0 (Ray's distributed tqdm: the driver draws it)."""
        if not self.is_main:
            return
        from ray.experimental.tqdm_ray import tqdm

        self._bar = tqdm(total=total, desc=desc, unit="step")
        if initial:
            self._bar.update(initial)

    def advance(self, n: int = 1, desc: str | None = None) -> None:
        if self._bar is not None:
            if desc is not None:
                self._bar.set_description(desc)
            self._bar.update(n)

    def rate(self, step: int, items: int) -> float:
        """Items per second since the last call (for frames/s scalars)."""
        now = time.monotonic()
        t0, s0 = self._last_log
        self._last_log = (now, step)
        return items * (step - s0) / max(now - t0, 1e-9)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def save_train_state(directory: Path, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """A checkpoint directory: the model (``save_checkpoint`` format) plus ``train_state.pt`` (optimizer etc.)."""
    from vpt_ray.models import save_checkpoint
    from vpt_ray.models.checkpoint import atomic_write

    save_checkpoint(model, directory)
    atomic_write(directory / TRAIN_STATE_FILE, lambda f: torch.save(state, f))
