"""Train the frame classifier from videos with ground-truth per-frame classes, and measure it on held-out videos.

Frames are sampled per class (paper: 2200 clean / 2200 with artifacts / 4400 none) from the training videos;
whole videos are held out for evaluation, because neighbouring frames of one video are near-duplicates and a
frame-level split would overstate accuracy. Decoding and embedding run as one Ray task per video.

By default every training frame also enters mirrored left-right: an overlay seen only in the top-right corner
is then recognised in the top-left too (benchmarks/bench_filter.py measures it: without the mirror, a logo in
a corner no training video had is missed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vpt_ray.filter.classifier import CLASS_NAMES, CLEAN, FrameClassifier, embedding_from_config, train_classifier
from vpt_ray.filter.config import TrainConfig
from vpt_ray.filter.embeddings import FrameEmbedding
from vpt_ray.filter.video import VideoError, iter_frames_at


@dataclass
class LabeledVideo:
    """A video with its true class per frame (ids into CLASS_NAMES) and true clean segments."""

    video: str
    frame_classes: np.ndarray
    clean_segments: list[list[int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    classifier: FrameClassifier
    report: dict[str, Any]  # counts, timings and the held-out classification report (None without held-out)


def split_videos(n_videos: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and held-out videos (at least one of each when there are >= 2 videos)."""
    order = np.random.default_rng(seed).permutation(n_videos)
    n_hold = int(round(n_videos * holdout_fraction))
    if holdout_fraction > 0 and n_videos >= 2:
        n_hold = min(max(n_hold, 1), n_videos - 1)
    else:
        n_hold = 0
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def select_frames(
    videos: list[LabeledVideo], which: np.ndarray, counts: tuple[int, ...], rng: np.random.Generator
) -> dict[int, np.ndarray]:
    """Sample up to ``counts[c]`` frames of each class c uniformly over the frames of videos ``which``.

    Returns {video index: sorted frame indices}.
    """
    picked: dict[int, list[np.ndarray]] = {}
    for c, n in enumerate(counts):
        pool_v, pool_f = [], []
        for v in which:
            frames = np.flatnonzero(videos[v].frame_classes == c)
            pool_v.append(np.full(len(frames), v))
            pool_f.append(frames)
        if not pool_v:
            continue
        pool_v, pool_f = np.concatenate(pool_v), np.concatenate(pool_f)
        take = rng.choice(len(pool_f), size=min(n, len(pool_f)), replace=False)
        for v, f in zip(pool_v[take], pool_f[take]):
            picked.setdefault(int(v), []).append(np.atleast_1d(f))
    return {v: np.sort(np.concatenate(fs)) for v, fs in picked.items()}


def _embed_video(path: str, indices: np.ndarray, embedding: FrameEmbedding, batch_size: int, mirror: bool):
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    found, zs = [], []
    try:
        for idx, frames in iter_frames_at(path, indices, batch_size=batch_size):
            found.append(idx)
            zs.append(embedding.embed(frames))
            if mirror:
                found.append(idx)
                zs.append(embedding.embed(np.ascontiguousarray(frames[:, :, ::-1])))
    except VideoError as e:
        return None, None, str(e)
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros((0, embedding.dim), dtype=np.float32), None
    return np.concatenate(found), np.concatenate(zs), None


def embed_selection(
    videos: list[LabeledVideo],
    selection: dict[int, np.ndarray],
    embedding: FrameEmbedding,
    *,
    mirror: bool = False,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embed the selected frames (and with ``mirror`` their left-right mirror images too), one Ray task per
    video: ``(z (N, D), y (N,), errors)``. A video that fails to decode is skipped; its error is returned."""
    import ray
    from tqdm import tqdm

    from vpt_ray.ray_session import init_ray

    init_ray(configure_logging=False)
    task = ray.remote(num_cpus=1)(_embed_video)
    emb_ref = ray.put(embedding)
    refs = {task.remote(videos[v].video, idx, emb_ref, batch_size, mirror): v for v, idx in selection.items()}
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors = []
    pending = list(refs)
    with tqdm(total=len(refs), desc="embed frames", unit="video", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            found, z, err = ray.get(done[0])
            bar.update(1)
            v = refs[done[0]]
            if err is not None:
                errors.append(err)
            else:
                parts[v] = (z, videos[v].frame_classes[found])
    if not parts:
        return np.zeros((0, embedding.dim), np.float32), np.zeros(0, np.int64), errors
    # in video order, not completion order: the same data gives the same SVM
    order = sorted(parts)
    return (np.concatenate([parts[v][0] for v in order]),
            np.concatenate([parts[v][1] for v in order]).astype(np.int64), errors)  # fmt: skip


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int = len(CLASS_NAMES)) -> np.ndarray:
    """``m[i, j]`` = frames of true class i predicted as j."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def classification_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    m = confusion_matrix(y_true, y_pred)
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    recall = [float(m[c, c] / support[c]) if support[c] else None for c in range(len(CLASS_NAMES))]
    precision = [float(m[c, c] / predicted[c]) if predicted[c] else None for c in range(len(CLASS_NAMES))]
    present = [r for r in recall if r is not None]
    return {
        "frames": int(m.sum()),
        "accuracy": float(np.trace(m) / m.sum()) if m.sum() else None,
        "balanced_accuracy": float(np.mean(present)) if present else None,
        # the filter's decision is binary: is the frame clean?
        "clean_vs_rest_accuracy": float(((y_true == CLEAN) == (y_pred == CLEAN)).mean()) if len(y_true) else None,
        "confusion": m.tolist(),
        "class_names": list(CLASS_NAMES),
        "recall": dict(zip(CLASS_NAMES, recall)),
        "precision": dict(zip(CLASS_NAMES, precision)),
    }


def train_filter(videos: list[LabeledVideo], cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Sample, embed, fit the SVM on the training videos and evaluate on the held-out ones."""
    if not videos:
        raise ValueError("no labeled videos to train on")
    embedding = embedding_from_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    train_v, hold_v = split_videos(len(videos), cfg.holdout_fraction, cfg.seed)
    hold_share = cfg.holdout_fraction / (1.0 - cfg.holdout_fraction)
    hold_counts = tuple(max(1, int(round(n * hold_share))) for n in cfg.samples_per_class)
    selection = select_frames(videos, train_v, cfg.samples_per_class, rng)
    hold_selection = select_frames(videos, hold_v, hold_counts, rng) if len(hold_v) else {}

    t0 = time.perf_counter()
    z, y, errors = embed_selection(videos, selection, embedding, mirror=cfg.mirror_augment, progress=progress)
    zh, yh, hold_errors = embed_selection(videos, hold_selection, embedding, progress=progress)
    t_embed = time.perf_counter() - t0
    if len(y) == 0:
        raise ValueError(f"no training frames could be decoded ({len(errors)} videos failed: {errors[:3]})")

    t0 = time.perf_counter()
    # frames sampled per class (each also entered mirrored when mirror_augment is on)
    counts = np.bincount(y, minlength=len(CLASS_NAMES)) // (2 if cfg.mirror_augment else 1)
    info = {"train_frames_per_class": dict(zip(CLASS_NAMES, counts.tolist())), "config": _cfg_dict(cfg)}
    classifier = train_classifier(z, y, embedding, cfg, info=info)
    t_fit = time.perf_counter() - t0
    pred_h = classifier.predict_embeddings(zh)
    report = {
        "embedding": embedding.name,
        "embedding_options": embedding.options(),
        "embedding_dim": embedding.dim,
        "train_videos": len(train_v),
        "holdout_videos": len(hold_v),
        "holdout_video_paths": [videos[v].video for v in hold_v],
        "train_frames_per_class": info["train_frames_per_class"],
        "support_vectors": int(len(classifier.support_vectors)),
        "undecodable_videos": errors + hold_errors,
        "embed_seconds": t_embed,
        "fit_seconds": t_fit,
        "holdout": classification_report(yh, pred_h) if len(yh) else None,
    }
    return TrainResult(classifier, report)


def _cfg_dict(cfg: TrainConfig) -> dict[str, Any]:
    from vpt_ray.config import to_dict

    return to_dict(cfg)
