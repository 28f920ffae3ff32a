"""Decode a video with PyAV, converting only the frames the filter needs.

Every frame has to be decoded (inter-frame codecs), but the costly colour conversion to RGB is done only for the
wanted ones. Frame indices count frames in decode order, which is how the pseudo-labeling job counts them too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded (corrupt, truncated, no video stream)."""


@dataclass
class DecodeStats:
    """Filled in while a frame iterator runs; final once it is exhausted."""

    fps: float = 0.0
    n_frames: int = 0  # frames decoded


def iter_sampled_frames(
    path: str | Path,
    sample_fps: float,
    *,
    batch_size: int = 64,
    max_seconds: float | None = None,
    default_fps: float = 20.0,
    stats: DecodeStats | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frame_indices int64 (B,), frames_bhwc uint8)`` batches of the frames sampled at ``sample_fps``.

    Frame ``round(k * fps / sample_fps)`` is taken for k = 0, 1, ... (the rule of
    :func:`vpt_ray.filter.segments.sample_frame_indices`). The whole video is decoded (``stats.n_frames`` counts
    it), or its first ``max_seconds``. Raises :class:`VideoError` naming the file.
    """

    def wanted(fps: float) -> Iterator[int]:
        step = max(fps / sample_fps, 1.0)
        return (math.floor(k * step + 0.5) for k in itertools.count())

    return _decode(path, wanted, batch_size, max_seconds, default_fps, stats, stop_when_done=False)


def iter_frames_at(
    path: str | Path,
    indices: Iterable[int],
    *,
    batch_size: int = 64,
    default_fps: float = 20.0,
    stats: DecodeStats | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frame_indices, frames_bhwc)`` batches of the given frames; decoding stops after the last one.

    Indices past the end of the video are not returned (check ``len`` of what came back).
    """
    wanted_sorted = sorted(set(int(i) for i in indices))
    return _decode(path, lambda fps: iter(wanted_sorted), batch_size, None, default_fps, stats, stop_when_done=True)


def _decode(
    path: str | Path,
    wanted: Callable[[float], Iterator[int]],
    batch_size: int,
    max_seconds: float | None,
    default_fps: float,
    stats: DecodeStats | None,
    *,
    stop_when_done: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    import av

    path = Path(path)
    stats = stats if stats is not None else DecodeStats()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{path}: cannot open video: {e}") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        stats.fps = float(rate) if rate else default_fps
        max_frames = None if max_seconds is None else int(round(max_seconds * stats.fps))
        todo = wanted(stats.fps)
        next_idx = next(todo, None)
        idx_buf, frame_buf = [], []
        n = 0
        stopped = False
        try:
            for frame in container.decode(stream):
                if (max_frames is not None and n >= max_frames) or (stop_when_done and next_idx is None):
                    stopped = True
                    break
                if n == next_idx:
                    idx_buf.append(n)
                    frame_buf.append(frame.to_ndarray(format="rgb24"))
                    next_idx = next(todo, None)
                    if len(frame_buf) == batch_size:
                        yield np.asarray(idx_buf, dtype=np.int64), np.stack(frame_buf)
                        idx_buf, frame_buf = [], []
                n += 1
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{path}: decoding failed after {n} frames: {e}") from None
        stats.n_frames = n
        if n == 0:
            raise VideoError(f"{path}: no decodable frames")
        if not stopped and stream.frames and n < stream.frames:
            # the container promised more: a truncated file whose decoder gave up quietly
            raise VideoError(f"{path}: truncated: decoded {n} of {stream.frames} frames")
        if frame_buf:
            yield np.asarray(idx_buf, dtype=np.int64), np.stack(frame_buf)


def count_frames(path: str | Path) -> tuple[int, float]:
    """Decode every frame without conversion: ``(n_frames, fps)``. The decoding-alone baseline of the benchmark."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            n = sum(1 for _ in container.decode(stream))
    except (av.FFmpegError, OSError, IndexError, ValueError) as e:
        raise VideoError(f"{path}: {e}") from None
    return n, float(rate) if rate else 0.0
