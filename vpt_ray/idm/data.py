"""Labeled clips for IDM training: fixed-length windows inside one episode, in random order.

The IDM is non-causal, so a clip never crosses an episode boundary (a frame near the end of one episode must
not see the next). Each epoch tiles every episode with ``clip_len`` windows from a random offset (plus windows
at the very start and end so every frame is covered), shuffles all windows of this worker's episodes, and reads
each window's records from its shard. Episodes shorter than a clip are padded by repeating their last frame;
padded frames are marked invalid (no loss there). Episodes are split between Ray Train workers by frames,
the same plan on every worker.

A record that turns out corrupt while reading is counted in :attr:`IDMClips.bad` and its episode is skipped for
the rest of the job; it never stops training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from vpt_ray.actions import get_action_space
from vpt_ray.data.shards import BadShards, Episode, ShardError, ShardIndex, episodes_of, read_record


@dataclasses.dataclass
class ClipBatch:
    frames_bthwc: np.ndarray  # uint8 (B, T, H, W, 3)
    actions: dict[str, np.ndarray]  # env arrays with leading (B, T)
    labels: dict[str, np.ndarray]  # IDM indices: head -> int64 (B, T, factors)
    valid_bt: np.ndarray  # bool (B, T): False on padding


def read_episode(ep: Episode, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """Frames ``[lo, hi)`` (offsets into the episode) and their env arrays, read from the episode's records."""
    hi = ep.n_frames if hi is None else hi
    frames, actions = [], []
    offset = 0
    for i in ep.records:
        n = ep.shard.records[i].n_frames
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            seg = read_record(ep.shard, i)
            frames.append(seg.frames_thwc[a - offset:b - offset])
            actions.append(None if seg.actions is None else {k: v[a - offset:b - offset] for k, v in seg.actions.items()})
        offset += n
        if offset >= hi:
            break
    if any(a is None for a in actions):
        raise ShardError(ep.shard.path, f"episode {ep.episode_id!r} has records without actions")
    merged = {k: np.concatenate([a[k] for a in actions]) for k in actions[0]} if actions else None
    return np.concatenate(frames), merged


def split_between_workers(episodes: Sequence[Episode], world_size: int, order: np.ndarray) -> list[list[int]]:
    """worker -> episode indices, greedily balanced by frames in ``order`` (the same on every worker)."""
    load = [0] * world_size
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    for e in order:
        w = int(np.argmin(load))
        assigned[w].append(int(e))
        load[w] += episodes[e].n_frames
    return assigned


def clip_starts(n_frames: int, clip_len: int, offset: int) -> list[int]:
    """Window starts tiling ``[0, n_frames)`` with stride ``clip_len`` from ``offset`` (in [0, clip_len)), plus
    a window at 0 and one ending at ``n_frames`` when the tiling leaves frames uncovered there."""
    if n_frames <= clip_len:
        return [0]
    starts = list(range(offset, n_frames - clip_len + 1, clip_len))
    if not starts or starts[0] > 0:
        starts.insert(0, 0)
    if starts[-1] + clip_len < n_frames:
        starts.append(n_frames - clip_len)
    return starts


class IDMClips:
    """This worker's training clips: ``batch_size`` clips of ``clip_len`` frames per batch, forever.

    ``keep(episode) -> bool`` selects the episodes to use (e.g. not held out).
    """

    def __init__(self, indexes: Sequence[ShardIndex], clip_len: int, batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, keep: Callable[[Episode], bool] | None = None,
                 bad: BadShards | None = None):  # fmt: skip
        if clip_len <= 0 or batch_size <= 0:
            raise ValueError(f"clip_len and batch_size must be positive, got {clip_len} and {batch_size}")
        self.clip_len, self.batch_size = clip_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.bad = bad if bad is not None else BadShards()
        self.episodes = [e for index in indexes for e in episodes_of(index) if keep is None or keep(e)]
        if len(self.episodes) < world_size:
            raise ValueError(f"{len(self.episodes)} training episodes cannot be split between {world_size} workers")
        names = {index.action_space for index in indexes}
        if len(names) != 1 or None in names:
            raise ValueError(f"IDM training needs shards of one action space with actions, got {sorted(map(str, names))}")
        self.action_space = get_action_space(names.pop())
        self.frame_shape = indexes[0].frame_shape
        self._broken: set[int] = set()
        self.epoch = 0  # the epoch :meth:`batches` is reading (saved in checkpoints: a resume starts the next)

    @property
    def n_frames(self) -> int:
        return sum(e.n_frames for e in self.episodes)

    def _plan(self, epoch: int) -> list[tuple[int, int]]:
        """This worker's (episode, start) windows for ``epoch``, shuffled."""
        rng = np.random.default_rng([self.seed, epoch])
        mine = split_between_workers(self.episodes, self.world_size, rng.permutation(len(self.episodes)))[self.rank]
        clips = [(e, s) for e in mine for s in clip_starts(self.episodes[e].n_frames, self.clip_len,
                                                            int(rng.integers(self.clip_len)))]  # fmt: skip
        return [clips[i] for i in rng.permutation(len(clips))]

    def steps_per_epoch(self) -> int:
        """Batches per epoch on every worker (the fewest any worker can fill; at least 1)."""
        rng = np.random.default_rng([self.seed, 0])
        per_worker = split_between_workers(self.episodes, self.world_size, rng.permutation(len(self.episodes)))
        clips = [sum(len(clip_starts(self.episodes[e].n_frames, self.clip_len, 0)) for e in eps) for eps in per_worker]
        return max(1, min(clips) // self.batch_size)

    def read_clip(self, e: int, start: int) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        """(frames (T, H, W, 3), env arrays (T, ...), valid frames) of the window, padded to ``clip_len``."""
        ep = self.episodes[e]
        hi = min(ep.n_frames, start + self.clip_len)
        frames, actions = read_episode(ep, start, hi)
        n = hi - start
        if n < self.clip_len:
            pad = self.clip_len - n
            frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
            actions = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in actions.items()}
        return frames, actions, n

    def batches(self, start_epoch: int = 0) -> Iterator[ClipBatch]:
        """Batches forever (epochs ``start_epoch``, ``start_epoch + 1``, ...); a partial last batch of an epoch
        is completed from the next epoch's clips."""
        epoch = start_epoch
        pending: list[tuple[np.ndarray, dict[str, np.ndarray], int]] = []
        while True:
            self.epoch = epoch
            plan = self._plan(epoch)
            if all(e in self._broken for e, _ in plan):
                raise ShardError(self.episodes[plan[0][0]].shard.path if plan else "<none>",
                                 "every training episode of this worker is unreadable")  # fmt: skip
            for e, start in plan:
                if e in self._broken:
                    continue
                try:
                    pending.append(self.read_clip(e, start))
                except ShardError as err:
                    self.bad.add(err)
                    self._broken.add(e)
                    continue
                if len(pending) == self.batch_size:
                    yield self._collate(pending)
                    pending = []
            epoch += 1

    def _collate(self, clips) -> ClipBatch:
        frames = np.stack([c[0] for c in clips])
        actions = {k: np.stack([c[1][k] for c in clips]) for k in clips[0][1]}
        valid = np.zeros(frames.shape[:2], bool)
        for b, (_, _, n) in enumerate(clips):
            valid[b, :n] = True
        return ClipBatch(frames, actions, self.action_space.to_idm(actions), valid)
