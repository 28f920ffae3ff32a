"""From per-sample clean/not-clean predictions to clean segments in frame indices (VPT paper App. A).

The classifier sees a video at ``sample_fps`` (3 frames/s of a 20 fps video). Each sampled frame stands for the
frames nearest to it: the boundary between two consecutive samples is the midpoint of their frame indices, so a
segment edge found between samples is off by at most half the sampling interval (~3 frames at 20 fps).

Segments are ``[start_frame, end_frame)`` half-open, in frame indices of the original video.
"""

from __future__ import annotations

import numpy as np


def sample_frame_indices(n_frames: int, video_fps: float, sample_fps: float) -> np.ndarray:
    """Frame indices sampled at ``sample_fps``: frame ``round(k * video_fps / sample_fps)`` for k = 0, 1, ...

    With ``sample_fps >= video_fps`` every frame is taken.
    """
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if video_fps <= 0 or sample_fps <= 0:
        raise ValueError(f"fps must be positive (video {video_fps}, sample {sample_fps})")
    step = max(video_fps / sample_fps, 1.0)
    n_samples = int(np.floor((n_frames - 1) / step + 0.5)) + 1
    idx = np.floor(np.arange(n_samples) * step + 0.5).astype(np.int64)
    return idx[idx < n_frames]


def median_filter(labels: np.ndarray, kernel: int) -> np.ndarray:
    """Median over a centred window of ``kernel`` samples; the ends are padded by repeating the edge values.

    Edge padding (not zero padding) keeps a video that starts or ends clean from losing its first/last samples.
    For 0/1 labels the median is the majority of the window.
    """
    labels = np.asarray(labels)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"median filter kernel must be a positive odd number, got {kernel}")
    if kernel == 1 or labels.size == 0:
        return labels.copy()
    half = kernel // 2
    padded = np.pad(labels, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel)
    return np.median(windows, axis=1).astype(labels.dtype)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D boolean array as half-open ``(start, end)`` sample indices."""
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        return []
    edges = np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def sample_boundaries(sample_idx: np.ndarray, n_frames: int) -> np.ndarray:
    """``b`` with ``len(sample_idx) + 1`` entries: sample k stands for frames ``[b[k], b[k + 1])``."""
    sample_idx = np.asarray(sample_idx, dtype=np.int64)
    mids = (sample_idx[:-1] + sample_idx[1:] + 1) // 2
    return np.concatenate([[0], mids, [n_frames]]).astype(np.int64)


def clean_segments(
    clean_samples: np.ndarray,
    sample_idx: np.ndarray,
    n_frames: int,
    video_fps: float,
    *,
    median_kernel: int,
    min_segment_s: float,
) -> list[list[int]]:
    """Clean ``[start, end)`` frame segments: median-filter the 0/1 sample labels, map runs of clean samples to
    frames, keep those lasting at least ``min_segment_s`` seconds."""
    clean_samples = np.asarray(clean_samples, dtype=np.int8)
    if clean_samples.shape != np.shape(sample_idx):
        raise ValueError(f"{clean_samples.shape[0]} labels for {np.shape(sample_idx)[0]} sampled frames")
    smoothed = median_filter(clean_samples, median_kernel).astype(bool)
    bounds = sample_boundaries(sample_idx, n_frames)
    min_frames = min_segment_s * video_fps
    segments = []
    for s, e in runs(smoothed):
        start, end = int(bounds[s]), int(bounds[e])
        if end - start >= min_frames - 1e-9:
            segments.append([start, end])
    return segments


def segments_to_mask(segments: list[list[int]] | list[tuple[int, int]], n_frames: int) -> np.ndarray:
    mask = np.zeros(n_frames, dtype=bool)
    for start, end in segments:
        mask[max(start, 0) : min(end, n_frames)] = True
    return mask


def overlap_precision_recall(pred: list, truth: list, n_frames: int) -> dict[str, int]:
    """Frame counts for frame-level precision/recall of predicted clean segments against true ones."""
    p = segments_to_mask(pred, n_frames)
    t = segments_to_mask(truth, n_frames)
    return {"tp_frames": int((p & t).sum()), "pred_frames": int(p.sum()), "truth_frames": int(t.sum())}


def matched_segments(pred: list, truth: list, min_iou: float = 0.5) -> dict[str, int]:
    """Segment-level matching: a predicted segment is a hit when its IoU with a not yet matched true segment is
    at least ``min_iou`` (greedy, best IoU first; each true segment matched at most once)."""
    pairs = []
    for i, (ps, pe) in enumerate(pred):
        for j, (ts, te) in enumerate(truth):
            inter = max(0, min(pe, te) - max(ps, ts))
            union = max(pe, te) - min(ps, ts)
            iou = inter / union if union > 0 else 0.0
            if iou >= min_iou:
                pairs.append((iou, i, j))
    used_p, used_t = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return {"matched": len(used_p), "pred_segments": len(pred), "truth_segments": len(truth)}


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None when ``den`` is 0 (precision of no predictions is undefined, not 0 or 1)."""
    return float(num) / float(den) if den else None
