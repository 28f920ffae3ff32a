"""Training data shared by the IDM and BC jobs: finding shards (bad ones skipped and counted) and the held-out
split, which is by episode so no held-out frame's neighbours are trained on."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from vpt_ray.data.shards import BadShards, ShardIndex, episodes_of, find_shards, scan_shards


class DataError(ValueError):
    """Training data that cannot be used as asked (names the paths)."""


def open_shards(paths: Sequence[str | Path], *, action_space: str | None = None, frame_shape=None,
                labeled: bool = True) -> tuple[list[ShardIndex], BadShards]:  # fmt: skip
    """Indexes of the readable shards under ``paths`` (files or directories); unreadable ones are counted in the
    returned :class:`BadShards`, never raised. Refuses data of another action space or frame shape (H, W, 3),
    or without actions."""
    try:
        files = find_shards(*paths)
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    indexes, bad = scan_shards(files)
    indexes = [i for i in indexes if i.records]
    if not indexes:
        raise DataError(f"no readable shards with frames under {[str(p) for p in paths]} "
                        f"({len(files)} shard files, {bad.count} bad)")  # fmt: skip
    for index in indexes:
        if action_space is not None and index.action_space != action_space:
            raise DataError(f"{index.path}: shard holds {index.action_space!r} actions, the model uses {action_space!r}")
        if frame_shape is not None and tuple(index.frame_shape) != tuple(frame_shape):
            raise DataError(f"{index.path}: frames are {list(index.frame_shape)}, the model takes {list(frame_shape)} "
                            "(convert the recordings with --frame-size, see `vpt-ray shard convert`)")  # fmt: skip
        if labeled and index.action_space is None:
            raise DataError(f"{index.path}: shard has no actions (label it first with `vpt-ray label`)")
    return indexes, bad


def resolve_data(paths: Sequence[str | Path], run_dir: str | Path, frame_hw: Sequence[int], role: str = "train") -> list[str]:
    """Absolute shard paths for ``paths``: shard files and directories as they are; a directory holding labeled
    recordings (and no shards) is converted first into ``run_dir/shards/<role>-<i>-<name>`` at the model's
    frame size (resumable: shards already there are kept)."""
    from vpt_ray.data.recordings import iter_recordings
    from vpt_ray.data.shards import recordings_to_shards

    out = []
    for i, p in enumerate(paths):
        p = Path(p).resolve()
        if p.is_dir() and not find_shards(p) and next(iter_recordings(p, labeled=True), None) is not None:
            target = Path(run_dir).resolve() / "shards" / f"{role}-{i:02d}-{p.name}"
            summary = recordings_to_shards(p, target, frame_size=tuple(frame_hw), progress=True)
            if summary.bad:
                print(f"skipped {len(summary.bad)} bad recordings under {p}: {summary.bad}")
            p = target
        out.append(str(p))
    return out


def heldout_episodes(episode_ids: Iterable[str], fraction: float) -> set[str]:
    """The held-out episodes: the ``round(fraction * n)`` ids (at least one when ``fraction`` > 0 and there are
    two or more) with the smallest crc32, so the split is the same on every worker and every rerun."""
    ids = sorted(set(episode_ids))
    if fraction <= 0 or len(ids) < 2:
        return set()
    k = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(sorted(ids, key=lambda e: (zlib.crc32(e.encode()), e))[:k])


def all_episode_ids(indexes: Iterable[ShardIndex]) -> list[str]:
    return [e.episode_id for index in indexes for e in episodes_of(index)]
