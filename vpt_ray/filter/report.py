"""Scoring the filter against the recordings' ground truth, and the plots people look at.

- per-frame: the classifier's class at every sampled frame against the true class (3-way confusion matrix);
- segments: the clean segments found (median filter + 5 s rule, before the video-level 80 % rule) against the
  true clean segments that last at least ``min_segment_s`` (what a perfect classifier would find), as frame
  overlap precision/recall and as segment matches (IoU >= 0.5);
- videos: kept or not against the true clean share (>= ``min_clean_fraction``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vpt_ray.filter.classifier import CLASS_NAMES, CLEAN
from vpt_ray.filter.config import FilterConfig
from vpt_ray.filter.pipeline import VideoResult
from vpt_ray.filter.segments import matched_segments, overlap_precision_recall, ratio
from vpt_ray.filter.train import LabeledVideo, classification_report


def labeled_videos(directory: str | Path) -> tuple[list[LabeledVideo], list[str]]:
    """Recordings under ``directory`` whose metadata has ground-truth frame classes; plus the errors of the
    recordings that could not be read (skipped and counted, never fatal)."""
    from vpt_ray.data import recordings as rec

    videos, errors = [], []
    for stem in rec.iter_recordings(directory):
        try:
            meta = rec.read_meta(stem)
        except rec.RecordingError as e:
            errors.append(str(e))
            continue
        if not meta.get("ground_truth"):
            continue
        video = stem.with_name(stem.name + rec.VIDEO_SUFFIX)
        videos.append(LabeledVideo(str(video), rec.frame_classes(meta), rec.clean_segments(meta), meta))
    return videos, errors


def evaluate(results: list[VideoResult], truths: dict[str, LabeledVideo], cfg: FilterConfig) -> dict[str, Any]:
    """Scores of filter results against ground truth (videos without truth, or not decoded, are left out)."""
    y_true, y_pred = [], []
    overlap = {"tp_frames": 0, "pred_frames": 0, "truth_frames": 0}
    kept_overlap = {"tp_frames": 0, "pred_frames": 0, "truth_frames": 0}
    match = {"matched": 0, "pred_segments": 0, "truth_segments": 0}
    video_decisions = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    scored = 0
    for r in results:
        truth = truths.get(r.video)
        if truth is None or r.clean_fraction is None:
            continue
        scored += 1
        n = min(r.n_frames, len(truth.frame_classes))  # a video longer than its metadata says: score the known part
        classes = truth.frame_classes[:n]
        known = r.sample_idx < n
        y_true.append(classes[r.sample_idx[known]])
        y_pred.append(r.sample_pred[known])
        ideal = _ideal_segments(truth, n, r.fps, cfg)
        for k, v in overlap_precision_recall(r.candidate_segments, ideal, n).items():
            overlap[k] += v
        for k, v in matched_segments(r.candidate_segments, ideal).items():
            match[k] += v
        truth_kept = float((classes == CLEAN).mean()) >= cfg.min_clean_fraction if n else False
        video_decisions[{(True, True): "tp", (True, False): "fp", (False, True): "fn", (False, False): "tn"}[
            (r.kept, truth_kept)]] += 1  # fmt: skip
        for k, v in overlap_precision_recall(r.segments, ideal if truth_kept else [], n).items():
            kept_overlap[k] += v
    yt = np.concatenate(y_true) if y_true else np.zeros(0, np.int64)
    yp = np.concatenate(y_pred) if y_pred else np.zeros(0, np.int64)
    return {
        "videos_scored": scored,
        "sampled_frames": classification_report(yt, yp) if len(yt) else None,
        "segments": {
            **overlap,
            "frame_precision": ratio(overlap["tp_frames"], overlap["pred_frames"]),
            "frame_recall": ratio(overlap["tp_frames"], overlap["truth_frames"]),
            **match,
            "segment_precision": ratio(match["matched"], match["pred_segments"]),
            "segment_recall": ratio(match["matched"], match["truth_segments"]),
        },
        # the output after the 80 % rule, against the true clean segments of the videos that truly pass it
        "kept_segments": {
            **kept_overlap,
            "frame_precision": ratio(kept_overlap["tp_frames"], kept_overlap["pred_frames"]),
            "frame_recall": ratio(kept_overlap["tp_frames"], kept_overlap["truth_frames"]),
        },
        "videos": {
            **video_decisions,
            "precision": ratio(video_decisions["tp"], video_decisions["tp"] + video_decisions["fp"]),
            "recall": ratio(video_decisions["tp"], video_decisions["tp"] + video_decisions["fn"]),
        },
    }


def _ideal_segments(truth: LabeledVideo, n_frames: int, fps: float, cfg: FilterConfig) -> list[list[int]]:
    min_frames = cfg.min_segment_s * fps
    return [[s, min(e, n_frames)] for s, e in truth.clean_segments if min(e, n_frames) - s >= min_frames - 1e-9]


def plot_confusion(confusion: list[list[int]], path: str | Path, title: str = "held-out frames") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion, dtype=np.float64)
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}\n{rows[i, j]:.0%}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black", fontsize=9)  # fmt: skip
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"{title}: accuracy {acc:.1%}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_timelines(
    results: list[VideoResult], truths: dict[str, LabeledVideo], path: str | Path, max_videos: int = 6
) -> Path:
    """Per video: true class per frame (band), predicted class per sampled frame (dots), true and found clean
    segments (bars), in seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    shown = [r for r in results if r.video in truths and r.clean_fraction is not None][:max_videos]
    colors = ["#2ca02c", "#ff7f0e", "#7f7f7f"]  # clean, artifacts, none
    fig, axes = plt.subplots(len(shown) or 1, 1, figsize=(10, 1.6 * max(len(shown), 1)), squeeze=False)
    for ax, r in zip(axes[:, 0], shown):
        truth = truths[r.video]
        fps = r.fps or 20.0
        n = r.n_frames
        t_end = n / fps
        ax.imshow(truth.frame_classes[None, :n], aspect="auto", cmap=ListedColormap(colors), vmin=0, vmax=2,
                  extent=(0, t_end, 2.5, 3.5), interpolation="nearest")  # fmt: skip
        for c, color in enumerate(colors):
            sel = r.sample_pred == c
            ax.scatter(r.sample_idx[sel] / fps, np.full(sel.sum(), 2.0), s=6, color=color, marker="|")
        for s, e in truth.clean_segments:
            ax.plot([s / fps, min(e, n) / fps], [1.2, 1.2], color="black", lw=4, solid_capstyle="butt")
        for s, e in r.candidate_segments:
            ax.plot([s / fps, e / fps], [0.6, 0.6], color="#2ca02c" if r.kept else "#d62728", lw=4,
                    solid_capstyle="butt")  # fmt: skip
        ax.set_ylim(0.2, 3.6)
        ax.set_xlim(0, t_end)
        ax.set_yticks([0.6, 1.2, 2.0, 3.0], ["found", "true clean", "predicted", "true class"], fontsize=7)
        verdict = "kept" if r.kept else f"dropped ({r.reason})"
        ax.set_title(f"{Path(r.video).name}: clean {r.clean_fraction:.0%} of samples, {verdict}", fontsize=8)
    axes[-1, 0].set_xlabel("seconds (band/dots: green clean, orange artifacts, grey none)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
