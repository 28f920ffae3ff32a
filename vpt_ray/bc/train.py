"""Behavioral cloning (foundation training and fine-tuning) as a Ray Train job.

Each worker plays its share of the training episodes as B parallel streams of consecutive chunks
(:class:`FilteredStreams`, null runs removed), carrying the policy's Transformer-XL memory from one chunk to
the next per row; ``first`` flags reset it where an episode starts (the policy honours them at any t). The loss
is the masked NLL of the labels (:func:`bc_loss`); AdamW with linear LR decay. Held-out metrics (NLL, action
accuracy, predicted-null rate) at every checkpoint.

``train_bc(config, data, run_dir)`` runs the job (run directory and resuming: :mod:`vpt_ray.training.job`);
``RUN_DIR/final`` is a ``vpt_ray.models`` checkpoint the RL engine loads, exportable with
``vpt_ray.models.export_official``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpt_ray.bc.config import BCTrainConfig
from vpt_ray.bc.data import FilteredStreams
from vpt_ray.bc.loss import BCMetrics, bc_loss
from vpt_ray.config import ConfigError, from_dict, to_dict
from vpt_ray.data.shards import Episode, SegmentStreams, ShardIndex, StreamBatch, episodes_of
from vpt_ray.idm.data import split_between_workers
from vpt_ray.models import ModelConfig, VPTPolicy, build_model, load_checkpoint, load_official, load_preset
from vpt_ray.models.device import to_device
from vpt_ray.models.precision import autocast, resolve_precision
from vpt_ray.training.data import DataError, heldout_episodes, open_shards, resolve_data
from vpt_ray.training.job import WorkerSession, ensure_ray, prepare_run_dir, run_train_job, save_train_state
from vpt_ray.training.metrics import StepMeans
from vpt_ray.training.optim import build_optimizer, optimizer_step


def load_init(path: str | Path) -> VPTPolicy:
    """A policy to start from: a ``vpt_ray.models`` checkpoint directory, or a released ``.model`` file whose
    ``.weights`` lies next to it (same stem)."""
    path = Path(path)
    if path.is_dir():
        model = load_checkpoint(path)
    elif path.suffix == ".model":
        model = load_official(path, path.with_suffix(".weights"), kind="policy")
    else:
        raise ConfigError(f"init {path}: expected a checkpoint directory or a released .model file")
    if not isinstance(model, VPTPolicy):
        raise ConfigError(f"init {path}: BC needs a policy, the checkpoint holds a {type(model).__name__}")
    return model


def resolve_model(cfg: BCTrainConfig) -> ModelConfig:
    if cfg.init is not None:
        return load_init(cfg.init).config
    model = load_preset(cfg.model)
    if model.kind != "policy":
        raise ConfigError(f"model {cfg.model!r}: BC needs a model of kind 'policy', got {model.kind!r}")
    return model


def train_bc(cfg: BCTrainConfig, data: Sequence[str | Path], run_dir: str | Path, *,
             val_data: Sequence[str | Path] | None = None, address: str | None = None) -> tuple[dict, Path]:  # fmt: skip
    """Train (or fine-tune) a policy on labeled shards ``data``; returns (last metrics, final model dir).

    The config, the model (preset or init checkpoint) and the data are checked before Ray starts.
    """
    if cfg.init is not None:
        cfg = dataclasses.replace(cfg, init=str(Path(cfg.init).resolve()))
    model_cfg = resolve_model(cfg)
    chunk_len = cfg.chunk_len or model_cfg.net.timesteps
    if cfg.null_filter.enabled and cfg.null_filter.min_run - 1 > chunk_len:
        raise ConfigError(f"null_filter.min_run {cfg.null_filter.min_run} may be at most chunk_len + 1 ({chunk_len + 1})")
    frame_shape = (*model_cfg.net.img_shape[:2], 3)
    data = resolve_data(data, run_dir, frame_shape[:2])
    val = resolve_data(val_data, run_dir, frame_shape[:2], role="val") if val_data else None
    open_shards(data, action_space=model_cfg.action_space, frame_shape=frame_shape)
    if val:
        open_shards(val, action_space=model_cfg.action_space, frame_shape=frame_shape)
    job = {**to_dict(cfg), "model_config": to_dict(model_cfg), "data": data, "val_data": val}
    prepare_run_dir(run_dir, job)
    ensure_ray(address)
    return run_train_job(bc_worker_loop, job, run_dir, cfg.scaling, cfg.schedule.keep_checkpoints)


def auto_split_frames(episodes: Sequence[Episode], streams: int, chunk_len: int, configured: int | None) -> int | None:
    """``configured``, or when there are fewer than two episodes per stream, a piece length that gives every
    stream about two pieces (each piece starts with an empty memory; never shorter than a chunk)."""
    if configured is not None or len(episodes) >= 2 * streams:
        return configured
    return max(chunk_len, math.ceil(sum(e.n_frames for e in episodes) / (2 * streams)))


def make_streams(indexes: Sequence[ShardIndex], episodes: Sequence[Episode], batch_size: int, chunk_len: int,
                 *, seed: int, shuffle: bool, split_frames: int | None) -> SegmentStreams:  # fmt: skip
    """:class:`SegmentStreams` over exactly ``episodes`` (one worker's share: rank 0 of 1)."""
    streams = SegmentStreams(indexes, batch_size, chunk_len, seed=seed, shuffle=shuffle, split_frames=split_frames)
    streams.episodes = list(episodes)
    return streams


def forward_chunk(net: torch.nn.Module, action_space, batch: StreamBatch, memory: dict[str, torch.Tensor] | None,
                  device: torch.device):  # fmt: skip
    """One chunk of B streams through the policy, continuing each row's memory.

    ``net``: the policy (or its DDP wrapper); ``memory``: the state after the previous chunk of the same rows
    (None: empty). Returns (output, labels head -> int64 (B, T), valid (B, T), memory for the next chunk); the
    memory is detached (Transformer-XL: a stop-gradient context), ``first_bt`` resets it inside the call.
    """
    frames = to_device(batch.frames_bthwc, device)
    first = to_device(batch.first_bt, device)
    out = net(frames, first, memory)
    labels = {k: to_device(v, device) for k, v in action_space.to_policy(batch.actions).items()}
    valid = to_device(batch.valid_bt, device)
    return out, labels, valid, {k: v.detach() for k, v in out.state.items()}


def train_step(net: torch.nn.Module, model: VPTPolicy, batch: StreamBatch, memory: dict[str, torch.Tensor] | None,
               optimizer, scheduler, cfg: BCTrainConfig, device: torch.device, precision: str):  # fmt: skip
    """One optimizer step on one chunk of B streams: the forward under ``precision`` continuing each row's
    memory, the masked NLL (fp32), backward, clip, AdamW. Returns (loss, head -> share of it, grad norm, memory
    for the next chunk) as device tensors: nothing here waits for the GPU. ``net`` is what computes (the
    policy, or its DDP/compiled wrapper)."""
    with autocast(precision, device):
        out, labels, valid, memory = forward_chunk(net, model.action_space, batch, memory, device)
    loss, parts = bc_loss(model.action_space, out.logprobs, labels, valid, cfg.camera_mask)
    grad_norm = optimizer_step(loss, model, optimizer, scheduler, cfg.optim)
    return loss.detach(), {k: v.detach() for k, v in parts.items()}, grad_norm, memory


@torch.no_grad()
def evaluate_bc(model: VPTPolicy, streams: SegmentStreams, *, min_run: int | None, camera_mask: bool,
                max_frames: int | None = None, precision: str = "fp32") -> BCMetrics:  # fmt: skip
    """Held-out metrics over one pass of ``streams`` (memory carried, nulls filtered as in training; the
    forward under ``precision``)."""
    metrics = BCMetrics(model.action_space, camera_mask)
    if not streams.episodes:
        return metrics
    was_training = model.training
    model.eval()
    memory = None
    for batch in FilteredStreams(streams, min_run, epochs=1):
        if max_frames is not None and metrics.sums["frames"] >= max_frames:
            break
        with autocast(precision, model.device):
            out, labels, valid, memory = forward_chunk(model, model.action_space, batch, memory, model.device)
        metrics.update(out.logprobs, labels, valid)
    model.train(was_training)
    return metrics


def bc_worker_loop(job: dict[str, Any]) -> None:
    """The Ray Train worker function (``job``: the resolved config, data paths and run directory)."""
    cfg = from_dict(BCTrainConfig, {k: job[k] for k in BCTrainConfig.__dataclass_fields__ if k in job})
    model_cfg = from_dict(ModelConfig, job["model_config"])
    session = WorkerSession(job["run_dir"], cfg.scaling.cpus_per_worker)
    rank, world = session.rank, session.world_size
    device = session.device
    precision = resolve_precision(cfg.precision, device)
    chunk_len = cfg.chunk_len or model_cfg.net.timesteps
    local_batch = cfg.batch_size // world
    min_run = cfg.null_filter.min_run if cfg.null_filter.enabled else None

    indexes, bad = open_shards(job["data"], action_space=model_cfg.action_space)
    if job.get("val_data"):
        val_indexes, _ = open_shards(job["val_data"], action_space=model_cfg.action_space)
        held: set[str] = set()
    else:
        val_indexes = indexes
        held = heldout_episodes([e.episode_id for i in indexes for e in episodes_of(i)], cfg.val_fraction)
    train_eps = [e for i in indexes for e in episodes_of(i) if e.episode_id not in held]
    if len(train_eps) < world:
        raise DataError(f"{len(train_eps)} training episodes cannot be split between {world} workers")
    split = auto_split_frames(train_eps, cfg.batch_size, chunk_len, cfg.split_frames)
    train_streams = SegmentStreams(indexes, local_batch, chunk_len, seed=cfg.seed, rank=rank, world_size=world,
                                   split_frames=split)  # fmt: skip
    train_streams.episodes = train_eps
    val_eps = [e for i in val_indexes for e in episodes_of(i) if not held or e.episode_id in held]
    val_mine = [val_eps[j] for j in split_between_workers(val_eps, world, np.arange(len(val_eps)))[rank]] if val_eps else []
    val_streams = make_streams(val_indexes, val_mine, local_batch, chunk_len, seed=cfg.seed, shuffle=False,
                               split_frames=auto_split_frames(val_eps, cfg.batch_size, chunk_len, cfg.split_frames))  # fmt: skip
    steps_per_epoch = max(1, math.ceil(sum(e.n_frames for e in train_eps) / (cfg.batch_size * chunk_len)))
    total = cfg.schedule.total_steps(steps_per_epoch)

    torch.manual_seed(cfg.seed)  # the same initial weights on every worker
    model = session.place(load_init(cfg.init) if cfg.init is not None else build_model(model_cfg))
    model.train()
    # Behavioral cloning has no value targets: the value heads stay as they are (and out of DDP's reduction).
    for head in (model.value_head, model.aux_value_head):
        if head is not None:
            head.requires_grad_(False)
    optimizer, scheduler = build_optimizer(model, cfg.optim, total)
    step, epoch = 0, 0
    state = session.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch = int(state["step"]), int(state["data_epoch"]) + 1
    start_step = step
    net = session.wrap_model(model, compile=cfg.compile)
    streams = FilteredStreams(train_streams, min_run, start_epoch=epoch)

    def save(directory: Path) -> None:
        save_train_state(directory, model, {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
            "data_epoch": streams.epoch,
        })  # fmt: skip

    def bad_count() -> int:
        return len(set(bad.errors) | set(train_streams.bad.errors) | set(val_streams.bad.errors))

    session.progress(total, step, "train-bc")
    batches = iter(streams)
    memory = model.initial_state(local_batch, device=device)
    frames_per_step = cfg.batch_size * chunk_len
    means = StepMeans()  # per-step scalars stay on the device until a report reads them
    t_data, last = 0.0, {}
    while step < total:
        t0 = time.monotonic()
        batch = next(batches)
        t_data += time.monotonic() - t0
        # Transformer-XL: each row's next chunk continues this one.
        loss, parts, grad_norm, memory = train_step(net, model, batch, memory, optimizer, scheduler, cfg, device,
                                                    precision)  # fmt: skip
        means.add({"loss": loss, "grad_norm": grad_norm, **{f"nll_{k}": v for k, v in parts.items()}})
        step += 1
        session.advance(1)
        if step % cfg.schedule.log_every == 0 or step == total:
            last = means.pop()
            session.advance(0, f"train-bc loss {last['loss']:.3f}")
            session.scalars({
                **{f"train/{k}": v for k, v in last.items()},
                "train/lr": scheduler.get_last_lr()[0], "train/epoch": step / steps_per_epoch,
                "train/frames_per_s": session.rate(step, frames_per_step),
                "train/null_dropped_fraction": streams.dropped / max(1, streams.seen),
                "train/data_wait_s": t_data, "data/bad_shards": bad_count(),
            }, step)  # fmt: skip
            t_data = 0.0
        if step % cfg.schedule.checkpoint_every == 0 or step == total:
            metrics = evaluate_bc(model, val_streams, min_run=min_run, camera_mask=cfg.camera_mask,
                                  max_frames=cfg.schedule.eval_frames, precision=precision)  # fmt: skip
            session.report_eval(metrics, step, {"step": step, "resumed_from_step": start_step,
                                                "epoch": step / steps_per_epoch, "train/loss": last.get("loss"),
                                                "data/bad_shards": bad_count(), **session.describe(precision)},
                                save)  # fmt: skip
    session.close()
