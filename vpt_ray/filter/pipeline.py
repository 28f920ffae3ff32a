"""Apply the frame classifier to videos: per-video clean segments, one Ray task per video.

Output: a JSONL with one object per video (the ``vpt-ray label --segments`` input)::

    {"video": path, "segments": [[start_frame, end_frame_exclusive], ...], "clean_fraction": f, "kept": bool,
     "reason": null | "blacklist" | "not_early_game" | "low_clean_fraction" | "no_clean_segment" | "corrupt",
     "detail": str | null, "n_frames": int, "fps": float}

``segments`` is empty unless ``kept``. ``clean_fraction`` is the share of sampled frames classified clean
(before the median filter), ``n_frames`` the frames examined (the first 5 minutes with ``early_game_only``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from vpt_ray.filter import metadata as md
from vpt_ray.filter.classifier import CLEAN, FrameClassifier
from vpt_ray.filter.config import FilterConfig
from vpt_ray.filter.segments import clean_segments
from vpt_ray.filter.video import DecodeStats, VideoError, iter_sampled_frames

REASONS = ("blacklist", "not_early_game", "low_clean_fraction", "no_clean_segment", "corrupt")


@dataclass
class VideoResult:
    video: str
    segments: list[list[int]]
    clean_fraction: float | None
    kept: bool
    reason: str | None
    detail: str | None = None
    n_frames: int = 0
    fps: float = 0.0
    # per-sample predictions (not written to the JSONL; used for evaluation and plots)
    sample_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sample_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # clean segments before the video-level rules (what the median filter + 5 s rule found)
    candidate_segments: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "segments": self.segments,
            "clean_fraction": self.clean_fraction,
            "kept": self.kept,
            "reason": self.reason,
            "detail": self.detail,
            "n_frames": self.n_frames,
            "fps": self.fps,
        }


def filter_video(
    path: str | Path,
    classifier: FrameClassifier,
    cfg: FilterConfig,
    meta: dict[str, Any] | None = None,
) -> VideoResult:
    """Clean segments of one video; ``meta`` (title/description) drives the metadata filters when given.

    Never raises for a bad video: a corrupt one comes back with ``reason="corrupt"`` and the error in ``detail``.
    """
    video = str(path)
    title, description = (meta or {}).get("title") or "", (meta or {}).get("description") or ""
    if cfg.metadata_blacklist:
        term = md.blacklist_match(title, description)
        if term is not None:
            return VideoResult(video, [], None, False, "blacklist", detail=term)
    if cfg.early_game_only and md.early_game_match(title, description) is None:
        return VideoResult(video, [], None, False, "not_early_game", detail=title or None)

    stats = DecodeStats()
    idx_parts, pred_parts = [], []
    max_seconds = cfg.early_game_s if cfg.early_game_only else None
    try:
        for idx, frames in iter_sampled_frames(
            path, cfg.sample_fps, batch_size=cfg.batch_size, max_seconds=max_seconds, stats=stats
        ):
            idx_parts.append(idx)
            pred_parts.append(classifier.predict(frames))
    except VideoError as e:
        return VideoResult(video, [], None, False, "corrupt", detail=str(e))
    sample_idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
    sample_pred = np.concatenate(pred_parts) if pred_parts else np.zeros(0, dtype=np.int64)
    n_frames = stats.n_frames
    clean = sample_pred == CLEAN
    clean_fraction = float(clean.mean()) if len(clean) else 0.0
    candidates = clean_segments(
        clean, sample_idx, n_frames, stats.fps, median_kernel=cfg.median_kernel, min_segment_s=cfg.min_segment_s
    )
    reason = None
    if clean_fraction < cfg.min_clean_fraction:
        reason = "low_clean_fraction"
    elif not candidates:
        reason = "no_clean_segment"
    return VideoResult(
        video,
        candidates if reason is None else [],
        clean_fraction,
        reason is None,
        reason,
        detail=md.early_game_match(title, description) if cfg.early_game_only else None,
        n_frames=n_frames,
        fps=stats.fps,
        sample_idx=sample_idx,
        sample_pred=sample_pred,
        candidate_segments=candidates,
    )


def summarize(results: Iterable[VideoResult | dict[str, Any]]) -> dict[str, Any]:
    """Videos in/kept, hours in/kept (kept = frames inside kept segments), drops per reason."""
    n_in = n_kept = 0
    hours_in = hours_kept = 0.0
    drops: Counter[str] = Counter()
    for r in results:
        r = r.to_json() if isinstance(r, VideoResult) else r
        n_in += 1
        fps = r.get("fps") or 0.0
        if fps:
            hours_in += r.get("n_frames", 0) / fps / 3600.0
        if r["kept"]:
            n_kept += 1
            if fps:
                hours_kept += sum(e - s for s, e in r["segments"]) / fps / 3600.0
        else:
            drops[r["reason"]] += 1
    return {
        "videos_in": n_in,
        "videos_kept": n_kept,
        "hours_in": hours_in,
        "hours_kept": hours_kept,
        "dropped": {reason: drops.get(reason, 0) for reason in REASONS},
        "corrupt": drops.get("corrupt", 0),
    }


def _remote_filter(path: str, classifier: FrameClassifier, cfg: FilterConfig, meta: dict | None) -> VideoResult:
    import os

    # one task = one video on one core: keep BLAS and the decoder from oversubscribing the node
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return filter_video(path, classifier, cfg, meta)


def filter_videos(
    videos: list[tuple[str, dict[str, Any] | None]],
    classifier: FrameClassifier,
    cfg: FilterConfig,
    *,
    on_result: Callable[[VideoResult], None] | None = None,
    progress: bool = True,
) -> list[VideoResult]:
    """Filter ``(path, meta)`` videos with one Ray task each (on the connected Ray, else a local one).

    Results come back in completion order; ``on_result`` sees each as soon as it is done (e.g. to append it to
    the JSONL, so an interrupted run keeps its finished videos).
    """
    import ray
    from tqdm import tqdm

    from vpt_ray.ray_session import init_ray

    init_ray(configure_logging=False)
    task = ray.remote(num_cpus=1)(_remote_filter)
    classifier_ref = ray.put(classifier)
    cfg_ref = ray.put(cfg)
    # enough queued to keep every CPU busy, few enough that results stream out as the run goes
    max_in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    results: list[VideoResult] = []
    pending: list = []
    queue = iter(videos)
    with tqdm(total=len(videos), desc="filter", unit="video", disable=not progress) as bar:
        while True:
            for path, meta in queue:
                pending.append(task.remote(str(path), classifier_ref, cfg_ref, meta))
                if len(pending) >= max_in_flight:
                    break
            if not pending:
                break
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            results.append(result)
            if on_result is not None:
                on_result(result)
            bar.update(1)
            bar.set_postfix(kept=sum(r.kept for r in results))
    return results


def write_jsonl_line(f, result: VideoResult) -> None:
    f.write(json.dumps(result.to_json()) + "\n")
    f.flush()


def read_segments_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a filter output JSONL; a malformed line raises ``ValueError`` naming file and line."""
    path = Path(path)
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict) or not isinstance(obj.get("video"), str):
                    raise ValueError("expected an object with a 'video' string")
                if not isinstance(obj.get("segments"), list):
                    raise ValueError("expected a 'segments' list")
            except (json.JSONDecodeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            out.append(obj)
    return out
