"""Pseudo-labeling: window arithmetic, labels equal to direct IDM forwards, the Ray Data job end to end (real mp4
files, a real tiny IDM), skipped corrupt videos, clean segments, and resuming a killed job exactly once."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vpt_ray.data.shards import find_shards, iter_segments, read_index, verify_shard
from vpt_ray.labeling import (
    InputError,
    LabelJobError,
    WindowSpec,
    checkpoint_id,
    collect_videos,
    decode_video,
    label_clip,
    load_segments,
    plan_windows,
    prepare_job,
    run_labeling,
)
from vpt_ray.ledger import open_ledger
from vpt_ray.models import build_model, load_checkpoint, load_preset, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the tiny IDM is fastest on one thread

IDM_SIZE = (32, 32)
VIDEO_SIZE = (40, 48)  # not the IDM's: the job resizes


def tiny_idm_config(action_space: str = "crafter"):
    """The crafter-idm-small preset shrunk (32x32 frames, hidsize 64, 16-frame clips) for fast tests."""
    cfg = load_preset("crafter-idm-small")
    net = dataclasses.replace(cfg.net, img_shape=(*IDM_SIZE, 8), hidsize=64, timesteps=16, attention_memory_size=16)
    return dataclasses.replace(cfg, net=net, action_space=action_space)


@pytest.fixture(scope="module")
def idm_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(tiny_idm_config()), tmp_path_factory.mktemp("idm") / "tiny-idm")


def write_video(path: Path, n_frames: int, seed: int, size=VIDEO_SIZE) -> Path:
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for _ in range(n_frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# -------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize("spec", [WindowSpec(128, 64, 32, 96), WindowSpec(16, 8, 4, 12), WindowSpec(10, 3, 2, 5),
                                  WindowSpec(8, 8, 0, 8), WindowSpec(7, 2, 5, 7)])  # fmt: skip
def test_windows_label_every_frame_exactly_once(spec):
    for n in range(1, 400):
        windows = plan_windows(n, spec)
        labels = np.zeros(n, int)
        for w in windows:
            assert 0 <= w.start <= w.keep_lo < w.keep_hi <= w.stop <= n
            assert w.stop - w.start == min(spec.window, n)
            labels[w.keep_lo : w.keep_hi] += 1
        assert (labels == 1).all(), (n, spec)
        assert [w.keep_lo for w in windows[1:]] == [w.keep_hi for w in windows[:-1]]  # in order, no gaps
        for w in windows[1:-1]:  # inner windows keep exactly their centre range
            assert (w.keep_lo - w.start, w.keep_hi - w.start) == (spec.keep_start, spec.keep_end)
        assert windows[0].keep_lo == 0 and windows[-1].keep_hi == n and windows[-1].stop == n


def test_window_defaults_and_errors():
    assert WindowSpec.centred(128) == WindowSpec(128, 64, 32, 96)  # the paper's setting
    assert WindowSpec.centred(32) == WindowSpec(32, 16, 8, 24)
    assert [(w.start, w.keep_lo, w.keep_hi) for w in plan_windows(300, WindowSpec.centred(128))] == [
        (0, 0, 96), (64, 96, 160), (128, 160, 224), (172, 224, 300)]  # fmt: skip
    with pytest.raises(ValueError, match="as long as the stride"):
        WindowSpec(128, 64, 32, 64)
    with pytest.raises(ValueError, match="inside the window"):
        WindowSpec(16, 8, 12, 20)


def expected_labels(idm, frames: np.ndarray, window=16, stride=8, keep=(4, 12)) -> np.ndarray:
    """The released rule written out: frame f takes its label from the window whose centre holds it (windows
    every ``stride`` frames plus one aligned to the clip's end), the clip's first and last frames from the edge
    windows; each window is one direct forward of the IDM."""
    n = len(frames)
    if n <= window:
        return idm.predict(torch.from_numpy(frames[None]))["action"][0, :, 0].numpy()
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    out = np.full(n, -1)
    preds = {}
    for f in range(n):
        if f < keep[1]:
            s = 0
        elif f >= starts[-2] + keep[1]:
            s = starts[-1]
        else:
            s = (f - keep[0]) // stride * stride
        if s not in preds:
            preds[s] = idm.predict(torch.from_numpy(frames[None, s : s + window]))["action"][0, :, 0].numpy()
        out[f] = preds[s][f - s]
    return out


@pytest.mark.parametrize("n", [77, 10, 16, 40])
def test_label_clip_equals_direct_forward(idm_dir, n):
    idm = load_checkpoint(idm_dir)
    frames = np.random.default_rng(n).integers(0, 256, (n, *IDM_SIZE, 3), dtype=np.uint8)
    expected = expected_labels(idm, frames)
    for batch_windows in (1, 3):
        got = label_clip(idm, frames, WindowSpec(16, 8, 4, 12), batch_windows=batch_windows)
        np.testing.assert_array_equal(got["action"][:, 0], expected)
    if n == 77:
        # The labels depend on the context each frame saw: one whole-clip forward gives different ones.
        whole = idm.predict(torch.from_numpy(frames[None]))["action"][0, :, 0].numpy()
        assert (whole != expected).any()


def test_label_clip_minecraft_heads():
    torch.manual_seed(1)
    idm = build_model(tiny_idm_config("minecraft")).eval()
    frames = np.random.default_rng(0).integers(0, 256, (20, *IDM_SIZE, 3), dtype=np.uint8)
    labels = label_clip(idm, frames, WindowSpec(16, 8, 4, 12))
    assert labels["buttons"].shape == (20, 20) and labels["camera"].shape == (20, 2)
    env = idm.action_space.from_idm(labels)
    assert env["buttons"].dtype == np.uint8 and env["camera"].dtype == np.float32 and env["camera"].shape == (20, 2)


# --------------------------------------------------------------------------------------------- inputs


def test_segments_file_and_inputs(tmp_path):
    vids = tmp_path / "videos"
    a, b, c = (write_video(vids / name, 3, i) for i, name in enumerate(["a.mp4", "sub/b.mp4", "c.mp4"]))
    seg = tmp_path / "clean.jsonl"
    seg.write_text(
        json.dumps({"video": str(a), "segments": [[5, 9], [0, 3]], "kept": True}) + "\n\n"
        + json.dumps({"video": "videos/sub/b.mp4", "segments": [[1, 2]]}) + "\n"  # relative to the file's dir
        + json.dumps({"video": str(c), "segments": [], "kept": False}) + "\n"
    )  # fmt: skip
    assert load_segments(seg) == {a.resolve(): [(0, 3), (5, 9)], b.resolve(): [(1, 2)], c.resolve(): []}
    tasks = collect_videos([vids], seg)
    assert [(t.key, t.segments, t.shard) for t in tasks] == [
        ("a.mp4", ((0, 3), (5, 9)), "a.vshard"), ("sub/b.mp4", ((1, 2),), "sub/b.vshard")]  # fmt: skip
    assert [t.key for t in collect_videos([], seg)] == ["a.mp4", "sub/b.mp4"]
    assert [t.key for t in collect_videos([vids])] == ["a.mp4", "c.mp4", "sub/b.mp4"]

    for line, message in [("{oops", "not JSON"), ('{"video": "x.mp4"}', "expected"),
                          ('{"video": "x.mp4", "segments": [[4, 2]]}', r"segment \[4, 2\]"),
                          ('{"video": "x.mp4", "segments": [[0, 5], [3, 8]]}', "segments overlap")]:  # fmt: skip
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"video": "y.mp4", "segments": []}) + "\n" + line + "\n")
        with pytest.raises(InputError, match=rf"bad\.jsonl:2: {message}"):
            load_segments(bad)
    with pytest.raises(InputError, match="no such video"):
        collect_videos([tmp_path / "nope"])
    write_video(vids / "a.mkv", 2, 0)
    with pytest.raises(InputError, match=r"would both write a\.vshard"):
        collect_videos([vids])


def test_job_refuses_bad_checkpoint_and_foreign_output(tmp_path, idm_dir):
    with pytest.raises(LabelJobError, match="not a model checkpoint"):
        prepare_job(tmp_path, tmp_path / "out")
    policy = save_checkpoint(build_model(load_preset("crafter-policy-small")), tmp_path / "policy")
    with pytest.raises(LabelJobError, match="holds a 'policy' model, not an IDM"):
        prepare_job(policy, tmp_path / "out")
    with pytest.raises(LabelJobError, match="as long as the stride"):
        prepare_job(idm_dir, tmp_path / "out", window=16, stride=8, keep=(0, 4))
    job = prepare_job(idm_dir, tmp_path / "out")
    assert job.spec == WindowSpec(16, 8, 4, 12) and job.frame_size == IDM_SIZE  # defaults from the IDM
    assert job.labeler == checkpoint_id(idm_dir) and job.labeler.startswith("tiny-idm@")
    assert prepare_job(idm_dir, tmp_path / "out").job_id == job.job_id  # the same job again: fine
    with pytest.raises(LabelJobError, match="holds the labels of another job"):
        prepare_job(idm_dir, tmp_path / "out", window=12)
    with pytest.raises(LabelJobError, match=r"--precision: 'fp16' is not one of \['auto', 'fp32', 'bf16'\]"):
        prepare_job(idm_dir, tmp_path / "out", precision="fp16")


# ----------------------------------------------------------------------------------------- Ray job


def check_shard(shard: Path, video: Path, idm, labeler: str, segments=None) -> int:
    """The shard holds the video's decoded frames (at the IDM size) and exactly the direct-forward labels."""
    frames = decode_video(video, IDM_SIZE)
    ranges = segments or [(0, len(frames))]
    verify_shard(shard)
    index = read_index(shard)
    assert index.action_space == "crafter" and index.frame_shape == (*IDM_SIZE, 3)
    assert index.meta["labeler"] == labeler
    assert index.meta["precision"] == "fp32"  # the job's auto on a CPU actor
    by_episode: dict[str, list] = {}
    for seg in iter_segments(shard):
        assert seg.labeler == labeler and seg.source == str(video)
        by_episode.setdefault(seg.episode_id, []).append(seg)
    assert len(by_episode) == len(ranges)
    for (s, e), segs in zip(ranges, by_episode.values()):
        e = min(e, len(frames))
        assert segs[0].first and segs[0].frame_start == s and segs[-1].frame_end == e
        np.testing.assert_array_equal(np.concatenate([x.frames_thwc for x in segs]), frames[s:e])
        got = np.concatenate([x.actions["action"] for x in segs])
        np.testing.assert_array_equal(got, expected_labels(idm, frames[s:e]))
    return sum(min(e, len(frames)) - s for s, e in ranges)


def test_label_job_end_to_end_with_redis_ledger(ray_local, tmp_path, idm_dir, redis_server):
    vids = tmp_path / "videos"
    lengths = {"v0.mp4": 5, "v1.mp4": 40, "sub/v2.mp4": 77}
    for i, (name, n) in enumerate(lengths.items()):
        write_video(vids / name, n, seed=i)
    (vids / "garbage.mp4").write_bytes(os.urandom(3000))
    truncated = write_video(tmp_path / "t.mp4", 30, seed=9)
    (vids / "truncated.mp4").write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    out = tmp_path / "out"
    job = prepare_job(idm_dir, out, ledger=redis_server.url)
    tasks = collect_videos([vids])
    summary = run_labeling(job, tasks, num_actors=2, progress=False)
    assert (summary["videos"], summary["labeled"], summary["skipped"], summary["done_total"]) == (5, 3, 2, 3)
    assert set(summary["skipped_videos"]) == {"garbage.mp4", "truncated.mp4"}
    assert all("garbage.mp4" in e or "truncated.mp4" in e for e in summary["skipped_videos"].values())
    assert summary["frames"] == sum(lengths.values()) and summary["frames_per_s"] > 0
    assert summary["devices"] == ["cpu fp32"]  # where the actors labeled, and in which precision
    assert json.loads((out / "label_summary.json").read_text()) == summary
    assert not (out / "ledger.sqlite").exists()  # the Redis ledger holds the progress
    with open_ledger(redis_server.url) as ledger:
        assert ledger.done_keys(job.job_id) == set(lengths)
        assert ledger.done_info(job.job_id, "sub/v2.mp4")["frames"] == 77

    idm = load_checkpoint(idm_dir)
    assert find_shards(out) == sorted(out / Path(k).with_suffix(".vshard") for k in lengths)
    for name, n in lengths.items():
        assert check_shard(out / Path(name).with_suffix(".vshard"), vids / name, idm, job.labeler) == n

    mtimes = {p: p.stat().st_mtime_ns for p in find_shards(out)}
    again = run_labeling(job, tasks, num_actors=2, progress=False)
    assert (again["labeled"], again["already_done"], again["skipped"], again["done_total"]) == (0, 3, 2, 3)
    assert {p: p.stat().st_mtime_ns for p in find_shards(out)} == mtimes


def test_label_job_with_clean_segments(ray_local, tmp_path, idm_dir):
    vids = tmp_path / "videos"
    v1, v2, v3 = (write_video(vids / f"v{i}.mp4", n, seed=i) for i, n in [(1, 40), (2, 77), (3, 20)])
    seg = tmp_path / "clean.jsonl"
    rows = [(v1, [[10, 100]]), (v2, [[3, 20], [30, 77]]), (v3, [])]  # v1's segment runs past its end
    seg.write_text("".join(json.dumps({"video": str(v), "segments": s}) + "\n" for v, s in rows))
    job = prepare_job(idm_dir, tmp_path / "out")
    summary = run_labeling(job, collect_videos([vids], seg), num_actors=1, progress=False)
    assert (summary["videos"], summary["labeled"], summary["frames"]) == (2, 2, 30 + 17 + 47)
    idm = load_checkpoint(idm_dir)
    assert check_shard(tmp_path / "out" / "v1.vshard", v1, idm, job.labeler, [(10, 40)]) == 30
    assert check_shard(tmp_path / "out" / "v2.vshard", v2, idm, job.labeler, [(3, 20), (30, 77)]) == 64
    assert [e for e in read_index(tmp_path / "out" / "v2.vshard").episode_ids] == ["v2.mp4:3-20", "v2.mp4:30-77"]
    assert not (tmp_path / "out" / "v3.vshard").exists()


@pytest.mark.slow
def test_killed_label_job_resumes_exactly_once(ray_local, tmp_path, idm_dir):
    """A `vpt-ray label` process killed after some videos are done; the rerun labels only the rest."""
    import ray

    vids = tmp_path / "videos"
    n_videos = 10
    for i in range(n_videos):
        write_video(vids / f"v{i:02d}.mp4", 300, seed=i)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "import sys; from vpt_ray.cli import main; sys.exit(main())", "label", str(vids),
           "--idm", str(idm_dir), "--out", str(out), "--num-actors", "1", "--batch-windows", "1", "--no-progress",
           "--address", ray.get_runtime_context().gcs_address]  # fmt: skip
    job = prepare_job(idm_dir, out)  # the same job the CLI computes
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        done: set = set()
        while len(done) < 3:
            assert proc.poll() is None, "the label process ended before it could be killed"
            assert time.monotonic() < deadline, "no progress from the label process"
            time.sleep(0.02)
            if (out / "ledger.sqlite").exists():
                with open_ledger(out / "ledger.sqlite") as ledger:
                    done = ledger.done_keys(job.job_id)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the driver and nothing else of ours
        proc.wait()
    assert not (out / "label_summary.json").exists()  # it never finished

    with open_ledger(out / "ledger.sqlite") as ledger:
        done_before = ledger.done_keys(job.job_id)
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in find_shards(out)}
    assert {p.name for p in finished} >= {Path(k).with_suffix(".vshard").name for k in done_before}

    summary = run_labeling(job, collect_videos([vids]), num_actors=1, progress=False)
    assert summary["labeled"] >= 1 and summary["skipped"] == 0 and summary["remaining"] == []
    assert summary["labeled"] + summary["already_done"] == n_videos
    assert summary["done_total"] == n_videos
    for p, stamp in finished.items():  # nothing a finished video wrote was written again
        if p.stem + ".mp4" in done_before:
            assert (p.stat().st_mtime_ns, p.stat().st_ino) == stamp
    with open_ledger(out / "ledger.sqlite") as ledger:
        assert ledger.done_keys(job.job_id) == {f"v{i:02d}.mp4" for i in range(n_videos)}
    assert len(find_shards(out)) == n_videos and not list(out.rglob("*.tmp"))
    idm = load_checkpoint(idm_dir)
    for i in (0, n_videos - 1):
        check_shard(out / f"v{i:02d}.vshard", vids / f"v{i:02d}.mp4", idm, job.labeler)
