"""Shards: round trips, atomic writes, corruption named and skipped, and the training streams' bookkeeping."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vpt_ray.data.shards import (
    SegmentStreams,
    ShardError,
    ShardWriter,
    find_shards,
    iter_all_segments,
    iter_segments,
    read_index,
    scan_shards,
    verify_shard,
)

FRAME = (6, 5, 3)


def tagged_frames(episode: int, start: int, n: int) -> np.ndarray:
    """Frames whose pixels say which episode and frame they are (to check where every frame lands)."""
    frames = np.zeros((n, *FRAME), np.uint8)
    idx = np.arange(start, start + n)
    frames[:, 0, 0, 0] = idx % 256
    frames[:, 0, 0, 1] = idx // 256
    frames[:, 0, 0, 2] = episode
    return frames


def crafter_actions(episode: int, start: int, n: int) -> dict[str, np.ndarray]:
    return {"action": (np.arange(start, start + n) + episode) % 17}


def write_crafter_shard(path: Path, episodes: dict[int, tuple[int, int]], max_record_frames: int = 7) -> Path:
    """episodes: episode number -> (frame_start, n_frames)."""
    with ShardWriter(path, "crafter", FRAME, meta={"made_by": "test"}, max_record_frames=max_record_frames) as w:
        for e, (start, n) in episodes.items():
            w.write(tagged_frames(e, start, n), episode_id=f"ep{e}", source=f"videos/ep{e}.mp4", frame_start=start,
                    actions=crafter_actions(e, start, n), labeler="idm@abc")  # fmt: skip
    return path


def test_round_trip_crafter(tmp_path):
    path = write_crafter_shard(tmp_path / "a.vshard", {0: (0, 10), 1: (40, 20)})
    index = read_index(path)
    assert index.action_space == "crafter" and index.frame_shape == FRAME and index.meta == {"made_by": "test"}
    # Runs longer than max_record_frames are split; only the first record of each episode starts it.
    assert [(r.episode_id, r.frame_start, r.frame_end, r.first) for r in index.records] == [
        ("ep0", 0, 7, True), ("ep0", 7, 10, False),
        ("ep1", 40, 47, True), ("ep1", 47, 54, False), ("ep1", 54, 60, False),
    ]  # fmt: skip
    segments = list(iter_segments(path))
    for e, (start, n) in {0: (0, 10), 1: (40, 20)}.items():
        mine = [s for s in segments if s.episode_id == f"ep{e}"]
        frames = np.concatenate([s.frames_thwc for s in mine])
        actions = np.concatenate([s.actions["action"] for s in mine])
        np.testing.assert_array_equal(frames, tagged_frames(e, start, n))
        np.testing.assert_array_equal(actions, crafter_actions(e, start, n)["action"])
        assert actions.dtype == np.int64
        np.testing.assert_array_equal(np.concatenate([s.null for s in mine]), actions == 0)  # crafter noop is 0
        assert {s.source for s in mine} == {f"videos/ep{e}.mp4"} and {s.labeler for s in mine} == {"idm@abc"}
    info = verify_shard(path)
    assert (info.n_records, info.n_frames, info.episodes, info.labelers) == (5, 30, 2, ("idm@abc",))


def test_round_trip_minecraft_and_explicit_null(tmp_path):
    rng = np.random.default_rng(0)
    n = 9
    buttons = rng.integers(0, 2, (n, 20)).astype(np.int64)  # cast to the stored uint8
    camera = rng.uniform(-10, 10, (n, 2))
    null = rng.integers(0, 2, n).astype(bool)
    with ShardWriter(tmp_path / "m.vshard", "minecraft", FRAME) as w:
        w.write(tagged_frames(0, 0, n), episode_id="e", source="s.mp4", actions={"buttons": buttons, "camera": camera},
                null=null, first=False)  # fmt: skip
    (seg,) = list(iter_segments(tmp_path / "m.vshard"))
    assert seg.actions["buttons"].dtype == np.uint8 and seg.actions["camera"].dtype == np.float32
    np.testing.assert_array_equal(seg.actions["buttons"], buttons)
    np.testing.assert_allclose(seg.actions["camera"], camera.astype(np.float32))
    np.testing.assert_array_equal(seg.null, null)
    assert seg.first is False and seg.labeler == "human"


def test_frames_only_shard(tmp_path):
    with ShardWriter(tmp_path / "f.vshard", None, FRAME) as w:
        w.write(tagged_frames(0, 0, 4), episode_id="e", source="s.mp4")
    (seg,) = list(iter_segments(tmp_path / "f.vshard"))
    assert seg.actions is None and seg.null is None
    np.testing.assert_array_equal(seg.frames_thwc, tagged_frames(0, 0, 4))


def test_writer_is_atomic(tmp_path):
    target = write_crafter_shard(tmp_path / "a.vshard", {0: (0, 5)})
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(target, "crafter", FRAME) as w:
            w.write(tagged_frames(1, 0, 3), episode_id="x", source="y", actions=crafter_actions(1, 0, 3))
            raise RuntimeError("boom")
    assert target.read_bytes() == before  # the old shard is untouched, the new one never appeared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.vshard"]  # no temp file left behind
    # While a writer is open, its partial output is a hidden temp file that find_shards does not list.
    w = ShardWriter(tmp_path / "b.vshard", "crafter", FRAME)
    w.write(tagged_frames(1, 0, 3), episode_id="x", source="y", actions=crafter_actions(1, 0, 3))
    assert find_shards(tmp_path) == [target]
    w.close()
    assert find_shards(tmp_path) == [target, tmp_path / "b.vshard"]


def test_writer_refuses_bad_input(tmp_path):
    with ShardWriter(tmp_path / "a.vshard", "crafter", FRAME) as w:
        with pytest.raises(ValueError, match=r"a\.vshard: frames must be uint8"):
            w.write(np.zeros((3, 7, 5, 3), np.uint8), episode_id="e", source="s")
        with pytest.raises(ValueError, match=r"keys \['action'\]"):
            w.write(tagged_frames(0, 0, 3), episode_id="e", source="s", actions={"buttons": np.zeros((3, 20))})
        with pytest.raises(ValueError, match=r"expected 3 frames"):
            w.write(tagged_frames(0, 0, 3), episode_id="e", source="s", actions={"action": np.zeros(4, int)})
        with pytest.raises(ValueError, match=r"\[0, 17\)"):
            w.write(tagged_frames(0, 0, 3), episode_id="e", source="s", actions={"action": np.array([0, 1, 17])})
        w.write(tagged_frames(0, 0, 3), episode_id="e", source="s", actions={"action": np.array([0, 1, 16])})
    with pytest.raises(ValueError, match="unknown action space 'doom'"):
        ShardWriter(tmp_path / "b.vshard", "doom", FRAME)
    assert verify_shard(tmp_path / "a.vshard").n_frames == 3


def corrupt_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_record_is_named(tmp_path):
    path = write_crafter_shard(tmp_path / "a.vshard", {0: (0, 10), 1: (0, 10)})
    rec = read_index(path).records[2]
    corrupt_byte(path, rec.offset + rec.length // 2)
    read_index(path)  # the index is intact: the damage shows when record 2 is read
    with pytest.raises(ShardError, match=rf"{path}.* record 2: .*(checksum|corrupt)") as err:
        verify_shard(path)
    assert err.value.path == path and err.value.record == 2
    got = []
    with pytest.raises(ShardError):
        for seg in iter_segments(path):
            got.append(seg.index)
    assert got == [0, 1]  # records before the damage stream out


@pytest.mark.parametrize("cut", [1, 17, 200])
def test_truncated_shard_is_named(tmp_path, cut):
    path = write_crafter_shard(tmp_path / "a.vshard", {0: (0, 10)})
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(ShardError, match=rf"{path}: truncated"):
        read_index(path)
    with pytest.raises(ShardError, match=rf"{path}: truncated"):
        next(iter_segments(path))  # nothing is yielded from a shard without its end


def test_not_a_shard(tmp_path):
    (tmp_path / "x.vshard").write_bytes(b"hello")
    (tmp_path / "y.vshard").write_bytes(os.urandom(4096))
    for p in ("x.vshard", "y.vshard"):
        with pytest.raises(ShardError, match=rf"{p}"):
            read_index(tmp_path / p)
    with pytest.raises(ShardError, match="cannot open"):
        read_index(tmp_path / "missing.vshard")


def test_jobs_skip_and_count_bad_shards(tmp_path):
    good = [write_crafter_shard(tmp_path / f"g{i}.vshard", {i: (0, 8)}) for i in range(3)]
    truncated = write_crafter_shard(tmp_path / "t.vshard", {7: (0, 8)})
    truncated.write_bytes(truncated.read_bytes()[:-5])
    corrupt = write_crafter_shard(tmp_path / "c.vshard", {8: (0, 8)})  # record 0 ok, record 1 corrupt
    rec = read_index(corrupt).records[1]
    corrupt_byte(corrupt, rec.offset + rec.length - 3)
    paths = find_shards(tmp_path)
    assert len(paths) == 5

    indexes, bad = scan_shards(paths)  # index-only: the corrupt record is not seen yet
    assert bad.count == 1 and str(truncated) in bad.errors
    indexes, bad = scan_shards(paths, verify=True)
    assert sorted(i.path for i in indexes) == sorted(good) and bad.count == 2

    bad2 = type(bad)()
    segments = list(iter_all_segments(paths, bad2))
    assert bad2.count == 2 and set(bad2.errors) == {str(truncated), str(corrupt)}
    assert "record 1" in bad2.errors[str(corrupt)]
    # All of the good shards and the sound first record of the corrupt one.
    assert sum(s.n_frames for s in segments) == 3 * 8 + 7


# ------------------------------------------------------------------------------------------------ streams


def stream_fixture(tmp_path) -> list[Path]:
    """Three shards, 7 episodes of varied lengths (one shard with a gap in its frame numbers)."""
    a = write_crafter_shard(tmp_path / "a.vshard", {0: (0, 23), 1: (100, 5)})
    b = write_crafter_shard(tmp_path / "b.vshard", {2: (0, 41), 3: (10, 9), 4: (0, 3)})
    c = tmp_path / "c.vshard"
    with ShardWriter(c, "crafter", FRAME, max_record_frames=7) as w:
        # One episode id written in two runs with a gap: two episodes for training (no memory across the gap).
        w.write(tagged_frames(5, 0, 12), episode_id="ep5", source="s", actions=crafter_actions(5, 0, 12))
        w.write(tagged_frames(5, 20, 6), episode_id="ep5", source="s", frame_start=20,
                actions=crafter_actions(5, 20, 6), first=False)  # fmt: skip
    return [a, b, c]


def collect(streams: SegmentStreams, epoch: int):
    """Replay the batches row by row: per row, the list of (episode, frame index, first, action) frames."""
    rows: list[list[tuple]] = [[] for _ in range(streams.batch_size)]
    n_batches = 0
    for batch in streams.iter_epoch(epoch):
        n_batches += 1
        assert batch.frames_bthwc.shape == (streams.batch_size, streams.chunk_len, *FRAME)
        for b in range(streams.batch_size):
            for t in range(streams.chunk_len):
                if not batch.valid_bt[b, t]:
                    assert batch.episode_bt[b, t] == -1 and not batch.first_bt[b, t]
                    assert not batch.frames_bthwc[b, t].any()
                    rows[b].append(None)
                    continue
                f = batch.frames_bthwc[b, t, 0, 0]
                frame_index = int(f[0]) + 256 * int(f[1])
                assert frame_index == batch.frame_index_bt[b, t]
                ep = streams.episodes[batch.episode_bt[b, t]]
                assert f"ep{f[2]}" == ep.episode_id
                assert batch.actions["action"][b, t] == (frame_index + f[2]) % 17
                assert batch.null_bt[b, t] == (batch.actions["action"][b, t] == 0)
                rows[b].append((int(batch.episode_bt[b, t]), frame_index, bool(batch.first_bt[b, t])))
    return rows, n_batches


def test_streams_play_every_frame_once_in_order(tmp_path):
    streams = SegmentStreams(stream_fixture(tmp_path), batch_size=3, chunk_len=8, seed=0)
    assert len(streams.episodes) == 7 and streams.n_frames == 23 + 5 + 41 + 9 + 3 + 12 + 6
    rows, n_batches = collect(streams, epoch=0)
    assert n_batches == streams.steps_per_epoch(0)
    seen = []
    for row in rows:
        frames = [x for x in row if x is not None]
        assert row[: len(frames)] == frames  # padding only at the end of a row
        for i, (ep, idx, first) in enumerate(frames):
            new_episode = i == 0 or frames[i - 1][0] != ep
            assert first == new_episode  # first exactly where the row moves on to another episode
            if not new_episode:
                assert idx == frames[i - 1][1] + 1  # consecutive frames, also across batch boundaries
        seen += [(ep, idx) for ep, idx, _ in frames]
    expected = [(e, streams.episodes[e].frame_start + k) for e in range(7) for k in range(streams.episodes[e].n_frames)]
    assert sorted(seen) == sorted(expected)  # every frame exactly once
    # Memory is carried across batch boundaries: some row continues an episode from one batch to the next.
    assert any(row[7] is not None and row[8] is not None and not row[8][2] for row in rows)


def test_streams_shuffle_by_seed_and_epoch(tmp_path):
    paths = stream_fixture(tmp_path)
    order = lambda s, e: [[p.episode for p in row] for row in s.plan(e)]  # noqa: E731
    s0, s0b, s1 = (SegmentStreams(paths, 2, 8, seed=k) for k in (0, 0, 1))
    assert order(s0, 0) == order(s0b, 0)
    assert order(s0, 0) != order(s1, 0) or order(s0, 1) != order(s1, 1)
    assert any(order(s0, 0) != order(s0, e) for e in range(1, 5))  # a new order each epoch
    fixed = SegmentStreams(paths, 1, 8, shuffle=False)
    assert order(fixed, 0) == order(fixed, 3) == [list(range(7))]


def test_streams_split_between_workers(tmp_path):
    paths = stream_fixture(tmp_path)
    workers = [SegmentStreams(paths, 2, 8, seed=3, rank=r, world_size=3) for r in range(3)]
    episodes = [{p.episode for row in w.plan(0) for p in row} for w in workers]
    assert set.union(*episodes) == set(range(7)) and sum(map(len, episodes)) == 7  # disjoint, complete
    runs = [collect(w, 0) for w in workers]
    assert len({n for _, n in runs}) == 1  # the same number of steps on every worker
    for (rows, _), mine in zip(runs, episodes):
        assert {x[0] for row in rows for x in row if x is not None} <= mine
    with pytest.raises(ValueError, match="7 episodes cannot be split between 8 workers"):
        SegmentStreams(paths, 2, 8, rank=0, world_size=8)


def test_streams_split_long_episodes(tmp_path):
    streams = SegmentStreams(stream_fixture(tmp_path), 4, 8, split_frames=10, seed=0)
    assert all(p.hi - p.lo <= 10 for row in streams.plan(0) for p in row)
    rows, _ = collect(streams, 0)
    for row in rows:
        frames = [x for x in row if x is not None]
        for i, (ep, idx, first) in enumerate(frames):
            piece_start = (idx - streams.episodes[ep].frame_start) % 10 == 0
            assert first == (i == 0 or frames[i - 1][0] != ep or piece_start)


def test_streams_skip_bad_shards_and_pad_corrupt_records(tmp_path):
    paths = stream_fixture(tmp_path)
    bad = tmp_path / "bad.vshard"
    bad.write_bytes(b"\x00" * 100)
    streams = SegmentStreams([*paths, bad], 2, 8, seed=0)
    assert streams.bad.count == 1 and str(bad) in streams.bad.errors
    # Damage a record of episode 2 after the streams were planned: its frames become padding, nothing else moves.
    index = read_index(paths[1])
    rec = index.records[2]  # ep2 frames 14..21
    corrupt_byte(paths[1], rec.offset + rec.length - 2)
    steps = streams.steps_per_epoch(0)
    rows, n_batches = collect(streams, 0)
    assert n_batches == steps and streams.bad.count == 2 and "record 2" in streams.bad.errors[str(paths[1])]
    ep2 = next(i for i, e in enumerate(streams.episodes) if e.episode_id == "ep2")
    got = sorted(idx for row in rows for x in row if x is not None and x[0] == ep2 for idx in [x[1]])
    assert got == list(range(14))  # frames before the corrupt record; the rest of the episode is padding
    row = next(r for r in rows if any(x is not None and x[0] == ep2 for x in r))
    last = max(k for k, x in enumerate(row) if x is not None and x[0] == ep2)
    assert row[last][1] == 13 and row[last + 1 : last + 1 + 41 - 14] == [None] * (41 - 14)
    following = [x for x in row[last + 1 :] if x is not None]
    assert not following or following[0][2]  # the next frame played after the gap starts an episode


def test_streams_refuse_mixed_shards(tmp_path):
    a = write_crafter_shard(tmp_path / "a.vshard", {0: (0, 5)})
    with ShardWriter(tmp_path / "m.vshard", "minecraft", FRAME) as w:
        w.write(tagged_frames(0, 0, 3), episode_id="e", source="s",
                actions={"buttons": np.zeros((3, 20)), "camera": np.zeros((3, 2))})  # fmt: skip
    with pytest.raises(ShardError, match=r"m\.vshard.*action space 'minecraft'"):
        SegmentStreams([a, tmp_path / "m.vshard"], 2, 4)
