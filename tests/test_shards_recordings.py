"""Labeled contractor-format recordings -> shards (human labels), and `vpt-ray shard` convert / verify."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vpt_ray.cli import main
from vpt_ray.data.recordings import RecordingWriter, read_recording
from vpt_ray.data.shards import find_shards, iter_segments, read_index, recordings_to_shards


def write_recording(stem, n: int, seed: int, labeled: bool = True):
    from vpt_ray.actions.crafter import CRAFTER_ACTIONS, crafter_action_to_keys

    rng = np.random.default_rng(seed)
    actions = rng.integers(0, len(CRAFTER_ACTIONS), n)
    actions[:3] = 0  # some noops: null actions
    with RecordingWriter(stem, (24, 32), labeled=labeled) as w:
        for t in range(n):
            a = int(actions[t])
            step = {"action": a, "action_name": CRAFTER_ACTIONS[a], "keyboard": {"keys": crafter_action_to_keys(a)}}
            w.add(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), step if labeled else None)
        w.close({"action_space": "crafter", "task": "crafter-test", "seed": seed})
    return stem


@pytest.fixture
def recordings(tmp_path):
    root = tmp_path / "rec"
    good = {"ep0": write_recording(root / "ep0", 30, 0), "sub/ep1": write_recording(root / "sub" / "ep1", 9, 1)}
    write_recording(root / "web", 10, 2, labeled=False)  # unlabeled: not converted
    broken = write_recording(root / "broken", 12, 3)
    jsonl = broken.with_name("broken.jsonl")
    jsonl.write_text("\n".join(jsonl.read_text().splitlines()[:-2]) + "\n")  # two actions missing
    return root, good


def check(shard, stem, frame_size=None):
    rec = read_recording(stem)
    segments = list(iter_segments(shard))
    frames = rec.frames_thwc
    if frame_size is not None:
        frames = np.stack([cv2.resize(f, frame_size[::-1], interpolation=cv2.INTER_LINEAR) for f in frames])
    np.testing.assert_array_equal(np.concatenate([s.frames_thwc for s in segments]), frames)
    np.testing.assert_array_equal(np.concatenate([s.actions["action"] for s in segments]), rec.actions["action"])
    np.testing.assert_array_equal(np.concatenate([s.null for s in segments]), rec.null)
    assert [s.first for s in segments] == [True] + [False] * (len(segments) - 1)
    assert {s.labeler for s in segments} == {"human"} and {s.source for s in segments} == {str(stem) + ".mp4"}
    assert [s.frame_start for s in segments] == list(range(0, len(frames), 8))  # max_record_frames=8
    assert read_index(shard).meta["task"] == "crafter-test"


def test_recordings_to_shards(recordings, tmp_path):
    root, good = recordings
    out = tmp_path / "shards"
    summary = recordings_to_shards(root, out, max_record_frames=8)
    assert sorted(summary.written) == sorted(str(out / f"{k}.vshard") for k in good)
    assert summary.frames == 39 and summary.existing == []
    (bad_stem, error), = summary.bad.items()
    assert bad_stem.endswith("broken") and "broken.jsonl: 10 lines" in error
    assert find_shards(out) == sorted(out / f"{k}.vshard" for k in good)  # no partial shard of the broken one
    for key, stem in good.items():
        check(out / f"{key}.vshard", stem)
    assert [e for e in read_index(out / "sub/ep1.vshard").episode_ids] == ["sub/ep1"]

    again = recordings_to_shards(root, out, max_record_frames=8)  # resumable: existing shards are kept
    assert again.written == [] and sorted(again.existing) == sorted(summary.written) and len(again.bad) == 1


def test_recordings_to_shards_resized_in_ray_tasks(ray_local, recordings, tmp_path):
    root, good = recordings
    summary = recordings_to_shards(root, tmp_path / "s", frame_size=(16, 20), workers=2, max_record_frames=8)
    assert len(summary.written) == 2 and len(summary.bad) == 1
    for key, stem in good.items():
        check(tmp_path / "s" / f"{key}.vshard", stem, frame_size=(16, 20))


def test_shard_cli(recordings, tmp_path, capsys):
    root, _ = recordings
    out = tmp_path / "shards"
    assert main(["shard", "convert", str(root), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["written"]) == 2 and len(summary["bad"]) == 1 and summary["frames"] == 39
    assert main(["shard", "verify", str(out)]) == 0
    assert "2/2 shard(s) sound (39 frames), 0 bad" in capsys.readouterr().out
    shard = out / "ep0.vshard"
    shard.write_bytes(shard.read_bytes()[:-40])
    assert main(["shard", "verify", str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["good"] == 1 and list(report["bad"]) == [str(shard)] and "truncated" in report["bad"][str(shard)]


@pytest.mark.parametrize("size", [("0", "0"), ("-4", "64"), ("100000", "100000")])
def test_shard_convert_refuses_a_bad_frame_size_before_any_work(recordings, tmp_path, capsys, size):
    root, _ = recordings
    out = tmp_path / "shards"
    # --workers 1: the refusal comes before Ray would start.
    assert main(["shard", "convert", str(root), "--out", str(out), "--frame-size", *size, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"frame size [{size[0]}, {size[1]}]: expected [height, width], each from 1 to 2048" in err, err
    assert not out.exists()


def test_shard_convert_with_nothing_to_convert_fails(recordings, tmp_path, capsys):
    root, _ = recordings
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for suffix in (".mp4", ".jsonl", ".json"):
        (only_bad / f"broken{suffix}").write_bytes((root / f"broken{suffix}").read_bytes())
    assert main(["shard", "convert", str(only_bad), "--out", str(tmp_path / "s1")]) == 1
    out = capsys.readouterr()
    assert "skipped: " in out.out and f"{only_bad}: all 1 recording(s) are bad; no shards" in out.err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["shard", "convert", str(empty), "--out", str(tmp_path / "s2")]) == 1
    assert f"{empty}: no labeled recordings found; no shards" in capsys.readouterr().err
    # Shards already there from an earlier run count: a rerun with nothing new to do succeeds.
    assert main(["shard", "convert", str(root), "--out", str(tmp_path / "s3")]) == 0
    assert main(["shard", "convert", str(root), "--out", str(tmp_path / "s3")]) == 0


def test_shard_convert_and_record_refuse_an_out_that_is_a_file(recordings, tmp_path, capsys):
    root, _ = recordings
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    assert main(["shard", "convert", str(root), "--out", str(taken)]) == 2
    assert f"{taken}: exists and is not a directory" in capsys.readouterr().err
    assert main(["record", "--task", "crafter-wood", "--episodes", "1", "--out", str(taken), "--workers", "1"]) == 2
    assert f"--out {taken}: exists and is not a directory" in capsys.readouterr().err
    assert taken.read_text() == "keep me"
