"""Contractor-format recordings: real episodes round-trip, web-style videos carry true ground truth, bad files
give errors that name the file and line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vpt_ray.actions.contractor import episode_env_arrays
from vpt_ray.data.overlays import PROFILES, TITLE_KINDS, WebPlan, WebVideo, make_title
from vpt_ray.data.recordings import (
    FRAME_CLASSES,
    VIDEO_PRESETS,
    RecordingError,
    RecordingWriter,
    clean_segments,
    frame_classes,
    iter_chunks,
    iter_frames,
    iter_recordings,
    read_recording,
    record_episode,
    runs_to_segments,
)
from vpt_ray.envs import make_env
from vpt_ray.envs.crafter_scripted import CrafterDemonstrator

TASK = "crafter-wood"  # 32x32 world: quick resets


def _play(steps: int, seed: int = 0):
    """Frames and actions of a real Crafter episode played by the scripted player."""
    env = make_env(TASK, robust=False)
    obs, _ = env.reset(seed=seed)
    player = CrafterDemonstrator(seed=seed)
    frames, actions = [], []
    for _ in range(steps):
        action = player.act(env)
        frames.append(obs)
        actions.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return np.stack(frames), np.array(actions, np.int64)


@pytest.fixture(scope="module")
def episode():
    return _play(80)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    stem = tmp_path_factory.mktemp("rec") / "ep"
    meta = record_episode(TASK, stem, seed=3, episode=0, max_steps=60)
    return stem, meta


def _write(stem, frames, actions=None, **meta):
    from vpt_ray.actions.crafter import CRAFTER_ACTIONS, crafter_action_to_keys

    with RecordingWriter(stem, frames.shape[1:3], labeled=actions is not None) as w:
        for t, frame in enumerate(frames):
            step = None
            if actions is not None:
                a = int(actions[t])
                step = {"action": a, "action_name": CRAFTER_ACTIONS[a], "keyboard": {"keys": crafter_action_to_keys(a)}}
            w.add(frame, step)
        return w.close({"action_space": "crafter", **meta})


def test_round_trip_of_a_real_episode(tmp_path, episode):
    frames, actions = episode
    meta = _write(tmp_path / "ep", frames, actions)
    assert meta["n_frames"] == len(frames) and meta["fps"] == 20 and meta["frame_size"] == [64, 64]
    rec = read_recording(tmp_path / "ep.mp4")  # any of the three file names works
    assert rec.frames_thwc.shape == frames.shape and rec.frames_thwc.dtype == np.uint8
    # Lossless H.264 in YUV 4:4:4: only the RGB <-> YUV rounding is left.
    assert np.abs(rec.frames_thwc.astype(int) - frames).max() <= 2
    np.testing.assert_array_equal(rec.actions["action"], actions)
    np.testing.assert_array_equal(rec.null, actions == 0)
    assert len(rec.steps) == len(frames)
    # Streaming gives the same frames and actions, chunk by chunk.
    chunks = list(iter_chunks(tmp_path / "ep", 32))
    assert [c[0] for c in chunks] == list(range(0, len(frames), 32))
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), rec.frames_thwc)
    np.testing.assert_array_equal(np.concatenate([c[2]["action"] for c in chunks]), actions)
    np.testing.assert_array_equal(np.stack(list(iter_frames(tmp_path / "ep", 10, 20))), rec.frames_thwc[10:20])


def test_web_preset_is_lossy_but_close(tmp_path, episode):
    frames, _ = episode
    with RecordingWriter(tmp_path / "web", (64, 64), labeled=False, video=VIDEO_PRESETS["web"]) as w:
        for frame in frames:
            w.add(frame)
        w.close({"action_space": "crafter"})
    err = np.abs(read_recording(tmp_path / "web").frames_thwc.astype(int) - frames)
    assert 0 < err.mean() < 12


def test_record_episode_writes_the_contractor_layout(labeled):
    stem, meta = labeled
    steps = [json.loads(line) for line in stem.with_suffix(".jsonl").read_text().splitlines()]
    assert len(steps) == meta["n_frames"] == meta["episode_info"]["length"] <= 60
    assert meta["labeled"] and meta["action_space"] == "crafter" and meta["task"] == TASK
    assert meta["title"] and meta["agent"]["name"] == "crafter_scripted"
    assert meta["ground_truth"]["segments"] == [{"start": 0, "end": meta["n_frames"], "class": "clean"}]
    first = steps[0]
    assert first["frame"] == 0 and first["inventory"]["health"] == 9 and first["keyboard"]["keys"] == (
        [] if first["action_name"] == "noop" else [first["keyboard"]["keys"][0]]
    )
    # The inventory in a frame is the one after the previous action: what the player obtained shows up next.
    for prev, cur in zip(steps, steps[1:]):
        for item, n in prev["new_items"].items():
            if item in cur["inventory"]:
                assert cur["inventory"][item] >= n
    rec = read_recording(stem)
    assert rec.actions["action"].tolist() == [s["action"] for s in steps]


def test_unlabeled_web_video_ground_truth_matches_its_frames(tmp_path, episode):
    frames, _ = episode
    plan = WebPlan(profile="mixed", intro=12, outro=8, breaks=((30, "menu", 10), (55, "talking_head", 6)),
                   facecam=((5, 25),), watermark=((20, 45),), corner=3, palette_seed=1)  # fmt: skip
    web = WebVideo(plan, (64, 64))
    out, classes, sources = [], [], []
    for f, cls, t in [*web.opening(), *(x for t, fr in enumerate(frames) for x in web.gameplay(t, fr)), *web.ending()]:
        out.append(f)
        classes.append(cls)
        sources.append(t)
    with RecordingWriter(tmp_path / "web", (64, 64), labeled=False) as w:
        for f in out:
            w.add(f)
        meta = w.close({"action_space": "crafter", "ground_truth": {
            "segments": runs_to_segments(classes),
            "clean_segments": [[s["start"], s["end"]] for s in runs_to_segments(classes) if s["class"] == "clean"]}})  # fmt: skip
    assert meta["n_frames"] == len(frames) + 12 + 8 + 10 + 6
    decoded = read_recording(tmp_path / "web").frames_thwc.astype(int)
    labels = frame_classes(meta)
    for i, (cls, t) in enumerate(zip(labels, sources)):
        name = FRAME_CLASSES[cls]
        if t is None:
            assert name == "none"
            assert min(np.abs(decoded[i] - frames[j]).mean() for j in range(0, len(frames), 5)) > 20
            continue
        changed = (np.abs(decoded[i] - frames[t]).max(axis=-1) > 24).mean()
        if name == "clean":
            assert changed == 0, (i, t)
        else:
            assert name == "artifacts" and 0.02 < changed < 0.5, (i, t, changed)
    expected_artifacts = {t for t in range(len(frames)) if 5 <= t < 25 or 20 <= t < 45}
    assert {t for cls, t in zip(labels, sources) if FRAME_CLASSES[cls] == "artifacts"} == expected_artifacts
    for a, b in clean_segments(meta):
        assert all(FRAME_CLASSES[c] == "clean" for c in labels[a:b])


def test_record_unlabeled_with_overlays(tmp_path):
    meta = record_episode(TASK, tmp_path / "web", seed=0, episode=0, max_steps=40, labeled=False, overlays=True,
                          web_profile="mixed")  # fmt: skip
    assert not meta["labeled"] and not (tmp_path / "web.jsonl").exists()
    truth = meta["ground_truth"]
    n = meta["n_frames"]
    assert len(truth["actions"]) == len(truth["source_frames"]) == n > meta["episode_info"]["length"]
    labels = frame_classes(meta)
    assert set(FRAME_CLASSES[c] for c in labels) == {"clean", "artifacts", "none"} or meta["episode_info"]["length"] < 40
    for cls, src, action in zip(labels, truth["source_frames"], truth["actions"]):
        assert (FRAME_CLASSES[cls] == "none") == (src is None) == (action is None)
    played = [s for s in truth["source_frames"] if s is not None]
    assert played == list(range(meta["episode_info"]["length"]))  # every gameplay frame, once, in order
    assert read_recording(tmp_path / "web").frames_thwc.shape[0] == n


def test_titles_have_the_kind_the_metadata_filters_see():
    metadata = pytest.importorskip("vpt_ray.filter.metadata")
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        title, description, kind = make_title(rng)
        seen.add(kind)
        assert metadata.is_blacklisted(title, description) == (kind == "blacklisted"), title
        if kind != "blacklisted":
            assert metadata.is_early_game(title, description) == (kind == "early_game"), (title, description)
    assert seen == set(TITLE_KINDS)
    assert abs(sum(PROFILES.values()) - 1) < 1e-9


# -- bad files --------------------------------------------------------------------------------------------------
@pytest.fixture
def copy(tmp_path, labeled):
    stem, _ = labeled
    for suffix in (".mp4", ".jsonl", ".json"):
        shutil.copy(stem.with_suffix(suffix), tmp_path / f"ep{suffix}")
    return tmp_path / "ep"


def test_corrupt_jsonl_line_names_file_and_line(copy):
    lines = copy.with_suffix(".jsonl").read_text().splitlines()
    lines[6] = lines[6][:-5]  # cut off mid-object
    copy.with_suffix(".jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordingError, match=r"ep\.jsonl:7: not valid JSON"):
        read_recording(copy)
    lines[6] = json.dumps({"action": 5, "keyboard": {"keys": ["key.keyboard.w"]}})
    copy.with_suffix(".jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordingError, match=r"ep\.jsonl:7: field 'action' is 5 but keys"):
        read_recording(copy)


def test_frame_count_mismatch(copy):
    lines = copy.with_suffix(".jsonl").read_text().splitlines()
    copy.with_suffix(".jsonl").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(RecordingError, match=rf"ep\.jsonl: {len(lines) - 3} lines, but the video has {len(lines)}"):
        read_recording(copy)
    copy.with_suffix(".jsonl").write_text("\n".join(lines) + "\n")
    meta = json.loads(copy.with_suffix(".json").read_text())
    meta["n_frames"] += 5  # the metadata and jsonl promise more frames than the video has
    meta.pop("ground_truth")  # (else its segments, which cover the true count, give the error)
    copy.with_suffix(".json").write_text(json.dumps(meta))
    copy.with_suffix(".jsonl").write_text("\n".join(lines + lines[:5]) + "\n")
    with pytest.raises(RecordingError, match=rf"ep\.mp4: only {len(lines)} frames decode"):
        read_recording(copy)


def test_truncated_video(copy):
    data = copy.with_suffix(".mp4").read_bytes()
    copy.with_suffix(".mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordingError, match=r"ep\.mp4: (only \d+ frames decode|cannot decode)"):
        read_recording(copy)
    copy.with_suffix(".mp4").write_bytes(data[:100])
    with pytest.raises(RecordingError, match=r"ep\.mp4"):
        list(iter_frames(copy))


def test_missing_files_and_bad_metadata(copy, tmp_path):
    copy.with_suffix(".jsonl").unlink()
    with pytest.raises(RecordingError, match=r"ep\.jsonl: missing"):
        read_recording(copy)
    copy.with_suffix(".mp4").unlink()
    with pytest.raises(RecordingError, match=r"ep\.mp4: missing"):
        list(iter_frames(copy))
    with pytest.raises(RecordingError, match="no recording here"):
        read_recording(tmp_path / "nothing")
    meta = json.loads(copy.with_suffix(".json").read_text())
    del meta["fps"]
    copy.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(RecordingError, match=r"ep\.json: field 'fps': required field is missing"):
        read_recording(copy)
    copy.with_suffix(".json").write_text("{")
    with pytest.raises(RecordingError, match=r"ep\.json:1: not valid JSON"):
        read_recording(copy)


def test_iter_recordings_finds_complete_episodes(tmp_path, episode, labeled):
    frames, actions = episode
    _write(tmp_path / "a" / "lab", frames[:20], actions[:20])
    _write(tmp_path / "a" / "web", frames[:20])
    (tmp_path / "a" / "summary.json").write_text("{}")  # not a recording
    (tmp_path / "a" / "half.mp4.partial").write_bytes(b"")  # an interrupted write
    assert [p.name for p in iter_recordings(tmp_path)] == ["lab", "web"]
    assert [p.name for p in iter_recordings(tmp_path, labeled=True)] == ["lab"]
    assert [p.name for p in iter_recordings(tmp_path, labeled=False)] == ["web"]
    with pytest.raises(RecordingError, match="not a directory"):
        list(iter_recordings(tmp_path / "nope"))


def test_writer_failure_leaves_nothing(tmp_path, episode):
    frames, _ = episode
    with pytest.raises(ValueError, match="frame must be uint8"):
        with RecordingWriter(tmp_path / "x", (64, 64), labeled=False) as w:
            w.add(frames[0])
            w.add(frames[0][:32])
    assert list(tmp_path.iterdir()) == []


def test_real_contractor_data_without_metadata(tmp_path, reference_dir, episode):
    """Minecraft contractor steps (the shared reference format) next to a video: actions via the contractor
    converter, metadata inferred; a bad step names its line."""
    cases = json.loads((reference_dir / "contractor_actions.json").read_text())["cases"]
    steps = [c["json_step"] for c in cases if c["episode"] == 0]
    frames, _ = episode
    n = min(len(steps), len(frames))
    with RecordingWriter(tmp_path / "mc", (64, 64), labeled=False) as w:
        for frame in frames[:n]:
            w.add(frame)
        w.close({"action_space": "minecraft"})
    (tmp_path / "mc.json").unlink()
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps[:n]))
    rec = read_recording(tmp_path / "mc")
    assert rec.meta["inferred"] and rec.meta["labeled"] and rec.meta["n_frames"] == n
    expected, null = episode_env_arrays(steps[:n])
    np.testing.assert_array_equal(rec.actions["buttons"], expected["buttons"])
    np.testing.assert_array_equal(rec.actions["camera"], expected["camera"])
    np.testing.assert_array_equal(rec.null, null)
    broken = [dict(s) for s in steps[:n]]
    del broken[4]["keyboard"]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(s) + "\n" for s in broken))
    with pytest.raises(RecordingError, match=r"mc\.jsonl:5:"):
        read_recording(tmp_path / "mc")


def test_a_missing_json_is_named(copy):
    # Without its .json a recording is read as real MineRL contractor data; our Crafter steps are not that.
    copy.with_suffix(".json").unlink()
    with pytest.raises(RecordingError, match=r"ep\.json: missing, so ep was read as MineRL contractor data") as e:
        read_recording(copy)
    assert "ep.jsonl:1:" in str(e.value)  # and the first step that does not parse


def test_another_videos_mp4_of_the_same_length_is_refused(tmp_path, episode):
    from vpt_ray.data.recordings import check_video
    from vpt_ray.data.shards import recording_to_shard

    frames, actions = episode
    a = _write(tmp_path / "a", frames[:20], actions[:20])
    _write(tmp_path / "b", frames[20:40], actions[20:40])
    assert len(a["video_sha256"]) == 64
    read_recording(tmp_path / "a")
    check_video(tmp_path / "a")
    shutil.copy(tmp_path / "b.mp4", tmp_path / "a.mp4")  # same length, same size, other frames
    with pytest.raises(RecordingError, match=r"a\.mp4: not the video a\.json was recorded with"):
        read_recording(tmp_path / "a")
    with pytest.raises(RecordingError, match="field 'video_sha256'"):
        recording_to_shard(tmp_path / "a", tmp_path / "a.vshard")
    assert not (tmp_path / "a.vshard").exists()
    meta = json.loads((tmp_path / "a.json").read_text())
    meta["video_sha256"] = "not a hash"
    (tmp_path / "a.json").write_text(json.dumps(meta))
    with pytest.raises(RecordingError, match=r"a\.json: field 'video_sha256': expected 64 lowercase hex digits"):
        read_recording(tmp_path / "a")
