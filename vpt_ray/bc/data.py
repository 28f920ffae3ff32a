"""BC training streams: dense B x T batches of consecutive frames with null-action runs removed.

:class:`FilteredStreams` plays :class:`vpt_ray.data.shards.SegmentStreams` epochs back to back and re-packs
each row: it drops padding and every null action that lies in a run of ``min_run`` or more consecutive nulls
(method doc §5: humans idle 35 % of the time, and a BC model trained on it idles > 95 %). The dropped frames
are removed from the row's stream, so the model sees the remaining frames as one continuous video and carries
its memory across them; nothing else is marked. A dropped frame that started an episode passes its ``first``
flag to the next kept frame, so memory still resets exactly at episode starts. Every yielded batch is full
(``valid_bt`` all True) except the tail of a finite (held-out) pass.

Null runs never span episodes: a ``first`` flag ends the run before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vpt_ray.data.shards import SegmentStreams, StreamBatch


def null_runs_to_drop(null_n: np.ndarray, first_n: np.ndarray, min_run: int) -> np.ndarray:
    """bool (N,): the null frames of one stream that lie in runs of >= ``min_run`` consecutive nulls, a run
    being cut where ``first`` is set (a new episode starts a new run)."""
    null_n = np.asarray(null_n, bool)
    first_n = np.asarray(first_n, bool)
    if min_run <= 1:
        return null_n.copy()
    prev_null = np.concatenate([[False], null_n[:-1]])
    starts = null_n & (~prev_null | first_n)
    run_id = np.cumsum(starts)
    lengths = np.bincount(run_id[null_n], minlength=run_id[-1] + 1 if len(run_id) else 1)
    return null_n & (lengths[run_id] >= min_run)


def _slice(piece: dict, sl: slice) -> dict:
    """Frames ``sl`` of a row piece (its values are arrays, the actions a dict of arrays or None)."""
    out = {}
    for key, value in piece.items():
        if isinstance(value, dict):
            value = {k: v[sl] for k, v in value.items()}
        elif value is not None:
            value = value[sl]
        out[key] = value
    return out


class _Row:
    """One row's re-packed frames waiting to fill a batch, as a queue of pieces (dicts of arrays)."""

    def __init__(self):
        self.pieces: list[dict] = []
        self.n = 0
        self.pending_first = False

    def take(self, n: int) -> list[dict]:
        out, need = [], n
        while need:
            k = len(self.pieces[0]["first"])
            if k <= need:
                out.append(self.pieces.pop(0))
                need -= k
            else:
                out.append(_slice(self.pieces[0], slice(0, need)))
                self.pieces[0] = _slice(self.pieces[0], slice(need, None))
                need = 0
        self.n -= n
        return out


class FilteredStreams:
    """Dense batches from ``streams`` (a :class:`SegmentStreams`), epochs ``start_epoch``, ``start_epoch + 1``,
    ... (``epochs``: how many; None: forever), null runs of >= ``min_run`` frames removed (None: keep nulls).

    :attr:`epoch` is the underlying epoch being read (saved in checkpoints). :attr:`dropped` / :attr:`seen`
    count null-filtered and all valid frames of this worker.
    """

    def __init__(self, streams: SegmentStreams, min_run: int | None, *, start_epoch: int = 0,
                 epochs: int | None = None):  # fmt: skip
        if min_run is not None and min_run < 1:
            raise ValueError(f"min_run must be >= 1 or None, got {min_run}")
        if min_run is not None and min_run - 1 > streams.chunk_len:
            # Runs are measured with one batch of context on each side.
            raise ValueError(f"min_run {min_run} may be at most chunk_len + 1 ({streams.chunk_len + 1})")
        self.streams = streams
        self.min_run = min_run
        self.start_epoch = start_epoch
        self.epochs = epochs
        self.epoch = start_epoch
        self.dropped = 0
        self.seen = 0

    @property
    def batch_size(self) -> int:
        return self.streams.batch_size

    @property
    def chunk_len(self) -> int:
        return self.streams.chunk_len

    def _underlying(self) -> Iterator[StreamBatch]:
        epoch = self.start_epoch
        while self.epochs is None or epoch < self.start_epoch + self.epochs:
            self.epoch = epoch
            fed = np.zeros(self.batch_size, bool)
            for batch in self.streams.iter_epoch(epoch):
                fed |= batch.valid_bt.any(1)
                yield batch
            starved = np.nonzero(~fed)[0].tolist()
            if starved and self.epochs is None:
                # Waiting for them would buffer every other row without bound.
                raise ValueError(
                    f"streams {starved} of {self.batch_size} got no frames in epoch {epoch} (fewer episodes than "
                    f"streams): use a smaller batch_size or split_frames"
                )
            epoch += 1

    def _keep(self, prev: StreamBatch | None, cur: StreamBatch, nxt: StreamBatch | None) -> np.ndarray:
        """bool (B, T) kept frames of ``cur``. Null runs are measured with up to ``min_run - 1`` frames of the
        neighbouring batches on each side: enough to tell whether any run through ``cur`` reaches ``min_run``."""
        valid = cur.valid_bt
        if self.min_run is None:
            return valid.copy()
        t = valid.shape[1]
        m = min(self.min_run - 1, t)
        window = [(cur, slice(0, t))]
        if prev is not None and m:
            window.insert(0, (prev, slice(t - m, t)))
        if nxt is not None and m:
            window.append((nxt, slice(0, m)))
        # Padding is never null and cuts runs (the next valid frame starts a piece with ``first`` anyway).
        null = np.concatenate([b.null_bt[:, sl] & b.valid_bt[:, sl] for b, sl in window], axis=1)
        first = np.concatenate([b.first_bt[:, sl] | ~b.valid_bt[:, sl] for b, sl in window], axis=1)
        lead = m if prev is not None else 0
        keep = np.empty_like(valid)
        for b in range(len(valid)):
            keep[b] = valid[b] & ~null_runs_to_drop(null[b], first[b], self.min_run)[lead:lead + t]
        return keep

    def _push(self, rows: list[_Row], batch: StreamBatch, keep: np.ndarray) -> None:
        self.seen += int(batch.valid_bt.sum())
        self.dropped += int((batch.valid_bt & ~keep).sum())
        for b, row in enumerate(rows):
            idx = np.nonzero(keep[b])[0]
            first = batch.first_bt[b, idx].copy()
            # ``first`` of dropped frames moves to the next kept frame (of this batch or a later one).
            lost = np.nonzero(batch.first_bt[b] & ~keep[b])[0]
            if row.pending_first and len(idx):
                first[0] = True
                row.pending_first = False
            for t in lost:
                j = np.searchsorted(idx, t)
                if j < len(idx):
                    first[j] = True
                else:
                    row.pending_first = True
            if not len(idx):
                continue
            row.pieces.append({
                "frames": batch.frames_bthwc[b, idx], "first": first, "null": batch.null_bt[b, idx],
                "episode": batch.episode_bt[b, idx], "frame_index": batch.frame_index_bt[b, idx],
                "actions": None if batch.actions is None else {k: v[b, idx] for k, v in batch.actions.items()},
            })  # fmt: skip
            row.n += len(idx)

    def _emit(self, rows: list[_Row]) -> StreamBatch:
        b_, t_ = self.batch_size, self.chunk_len
        ref = self.streams
        out = StreamBatch(
            frames_bthwc=np.zeros((b_, t_, *ref.frame_shape), np.uint8), first_bt=np.zeros((b_, t_), bool),
            valid_bt=np.zeros((b_, t_), bool), null_bt=np.zeros((b_, t_), bool), actions=None,
            episode_bt=np.full((b_, t_), -1, np.int64), frame_index_bt=np.full((b_, t_), -1, np.int64),
        )  # fmt: skip
        for b, row in enumerate(rows):
            t = 0
            for piece in row.take(min(t_, row.n)):
                n = len(piece["first"])
                sl = slice(t, t + n)
                out.frames_bthwc[b, sl] = piece["frames"]
                out.first_bt[b, sl] = piece["first"]
                out.valid_bt[b, sl] = True
                out.null_bt[b, sl] = piece["null"]
                out.episode_bt[b, sl] = piece["episode"]
                out.frame_index_bt[b, sl] = piece["frame_index"]
                if piece["actions"] is not None:
                    if out.actions is None:
                        out.actions = {k: np.zeros((b_, t_, *v.shape[1:]), v.dtype) for k, v in piece["actions"].items()}
                    for k, v in piece["actions"].items():
                        out.actions[k][b, sl] = v
                t += n
        return out

    def __iter__(self) -> Iterator[StreamBatch]:
        rows = [_Row() for _ in range(self.batch_size)]
        source = self._underlying()
        prev, cur = None, next(source, None)
        while cur is not None:
            nxt = next(source, None)
            self._push(rows, cur, self._keep(prev, cur, nxt))
            while all(row.n >= self.chunk_len for row in rows):
                yield self._emit(rows)
            prev, cur = cur, nxt
        while any(row.n for row in rows):
            yield self._emit(rows)
