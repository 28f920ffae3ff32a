"""IDM training as a Ray Train job: clips of labeled shards, clip-consistent augmentation, sum of per-head NLL,
AdamW with linear LR decay; held-out metrics (per-key accuracy, camera R^2) at every checkpoint.

``train_idm(config, data, run_dir)`` runs the job (see :mod:`vpt_ray.training.job` for the run directory and
resuming); ``RUN_DIR/final`` is a ``vpt_ray.models`` checkpoint that ``vpt-ray label`` loads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpt_ray.config import ConfigError, from_dict, to_dict
from vpt_ray.data.shards import BadShards, Episode, ShardError, episodes_of
from vpt_ray.idm.config import IDMTrainConfig
from vpt_ray.idm.data import ClipBatch, IDMClips, read_episode, split_between_workers
from vpt_ray.idm.loss import idm_loss
from vpt_ray.idm.metrics import IDMMetrics
from vpt_ray.labeling.windows import WindowSpec, label_clip
from vpt_ray.models import InverseDynamicsModel, ModelConfig, build_model, load_preset
from vpt_ray.models.device import to_device
from vpt_ray.models.precision import autocast, resolve_precision
from vpt_ray.training.augment import ClipAugmenter
from vpt_ray.training.data import all_episode_ids, heldout_episodes, open_shards, resolve_data
from vpt_ray.training.job import WorkerSession, ensure_ray, prepare_run_dir, run_train_job, save_train_state
from vpt_ray.training.metrics import StepMeans
from vpt_ray.training.optim import build_optimizer, optimizer_step


def resolve_model(cfg: IDMTrainConfig) -> ModelConfig:
    model = load_preset(cfg.model)
    if model.kind != "idm":
        raise ConfigError(f"model {cfg.model!r}: an IDM job needs a model of kind 'idm', got {model.kind!r}")
    return model


def train_idm(cfg: IDMTrainConfig, data: Sequence[str | Path], run_dir: str | Path, *,
              val_data: Sequence[str | Path] | None = None, address: str | None = None) -> tuple[dict, Path]:  # fmt: skip
    """Train an IDM on labeled shards ``data`` (files or directories); returns (last metrics, final model dir).

    Everything is checked before Ray starts: the config, the model preset, and that the data holds readable
    labeled shards of the model's action space.
    """
    model_cfg = resolve_model(cfg)
    frame_shape = (*model_cfg.net.img_shape[:2], 3)
    data = resolve_data(data, run_dir, frame_shape[:2])
    val = resolve_data(val_data, run_dir, frame_shape[:2], role="val") if val_data else None
    open_shards(data, action_space=model_cfg.action_space, frame_shape=frame_shape)
    if val:
        open_shards(val, action_space=model_cfg.action_space, frame_shape=frame_shape)
    job = {**to_dict(cfg), "model_config": to_dict(model_cfg), "data": data, "val_data": val}
    prepare_run_dir(run_dir, job)
    ensure_ray(address)
    return run_train_job(idm_worker_loop, job, run_dir, cfg.scaling, cfg.schedule.keep_checkpoints)


@torch.no_grad()
def evaluate_idm(model: InverseDynamicsModel, episodes: Sequence[Episode], *, max_frames: int | None = None,
                 bad: BadShards | None = None, precision: str = "fp32") -> IDMMetrics:  # fmt: skip
    """Held-out metrics over whole episodes, labeled exactly as ``vpt-ray label`` labels videos (sliding windows
    of the IDM's clip length, the centre half kept, under ``precision``); stops after the episode that reaches
    ``max_frames``. Unreadable episodes are skipped (and counted in ``bad``)."""
    metrics = IDMMetrics(model.action_space)
    windows = WindowSpec.centred(model.context_len)
    was_training = model.training
    model.eval()
    for ep in episodes:
        if max_frames is not None and metrics.sums["frames"] >= max_frames:
            break
        try:
            frames, actions = read_episode(ep)
        except ShardError as e:
            if bad is not None:
                bad.add(e)
            continue
        metrics.update(label_clip(model, frames, windows, precision=precision), actions)
    model.train(was_training)
    return metrics


def train_step(net: torch.nn.Module, model: InverseDynamicsModel, batch: ClipBatch, augmenter: ClipAugmenter,
               optimizer, scheduler, cfg: IDMTrainConfig, device: torch.device,
               precision: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """One optimizer step on a batch of clips: copy to the device, augment, forward under ``precision``, the sum
    of per-head NLL (fp32), backward, clip, AdamW. Returns (loss, head -> NLL, grad norm) as device tensors:
    nothing here waits for the GPU. ``net`` is what computes (the model, or its DDP/compiled wrapper)."""
    frames = augmenter(to_device(batch.frames_bthwc, device))
    labels = {k: to_device(v, device) for k, v in batch.labels.items()}
    with autocast(precision, device):
        logprobs = net(frames)
    loss, parts = idm_loss(logprobs, labels, to_device(batch.valid_bt, device))
    grad_norm = optimizer_step(loss, model, optimizer, scheduler, cfg.optim)
    return loss.detach(), {k: v.detach() for k, v in parts.items()}, grad_norm


def idm_worker_loop(job: dict[str, Any]) -> None:
    """The Ray Train worker function (``job``: the resolved config, data paths and run directory)."""
    cfg = from_dict(IDMTrainConfig, {k: job[k] for k in IDMTrainConfig.__dataclass_fields__ if k in job})
    model_cfg = from_dict(ModelConfig, job["model_config"])
    session = WorkerSession(job["run_dir"], cfg.scaling.cpus_per_worker)
    rank, world = session.rank, session.world_size
    device = session.device
    precision = resolve_precision(cfg.precision, device)
    clip_len = cfg.clip_len or model_cfg.net.timesteps

    indexes, bad = open_shards(job["data"], action_space=model_cfg.action_space)
    if job.get("val_data"):
        val_indexes, _ = open_shards(job["val_data"], action_space=model_cfg.action_space)
        held = set()
    else:
        val_indexes = indexes
        held = heldout_episodes(all_episode_ids(indexes), cfg.val_fraction)
    clips = IDMClips(indexes, clip_len, cfg.batch_size // world, seed=cfg.seed, rank=rank, world_size=world,
                     keep=lambda e: e.episode_id not in held, bad=bad)  # fmt: skip
    val_all = [e for i in val_indexes for e in episodes_of(i) if not held or e.episode_id in held]
    val_mine = [val_all[i] for i in split_between_workers(val_all, world, np.arange(len(val_all)))[rank]] if val_all else []
    steps_per_epoch = clips.steps_per_epoch()
    total = cfg.schedule.total_steps(steps_per_epoch)

    torch.manual_seed(cfg.seed)  # the same initial weights on every worker
    model = session.place(build_model(model_cfg))
    optimizer, scheduler = build_optimizer(model, cfg.optim, total)
    step, epoch = 0, 0
    state = session.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch = int(state["step"]), int(state["data_epoch"]) + 1
    start_step = step
    # Distinct transforms per worker, and fresh ones after a resume (seeded by the step it resumes at).
    augmenter = ClipAugmenter(cfg.augment, seed=int(np.random.SeedSequence([cfg.seed, rank, step]).generate_state(1)[0]))
    net = session.wrap_model(model, compile=cfg.compile)
    model.train()

    def save(directory: Path) -> None:
        save_train_state(directory, model, {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
            "data_epoch": clips.epoch,
        })  # fmt: skip

    session.progress(total, step, "train-idm")
    batches = clips.batches(start_epoch=epoch)
    frames_per_step = cfg.batch_size * clip_len
    means = StepMeans()  # per-step scalars stay on the device until a report reads them
    t_data, last = 0.0, {}
    while step < total:
        t0 = time.monotonic()
        batch = next(batches)
        t_data += time.monotonic() - t0
        loss, parts, grad_norm = train_step(net, model, batch, augmenter, optimizer, scheduler, cfg, device, precision)
        means.add({"loss": loss, "grad_norm": grad_norm, **{f"nll_{k}": v for k, v in parts.items()}})
        step += 1
        session.advance(1)
        if step % cfg.schedule.log_every == 0 or step == total:
            last = means.pop()
            session.advance(0, f"train-idm loss {last['loss']:.3f}")
            session.scalars({
                **{f"train/{k}": v for k, v in last.items()},
                "train/lr": scheduler.get_last_lr()[0], "train/epoch": step / steps_per_epoch,
                "train/frames_per_s": session.rate(step, frames_per_step), "train/data_wait_s": t_data,
                "data/bad_shards": bad.count,
            }, step)  # fmt: skip
            t_data = 0.0
        if step % cfg.schedule.checkpoint_every == 0 or step == total:
            metrics = evaluate_idm(model, val_mine, max_frames=cfg.schedule.eval_frames, bad=bad, precision=precision)
            session.report_eval(metrics, step, {"step": step, "resumed_from_step": start_step,
                                                "epoch": step / steps_per_epoch, "train/loss": last.get("loss"),
                                                "data/bad_shards": bad.count, **session.describe(precision)}, save)  # fmt: skip
    session.close()
