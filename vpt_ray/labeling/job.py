"""The pseudo-labeling job: Ray Data over video paths, an actor pool holding the IDM, one shard per video.

The driver only passes paths: each actor decodes its video (PyAV), labels every frame with the IDM's sliding
windows, writes the shard atomically and then records the video as done in the run ledger. A rerun labels only
what the ledger does not hold, so a job killed at any point resumes without relabeling or losing a video.
Undecodable videos are skipped and reported (not marked done, so a later run tries them again).

Output directory: ``<key>.vshard`` per video, ``label_job.json`` (the job's identity: labeler, windows),
``label_summary.json`` (the last run's counts), ``ledger.sqlite`` unless a ledger URL is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vpt_ray.labeling.inputs import VideoTask
from vpt_ray.labeling.windows import WindowSpec

logger = logging.getLogger(__name__)

JOB_FILE = "label_job.json"
SUMMARY_FILE = "label_summary.json"
LEDGER_FILE = "ledger.sqlite"


class LabelJobError(ValueError):
    """A labeling job that cannot start as asked (bad checkpoint, output directory of another job)."""


def checkpoint_id(directory: str | os.PathLike) -> str:
    """``<dir name>@<first 12 hex of sha256(weights.pt)>``: names the labeler in every record it labels."""
    from vpt_ray.models.checkpoint import WEIGHTS_FILE

    weights = Path(directory) / WEIGHTS_FILE
    digest = hashlib.sha256()
    try:
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise LabelJobError(f"{weights}: cannot read IDM weights ({e.strerror})") from None
    return f"{Path(directory).resolve().name}@{digest.hexdigest()[:12]}"


@dataclasses.dataclass(frozen=True)
class LabelJob:
    """Everything an actor needs (plain values: it travels to the actors)."""

    idm: str
    out: str
    labeler: str
    job_id: str
    spec: WindowSpec
    action_space: str
    frame_size: tuple[int, int]
    ledger: str
    batch_windows: int = 8
    max_record_frames: int = 256
    threads: int = 1
    use_gpu: bool = False
    precision: str = "auto"  # vpt_ray.models.precision, resolved on each actor's device

    def identity(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "idm": self.idm, "labeler": self.labeler,
                "window": dataclasses.asdict(self.spec), "frame_size": list(self.frame_size)}  # fmt: skip


def prepare_job(idm: str | os.PathLike, out: str | os.PathLike, *, window: int | None = None,
                stride: int | None = None, keep: tuple[int, int] | None = None, ledger: str | None = None,
                job_id: str | None = None, batch_windows: int = 8, max_record_frames: int = 256,
                threads: int = 1, use_gpu: bool = False, precision: str = "auto") -> LabelJob:  # fmt: skip
    """Validate the IDM checkpoint, window settings and precision and claim ``out`` for this job (before any
    work).

    Window defaults: the IDM's clip length (``net.timesteps``: 128 for the released IDM), stride half of it,
    the centre kept. A directory that already holds another labeler's or window setting's labels is refused.
    """
    from vpt_ray.config import ConfigError, load_config
    from vpt_ray.models.checkpoint import MODEL_FILE
    from vpt_ray.models.config import ModelConfig
    from vpt_ray.models.precision import PrecisionError, check_precision

    idm, out = Path(idm).resolve(), Path(out).resolve()
    try:
        config = load_config(ModelConfig, idm / MODEL_FILE)
    except ConfigError as e:
        raise LabelJobError(f"--idm {idm}: not a model checkpoint directory: {e}") from None
    if config.kind != "idm":
        raise LabelJobError(f"--idm {idm}: holds a {config.kind!r} model, not an IDM")
    window = window or config.net.timesteps
    try:
        if keep is not None:
            spec = WindowSpec(window, stride if stride is not None else keep[1] - keep[0], *keep)
        else:
            spec = WindowSpec.centred(window, stride)
    except ValueError as e:
        raise LabelJobError(f"window settings: {e}") from None
    if batch_windows <= 0:
        raise LabelJobError(f"batch_windows must be positive, got {batch_windows}")
    try:
        check_precision(precision, "--precision")
    except PrecisionError as e:
        raise LabelJobError(str(e)) from None
    labeler = checkpoint_id(idm)
    identity = {"out": str(out), "labeler": labeler, "window": dataclasses.asdict(spec)}
    job_id = job_id or "label-" + hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    h, w = config.net.img_shape[:2]
    job = LabelJob(str(idm), str(out), labeler, job_id, spec, config.action_space, (h, w),
                   ledger or str(out / LEDGER_FILE), batch_windows, max_record_frames, threads, use_gpu, precision)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    job_file = out / JOB_FILE
    if job_file.exists():
        previous = json.loads(job_file.read_text())
        mine = job.identity()
        diff = [k for k in ("job_id", "labeler", "window", "frame_size") if previous.get(k) != mine[k]]
        if diff:
            raise LabelJobError(
                f"{out} holds the labels of another job ({', '.join(f'{k}: {previous.get(k)}' for k in diff)}; this "
                f"run: {', '.join(f'{k}: {mine[k]}' for k in diff)}): label into a new --out directory"
            )
    else:
        _write_json(job_file, job.identity())
    return job


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def remove_stale_temp_files(out: str | os.PathLike) -> int:
    """Delete shard temp files a killed run left in ``out`` (one labeling job per directory at a time)."""
    from vpt_ray.data.shards import is_temp_file

    stale = [p for p in Path(out).rglob(".*.tmp") if is_temp_file(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


# ------------------------------------------------------------------------------------------------ workers


def label_video(idm, task: VideoTask, job: LabelJob, precision: str = "fp32") -> dict[str, Any]:
    """Decode, label (under the resolved ``precision``) and write one video's shard (atomically). Returns what
    the ledger records for it.

    Raises :class:`~vpt_ray.labeling.video.VideoError` for a video that cannot be decoded.
    """
    from vpt_ray.data.shards import ShardWriter
    from vpt_ray.labeling.video import VideoError, decode_video
    from vpt_ray.labeling.windows import label_clip

    frames = decode_video(task.path, job.frame_size)
    n = len(frames)
    ranges = [(0, n)] if task.segments is None else [(s, min(e, n)) for s, e in task.segments if s < n]
    if not ranges:
        raise VideoError(f"{task.path}: its {n} frames hold none of the segments {list(task.segments or [])}")
    space = idm.action_space
    meta = {"labeler": job.labeler, "idm": job.idm, "job_id": job.job_id, "video": task.path,
            "window": dataclasses.asdict(job.spec), "precision": precision}  # fmt: skip
    with ShardWriter(Path(job.out) / task.shard, space.name, frames.shape[1:], meta=meta,
                     max_record_frames=job.max_record_frames) as writer:  # fmt: skip
        for s, e in ranges:
            labels = label_clip(idm, frames[s:e], job.spec, job.batch_windows, precision)
            episode_id = task.key if task.segments is None else f"{task.key}:{s}-{e}"
            writer.write(frames[s:e], episode_id=episode_id, source=task.path, frame_start=s,
                         actions=space.from_idm(labels), labeler=job.labeler)  # fmt: skip
    return {"shard": task.shard, "frames": sum(e - s for s, e in ranges), "segments": len(ranges),
            "video_frames": n, "labeler": job.labeler, "precision": precision}  # fmt: skip


class VideoLabeler:
    """Ray Data actor: holds the IDM and the ledger; labels one video per row."""

    def __init__(self, job: LabelJob):
        import torch

        from vpt_ray.ledger import open_ledger
        from vpt_ray.models import load_checkpoint
        from vpt_ray.models.device import describe_device, prepare_device
        from vpt_ray.models.precision import resolve_precision

        torch.set_num_threads(job.threads)
        device = prepare_device("cuda" if job.use_gpu and torch.cuda.is_available() else "cpu")
        self.job = job
        self.idm = load_checkpoint(job.idm, device=device)
        self.precision = resolve_precision(job.precision, device)
        self.device = describe_device(device)
        self.ledger = open_ledger(job.ledger)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from vpt_ray.labeling.video import VideoError

        out: dict[str, list] = {"key": [], "status": [], "frames": [], "seconds": [], "error": [], "device": []}
        for key, path, segments, shard in zip(batch["key"], batch["path"], batch["segments"], batch["shard"]):
            segs = json.loads(segments)
            task = VideoTask(str(key), str(path), None if segs is None else tuple(map(tuple, segs)), str(shard))
            start = time.perf_counter()
            status, frames, error = "done", 0, ""
            if self.ledger.is_done(self.job.job_id, task.key):
                status = "already_done"  # another run finished it since this one listed its work
            else:
                try:
                    info = label_video(self.idm, task, self.job, self.precision)
                    frames = info["frames"]
                    # Only now is the shard durable (fsync + rename): marking it done earlier could lose it.
                    self.ledger.mark_done(self.job.job_id, task.key, {**info, "seconds": time.perf_counter() - start})
                except VideoError as e:
                    status, error = "skipped", str(e)
            for k, v in zip(out, (task.key, status, frames, time.perf_counter() - start, error,
                                  f"{self.device} {self.precision}")):  # fmt: skip
                out[k].append(v)
        return out


# ------------------------------------------------------------------------------------------------ driver


def run_labeling(job: LabelJob, tasks: Sequence[VideoTask], *, num_actors: int | None = None,
                 cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, progress: bool = True,
                 ray_progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Label the videos of ``tasks`` the ledger does not hold yet on the connected Ray cluster; returns (and
    writes to ``label_summary.json``) the run's summary."""
    import ray
    import ray.data
    from tqdm import tqdm

    from vpt_ray.ledger import open_ledger

    started = time.perf_counter()
    out = Path(job.out)
    stale = remove_stale_temp_files(out)
    if stale:
        logger.warning("removed %d temporary shard file(s) left by an interrupted run in %s", stale, out)
    with open_ledger(job.ledger) as ledger:
        done_before = ledger.done_keys(job.job_id)
    todo = [t for t in tasks if t.key not in done_before]
    missing = [t.shard for t in tasks if t.key in done_before and not (out / t.shard).is_file()]
    if missing:
        logger.warning("%d video(s) are done in the ledger but their shards are gone from %s (e.g. %s)",
                       len(missing), out, missing[0])  # fmt: skip
    results: list[dict[str, Any]] = []
    if todo:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = ray_progress
        if num_actors is None:
            resources = ray.cluster_resources()
            if gpus_per_actor > 0:
                num_actors = int(resources.get("GPU", 0) // gpus_per_actor)
            else:
                num_actors = int(resources.get("CPU", 1) // cpus_per_actor)
        items = [{"key": t.key, "path": t.path, "shard": t.shard,
                  "segments": json.dumps(None if t.segments is None else [list(s) for s in t.segments])}
                 for t in todo]  # fmt: skip
        num_actors = max(1, min(num_actors, len(todo)))
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            VideoLabeler, fn_constructor_args=(job,), batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
        )  # fmt: skip
        frames = 0
        with tqdm(total=len(todo), desc="label", unit="video", disable=not progress) as bar:
            for row in ds.iter_rows():
                results.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
                frames += int(row["frames"])
                bar.update(1)
                elapsed = time.perf_counter() - started
                bar.set_postfix(frames=frames, fps=f"{frames / max(elapsed, 1e-9):.0f}",
                                skipped=sum(r["status"] == "skipped" for r in results))  # fmt: skip
    with open_ledger(job.ledger) as ledger:
        done_after = ledger.done_keys(job.job_id)
    seconds = time.perf_counter() - started
    labeled = [r for r in results if r["status"] == "done"]
    skipped = {r["key"]: r["error"] for r in results if r["status"] == "skipped"}
    frames = sum(int(r["frames"]) for r in labeled)
    keys = {t.key for t in tasks}
    summary = {
        **job.identity(),
        "out": job.out,
        "videos": len(tasks),
        "already_done": len(tasks) - len(todo) + sum(r["status"] == "already_done" for r in results),
        "labeled": len(labeled),
        "skipped": len(skipped),
        "skipped_videos": skipped,
        "done_total": len(keys & done_after),
        "remaining": sorted(keys - done_after - set(skipped)),
        "frames": frames,
        "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 2) if seconds > 0 else 0.0,
        "actors": num_actors if todo else 0,
        "devices": sorted({r["device"] for r in results}),  # "<device> <precision>" of the actors that labeled
    }
    _write_json(out / SUMMARY_FILE, summary)
    return summary
