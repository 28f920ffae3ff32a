"""``vpt-ray record`` end to end on a tiny task: files, resuming, argument errors, parallel workers on Ray."""

from __future__ import annotations

import pytest

from vpt_ray.cli import main
from vpt_ray.data.recordings import iter_recordings, read_meta, read_recording

ARGS = ["record", "--task", "crafter-wood", "--max-steps", "25", "--no-progress"]


def test_records_labeled_episodes_and_resumes(tmp_path, capsys):
    out = tmp_path / "rec"
    assert main([*ARGS, "--episodes", "2", "--out", str(out)]) == 0
    stems = list(iter_recordings(out))
    assert [s.name for s in stems] == ["crafter-wood-contractor-s0-e0000", "crafter-wood-contractor-s0-e0001"]
    for stem in stems:
        rec = read_recording(stem)
        assert rec.meta["labeled"] and rec.meta["n_frames"] == len(rec.actions["action"]) <= 25
        assert rec.meta["seed"] == 0 and rec.meta["episode"] == int(stem.name[-4:])
    printed = capsys.readouterr().out
    assert "recorded 2 episode(s)" in printed and "wood" in printed
    # A second run with more episodes keeps the two and adds one.
    assert main([*ARGS, "--episodes", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recorded 1 episode(s)" in printed and "kept 2 already there" in printed
    assert len(list(iter_recordings(out))) == 3


def test_records_unlabeled_web_videos(tmp_path):
    out = tmp_path / "web"
    assert main([*ARGS, "--episodes", "1", "--out", str(out), "--unlabeled", "--overlays", "--seed", "5"]) == 0
    (stem,) = iter_recordings(out, labeled=False)
    meta = read_meta(stem)
    assert stem.name == "crafter-wood-web-s5-e0000" and not stem.with_suffix(".jsonl").exists()
    assert sum(s["end"] - s["start"] for s in meta["ground_truth"]["segments"]) == meta["n_frames"]
    assert meta["video"]["crf"] > 0  # web videos are lossy


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--overlays"], "--overlays needs --unlabeled"),
        (["--episodes", "0"], "--episodes must be >= 1"),
        (["--task", "no/such/task.yaml"], "no such file"),
        (["--task", "minerl-diamond-pickaxe"], "only Crafter has a scripted player"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, extra, message):
    args = [*ARGS, "--episodes", "1", "--out", str(tmp_path / "x"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_parallel_workers_on_ray(tmp_path):
    out = tmp_path / "par"
    assert main([*ARGS, "--episodes", "3", "--out", str(out), "--workers", "2"]) == 0
    metas = [read_meta(s) for s in iter_recordings(out)]
    assert sorted(m["episode"] for m in metas) == [0, 1, 2]
    # The same episode recorded in one process plays the same world (the world seed only depends on (seed, i)).
    assert main([*ARGS, "--episodes", "1", "--out", str(tmp_path / "one")]) == 0
    (one,) = [read_meta(s) for s in iter_recordings(tmp_path / "one")]
    assert one["env_seed"] == metas[0]["env_seed"]
