"""Which videos a labeling job covers, which frames of each, and where each one's shard goes.

Clean segments come from the filter (``vpt-ray filter``) as JSONL, one object per line::

    {"video": "recordings/ep1.mp4", "segments": [[0, 1200], [1500, 4000]], ...}

``segments`` are half-open ``[start_frame, end_frame)`` frame indices in decode order; other fields are ignored.
A relative ``video`` path is looked up in the current directory, then next to the JSONL file. Videos with no
segments (the filter dropped them) are not labeled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from vpt_ray.data.shards import SHARD_SUFFIX

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


class InputError(ValueError):
    """Bad job input (missing path, malformed segments file, clashing names): refused before any work."""


@dataclasses.dataclass(frozen=True)
class VideoTask:
    """One video to label: ``key`` names it in the ledger and places its shard (``shard``, relative to the
    output directory); ``segments`` None means the whole video."""

    key: str
    path: str
    segments: tuple[tuple[int, int], ...] | None
    shard: str


def load_segments(path: str | os.PathLike) -> dict[Path, list[tuple[int, int]]]:
    """Resolved video path -> its clean segments (sorted, non-overlapping); errors name file and line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read segments file ({e.strerror})") from None
    out: dict[Path, list[tuple[int, int]]] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("video"), str) or not isinstance(obj.get("segments"), list):
            raise InputError(f'{where}: expected {{"video": path, "segments": [[start, end], ...]}}')
        segments = []
        for seg in obj["segments"]:
            if not (isinstance(seg, list) and len(seg) == 2 and all(type(x) is int for x in seg) and 0 <= seg[0] < seg[1]):
                raise InputError(f"{where}: segment {seg!r} is not [start_frame, end_frame) with 0 <= start < end")
            segments.append((seg[0], seg[1]))
        segments.sort()
        for (_, e0), (s1, _) in zip(segments, segments[1:]):
            if s1 < e0:
                raise InputError(f"{where}: segments overlap ({segments})")
        video = Path(obj["video"])
        if not video.is_absolute() and not video.exists() and (path.parent / video).exists():
            video = path.parent / video
        video = video.resolve()
        if video in out:
            raise InputError(f"{where}: video {obj['video']!r} is listed twice")
        out[video] = segments
    return out


def _videos_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def collect_videos(inputs: Sequence[str | os.PathLike], segments_file: str | os.PathLike | None = None) -> list[VideoTask]:
    """The job's videos: those under the input directories / given files (keys relative to their directory),
    restricted to the videos of ``segments_file`` when given; with no inputs, the videos of ``segments_file``
    (keys relative to their common directory)."""
    segments = load_segments(segments_file) if segments_file is not None else None
    found: list[tuple[str, Path]] = []
    if inputs:
        for item in map(Path, inputs):
            if item.is_dir():
                found += [(v.relative_to(item).as_posix(), v) for v in _videos_under(item)]
            elif item.is_file():
                found.append((item.name, item))
            else:
                raise InputError(f"{item}: no such video file or directory")
        if segments is not None:
            found = [(k, v) for k, v in found if v.resolve() in segments]
    elif segments is not None:
        listed = sorted(segments)
        root = Path(os.path.commonpath([v.parent for v in listed])) if listed else Path(".")
        found = [(v.relative_to(root).as_posix(), v) for v in listed]
    else:
        raise InputError("give input videos/directories, a --segments file, or both")
    tasks, by_shard = [], {}
    for key, video in found:
        segs = None
        if segments is not None:
            segs = tuple(segments[video.resolve()])
            if not segs:
                continue  # the filter kept nothing of this video
        shard = Path(key).with_suffix(SHARD_SUFFIX).as_posix()
        if shard in by_shard:
            raise InputError(f"{video} and {by_shard[shard]} would both write {shard}: rename one or label them separately")
        by_shard[shard] = video
        tasks.append(VideoTask(key, str(video), segs, shard))
    return tasks
